//! `bidora train`, in four stages:
//!
//! 1. [`resolve`]: the settings (flags over a TOML file), or a run folder's saved ones on
//!    `--resume`;
//! 2. [`Prepared::new`]: task, data, model with adapters, tokenizer, parameter groups and the
//!    BiDoRA split, all checked before anything is written;
//! 3. [`train_model`]: the engine with its streams, evaluation, progress and log
//!    ([`RunLog`]), from scratch or from the checkpoint;
//! 4. [`save_model`] and [`write_report`]: the PEFT adapter (or the whole model) and
//!    `report.json`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bidora_adapters::peft::{self, SaveOptions};
use bidora_adapters::regularizer::OrthoOptions;
use bidora_adapters::{AdapterHost, ParamPartition};
use bidora_backend::PeersTask;
use bidora_bilevel::collective::LocalPeers;
use bidora_bilevel::distributed::Collective;
use bidora_bilevel::stream::DEFAULT_LENGTH_WINDOW;
use bidora_bilevel::trainer::{Control, Data, Evaluation, Event, Hooks, Outcome, Phase};
use bidora_bilevel::{Checkpoint, ParamGroups, ShuffledBatches, TrainConfig, TrainError, Trainer};
use bidora_data::batch::{collate, encode, HostBatch};
use bidora_data::prompt::PromptFormat;
use bidora_data::split;
use bidora_data::tasks::{self, TaskInfo, TaskKind};
use bidora_data::Example;
use bidora_records::{AdapterInfo, BestEval, Record, Report};
use bidora_util::atomic_write;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{Knobs, Method, Settings};
use crate::defaults;
use crate::fail::{input, usage, Classify, Fail};
use crate::fingerprint::Fingerprint;
use crate::plot::{self, Panel, Series};
use crate::progress::Progress;
use crate::session::{
    load_task, num_labels, parameter_counts, prompt_format, to_device, Batch, Decoding, Evaluator,
    ModelTokenizer, TaskModel, TaskProblem,
};

const CONFIG_FILE: &str = "config.toml";
const CHECKPOINT_FILE: &str = "checkpoint.bin";
const METRICS_FILE: &str = "metrics.jsonl";

/// Runs `bidora train`.
pub fn train(resume: Option<PathBuf>, config: Option<PathBuf>, knobs: Knobs) -> Result<(), Fail> {
    let (settings, checkpoint) = resolve(resume, config, knobs)?;
    if let Some(t) = settings.knobs.threads {
        // Only fails when a pool exists already, which nothing here has made.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    std::fs::create_dir_all(&settings.out)
        .with_context(|| format!("cannot create the run folder `{}`", settings.out.display()))
        .runtime()?;
    let devices = settings.devices.clone();
    bidora_backend::run_peers(
        &devices,
        Some(settings.seed),
        Job {
            settings,
            checkpoint,
        },
    )
    .usage()?
}

/// Stage 1: the run's settings and, on `--resume`, its checkpoint file.
fn resolve(
    resume: Option<PathBuf>,
    config: Option<PathBuf>,
    knobs: Knobs,
) -> Result<(Settings, Option<PathBuf>), Fail> {
    let Some(dir) = resume else {
        let base = match &config {
            Some(p) => Knobs::from_file(p)?,
            None => Knobs::default(),
        };
        let s = Settings::resolve(base.overlaid(&knobs)?)?;
        if s.out.join(CONFIG_FILE).exists() {
            return Err(usage(format!(
                "`{}` already holds a run: continue it with --resume {} or choose another --out",
                s.out.display(),
                s.out.display()
            )));
        }
        return Ok((s, None));
    };
    if knobs != Knobs::default() {
        return Err(usage(
            "--resume continues a run with its saved settings: pass no other settings",
        ));
    }
    let file = dir.join(CONFIG_FILE);
    if !file.is_file() {
        return Err(input(format!(
            "`{}` is not a run folder (no {CONFIG_FILE})",
            dir.display()
        )));
    }
    let mut k = Knobs::from_file(&file)?;
    k.out = Some(dir.clone());
    let ck = dir.join(CHECKPOINT_FILE);
    if !ck.is_file() {
        return Err(input(format!(
            "`{}` has no checkpoint yet (the run stopped before its first one): start it again",
            dir.display()
        )));
    }
    Ok((Settings::resolve(k)?, Some(ck)))
}

struct Job {
    settings: Settings,
    checkpoint: Option<PathBuf>,
}

impl PeersTask for Job {
    type Output = Result<(), Fail>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        let started = Instant::now();
        match devices.as_slice() {
            [device] => self.lead::<B>(device, None, started),
            _ => self.on_peers::<B>(&devices, started),
        }
    }
}

