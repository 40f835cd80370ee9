//! `cargo xtask results`: trains LoRA, DoRA and BiDoRA with all-MiniLM-L6-v2 on several real
//! tasks and seeds through the `bidora` CLI, plus two BiDoRA ablations (γ = 0, first-order
//! hypergradient) on one task, and writes `docs/RESULTS.md` and `docs/results.svg`.
//!
//! Every run gets its own folder under `runs/results/`; a finished run (its `report.json`) is
//! reused and an interrupted one resumed from its checkpoint, so the sweep can be stopped and
//! continued, and `--report-only` rebuilds the report from what is there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bidora_plot::bars::{Bar, BarPanel};
use bidora_records::Report;

use crate::{asset, default_assets_dir, fetch, root, write_atomic};

/// What `cargo xtask results` was asked for.
#[derive(clap::Args)]
pub struct Options {
    /// Tasks: movie-sentiment, tweet-sentiment, topic, product-sentiment, mrpc, stsb, cola,
    /// wnut16.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "movie-sentiment,tweet-sentiment,topic,product-sentiment"
    )]
    pub tasks: Vec<String>,
    /// Seeds of every cell.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Lower-level steps per run (every method gets the same).
    #[arg(long, default_value_t = 80)]
    pub iterations: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Longest input in tokens.
    #[arg(long, default_value_t = 48)]
    pub max_length: usize,
    /// Peak learning rate of every method (short budgets want a high one).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Task of the ablations.
    #[arg(long, default_value = "movie-sentiment")]
    pub ablation_task: String,
    /// CPU threads per run (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// GLUE folder (MRPC/, STS-B/, CoLA/ with train.tsv and dev.tsv).
    #[arg(long, env = "BIDORA_GLUE_DIR", default_value = "../shared/data/glue")]
    pub glue: PathBuf,
    /// Run folders.
    #[arg(long, default_value = "runs/results")]
    pub runs: PathBuf,
    /// Rebuild the report from the finished runs without training.
    #[arg(long)]
    pub report_only: bool,
    /// Run the MRPC sanity anchor instead: LoRA and DoRA with HF PEFT's measured settings
    /// (5 epochs, batch 16, 128 tokens, lr 5e-4, seed 0; about 1.5 hours on 2 cores).
    #[arg(long)]
    pub anchor: bool,
}

impl Options {
    /// CPU threads per run.
    fn threads(&self) -> usize {
        crate::threads_or_all(self.threads)
    }

    /// The run folders, under the workspace root unless absolute.
    fn runs(&self) -> PathBuf {
        crate::in_root(&self.runs)
    }
}

