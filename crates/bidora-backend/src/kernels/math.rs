//! The arithmetic of the fused kernels on host slices of `f32`: plain loops the compiler
//! vectorises, split over rayon's threads in fixed blocks, so every result is the same
//! whatever the number of threads (reductions run inside a row or in block order).

use rayon::prelude::*;

/// Elements per parallel task of the element-wise kernels (64 KiB of `f32`).
const BLOCK: usize = 16 * 1024;
/// Below this many elements a kernel runs on the calling thread.
const SERIAL_BELOW: usize = 32 * 1024;

/// `e^x` in `f32` to within 2 ulp for `x` in [−87, 88]; 0 below −87 (`e^−87` is 1.6e−38, at
/// the bottom of the normal range), `+inf` above 88.7, NaN for NaN.
///
/// `x = n ln 2 + r` with `n` rounded to nearest (|r| ≤ ln 2 / 2, `ln 2` split in two parts so
/// `n ln 2` is exact), `e^r` by its Taylor polynomial to degree 7 (truncation < 6e−9
/// relative), and `2^n` built in the exponent bits. Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // The f32 nearest 0.69314575 is 0.693145751953125, 16 significant bits: n · LN2_HI is
    // exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2_E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let y = p * scale;
    if x < -87.0 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// `Φ(x)` and `φ(x)`, the standard normal cdf and density, from erf by Abramowitz and Stegun
/// 7.1.26 (absolute error of erf at most 1.5e−7, that is ≤ 7.5e−8 on Φ: below the `f32`
/// spacing of values near 1).
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    // 1 / sqrt(2 pi)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // e^(−z²) = e^(−x²/2): the same factor gives erf and the density.
    let gauss = exp(-z * z);
    let erf_abs = 1.0 - poly * gauss;
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), INV_SQRT_2PI * gauss)
}

/// Lanes of the reductions below: eight independent partial sums the compiler keeps in one
/// vector register, instead of one serial chain of additions (4 cycles each). The order of the
/// additions is fixed, so results do not depend on threads.
const LANES: usize = 8;

