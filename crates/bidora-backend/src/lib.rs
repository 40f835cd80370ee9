//! Backend selection for bidora.
//!
//! Every library crate of the workspace is generic over Burn's `B: Backend` (or
//! `B: AutodiffBackend`). This crate is the one place that names concrete backends:
//!
//! | cargo feature | [`BackendKind`]        | Burn backend                  |
//! |---------------|------------------------|-------------------------------|
//! | `ndarray` (default) | [`BackendKind::Ndarray`] (`cpu`, `ndarray`) | `Autodiff<NdArray<f32>>` |
//! | `wgpu`        | [`BackendKind::Wgpu`]  (`wgpu`, `gpu`)  | `Autodiff<Wgpu<f32>>` |
//! | `cuda`        | [`BackendKind::Cuda`]  (`cuda`)         | `Autodiff<Cuda<f32>>` |
//!
//! A front end parses a [`Device`] from a string (`"cpu"`, `"wgpu"`, `"cuda:1"`), then calls
//! [`run`] with a [`BackendTask`]: one generic function that is monomorphised for the backend
//! chosen at run time. Asking for a backend that was not compiled in is a
//! [`BackendError::NotCompiled`] that names the cargo feature to build with.
//!
//! ```
//! use bidora_backend::{run, BackendTask, Device};
//! use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor};
//!
//! struct SumOfOnes;
//! impl BackendTask for SumOfOnes {
//!     type Output = f32;
//!     fn run<B: AutodiffBackend>(self, device: B::Device) -> f32 {
//!         Tensor::<B, 2>::ones([3, 4], &device).sum().into_scalar().elem()
//!     }
//! }
//!
//! let device: Device = "cpu".parse().unwrap();
//! assert_eq!(run(&device, Some(7), SumOfOnes).unwrap(), 12.0);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};

#[doc(hidden)]
pub use burn as __burn;

pub mod allocator;
pub mod kernels;
pub use allocator::retain_freed_memory;

/// The backends bidora knows about, whether or not they were compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Burn's ndarray backend on the CPU (feature `ndarray`, on by default).
    Ndarray,
    /// Burn's WGPU backend: Vulkan, Metal or DX12 through wgpu, or Mesa's lavapipe on a CPU
    /// (feature `wgpu`).
    Wgpu,
    /// Burn's CUDA backend on an NVIDIA GPU (feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// Every backend bidora knows, in the order it prefers them.
    pub const ALL: [BackendKind; 3] = [BackendKind::Ndarray, BackendKind::Wgpu, BackendKind::Cuda];

    /// The cargo feature of this crate that compiles the backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this binary.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|k| k.is_compiled()).collect()
    }

    /// The canonical lower-case name (`ndarray`, `wgpu`, `cuda`).
    pub fn name(self) -> &'static str {
        self.feature()
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" | "ndarray" => Ok(BackendKind::Ndarray),
            "wgpu" | "gpu" | "webgpu" => Ok(BackendKind::Wgpu),
            "cuda" | "nvidia" => Ok(BackendKind::Cuda),
            _ => Err(BackendError::Unknown(s.to_string())),
        }
    }
}

/// A backend plus a device ordinal, e.g. `cuda:1`. The ordinal is ignored by `ndarray`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// Which backend.
    pub kind: BackendKind,
    /// Which device of that backend (0 = the first, or the default one).
    pub index: usize,
}

impl Device {
    /// The first device of `kind`.
    pub fn new(kind: BackendKind) -> Self {
        Device { kind, index: 0 }
    }
}

impl Default for Device {
    fn default() -> Self {
        Device::new(BackendKind::Ndarray)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == 0 {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}:{}", self.kind, self.index)
        }
    }
}

impl FromStr for Device {
    type Err = BackendError;

    /// Parses `KIND` or `KIND:INDEX`, e.g. `cpu`, `wgpu`, `cuda:1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, index) = match s.split_once(':') {
            Some((kind, index)) => {
                let index = index
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| BackendError::BadIndex(s.to_string()))?;
                (kind, index)
            }
            None => (s, 0),
        };
        Ok(Device {
            kind: kind.parse()?,
            index,
        })
    }
}

