//! The settings of `bidora train`: one flat set of keys shared by the flags and the TOML file
//! (flags override the file), resolved with docs/METHOD.md's defaults into [`Settings`].

use std::path::{Path, PathBuf};

use bidora_adapters::{AdapterConfig, AdapterMethod, InitA, NormMode};
use bidora_bilevel::{
    Hypergradient, HypergradientMethod, LevelConfig, Mode, RetrainConfig, Schedule, TrainConfig,
};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::fail::{usage, Classify, Fail};

/// Printed after `bidora train --help`.
pub const TRAIN_HELP: &str = "\
Methods:
  lora     A·B on the targets, one level, whole training set
  dora     LoRA plus a trained magnitude per output (PEFT's DoRA), one level
  bidora   DoRA's parts trained on two levels: direction (A, B, head) on the training split,
           magnitude on the validation split (--val-fraction) with a hypergradient
  full     every weight, one level

Tasks: cola sst2 mrpc qqp stsb mnli qnli rte wnli (GLUE folders: train.tsv, dev.tsv),
  conll wnut16 (2-column BIO files), movie-sentiment movie-rating tweet-sentiment
  product-sentiment editorial-sentiment (VADER rated sentences), topic (a folder per class),
  jsonl (your train.jsonl + dev.jsonl with text, optional text_pair, label);
  generation, with a decoder (GPT-2 or Llama layout, HF folder or .gguf): headlines
  (BBC News article → title), e2e (E2E NLG CSV or source/target JSONL), prompts (your
  train.jsonl + dev.jsonl with prompt and completion). The loss is on the completion only;
  dev is scored on greedy (or --beams) outputs with the task's metrics and perplexity.

A TOML file takes the same keys with `_` for `-`, e.g.
  task = \"mrpc\"
  model = \"all-MiniLM-L6-v2\"
  method = \"bidora\"
  rank = 8
  targets = [\"query\", \"value\"]
  epochs = 5
  lower_lr = 5e-4";

fn is_false(b: &bool) -> bool {
    !*b
}

/// Every knob of a training run. Unset knobs take the defaults listed in `--help`.
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// Task name (see the list below).
    #[arg(long, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// HF model folder (config.json, model.safetensors, tokenizer), or a GGUF file (decoders).
    #[arg(long, value_name = "DIR", help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// The task's data folder (or file, for conll/wnut16).
    #[arg(long, value_name = "DIR", help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Training method.
    #[arg(long, help_heading = "Run", help = defaults::help("lora, dora, bidora or full", defaults::value_name(defaults::METHOD)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// Backend.
    #[arg(long, help_heading = "Run", help = defaults::help("cpu, wgpu or cuda[:INDEX]", defaults::BACKEND))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Run folder [default: runs/TASK-METHOD].
    #[arg(long, value_name = "DIR", help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Seed of the split, the initialisation, the batch order and dropout.
    #[arg(long, help_heading = "Run", help = defaults::help("Seed of the split, the initialisation, the batch order and dropout", defaults::SEED))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// CPU threads [default: all cores].
    #[arg(long, help_heading = "Run")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Data parallelism: one peer per device, comma separated, of one backend (`cuda:0,cuda:1`;
    /// `cpu,cpu` to try it on a CPU; a device named twice holds two peers). Each peer trains on
    /// its share of every batch and the gradients are averaged, so the run follows the
    /// one-device run (to float rounding without dropout; each peer draws its own masks).
    /// Replaces --backend.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "DEVICES",
        help_heading = "Run"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Data parallelism: seconds a peer waits for the others at an exchange before the run
    /// fails (rank 0 evaluates and checkpoints while the others wait).
    #[arg(long, value_name = "SECONDS", help_heading = "Run", help = defaults::help("Data parallelism: seconds a peer waits for the others at an exchange before the run fails (rank 0 evaluates and checkpoints while the others wait)", defaults::PEER_TIMEOUT_S))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_timeout: Option<f64>,

    /// Adapter rank r.
    #[arg(long, help_heading = "Adapter", help = defaults::help("Adapter rank r", defaults::RANK))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Adapter alpha; the update is scaled by alpha / r.
    #[arg(long, help_heading = "Adapter", help = defaults::help("Adapter alpha; the update is scaled by alpha / r", format!("{} × rank", defaults::ALPHA_PER_RANK)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Dropout on the adapter's input.
    #[arg(long, help_heading = "Adapter", help = defaults::help("Dropout on the adapter's input", defaults::DROPOUT))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Target modules, comma separated: names (`query,value`), dotted paths, or `re:REGEX`
    /// [default: the attention query and value of the architecture].
    #[arg(long, value_delimiter = ',', help_heading = "Adapter")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// Initialisation of A.
    #[arg(long, help_heading = "Adapter", help = defaults::help("Initialisation of A: kaiming (PEFT's) or gaussian (the BiDoRA code's)", defaults::value_name(defaults::INIT)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<InitA>,
    /// DoRA norm: exact (gradients through ‖W‖) or detached (PEFT).
    #[arg(long, help_heading = "Adapter", help = defaults::help("DoRA norm: exact (gradients through ‖W‖, the BiDoRA code) or detached (PEFT)", format!("{} for bidora, {} for dora", defaults::value_name(defaults::NORM_BIDORA), defaults::value_name(defaults::NORM_DORA))))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub norm: Option<NormMode>,
    /// Take the DoRA norm through the low-rank form (same value, cheaper for large layers).
    #[arg(long, help_heading = "Adapter")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub low_rank_norm: bool,
    /// Do not scale the update by alpha / r (the BiDoRA reference code's s = 1).
    #[arg(long, help_heading = "Adapter")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_scaling: bool,

    /// Lower-level steps; overrides --epochs.
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// Passes over the (lower-level) training data.
    #[arg(long, help_heading = "Training", help = defaults::help("Passes over the (lower-level) training data", defaults::EPOCHS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    /// Examples per batch.
    #[arg(long, help_heading = "Training", help = defaults::help("Examples per batch", defaults::BATCH_SIZE))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Longest input in tokens.
    #[arg(long, help_heading = "Training", help = defaults::help("Longest input in tokens", defaults::MAX_LENGTH))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Put inputs of similar length into the same batch (less padding, faster steps; HF
    /// Trainer's `group_by_length`).
    #[arg(long, help_heading = "Training")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub group_by_length: bool,
    /// BiDoRA: fraction of the training set held out for the upper level.
    #[arg(long, help_heading = "Training", help = defaults::help("BiDoRA: fraction of the training set held out for the upper level", defaults::VAL_FRACTION))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// Evaluate on this fraction of the training set, held out before anything else, in
    /// place of the dev set (for choosing settings without looking at dev).
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// At each evaluation, also evaluate on this many examples of the training data (D_tr for
    /// BiDoRA, spread evenly over it), recorded as `train.<metric>` in `metrics.jsonl`'s
    /// diagnostics: the train − dev gap along the run.
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_eval: Option<usize>,
    /// BiDoRA: weight γ of the orthogonality regulariser.
    #[arg(long, help_heading = "Training", help = defaults::help("BiDoRA: weight γ of the orthogonality regulariser", defaults::GAMMA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// BiDoRA: square the regulariser's Frobenius norms.
    #[arg(long, help_heading = "Training")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub squared_ortho: bool,
    /// BiDoRA: an upper step after every this many lower steps.
    #[arg(long, help_heading = "Training", help = defaults::help("BiDoRA: an upper step after every this many lower steps", defaults::UNROLL))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unroll: Option<usize>,
    /// BiDoRA: the hypergradient.
    #[arg(long, help_heading = "Training", help = defaults::help("BiDoRA: first_order, darts or neumann", defaults::value_name(defaults::HYPERGRADIENT)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hypergradient: Option<HypergradientMethod>,
    /// DARTS / Neumann: finite-difference step ε = fd_alpha / ‖v‖.
    #[arg(long, help_heading = "Training", help = defaults::help("DARTS / Neumann: finite-difference step ε = fd_alpha / ‖v‖", defaults::FD_ALPHA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_alpha: Option<f64>,
    /// DARTS / Neumann: fraction of the training batch the finite-difference passes use.
    #[arg(long, help_heading = "Training", help = defaults::help("DARTS / Neumann: fraction of the training batch (its first examples) the finite-difference passes run on", defaults::FD_FRACTION))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_fraction: Option<f64>,
    /// DARTS: weight ξ of the mixed term.
    #[arg(long, help_heading = "Training", help = defaults::help("DARTS: weight ξ of the mixed term", defaults::XI))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xi: Option<f64>,
    /// Neumann: series terms.
    #[arg(long, help_heading = "Training", help = defaults::help("Neumann: series terms", defaults::NEUMANN_ITERATIONS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neumann_iterations: Option<usize>,
    /// Neumann: series step α.
    #[arg(long, help_heading = "Training", help = defaults::help("Neumann: series step α", defaults::NEUMANN_ALPHA))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neumann_alpha: Option<f64>,
    /// Peak learning rate of the lower level (the only one for lora/dora/full).
    #[arg(long, help_heading = "Training", help = defaults::help("Peak learning rate of the lower level (the only one for lora/dora/full)", format!("{}; {} for full", defaults::LR, defaults::LR_FULL)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_lr: Option<f64>,
    /// Weight decay of the lower level.
    #[arg(long, help_heading = "Training", help = defaults::help("Weight decay of the lower level", defaults::WEIGHT_DECAY))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_weight_decay: Option<f64>,
    /// Peak learning rate of the upper level (magnitudes) [default: the lower lr].
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_lr: Option<f64>,
    /// Weight decay of the upper level [default: the lower one].
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_weight_decay: Option<f64>,
    /// Schedule: warm-up then linear decay to 0, or constant.
    #[arg(long, help_heading = "Training", help = defaults::help("Schedule: linear (warm-up then linear decay to 0) or constant", defaults::value_name(defaults::SCHEDULE)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleKind>,
    /// Fraction of the steps spent warming up.
    #[arg(long, help_heading = "Training", help = defaults::help("Fraction of each phase spent warming up", defaults::WARMUP))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<f64>,
    /// Clip each level's gradient to this global norm.
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Evaluate on the dev set every this many steps (and at the end) [default: once per
    /// epoch].
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Evaluate on this many examples of the dev set (spread evenly over it) [default: all].
    #[arg(long, help_heading = "Evaluation")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_examples: Option<usize>,
    /// Generation tasks: new tokens at most per dev example.
    #[arg(long, help_heading = "Evaluation", help = defaults::help("Generation tasks: new tokens at most per dev example", defaults::MAX_NEW_TOKENS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// Generation tasks: beam width of the dev outputs (1: greedy).
    #[arg(long, help_heading = "Evaluation", help = defaults::help("Generation tasks: beam width of the dev outputs (1: greedy)", 1))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beams: Option<usize>,
    /// Write a checkpoint every this many steps [default: --eval-every].
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// BiDoRA: after the search, reset the direction and retrain it on all training data
    /// with the searched magnitudes frozen.
    #[arg(long, help_heading = "Training")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub retrain: bool,
    /// Retraining steps [default: the search's].
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrain_iterations: Option<usize>,
    /// Retraining learning rate [default: the lower lr].
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrain_lr: Option<f64>,
    /// Retraining weight decay [default: the lower one].
    #[arg(long, help_heading = "Training")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrain_weight_decay: Option<f64>,
}

impl Knobs {
    /// Reads a TOML file of knobs; unknown keys and bad values are usage errors naming the
    /// file, line and key.
    pub fn from_file(path: &Path) -> Result<Self, Fail> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file `{}`: {e}", path.display()))
            .usage()?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("bad config file `{}`: {e}", path.display()))
            .usage()
    }

    /// `self` with every knob set in `over` replaced (flags over the file).
    pub fn overlaid(self, over: &Knobs) -> Result<Self, Fail> {
        let mut base = toml::Table::try_from(&self).map_err(anyhow::Error::from)?;
        let top = toml::Table::try_from(over).map_err(anyhow::Error::from)?;
        for (k, v) in top {
            base.insert(k, v);
        }
        Ok(toml::Value::Table(base)
            .try_into()
            .map_err(anyhow::Error::from)?)
    }
}

