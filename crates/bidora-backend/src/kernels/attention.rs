//! Scaled dot-product attention on host slices, fused per (batch, head): scores, bias, softmax,
//! dropout and the context product in one task, with the heads read in place from the
//! projections' `[batch, seq, heads · head_dim]` layout (strided views, no copies), and the
//! backward likewise. Tasks run on rayon's threads; each owns its output block, so results do
//! not depend on the number of threads.

use rayon::prelude::*;

use super::dropout::Mask;
use super::gemm::{gemm, Mat};

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Batch size.
    pub batch: usize,
    /// Sequence length (queries and keys).
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

impl Dims {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    fn tasks(&self) -> usize {
        self.batch * self.heads
    }
    /// Offset of head `h` of batch `b`'s first row in a `[batch, seq, hidden]` tensor.
    fn head_offset(&self, task: usize) -> usize {
        let (b, h) = (task / self.heads, task % self.heads);
        b * self.seq * self.hidden() + h * self.head_dim
    }
}

/// An additive score bias broadcastable to `[batch, heads, seq, seq]`: contiguous values with
/// their 4 dimensions, each either full or 1.
#[derive(Clone, Copy, Debug)]
pub struct Bias<'a> {
    /// The values, row-major.
    pub values: &'a [f32],
    /// Its dimensions.
    pub dims: [usize; 4],
}

impl Bias<'_> {
    /// The bias row added to query `row` of `task`'s scores.
    fn row(&self, d: &Dims, task: usize, row: usize) -> &[f32] {
        let [bb, bh, bs, bk] = self.dims;
        let (b, h) = (task / d.heads, task % d.heads);
        let pick = |i: usize, n: usize| if n == 1 { 0 } else { i };
        let start = ((pick(b, bb) * bh + pick(h, bh)) * bs + pick(row, bs)) * bk;
        &self.values[start..start + bk]
    }
}

/// `(seq, head_dim)` view of one head in a `[batch, seq, hidden]` slice.
fn head<'a>(x: &'a [f32], d: &Dims, task: usize) -> Mat<'a> {
    Mat {
        data: &x[d.head_offset(task)..],
        rows: d.seq,
        cols: d.head_dim,
        row_stride: d.hidden(),
        col_stride: 1,
    }
}

/// Applies the dropout `mask` (if any) of `task`'s probabilities into `out`.
fn dropped<'a>(p: &'a [f32], mask: Option<&Mask>, task: usize, out: &'a mut Vec<f32>) -> &'a [f32] {
    let Some(mask) = mask else { return p };
    out.resize(p.len(), 0.0);
    mask.fill(task * p.len(), out);
    out.iter_mut().zip(p).for_each(|(m, p)| *m *= p);
    out
}

/// `[batch, heads, seq, head_dim]` blocks back into `[batch, seq, hidden]`.
fn merge_heads(blocks: &[f32], d: &Dims) -> Vec<f32> {
    let mut out = vec![0.0; blocks.len()];
    let sd = d.seq * d.head_dim;
    out.par_chunks_mut(d.hidden())
        .enumerate()
        .for_each(|(row, o)| {
            let (b, r) = (row / d.seq, row % d.seq);
            for h in 0..d.heads {
                let src = (b * d.heads + h) * sd + r * d.head_dim;
                o[h * d.head_dim..(h + 1) * d.head_dim]
                    .copy_from_slice(&blocks[src..src + d.head_dim]);
            }
        });
    out
}

/// Forward: the context `[batch, seq, hidden]` and the probabilities `[batch, heads, seq, seq]`
/// before dropout (what the backward needs).
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Bias<'_>,
    d: Dims,
    mask: Option<Mask>,
) -> (Vec<f32>, Vec<f32>) {
    let (s, hd) = (d.seq, d.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut probs = vec![0.0; d.tasks() * s * s];
    let mut ctx = vec![0.0; d.tasks() * s * hd];
    probs
        .par_chunks_mut(s * s)
        .zip(ctx.par_chunks_mut(s * hd))
        .enumerate()
        .for_each_init(Vec::new, |scratch, (t, (p, c))| {
            super::math::wide(|| {
                let (qh, kh, vh) = (head(q, &d, t), head(k, &d, t), head(v, &d, t));
                gemm(p, qh, kh.t(), false, 1);
                for (r, row) in p.chunks_mut(s).enumerate() {
                    let b = bias.row(&d, t, r);
                    row.iter_mut().zip(b).for_each(|(x, b)| *x = *x * scale + b);
                    super::math::softmax_row(row);
                }
                let pd = dropped(p, mask.as_ref(), t, scratch);
                gemm(c, Mat::row_major(pd, s, s), vh, false, 1);
            })
        });
    (merge_heads(&ctx, &d), probs)
}

/// Backward: `(dq, dk, dv)`, each `[batch, seq, hidden]`, from the output gradient `dout` and
/// what [`forward`] kept.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    d: Dims,
    mask: Option<Mask>,
) -> [Vec<f32>; 3] {
    let (s, hd) = (d.seq, d.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let n = d.tasks() * s * hd;
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    dq.par_chunks_mut(s * hd)
        .zip(dk.par_chunks_mut(s * hd))
        .zip(dv.par_chunks_mut(s * hd))
        .enumerate()
        .for_each_init(
            || (Vec::new(), vec![0.0; s * s]),
            |(scratch, ds), (t, ((dq, dk), dv))| {
                super::math::wide(|| {
                    let (qh, kh, vh, doh) = (
                        head(q, &d, t),
                        head(k, &d, t),
                        head(v, &d, t),
                        head(dout, &d, t),
                    );
                    let p = &probs[t * s * s..(t + 1) * s * s];
                    // scratch ← the mask; ds ← P ⊙ M for dv = (P ⊙ M)ᵀ dO.
                    if let Some(mask) = &mask {
                        scratch.resize(s * s, 0.0);
                        mask.fill(t * s * s, scratch);
                        let pm = p.iter().zip(scratch.iter());
                        ds.iter_mut().zip(pm).for_each(|(d, (p, m))| *d = p * m);
                    } else {
                        ds.copy_from_slice(p);
                    }
                    gemm(dv, Mat::row_major(ds, s, s).t(), doh, false, 1);
                    // ds ← ∂L/∂(dropped probs), then through the mask, the softmax and the scale.
                    gemm(ds, doh, vh.t(), false, 1);
                    if mask.is_some() {
                        ds.iter_mut().zip(scratch.iter()).for_each(|(g, m)| *g *= m);
                    }
                    for (g, p) in ds.chunks_mut(s).zip(p.chunks(s)) {
                        let gp = super::math::dot(g, p);
                        g.iter_mut()
                            .zip(p)
                            .for_each(|(g, p)| *g = p * (*g - gp) * scale);
                    }
                    let ds = Mat::row_major(ds, s, s);
                    gemm(dq, ds, kh, false, 1);
                    gemm(dk, ds.t(), qh, false, 1);
                })
            },
        );
    [
        merge_heads(&dq, &d),
        merge_heads(&dk, &d),
        merge_heads(&dv, &d),
    ]
}