impl Job {
    /// Data parallelism: a thread per device, rank 0 on this one. Every peer's error is
    /// printed; the result is rank 0's, or else the first other peer's.
    fn on_peers<B: AutodiffBackend>(
        &self,
        devices: &[B::Device],
        started: Instant,
    ) -> Result<(), Fail> {
        let peers = LocalPeers::new(devices.len(), self.settings.peer_timeout);
        let names = self.settings.devices.iter().map(|d| d.to_string());
        println!(
            "data parallel: {} peers ({}), each on its share of every batch of {}",
            devices.len(),
            names.collect::<Vec<_>>().join(", "),
            self.settings.batch_size
        );
        std::thread::scope(|scope| {
            let others: Vec<_> = (1..devices.len())
                .map(|rank| {
                    let (job, peers, device) = (self, &peers, &devices[rank]);
                    scope.spawn(move || job.as_peer::<B>(rank, device, peers, started))
                })
                .collect();
            let mut result = self.as_peer::<B>(0, &devices[0], &peers, started);
            for (i, other) in others.into_iter().enumerate() {
                let rank = i + 1;
                let r = other
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("peer {rank} panicked").into()));
                if let Err(e) = r {
                    eprintln!(
                        "error on peer {rank} ({}): {:#}",
                        self.settings.devices[rank], e.error
                    );
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
            result
        })
    }

    /// Peer `rank` of a data-parallel run; marks the run failed when it fails (or panics),
    /// so that the others stop at their next exchange instead of waiting out the timeout.
    fn as_peer<B: AutodiffBackend>(
        &self,
        rank: usize,
        device: &B::Device,
        peers: &LocalPeers,
        started: Instant,
    ) -> Result<(), Fail> {
        let _guard = FailOnPanic(peers);
        bidora_backend::seed::<B>(device, self.settings.seed);
        let r = match rank {
            0 => self.lead::<B>(device, Some(peers), started),
            _ => self.follow::<B>(rank, device, peers),
        };
        if r.is_err() {
            peers.fail();
        }
        r
    }

    /// The run alone, or rank 0 of several peers: trains with every hook (progress, log,
    /// evaluation, checkpoints) and writes the run's files.
    fn lead<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        peers: Option<&LocalPeers>,
        started: Instant,
    ) -> Result<(), Fail> {
        let s = &self.settings;
        let (prep, model) = Prepared::new::<B>(s, device)?;
        let resume = self.resume(s, &prep)?;
        if resume.is_none() {
            // Written once the inputs are known to be good, so a failed start leaves no run.
            let text = toml::to_string(&s.knobs).map_err(anyhow::Error::from)?;
            atomic_write(&s.out.join(CONFIG_FILE), text.as_bytes()).runtime()?;
        }
        let collective = match peers {
            Some(p) => Some(
                p.join::<B::InnerBackend>(0, device.clone())
                    .map_err(train_error)?,
            ),
            None => None,
        };
        let collective = collective
            .as_ref()
            .map(|c| c as &dyn Collective<B::InnerBackend>);
        let resumed = resume.is_some();
        // The training time of earlier processes: none for a new run, unknown (`None`) when
        // the checkpoint kept no time.
        let earlier = resume.as_ref().map_or(Some(0.0), |ck| ck.state.elapsed_s);
        let (outcome, untrained) = train_model(s, &prep, model, resume, device, collective)?;
        let saved = save_model(s, &prep, &outcome.module)?;
        let run = RunTimes {
            resumed,
            earlier,
            started,
        };
        let report = write_report(s, &prep, &outcome, untrained, run, &saved)?;
        print_summary(&report, &saved);
        Ok(())
    }

    /// Peer `rank` > 0: the same model, streams and engine as rank 0, without hooks; its
    /// trained module is rank 0's, so nothing is kept.
    fn follow<B: AutodiffBackend>(
        &self,
        rank: usize,
        device: &B::Device,
        peers: &LocalPeers,
    ) -> Result<(), Fail> {
        let s = &self.settings;
        let (prep, model) = Prepared::new::<B>(s, device)?;
        let resume = self.resume(s, &prep)?;
        let collective = peers
            .join::<B::InnerBackend>(rank, device.clone())
            .map_err(train_error)?;
        let make = prep.batch_maker(s, device);
        let mut streams = prep.streams(s, &make)?;
        let problem = prep.problem(s);
        let hooks = Hooks {
            base_identity: Some(prep.identity.encode()),
            ..Hooks::default()
        };
        prep.trainer::<B>(&problem, device)?
            .with_peers(&collective)
            .run(model, streams.data(), hooks, resume)
            .map_err(train_error)?;
        Ok(())
    }

    /// The checkpoint to resume from, checked against the base model.
    fn resume(&self, s: &Settings, prep: &Prepared) -> Result<Option<Checkpoint>, Fail> {
        match &self.checkpoint {
            Some(path) => Ok(Some(load_checkpoint(path, &s.model, &prep.identity)?)),
            None => Ok(None),
        }
    }
}

