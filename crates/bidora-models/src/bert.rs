//! BERT-family encoders: BERT (covers all-MiniLM-L6-v2), RoBERTa (positions numbered after the
//! padding id, `roberta.` prefix) and MPNet (covers all-mpnet-base-v2: RoBERTa-style positions,
//! no segment embeddings, and a relative-position bias shared by all layers).
//!
//! Module paths follow HF's names (`encoder.layer.0.attention.self.query`, for MPNet
//! `encoder.layer.0.attention.attn.q`), so PEFT's `target_modules` and adapter keys apply
//! unchanged. Every linear layer is a [`Projection`]: plain, or adapted after
//! [`Bert::inject`]. The task heads are in [`crate::heads`].

use std::collections::BTreeMap;
use std::path::Path;

use bidora_adapters::tensor_io::HostTensor;
use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig, AdapterHost};
use bidora_backend::kernels::attention;
use bidora_backend::kernels::dropout::dropout;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::config::{self, Architecture};
use crate::layers::{
    embedding, example_paths, gelu_erf, inject_blocks, layer_norm, linear, no_hits, padding_bias,
    visit_blocks, Block, Freezer, LayerNorm, Projection,
};
use crate::weights::Weights;
use crate::ModelError;

/// Which member of the family a [`Bert`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BERT: absolute positions `0..seq`, segment embeddings.
    Bert,
    /// RoBERTa: positions count non-padding tokens after the padding id.
    Roberta,
    /// MPNet: RoBERTa's positions, no segments, relative-position attention bias.
    Mpnet,
}

impl Family {
    /// The checkpoint prefix of the encoder (`bert`, `roberta`, `mpnet`).
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::Mpnet => "mpnet",
        }
    }

    /// HF names of a layer's linear layers: query, key, value, attention output,
    /// intermediate, output.
    pub fn projection_names(self) -> [&'static str; 6] {
        match self {
            Family::Bert | Family::Roberta => [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ],
            Family::Mpnet => [
                "attention.attn.q",
                "attention.attn.k",
                "attention.attn.v",
                "attention.attn.o",
                "intermediate.dense",
                "output.dense",
            ],
        }
    }

    /// HF name of the LayerNorm after attention.
    pub fn attention_norm(self) -> &'static str {
        match self {
            Family::Bert | Family::Roberta => "attention.output.LayerNorm",
            Family::Mpnet => "attention.LayerNorm",
        }
    }
}

/// The fields of a BERT / RoBERTa / MPNet `config.json` this implementation uses (others are
/// ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    /// `bert`, `roberta` or `mpnet`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward size.
    pub intermediate_size: usize,
    /// Activation: `gelu` (erf) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Position table size.
    pub max_position_embeddings: usize,
    /// Segment vocabulary size (MPNet has none).
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Dropout after embeddings, attention output and feed-forward.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Padding token id (RoBERTa numbers positions after it).
    #[serde(default)]
    pub pad_token_id: usize,
    /// MPNet's relative-position buckets.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Label names of a fine-tuned classifier (`{"0": "NEG", ...}`).
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_buckets() -> usize {
    32
}

impl BertConfig {
    /// Reads and checks `dir/config.json` (`model_type` bert, roberta or mpnet).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let (path, config): (_, BertConfig) = config::load(
            dir,
            &[
                Architecture::Bert,
                Architecture::Roberta,
                Architecture::Mpnet,
            ],
        )?;
        if config.hidden_act != "gelu" {
            return Err(ModelError::Invalid(format!(
                "`{}`: hidden_act `{}` is not supported (only `gelu`)",
                path.display(),
                config.hidden_act
            )));
        }
        config::check_heads(&path, config.hidden_size, config.num_attention_heads)?;
        Ok(config)
    }

    /// The family named by `model_type`.
    pub fn family(&self) -> Family {
        match self.model_type.as_str() {
            "roberta" => Family::Roberta,
            "mpnet" => Family::Mpnet,
            _ => Family::Bert,
        }
    }
}

/// Token, position and (except MPNet) segment embeddings.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `word_embeddings`.
    pub word: Embedding<B>,
    /// `position_embeddings`.
    pub position: Embedding<B>,
    /// `token_type_embeddings` (absent in MPNet).
    pub token_type: Option<Embedding<B>>,
    /// `LayerNorm`.
    pub norm: LayerNorm<B>,
    /// Dropout.
    pub dropout: Dropout,
}

