//! Matrix products straight from GGUF's quantised blocks, for decoding: each row of a weight
//! matrix `[rows, cols]` is `cols / 32` blocks of 32 values, dequantised in registers as the
//! product runs, so decoding reads 0.56 (Q4_1) or 1.06 (Q8_0) bytes a weight instead of
//! `f32`'s 4. A block dequantises to exactly the `f32` values the GGUF loader gives
//! (`(q + offset) · d + min`, the same expression), so the product is the `f32` model's up to
//! the order of the additions.

use half::f16;
use rayon::prelude::*;

/// Values per block of the quantised formats.
pub const BLOCK: usize = 32;

/// How a [`QuantMatrix`] stores its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    /// Plain `f32` (4 bytes a value, little-endian).
    F32,
    /// 34-byte blocks: an `f16` scale `d`, then 32 `i8` values `q`: `q · d`.
    Q8_0,
    /// 18-byte blocks: `d` (`f16`), then 16 bytes of 4-bit `q` (low nibbles are values 0..16,
    /// high nibbles 16..32): `(q − 8) · d`.
    Q4_0,
    /// 20-byte blocks: `d` and `min` (`f16`), then 16 bytes as Q4_0: `q · d + min`.
    Q4_1,
}

impl QuantFormat {
    /// Bytes per group of [`QuantFormat::values`] values (a block, or one `f32`).
    pub fn bytes(self) -> usize {
        match self {
            QuantFormat::F32 => 4,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
        }
    }

    /// Values per group: 1 for `f32`, [`BLOCK`] for the block formats.
    pub fn values(self) -> usize {
        match self {
            QuantFormat::F32 => 1,
            _ => BLOCK,
        }
    }
}

/// A `[rows, cols]` matrix in one of the [`QuantFormat`]s, row by row. The blocks are kept
/// split: their scales (and Q4_1's minima) as `f32`, their quantised values as bytes.
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// Per block: `d` (and for Q4_1 then `min`); `f32`: the values themselves.
    scales: Vec<f32>,
    /// Per block: 32 (`Q8_0`) or 16 (4-bit) bytes; empty for `f32`.
    quants: Vec<u8>,
}

