//! `bidora eval`: the task's metrics of a model, with or without an adapter, on the task's
//! evaluation files alone.

use std::path::PathBuf;

use bidora_backend::BackendTask;
use bidora_data::tasks;
use burn::tensor::backend::AutodiffBackend;

use crate::adapter_folder::{known_labels, load_adapter};
use crate::defaults;
use crate::fail::{input, Classify, Fail};
use crate::session::{load_task, num_labels, prompt_format, Decoding, Evaluator};

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
    #[arg(long, default_value = defaults::BACKEND)]
    pub backend: String,
    /// Longest input in tokens.
    #[arg(long, default_value_t = defaults::MAX_LENGTH)]
    pub max_length: usize,
    /// Examples per forward pass.
    #[arg(long, default_value_t = defaults::EVAL_BATCH_SIZE)]
    pub batch_size: usize,
    /// Generation tasks: new tokens at most per example.
    #[arg(long, default_value_t = defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Generation tasks: beam width (1: greedy).
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
}

struct EvalJob(EvalArgs);

impl BackendTask for EvalJob {
    type Output = Result<(), Fail>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        let task = tasks::task(&a.task).usage()?;
        let info = match &a.adapter {
            Some(dir) => Some(load_adapter(&a.model, dir)?),
            None => None,
        };
        let mut data = task
            .load_eval(&a.data, known_labels(&a.model, info.as_ref()).as_deref())
            .input()?;
        let kind = task.kind_of(&data);
        let num_labels = num_labels(kind, &data.labels);
        let (model, tok, eos) = load_task::<B::InnerBackend>(&a.model, kind, num_labels, &device)?;
        let format = prompt_format(&task, &mut data, &tok)?;
        let model = match info {
            Some(info) if info.num_labels != num_labels => {
                return Err(input(format!(
                    "the adapter `{}` predicts {} labels, task `{}` has {num_labels}",
                    info.adapter.dir.display(),
                    info.num_labels,
                    a.task
                )))
            }
            Some(info) => model.with_peft(&info.adapter)?,
            None => model,
        };
        let evaluator = Evaluator {
            task: &task,
            kind,
            labels: &data.labels,
            tokenizer: &tok,
            batch_size: a.batch_size,
            max_len: a.max_length,
            decoding: Decoding {
                eos,
                max_new_tokens: a.max_new_tokens,
                beams: a.beams.max(1),
            },
            format,
        };
        for (name, examples) in &data.eval {
            let m = evaluator.metrics(&model, examples, &device)?;
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