/// One encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Query (`attention.self.query`, MPNet `attention.attn.q`).
    pub query: Projection<B>,
    /// Key.
    pub key: Projection<B>,
    /// Value.
    pub value: Projection<B>,
    /// Attention output (`attention.output.dense`, MPNet `attention.attn.o`).
    pub attention_output: Projection<B>,
    /// LayerNorm after attention.
    pub attention_norm: LayerNorm<B>,
    /// `intermediate.dense`.
    pub intermediate: Projection<B>,
    /// `output.dense`.
    pub output: Projection<B>,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm<B>,
    /// Hidden dropout.
    pub dropout: Dropout,
    /// Attention-probability dropout.
    pub attention_dropout: Dropout,
    /// Attention heads.
    pub heads: usize,
}

impl<B: Backend> Block<B> for BertLayer<B> {
    fn projections(&self) -> Vec<&Projection<B>> {
        vec![
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }

    fn map_projections(
        self,
        f: &mut dyn FnMut(usize, Projection<B>) -> Result<Projection<B>, ModelError>,
    ) -> Result<Self, ModelError> {
        Ok(BertLayer {
            query: f(0, self.query)?,
            key: f(1, self.key)?,
            value: f(2, self.value)?,
            attention_output: f(3, self.attention_output)?,
            intermediate: f(4, self.intermediate)?,
            output: f(5, self.output)?,
            ..self
        })
    }
}

impl<B: Backend> BertLayer<B> {
    /// `x`: `[batch, seq, hidden]`; `bias`: added to the attention scores, broadcastable to
    /// `[batch, heads, seq, seq]` (padding mask, plus MPNet's relative-position bias).
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let q = self.query.forward(x.clone());
        let k = self.key.forward(x.clone());
        let v = self.value.forward(x.clone());
        let ctx = attention(q, k, v, bias, self.heads, &self.attention_dropout);
        let attn = dropout(&self.dropout, self.attention_output.forward(ctx));
        let x = self.attention_norm.forward(attn + x);
        let ff = dropout(
            &self.dropout,
            self.output
                .forward(gelu_erf(self.intermediate.forward(x.clone()))),
        );
        self.output_norm.forward(ff + x)
    }
}

/// A BERT-family encoder and its pooler.
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    /// Embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Encoder layers.
    pub layers: Vec<BertLayer<B>>,
    /// MPNet's `encoder.relative_attention_bias` (`[buckets, heads]`).
    pub relative_attention_bias: Option<Embedding<B>>,
    /// `pooler.dense` (tanh of the first token), when the checkpoint has one.
    pub pooler: Option<Projection<B>>,
    /// The family member.
    pub family: Family,
    /// RoBERTa/MPNet position numbering: positions count non-padding tokens from
    /// `padding_idx + 1`; `None` for BERT's `0..seq`.
    pub padding_idx: Option<usize>,
}

/// Outputs of the encoder.
#[derive(Debug, Clone)]
pub struct BertOutput<B: Backend> {
    /// `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`, when there is a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
}

/// MPNet's (and T5's) bucket of a relative position `key - query`: exact buckets for
/// distances below `num_buckets / 4`, logarithmic ones up to `max_distance`, separately for
/// each direction. Computed in `f32` as HF does, so the bucket edges agree.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let scaled = (n as f32 / max_exact as f32).ln()
            / (max_distance as f32 / max_exact as f32).ln()
            * (half - max_exact) as f32;
        (max_exact + scaled as i64).min(half - 1)
    };
    bucket as usize
}

