//! Fused CPU kernels for the pieces of a transformer layer that Burn's ndarray backend runs
//! slowly: the matrix product ([`matmul`], on the `gemm` crate's AVX-512 kernels), multi-head
//! [`attention`], the exact GELU, the SiLU, softmax over the last dimension, layer normalisation, and
//! dropout ([`dropout`]).
//!
//! Each function is generic over `B: Backend` and computes the same function on every
//! backend. On ndarray (`f32`, with or without autodiff) it runs one fused, multi-threaded
//! pass over the data (and one for the backward, as a single autodiff node), instead of 5–15
//! single-threaded Burn operations that each allocate their output; on WGPU and CUDA it runs
//! the composed form ([`composed`]), which their fusion compilers handle. docs/PERFORMANCE.md
//! has the measured effect of each.
//!
//! The element-wise kernels give the same bits whatever the number of threads: reductions run
//! within a row, and the layer norm's γ/β gradients add fixed blocks of rows in order.
//!
//! ```
//! use bidora_backend::kernels;
//! use burn::backend::NdArray;
//! use burn::tensor::Tensor;
//!
//! let x = Tensor::<NdArray<f32>, 2>::from_floats([[0.0, 1.0], [2.0, -1.0]], &Default::default());
//! let fused = kernels::gelu_erf(x.clone());
//! let reference = kernels::composed::gelu_erf(x);
//! fused.into_data().assert_approx_eq::<f32>(&reference.into_data(), Default::default());
//! ```

pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod gemm;
pub mod math;
#[cfg(feature = "ndarray")]
mod ndarray;
pub mod quant;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// The exact GELU, `x Φ(x)` with `Φ` the standard normal cdf (PyTorch's
/// `gelu(approximate="none")`, BERT's `gelu`).
pub fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "ndarray")]
    let x = match ndarray::try_unary(ndarray::Unary::Gelu, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    composed::gelu_erf(x)
}

/// The SiLU `x σ(x)` (PyTorch's `silu`, Llama's `hidden_act`).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "ndarray")]
    let x = match ndarray::try_unary(ndarray::Unary::Silu, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    composed::silu(x)
}

/// Softmax over the last dimension.
pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "ndarray")]
    let x = match ndarray::try_unary(ndarray::Unary::Softmax, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    composed::softmax(x)
}

/// The matrix product `a · b` (`[m, k] · [k, n]`). On ndarray (`f32`) it runs the `gemm`
/// crate's AVX-512 kernels on all of rayon's threads, with a backward of two more such products;
/// elsewhere it is Burn's `matmul`.
pub fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "ndarray")]
    let (a, b) = match ndarray::try_matmul((a, b)) {
        Ok(y) => return y,
        Err(args) => args,
    };
    a.matmul(b)
}

/// The mean cross-entropy of a bias-free linear head: logits `x · tableᵀ` (`x` `[n, hidden]`,
/// `table` `[vocab, hidden]`: a tied embedding table, or an `lm_head` weight's transpose)
/// against `targets` `[n]`, negative targets skipped (PyTorch's `ignore_index = −100`); 0 when
/// every target is skipped. Returns `[1]`.
///
/// On ndarray (`f32`) it never forms the full logits ([`cross_entropy::linear_cross_entropy`]:
/// chunks of rows, gradients formed in the forward pass, one autodiff node); elsewhere it is
/// [`composed::linear_cross_entropy`]. A target at or past `vocab` is a caller's bug and panics.
pub fn linear_cross_entropy<B: Backend>(
    x: Tensor<B, 2>,
    table: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    #[cfg(feature = "ndarray")]
    let (x, table, targets) = match ndarray::try_linear_cross_entropy((x, table, targets)) {
        Ok(y) => return y,
        Err(args) => args,
    };
    composed::linear_cross_entropy(x, table, targets)
}

/// Layer normalisation over the last dimension, `(x − μ) / sqrt(σ² + eps) · γ + β`, with the
/// biased variance (as PyTorch's `LayerNorm`). `gamma` and `beta` have the last dimension's
/// size.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    #[cfg(feature = "ndarray")]
    let (x, gamma, beta) = match ndarray::try_layer_norm((x, gamma, beta), eps as f32) {
        Ok(y) => return y,
        Err(args) => args,
    };
    composed::layer_norm(x, gamma, beta, eps)
}

