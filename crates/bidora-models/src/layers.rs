//! Building blocks shared by the architectures: a linear layer that may carry an adapter
//! ([`Projection`]), checked constructors that take their tensors from a [`Weights`] map, and
//! the freezer used before injecting adapters.

use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig};
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::weights::Weights;
use crate::ModelError;

/// A linear layer that may carry an adapter.
// Boxing the larger variant is not possible (Burn's Module derive has no Box support); a
// model holds a few dozen of these, so the size difference costs nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// The pretrained layer as it is.
    Plain(Linear<B>),
    /// The layer with a LoRA/DoRA/BiDoRA adapter.
    Adapted(AdaptedLinear<B>),
}

impl<B: Backend> Projection<B> {
    /// Applies the layer.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Projection::Plain(l) => {
                // One GEMM over all rows (Burn's Linear runs one per batch element), through
                // the fused kernel's GEMM on the CPU.
                let dims = x.dims();
                let rows = dims[..D - 1].iter().product::<usize>();
                let mut out = dims;
                out[D - 1] = l.weight.dims()[1];
                let y =
                    bidora_backend::kernels::matmul(x.reshape([rows, dims[D - 1]]), l.weight.val());
                let y = match &l.bias {
                    Some(b) => y + b.val().unsqueeze(),
                    None => y,
                };
                y.reshape(out)
            }
            Projection::Adapted(l) => l.forward(x),
        }
    }

    /// Adds an adapter when `path` is one of `config`'s targets (recording the hit).
    pub(crate) fn inject(
        self,
        path: &str,
        config: &AdapterConfig,
        hits: &mut Vec<String>,
    ) -> Result<Self, ModelError> {
        match self {
            Projection::Plain(l) if config.is_target(path)? => {
                hits.push(path.to_string());
                Ok(Projection::Adapted(AdaptedLinear::new(l, config)?))
            }
            other => Ok(other),
        }
    }

    /// Calls `f` with the adapted layer, if any.
    pub(crate) fn host<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        if let Projection::Adapted(l) = self {
            f(path, l)
        }
    }

    /// This projection with its adapter merged into the base weight and removed (PEFT's
    /// `merge_and_unload`): a plain layer that computes what the adapted one did.
    pub fn into_merged(self) -> Self {
        match self {
            Projection::Plain(l) => Projection::Plain(l),
            Projection::Adapted(l) => Projection::Plain(l.merge().linear),
        }
    }

    /// The plain layer (adapters merged in).
    pub fn merged(&self) -> Linear<B> {
        match self {
            Projection::Plain(l) => l.clone(),
            Projection::Adapted(l) => l.merge().linear,
        }
    }
}

/// The error for target modules that match no layer of a model.
/// A repeated block of a transformer (encoder layer, decoder block) and its projections in one
/// fixed order: the order of its architecture's table of HF names (`BLOCK_PROJECTIONS`,
/// `LAYER_PROJECTIONS`, `Family::projection_names`). Injection, adapter visiting and the
/// error for targets that match nothing are written once, over any block.
pub(crate) trait Block<B: Backend>: Sized {
    /// The projections, in table order.
    fn projections(&self) -> Vec<&Projection<B>>;
    /// The block with each projection `k` (in table order) replaced by `f(k, projection)`.
    fn map_projections(
        self,
        f: &mut dyn FnMut(usize, Projection<B>) -> Result<Projection<B>, ModelError>,
    ) -> Result<Self, ModelError>;
}

/// `blocks` with adapters on every projection whose path `{prefix}.{i}.{name}` is one of
/// `config`'s targets; the matched paths are appended to `hits`.
pub(crate) fn inject_blocks<B: Backend, L: Block<B>>(
    blocks: Vec<L>,
    prefix: &str,
    names: &[&str],
    config: &AdapterConfig,
    hits: &mut Vec<String>,
) -> Result<Vec<L>, ModelError> {
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, block)| {
            block.map_projections(&mut |k, p| {
                p.inject(&format!("{prefix}.{i}.{}", names[k]), config, hits)
            })
        })
        .collect()
}