/// The method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// LoRA.
    Lora,
    /// DoRA.
    Dora,
    /// BiDoRA.
    Bidora,
    /// Full fine-tuning.
    Full,
}

impl Method {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Dora => "dora",
            Method::Bidora => "bidora",
            Method::Full => "full",
        }
    }
}

/// The learning-rate schedule's shape (its warm-up is the `warmup` knob).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warm-up, then linear decay to 0.
    Linear,
    /// The peak rate throughout.
    Constant,
}

/// Resolved settings of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The knobs with every default filled in (saved as config.toml).
    pub knobs: Knobs,
    /// Task name.
    pub task: String,
    /// Model folder.
    pub model: PathBuf,
    /// Data folder.
    pub data: PathBuf,
    /// Method.
    pub method: Method,
    /// Backend devices, one per data-parallel peer (one device: no peers).
    pub devices: Vec<bidora_backend::Device>,
    /// How long a peer waits for the others at an exchange.
    pub peer_timeout: std::time::Duration,
    /// Run folder.
    pub out: PathBuf,
    /// Seed.
    pub seed: u64,
    /// Adapter settings (targets filled in once the architecture is known).
    pub adapter: Option<AdapterConfig>,
    /// Batch size.
    pub batch_size: usize,
    /// Max tokens.
    pub max_length: usize,
    /// Validation fraction (BiDoRA).
    pub val_fraction: f64,
    /// Fraction of the training set evaluated on in place of dev (`--holdout`).
    pub holdout: Option<f64>,
    /// Training examples also evaluated at each evaluation (`--train-eval`; 0: none).
    pub train_eval: usize,
    /// Steps, or epochs to turn into steps once the data size is known.
    pub length: Length,
    /// Engine settings (iterations filled in by [`Settings::train_config`]).
    pub train: TrainConfig,
    /// Square the regulariser.
    pub squared_ortho: bool,
    /// Dev examples evaluated (`--eval-examples`; `None`: all).
    pub eval_examples: Option<usize>,
    /// Generation tasks: new tokens at most per dev example.
    pub max_new_tokens: usize,
    /// Generation tasks: beam width.
    pub beams: usize,
}