/// Errors of backend selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendError {
    /// The string names no backend.
    #[error("unknown backend `{0}`: expected one of `cpu` (= `ndarray`), `wgpu`, `cuda`, optionally followed by `:INDEX`")]
    Unknown(String),
    /// The device index is not a number.
    #[error("bad device `{0}`: the part after `:` must be a device index such as `cuda:0`")]
    BadIndex(String),
    /// The backend exists but this binary was built without it.
    #[error("backend `{kind}` was not compiled into this binary; rebuild with `--features {feature}` (compiled in: {compiled})")]
    NotCompiled {
        /// The backend asked for.
        kind: BackendKind,
        /// The cargo feature that enables it.
        feature: &'static str,
        /// The backends that are available, comma separated.
        compiled: String,
    },
    /// [`run_peers`] (or [`check_peers`]) was given no device, or devices of different
    /// backends.
    #[error("data-parallel peers run on one backend: `{0}` mixes backends or names no device")]
    Peers(String),
}

/// One generic computation, monomorphised for the backend chosen at run time by [`run`].
///
/// Closures cannot be generic over a type parameter, so a task is a value implementing this
/// trait; its fields carry the inputs.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `device` of backend `B`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// A [`BackendTask`] over several devices of one backend (data-parallel peers), run by
/// [`run_peers`].
pub trait PeersTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `devices` (one or more, in rank order) of backend `B`.
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output;
}

/// A single-device task as a [`PeersTask`] of one device.
struct One<T>(T);

impl<T: BackendTask> PeersTask for One<T> {
    type Output = T::Output;
    fn run<B: AutodiffBackend>(self, mut devices: Vec<B::Device>) -> T::Output {
        // `run_peers` passes at least one device.
        self.0.run::<B>(devices.swap_remove(0))
    }
}

/// The concrete backend types, one per compiled feature.
pub mod types {
    #[cfg(feature = "ndarray")]
    /// CPU backend (ndarray, f32).
    pub type NdArray = burn::backend::NdArray<f32>;
    #[cfg(feature = "ndarray")]
    /// CPU backend with autodiff.
    pub type NdArrayAutodiff = burn::backend::Autodiff<NdArray>;
    #[cfg(feature = "wgpu")]
    /// WGPU backend (f32).
    pub type Wgpu = burn::backend::Wgpu<f32, i32>;
    #[cfg(feature = "wgpu")]
    /// WGPU backend with autodiff.
    pub type WgpuAutodiff = burn::backend::Autodiff<Wgpu>;
    #[cfg(feature = "cuda")]
    /// CUDA backend (f32).
    pub type Cuda = burn::backend::Cuda<f32, i32>;
    #[cfg(feature = "cuda")]
    /// CUDA backend with autodiff.
    pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;
}

fn not_compiled(kind: BackendKind) -> BackendError {
    let compiled = BackendKind::compiled()
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ");
    BackendError::NotCompiled {
        kind,
        feature: kind.feature(),
        compiled: if compiled.is_empty() {
            "none".to_string()
        } else {
            compiled
        },
    }
}

/// Seeds the run's random stream: this thread's host stream ([`bidora_util::rng`]), which every
/// draw that shapes a run comes from ([`random`], dropout masks), and the backend's own
/// generator on `device`, for code that still calls `Tensor::random`.
pub fn seed<B: Backend>(device: &B::Device, seed: u64) {
    bidora_util::rng::seed(seed);
    B::seed(device, seed);
}

