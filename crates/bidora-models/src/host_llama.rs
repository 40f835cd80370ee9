//! Llama decoding on the host, for generation: the same model as [`crate::llama`] (the same
//! weights, rotary tables, RMSNorm and attention), computed on plain `f32` slices one layer at a
//! time, with the projections read straight from GGUF's quantised blocks
//! ([`QuantMatrix`]). A decoding step of SmolLM2-135M then reads about 96 MB of weights
//! instead of the dequantised model's 538 MB, and costs a few dozen calls instead of the
//! ~1,500 tensor operations of the Burn graph. Training, beams and GPT-2 stay on
//! [`crate::causal::CausalLm`]; the tests check this decoder's logits against it.
//!
//! ```no_run
//! use bidora_models::host_llama::HostLlama;
//! # fn main() -> Result<(), bidora_models::ModelError> {
//! let model = HostLlama::from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let new = model.greedy(&[504, 3575, 282, 4649, 314], 8, None);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use bidora_adapters::tensor_io::HostTensor;
use bidora_backend::kernels::math;
use bidora_backend::kernels::quant::QuantMatrix;
use rayon::prelude::*;

use burn::tensor::backend::Backend;

use crate::causal::CausalLm;
use crate::generate::{batch_loop, decode_loop};
use crate::gguf::Gguf;
use crate::llama::{LlamaConfig, LlamaForCausalLM, LAYER_PROJECTIONS};
use crate::ModelError;

/// One decoder layer: the query, key and value rows stacked in one matrix, gate and up too.
#[derive(Clone, Debug)]
struct Layer {
    qkv: QuantMatrix,
    o: QuantMatrix,
    gate_up: QuantMatrix,
    down: QuantMatrix,
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
}

/// A Llama decoder for generation on the host (see the module's documentation).
#[derive(Clone, Debug)]
pub struct HostLlama {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inner: usize,
    eps: f32,
    theta: f64,
    embed: QuantMatrix,
    /// `None` when tied to `embed`.
    head: Option<QuantMatrix>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
}

/// The keys and values of the positions decoded so far, per layer and row (`[positions,
/// kv_heads, head_dim]` each, rotated).
#[derive(Clone, Debug, Default)]
pub struct HostCache {
    len: usize,
    /// `layers[l][row]` = (keys, values).
    layers: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
}

impl HostCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where [`HostLlama::build`] finds the tensors (HF names).
trait Source {
    fn matrix(&mut self, hf: &str) -> Result<QuantMatrix, ModelError>;
    fn vector(&mut self, hf: &str) -> Result<Vec<f32>, ModelError>;
    fn has(&self, hf: &str) -> bool;
}

struct GgufSource<'a> {
    g: &'a Gguf,
    /// HF name to GGUF name.
    names: BTreeMap<String, String>,
    config: &'a LlamaConfig,
}

impl GgufSource<'_> {
    fn name(&self, hf: &str) -> Result<&str, ModelError> {
        self.names.get(hf).map(String::as_str).ok_or_else(|| {
            ModelError::Invalid(format!(
                "GGUF file `{}` has no tensor for `{hf}`",
                self.g.path.display()
            ))
        })
    }
}

impl Source for GgufSource<'_> {
    fn matrix(&mut self, hf: &str) -> Result<QuantMatrix, ModelError> {
        let m = self.g.matrix(self.name(hf)?)?;
        // llama.cpp's converter permutes the query and key rows (see `crate::llama`).
        let heads = if hf.ends_with("q_proj.weight") {
            self.config.num_attention_heads
        } else if hf.ends_with("k_proj.weight") {
            self.config.kv_heads()
        } else {
            return Ok(m);
        };
        Ok(m.reorder_rows(&unpermuted_order(m.shape().0, heads)))
    }
    fn vector(&mut self, hf: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.g.tensor(self.name(hf)?)?.data)
    }
    fn has(&self, hf: &str) -> bool {
        self.names.contains_key(hf)
    }
}

