//! The fused kernels on Burn's ndarray backend (`f32`), with and without autodiff.
//!
//! Library code is generic over `B: Backend`; the kernels apply when `B` is, at run time,
//! `NdArray<f32>` or `Autodiff<NdArray<f32>>`. The check is a type comparison through
//! [`std::any::Any`] (no bound is added to the models' generics and no unsafe code is used),
//! and it hands the tensor back unchanged for every other backend, which then runs the
//! composed form. On autodiff each kernel is one graph node whose backward is the matching
//! fused kernel.

use std::any::Any;
use std::borrow::Cow;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::ndarray::NdArrayTensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};

use super::attention::{self as attn, Bias, Dims};
use super::dropout::Mask;
use super::gemm::{gemm, Mat};
use super::math;

type Nd = burn::backend::NdArray<f32>;
type Ad = Autodiff<Nd>;

/// `t` as a `U` when `T` is `U`, else `t` back.
fn cast<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    let mut slot = Some(t);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(u) => Ok(u.take().unwrap_or_else(|| unreachable!("the slot is full"))),
        None => Err(slot.unwrap_or_else(|| unreachable!("the slot is full"))),
    }
}

/// Back from the concrete type to the caller's, which `cast` has shown to be the same.
fn uncast<T: 'static, U: 'static>(t: T) -> U {
    cast(t).unwrap_or_else(|_| unreachable!("the types were checked equal"))
}

/// An `f32` tensor's elements in row-major order: borrowed when contiguous, else copied.
fn host(t: &NdArrayTensor) -> Option<Cow<'_, [f32]>> {
    let NdArrayTensor::F32(storage) = t else {
        return None;
    };
    let view = storage.view();
    Some(match view.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(view.iter().copied().collect()),
    })
}

fn from_host(values: Vec<f32>, like: &NdArrayTensor) -> NdArrayTensor {
    NdArrayTensor::from_data(TensorData::new(values, like.shape()))
}

fn last_dim(t: &NdArrayTensor) -> usize {
    let shape = t.shape();
    shape.as_slice().last().copied().unwrap_or(1)
}

/// Which kernel a one-input node runs.
#[derive(Clone, Copy, Debug)]
pub(super) enum Unary {
    Gelu,
    Softmax,
}

impl Unary {
    fn forward(self, x: &NdArrayTensor) -> NdArrayTensor {
        let xs = host(x).unwrap_or_default();
        let mut y = vec![0.0; xs.len()];
        match self {
            Unary::Gelu => math::gelu_forward(&xs, &mut y),
            Unary::Softmax => math::softmax_forward(&xs, &mut y, last_dim(x)),
        }
        from_host(y, x)
    }

    /// `saved` is the input for GELU and the output for softmax.
    fn backward(self, saved: &NdArrayTensor, dy: &NdArrayTensor) -> NdArrayTensor {
        let (s, g) = (
            host(saved).unwrap_or_default(),
            host(dy).unwrap_or_default(),
        );
        let mut dx = vec![0.0; s.len()];
        match self {
            Unary::Gelu => math::gelu_backward(&s, &g, &mut dx),
            Unary::Softmax => math::softmax_backward(&s, &g, &mut dx, last_dim(saved)),
        }
        from_host(dx, saved)
    }
}

#[derive(Debug)]
struct UnaryNode(Unary);

impl Backward<Nd, 1> for UnaryNode {
    type State = NdArrayTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let saved = ops.state;
        unary::<Nd, _>(ops.parents, ops.node, grads, |dy| {
            self.0.backward(&saved, &dy)
        });
    }
}