/// Why a [`QuantMatrix`] cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The row length does not divide into blocks.
    #[error("{cols} columns do not divide into {format:?} blocks of {BLOCK}")]
    Columns {
        /// The format.
        format: QuantFormat,
        /// The row length.
        cols: usize,
    },
    /// The data is not `rows × cols` values of the format.
    #[error("{got} bytes for a {rows}×{cols} {format:?} matrix, which takes {want}")]
    Length {
        /// The format.
        format: QuantFormat,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
    /// Matrices that cannot be stacked.
    #[error("cannot stack matrices: {0}")]
    Stack(String),
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Rows of `x` handled together: each weight block is dequantised once per group. Measured on
/// SmolLM2 batch-8 decoding: 4 rows 4.4 s per 128 tokens, 2 rows 5.2 s, 8 rows 6.5 s (its
/// accumulators no longer fit the registers).
const GROUP: usize = 4;

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 32;

impl QuantFormat {
    /// `f32` scales per block in [`QuantMatrix`]'s split layout (values per value for `f32`).
    fn scales_per_block(self) -> usize {
        match self {
            QuantFormat::F32 => BLOCK,
            QuantFormat::Q4_1 => 2,
            _ => 1,
        }
    }

    /// Quantised bytes per block in the split layout.
    fn quants_per_block(self) -> usize {
        match self {
            QuantFormat::F32 => 0,
            QuantFormat::Q8_0 => 32,
            _ => 16,
        }
    }
}

impl QuantMatrix {
    /// The matrix from its GGUF bytes, rows one after another.
    pub fn new(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, QuantError> {
        if !cols.is_multiple_of(format.values()) {
            return Err(QuantError::Columns { format, cols });
        }
        let want = rows * cols / format.values() * format.bytes();
        if bytes.len() != want {
            return Err(QuantError::Length {
                format,
                rows,
                cols,
                got: bytes.len(),
                want,
            });
        }
        if format == QuantFormat::F32 {
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            return Self::from_f32(rows, cols, values);
        }
        let header = format.bytes() - format.quants_per_block();
        let (mut scales, mut quants) = (Vec::new(), Vec::with_capacity(rows * cols));
        for block in bytes.chunks_exact(format.bytes()) {
            scales.push(half_at(block, 0));
            if format == QuantFormat::Q4_1 {
                scales.push(half_at(block, 2));
            }
            quants.extend_from_slice(&block[header..]);
        }
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            scales,
            quants,
        })
    }

    /// An `f32` matrix, row-major.
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> Result<Self, QuantError> {
        let format = QuantFormat::F32;
        if values.len() != rows * cols {
            let (got, want) = (4 * values.len(), 4 * rows * cols);
            return Err(QuantError::Length {
                format,
                rows,
                cols,
                got,
                want,
            });
        }
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            scales: values,
            quants: Vec::new(),
        })
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The storage format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Row `r`'s scales and quantised bytes.
    fn row(&self, r: usize) -> (&[f32], &[u8]) {
        let f = self.format;
        if f == QuantFormat::F32 {
            return (&self.scales[r * self.cols..(r + 1) * self.cols], &[]);
        }
        let (ns, nq) = (f.scales_per_block(), f.quants_per_block());
        let blocks = self.cols / BLOCK;
        (
            &self.scales[r * blocks * ns..(r + 1) * blocks * ns],
            &self.quants[r * blocks * nq..(r + 1) * blocks * nq],
        )
    }

    /// The rows in the order `order` gives (row `i` of the result is row `order[i]`).
    ///
    /// # Panics
    /// When `order` names a row past the matrix.
    pub fn reorder_rows(&self, order: &[usize]) -> Self {
        let (mut scales, mut quants) = (Vec::new(), Vec::new());
        for &r in order {
            let (s, q) = self.row(r);
            scales.extend_from_slice(s);
            quants.extend_from_slice(q);
        }
        QuantMatrix {
            rows: order.len(),
            scales,
            quants,
            ..*self
        }
    }

    /// The matrices' rows one after another (one product instead of several).
    ///
    /// # Errors
    /// When their formats or row lengths differ.
    pub fn stack(parts: &[QuantMatrix]) -> Result<Self, QuantError> {
        let Some(first) = parts.first() else {
            return Err(QuantError::Stack("no matrices".into()));
        };
        if let Some(p) = parts
            .iter()
            .find(|p| p.format != first.format || p.cols != first.cols)
        {
            return Err(QuantError::Stack(format!(
                "{:?} with {} columns after {:?} with {}",
                p.format, p.cols, first.format, first.cols
            )));
        }
        Ok(QuantMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            scales: parts
                .iter()
                .flat_map(|p| p.scales.iter().copied())
                .collect(),
            quants: parts
                .iter()
                .flat_map(|p| p.quants.iter().copied())
                .collect(),
            ..*first
        })
    }

    /// Row `r` as `f32` into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (scales, quants) = self.row(r);
        match self.format {
            QuantFormat::F32 => out.copy_from_slice(scales),
            f => {
                let (ns, nq) = (f.scales_per_block(), f.quants_per_block());
                let mut w = [0.0f32; BLOCK];
                for (b, o) in out.chunks_mut(BLOCK).enumerate() {
                    let (s, q) = (&scales[b * ns..(b + 1) * ns], &quants[b * nq..(b + 1) * nq]);
                    decode(f, s, q, &mut w);
                    o.copy_from_slice(&w);
                }
            }
        }
    }

    /// `out = x · Wᵀ`: `x` is `[n, cols]` row-major, `out` `[n, rows]`, on rayon's threads
    /// (split by output rows; the same bits whatever the number of threads).
    ///
    /// # Panics
    /// When the slices do not have these sizes (a caller's bug).
    pub fn matmul_t(&self, x: &[f32], n: usize, out: &mut [f32]) {
        assert!(
            x.len() == n * self.cols && out.len() == n * self.rows,
            "quant matmul: x {} for {n}×{}, out {} for {n}×{}",
            x.len(),
            self.cols,
            out.len(),
            self.rows
        );
        // Each task fills its rows of the transposed product, `[rows, n]`.
        let mut t = vec![0.0f32; self.rows * n];
        t.par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(task, chunk)| {
                let first = task * ROWS_PER_TASK;
                super::math::wide(
                    #[inline(always)]
                    || match self.format {
                        QuantFormat::F32 => self.task::<F32Rows>(first, x, n, chunk),
                        QuantFormat::Q8_0 => self.task::<Q8_0>(first, x, n, chunk),
                        QuantFormat::Q4_0 => self.task::<Q4_0>(first, x, n, chunk),
                        QuantFormat::Q4_1 => self.task::<Q4_1>(first, x, n, chunk),
                    },
                )
            });
        for (r, col) in t.chunks(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * self.rows + r] = v;
            }
        }
    }

    /// Rows `first..` of the transposed product into `chunk` (`n` values per weight row).
    #[inline(always)]
    fn task<K: Kind>(&self, first: usize, x: &[f32], n: usize, chunk: &mut [f32]) {
        let cols = self.cols;
        for (i, dst) in chunk.chunks_mut(n).enumerate() {
            let (scales, quants) = self.row(first + i);
            let mut done = 0;
            while done < n {
                let rows = x[done * cols..].len() / cols;
                let d = &mut dst[done..];
                let xs = &x[done * cols..];
                done += if K::PLAIN {
                    d[0] = super::math::dot(scales, &xs[..cols]);
                    1
                } else if rows >= GROUP {
                    dot_group::<K, GROUP>(scales, quants, xs, cols, d)
                } else {
                    dot_group::<K, 1>(scales, quants, xs, cols, d)
                };
            }
        }
    }
}

