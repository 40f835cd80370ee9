//! Task heads on the BERT-family encoders, as HF builds them, and their losses.
//!
//! - [`BertForSequenceClassification`]: BERT's pooler + `classifier`; RoBERTa's and MPNet's
//!   `classifier.dense` + tanh + `classifier.out_proj` on the first token. One label is
//!   regression (trained with [`mse_loss`]), more are classes ([`cross_entropy`]).
//! - [`BertForTokenClassification`]: `classifier` on every token ([`cross_entropy`] with
//!   [`IGNORE_INDEX`] for special tokens and padding).
//!
//! A head missing from the checkpoint is initialised as HF does (N(0, 0.02), zero bias); a
//! PEFT adapter's saved head (`modules_to_save`) loads with `with_peft`.

use std::collections::BTreeMap;
use std::path::Path;

use bidora_adapters::peft::PeftAdapter;
use bidora_adapters::tensor_io::HostTensor;
use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig, AdapterHost};
use bidora_backend::kernels::dropout::dropout;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::bert::{put_linear, Bert, BertConfig, Family};
use crate::layers::{fresh_linear, head_linear, Projection};
use crate::weights::Weights;
use crate::ModelError;

/// Label id that losses skip (HF's `-100`): special tokens, padding, non-first word pieces.
pub const IGNORE_INDEX: i64 = bidora_backend::kernels::composed::IGNORE_INDEX;

/// RoBERTa's / MPNet's classification head.
#[derive(Module, Debug)]
pub struct DenseHead<B: Backend> {
    /// `classifier.dense`.
    pub dense: Linear<B>,
    /// `classifier.out_proj`.
    pub out_proj: Linear<B>,
}

/// The classifier on the pooled sequence.
// Burn's Module derive cannot box a variant; one head per model, so the size is immaterial.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum SequenceHead<B: Backend> {
    /// BERT: `classifier` on the pooler output.
    Pooled(Linear<B>),
    /// RoBERTa / MPNet: dense + tanh + out_proj on the first token.
    Dense(DenseHead<B>),
}

impl<B: Backend> SequenceHead<B> {
    /// Number of outputs.
    pub fn num_labels(&self) -> usize {
        match self {
            SequenceHead::Pooled(l) => l.weight.dims()[1],
            SequenceHead::Dense(d) => d.out_proj.weight.dims()[1],
        }
    }

    fn read(family: Family, w: &mut Weights, h: usize, labels: usize, device: &B::Device) -> Self {
        match family {
            Family::Bert => SequenceHead::Pooled(head_linear(w, "classifier", h, labels, device)),
            Family::Roberta | Family::Mpnet => SequenceHead::Dense(DenseHead {
                dense: head_linear(w, "classifier.dense", h, h, device),
                out_proj: head_linear(w, "classifier.out_proj", h, labels, device),
            }),
        }
    }
}

/// The number of labels of a saved head (`classifier.weight` or `classifier.out_proj.weight`,
/// PyTorch layout), e.g. from a PEFT adapter's `modules_to_save`.
pub fn saved_head_labels(tensors: &BTreeMap<String, HostTensor>) -> Option<usize> {
    ["classifier.weight", "classifier.out_proj.weight"]
        .iter()
        .find_map(|k| tensors.get(*k).and_then(|t| t.shape.first().copied()))
}

/// HF's `{Bert,Roberta,MPNet}ForSequenceClassification`.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// The encoder (HF path prefix `bert.` / `roberta.` / `mpnet.`).
    pub bert: Bert<B>,
    /// Dropout before (and for RoBERTa/MPNet inside) the head.
    pub dropout: Dropout,
    /// The head.
    pub head: SequenceHead<B>,
}

/// The encoder of a model folder for a head of `num_labels` outputs (at least one), with the
/// weights left for the head.
fn load_encoder<B: Backend>(
    dir: &Path,
    num_labels: usize,
    device: &B::Device,
) -> Result<(BertConfig, Weights, Bert<B>), ModelError> {
    if num_labels == 0 {
        return Err(ModelError::Invalid("num_labels must be at least 1".into()));
    }
    let config = BertConfig::load(dir)?;
    let mut w = Weights::load(dir)?;
    let bert = Bert::from_weights(&config, &mut w, device);
    Ok((config, w, bert))
}

