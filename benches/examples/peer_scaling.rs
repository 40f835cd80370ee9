//! The data-parallel scaling figure of docs/DISTRIBUTED.md: the measured CPU simulation
//! (criterion's `minilm_peers` group: peers as threads sharing this machine's cores) beside the
//! scaling model on paper (compute per iteration against the bytes all-reduced per iteration,
//! on a few links).
//!
//! ```text
//! cargo bench -p bidora-benches --bench minilm -- minilm_peers
//! cargo run --release -p bidora-benches --example peer_scaling -- [CRITERION_DIR] [SVG]
//! ```
//!
//! `CRITERION_DIR` defaults to `$CARGO_TARGET_DIR/criterion` (else `target/criterion`); the
//! figure goes to `SVG` (default `docs/distributed-scaling.svg`). It prints the tables the doc
//! holds.

use std::path::{Path, PathBuf};

use bidora_bilevel::distributed::bytes_per_iteration;
use bidora_bilevel::Hypergradient;
use bidora_plot::lines::{svg_over, Panel, Series};

/// The peer counts the bench measures.
const WORLDS: [usize; 3] = [1, 2, 4];
/// The peer counts the model is drawn for.
const MODEL_WORLDS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// all-MiniLM-L6-v2 with r = 8 on query and value and a 2-way head (the bench's model).
const LAYERS: usize = 6;
const HIDDEN: usize = 384;
const RANK: usize = 8;
const CLASSES: usize = 2;

/// Matrix-product work of one LoRA step at 16 × 128 tokens (docs/BENCHMARKS.md's floor).
const LORA_STEP_FLOP: f64 = 92e9;
/// A BiDoRA iteration's time over a LoRA step's, on a quiet machine (docs/BENCHMARKS.md of
/// 2026-12-02: 2.195 s / 485 ms): the model's compute per BiDoRA iteration.
const BIDORA_OVER_LORA: f64 = 4.5;
/// The sustained rate assumed for one GPU in the model (an assumption, not a measurement: a
/// quarter of an H100/H200's dense TF32 peak).
const GPU_FLOPS: f64 = 100e12;

/// A link of the model: name, bandwidth (bytes/s) and per-message latency (s).
const LINKS: [(&str, f64, f64, &str); 4] = [
    (
        "NVLink (≈100 GB/s effective, 10 µs)",
        100e9,
        10e-6,
        "#1f77b4",
    ),
    ("PCIe 4 x16 (≈20 GB/s, 15 µs)", 20e9, 15e-6, "#2ca02c"),
    ("100 GbE (≈10 GB/s, 30 µs)", 10e9, 30e-6, "#ff7f0e"),
    ("10 GbE (≈1 GB/s, 50 µs)", 1e9, 50e-6, "#d62728"),
];

/// The trained values: (lower, upper) for BiDoRA; LoRA trains `lower + 0` on one level.
fn trained() -> (usize, usize, usize) {
    let direction = LAYERS * 2 * RANK * (HIDDEN + HIDDEN);
    let head = HIDDEN * CLASSES + CLASSES;
    let magnitudes = LAYERS * 2 * HIDDEN;
    (direction, head, magnitudes)
}

/// Exchanges (all-reduce calls) per iteration: LoRA the gradient and the stop agreement;
/// BiDoRA (DARTS) also the validation gradients and the central difference.
fn calls(bilevel: bool) -> f64 {
    if bilevel {
        4.0
    } else {
        2.0
    }
}

/// All-reduce time of `bytes` in `calls` messages over `n` peers: the faster of a ring
/// (`2(n−1)` latency steps, `2(n−1)/n` of the bytes through each link) and a binary tree
/// (reduce then broadcast: `2·log2 n` steps of the whole message), as burn-collective offers
/// both.
fn all_reduce_s(bytes: f64, calls: f64, n: usize, bandwidth: f64, latency: f64) -> f64 {
    if n == 1 {
        return 0.0;
    }
    let ring_steps = 2.0 * (n as f64 - 1.0);
    let ring = ring_steps / n as f64 * bytes / bandwidth + calls * ring_steps * latency;
    let tree_steps = 2.0 * (n as f64).log2().ceil();
    let tree = tree_steps * (bytes / bandwidth + calls * latency);
    ring.min(tree)
}

