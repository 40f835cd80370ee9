//! A safe face on the `gemm` crate's f32 matrix product, the GEMM of the fused kernels.
//!
//! Measured on this project's CPU (docs/PERFORMANCE.md, session 6): `gemm` with its AVX-512
//! (`x86-v4`) kernels runs 2048 × 384 × 1536 at 241 GFLOP/s on one thread and 470 on two,
//! where matrixmultiply (Burn's ndarray GEMM) reaches 188 and 376. It picks its kernels at run
//! time from the CPU's features, and runs its threads on rayon's pool.

/// A read-only `rows × cols` matrix inside a slice: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`. Transposing swaps the strides, never the data.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Step between rows.
    pub row_stride: usize,
    /// Step between columns.
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix filling `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (a view).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b));
        last.is_some_and(|l| l < self.data.len())
            && self.row_stride <= isize::MAX as usize
            && self.col_stride <= isize::MAX as usize
    }
}

/// `out = a · b` (or `out += a · b` with `accumulate`), `out` row-major `a.rows × b.cols`, on
/// up to `threads` of rayon's threads (1 = the calling thread only).
///
/// # Panics
/// When the shapes disagree or a matrix does not fit in its slice: callers pass shapes they
/// computed, so this is a bug, never bad input.
pub fn gemm(out: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && out.len() == m * n,
        "gemm shapes: {m}×{k} · {}×{n} into {}",
        b.rows,
        out.len()
    );
    assert!(
        a.in_bounds() && b.in_bounds(),
        "gemm operand outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    if threads > 1 && m <= FEW_ROWS && n >= threads * MIN_BLOCK {
        return few_rows(out, a, b, accumulate, threads);
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    imp::gemm(out, a, b, n, accumulate, parallelism);
}

/// At most this many rows of `a` take [`few_rows`]: decoding's matrix-vector products.
const FEW_ROWS: usize = 16;

/// The narrowest column block [`few_rows`] gives a thread.
const MIN_BLOCK: usize = 64;

/// `a · b` for an `a` of few rows (decoding one token per sequence), split by columns of `b`
/// over `threads` of rayon's threads. `gemm` runs such a product on one thread, so it would
/// read the weights at one core's memory bandwidth; split, each core streams its own columns.
/// Each block goes through a small buffer `[m, block]` into `out`.
fn few_rows(out: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool, threads: usize) {
    use rayon::prelude::*;
    let (m, n) = (a.rows, b.cols);
    let block = n.div_ceil(threads);
    let blocks: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(block)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|j0| {
            let w = block.min(n - j0);
            let cols = Mat {
                data: &b.data[j0 * b.col_stride..],
                cols: w,
                ..b
            };
            let mut part = vec![0.0; m * w];
            imp::gemm(&mut part, a, cols, w, false, gemm::Parallelism::None);
            (j0, part)
        })
        .collect();
    for (j0, part) in blocks {
        let w = part.len() / m;
        for (row, src) in out.chunks_mut(n).zip(part.chunks(w)) {
            let dst = &mut row[j0..j0 + w];
            if accumulate {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
}

#[allow(unsafe_code)]
mod imp {
    use super::Mat;

    pub(super) fn gemm(
        out: &mut [f32],
        a: Mat<'_>,
        b: Mat<'_>,
        n: usize,
        accumulate: bool,
        par: gemm::Parallelism,
    ) {
        // SAFETY: `super::gemm` checked that `a` and `b` lie inside their slices and that `out`
        // holds exactly `a.rows × n` elements (row-major, row stride `n`), with every stride
        // fitting `isize`; `out` is a unique borrow, so it aliases neither input. `gemm` reads
        // `dst` only when `read_dst` (accumulate) is set, and writes each of its elements.
        unsafe {
            gemm::gemm(
                a.rows,
                n,
                a.cols,
                out.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                a.data.as_ptr(),
                a.col_stride as isize,
                a.row_stride as isize,
                b.data.as_ptr(),
                b.col_stride as isize,
                b.row_stride as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat<'_>, b: Mat<'_>) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| {
                        a.data[i * a.row_stride + p * a.col_stride] as f64
                            * b.data[p * b.row_stride + j * b.col_stride] as f64
                    })
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn products_with_transposes_strides_and_accumulation() {
        let (m, k, n) = (37, 19, 23);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5) % 13) as f32 * 0.5 - 3.0)
            .collect();
        let (am, bm) = (Mat::row_major(&a, m, k), Mat::row_major(&b, k, n));
        for threads in [1, 2] {
            let mut out = vec![0.0; m * n];
            gemm(&mut out, am, bm, false, threads);
            assert_eq!(out, naive(am, bm), "threads {threads}");
            // Aᵀ is k × m stored row-major as m × k: (Aᵀ)ᵀ · B = A · B.
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let mut again = vec![0.0; m * n];
            gemm(
                &mut again,
                Mat::row_major(&at, k, m).t(),
                bm,
                false,
                threads,
            );
            assert_eq!(again, out);
            // Accumulate: out + A·B = 2 A·B.
            gemm(&mut again, am, bm, true, threads);
            assert!(again.iter().zip(&out).all(|(x, y)| *x == 2.0 * y));
        }
        // Integer-valued inputs: every product and sum is exact in f32.
    }

    #[test]
    fn few_rows_split_by_columns_equal_the_whole_product() {
        // Decoding's shapes: 1 and 3 rows, a plain and a transposed (tied head) `b`, with an
        // uneven last block.
        let (k, n) = (40, 2 * MIN_BLOCK + 13);
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 17) as f32 - 8.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        for m in [1, 3] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
            let am = Mat::row_major(&a, m, k);
            for bm in [Mat::row_major(&b, k, n), Mat::row_major(&bt, n, k).t()] {
                let want = naive(am, bm);
                let mut out = vec![0.0; m * n];
                gemm(&mut out, am, bm, false, 2);
                assert_eq!(out, want, "m = {m}");
                gemm(&mut out, am, bm, true, 2);
                assert!(out.iter().zip(&want).all(|(x, y)| *x == 2.0 * y));
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside its slice")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0.0; 10];
        let bad = Mat {
            data: &a,
            rows: 3,
            cols: 4,
            row_stride: 4,
            col_stride: 1,
        };
        gemm(
            &mut [0.0; 12],
            bad,
            Mat::row_major(&[0.0; 16], 4, 4),
            false,
            1,
        );
    }
}