/// Marks a data-parallel run failed when its peer's thread unwinds.
struct FailOnPanic<'a>(&'a LocalPeers);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail();
        }
    }
}

/// An engine error in the CLI's classes.
fn train_error(e: TrainError) -> Fail {
    match e {
        e @ TrainError::Config(_) => usage(e),
        e @ TrainError::BaseChanged { .. } => input(e),
        e => anyhow::Error::from(e).into(),
    }
}

/// Mixed into the seed of the `--holdout` split, so that it does not shuffle as BiDoRA's
/// train/validation split of the rest does.
const HOLDOUT_SALT: u64 = 0x5EED_0FA0_1D00_0000;

/// Stage 2: everything a run needs, loaded and checked.
struct Prepared {
    task: TaskInfo,
    kind: TaskKind,
    labels: Vec<String>,
    eval_name: String,
    dev: Vec<Example>,
    /// D_tr (BiDoRA) or the whole training set.
    train: Vec<Example>,
    /// D_val (BiDoRA only).
    val: Option<Vec<Example>>,
    /// `--train-eval`: the training examples also evaluated at each evaluation.
    train_probe: Vec<Example>,
    tok: ModelTokenizer,
    /// Decoders: the end-of-sequence token the completions end with.
    eos: Option<u32>,
    /// Decoders: how examples become prompts (the task's format, or chat prompts).
    format: PromptFormat,
    groups: ParamGroups,
    config: TrainConfig,
    /// The base model's fingerprint, saved in checkpoints.
    identity: Fingerprint,
    /// Dev accuracy of always predicting the training set's most frequent class.
    majority: Option<f64>,
}

impl Prepared {
    /// Loads and checks everything; returns the model (with its adapters) beside.
    fn new<B: AutodiffBackend>(
        s: &Settings,
        device: &B::Device,
    ) -> Result<(Self, TaskModel<B>), Fail> {
        let task = tasks::task(&s.task).usage()?;
        let mut data = task.load(&s.data).input()?;
        let kind = task.kind_of(&data);
        if kind == TaskKind::Generation && s.adapter.is_none() && s.model.is_file() {
            return Err(usage(format!(
                "full fine-tuning cannot save a GGUF model (`{}`): use its HF folder, or train an adapter (lora, dora, bidora)",
                s.model.display()
            )));
        }
        let (model, tok, eos) =
            load_task::<B>(&s.model, kind, num_labels(kind, &data.labels), device)?;
        let format = prompt_format(&task, &mut data, &tok)?;
        let (eval_name, dev) = match s.holdout {
            Some(h) => {
                let (rest, held) =
                    split::train_val_split(data.train, h, s.seed ^ HOLDOUT_SALT).input()?;
                data.train = rest;
                ("holdout".to_string(), held)
            }
            None => data
                .eval
                .first()
                .cloned()
                .ok_or_else(|| input(format!("task `{}` has no evaluation set", s.task)))?,
        };
        let dev = spread(&dev, s.eval_examples.unwrap_or(dev.len()));
        let model = match &s.adapter {
            Some(c) => model.with_adapters(c, s.knobs.targets.is_none())?,
            None => model,
        };
        let partition = ParamPartition::of(&model);
        let bilevel = s.method == Method::Bidora;
        let (groups, train, val) = if bilevel {
            let (tr, val) =
                split::train_val_split(data.train.clone(), s.val_fraction, s.seed).input()?;
            (
                ParamGroups::new(partition.lower(), partition.upper()),
                tr,
                Some(val),
            )
        } else {
            (
                ParamGroups::single(partition.trainable()),
                data.train.clone(),
                None,
            )
        };
        let config = s.train_config(train.len().div_ceil(s.batch_size))?;
        let majority = majority_accuracy(&train, &dev);
        let train_probe = spread(&train, s.train_eval);
        let prepared = Prepared {
            task,
            kind,
            labels: data.labels,
            eval_name,
            dev,
            train,
            val,
            train_probe,
            tok,
            eos,
            format,
            groups,
            config,
            identity: Fingerprint::of(&s.model)?,
            majority,
        };
        prepared.check_batches(s, &data.train)?;
        prepared.check_batches(s, &prepared.dev)?;
        Ok((prepared, model))
    }