/// Reads a head from loose tensors (PyTorch layout, HF names), every one of them required.
fn head_from_tensors<T>(
    origin: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    read: impl FnOnce(&mut Weights) -> T,
    expected: &[&str],
) -> Result<T, ModelError> {
    let mut w = Weights::from_map(origin.to_path_buf(), tensors.clone());
    for name in expected {
        if !w.has_raw(name) {
            return Err(ModelError::Weights {
                path: origin.to_path_buf(),
                problems: format!("  - missing head tensor `{name}`"),
            });
        }
    }
    let head = read(&mut w);
    w.finish()?;
    Ok(head)
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// Loads a model folder. The head comes from the checkpoint when it has one (its size must
    /// then be `num_labels`), else it is freshly initialised as HF does. BERT checkpoints
    /// without a pooler get a fresh one; RoBERTa/MPNet do not use theirs.
    pub fn load(
        dir: &Path,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<(BertConfig, Self), ModelError> {
        let (config, mut w, mut bert) = load_encoder::<B>(dir, num_labels, device)?;
        let h = config.hidden_size;
        match bert.family {
            Family::Bert if bert.pooler.is_none() => {
                bert.pooler = Some(Projection::Plain(fresh_linear(h, h, device)))
            }
            Family::Bert => {}
            // HF builds these models without the pooling layer.
            Family::Roberta | Family::Mpnet => bert.pooler = None,
        }
        let head = SequenceHead::read(bert.family, &mut w, h, num_labels, device);
        w.finish()?;
        Ok((
            config.clone(),
            BertForSequenceClassification {
                bert,
                dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                head,
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
        let first = || {
            let [b, _, h] = out.last_hidden_state.dims();
            out.last_hidden_state
                .clone()
                .slice([0..b, 0..1, 0..h])
                .reshape([b, h])
        };
        match &self.head {
            SequenceHead::Pooled(classifier) => {
                let pooled = out.pooler_output.clone().unwrap_or_else(first);
                classifier.forward(dropout(&self.dropout, pooled))
            }
            SequenceHead::Dense(d) => {
                let x = d.dense.forward(dropout(&self.dropout, first())).tanh();
                d.out_proj.forward(dropout(&self.dropout, x))
            }
        }
    }

    /// Number of outputs (1 = regression).
    pub fn num_labels(&self) -> usize {
        self.head.num_labels()
    }

    /// Freezes the encoder and adds adapters; the head stays trainable.
    pub fn with_adapters(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        Ok(BertForSequenceClassification {
            bert: self.bert.freeze().inject(config)?,
            ..self
        })
    }

    /// Merges the adapters into the encoder's weights and drops them (PEFT's
    /// `merge_and_unload`); the head is kept as it is.
    pub fn merge_adapters(self) -> Self {
        BertForSequenceClassification {
            bert: self.bert.merge_adapters(),
            ..self
        }
    }

    /// Replaces the head with tensors saved under HF names (`classifier.weight`, or
    /// `classifier.dense.*` + `classifier.out_proj.*`), e.g. PEFT's `modules_to_save`. Missing,
    /// extra or mis-shaped tensors are an error naming them and `origin`.
    pub fn with_head_tensors(
        self,
        origin: &Path,
        tensors: &BTreeMap<String, HostTensor>,
    ) -> Result<Self, ModelError> {
        let (family, labels) = (self.bert.family, self.num_labels());
        let device = self.bert.embeddings.word.weight.val().device();
        let h = self.bert.embeddings.word.weight.dims()[1];
        let expected: &[&str] = match family {
            Family::Bert => &["classifier.weight", "classifier.bias"],
            Family::Roberta | Family::Mpnet => &[
                "classifier.dense.weight",
                "classifier.dense.bias",
                "classifier.out_proj.weight",
                "classifier.out_proj.bias",
            ],
        };
        let head = head_from_tensors(
            origin,
            tensors,
            |w| SequenceHead::read(family, w, h, labels, &device),
            expected,
        )?;
        Ok(BertForSequenceClassification { head, ..self })
    }

    /// Freezes the encoder, injects the adapter layers of a PEFT adapter folder (HF PEFT's or
    /// ours) with their trained values, and loads its saved head when it has one.
    pub fn with_peft(self, adapter: &PeftAdapter) -> Result<Self, ModelError> {
        let model = self.with_adapters(&adapter.config.to_adapter_config())?;
        let model = adapter.apply(model, &|p: &str| p.to_string())?;
        if adapter.extra_tensors.is_empty() {
            Ok(model)
        } else {
            model.with_head_tensors(&adapter.dir, &adapter.extra_tensors)
        }
    }
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// Every weight under its HF name in PyTorch layout, adapters merged: the
    /// `model.safetensors` of a plain `*ForSequenceClassification` model.
    pub fn hf_tensors(&self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = self
            .bert
            .hf_tensors(&format!("{}.", self.bert.family.prefix()))?;
        match &self.head {
            SequenceHead::Pooled(l) => put_linear(&mut out, "classifier", l)?,
            SequenceHead::Dense(d) => {
                put_linear(&mut out, "classifier.dense", &d.dense)?;
                put_linear(&mut out, "classifier.out_proj", &d.out_proj)?;
            }
        }
        Ok(out)
    }
}

impl<B: Backend> AdapterHost<B> for BertForSequenceClassification<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.bert
            .for_each_adapter(&join_path(prefix, self.bert.family.prefix()), f);
    }
}

/// HF's `{Bert,Roberta,MPNet}ForTokenClassification`: dropout and `classifier` on every token.
#[derive(Module, Debug)]
pub struct BertForTokenClassification<B: Backend> {
    /// The encoder (no pooler).
    pub bert: Bert<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `classifier`: `[hidden, num_labels]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForTokenClassification<B> {
    /// Loads a model folder; the classifier comes from the checkpoint when it has one, else it
    /// is fresh. The encoder's pooler, if any, is dropped (HF does not build it here).
    pub fn load(
        dir: &Path,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<(BertConfig, Self), ModelError> {
        let (config, mut w, mut bert) = load_encoder::<B>(dir, num_labels, device)?;
        bert.pooler = None;
        let classifier = head_linear(&mut w, "classifier", config.hidden_size, num_labels, device);
        w.finish()?;
        Ok((
            config.clone(),
            BertForTokenClassification {
                bert,
                dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                classifier,
            },
        ))
    }

    /// Logits `[batch, seq, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let out = self.bert.forward(input_ids, attention_mask, token_type_ids);
        self.classifier
            .forward(dropout(&self.dropout, out.last_hidden_state))
    }

    /// Freezes the encoder and adds adapters; the classifier stays trainable.
    pub fn with_adapters(self, config: &AdapterConfig) -> Result<Self, ModelError> {
        Ok(BertForTokenClassification {
            bert: self.bert.freeze().inject(config)?,
            ..self
        })
    }
}

impl<B: Backend> BertForTokenClassification<B> {
    /// Every weight under its HF name in PyTorch layout, adapters merged.
    pub fn hf_tensors(&self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = self
            .bert
            .hf_tensors(&format!("{}.", self.bert.family.prefix()))?;
        put_linear(&mut out, "classifier", &self.classifier)?;
        Ok(out)
    }
}

impl<B: Backend> AdapterHost<B> for BertForTokenClassification<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.bert
            .for_each_adapter(&join_path(prefix, self.bert.family.prefix()), f);
    }
}

pub use bidora_backend::kernels::composed::cross_entropy;

/// Mean squared error of a one-output head `[n, 1]` against targets `[n]` (HF's regression
/// loss for `num_labels == 1`).
pub fn mse_loss<B: Backend>(predictions: Tensor<B, 2>, targets: Tensor<B, 1>) -> Tensor<B, 1> {
    let [n, _] = predictions.dims();
    (predictions.reshape([n]) - targets).powi_scalar(2).mean()
}

/// Next-token cross-entropy of a causal LM: `logits` `[batch, seq, vocab]` at position `t`
/// predict `labels` at `t + 1`; [`IGNORE_INDEX`] labels (prompt, padding) are skipped. As HF's
/// `*ForCausalLM` computes it when given `labels`.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, s, v] = logits.dims();
    if s < 2 {
        return Tensor::zeros([1], &logits.device());
    }
    let shifted = logits
        .slice([0..b, 0..s - 1, 0..v])
        .reshape([b * (s - 1), v]);
    let targets = labels.slice([0..b, 1..s]).reshape([b * (s - 1)]);
    cross_entropy(shifted, targets)
}