/// A tensor of `shape` drawn from `distribution` by the host stream (see [`seed`]) and
/// uploaded to `device`: the same seed gives the same values on every backend, which
/// `Tensor::random` (each backend's own generator) does not.
pub fn random<B: Backend, const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    device: &B::Device,
) -> Tensor<B, D> {
    use bidora_util::rng;
    let n = shape.iter().product();
    let values = match distribution {
        Distribution::Default => rng::uniform(n, 0.0, 1.0),
        Distribution::Uniform(low, high) => rng::uniform(n, low, high),
        Distribution::Normal(mean, std) => rng::normal(n, mean, std),
        Distribution::Bernoulli(p) => rng::uniform(n, 0.0, 1.0)
            .into_iter()
            .map(|u| f32::from(f64::from(u) < p))
            .collect(),
    };
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Runs `task` on `device`, after seeding it with `seed` when one is given.
///
/// Fails with [`BackendError::NotCompiled`] when the backend was not built in.
pub fn run<T: BackendTask>(
    device: &Device,
    seed: Option<u64>,
    task: T,
) -> Result<T::Output, BackendError> {
    run_peers(std::slice::from_ref(device), seed, One(task))
}

/// The backend of data-parallel peers on `devices`: fails with [`BackendError::Peers`] for an
/// empty list or one that mixes backends (a device may repeat: two peers on it).
pub fn check_peers(devices: &[Device]) -> Result<BackendKind, BackendError> {
    let names = || {
        devices
            .iter()
            .map(Device::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    match devices.first() {
        Some(first) if devices.iter().all(|d| d.kind == first.kind) => Ok(first.kind),
        _ => Err(BackendError::Peers(names())),
    }
}

/// Runs `task` on `devices` (e.g. `cuda:0,cuda:1`, or `cpu,cpu` for CPU peers), after seeding
/// the first with `seed` on the calling thread when one is given; a task that starts a thread
/// per device seeds the others itself ([`seed`]).
///
/// Fails with [`BackendError::Peers`] for an empty list or one that mixes backends, and with
/// [`BackendError::NotCompiled`] when the backend was not built in.
pub fn run_peers<T: PeersTask>(
    devices: &[Device],
    seed: Option<u64>,
    task: T,
) -> Result<T::Output, BackendError> {
    match check_peers(devices)? {
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => {
            let dev = |_: &Device| burn::backend::ndarray::NdArrayDevice::Cpu;
            Ok(run_with::<types::NdArrayAutodiff, T>(
                devices.iter().map(dev).collect(),
                seed,
                task,
            ))
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let dev = |d: &Device| match d.index {
                0 => burn::backend::wgpu::WgpuDevice::default(),
                i => burn::backend::wgpu::WgpuDevice::DiscreteGpu(i),
            };
            Ok(run_with::<types::WgpuAutodiff, T>(
                devices.iter().map(dev).collect(),
                seed,
                task,
            ))
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let dev = |d: &Device| burn::backend::cuda::CudaDevice::new(d.index);
            Ok(run_with::<types::CudaAutodiff, T>(
                devices.iter().map(dev).collect(),
                seed,
                task,
            ))
        }
        #[allow(unreachable_patterns)]
        kind => {
            // Used by the arms above; unused when no backend is compiled in.
            let _ = (seed, task);
            Err(not_compiled(kind))
        }
    }
}

/// Runs `f` on one of rayon's worker threads (the calling thread waits). The CPU kernels split
/// their work over rayon's pool; called from a worker, that thread takes a share itself
/// instead of handing every product to the pool and sleeping until it is done. Decoding, a
/// few hundred small products a token, runs a quarter faster so (docs/PERFORMANCE.md).
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

#[cfg_attr(
    not(any(feature = "ndarray", feature = "wgpu", feature = "cuda")),
    allow(dead_code)
)]
fn run_with<B: AutodiffBackend, T: PeersTask>(
    devices: Vec<B::Device>,
    seed: Option<u64>,
    task: T,
) -> T::Output {
    if let Some(s) = seed {
        self::seed::<B>(&devices[0], s);
    }
    task.run::<B>(devices)
}

/// Writes one test module per compiled backend, so that the same generic test code runs on
/// ndarray, and on WGPU and CUDA when their features are on.
///
/// Inside the body, `TestBackend` is the autodiff backend, `TestInner` the plain one, and
/// `device()` returns the device to use.
///
/// ```ignore
/// bidora_backend::backend_tests! {
///     #[test]
///     fn ones_sum() {
///         let t = burn::tensor::Tensor::<TestBackend, 1>::ones([4], &device());
///         assert_eq!(t.sum().into_scalar(), 4.0);
///     }
/// }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($body:tt)*) => {
        $crate::__ndarray_tests! { $($body)* }
        $crate::__wgpu_tests! { $($body)* }
        $crate::__cuda_tests! { $($body)* }
    };
}

#[cfg(feature = "ndarray")]
#[doc(hidden)]
#[macro_export]
macro_rules! __ndarray_tests {
    ($($body:tt)*) => {
        mod ndarray {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type TestInner = $crate::types::NdArray;
            #[allow(dead_code)]
            type TestBackend = $crate::types::NdArrayAutodiff;
            #[allow(dead_code)]
            fn device() -> $crate::__burn::tensor::Device<TestBackend> {
                Default::default()
            }
            $($body)*
        }
    };
}
#[cfg(not(feature = "ndarray"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __ndarray_tests {
    ($($body:tt)*) => {};
}

#[cfg(feature = "wgpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __wgpu_tests {
    ($($body:tt)*) => {
        mod wgpu {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type TestInner = $crate::types::Wgpu;
            #[allow(dead_code)]
            type TestBackend = $crate::types::WgpuAutodiff;
            #[allow(dead_code)]
            fn device() -> $crate::__burn::tensor::Device<TestBackend> {
                Default::default()
            }
            $($body)*
        }
    };
}
#[cfg(not(feature = "wgpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __wgpu_tests {
    ($($body:tt)*) => {};
}

