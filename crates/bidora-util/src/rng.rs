//! The run's random stream on the host: every draw that shapes a run (fresh heads, adapter
//! initialisation, dropout keys) comes from here, not from a backend's generator, so one seed
//! gives the same numbers on ndarray, WGPU and CUDA.
//!
//! The stream is a [`SplitMix64`] per thread: seeding it on one thread leaves the others alone,
//! so tests running side by side, or one training peer per thread, do not disturb each other.
//! Values are made in `f64` and rounded once to `f32`, so they depend on the seed only (and on
//! the platform's `ln`/`cos`/`sin` for normals, the host's, whatever the tensor backend).

use std::cell::Cell;

use crate::SplitMix64;

/// The state of a thread's stream before anything seeds it.
const UNSEEDED: u64 = 0x5EED_B1D0_8A00_0000;

thread_local! {
    static STREAM: Cell<u64> = const { Cell::new(UNSEEDED) };
}

/// Restarts this thread's stream at `seed`.
pub fn seed(seed: u64) {
    STREAM.with(|s| s.set(seed));
}

/// The next 64 bits of this thread's stream.
pub fn next_u64() -> u64 {
    STREAM.with(|s| {
        let mut g = SplitMix64(s.get());
        let v = g.next_u64();
        s.set(g.0);
        v
    })
}

/// A uniform `f64` in `[0, 1)` from the top 53 bits of `bits`.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `n` draws from the uniform distribution on `[low, high)`.
pub fn uniform(n: usize, low: f64, high: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (low + (high - low) * unit(next_u64())) as f32)
        .collect()
}

/// `n` draws from the normal distribution `N(mean, std²)` (Box–Muller: two values per pair of
/// 64-bit draws).
pub fn normal(n: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 − u lies in (0, 1], so its logarithm is finite.
        let radius = (-2.0 * (1.0 - unit(next_u64())).ln()).sqrt();
        let angle = std::f64::consts::TAU * unit(next_u64());
        out.push((mean + std * radius * angle.cos()) as f32);
        out.push((mean + std * radius * angle.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_splitmix_from_the_seed_and_per_thread() {
        seed(0);
        // SplitMix64's reference outputs at seed 0 (see the crate's test).
        assert_eq!(next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(next_u64(), 0x6E78_9E6A_A1B9_65F4);
        seed(0);
        let here = uniform(4, 0.0, 1.0);
        // Another thread, seeded alike, draws the same; its draws leave this stream alone.
        let there = std::thread::spawn(|| {
            seed(0);
            uniform(4, 0.0, 1.0)
        })
        .join()
        .unwrap();
        assert_eq!(here, there);
        let next = uniform(1, 0.0, 1.0);
        seed(0);
        assert_eq!(uniform(5, 0.0, 1.0)[4], next[0]);
    }

    #[test]
    fn uniform_and_normal_have_their_moments_and_bounds() {
        seed(7);
        let n = 200_000;
        let u = uniform(n, -0.5, 1.5);
        assert!(u.iter().all(|&v| (-0.5..1.5).contains(&v)));
        let mean = u.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        // Uniform on [-0.5, 1.5): mean 0.5, sd 2/√12 = 0.577; standard error 1.3e-3.
        assert!((mean - 0.5).abs() < 6e-3, "uniform mean {mean}");
        let z = normal(n + 1, 2.0, 3.0);
        assert_eq!(z.len(), n + 1);
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / z.len() as f64;
        // Standard errors: mean 3/√n = 6.7e-3, variance 9·√(2/n) = 0.028.
        assert!((mean - 2.0).abs() < 0.04, "normal mean {mean}");
        assert!((var - 9.0).abs() < 0.15, "normal variance {var}");
        // A normal's tail: P(|z − μ| > 2σ) = 0.0455.
        let tail = z.iter().filter(|&&v| (v as f64 - 2.0).abs() > 6.0).count() as f64 / n as f64;
        assert!((tail - 0.0455).abs() < 3e-3, "two-sigma tail {tail}");
    }
}
