//! `bidora predict`: logits (and labels) for a JSONL file of inputs.

use std::path::PathBuf;

use anyhow::Context;
use bidora_backend::BackendTask;
use bidora_data::jsonl::{self, LabelSpace};
use bidora_data::tasks::TaskKind;
use bidora_util::atomic_write;
use burn::tensor::backend::AutodiffBackend;
use serde_json::json;

use crate::adapter_folder::load_adapter;
use crate::defaults;
use crate::fail::{usage, Classify, Fail};
use crate::session::{argmax, predict as run_predict, ModelTokenizer, TaskModel};

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
    #[arg(long, default_value = defaults::BACKEND)]
    pub backend: String,
    /// Longest input in tokens.
    #[arg(long, default_value_t = defaults::PREDICT_MAX_LENGTH)]
    pub max_length: usize,
    /// Examples per forward pass.
    #[arg(long, default_value_t = defaults::EVAL_BATCH_SIZE)]
    pub batch_size: usize,
}

struct PredictJob(PredictArgs);

impl BackendTask for PredictJob {
    type Output = Result<(), Fail>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        let info = load_adapter(&a.model, &a.adapter)?;
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
                line["label"] = json!(info.labels[argmax(row)]);
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
