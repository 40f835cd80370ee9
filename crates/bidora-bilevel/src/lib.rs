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
//!
//! Data parallelism ([`distributed`]): [`Trainer::with_peers`] trains as one of several peers
//! of a [`distributed::Collective`] (with feature `collective`,
//! [`collective::LocalPeers`] gives one peer per device over Burn's `burn-collective`). Every
//! peer takes its [`BilevelProblem::shard`] of each batch and every gradient, the validation
//! gradients and each finite difference of the hypergradient are averaged over the peers, so
//! every method trains as one peer on the whole batch would (tested to 2e-6 after 5 steps of
//! single-level training and of BiDoRA with DARTS and retraining).

//!
//! # Example: a bi-level problem in a few lines
//!
//! The lower level fits `θ` to the upper parameter `M` (`L_tr = (θ − M)²`); the upper level
//! wants `θ*(M) = 3` (`L_val = (θ − 3)²`). `L_val` does not depend on `M` directly, so only the
//! DARTS mixed term moves `M`, to 3. `examples/hyperparameters.rs` learns a ridge penalty per
//! feature the same way.
//!
//! ```
//! use bidora_bilevel::{BilevelProblem, Data, Hooks, LevelConfig, ParamGroups, Schedule};
//! use bidora_bilevel::{ShuffledBatches, TrainConfig, Trainer};
//! use burn::backend::{Autodiff, NdArray};
//! use burn::module::{Module, Param};
//! use burn::tensor::{backend::Backend, ElementConversion, Tensor};
//!
//! type AB = Autodiff<NdArray<f32>>;
//!
//! #[derive(Module, Debug)]
//! struct Pair<B: Backend> {
//!     theta: Param<Tensor<B, 1>>,
//!     m: Param<Tensor<B, 1>>,
//! }
//!
//! struct Fit;
//! impl BilevelProblem<AB> for Fit {
//!     type Module = Pair<AB>;
//!     type Batch = ();
//!     fn lower_loss(&self, p: &Pair<AB>, _: &()) -> Tensor<AB, 1> {
//!         (p.theta.val() - p.m.val()).square().sum()
//!     }
//!     fn upper_loss(&self, p: &Pair<AB>, _: &()) -> Tensor<AB, 1> {
//!         p.theta.val().sub_scalar(3.0).square().sum()
//!     }
//! }
//!
//! let device = Default::default();
//! let pair = Pair::<AB> {
//!     theta: Param::from_tensor(Tensor::zeros([1], &device)),
//!     m: Param::from_tensor(Tensor::zeros([1], &device)),
//! };
//! let groups = ParamGroups::new(vec![pair.theta.id], vec![pair.m.id]);
//! let config = TrainConfig {
//!     iterations: 400,
//!     gamma: 0.0,
//!     lower: LevelConfig { weight_decay: 0.0, ..LevelConfig::with_lr(0.05) },
//!     upper: LevelConfig { weight_decay: 0.0, ..LevelConfig::with_lr(0.05) },
//!     schedule: Schedule::Constant,
//!     ..TrainConfig::default() // bi-level, DARTS hypergradient
//! };
//! let trainer = Trainer::new(&Fit, groups, config, device).unwrap();
//! let (mut train, mut val) = (
//!     ShuffledBatches::new(vec![()], 1, 0, |_: &[&()]| ()).unwrap(),
//!     ShuffledBatches::new(vec![()], 1, 1, |_: &[&()]| ()).unwrap(),
//! );
//! let data = Data { train: &mut train, val: Some(&mut val), retrain: None };
//! let out = trainer.run(pair, data, Hooks::default(), None).unwrap();
//! let m: f32 = out.module.m.val().into_scalar().elem();
//! assert!((m - 3.0).abs() < 0.1, "M = {m}");
//! ```

pub mod checkpoint;
#[cfg(feature = "collective")]
pub mod collective;
mod config;
pub mod distributed;
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
pub use config::{DEFAULT_FD_FRACTION, DEFAULT_GAMMA};
pub use error::TrainError;
pub use hypergrad::{
    hypergradient, Hypergradient, HypergradientMethod, DEFAULT_FD_ALPHA, DEFAULT_NEUMANN_ALPHA,
    DEFAULT_NEUMANN_ITERATIONS, DEFAULT_XI,
};
pub use params::ParamVec;
pub use problem::{shard_rows, BilevelProblem, ParamGroups, Shard};
pub use schedule::{LevelConfig, Schedule, DEFAULT_WARMUP};
pub use stream::{BatchStream, ShuffledBatches};
pub use trainer::{
    Control, Data, Evaluation, Event, Hooks, Mode, Outcome, Phase, RetrainConfig, TrainConfig,
    Trainer,
};
