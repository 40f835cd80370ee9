//! The glue between the crates: a task's model (an encoder with a sequence or token head), its
//! tokeniser behind the data crate's `Tokenizer` trait, device batches, the training problem,
//! and prediction / evaluation over example sets.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use bidora_adapters::peft::PeftAdapter;
use bidora_adapters::regularizer::{orthogonality, OrthoOptions};
use bidora_adapters::tensor_io::HostTensor;
use bidora_adapters::{AdaptedLinear, AdapterConfig, AdapterHost};
use bidora_bilevel::BilevelProblem;
use bidora_data::batch::{collate, BatchLabels, Encoding, HostBatch, IGNORE_INDEX};
use bidora_data::tasks::{Predictions, TaskInfo, TaskKind};
use bidora_data::Example;
use bidora_models::bert::Family;
use bidora_models::heads::{
    cross_entropy, mse_loss, BertForSequenceClassification, BertForTokenClassification,
    SequenceHead,
};
use bidora_models::tokenizer::Tokenizer;
use bidora_models::Architecture;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use crate::fail::{input, Classify, Fail};

/// A model tokeniser seen through `bidora_data::batch::Tokenizer`. Tokenisation errors are
/// kept (the trait is infallible) and reported by [`ModelTokenizer::check`].
pub struct ModelTokenizer {
    inner: Tokenizer,
    error: RefCell<Option<String>>,
}

impl ModelTokenizer {
    /// Loads the tokeniser of a model folder.
    pub fn load(dir: &Path) -> Result<Self, Fail> {
        Ok(ModelTokenizer {
            inner: Tokenizer::load(dir).input()?,
            error: RefCell::new(None),
        })
    }

    /// Fails with the first tokenisation error since the last check.
    pub fn check(&self) -> Result<(), Fail> {
        match self.error.borrow_mut().take() {
            Some(e) => Err(input(e)),
            None => Ok(()),
        }
    }

    fn keep(
        &self,
        r: Result<bidora_models::tokenizer::Encoded, bidora_models::ModelError>,
    ) -> Encoding {
        match r {
            Ok(e) => Encoding {
                ids: e.ids,
                type_ids: e.type_ids,
                word_ids: e.word_ids,
            },
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e.to_string());
                Encoding::default()
            }
        }
    }
}

impl bidora_data::batch::Tokenizer for ModelTokenizer {
    fn encode(&self, text: &str, pair: Option<&str>, max_len: usize) -> Encoding {
        self.keep(self.inner.encode(text, pair, max_len))
    }
    fn encode_words(&self, words: &[String], max_len: usize) -> Encoding {
        self.keep(self.inner.encode_words(words, max_len))
    }
    fn pad_id(&self) -> u32 {
        self.inner.pad_id()
    }
}

/// An encoder with the head of a task.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum TaskModel<B: Backend> {
    /// Classification or regression of whole inputs.
    Sequence(BertForSequenceClassification<B>),
    /// One class per token.
    Tokens(BertForTokenClassification<B>),
}

/// A batch on the device.
#[derive(Clone, Debug)]
pub struct Batch<B: Backend> {
    /// `[batch, seq]` token ids.
    pub ids: Tensor<B, 2, Int>,
    /// `[batch, seq]` 1 = token.
    pub mask: Tensor<B, 2, Int>,
    /// `[batch, seq]` segments.
    pub types: Tensor<B, 2, Int>,
    /// Labels.
    pub labels: Labels<B>,
}

impl<B: Backend> Batch<B> {
    /// Its first `n` examples (all of them when `n` is larger), cut to their longest input:
    /// padding is on the right, so the dropped columns hold only padding.
    pub fn first(&self, n: usize) -> Self {
        let [rows, cols] = self.ids.dims();
        let n = n.clamp(1, rows.max(1));
        let lens = self.mask.clone().slice(0..n).sum_dim(1).max();
        let len = (lens.into_scalar().elem::<i64>().max(1) as usize).min(cols);
        let cut = |t: &Tensor<B, 2, Int>| t.clone().slice([0..n, 0..len]);
        Batch {
            ids: cut(&self.ids),
            mask: cut(&self.mask),
            types: cut(&self.types),
            labels: match &self.labels {
                Labels::None => Labels::None,
                Labels::Classes(c) => Labels::Classes(c.clone().slice(0..n)),
                Labels::Scores(v) => Labels::Scores(v.clone().slice(0..n)),
                Labels::Tags(t) => Labels::Tags(cut(t)),
            },
        }
    }
}