    /// Scores models on this run's task.
    fn evaluator(&self, s: &Settings) -> Evaluator<'_> {
        Evaluator {
            task: &self.task,
            kind: self.kind,
            labels: &self.labels,
            tokenizer: &self.tok,
            batch_size: s.batch_size.max(defaults::EVAL_BATCH_SIZE),
            max_len: s.max_length,
            decoding: Decoding {
                eos: self.eos,
                max_new_tokens: s.max_new_tokens,
                beams: s.beams,
            },
            format: self.format,
        }
    }

    /// The host batch of `items`: encoded and padded, or (generation) packed as
    /// prompt ++ completion ++ EOS.
    fn host_batch(&self, s: &Settings, items: &[&Example]) -> Result<HostBatch, Fail> {
        if self.kind == TaskKind::Generation {
            return self.evaluator(s).causal_batch(items);
        }
        let b = collate(items, &self.tok, s.max_length);
        self.tok.check()?;
        Ok(b)
    }

    /// Fails on the first examples that cannot be batched (tokenisation; generation: an
    /// empty completion or one that does not fit), naming their line.
    fn check_batches(&self, s: &Settings, examples: &[Example]) -> Result<(), Fail> {
        for chunk in examples.chunks(64) {
            let refs: Vec<&Example> = chunk.iter().collect();
            self.host_batch(s, &refs).map_err(|f| {
                input(format!(
                    "cannot batch the examples from line {}: {}",
                    chunk[0].line, f.error
                ))
            })?;
        }
        Ok(())
    }

    fn primary(&self) -> String {
        self.task.primary().name().to_string()
    }

    /// The dev metrics of `m`, as the engine's evaluation, with the magnitudes' drift and
    /// (`--train-eval`) the training probe's metrics as diagnostics.
    fn evaluate<B: AutodiffBackend>(
        &self,
        s: &Settings,
        m: &TaskModel<B>,
        device: &B::Device,
    ) -> Result<Evaluation, Fail> {
        let inference = m.valid();
        let evaluator = self.evaluator(s);
        let on = |examples: &[Example]| evaluator.metrics(&inference, examples, device);
        let metrics = on(&self.dev)?;
        let mut diagnostics = magnitude_drifts(m);
        if !self.train_probe.is_empty() {
            let train = on(&self.train_probe)?;
            diagnostics.extend(
                train
                    .into_iter()
                    .map(|(k, v)| (format!("{TRAIN_PREFIX}{k}"), v)),
            );
        }
        Ok(Evaluation {
            metrics,
            primary: self.primary(),
            higher_is_better: true,
            diagnostics,
        })
    }

    /// Seeded streams over D_tr, D_val and (for retraining) D_tr ∪ D_val.
    fn streams<'a, B: AutodiffBackend>(
        &'a self,
        s: &Settings,
        make: &'a dyn Fn(&[&Example]) -> Batch<B>,
    ) -> Result<Streams<'a, B>, Fail> {
        let stream = |examples: Vec<Example>, seed: u64| {
            let lengths = s.knobs.group_by_length.then(|| {
                let len = |e: &Example| encode(e, &self.tok, s.max_length).ids.len();
                examples.iter().map(len).collect::<Vec<usize>>()
            });
            let plain = ShuffledBatches::new(examples, s.batch_size, seed, make).input()?;
            match lengths {
                Some(l) => plain.grouped_by_length(l, DEFAULT_LENGTH_WINDOW).input(),
                None => Ok(plain),
            }
        };
        let train = stream(self.train.clone(), s.seed)?;
        let val = match &self.val {
            Some(v) => Some(stream(v.clone(), s.seed ^ 1)?),
            None => None,
        };
        let retrain = match (&self.val, &self.config.retrain) {
            (Some(v), Some(_)) => Some(stream(
                self.train.iter().chain(v).cloned().collect(),
                s.seed ^ 2,
            )?),
            _ => None,
        };
        Ok(Streams {
            train,
            val,
            retrain,
        })
    }
}

impl Prepared {
    /// Makes the device batch of some examples. Every batch was checked in
    /// [`Prepared::new`]; one that fails now trains on nothing.
    fn batch_maker<'a, B: AutodiffBackend>(
        &'a self,
        s: &'a Settings,
        device: &'a B::Device,
    ) -> impl Fn(&[&Example]) -> Batch<B> + 'a {
        move |items: &[&Example]| {
            let host = self
                .host_batch(s, items)
                .unwrap_or_else(|_| collate(items, &self.tok, s.max_length));
            to_device::<B>(&host, device)
        }
    }

    /// The run's training problem.
    fn problem(&self, s: &Settings) -> TaskProblem {
        TaskProblem {
            ortho: (s.method == Method::Bidora).then_some(OrthoOptions {
                squared: s.squared_ortho,
            }),
        }
    }

    /// The engine over `problem`, with this run's parameter groups and configuration.
    fn trainer<'p, B: AutodiffBackend>(
        &self,
        problem: &'p TaskProblem,
        device: &B::Device,
    ) -> Result<Trainer<'p, B, TaskProblem>, Fail> {
        Trainer::new(
            problem,
            self.groups.clone(),
            self.config.clone(),
            device.clone(),
        )
        .usage()
    }
}

type Stream<'a, B> = ShuffledBatches<Example, &'a dyn Fn(&[&Example]) -> Batch<B>>;

struct Streams<'a, B: AutodiffBackend> {
    train: Stream<'a, B>,
    val: Option<Stream<'a, B>>,
    retrain: Option<Stream<'a, B>>,
}

