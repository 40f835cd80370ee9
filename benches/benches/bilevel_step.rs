#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! One BiDoRA search iteration (lower step + upper step with the DARTS hypergradient) against
//! one DoRA step and one LoRA step, through the same engine, on the same small model: two
//! adapted 384×384 layers and a 2-way head, 512 tokens per batch.

use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig, AdapterHost, AdapterMethod};
use bidora_bilevel::BilevelProblem;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};

use bidora_benches::{bench_iteration, Iteration, AD, BIDORA};

const D: usize = 384;
const TOKENS: usize = 512;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    query: AdaptedLinear<B>,
    value: AdaptedLinear<B>,
    head: Linear<B>,
}

impl<B: Backend> AdapterHost<B> for Net<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.query.for_each_adapter(&join_path(prefix, "query"), f);
        self.value.for_each_adapter(&join_path(prefix, "value"), f);
    }
}

type Batch = (Tensor<AD, 2>, Tensor<AD, 2>);

struct Problem;

impl BilevelProblem<AD> for Problem {
    type Module = Net<AD>;
    type Batch = Batch;
    fn lower_loss(&self, net: &Net<AD>, (x, y): &Batch) -> Tensor<AD, 1> {
        let h = net.value.forward(net.query.forward(x.clone()).tanh());
        (net.head.forward(h) - y.clone())
            .square()
            .mean()
            .reshape([1])
    }
    fn regularizer(&self, net: &Net<AD>) -> Option<Tensor<AD, 1>> {
        bidora_adapters::regularizer::orthogonality(net, Default::default())
    }
}

fn net(
    method: AdapterMethod,
    device: &<AD as burn::tensor::backend::BackendTypes>::Device,
) -> Net<AD> {
    let config = AdapterConfig::new(method).with_rank(8, 16.0);
    let layer =
        |_| AdaptedLinear::new(LinearConfig::new(D, D).init(device), &config).expect("layer");
    Net {
        query: layer(0),
        value: layer(1),
        head: LinearConfig::new(D, 2).init(device),
    }
}

fn step(c: &mut Criterion) {
    let device = Default::default();
    let batch: Batch = (
        Tensor::random([TOKENS, D], Distribution::Normal(0.0, 1.0), &device),
        Tensor::random([TOKENS, 2], Distribution::Normal(0.0, 1.0), &device),
    );
    let mut group = c.benchmark_group("engine_iteration");
    group.sample_size(20);
    let cases = [
        ("lora_step", AdapterMethod::Lora),
        ("dora_step", AdapterMethod::Dora),
        ("bidora_iteration_darts", AdapterMethod::Bidora),
    ];
    for (name, method) in cases {
        let module = net(method, &device);
        let iteration = match method {
            AdapterMethod::Bidora => BIDORA,
            _ => Iteration::Single,
        };
        bench_iteration(
            &mut group, name, &Problem, &module, &batch, iteration, &device,
        );
    }
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
