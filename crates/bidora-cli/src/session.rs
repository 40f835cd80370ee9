//! The glue between the crates: a task's model (an encoder with a sequence or token head), its
//! tokeniser behind the data crate's `Tokenizer` trait, device batches, the training problem,
//! and prediction / evaluation over example sets.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use anyhow::Context;
use bidora_adapters::peft::PeftAdapter;
use bidora_adapters::regularizer::{orthogonality, OrthoOptions};
use bidora_adapters::tensor_io::HostTensor;
use bidora_adapters::{AdaptedLinear, AdapterConfig, AdapterHost};
use bidora_bilevel::{shard_rows, BilevelProblem, Shard};
use bidora_data::batch::{
    collate, collate_causal, BatchLabels, CausalRow, Encoding, HostBatch, IGNORE_INDEX,
};
use bidora_data::chat::ChatTemplate;
use bidora_data::prompt::PromptFormat;
use bidora_data::tasks::{Predictions, TaskData, TaskInfo, TaskKind};
use bidora_data::Example;
use bidora_data::Label;
use bidora_models::bert::Family;
use bidora_models::causal::{next_token_targets, CausalLm};
use bidora_models::generate::{beam_search, decode_cached, greedy_pick, KvCache};
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
    /// Wraps a loaded tokeniser.
    pub fn new(inner: Tokenizer) -> Self {
        ModelTokenizer {
            inner,
            error: RefCell::new(None),
        }
    }

    /// Loads the tokeniser of a model folder (a GGUF decoder's comes with it from
    /// [`load_task`]).
    pub fn load(dir: &Path) -> Result<Self, Fail> {
        Ok(Self::new(Tokenizer::load(dir).input()?))
    }

    /// The chat template the tokeniser ships, if any.
    pub fn chat_template(&self) -> Option<&bidora_models::tokenizer::ChatTemplateText> {
        self.inner.chat_template()
    }

    /// Text of token ids (special tokens skipped; undecodable ids give an empty text).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids).unwrap_or_default()
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
    fn encode_plain(&self, text: &str) -> Vec<u32> {
        let plain = self
            .inner
            .encode_plain(text)
            .map(|ids| bidora_models::tokenizer::Encoded {
                ids,
                ..Default::default()
            });
        self.keep(plain).ids
    }
    fn pad_id(&self) -> u32 {
        self.inner.pad_id()
    }
}

/// The model of a task: an encoder with its head, or a decoder for generation.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum TaskModel<B: Backend> {
    /// Classification or regression of whole inputs.
    Sequence(BertForSequenceClassification<B>),
    /// One class per token.
    Tokens(BertForTokenClassification<B>),
    /// Text generation (GPT-2 or Llama layout).
    Causal(CausalLm<B>),
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
    /// Its first `n` examples (all of them when `n` is larger, at least one), cut to their
    /// longest input.
    pub fn first(&self, n: usize) -> Self {
        let rows = self.ids.dims()[0];
        self.rows(0..n.clamp(1, rows.max(1)))
    }

    /// The examples `range` (clamped to the batch; non-empty), cut to their longest input:
    /// padding is on the right, so the dropped columns hold only padding.
    pub fn rows(&self, range: Range<usize>) -> Self {
        let [rows, cols] = self.ids.dims();
        let end = range.end.clamp(1, rows.max(1));
        let range = range.start.min(end - 1)..end;
        let lens = self.mask.clone().slice(range.clone()).sum_dim(1).max();
        let len = (lens.into_scalar().elem::<i64>().max(1) as usize).min(cols);
        let cut = |t: &Tensor<B, 2, Int>| t.clone().slice([range.clone(), 0..len]);
        Batch {
            ids: cut(&self.ids),
            mask: cut(&self.mask),
            types: cut(&self.types),
            labels: match &self.labels {
                Labels::None => Labels::None,
                Labels::Classes(c) => Labels::Classes(c.clone().slice(range.clone())),
                Labels::Scores(v) => Labels::Scores(v.clone().slice(range.clone())),
                Labels::Tags(t) => Labels::Tags(cut(t)),
                Labels::Completion(c) => Labels::Completion(c.rows(range.clone(), len)),
            },
        }
    }

    /// The loss units its mean loss averages over: examples, tagged words or target tokens.
    pub fn loss_units(&self) -> f64 {
        match &self.labels {
            Labels::Tags(t) => {
                let tagged = t.clone().not_equal_elem(IGNORE_INDEX).int().sum();
                tagged.into_scalar().elem::<i64>() as f64
            }
            Labels::Completion(c) => c.len() as f64,
            _ => self.ids.dims()[0] as f64,
        }
    }
}