/// Row `i` of the HF layout is row `order[i]` of llama.cpp's (`crate::llama`'s
/// `unpermute_rows`).
fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    let mut order = vec![0; rows];
    for h in 0..heads {
        for half in 0..2 {
            for j in 0..d / 2 {
                order[h * d + half * (d / 2) + j] = h * d + 2 * j + half;
            }
        }
    }
    order
}

struct HfSource<'a>(&'a BTreeMap<String, HostTensor>);

impl HfSource<'_> {
    fn get(&self, hf: &str) -> Result<&HostTensor, ModelError> {
        self.0
            .get(hf)
            .ok_or_else(|| ModelError::Invalid(format!("no tensor `{hf}` for the host decoder")))
    }
}

impl Source for HfSource<'_> {
    fn matrix(&mut self, hf: &str) -> Result<QuantMatrix, ModelError> {
        let t = self.get(hf)?;
        let &[rows, cols] = t.shape.as_slice() else {
            return Err(ModelError::Invalid(format!(
                "`{hf}` has shape {:?}, not a matrix",
                t.shape
            )));
        };
        QuantMatrix::from_f32(rows, cols, t.data.clone())
            .map_err(|e| ModelError::Invalid(format!("`{hf}`: {e}")))
    }
    fn vector(&mut self, hf: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.get(hf)?.data.clone())
    }
    fn has(&self, hf: &str) -> bool {
        self.0.contains_key(hf)
    }
}

/// Matrices stacked by rows (one product instead of several).
fn stack(parts: &[QuantMatrix]) -> Result<QuantMatrix, ModelError> {
    QuantMatrix::stack(parts).map_err(|e| ModelError::Invalid(format!("stacking projections: {e}")))
}

impl HostLlama {
    /// From a GGUF file, keeping its quantised blocks.
    pub fn from_gguf(path: &Path) -> Result<Self, ModelError> {
        let g = Gguf::read(path)?;
        let config = LlamaConfig::from_gguf(&g)?;
        let names = g
            .tensors
            .keys()
            .filter_map(|n| crate::llama::gguf_to_hf(n).map(|hf| (hf, n.clone())))
            .collect();
        Self::build(
            &config,
            &mut GgufSource {
                g: &g,
                names,
                config: &config,
            },
        )
    }

