#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! The orthogonality regulariser of one DoRA layer, forward + backward: the direct form (Gram
//! of the normalised direction, `O(d_in·d_out·min)`) against the low-rank form (cached
//! `W0·W0ᵀ` plus rank-r corrections), on the square and wide shapes the low-rank form serves.

use bidora_adapters::regularizer::{layer_penalty, layer_penalty_low_rank, GramCache};
use bidora_adapters::NormMode;
use bidora_benches::{layer, AD};
use burn::tensor::backend::Backend;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// `(in, out)`: attention projections of MiniLM and BERT-base, and BERT-base's FFN output.
const SHAPES: &[(usize, usize)] = &[(384, 384), (768, 768), (3072, 768)];

fn penalty(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("regularizer_forward_backward");
    group.sample_size(10);
    for &(d_in, d_out) in SHAPES {
        let l = layer::<AD>(d_in, d_out, 8, true, NormMode::Exact, false, &device);
        let cache = GramCache::new(&l);
        let gram = cache.get("").expect("square or wide layer").clone();
        let shape = format!("{d_in}x{d_out}");
        group.bench_function(BenchmarkId::new("direct", &shape), |b| {
            b.iter(|| {
                let grads = layer_penalty(&l, Default::default()).backward();
                AD::sync(&device).expect("sync");
                grads
            })
        });
        group.bench_function(BenchmarkId::new("low_rank", &shape), |b| {
            b.iter(|| {
                let grads = layer_penalty_low_rank(&l, &gram, Default::default())
                    .expect("square or wide layer")
                    .backward();
                AD::sync(&device).expect("sync");
                grads
            })
        });
    }
    group.finish();
}

criterion_group!(benches, penalty);
criterion_main!(benches);