/// Labels on the device.
#[derive(Clone, Debug)]
pub enum Labels<B: Backend> {
    /// Unlabelled.
    None,
    /// `[batch]` classes.
    Classes(Tensor<B, 1, Int>),
    /// `[batch]` scores.
    Scores(Tensor<B, 1>),
    /// `[batch, seq]` tags, [`IGNORE_INDEX`] where no word starts.
    Tags(Tensor<B, 2, Int>),
}

/// Moves a host batch to `device`.
pub fn to_device<B: Backend>(h: &HostBatch, device: &B::Device) -> Batch<B> {
    let shape = [h.batch, h.seq_len];
    let ints =
        |v: &[i64]| Tensor::<B, 2, Int>::from_data(TensorData::new(v.to_vec(), shape), device);
    Batch {
        ids: ints(&h.input_ids),
        mask: ints(&h.attention_mask),
        types: ints(&h.token_type_ids),
        labels: match &h.labels {
            BatchLabels::None => Labels::None,
            BatchLabels::Classes(c) => Labels::Classes(Tensor::from_data(
                TensorData::new(c.clone(), [h.batch]),
                device,
            )),
            BatchLabels::Scores(s) => Labels::Scores(Tensor::from_data(
                TensorData::new(s.clone(), [h.batch]),
                device,
            )),
            BatchLabels::Tags(t) => Labels::Tags(ints(t)),
        },
    }
}

/// Model outputs.
pub enum Logits<B: Backend> {
    /// `[batch, labels]`.
    Sequence(Tensor<B, 2>),
    /// `[batch, seq, labels]`.
    Tokens(Tensor<B, 3>),
}

/// Parameter counts per group, as the run's files report them.
pub fn parameter_counts(part: &bidora_adapters::ParamPartition) -> bidora_records::ParameterCounts {
    use bidora_adapters::ParamGroup;
    bidora_records::ParameterCounts {
        direction: part.count(ParamGroup::Direction),
        magnitude: part.count(ParamGroup::Magnitude),
        head: part.count(ParamGroup::Head),
        frozen: part.count(ParamGroup::Frozen),
    }
}

/// Outputs of a task's head: one for regression, else one per class or tag.
pub fn num_labels(kind: TaskKind, labels: &[String]) -> usize {
    match kind {
        TaskKind::Regression => 1,
        _ => labels.len(),
    }
}

/// The PEFT target names of the attention query and value for a family.
pub fn default_targets(family: Family) -> Vec<String> {
    match family {
        Family::Mpnet => vec!["q".into(), "v".into()],
        Family::Bert | Family::Roberta => vec!["query".into(), "value".into()],
    }
}

fn head_tensor(
    name: &str,
    l: &Linear<impl Backend>,
    out: &mut BTreeMap<String, HostTensor>,
) -> anyhow::Result<()> {
    let w = HostTensor::from_tensor(l.weight.val(), name)?.transposed()?;
    out.insert(format!("{name}.weight"), w);
    if let Some(b) = &l.bias {
        out.insert(
            format!("{name}.bias"),
            HostTensor::from_tensor(b.val(), name)?,
        );
    }
    Ok(())
}