impl<B: Backend> Bert<B> {
    /// Builds the encoder from checkpoint tensors (names without or with the `bert.` /
    /// `roberta.` / `mpnet.` prefix).
    pub fn from_weights(config: &BertConfig, w: &mut Weights, device: &B::Device) -> Self {
        let family = config.family();
        w.detect_prefix(
            &format!("{}.", family.prefix()),
            "embeddings.word_embeddings.weight",
        );
        w.ignore("embeddings.position_ids");
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps;
        let hidden_dropout = DropoutConfig::new(config.hidden_dropout_prob).init();
        let embeddings = BertEmbeddings {
            word: embedding(
                w,
                "embeddings.word_embeddings",
                config.vocab_size,
                h,
                device,
            ),
            position: embedding(
                w,
                "embeddings.position_embeddings",
                config.max_position_embeddings,
                h,
                device,
            ),
            token_type: (family != Family::Mpnet).then(|| {
                embedding(
                    w,
                    "embeddings.token_type_embeddings",
                    config.type_vocab_size,
                    h,
                    device,
                )
            }),
            norm: layer_norm(w, "embeddings.LayerNorm", h, eps, device),
            dropout: hidden_dropout.clone(),
        };
        let [q, k, v, o, i, out] = family.projection_names();
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = |name: &str| format!("encoder.layer.{l}.{name}");
                BertLayer {
                    query: linear(w, &p(q), h, h, true, device),
                    key: linear(w, &p(k), h, h, true, device),
                    value: linear(w, &p(v), h, h, true, device),
                    attention_output: linear(w, &p(o), h, h, true, device),
                    attention_norm: layer_norm(w, &p(family.attention_norm()), h, eps, device),
                    intermediate: linear(w, &p(i), h, f, true, device),
                    output: linear(w, &p(out), f, h, true, device),
                    output_norm: layer_norm(w, &p("output.LayerNorm"), h, eps, device),
                    dropout: hidden_dropout.clone(),
                    attention_dropout: DropoutConfig::new(config.attention_probs_dropout_prob)
                        .init(),
                    heads: config.num_attention_heads,
                }
            })
            .collect();
        let relative_attention_bias = (family == Family::Mpnet).then(|| {
            embedding(
                w,
                "encoder.relative_attention_bias",
                config.relative_attention_num_buckets,
                config.num_attention_heads,
                device,
            )
        });
        let pooler = w
            .has("pooler.dense.weight")
            .then(|| linear(w, "pooler.dense", h, h, true, device));
        Bert {
            embeddings,
            layers,
            relative_attention_bias,
            pooler,
            family,
            padding_idx: match family {
                Family::Bert => None,
                Family::Roberta => Some(config.pad_token_id),
                // HF's MPNetEmbeddings fixes its padding index at 1.
                Family::Mpnet => Some(1),
            },
        }
    }

    /// Loads `config.json` and the weights of a BERT / RoBERTa / MPNet model folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<(BertConfig, Self), ModelError> {
        let config = BertConfig::load(dir)?;
        let mut w = Weights::load(dir)?;
        let model = Self::from_weights(&config, &mut w, device);
        w.finish()?;
        Ok((config, model))
    }

    /// Like [`Bert::load`], for a checkpoint that may also hold task heads (`classifier.*`,
    /// BERT's pre-training `cls.*`): those are skipped instead of being errors.
    pub fn load_base(dir: &Path, device: &B::Device) -> Result<(BertConfig, Self), ModelError> {
        let config = BertConfig::load(dir)?;
        let mut w = Weights::load(dir)?;
        let model = Self::from_weights(&config, &mut w, device);
        w.ignore_prefix("classifier.");
        w.ignore_prefix("cls.");
        w.finish()?;
        Ok((config, model))
    }

    /// Runs the encoder. `input_ids`, `attention_mask` (1 = token, 0 = padding) and
    /// `token_type_ids` are `[batch, seq]` (MPNet ignores the segment ids).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> BertOutput<B> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let positions = match self.padding_idx {
            None => Tensor::<B, 1, Int>::arange(0..s as i64, &device)
                .unsqueeze::<2>()
                .repeat_dim(0, b),
            // HF's create_position_ids_from_input_ids: cumsum(not pad) * not pad + padding_idx.
            Some(pad) => {
                let keep = input_ids.clone().not_equal_elem(pad as i64).int();
                keep.clone().cumsum(1) * keep + pad as i64
            }
        };
        let mut e =
            self.embeddings.word.forward(input_ids) + self.embeddings.position.forward(positions);
        if let Some(types) = &self.embeddings.token_type {
            e = e + types.forward(token_type_ids);
        }
        let mut x = dropout(&self.embeddings.dropout, self.embeddings.norm.forward(e));
        let mut bias = padding_bias(attention_mask);
        if let Some(table) = &self.relative_attention_bias {
            bias = bias + self.position_bias(table, s);
        }
        for layer in &self.layers {
            x = layer.forward(x, bias.clone());
        }
        let pooler_output = self.pooler.as_ref().map(|p| {
            let h = x.dims()[2];
            let first = x.clone().slice([0..b, 0..1, 0..h]).reshape([b, h]);
            p.forward(first).tanh()
        });
        BertOutput {
            last_hidden_state: x,
            pooler_output,
        }
    }

    /// MPNet's relative-position bias `[1, heads, seq, seq]`.
    fn position_bias(&self, table: &Embedding<B>, s: usize) -> Tensor<B, 4> {
        let [buckets, heads] = table.weight.dims();
        let ids: Vec<i64> = (0..s as i64)
            .flat_map(|q| (0..s as i64).map(move |k| k - q))
            .map(|rel| relative_position_bucket(rel, buckets, 128) as i64)
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [s, s]),
            &table.weight.val().device(),
        );
        table
            .forward(ids)
            .permute([2, 0, 1])
            .reshape([1, heads, s, s])
    }

    /// Freezes every parameter (the pretrained weights); adapters injected afterwards are
    /// trainable.
    pub fn freeze(self) -> Self {
        self.map(&mut Freezer)
    }

    /// Merges every adapter into its base weight and drops it (PEFT's `merge_and_unload`): the
    /// result is a plain encoder, as fast as the base model, computing what the adapted one did.
    pub fn merge_adapters(self) -> Self {
        let layers = self
            .layers
            .into_iter()
            .map(|l| BertLayer {
                query: l.query.into_merged(),
                key: l.key.into_merged(),
                value: l.value.into_merged(),
                attention_output: l.attention_output.into_merged(),
                intermediate: l.intermediate.into_merged(),
                output: l.output.into_merged(),
                ..l
            })
            .collect();
        Bert {
            layers,
            pooler: self.pooler.map(Projection::into_merged),
            ..self
        }
    }

    /// Adds adapters to every linear layer whose HF path matches `config.target_modules`.
    /// A target list that matches nothing is an error listing the layer names.
    pub fn inject(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let names = self.family.projection_names();
        let mut hits = Vec::new();
        let layers = inject_blocks(self.layers, "encoder.layer", &names, config, &mut hits)?;
        let pooler = match self.pooler {
            Some(p) => Some(p.inject("pooler.dense", config, &mut hits)?),
            None => None,
        };
        if hits.is_empty() {
            let mut examples = example_paths("encoder.layer", &names);
            examples.push("pooler.dense".into());
            return Err(no_hits(config, self.family.prefix(), &examples));
        }
        Ok(Bert {
            layers,
            pooler,
            ..self
        })
    }
}