/// `Σ f(a_i, b_i)` over two slices of one length, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ f(a_i, b_i, c_i)`, as [`lane_sum`] for three slices.
#[inline(always)]
fn lane_sum3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = (ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder()))
    .map(|((&x, &y), &z)| f(x, y, z))
    .sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l], z[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ x_i`.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    lane_sum(x, x, |a, _| a)
}

/// `Σ a_i b_i`.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| x * y)
}

/// `max x_i` (−inf for an empty slice), in [`LANES`] partial maxima.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Runs `f` compiled for AVX-512 (x86-64-v4) when the CPU has it, else as built (SSE2 on a
/// default x86-64 target): the element-wise loops vectorise 16 wide instead of 4.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if v4::available() {
        return v4::run(f);
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod v4 {
    /// Whether the CPU has every feature [`with_v4`] is compiled for.
    #[inline(always)]
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }

    #[inline(always)]
    pub fn run<R>(f: impl FnOnce() -> R) -> R {
        // SAFETY: `with_v4` only differs from `f()` in the instructions it may use, and
        // callers check `available()` first: the CPU has all of them.
        unsafe { with_v4(f) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    unsafe fn with_v4<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Runs `f` over matching blocks of `out` and `inputs`, in parallel when large.
fn blocks<const N: usize>(
    out: &mut [f32],
    inputs: [&[f32]; N],
    f: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
) {
    let len = out.len();
    debug_assert!(inputs.iter().all(|i| i.len() == len));
    if len < SERIAL_BELOW {
        return wide(|| f(out, inputs));
    }
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(i, o)| {
        let start = i * BLOCK;
        let ins = inputs.map(|s| &s[start..start + o.len()]);
        wide(|| f(o, ins))
    });
}

/// `y = x Φ(x)`, the exact (erf) GELU.
pub fn gelu_forward(x: &[f32], y: &mut [f32]) {
    blocks(y, [x], |y, [x]| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * normal_cdf_pdf(x).0;
        }
    });
}

/// `dx = dy (Φ(x) + x φ(x))`, the gradient of [`gelu_forward`].
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    blocks(dx, [x, dy], |dx, [x, dy]| {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let (cdf, pdf) = normal_cdf_pdf(x);
            *dx = dy * (cdf + x * pdf);
        }
    });
}

/// `y = x σ(x)`, the SiLU (swish) of Llama's feed-forward.
pub fn silu_forward(x: &[f32], y: &mut [f32]) {
    blocks(y, [x], |y, [x]| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x / (1.0 + exp(-x));
        }
    });
}

/// `dx = dy σ(x) (1 + x (1 − σ(x)))`, the gradient of [`silu_forward`].
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    blocks(dx, [x, dy], |dx, [x, dy]| {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let s = 1.0 / (1.0 + exp(-x));
            *dx = dy * s * (1.0 + x * (1.0 - s));
        }
    });
}

/// Runs `f` on each row (of `width` elements) of `out` and the inputs, rows split over
/// threads.
fn rows<const N: usize>(
    out: &mut [f32],
    inputs: [&[f32]; N],
    width: usize,
    f: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
) {
    if width == 0 {
        return;
    }
    let per_task = (BLOCK / width).max(1) * width;
    let run = |(i, o): (usize, &mut [f32])| {
        let start = i * per_task;
        let ins = inputs.map(|s| &s[start..start + o.len()]);
        wide(|| {
            for (r, o) in o.chunks_mut(width).enumerate() {
                f(o, ins.map(|s| &s[r * width..(r + 1) * width]));
            }
        })
    };
    if out.len() < SERIAL_BELOW {
        run((0, out));
    } else {
        out.par_chunks_mut(per_task).enumerate().for_each(run);
    }
}

/// Softmax of each row of `width` elements (the last dimension): `y = e^(x − max) / Σ`.
pub fn softmax_forward(x: &[f32], y: &mut [f32], width: usize) {
    rows(y, [x], width, |y, [x]| {
        y.copy_from_slice(x);
        softmax_row(y);
    });
}

/// Softmax of one row, in place. Inlined, so it takes the vector width of its caller
/// ([`wide`]).
#[inline(always)]
pub fn softmax_row(row: &mut [f32]) {
    let m = max(row);
    row.iter_mut().for_each(|y| *y = exp(*y - m));
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|y| *y *= inv);
}

/// The gradient of [`softmax_forward`] from its output: `dx = y (dy − Σ dy y)` per row.
pub fn softmax_backward(y: &[f32], dy: &[f32], dx: &mut [f32], width: usize) {
    rows(dx, [y, dy], width, |dx, [y, dy]| {
        let yd = dot(y, dy);
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = y * (dy - yd);
        }
    });
}

/// Mean and `1 / sqrt(var + eps)` of a row, with the biased variance (as PyTorch).
#[inline]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let var = lane_sum(x, x, |v, _| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Layer normalisation of each row of `gamma.len()` elements: `y = (x − μ) / σ · γ + β`.
pub fn layer_norm_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    rows(y, [x], gamma.len(), |y, [x]| {
        let (mean, rstd) = moments(x, eps);
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - mean) * rstd * g + b;
        }
    });
}

/// Rows per block of the γ/β gradient sums: the blocks' partial sums are added in order.
const NORM_ROWS_PER_BLOCK: usize = 64;

/// The gradients of [`layer_norm_forward`]: `dx` (same shape as `x`), `dγ` and `dβ`.
///
/// With `x̂ = (x − μ) / σ` and `g = dy γ`: `dx = (g − mean(g) − x̂ mean(g x̂)) / σ` per row,
/// `dγ = Σ_rows dy x̂`, `dβ = Σ_rows dy`.
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    if width == 0 {
        return (Vec::new(), Vec::new());
    }
    // One pass per block of rows: each row's dx, and the block's partial dγ and dβ (the
    // blocks' partials are then added in block order).
    let block = NORM_ROWS_PER_BLOCK * width;
    let run = |((dx, x), dy): ((&mut [f32], &[f32]), &[f32])| {
        wide(|| {
            let (mut dg, mut db) = (vec![0.0f32; width], vec![0.0f32; width]);
            let rows = dx
                .chunks_mut(width)
                .zip(x.chunks(width))
                .zip(dy.chunks(width));
            for ((dx, x), dy) in rows {
                layer_norm_row_backward(x, gamma, dy, eps, dx, &mut dg, &mut db);
            }
            (dg, db)
        })
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(dy.par_chunks(block))
        .map(run)
        .collect();
    let (mut dg, mut db) = (vec![0.0f32; width], vec![0.0f32; width]);
    for (pg, pb) in partials {
        dg.iter_mut().zip(&pg).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    (dg, db)
}

/// One row of [`layer_norm_backward`]: writes `dx`, adds the row's `dy x̂` and `dy` to `dg`
/// and `db`.
#[inline(always)]
fn layer_norm_row_backward(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
) {
    let (mean, rstd) = moments(x, eps);
    let n = gamma.len() as f32;
    let g_mean = dot(dy, gamma) / n;
    let gx_mean = lane_sum3(x, dy, gamma, |x, dy, g| dy * g * (x - mean)) * rstd / n;
    for j in 0..gamma.len() {
        let xhat = (x[j] - mean) * rstd;
        dx[j] = (dy[j] * gamma[j] - g_mean - xhat * gx_mean) * rstd;
        dg[j] += dy[j] * xhat;
        db[j] += dy[j];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 reference: libm's erf (fdlibm, under 1 ulp).
    fn erf64(x: f64) -> f64 {
        libm::erf(x)
    }

    fn grid() -> Vec<f32> {
        (0..=2400).map(|i| -12.0 + i as f32 * 0.01).collect()
    }

    #[test]
    fn exp_is_within_two_ulp() {
        for i in 0..=35000 {
            let x = -87.0 + i as f32 * 0.005;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-90.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn gelu_and_its_derivative_match_the_f64_formula() {
        let x = grid();
        let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        gelu_forward(&x, &mut y);
        gelu_backward(&x, &vec![1.0; x.len()], &mut dx);
        for ((&x, &y), &dx) in x.iter().zip(&y).zip(&dx) {
            let xd = x as f64;
            let cdf = 0.5 * (1.0 + erf64(xd / std::f64::consts::SQRT_2));
            let pdf = (-xd * xd / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let tol = 2e-7 * xd.abs().max(1.0);
            assert!((y as f64 - xd * cdf).abs() < tol, "gelu({x}) = {y}");
            assert!(
                (dx as f64 - (cdf + xd * pdf)).abs() < tol,
                "gelu'({x}) = {dx}"
            );
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_f64() {
        let width = 37;
        let x: Vec<f32> = (0..width * 50)
            .map(|i| ((i * 7919) % 113) as f32 * 0.17 - 9.0)
            .collect();
        let mut y = vec![0.0; x.len()];
        softmax_forward(&x, &mut y, width);
        for (xr, yr) in x.chunks(width).zip(y.chunks(width)) {
            let max = xr.iter().copied().fold(f32::MIN, f32::max) as f64;
            let sum: f64 = xr.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (&xv, &yv) in xr.iter().zip(yr) {
                let want = (xv as f64 - max).exp() / sum;
                assert!((yv as f64 - want).abs() < 1e-7 + 1e-6 * want);
            }
        }
        // A row with masked (−inf) entries gives them exactly 0.
        let mut y = vec![0.0; 3];
        softmax_forward(&[0.0, f32::NEG_INFINITY, 0.0], &mut y, 3);
        assert_eq!(y, vec![0.5, 0.0, 0.5]);
    }

    #[test]
    fn softmax_backward_is_the_jacobian_product() {
        let (y, dy) = ([0.2f32, 0.5, 0.3], [1.0f32, -2.0, 0.5]);
        let mut dx = [0.0; 3];
        softmax_backward(&y, &dy, &mut dx, 3);
        // J = diag(y) − y yᵀ; dx = J dy; Σ y dy = 0.2 − 1.0 + 0.15 = −0.65.
        let want = [0.2 * 1.65, 0.5 * (-1.35), 0.3 * 1.15];
        for (g, w) in dx.iter().zip(want) {
            assert!((g - w).abs() < 1e-7, "{dx:?}");
        }
    }

    #[test]
    fn layer_norm_matches_a_hand_computed_row() {
        // Row [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
        let x = [1.0f32, 2.0, 3.0, 6.0];
        let (gamma, beta) = ([1.0f32, 2.0, 0.5, -1.0], [0.0f32, 1.0, 0.0, 0.5]);
        let mut y = [0.0; 4];
        layer_norm_forward(&x, &gamma, &beta, 0.0, &mut y);
        let s = 3.5f32.sqrt();
        let want = [-2.0 / s, 2.0 * (-1.0 / s) + 1.0, 0.0, -(3.0 / s) + 0.5];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn layer_norm_gradients_match_finite_differences() {
        let width = 6;
        let x: Vec<f32> = (0..width * 70)
            .map(|i| ((i * 31) % 17) as f32 * 0.3 - 2.0)
            .collect();
        let gamma: Vec<f32> = (0..width).map(|j| 0.5 + j as f32 * 0.1).collect();
        let beta = vec![0.1f32; width];
        let dy: Vec<f32> = (0..x.len())
            .map(|i| ((i * 13) % 7) as f32 * 0.2 - 0.6)
            .collect();
        let eps = 1e-5;
        let mut dx = vec![0.0; x.len()];
        let (dg, db) = layer_norm_backward(&x, &gamma, &dy, eps, &mut dx);
        // L = Σ dy ⊙ y, in f64 through the same formula.
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let mut y = vec![0.0; x.len()];
            layer_norm_forward(x, gamma, beta, eps, &mut y);
            y.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let h = 1e-2f32;
        let central = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
        for i in [0, 5, 77, 200, x.len() - 1] {
            let d = central(&|e| {
                let mut xp = x.clone();
                xp[i] += e;
                loss(&xp, &gamma, &beta)
            });
            assert!((dx[i] as f64 - d).abs() < 2e-3, "dx[{i}] {} vs {d}", dx[i]);
        }
        for j in 0..width {
            let d = central(&|e| {
                let mut g = gamma.clone();
                g[j] += e;
                loss(&x, &g, &beta)
            });
            assert!(
                (dg[j] as f64 - d).abs() < 2e-3 * d.abs().max(1.0),
                "dgamma[{j}]"
            );
            let want_db: f64 = dy.iter().skip(j).step_by(width).map(|&v| v as f64).sum();
            assert!((db[j] as f64 - want_db).abs() < 1e-4, "dbeta[{j}]");
        }
    }
}
