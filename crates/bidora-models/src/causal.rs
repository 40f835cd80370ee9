//! One type for the causal LMs of either layout ([`CausalLm`]: GPT-2 or Llama, from an HF
//! folder or a GGUF file), with what fine-tuning and decoding need: the default adapter
//! targets, the PEFT layout, a loss taken on chosen positions only, and the cached forward.
//!
//! ```no_run
//! use bidora_models::causal::CausalLm;
//! use bidora_models::generate::{decode_cached, greedy_pick};
//! use burn::backend::NdArray;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Default::default();
//! let loaded = CausalLm::<NdArray<f32>>::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &device)?;
//! let prompt = loaded.tokenizer.encode("The capital of France is", None, usize::MAX)?.ids;
//! let forward = |ids, cache: &mut _| loaded.model.forward_cached(ids, cache);
//! let new = decode_cached(forward, &prompt, 8, loaded.eos, &mut greedy_pick, &mut |_| false, &device);
//! println!("{}", loaded.tokenizer.decode(&new)?);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use bidora_adapters::peft::PeftAdapter;
use bidora_adapters::tensor_io::HostTensor;
use bidora_adapters::{AdaptedLinear, AdapterConfig, AdapterHost};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::bert::{host, put_linear, put_norm};
use crate::config::Architecture;
use crate::generate::KvCache;
use crate::gguf::Gguf;
use crate::gpt2::Gpt2LmHeadModel;
use crate::gpt2::BLOCK_PROJECTIONS;
use crate::heads::{cross_entropy, IGNORE_INDEX};
use crate::layers::Block;
use crate::llama::LlamaForCausalLM;
use crate::llama::LAYER_PROJECTIONS;
use crate::tokenizer::Tokenizer;
use crate::ModelError;

/// A causal LM of either layout.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum CausalLm<B: Backend> {
    /// HF's `GPT2LMHeadModel`.
    Gpt2(Gpt2LmHeadModel<B>),
    /// HF's `LlamaForCausalLM` (SmolLM2 too).
    Llama(LlamaForCausalLM<B>),
}

/// A loaded causal LM with its tokeniser and end-of-sequence token.
pub struct LoadedCausalLm<B: Backend> {
    /// The model.
    pub model: CausalLm<B>,
    /// Its tokeniser (`tokenizer.json`/BPE files, or the GGUF vocabulary).
    pub tokenizer: Tokenizer,
    /// `eos_token_id` of `config.json`, or `tokenizer.ggml.eos_token_id` of a GGUF file.
    pub eos: Option<u32>,
}

