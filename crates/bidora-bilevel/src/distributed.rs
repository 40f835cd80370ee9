//! Data parallelism: several peers train copies of one module, each on its shard of every
//! batch, and stay identical because every update is computed from the same all-reduced
//! gradients.
//!
//! The engine needs one operation from the transport, an element-wise sum over peers
//! ([`Collective::all_reduce_sum`]); [`BurnCollective`](crate::collective::BurnCollective)
//! (feature `collective`) provides it with Burn's `burn-collective`. Everything else is built
//! on that sum here:
//!
//! - **Weighted means.** Peer `k` holds a shard of `n_k` loss units (examples, or target tokens:
//!   [`BilevelProblem::shard`](crate::BilevelProblem::shard) says) and its shard's mean-loss
//!   gradient `g_k`. It sends `[n_k·g_k, n_k·L_k, n_k]` in one call; every peer then divides by
//!   `N = Σn_k` and holds the whole batch's mean gradient and loss. A regulariser added on every
//!   peer is thereby counted once (`Σ n_k·γ∇R / N = γ∇R`).
//! - **BiDoRA.** The validation gradients `(∂L_val/∂M, v)` are averaged the same way, so ε uses
//!   the global `‖v‖`; each peer runs the `±` passes on its shard of the training batch and the
//!   mixed term, linear in the shards, is averaged the same way (one call per central difference).
//! - **Agreement.** The trained parameters start from rank 0's values (every other peer sends
//!   zeros: `x + 0 + … + 0 = x` exactly), the resumed step must be the same on every peer, and
//!   a stop asked for on any peer (a hook, Ctrl-C) stops all of them after the same step.
//!
//! Only adapter-sized vectors cross the wire: per search iteration, the lower-level gradient
//! (plus two floats), and for a bi-level step the upper and lower validation gradients and one
//! upper-sized mixed term per central difference, plus one float for the stop agreement;
//! [`bytes_per_iteration`] counts them.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::hypergrad::Hypergradient;
use crate::params::ParamVec;
use crate::trainer::Control;
use crate::TrainError;

/// An element-wise sum over every peer of a run: the one operation data parallelism needs.
///
/// Every peer calls it with a tensor of the same length, in the same order; the call returns
/// once every peer has contributed, with the same sum on every peer. An implementation must
/// return an error, not block for ever, when a peer has gone away.
pub trait Collective<B: Backend> {
    /// This peer's rank, `0..world`. Rank 0 writes the run's files.
    fn rank(&self) -> usize;
    /// The number of peers.
    fn world(&self) -> usize;
    /// `Σ_peers t`, element-wise.
    fn all_reduce_sum(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>, TrainError>;
}

/// The peers of a run as the engine sees them: alone, or with a [`Collective`].
pub struct Peers<'c, B: Backend> {
    collective: Option<&'c dyn Collective<B>>,
    device: B::Device,
}

impl<'c, B: Backend> Peers<'c, B> {
    /// Alone (`None`) or with `collective`; small control tensors go to `device`.
    pub fn new(collective: Option<&'c dyn Collective<B>>, device: B::Device) -> Self {
        Peers { collective, device }
    }

    /// The number of peers (1 when alone).
    pub fn world(&self) -> usize {
        self.collective.map_or(1, |c| c.world())
    }

    /// This peer's rank (0 when alone).
    pub fn rank(&self) -> usize {
        self.collective.map_or(0, |c| c.rank())
    }

    /// Whether more than one peer trains.
    pub fn is_distributed(&self) -> bool {
        self.world() > 1
    }

    /// The weighted mean over peers of `v` and of the `scalars` (losses), each peer weighing
    /// `weight` (its shard's loss units). Alone: `v` and `scalars` unchanged.
    pub fn weighted_mean(
        &self,
        v: ParamVec<B>,
        scalars: &[f64],
        weight: f64,
    ) -> Result<(ParamVec<B>, Vec<f64>), TrainError> {
        let Some(c) = self.collective.filter(|c| c.world() > 1) else {
            return Ok((v, scalars.to_vec()));
        };
        let device = &self.device;
        let mut tail: Vec<f32> = scalars.iter().map(|s| (s * weight) as f32).collect();
        tail.push(weight as f32);
        let n = v.numel();
        let flat = match v.flatten() {
            Some(t) => Tensor::cat(vec![t.mul_scalar(weight), host(&tail, device)], 0),
            None => host(&tail, device),
        };
        let sum = c.all_reduce_sum(flat)?;
        let tail = to_host(sum.clone().slice(n..n + tail.len()));
        let total = f64::from(*tail.last().unwrap_or(&0.0));
        if total <= 0.0 {
            return Err(TrainError::Config(
                "every peer's shard of a batch is empty: the batch has no loss to average".into(),
            ));
        }
        let means = tail[..scalars.len()]
            .iter()
            .map(|s| f64::from(*s) / total)
            .collect();
        let grads = if n == 0 {
            v
        } else {
            v.unflatten(sum.slice(0..n).div_scalar(total))
        };
        Ok((grads, means))
    }

    /// Rank 0's `v` on every peer (the others contribute zeros to a sum, so the values are
    /// rank 0's exactly).
    pub fn from_rank0(&self, v: ParamVec<B>) -> Result<ParamVec<B>, TrainError> {
        let Some(c) = self.collective.filter(|c| c.world() > 1) else {
            return Ok(v);
        };
        let Some(flat) = v.flatten() else {
            return Ok(v);
        };
        let mine = if c.rank() == 0 {
            flat
        } else {
            flat.zeros_like()
        };
        Ok(v.unflatten(c.all_reduce_sum(mine)?))
    }

