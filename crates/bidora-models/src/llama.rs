//! Llama-family decoders (`model_type: "llama"`; covers SmolLM2): RMSNorm, rotary position
//! embeddings (HF's rotate-half form), grouped-query attention and a SwiGLU feed-forward.
//!
//! Loads from an HF folder (`model.safetensors`) or from a GGUF file
//! ([`LlamaForCausalLM::load_gguf`]): llama.cpp's converter permutes the query and key rows
//! for its interleaved rotary form; the loader undoes that, so both sources give the same model.

use std::collections::BTreeMap;
use std::path::Path;

use bidora_adapters::tensor_io::HostTensor;
use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig, AdapterHost};
use bidora_backend::kernels::{attention, silu, softmax};
use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::config::{self, Architecture};
use crate::generate::{offset_causal_bias, KvCache};
use crate::gguf::{Gguf, Value};
use crate::layers::{
    causal_bias, embedding, example_paths, inject_blocks, linear, no_hits, visit_blocks, Block,
    Freezer, Projection,
};
use crate::weights::Weights;
use crate::ModelError;

/// The fields of a Llama `config.json` this implementation uses.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// SwiGLU inner size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention; defaults to the query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Context length.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Whether the LM head is the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Must be `silu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Biases on the attention projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the feed-forward projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Rotary scaling (only none is supported).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_positions() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Reads and checks `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let (path, config): (_, LlamaConfig) = config::load(dir, &[Architecture::Llama])?;
        config.check(&path.display().to_string())?;
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Invalid(format!("`{origin}`: {what}")));
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act `{}` is not supported (silu)",
                self.hidden_act
            ));
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() && s.get("rope_type").and_then(|t| t.as_str()) != Some("default") {
                return bad(format!("rope_scaling {s} is not supported"));
            }
        }
        config::check_heads(
            Path::new(origin),
            self.hidden_size,
            self.num_attention_heads,
        )?;
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "{} query heads cannot share {kv} key/value heads",
                self.num_attention_heads
            ));
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The configuration in a GGUF file's `llama.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self, ModelError> {
        let arch = g.require("general.architecture")?.as_str().unwrap_or("");
        if arch != "llama" {
            return Err(ModelError::UnknownArchitecture {
                path: g.path.clone(),
                model_type: arch.to_string(),
                supported: "llama (for GGUF files)".into(),
            });
        }
        let int = |k: &str| -> Result<usize, ModelError> {
            g.require(k)?.as_u64().map(|v| v as usize).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "GGUF file `{}`: `{k}` is not an integer",
                    g.path.display()
                ))
            })
        };
        let heads = int("llama.attention.head_count")?;
        let vocab_size = match g.get("llama.vocab_size").and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => g
                .tensors
                .get("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
                .unwrap_or(0),
        };
        let config = LlamaConfig {
            vocab_size,
            hidden_size: int("llama.embedding_length")?,
            intermediate_size: int("llama.feed_forward_length")?,
            num_hidden_layers: int("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(
                g.get("llama.attention.head_count_kv")
                    .and_then(Value::as_u64)
                    .map_or(heads, |v| v as usize),
            ),
            rms_norm_eps: g
                .get("llama.attention.layer_norm_rms_epsilon")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            rope_theta: g
                .get("llama.rope.freq_base")
                .and_then(Value::as_f64)
                .unwrap_or(10000.0),
            max_position_embeddings: int("llama.context_length").unwrap_or(2048),
            tie_word_embeddings: !g.tensors.contains_key("output.weight"),
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
            rope_scaling: None,
        };
        config.check(&g.path.display().to_string())?;
        if let Some(d) = g.get("llama.rope.dimension_count").and_then(Value::as_u64) {
            if d as usize != config.head_dim() {
                return Err(ModelError::Invalid(format!(
                    "GGUF file `{}`: partial rotary embeddings ({d} of {} head dimensions) are not supported",
                    g.path.display(),
                    config.head_dim()
                )));
            }
        }
        Ok(config)
    }
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) · weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale.
    pub weight: Param<Tensor<B, 1>>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let var = x.clone().powi_scalar(2).mean_dim(D - 1);
        let x = x * (var + self.eps).sqrt().recip();
        x * self.weight.val().unsqueeze()
    }
}