/// A storage format as a type, so each kernel is compiled for one.
trait Kind {
    /// `f32` rows (no blocks).
    const PLAIN: bool = false;
    /// `f32` scales and bytes per block.
    const SCALES: usize;
    const QUANTS: usize;
    /// One block into `w` from its scales and bytes.
    fn decode(s: &[f32], q: &[u8], w: &mut [f32; BLOCK]);
}

struct F32Rows;
struct Q8_0;
struct Q4_0;
struct Q4_1;

impl Kind for F32Rows {
    const PLAIN: bool = true;
    const SCALES: usize = BLOCK;
    const QUANTS: usize = 0;
    fn decode(s: &[f32], _: &[u8], w: &mut [f32; BLOCK]) {
        w.copy_from_slice(s);
    }
}

impl Kind for Q8_0 {
    const SCALES: usize = 1;
    const QUANTS: usize = 32;
    #[inline(always)]
    fn decode(s: &[f32], q: &[u8], w: &mut [f32; BLOCK]) {
        for (w, &q) in w.iter_mut().zip(q) {
            *w = s[0] * f32::from(q as i8);
        }
    }
}

/// Q4_0 and Q4_1: `(q + offset) · d + min`, low nibbles first.
#[inline(always)]
fn decode_4bit(d: f32, offset: f32, min: f32, q: &[u8], w: &mut [f32; BLOCK]) {
    for j in 0..16 {
        w[j] = (f32::from(q[j] & 0x0F) + offset) * d + min;
        w[j + 16] = (f32::from(q[j] >> 4) + offset) * d + min;
    }
}

impl Kind for Q4_0 {
    const SCALES: usize = 1;
    const QUANTS: usize = 16;
    #[inline(always)]
    fn decode(s: &[f32], q: &[u8], w: &mut [f32; BLOCK]) {
        decode_4bit(s[0], -8.0, 0.0, q, w);
    }
}

impl Kind for Q4_1 {
    const SCALES: usize = 2;
    const QUANTS: usize = 16;
    #[inline(always)]
    fn decode(s: &[f32], q: &[u8], w: &mut [f32; BLOCK]) {
        decode_4bit(s[0], 0.0, s[1], q, w);
    }
}

/// `dst[i] = x_i · row` for the first `R` rows `x_i` of `x` (`cols` each), the row in format
/// `K` given by its scales and quantised bytes. Returns `R`.
#[inline(always)]
fn dot_group<K: Kind, const R: usize>(
    scales: &[f32],
    quants: &[u8],
    x: &[f32],
    cols: usize,
    dst: &mut [f32],
) -> usize {
    let mut acc = [[0.0f32; BLOCK]; R];
    let mut w = [0.0f32; BLOCK];
    let blocks = scales
        .chunks_exact(K::SCALES)
        .zip(quants.chunks_exact(K::QUANTS));
    for (b, (s, q)) in blocks.enumerate() {
        K::decode(s, q, &mut w);
        for (r, acc) in acc.iter_mut().enumerate() {
            let xs = &x[r * cols + b * BLOCK..r * cols + (b + 1) * BLOCK];
            for l in 0..BLOCK {
                acc[l] += w[l] * xs[l];
            }
        }
    }
    for (d, a) in dst.iter_mut().zip(&acc) {
        *d = super::math::sum(a);
    }
    R
}