/// Where a task's data comes from.
enum Source {
    /// A GLUE folder under `--glue`.
    Glue(&'static str),
    /// A registry asset of `cargo xtask assets`.
    Asset(&'static str),
}

/// A task of the sweep: its CLI name, data, primary metric and how it reads in the report.
struct TaskSpec {
    name: &'static str,
    source: Source,
    metric: &'static str,
    title: &'static str,
}

/// The tasks the sweep knows. RTE is left out on purpose: MiniLM stays near chance on it. Within
/// the default budget (80 steps of 8) STS-B only learns the mean score (Pearson ≈ 0) and MRPC
/// predicts the majority class, so the default tasks are the four that learn in it.
const TASKS: &[TaskSpec] = &[
    TaskSpec {
        name: "movie-sentiment",
        source: Source::Asset("vader"),
        metric: "accuracy",
        title: "movie-review sentiment (VADER, binary)",
    },
    TaskSpec {
        name: "tweet-sentiment",
        source: Source::Asset("vader"),
        metric: "accuracy",
        title: "tweet sentiment (VADER, binary)",
    },
    TaskSpec {
        name: "product-sentiment",
        source: Source::Asset("vader"),
        metric: "accuracy",
        title: "product-review sentiment (VADER, binary)",
    },
    TaskSpec {
        name: "stsb",
        source: Source::Glue("STS-B"),
        metric: "pearson",
        title: "GLUE STS-B (similarity, regression)",
    },
    TaskSpec {
        name: "topic",
        source: Source::Asset("bbc"),
        metric: "accuracy",
        title: "BBC News topic (5 classes)",
    },
    TaskSpec {
        name: "mrpc",
        source: Source::Glue("MRPC"),
        metric: "accuracy",
        title: "GLUE MRPC (paraphrase)",
    },
    TaskSpec {
        name: "cola",
        source: Source::Glue("CoLA"),
        metric: "matthews_correlation",
        title: "GLUE CoLA (acceptability)",
    },
    TaskSpec {
        name: "wnut16",
        source: Source::Asset("wnut16"),
        metric: "entity_f1",
        title: "WNUT-16 Twitter NER (entity F1)",
    },
];

/// The compared methods, then the ablations (on `ablation_task` only): (label, method, extra).
const VARIANTS: &[(&str, &str, &[&str])] = &[
    ("LoRA", "lora", &[]),
    ("DoRA", "dora", &[]),
    ("BiDoRA", "bidora", &[]),
];
const ABLATIONS: &[(&str, &str, &[&str])] = &[
    ("BiDoRA γ = 0", "bidora", &["--gamma", "0"]),
    (
        "BiDoRA first-order",
        "bidora",
        &["--hypergradient", "first_order"],
    ),
    // Magnitudes left at their initial values: what BiDoRA's lower level does alone, on its
    // 80% split. The hypergradient is irrelevant at lr 0, so the cheaper one is used.
    (
        "BiDoRA magnitudes fixed",
        "bidora",
        &["--hypergradient", "first_order", "--upper-lr", "0"],
    ),
    // The two differences left between that run and DoRA, one at a time: the norm...
    (
        "BiDoRA magnitudes fixed, detached norm",
        "bidora",
        &[
            "--hypergradient",
            "first_order",
            "--upper-lr",
            "0",
            "--norm",
            "detached",
        ],
    ),
    // ...and the data (DoRA sees the whole training set, BiDoRA's lower level 80% of it).
    ("DoRA exact norm", "dora", &["--norm", "exact"]),
];

/// One planned run.
struct Run {
    task: &'static TaskSpec,
    variant: &'static str,
    seed: u64,
    args: Vec<String>,
    dir: PathBuf,
}

/// What a finished run reported.
struct Outcome {
    metric: f64,
    untrained: f64,
    majority: Option<f64>,
    wall_s: f64,
}

fn slug(label: &str) -> String {
    label
        .replace('γ', "gamma")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

pub fn run(o: &Options) -> Result<()> {
    let chosen: Vec<&'static TaskSpec> = o
        .tasks
        .iter()
        .map(|n| {
            TASKS.iter().find(|t| t.name == n).with_context(|| {
                format!(
                    "unknown task `{n}`; the sweep knows {}",
                    TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect::<Result<_>>()?;
    let ablation = TASKS
        .iter()
        .find(|t| t.name == o.ablation_task)
        .with_context(|| format!("unknown ablation task `{}`", o.ablation_task))?;
    let assets = default_assets_dir();
    let asset_path = |name: &str| -> Result<PathBuf> {
        let a = asset(name)?;
        if o.report_only {
            Ok(assets.join(a.name).join(a.inner))
        } else {
            fetch(a, &assets)
        }
    };
    let model = asset_path("minilm")?;
    let data_of = |t: &TaskSpec| -> Result<PathBuf> {
        match t.source {
            Source::Glue(folder) => {
                let d = crate::in_root(&o.glue).join(folder);
                if !o.report_only && !d.join("train.tsv").is_file() {
                    bail!(
                        "no {}/train.tsv (set --glue to the GLUE folder)",
                        d.display()
                    );
                }
                Ok(d)
            }
            Source::Asset(name) => asset_path(name),
        }
    };

    let mut plan = Vec::new();
    let mut cells: Vec<(&'static TaskSpec, &'static str)> = Vec::new();
    for t in &chosen {
        for (label, method, extra) in VARIANTS {
            cells.push((t, label));
            add_runs(&mut plan, o, t, label, method, extra, &model, &data_of(t)?);
        }
    }
    for (label, method, extra) in ABLATIONS {
        cells.push((ablation, label));
        add_runs(
            &mut plan,
            o,
            ablation,
            label,
            method,
            extra,
            &model,
            &data_of(ablation)?,
        );
    }

    // Seed-major order: a sweep stopped part-way has every cell for its first seeds.
    plan.sort_by_key(|r| r.seed);
    let mrpc = TASKS
        .iter()
        .find(|t| t.name == "mrpc")
        .context("task table incomplete")?;
    let anchor = anchor_runs(o, mrpc, &model, &data_of(mrpc)?);

    let started = Instant::now();
    if o.anchor && !o.report_only {
        let exe = build_cli()?;
        for r in anchor
            .iter()
            .filter(|r| !r.dir.join("report.json").is_file())
        {
            eprintln!("anchor: mrpc {} seed 0 (PEFT's settings)", r.variant);
            train(&exe, r, o.threads())?;
        }
    }
    if !o.report_only && !o.anchor {
        let exe = build_cli()?;
        let todo = plan
            .iter()
            .filter(|r| !r.dir.join("report.json").is_file())
            .count();
        eprintln!(
            "{} runs planned, {} already finished, {todo} to run",
            plan.len(),
            plan.len() - todo
        );
        for (i, r) in plan.iter().enumerate() {
            if r.dir.join("report.json").is_file() {
                continue;
            }
            eprintln!(
                "[{}/{}] {} {} seed {}",
                i + 1,
                plan.len(),
                r.task.name,
                r.variant,
                r.seed
            );
            train(&exe, r, o.threads())?;
        }
    }
    let outcomes: BTreeMap<usize, Outcome> = plan
        .iter()
        .enumerate()
        .filter_map(|(i, r)| read_outcome(r).map(|out| (i, out)))
        .collect();
    let mut report = render(o, &plan, &cells, &outcomes, started.elapsed().as_secs_f64())?;
    render_anchor(&mut report, &anchor)?;
    let svg = plot(&plan, &cells, &outcomes);
    write_atomic(&root().join("docs/results.svg"), svg.as_bytes())?;
    let path = root().join("docs/RESULTS.md");
    let kept = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| old.find(NOTES_MARK).map(|i| old[i..].to_string()))
        .unwrap_or_else(|| format!("{NOTES_MARK}\n\n## Reading\n\n(Hand-written notes go here; `cargo xtask results` keeps them.)\n"));
    write_atomic(&path, format!("{report}{kept}").as_bytes())?;
    eprintln!("wrote {} and docs/results.svg", path.display());
    Ok(())
}

/// Everything after this line of `docs/RESULTS.md` is hand-written and kept across runs.
const NOTES_MARK: &str = "<!-- notes below are hand-written; cargo xtask results keeps them -->";

#[allow(clippy::too_many_arguments)]
fn add_runs(
    plan: &mut Vec<Run>,
    o: &Options,
    task: &'static TaskSpec,
    variant: &'static str,
    method: &'static str,
    extra: &[&str],
    model: &Path,
    data: &Path,
) {
    for &seed in &o.seeds {
        let dir = o
            .runs()
            .join(task.name)
            .join(slug(variant))
            .join(format!("seed{seed}"));
        let mut args: Vec<String> = vec![
            "train".into(),
            "--task".into(),
            task.name.into(),
            "--model".into(),
            model.display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--method".into(),
            method.into(),
            "--seed".into(),
            seed.to_string(),
            "--iterations".into(),
            o.iterations.to_string(),
            "--eval-every".into(),
            o.iterations.to_string(),
            // Checkpoints between evaluations, so a stopped sweep resumes mid-run.
            "--checkpoint-every".into(),
            10.min(o.iterations).to_string(),
            "--batch-size".into(),
            o.batch_size.to_string(),
            "--max-length".into(),
            o.max_length.to_string(),
            "--lower-lr".into(),
            o.lr.to_string(),
            // The warm-up docs/RESULTS.md was measured with (the CLI's default is 10%).
            "--warmup".into(),
            "0.06".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        plan.push(Run {
            task,
            variant,
            seed,
            args,
            dir,
        });
    }
}

/// The sanity anchor: LoRA and DoRA on MRPC with the settings HF PEFT was measured with (r = 8
/// on query/value, alpha 16, dropout 0.1, AdamW lr 5e-4, wd 0.01, 6% warm-up then linear
/// decay, batch 16, max length 128, 5 epochs, seed 0: the CLI's defaults but the epochs and the
/// warm-up).
fn anchor_runs(o: &Options, mrpc: &'static TaskSpec, model: &Path, data: &Path) -> Vec<Run> {
    ["lora", "dora"]
        .into_iter()
        .map(|method| Run {
            task: mrpc,
            variant: method,
            seed: 0,
            args: [
                "train", "--task", "mrpc", "--method", method, "--epochs", "5", "--seed", "0",
                "--warmup", "0.06",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--model".into(),
                model.display().to_string(),
                "--data".into(),
                data.display().to_string(),
            ])
            .collect(),
            dir: o.runs().join("anchor").join(method).join("seed0"),
        })
        .collect()
}

/// PEFT's MRPC dev accuracy and F1 (× 100) with the anchor's settings, measured for issue 7.
const PEFT: (f64, f64) = (80.1, 86.0);

/// The anchor's section: our LoRA and DoRA beside PEFT's figures.
fn render_anchor(s: &mut String, anchor: &[Run]) -> Result<()> {
    writeln!(
        s,
        "## Sanity anchor: MRPC with PEFT's settings
"
    )?;
    writeln!(
        s,
        "r = 8 on query/value, alpha 16, dropout 0.1, AdamW lr 5e-4, weight decay 0.01, 6% warm-up\n\
         then linear decay, batch 16, max length 128, 5 epochs, seed 0, classifier trained. HF PEFT\n\
         on the same model and GLUE files: dev accuracy {:.1}%, F1 {:.1} for both LoRA and DoRA.\n",
        PEFT.0, PEFT.1
    )?;
    writeln!(
        s,
        "| method | accuracy | F1 | PEFT accuracy / F1 | ours − PEFT (points) | wall time |
|---|---|---|---|---|---|"
    )?;
    for r in anchor {
        let label = VARIANTS
            .iter()
            .find(|(_, m, _)| *m == r.variant)
            .map_or(r.variant, |(l, _, _)| *l);
        match read_report(r) {
            Some(v) => {
                let get = |k: &str| metric(v.final_metrics.as_ref(), k) * 100.0;
                let (acc, f1) = (get("accuracy"), get("f1"));
                writeln!(
                    s,
                    "| {label} | {acc:.1} | {f1:.1} | {:.1} / {:.1} | {:+.1} / {:+.1} | {:.0} min |",
                    PEFT.0,
                    PEFT.1,
                    acc - PEFT.0,
                    f1 - PEFT.1,
                    v.wall_time_s / 60.0
                )?
            }
            None => writeln!(
                s,
                "| {label} | not run yet (`cargo xtask results --anchor`) | | {:.1} / {:.1} | | |",
                PEFT.0, PEFT.1
            )?,
        }
    }
    writeln!(s)?;
    Ok(())
}

/// Builds the CLI in release and returns its path.
pub(crate) fn build_cli() -> Result<PathBuf> {
    build_cli_for("cpu")
}

/// [`build_cli`] with the CLI feature that `backend` (`cpu`, `wgpu`, `cuda[:INDEX]`) needs.
pub(crate) fn build_cli_for(backend: &str) -> Result<PathBuf> {
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--release", "-p", "bidora-cli"]);
    match backend.split(':').next() {
        Some("cpu") => {}
        Some(feature @ ("wgpu" | "cuda")) => {
            cargo.args(["--features", feature]);
        }
        _ => bail!("unknown backend `{backend}` (cpu, wgpu or cuda[:INDEX])"),
    }
    crate::cargo_executables(&mut cargo, "bidora-cli")?
        .remove("bidora")
        .context("cargo did not report the bidora executable")
}

/// Runs one training of the sweep (or resumes it).
fn train(exe: &Path, r: &Run, threads: usize) -> Result<()> {
    train_run(exe, &r.dir, &r.args, threads)
        .with_context(|| format!("{} {} seed {}", r.task.name, r.variant, r.seed))
}

/// Runs `bidora` with `args` into `dir`, or resumes it from its checkpoint, after checking that
/// a folder left by an earlier sweep was made with the same arguments.
pub(crate) fn train_run(exe: &Path, dir: &Path, args: &[String], threads: usize) -> Result<()> {
    let args_file = dir.with_extension("args.json");
    let want = serde_json::to_string_pretty(args)?;
    if dir.exists() {
        let had = std::fs::read_to_string(&args_file).unwrap_or_default();
        if had != want {
            bail!(
                "{} was made with other settings than this sweep's (see {}); move it away or \
                 choose another --runs folder",
                dir.display(),
                args_file.display()
            );
        }
    }
    let mut cmd = Command::new(exe);
    if dir.join("checkpoint.bin").is_file() {
        cmd.arg("train").arg("--resume").arg(dir);
    } else {
        if dir.exists() {
            // Stopped before its first checkpoint: nothing to keep but the resolved config.
            let aside = dir.with_extension(format!("stale-{}", std::process::id()));
            std::fs::rename(dir, &aside)
                .with_context(|| format!("moving {} aside", dir.display()))?;
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_atomic(&args_file, want.as_bytes())?;
        // Threads change the speed, not the result: left out of the compared arguments.
        cmd.args(args)
            .args(["--threads", &threads.to_string()])
            .arg("--out")
            .arg(dir);
    }
    let st = cmd
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !st.success() {
        bail!("`bidora train` into {} failed with {st}", dir.display());
    }
    Ok(())
}

/// A finished run's `report.json` (written by the CLI through the same type).
fn read_report(r: &Run) -> Option<Report> {
    bidora_records::read_json(&r.dir.join("report.json")).ok()
}

/// A metric of a report's metric map, NaN when absent.
fn metric(m: Option<&bidora_records::Metrics>, name: &str) -> f64 {
    m.and_then(|m| m.get(name)).copied().unwrap_or(f64::NAN)
}

fn read_outcome(r: &Run) -> Option<Outcome> {
    let v = read_report(r)?;
    let final_metric = metric(v.final_metrics.as_ref(), r.task.metric);
    (!final_metric.is_nan()).then(|| Outcome {
        metric: final_metric,
        untrained: metric(v.untrained.as_ref(), r.task.metric),
        majority: v.majority_class_accuracy,
        wall_s: v.wall_time_s,
    })
}

/// Mean and sample standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The finished outcomes of one cell: `variant` on `task`, or on every task when `task` is
/// `None`.
fn cell<'a>(
    plan: &[Run],
    outcomes: &'a BTreeMap<usize, Outcome>,
    task: Option<&str>,
    variant: &str,
) -> Vec<&'a Outcome> {
    plan.iter()
        .enumerate()
        .filter(|(_, r)| task.is_none_or(|t| r.task.name == t) && r.variant == variant)
        .filter_map(|(i, _)| outcomes.get(&i))
        .collect()
}

fn fmt_cell(xs: &[&Outcome], seeds: usize) -> String {
    if xs.is_empty() {
        return "—".into();
    }
    let v: Vec<f64> = xs.iter().map(|o| o.metric * 100.0).collect();
    let (m, s) = mean_std(&v);
    match xs.len() {
        // One seed has no spread to show.
        1 if seeds > 1 => format!("{m:.1} (1 of {seeds} seeds)"),
        n if n < seeds => format!("{m:.1} ± {s:.1} ({n} of {seeds} seeds)"),
        _ => format!("{m:.1} ± {s:.1}"),
    }
}

fn render(
    o: &Options,
    plan: &[Run],
    cells: &[(&'static TaskSpec, &'static str)],
    outcomes: &BTreeMap<usize, Outcome>,
    elapsed: f64,
) -> Result<String> {
    let mut s = String::new();
    let seeds = o.seeds.len();
    let total_wall: f64 = outcomes.values().map(|x| x.wall_s).sum();
    let machine = crate::bench::machine();
    writeln!(s, "# Results\n")?;
    writeln!(
        s,
        "Written by `cargo xtask results` from the run folders under `{}`; the hand-written\n\
         reading is at the end. Metric × 100, mean ± sample standard deviation over seeds\n\
         {:?}, on each task's dev set (held out from training; BiDoRA's upper level uses a\n\
         split of the training set, never the dev set).\n",
        o.runs().strip_prefix(root()).unwrap_or(&o.runs()).display(),
        o.seeds
    )?;
    writeln!(s, "![results](results.svg)\n")?;
    writeln!(
        s,
        "| task (metric) | majority class | untrained | LoRA | DoRA | BiDoRA |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|")?;
    let tasks: Vec<&TaskSpec> = {
        let mut v: Vec<&TaskSpec> = Vec::new();
        for (t, variant) in cells {
            if VARIANTS.iter().any(|(l, _, _)| l == variant) && !v.iter().any(|x| x.name == t.name)
            {
                v.push(t);
            }
        }
        v
    };
    for t in &tasks {
        let all: Vec<&Outcome> = VARIANTS
            .iter()
            .flat_map(|(l, _, _)| cell(plan, outcomes, Some(t.name), l))
            .collect();
        let majority = all
            .iter()
            .find_map(|x| x.majority)
            .filter(|_| t.metric == "accuracy")
            .map_or("—".into(), |m| format!("{:.1}", m * 100.0));
        let untrained = if all.is_empty() {
            "—".into()
        } else {
            let v: Vec<f64> = all.iter().map(|x| x.untrained * 100.0).collect();
            format!("{:.1}", mean_std(&v).0)
        };
        write!(
            s,
            "| {} ({}) | {majority} | {untrained} |",
            t.title, t.metric
        )?;
        for (l, _, _) in VARIANTS {
            write!(
                s,
                " {} |",
                fmt_cell(&cell(plan, outcomes, Some(t.name), l), seeds)
            )?;
        }
        writeln!(s)?;
    }
    writeln!(s)?;
    let ab = &o.ablation_task;
    writeln!(s, "## Ablations on {ab}\n")?;
    writeln!(s, "| variant | {ab} |\n|---|---|")?;
    for (l, _, _) in VARIANTS
        .iter()
        .filter(|(_, m, _)| *m == "bidora")
        .chain(ABLATIONS)
    {
        writeln!(
            s,
            "| {l} | {} |",
            fmt_cell(&cell(plan, outcomes, Some(ab), l), seeds)
        )?;
    }
    writeln!(
        s,
        "\nγ = 0 drops the orthogonality regulariser; first-order replaces the DARTS hypergradient\n\
         by the plain gradient of the validation loss with respect to the magnitudes; magnitudes\n\
         fixed sets the upper level's learning rate to 0, so only the lower level trains (on the\n\
         same 80% split as BiDoRA); detached norm and DoRA exact norm swap the norm mode.\n"
    )?;
    writeln!(s, "## Settings\n")?;
    writeln!(s, "| | |\n|---|---|")?;
    writeln!(
        s,
        "| model | all-MiniLM-L6-v2 (`cargo xtask assets minilm`) |"
    )?;
    writeln!(
        s,
        "| budget | {} lower-level steps per run for every method, batch {}, max length {} tokens |",
        o.iterations, o.batch_size, o.max_length
    )?;
    writeln!(
        s,
        "| optimiser | AdamW, peak lr {} (both levels), weight decay 0.01, 6% warm-up then linear decay |",
        o.lr
    )?;
    writeln!(
        s,
        "| adapters | r = 8, alpha 16, dropout 0.1 on query and value; the classifier head trained |"
    )?;
    writeln!(
        s,
        "| DoRA | PEFT's detached norm; BiDoRA: exact norm, magnitudes on a 20% validation split, DARTS hypergradient, γ = 1e-5 |"
    )?;
    writeln!(
        s,
        "| evaluation | once, after the last step, on the dev set |"
    )?;
    writeln!(
        s,
        "| machine | {machine}, {} threads per run |",
        o.threads()
    )?;
    writeln!(
        s,
        "| wall time | {:.1} min of training runs ({} of {} runs finished){} |",
        total_wall / 60.0,
        outcomes.len(),
        plan.len(),
        if o.report_only {
            String::new()
        } else {
            format!("; this invocation took {:.1} min", elapsed / 60.0)
        }
    )?;
    let per_run: Vec<String> = VARIANTS
        .iter()
        .chain(ABLATIONS)
        .filter_map(|(l, _, _)| {
            let walls: Vec<f64> = cell(plan, outcomes, None, l)
                .iter()
                .map(|x| x.wall_s)
                .collect();
            (!walls.is_empty()).then(|| format!("{l} {:.0} s", mean_std(&walls).0))
        })
        .collect();
    writeln!(
        s,
        "| wall time per run | {} (mean over the finished runs: loading, the untrained evaluation, training, the final evaluation) |",
        per_run.join(", ")
    )?;
    // The sweep's command: what rebuilds only the report is left out.
    let command = std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1).filter(|a| a != "--report-only"))
        .collect::<Vec<_>>()
        .join(" ");
    writeln!(s, "| command | `{command}` |")?;
    writeln!(s)?;
    writeln!(
        s,
        "Each run's folder holds its `config.toml`, `metrics.jsonl`, curves and `report.json`.\n"
    )?;
    Ok(s)
}

/// One panel per task: a bar per method with its seed standard deviation, the untrained model
/// as a dashed line (its value in the panel's title).
fn plot(
    plan: &[Run],
    cells: &[(&'static TaskSpec, &'static str)],
    outcomes: &BTreeMap<usize, Outcome>,
) -> String {
    let mut tasks: Vec<(&TaskSpec, Vec<&str>)> = Vec::new();
    for (t, v) in cells {
        match tasks.iter_mut().find(|(x, _)| x.name == t.name) {
            Some((_, vs)) => vs.push(v),
            None => tasks.push((t, vec![v])),
        }
    }
    let panels: Vec<BarPanel> = tasks
        .iter()
        .map(|(t, variants)| {
            let percent = |xs: Vec<f64>| xs.into_iter().map(|x| x * 100.0).collect::<Vec<_>>();
            let bars = variants
                .iter()
                .map(|v| {
                    let xs = cell(plan, outcomes, Some(t.name), v);
                    Bar {
                        label: v.to_string(),
                        stats: (!xs.is_empty())
                            .then(|| mean_std(&percent(xs.iter().map(|o| o.metric).collect()))),
                    }
                })
                .collect();
            let untrained: Vec<f64> = variants
                .iter()
                .flat_map(|v| cell(plan, outcomes, Some(t.name), v))
                .map(|o| o.untrained * 100.0)
                .filter(|x| x.is_finite())
                .collect();
            BarPanel {
                title: t.name.to_string(),
                baseline: (!untrained.is_empty()).then(|| mean_std(&untrained).0),
                bars,
            }
        })
        .collect();
    bidora_plot::bars::svg(&panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(metric: f64) -> Outcome {
        Outcome {
            metric,
            untrained: 0.5,
            majority: None,
            wall_s: 1.0,
        }
    }

    #[test]
    fn cells_show_the_sample_standard_deviation_and_missing_seeds() {
        // The movie-review LoRA accuracies of seeds 0, 1, 2: mean 61.8, sample std 10.0.
        let runs = [outcome(0.7218), outcome(0.6100), outcome(0.5224)];
        let all: Vec<&Outcome> = runs.iter().collect();
        assert_eq!(fmt_cell(&all, 3), "61.8 ± 10.0");
        assert_eq!(fmt_cell(&all[..2], 3), "66.6 ± 7.9 (2 of 3 seeds)");
        assert_eq!(fmt_cell(&all[..1], 3), "72.2 (1 of 3 seeds)");
        assert_eq!(fmt_cell(&[], 3), "—");
        // By hand: mean 2, squared deviations 1 + 0 + 1 over n − 1 = 2.
        assert_eq!(mean_std(&[1.0, 2.0, 3.0]), (2.0, 1.0));
        assert_eq!(mean_std(&[4.0]), (4.0, 0.0));
    }

    /// Two tasks, three variants, two seeds each (one variant missing on the second task).
    fn plot_fixture() -> String {
        let variants = ["LoRA", "DoRA", "BiDoRA γ = 0"];
        let mut plan = Vec::new();
        let mut outcomes = BTreeMap::new();
        for (t, task) in TASKS.iter().take(2).enumerate() {
            for (v, variant) in variants.iter().enumerate() {
                for seed in 0..2u64 {
                    if t == 1 && v == 2 {
                        continue;
                    }
                    let metric = 0.55 + 0.1 * v as f64 + 0.03 * seed as f64 + 0.05 * t as f64;
                    outcomes.insert(plan.len(), outcome(metric));
                    plan.push(Run {
                        task,
                        variant,
                        seed,
                        args: Vec::new(),
                        dir: PathBuf::new(),
                    });
                }
            }
        }
        let cells: Vec<(&'static TaskSpec, &'static str)> = TASKS
            .iter()
            .take(2)
            .flat_map(|t| variants.iter().map(move |v| (t, *v)))
            .collect();
        plot(&plan, &cells, &outcomes)
    }

    #[test]
    fn plot_draws_a_bar_per_cell_with_its_spread_and_the_untrained_line() {
        let svg = plot_fixture();
        if let Ok(path) = std::env::var("BIDORA_PLOT_SNAPSHOT") {
            std::fs::write(path, &svg).unwrap();
        }
        // Five cells have runs: five bars (the background is the sixth rect).
        assert_eq!(svg.matches("<rect").count(), 6, "{svg}");
        // LoRA on the first task: mean of 55 and 58.
        assert!(svg.contains(">56.5</text>"), "{svg}");
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "{svg}");
        assert!(
            svg.contains("bidora-gamma") || svg.contains("BiDoRA gamma = 0"),
            "{svg}"
        );
    }

    #[test]
    fn run_folders_spell_variants_in_ascii() {
        assert_eq!(slug("BiDoRA γ = 0"), "bidora-gamma-0");
        assert_eq!(
            slug("BiDoRA magnitudes fixed, detached norm"),
            "bidora-magnitudes-fixed-detached-norm"
        );
    }
}
