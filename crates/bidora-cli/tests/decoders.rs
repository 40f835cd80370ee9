//! `bidora train` and `bidora eval` on decoders: the tiny random-weight GPT-2 and Llama of the
//! models crate with a made-up vocabulary, on a small `prompts` task.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use bidora_models::heads::causal_lm_loss;
use bidora_models::llama::LlamaForCausalLM;
use bidora_models::tokenizer::Tokenizer;
use burn::tensor::{Int, Tensor, TensorData};
use common::{bidora, json, records, tiny_decoder};

type B = burn::backend::NdArray<f32>;

/// `prompts` data: "wA wB wC" → "w7 w8", 48 training and 6 dev rows.
fn copy_task(dir: &Path) -> PathBuf {
    let data = dir.join("copy");
    std::fs::create_dir_all(&data).unwrap();
    let rows = |n: usize, offset: usize| -> String {
        (0..n)
            .map(|i| {
                let (a, b, c) = ((i * 7 + offset) % 40, (i * 3 + 1) % 40, (i * 5 + 2) % 40);
                format!("{{\"prompt\": \"w{a} w{b} w{c}\", \"completion\": \"w7 w8\"}}\n")
            })
            .collect()
    };
    std::fs::write(data.join("train.jsonl"), rows(48, 0)).unwrap();
    std::fs::write(data.join("dev.jsonl"), rows(6, 3)).unwrap();
    data
}

fn train(model: &Path, data: &Path, out: &Path, method: &str) -> std::process::Output {
    bidora()
        .args(["train", "--task", "prompts", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args([
            "--method",
            method,
            "--iterations",
            "24",
            "--batch-size",
            "8",
        ])
        .args([
            "--max-length",
            "16",
            "--max-new-tokens",
            "3",
            "--lower-lr",
            "2e-2",
        ])
        .args(["--upper-lr", "2e-2", "--rank", "4", "--eval-every", "12"])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn perplexity(m: &serde_json::Value) -> f64 {
    m["perplexity"].as_f64().unwrap()
}

/// The dev perplexity `bidora eval` prints for `model` (with `adapter`) on `data`.
fn eval_perplexity(model: &Path, adapter: Option<&Path>, data: &Path) -> f64 {
    let mut c = bidora();
    c.args(["eval", "--task", "prompts", "--model"]).arg(model);
    if let Some(a) = adapter {
        c.arg("--adapter").arg(a);
    }
    let o = c
        .arg("--data")
        .arg(data)
        .args(["--max-length", "16", "--max-new-tokens", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("dev perplexity"))
        .unwrap_or_else(|| panic!("{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Every adapter method lowers the dev perplexity of both layouts; the adapter is saved as
/// PEFT's CAUSAL_LM adapter (GPT-2's with `fan_in_fan_out`), and `bidora eval` of it gives the
/// run's final metrics.
#[test]
fn adapters_on_decoders_lower_dev_perplexity_and_eval_reproduces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = copy_task(tmp.path());
    for (name, targets, fan_in_fan_out) in [
        ("tiny-llama", vec!["q_proj", "v_proj"], false),
        ("tiny-gpt2", vec!["c_attn"], true),
    ] {
        let model = tiny_decoder(tmp.path(), name, 95);
        for method in ["lora", "dora", "bidora"] {
            let out = tmp.path().join(format!("{name}-{method}"));
            let o = train(&model, &data, &out, method);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{name} {method}: {err}");
            let report = json(&out.join("report.json"));
            let (before, after) = (
                perplexity(&report["untrained"]),
                perplexity(&report["final"]),
            );
            assert!(
                after < 0.8 * before,
                "{name} {method}: perplexity {before} → {after}"
            );
            for k in ["rouge_l", "bleu", "nist", "cider"] {
                assert!(report["final"][k].is_f64(), "{name} {method}: {k}");
            }
            // Evaluations went to metrics.jsonl with the task's metrics.
            let evals: Vec<_> = records(&out)
                .into_iter()
                .filter(|r| r["event"] == "eval")
                .collect();
            assert_eq!(evals.len(), 2, "{name} {method}");
            let config = json(&out.join("adapter/adapter_config.json"));
            assert_eq!(config["task_type"], "CAUSAL_LM");
            assert_eq!(config["fan_in_fan_out"], fan_in_fan_out);
            assert_eq!(config["use_dora"], method != "lora");
            let got: Vec<&str> = config["target_modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(got, targets);
            // `bidora eval` of the saved adapter: the run's final metrics.
            let eval_ppl = eval_perplexity(&model, Some(&out.join("adapter")), &data);
            let want = perplexity(&report["final"]);
            assert!(
                (eval_ppl - want).abs() <= 1e-3 * want + 1e-4,
                "{name} {method}: eval {eval_ppl} against the run's {want}"
            );
        }
    }
}

/// The dev perplexity of the untrained model is `exp` of HF's causal-LM loss on
/// `[CLS] prompt [SEP] completion EOS` with the prompt's labels masked, worked out here from
/// the tokeniser and the library's full-logits loss.
#[test]
fn dev_perplexity_is_the_completion_loss_of_the_packed_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = copy_task(tmp.path());
    let model_dir = tiny_decoder(tmp.path(), "tiny-llama", 95);
    let got = eval_perplexity(&model_dir, None, &data);
    // By hand: each dev row on its own, token-weighted.
    let tok = Tokenizer::load(&model_dir).unwrap();
    let (_, model) = LlamaForCausalLM::<B>::load(&model_dir, &Default::default()).unwrap();
    let (mut nll, mut count) = (0.0f64, 0usize);
    for line in std::fs::read_to_string(data.join("dev.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt = tok
            .encode(v["prompt"].as_str().unwrap(), None, 99)
            .unwrap()
            .ids;
        let mut completion = tok.encode_plain(v["completion"].as_str().unwrap()).unwrap();
        completion.push(2);
        let ids: Vec<i64> = prompt
            .iter()
            .chain(&completion)
            .map(|&i| i64::from(i))
            .collect();
        let labels: Vec<i64> = (0..ids.len())
            .map(|j| if j < prompt.len() { -100 } else { ids[j] })
            .collect();
        let n = ids.len();
        let t = |v: Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, n]), &Default::default())
        };
        let logits = model.forward(t(ids), Tensor::ones([1, n], &Default::default()));
        let loss: f32 = causal_lm_loss(logits, t(labels)).into_scalar();
        nll += f64::from(loss) * completion.len() as f64;
        count += completion.len();
    }
    let want = (nll / count as f64).exp();
    assert!((got - want).abs() <= 1e-3 * want, "{got} against {want}");
}

/// Full fine-tuning of a decoder saves the plain HF folder, which loads and scores as the run
/// reported; `bidora merge` of an adapter gives the folder whose logits are the adapted
/// model's. A GGUF base cannot be saved whole: refused before training (exit 2).
#[test]
fn full_fine_tuning_and_merge_write_plain_decoder_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let data = copy_task(tmp.path());
    let model = tiny_decoder(tmp.path(), "tiny-gpt2", 95);
    let out = tmp.path().join("full");
    let o = train(&model, &data, &out, "full");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = json(&out.join("report.json"));
    assert!(perplexity(&report["final"]) < perplexity(&report["untrained"]));
    let saved = out.join("model");
    std::fs::copy(model.join("vocab.txt"), saved.join("vocab.txt")).ok();
    let eval = |m: &Path, adapter: Option<&Path>| eval_perplexity(m, adapter, &data);
    let want = perplexity(&report["final"]);
    let got = eval(&saved, None);
    assert!(
        (got - want).abs() <= 1e-3 * want,
        "saved model {got}, run {want}"
    );
    // merge: an adapter run, merged, scores as the adapter does.
    let run = tmp.path().join("dora");
    assert!(train(&model, &data, &run, "dora").status.success());
    let merged = tmp.path().join("merged");
    let o = bidora()
        .args(["merge", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(run.join("adapter"))
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, m) = (
        eval(&model, Some(&run.join("adapter"))),
        eval(&merged, None),
    );
    assert!((a - m).abs() <= 1e-3 * a, "adapter {a}, merged {m}");
    // A GGUF base: full fine-tuning is refused before anything runs.
    let gguf = common::crate_dir().join("../bidora-models/tests/fixtures/tiny-llama.gguf");
    let o = train(&gguf, &data, &tmp.path().join("gguf"), "full");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot save a GGUF model"));
}

/// Bad decoder runs are clear errors: an empty completion names its line, and an encoder on a
/// generation task is an input error.
#[test]
fn decoder_runs_refuse_bad_setups_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = copy_task(tmp.path());
    let model = tiny_decoder(tmp.path(), "tiny-llama", 95);
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(data.join("dev.jsonl"), bad.join("dev.jsonl")).unwrap();
    std::fs::write(
        bad.join("train.jsonl"),
        "{\"prompt\": \"w1 w2\", \"completion\": \"w1\"}\n{\"prompt\": \"w3\", \"completion\": \"\"}\n",
    )
    .unwrap();
    let o = train(&model, &bad, &tmp.path().join("empty"), "lora");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("line 2") && err.contains("empty completion"),
        "{err}"
    );
    let o = train(&common::tiny_bert(), &data, &tmp.path().join("enc"), "lora");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("not a decoder"), "{err}");
}