/// One decoder layer (`model.layers.N`).
#[derive(Module, Debug)]
pub struct LlamaLayer<B: Backend> {
    /// `self_attn.q_proj`.
    pub q_proj: Projection<B>,
    /// `self_attn.k_proj`.
    pub k_proj: Projection<B>,
    /// `self_attn.v_proj`.
    pub v_proj: Projection<B>,
    /// `self_attn.o_proj`.
    pub o_proj: Projection<B>,
    /// `mlp.gate_proj`.
    pub gate_proj: Projection<B>,
    /// `mlp.up_proj`.
    pub up_proj: Projection<B>,
    /// `mlp.down_proj`.
    pub down_proj: Projection<B>,
    /// `input_layernorm`.
    pub input_norm: RmsNorm<B>,
    /// `post_attention_layernorm`.
    pub post_norm: RmsNorm<B>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
}

/// HF names of a decoder layer's linear layers (after `model.layers.N.`).
pub const LAYER_PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// HF's `rotate_half` form: `x·cos + [−x₂, x₁]·sin` over the last dimension (`head_dim`) of a
/// 4-d tensor, `cos`/`sin` broadcast to it.
fn rotate<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, d / 2..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

impl<B: Backend> LlamaLayer<B> {
    /// `x`: `[batch, seq, hidden]`; `cos`/`sin`: `[1, 1, seq, head_dim]`; `bias`: causal +
    /// padding bias `[batch, 1, seq, seq]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        bias: Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        self.forward_with(x, cos, sin, bias, None).0
    }

    /// [`forward`](Self::forward) after `past` positions: `past` holds their keys and values
    /// `[batch, kv_heads, past, head_dim]` (rotated), `bias` is `[batch, 1, seq, past + seq]`.
    /// Returns the output and the keys and values of all `past + seq` positions.
    pub fn forward_with(
        &self,
        x: Tensor<B, 3>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        bias: Tensor<B, 4>,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let [b, s, _] = x.dims();
        let (h, kv) = (self.heads, self.kv_heads);
        let hx = self.input_norm.forward(x.clone());
        let q = self.q_proj.forward(hx.clone());
        let d = q.dims()[2] / h;
        // `[batch, seq, heads, head_dim]`, rotated over the last dimension.
        let (cos, sin) = (cos.swap_dims(1, 2), sin.swap_dims(1, 2));
        let q = rotate(q.reshape([b, s, h, d]), cos.clone(), sin.clone());
        let k = rotate(
            self.k_proj.forward(hx.clone()).reshape([b, s, kv, d]),
            cos,
            sin,
        );
        let v = self.v_proj.forward(hx).reshape([b, s, kv, d]);
        let (k, v) = (k.swap_dims(1, 2), v.swap_dims(1, 2));
        let (ctx, cached) = match past {
            // One fused attention node over the whole sequence (training, prompts).
            None => {
                // Each key/value head serves h / kv consecutive query heads (HF's repeat_kv).
                let repeat = |x: Tensor<B, 4>| {
                    x.swap_dims(1, 2)
                        .unsqueeze_dim::<5>(3)
                        .expand([b, s, kv, h / kv, d])
                        .reshape([b, s, h * d])
                };
                let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
                let q = q.reshape([b, s, h * d]);
                let ctx = attention(
                    q,
                    repeat(k.clone()),
                    repeat(v.clone()),
                    bias,
                    h,
                    &no_dropout,
                );
                (ctx, (k, v))
            }
            Some((pk, pv)) => {
                let (k, v) = (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2));
                let t = k.dims()[2];
                let repeat = |x: Tensor<B, 4>| {
                    x.unsqueeze_dim::<5>(2)
                        .expand([b, kv, h / kv, t, d])
                        .reshape([b, h, t, d])
                };
                let q = q.swap_dims(1, 2);
                let scores = q
                    .matmul(repeat(k.clone()).transpose())
                    .div_scalar((d as f64).sqrt())
                    + bias;
                let ctx = softmax(scores)
                    .matmul(repeat(v.clone()))
                    .swap_dims(1, 2)
                    .reshape([b, s, h * d]);
                (ctx, (k, v))
            }
        };
        self.finish(x, ctx, cached)
    }

    /// The rest of the layer after attention's `ctx` `[batch, seq, heads · head_dim]`: output
    /// projection, residual, feed-forward; `cached` is passed through.
    fn finish(
        &self,
        x: Tensor<B, 3>,
        ctx: Tensor<B, 3>,
        cached: (Tensor<B, 4>, Tensor<B, 4>),
    ) -> (Tensor<B, 3>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let x = x + self.o_proj.forward(ctx);
        let hx = self.post_norm.forward(x.clone());
        let ff = self
            .down_proj
            .forward(silu(self.gate_proj.forward(hx.clone())) * self.up_proj.forward(hx));
        (x + ff, cached)
    }
}

