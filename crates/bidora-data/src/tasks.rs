//! The task registry: for each task, its files, input fields, label space, loss kind and
//! metrics, and the evaluation of predictions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::example::{Example, Label};
use crate::glue::GlueTask;
use crate::metrics;
use crate::DataError;

/// What the model predicts, and so which loss trains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// One class per input (cross-entropy).
    Classification,
    /// One real number per input (MSE).
    Regression,
    /// One class per word (cross-entropy over first sub-tokens).
    TokenClassification,
    /// Text output (language-model cross-entropy).
    Generation,
}

/// A metric, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Accuracy.
    Accuracy,
    /// Binary F1 of class 1.
    F1,
    /// Matthews correlation.
    Matthews,
    /// Pearson correlation.
    Pearson,
    /// Spearman correlation.
    Spearman,
    /// Entity-level F1 (seqeval).
    EntityF1,
    /// Entity-level precision.
    EntityPrecision,
    /// Entity-level recall.
    EntityRecall,
    /// Corpus BLEU-4.
    Bleu,
    /// ROUGE-L F.
    RougeL,
}

impl Metric {
    /// The metric's report name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Matthews => "matthews_correlation",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
            Metric::EntityF1 => "entity_f1",
            Metric::EntityPrecision => "entity_precision",
            Metric::EntityRecall => "entity_recall",
            Metric::Bleu => "bleu",
            Metric::RougeL => "rouge_l",
        }
    }
}

/// A registered task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskInfo {
    /// Name on the command line (`rte`, `sst2`, `conll`, ...).
    pub name: &'static str,
    /// What is predicted.
    pub kind: TaskKind,
    /// Whether inputs are text pairs.
    pub pair: bool,
    /// Metrics reported, the first being the primary one (ranks runs).
    pub metrics: &'static [Metric],
    /// One line on the task and its files.
    pub description: &'static str,
    glue: Option<GlueTask>,
}

/// The data of a task: training examples, evaluation sets and label names.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskData {
    /// Training examples (to be split into D_tr / D_val).
    pub train: Vec<Example>,
    /// Evaluation sets by name (`dev`; MNLI: `dev_matched`, `dev_mismatched`).
    pub eval: Vec<(String, Vec<Example>)>,
    /// Class or tag names (empty for regression).
    pub labels: Vec<String>,
}

/// Every registered task.
pub fn registry() -> Vec<TaskInfo> {
    use Metric::*;
    let glue = |name, t: GlueTask, metrics: &'static [Metric], description| TaskInfo {
        name,
        kind: if t == GlueTask::Stsb {
            TaskKind::Regression
        } else {
            TaskKind::Classification
        },
        pair: t.is_pair(),
        metrics,
        description,
        glue: Some(t),
    };
    vec![
        glue("cola", GlueTask::Cola, &[Matthews, Accuracy], "GLUE CoLA: CoLA/{train,dev}.tsv"),
        glue("sst2", GlueTask::Sst2, &[Accuracy], "GLUE SST-2: SST-2/{train,dev}.tsv"),
        glue("mrpc", GlueTask::Mrpc, &[Accuracy, F1], "GLUE MRPC: MRPC/{train,dev}.tsv"),
        glue("qqp", GlueTask::Qqp, &[Accuracy, F1], "GLUE QQP: QQP/{train,dev}.tsv"),
        glue("stsb", GlueTask::Stsb, &[Pearson, Spearman], "GLUE STS-B: STS-B/{train,dev}.tsv"),
        glue("mnli", GlueTask::Mnli, &[Accuracy], "GLUE MNLI: MNLI/{train,dev_matched,dev_mismatched}.tsv"),
        glue("qnli", GlueTask::Qnli, &[Accuracy], "GLUE QNLI: QNLI/{train,dev}.tsv"),
        glue("rte", GlueTask::Rte, &[Accuracy], "GLUE RTE: RTE/{train,dev}.tsv"),
        glue("wnli", GlueTask::Wnli, &[Accuracy], "GLUE WNLI: WNLI/{train,dev}.tsv"),
        TaskInfo {
            name: "conll",
            kind: TaskKind::TokenClassification,
            pair: false,
            metrics: &[EntityF1, EntityPrecision, EntityRecall],
            description: "CoNLL-format NER: {train,dev}.txt (word ... tag per line); with only train.txt a seeded 10% held-out set is the dev set",
            glue: None,
        },
    ]
}

