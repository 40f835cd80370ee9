//! BERT-family encoders: BERT (covers all-MiniLM-L6-v2 and other `model_type: "bert"`
//! checkpoints) and RoBERTa (`model_type: "roberta"`: positions numbered after the padding id,
//! `roberta.` prefix), with the sequence-classification head of HF's
//! `BertForSequenceClassification`.
//!
//! Module paths follow HF's names (`encoder.layer.0.attention.self.query`), so PEFT's
//! `target_modules` and adapter keys apply unchanged. Every linear layer is a [`Projection`]:
//! plain, or adapted after [`Bert::inject`].

use std::collections::BTreeMap;
use std::path::Path;

use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig, AdapterHost};
use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::Deserialize;

use crate::weights::Weights;
use crate::ModelError;

/// The fields of a BERT `config.json` this implementation uses (others are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    /// `bert` or `roberta`.
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
    /// Segment vocabulary size.
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

impl BertConfig {
    /// Reads and checks `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let probe: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Config {
                path: path.clone(),
                source,
            })?;
        let model_type = probe["model_type"].as_str().unwrap_or("").to_string();
        if model_type != "bert" && model_type != "roberta" {
            return Err(ModelError::UnknownArchitecture {
                path,
                model_type,
                supported: "bert, roberta".into(),
            });
        }
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|source| ModelError::Config {
                path: path.clone(),
                source,
            })?;
        if config.hidden_act != "gelu" {
            return Err(ModelError::Invalid(format!(
                "`{}`: hidden_act `{}` is not supported (only `gelu`)",
                path.display(),
                config.hidden_act
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::Invalid(format!(
                "`{}`: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                config.hidden_size,
                config.num_attention_heads
            )));
        }
        Ok(config)
    }
}

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
            Projection::Plain(l) => l.forward(x),
            Projection::Adapted(l) => l.forward(x),
        }
    }

    fn inject(
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

    fn host<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        if let Projection::Adapted(l) = self {
            f(path, l)
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

fn linear<B: Backend>(
    w: &mut Weights,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Projection<B> {
    Projection::Plain(Linear {
        weight: w.linear_weight(&format!("{name}.weight"), d_in, d_out, device),
        bias: Some(w.param(&format!("{name}.bias"), [d_out], device)),
    })
}

fn layer_norm<B: Backend>(
    w: &mut Weights,
    name: &str,
    d: usize,
    eps: f64,
    device: &B::Device,
) -> LayerNorm<B> {
    let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(device);
    // Old checkpoints call the LayerNorm parameters gamma/beta.
    let (g, b) = if w.has(&format!("{name}.gamma")) {
        ("gamma", "beta")
    } else {
        ("weight", "bias")
    };
    ln.gamma = w.param(&format!("{name}.{g}"), [d], device);
    ln.beta = Some(w.param(&format!("{name}.{b}"), [d], device));
    ln
}

fn embedding<B: Backend>(
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

/// Token, position and segment embeddings.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `word_embeddings`.
    pub word: Embedding<B>,
    /// `position_embeddings`.
    pub position: Embedding<B>,
    /// `token_type_embeddings`.
    pub token_type: Embedding<B>,
    /// `LayerNorm`.
    pub norm: LayerNorm<B>,
    /// Dropout.
    pub dropout: Dropout,
}

/// One encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// `attention.self.query`.
    pub query: Projection<B>,
    /// `attention.self.key`.
    pub key: Projection<B>,
    /// `attention.self.value`.
    pub value: Projection<B>,
    /// `attention.output.dense`.
    pub attention_output: Projection<B>,
    /// `attention.output.LayerNorm`.
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

const LAYER_PROJECTIONS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl<B: Backend> BertLayer<B> {
    fn projections(&self) -> [&Projection<B>; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }

    /// `x`: `[batch, seq, hidden]`; `mask_bias`: `[batch, 1, 1, seq]` (0 or a large negative).
    pub fn forward(&self, x: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let hd = h / self.heads;
        let split = |t: Tensor<B, 3>| t.reshape([b, s, self.heads, hd]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let scores = q.matmul(k.transpose()).div_scalar((hd as f64).sqrt()) + mask_bias;
        let probs = self.attention_dropout.forward(softmax(scores, 3));
        let ctx = probs.matmul(v).swap_dims(1, 2).reshape([b, s, h]);
        let attn = self.dropout.forward(self.attention_output.forward(ctx));
        let x = self.attention_norm.forward(attn + x);
        let ff = self.dropout.forward(
            self.output
                .forward(gelu(self.intermediate.forward(x.clone()))),
        );
        self.output_norm.forward(ff + x)
    }
}

/// The BERT encoder and pooler.
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    /// Embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Encoder layers.
    pub layers: Vec<BertLayer<B>>,
    /// `pooler.dense` (tanh of the first token), when the checkpoint has one.
    pub pooler: Option<Projection<B>>,
    /// RoBERTa position numbering: positions count non-padding tokens from
    /// `pad_token_id + 1`; `None` for BERT's `0..seq`.
    pub roberta_padding_idx: Option<usize>,
}

/// Outputs of the encoder.
#[derive(Debug, Clone)]
pub struct BertOutput<B: Backend> {
    /// `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`, when there is a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
}

impl<B: Backend> Bert<B> {
    /// Builds the encoder from checkpoint tensors (names without or with a `bert.` prefix).
    pub fn from_weights(config: &BertConfig, w: &mut Weights, device: &B::Device) -> Self {
        let roberta = config.model_type == "roberta";
        w.detect_prefix(
            if roberta { "roberta." } else { "bert." },
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
            token_type: embedding(
                w,
                "embeddings.token_type_embeddings",
                config.type_vocab_size,
                h,
                device,
            ),
            norm: layer_norm(w, "embeddings.LayerNorm", h, eps, device),
            dropout: hidden_dropout.clone(),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                BertLayer {
                    query: linear(w, &format!("{p}.attention.self.query"), h, h, device),
                    key: linear(w, &format!("{p}.attention.self.key"), h, h, device),
                    value: linear(w, &format!("{p}.attention.self.value"), h, h, device),
                    attention_output: linear(
                        w,
                        &format!("{p}.attention.output.dense"),
                        h,
                        h,
                        device,
                    ),
                    attention_norm: layer_norm(
                        w,
                        &format!("{p}.attention.output.LayerNorm"),
                        h,
                        eps,
                        device,
                    ),
                    intermediate: linear(w, &format!("{p}.intermediate.dense"), h, f, device),
                    output: linear(w, &format!("{p}.output.dense"), f, h, device),
                    output_norm: layer_norm(w, &format!("{p}.output.LayerNorm"), h, eps, device),
                    dropout: hidden_dropout.clone(),
                    attention_dropout: DropoutConfig::new(config.attention_probs_dropout_prob)
                        .init(),
                    heads: config.num_attention_heads,
                }
            })
            .collect();
        let pooler = w
            .has("pooler.dense.weight")
            .then(|| linear(w, "pooler.dense", h, h, device));
        Bert {
            embeddings,
            layers,
            pooler,
            roberta_padding_idx: roberta.then_some(config.pad_token_id),
        }
    }

    /// Loads `config.json` and the weights of a BERT model folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<(BertConfig, Self), ModelError> {
        let config = BertConfig::load(dir)?;
        let mut w = Weights::load(dir)?;
        let model = Self::from_weights(&config, &mut w, device);
        w.finish()?;
        Ok((config, model))
    }

    /// Runs the encoder. `input_ids`, `attention_mask` (1 = token, 0 = padding) and
    /// `token_type_ids` are `[batch, seq]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> BertOutput<B> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let positions = match self.roberta_padding_idx {
            None => Tensor::<B, 1, Int>::arange(0..s as i64, &device)
                .unsqueeze::<2>()
                .repeat_dim(0, b),
            // HF's create_position_ids_from_input_ids: cumsum(not pad) * not pad + padding_idx.
            Some(pad) => {
                let keep = input_ids.clone().not_equal_elem(pad as i64).int();
                keep.clone().cumsum(1) * keep + pad as i64
            }
        };
        let e = self.embeddings.word.forward(input_ids)
            + self.embeddings.position.forward(positions)
            + self.embeddings.token_type.forward(token_type_ids);
        let mut x = self
            .embeddings
            .dropout
            .forward(self.embeddings.norm.forward(e));
        // HF adds the dtype's minimum to masked scores.
        let mask_bias = (attention_mask.float().neg() + 1.0)
            .mul_scalar(f32::MIN as f64)
            .reshape([b, 1, 1, s]);
        for layer in &self.layers {
            x = layer.forward(x, mask_bias.clone());
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

    /// Freezes every parameter (the pretrained weights); adapters injected afterwards are
    /// trainable.
    pub fn freeze(self) -> Self {
        self.map(&mut Freezer)
    }

    /// Adds adapters to every linear layer whose HF path matches `config.target_modules`.
    /// A target list that matches nothing is an error listing the layer names.
    pub fn inject(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let mut hits = Vec::new();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.into_iter().enumerate() {
            let p = |name: &str| format!("encoder.layer.{i}.{name}");
            layers.push(BertLayer {
                query: l
                    .query
                    .inject(&p(LAYER_PROJECTIONS[0]), config, &mut hits)?,
                key: l.key.inject(&p(LAYER_PROJECTIONS[1]), config, &mut hits)?,
                value: l
                    .value
                    .inject(&p(LAYER_PROJECTIONS[2]), config, &mut hits)?,
                attention_output: l.attention_output.inject(
                    &p(LAYER_PROJECTIONS[3]),
                    config,
                    &mut hits,
                )?,
                intermediate: l
                    .intermediate
                    .inject(&p(LAYER_PROJECTIONS[4]), config, &mut hits)?,
                output: l
                    .output
                    .inject(&p(LAYER_PROJECTIONS[5]), config, &mut hits)?,
                ..l
            });
        }
        let pooler = match self.pooler {
            Some(p) => Some(p.inject("pooler.dense", config, &mut hits)?),
            None => None,
        };
        if hits.is_empty() {
            return Err(ModelError::Invalid(format!(
                "target modules {:?} match no layer; BERT layers are named like encoder.layer.0.{} and pooler.dense",
                config.target_modules,
                LAYER_PROJECTIONS.join(", encoder.layer.0.")
            )));
        }
        Ok(Bert {
            embeddings: self.embeddings,
            layers,
            pooler,
            roberta_padding_idx: self.roberta_padding_idx,
        })
    }
}

impl<B: Backend> AdapterHost<B> for Bert<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        for (i, l) in self.layers.iter().enumerate() {
            for (name, proj) in LAYER_PROJECTIONS.iter().zip(l.projections()) {
                proj.host(&join_path(prefix, &format!("encoder.layer.{i}.{name}")), f);
            }
        }
        if let Some(p) = &self.pooler {
            p.host(&join_path(prefix, "pooler.dense"), f);
        }
    }
}