/// A PyTorch-layout copy of a tensor.
pub(crate) fn host<const D: usize, B: Backend>(
    t: Tensor<B, D>,
    name: &str,
) -> Result<HostTensor, ModelError> {
    Ok(HostTensor::from_tensor(t, name)?)
}

/// Inserts `name.weight` (`[out, in]`) and `name.bias` of a linear layer.
pub(crate) fn put_linear<B: Backend>(
    out: &mut BTreeMap<String, HostTensor>,
    name: &str,
    l: &burn::nn::Linear<B>,
) -> Result<(), ModelError> {
    out.insert(
        format!("{name}.weight"),
        host(l.weight.val(), name)?.transposed()?,
    );
    if let Some(b) = &l.bias {
        out.insert(format!("{name}.bias"), host(b.val(), name)?);
    }
    Ok(())
}

pub(crate) fn put_norm<B: Backend>(
    out: &mut BTreeMap<String, HostTensor>,
    name: &str,
    ln: &LayerNorm<B>,
) -> Result<(), ModelError> {
    out.insert(format!("{name}.weight"), host(ln.gamma.val(), name)?);
    out.insert(format!("{name}.bias"), host(ln.beta.val(), name)?);
    Ok(())
}

impl<B: Backend> Bert<B> {
    /// Every weight under its HF name (after `prefix`, e.g. `bert.`), in PyTorch layout, with
    /// adapters merged into the base weights: what `model.safetensors` of a plain model holds.
    pub fn hf_tensors(&self, prefix: &str) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = BTreeMap::new();
        let e = &self.embeddings;
        let mut table = |name: &str, t: &Embedding<B>| -> Result<(), ModelError> {
            out.insert(
                format!("{prefix}{name}.weight"),
                host(t.weight.val(), name)?,
            );
            Ok(())
        };
        table("embeddings.word_embeddings", &e.word)?;
        table("embeddings.position_embeddings", &e.position)?;
        if let Some(t) = &e.token_type {
            table("embeddings.token_type_embeddings", t)?;
        }
        if let Some(t) = &self.relative_attention_bias {
            table("encoder.relative_attention_bias", t)?;
        }
        put_norm(&mut out, &format!("{prefix}embeddings.LayerNorm"), &e.norm)?;
        let names = self.family.projection_names();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("{prefix}encoder.layer.{i}.");
            for (name, proj) in names.iter().zip(l.projections()) {
                put_linear(&mut out, &format!("{p}{name}"), &proj.merged())?;
            }
            put_norm(
                &mut out,
                &format!("{p}{}", self.family.attention_norm()),
                &l.attention_norm,
            )?;
            put_norm(&mut out, &format!("{p}output.LayerNorm"), &l.output_norm)?;
        }
        if let Some(p) = &self.pooler {
            put_linear(&mut out, &format!("{prefix}pooler.dense"), &p.merged())?;
        }
        Ok(out)
    }
}

impl<B: Backend> AdapterHost<B> for Bert<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        let names = self.family.projection_names();
        visit_blocks(&self.layers, prefix, "encoder.layer", &names, f);
        if let Some(p) = &self.pooler {
            p.host(&join_path(prefix, "pooler.dense"), f);
        }
    }
}