fn read_config(dir: &Path) -> Result<serde_json::Value, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ModelError::Invalid(format!("cannot read `{}`: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Config { path, source })
}

impl<B: Backend> CausalLm<B> {
    /// Loads a decoder: a GGUF file (Llama layout, its own vocabulary) or an HF folder whose
    /// `config.json` says `gpt2` or `llama`.
    pub fn load(path: &Path, device: &B::Device) -> Result<LoadedCausalLm<B>, ModelError> {
        let model = if path.is_file() {
            CausalLm::Llama(LlamaForCausalLM::load_gguf(path, device)?.1)
        } else {
            let config = read_config(path)?;
            let model_type = config["model_type"].as_str().unwrap_or_default();
            match Architecture::from_model_type(model_type) {
                Some(Architecture::Gpt2) => CausalLm::Gpt2(Gpt2LmHeadModel::load(path, device)?.1),
                Some(Architecture::Llama) => {
                    CausalLm::Llama(LlamaForCausalLM::load(path, device)?.1)
                }
                _ => {
                    return Err(ModelError::Invalid(format!(
                        "`{}` is a `{model_type}` model, not a decoder (gpt2, llama)",
                        path.display()
                    )))
                }
            }
        };
        let (tokenizer, eos) = Self::load_tokenizer(path)?;
        Ok(LoadedCausalLm {
            model,
            tokenizer,
            eos,
        })
    }

    /// The tokeniser and end-of-sequence token of the decoder at `path` (a GGUF file's
    /// vocabulary and `tokenizer.ggml.eos_token_id`, or a folder's tokenizer files and
    /// `config.json`'s `eos_token_id`), without its weights.
    pub fn load_tokenizer(path: &Path) -> Result<(Tokenizer, Option<u32>), ModelError> {
        if path.is_file() {
            let g = Gguf::read(path)?;
            let eos = g
                .get("tokenizer.ggml.eos_token_id")
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok());
            return Ok((Tokenizer::from_gguf(&g)?, eos));
        }
        let config = read_config(path)?;
        let eos = match &config["eos_token_id"] {
            serde_json::Value::Array(ids) => ids.first().and_then(|v| v.as_u64()),
            v => v.as_u64(),
        }
        .and_then(|v| u32::try_from(v).ok());
        Ok((Tokenizer::load(path)?, eos))
    }

    /// The PEFT targets when none are given: the attention query and value (GPT-2's fused
    /// `c_attn` holds both).
    pub fn default_targets(&self) -> Vec<String> {
        match self {
            CausalLm::Gpt2(_) => vec!["c_attn".into()],
            CausalLm::Llama(_) => vec!["q_proj".into(), "v_proj".into()],
        }
    }

    /// Whether PEFT sees the base weights as `[in, out]` (GPT-2's `Conv1D`): its adapter
    /// config must say `fan_in_fan_out = true`.
    pub fn fan_in_fan_out(&self) -> bool {
        matches!(self, CausalLm::Gpt2(_))
    }

    /// Freezes the model and adds adapters.
    pub fn with_adapters(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        Ok(match self {
            CausalLm::Gpt2(m) => CausalLm::Gpt2(m.with_adapters(config)?),
            CausalLm::Llama(m) => CausalLm::Llama(m.with_adapters(config)?),
        })
    }

    /// Freezes the model and applies a PEFT adapter (HF PEFT's or ours).
    pub fn with_peft(self, adapter: &PeftAdapter) -> Result<Self, ModelError> {
        let model = self.with_adapters(&adapter.config.to_adapter_config())?;
        Ok(adapter.apply(model, &|p: &str| p.to_string())?)
    }

    /// The number of token embeddings.
    pub fn vocab_size(&self) -> usize {
        match self {
            CausalLm::Gpt2(m) => m.transformer.wte.weight.dims()[0],
            CausalLm::Llama(m) => m.model.embed_tokens.weight.dims()[0],
        }
    }

    /// The most positions the model takes (GPT-2's learned position table), if limited.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            CausalLm::Gpt2(m) => Some(m.transformer.wpe.weight.dims()[0]),
            CausalLm::Llama(_) => None,
        }
    }

    /// The last hidden states `[batch, seq, hidden]`.
    pub fn hidden(&self, ids: Tensor<B, 2, Int>, mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            CausalLm::Gpt2(m) => m.transformer.forward(ids, mask),
            CausalLm::Llama(m) => m.model.forward(ids, mask),
        }
    }

    /// The LM head over hidden states `[batch, seq, hidden]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            CausalLm::Gpt2(m) => m.logits(hidden),
            CausalLm::Llama(m) => m.logits(hidden),
        }
    }

    /// Logits `[batch, seq, vocab]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>, mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.logits(self.hidden(ids, mask))
    }

    /// Logits of new tokens after those in `cache`.
    pub fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        match self {
            CausalLm::Gpt2(m) => m.forward_cached(ids, cache),
            CausalLm::Llama(m) => m.forward_cached(ids, cache),
        }
    }

    /// Mean next-token cross-entropy at chosen positions: `positions` `[n]` index the
    /// flattened `[batch × seq]` positions whose next token is a target, `targets` `[n]` are
    /// those next tokens (see [`next_token_targets`]). The LM head runs on these `n` positions
    /// only, which equals [`crate::heads::causal_lm_loss`] on the full logits at a fraction
    /// of the head's cost when most positions are prompt; a bias-free head goes through
    /// [`bidora_backend::kernels::linear_cross_entropy`], which never holds all `n × vocab`
    /// logits at once.
    pub fn next_token_loss(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        positions: Tensor<B, 1, Int>,
        targets: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        let hidden = self.hidden(ids, mask);
        let [b, s, h] = hidden.dims();
        let n = positions.dims()[0];
        if n == 0 {
            return hidden.sum().mul_scalar(0.0);
        }
        let picked = hidden.reshape([b * s, h]).select(0, positions);
        if let Some(table) = self.head_table() {
            return bidora_backend::kernels::linear_cross_entropy(picked, table, targets);
        }
        let logits = self.logits(picked.unsqueeze::<3>());
        let v = logits.dims()[2];
        cross_entropy(logits.reshape([n, v]), targets)
    }

    /// The LM head as a `[vocab, hidden]` table when it has no bias: the tied embeddings, or an
    /// `lm_head` weight seen transposed (a view).
    fn head_table(&self) -> Option<Tensor<B, 2>> {
        match self {
            CausalLm::Gpt2(m) => Some(m.transformer.wte.weight.val()),
            CausalLm::Llama(m) => match &m.lm_head {
                None => Some(m.model.embed_tokens.weight.val()),
                Some(head) if head.bias.is_none() => Some(head.weight.val().transpose()),
                Some(_) => None,
            },
        }
    }
}