impl<'a, B: AutodiffBackend> Streams<'a, B> {
    /// The streams as the engine reads them.
    fn data(&mut self) -> Data<'_, Batch<B>> {
        Data {
            train: &mut self.train,
            val: self.val.as_mut().map(|v| v as _),
            retrain: self.retrain.as_mut().map(|v| v as _),
        }
    }
}

/// Reads the checkpoint and refuses it when the base model's files changed since it was
/// written (it holds the trained parameters only).
fn load_checkpoint(path: &Path, model: &Path, identity: &Fingerprint) -> Result<Checkpoint, Fail> {
    let ck = Checkpoint::load(path).input()?;
    let saved = ck.state.base.as_deref().map(Fingerprint::decode);
    if let Some(change) = saved.and_then(|saved| saved.difference(identity)) {
        return Err(input(format!(
            "cannot resume from `{}`: the base model `{}` changed since the checkpoint was written ({change})",
            path.display(),
            model.display()
        )));
    }
    Ok(ck)
}

/// Stage 3: trains from scratch (after evaluating the untrained model) or from `resume`.
/// Returns the outcome and the untrained model's metrics (read back from the log on resume).
fn train_model<B: AutodiffBackend>(
    s: &Settings,
    prep: &Prepared,
    model: TaskModel<B>,
    resume: Option<Checkpoint>,
    device: &B::Device,
    peers: Option<&dyn Collective<B::InnerBackend>>,
) -> Result<(Outcome<TaskModel<B>>, Option<Evaluation>), Fail> {
    let baseline = match &resume {
        None => {
            let b = prep.evaluate(s, &model, device)?;
            print_baseline(s, prep, &b);
            Some(b)
        }
        Some(_) => None,
    };
    let (mut log, recovered) = RunLog::open(
        &s.out,
        &prep.eval_name,
        &prep.primary(),
        resume.as_ref(),
        baseline.as_ref(),
    )?;
    let untrained = baseline.or(recovered);

    let make = prep.batch_maker(s, device);
    let mut streams = prep.streams(s, &make)?;
    let eval_error: RefCell<Option<Fail>> = RefCell::new(None);
    let mut run_eval = |m: &TaskModel<B>| -> Evaluation {
        prep.evaluate(s, m, device).unwrap_or_else(|e| {
            eval_error.borrow_mut().get_or_insert(e);
            Evaluation::single(&prep.primary(), f64::NAN, true)
        })
    };
    let mut progress = Progress::new(&prep.eval_name);
    let retrain_offset = prep.config.iterations;
    let mut on_event = |e: &Event| -> Control {
        show_progress(&mut progress, e);
        match record_of(e, retrain_offset) {
            Some(r) => log.write(&r),
            None => Control::Continue,
        }
    };
    let problem = prep.problem(s);
    let mut trainer = prep.trainer::<B>(&problem, device)?;
    if let Some(p) = peers {
        trainer = trainer.with_peers(p);
    }
    let outcome = trainer.run(
        model,
        streams.data(),
        Hooks {
            on_event: Some(&mut on_event),
            evaluate: Some(&mut run_eval),
            checkpoint: Some(s.out.join(CHECKPOINT_FILE)),
            base_identity: Some(prep.identity.encode()),
        },
        resume,
    );
    progress.finish();
    log.finish()?;
    if let Some(e) = eval_error.borrow_mut().take() {
        return Err(e);
    }
    outcome.map(|o| (o, untrained)).map_err(train_error)
}

fn print_baseline(s: &Settings, prep: &Prepared, b: &Evaluation) {
    println!(
        "{} on {} before training: {} {:.4}{}",
        s.task,
        prep.eval_name,
        b.primary,
        b.score(),
        prep.majority.map_or(String::new(), |m| format!(
            " (majority class accuracy {m:.4})"
        ))
    );
}

fn show_progress(progress: &mut Progress, e: &Event) {
    match e {
        Event::PhaseStart { phase, total, from } => {
            progress.phase(record_phase(*phase).name(), *total, *from)
        }
        Event::Step {
            step,
            lower_loss,
            upper_loss,
            ..
        } => progress.step(*step, *lower_loss, *upper_loss),
        Event::Eval {
            step,
            evaluation,
            is_best,
            ..
        } => progress.eval(*step, &evaluation.primary, evaluation.score(), *is_best),
        _ => {}
    }
}

/// Prefix of the training probe's metrics among an evaluation's diagnostics (`--train-eval`).
pub const TRAIN_PREFIX: &str = "train.";

/// `n` examples spread evenly over `examples` (all of them when there are fewer).
fn spread(examples: &[Example], n: usize) -> Vec<Example> {
    if n == 0 {
        return Vec::new();
    }
    let stride = (examples.len() / n).max(1);
    examples.iter().step_by(stride).take(n).cloned().collect()
}

/// Prefix of the per-layer magnitude drifts among an evaluation's diagnostics.
pub const DRIFT_PREFIX: &str = "magnitude_drift.";