/// Run length.
#[derive(Clone, Copy, Debug)]
pub enum Length {
    /// Steps.
    Iterations(usize),
    /// Passes over the lower level's training data.
    Epochs(f64),
}

fn pick<T: Clone>(v: &Option<T>, default: T) -> T {
    v.clone().unwrap_or(default)
}

fn positive(name: &str, v: f64) -> Result<f64, Fail> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(usage(format!(
            "`{name}` must be a positive number, got {v}"
        )))
    }
}

/// The backend knob as saved (none when `devices` is set) and the run's devices: `devices`
/// (one backend; a device named twice holds two peers, for testing), or the one `backend`
/// device.
fn devices(k: &Knobs) -> Result<(Option<String>, Vec<bidora_backend::Device>), Fail> {
    let Some(list) = &k.devices else {
        let backend = k
            .backend
            .clone()
            .unwrap_or_else(|| defaults::BACKEND.into());
        let device = backend.parse().usage()?;
        return Ok((Some(backend), vec![device]));
    };
    if k.backend.is_some() {
        return Err(usage(
            "pass --backend (one device) or --devices (data-parallel peers), not both",
        ));
    }
    let devices = list
        .iter()
        .map(|d| d.parse::<bidora_backend::Device>())
        .collect::<Result<Vec<_>, _>>()
        .usage()?;
    bidora_backend::check_peers(&devices).usage()?;
    Ok((None, devices))
}