/// Calls `f` with every adapted projection of `blocks` and its path under `root`.
pub(crate) fn visit_blocks<'a, B: Backend, L: Block<B>>(
    blocks: &'a [L],
    root: &str,
    prefix: &str,
    names: &[&str],
    f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>),
) {
    for (i, block) in blocks.iter().enumerate() {
        for (name, proj) in names.iter().zip(block.projections()) {
            proj.host(&join_path(root, &format!("{prefix}.{i}.{name}")), f);
        }
    }
}

/// The paths of block 0's projections, for error messages.
pub(crate) fn example_paths(prefix: &str, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{prefix}.0.{n}")).collect()
}

pub(crate) fn no_hits(config: &AdapterConfig, arch: &str, examples: &[String]) -> ModelError {
    ModelError::Invalid(format!(
        "target modules {:?} match no layer of this {arch} model; its linear layers are named like {}",
        config.target_modules,
        examples.join(", ")
    ))
}

/// A PyTorch `nn.Linear` (`[out, in]` weight, with or without bias).
pub(crate) fn linear<B: Backend>(
    w: &mut Weights,
    name: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Projection<B> {
    Projection::Plain(Linear {
        weight: w.linear_weight(&format!("{name}.weight"), d_in, d_out, device),
        bias: bias.then(|| w.param(&format!("{name}.bias"), [d_out], device)),
    })
}

/// A GPT-2 `Conv1D`: the weight is stored `[in, out]`, Burn's own layout.
pub(crate) fn conv1d<B: Backend>(
    w: &mut Weights,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Projection<B> {
    Projection::Plain(Linear {
        weight: w.param(&format!("{name}.weight"), [d_in, d_out], device),
        bias: Some(w.param(&format!("{name}.bias"), [d_out], device)),
    })
}

/// Layer normalisation over the last dimension with weight γ and bias β: the HF `LayerNorm`
/// (biased variance). Its forward is [`bidora_backend::kernels::layer_norm`], one fused pass
/// on the CPU.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// γ (`weight`; `gamma` in old BERT checkpoints).
    pub gamma: Param<Tensor<B, 1>>,
    /// β (`bias`; `beta` in old BERT checkpoints).
    pub beta: Param<Tensor<B, 1>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Normalises `x` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        bidora_backend::kernels::layer_norm(x, self.gamma.val(), self.beta.val(), self.epsilon)
    }
}

/// A head tied to an embedding table `[vocab, hidden]`: `x · tableᵀ` over hidden states
/// `[batch, seq, hidden]`, as one GEMM on a transposed view of the table (Burn's batched
/// `matmul` would copy the transposed table on every call: 113 MB a token for SmolLM2).
pub fn tied_head<B: Backend>(x: Tensor<B, 3>, table: Tensor<B, 2>) -> Tensor<B, 3> {
    let [b, s, h] = x.dims();
    let vocab = table.dims()[0];
    bidora_backend::kernels::matmul(x.reshape([b * s, h]), table.transpose()).reshape([b, s, vocab])
}

/// A LayerNorm with weight and bias (old BERT checkpoints call them gamma/beta).
pub(crate) fn layer_norm<B: Backend>(
    w: &mut Weights,
    name: &str,
    d: usize,
    eps: f64,
    device: &B::Device,
) -> LayerNorm<B> {
    let (g, b) = if w.has(&format!("{name}.gamma")) {
        ("gamma", "beta")
    } else {
        ("weight", "bias")
    };
    LayerNorm {
        gamma: w.param(&format!("{name}.{g}"), [d], device),
        beta: w.param(&format!("{name}.{b}"), [d], device),
        epsilon: eps,
    }
}

/// An embedding table `[n, d]`.
pub(crate) fn embedding<B: Backend>(
    w: &mut Weights,
    name: &str,
    n: usize,
    d: usize,
    device: &B::Device,
) -> Embedding<B> {
    Embedding {
        weight: w.param(&format!("{name}.weight"), [n, d], device),
    }
}