/// Each adapted layer's magnitude drift `‖m − ‖W0‖‖ / ‖‖W0‖‖` (DoRA, BiDoRA; none for LoRA
/// or full fine-tuning), as `magnitude_drift.<layer path>`.
fn magnitude_drifts<B: burn::tensor::backend::Backend>(m: &TaskModel<B>) -> BTreeMap<String, f64> {
    m.adapters()
        .into_iter()
        .filter_map(|(path, layer)| {
            Some((format!("{DRIFT_PREFIX}{path}"), layer.magnitude_drift()?))
        })
        .collect()
}

/// The engine's phase as the run's files name it.
fn record_phase(p: Phase) -> bidora_records::Phase {
    match p {
        Phase::Search => bidora_records::Phase::Search,
        Phase::Retrain => bidora_records::Phase::Retrain,
    }
}

/// The `metrics.jsonl` record of an engine event.
fn record_of(e: &Event, retrain_offset: usize) -> Option<Record> {
    let global =
        |phase: Phase, step: usize| (phase == Phase::Retrain).then_some(retrain_offset + step);
    match e {
        Event::Step {
            phase,
            step,
            lower_loss,
            upper_loss,
            lr,
            hypergradient_norms,
            ..
        } => Some(Record::Step {
            phase: record_phase(*phase),
            step: *step,
            global_step: global(*phase, *step),
            lower_loss: *lower_loss,
            upper_loss: *upper_loss,
            lr_lower: lr.0,
            lr_upper: lr.1,
            direct_norm: hypergradient_norms.map(|n| n.0),
            mixed_norm: hypergradient_norms.and_then(|n| n.1),
        }),
        Event::Eval {
            phase,
            step,
            evaluation,
            is_best,
        } => Some(Record::Eval {
            phase: record_phase(*phase),
            step: *step,
            global_step: global(*phase, *step),
            metrics: evaluation.metrics.clone(),
            is_best: *is_best,
            diagnostics: evaluation.diagnostics.clone(),
        }),
        Event::Checkpoint { phase, step, .. } => Some(Record::Checkpoint {
            phase: record_phase(*phase),
            step: *step,
        }),
        _ => None,
    }
}

/// `metrics.jsonl` and the curves drawn from it.
struct RunLog {
    path: PathBuf,
    out: PathBuf,
    file: std::fs::File,
    curves: Curves,
    error: Option<anyhow::Error>,
}

impl RunLog {
    /// Opens the log: on resume, keeps exactly the lines an uninterrupted run had written by the
    /// checkpoint (returning the untrained metrics recorded there); on a new run, starts it with
    /// the baseline.
    fn open(
        out: &Path,
        eval_set: &str,
        primary: &str,
        resume: Option<&Checkpoint>,
        baseline: Option<&Evaluation>,
    ) -> Result<(Self, Option<Evaluation>), Fail> {
        let path = out.join(METRICS_FILE);
        let mut kept = match resume {
            Some(ck) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                bidora_records::kept_on_resume(&text, record_phase(ck.state.phase), ck.state.step)
            }
            None => Vec::new(),
        };
        if let Some(b) = baseline {
            let r = Record::Baseline {
                phase: bidora_records::Phase::Search,
                step: 0,
                metrics: b.metrics.clone(),
            };
            kept.push((r.to_line(), r));
        }
        let mut curves = Curves {
            eval_set: eval_set.to_string(),
            metric_name: primary.to_string(),
            ..Curves::default()
        };
        let mut text = String::new();
        let mut recovered = None;
        for (line, r) in &kept {
            curves.add(r);
            text.push_str(line);
            text.push('\n');
            if let Record::Baseline { metrics, .. } = r {
                recovered = Some(Evaluation {
                    metrics: metrics.clone(),
                    primary: primary.to_string(),
                    higher_is_better: true,
                    diagnostics: BTreeMap::new(),
                });
            }
        }
        atomic_write(&path, text.as_bytes()).runtime()?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open `{}`", path.display()))
            .runtime()?;
        let log = RunLog {
            path,
            out: out.to_path_buf(),
            file,
            curves,
            error: None,
        };
        Ok((log, recovered))
    }

    /// Appends a record (and redraws the curves after an evaluation); a write error stops the
    /// run and is reported by [`RunLog::finish`].
    fn write(&mut self, r: &Record) -> Control {
        self.curves.add(r);
        let result = writeln!(self.file, "{}", r.to_line())
            .map_err(anyhow::Error::from)
            .and_then(|_| match r {
                Record::Eval { .. } => self.curves.write(&self.out),
                _ => Ok(()),
            });
        match result {
            Ok(()) => Control::Continue,
            Err(e) => {
                self.error.get_or_insert(e);
                Control::Stop
            }
        }
    }

    fn finish(mut self) -> Result<(), Fail> {
        if let Some(e) = self.error.take() {
            return Err(e
                .context(format!(
                    "cannot write the run's log `{}`",
                    self.path.display()
                ))
                .into());
        }
        self.curves.write(&self.out).runtime()
    }
}

