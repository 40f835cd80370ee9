//! `bidora train`: settings → data → model → engine → adapter, metrics, curves and report.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bidora_adapters::peft::{self, SaveOptions};
use bidora_adapters::regularizer::OrthoOptions;
use bidora_adapters::tensor_io::atomic_write;
use bidora_adapters::{ParamGroup, ParamPartition};
use bidora_backend::BackendTask;
use bidora_bilevel::trainer::{Control, Data, Evaluation, Event, Hooks, Phase};
use bidora_bilevel::{Checkpoint, ParamGroups, ShuffledBatches, TrainError, Trainer};
use bidora_data::batch::collate;
use bidora_data::tasks::{self, TaskKind};
use bidora_data::Example;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde_json::json;

use crate::config::{Knobs, Method, Settings};
use crate::fail::{input, usage, Classify, Fail};
use crate::fingerprint::Fingerprint;
use crate::plot::{self, Panel, Series};
use crate::progress::Progress;
use crate::records::{self, Record};
use crate::session::{evaluate, to_device, ModelTokenizer, TaskModel, TaskProblem};

const CONFIG_FILE: &str = "config.toml";
const CHECKPOINT_FILE: &str = "checkpoint.bin";
const METRICS_FILE: &str = "metrics.jsonl";

/// Runs `bidora train`.
pub fn train(resume: Option<PathBuf>, config: Option<PathBuf>, knobs: Knobs) -> Result<(), Fail> {
    let (settings, checkpoint) = match resume {
        Some(dir) => {
            if knobs != Knobs::default() {
                return Err(usage(
                    "--resume continues a run with its saved settings: pass no other settings",
                ));
            }
            let file = dir.join(CONFIG_FILE);
            if !file.is_file() {
                return Err(input(format!(
                    "`{}` is not a run folder (no {CONFIG_FILE})",
                    dir.display()
                )));
            }
            let mut k = Knobs::from_file(&file)?;
            k.out = Some(dir.clone());
            let ck = dir.join(CHECKPOINT_FILE);
            if !ck.is_file() {
                return Err(input(format!(
                    "`{}` has no checkpoint yet (the run stopped before its first one): start it again",
                    dir.display()
                )));
            }
            (Settings::resolve(k)?, Some(ck))
        }
        None => {
            let base = match &config {
                Some(p) => Knobs::from_file(p)?,
                None => Knobs::default(),
            };
            let s = Settings::resolve(base.overlaid(&knobs)?)?;
            if s.out.join(CONFIG_FILE).exists() {
                return Err(usage(format!(
                    "`{}` already holds a run: continue it with --resume {} or choose another --out",
                    s.out.display(),
                    s.out.display()
                )));
            }
            (s, None)
        }
    };
    if let Some(t) = settings.knobs.threads {
        // Only fails when a pool exists already, which nothing here has made.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    std::fs::create_dir_all(&settings.out)
        .with_context(|| format!("cannot create the run folder `{}`", settings.out.display()))
        .runtime()?;
    let device = settings.device;
    bidora_backend::run(
        &device,
        Some(settings.seed),
        Job {
            settings,
            checkpoint,
        },
    )
    .usage()?
}

struct Job {
    settings: Settings,
    checkpoint: Option<PathBuf>,
}

impl BackendTask for Job {
    type Output = Result<(), Fail>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        run::<B>(self.settings, self.checkpoint, device)
    }
}

/// Fails on the first example the tokeniser cannot encode.
fn check_tokenization(
    tok: &ModelTokenizer,
    examples: &[Example],
    max_len: usize,
) -> Result<(), Fail> {
    for chunk in examples.chunks(64) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let _ = collate(&refs, tok, max_len);
        tok.check().map_err(|f| {
            input(format!(
                "cannot tokenise the examples from line {}: {}",
                chunk[0].line, f.error
            ))
        })?;
    }
    Ok(())
}

/// The majority-class accuracy of the dev set by the training set's most frequent class.
fn majority_accuracy(train: &[Example], dev: &[Example]) -> Option<f64> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for e in train {
        *counts.entry(e.class()?).or_default() += 1;
    }
    let (top, _) = counts.iter().max_by_key(|(_, n)| **n)?;
    let hits = dev.iter().filter(|e| e.class() == Some(*top)).count();
    Some(hits as f64 / dev.len().max(1) as f64)
}

/// Curves kept for the plots.
#[derive(Default)]
struct Curves {
    lower: Vec<(f64, f64)>,
    upper: Vec<(f64, f64)>,
    metric: Vec<(f64, f64)>,
    metric_name: String,
}

