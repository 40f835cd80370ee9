//! One seed, one run, on every backend: the same `bidora train` command (tiny random BERT,
//! LoRA, DoRA and BiDoRA, dropout on, 6 steps, an evaluation every 3; an SST-2-style
//! classification and an STS-B-style regression, whose Pearson and Spearman are continuous) on
//! each compiled backend gives, within the tolerances below, the untrained metrics, the losses
//! of every step, the later evaluations and the final adapter of the CPU reference committed
//! under `tests/fixtures/parity/<task>-<method>/` (`metrics.jsonl`,
//! `adapter_model.safetensors`).
//!
//! - Which backends: `BIDORA_PARITY_BACKENDS` (comma separated, e.g. `cuda`), else every
//!   backend compiled in (`cpu` always; `wgpu` under the README's test command, through Mesa's
//!   lavapipe on CI). On a GPU machine without a toolchain, the prebuilt test binary runs with
//!   `CARGO_BIN_EXE_bidora` and `CARGO_MANIFEST_DIR` set by hand (`scripts/device/parity.sh`).
//! - The reference is rewritten from the CPU run with `BIDORA_PARITY_WRITE=1`.
//!
//! Every difference is printed, step by step, so a run on a new backend shows how far it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use bidora_adapters::tensor_io::{read_safetensors, SafetensorsFile};
use common::{bidora, crate_dir, records, set, sst2, stsb, train_args};

/// Largest |difference| allowed in a loss or a metric. Backends sum in other orders (GEMM
/// tiling, GPU reductions) and the composed kernels round differently from the fused CPU ones:
/// about 1e-7 relative per operation in f32. Measured on lavapipe: 1.2e-7 (two ulps at 0.69);
/// a wrong initialisation or dropout mask moves the first loss by ~1e-2.
const LOSS_TOLERANCE: f64 = 1e-4;

/// Largest |difference| in an evaluation metric. Pearson's r of the nearly constant predictions
/// of a fresh regression head divides by their tiny spread: measured on lavapipe 2.7e-5. Another
/// initialisation moves it by ~1e-2.
const METRIC_TOLERANCE: f64 = 1e-3;

/// Largest |difference| in an adapter tensor, relative to the tensor's largest |value| in the
/// reference. Six AdamW steps carry the rounding differences into the parameters, and BiDoRA's
/// finite difference divides a difference of two gradients by ε = 0.01 / ‖v‖, which amplifies
/// them: measured on lavapipe 3e-6 (LoRA, DoRA) and 8e-5 (BiDoRA). A different mask or
/// initialisation gives differences of order 1.
const PARAM_TOLERANCE: f64 = 1e-3;

const METHODS: [&str; 3] = ["lora", "dora", "bidora"];
const TASKS: [&str; 2] = ["sst2", "stsb"];

/// The committed CPU reference of `task` and `method`.
fn reference(task: &str, method: &str) -> PathBuf {
    crate_dir()
        .join("tests/fixtures/parity")
        .join(format!("{task}-{method}"))
}

/// The data folder of `task`, written under `dir`.
fn data(dir: &Path, task: &str) -> PathBuf {
    match task {
        "sst2" => sst2(dir),
        _ => stsb(dir),
    }
}

/// The test's command: `method` on `task` (its data in `data`), fixed seed, dropout on.
fn args(data: &Path, out: &Path, task: &str, method: &str, seed: u64) -> Vec<String> {
    let mut a = train_args(data, out, method, 6);
    set(&mut a, "--task", task);
    let seed = seed.to_string();
    a.extend(["--dropout", "0.1", "--seed", &seed, "--eval-every", "3"].map(String::from));
    a
}

