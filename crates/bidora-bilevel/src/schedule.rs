//! Learning-rate schedules and per-level optimiser settings.

use burn::optim::AdamWConfig;
use serde::{Deserialize, Serialize};

/// How the learning rate evolves over a phase of `total` steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Linear warm-up from 0 over the first `warmup_fraction` of the steps, then linear decay
    /// to 0 at the last step (HF transformers' `get_linear_schedule_with_warmup`).
    LinearWarmupDecay {
        /// Fraction of the steps spent warming up (docs/METHOD.md §4: 0.1).
        warmup_fraction: f64,
    },
}

/// Fraction of each phase spent warming up (docs/METHOD.md §4).
pub const DEFAULT_WARMUP: f64 = 0.1;

impl Default for Schedule {
    fn default() -> Self {
        Schedule::LinearWarmupDecay {
            warmup_fraction: DEFAULT_WARMUP,
        }
    }
}

impl Schedule {
    /// The multiplier of the base rate at `step` (0-based) of `total`.
    pub fn factor(&self, step: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::LinearWarmupDecay { warmup_fraction } => {
                let warmup = (warmup_fraction * total as f64).round() as usize;
                if step < warmup {
                    step as f64 / warmup.max(1) as f64
                } else {
                    let remaining = total.saturating_sub(step) as f64;
                    let span = total.saturating_sub(warmup).max(1) as f64;
                    (remaining / span).max(0.0)
                }
            }
        }
    }
}

/// AdamW settings of one level (docs/METHOD.md §4: betas (0.9, 0.98), eps 1e-6, decoupled weight
/// decay, bias correction).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
}

impl Default for LevelConfig {
    fn default() -> Self {
        LevelConfig {
            lr: 5e-5,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
        }
    }
}

impl LevelConfig {
    /// A level with this learning rate and the other defaults.
    pub fn with_lr(lr: f64) -> Self {
        LevelConfig {
            lr,
            ..Default::default()
        }
    }

    /// Burn's AdamW with these settings.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.eps as f32)
            .with_weight_decay(self.weight_decay as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay_like_hf() {
        let s = Schedule::default();
        // 100 steps, 10 of warm-up.
        assert_eq!(s.factor(0, 100), 0.0);
        assert_eq!(s.factor(5, 100), 0.5);
        assert_eq!(s.factor(10, 100), 1.0);
        assert_eq!(s.factor(55, 100), 0.5);
        assert_eq!(s.factor(100, 100), 0.0);
        assert_eq!(Schedule::Constant.factor(99, 100), 1.0);
        // No warm-up steps at all.
        let s = Schedule::LinearWarmupDecay {
            warmup_fraction: 0.0,
        };
        assert_eq!(s.factor(0, 4), 1.0);
        assert_eq!(s.factor(2, 4), 0.5);
    }
}
