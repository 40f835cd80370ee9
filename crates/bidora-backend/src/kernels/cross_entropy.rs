//! Cross-entropy of a linear head without its full logits: the LM head's loss at a decoder's
//! training positions, `mean_i (logsumexp(x_i Wᵀ) − (x_i Wᵀ)[t_i])`.
//!
//! The logits of a 49,152-token vocabulary at 2,048 positions take 400 MB; composed, the log
//! softmax and its backward allocate several such tensors a step, each above glibc's largest
//! `mmap` threshold (32 MiB), so every one is faulted in fresh (session 10's profile: 40% of a
//! SmolLM2 training step in `clear_page`). Here the rows go through in chunks of at most
//! [`CHUNK_BYTES`] of logits, reused, and the gradients `∂L/∂x` and `∂L/∂W` are formed in the
//! same pass (softmax minus one-hot, times `W` or `x`), so nothing of vocabulary size outlives a
//! chunk.

use rayon::prelude::*;

use super::gemm::{gemm, Mat};
use super::math;

/// The largest block of logits held at once: 16 MiB, under glibc's `mmap` threshold.
pub const CHUNK_BYTES: usize = 16 << 20;

/// The loss and, where asked for, its gradients at an upstream gradient of 1.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadLoss {
    /// The mean over the kept rows (0 when none is kept).
    pub loss: f32,
    /// `∂loss/∂x`, row-major like `x`.
    pub dx: Option<Vec<f32>>,
    /// `∂loss/∂W`, row-major `[vocab, hidden]`.
    pub dtable: Option<Vec<f32>>,
}

/// Rows of logits per chunk for a vocabulary of `vocab`.
fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_BYTES / (4 * vocab.max(1))).max(1)
}