/// The adapter of `method` (none for full fine-tuning); the targets are filled in once the
/// architecture is known.
fn adapter_config(k: &Knobs, method: Method) -> Result<Option<AdapterConfig>, Fail> {
    let am = match method {
        Method::Full => return Ok(None),
        Method::Lora => AdapterMethod::Lora,
        Method::Dora => AdapterMethod::Dora,
        Method::Bidora => AdapterMethod::Bidora,
    };
    let rank = pick(&k.rank, defaults::RANK);
    let alpha = pick(&k.alpha, defaults::ALPHA_PER_RANK * rank as f64);
    let dropout = pick(&k.dropout, defaults::DROPOUT);
    let default_norm = match method {
        Method::Bidora => defaults::NORM_BIDORA,
        _ => defaults::NORM_DORA,
    };
    let mut c = AdapterConfig::new(am).with_rank(rank, alpha);
    c.dropout = dropout;
    c.init_a = k.init.unwrap_or(defaults::INIT);
    c.norm_mode = k.norm.unwrap_or(default_norm);
    c.low_rank_norm = k.low_rank_norm;
    c.use_scaling = !k.no_scaling;
    if let Some(t) = &k.targets {
        c = c.with_targets(t.clone());
    }
    c.validate().usage()?;
    Ok(Some(c))
}

