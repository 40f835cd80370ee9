//! The GPT-2 decoder and its tied language-model head (`model_type: "gpt2"`).
//!
//! HF stores GPT-2's projections as `Conv1D` with `[in, out]` weights, Burn's own layout, so
//! they load without a transpose. Query, key and value are one fused layer, `attn.c_attn`
//! (`[hidden, 3 × hidden]`): an adapter on it (PEFT's `target_modules=["c_attn"]`) adapts
//! the three at once, as PEFT does. The LM head is the token embedding matrix.

use std::path::Path;

use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig, AdapterHost};
use bidora_backend::kernels::dropout::dropout;
use bidora_backend::kernels::{attention, softmax};
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::Deserialize;

use crate::config::{self, Architecture};
use crate::generate::{offset_causal_bias, KvCache};
use crate::layers::{
    causal_bias, conv1d, embedding, example_paths, inject_blocks, layer_norm, no_hits,
    visit_blocks, Block, Freezer, LayerNorm, Projection,
};
use crate::weights::Weights;
use crate::ModelError;

/// The fields of a GPT-2 `config.json` this implementation uses.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Position table size.
    pub n_positions: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Feed-forward size (`None`: 4 × hidden).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// `gelu_new` (tanh approximation; also `gelu_pytorch_tanh`).
    #[serde(default = "default_act")]
    pub activation_function: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Residual dropout.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// Embedding dropout.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Attention dropout.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// Divide scores by √head_dim (GPT-2 does).
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Unsupported variant (must be false).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
}

fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_dropout() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}

impl Gpt2Config {
    /// Reads and checks `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let (path, config): (_, Gpt2Config) = config::load(dir, &[Architecture::Gpt2])?;
        if !matches!(
            config.activation_function.as_str(),
            "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return Err(ModelError::Invalid(format!(
                "`{}`: activation_function `{}` is not supported (gelu_new)",
                path.display(),
                config.activation_function
            )));
        }
        if config.scale_attn_by_inverse_layer_idx {
            return Err(ModelError::Invalid(format!(
                "`{}`: scale_attn_by_inverse_layer_idx is not supported",
                path.display()
            )));
        }
        config::check_heads(&path, config.n_embd, config.n_head)?;
        Ok(config)
    }
}

/// GPT-2's tanh approximation of GELU (`gelu_new`).
pub fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    x.clone().mul_scalar(0.5) * (inner.tanh() + 1.0)
}

/// One transformer block (`h.N`).
#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    /// `ln_1`.
    pub ln_1: LayerNorm<B>,
    /// `attn.c_attn`: fused query/key/value, `[hidden, 3 × hidden]`.
    pub c_attn: Projection<B>,
    /// `attn.c_proj`.
    pub attn_proj: Projection<B>,
    /// `ln_2`.
    pub ln_2: LayerNorm<B>,
    /// `mlp.c_fc`.
    pub c_fc: Projection<B>,
    /// `mlp.c_proj`.
    pub mlp_proj: Projection<B>,
    /// Residual dropout.
    pub dropout: Dropout,
    /// Attention dropout.
    pub attention_dropout: Dropout,
    /// Heads.
    pub heads: usize,
    /// Scale scores by 1/√head_dim.
    pub scale: bool,
}

/// HF names of a block's projections (after `transformer.h.N.`).
pub const BLOCK_PROJECTIONS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

