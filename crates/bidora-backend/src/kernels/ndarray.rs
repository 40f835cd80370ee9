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

/// A float tensor's elements as `f32` in row-major order: borrowed when it is contiguous `f32`
/// (always, on the kernels' paths, which check the dtype first), else copied.
fn host(t: &NdArrayTensor) -> Cow<'_, [f32]> {
    match t {
        NdArrayTensor::F32(storage) => {
            let view = storage.view();
            match view.to_slice() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(view.iter().copied().collect()),
            }
        }
        NdArrayTensor::F64(storage) => {
            Cow::Owned(storage.view().iter().map(|&v| v as f32).collect())
        }
        _ => unreachable!("the kernels receive float tensors only"),
    }
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
    Silu,
    Softmax,
}

impl Unary {
    fn forward(self, x: &NdArrayTensor) -> NdArrayTensor {
        let xs = host(x);
        let mut y = vec![0.0; xs.len()];
        match self {
            Unary::Gelu => math::gelu_forward(&xs, &mut y),
            Unary::Silu => math::silu_forward(&xs, &mut y),
            Unary::Softmax => math::softmax_forward(&xs, &mut y, last_dim(x)),
        }
        from_host(y, x)
    }

    /// `saved` is the input for GELU and SiLU, the output for softmax.
    fn backward(self, saved: &NdArrayTensor, dy: &NdArrayTensor) -> NdArrayTensor {
        let (s, g) = (host(saved), host(dy));
        let mut dx = vec![0.0; s.len()];
        match self {
            Unary::Gelu => math::gelu_backward(&s, &g, &mut dx),
            Unary::Silu => math::silu_backward(&s, &g, &mut dx),
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
        Unary::Gelu | Unary::Silu => x.primitive.clone(),
        Unary::Softmax => y.clone(),
    };
    record(UnaryNode(op), [&x], y, || saved)
}

/// Runs `ad` when `A` is the arguments on `Autodiff<NdArray<f32>>`, `nd` when on
/// `NdArray<f32>`; any other backend gets `args` back. The closures' types name the concrete
/// argument and result types; the result is the caller's type again (the same type, shown by
/// the successful `cast`).
fn on_ndarray<A: 'static, R: 'static, AAd: 'static, RAd: 'static, ANd: 'static, RNd: 'static>(
    args: A,
    ad: impl FnOnce(AAd) -> RAd,
    nd: impl FnOnce(ANd) -> RNd,
) -> Result<R, A> {
    let args = match cast::<A, AAd>(args) {
        Ok(a) => return Ok(uncast(ad(a))),
        Err(a) => a,
    };
    match cast::<A, ANd>(args) {
        Ok(a) => Ok(uncast(nd(a))),
        Err(a) => Err(a),
    }
}

/// Whether a tensor holds `f32` (an `NdArray<f32>` tensor can hold another float type).
fn is_f32<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    t.dtype() == burn::tensor::DType::F32
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Runs `op` when `B` is ndarray and `x` is `f32`, else gives `x` back.
pub(super) fn try_unary<B: Backend, const D: usize>(
    op: Unary,
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_f32(&x) {
        return Err(x);
    }
    on_ndarray(
        x,
        |x: Tensor<Ad, D>| float::<Ad, D>(unary_ad(op, prim(x))),
        |x: Tensor<Nd, D>| float::<Nd, D>(op.forward(&prim(x))),
    )
}

fn layer_norm_forward(
    x: &NdArrayTensor,
    gamma: &NdArrayTensor,
    beta: &NdArrayTensor,
    eps: f32,
) -> NdArrayTensor {
    let (xs, g, b) = (host(x), host(gamma), host(beta));
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
        let (xs, g, d) = (host(&x), host(&gamma), host(&dy));
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

/// Layer norm over the last dimension when `B` is ndarray, the tensors are `f32` and γ and β
/// have the last dimension's size; else the arguments back (the composed form then reports a
/// shape error as Burn does).
pub(super) fn try_layer_norm<B: Backend, const D: usize>(
    args: NormArgs<B, D>,
    eps: f32,
) -> Result<Tensor<B, D>, NormArgs<B, D>> {
    let (x, g, b) = &args;
    let width = x.dims()[D - 1];
    if !(is_f32(x) && is_f32(g) && is_f32(b) && g.dims() == [width] && b.dims() == [width]) {
        return Err(args);
    }
    on_ndarray(
        args,
        |(x, g, b): NormArgs<Ad, D>| float::<Ad, D>(layer_norm_ad(prim(x), prim(g), prim(b), eps)),
        |(x, g, b): NormArgs<Nd, D>| {
            float::<Nd, D>(layer_norm_forward(&prim(x), &prim(g), &prim(b), eps))
        },
    )
}

/// The arguments of an attention call, as one value for `cast`.
pub(super) type AttnArgs<B> = (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 4>);

/// The sizes when the fused kernel applies: `f32` tensors, `q`, `k` and `v` of one shape whose
/// last dimension divides into the heads, and a bias broadcastable to `[batch, heads, seq,
/// seq]` with each dimension full or 1.
fn attention_dims<B: Backend>(args: &AttnArgs<B>, heads: usize) -> Option<Dims> {
    let (q, k, v, bias) = args;
    let [batch, seq, hidden] = q.dims();
    let f32s = is_f32(q) && is_f32(k) && is_f32(v) && is_f32(bias);
    if !f32s || k.dims() != q.dims() || v.dims() != q.dims() || heads == 0 || hidden % heads != 0 {
        return None;
    }
    let full = [batch, heads, seq, seq];
    let dims = bias.dims();
    let fits = dims[3] == seq && dims.iter().zip(full).all(|(&a, f)| a == f || a == 1);
    fits.then_some(Dims {
        batch,
        seq,
        heads,
        head_dim: hidden / heads,
    })
}

fn attention_forward(
    q: &NdArrayTensor,
    k: &NdArrayTensor,
    v: &NdArrayTensor,
    bias: &NdArrayTensor,
    d: Dims,
    mask: Option<Mask>,
) -> (NdArrayTensor, NdArrayTensor) {
    let (qs, ks, vs, bs) = (host(q), host(k), host(v), host(bias));
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
            host(&st.q),
            host(&st.k),
            host(&st.v),
            host(&st.probs),
            host(&dout),
        );
        let grads_qkv = attn::backward(&qs, &ks, &vs, &ps, &ds, st.dims, st.mask);
        for (parent, g) in ops.parents.into_iter().zip(grads_qkv) {
            if let Some(node) = parent {
                grads.register::<Nd>(node.id, from_host(g, &st.q));
            }
        }
    }
}

