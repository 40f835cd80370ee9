//! `bidora`: fine-tune pretrained transformers with LoRA, DoRA, BiDoRA or full fine-tuning,
//! and evaluate, merge, inspect and run the adapters. See `bidora --help`.

mod adapter_folder;
mod config;
mod defaults;
mod eval;
mod fail;
mod fingerprint;
mod generate;
mod inspect;
mod merge;
mod plot;
mod predict;
mod progress;
mod session;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Knobs;
use crate::fail::{Code, Fail};

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the run failed (training diverged, a file could not be written, ...)
  2  bad usage or configuration (unknown flag, config key, task or method)
  3  bad input (missing or malformed model folder, data file or adapter; an adapter for another model)

Examples:
  bidora train --task sst2 --model all-MiniLM-L6-v2/ --data glue/SST-2 --method bidora --out runs/sst2
  bidora train --config run.toml --lower-lr 1e-4          (flags override the file)
  bidora train --resume runs/sst2                          (continue an interrupted run)
  bidora eval --model all-MiniLM-L6-v2/ --adapter runs/sst2/adapter --task sst2 --data glue/SST-2
  bidora predict --model all-MiniLM-L6-v2/ --adapter runs/sst2/adapter --input in.jsonl --output out.jsonl
  bidora merge --model all-MiniLM-L6-v2/ --adapter runs/sst2/adapter --out merged/
  bidora inspect --model all-MiniLM-L6-v2/ --adapter runs/sst2/adapter";

/// Fine-tune pretrained transformers with BiDoRA, DoRA, LoRA or full fine-tuning.
///
/// BiDoRA trains the low-rank direction of each adapted weight on the training split and its
/// magnitude on a held-out validation split (a bi-level problem); LoRA, DoRA and full
/// fine-tuning are the baselines. Models are HF folders (config.json, model.safetensors,
/// tokenizer); adapters are read and written in HF PEFT's format.
#[derive(Parser, Debug)]
#[command(name = "bidora", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One value per process: the size of the `train` variant (every knob) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune a model on a task and save the adapter, metrics, curves and a report.
    ///
    /// Every setting can come from a TOML file (`--config`, same keys as the flags with `_`
    /// for `-`); flags override it. The resolved settings are saved as `config.toml` in the
    /// run folder, beside `metrics.jsonl`, `curves.svg`/`curves.png`, `report.json`, the
    /// checkpoint and `adapter/` (PEFT format; a BiDoRA adapter is written as a DoRA adapter).
    #[command(after_help = config::TRAIN_HELP)]
    Train {
        /// Continue the interrupted run in this folder (its config.toml and checkpoint).
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
        resume: Option<PathBuf>,
        /// TOML file with settings (flags override it).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        knobs: Knobs,
    },
    /// Evaluate a model with an adapter on a task's dev set.
    Eval(eval::EvalArgs),
    /// Predict on JSONL inputs (`"text"`, optional `"text_pair"`) and write one JSONL line of
    /// `"logits"` (and `"label"` where the names are known) per input.
    Predict(predict::PredictArgs),
    /// Generate text with a decoder (GPT-2 or Llama layout, HF folder or GGUF file), through
    /// a KV cache: greedy, beam search (--beams), or sampled with --temperature / --top-p
    /// from --seed. One --prompt
    /// streams to stdout; --input batches a JSONL file of {"prompt": ...} into --output.
    Generate(generate::GenerateArgs),
    /// Merge an adapter into the base weights and write a plain HF model folder
    /// (config.json, model.safetensors, tokenizer files) that transformers loads as is.
    Merge {
        /// HF model folder.
        #[arg(long)]
        model: PathBuf,
        /// Adapter folder.
        #[arg(long)]
        adapter: PathBuf,
        /// Output folder (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a model's architecture, its adaptable layers and parameter counts per group.
    Inspect {
        /// HF model folder.
        #[arg(long)]
        model: PathBuf,
        /// Adapter folder: also show the adapted layers and the trainable groups.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Reuse freed tensor buffers instead of faulting in fresh pages (30% of a CPU step).
    bidora_backend::retain_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(Code::Usage as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fail) => {
            eprintln!("error: {}", fail.error);
            for cause in fail.error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(fail.code as u8)
        }
    }
}

fn run(cli: Cli) -> Result<(), Fail> {
    match cli.command {
        Command::Train {
            resume,
            config,
            knobs,
        } => train::train(resume, config, knobs),
        Command::Eval(a) => eval::eval(a),
        Command::Predict(a) => predict::predict(a),
        Command::Generate(a) => generate::generate(a),
        Command::Merge {
            model,
            adapter,
            out,
        } => merge::merge(&model, &adapter, &out),
        Command::Inspect {
            model,
            adapter,
            json,
        } => inspect::inspect(&model, adapter.as_deref(), json),
    }
}