impl<B: Backend> Gpt2Block<B> {
    /// `x`: `[batch, seq, hidden]`; `bias`: `[batch, 1, seq, seq]` causal + padding bias.
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        if !self.scale {
            // Unscaled scores (`scale_attn_weights = false`): the composed form.
            return self.forward_with(x, bias, None).0;
        }
        let (q, k, v) = self.qkv(x.clone());
        let ctx = attention(q, k, v, bias, self.heads, &self.attention_dropout);
        self.after_attention(x, ctx)
    }

    /// [`forward`](Self::forward) after `past` positions, whose keys and values `past` holds
    /// (`[batch, heads, past, head_dim]`); `bias` is `[batch, 1, seq, past + seq]`. Returns the
    /// output and the keys and values of all `past + seq` positions.
    pub fn forward_with(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let [b, s, h] = x.dims();
        let (q, k, v) = self.qkv(x.clone());
        let split = |t: Tensor<B, 3>| {
            t.reshape([b, s, self.heads, h / self.heads])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(q), split(k), split(v));
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        let ctx = self.composed_attention(q, k.clone(), v.clone(), bias);
        let ctx = ctx.swap_dims(1, 2).reshape([b, s, h]);
        (self.after_attention(x, ctx), (k, v))
    }

    /// Query, key and value `[batch, seq, hidden]` from the fused `c_attn`.
    fn qkv(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
        let [b, s, h] = x.dims();
        let qkv = self.c_attn.forward(self.ln_1.forward(x));
        let part = |i: usize| qkv.clone().slice([0..b, 0..s, i * h..(i + 1) * h]);
        (part(0), part(1), part(2))
    }

    /// Attention on split heads (`[batch, heads, positions, head_dim]`), scaled by
    /// 1/√head_dim unless `scale_attn_weights` is off.
    fn composed_attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let hd = q.dims()[3];
        let mut scores = q.matmul(k.transpose());
        if self.scale {
            scores = scores.div_scalar((hd as f64).sqrt());
        }
        dropout(&self.attention_dropout, softmax(scores + bias)).matmul(v)
    }

    /// The attention output's projection and residual, then the MLP and its residual.
    fn after_attention(&self, x: Tensor<B, 3>, ctx: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x + dropout(&self.dropout, self.attn_proj.forward(ctx));
        let ff = self
            .mlp_proj
            .forward(gelu_new(self.c_fc.forward(self.ln_2.forward(x.clone()))));
        x + dropout(&self.dropout, ff)
    }
}

/// The GPT-2 transformer (`GPT2Model`; checkpoint prefix `transformer.` in LM checkpoints).
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    /// `wte`: token embeddings, also the LM head.
    pub wte: Embedding<B>,
    /// `wpe`: position embeddings.
    pub wpe: Embedding<B>,
    /// `h`.
    pub blocks: Vec<Gpt2Block<B>>,
    /// `ln_f`.
    pub ln_f: LayerNorm<B>,
    /// Embedding dropout.
    pub dropout: Dropout,
}

impl<B: Backend> Gpt2<B> {
    /// Builds the model from checkpoint tensors (with or without the `transformer.` prefix).
    pub fn from_weights(config: &Gpt2Config, w: &mut Weights, device: &B::Device) -> Self {
        w.detect_prefix("transformer.", "wte.weight");
        // Old checkpoints carry the causal mask as buffers.
        w.ignore(".attn.bias");
        w.ignore(".attn.masked_bias");
        let (h, eps) = (config.n_embd, config.layer_norm_epsilon);
        let f = config.n_inner.unwrap_or(4 * h);
        let blocks = (0..config.n_layer)
            .map(|i| {
                let p = |n: &str| format!("h.{i}.{n}");
                Gpt2Block {
                    ln_1: layer_norm(w, &p("ln_1"), h, eps, device),
                    c_attn: conv1d(w, &p("attn.c_attn"), h, 3 * h, device),
                    attn_proj: conv1d(w, &p("attn.c_proj"), h, h, device),
                    ln_2: layer_norm(w, &p("ln_2"), h, eps, device),
                    c_fc: conv1d(w, &p("mlp.c_fc"), h, f, device),
                    mlp_proj: conv1d(w, &p("mlp.c_proj"), f, h, device),
                    dropout: DropoutConfig::new(config.resid_pdrop).init(),
                    attention_dropout: DropoutConfig::new(config.attn_pdrop).init(),
                    heads: config.n_head,
                    scale: config.scale_attn_weights,
                }
            })
            .collect();
        Gpt2 {
            wte: embedding(w, "wte", config.vocab_size, h, device),
            wpe: embedding(w, "wpe", config.n_positions, h, device),
            blocks,
            ln_f: layer_norm(w, "ln_f", h, eps, device),
            dropout: DropoutConfig::new(config.embd_pdrop).init(),
        }
    }