/// Attention when `B` is ndarray and [`attention_dims`] applies, else the arguments back. A
/// bias that needs a gradient (a trained relative-position bias) takes the composed form.
pub(super) fn try_attention<B: Backend>(
    args: AttnArgs<B>,
    heads: usize,
    dropout: &burn::nn::Dropout,
) -> Result<Tensor<B, 3>, AttnArgs<B>> {
    let Some(d) = attention_dims(&args, heads) else {
        return Err(args);
    };
    on_ndarray(
        args,
        |(q, k, v, bias): AttnArgs<Ad>| {
            let (q, k, v, bias) = (prim(q), prim(k), prim(v), prim(bias));
            if !bias.node.requirement.is_none() {
                let (q, k, v) = (float::<Ad, 3>(q), float::<Ad, 3>(k), float::<Ad, 3>(v));
                let bias = float::<Ad, 4>(bias);
                return super::composed::attention(q, k, v, bias, heads, dropout);
            }
            let mask = super::dropout::host_mask::<Ad>(dropout, &Default::default());
            let (ctx, probs) = attention_forward(
                &q.primitive,
                &k.primitive,
                &v.primitive,
                &bias.primitive,
                d,
                mask,
            );
            float(record(AttentionNode, [&q, &k, &v], ctx, || {
                AttentionState {
                    q: q.primitive.clone(),
                    k: k.primitive.clone(),
                    v: v.primitive.clone(),
                    probs,
                    dims: d,
                    mask,
                }
            }))
        },
        |(q, k, v, bias): AttnArgs<Nd>| {
            // Without autodiff, dropout is the identity.
            let (ctx, _) = attention_forward(&prim(q), &prim(k), &prim(v), &prim(bias), d, None);
            float::<Nd, 3>(ctx)
        },
    )
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
    let owned = host(t);
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

/// `a · b` through [`gemm`] when `B` is ndarray and both are `f32` with matching inner
/// dimensions, else the operands back.
pub(super) fn try_matmul<B: Backend>(args: MatmulArgs<B>) -> Result<Tensor<B, 2>, MatmulArgs<B>> {
    let (a, b) = &args;
    if !(is_f32(a) && is_f32(b) && a.dims()[1] == b.dims()[0]) {
        return Err(args);
    }
    on_ndarray(
        args,
        |(a, b): MatmulArgs<Ad>| {
            let (a, b) = (prim(a), prim(b));
            let out = matmul_forward(&a.primitive, &b.primitive);
            float::<Ad, 2>(record(MatmulNode, [&a, &b], out, || {
                (a.primitive.clone(), b.primitive.clone())
            }))
        },
        |(a, b): MatmulArgs<Nd>| float::<Nd, 2>(matmul_forward(&prim(a), &prim(b))),
    )
}

#[derive(Debug)]
struct HeadLossNode;

/// What the head-loss backward scales: the gradients at an upstream gradient of 1.
#[derive(Clone, Debug)]
struct HeadLossState {
    dx: Option<NdArrayTensor>,
    dtable: Option<NdArrayTensor>,
}

impl Backward<Nd, 2> for HeadLossNode {
    type State = HeadLossState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = host(&grads.consume::<Nd>(&ops.node))[0];
        let [px, pt] = ops.parents;
        for (parent, g) in [(px, ops.state.dx), (pt, ops.state.dtable)] {
            if let (Some(node), Some(g)) = (parent, g) {
                let scaled = host(&g).iter().map(|v| v * upstream).collect();
                grads.register::<Nd>(node.id, from_host(scaled, &g));
            }
        }
    }
}