/// Stage 4a: the adapter (PEFT format, with `bidora.json`) or, for full fine-tuning, the whole
/// model as a plain HF folder. Returns the folder.
fn save_model<B: AutodiffBackend>(
    s: &Settings,
    prep: &Prepared,
    module: &TaskModel<B>,
) -> Result<PathBuf, Fail> {
    let Some(c) = &s.adapter else {
        let dir = s.out.join("model");
        crate::merge::export(&module.valid(), &s.model, &prep.labels, &dir)?;
        return Ok(dir);
    };
    // The targets the layers were made with: the model's defaults when none were given.
    let c = &match s.knobs.targets {
        None => c.clone().with_targets(module.default_targets()),
        Some(_) => c.clone(),
    };
    let dir = s.out.join("adapter");
    let task_type = match prep.kind {
        TaskKind::TokenClassification => "TOKEN_CLS",
        TaskKind::Generation => "CAUSAL_LM",
        _ => "SEQ_CLS",
    };
    let (modules_to_save, fan_in_fan_out) = match module {
        TaskModel::Causal(m) => (Vec::new(), m.fan_in_fan_out()),
        _ => (vec!["classifier".into()], false),
    };
    peft::save(
        &dir,
        module,
        c,
        &SaveOptions {
            base_model_name_or_path: Some(s.model.display().to_string()),
            task_type: Some(task_type.into()),
            modules_to_save,
            extra_tensors: module.head_tensors()?,
            fan_in_fan_out,
        },
        &|p: &str| p.to_string(),
    )
    .runtime()?;
    let info = AdapterInfo {
        task: s.task.clone(),
        labels: prep.labels.clone(),
        max_length: s.max_length,
        model: s.model.display().to_string(),
    };
    write_json(&dir.join("bidora.json"), &info)?;
    Ok(dir)
}

/// Stage 4b: `report.json`.
fn write_report<B: AutodiffBackend>(
    s: &Settings,
    prep: &Prepared,
    outcome: &Outcome<TaskModel<B>>,
    untrained: Option<Evaluation>,
    times: RunTimes,
    saved: &Path,
) -> Result<Report, Fail> {
    let partition = ParamPartition::of(&outcome.module);
    let steps = prep.config.iterations + prep.config.retrain.map_or(0, |r| r.iterations);
    let wall = times.started.elapsed().as_secs_f64();
    let report = Report {
        task: s.task.clone(),
        eval_set: prep.eval_name.clone(),
        method: s.method.name().to_string(),
        model: s.model.display().to_string(),
        primary_metric: prep.primary(),
        final_metrics: outcome.final_eval.as_ref().map(|e| e.metrics.clone()),
        best: outcome.best_eval.as_ref().map(|(phase, step, e)| BestEval {
            phase: record_phase(*phase),
            step: *step,
            metrics: e.metrics.clone(),
        }),
        untrained: untrained.map(|e| e.metrics),
        majority_class_accuracy: prep.majority,
        parameters: parameter_counts(&partition),
        train_examples: prep.train.len(),
        validation_examples: prep.val.as_ref().map(Vec::len),
        steps,
        resumed: times.resumed,
        wall_time_s: wall,
        total_wall_time_s: times.earlier.map(|earlier| earlier + wall),
        steps_per_s: steps as f64 / wall.max(1e-9),
        saved: saved.display().to_string(),
    };
    write_json(&s.out.join("report.json"), &report)?;
    Ok(report)
}

/// When this process started, whether it resumed, and the training time of the processes
/// before it (`None` when the checkpoint kept none).
struct RunTimes {
    resumed: bool,
    earlier: Option<f64>,
    started: Instant,
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), Fail> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    atomic_write(path, text.as_bytes()).runtime()
}

fn print_summary(r: &Report, saved: &Path) {
    let primary = &r.primary_metric;
    let score = |m: Option<&BTreeMap<String, f64>>| {
        m.and_then(|m| m.get(primary)).copied().unwrap_or(f64::NAN)
    };
    println!(
        "{} {} on {}: final {primary} {:.4}, best {:.4}{}; {} in {:.0} s",
        r.task,
        r.method,
        r.eval_set,
        score(r.final_metrics.as_ref()),
        score(r.best.as_ref().map(|b| &b.metrics)),
        r.untrained.as_ref().map_or(String::new(), |u| format!(
            " (untrained {:.4})",
            score(Some(u))
        )),
        saved.display(),
        r.wall_time_s
    );
}