/// The `copy` task as chat rows: `{"messages": [user "wA wB wC", assistant "w7 w8"]}`.
fn chat_task(dir: &Path) -> PathBuf {
    let data = dir.join("chat");
    std::fs::create_dir_all(&data).unwrap();
    let rows = |n: usize, offset: usize| -> String {
        (0..n)
            .map(|i| {
                let (a, b, c) = ((i * 7 + offset) % 40, (i * 3 + 1) % 40, (i * 5 + 2) % 40);
                format!(
                    "{{\"messages\": [{{\"role\": \"user\", \"content\": \"w{a} w{b} w{c}\"}}, {{\"role\": \"assistant\", \"content\": \"w7 w8\"}}]}}\n"
                )
            })
            .collect()
    };
    std::fs::write(data.join("train.jsonl"), rows(48, 0)).unwrap();
    std::fs::write(data.join("dev.jsonl"), rows(6, 3)).unwrap();
    data
}

/// Chat rows train through the model's chat template (`tokenizer_config.json`), and `eval`
/// of the adapter reproduces the run; without a template they are a clear input error.
#[test]
fn chat_rows_train_through_the_models_template() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_task(tmp.path());
    let model = tiny_decoder(tmp.path(), "tiny-llama", 95);
    let o = train(&model, &data, &tmp.path().join("none"), "lora");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("line 1") && err.contains("chat template"),
        "{err}"
    );

    let template = "{% for m in messages %}{{ m.role }} {{ m.content }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::json!({ "chat_template": template }).to_string(),
    )
    .unwrap();
    let out = tmp.path().join("chat-lora");
    let o = train(&model, &data, &out, "lora");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = json(&out.join("report.json"));
    let (before, after) = (
        perplexity(&report["untrained"]),
        perplexity(&report["final"]),
    );
    assert!(after < 0.8 * before, "perplexity {before} → {after}");
    let eval_ppl = eval_perplexity(&model, Some(&out.join("adapter")), &data);
    assert!(
        (eval_ppl - after).abs() <= 1e-3 * after + 1e-4,
        "eval {eval_ppl} against the run's {after}"
    );
}