    /// From a loaded model, its adapters merged (PEFT's `merge_and_unload`), in `f32`: any
    /// Llama folder, or a GGUF file with an adapter. Biases are refused (an error, so the caller
    /// can keep the Burn model).
    pub fn from_model<B: Backend>(model: &LlamaForCausalLM<B>) -> Result<Self, ModelError> {
        let tensors = CausalLm::Llama(model.clone()).hf_tensors()?;
        let m = &model.model;
        let [vocab, hidden] = m.embed_tokens.weight.dims();
        let first = m.layers.first();
        let heads = first.map_or(1, |l| l.heads);
        let config = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: tensors
                .get("model.layers.0.mlp.gate_proj.weight")
                .map_or(0, |t| t.shape[0]),
            num_hidden_layers: m.layers.len(),
            num_attention_heads: heads,
            num_key_value_heads: Some(first.map_or(1, |l| l.kv_heads)),
            rms_norm_eps: m.norm.eps,
            rope_theta: m.rope_theta,
            max_position_embeddings: usize::MAX,
            tie_word_embeddings: model.lm_head.is_none(),
            hidden_act: "silu".into(),
            attention_bias: tensors.keys().any(|k| k.ends_with(".bias")),
            mlp_bias: false,
            rope_scaling: None,
        };
        Self::from_hf_tensors(&config, &tensors)
    }

    /// From HF-named `f32` tensors ([`crate::causal::CausalLm::hf_tensors`]: adapters merged).
    pub fn from_hf_tensors(
        config: &LlamaConfig,
        tensors: &BTreeMap<String, HostTensor>,
    ) -> Result<Self, ModelError> {
        Self::build(config, &mut HfSource(tensors))
    }

    fn build(config: &LlamaConfig, src: &mut dyn Source) -> Result<Self, ModelError> {
        if config.attention_bias || config.mlp_bias || config.rope_scaling.is_some() {
            return Err(ModelError::Invalid(
                "the host decoder takes Llama models without biases or rotary scaling".into(),
            ));
        }
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let mut m = |j: usize| {
                    src.matrix(&format!("model.layers.{i}.{}.weight", LAYER_PROJECTIONS[j]))
                };
                let (q, k, v, o, gate, up, down) =
                    (m(0)?, m(1)?, m(2)?, m(3)?, m(4)?, m(5)?, m(6)?);
                Ok(Layer {
                    qkv: stack(&[q, k, v])?,
                    o,
                    gate_up: stack(&[gate, up])?,
                    down,
                    input_norm: src.vector(&format!("model.layers.{i}.input_layernorm.weight"))?,
                    post_norm: src
                        .vector(&format!("model.layers.{i}.post_attention_layernorm.weight"))?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let head = if config.tie_word_embeddings || !src.has("lm_head.weight") {
            None
        } else {
            Some(src.matrix("lm_head.weight")?)
        };
        Ok(HostLlama {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            kv_heads: config.kv_heads(),
            head_dim: config.head_dim(),
            inner: config.intermediate_size,
            eps: config.rms_norm_eps as f32,
            theta: config.rope_theta,
            embed: src.matrix("model.embed_tokens.weight")?,
            head,
            layers,
            norm: src.vector("model.norm.weight")?,
        })
    }

    /// The number of token embeddings.
    pub fn vocab_size(&self) -> usize {
        self.embed.shape().0
    }

    /// Logits `[rows, vocab]` at the last of `tokens.len() / rows` new positions of each row
    /// (`tokens` row-major), after those in `cache`, which then holds them too.
    ///
    /// # Errors
    /// A token id past the embeddings, or tokens that do not divide into `rows`.
    pub fn forward(
        &self,
        tokens: &[u32],
        rows: usize,
        cache: &mut HostCache,
    ) -> Result<Vec<f32>, ModelError> {
        let vocab = self.vocab_size();
        if rows == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(rows) {
            return Err(ModelError::Invalid(format!(
                "{} tokens do not divide into {rows} rows",
                tokens.len()
            )));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Invalid(format!(
                "token id {t} is past the {vocab} embeddings"
            )));
        }
        let s = tokens.len() / rows;
        let h = self.hidden;
        let mut x = vec![0.0f32; tokens.len() * h];
        for (row, &t) in x.chunks_mut(h).zip(tokens) {
            self.embed.dequantize_row(t as usize, row);
        }
        if cache.layers.is_empty() {
            cache.layers = vec![vec![Default::default(); rows]; self.layers.len()];
        }
        let (cos, sin) = self.rotary(cache.len, s);
        for (layer, kv) in self.layers.iter().zip(&mut cache.layers) {
            self.layer(layer, &mut x, rows, s, cache.len, (&cos, &sin), kv);
        }
        cache.len += s;
        let mut last: Vec<f32> = x
            .chunks(h)
            .skip(s - 1)
            .step_by(s)
            .flatten()
            .copied()
            .collect();
        rms_norm(&mut last, &self.norm, self.eps);
        let mut logits = vec![0.0f32; rows * vocab];
        self.head
            .as_ref()
            .unwrap_or(&self.embed)
            .matmul_t(&last, rows, &mut logits);
        Ok(logits)
    }

    /// `cos`, `sin` `[s, head_dim]` for positions `start..start + s`, as [`crate::llama`]
    /// builds them (angles in `f64`, then `f32`; the frequencies repeated for both halves).
    fn rotary(&self, start: usize, s: usize) -> (Vec<f32>, Vec<f32>) {
        let d = self.head_dim;
        let (mut cos, mut sin) = (Vec::with_capacity(s * d), Vec::with_capacity(s * d));
        for pos in start..start + s {
            let angles: Vec<f64> = (0..d / 2)
                .map(|i| pos as f64 / self.theta.powf(2.0 * i as f64 / d as f64))
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
        }
        (cos, sin)
    }

    /// One decoder layer over `x` `[rows · s, hidden]`, in place.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: &Layer,
        x: &mut [f32],
        rows: usize,
        s: usize,
        past: usize,
        (cos, sin): (&[f32], &[f32]),
        cache: &mut [(Vec<f32>, Vec<f32>)],
    ) {
        let (h, d) = (self.hidden, self.head_dim);
        let n = rows * s;
        let (qw, kvw) = (self.heads * d, self.kv_heads * d);
        let width = qw + 2 * kvw;
        let mut hx = x.to_vec();
        rms_norm(&mut hx, &l.input_norm, self.eps);
        let mut qkv = vec![0.0f32; n * width];
        l.qkv.matmul_t(&hx, n, &mut qkv);
        for (i, p) in qkv.chunks_mut(width).enumerate() {
            let t = i % s;
            let (c, sn) = (&cos[t * d..(t + 1) * d], &sin[t * d..(t + 1) * d]);
            p[..qw + kvw]
                .chunks_mut(d)
                .for_each(|head| rotate(head, c, sn));
        }
        for (r, (keys, values)) in cache.iter_mut().enumerate() {
            for p in qkv[r * s * width..(r + 1) * s * width].chunks(width) {
                keys.extend_from_slice(&p[qw..qw + kvw]);
                values.extend_from_slice(&p[qw + kvw..]);
            }
        }
        let ctx = self.attention(&qkv, width, rows, s, past, cache);
        let mut o = vec![0.0f32; n * h];
        l.o.matmul_t(&ctx, n, &mut o);
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        hx.copy_from_slice(x);
        rms_norm(&mut hx, &l.post_norm, self.eps);
        let f = self.inner;
        let mut gu = vec![0.0f32; n * 2 * f];
        l.gate_up.matmul_t(&hx, n, &mut gu);
        let act: Vec<f32> = gu
            .chunks(2 * f)
            .flat_map(|r| {
                let (g, u) = r.split_at(f);
                g.iter().zip(u).map(|(&g, &u)| silu(g) * u)
            })
            .collect();
        let mut down = vec![0.0f32; n * h];
        l.down.matmul_t(&act, n, &mut down);
        x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
    }

    /// Causal attention of the new queries over every cached key, per row and head (each key
    /// and value head serves `heads / kv_heads` consecutive query heads). Returns `[rows · s,
    /// heads · head_dim]`.
    fn attention(
        &self,
        qkv: &[f32],
        width: usize,
        rows: usize,
        s: usize,
        past: usize,
        cache: &[(Vec<f32>, Vec<f32>)],
    ) -> Vec<f32> {
        let (d, heads) = (self.head_dim, self.heads);
        let group = heads / self.kv_heads;
        let total = past + s;
        let scale = 1.0 / (d as f32).sqrt();
        let per_task: Vec<Vec<f32>> = (0..rows * heads)
            .into_par_iter()
            .map(|task| {
                let (r, hq) = (task / heads, task % heads);
                let kh = hq / group;
                let (keys, values) = &cache[r];
                let kvw = self.kv_heads * d;
                let mut out = vec![0.0f32; s * d];
                let mut scores = vec![0.0f32; total];
                math::wide(|| {
                    for i in 0..s {
                        let q = &qkv[(r * s + i) * width + hq * d..][..d];
                        let seen = past + i + 1;
                        for (t, sc) in scores[..seen].iter_mut().enumerate() {
                            *sc = math::dot(q, head_at(keys, t, kvw, kh, d)) * scale;
                        }
                        math::softmax_row(&mut scores[..seen]);
                        let o = &mut out[i * d..(i + 1) * d];
                        for (t, &p) in scores[..seen].iter().enumerate() {
                            o.iter_mut()
                                .zip(head_at(values, t, kvw, kh, d))
                                .for_each(|(o, &v)| *o += p * v);
                        }
                    }
                });
                out
            })
            .collect();
        let mut ctx = vec![0.0f32; rows * s * heads * d];
        for (task, out) in per_task.iter().enumerate() {
            let (r, hq) = (task / heads, task % heads);
            for i in 0..s {
                let dst = (r * s + i) * heads * d + hq * d;
                ctx[dst..dst + d].copy_from_slice(&out[i * d..(i + 1) * d]);
            }
        }
        ctx
    }

    /// Decodes after `prompt` (one row): `pick` chooses each token from the logits `[vocab]`,
    /// `on_token` sees the new tokens so far and returns true to stop
    /// ([`crate::generate::decode_cached`]'s contract).
    ///
    /// # Errors
    /// A token id past the embeddings (the prompt's, or a picked one).
    pub fn decode(
        &self,
        prompt: &[u32],
        new_tokens: usize,
        stop: Option<u32>,
        pick: &mut dyn FnMut(&[f32]) -> u32,
        on_token: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Invalid(
                "decoding needs at least one prompt token".into(),
            ));
        }
        let mut cache = HostCache::default();
        let failed = std::cell::RefCell::new(None);
        let mut step = |input: &[u32]| match self.forward(input, 1, &mut cache) {
            Ok(logits) => pick(&logits),
            Err(e) => {
                failed.borrow_mut().get_or_insert(e);
                0
            }
        };
        let mut until = |out: &[u32]| failed.borrow().is_some() || on_token(out);
        let out = decode_loop(prompt, new_tokens, stop, &mut step, &mut until);
        failed.into_inner().map_or(Ok(out), Err)
    }

    /// Greedy decoding of one prompt.
    pub fn greedy(&self, prompt: &[u32], new_tokens: usize, stop: Option<u32>) -> Vec<u32> {
        self.decode(prompt, new_tokens, stop, &mut |l| argmax(l), &mut |_| false)
            .unwrap_or_default()
    }

    /// Greedy decoding of prompts of one length together ([`crate::generate::greedy_batch`]'s
    /// contract).
    pub fn greedy_batch(
        &self,
        prompts: &[Vec<u32>],
        new_tokens: usize,
        stop: Option<u32>,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut cache = HostCache::default();
        let mut failed = None;
        let vocab = self.vocab_size();
        let mut step = |input: &[u32], rows: usize| match self.forward(input, rows, &mut cache) {
            Ok(logits) => logits.chunks(vocab).map(argmax).collect(),
            Err(e) => {
                failed.get_or_insert(e);
                vec![0; rows]
            }
        };
        let out = batch_loop(prompts, new_tokens, stop, &mut step)?;
        failed.map_or(Ok(out), Err)
    }
}

/// The first index of the largest value (0 for an empty slice).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Head `kh` of position `t` in a cache row `[positions, kv_heads, d]` (`kvw = kv_heads · d`).
fn head_at(store: &[f32], t: usize, kvw: usize, kh: usize, d: usize) -> &[f32] {
    &store[t * kvw + kh * d..][..d]
}

/// RMSNorm of each row of `weight.len()` values, in place, as [`crate::llama::RmsNorm`].
fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    for row in x.chunks_mut(n) {
        let var = math::dot(row, row) / n as f32;
        let inv = (var + eps).sqrt().recip();
        row.iter_mut()
            .zip(weight)
            .for_each(|(x, w)| *x = *x * inv * w);
    }
}

/// HF's rotate-half rotary on one head, in place.
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let orig = x.to_vec();
    for j in 0..x.len() {
        let rotated = if j < half {
            -orig[j + half]
        } else {
            orig[j - half]
        };
        x[j] = orig[j] * cos[j] + rotated * sin[j];
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + math::exp(-x))
}
