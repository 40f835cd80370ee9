//! The records of a run's `metrics.jsonl`: one JSON object per line, tagged by `event`.
//!
//! ```json
//! {"event":"baseline","phase":"search","step":0,"metrics":{"accuracy":0.5}}
//! {"event":"step","phase":"search","step":0,"lower_loss":0.69,"upper_loss":0.70,"lr_lower":1e-4,"lr_upper":1e-4,"direct_norm":0.02,"mixed_norm":0.05}
//! {"event":"eval","phase":"search","step":7,"metrics":{"accuracy":0.75},"is_best":true,"diagnostics":{"magnitude_drift.bert.encoder.layer.0.attention.self.query":0.012}}
//! {"event":"checkpoint","phase":"search","step":8}
//! ```
//!
//! `step` is the 0-based index of the step a `step` or `eval` record follows, and the number of
//! completed steps for a `checkpoint` record (as in the engine's events). Records of the
//! retraining phase also carry `global_step`, counted from the start of the search.

use std::collections::BTreeMap;

use crate::{Metrics, Phase};
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// The untrained model's dev metrics, before the first step.
    Baseline {
        /// Always the search.
        phase: Phase,
        /// Always 0.
        step: usize,
        /// Metric values by name.
        metrics: Metrics,
    },
    /// One training step.
    Step {
        /// The phase.
        phase: Phase,
        /// Step index within the phase.
        step: usize,
        /// Step index from the start of the search (retraining records only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        global_step: Option<usize>,
        /// Lower objective `L_tr + γR` on the step's batch.
        lower_loss: f64,
        /// Upper loss on the validation batch, when an upper step ran.
        upper_loss: Option<f64>,
        /// Lower-level learning rate of the step.
        lr_lower: f64,
        /// Upper-level learning rate of the step.
        lr_upper: f64,
        /// BiDoRA, when an upper step ran: `‖∂L_val/∂M‖`, the hypergradient's direct term.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct_norm: Option<f64>,
        /// BiDoRA (DARTS / Neumann), when an upper step ran: the norm of the second-order
        /// term subtracted from the direct one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mixed_norm: Option<f64>,
    },
    /// A dev evaluation after a step.
    Eval {
        /// The phase.
        phase: Phase,
        /// Index of the step it follows.
        step: usize,
        /// Step index from the start of the search (retraining records only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        global_step: Option<usize>,
        /// Metric values by name.
        metrics: Metrics,
        /// Whether it is the best so far.
        is_best: bool,
        /// Quantities measured with the evaluation that do not rank runs: each adapted layer's
        /// magnitude drift `‖m − ‖W0‖‖ / ‖‖W0‖‖` as `magnitude_drift.<layer path>` (DoRA and
        /// BiDoRA).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        diagnostics: BTreeMap<String, f64>,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The phase.
        phase: Phase,
        /// Completed steps in the phase.
        step: usize,
    },
}

/// A point of a run: the phase and the steps completed in it. Points order like time.
pub type Point = (u8, usize);

/// The point of a checkpoint written in `phase` after `step` completed steps.
pub fn point(phase: Phase, step: usize) -> Point {
    let rank = match phase {
        Phase::Search => 0,
        Phase::Retrain => 1,
    };
    (rank, step)
}

impl Record {
    /// The phase the record belongs to.
    pub fn phase(&self) -> Phase {
        match self {
            Record::Baseline { phase, .. }
            | Record::Step { phase, .. }
            | Record::Eval { phase, .. }
            | Record::Checkpoint { phase, .. } => *phase,
        }
    }

    /// The point at which the record is written: after how many completed steps of its phase.
    pub fn point(&self) -> Point {
        match self {
            Record::Baseline { phase, step, .. } | Record::Checkpoint { phase, step } => {
                point(*phase, *step)
            }
            Record::Step { phase, step, .. } | Record::Eval { phase, step, .. } => {
                point(*phase, step + 1)
            }
        }
    }