/// The Llama decoder (`LlamaModel`, checkpoint prefix `model.`).
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `embed_tokens`.
    pub embed_tokens: Embedding<B>,
    /// `layers`.
    pub layers: Vec<LlamaLayer<B>>,
    /// `norm`.
    pub norm: RmsNorm<B>,
    /// Rotary base.
    pub rope_theta: f64,
}

fn rms_norm<B: Backend>(
    w: &mut Weights,
    name: &str,
    d: usize,
    eps: f64,
    device: &B::Device,
) -> RmsNorm<B> {
    RmsNorm {
        weight: w.param(&format!("{name}.weight"), [d], device),
        eps,
    }
}

impl<B: Backend> Llama<B> {
    /// Builds the decoder from checkpoint tensors (HF names, `model.` prefix).
    pub fn from_weights(config: &LlamaConfig, w: &mut Weights, device: &B::Device) -> Self {
        w.detect_prefix("model.", "embed_tokens.weight");
        w.ignore("rotary_emb.inv_freq");
        let (hd, eps) = (config.hidden_size, config.rms_norm_eps);
        let (q_out, kv_out) = (
            config.num_attention_heads * config.head_dim(),
            config.kv_heads() * config.head_dim(),
        );
        let f = config.intermediate_size;
        let (ab, mb) = (config.attention_bias, config.mlp_bias);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = |n: &str| format!("layers.{i}.{n}");
                LlamaLayer {
                    q_proj: linear(w, &p(LAYER_PROJECTIONS[0]), hd, q_out, ab, device),
                    k_proj: linear(w, &p(LAYER_PROJECTIONS[1]), hd, kv_out, ab, device),
                    v_proj: linear(w, &p(LAYER_PROJECTIONS[2]), hd, kv_out, ab, device),
                    o_proj: linear(w, &p(LAYER_PROJECTIONS[3]), q_out, hd, ab, device),
                    gate_proj: linear(w, &p(LAYER_PROJECTIONS[4]), hd, f, mb, device),
                    up_proj: linear(w, &p(LAYER_PROJECTIONS[5]), hd, f, mb, device),
                    down_proj: linear(w, &p(LAYER_PROJECTIONS[6]), f, hd, mb, device),
                    input_norm: rms_norm(w, &p("input_layernorm"), hd, eps, device),
                    post_norm: rms_norm(w, &p("post_attention_layernorm"), hd, eps, device),
                    heads: config.num_attention_heads,
                    kv_heads: config.kv_heads(),
                }
            })
            .collect();
        Llama {
            embed_tokens: embedding(w, "embed_tokens", config.vocab_size, hd, device),
            layers,
            norm: rms_norm(w, "norm", hd, eps, device),
            rope_theta: config.rope_theta,
        }
    }

    /// The attention heads' width for a hidden size of `hidden` (2 for a model without layers).
    fn head_dim(&self, hidden: usize) -> usize {
        self.layers.first().map_or(2, |l| hidden / l.heads)
    }

    /// Rotary tables `cos`, `sin`: `[1, 1, seq, head_dim]` for positions `start..start + seq`.
    fn rotary(
        &self,
        start: usize,
        s: usize,
        d: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = d / 2;
        let mut cos = Vec::with_capacity(s * d);
        let mut sin = Vec::with_capacity(s * d);
        for pos in start..start + s {
            let angles: Vec<f64> = (0..half)
                .map(|i| pos as f64 / self.rope_theta.powf(2.0 * i as f64 / d as f64))
                .collect();
            // HF concatenates the frequencies with themselves.
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
        }
        let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, s, d]), device);
        (t(cos), t(sin))
    }

    /// The last hidden state `[batch, seq, hidden]`; positions are `0..seq` (pad on the
    /// right), `attention_mask` hides padding keys.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [_, s] = input_ids.dims();
        let device = input_ids.device();
        let mut x = self.embed_tokens.forward(input_ids);
        let d = self.head_dim(x.dims()[2]);
        let (cos, sin) = self.rotary(0, s, d, &device);
        let bias = causal_bias(attention_mask);
        for layer in &self.layers {
            x = layer.forward(x, cos.clone(), sin.clone(), bias.clone());
        }
        self.norm.forward(x)
    }

    /// The last hidden state `[batch, seq, hidden]` of `seq` new tokens after the positions in
    /// `cache`, which then holds them too. No padding: every row has the same positions.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [_, s] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.len();
        let mut x = self.embed_tokens.forward(input_ids);
        let d = self.head_dim(x.dims()[2]);
        let (cos, sin) = self.rotary(past, s, d, &device);
        let bias = offset_causal_bias::<B>(past, s, &device);
        let mut layers = std::mem::take(&mut cache.layers).into_iter();
        for layer in &self.layers {
            let (out, kv) =
                layer.forward_with(x, cos.clone(), sin.clone(), bias.clone(), layers.next());
            x = out;
            cache.layers.push(kv);
        }
        self.norm.forward(x)
    }

    /// Adds adapters to every projection whose HF path (`layers.0.self_attn.q_proj`, …)
    /// matches.
    pub fn inject(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let mut hits = Vec::new();
        let layers = inject_blocks(self.layers, "layers", &LAYER_PROJECTIONS, config, &mut hits)?;
        if hits.is_empty() {
            let examples = example_paths("layers", &LAYER_PROJECTIONS);
            return Err(no_hits(config, "Llama", &examples));
        }
        Ok(Llama { layers, ..self })
    }
}