/// Records `out` as the output of `op` with `parents`; `state` (what the backward needs) is
/// built only when some parent tracks gradients.
fn record<T, const N: usize>(
    op: T,
    parents: [&FloatTensor<Ad>; N],
    out: NdArrayTensor,
    state: impl FnOnce() -> T::State,
) -> FloatTensor<Ad>
where
    T: Backward<Nd, N>,
{
    match op
        .prepare::<NoCheckpointing>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

fn unary_ad(op: Unary, x: FloatTensor<Ad>) -> FloatTensor<Ad> {
    let y = op.forward(&x.primitive);
    let saved = match op {
        Unary::Gelu => x.primitive.clone(),
        Unary::Softmax => y.clone(),
    };
    record(UnaryNode(op), [&x], y, || saved)
}

fn is_f32(t: &NdArrayTensor) -> bool {
    matches!(t, NdArrayTensor::F32(_))
}

/// Runs `op` when `B` is ndarray (`f32`), else gives `x` back.
pub(super) fn try_unary<B: Backend, const D: usize>(
    op: Unary,
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let x = match cast::<Tensor<B, D>, Tensor<Ad, D>>(x) {
        Ok(x) => {
            let p = x.into_primitive().tensor();
            if !is_f32(&p.primitive) {
                return Err(uncast(Tensor::<Ad, D>::from_primitive(
                    TensorPrimitive::Float(p),
                )));
            }
            let y = float::<Ad, D>(unary_ad(op, p));
            return Ok(uncast(y));
        }
        Err(x) => x,
    };
    match cast::<Tensor<B, D>, Tensor<Nd, D>>(x) {
        Ok(x) => {
            let p = x.into_primitive().tensor();
            if !is_f32(&p) {
                return Err(uncast(Tensor::<Nd, D>::from_primitive(
                    TensorPrimitive::Float(p),
                )));
            }
            let y = float::<Nd, D>(op.forward(&p));
            Ok(uncast(y))
        }
        Err(x) => Err(x),
    }
}

fn layer_norm_forward(
    x: &NdArrayTensor,
    gamma: &NdArrayTensor,
    beta: &NdArrayTensor,
    eps: f32,
) -> NdArrayTensor {
    let (xs, g, b) = (
        host(x).unwrap_or_default(),
        host(gamma).unwrap_or_default(),
        host(beta).unwrap_or_default(),
    );
    let mut y = vec![0.0; xs.len()];
    math::layer_norm_forward(&xs, &g, &b, eps, &mut y);
    from_host(y, x)
}

#[derive(Debug)]
struct LayerNormNode;

/// What the backward of layer norm keeps: the input, γ and ε.
#[derive(Clone, Debug)]
struct LayerNormState {
    x: NdArrayTensor,
    gamma: NdArrayTensor,
    eps: f32,
}

impl Backward<Nd, 3> for LayerNormNode {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let LayerNormState { x, gamma, eps } = ops.state;
        let dy = grads.consume::<Nd>(&ops.node);
        let (xs, g, d) = (
            host(&x).unwrap_or_default(),
            host(&gamma).unwrap_or_default(),
            host(&dy).unwrap_or_default(),
        );
        let mut dx = vec![0.0; xs.len()];
        let (dgamma, dbeta) = math::layer_norm_backward(&xs, &g, &d, eps, &mut dx);
        let [px, pg, pb] = ops.parents;
        if let Some(node) = px {
            grads.register::<Nd>(node.id, from_host(dx, &x));
        }
        if let Some(node) = pg {
            grads.register::<Nd>(node.id, from_host(dgamma, &gamma));
        }
        if let Some(node) = pb {
            grads.register::<Nd>(node.id, from_host(dbeta, &gamma));
        }
    }
}

fn layer_norm_ad(
    x: FloatTensor<Ad>,
    gamma: FloatTensor<Ad>,
    beta: FloatTensor<Ad>,
    eps: f32,
) -> FloatTensor<Ad> {
    let y = layer_norm_forward(&x.primitive, &gamma.primitive, &beta.primitive, eps);
    record(LayerNormNode, [&x, &gamma, &beta], y, || LayerNormState {
        x: x.primitive.clone(),
        gamma: gamma.primitive.clone(),
        eps,
    })
}

