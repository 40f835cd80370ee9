//! Fits a DoRA layer to a synthetic regression problem and prints the loss falling.
//!
//! The target is a layer a DoRA adapter can represent exactly: the frozen weight plus a
//! rank-2 update, with every output rescaled. A LoRA adapter of the same rank cannot rescale
//! outputs for free, so it is fitted too for comparison.
//!
//! ```text
//! cargo run --release -p bidora-adapters --example fit_dora [-- --backend cpu|wgpu|cuda --steps 300]
//! ```

use bidora_adapters::{AdaptedLinear, AdapterConfig, AdapterMethod, ParamPartition};
use bidora_backend::{run, BackendTask, Device};
use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, ElementConversion, Tensor};

const D_IN: usize = 64;
const D_OUT: usize = 48;
const SAMPLES: usize = 512;

struct Fit {
    steps: usize,
}

impl BackendTask for Fit {
    type Output = Vec<(AdapterMethod, f32, f32)>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        // The frozen "pretrained" weight, and a target that is a DoRA-style edit of it.
        let w0 = Tensor::<B, 2>::random([D_IN, D_OUT], Distribution::Normal(0.0, 0.15), &device);
        let u = Tensor::<B, 2>::random([D_IN, 2], Distribution::Normal(0.0, 0.3), &device);
        let v = Tensor::<B, 2>::random([2, D_OUT], Distribution::Normal(0.0, 0.3), &device);
        let rescale = Tensor::<B, 1>::random([D_OUT], Distribution::Uniform(0.6, 1.6), &device);
        let target_w = (w0.clone() + u.matmul(v)) * rescale.unsqueeze_dim(0);
        let x = Tensor::<B, 2>::random([SAMPLES, D_IN], Distribution::Normal(0.0, 1.0), &device);
        let y = x.clone().matmul(target_w);

        let mut results = Vec::new();
        for method in [AdapterMethod::Dora, AdapterMethod::Lora] {
            let base = Linear {
                weight: Param::from_tensor(w0.clone()),
                bias: None,
            };
            let config = AdapterConfig::new(method).with_rank(4, 8.0);
            let mut layer = AdaptedLinear::new(base, &config).expect("valid config");
            let trainable = ParamPartition::of(&layer).trainable();
            let mut optim = AdamWConfig::new()
                .with_beta_2(0.98)
                .with_epsilon(1e-6)
                .with_weight_decay(0.0)
                .init::<B, AdaptedLinear<B>>();
            let mse =
                |layer: &AdaptedLinear<B>| (layer.forward(x.clone()) - y.clone()).square().mean();
            let first: f32 = mse(&layer).into_scalar().elem();
            println!("{method}: step    0  loss {first:.5}");
            for step in 1..=self.steps {
                let loss = mse(&layer);
                let mut grads = loss.backward();
                let grads = GradientsParams::from_params(&mut grads, &layer, &trainable);
                layer = optim.step(1e-2, layer, grads);
                if step % (self.steps / 6).max(1) == 0 || step == self.steps {
                    let value: f32 = mse(&layer).into_scalar().elem();
                    println!("{method}: step {step:4}  loss {value:.5}");
                }
            }
            let last: f32 = mse(&layer).into_scalar().elem();
            results.push((method, first, last));
        }
        results
    }
}

fn main() {
    let mut device = Device::default();
    let mut steps = 300usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => {
                let value = args.next().unwrap_or_default();
                device = match value.parse() {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("error: {e}");
                        std::process::exit(2);
                    }
                };
            }
            "--steps" => {
                steps = match args.next().and_then(|s| s.parse().ok()) {
                    Some(n) if n > 0 => n,
                    _ => {
                        eprintln!("error: --steps takes a positive number");
                        std::process::exit(2);
                    }
                };
            }
            "-h" | "--help" => {
                println!("fit_dora [--backend cpu|wgpu|cuda] [--steps N]");
                return;
            }
            other => {
                eprintln!("error: unknown argument `{other}` (try --help)");
                std::process::exit(2);
            }
        }
    }
    println!("fitting a {D_IN}x{D_OUT} layer on {SAMPLES} samples, rank 4, on {device}");
    match run(&device, Some(42), Fit { steps }) {
        Ok(results) => {
            for (method, first, last) in results {
                println!(
                    "{method}: loss {first:.5} -> {last:.5} ({:.1}x lower)",
                    first / last
                );
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
