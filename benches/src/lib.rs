//! Shared setup for bidora's criterion benchmarks: layers of transformer sizes.
//!
//! Run `cargo bench -p bidora-benches` (ndarray); add `--features wgpu` or `--features cuda`
//! for the GPU backends (the benchmarks call the backend's `sync` inside the timed region).

use bidora_adapters::{AdaptedLinear, AdapterHost, LayerSettings, NormMode, ParamPartition};
use bidora_bilevel::{
    BatchStream, BilevelProblem, Data, Hooks, Hypergradient, Mode, ParamGroups, TrainConfig,
    Trainer,
};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bidora_bilevel::collective::LocalPeers;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;

/// The benchmarked autodiff backend: CUDA, else WGPU, else ndarray, by cargo feature.
#[cfg(feature = "cuda")]
pub type AD = bidora_backend::types::CudaAutodiff;
/// The benchmarked autodiff backend: CUDA, else WGPU, else ndarray, by cargo feature.
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type AD = bidora_backend::types::WgpuAutodiff;
/// The benchmarked autodiff backend: CUDA, else WGPU, else ndarray, by cargo feature.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub type AD = bidora_backend::types::NdArrayAutodiff;

/// Shapes `(in, out)` of the adapted matrices of BERT-base-like and MiniLM-like models.
pub const SHAPES: &[(usize, usize)] = &[(384, 384), (768, 768), (768, 3072)];

/// Tokens per batch: 16 sequences of 128 tokens.
pub const TOKENS: usize = 16 * 128;

/// A layer of the given shape with random non-zero adapter tensors.
pub fn layer<B: Backend>(
    d_in: usize,
    d_out: usize,
    r: usize,
    dora: bool,
    norm_mode: NormMode,
    low_rank_norm: bool,
    device: &B::Device,
) -> AdaptedLinear<B> {
    let normal = |shape: [usize; 2], std: f64| {
        Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), device)
    };
    let w = normal([d_in, d_out], 0.05);
    let m = dora.then(|| bidora_adapters::layer::column_norm(w.clone()));
    AdaptedLinear::from_parts(
        w,
        Some(Tensor::zeros([d_out], device)),
        normal([d_in, r], 0.05),
        normal([r, d_out], 0.05),
        m,
        0.0,
        LayerSettings {
            scaling: 2.0,
            norm_mode,
            low_rank_norm,
        },
    )
    .expect("valid layer")
}

/// A random input of `TOKENS` rows.
pub fn input<B: Backend>(d_in: usize, device: &B::Device) -> Tensor<B, 2> {
    Tensor::random([TOKENS, d_in], Distribution::Normal(0.0, 1.0), device)
}

/// Whether the benchmark `id` (`group/function`) should be set up: every one, unless
/// `BIDORA_BENCH_CASE` names a single one. `cargo xtask bench` runs each whole-model case in its
/// own process so that its peak memory is its own; skipping the others' setup (loading models)
/// keeps them out of that figure.
pub fn selected(id: &str) -> bool {
    std::env::var("BIDORA_BENCH_CASE").map_or(true, |only| only == id)
}

/// Prints this process's peak resident set size (`VmHWM`) as `bidora-bench peak-rss-kib N`, the
/// line `cargo xtask bench` reads. Prints nothing where `/proc` is not available.
pub fn print_peak_rss() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kib) = kib {
        println!("bidora-bench peak-rss-kib {kib}");
    }
}

/// This process's CPU time (user + system) in seconds, from `/proc/self/stat` (clock ticks of
/// 1/100 s, Linux's `USER_HZ`); `None` where `/proc` is not available.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces): utime and
    // stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Prints the average number of busy cores since `start` (CPU seconds then, and the instant) as
/// `bidora-bench busy-cores X`, the line `cargo xtask bench` reads.
pub fn print_busy_cores(start: (Option<f64>, std::time::Instant)) {
    let wall = start.1.elapsed().as_secs_f64();
    if let (Some(then), Some(now)) = (start.0, cpu_seconds()) {
        println!("bidora-bench busy-cores {:.2}", (now - then) / wall);
    }
}

/// The `main` of a whole-model bench: keeps freed memory (as the CLI does), skips with a
/// message when `model` is missing (`asset` names what `cargo xtask assets` fetches), runs
/// `benches` and prints the peak RSS and busy cores (model loading and warm-up included) that
/// `cargo xtask bench` reads.
pub fn run_model_benches(model: &std::path::Path, what: &str, asset: &str, benches: fn()) {
    bidora_backend::retain_freed_memory();
    if !model.exists() {
        eprintln!(
            "skipping the {what} benchmarks: no model at {} (run `cargo xtask assets {asset}`)",
            model.display()
        );
        return;
    }
    let start = (cpu_seconds(), std::time::Instant::now());
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    print_peak_rss();
    print_busy_cores(start);
}

/// A batch stream that yields the same batch forever: the engine benchmarks measure training
/// steps, not the data pipeline.
pub struct Fixed<T>(pub T);

impl<T: Clone> BatchStream for Fixed<T> {
    type Batch = T;
    fn next_batch(&mut self) -> T {
        self.0.clone()
    }
    fn position(&self) -> u64 {
        0
    }
    fn seek(&mut self, _: u64) {}
}

/// What one benchmarked iteration trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Iteration {
    /// One single-level step (LoRA, DoRA or full fine-tuning: whatever the module trains).
    Single,
    /// One BiDoRA iteration: a lower step and an upper step with the DARTS hypergradient, its
    /// finite differences on `fd_fraction` of the batch (`TrainConfig::fd_fraction`).
    Bilevel {
        /// 1 for the method's whole batch.
        fd_fraction: f64,
    },
}

