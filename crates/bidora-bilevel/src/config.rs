//! What shapes a run: one level or two, iterations, γ, the hypergradient, each level's
//! optimiser, the schedule, evaluation and checkpoint cadence, the seed and the optional
//! retraining phase. Defaults follow docs/METHOD.md; [`TrainConfig::validate`] is the one check.

use serde::{Deserialize, Serialize};

use crate::hypergrad::Hypergradient;
use crate::schedule::{LevelConfig, Schedule};
use crate::TrainError;

/// Weight γ of the orthogonality regulariser (docs/METHOD.md §3).
pub const DEFAULT_GAMMA: f64 = 1e-5;

/// The fraction of the training batch the hypergradient's finite-difference passes use: all
/// of it (docs/METHOD.md §4).
pub const DEFAULT_FD_FRACTION: f64 = 1.0;

/// One level or two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every trainable parameter (lower ∪ upper groups) by one optimiser on the training
    /// stream: LoRA, DoRA, full fine-tuning, and BiDoRA's γ/first-order ablations' baselines.
    SingleLevel,
    /// BiDoRA: lower group on the training stream, upper group on the validation stream.
    #[default]
    Bilevel,
}

/// Settings of the optional retraining phase (docs/METHOD.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// Steps of retraining.
    pub iterations: usize,
    /// Optimiser of the direction during retraining.
    pub level: LevelConfig,
}

/// Everything that shapes a run. Defaults follow docs/METHOD.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// One level or two.
    pub mode: Mode,
    /// Lower-level steps of the search (or of single-level training).
    pub iterations: usize,
    /// An upper step after every `unroll` lower steps.
    pub unroll: usize,
    /// Weight of the regulariser in the lower objective.
    pub gamma: f64,
    /// Hypergradient approximation.
    pub hypergradient: Hypergradient,
    /// The fraction of the training batch (its first examples) on which the DARTS / Neumann
    /// finite-difference passes run, in `(0, 1]`: below 1 the mixed term is estimated on a
    /// sub-batch ([`crate::BilevelProblem::sub_batch`]), cheaper and noisier.
    pub fd_fraction: f64,
    /// Lower-level optimiser (the only one in single-level mode).
    pub lower: LevelConfig,
    /// Upper-level optimiser.
    pub upper: LevelConfig,
    /// Learning-rate schedule of every level and phase.
    pub schedule: Schedule,
    /// Global-norm gradient clipping, per level.
    pub clip_grad_norm: Option<f64>,
    /// Evaluate every this many steps (and always at the end of each phase).
    pub eval_every: Option<usize>,
    /// Write a checkpoint every this many steps (needs a checkpoint path).
    pub checkpoint_every: Option<usize>,
    /// Seed of the per-step random state (dropout).
    pub seed: u64,
    /// The retraining phase, if any.
    pub retrain: Option<RetrainConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            mode: Mode::Bilevel,
            iterations: 1000,
            unroll: 1,
            gamma: DEFAULT_GAMMA,
            hypergradient: Hypergradient::default(),
            fd_fraction: DEFAULT_FD_FRACTION,
            lower: LevelConfig::default(),
            upper: LevelConfig::default(),
            schedule: Schedule::default(),
            clip_grad_norm: None,
            eval_every: None,
            checkpoint_every: None,
            seed: 0,
            retrain: None,
        }
    }
}

impl TrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.iterations == 0 {
            return bad("`iterations` must be at least 1");
        }
        if self.unroll == 0 {
            return bad("`unroll` must be at least 1");
        }
        if !(self.fd_fraction > 0.0 && self.fd_fraction <= 1.0) {
            return Err(TrainError::Config(format!(
                "`fd_fraction` must be in (0, 1], got {}",
                self.fd_fraction
            )));
        }
        if !self.gamma.is_finite() || self.gamma < 0.0 {
            return bad("`gamma` must be a non-negative number");
        }
        let levels = [("lower", Some(&self.lower)), ("upper", Some(&self.upper))];
        let retrain = [("retrain", self.retrain.as_ref().map(|r| &r.level))];
        for (name, level) in levels.iter().chain(&retrain) {
            let Some(level) = level else { continue };
            for (what, v) in [("lr", level.lr), ("weight_decay", level.weight_decay)] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(TrainError::Config(format!(
                        "`{name}.{what}` must be a non-negative number, got {v}"
                    )));
                }
            }
        }
        if self.eval_every == Some(0) || self.checkpoint_every == Some(0) {
            return bad("`eval_every` and `checkpoint_every` must be at least 1 when set");
        }
        if let Some(r) = &self.retrain {
            if r.iterations == 0 {
                return bad("`retrain.iterations` must be at least 1");
            }
        }
        if let Some(c) = self.clip_grad_norm {
            if c.is_nan() || c <= 0.0 {
                return bad("`clip_grad_norm` must be positive");
            }
        }
        match self.hypergradient {
            Hypergradient::Darts { alpha, .. } | Hypergradient::Neumann { alpha, .. }
                if alpha.is_nan() || alpha <= 0.0 =>
            {
                bad("the hypergradient's `alpha` must be positive")
            }
            _ => Ok(()),
        }
    }
}
