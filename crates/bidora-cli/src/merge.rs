//! `bidora merge`, and the plain-model export it shares with full fine-tuning.

use std::path::Path;

use anyhow::Context;
use bidora_adapters::tensor_io::write_safetensors;
use bidora_models::bert::Family;
use bidora_util::atomic_write;
use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use serde_json::{json, Value};

use crate::adapter_folder::load_adapter;
use crate::fail::{usage, Classify, Fail};
use crate::session::TaskModel;

/// Writes `model` (adapters merged) as a plain HF folder: config.json (from `source`, with the
/// head's architecture and labels), model.safetensors and the tokenizer files.
pub fn export<B: Backend>(
    model: &TaskModel<B>,
    source: &Path,
    labels: &[String],
    out: &Path,
) -> Result<(), Fail> {
    let (tensors, head, family) = match model {
        TaskModel::Sequence(m) => (
            m.hf_tensors().runtime()?,
            "ForSequenceClassification",
            m.bert.family,
        ),
        TaskModel::Tokens(m) => (
            m.hf_tensors().runtime()?,
            "ForTokenClassification",
            m.bert.family,
        ),
        TaskModel::Causal(m) => return export_decoder(m, source, out),
    };
    let text = std::fs::read_to_string(source.join("config.json"))
        .with_context(|| format!("cannot read `{}`", source.join("config.json").display()))
        .input()?;
    let mut config: Value = serde_json::from_str(&text)
        .with_context(|| format!("malformed `{}`", source.join("config.json").display()))
        .input()?;
    let class = match family {
        Family::Bert => "Bert",
        Family::Roberta => "Roberta",
        Family::Mpnet => "MPNet",
    };
    config["architectures"] = json!([format!("{class}{head}")]);
    let n = model.num_labels();
    let names: Vec<String> = if labels.len() == n {
        labels.to_vec()
    } else {
        (0..n).map(|i| format!("LABEL_{i}")).collect()
    };
    config["id2label"] = json!(names
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect::<serde_json::Map<_, _>>());
    config["label2id"] = json!(names
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect::<serde_json::Map<_, _>>());
    if n == 1 && matches!(model, TaskModel::Sequence(_)) {
        config["problem_type"] = json!("regression");
    }
    write_folder(&tensors, &config, source, out)
}

/// A decoder with its adapters merged, as the plain HF folder of its source (config.json
/// unchanged). A GGUF base is refused: its adapter applies on load instead.
fn export_decoder<B: Backend>(
    model: &bidora_models::causal::CausalLm<B>,
    source: &Path,
    out: &Path,
) -> Result<(), Fail> {
    if source.is_file() {
        return Err(usage(format!(
            "`{}` is a GGUF file: merging into a GGUF base is not supported; apply the adapter on load (`bidora generate --adapter`)",
            source.display()
        )));
    }
    let text = std::fs::read_to_string(source.join("config.json"))
        .with_context(|| format!("cannot read `{}`", source.join("config.json").display()))
        .input()?;
    let config: Value = serde_json::from_str(&text)
        .with_context(|| format!("malformed `{}`", source.join("config.json").display()))
        .input()?;
    write_folder(&model.hf_tensors().runtime()?, &config, source, out)
}

/// Writes model.safetensors, config.json and the source's tokenizer files into `out`.
fn write_folder(
    tensors: &std::collections::BTreeMap<String, bidora_adapters::tensor_io::HostTensor>,
    config: &Value,
    source: &Path,
    out: &Path,
) -> Result<(), Fail> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create `{}`", out.display()))
        .runtime()?;
    write_safetensors(
        &out.join("model.safetensors"),
        tensors,
        &std::collections::HashMap::from([("format".to_string(), "pt".to_string())]),
    )
    .runtime()?;
    atomic_write(
        &out.join("config.json"),
        serde_json::to_string_pretty(config)
            .map_err(anyhow::Error::from)?
            .as_bytes(),
    )
    .runtime()?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "generation_config.json",
    ] {
        let src = source.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src)
                .with_context(|| format!("cannot read `{}`", src.display()))
                .input()?;
            atomic_write(&out.join(f), &bytes).runtime()?;
        }
    }
    Ok(())
}

/// `bidora merge` (on the CPU: merging is one pass over the weights).
pub fn merge(model_dir: &Path, adapter: &Path, out: &Path) -> Result<(), Fail> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(usage(format!(
            "`{}` exists and is not empty: choose a new folder",
            out.display()
        )));
    }
    let info = load_adapter(model_dir, adapter)?;
    let device = Default::default();
    let model = TaskModel::<NdArray<f32>>::load(model_dir, info.kind, info.num_labels, &device)?
        .with_peft(&info.adapter)?;
    export(&model, model_dir, &info.labels, out)?;
    println!(
        "merged `{}` into `{}` → {}",
        adapter.display(),
        model_dir.display(),
        out.display()
    );
    Ok(())
}