/// The backends to check: `BIDORA_PARITY_BACKENDS`, else every compiled one.
fn backends() -> Vec<String> {
    match std::env::var("BIDORA_PARITY_BACKENDS") {
        Ok(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        Err(_) => bidora_backend::BackendKind::compiled()
            .iter()
            .map(|k| k.name().to_string())
            .collect(),
    }
}

/// Runs `bidora` with `args` on `backend`.
fn train(args: &[String], backend: &str) {
    let run = bidora()
        .args(args)
        .args(["--backend", backend])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{args:?} on {backend}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The numbers of one `metrics.jsonl` record, by name, with their tolerance: losses, the
/// hypergradient's term norms, the evaluation metrics and the magnitudes' drift per layer.
fn numbers(record: &serde_json::Value) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    for key in ["lower_loss", "upper_loss", "direct_norm", "mixed_norm"] {
        if let Some(v) = record[key].as_f64() {
            out.push((key.to_string(), v, LOSS_TOLERANCE));
        }
    }
    if let Some(m) = record["metrics"].as_object() {
        let metric = |(k, v): (&String, &serde_json::Value)| {
            Some((k.clone(), v.as_f64()?, METRIC_TOLERANCE))
        };
        out.extend(m.iter().filter_map(metric));
    }
    if let Some(d) = record["diagnostics"].as_object() {
        let drift =
            |(k, v): (&String, &serde_json::Value)| Some((k.clone(), v.as_f64()?, LOSS_TOLERANCE));
        out.extend(d.iter().filter_map(drift));
    }
    out
}

/// Compares the run in `got` with the reference in `want`: prints each record's and tensor's
/// largest difference, and returns what is past the tolerance.
fn compare(label: &str, got: &Path, want: &Path) -> Vec<String> {
    let mut failures = compare_records(label, &records(got), &records(want));
    let adapter = |dir: &Path| read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    failures.extend(compare_adapters(
        label,
        &adapter(&got.join("adapter")),
        &adapter(want),
    ));
    failures
}

/// The `metrics.jsonl` records, number by number.
fn compare_records(
    label: &str,
    got: &[serde_json::Value],
    want: &[serde_json::Value],
) -> Vec<String> {
    let mut failures = Vec::new();
    if got.len() != want.len() {
        failures.push(format!(
            "{label}: {} records against the reference's {}",
            got.len(),
            want.len()
        ));
    }
    let names = |n: &[(String, f64, f64)]| n.iter().map(|(k, ..)| k.clone()).collect::<Vec<_>>();
    for (gr, wr) in got.iter().zip(want) {
        let (gn, wn) = (numbers(gr), numbers(wr));
        let at = format!("{label} {} step {}", wr["event"], wr["step"]);
        if names(&gn) != names(&wn) {
            failures.push(format!(
                "{at}: fields {:?} against {:?}",
                names(&gn),
                names(&wn)
            ));
            continue;
        }
        for ((name, a, tolerance), (_, b, _)) in gn.iter().zip(&wn) {
            let d = (a - b).abs();
            eprintln!("{at} {name}: {a:.7} against {b:.7} (|Δ| {d:.1e})");
            if d > *tolerance || d.is_nan() {
                failures.push(format!("{at} {name}: |Δ| {d:.2e} > {tolerance:e}"));
            }
        }
    }
    failures
}

/// The adapters, tensor by tensor, relative to each reference tensor's largest |value|.
fn compare_adapters(label: &str, got: &SafetensorsFile, want: &SafetensorsFile) -> Vec<String> {
    if got.tensors.keys().ne(want.tensors.keys()) {
        return vec![format!("{label}: the adapter's tensors differ in name")];
    }
    let mut failures = Vec::new();
    for (name, w) in &want.tensors {
        let g = &got.tensors[name];
        let scale = w.data.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let diff = g
            .data
            .iter()
            .zip(&w.data)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        let relative = diff / scale.max(f64::MIN_POSITIVE);
        eprintln!("{label} {name}: max |Δ| {diff:.1e} ({relative:.1e} of max |value|)");
        if g.shape != w.shape || relative > PARAM_TOLERANCE || diff.is_nan() {
            failures.push(format!(
                "{label} {name}: shape {:?}/{:?}, max |Δ| {relative:.2e} of max |value| > \
                 {PARAM_TOLERANCE:e}",
                g.shape, w.shape
            ));
        }
    }
    failures
}

/// Rewrites the committed CPU reference from a CPU run (`BIDORA_PARITY_WRITE=1`).
fn write_reference(run: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(run.join("metrics.jsonl"), dir.join("metrics.jsonl")).unwrap();
    std::fs::copy(
        run.join("adapter/adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
}

#[test]
fn every_backend_trains_what_the_cpu_reference_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let writing = std::env::var_os("BIDORA_PARITY_WRITE").is_some();
    let mut failures = Vec::new();
    for task in TASKS {
        let data = data(tmp.path(), task);
        for method in METHODS {
            let want = reference(task, method);
            for backend in if writing {
                vec!["cpu".into()]
            } else {
                backends()
            } {
                let out = tmp.path().join(format!("{task}-{method}-{backend}"));
                train(&args(&data, &out, task, method, 3), &backend);
                if writing {
                    write_reference(&out, &want);
                } else {
                    let label = format!("{task}/{method}/{backend}");
                    failures.extend(compare(&label, &out, &want));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "past the tolerance:\n{}",
        failures.join("\n")
    );
}

/// The comparison can fail: a run from another seed (another initialisation and other masks)
/// is far outside the tolerances, in the losses, the metrics and the adapter.
#[test]
fn another_seed_is_far_outside_the_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path(), "stsb");
    let out = tmp.path().join("other-seed");
    train(&args(&data, &out, "stsb", "bidora", 4), "cpu");
    let failures = compare("stsb/bidora/seed 4", &out, &reference("stsb", "bidora"));
    for what in ["lower_loss", "pearson", "lora_A"] {
        assert!(
            failures.iter().any(|f| f.contains(what)),
            "{what}: {failures:?}"
        );
    }
}
