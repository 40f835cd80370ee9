#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! The adapted layer's forward and forward+backward, LoRA vs DoRA (exact, detached and
//! low-rank norm) vs merged, on transformer-sized shapes with 2048 tokens.

use bidora_adapters::NormMode;
use bidora_benches::{input, layer, SHAPES};
use burn::tensor::backend::Backend;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use bidora_benches::AD;
type Inner = <AD as burn::tensor::backend::AutodiffBackend>::InnerBackend;

const VARIANTS: &[(&str, bool, NormMode, bool)] = &[
    ("lora", false, NormMode::Detached, false),
    ("dora-detached", true, NormMode::Detached, false),
    ("dora-exact", true, NormMode::Exact, false),
    ("dora-exact-lowrank", true, NormMode::Exact, true),
];

fn forward(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("layer_forward");
    group.sample_size(10);
    for &(d_in, d_out) in SHAPES {
        let x = input::<Inner>(d_in, &device);
        for &(name, dora, norm, low_rank) in VARIANTS {
            let l = layer::<Inner>(d_in, d_out, 8, dora, norm, low_rank, &device);
            group.bench_function(BenchmarkId::new(name, format!("{d_in}x{d_out}")), |b| {
                b.iter(|| {
                    let y = l.forward(x.clone());
                    Inner::sync(&device).expect("sync");
                    y
                })
            });
        }
        let merged =
            layer::<Inner>(d_in, d_out, 8, true, NormMode::Detached, false, &device).merge();
        group.bench_function(BenchmarkId::new("merged", format!("{d_in}x{d_out}")), |b| {
            b.iter(|| {
                let y = merged.linear.forward(x.clone());
                Inner::sync(&device).expect("sync");
                y
            })
        });
    }
    group.finish();
}

fn forward_backward(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("layer_forward_backward");
    group.sample_size(10);
    for &(d_in, d_out) in SHAPES {
        let x = input::<AD>(d_in, &device).require_grad();
        for &(name, dora, norm, low_rank) in VARIANTS {
            let l = layer::<AD>(d_in, d_out, 8, dora, norm, low_rank, &device);
            group.bench_function(BenchmarkId::new(name, format!("{d_in}x{d_out}")), |b| {
                b.iter(|| {
                    let grads = l.forward(x.clone()).sum().backward();
                    AD::sync(&device).expect("sync");
                    grads
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward, forward_backward);
criterion_main!(benches);
