//! `bidora generate`: text from a decoder (GPT-2 or Llama layout, an HF folder or a GGUF file),
//! optionally with a PEFT adapter, through the KV cache: greedy by default, beam search with
//! `--beams`, or sampled with a temperature and top-p from a seed. One `--prompt` streams its tokens to stdout; `--input`
//! batches a JSONL file of `{"prompt": …}` lines into `--output` (`{"prompt", "completion"}`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use bidora_adapters::peft::PeftAdapter;
use bidora_backend::BackendTask;
use bidora_models::causal::CausalLm;
use bidora_models::generate::{beam_search, decode_cached, KvCache};
use bidora_models::host_llama::HostLlama;
use bidora_models::tokenizer::Tokenizer;
use bidora_util::atomic_write;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde_json::json;

use crate::defaults;
use crate::fail::{input, usage, Classify, Fail};

/// Arguments of `bidora generate`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["prompt", "input"])))]
pub struct GenerateArgs {
    /// A decoder: an HF folder (GPT-2 or Llama layout: config.json, model.safetensors,
    /// tokenizer files) or a GGUF file (Llama layout; its own vocabulary).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA/DoRA adapter folder for the model (`CAUSAL_LM`; HF PEFT's or ours).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// One prompt: its continuation is streamed to stdout.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A JSONL file of `{"prompt": "..."}` lines (needs --output).
    #[arg(long, requires = "output")]
    pub input: Option<PathBuf>,
    /// Where --input's completions go: one `{"prompt", "completion"}` line each (atomic).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// New tokens at most (decoding stops earlier at the end-of-sequence token).
    #[arg(long, default_value_t = defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Stop when the continuation contains this text (cut before it); repeatable.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Sampling temperature; 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sampling: keep the smallest set of tokens whose probabilities reach this (nucleus).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Beam search with this many beams (1: greedy or sampling). Beams need --temperature 0
    /// and do not stream: the best hypothesis is printed when the search ends.
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// `cpu`, `wgpu` or `cuda[:INDEX]`.
    #[arg(long, default_value = defaults::BACKEND)]
    pub backend: String,
}

/// How the next token is picked.
#[derive(Clone, Copy)]
struct Sampling {
    temperature: f64,
    top_p: f64,
    beams: usize,
}

impl Sampling {
    /// The next token from the last position's logits: the argmax at temperature 0, else a
    /// draw from the run's host stream within the top-p nucleus.
    fn pick(self, logits: &[f32]) -> u32 {
        let argmax = || {
            (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap_or(0) as u32
        };
        if self.temperature <= 0.0 {
            return argmax();
        }
        let top = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let mut p: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i, ((v as f64 - top) / self.temperature).exp()))
            .collect();
        let total: f64 = p.iter().map(|x| x.1).sum();
        p.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (mut kept, mut mass) = (0, 0.0);
        while kept < p.len() && (kept == 0 || mass < self.top_p * total) {
            mass += p[kept].1;
            kept += 1;
        }
        let u = bidora_util::rng::uniform(1, 0.0, mass)[0] as f64;
        let mut acc = 0.0;
        for &(i, w) in &p[..kept] {
            acc += w;
            if u < acc {
                return i as u32;
            }
        }
        p[kept - 1].0 as u32
    }
}

/// The model that decodes: the Burn model, or the host decoder ([`HostLlama`]) for a Llama on
/// the CPU without beams (a GGUF file's quantised blocks when no adapter is given, read without
/// building the Burn model; else the model's weights with the adapter merged, in `f32`).
#[allow(clippy::large_enum_variant)] // one per run
enum Decoder<B: Backend> {
    Burn(CausalLm<B>),
    Host(HostLlama),
}