/// The parts of a layer norm call, as one value so they travel through `cast` together.
pub(super) type NormArgs<B, const D: usize> = (Tensor<B, D>, Tensor<B, 1>, Tensor<B, 1>);

/// Layer norm over the last dimension when `B` is ndarray (`f32`), else the arguments back.
pub(super) fn try_layer_norm<B: Backend, const D: usize>(
    args: NormArgs<B, D>,
    eps: f32,
) -> Result<Tensor<B, D>, NormArgs<B, D>> {
    let args = match cast::<NormArgs<B, D>, NormArgs<Ad, D>>(args) {
        Ok((x, g, b)) => {
            let (x, g, b) = (
                x.into_primitive().tensor(),
                g.into_primitive().tensor(),
                b.into_primitive().tensor(),
            );
            if ![&x.primitive, &g.primitive, &b.primitive]
                .into_iter()
                .all(is_f32)
            {
                let back: NormArgs<Ad, D> = (float(x), float(g), float(b));
                return Err(uncast(back));
            }
            let y: Tensor<Ad, D> = float(layer_norm_ad(x, g, b, eps));
            return Ok(uncast(y));
        }
        Err(args) => args,
    };
    match cast::<NormArgs<B, D>, NormArgs<Nd, D>>(args) {
        Ok((x, g, b)) => {
            let (x, g, b) = (
                x.into_primitive().tensor(),
                g.into_primitive().tensor(),
                b.into_primitive().tensor(),
            );
            if ![&x, &g, &b].into_iter().all(is_f32) {
                let back: NormArgs<Nd, D> = (float(x), float(g), float(b));
                return Err(uncast(back));
            }
            let y = float::<Nd, D>(layer_norm_forward(&x, &g, &b, eps));
            Ok(uncast(y))
        }
        Err(args) => Err(args),
    }
}

/// The arguments of an attention call, as one value for `cast`.
pub(super) type AttnArgs<B> = (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 4>);

/// The sizes when the fused kernel applies: `f32` tensors, `q`, `k` and `v` of one shape whose
/// last dimension divides into the heads, and a bias that broadcasts (see [`bias_fits`]).
fn fused_dims(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    bias: &NdArrayTensor,
    heads: usize,
) -> Option<Dims> {
    if ![q, k, v, bias].into_iter().all(is_f32) || k.shape() != q.shape() || v.shape() != q.shape()
    {
        return None;
    }
    let [batch, seq, hidden] = q.shape().dims::<3>();
    if heads == 0 || hidden % heads != 0 {
        return None;
    }
    let d = Dims {
        batch,
        seq,
        heads,
        head_dim: hidden / heads,
    };
    bias_fits(bias, &d).then_some(d)
}

/// Whether `bias` broadcasts to `[batch, heads, seq, seq]` with each dimension full or 1.
fn bias_fits(bias: &NdArrayTensor, d: &Dims) -> bool {
    let dims = bias.shape().dims::<4>();
    let full = [d.batch, d.heads, d.seq, d.seq];
    dims[3] == d.seq && dims.iter().zip(full).all(|(&a, f)| a == f || a == 1)
}

fn attention_forward(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    bias: &NdArrayTensor,
    d: Dims,
    mask: Option<Mask>,
) -> (NdArrayTensor, NdArrayTensor) {
    let (qs, ks, vs, bs) = (
        host(q).unwrap_or_default(),
        host(k).unwrap_or_default(),
        host(v).unwrap_or_default(),
        host(bias).unwrap_or_default(),
    );
    let bias = Bias {
        values: &bs,
        dims: bias.shape().dims::<4>(),
    };
    let (ctx, probs) = attn::forward(&qs, &ks, &vs, bias, d, mask);
    let probs = NdArrayTensor::from_data(TensorData::new(probs, [d.batch, d.heads, d.seq, d.seq]));
    (from_host(ctx, q), probs)
}

#[derive(Debug)]
struct AttentionNode;