/// The majority-class accuracy of the dev set by the training set's most frequent class.
fn majority_accuracy(train: &[Example], dev: &[Example]) -> Option<f64> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for e in train {
        *counts.entry(e.class()?).or_default() += 1;
    }
    let (top, _) = counts.iter().max_by_key(|(_, n)| **n)?;
    let hits = dev.iter().filter(|e| e.class() == Some(*top)).count();
    Some(hits as f64 / dev.len().max(1) as f64)
}

/// Curves kept for the plots.
#[derive(Default)]
struct Curves {
    lower: Vec<(f64, f64)>,
    upper: Vec<(f64, f64)>,
    metric: Vec<(f64, f64)>,
    /// BiDoRA: the hypergradient's direct and second-order terms' norms per upper step.
    direct: Vec<(f64, f64)>,
    mixed: Vec<(f64, f64)>,
    /// DoRA / BiDoRA: the magnitudes' relative drift per evaluation, mean and largest layer.
    drift_mean: Vec<(f64, f64)>,
    drift_max: Vec<(f64, f64)>,
    /// `dev`, or `holdout` with `--holdout`.
    eval_set: String,
    metric_name: String,
}

impl Curves {
    /// Adds a metrics.jsonl record.
    fn add(&mut self, r: &Record) {
        let step = r.plot_step();
        match r {
            Record::Step {
                lower_loss,
                upper_loss,
                direct_norm,
                mixed_norm,
                ..
            } => {
                self.lower.push((step, *lower_loss));
                if let Some(u) = upper_loss {
                    self.upper.push((step, *u));
                }
                if let Some(d) = direct_norm {
                    self.direct.push((step, *d));
                }
                if let Some(m) = mixed_norm {
                    self.mixed.push((step, *m));
                }
            }
            Record::Eval {
                metrics,
                diagnostics,
                ..
            } => {
                if let Some(m) = metrics.get(&self.metric_name) {
                    self.metric.push((step, *m));
                }
                let drifts: Vec<f64> = diagnostics
                    .iter()
                    .filter(|(k, _)| k.starts_with(DRIFT_PREFIX))
                    .map(|(_, v)| *v)
                    .collect();
                if !drifts.is_empty() {
                    let mean = drifts.iter().sum::<f64>() / drifts.len() as f64;
                    let max = drifts.iter().fold(0f64, |a, &b| a.max(b));
                    self.drift_mean.push((step, mean));
                    self.drift_max.push((step, max));
                }
            }
            Record::Baseline { metrics, .. } => {
                if let Some(m) = metrics.get(&self.metric_name) {
                    self.metric.push((step, *m));
                }
            }
            Record::Checkpoint { .. } => {}
        }
    }

    /// BiDoRA's mechanism: how large the hypergradient's terms are at each upper step.
    fn hypergradient_panel(&self) -> Panel {
        let mut series = vec![Series {
            name: "‖∂L_val/∂m‖ (direct)".into(),
            points: self.direct.clone(),
            color: "#9467bd",
        }];
        if !self.mixed.is_empty() {
            series.push(Series {
                name: "second-order term".into(),
                points: self.mixed.clone(),
                color: "#ff7f0e",
            });
        }
        Panel {
            title: "hypergradient terms (norms)".into(),
            y_label: "norm".into(),
            series,
        }
    }

    /// DoRA / BiDoRA: how far the magnitudes have moved from ‖W0‖, over the adapted layers.
    fn drift_panel(&self) -> Panel {
        Panel {
            title: "magnitude drift ‖m − ‖W0‖‖ / ‖‖W0‖‖".into(),
            y_label: "relative drift".into(),
            series: vec![
                Series {
                    name: "mean over layers".into(),
                    points: self.drift_mean.clone(),
                    color: "#8c564b",
                },
                Series {
                    name: "largest layer".into(),
                    points: self.drift_max.clone(),
                    color: "#e377c2",
                },
            ],
        }
    }

    fn write(&self, out: &Path) -> anyhow::Result<()> {
        let mut panels = vec![
            Panel {
                title: "training loss".into(),
                y_label: "loss".into(),
                series: vec![
                    Series {
                        name: "lower level (train)".into(),
                        points: self.lower.clone(),
                        color: "#1f77b4",
                    },
                    Series {
                        name: "upper level (validation)".into(),
                        points: self.upper.clone(),
                        color: "#d62728",
                    },
                ],
            },
            Panel {
                title: format!("{} {}", self.eval_set, self.metric_name),
                y_label: self.metric_name.clone(),
                series: vec![Series {
                    name: self.metric_name.clone(),
                    points: self.metric.clone(),
                    color: "#2ca02c",
                }],
            },
        ];
        if !self.direct.is_empty() {
            panels.push(self.hypergradient_panel());
        }
        if !self.drift_mean.is_empty() {
            panels.push(self.drift_panel());
        }
        let svg = plot::svg(&panels);
        atomic_write(&out.join("curves.svg"), svg.as_bytes())?;
        atomic_write(&out.join("curves.png"), &plot::png(&svg)?)?;
        Ok(())
    }
}