impl<B: Backend> Decoder<B> {
    /// Loads the decoder `a` names (and its PEFT adapter), with its tokeniser and EOS token.
    fn load(
        a: &GenerateArgs,
        cpu: bool,
        device: &B::Device,
    ) -> Result<(Self, Tokenizer, Option<u32>), Fail> {
        let host = cpu && a.beams == 1;
        if host && a.adapter.is_none() && a.model.is_file() {
            if let Ok(model) = HostLlama::from_gguf(&a.model) {
                let (tok, eos) = CausalLm::<B>::load_tokenizer(&a.model).input()?;
                return Ok((Decoder::Host(model), tok, eos));
            }
        }
        let loaded = CausalLm::load(&a.model, device).input()?;
        let model = match &a.adapter {
            Some(dir) => loaded
                .model
                .with_peft(&PeftAdapter::load(dir).input()?)
                .input()?,
            None => loaded.model,
        };
        let decoder = match &model {
            // A model the host decoder does not take (biases) stays on Burn.
            CausalLm::Llama(m) if host => {
                HostLlama::from_model(m).map_or(Decoder::Burn(model), Decoder::Host)
            }
            _ => Decoder::Burn(model),
        };
        Ok((decoder, loaded.tokenizer, loaded.eos))
    }

    fn vocab_size(&self) -> usize {
        match self {
            Decoder::Burn(m) => m.vocab_size(),
            Decoder::Host(m) => m.vocab_size(),
        }
    }

    /// The most positions the model takes (GPT-2's learned table), if limited.
    fn max_positions(&self) -> Option<usize> {
        match self {
            Decoder::Burn(m) => m.max_positions(),
            Decoder::Host(_) => None,
        }
    }
}

/// Decodes up to `max_new` tokens after `prompt`; `on_token` sees the tokens so far after
/// each one (beam search: once, at the end) and returns true to stop there.
fn continue_prompt<B: Backend>(
    decoder: &Decoder<B>,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
    sampling: Sampling,
    device: &B::Device,
    on_token: &mut dyn FnMut(&[u32]) -> bool,
) -> Result<(), Fail> {
    let model = match decoder {
        Decoder::Host(host) => {
            let mut pick = |logits: &[f32]| sampling.pick(logits);
            host.decode(prompt, max_new, eos, &mut pick, on_token)
                .input()?;
            return Ok(());
        }
        Decoder::Burn(model) => model,
    };
    let forward = |ids, cache: &mut KvCache<B>| model.forward_cached(ids, cache);
    if sampling.beams > 1 {
        on_token(&beam_search(forward, prompt, sampling.beams, max_new, eos, device).tokens);
        return Ok(());
    }
    let mut pick = |last: Tensor<B, 1>| {
        let last: Vec<f32> = last
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        sampling.pick(&last)
    };
    // `on_token` never sees the end-of-sequence token: decoding stops before it.
    decode_cached(forward, prompt, max_new, eos, &mut pick, on_token, device);
    Ok(())
}

/// A loaded decoder and how to continue prompts with it.
struct Generator<B: Backend> {
    model: Decoder<B>,
    tok: Tokenizer,
    eos: Option<u32>,
    sampling: Sampling,
    max_new: usize,
    stops: Vec<String>,
    device: B::Device,
}