/// A BiDoRA iteration at the method's settings.
pub const BIDORA: Iteration = Iteration::Bilevel {
    fd_fraction: bidora_bilevel::DEFAULT_FD_FRACTION,
};

/// Benchmarks one training iteration of `module` through the engine as `name` in `group`
/// (the engine's default γ; `problem` decides whether a regulariser exists). The same `batch`
/// feeds both levels; the backend's `sync` is inside the timed region.
pub fn bench_iteration<P>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    problem: &P,
    module: &P::Module,
    batch: &P::Batch,
    iteration: Iteration,
    device: &burn::tensor::Device<AD>,
) where
    P: BilevelProblem<AD>,
    P::Module: AdapterHost<AD>,
    P::Batch: Clone,
{
    let (groups, config) = engine_settings(module, iteration, 1);
    #[allow(clippy::clone_on_copy)] // not Copy on every backend
    let trainer = Trainer::new(problem, groups, config, device.clone()).expect("trainer");
    group.bench_function(name, |b| {
        b.iter(|| {
            let out = trainer
                .run(
                    module.clone(),
                    fixed_data(batch, iteration).data(),
                    Hooks::default(),
                    None,
                )
                .expect("one iteration");
            <AD as Backend>::sync(device).expect("sync");
            out
        })
    });
}

/// Benchmarks training iterations of `module` on `world` data-parallel peers (threads of this
/// process sharing its cores, over `burn-collective`), each on its [`BilevelProblem::shard`]
/// of `batch`, as `name` in `group`. A sample is one run of as many iterations as criterion
/// asks for, timed from the moment every peer has joined to the moment the last one is done;
/// `world = 1` is the same run without peers. On one CPU this simulates data parallelism:
/// what it measures is the cost of sharding and exchanging, not more compute.
#[allow(clippy::too_many_arguments, clippy::clone_on_copy)] // devices: not Copy on every backend
pub fn bench_iteration_on_peers<P>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    problem: &P,
    module: &P::Module,
    batch: &P::Batch,
    iteration: Iteration,
    device: &burn::tensor::Device<AD>,
    world: usize,
) where
    P: BilevelProblem<AD> + Sync,
    P::Module: AdapterHost<AD> + Send + Sync,
    P::Batch: Clone + Send + Sync,
{
    let sample = |iters: u64| {
        let (groups, config) = engine_settings(module, iteration, iters as usize);
        let peers = LocalPeers::new(world, std::time::Duration::from_secs(600));
        let start = Barrier::new(world);
        let peer = |rank: usize| {
            let trainer = Trainer::new(problem, groups.clone(), config.clone(), device.clone())
                .expect("trainer");
            let joined =
                (world > 1).then(|| peers.join::<Inner>(rank, device.clone()).expect("join"));
            let trainer = match &joined {
                Some(c) => trainer.with_peers(c),
                None => trainer,
            };
            start.wait();
            let t = Instant::now();
            trainer
                .run(
                    module.clone(),
                    fixed_data(batch, iteration).data(),
                    Hooks::default(),
                    None,
                )
                .expect("iterations");
            <AD as Backend>::sync(device).expect("sync");
            t.elapsed()
        };
        std::thread::scope(|s| {
            let others: Vec<_> = (1..world).map(|rank| s.spawn(move || peer(rank))).collect();
            let mine = peer(0);
            others
                .into_iter()
                .map(|h| h.join().expect("peer"))
                .fold(mine, Duration::max)
        })
    };
    group.bench_function(name, |b| b.iter_custom(sample));
}

type Inner = <AD as burn::tensor::backend::AutodiffBackend>::InnerBackend;

/// The groups and engine configuration of `iterations` benchmarked iterations.
fn engine_settings<M: burn::module::Module<AD> + AdapterHost<AD>>(
    module: &M,
    iteration: Iteration,
    iterations: usize,
) -> (ParamGroups, TrainConfig) {
    let part = ParamPartition::of(module);
    let (groups, mode, fd_fraction) = match iteration {
        Iteration::Single => (
            ParamGroups::single(part.trainable()),
            Mode::SingleLevel,
            bidora_bilevel::DEFAULT_FD_FRACTION,
        ),
        Iteration::Bilevel { fd_fraction } => (
            ParamGroups::new(part.lower(), part.upper()),
            Mode::Bilevel,
            fd_fraction,
        ),
    };
    let config = TrainConfig {
        mode,
        iterations,
        hypergradient: Hypergradient::Darts {
            alpha: 0.01,
            xi: 1.0,
        },
        fd_fraction,
        ..TrainConfig::default()
    };
    (groups, config)
}

/// The same batch on both levels (the upper one only for BiDoRA).
struct FixedData<T> {
    train: Fixed<T>,
    val: Option<Fixed<T>>,
}

fn fixed_data<T: Clone>(batch: &T, iteration: Iteration) -> FixedData<T> {
    FixedData {
        train: Fixed(batch.clone()),
        val: (iteration != Iteration::Single).then(|| Fixed(batch.clone())),
    }
}

impl<T: Clone> FixedData<T> {
    fn data(&mut self) -> Data<'_, T> {
        Data {
            train: &mut self.train,
            val: self
                .val
                .as_mut()
                .map(|v| v as &mut dyn BatchStream<Batch = T>),
            retrain: None,
        }
    }
}