/// The loss (and the gradients asked for) of [`super::cross_entropy::linear_cross_entropy`].
fn head_loss(
    x: &NdArrayTensor,
    table: &NdArrayTensor,
    targets: &[i64],
    grad_x: bool,
    grad_table: bool,
) -> (NdArrayTensor, HeadLossState) {
    let out = with_mat(x, |xm| {
        with_mat(table, |tm| {
            super::cross_entropy::linear_cross_entropy(xm, tm, targets, grad_x, grad_table)
        })
    });
    let loss = NdArrayTensor::from_data(TensorData::new(vec![out.loss], [1]));
    let state = HeadLossState {
        dx: out.dx.map(|d| from_host(d, x)),
        dtable: out
            .dtable
            .map(|d| NdArrayTensor::from_data(TensorData::new(d, table.shape()))),
    };
    (loss, state)
}

/// The arguments of a head loss, as one value for `cast`.
pub(super) type HeadLossArgs<B> = (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 1, burn::tensor::Int>);

fn host_targets<B: Backend>(t: Tensor<B, 1, burn::tensor::Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .into_vec()
        .unwrap_or_else(|e| unreachable!("converted to i64: {e:?}"))
}

/// The head loss through the chunked kernel when `B` is ndarray, both float tensors are `f32`
/// and the shapes agree, else the arguments back.
pub(super) fn try_linear_cross_entropy<B: Backend>(
    args: HeadLossArgs<B>,
) -> Result<Tensor<B, 1>, HeadLossArgs<B>> {
    let (x, table, targets) = &args;
    let fits = x.dims()[1] == table.dims()[1] && targets.dims()[0] == x.dims()[0];
    if !(is_f32(x) && is_f32(table) && fits) {
        return Err(args);
    }
    on_ndarray(
        args,
        |(x, table, targets): HeadLossArgs<Ad>| {
            let targets = host_targets(targets);
            let (x, table) = (prim(x), prim(table));
            let (gx, gt) = (
                !x.node.requirement.is_none(),
                !table.node.requirement.is_none(),
            );
            let (loss, state) = head_loss(&x.primitive, &table.primitive, &targets, gx, gt);
            float::<Ad, 1>(record(HeadLossNode, [&x, &table], loss, || state))
        },
        |(x, table, targets): HeadLossArgs<Nd>| {
            let targets = host_targets(targets);
            float::<Nd, 1>(head_loss(&prim(x), &prim(table), &targets, false, false).0)
        },
    )
}