#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cuda_tests {
    ($($body:tt)*) => {
        mod cuda {
            #[allow(unused_imports)]
            use super::*;
            #[allow(dead_code)]
            type TestInner = $crate::types::Cuda;
            #[allow(dead_code)]
            type TestBackend = $crate::types::CudaAutodiff;
            #[allow(dead_code)]
            fn device() -> $crate::__burn::tensor::Device<TestBackend> {
                Default::default()
            }
            $($body)*
        }
    };
}
#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cuda_tests {
    ($($body:tt)*) => {};
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_aliases() {
        assert_eq!("cpu".parse::<BackendKind>(), Ok(BackendKind::Ndarray));
        assert_eq!("NdArray".parse::<BackendKind>(), Ok(BackendKind::Ndarray));
        assert_eq!("wgpu".parse::<BackendKind>(), Ok(BackendKind::Wgpu));
        assert_eq!(" cuda ".parse::<BackendKind>(), Ok(BackendKind::Cuda));
        assert_eq!(
            "tpu".parse::<BackendKind>(),
            Err(BackendError::Unknown("tpu".into()))
        );
    }

    #[test]
    fn parses_device_index() {
        let d: Device = "cuda:2".parse().unwrap();
        assert_eq!(
            d,
            Device {
                kind: BackendKind::Cuda,
                index: 2
            }
        );
        assert_eq!(d.to_string(), "cuda:2");
        assert_eq!("cpu".parse::<Device>().unwrap().to_string(), "ndarray");
        assert!(matches!(
            "cuda:x".parse::<Device>(),
            Err(BackendError::BadIndex(_))
        ));
    }

    struct Mean(Vec<f32>);
    impl BackendTask for Mean {
        type Output = f32;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> f32 {
            let n = self.0.len();
            let t = burn::tensor::Tensor::<B, 1>::from_data(
                burn::tensor::TensorData::new(self.0, [n]),
                &device,
            );
            burn::tensor::ElementConversion::elem(t.mean().into_scalar())
        }
    }

    #[test]
    fn runs_generic_task_on_every_compiled_backend() {
        for kind in BackendKind::compiled() {
            let out = run(&Device::new(kind), Some(1), Mean(vec![1.0, 2.0, 6.0])).unwrap();
            assert_eq!(out, 3.0, "backend {kind}");
        }
    }

    /// Counts the devices it was given.
    struct Count;
    impl PeersTask for Count {
        type Output = usize;
        fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> usize {
            devices.len()
        }
    }

    #[test]
    fn peers_get_every_device_and_refuse_none_or_mixed_backends() {
        let cpu = Device::new(BackendKind::Ndarray);
        assert_eq!(run_peers(&[cpu, cpu, cpu], None, Count), Ok(3));
        assert_eq!(
            run_peers(&[], None, Count),
            Err(BackendError::Peers(String::new()))
        );
        let mixed = [cpu, "cuda:1".parse().unwrap()];
        assert_eq!(
            run_peers(&mixed, None, Count),
            Err(BackendError::Peers("ndarray,cuda:1".into()))
        );
    }

    /// What `run` seeded, `random` draws: the host stream's values, uploaded.
    struct Draw;
    impl BackendTask for Draw {
        type Output = Vec<f32>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Vec<f32> {
            let normal = random::<B, 2>([3, 5], Distribution::Normal(1.0, 2.0), &device);
            let uniform = random::<B, 1>([7], Distribution::Uniform(-1.0, 1.0), &device);
            let mut v = normal.into_data().to_vec::<f32>().unwrap();
            v.extend(uniform.into_data().to_vec::<f32>().unwrap());
            v
        }
    }

    #[test]
    fn one_seed_draws_the_same_values_on_every_compiled_backend() {
        bidora_util::rng::seed(9);
        let mut want = bidora_util::rng::normal(15, 1.0, 2.0);
        want.extend(bidora_util::rng::uniform(7, -1.0, 1.0));
        for kind in BackendKind::compiled() {
            let got = run(&Device::new(kind), Some(9), Draw).unwrap();
            assert_eq!(got, want, "backend {kind}");
        }
    }

    #[test]
    fn missing_backend_names_its_feature() {
        for kind in BackendKind::ALL {
            if kind.is_compiled() {
                continue;
            }
            let err = run(&Device::new(kind), None, Mean(vec![1.0])).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("--features {}", kind.feature())),
                "{msg}"
            );
        }
    }
}