impl<B: Backend> TaskModel<B> {
    /// Loads an encoder folder with a head for `kind` and `num_labels` outputs.
    pub fn load(
        dir: &Path,
        kind: TaskKind,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<Self, Fail> {
        let arch = Architecture::detect(dir).input()?;
        if !arch.is_encoder() {
            return Err(input(format!(
                "`{}` is a {} model; classification, regression and tagging tasks need an encoder (bert, roberta, mpnet)",
                dir.display(),
                arch.model_type()
            )));
        }
        Ok(match kind {
            TaskKind::Classification | TaskKind::Regression => TaskModel::Sequence(
                BertForSequenceClassification::load(dir, num_labels, device)
                    .input()?
                    .1,
            ),
            TaskKind::TokenClassification => TaskModel::Tokens(
                BertForTokenClassification::load(dir, num_labels, device)
                    .input()?
                    .1,
            ),
            TaskKind::Generation => return Err(input(
                "generation tasks (e2e, headlines) need a decoder model, and `bidora train` does not train decoders yet (`bidora generate` runs them)",
            )),
        })
    }

    /// The encoder family.
    pub fn family(&self) -> Family {
        match self {
            TaskModel::Sequence(m) => m.bert.family,
            TaskModel::Tokens(m) => m.bert.family,
        }
    }

    /// Number of outputs.
    pub fn num_labels(&self) -> usize {
        match self {
            TaskModel::Sequence(m) => m.num_labels(),
            TaskModel::Tokens(m) => m.classifier.weight.dims()[1],
        }
    }

    /// Freezes the encoder and adds adapters (the targets default to query and value).
    pub fn with_adapters(
        self,
        config: &AdapterConfig,
        default_targets_used: bool,
    ) -> Result<Self, Fail> {
        let mut config = config.clone();
        if default_targets_used {
            config = config.with_targets(default_targets(self.family()));
        }
        Ok(match self {
            TaskModel::Sequence(m) => TaskModel::Sequence(m.with_adapters(&config).usage()?),
            TaskModel::Tokens(m) => TaskModel::Tokens(m.with_adapters(&config).usage()?),
        })
    }

    /// Adds a PEFT adapter (and its saved head).
    pub fn with_peft(self, adapter: &PeftAdapter) -> Result<Self, Fail> {
        match self {
            TaskModel::Sequence(m) => Ok(TaskModel::Sequence(m.with_peft(adapter).input()?)),
            TaskModel::Tokens(m) => {
                let m = m
                    .with_adapters(&adapter.config.to_adapter_config())
                    .input()?;
                let mut m = adapter.apply(m, &|p: &str| p.to_string()).input()?;
                if let (Some(w), Some(b)) = (
                    adapter.extra_tensors.get("classifier.weight"),
                    adapter.extra_tensors.get("classifier.bias"),
                ) {
                    let device = m.classifier.weight.val().device();
                    let want = m.classifier.weight.dims();
                    if w.shape != [want[1], want[0]] {
                        return Err(input(format!(
                            "`{}`: the saved classifier has shape {:?}, the model needs {:?}",
                            adapter.dir.display(),
                            w.shape,
                            [want[1], want[0]]
                        )));
                    }
                    m.classifier.weight = burn::module::Param::from_tensor(
                        w.transposed()
                            .input()?
                            .to_tensor::<B, 2>("classifier.weight", &device)
                            .input()?,
                    );
                    m.classifier.bias = Some(burn::module::Param::from_tensor(
                        b.to_tensor::<B, 1>("classifier.bias", &device).input()?,
                    ));
                }
                Ok(TaskModel::Tokens(m))
            }
        }
    }

    /// The head's tensors in PyTorch layout under HF names (PEFT's `modules_to_save`).
    pub fn head_tensors(&self) -> anyhow::Result<BTreeMap<String, HostTensor>> {
        let mut out = BTreeMap::new();
        match self {
            TaskModel::Sequence(m) => match &m.head {
                SequenceHead::Pooled(l) => head_tensor("classifier", l, &mut out)?,
                SequenceHead::Dense(d) => {
                    head_tensor("classifier.dense", &d.dense, &mut out)?;
                    head_tensor("classifier.out_proj", &d.out_proj, &mut out)?;
                }
            },
            TaskModel::Tokens(m) => head_tensor("classifier", &m.classifier, &mut out)?,
        }
        Ok(out)
    }

    /// Raw outputs.
    pub fn logits(&self, b: &Batch<B>) -> Logits<B> {
        match self {
            TaskModel::Sequence(m) => {
                Logits::Sequence(m.forward(b.ids.clone(), b.mask.clone(), b.types.clone()))
            }
            TaskModel::Tokens(m) => {
                Logits::Tokens(m.forward(b.ids.clone(), b.mask.clone(), b.types.clone()))
            }
        }
    }

    /// The task loss (cross-entropy, MSE for one output, per-token cross-entropy).
    pub fn loss(&self, b: &Batch<B>) -> Tensor<B, 1> {
        match (self.logits(b), &b.labels) {
            (Logits::Sequence(l), Labels::Classes(c)) => cross_entropy(l, c.clone()),
            (Logits::Sequence(l), Labels::Scores(s)) => mse_loss(l, s.clone()),
            (Logits::Tokens(l), Labels::Tags(t)) => {
                let [bs, s, c] = l.dims();
                cross_entropy(l.reshape([bs * s, c]), t.clone().reshape([bs * s]))
            }
            // Unlabelled or mismatched batches carry no loss.
            (Logits::Sequence(l), _) => l.sum().mul_scalar(0.0),
            (Logits::Tokens(l), _) => l.sum().mul_scalar(0.0),
        }
    }
}

impl<B: Backend> AdapterHost<B> for TaskModel<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        match self {
            TaskModel::Sequence(m) => m.for_each_adapter(prefix, f),
            TaskModel::Tokens(m) => m.for_each_adapter(prefix, f),
        }
    }
}