/// The median time per iteration (s) of a `minilm_peers` case, if it was measured.
fn measured(dir: &Path, case: &str) -> Option<f64> {
    let path = dir
        .join("minilm_peers")
        .join(case)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? * 1e-9)
}

fn criterion_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    target.join("criterion")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(criterion_dir, PathBuf::from);
    let out = args.next().map_or_else(
        || PathBuf::from("docs/distributed-scaling.svg"),
        PathBuf::from,
    );
    let (direction, head, magnitudes) = trained();
    let lower = direction + head;
    let darts = Hypergradient::Darts {
        alpha: 0.01,
        xi: 1.0,
    };
    let methods = [
        (
            "LoRA step",
            "lora",
            bytes_per_iteration(lower, 0, darts, 0),
            false,
        ),
        (
            "BiDoRA iteration (DARTS)",
            "bidora_darts",
            bytes_per_iteration(lower, magnitudes, darts, 1),
            true,
        ),
    ];
    println!("trained values: direction {direction}, head {head}, magnitudes {magnitudes}");

    println!("\n| peers | case | median per iteration | × 1 peer | bytes all-reduced per peer |");
    println!("|---|---|---|---|---|");
    let mut sim = Vec::new();
    for (label, case, bytes, _) in methods {
        let one = measured(&dir, &format!("{case}_1"));
        let mut points = Vec::new();
        for n in WORLDS {
            let Some(t) = measured(&dir, &format!("{case}_{n}")) else {
                println!("| {n} | {label} | not measured | | |");
                continue;
            };
            let ratio = one.map_or(String::new(), |o| format!("{:.2}", t / o));
            let sent = if n == 1 { 0.0 } else { bytes };
            println!(
                "| {n} | {label} | {:.0} ms | {ratio} | {:.0} kB |",
                t * 1e3,
                sent / 1e3
            );
            if let Some(o) = one {
                points.push((n as f64, t / o));
            }
        }
        let color = if case == "lora" { "#1f77b4" } else { "#d62728" };
        sim.push(Series {
            name: label.to_string(),
            points,
            color,
        });
    }

    // The model: weak scaling (each peer keeps a batch of 16 × 128), exchanges not overlapped
    // with compute (the engine all-reduces after each backward).
    let bidora_flop = LORA_STEP_FLOP * BIDORA_OVER_LORA;
    let mut model = Vec::new();
    println!("\n| link | case | compute per iteration | exchange at 8 peers | efficiency at 2 / 8 / 64 peers |");
    println!("|---|---|---|---|---|");
    for (label, _, bytes, bilevel) in methods {
        let compute = if bilevel { bidora_flop } else { LORA_STEP_FLOP } / GPU_FLOPS;
        for (link, bw, lat, color) in LINKS {
            let eff =
                |n: usize| compute / (compute + all_reduce_s(bytes, calls(bilevel), n, bw, lat));
            println!(
                "| {link} | {label} | {:.2} ms | {:.3} ms | {:.2} / {:.2} / {:.2} |",
                compute * 1e3,
                all_reduce_s(bytes, calls(bilevel), 8, bw, lat) * 1e3,
                eff(2),
                eff(8),
                eff(64)
            );
            if bilevel {
                let points = MODEL_WORLDS
                    .iter()
                    .map(|&n| ((n as f64).log2(), eff(n)))
                    .collect();
                model.push(Series {
                    name: link.to_string(),
                    points,
                    color,
                });
            }
        }
    }
    let panels = [
        Panel {
            title: "Measured, simulation: MiniLM on peers sharing 2 CPU cores (time per iteration / 1 peer)".into(),
            y_label: "time ÷ 1 peer".into(),
            series: sim,
        },
        Panel {
            title: format!(
                "Model: BiDoRA iteration efficiency, batch 16×128 per GPU at {:.0} TFLOP/s (x = log2 peers)",
                GPU_FLOPS / 1e12
            ),
            y_label: "efficiency".into(),
            series: model,
        },
    ];
    let svg = svg_over(&panels, "peers (top) · log2 peers (bottom)");
    bidora_util::atomic_write(&out, svg.as_bytes()).expect("write the figure");
    println!("\nwrote {}", out.display());
}