/// The engine's settings but for the run length (filled in by [`Settings::train_config`]).
fn train_config(k: &Knobs, method: Method, seed: u64) -> Result<TrainConfig, Fail> {
    let bilevel = method == Method::Bidora;
    if k.retrain && !bilevel {
        return Err(usage(
            "`retrain` is a BiDoRA phase: use it with --method bidora",
        ));
    }
    let default_lr = if method == Method::Full {
        defaults::LR_FULL
    } else {
        defaults::LR
    };
    let lower_lr = pick(&k.lower_lr, default_lr);
    let lower_wd = pick(&k.lower_weight_decay, defaults::WEIGHT_DECAY);
    let level = |lr: f64, wd: f64| LevelConfig {
        lr,
        weight_decay: wd,
        ..LevelConfig::default()
    };
    let upper = level(
        pick(&k.upper_lr, lower_lr),
        pick(&k.upper_weight_decay, lower_wd),
    );
    // The engine's own check is the one validation of these values.
    let config = TrainConfig {
        mode: if bilevel {
            Mode::Bilevel
        } else {
            Mode::SingleLevel
        },
        iterations: 1,
        unroll: pick(&k.unroll, defaults::UNROLL),
        gamma: if bilevel {
            pick(&k.gamma, defaults::GAMMA)
        } else {
            0.0
        },
        hypergradient: hypergradient(k),
        fd_fraction: pick(&k.fd_fraction, defaults::FD_FRACTION),
        lower: level(lower_lr, lower_wd),
        upper,
        schedule: schedule(k)?,
        clip_grad_norm: k.clip_grad_norm,
        eval_every: k.eval_every,
        checkpoint_every: k.checkpoint_every.or(k.eval_every),
        seed,
        retrain: None,
    };
    config.validate().usage()?;
    Ok(config)
}

fn schedule(k: &Knobs) -> Result<Schedule, Fail> {
    Ok(match k.schedule.unwrap_or(defaults::SCHEDULE) {
        ScheduleKind::Constant => Schedule::Constant,
        ScheduleKind::Linear => {
            let w = pick(&k.warmup, defaults::WARMUP);
            if !(0.0..1.0).contains(&w) {
                return Err(usage(format!("`warmup` must be in [0, 1), got {w}")));
            }
            Schedule::LinearWarmupDecay { warmup_fraction: w }
        }
    })
}

fn hypergradient(k: &Knobs) -> Hypergradient {
    let fd_alpha = pick(&k.fd_alpha, defaults::FD_ALPHA);
    match k.hypergradient.unwrap_or(defaults::HYPERGRADIENT) {
        HypergradientMethod::FirstOrder => Hypergradient::FirstOrder,
        HypergradientMethod::Darts => Hypergradient::Darts {
            alpha: fd_alpha,
            xi: pick(&k.xi, defaults::XI),
        },
        HypergradientMethod::Neumann => Hypergradient::Neumann {
            iterations: pick(&k.neumann_iterations, defaults::NEUMANN_ITERATIONS),
            alpha: pick(&k.neumann_alpha, defaults::NEUMANN_ALPHA),
        },
    }
}