/// The positions and targets of [`CausalLm::next_token_loss`] from `[batch × seq]` labels
/// ([`crate::heads::causal_lm_loss`]'s: the token itself where the loss is taken, `-100`
/// elsewhere): position `t` of a row predicts its label at `t + 1`.
pub fn next_token_targets(labels: &[i64], seq_len: usize) -> (Vec<i64>, Vec<i64>) {
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    if seq_len == 0 {
        return (positions, targets);
    }
    for (row, chunk) in labels.chunks(seq_len).enumerate() {
        for (t, &label) in chunk.iter().enumerate().skip(1) {
            if label != IGNORE_INDEX {
                positions.push((row * seq_len + t - 1) as i64);
                targets.push(label);
            }
        }
    }
    (positions, targets)
}

impl<B: Backend> AdapterHost<B> for CausalLm<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        match self {
            CausalLm::Gpt2(m) => m.for_each_adapter(prefix, f),
            CausalLm::Llama(m) => m.for_each_adapter(prefix, f),
        }
    }
}

impl<B: Backend> CausalLm<B> {
    /// Every weight under its HF name and in HF's layout, adapters merged into the base
    /// weights (PEFT's `merge_and_unload`): what `model.safetensors` of the plain model holds.
    /// GPT-2's `Conv1D` weights are `[in, out]`, Llama's linear weights `[out, in]`; a tied
    /// head is not stored.
    pub fn hf_tensors(&self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = BTreeMap::new();
        match self {
            CausalLm::Gpt2(m) => {
                let t = &m.transformer;
                out.insert(
                    "transformer.wte.weight".into(),
                    host(t.wte.weight.val(), "wte")?,
                );
                out.insert(
                    "transformer.wpe.weight".into(),
                    host(t.wpe.weight.val(), "wpe")?,
                );
                for (i, b) in t.blocks.iter().enumerate() {
                    let p = format!("transformer.h.{i}.");
                    put_norm(&mut out, &format!("{p}ln_1"), &b.ln_1)?;
                    put_norm(&mut out, &format!("{p}ln_2"), &b.ln_2)?;
                    for (name, proj) in BLOCK_PROJECTIONS.iter().zip(b.projections()) {
                        // Conv1D keeps Burn's `[in, out]`: no transpose.
                        let l = proj.merged();
                        let name = format!("{p}{name}");
                        out.insert(format!("{name}.weight"), host(l.weight.val(), &name)?);
                        if let Some(bias) = &l.bias {
                            out.insert(format!("{name}.bias"), host(bias.val(), &name)?);
                        }
                    }
                }
                put_norm(&mut out, "transformer.ln_f", &t.ln_f)?;
            }
            CausalLm::Llama(m) => {
                let t = &m.model;
                let embed = host(t.embed_tokens.weight.val(), "embed_tokens")?;
                out.insert("model.embed_tokens.weight".into(), embed);
                for (i, l) in t.layers.iter().enumerate() {
                    let p = format!("model.layers.{i}.");
                    for (name, proj) in LAYER_PROJECTIONS.iter().zip(l.projections()) {
                        put_linear(&mut out, &format!("{p}{name}"), &proj.merged())?;
                    }
                    let norm =
                        |n: &crate::llama::RmsNorm<B>, name: &str| host(n.weight.val(), name);
                    out.insert(
                        format!("{p}input_layernorm.weight"),
                        norm(&l.input_norm, &p)?,
                    );
                    out.insert(
                        format!("{p}post_attention_layernorm.weight"),
                        norm(&l.post_norm, &p)?,
                    );
                }
                out.insert(
                    "model.norm.weight".into(),
                    host(t.norm.weight.val(), "norm")?,
                );
                if let Some(head) = &m.lm_head {
                    put_linear(&mut out, "lm_head", head)?;
                }
            }
        }
        Ok(out)
    }
}