/// What the attention backward keeps: the inputs, the probabilities before dropout, the mask.
#[derive(Clone, Debug)]
struct AttentionState {
    q: NdArrayTensor,
    k: NdArrayTensor,
    v: NdArrayTensor,
    probs: NdArrayTensor,
    dims: Dims,
    mask: Option<Mask>,
}

impl Backward<Nd, 3> for AttentionNode {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dout = grads.consume::<Nd>(&ops.node);
        let (qs, ks, vs, ps, ds) = (
            host(&st.q).unwrap_or_default(),
            host(&st.k).unwrap_or_default(),
            host(&st.v).unwrap_or_default(),
            host(&st.probs).unwrap_or_default(),
            host(&dout).unwrap_or_default(),
        );
        let grads_qkv = attn::backward(&qs, &ks, &vs, &ps, &ds, st.dims, st.mask);
        for (parent, g) in ops.parents.into_iter().zip(grads_qkv) {
            if let Some(node) = parent {
                grads.register::<Nd>(node.id, from_host(g, &st.q));
            }
        }
    }
}

/// Attention when `B` is ndarray (`f32`) and the bias needs no gradient, else the arguments back.
pub(super) fn try_attention<B: Backend>(
    args: AttnArgs<B>,
    heads: usize,
    dropout: &burn::nn::Dropout,
) -> Result<Tensor<B, 3>, AttnArgs<B>> {
    let args = match cast::<AttnArgs<B>, AttnArgs<Ad>>(args) {
        Ok((q, k, v, bias)) => {
            let device = q.device();
            let (q, k, v, bias) = (
                q.into_primitive().tensor(),
                k.into_primitive().tensor(),
                v.into_primitive().tensor(),
                bias.into_primitive().tensor(),
            );
            let dims = fused_dims(
                &q.primitive,
                &k.primitive,
                &v.primitive,
                &bias.primitive,
                heads,
            );
            let Some(d) = dims.filter(|_| bias.node.requirement.is_none()) else {
                let back: AttnArgs<Ad> = (float(q), float(k), float(v), float(bias));
                return Err(uncast(back));
            };
            let mask = super::dropout::host_mask::<Ad>(dropout, &device);
            let (ctx, probs) = attention_forward(
                &q.primitive,
                &k.primitive,
                &v.primitive,
                &bias.primitive,
                d,
                mask,
            );
            let out = record(AttentionNode, [&q, &k, &v], ctx, || AttentionState {
                q: q.primitive.clone(),
                k: k.primitive.clone(),
                v: v.primitive.clone(),
                probs,
                dims: d,
                mask,
            });
            return Ok(uncast(float::<Ad, 3>(out)));
        }
        Err(args) => args,
    };
    match cast::<AttnArgs<B>, AttnArgs<Nd>>(args) {
        Ok((q, k, v, bias)) => {
            let (q, k, v, bias) = (
                q.into_primitive().tensor(),
                k.into_primitive().tensor(),
                v.into_primitive().tensor(),
                bias.into_primitive().tensor(),
            );
            let Some(d) = fused_dims(&q, &k, &v, &bias, heads) else {
                let back: AttnArgs<Nd> = (float(q), float(k), float(v), float(bias));
                return Err(uncast(back));
            };
            // Without autodiff, dropout is the identity.
            let (ctx, _) = attention_forward(&q, &k, &v, &bias, d, None);
            Ok(uncast(float::<Nd, 3>(ctx)))
        }
        Err(args) => Err(args),
    }
}

