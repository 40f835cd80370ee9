//! What a run reports and what it is given: phases, evaluations, events and the hooks that
//! receive them, the data streams, and the outcome.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stream::BatchStream;

/// The phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Single-level training, or BiDoRA's bi-level search.
    Search,
    /// BiDoRA's retraining of the direction with frozen magnitudes.
    Retrain,
}

/// An evaluation: named metrics and which one ranks runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Metric values by name.
    pub metrics: BTreeMap<String, f64>,
    /// The metric that decides "best".
    pub primary: String,
    /// Whether a larger primary metric is better.
    pub higher_is_better: bool,
    /// Quantities measured with the evaluation that do not rank runs (the CLI records each
    /// adapted layer's magnitude drift here, as `magnitude_drift.<layer path>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub diagnostics: BTreeMap<String, f64>,
}

impl Evaluation {
    /// An evaluation with one metric.
    pub fn single(name: &str, value: f64, higher_is_better: bool) -> Self {
        Evaluation {
            metrics: BTreeMap::from([(name.to_string(), value)]),
            primary: name.to_string(),
            higher_is_better,
            diagnostics: BTreeMap::new(),
        }
    }

    /// The primary metric's value (NaN when missing).
    pub fn score(&self) -> f64 {
        self.metrics.get(&self.primary).copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn better_than(&self, other: &Evaluation) -> bool {
        let (a, b) = (self.score(), other.score());
        if b.is_nan() {
            return !a.is_nan();
        }
        if self.higher_is_better {
            a > b
        } else {
            a < b
        }
    }
}

/// What the engine reports while it runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A phase begins.
    PhaseStart {
        /// Which.
        phase: Phase,
        /// Its number of steps.
        total: usize,
        /// Its first step (non-zero when resuming).
        from: usize,
    },
    /// One step finished.
    Step {
        /// Phase.
        phase: Phase,
        /// Step index within the phase (0-based).
        step: usize,
        /// Steps in the phase.
        total: usize,
        /// Lower objective (`L_tr + γR`) on the step's batch.
        lower_loss: f64,
        /// Upper loss on the validation batch, when an upper step ran.
        upper_loss: Option<f64>,
        /// Learning rates used (lower, upper).
        lr: (f64, f64),
        /// When an upper step ran: `‖∂L_val/∂M‖` and the norm of the second-order term the
        /// hypergradient subtracts from it (`None` for first order), before clipping.
        hypergradient_norms: Option<(f64, Option<f64>)>,
    },
    /// An evaluation.
    Eval {
        /// Phase.
        phase: Phase,
        /// Step index (the evaluation follows this step).
        step: usize,
        /// The result.
        evaluation: Evaluation,
        /// Whether it is the best so far.
        is_best: bool,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The phase it was written in.
        phase: Phase,
        /// Completed steps in the phase.
        step: usize,
        /// The file.
        path: PathBuf,
    },
}

/// Whether the run goes on after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Stop now (as an interruption would); the outcome reports what was done.
    Stop,
}

/// The data of a run.
pub struct Data<'a, T> {
    /// Training batches (D_tr for BiDoRA; the whole train set for single-level runs).
    pub train: &'a mut dyn BatchStream<Batch = T>,
    /// Validation batches (D_val), for the upper level.
    pub val: Option<&'a mut dyn BatchStream<Batch = T>>,
    /// Retraining batches (D_tr ∪ D_val).
    pub retrain: Option<&'a mut dyn BatchStream<Batch = T>>,
}

/// An evaluation callback.
pub type EvalFn<'a, M> = &'a mut dyn FnMut(&M) -> Evaluation;

/// Callbacks of a run.
pub struct Hooks<'a, M> {
    /// Called with every event.
    pub on_event: Option<&'a mut dyn FnMut(&Event) -> Control>,
    /// Evaluates the module (switch to the inner backend with `valid()` inside).
    pub evaluate: Option<EvalFn<'a, M>>,
    /// Where checkpoints are written (one file, replaced atomically).
    pub checkpoint: Option<PathBuf>,
    /// The identity of the frozen part of the module (e.g. a fingerprint of the base model's
    /// files). Checkpoints hold only the trained parameters, so a resume rebuilds the rest
    /// from the base model: it is refused when the checkpoint names another identity.
    pub base_identity: Option<String>,
}

impl<M> Default for Hooks<'_, M> {
    fn default() -> Self {
        Hooks {
            on_event: None,
            evaluate: None,
            checkpoint: None,
            base_identity: None,
        }
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome<M> {
    /// The trained module.
    pub module: M,
    /// Whether every phase ran to its end (false when a hook stopped the run).
    pub completed: bool,
    /// The evaluation after the last step.
    pub final_eval: Option<Evaluation>,
    /// The best evaluation: phase, step, value.
    pub best_eval: Option<(Phase, usize, Evaluation)>,
}