impl Settings {
    /// Fills the defaults ([`crate::defaults`]) and checks every value.
    pub fn resolve(k: Knobs) -> Result<Self, Fail> {
        let task = k
            .task
            .clone()
            .ok_or_else(|| usage("no task: pass --task (or `task` in the config file)"))?;
        bidora_data::tasks::task(&task).usage()?;
        let model = k.model.clone().ok_or_else(|| {
            usage("no model: pass --model DIR (an HF model folder, or a .gguf decoder)")
        })?;
        let data = k
            .data
            .clone()
            .ok_or_else(|| usage("no data: pass --data DIR (the task's data folder)"))?;
        let method = k.method.unwrap_or(defaults::METHOD);
        let (backend, devices) = devices(&k)?;
        let peer_timeout = pick(&k.peer_timeout, defaults::PEER_TIMEOUT_S);
        let peer_timeout = std::time::Duration::try_from_secs_f64(peer_timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                usage(format!(
                    "`peer_timeout` must be a positive number of seconds, got {peer_timeout}"
                ))
            })?;
        let out = k
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("runs/{task}-{}", method.name())));
        let seed = pick(&k.seed, defaults::SEED);
        let batch_size = pick(&k.batch_size, defaults::BATCH_SIZE);
        let max_length = pick(&k.max_length, defaults::MAX_LENGTH);
        if batch_size == 0 || max_length < 2 {
            return Err(usage("`batch_size` must be ≥ 1 and `max_length` ≥ 2"));
        }
        let val_fraction = pick(&k.val_fraction, defaults::VAL_FRACTION);
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(usage(format!(
                "`val_fraction` must be in (0, 1), got {val_fraction}"
            )));
        }
        if let Some(h) = k.holdout {
            if !(h > 0.0 && h < 1.0) {
                return Err(usage(format!("`holdout` must be in (0, 1), got {h}")));
            }
        }
        let length = match (k.iterations, k.epochs) {
            (Some(0), _) => return Err(usage("`iterations` must be at least 1")),
            (Some(n), _) => Length::Iterations(n),
            (None, e) => Length::Epochs(positive("epochs", e.unwrap_or(defaults::EPOCHS))?),
        };
        if k.threads == Some(0) {
            return Err(usage("`threads` must be at least 1"));
        }
        if k.eval_examples == Some(0) || k.beams == Some(0) || k.max_new_tokens == Some(0) {
            return Err(usage(
                "`eval_examples`, `beams` and `max_new_tokens` must be at least 1",
            ));
        }
        let adapter = adapter_config(&k, method)?;
        let train = train_config(&k, method, seed)?;
        let mut filled = k.clone();
        filled.task = Some(task.clone());
        filled.method = Some(method);
        filled.backend = backend;
        filled.out = Some(out.clone());
        filled.seed = Some(seed);
        filled.batch_size = Some(batch_size);
        filled.max_length = Some(max_length);
        Ok(Settings {
            knobs: filled,
            task,
            model,
            data,
            method,
            devices,
            peer_timeout,
            out,
            seed,
            adapter,
            batch_size,
            max_length,
            val_fraction,
            holdout: k.holdout,
            train_eval: k.train_eval.unwrap_or(0),
            length,
            train,
            squared_ortho: k.squared_ortho,
            eval_examples: k.eval_examples,
            max_new_tokens: pick(&k.max_new_tokens, defaults::MAX_NEW_TOKENS),
            beams: pick(&k.beams, 1),
        })
    }

    /// The engine's settings for `steps_per_epoch` lower-level batches per pass.
    pub fn train_config(&self, steps_per_epoch: usize) -> Result<TrainConfig, Fail> {
        let iterations = match self.length {
            Length::Iterations(n) => n,
            Length::Epochs(e) => ((e * steps_per_epoch as f64).round() as usize).max(1),
        };
        let mut c = self.train.clone();
        c.iterations = iterations;
        let every = c
            .eval_every
            .unwrap_or(steps_per_epoch.max(1))
            .min(iterations);
        c.eval_every = Some(every);
        c.checkpoint_every = Some(c.checkpoint_every.unwrap_or(every));
        if self.knobs.retrain {
            c.retrain = Some(RetrainConfig {
                iterations: self.knobs.retrain_iterations.unwrap_or(iterations),
                level: LevelConfig {
                    lr: self.knobs.retrain_lr.unwrap_or(c.lower.lr),
                    weight_decay: self
                        .knobs
                        .retrain_weight_decay
                        .unwrap_or(c.lower.weight_decay),
                    ..c.lower
                },
            });
        }
        c.validate().usage()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(toml_text: &str) -> Knobs {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file =
            knobs("task = \"mrpc\"\nmodel = \"m\"\ndata = \"d\"\nrank = 4\nlower_lr = 0.1\n");
        let flags = Knobs {
            lower_lr: Some(0.2),
            epochs: Some(2.0),
            ..Knobs::default()
        };
        let s = Settings::resolve(file.overlaid(&flags).unwrap()).unwrap();
        assert_eq!(s.method, Method::Bidora);
        assert_eq!(s.train.lower.lr, 0.2);
        // The upper level defaults to the lower level's rate.
        assert_eq!(s.train.upper.lr, 0.2);
        let a = s.adapter.clone().unwrap();
        assert_eq!(a.r, 4);
        assert_eq!(a.alpha, 8.0);
        assert_eq!(a.norm_mode, NormMode::Exact);
        assert_eq!(s.train.gamma, 1e-5);
        assert_eq!(
            s.train.schedule,
            Schedule::LinearWarmupDecay {
                warmup_fraction: 0.1
            }
        );
        assert_eq!(s.out, PathBuf::from("runs/mrpc-bidora"));
        // 2 epochs of 10 batches; evaluation and checkpoints once per epoch.
        let c = s.train_config(10).unwrap();
        assert_eq!(c.iterations, 20);
        assert_eq!(c.eval_every, Some(10));
        assert_eq!(c.checkpoint_every, Some(10));
        // The resolved knobs, saved and read back, resolve to the same run.
        let saved = toml::to_string(&s.knobs).unwrap();
        let again = Settings::resolve(knobs(&saved)).unwrap();
        assert_eq!(again.train_config(10).unwrap(), c);
    }

    #[test]
    fn baselines_get_their_own_defaults() {
        let base = "task = \"rte\"\nmodel = \"m\"\ndata = \"d\"\n";
        let full = Settings::resolve(knobs(&format!("{base}method = \"full\"\n"))).unwrap();
        assert!(full.adapter.is_none());
        assert_eq!(full.train.lower.lr, 2e-5);
        assert_eq!(full.train.mode, Mode::SingleLevel);
        let dora = Settings::resolve(knobs(&format!("{base}method = \"dora\"\n"))).unwrap();
        assert_eq!(dora.adapter.unwrap().norm_mode, NormMode::Detached);
        // No regulariser outside BiDoRA.
        assert_eq!(dora.train.gamma, 0.0);
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_key() {
        let base = "task = \"rte\"\nmodel = \"m\"\ndata = \"d\"\n";
        for (extra, needle) in [
            ("val_fraction = 1.5", "val_fraction"),
            ("holdout = 0.0", "holdout"),
            ("holdout = 1.0", "holdout"),
            ("fd_fraction = 1.5", "fd_fraction"),
            ("fd_fraction = 0.0", "fd_fraction"),
            ("method = \"lora\"\nretrain = true", "retrain"),
            ("dropout = 1.0", "dropout"),
            ("iterations = 0", "iterations"),
            ("lower_lr = -1.0", "lower.lr"),
            ("upper_weight_decay = -0.1", "upper.weight_decay"),
            ("fd_alpha = 0.0", "alpha"),
            ("gamma = -1.0", "gamma"),
        ] {
            let err = Settings::resolve(knobs(&format!("{base}{extra}\n"))).unwrap_err();
            assert_eq!(err.code, crate::fail::Code::Usage);
            assert!(
                err.error.to_string().contains(needle),
                "{extra}: {}",
                err.error
            );
        }
        // Unknown keys and unknown names of the typed options are errors naming them.
        for (text, needle) in [
            ("rnak = 4\n", "rnak"),
            ("hypergradient = \"cg\"\n", "cg"),
            ("method = \"qlora\"\n", "qlora"),
            ("norm = \"approx\"\n", "approx"),
        ] {
            let err = toml::from_str::<Knobs>(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