    /// The last hidden state `[batch, seq, hidden]`. Positions are `0..seq` (pad on the
    /// right); `attention_mask` hides padding keys.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let mut x = self.embed(input_ids, 0);
        let bias = causal_bias(attention_mask);
        for block in &self.blocks {
            x = block.forward(x, bias.clone());
        }
        self.ln_f.forward(x)
    }

    /// Token and position embeddings (positions `start..start + seq`), after dropout.
    fn embed(&self, input_ids: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let positions =
            Tensor::<B, 1, Int>::arange(start as i64..(start + s) as i64, &input_ids.device())
                .unsqueeze::<2>()
                .repeat_dim(0, b);
        dropout(
            &self.dropout,
            self.wte.forward(input_ids) + self.wpe.forward(positions),
        )
    }

    /// The last hidden state `[batch, seq, hidden]` of `seq` new tokens after the positions in
    /// `cache`, which then holds them too. No padding: every row has the same positions.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let s = input_ids.dims()[1];
        let device = input_ids.device();
        let past = cache.len();
        let mut x = self.embed(input_ids, past);
        let bias = offset_causal_bias::<B>(past, s, &device);
        let mut layers = std::mem::take(&mut cache.layers).into_iter();
        for block in &self.blocks {
            let (out, kv) = block.forward_with(x, bias.clone(), layers.next());
            x = out;
            cache.layers.push(kv);
        }
        self.ln_f.forward(x)
    }

    /// Adds adapters to every projection whose HF path (`h.0.attn.c_attn`, …) matches.
    pub fn inject(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let mut hits = Vec::new();
        let blocks = inject_blocks(self.blocks, "h", &BLOCK_PROJECTIONS, config, &mut hits)?;
        if hits.is_empty() {
            let examples = example_paths("h", &BLOCK_PROJECTIONS);
            return Err(no_hits(config, "GPT-2", &examples));
        }
        Ok(Gpt2 { blocks, ..self })
    }
}

impl<B: Backend> Block<B> for Gpt2Block<B> {
    fn projections(&self) -> Vec<&Projection<B>> {
        vec![&self.c_attn, &self.attn_proj, &self.c_fc, &self.mlp_proj]
    }

    fn map_projections(
        self,
        f: &mut dyn FnMut(usize, Projection<B>) -> Result<Projection<B>, ModelError>,
    ) -> Result<Self, ModelError> {
        Ok(Gpt2Block {
            c_attn: f(0, self.c_attn)?,
            attn_proj: f(1, self.attn_proj)?,
            c_fc: f(2, self.c_fc)?,
            mlp_proj: f(3, self.mlp_proj)?,
            ..self
        })
    }
}

impl<B: Backend> AdapterHost<B> for Gpt2<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        visit_blocks(&self.blocks, prefix, "h", &BLOCK_PROJECTIONS, f);
    }
}

/// HF's `GPT2LMHeadModel`: the transformer and the tied LM head.
#[derive(Module, Debug)]
pub struct Gpt2LmHeadModel<B: Backend> {
    /// The transformer (HF path prefix `transformer.`).
    pub transformer: Gpt2<B>,
}

impl<B: Backend> Gpt2LmHeadModel<B> {
    /// Loads a GPT-2 model folder (a stored `lm_head.weight` is the tied copy and is skipped).
    pub fn load(dir: &Path, device: &B::Device) -> Result<(Gpt2Config, Self), ModelError> {
        let config = Gpt2Config::load(dir)?;
        let mut w = Weights::load(dir)?;
        w.ignore("lm_head.weight");
        let transformer = Gpt2::from_weights(&config, &mut w, device);
        w.finish()?;
        Ok((config, Gpt2LmHeadModel { transformer }))
    }

    /// Logits `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        self.logits(self.transformer.forward(input_ids, attention_mask))
    }

    /// Logits `[batch, seq, vocab]` of `seq` new tokens after those in `cache` (see
    /// [`Gpt2::forward_cached`]).
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.logits(self.transformer.forward_cached(input_ids, cache))
    }

    /// The LM head, tied to the token embeddings.
    pub fn logits(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::layers::tied_head(x, self.transformer.wte.weight.val())
    }

    /// Freezes the model (the tied head included) and adds adapters.
    pub fn with_adapters(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        Ok(Gpt2LmHeadModel {
            transformer: self.map(&mut Freezer).transformer.inject(config)?,
        })
    }
}

impl<B: Backend> AdapterHost<B> for Gpt2LmHeadModel<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.transformer
            .for_each_adapter(&join_path(prefix, "transformer"), f);
    }
}
