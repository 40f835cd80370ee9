//! What the CLI's integration tests share: the tiny random BERT (committed under
//! `tests/fixtures/tiny-bert`, from `scripts/golden/tiny_models.py`), a small SST-2-style data
//! set, the `bidora` binary and the records of a run.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The CLI crate's folder: `CARGO_MANIFEST_DIR` at run time (set by `cargo test`, or by hand
/// where prebuilt test binaries run from another checkout), else where it was built.
pub fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn tiny_bert() -> PathBuf {
    crate_dir().join("tests/fixtures/tiny-bert")
}

/// A copy of the tiny random BERT in `dir/model`, for tests that change its files.
pub fn tiny_bert_copy(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(tiny_bert()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    model
}

pub fn bidora() -> Command {
    let mut c = Command::cargo_bin("bidora").unwrap();
    c.env_remove("RUST_LOG");
    c
}

/// An SST-2-style folder: positive sentences use positive words.
pub fn sst2(dir: &Path) -> PathBuf {
    let data = dir.join("sst2");
    std::fs::create_dir_all(&data).unwrap();
    let good = ["good", "great", "fine", "best", "fun", "love", "funny"];
    let bad = ["bad", "awful", "boring", "worst", "dull", "hate", "sad"];
    let things = ["movie", "film", "plot", "story", "music", "ending", "actor"];
    let rows = |n: usize, offset: usize| {
        let mut s = String::from("sentence\tlabel\n");
        for i in 0..n {
            let k = i + offset;
            let positive = k.is_multiple_of(2);
            let word = if positive { good[k % 7] } else { bad[k % 7] };
            s.push_str(&format!(
                "the {} was really {word} .\t{}\n",
                things[(k / 2) % 7],
                u8::from(positive)
            ));
        }
        s
    };
    std::fs::write(data.join("train.tsv"), rows(48, 0)).unwrap();
    std::fs::write(data.join("dev.tsv"), rows(14, 100)).unwrap();
    data
}

/// An STS-B-style folder (GLUE's ten columns, sentences in columns 8 and 9, a 0–5 score last):
/// pairs of the same polarity score high, mixed pairs low, with a spread, so that Pearson and
/// Spearman are continuous.
pub fn stsb(dir: &Path) -> PathBuf {
    let data = dir.join("stsb");
    std::fs::create_dir_all(&data).unwrap();
    let words = [
        "good", "great", "fun", "love", "bad", "awful", "dull", "hate",
    ];
    let things = ["movie", "film", "plot", "story", "music", "ending", "actor"];
    let rows = |n: usize, offset: usize| {
        let mut s = String::from(
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n",
        );
        for i in 0..n {
            let k = i + offset;
            let (a, b) = (k % 8, (k * 5 + 3) % 8);
            let same = (a < 4) == (b < 4);
            let score = if same { 3.5 } else { 0.5 } + 0.25 * (k % 5) as f64;
            let thing = things[(k / 3) % 7];
            s.push_str(&format!(
                "{k}\tmain\tx\t2012\t{k}\tnone\tnone\tthe {thing} was {} .\tthe {thing} was really {} .\t{score:.2}\n",
                words[a], words[b]
            ));
        }
        s
    };
    std::fs::write(data.join("train.tsv"), rows(48, 0)).unwrap();
    std::fs::write(data.join("dev.tsv"), rows(14, 100)).unwrap();
    data
}

pub fn train_args(data: &Path, out: &Path, method: &str, iterations: usize) -> Vec<String> {
    [
        "train",
        "--task",
        "sst2",
        "--model",
        tiny_bert().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--method",
        method,
        "--iterations",
        &iterations.to_string(),
        "--batch-size",
        "8",
        "--max-length",
        "16",
        "--lower-lr",
        "5e-3",
        "--rank",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Replaces the value of `flag` in `args`.
pub fn set(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.to_string();
}

/// The records of a run's `metrics.jsonl`.
pub fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn stdout_of(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A copy of the models crate's random-weight decoder `name` (`tiny-llama`, `tiny-gpt2`) in
/// `dir`, with a made-up WordPiece vocabulary of the five BERT specials and `w0 … w{words-1}`.
pub fn tiny_decoder(dir: &Path, name: &str, words: usize) -> PathBuf {
    let fixtures = crate_dir().join("../bidora-models/tests/fixtures");
    let model_dir = dir.join(name);
    std::fs::create_dir_all(&model_dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(name).join(f), model_dir.join(f)).unwrap();
    }
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    vocab.extend((0..words).map(|i| format!("w{i}")));
    std::fs::write(model_dir.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    model_dir
}
