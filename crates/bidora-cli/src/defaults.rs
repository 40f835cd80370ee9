//! The defaults of `bidora train`, each written once: `--help` prints these values,
//! `Settings::resolve` fills unset knobs with them, and where the method fixes a value the
//! constant is the library's own.
//!
//! Two groups differ on purpose from the library's `Default`s, which follow HF PEFT because
//! they are also the fallbacks for PEFT adapter files that omit a key: the adapter scale
//! (`alpha = 2 × rank` here, PEFT's `alpha = 8`) and the adapter dropout (0.1 here, PEFT's 0).
//! The learning rates (5e-4 for adapters, 2e-5 for full fine-tuning) and the weight decay (0.01)
//! are the CLI's, not the paper's RoBERTa-base recipe (`LevelConfig::default`: 5e-5, 0.1); they
//! have not been tuned on the validation split yet (the learning-rate search of the results
//! issue does that).

use bidora_adapters::{InitA, NormMode};
use bidora_bilevel::HypergradientMethod;

use crate::config::{Method, ScheduleKind};

/// Training method.
pub const METHOD: Method = Method::Bidora;
/// Backend.
pub const BACKEND: &str = "cpu";
/// Seed of the split, the initialisation, the batch order and dropout.
pub const SEED: u64 = 0;
/// Data parallelism: seconds a peer waits for the others at an exchange.
pub const PEER_TIMEOUT_S: f64 = bidora_bilevel::collective::DEFAULT_PEER_TIMEOUT.as_secs_f64();
/// Adapter rank `r`.
pub const RANK: usize = 8;
/// `alpha = ALPHA_PER_RANK × r`, so the update is scaled by 2.
pub const ALPHA_PER_RANK: f64 = 2.0;
/// Dropout on the adapter's input.
pub const DROPOUT: f64 = 0.1;
/// Initialisation of `A` (PEFT's Kaiming-uniform).
pub const INIT: InitA = InitA::Kaiming;
/// DoRA norm for BiDoRA (the BiDoRA code differentiates through it) ...
pub const NORM_BIDORA: NormMode = NormMode::Exact;
/// ... and for DoRA (PEFT detaches it).
pub const NORM_DORA: NormMode = NormMode::Detached;
/// Passes over the (lower-level) training data.
pub const EPOCHS: f64 = 3.0;
/// Examples per batch.
pub const BATCH_SIZE: usize = 16;
/// Longest input in tokens (training and `eval`).
pub const MAX_LENGTH: usize = 128;
/// Longest input in tokens for `predict` (BERT-family position limit).
pub const PREDICT_MAX_LENGTH: usize = 512;
/// `bidora generate`: new tokens at most.
pub const MAX_NEW_TOKENS: usize = 64;
/// Examples per forward pass when evaluating or predicting (at least this many in training's
/// dev evaluations).
pub const EVAL_BATCH_SIZE: usize = 32;
/// BiDoRA's validation split (docs/METHOD.md §3).
pub const VAL_FRACTION: f64 = 0.2;
/// BiDoRA's regulariser weight γ.
pub const GAMMA: f64 = bidora_bilevel::DEFAULT_GAMMA;
/// An upper step after every `UNROLL` lower steps.
pub const UNROLL: usize = 1;
/// Hypergradient.
pub const HYPERGRADIENT: HypergradientMethod = HypergradientMethod::Darts;
/// DARTS / Neumann finite-difference step numerator.
pub const FD_ALPHA: f64 = bidora_bilevel::DEFAULT_FD_ALPHA;
/// DARTS / Neumann: the fraction of the training batch the finite differences use.
pub const FD_FRACTION: f64 = bidora_bilevel::DEFAULT_FD_FRACTION;
/// DARTS mixed-term weight ξ.
pub const XI: f64 = bidora_bilevel::DEFAULT_XI;
/// Neumann series terms.
pub const NEUMANN_ITERATIONS: usize = bidora_bilevel::DEFAULT_NEUMANN_ITERATIONS;
/// Neumann series step.
pub const NEUMANN_ALPHA: f64 = bidora_bilevel::DEFAULT_NEUMANN_ALPHA;
/// Peak learning rate of adapter methods.
pub const LR: f64 = 5e-4;
/// Peak learning rate of full fine-tuning.
pub const LR_FULL: f64 = 2e-5;
/// Weight decay of each level.
pub const WEIGHT_DECAY: f64 = 0.01;
/// Learning-rate schedule.
pub const SCHEDULE: ScheduleKind = ScheduleKind::Linear;
/// Warm-up fraction (docs/METHOD.md §4).
pub const WARMUP: f64 = bidora_bilevel::DEFAULT_WARMUP;

/// The command-line name of an option's value (`darts`, `kaiming`, ...).
pub fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// `text [default: value]`, for `--help`.
pub fn help(text: &str, value: impl std::fmt::Display) -> String {
    format!("{text} [default: {value}]")
}