impl<B: Backend> Block<B> for LlamaLayer<B> {
    fn projections(&self) -> Vec<&Projection<B>> {
        vec![
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    fn map_projections(
        self,
        f: &mut dyn FnMut(usize, Projection<B>) -> Result<Projection<B>, ModelError>,
    ) -> Result<Self, ModelError> {
        Ok(LlamaLayer {
            q_proj: f(0, self.q_proj)?,
            k_proj: f(1, self.k_proj)?,
            v_proj: f(2, self.v_proj)?,
            o_proj: f(3, self.o_proj)?,
            gate_proj: f(4, self.gate_proj)?,
            up_proj: f(5, self.up_proj)?,
            down_proj: f(6, self.down_proj)?,
            ..self
        })
    }
}

impl<B: Backend> AdapterHost<B> for Llama<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        visit_blocks(&self.layers, prefix, "layers", &LAYER_PROJECTIONS, f);
    }
}

/// HF's `LlamaForCausalLM`.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    /// The decoder (HF path prefix `model.`).
    pub model: Llama<B>,
    /// `lm_head` (`[hidden, vocab]`); `None` when tied to the embeddings.
    pub lm_head: Option<Linear<B>>,
}

/// llama.cpp's converter stores query/key rows interleaved per head (pairs `(i, i + d/2)`
/// adjacent); this puts them back in HF's rotate-half order.
fn unpermute_rows(t: &mut HostTensor, heads: usize) {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let d = rows / heads;
    let mut out = vec![0.0; t.data.len()];
    for h in 0..heads {
        for half in 0..2 {
            for j in 0..d / 2 {
                let dst = h * d + half * (d / 2) + j;
                let src = h * d + 2 * j + half;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    t.data = out;
}

impl<B: Backend> LlamaForCausalLM<B> {
    fn from_weights(config: &LlamaConfig, w: &mut Weights, device: &B::Device) -> Self {
        let model = Llama::from_weights(config, w, device);
        let lm_head = if config.tie_word_embeddings {
            w.ignore("lm_head.weight");
            None
        } else {
            let weight: Tensor<B, 2> = w.raw_tensor(
                "lm_head.weight".into(),
                [config.vocab_size, config.hidden_size],
                device,
            );
            Some(Linear {
                weight: Param::from_tensor(weight.transpose()),
                bias: None,
            })
        };
        LlamaForCausalLM { model, lm_head }
    }

    /// Loads an HF model folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<(LlamaConfig, Self), ModelError> {
        let config = LlamaConfig::load(dir)?;
        let mut w = Weights::load(dir)?;
        let model = Self::from_weights(&config, &mut w, device);
        w.finish()?;
        Ok((config, model))
    }

    /// Loads a llama.cpp GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, dequantised to f32).
    pub fn load_gguf(path: &Path, device: &B::Device) -> Result<(LlamaConfig, Self), ModelError> {
        let g = Gguf::read(path)?;
        let config = LlamaConfig::from_gguf(&g)?;
        let mut tensors = BTreeMap::new();
        for name in g.tensors.keys() {
            let hf = gguf_to_hf(name).ok_or_else(|| ModelError::Weights {
                path: path.to_path_buf(),
                problems: format!("  - unexpected tensor `{name}` (not a Llama tensor)"),
            })?;
            let mut t = g.tensor(name)?;
            if hf.ends_with("q_proj.weight") && t.shape.len() == 2 {
                unpermute_rows(&mut t, config.num_attention_heads);
            } else if hf.ends_with("k_proj.weight") && t.shape.len() == 2 {
                unpermute_rows(&mut t, config.kv_heads());
            }
            tensors.insert(hf, t);
        }
        drop(g);
        let mut w = Weights::from_map(path.to_path_buf(), tensors);
        let model = Self::from_weights(&config, &mut w, device);
        w.finish()?;
        Ok((config, model))
    }

    /// Logits `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        self.logits(self.model.forward(input_ids, attention_mask))
    }

    /// Logits `[batch, seq, vocab]` of `seq` new tokens after those in `cache` (see
    /// [`Llama::forward_cached`]).
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.logits(self.model.forward_cached(input_ids, cache))
    }

    /// The head (tied to the embeddings when the checkpoint has no `lm_head`).
    pub fn logits(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => crate::layers::tied_head(x, self.model.embed_tokens.weight.val()),
        }
    }

    /// Freezes the model (head included) and adds adapters.
    pub fn with_adapters(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        let frozen = self.map(&mut Freezer);
        Ok(LlamaForCausalLM {
            model: frozen.model.inject(config)?,
            lm_head: frozen.lm_head,
        })
    }
}

impl<B: Backend> AdapterHost<B> for LlamaForCausalLM<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.model.for_each_adapter(&join_path(prefix, "model"), f);
    }
}

/// The HF name of a llama.cpp tensor name.
pub(crate) fn gguf_to_hf(name: &str) -> Option<String> {
    Some(match name {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = name.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let (module, param) = part.rsplit_once('.')?;
            let hf = match module {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}.{param}")
        }
    })
}