impl Curves {
    fn write(&self, out: &Path) -> anyhow::Result<()> {
        let panels = [
            Panel {
                title: "training loss".into(),
                y_label: "loss".into(),
                series: vec![
                    Series {
                        name: "lower level (train)".into(),
                        points: self.lower.clone(),
                        color: "#1f77b4",
                    },
                    Series {
                        name: "upper level (validation)".into(),
                        points: self.upper.clone(),
                        color: "#d62728",
                    },
                ],
            },
            Panel {
                title: format!("dev {}", self.metric_name),
                y_label: self.metric_name.clone(),
                series: vec![Series {
                    name: self.metric_name.clone(),
                    points: self.metric.clone(),
                    color: "#2ca02c",
                }],
            },
        ];
        let svg = plot::svg(&panels);
        atomic_write(&out.join("curves.svg"), svg.as_bytes())?;
        atomic_write(&out.join("curves.png"), &plot::png(&svg)?)?;
        Ok(())
    }
}

fn run<B: AutodiffBackend>(
    s: Settings,
    resume: Option<PathBuf>,
    device: B::Device,
) -> Result<(), Fail> {
    let started = Instant::now();
    let task = tasks::task(&s.task).usage()?;
    let data = task.load(&s.data).input()?;
    let kind = task.kind_of(&data);
    let (eval_name, dev) = data
        .eval
        .first()
        .cloned()
        .ok_or_else(|| input(format!("task `{}` has no evaluation set", s.task)))?;
    let num_labels = match kind {
        TaskKind::Regression => 1,
        _ => data.labels.len(),
    };
    let model = TaskModel::<B>::load(&s.model, kind, num_labels, &device)?;
    let tok = ModelTokenizer::load(&s.model)?;
    let model = match &s.adapter {
        Some(c) => model.with_adapters(c, s.knobs.targets.is_none())?,
        None => model,
    };
    let partition = ParamPartition::of(&model);
    let bilevel = s.method == Method::Bidora;
    let groups = if bilevel {
        ParamGroups::bilevel(&partition)
    } else {
        ParamGroups::single_level(&partition)
    };
    let (tr, val) = if bilevel {
        let (tr, val) =
            bidora_data::split::train_val_split(data.train.clone(), s.val_fraction, s.seed)
                .input()?;
        (tr, Some(val))
    } else {
        (data.train.clone(), None)
    };
    check_tokenization(&tok, &data.train, s.max_length)?;
    check_tokenization(&tok, &dev, s.max_length)?;
    if resume.is_none() {
        // Written once the inputs are known to be good, so a failed start leaves no run.
        let text = toml::to_string(&s.knobs).map_err(anyhow::Error::from)?;
        atomic_write(&s.out.join(CONFIG_FILE), text.as_bytes()).runtime()?;
    }
    let steps_per_epoch = tr.len().div_ceil(s.batch_size);
    let config = s.train_config(steps_per_epoch)?;
    let primary = task.primary().name().to_string();

    let make = |items: &[&Example]| to_device::<B>(&collate(items, &tok, s.max_length), &device);
    let mut train_stream = ShuffledBatches::new(tr.clone(), s.batch_size, s.seed, make).input()?;
    let mut val_stream = match &val {
        Some(v) => Some(ShuffledBatches::new(v.clone(), s.batch_size, s.seed ^ 1, make).input()?),
        None => None,
    };
    let mut retrain_stream = match (&val, &config.retrain) {
        (Some(v), Some(_)) => {
            let all: Vec<Example> = tr.iter().chain(v).cloned().collect();
            Some(ShuffledBatches::new(all, s.batch_size, s.seed ^ 2, make).input()?)
        }
        _ => None,
    };

    // Before training: the untrained model and the majority class, as baselines.
    let eval_error: RefCell<Option<Fail>> = RefCell::new(None);
    let eval_batch = s.batch_size.max(32);
    let mut run_eval = |m: &TaskModel<B>| -> Evaluation {
        let inner = m.valid();
        match evaluate(
            &inner,
            &task,
            kind,
            &data.labels,
            &dev,
            &tok,
            eval_batch,
            s.max_length,
            &device,
        ) {
            Ok(metrics) => Evaluation {
                metrics,
                primary: primary.clone(),
                higher_is_better: true,
            },
            Err(e) => {
                eval_error.borrow_mut().get_or_insert(e);
                Evaluation::single(&primary, f64::NAN, true)
            }
        }
    };
    let baseline = if resume.is_none() {
        Some(run_eval(&model))
    } else {
        None
    };
    if let Some(e) = eval_error.borrow_mut().take() {
        return Err(e);
    }
    let majority = majority_accuracy(&tr, &dev);
    if let Some(b) = &baseline {
        println!(
            "{} on {eval_name} before training: {primary} {:.4}{}",
            s.task,
            b.score(),
            majority.map_or(String::new(), |m| format!(
                " (majority class accuracy {m:.4})"
            ))
        );
    }

    // Metrics log: on resume, keep exactly what the uninterrupted run had logged by the
    // checkpoint. The checkpoint holds the trained values only: the base model must be the one
    // it was written against.
    let metrics_path = s.out.join(METRICS_FILE);
    let identity = Fingerprint::of(&s.model)?;
    let ck = match &resume {
        Some(p) => Some(Checkpoint::load(p).input()?),
        None => None,
    };
    if let (Some(ck), Some(path)) = (&ck, &resume) {
        let saved = ck.state.base.as_deref().map(Fingerprint::decode);
        if let Some(change) = saved.and_then(|saved| saved.difference(&identity)) {
            return Err(input(format!(
                "cannot resume from `{}`: the base model `{}` changed since the checkpoint was written ({change})",
                path.display(),
                s.model.display()
            )));
        }
    }
    let mut curves = Curves {
        metric_name: primary.clone(),
        ..Curves::default()
    };
    let mut kept = match &ck {
        Some(ck) => {
            let text = std::fs::read_to_string(&metrics_path).unwrap_or_default();
            records::kept_on_resume(&text, ck.state.phase, ck.state.step)
        }
        None => Vec::new(),
    };
    let baseline = baseline.or_else(|| {
        kept.iter().find_map(|(_, r)| match r {
            Record::Baseline { metrics, .. } => Some(Evaluation {
                metrics: metrics.clone(),
                primary: primary.clone(),
                higher_is_better: true,
            }),
            _ => None,
        })
    });
    if let (Some(b), None) = (&baseline, &ck) {
        let r = Record::Baseline {
            phase: Phase::Search,
            step: 0,
            metrics: b.metrics.clone(),
        };
        kept.push((r.to_line(), r));
    }
    let mut text = String::new();
    for (line, r) in &kept {
        curves.add(r);
        text.push_str(line);
        text.push('\n');
    }
    atomic_write(&metrics_path, text.as_bytes()).runtime()?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("cannot open `{}`", metrics_path.display()))
        .runtime()?;

    let mut progress = Progress::new();
    let write_error: RefCell<Option<anyhow::Error>> = RefCell::new(None);
    let out = s.out.clone();
    let retrain_offset = config.iterations;
    let mut on_event = |e: &Event| -> Control {
        let global = |phase: &Phase, step: &usize| {
            (*phase == Phase::Retrain).then_some(retrain_offset + step)
        };
        let record = match e {
            Event::PhaseStart { phase, total, from } => {
                progress.phase(phase_name(*phase), *total, *from);
                None
            }
            Event::Step {
                phase,
                step,
                lower_loss,
                upper_loss,
                lr,
                ..
            } => {
                progress.step(*step, *lower_loss, *upper_loss);
                Some(Record::Step {
                    phase: *phase,
                    step: *step,
                    global_step: global(phase, step),
                    lower_loss: *lower_loss,
                    upper_loss: *upper_loss,
                    lr_lower: lr.0,
                    lr_upper: lr.1,
                })
            }
            Event::Eval {
                phase,
                step,
                evaluation,
                is_best,
            } => {
                progress.eval(*step, &evaluation.primary, evaluation.score(), *is_best);
                Some(Record::Eval {
                    phase: *phase,
                    step: *step,
                    global_step: global(phase, step),
                    metrics: evaluation.metrics.clone(),
                    is_best: *is_best,
                })
            }
            Event::Checkpoint { phase, step, .. } => Some(Record::Checkpoint {
                phase: *phase,
                step: *step,
            }),
            _ => None,
        };
        if let Some(r) = record {
            let is_eval = matches!(r, Record::Eval { .. });
            curves.add(&r);
            let result = writeln!(log, "{}", r.to_line())
                .map_err(anyhow::Error::from)
                .and_then(|_| if is_eval { curves.write(&out) } else { Ok(()) });
            if let Err(err) = result {
                write_error.borrow_mut().get_or_insert(err);
                return Control::Stop;
            }
        }
        Control::Continue
    };

    let ortho = bilevel.then_some(OrthoOptions {
        squared: s.squared_ortho,
    });
    let problem = TaskProblem { ortho };
    let trainer =
        Trainer::<B, TaskProblem>::new(&problem, groups, config.clone(), device.clone()).usage()?;
    let outcome = trainer.run(
        model,
        Data {
            train: &mut train_stream,
            val: val_stream.as_mut().map(|v| v as _),
            retrain: retrain_stream.as_mut().map(|v| v as _),
        },
        Hooks {
            on_event: Some(&mut on_event),
            evaluate: Some(&mut run_eval),
            checkpoint: Some(s.out.join(CHECKPOINT_FILE)),
            base_identity: Some(identity.encode()),
        },
        ck,
    );
    progress.finish();
    if let Some(e) = write_error.borrow_mut().take() {
        return Err(e.context("cannot write the run's logs").into());
    }
    if let Some(e) = eval_error.borrow_mut().take() {
        return Err(e);
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e @ TrainError::Config(_)) => return Err(usage(e)),
        Err(e @ TrainError::BaseChanged { .. }) => return Err(input(e)),
        Err(e) => return Err(anyhow::Error::from(e).into()),
    };
    curves.write(&s.out).runtime()?;

    // The adapter (PEFT format) or, for full fine-tuning, the whole model.
    let module = outcome.module;
    let task_type = match kind {
        TaskKind::TokenClassification => "TOKEN_CLS",
        _ => "SEQ_CLS",
    };
    let saved = match &s.adapter {
        Some(c) => {
            let dir = s.out.join("adapter");
            let head = module.head_tensors()?;
            peft::save(
                &dir,
                &module,
                c,
                &SaveOptions {
                    base_model_name_or_path: Some(s.model.display().to_string()),
                    task_type: Some(task_type.into()),
                    modules_to_save: vec!["classifier".into()],
                    extra_tensors: head,
                },
                &|p: &str| p.to_string(),
            )
            .runtime()?;
            let info = json!({"task": s.task, "labels": data.labels, "max_length": s.max_length,
                "model": s.model.display().to_string()});
            atomic_write(
                &dir.join("bidora.json"),
                serde_json::to_string_pretty(&info)
                    .map_err(anyhow::Error::from)?
                    .as_bytes(),
            )
            .runtime()?;
            dir
        }
        None => {
            let dir = s.out.join("model");
            crate::tools::export(&module.valid(), &s.model, &data.labels, &dir)?;
            dir
        }
    };

    let partition = ParamPartition::of(&module);
    let steps = config.iterations + config.retrain.map_or(0, |r| r.iterations);
    let wall = started.elapsed().as_secs_f64();
    let labelled = |e: &Option<Evaluation>| e.as_ref().map(|e| json!(e.metrics));
    let report = json!({
        "task": s.task,
        "eval_set": eval_name,
        "method": s.method.name(),
        "model": s.model.display().to_string(),
        "primary_metric": primary,
        "final": labelled(&outcome.final_eval),
        "best": outcome.best_eval.as_ref().map(|(phase, step, e)| json!({
            "phase": phase_name(*phase), "step": step, "metrics": e.metrics})),
        "untrained": labelled(&baseline),
        "majority_class_accuracy": majority,
        "parameters": {
            "direction": partition.count(ParamGroup::Direction),
            "magnitude": partition.count(ParamGroup::Magnitude),
            "head": partition.count(ParamGroup::Head),
            "frozen": partition.count(ParamGroup::Frozen),
        },
        "train_examples": tr.len(),
        "validation_examples": val.as_ref().map(Vec::len),
        "steps": steps,
        "resumed": resume.is_some(),
        "wall_time_s": wall,
        "steps_per_s": steps as f64 / wall.max(1e-9),
        "saved": saved.display().to_string(),
    });
    atomic_write(
        &s.out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .map_err(anyhow::Error::from)?
            .as_bytes(),
    )
    .runtime()?;
    let score = |e: &Option<Evaluation>| e.as_ref().map_or(f64::NAN, Evaluation::score);
    println!(
        "{} {} on {eval_name}: final {primary} {:.4}, best {:.4}{}; {} in {:.0} s",
        s.task,
        s.method.name(),
        score(&outcome.final_eval),
        outcome.best_eval.as_ref().map_or(f64::NAN, |b| b.2.score()),
        baseline
            .as_ref()
            .map_or(String::new(), |b| format!(" (untrained {:.4})", b.score())),
        saved.display(),
        wall
    );
    Ok(())
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Search => "search",
        Phase::Retrain => "retrain",
    }
}

impl Curves {
    /// Adds a metrics.jsonl record.
    fn add(&mut self, r: &Record) {
        let step = r.plot_step();
        match r {
            Record::Step {
                lower_loss,
                upper_loss,
                ..
            } => {
                self.lower.push((step, *lower_loss));
                if let Some(u) = upper_loss {
                    self.upper.push((step, *u));
                }
            }
            Record::Eval { metrics, .. } | Record::Baseline { metrics, .. } => {
                if let Some(m) = metrics.get(&self.metric_name) {
                    self.metric.push((step, *m));
                }
            }
            Record::Checkpoint { .. } => {}
        }
    }
}