    /// The step on the plots' x axis (retraining continues after the search).
    pub fn plot_step(&self) -> f64 {
        match self {
            Record::Step {
                step, global_step, ..
            }
            | Record::Eval {
                step, global_step, ..
            } => global_step.unwrap_or(*step) as f64,
            Record::Baseline { step, .. } | Record::Checkpoint { step, .. } => *step as f64,
        }
    }

    /// One JSON line (no newline).
    pub fn to_line(&self) -> String {
        // A record of numbers, strings and maps with string keys always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The records a run resumed from the checkpoint at `(phase, step)` keeps of its log: exactly
/// those an uninterrupted run had written by then, in their order. Lines written after the
/// checkpoint, and a line cut short by the kill, are dropped; the checkpoint's own record is
/// added when the kill came between writing the checkpoint and logging it. Each kept record
/// comes with its line as written (re-serialising could change the last digit of a float).
pub fn kept_on_resume(log: &str, phase: Phase, step: usize) -> Vec<(String, Record)> {
    let at = point(phase, step);
    let mut kept: Vec<(String, Record)> = log
        .lines()
        .filter_map(|line| Some((line.to_string(), serde_json::from_str::<Record>(line).ok()?)))
        .filter(|(_, r)| r.point() <= at)
        .collect();
    let logged = kept
        .iter()
        .any(|(_, r)| matches!(r, Record::Checkpoint { .. }) && r.point() == at);
    if !logged {
        let r = Record::Checkpoint { phase, step };
        kept.push((r.to_line(), r));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(phase: Phase, step: usize) -> Record {
        Record::Step {
            phase,
            step,
            global_step: None,
            lower_loss: 0.5,
            upper_loss: None,
            lr_lower: 1e-3,
            lr_upper: 0.0,
            direct_norm: None,
            mixed_norm: None,
        }
    }

    fn log(records: &[Record]) -> String {
        records.iter().map(|r| r.to_line() + "\n").collect()
    }

    fn kept(log: &str, phase: Phase, step: usize) -> Vec<Record> {
        kept_on_resume(log, phase, step)
            .into_iter()
            .map(|(line, r)| {
                assert_eq!(line, r.to_line());
                r
            })
            .collect()
    }

    #[test]
    fn lines_have_the_documented_shape_and_round_trip() {
        let r = Record::Checkpoint {
            phase: Phase::Retrain,
            step: 8,
        };
        assert_eq!(
            r.to_line(),
            r#"{"event":"checkpoint","phase":"retrain","step":8}"#
        );
        let s = step(Phase::Search, 3);
        assert_eq!(
            s.to_line(),
            r#"{"event":"step","phase":"search","step":3,"lower_loss":0.5,"upper_loss":null,"lr_lower":0.001,"lr_upper":0.0}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&s.to_line()).unwrap(), s);
    }

    #[test]
    fn resume_keeps_what_came_before_the_checkpoint_once() {
        let ck = |p, k| Record::Checkpoint { phase: p, step: k };
        let before = vec![
            step(Phase::Search, 0),
            step(Phase::Search, 1),
            ck(Phase::Search, 2),
        ];
        // Steps 2 and 3 (0-based) ran after the checkpoint at 2 completed steps, the last line
        // was cut by the kill.
        let mut text = log(&before);
        text.push_str(&log(&[step(Phase::Search, 2), step(Phase::Search, 3)]));
        text.push_str(r#"{"event":"step","pha"#);
        assert_eq!(kept(&text, Phase::Search, 2), before);
        // Killed after the checkpoint was written but before it was logged.
        let text = log(&before[..2]);
        assert_eq!(kept(&text, Phase::Search, 2), before);
        // A retraining checkpoint keeps the whole search.
        let mut all = before.clone();
        all.push(step(Phase::Retrain, 0));
        all.push(ck(Phase::Retrain, 1));
        let mut text = log(&all);
        text.push_str(&log(&[step(Phase::Retrain, 1)]));
        assert_eq!(kept(&text, Phase::Retrain, 1), all);
    }
}
