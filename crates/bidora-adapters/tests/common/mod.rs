//! Helpers shared by the adapter crate's integration tests: the golden fixtures written by
//! `scripts/golden/adapters.py`, and error measures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bidora_adapters::tensor_io::{read_safetensors, HostTensor, SafetensorsFile};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Deserialize;

/// Deterministic pseudo-random values in [-1, 1) (an LCG), so tests need no RNG crate.
pub fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One layer case of `layers.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    pub method: String,
    pub d_in: usize,
    pub d_out: usize,
    pub r: usize,
    pub alpha: f64,
    pub bias: bool,
    pub norm: String,
    pub source: String,
    /// Dropout probability of the adapter's input; cases with `dropout > 0` carry the keep
    /// `mask` they were computed with.
    #[serde(default)]
    pub dropout: f64,
}

#[derive(Debug, Deserialize)]
struct Index {
    cases: Vec<Case>,
}

pub struct Golden {
    pub cases: Vec<Case>,
    pub file: SafetensorsFile,
}

impl Golden {
    pub fn load() -> Self {
        let dir = fixtures();
        let text = std::fs::read_to_string(dir.join("layers.json")).expect("layers.json");
        let index: Index = serde_json::from_str(&text).expect("layers.json parses");
        let file = read_safetensors(&dir.join("layers.safetensors")).expect("layers.safetensors");
        Golden {
            cases: index.cases,
            file,
        }
    }

    pub fn get(&self, case: &Case, name: &str) -> &HostTensor {
        self.file
            .tensors
            .get(&format!("{}/{name}", case.name))
            .unwrap_or_else(|| panic!("fixture tensor {}/{name}", case.name))
    }

    pub fn maybe(&self, case: &Case, name: &str) -> Option<&HostTensor> {
        self.file.tensors.get(&format!("{}/{name}", case.name))
    }
}

/// Upload a host tensor (in its own layout) as rank D.
pub fn upload<B: Backend, const D: usize>(t: &HostTensor, device: &B::Device) -> Tensor<B, D> {
    t.to_tensor::<B, D>("fixture", device).expect("rank")
}

/// Upload a PyTorch-layout matrix transposed into Burn's layout.
pub fn upload_t<B: Backend>(t: &HostTensor, device: &B::Device) -> Tensor<B, 2> {
    upload(&t.transposed().expect("matrix"), device)
}

pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    HostTensor::from_tensor(t, "result").expect("readback")
}

/// ‖got − want‖₂ / ‖want‖₂, after checking the shapes agree.
pub fn rel_err(got: &HostTensor, want: &HostTensor) -> f64 {
    assert_eq!(got.shape, want.shape, "shapes differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.data.iter().zip(&want.data) {
        num += (*g as f64 - *w as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

#[track_caller]
pub fn assert_close(what: &str, got: &HostTensor, want: &HostTensor, tol: f64) {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

/// The tiny model of the PEFT file fixtures: two residual blocks `x + value(tanh(query(x)))`
/// and a classifier, mirroring `Tiny` in `scripts/golden/adapters.py`.
pub mod tiny {
    use bidora_adapters::{join_path, AdaptedLinear, AdapterConfig, AdapterHost};
    use burn::module::{Module, Param};
    use burn::nn::Linear;
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;

    use super::*;

    #[derive(Module, Debug)]
    pub struct Block<B: Backend> {
        pub query: AdaptedLinear<B>,
        pub value: AdaptedLinear<B>,
    }

    #[derive(Module, Debug)]
    pub struct Tiny<B: Backend> {
        pub layers: Vec<Block<B>>,
        pub classifier: Linear<B>,
    }

    impl<B: Backend> AdapterHost<B> for Block<B> {
        fn for_each_adapter<'a>(
            &'a self,
            prefix: &str,
            f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>),
        ) {
            self.query.for_each_adapter(&join_path(prefix, "query"), f);
            self.value.for_each_adapter(&join_path(prefix, "value"), f);
        }
    }

    impl<B: Backend> AdapterHost<B> for Tiny<B> {
        fn for_each_adapter<'a>(
            &'a self,
            prefix: &str,
            f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>),
        ) {
            self.layers
                .for_each_adapter(&join_path(prefix, "layers"), f);
        }
    }

    impl<B: Backend> Tiny<B> {
        pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
            for block in &self.layers {
                x = x.clone() + block.value.forward(block.query.forward(x).tanh());
            }
            self.classifier.forward(x)
        }
    }

    /// `peft_io.safetensors`: base weights, input and PEFT outputs.
    pub fn io() -> SafetensorsFile {
        read_safetensors(&fixtures().join("peft_io.safetensors")).expect("peft_io")
    }

    pub fn linear<B: Backend>(io: &SafetensorsFile, name: &str, device: &B::Device) -> Linear<B> {
        let w = &io.tensors[&format!("base.{name}.weight")];
        let b = &io.tensors[&format!("base.{name}.bias")];
        Linear {
            weight: Param::from_tensor(upload_t::<B>(w, device)),
            bias: Some(Param::from_tensor(upload::<B, 1>(b, device))),
        }
    }

    /// The base model with fresh adapters from `config` on every query and value.
    pub fn build<B: Backend>(
        io: &SafetensorsFile,
        config: &AdapterConfig,
        device: &B::Device,
    ) -> Tiny<B> {
        let layers = (0..2)
            .map(|i| Block {
                query: AdaptedLinear::new(linear(io, &format!("layers.{i}.query"), device), config)
                    .expect("query"),
                value: AdaptedLinear::new(linear(io, &format!("layers.{i}.value"), device), config)
                    .expect("value"),
            })
            .collect();
        Tiny {
            layers,
            classifier: linear(io, "classifier", device),
        }
    }
}
