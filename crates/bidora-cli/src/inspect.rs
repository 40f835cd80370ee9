//! `bidora inspect`: a model's architecture and parameter counts, and an adapter's layers.

use std::path::Path;

use bidora_adapters::{ParamGroup, ParamPartition};
use bidora_models::bert::Bert;
use bidora_models::gpt2::Gpt2LmHeadModel;
use bidora_models::llama::LlamaForCausalLM;
use bidora_models::Architecture;
use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use serde_json::{json, Value};

use crate::adapter_folder::adapter_info;
use crate::fail::{usage, Classify, Fail};
use crate::session::TaskModel;

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
