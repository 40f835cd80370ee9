//! The training engine of bidora: single-level training (LoRA, DoRA, full fine-tuning) and
//! BiDoRA's bi-level optimisation (docs/METHOD.md §3–5), for any Burn module.
//!
//! The engine knows nothing about transformers. It is given
//!
//! - a [`BilevelProblem`]: the module type, a batch type, the lower and upper losses and an
//!   optional regulariser;
//! - [`ParamGroups`]: which `ParamId`s each level optimises (for adapters,
//!   `ParamGroups::new(partition.lower(), partition.upper())` from a `bidora_adapters::ParamPartition`);
//! - a [`TrainConfig`]: iterations, unroll, γ, the [`Hypergradient`] method, AdamW per level,
//!   schedule, evaluation and checkpoint cadence, seed, optional retraining;
//! - [`Data`] streams ([`BatchStream`], e.g. [`ShuffledBatches`]) and [`Hooks`] (events,
//!   evaluation, checkpoint path).
//!
//! One search iteration: a lower AdamW step on a training batch with `L + γR`; every `unroll`
//! lower steps, an upper AdamW step on a validation batch with the hypergradient. Second-order
//! terms are central finite differences of gradients on perturbed *copies* of the module, so the
//! lower parameters are bit-for-bit what they were after an upper step.
//!
//! Checkpoints ([`Checkpoint`]) hold the module, both optimisers, the stream positions and the
//! step; the random state is re-derived from `(seed, phase, step)` at every step, so a resumed
//! run is bit-identical to an uninterrupted one on a deterministic backend.

pub mod checkpoint;
mod config;
mod error;
mod events;
pub mod hypergrad;
pub mod params;
pub mod problem;
mod resume;
pub mod schedule;
pub mod stream;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointState};
pub use error::TrainError;
pub use hypergrad::{hypergradient, Hypergradient};
pub use params::ParamVec;
pub use problem::{BilevelProblem, ParamGroups};
pub use schedule::{LevelConfig, Schedule};
pub use stream::{BatchStream, ShuffledBatches};
pub use trainer::{
    Control, Data, Evaluation, Event, Hooks, Mode, Outcome, Phase, RetrainConfig, TrainConfig,
    Trainer,
};