/// A freshly initialised linear layer as HF initialises heads: N(0, 0.02) weight, zero bias.
pub(crate) fn fresh_linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(bidora_backend::random(
            [d_in, d_out],
            burn::tensor::Distribution::Normal(0.0, 0.02),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// A head `nn.Linear` stored outside the base model's prefix (`classifier.weight`), or a fresh
/// one when the checkpoint has none.
pub(crate) fn head_linear<B: Backend>(
    w: &mut Weights,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Linear<B> {
    if w.has_raw(&format!("{name}.weight")) {
        let weight: Tensor<B, 2> = w.raw_tensor(format!("{name}.weight"), [d_out, d_in], device);
        Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias: Some(Param::from_tensor(w.raw_tensor(
                format!("{name}.bias"),
                [d_out],
                device,
            ))),
        }
    } else {
        fresh_linear(d_in, d_out, device)
    }
}

/// Sets every parameter to `require_grad = false`.
pub(crate) struct Freezer;

impl<B: Backend> ModuleMapper<B> for Freezer {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(false)
    }
}

/// An additive attention bias `[batch, 1, 1, seq]` from a `[batch, seq]` mask (1 = token,
/// 0 = padding): 0 or the dtype's minimum, as HF does.
pub(crate) fn padding_bias<B: Backend>(
    attention_mask: burn::tensor::Tensor<B, 2, burn::tensor::Int>,
) -> Tensor<B, 4> {
    let [b, s] = attention_mask.dims();
    (attention_mask.float().neg() + 1.0)
        .mul_scalar(f32::MIN as f64)
        .reshape([b, 1, 1, s])
}

/// The causal-and-padding bias `[batch, 1, seq, seq]` of a decoder: key `j` is visible from
/// query `i` when `j <= i` and `j` is not padding; hidden keys get the dtype's minimum.
pub(crate) fn causal_bias<B: Backend>(
    attention_mask: burn::tensor::Tensor<B, 2, burn::tensor::Int>,
) -> Tensor<B, 4> {
    let [b, s] = attention_mask.dims();
    let device = attention_mask.device();
    let pad = attention_mask.bool().bool_not().reshape([b, 1, 1, s]);
    let future =
        Tensor::<B, 2, burn::tensor::Bool>::tril_mask([s, s], 0, &device).reshape([1, 1, s, s]);
    let hidden = pad
        .expand([b, 1, s, s])
        .bool_or(future.expand([b, 1, s, s]));
    Tensor::<B, 4>::zeros([b, 1, s, s], &device).mask_fill(hidden, f32::MIN as f64)
}

/// The exact GELU of BERT-family models, `x·Φ(x)` with the exact derivative `Φ(x) + x·φ(x)`:
/// the backend crate's fused kernel. (Burn 0.21's `gelu` computes the same forward value but
/// differentiates the tanh approximation, which is off by up to ~1e-3.)
pub use bidora_backend::kernels::gelu_erf;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type AD = Autodiff<NdArray<f32>>;

    #[test]
    fn gelu_erf_has_the_exact_value_and_derivative() {
        let xs = [-3.0_f32, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5];
        let x =
            Tensor::<AD, 1>::from_data(TensorData::from(xs), &Default::default()).require_grad();
        let y = gelu_erf(x.clone());
        let grads = y.clone().sum().backward();
        let dy: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let y: Vec<f32> = y.into_data().to_vec().unwrap();
        // Φ(x) and φ(x) from scipy.stats.norm (cdf, pdf), to 9 digits.
        let cdf: [f64; 7] = [
            0.001349898,
            0.158655254,
            0.401293674,
            0.5,
            0.691462461,
            0.841344746,
            0.993790335,
        ];
        let pdf: [f64; 7] = [
            0.004431848,
            0.241970725,
            0.386668117,
            0.398942280,
            0.352065327,
            0.241970725,
            0.017528300,
        ];
        for i in 0..xs.len() {
            let x = f64::from(xs[i]);
            let (v, d) = (x * cdf[i], cdf[i] + x * pdf[i]);
            let (got, dgot) = (f64::from(y[i]), f64::from(dy[i]));
            assert!((got - v).abs() < 1e-6, "gelu({x}) = {got} not {v}");
            assert!((dgot - d).abs() < 1e-5, "gelu'({x}) = {dgot} not {d}");
        }
    }
}