/// Multi-head scaled dot-product attention with an additive score bias and dropout on the
/// probabilities: `softmax(q kᵀ / sqrt(head_dim) + bias) v` per head, then dropout as
/// [`dropout::dropout`] would apply it (same generator draw, same mask).
///
/// `q`, `k`, `v`: `[batch, seq, heads · head_dim]` (the projections' outputs); `bias`:
/// broadcastable to `[batch, heads, seq, seq]` (padding mask, causal mask, relative positions).
/// Returns `[batch, seq, heads · head_dim]`. On ndarray the fused kernel runs unless `bias`
/// itself needs a gradient (a trained relative-position bias), which takes the composed form.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    heads: usize,
    dropout: &burn::nn::Dropout,
) -> Tensor<B, 3> {
    #[cfg(feature = "ndarray")]
    let (q, k, v, bias) = match ndarray::try_attention((q, k, v, bias), heads, dropout) {
        Ok(y) => return y,
        Err(args) => args,
    };
    composed::attention(q, k, v, bias, heads, dropout)
}

/// The same functions composed from Burn's tensor operations: what every backend but ndarray
/// runs, and the reference the fused kernels are tested against.
pub mod composed {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Int, Tensor};

    /// The target that [`cross_entropy`] skips (PyTorch's default `ignore_index`).
    pub const IGNORE_INDEX: i64 = -100;

    /// Mean cross-entropy of `logits` `[n, classes]` against `labels` `[n]`, skipping
    /// [`IGNORE_INDEX`] (PyTorch's `cross_entropy(ignore_index=-100)`; 0 when every label is
    /// ignored).
    pub fn cross_entropy<B: Backend>(
        logits: Tensor<B, 2>,
        labels: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        let [n, _] = logits.dims();
        let keep = labels.clone().not_equal_elem(IGNORE_INDEX);
        let safe = labels.mask_fill(keep.clone().bool_not(), 0);
        let picked = log_softmax(logits, 1)
            .gather(1, safe.reshape([n, 1]))
            .reshape([n]);
        let keep = keep.float();
        let count = keep.clone().sum().clamp_min(1.0);
        (picked * keep).sum().neg() / count
    }

    /// [`cross_entropy`] of the full logits `x · tableᵀ`.
    pub fn linear_cross_entropy<B: Backend>(
        x: Tensor<B, 2>,
        table: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        cross_entropy(x.matmul(table.transpose()), targets)
    }

    /// `x Φ(x)` through `erf`.
    pub fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        let cdf = x
            .clone()
            .div_scalar(std::f64::consts::SQRT_2)
            .erf()
            .add_scalar(1.0)
            .mul_scalar(0.5);
        x * cdf
    }

    /// Burn's SiLU.
    pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        burn::tensor::activation::silu(x)
    }

    /// Attention from Burn's matrix products, [`softmax`] and [`dropout`](super::dropout::dropout).
    pub fn attention<B: Backend>(
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        heads: usize,
        dropout: &burn::nn::Dropout,
    ) -> Tensor<B, 3> {
        let [b, s, h] = q.dims();
        let hd = h / heads;
        let split = |t: Tensor<B, 3>| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
        let scores = split(q)
            .matmul(split(k).transpose())
            .div_scalar((hd as f64).sqrt())
            + bias;
        let probs = super::dropout::dropout(dropout, softmax(scores));
        probs.matmul(split(v)).swap_dims(1, 2).reshape([b, s, h])
    }

    /// Burn's softmax over the last dimension.
    pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        burn::tensor::activation::softmax(x, D - 1)
    }

    /// Layer norm over the last dimension from means and a square root.
    pub fn layer_norm<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        gamma: Tensor<B, 1>,
        beta: Tensor<B, 1>,
        eps: f64,
    ) -> Tensor<B, D> {
        let centred = x.clone() - x.mean_dim(D - 1);
        let var = centred.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = centred / var.add_scalar(eps).sqrt();
        normed * gamma.unsqueeze::<D>() + beta.unsqueeze::<D>()
    }
}
