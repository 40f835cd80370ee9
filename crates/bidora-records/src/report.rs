//! `report.json` and `adapter/bidora.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Phase;

/// Metric values by name (`accuracy`, `f1`, `pearson`, ...).
pub type Metrics = BTreeMap<String, f64>;

/// `report.json`: what a finished run reached, and what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Task name.
    pub task: String,
    /// The evaluation set the metrics are on (`dev`, `heldout`, ...).
    pub eval_set: String,
    /// `lora`, `dora`, `bidora` or `full`.
    pub method: String,
    /// The base model's path.
    pub model: String,
    /// The metric that ranks evaluations.
    pub primary_metric: String,
    /// Metrics after the last step.
    #[serde(rename = "final")]
    pub final_metrics: Option<Metrics>,
    /// The best evaluation and when it happened.
    pub best: Option<BestEval>,
    /// Metrics of the untrained model.
    pub untrained: Option<Metrics>,
    /// Accuracy of always predicting the training set's most frequent class.
    pub majority_class_accuracy: Option<f64>,
    /// Parameter counts per group.
    pub parameters: ParameterCounts,
    /// Examples the lower level (or the single level) trains on.
    pub train_examples: usize,
    /// Examples of the upper level's validation split (BiDoRA only).
    pub validation_examples: Option<usize>,
    /// Steps of every phase.
    pub steps: usize,
    /// Whether the run was resumed from a checkpoint.
    pub resumed: bool,
    /// Wall time of the (last) process, seconds.
    pub wall_time_s: f64,
    /// Wall time of the whole run, seconds: this process's, plus the training time that
    /// earlier processes had put in up to the checkpoint it resumed from. Absent for a run
    /// resumed from a checkpoint that kept no time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_wall_time_s: Option<f64>,
    /// `steps / wall_time_s`.
    pub steps_per_s: f64,
    /// The adapter or model folder written.
    pub saved: String,
}

/// The best evaluation of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestEval {
    /// The phase it happened in.
    pub phase: Phase,
    /// Index of the step it followed.
    pub step: usize,
    /// Its metrics.
    pub metrics: Metrics,
}

/// Parameter counts per group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterCounts {
    /// Low-rank factors `A`, `B` (or every weight, for full fine-tuning).
    pub direction: usize,
    /// DoRA magnitudes.
    pub magnitude: usize,
    /// The task head.
    pub head: usize,
    /// Everything that is not trained.
    pub frozen: usize,
}

/// `adapter/bidora.json`: what an adapter folder written by `bidora train` adds to PEFT's
/// files, so that `eval` and `predict` need no training data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    /// The task it was trained on.
    pub task: String,
    /// Class or tag names in the head's output order (empty for regression).
    pub labels: Vec<String>,
    /// The training run's longest input, in tokens.
    pub max_length: usize,
    /// The base model's path at training time.
    pub model: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_and_names_final_as_the_files_do() {
        let r = Report {
            task: "sst2".into(),
            eval_set: "dev".into(),
            method: "bidora".into(),
            model: "m".into(),
            primary_metric: "accuracy".into(),
            final_metrics: Some(Metrics::from([("accuracy".into(), 0.75)])),
            best: Some(BestEval {
                phase: Phase::Retrain,
                step: 3,
                metrics: Metrics::from([("accuracy".into(), 0.8)]),
            }),
            untrained: None,
            majority_class_accuracy: Some(0.5),
            parameters: ParameterCounts::default(),
            train_examples: 38,
            validation_examples: Some(10),
            steps: 24,
            resumed: false,
            wall_time_s: 1.5,
            total_wall_time_s: Some(2.5),
            steps_per_s: 16.0,
            saved: "run/adapter".into(),
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert!(text.contains(r#""final":{"accuracy":0.75}"#), "{text}");
        assert!(
            text.contains(r#""best":{"phase":"retrain","step":3"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Report>(&text).ok(), Some(r));
    }
}