/// A causal-LM batch's labels: the `[batch × seq]` host labels (for [`Batch::first`]) and,
/// on the device, the positions whose next token is a target and those targets
/// ([`CausalLm::next_token_loss`]).
#[derive(Clone, Debug)]
pub struct Completion<B: Backend> {
    host: Vec<i64>,
    seq_len: usize,
    /// Flattened `[batch × seq]` positions that predict a target.
    pub positions: Tensor<B, 1, Int>,
    /// The tokens they predict.
    pub targets: Tensor<B, 1, Int>,
}

impl<B: Backend> Completion<B> {
    fn new(host: Vec<i64>, seq_len: usize, device: &B::Device) -> Self {
        let (positions, targets) = next_token_targets(&host, seq_len);
        let n = positions.len();
        let ints = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [n]), device);
        Completion {
            positions: ints(positions),
            targets: ints(targets),
            host,
            seq_len,
        }
    }

    /// The labels of the rows `range` cut to `cols` columns.
    fn rows(&self, range: Range<usize>, cols: usize) -> Self {
        let host: Vec<i64> = self
            .host
            .chunks(self.seq_len.max(1))
            .skip(range.start)
            .take(range.len())
            .flat_map(|r| r[..cols.min(r.len())].iter().copied())
            .collect();
        Completion::new(host, cols, &self.positions.device())
    }

    /// The number of target tokens.
    pub fn len(&self) -> usize {
        self.targets.dims()[0]
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
    /// Causal LM: the completion's tokens.
    Completion(Completion<B>),
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
            BatchLabels::Completion(c) => {
                Labels::Completion(Completion::new(c.clone(), h.seq_len, device))
            }
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

/// The PEFT target names of the attention query and value for an encoder family.
pub fn encoder_targets(family: Family) -> Vec<String> {
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

/// A task's model with its tokeniser and (decoders) end-of-sequence token, each read once.
pub fn load_task<B: Backend>(
    path: &Path,
    kind: TaskKind,
    num_labels: usize,
    device: &B::Device,
) -> Result<(TaskModel<B>, ModelTokenizer, Option<u32>), Fail> {
    if kind == TaskKind::Generation {
        let loaded = CausalLm::load(path, device).input()?;
        return Ok((
            TaskModel::Causal(loaded.model),
            ModelTokenizer::new(loaded.tokenizer),
            loaded.eos,
        ));
    }
    let model = TaskModel::load(path, kind, num_labels, device)?;
    Ok((model, ModelTokenizer::load(path)?, None))
}

/// Renders the chat rows (`messages`) of `data` with the chat template of `tok` (the model's;
/// exit 2 when they exist and it has none) and returns how the task's examples become prompts:
/// [`PromptFormat::CHAT`] when there were chat rows, else the task's own format.
pub fn prompt_format(
    task: &TaskInfo,
    data: &mut TaskData,
    tok: &ModelTokenizer,
) -> Result<PromptFormat, Fail> {
    let has_chat = data
        .train
        .iter()
        .chain(data.eval.iter().flat_map(|(_, set)| set))
        .any(|e| e.messages.is_some());
    if !has_chat {
        return Ok(task.prompt_format().unwrap_or(PromptFormat::VERBATIM));
    }
    let template = tok
        .chat_template()
        .map(|t| ChatTemplate::new(&t.source, &t.bos, &t.eos))
        .transpose()
        .input()?;
    bidora_data::chat::apply(data, template.as_ref()).input()?;
    Ok(PromptFormat::CHAT)
}

/// Fails unless `dir` holds an encoder.
fn require_encoder(dir: &Path) -> Result<(), Fail> {
    let arch = Architecture::detect(dir).input()?;
    if arch.is_encoder() {
        return Ok(());
    }
    Err(input(format!(
        "`{}` is a {} model; classification, regression and tagging tasks need an encoder (bert, roberta, mpnet), generation tasks a decoder",
        dir.display(),
        arch.model_type()
    )))
}

impl<B: Backend> TaskModel<B> {
    /// Loads a model for `kind`: an encoder folder with a head of `num_labels` outputs, or a
    /// decoder (HF folder or GGUF file) for generation.
    pub fn load(
        dir: &Path,
        kind: TaskKind,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<Self, Fail> {
        Ok(match kind {
            TaskKind::Generation => TaskModel::Causal(CausalLm::load(dir, device).input()?.model),
            TaskKind::TokenClassification => {
                require_encoder(dir)?;
                TaskModel::Tokens(
                    BertForTokenClassification::load(dir, num_labels, device)
                        .input()?
                        .1,
                )
            }
            TaskKind::Classification | TaskKind::Regression => {
                require_encoder(dir)?;
                TaskModel::Sequence(
                    BertForSequenceClassification::load(dir, num_labels, device)
                        .input()?
                        .1,
                )
            }
        })
    }

    /// The adapter targets when none are given: the attention query and value.
    pub fn default_targets(&self) -> Vec<String> {
        match self {
            TaskModel::Sequence(m) => encoder_targets(m.bert.family),
            TaskModel::Tokens(m) => encoder_targets(m.bert.family),
            TaskModel::Causal(m) => m.default_targets(),
        }
    }

    /// Number of outputs (a decoder's: its vocabulary).
    pub fn num_labels(&self) -> usize {
        match self {
            TaskModel::Sequence(m) => m.num_labels(),
            TaskModel::Tokens(m) => m.classifier.weight.dims()[1],
            TaskModel::Causal(m) => m.vocab_size(),
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
            config = config.with_targets(self.default_targets());
        }
        Ok(match self {
            TaskModel::Sequence(m) => TaskModel::Sequence(m.with_adapters(&config).usage()?),
            TaskModel::Tokens(m) => TaskModel::Tokens(m.with_adapters(&config).usage()?),
            TaskModel::Causal(m) => TaskModel::Causal(m.with_adapters(&config).usage()?),
        })
    }

    /// Adds a PEFT adapter (and its saved head).
    pub fn with_peft(self, adapter: &PeftAdapter) -> Result<Self, Fail> {
        match self {
            TaskModel::Sequence(m) => Ok(TaskModel::Sequence(m.with_peft(adapter).input()?)),
            TaskModel::Causal(m) => Ok(TaskModel::Causal(m.with_peft(adapter).input()?)),
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
            TaskModel::Causal(_) => {}
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
            TaskModel::Causal(m) => Logits::Tokens(m.forward(b.ids.clone(), b.mask.clone())),
        }
    }

    /// The task loss (cross-entropy, MSE for one output, per-token cross-entropy, next-token
    /// cross-entropy on a completion).
    pub fn loss(&self, b: &Batch<B>) -> Tensor<B, 1> {
        if let (TaskModel::Causal(m), Labels::Completion(c)) = (self, &b.labels) {
            return m.next_token_loss(
                b.ids.clone(),
                b.mask.clone(),
                c.positions.clone(),
                c.targets.clone(),
            );
        }
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
            TaskModel::Causal(m) => m.for_each_adapter(prefix, f),
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

    fn shard(&self, batch: &Batch<B>, rank: usize, world: usize) -> Option<Shard<Batch<B>>> {
        let range = shard_rows(batch.ids.dims()[0], rank, world);
        if range.is_empty() {
            return Some(Shard {
                batch: None,
                weight: 0.0,
            });
        }
        let part = batch.rows(range);
        let weight = part.loss_units();
        Some(Shard {
            batch: Some(part),
            weight,
        })
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
    if let TaskModel::Causal(_) = model {
        return Err(input(
            "a decoder predicts text: use `bidora generate` (or `bidora eval` for the metrics)",
        ));
    }
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

/// How generation tasks decode during evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decoding {
    /// The model's end-of-sequence token (required to train and score decoders).
    pub eos: Option<u32>,
    /// New tokens at most per example.
    pub max_new_tokens: usize,
    /// Beam width (1: greedy).
    pub beams: usize,
}

/// What scoring a model on a task needs besides the model and the examples.
pub struct Evaluator<'a> {
    /// The task.
    pub task: &'a TaskInfo,
    /// What it predicts.
    pub kind: TaskKind,
    /// Class or tag names.
    pub labels: &'a [String],
    /// The model's tokeniser.
    pub tokenizer: &'a ModelTokenizer,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Longest input in tokens (generation: prompt and new tokens together).
    pub max_len: usize,
    /// Generation tasks' decoding.
    pub decoding: Decoding,
    /// Generation tasks: how examples become prompts ([`prompt_format`]).
    pub format: PromptFormat,
}

impl Evaluator<'_> {
    /// The task's metrics of `model` on `examples` (generation tasks: of its greedy or beam
    /// outputs, and the dev perplexity of the references).
    pub fn metrics<B: Backend>(
        &self,
        model: &TaskModel<B>,
        examples: &[Example],
        device: &B::Device,
    ) -> Result<BTreeMap<String, f64>, Fail> {
        if let TaskModel::Causal(m) = model {
            return self.generation_metrics(m, examples, device);
        }
        let fill = outside_tag(self.labels);
        let out = predict(
            model,
            self.kind,
            examples,
            self.tokenizer,
            self.batch_size,
            self.max_len,
            fill,
            device,
        )?;
        bidora_data::tasks::evaluate(self.task, self.labels, &out.predictions, examples).input()
    }

    fn format(&self) -> PromptFormat {
        self.format
    }

    fn eos(&self) -> Result<u32, Fail> {
        self.decoding.eos.ok_or_else(|| {
            input("the model names no end-of-sequence token (`eos_token_id` in config.json, `tokenizer.ggml.eos_token_id` in a GGUF file)")
        })
    }

    /// The causal-LM batch of `examples` (their first references as completions).
    pub fn causal_batch(&self, examples: &[&Example]) -> Result<HostBatch, Fail> {
        causal_batch(
            examples,
            self.tokenizer,
            self.format(),
            self.eos()?,
            self.max_len,
        )
    }

    fn generation_metrics<B: Backend>(
        &self,
        model: &CausalLm<B>,
        examples: &[Example],
        device: &B::Device,
    ) -> Result<BTreeMap<String, f64>, Fail> {
        let format = self.format();
        let texts = examples
            .iter()
            .map(|e| Ok(format.finish(&self.generate(model, &e.text_a, device)?)))
            .collect::<Result<Vec<String>, Fail>>()?;
        let mut out = bidora_data::tasks::evaluate(
            self.task,
            self.labels,
            &Predictions::Texts(texts),
            examples,
        )
        .input()?;
        out.insert(
            "perplexity".into(),
            self.perplexity(model, examples, device)?,
        );
        Ok(out)
    }

    /// The continuation of `source`'s prompt, decoded greedily or by beam search, stopping at
    /// the end-of-sequence token or the task's stop string.
    pub fn generate<B: Backend>(
        &self,
        model: &CausalLm<B>,
        source: &str,
        device: &B::Device,
    ) -> Result<String, Fail> {
        let d = self.decoding;
        let format = self.format();
        let mut budget = self.max_len.saturating_sub(d.max_new_tokens);
        if let Some(limit) = model.max_positions() {
            budget = budget.min(limit.saturating_sub(d.max_new_tokens));
        }
        let prompt = format.prompt_ids(self.tokenizer, source, budget);
        self.tokenizer.check()?;
        let forward = |ids, cache: &mut KvCache<B>| model.forward_cached(ids, cache);
        let eos = self.eos()?;
        let tokens = if d.beams > 1 {
            beam_search(
                forward,
                &prompt,
                d.beams,
                d.max_new_tokens,
                Some(eos),
                device,
            )
            .tokens
        } else {
            let stopped = |out: &[u32]| {
                format
                    .stop
                    .is_some_and(|s| self.tokenizer.decode(out).contains(s))
            };
            let mut tokens = decode_cached(
                forward,
                &prompt,
                d.max_new_tokens,
                Some(eos),
                &mut greedy_pick,
                &mut |out| stopped(out),
                device,
            );
            tokens.retain(|&t| t != eos);
            tokens
        };
        Ok(self.tokenizer.decode(&tokens))
    }

    /// `exp` of the mean next-token cross-entropy over every reference's tokens (and its
    /// end-of-sequence token), given its prompt.
    fn perplexity<B: Backend>(
        &self,
        model: &CausalLm<B>,
        examples: &[Example],
        device: &B::Device,
    ) -> Result<f64, Fail> {
        let rows = bidora_data::generation::expand_references(examples);
        let (mut nll, mut count) = (0.0, 0usize);
        for chunk in rows.chunks(self.batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let b = to_device::<B>(&self.causal_batch(&refs)?, device);
            let Labels::Completion(c) = &b.labels else {
                continue;
            };
            let n = c.len();
            let loss = model.next_token_loss(b.ids, b.mask, c.positions.clone(), c.targets.clone());
            nll += loss.into_scalar().elem::<f64>() * n as f64;
            count += n;
        }
        Ok((nll / count.max(1) as f64).exp())
    }
}

/// Packs generation examples (their first reference as the completion) for causal-LM
/// training or scoring: each prompt cut to leave room for its completion and `eos`.
pub fn causal_batch(
    examples: &[&Example],
    tok: &ModelTokenizer,
    format: PromptFormat,
    eos: u32,
    max_len: usize,
) -> Result<HostBatch, Fail> {
    let mut ids = Vec::with_capacity(examples.len());
    for e in examples {
        let completion = match &e.label {
            Some(Label::References(r)) => r.first().map(String::as_str).unwrap_or(""),
            _ => "",
        };
        let completion = format.completion_ids(tok, completion);
        let budget = max_len.saturating_sub(completion.len() + 1);
        ids.push((
            format.prompt_ids(tok, &e.text_a, budget),
            completion,
            e.line,
        ));
    }
    tok.check()?;
    let rows: Vec<CausalRow<'_>> = ids
        .iter()
        .map(|(p, c, line)| CausalRow {
            prompt: p,
            completion: c,
            line: *line,
        })
        .collect();
    collate_causal(
        &rows,
        eos,
        bidora_data::batch::Tokenizer::pad_id(tok),
        max_len,
    )
    .input()
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
    fn shards_cut_rows_and_weigh_them_by_their_tagged_words() {
        let b = batch::<B>();
        let problem = TaskProblem { ortho: None };
        // Three rows of lengths 2, 4, 1 over two peers: row 0 and rows 1-2.
        let shard = |rank| BilevelProblem::<AB>::shard(&problem, &batch::<AB>(), rank, 2).unwrap();
        let (first, second) = (shard(0), shard(1));
        assert_eq!(first.weight, 2.0);
        assert_eq!(second.weight, 5.0);
        assert_eq!(
            host(second.batch.unwrap().ids),
            vec![110, 111, 112, 113, 120, 0, 0, 0]
        );
        assert_eq!(host(first.batch.unwrap().ids), vec![100, 101]);
        // More peers than rows: the first of four has nothing (rows 0..0), with weight 0.
        let none = BilevelProblem::<AB>::shard(&problem, &batch::<AB>(), 0, 4).unwrap();
        assert!(none.batch.is_none() && none.weight == 0.0);
        assert_eq!(b.loss_units(), 7.0);
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