/// One block of a block format into `w` (an embedding row's lookup).
fn decode(f: QuantFormat, s: &[f32], q: &[u8], w: &mut [f32; BLOCK]) {
    match f {
        QuantFormat::F32 => F32Rows::decode(s, q, w),
        QuantFormat::Q8_0 => Q8_0::decode(s, q, w),
        QuantFormat::Q4_0 => Q4_0::decode(s, q, w),
        QuantFormat::Q4_1 => Q4_1::decode(s, q, w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every format with known values: `d = 0.5`, `min = −1` (f16-exact).
    fn blocks(f: QuantFormat, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
        let (d, min) = (
            f16::from_f32(0.5).to_le_bytes(),
            f16::from_f32(-1.0).to_le_bytes(),
        );
        let (mut bytes, mut values) = (Vec::new(), Vec::new());
        for r in 0..rows {
            for b in 0..cols / BLOCK {
                let q = |j: usize| ((r * 7 + b * 3 + j * 5) % 16) as u8;
                match f {
                    QuantFormat::Q8_0 => {
                        bytes.extend(d);
                        for j in 0..BLOCK {
                            let v = q(j) as i8 - 9;
                            bytes.push(v as u8);
                            values.push(0.5 * f32::from(v));
                        }
                    }
                    QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                        bytes.extend(d);
                        if f == QuantFormat::Q4_1 {
                            bytes.extend(min);
                        }
                        bytes.extend((0..16).map(|j| q(j) | (q(j + 16) << 4)));
                        let (off, m) = if f == QuantFormat::Q4_1 {
                            (0.0, -1.0)
                        } else {
                            (-8.0, 0.0)
                        };
                        values.extend((0..BLOCK).map(|j| (f32::from(q(j)) + off) * 0.5 + m));
                    }
                    QuantFormat::F32 => {
                        for j in 0..BLOCK {
                            let v = f32::from(q(j)) * 0.25 - 1.0;
                            bytes.extend(v.to_le_bytes());
                            values.push(v);
                        }
                    }
                }
            }
        }
        (bytes, values)
    }

    #[test]
    fn products_and_rows_equal_the_dequantised_matrix() {
        let (rows, cols) = (70, 96);
        for f in [
            QuantFormat::F32,
            QuantFormat::Q8_0,
            QuantFormat::Q4_0,
            QuantFormat::Q4_1,
        ] {
            let (bytes, w) = blocks(f, rows, cols);
            let m = QuantMatrix::new(f, rows, cols, bytes).unwrap();
            let mut row = vec![0.0; cols];
            m.dequantize_row(5, &mut row);
            assert_eq!(row, w[5 * cols..6 * cols], "{f:?}");
            // 1 row (decoding), 8 (one group) and 11 (a group and a part).
            for n in [1, 8, 11] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 13) % 7) as f32 * 0.5 - 1.5)
                    .collect();
                let mut out = vec![0.0; n * rows];
                m.matmul_t(&x, n, &mut out);
                for i in 0..n {
                    for r in 0..rows {
                        // Small integers and halves: every sum is exact.
                        let want: f32 = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
                        assert_eq!(out[i * rows + r], want, "{f:?} n {n} [{i}, {r}]");
                    }
                }
            }
            let swapped = m.reorder_rows(&[3, 0]);
            swapped.dequantize_row(0, &mut row);
            assert_eq!(row, w[3 * cols..4 * cols]);
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(matches!(
            QuantMatrix::new(QuantFormat::Q4_1, 2, 33, vec![0; 40]),
            Err(QuantError::Columns { cols: 33, .. })
        ));
        let err = QuantMatrix::new(QuantFormat::Q8_0, 2, 64, vec![0; 100]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "100 bytes for a 2×64 Q8_0 matrix, which takes 136"
        );
    }
}