fn float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// A 2-d `f32` tensor as a [`Mat`]: in place when its elements fill a slice in some order with
/// non-negative strides (contiguous or transposed), else through a row-major copy.
fn with_mat<R>(t: &NdArrayTensor, f: impl FnOnce(Mat<'_>) -> R) -> R {
    let [rows, cols] = t.shape().dims::<2>();
    if let NdArrayTensor::F32(storage) = t {
        let view = storage.view();
        let strides = view.strides().to_vec();
        if let (Some(data), [rs, cs]) = (view.to_slice_memory_order(), strides.as_slice()) {
            if *rs >= 0 && *cs >= 0 {
                return f(Mat {
                    data,
                    rows,
                    cols,
                    row_stride: *rs as usize,
                    col_stride: *cs as usize,
                });
            }
        }
    }
    let owned = host(t).unwrap_or_default();
    f(Mat::row_major(&owned, rows, cols))
}

/// `a · b` as a new tensor, on all of rayon's threads.
fn matmul_forward(a: &NdArrayTensor, b: &NdArrayTensor) -> NdArrayTensor {
    let ([m, _], [_, n]) = (a.shape().dims::<2>(), b.shape().dims::<2>());
    let mut out = vec![0.0; m * n];
    with_mat(a, |am| {
        with_mat(b, |bm| {
            gemm(&mut out, am, bm, false, rayon::current_num_threads())
        })
    });
    NdArrayTensor::from_data(TensorData::new(out, [m, n]))
}

#[derive(Debug)]
struct MatmulNode;

impl Backward<Nd, 2> for MatmulNode {
    /// The two operands.
    type State = (NdArrayTensor, NdArrayTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let dc = grads.consume::<Nd>(&ops.node);
        let ([m, k], [_, n]) = (a.shape().dims::<2>(), b.shape().dims::<2>());
        let threads = rayon::current_num_threads();
        let [pa, pb] = ops.parents;
        with_mat(&dc, |dcm| {
            if let Some(node) = pa {
                // dA = dC · Bᵀ
                let mut da = vec![0.0; m * k];
                with_mat(&b, |bm| gemm(&mut da, dcm, bm.t(), false, threads));
                grads.register::<Nd>(
                    node.id,
                    NdArrayTensor::from_data(TensorData::new(da, [m, k])),
                );
            }
            if let Some(node) = pb {
                // dB = Aᵀ · dC
                let mut db = vec![0.0; k * n];
                with_mat(&a, |am| gemm(&mut db, am.t(), dcm, false, threads));
                grads.register::<Nd>(
                    node.id,
                    NdArrayTensor::from_data(TensorData::new(db, [k, n])),
                );
            }
        });
    }
}

/// The two operands of a product, as one value for `cast`.
pub(super) type MatmulArgs<B> = (Tensor<B, 2>, Tensor<B, 2>);

fn matmul_fits(a: &NdArrayTensor, b: &NdArrayTensor) -> bool {
    is_f32(a) && is_f32(b) && a.shape().dims::<2>()[1] == b.shape().dims::<2>()[0]
}

/// `a · b` through [`gemm`] when `B` is ndarray (`f32`), else the operands back.
pub(super) fn try_matmul<B: Backend>(args: MatmulArgs<B>) -> Result<Tensor<B, 2>, MatmulArgs<B>> {
    let args = match cast::<MatmulArgs<B>, MatmulArgs<Ad>>(args) {
        Ok((a, b)) => {
            let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
            if !matmul_fits(&a.primitive, &b.primitive) {
                return Err(uncast::<MatmulArgs<Ad>, _>((float(a), float(b))));
            }
            let out = matmul_forward(&a.primitive, &b.primitive);
            let out = record(MatmulNode, [&a, &b], out, || {
                (a.primitive.clone(), b.primitive.clone())
            });
            return Ok(uncast(float::<Ad, 2>(out)));
        }
        Err(args) => args,
    };
    match cast::<MatmulArgs<B>, MatmulArgs<Nd>>(args) {
        Ok((a, b)) => {
            let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
            if !matmul_fits(&a, &b) {
                return Err(uncast::<MatmulArgs<Nd>, _>((float(a), float(b))));
            }
            Ok(uncast(float::<Nd, 2>(matmul_forward(&a, &b))))
        }
        Err(args) => Err(args),
    }
}
