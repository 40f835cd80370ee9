//! The orthogonality regulariser on the normalised directions (docs/METHOD.md §3).
//!
//! For an adapted matrix with normalised direction `D = V ⊘ n` (unit-norm output rows in
//! PyTorch's `[out, in]` layout), the penalty is `‖D·Dᵀ − I‖_F`: it penalises the pairwise
//! cosines between output rows. The regulariser is the mean over the `K` adapted matrices,
//! `R = (1/K)·Σ_k ‖D_k·D_kᵀ − I‖_F` (optionally squared).
//!
//! **Tall matrices** (`out > in`): the `out` rows of `D` live in an `in`-dimensional space, so
//! `D·Dᵀ = I_out` is unreachable. We then use the Gram of the smaller side, `Dᵀ·D` (`in × in`),
//! scaled by `in/out` so that its trace (`out`, the rows having unit norm) matches the trace of
//! `I_in`: the penalty is `‖(in/out)·Dᵀ·D − I_in‖_F`, which is zero exactly when the rows of `D`
//! form a tight frame. For square and wide matrices both definitions agree with the paper's.
//!
//! **Low-rank form** (square and wide matrices): the row Gram of `V = W0 + s·B·A` is
//! `V·Vᵀ = W0·W0ᵀ + s·(P·Bᵀ + B·Pᵀ) + s²·B·(A·Aᵀ)·Bᵀ` with `P = W0·Aᵀ`. With `W0·W0ᵀ`
//! precomputed once ([`GramCache`]), a step costs `O(out²·r + out·in·r)` instead of
//! `O(out²·in)`. Tall matrices always use the direct form.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::layer::AdaptedLinear;
use crate::partition::AdapterHost;

/// How the regulariser is computed and shaped.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct OrthoOptions {
    /// Square each Frobenius norm (`‖·‖_F²`) instead of the paper's plain norm.
    pub squared: bool,
}

/// Per-layer `W0·W0ᵀ` (row Gram of the frozen weight in PyTorch layout), keyed by layer path,
/// for the low-rank form. Build it once after the base weights are loaded; rebuild it if they
/// change.
#[derive(Debug, Clone)]
pub struct GramCache<B: Backend> {
    grams: HashMap<String, Tensor<B, 2>>,
}

impl<B: Backend> GramCache<B> {
    /// Precomputes `W0·W0ᵀ` for every adapted layer of `host` that is not tall.
    pub fn new<H: AdapterHost<B>>(host: &H) -> Self {
        let mut grams = HashMap::new();
        host.for_each_adapter("", &mut |path, layer| {
            if layer.d_output() <= layer.d_input() {
                let w = layer.weight.val().detach();
                grams.insert(path.to_string(), w.clone().transpose().matmul(w));
            }
        });
        GramCache { grams }
    }

    /// The cached Gram of the layer at `path`.
    pub fn get(&self, path: &str) -> Option<&Tensor<B, 2>> {
        self.grams.get(path)
    }
}

/// `‖G − I‖_F` for one layer, with the Gram formed directly from `V`.
pub fn layer_penalty<B: Backend>(layer: &AdaptedLinear<B>, options: OrthoOptions) -> Tensor<B, 1> {
    let n = layer.weight_norm();
    // Burn layout: V is [in, out]; its columns are PyTorch's rows.
    let d = layer.direction() / n.unsqueeze_dim(0);
    let (d_in, d_out) = (layer.d_input(), layer.d_output());
    let device = d.device();
    let gram = if d_out <= d_in {
        d.clone().transpose().matmul(d)
    } else {
        d.clone()
            .matmul(d.transpose())
            .mul_scalar(d_in as f64 / d_out as f64)
    };
    frobenius_off_identity(gram, &device, options)
}

/// `‖G − I‖_F` for one square or wide layer through the low-rank form, from the layer's cached
/// `W0·W0ᵀ`. Returns `None` for a tall layer (use [`layer_penalty`]).
pub fn layer_penalty_low_rank<B: Backend>(
    layer: &AdaptedLinear<B>,
    w0_gram: &Tensor<B, 2>,
    options: OrthoOptions,
) -> Option<Tensor<B, 1>> {
    if layer.d_output() > layer.d_input() {
        return None;
    }
    let s = layer.settings.scaling;
    let (a, b) = (layer.lora_a.val(), layer.lora_b.val());
    let w0 = layer.weight.val();
    // Burn layout: P = Aᵀ·W0 is [r, out]; PyTorch's W0·Aᵀ is its transpose.
    let p = a.clone().transpose().matmul(w0);
    let cross = p.clone().transpose().matmul(b.clone());
    let quad = b
        .clone()
        .transpose()
        .matmul(a.clone().transpose().matmul(a))
        .matmul(b);
    let gram_v = w0_gram.clone()
        + (cross.clone() + cross.transpose()).mul_scalar(s)
        + quad.mul_scalar(s * s);
    let inv_n = layer.weight_norm().recip();
    let gram = gram_v * inv_n.clone().unsqueeze_dim(0) * inv_n.unsqueeze_dim(1);
    let device = gram.device();
    Some(frobenius_off_identity(gram, &device, options))
}

fn frobenius_off_identity<B: Backend>(
    gram: Tensor<B, 2>,
    device: &B::Device,
    options: OrthoOptions,
) -> Tensor<B, 1> {
    let k = gram.dims()[0];
    let sq = (gram - Tensor::<B, 2>::eye(k, device)).square().sum();
    if options.squared {
        sq
    } else {
        sq.sqrt()
    }
}

/// `R = (1/K)·Σ_k ‖D_k·D_kᵀ − I‖_F` over every adapted layer of `host`, direct form.
/// Returns `None` when the host has no adapted layer.
pub fn orthogonality<B: Backend, H: AdapterHost<B>>(
    host: &H,
    options: OrthoOptions,
) -> Option<Tensor<B, 1>> {
    mean_over_layers(host, |_, layer| layer_penalty(layer, options))
}

/// The same regulariser through the low-rank form where the cache has the layer's Gram (square
/// and wide layers), and the direct form elsewhere.
pub fn orthogonality_low_rank<B: Backend, H: AdapterHost<B>>(
    host: &H,
    cache: &GramCache<B>,
    options: OrthoOptions,
) -> Option<Tensor<B, 1>> {
    mean_over_layers(host, |path, layer| {
        cache
            .get(path)
            .and_then(|g| layer_penalty_low_rank(layer, g, options))
            .unwrap_or_else(|| layer_penalty(layer, options))
    })
}

fn mean_over_layers<B: Backend, H: AdapterHost<B>>(
    host: &H,
    mut penalty: impl FnMut(&str, &AdaptedLinear<B>) -> Tensor<B, 1>,
) -> Option<Tensor<B, 1>> {
    let mut total: Option<Tensor<B, 1>> = None;
    let mut k = 0usize;
    host.for_each_adapter("", &mut |path, layer| {
        let p = penalty(path, layer);
        total = Some(match total.take() {
            Some(t) => t + p,
            None => p,
        });
        k += 1;
    });
    total.map(|t| t.div_scalar(k as f64))
}