/// The training problem: the task loss at both levels, the orthogonality regulariser at the
/// lower one (BiDoRA).
pub struct TaskProblem {
    /// Regulariser options; `None`: no regulariser.
    pub ortho: Option<OrthoOptions>,
}

impl<B: AutodiffBackend> BilevelProblem<B> for TaskProblem {
    type Module = TaskModel<B>;
    type Batch = Batch<B>;

    fn lower_loss(&self, module: &TaskModel<B>, batch: &Batch<B>) -> Tensor<B, 1> {
        module.loss(batch)
    }

    fn sub_batch(&self, batch: &Batch<B>, fraction: f64) -> Option<Batch<B>> {
        let rows = batch.ids.dims()[0];
        Some(batch.first((rows as f64 * fraction).ceil() as usize))
    }

    fn regularizer(&self, module: &TaskModel<B>) -> Option<Tensor<B, 1>> {
        self.ortho.and_then(|o| orthogonality(module, o))
    }
}

/// Logits of every example, in order, and the predictions they make.
pub struct Outputs {
    /// One row of logits per example (sequence tasks) or per word (tagging).
    pub logits: Vec<Vec<f32>>,
    /// Predictions for the metrics.
    pub predictions: Predictions,
}

/// Runs the model over `examples` in batches (no gradients).
#[allow(clippy::too_many_arguments)]
pub fn predict<B: Backend>(
    model: &TaskModel<B>,
    kind: TaskKind,
    examples: &[Example],
    tokenizer: &ModelTokenizer,
    batch_size: usize,
    max_len: usize,
    fill_tag: usize,
    device: &B::Device,
) -> Result<Outputs, Fail> {
    // Batches of similar lengths pad less: sort by text length, restore the order after.
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| {
        let e = &examples[i];
        e.text_a.len() + e.text_b.as_ref().map_or(0, String::len)
    });
    let n = examples.len();
    let mut rows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    let mut classes = vec![0usize; n];
    let mut scores = vec![0f64; n];
    let mut tags: Vec<Vec<usize>> = vec![Vec::new(); n];
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
        let host = collate(&refs, tokenizer, max_len);
        tokenizer.check()?;
        let batch = to_device::<B>(&host, device);
        match model.logits(&batch) {
            Logits::Sequence(l) => {
                let [b, c] = l.dims();
                let v = l.into_data().to_vec::<f32>().context("reading logits")?;
                for (row, &i) in v.chunks(c).take(b).zip(chunk) {
                    rows[i] = vec![row.to_vec()];
                    if kind == TaskKind::Regression {
                        scores[i] = row[0] as f64;
                    } else {
                        classes[i] = argmax(row);
                    }
                }
            }
            Logits::Tokens(l) => {
                let [b, s, c] = l.dims();
                let v = l.into_data().to_vec::<f32>().context("reading logits")?;
                let gold = match &host.labels {
                    BatchLabels::Tags(t) => Some(t),
                    _ => None,
                };
                for (k, &i) in chunk.iter().enumerate().take(b) {
                    let words = examples[i].words.as_ref().map_or(0, Vec::len);
                    let mut row = Vec::new();
                    for j in 0..s {
                        // First sub-tokens of words are where the gold tags sit.
                        if gold.is_some_and(|g| g[k * s + j] != IGNORE_INDEX) {
                            let at = (k * s + j) * c;
                            row.push(argmax(&v[at..at + c]));
                            rows[i].push(v[at..at + c].to_vec());
                        }
                    }
                    // Words cut off by truncation are predicted as `fill_tag` ("O").
                    row.resize(words.max(row.len()), fill_tag);
                    tags[i] = row;
                }
            }
        }
    }
    let logits: Vec<Vec<f32>> = rows.into_iter().flatten().collect();
    let predictions = match kind {
        TaskKind::Regression => Predictions::Scores(scores),
        TaskKind::TokenClassification => Predictions::Tags(tags),
        _ => Predictions::Classes(classes),
    };
    Ok(Outputs {
        logits,
        predictions,
    })
}

