//! `cargo xtask demo`: all-MiniLM-L6-v2 fine-tuned on the VADER movie-review sentences
//! (positive vs negative), then the held-out scores beside the untrained model and the
//! majority class. The settings were chosen on a validation split of the training set
//! (`scripts/demo/tune.sh`, docs/DEMO.md), never on the held-out sentences.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use bidora_records::{Metrics, Report};

use crate::{asset, default_assets_dir, fetch, root, status};

/// The demo's command line.
#[derive(clap::Args)]
pub struct Options {
    /// Method to run (lora, dora, bidora, full).
    #[arg(long, default_value = "bidora")]
    method: String,
    /// Training steps (batch 32, up to 48 tokens, similar lengths batched together).
    #[arg(long, default_value_t = ITERATIONS)]
    iterations: usize,
    /// Seed of the split, the initialisation, the batch order and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run LoRA, DoRA and BiDoRA one after another with the same seed and print one table
    /// (about three times as long as one BiDoRA run).
    #[arg(long)]
    compare: bool,
    /// Backend (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: String,
}

/// Training steps of the default run.
const ITERATIONS: usize = 280;
/// Flags of every demo run besides the method, steps, seed, backend and folder. The learning
/// rate applies to the adapter methods; full fine-tuning keeps the CLI's own.
const FLAGS: &[&str] = &[
    "--batch-size",
    "32",
    "--max-length",
    "48",
    "--group-by-length",
    "--warmup",
    "0.06",
];
/// The adapter methods' peak learning rate and adapter dropout (none, as in the BiDoRA
/// reference code; 0.1 cost 1.6 points on the validation split at this budget).
const ADAPTER_FLAGS: &[&str] = &["--lower-lr", "3e-3", "--dropout", "0"];
/// Evaluations per run (the last one after the last step).
const EVALUATIONS: usize = 4;
/// Seconds per step at the demo's settings on the 2-core machine (whole runs of 280 steps,
/// evaluations included, `--compare` with seed 0; docs/DEMO.md), for the estimate printed
/// before `--compare` starts. Full fine-tuning's is estimated from the bench's ratio to LoRA.
const SECONDS_PER_STEP: &[(&str, f64)] = &[
    ("lora", 0.19),
    ("dora", 0.21),
    ("bidora", 0.87),
    ("full", 0.32),
];
/// Runs the demo.
pub fn run(o: &Options) -> Result<()> {
    let methods: Vec<&str> = if o.compare {
        vec!["lora", "dora", "bidora"]
    } else {
        vec![o.method.as_str()]
    };
    for m in &methods {
        if !SECONDS_PER_STEP.iter().any(|(k, _)| k == m) {
            bail!("unknown method `{m}`: lora, dora, bidora or full");
        }
    }
    let dir = default_assets_dir();
    let model = fetch(asset("minilm")?, &dir)?;
    let data = fetch(asset("vader")?, &dir)?;
    if o.compare {
        let secs: f64 = methods
            .iter()
            .filter_map(|m| SECONDS_PER_STEP.iter().find(|(k, _)| k == m))
            .map(|(_, s)| s * o.iterations as f64)
            .sum();
        eprintln!(
            "--compare: LoRA, DoRA and BiDoRA, {} steps each, seed {}: about {:.0} minutes of \
             training on 2 cores, plus the build and evaluations",
            o.iterations,
            o.seed,
            secs / 60.0
        );
    }
    let mut rows = Vec::new();
    for method in methods {
        let out = train(o, method, &model, &data)?;
        let report: Report = bidora_records::read_json(&out.join("report.json"))?;
        print_run(method, &report, &out);
        rows.push((method, report));
    }
    if o.compare {
        print_table(&rows, o);
    }
    Ok(())
}

/// One `bidora train` run; returns its folder.
fn train(o: &Options, method: &str, model: &Path, data: &Path) -> Result<PathBuf> {
    let runs = root().join("runs");
    let out = (1..)
        .map(|i| runs.join(format!("demo-{method}-{i}")))
        .find(|p| !p.exists())
        .context("no free run folder")?;
    let every = o.iterations.div_ceil(EVALUATIONS).max(1).to_string();
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "-q", "-p", "bidora-cli"]);
    if o.backend != "cpu" {
        let feature = o.backend.split(':').next().unwrap_or("cpu");
        cmd.args(["--features", &format!("bidora-cli/{feature}")]);
    }
    cmd.args(["--", "train", "--task", "movie-sentiment", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--method", method, "--backend", &o.backend])
        .args(["--iterations", &o.iterations.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .args(["--eval-every", &every])
        .args(FLAGS);
    if method != "full" {
        cmd.args(ADAPTER_FLAGS);
    }
    cmd.arg("--out").arg(&out);
    status(&mut cmd)?;
    Ok(out)
}

fn accuracy(m: Option<&Metrics>) -> f64 {
    m.and_then(|m| m.get("accuracy"))
        .copied()
        .unwrap_or(f64::NAN)
}

fn print_run(method: &str, r: &Report, out: &Path) {
    println!();
    println!("movie-review sentiment, held-out accuracy (all-MiniLM-L6-v2, {method}):");
    println!(
        "  majority class   {:.4}",
        r.majority_class_accuracy.unwrap_or(f64::NAN)
    );
    println!("  untrained        {:.4}", accuracy(r.untrained.as_ref()));
    println!(
        "  after training   {:.4} (final, after step {})",
        accuracy(r.final_metrics.as_ref()),
        r.steps
    );
    println!(
        "                   {:.4} (best, after step {})",
        accuracy(r.best.as_ref().map(|b| &b.metrics)),
        r.best.as_ref().map_or(0, |b| b.step + 1)
    );
    println!(
        "  training time    {:.0} s ({:.2} steps/s, evaluations included)",
        r.wall_time_s, r.steps_per_s
    );
    println!("  curves           {}", out.join("curves.png").display());
}

fn print_table(rows: &[(&str, Report)], o: &Options) {
    println!();
    println!(
        "held-out accuracy, {} steps, seed {} (majority class {:.4}, untrained {:.4}):",
        o.iterations,
        o.seed,
        rows[0].1.majority_class_accuracy.unwrap_or(f64::NAN),
        accuracy(rows[0].1.untrained.as_ref())
    );
    println!("  method   final    best     training s");
    for (m, r) in rows {
        println!(
            "  {m:8} {:.4}   {:.4}   {:.0}",
            accuracy(r.final_metrics.as_ref()),
            accuracy(r.best.as_ref().map(|b| &b.metrics)),
            r.wall_time_s
        );
    }
}