    /// Fails unless every peer gives the same `value` (the step a run resumes from).
    pub fn agree_on(&self, what: &str, value: usize) -> Result<(), TrainError> {
        let Some(c) = self.collective.filter(|c| c.world() > 1) else {
            return Ok(());
        };
        let device = &self.device;
        // Sum and sum of squares: equal values iff world·Σx² = (Σx)².
        let x = value as f64;
        let sums = to_host(c.all_reduce_sum(host(&[x as f32, (x * x) as f32], device))?);
        let (s, s2) = (f64::from(sums[0]), f64::from(sums[1]));
        let w = c.world() as f64;
        if (w * s2 - s * s).abs() > 0.5 {
            return Err(TrainError::Config(format!(
                "the peers disagree on {what}: this peer (rank {}) has {value}, the mean over peers is {:.1}",
                c.rank(),
                s / w
            )));
        }
        Ok(())
    }

    /// `Stop` on every peer when any peer asks to stop.
    pub fn agree_control(&self, control: Control) -> Result<Control, TrainError> {
        let Some(c) = self.collective.filter(|c| c.world() > 1) else {
            return Ok(control);
        };
        let stop = if control == Control::Stop { 1.0 } else { 0.0 };
        let sum = to_host(c.all_reduce_sum(host(&[stop], &self.device))?);
        Ok(if sum[0] > 0.0 {
            Control::Stop
        } else {
            Control::Continue
        })
    }
}

fn host<B: Backend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn to_host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// Bytes all-reduced per search iteration of a run with `lower` and `upper` trained values
/// (f32), for the given hypergradient: what the scaling model in docs/DISTRIBUTED.md counts.
/// `bilevel_every` is the unroll (an upper step every that many iterations); 0 for
/// single-level training.
pub fn bytes_per_iteration(
    lower: usize,
    upper: usize,
    method: Hypergradient,
    bilevel_every: usize,
) -> f64 {
    const F: f64 = 4.0;
    // Lower step: gradient + loss + weight; stop agreement: one float.
    let lower_step = (lower + 2) as f64 * F + F;
    if bilevel_every == 0 {
        // Single level: the lower group holds every trained parameter.
        return lower_step + upper as f64 * F;
    }
    let differences = match method {
        Hypergradient::FirstOrder => 0.0,
        Hypergradient::Darts { .. } => (upper + 1) as f64,
        // Each Hessian-vector product is lower-sized, the final mixed term upper-sized.
        Hypergradient::Neumann { iterations, .. } => {
            (iterations * (lower + 1)) as f64 + (upper + 1) as f64
        }
    };
    let upper_step = (lower + upper + 2) as f64 + differences;
    lower_step + upper_step * F / bilevel_every as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    use burn::backend::NdArray;

    /// Two peers where the other one holds a fixed vector and weight.
    struct Pair {
        other: Vec<f32>,
    }
    impl Collective<NdArray<f32>> for Pair {
        fn rank(&self) -> usize {
            1
        }
        fn world(&self) -> usize {
            2
        }
        fn all_reduce_sum(
            &self,
            t: Tensor<NdArray<f32>, 1>,
        ) -> Result<Tensor<NdArray<f32>, 1>, TrainError> {
            let other = host::<NdArray<f32>>(&self.other, &t.device());
            Ok(t + other)
        }
    }

    #[test]
    fn weighted_mean_divides_by_the_total_weight() {
        let device = Default::default();
        let mine = ParamVec::from_host(&[(7, vec![1.0, 2.0])], &device);
        // The other peer: weight 3, gradient [5, 6] (sent as 3·g), loss 4 (sent as 12).
        let pair = Pair {
            other: vec![15.0, 18.0, 12.0, 3.0],
        };
        let peers = Peers::new(Some(&pair), device);
        let (g, losses) = peers.weighted_mean(mine, &[2.0], 1.0).unwrap();
        // (1·[1, 2] + 3·[5, 6]) / 4 and (1·2 + 3·4) / 4.
        assert_eq!(g.to_host(), vec![(7, vec![4.0, 5.0])]);
        assert_eq!(losses, vec![3.5]);
        // Rank 1 sends zeros: the sum is the other (rank 0) peer's values.
        let v = ParamVec::from_host(&[(7, vec![9.0, 9.0, 9.0, 9.0])], &device);
        assert_eq!(
            peers.from_rank0(v).unwrap().to_host(),
            vec![(7, vec![15.0, 18.0, 12.0, 3.0])]
        );
    }

    #[test]
    fn bytes_count_every_vector_that_crosses() {
        // Single level, 10 + 0 values: (10 + 2) + 1 floats.
        assert_eq!(
            bytes_per_iteration(10, 0, Hypergradient::FirstOrder, 0),
            52.0
        );
        // DARTS every step: lower 12 + stop 1, val 10 + 3 + 2, mixed 3 + 1.
        let d = Hypergradient::default();
        assert_eq!(bytes_per_iteration(10, 3, d, 1), (13.0 + 15.0 + 4.0) * 4.0);
        // Every other step: the upper part halves.
        assert_eq!(bytes_per_iteration(10, 3, d, 2), (13.0 + 19.0 / 2.0) * 4.0);
    }
}