struct Freezer;

impl<B: Backend> ModuleMapper<B> for Freezer {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(false)
    }
}

/// HF's `BertForSequenceClassification`: the pooled first token, dropout, a linear classifier.
/// One output is regression (STS-B).
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// The encoder (HF path prefix `bert.`).
    pub bert: Bert<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `classifier`: `[hidden, num_labels]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// Loads a model folder. The classifier comes from the checkpoint when it has one (its size
    /// must then be `num_labels`), else it is freshly initialised as HF does (N(0, 0.02), zero
    /// bias). A checkpoint without a pooler gets a fresh one too.
    pub fn load(
        dir: &Path,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<(BertConfig, Self), ModelError> {
        let config = BertConfig::load(dir)?;
        if config.model_type != "bert" {
            return Err(ModelError::Invalid(format!(
                "`{}`: the sequence-classification head of `{}` is not implemented yet (only BERT's)",
                dir.display(),
                config.model_type
            )));
        }
        let mut w = Weights::load(dir)?;
        let mut bert = Bert::from_weights(&config, &mut w, device);
        let h = config.hidden_size;
        let fresh = |d_in: usize, d_out: usize| Linear {
            weight: Param::from_tensor(Tensor::random(
                [d_in, d_out],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
        };
        if bert.pooler.is_none() {
            bert.pooler = Some(Projection::Plain(fresh(h, h)));
        }
        let classifier = if w.has_raw("classifier.weight") {
            Linear {
                weight: Param::from_tensor(
                    w.raw_tensor::<B, 2>("classifier.weight".into(), [num_labels, h], device)
                        .transpose(),
                ),
                bias: Some(Param::from_tensor(w.raw_tensor(
                    "classifier.bias".into(),
                    [num_labels],
                    device,
                ))),
            }
        } else {
            fresh(h, num_labels)
        };
        w.finish()?;
        Ok((
            config.clone(),
            BertForSequenceClassification {
                bert,
                dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                classifier,
            },
        ))
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let out = self.bert.forward(input_ids, attention_mask, token_type_ids);
        let pooled = out.pooler_output.unwrap_or_else(|| {
            let [b, _, h] = out.last_hidden_state.dims();
            out.last_hidden_state
                .slice([0..b, 0..1, 0..h])
                .reshape([b, h])
        });
        self.classifier.forward(self.dropout.forward(pooled))
    }

    /// Freezes the encoder and adds adapters; the classifier stays trainable.
    pub fn with_adapters(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        Ok(BertForSequenceClassification {
            bert: self.bert.freeze().inject(config)?,
            ..self
        })
    }
}

impl<B: Backend> AdapterHost<B> for BertForSequenceClassification<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.bert.for_each_adapter(&join_path(prefix, "bert"), f);
    }
}
