//! Dropout whose mask is cheap to draw and the same on every backend.
//!
//! Burn 0.21's `Dropout` draws one Bernoulli sample per element through the backend's own
//! generator (on ndarray its seeded ChaCha, on one thread: ~13% of a MiniLM training step at
//! batch 16 × 128; on a GPU another generator, so the same seed gives other masks). [`dropout`]
//! draws a single 64-bit key from the run's host stream ([`bidora_util::rng`], seeded by
//! `bidora_backend::seed` and reseeded by the engine per pass, so the DARTS `+`/`−` passes
//! share masks) and expands it on the host with a counter-based SplitMix64 stream, four 16-bit
//! uniforms per draw. On ndarray the fused kernels read the mask in place; on WGPU and CUDA it
//! is uploaded (4 bytes per element: the cost of the same masks everywhere).

use burn::nn::Dropout;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Applies `dropout` as in training when the backend records gradients (autodiff), else returns
/// `x`: zeroes each element with probability `prob` and scales the rest by `1 / (1 − prob)`.
pub fn dropout<B: Backend, const D: usize>(d: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if d.prob <= 0.0 || !B::ad_enabled(&device) {
        return x;
    }
    let mask = keep_mask(draw_key(), x.shape().num_elements(), d.prob);
    let mask =
        Tensor::<B, 1>::from_data(TensorData::new(mask, [x.shape().num_elements()]), &device)
            .reshape(x.shape());
    x * mask
}

/// The mask `dropout` would apply now: `None` when it would be the identity (no autodiff, or
/// probability 0). Draws the key from the host stream, as `dropout` does.
#[cfg(feature = "ndarray")]
pub(crate) fn host_mask<B: Backend>(d: &Dropout, device: &B::Device) -> Option<Mask> {
    (d.prob > 0.0 && B::ad_enabled(device)).then(|| Mask::new(draw_key(), d.prob))
}

/// The key of one mask: the next 64 bits of the run's host stream.
pub(crate) fn draw_key() -> u64 {
    bidora_util::rng::next_u64()
}

/// `n` mask values: 0 with probability `prob` (to 1/65536), else `1 / (1 − prob)`.
pub(crate) fn keep_mask(key: u64, n: usize, prob: f64) -> Vec<f32> {
    let mut out = vec![0.0; n];
    let mask = Mask::new(key, prob);
    let fill = |(block, out): (usize, &mut [f32])| {
        super::math::wide(|| mask.fill(block * MASK_BLOCK, out))
    };
    if n < MASK_BLOCK {
        fill((0, &mut out));
    } else {
        out.par_chunks_mut(MASK_BLOCK).enumerate().for_each(fill);
    }
    out
}

/// Elements per parallel task of [`keep_mask`] (a multiple of the 4 draws per 64 bits).
const MASK_BLOCK: usize = 64 * 1024;

/// A dropout mask keyed by 64 bits: element `i` is `scale` when the 16-bit lane `i mod 4` of
/// `SplitMix64::at(key, i / 4)` is below the keep threshold, else 0. Counter-based, so any
/// range of it can be drawn alone, in parallel, or again in a backward pass.
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    key: u64,
    threshold: u32,
    scale: f32,
}

impl Mask {
    /// The mask keyed by `key` that drops with probability `prob`.
    pub fn new(key: u64, prob: f64) -> Self {
        let keep = 1.0 - prob;
        Mask {
            key,
            threshold: (keep * 65536.0).round() as u32,
            scale: (1.0 / keep) as f32,
        }
    }

    /// Mask elements `start .. start + out.len()` into `out`. Inlined, so it takes the vector
    /// width of its caller (`math::wide`).
    #[inline(always)]
    pub fn fill(&self, start: usize, out: &mut [f32]) {
        // Elements before the first multiple of 4, one 64-bit draw for each whole group of 4
        // after it, then the rest.
        let head = ((4 - start % 4) % 4).min(out.len());
        let (first, rest) = out.split_at_mut(head);
        for (i, o) in (start..).zip(first) {
            *o = self.element(i);
        }
        let aligned = start + head;
        let tail = aligned + 4 * (rest.len() / 4);
        let mut groups = rest.chunks_exact_mut(4);
        for (g, group) in ((aligned / 4) as u64..).zip(&mut groups) {
            let bits = bidora_util::SplitMix64::at(self.key, g);
            for (lane, o) in group.iter_mut().enumerate() {
                *o = self.value(bits >> (16 * lane));
            }
        }
        for (i, o) in (tail..).zip(groups.into_remainder()) {
            *o = self.element(i);
        }
    }

    /// Element `i` alone.
    fn element(&self, i: usize) -> f32 {
        let bits = bidora_util::SplitMix64::at(self.key, (i / 4) as u64);
        self.value(bits >> (16 * (i % 4)))
    }

    /// The mask value of the 16-bit uniform in the low bits of `bits`.
    #[inline(always)]
    fn value(&self, bits: u64) -> f32 {
        if ((bits & 0xffff) as u32) < self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::nn::DropoutConfig;

    type AD = Autodiff<NdArray<f32>>;

    #[test]
    fn mask_has_the_right_rate_and_scale() {
        let m = keep_mask(7, 400_000, 0.1);
        assert_eq!(m.len(), 400_000);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
        // Binomial standard deviation at n = 400k is 4.7e-4: 0.9 ± 0.003 is > 6 sigma.
        assert!((kept - 0.9).abs() < 3e-3, "kept fraction {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // A different key, a different mask; the same key, the same mask.
        assert_ne!(keep_mask(8, 1000, 0.1), keep_mask(7, 1000, 0.1));
        assert_eq!(keep_mask(7, 1000, 0.1), m[..1000].to_vec());
        // Any range drawn alone equals that range of the whole mask.
        for (start, len) in [(0, 3), (1, 2), (3, 9), (5, 1000), (6, 0), (400_000 - 7, 7)] {
            let mut part = vec![-1.0; len];
            Mask::new(7, 0.1).fill(start, &mut part);
            assert_eq!(part, m[start..start + len], "start {start}, len {len}");
        }
    }

    #[test]
    fn follows_the_run_seed_and_is_identity_without_autodiff() {
        let device = Default::default();
        let d = DropoutConfig::new(0.5).init();
        let x = Tensor::<AD, 2>::ones([64, 64], &device);
        let draw = |seed| {
            crate::seed::<AD>(&device, seed);
            dropout(&d, x.clone()).into_data().to_vec::<f32>().unwrap()
        };
        let (a, b, c) = (draw(1), draw(1), draw(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let zeros = a.iter().filter(|&&v| v == 0.0).count();
        assert!((1800..2300).contains(&zeros), "{zeros} of 4096 dropped");
        // Gradients flow through the kept elements only, scaled.
        let x = x.require_grad();
        crate::seed::<AD>(&device, 1);
        let y = dropout(&d, x.clone());
        let g = x
            .grad(&y.sum().backward())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(g, a);
        // Inference backend: the identity.
        let plain = Tensor::<NdArray<f32>, 2>::ones([4, 4], &device);
        assert_eq!(
            dropout(&d, plain.clone())
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            vec![1.0; 16]
        );
    }
}