/// Looks a task up by name (case-insensitive; `sts-b` = `stsb`).
pub fn task(name: &str) -> Result<TaskInfo, DataError> {
    let key: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    registry()
        .into_iter()
        .find(|t| t.name == key)
        .ok_or_else(|| DataError::UnknownTask {
            name: name.to_string(),
            known: registry()
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl TaskInfo {
    /// The primary metric.
    pub fn primary(&self) -> Metric {
        self.metrics[0]
    }

    /// Loads the task from `dir`: a GLUE root (holding `RTE/`, ...) or the task's own folder.
    pub fn load(&self, dir: &Path) -> Result<TaskData, DataError> {
        match self.glue {
            Some(t) => {
                let folder = if dir.join(t.folder()).is_dir() {
                    dir.join(t.folder())
                } else {
                    dir.to_path_buf()
                };
                let train = t.load(&folder.join("train.tsv"))?;
                let mut eval = Vec::new();
                for f in t.dev_files() {
                    eval.push((
                        f.trim_end_matches(".tsv").to_string(),
                        t.load(&folder.join(f))?,
                    ));
                }
                Ok(TaskData {
                    train,
                    eval,
                    labels: t.labels().iter().map(|s| s.to_string()).collect(),
                })
            }
            None => {
                let train_path = conll_file(dir, "train");
                let tagged = crate::conll::load(&train_path, None)?;
                let dev_path = conll_file(dir, "dev");
                let (train, dev) = if dev_path.is_file() {
                    let dev = crate::conll::load(&dev_path, Some(&tagged.tags))?;
                    (tagged.examples, dev.examples)
                } else {
                    // No dev file: a seeded, documented 10% held-out set.
                    let (train, dev) =
                        crate::split::train_val_split(tagged.examples, 0.1, 20_241_029)?;
                    (train, dev)
                };
                Ok(TaskData {
                    train,
                    eval: vec![("dev".into(), dev)],
                    labels: tagged.tags,
                })
            }
        }
    }
}

fn conll_file(dir: &Path, stem: &str) -> PathBuf {
    for ext in ["txt", "conll", "tsv"] {
        let p = dir.join(format!("{stem}.{ext}"));
        if p.is_file() {
            return p;
        }
    }
    dir.join(format!("{stem}.txt"))
}

/// Model outputs to score.
#[derive(Clone, Debug, PartialEq)]
pub enum Predictions {
    /// Predicted class per example.
    Classes(Vec<usize>),
    /// Predicted score per example.
    Scores(Vec<f64>),
    /// Predicted tag ids per word, per example.
    Tags(Vec<Vec<usize>>),
    /// Generated text per example.
    Texts(Vec<String>),
}

/// Scores `predictions` against the gold labels of `gold` with `task`'s metrics.
pub fn evaluate(
    task: &TaskInfo,
    labels: &[String],
    predictions: &Predictions,
    gold: &[Example],
) -> Result<BTreeMap<String, f64>, DataError> {
    let mismatch =
        |what: &str| DataError::Invalid(format!("{what} do not match the gold examples"));
    let mut out = BTreeMap::new();
    match predictions {
        Predictions::Classes(p) => {
            let g: Vec<usize> = gold
                .iter()
                .map(|e| e.class().ok_or_else(|| mismatch("class predictions")))
                .collect::<Result<_, _>>()?;
            if g.len() != p.len() {
                return Err(mismatch("the number of predictions"));
            }
            for m in task.metrics {
                let v = match m {
                    Metric::Accuracy => metrics::accuracy(p, &g),
                    Metric::F1 => metrics::f1_binary(p, &g, 1),
                    Metric::Matthews => metrics::matthews(p, &g),
                    _ => continue,
                };
                out.insert(m.name().to_string(), v);
            }
        }
        Predictions::Scores(p) => {
            let g: Vec<f64> = gold
                .iter()
                .map(|e| match e.label {
                    Some(Label::Score(s)) => Ok(s as f64),
                    _ => Err(mismatch("score predictions")),
                })
                .collect::<Result<_, _>>()?;
            if g.len() != p.len() {
                return Err(mismatch("the number of predictions"));
            }
            out.insert("pearson".into(), metrics::pearson(p, &g));
            out.insert("spearman".into(), metrics::spearman(p, &g));
        }
        Predictions::Tags(p) => {
            if p.len() != gold.len() {
                return Err(mismatch("the number of predictions"));
            }
            let name = |i: usize| labels.get(i).map(String::as_str).unwrap_or("O");
            let mut pred_tags = Vec::new();
            let mut gold_tags = Vec::new();
            for (pe, ge) in p.iter().zip(gold) {
                let Some(Label::Tags(gt)) = &ge.label else {
                    return Err(mismatch("tag predictions"));
                };
                if pe.len() != gt.len() {
                    return Err(mismatch("the tag sequence lengths"));
                }
                pred_tags.push(pe.iter().map(|t| name(*t)).collect::<Vec<_>>());
                gold_tags.push(gt.iter().map(|t| name(*t)).collect::<Vec<_>>());
            }
            let s = metrics::entity_scores(&pred_tags, &gold_tags);
            out.insert("entity_f1".into(), s.f1);
            out.insert("entity_precision".into(), s.precision);
            out.insert("entity_recall".into(), s.recall);
        }
        Predictions::Texts(p) => {
            let refs: Vec<Vec<&str>> = gold
                .iter()
                .map(|e| match &e.label {
                    Some(Label::References(r)) => Ok(r.iter().map(String::as_str).collect()),
                    _ => Err(mismatch("text predictions")),
                })
                .collect::<Result<_, _>>()?;
            let hyps: Vec<&str> = p.iter().map(String::as_str).collect();
            out.insert("bleu".into(), metrics::corpus_bleu(&hyps, &refs));
            out.insert("rouge_l".into(), metrics::rouge_l(&hyps, &refs));
        }
    }
    Ok(out)
}
