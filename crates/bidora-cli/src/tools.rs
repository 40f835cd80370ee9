//! `bidora eval`, `predict`, `merge` and `inspect`, and the plain-model export they share with
//! full fine-tuning.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bidora_adapters::peft::PeftAdapter;
use bidora_adapters::tensor_io::{atomic_write, write_safetensors};
use bidora_adapters::{ParamGroup, ParamPartition};
use bidora_backend::BackendTask;
use bidora_data::jsonl::{self, LabelSpace};
use bidora_data::tasks::{self, TaskKind};
use bidora_models::bert::{Bert, Family};
use bidora_models::gpt2::Gpt2LmHeadModel;
use bidora_models::heads::saved_head_labels;
use bidora_models::llama::LlamaForCausalLM;
use bidora_models::Architecture;
use burn::backend::NdArray;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde_json::{json, Value};

use crate::fail::{input, usage, Classify, Fail};
use crate::session::{evaluate, predict as run_predict, ModelTokenizer, TaskModel};

/// What an adapter folder says about its task.
struct AdapterInfo {
    adapter: PeftAdapter,
    kind: TaskKind,
    num_labels: usize,
    labels: Vec<String>,
}

/// Reads an adapter folder (HF PEFT's or ours) and works out its head.
fn adapter_info(model: &Path, dir: &Path) -> Result<AdapterInfo, Fail> {
    let adapter = PeftAdapter::load(dir).input()?;
    let kind = match adapter.config.task_type.as_deref() {
        Some("TOKEN_CLS") => TaskKind::TokenClassification,
        _ => TaskKind::Classification,
    };
    let ours: Option<Value> = std::fs::read_to_string(dir.join("bidora.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let from_config = model_labels(model);
    let num_labels = saved_head_labels(&adapter.extra_tensors)
        .or_else(|| from_config.as_ref().map(Vec::len))
        .ok_or_else(|| {
            input(format!(
                "`{}` has no saved classifier (modules_to_save) and the model's config.json has no id2label: the number of labels is unknown",
                dir.display()
            ))
        })?;
    let kind = if num_labels == 1 && kind == TaskKind::Classification {
        TaskKind::Regression
    } else {
        kind
    };
    let labels = ours
        .as_ref()
        .and_then(|v| v["labels"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .filter(|l| l.len() == num_labels)
        .or(from_config.filter(|l| l.len() == num_labels))
        .unwrap_or_default();
    Ok(AdapterInfo {
        adapter,
        kind,
        num_labels,
        labels,
    })
}

/// The label names evaluation can take without reading a training file: the adapter's (an
/// empty list for a regression head), else a model folder's own `id2label` when it names its
/// labels (not transformers' placeholder `LABEL_0`, `LABEL_1`, ...).
fn known_labels(model: &Path, info: Option<&AdapterInfo>) -> Option<Vec<String>> {
    match info {
        Some(i) if i.kind == TaskKind::Regression => Some(Vec::new()),
        Some(i) if !i.labels.is_empty() => Some(i.labels.clone()),
        Some(_) => None,
        None => model_labels(model).filter(|names| {
            !names.is_empty()
                && names
                    .iter()
                    .enumerate()
                    .any(|(i, n)| *n != format!("LABEL_{i}"))
        }),
    }
}

/// `id2label` of a model folder's config.json, in id order.
fn model_labels(model: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(model.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let map = v["id2label"].as_object()?;
    let mut pairs: Vec<(usize, String)> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    pairs.sort();
    Some(pairs.into_iter().map(|(_, v)| v).collect())
}

/// Arguments of `bidora eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// HF model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter folder (PEFT format, from HF PEFT or `bidora train`); none: the base model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Task name (`bidora train --help` lists them).
    #[arg(long)]
    pub task: String,
    /// The task's data folder or file.
    #[arg(long)]
    pub data: PathBuf,
    /// `cpu`, `wgpu` or `cuda[:INDEX]`.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Longest input in tokens.
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

struct EvalJob(EvalArgs);

impl BackendTask for EvalJob {
    type Output = Result<(), Fail>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        let task = tasks::task(&a.task).usage()?;
        let info = match &a.adapter {
            Some(dir) => Some(adapter_info(&a.model, dir)?),
            None => None,
        };
        let data = task
            .load_eval(&a.data, known_labels(&a.model, info.as_ref()).as_deref())
            .input()?;
        let kind = task.kind_of(&data);
        let num_labels = match kind {
            TaskKind::Regression => 1,
            _ => data.labels.len(),
        };
        let tok = ModelTokenizer::load(&a.model)?;
        let model = TaskModel::<B::InnerBackend>::load(&a.model, kind, num_labels, &device)?;
        let model = match (&a.adapter, info) {
            (Some(dir), Some(info)) => {
                if info.num_labels != num_labels {
                    return Err(input(format!(
                        "the adapter `{}` predicts {} labels, task `{}` has {num_labels}",
                        dir.display(),
                        info.num_labels,
                        a.task
                    )));
                }
                model.with_peft(&info.adapter)?
            }
            _ => model,
        };
        for (name, examples) in &data.eval {
            let m = evaluate(
                &model,
                &task,
                kind,
                &data.labels,
                examples,
                &tok,
                a.batch_size,
                a.max_length,
                &device,
            )?;
            for (k, v) in &m {
                println!("{} {name} {k} {v:.4}", a.task);
            }
        }
        Ok(())
    }
}

/// `bidora eval`.
pub fn eval(a: EvalArgs) -> Result<(), Fail> {
    let device = a.backend.parse().usage()?;
    bidora_backend::run(&device, Some(0), EvalJob(a)).usage()?
}

/// Arguments of `bidora predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// HF model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter folder (HF PEFT `SEQ_CLS` LoRA/DoRA with the saved classifier, or ours).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Input JSONL file.
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL file (written atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// `cpu`, `wgpu` or `cuda[:INDEX]`.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Longest input in tokens.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

struct PredictJob(PredictArgs);

impl BackendTask for PredictJob {
    type Output = Result<(), Fail>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        let info = adapter_info(&a.model, &a.adapter)?;
        if info.kind == TaskKind::TokenClassification {
            return Err(usage(
                "`bidora predict` reads whole-text inputs; this adapter is for token classification (use `bidora eval`)",
            ));
        }
        let bytes = std::fs::read(&a.input)
            .with_context(|| format!("cannot read `{}`", a.input.display()))
            .input()?;
        let examples = jsonl::parse(&bytes, &a.input, &LabelSpace::Unlabelled).input()?;
        let tok = ModelTokenizer::load(&a.model)?;
        let model =
            TaskModel::<B::InnerBackend>::load(&a.model, info.kind, info.num_labels, &device)?
                .with_peft(&info.adapter)?;
        let out = run_predict(
            &model,
            info.kind,
            &examples,
            &tok,
            a.batch_size,
            a.max_length,
            0,
            &device,
        )?;
        let mut text = String::new();
        for row in &out.logits {
            let mut line = json!({ "logits": row });
            if info.kind == TaskKind::Classification && !info.labels.is_empty() {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
                line["label"] = json!(info.labels[best]);
            }
            text.push_str(&line.to_string());
            text.push('\n');
        }
        atomic_write(&a.output, text.as_bytes()).runtime()?;
        eprintln!(
            "{} predictions written to {}",
            out.logits.len(),
            a.output.display()
        );
        Ok(())
    }
}

/// `bidora predict`.
pub fn predict(a: PredictArgs) -> Result<(), Fail> {
    let device = a.backend.parse().usage()?;
    bidora_backend::run(&device, Some(0), PredictJob(a)).usage()?
}

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
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create `{}`", out.display()))
        .runtime()?;
    write_safetensors(
        &out.join("model.safetensors"),
        &tensors,
        &std::collections::HashMap::from([("format".to_string(), "pt".to_string())]),
    )
    .runtime()?;
    atomic_write(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)
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
    let info = adapter_info(model_dir, adapter)?;
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

/// Parameter count of a module.
fn numel<B: Backend, M: burn::module::Module<B>>(m: &M) -> usize {
    m.num_params()
}

/// `bidora inspect`.
pub fn inspect(model_dir: &Path, adapter: Option<&Path>, as_json: bool) -> Result<(), Fail> {
    type B = NdArray<f32>;
    let device = Default::default();
    let arch = Architecture::detect(model_dir).input()?;
    let mut report = json!({
        "model": model_dir.display().to_string(),
        "architecture": arch.model_type(),
    });
    let (layers, params, linear_names): (usize, usize, Vec<String>) = match arch {
        Architecture::Bert | Architecture::Roberta | Architecture::Mpnet => {
            let (c, m) = Bert::<B>::load_base(model_dir, &device).input()?;
            let names = m
                .family
                .projection_names()
                .iter()
                .map(|n| format!("encoder.layer.N.{n}"))
                .collect();
            report["hidden_size"] = json!(c.hidden_size);
            report["heads"] = json!(c.num_attention_heads);
            (c.num_hidden_layers, numel(&m), names)
        }
        Architecture::Gpt2 => {
            let (c, m) = Gpt2LmHeadModel::<B>::load(model_dir, &device).input()?;
            report["hidden_size"] = json!(c.n_embd);
            report["heads"] = json!(c.n_head);
            let names = bidora_models::gpt2::BLOCK_PROJECTIONS
                .iter()
                .map(|n| format!("transformer.h.N.{n}"))
                .collect();
            (c.n_layer, numel(&m), names)
        }
        Architecture::Llama => {
            let (c, m) = LlamaForCausalLM::<B>::load(model_dir, &device).input()?;
            report["hidden_size"] = json!(c.hidden_size);
            report["heads"] = json!(c.num_attention_heads);
            report["kv_heads"] = json!(c.kv_heads());
            let names = bidora_models::llama::LAYER_PROJECTIONS
                .iter()
                .map(|n| format!("model.layers.N.{n}"))
                .collect();
            (c.num_hidden_layers, numel(&m), names)
        }
    };
    report["layers"] = json!(layers);
    report["parameters"] = json!(params);
    report["adaptable_linear_layers"] = json!(linear_names);
    if let Some(dir) = adapter {
        if !matches!(
            arch,
            Architecture::Bert | Architecture::Roberta | Architecture::Mpnet
        ) {
            return Err(usage(
                "`inspect --adapter` reads classification adapters of encoder models",
            ));
        }
        let info = adapter_info(model_dir, dir)?;
        // Trainability is only tracked on an autodiff backend.
        let model = TaskModel::<burn::backend::Autodiff<B>>::load(
            model_dir,
            info.kind,
            info.num_labels,
            &device,
        )?
        .with_peft(&info.adapter)?;
        let part = ParamPartition::of(&model);
        let adapted: Vec<String> = bidora_adapters::AdapterHost::adapters(&model)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        report["adapter"] = json!({
            "folder": dir.display().to_string(),
            "method": format!("{:?}", info.adapter.config.to_adapter_config().method).to_lowercase(),
            "rank": info.adapter.config.r,
            "alpha": info.adapter.config.lora_alpha,
            "task_type": info.adapter.config.task_type,
            "labels": info.num_labels,
            "adapted_layers": adapted,
            "parameters": {
                "direction": part.count(ParamGroup::Direction),
                "magnitude": part.count(ParamGroup::Magnitude),
                "head": part.count(ParamGroup::Head),
                "frozen": part.count(ParamGroup::Frozen),
            },
        });
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
        );
        return Ok(());
    }
    println!("model         {}", model_dir.display());
    println!("architecture  {}", arch.model_type());
    println!(
        "size          {layers} layers, hidden {}, {} heads",
        report["hidden_size"], report["heads"]
    );
    println!("parameters    {}", group_digits(params));
    println!(
        "adaptable     {}",
        report["adaptable_linear_layers"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    if let Some(a) = report.get("adapter") {
        println!(
            "adapter       {} ({}, r = {}, alpha = {}, {} labels)",
            a["folder"].as_str().unwrap_or(""),
            a["method"].as_str().unwrap_or(""),
            a["rank"],
            a["alpha"],
            a["labels"]
        );
        let layers = a["adapted_layers"].as_array().map_or(0, Vec::len);
        println!("adapted       {layers} layers");
        for g in ["direction", "magnitude", "head", "frozen"] {
            let n = a["parameters"][g].as_u64().unwrap_or(0) as usize;
            println!("  {g:<11} {:>14}", group_digits(n));
        }
    }
    Ok(())
}

/// `1234567` → `1,234,567`.
fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