impl<B: Backend> Generator<B> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, Fail> {
        let ids = self.tok.encode(text, None, usize::MAX).input()?.ids;
        if ids.is_empty() {
            return Err(input("the prompt is empty"));
        }
        let vocab = self.model.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(input(format!(
                "the tokenizer gives token id {bad}, but the model has {vocab} embeddings: \
                 tokenizer and model do not match"
            )));
        }
        if let Some(limit) = self.model.max_positions() {
            if ids.len() + self.max_new > limit {
                return Err(usage(format!(
                    "a prompt of {} tokens and --max-new-tokens {} need {} positions; the model has {limit}",
                    ids.len(),
                    self.max_new,
                    ids.len() + self.max_new
                )));
            }
        }
        Ok(ids)
    }

    /// The continuation of `prompt`, cut before the first stop string. `on_text` receives it
    /// piece by piece as it grows, holding back what could still become a stop string.
    fn complete(&self, prompt: &str, on_text: &mut dyn FnMut(&str)) -> Result<String, Fail> {
        let ids = self.encode(prompt)?;
        let hold = self
            .stops
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let (mut text, mut shown) = (String::new(), 0);
        let mut on_token = |out: &[u32]| {
            // Decode the whole continuation, so tokens that only make characters together
            // come out whole.
            text = self.tok.decode(out).unwrap_or_default();
            let cut = self
                .stops
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min();
            if let Some(c) = cut {
                text.truncate(c);
            }
            let mut safe = if cut.is_some() {
                text.len()
            } else {
                text.len().saturating_sub(hold)
            };
            while !text.is_char_boundary(safe) {
                safe -= 1;
            }
            if safe > shown && text.is_char_boundary(shown) {
                on_text(&text[shown..safe]);
                shown = safe;
            }
            cut.is_some()
        };
        let s = self.sampling;
        continue_prompt(
            &self.model,
            &ids,
            self.max_new,
            self.eos,
            s,
            &self.device,
            &mut on_token,
        )?;
        if text.len() > shown && text.is_char_boundary(shown) {
            on_text(&text[shown..]);
        }
        Ok(text)
    }

    /// `--input`: one `{"prompt", "completion"}` line per `{"prompt"}` line of `path`.
    fn batch(&self, path: &Path, output: &Path) -> Result<(), Fail> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))
            .input()?;
        let mut lines = String::new();
        let rows = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        for (n, line) in rows {
            let where_ = || format!("{}:{}", path.display(), n + 1);
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow!("{}: not JSON: {e}", where_()))
                .input()?;
            let prompt = v["prompt"]
                .as_str()
                .ok_or_else(|| input(format!("{}: no string field \"prompt\"", where_())))?;
            let completion = self.complete(prompt, &mut |_| {})?;
            lines.push_str(&json!({ "prompt": prompt, "completion": completion }).to_string());
            lines.push('\n');
        }
        atomic_write(output, lines.as_bytes()).runtime()?;
        eprintln!("completions written to {}", output.display());
        Ok(())
    }
}

/// The arguments, and whether the backend is the CPU's.
struct GenerateJob(GenerateArgs, bool);

impl BackendTask for GenerateJob {
    type Output = Result<(), Fail>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        // On rayon's pool: the decoding's few hundred small products a token are a quarter
        // faster when the calling thread takes its share (docs/PERFORMANCE.md, session 10).
        bidora_backend::in_pool(|| self.generate::<B>(device))
    }
}

impl GenerateJob {
    fn generate<B: AutodiffBackend>(self, device: B::Device) -> Result<(), Fail> {
        let (a, cpu) = (self.0, self.1);
        let (model, tok, eos) = Decoder::<B::InnerBackend>::load(&a, cpu, &device)?;
        let g = Generator {
            model,
            tok,
            eos,
            sampling: Sampling {
                temperature: a.temperature,
                top_p: a.top_p,
                beams: a.beams,
            },
            max_new: a.max_new_tokens,
            stops: a.stop.clone(),
            device,
        };
        match (&a.prompt, &a.input, &a.output) {
            (Some(prompt), ..) => {
                let mut stdout = std::io::stdout();
                g.complete(prompt, &mut |piece| {
                    let _ = write!(stdout, "{piece}");
                    let _ = stdout.flush();
                })?;
                println!();
                Ok(())
            }
            (None, Some(path), Some(output)) => g.batch(path, output),
            _ => Err(usage("give --prompt, or --input with --output")),
        }
    }
}

/// `bidora generate`.
pub fn generate(a: GenerateArgs) -> Result<(), Fail> {
    if a.temperature < 0.0 || !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(usage("--temperature must be ≥ 0 and --top-p in (0, 1]"));
    }
    if a.beams == 0 || (a.beams > 1 && a.temperature > 0.0) {
        return Err(usage(
            "--beams must be at least 1, and beam search needs --temperature 0",
        ));
    }
    let device: bidora_backend::Device = a.backend.parse().usage()?;
    let seed = a.seed;
    let cpu = device.kind == bidora_backend::BackendKind::Ndarray;
    bidora_backend::run(&device, Some(seed), GenerateJob(a, cpu)).usage()?
}
