//! LoRA, DoRA and BiDoRA adapted linear layers for [Burn](https://burn.dev), with HF PEFT
//! adapter files.
//!
//! The crate is generic over `B: Backend` and turns on no backend itself.
//!
//! - [`AdaptedLinear`]: a frozen linear layer plus a low-rank update `s·B·A` and, for DoRA and
//!   BiDoRA, a magnitude vector `m`, computing `y = x·(m ⊘ ‖W0 + s·B·A‖) ⊙ (W0 + s·B·A) + b`
//!   without ever forming the adapted weight (docs/METHOD.md §1). Merge and unmerge.
//! - [`AdapterConfig`]: method, rank, alpha, dropout, target modules, init, norm options.
//! - [`AdapterHost`] and [`ParamPartition`]: find the adapted layers of a model and split its
//!   parameters into direction (lower level), magnitude (upper level), head and frozen groups.
//! - [`regularizer`]: the orthogonality regulariser, direct and low-rank forms.
//! - [`peft`]: read and write HF PEFT `adapter_config.json` + `adapter_model.safetensors`.
//!
//! ```
//! use bidora_adapters::{AdaptedLinear, AdapterConfig, AdapterMethod};
//! use burn::backend::NdArray;
//! use burn::nn::LinearConfig;
//! use burn::tensor::Tensor;
//!
//! type B = NdArray<f32>;
//! let device = Default::default();
//! let base = LinearConfig::new(16, 8).init::<B>(&device);
//! let x = Tensor::<B, 2>::ones([4, 16], &device);
//! let expected = base.forward(x.clone());
//!
//! let config = AdapterConfig::new(AdapterMethod::Dora).with_rank(4, 8.0);
//! let layer = AdaptedLinear::new(base, &config).unwrap();
//! // At initialisation B = 0 and m = ‖W0‖, so the layer computes what the base layer does.
//! layer.forward(x).into_data().assert_eq(&expected.into_data(), true);
//! ```

pub mod config;
/// Dropout with a counter-based mask (moved to `bidora_backend::kernels::dropout`).
pub use bidora_backend::kernels::dropout;
mod error;
pub mod layer;
pub mod partition;
pub mod peft;
pub mod regularizer;
pub mod tensor_io;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use config::{AdapterConfig, AdapterMethod, InitA, NormMode};
pub use error::AdapterError;
pub use layer::{AdaptedLinear, LayerSettings, MergedLinear};
pub use partition::{join_path, AdapterHost, ParamGroup, ParamInfo, ParamPartition};