/// Rows `start..start + len` of `m` (a view).
fn row_range(m: Mat<'_>, start: usize, len: usize) -> Mat<'_> {
    Mat {
        data: &m.data[start * m.row_stride..],
        rows: len,
        ..m
    }
}

/// The mean cross-entropy of the logits `x · tableᵀ` (`x` `[n, hidden]`, `table`
/// `[vocab, hidden]`) against `targets` `[n]`; negative targets (PyTorch's `ignore_index =
/// −100`) are skipped. `grad_x` / `grad_table` ask for the gradients.
///
/// The result is the same whatever the number of threads (rows are reduced one by one, the
/// chunks added in order).
///
/// # Panics
/// When the shapes disagree or a target is at least `vocab`: callers check token ids against the
/// vocabulary before training, so this is a bug, never bad input.
pub fn linear_cross_entropy(
    x: Mat<'_>,
    table: Mat<'_>,
    targets: &[i64],
    grad_x: bool,
    grad_table: bool,
) -> HeadLoss {
    let per_chunk = chunk_rows(table.rows);
    in_chunks(x, table, targets, (grad_x, grad_table), per_chunk)
}

/// [`linear_cross_entropy`] with `per_chunk` rows of logits at a time.
fn in_chunks(
    x: Mat<'_>,
    table: Mat<'_>,
    targets: &[i64],
    (grad_x, grad_table): (bool, bool),
    per_chunk: usize,
) -> HeadLoss {
    let (n, hidden, vocab) = (x.rows, x.cols, table.rows);
    assert!(
        table.cols == hidden && targets.len() == n,
        "linear_cross_entropy shapes: x {n}×{hidden}, table {vocab}×{}, {} targets",
        table.cols,
        targets.len()
    );
    if let Some(t) = targets.iter().find(|&&t| t >= vocab as i64) {
        panic!("linear_cross_entropy: target {t} outside a vocabulary of {vocab}");
    }
    let kept = targets.iter().filter(|&&t| t >= 0).count();
    let scale = 1.0 / kept.max(1) as f32;
    let grads = grad_x || grad_table;
    let threads = rayon::current_num_threads();
    let mut logits = vec![0.0f32; per_chunk.min(n) * vocab];
    let mut losses = vec![0.0f32; n];
    let mut dx = grad_x.then(|| vec![0.0f32; n * hidden]);
    let mut dtable = grad_table.then(|| vec![0.0f32; vocab * hidden]);
    for start in (0..n).step_by(per_chunk) {
        let rows = per_chunk.min(n - start);
        let block = &mut logits[..rows * vocab];
        let xs = row_range(x, start, rows);
        gemm(block, xs, table.t(), false, threads);
        let range = start..start + rows;
        rows_loss(
            block,
            vocab,
            &targets[range.clone()],
            scale,
            grads,
            &mut losses[range],
        );
        let dlogits = Mat::row_major(block, rows, vocab);
        if let Some(dx) = dx.as_deref_mut() {
            let out = &mut dx[start * hidden..(start + rows) * hidden];
            gemm(out, dlogits, table, false, threads);
        }
        if let Some(dt) = dtable.as_deref_mut() {
            gemm(dt, dlogits.t(), xs, true, threads);
        }
    }
    let total: f64 = losses.iter().map(|&l| f64::from(l)).sum();
    HeadLoss {
        loss: (total * f64::from(scale)) as f32,
        dx,
        dtable,
    }
}

/// Each row's loss `logsumexp(row) − row[t]` into `losses`; with `grads`, each row becomes its
/// gradient `scale · (softmax(row) − onehot(t))` (a skipped row becomes zeros).
fn rows_loss(
    block: &mut [f32],
    width: usize,
    targets: &[i64],
    scale: f32,
    grads: bool,
    losses: &mut [f32],
) {
    let one = |(row, (&t, loss)): (&mut [f32], (&i64, &mut f32))| {
        if t < 0 {
            row.fill(0.0);
            return;
        }
        math::wide(|| {
            let picked = row[t as usize];
            let top = math::max(row);
            row.iter_mut().for_each(|v| *v = math::exp(*v - top));
            let total = math::sum(row);
            *loss = top + total.ln() - picked;
            if grads {
                let s = scale / total;
                row.iter_mut().for_each(|v| *v *= s);
                row[t as usize] -= scale;
            }
        })
    };
    block
        .par_chunks_mut(width)
        .zip(targets.par_iter().zip(losses.par_iter_mut()))
        .for_each(one);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss and gradients in f64 from the full logits.
    fn reference(x: &[f32], table: &[f32], targets: &[i64], h: usize) -> (f64, Vec<f64>, Vec<f64>) {
        let (n, v) = (targets.len(), table.len() / h);
        let kept = targets.iter().filter(|&&t| t >= 0).count().max(1) as f64;
        let (mut loss, mut dx, mut dt) = (0.0, vec![0.0; n * h], vec![0.0; v * h]);
        for i in 0..n {
            if targets[i] < 0 {
                continue;
            }
            let logits: Vec<f64> = (0..v)
                .map(|j| {
                    (0..h)
                        .map(|p| f64::from(x[i * h + p]) * f64::from(table[j * h + p]))
                        .sum()
                })
                .collect();
            let top = logits.iter().copied().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - top).exp()).sum();
            let t = targets[i] as usize;
            loss += (top + z.ln() - logits[t]) / kept;
            for j in 0..v {
                let g = ((logits[j] - top).exp() / z - f64::from(u8::from(j == t))) / kept;
                for p in 0..h {
                    dx[i * h + p] += g * f64::from(table[j * h + p]);
                    dt[j * h + p] += g * f64::from(x[i * h + p]);
                }
            }
        }
        (loss, dx, dt)
    }

    fn close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn loss_and_gradients_equal_the_full_logits_in_f64_across_chunks() {
        // Rows in three chunks (3, 3, 1), an ignored row, and a transposed table view (an
        // untied `lm_head` stored `[hidden, vocab]`).
        let (n, h, v) = (7, 5, 1000);
        let x: Vec<f32> = (0..n * h)
            .map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.5)
            .collect();
        let table: Vec<f32> = (0..v * h)
            .map(|i| ((i * 13) % 29) as f32 * 0.05 - 0.7)
            .collect();
        let targets = [3, -100, 0, (v - 1) as i64, 17, 17, 500];
        let (loss, dx, dt) = reference(&x, &table, &targets, h);
        assert_eq!(chunk_rows(49_152), 85);
        let tm = Mat::row_major(&table, v, h);
        let tt: Vec<f32> = (0..h * v).map(|i| table[(i % v) * h + i / v]).collect();
        for view in [tm, Mat::row_major(&tt, h, v).t()] {
            let got = in_chunks(Mat::row_major(&x, n, h), view, &targets, (true, true), 3);
            let whole = linear_cross_entropy(Mat::row_major(&x, n, h), view, &targets, true, true);
            assert!((got.loss - whole.loss).abs() <= 1e-6 * got.loss);
            assert!(
                (f64::from(got.loss) - loss).abs() < 1e-5 * loss,
                "{} vs {loss}",
                got.loss
            );
            close(got.dx.as_deref().unwrap(), &dx);
            close(got.dtable.as_deref().unwrap(), &dt);
            let plain =
                linear_cross_entropy(Mat::row_major(&x, n, h), view, &targets, false, false);
            assert_eq!((plain.loss, plain.dx, plain.dtable), (got.loss, None, None));
        }
    }

    #[test]
    fn no_kept_row_gives_zero_and_zero_gradients() {
        let x = [1.0, 2.0];
        let table = [0.5, -1.0, 2.0, 0.0, 1.0, 1.0];
        let got = linear_cross_entropy(
            Mat::row_major(&x, 1, 2),
            Mat::row_major(&table, 3, 2),
            &[-100],
            true,
            false,
        );
        assert_eq!(got.loss, 0.0);
        assert_eq!(got.dx, Some(vec![0.0, 0.0]));
    }
}
