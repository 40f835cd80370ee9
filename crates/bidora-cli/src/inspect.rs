//! `bidora inspect`: a model's architecture and parameter counts, and an adapter's layers.

use std::path::Path;

use bidora_adapters::ParamPartition;
use bidora_models::bert::Bert;
use bidora_models::gpt2::Gpt2LmHeadModel;
use bidora_models::llama::LlamaForCausalLM;
use bidora_models::Architecture;
use bidora_records::ParameterCounts;
use burn::backend::NdArray;
use burn::module::Module;
use serde::Serialize;

use crate::adapter_folder::load_adapter;
use crate::fail::{usage, Classify, Fail};
use crate::session::{parameter_counts, TaskModel};

type B = NdArray<f32>;

/// What `inspect` reports (`--json` prints it as is).
#[derive(Serialize)]
struct ModelSummary {
    model: String,
    architecture: &'static str,
    layers: usize,
    hidden_size: usize,
    heads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_heads: Option<usize>,
    parameters: usize,
    /// Module paths that `--targets` can name, with `N` for the layer index.
    adaptable_linear_layers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter: Option<AdapterSummary>,
}

#[derive(Serialize)]
struct AdapterSummary {
    folder: String,
    method: String,
    rank: usize,
    alpha: f64,
    task_type: Option<String>,
    labels: usize,
    adapted_layers: Vec<String>,
    parameters: ParameterCounts,
}

/// `bidora inspect`.
pub fn inspect(model_dir: &Path, adapter: Option<&Path>, as_json: bool) -> Result<(), Fail> {
    let arch = Architecture::detect(model_dir).input()?;
    let mut summary = summarize_model(model_dir, arch)?;
    if let Some(dir) = adapter {
        summary.adapter = Some(summarize_adapter(model_dir, arch, dir)?);
    }
    if as_json {
        let text = serde_json::to_string_pretty(&summary).map_err(anyhow::Error::from)?;
        println!("{text}");
    } else {
        print_text(&summary);
    }
    Ok(())
}

fn summarize_model(dir: &Path, arch: Architecture) -> Result<ModelSummary, Fail> {
    let device = Default::default();
    let paths = |prefix: &str, names: &[&str]| -> Vec<String> {
        names.iter().map(|n| format!("{prefix}.N.{n}")).collect()
    };
    let summary = |layers, hidden_size, heads, parameters, names| ModelSummary {
        model: dir.display().to_string(),
        architecture: arch.model_type(),
        layers,
        hidden_size,
        heads,
        kv_heads: None,
        parameters,
        adaptable_linear_layers: names,
        adapter: None,
    };
    Ok(match arch {
        Architecture::Bert | Architecture::Roberta | Architecture::Mpnet => {
            let (c, m) = Bert::<B>::load_base(dir, &device).input()?;
            let names = paths("encoder.layer", &m.family.projection_names());
            let (layers, hidden, heads) =
                (c.num_hidden_layers, c.hidden_size, c.num_attention_heads);
            summary(layers, hidden, heads, m.num_params(), names)
        }
        Architecture::Gpt2 => {
            let (c, m) = Gpt2LmHeadModel::<B>::load(dir, &device).input()?;
            let names = paths("transformer.h", &bidora_models::gpt2::BLOCK_PROJECTIONS);
            summary(c.n_layer, c.n_embd, c.n_head, m.num_params(), names)
        }
        Architecture::Llama => {
            let (c, m) = LlamaForCausalLM::<B>::load(dir, &device).input()?;
            let names = paths("model.layers", &bidora_models::llama::LAYER_PROJECTIONS);
            let (layers, hidden, heads) =
                (c.num_hidden_layers, c.hidden_size, c.num_attention_heads);
            ModelSummary {
                kv_heads: Some(c.kv_heads()),
                ..summary(layers, hidden, heads, m.num_params(), names)
            }
        }
    })
}

fn summarize_adapter(
    model_dir: &Path,
    arch: Architecture,
    dir: &Path,
) -> Result<AdapterSummary, Fail> {
    if !arch.is_encoder() {
        return Err(usage(
            "`inspect --adapter` reads classification adapters of encoder models",
        ));
    }
    let info = load_adapter(model_dir, dir)?;
    // Trainability is only tracked on an autodiff backend.
    let model = TaskModel::<burn::backend::Autodiff<B>>::load(
        model_dir,
        info.kind,
        info.num_labels,
        &Default::default(),
    )?
    .with_peft(&info.adapter)?;
    let config = &info.adapter.config;
    Ok(AdapterSummary {
        folder: dir.display().to_string(),
        method: format!("{:?}", config.to_adapter_config().method).to_lowercase(),
        rank: config.r,
        alpha: config.lora_alpha,
        task_type: config.task_type.clone(),
        labels: info.num_labels,
        adapted_layers: bidora_adapters::AdapterHost::adapters(&model)
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
        parameters: parameter_counts(&ParamPartition::of(&model)),
    })
}

fn print_text(s: &ModelSummary) {
    println!("model         {}", s.model);
    println!("architecture  {}", s.architecture);
    println!(
        "size          {} layers, hidden {}, {} heads",
        s.layers, s.hidden_size, s.heads
    );
    println!("parameters    {}", group_digits(s.parameters));
    println!("adaptable     {}", s.adaptable_linear_layers.join(", "));
    if let Some(a) = &s.adapter {
        println!(
            "adapter       {} ({}, r = {}, alpha = {}, {} labels)",
            a.folder, a.method, a.rank, a.alpha, a.labels
        );
        println!("adapted       {} layers", a.adapted_layers.len());
        let p = &a.parameters;
        for (g, n) in [
            ("direction", p.direction),
            ("magnitude", p.magnitude),
            ("head", p.head),
            ("frozen", p.frozen),
        ] {
            println!("  {g:<11} {:>14}", group_digits(n));
        }
    }
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