/// The index of a row's largest value (the first, on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// The task's metrics of `model` on `examples`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &TaskModel<B>,
    task: &TaskInfo,
    kind: TaskKind,
    labels: &[String],
    examples: &[Example],
    tokenizer: &ModelTokenizer,
    batch_size: usize,
    max_len: usize,
    device: &B::Device,
) -> Result<BTreeMap<String, f64>, Fail> {
    let fill = outside_tag(labels);
    let out = predict(
        model, kind, examples, tokenizer, batch_size, max_len, fill, device,
    )?;
    bidora_data::tasks::evaluate(task, labels, &out.predictions, examples).input()
}

/// The tag index predicted for words cut off by truncation: "O" where the label set has it.
pub fn outside_tag(labels: &[String]) -> usize {
    labels.iter().position(|l| l == "O").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray<f32>;
    type AB = burn::backend::Autodiff<B>;

    fn host<T: Backend>(t: Tensor<T, 2, Int>) -> Vec<i64> {
        t.into_data().to_vec::<i64>().unwrap()
    }

    /// Three examples of 2, 4 and 1 tokens in 5 columns (one column of padding beyond the
    /// longest), tags on each token.
    fn batch<T: Backend>() -> Batch<T> {
        let lens = [2, 4, 1];
        let grid = |f: &dyn Fn(usize, usize) -> i64| {
            let v: Vec<i64> = (0..3)
                .flat_map(|i| (0..5).map(move |j| (i, j)))
                .map(|(i, j)| f(i, j))
                .collect();
            Tensor::<T, 2, Int>::from_data(TensorData::new(v, [3, 5]), &Default::default())
        };
        let token = |i: usize, j: usize| j < lens[i];
        Batch {
            ids: grid(&|i, j| {
                if token(i, j) {
                    100 + 10 * i as i64 + j as i64
                } else {
                    0
                }
            }),
            mask: grid(&|i, j| token(i, j) as i64),
            types: grid(&|i, j| if token(i, j) { (j % 2) as i64 } else { 0 }),
            labels: Labels::Tags(grid(&|i, j| {
                if token(i, j) {
                    j as i64
                } else {
                    IGNORE_INDEX
                }
            })),
        }
    }

    #[test]
    fn first_keeps_the_leading_examples_cut_to_their_longest_input() {
        let b = batch::<B>();
        let one = b.first(1);
        assert_eq!(host(one.ids), vec![100, 101]);
        assert_eq!(host(one.mask), vec![1, 1]);
        assert_eq!(host(one.types), vec![0, 1]);
        let Labels::Tags(t) = one.labels else {
            panic!("tags")
        };
        assert_eq!(host(t), vec![0, 1]);
        let two = b.first(2);
        assert_eq!(host(two.ids), vec![100, 101, 0, 0, 110, 111, 112, 113]);
        assert_eq!(host(two.mask), vec![1, 1, 0, 0, 1, 1, 1, 1]);
        // More than there are: every example, the all-padding column dropped.
        let all = b.first(9);
        assert_eq!(all.ids.dims(), [3, 4]);
        assert_eq!(host(all.mask)[8..], [1, 0, 0, 0]);
        // Classes are cut by rows.
        let classes = Batch {
            labels: Labels::Classes(Tensor::from_data([7i64, 8, 9], &Default::default())),
            ..batch::<B>()
        };
        let Labels::Classes(c) = classes.first(2).labels else {
            panic!("classes")
        };
        assert_eq!(c.into_data().to_vec::<i64>().unwrap(), vec![7, 8]);
    }

    #[test]
    fn the_finite_differences_take_the_first_examples_rounding_up() {
        let p = TaskProblem { ortho: None };
        let b = batch::<AB>();
        for (f, rows, cols) in [(1.0, 3, 4), (0.5, 2, 4), (0.34, 2, 4), (0.2, 1, 2)] {
            let sub = BilevelProblem::<AB>::sub_batch(&p, &b, f).expect("splits");
            assert_eq!(sub.ids.dims(), [rows, cols], "fd_fraction {f}");
        }
    }
}
