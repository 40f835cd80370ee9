//! What an adapter folder (HF PEFT's or ours) says about the head it needs: task kind,
//! number of labels and their names.

use std::path::Path;

use bidora_adapters::peft::PeftAdapter;
use bidora_data::tasks::TaskKind;
use bidora_models::heads::saved_head_labels;
use serde_json::Value;

use crate::fail::{input, Classify, Fail};

/// What an adapter folder says about its task.
pub struct LoadedAdapter {
    pub adapter: PeftAdapter,
    pub kind: TaskKind,
    pub num_labels: usize,
    pub labels: Vec<String>,
}

/// Reads an adapter folder (HF PEFT's or ours) and works out its head.
pub fn load_adapter(model: &Path, dir: &Path) -> Result<LoadedAdapter, Fail> {
    let adapter = PeftAdapter::load(dir).input()?;
    if adapter.config.task_type.as_deref() == Some("CAUSAL_LM") {
        // A decoder's adapter: no head, no labels.
        return Ok(LoadedAdapter {
            adapter,
            kind: TaskKind::Generation,
            num_labels: 0,
            labels: Vec::new(),
        });
    }
    let kind = match adapter.config.task_type.as_deref() {
        Some("TOKEN_CLS") => TaskKind::TokenClassification,
        _ => TaskKind::Classification,
    };
    // Ours only (PEFT's folders have none); present but unreadable is an error, not a fallback.
    let info_file = dir.join("bidora.json");
    let ours: Option<bidora_records::AdapterInfo> = if info_file.is_file() {
        Some(bidora_records::read_json(&info_file).input()?)
    } else {
        None
    };
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
        .map(|info| info.labels)
        .filter(|l| l.len() == num_labels)
        .or(from_config.filter(|l| l.len() == num_labels))
        .unwrap_or_default();
    Ok(LoadedAdapter {
        adapter,
        kind,
        num_labels,
        labels,
    })
}

/// The label names evaluation can take without reading a training file: the adapter's (an
/// empty list for a regression head), else a model folder's own `id2label` when it names its
/// labels (not transformers' placeholder `LABEL_0`, `LABEL_1`, ...).
pub fn known_labels(model: &Path, info: Option<&LoadedAdapter>) -> Option<Vec<String>> {
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
pub fn model_labels(model: &Path) -> Option<Vec<String>> {
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
