//! The bi-level engine: hypergradients against closed forms, level invariants, learning on a
//! planted shift, NaN handling, and bit-identical kill-and-resume.

#![allow(clippy::unwrap_used)]

use bidora_adapters::regularizer::{orthogonality, OrthoOptions};
use bidora_adapters::{
    join_path, AdaptedLinear, AdapterConfig, AdapterHost, AdapterMethod, ParamPartition,
};
use bidora_bilevel::distributed::Collective;
use bidora_bilevel::params::values;
use bidora_bilevel::{
    hypergradient, shard_rows, BatchStream, BilevelProblem, Checkpoint, Control, Data, Evaluation,
    Event, Hooks, Hypergradient, LevelConfig, Mode, ParamGroups, Phase, RetrainConfig, Schedule,
    Shard, ShuffledBatches, TrainConfig, TrainError, Trainer,
};
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

type AB = Autodiff<NdArray<f32>>;

/// Burn's ndarray random generator is process-wide: tests that draw random numbers (module
/// init, dropout) run one at a time so that every run is reproducible.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn dev() -> <AB as burn::tensor::backend::BackendTypes>::Device {
    Default::default()
}

fn t1(v: &[f32]) -> Tensor<AB, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &dev())
}

fn t2(v: &[f32], rows: usize, cols: usize) -> Tensor<AB, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), &dev())
}

fn host<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

// ---------------------------------------------------------------- quadratic problem

#[derive(Module, Debug)]
struct Quad<B: Backend> {
    theta: Param<Tensor<B, 1>>,
    m: Param<Tensor<B, 1>>,
}

/// `L_tr = ½θᵀPθ + θᵀQM + ½‖M‖²`, `L_val = ½‖θ − t‖² + ½c‖M − u‖²`.
struct QuadProblem {
    p: Tensor<AB, 2>,
    q: Tensor<AB, 2>,
    t: Tensor<AB, 1>,
    u: Tensor<AB, 1>,
    c: f64,
}

fn quad_form(a: Tensor<AB, 1>, m: Tensor<AB, 2>, b: Tensor<AB, 1>) -> Tensor<AB, 1> {
    a.unsqueeze_dim::<2>(0)
        .matmul(m)
        .matmul(b.unsqueeze_dim(1))
        .reshape([1])
}

impl BilevelProblem<AB> for QuadProblem {
    type Module = Quad<AB>;
    type Batch = ();
    fn lower_loss(&self, q: &Quad<AB>, _: &()) -> Tensor<AB, 1> {
        let (th, m) = (q.theta.val(), q.m.val());
        quad_form(th.clone(), self.p.clone(), th.clone()).mul_scalar(0.5)
            + quad_form(th, self.q.clone(), m.clone())
            + m.square().sum().mul_scalar(0.5)
    }
    fn upper_loss(&self, q: &Quad<AB>, _: &()) -> Tensor<AB, 1> {
        (q.theta.val() - self.t.clone())
            .square()
            .sum()
            .mul_scalar(0.5)
            + (q.m.val() - self.u.clone())
                .square()
                .sum()
                .mul_scalar(0.5 * self.c)
    }
}

// P (3×3, SPD), Q (3×2), θ, M, t, u, c.
const P: [f32; 9] = [2.0, 0.3, 0.0, 0.3, 1.5, 0.2, 0.0, 0.2, 1.0];
const PINV: [f64; 9] = {
    // Inverse of P, computed by hand (adjugate / det): det = 2(1.5−0.04) − 0.3(0.3) = 2.83.
    let d = 2.83;
    [
        1.46 / d,
        -0.3 / d,
        0.06 / d,
        -0.3 / d,
        2.0 / d,
        -0.4 / d,
        0.06 / d,
        -0.4 / d,
        2.91 / d,
    ]
};
const Q: [f32; 6] = [0.5, -1.0, 0.25, 0.75, -0.5, 0.1];
const THETA: [f32; 3] = [0.4, -0.2, 0.9];
const M0: [f32; 2] = [1.2, -0.7];
const T: [f32; 3] = [1.0, 0.5, -0.5];
const U: [f32; 2] = [0.3, 0.3];
const C: f64 = 0.5;

fn quad() -> (QuadProblem, Quad<AB>, ParamGroups) {
    let module = Quad {
        theta: Param::from_tensor(t1(&THETA)),
        m: Param::from_tensor(t1(&M0)),
    };
    let groups = ParamGroups {
        lower: vec![module.theta.id],
        upper: vec![module.m.id],
    };
    let problem = QuadProblem {
        p: t2(&P, 3, 3),
        q: t2(&Q, 3, 2),
        t: t1(&T),
        u: t1(&U),
        c: C,
    };
    (problem, module, groups)
}

/// `c(M − u) − Qᵀ·K·(θ − t)` for `K` = I (DARTS) or P⁻¹ (exact IFT).
fn analytic(k: &[f64; 9]) -> Vec<f64> {
    let v: Vec<f64> = (0..3).map(|i| (THETA[i] - T[i]) as f64).collect();
    let kv: Vec<f64> = (0..3)
        .map(|i| (0..3).map(|j| k[i * 3 + j] * v[j]).sum())
        .collect();
    (0..2)
        .map(|j| {
            let mixed: f64 = (0..3).map(|i| Q[i * 2 + j] as f64 * kv[i]).sum();
            C * (M0[j] - U[j]) as f64 - mixed
        })
        .collect()
}

fn rel(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

/// The hypergradient of the quadratic problem (one batch, no regulariser, no randomness).
fn on_quad(
    (problem, module, groups): &(QuadProblem, Quad<AB>, ParamGroups),
    method: Hypergradient,
) -> bidora_bilevel::hypergrad::HypergradientResult<AB> {
    hypergradient(problem, module, groups, &(), &(), method, 0.0, &mut |_| {}).unwrap()
}

fn hyper(method: Hypergradient) -> Vec<f32> {
    let q = quad();
    let r = on_quad(&q, method);
    host(r.grad.get(q.2.upper[0]).unwrap().clone())
}

#[test]
fn darts_hypergradient_equals_ift_with_identity_hessian() {
    const I: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let got = hyper(Hypergradient::Darts {
        alpha: 0.01,
        xi: 1.0,
    });
    let want = analytic(&I);
    assert!(rel(&got, &want) <= 1e-3, "{got:?} vs {want:?}");
    // First order is the direct term alone, and differs.
    let direct: Vec<f64> = (0..2).map(|j| C * (M0[j] - U[j]) as f64).collect();
    let fo = hyper(Hypergradient::FirstOrder);
    assert!(rel(&fo, &direct) <= 1e-6, "{fo:?} vs {direct:?}");
    assert!(rel(&fo, &want) > 0.1);
}

#[test]
fn the_hypergradient_reports_its_terms_norms() {
    const I: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let q = quad();
    let run = |method| on_quad(&q, method);
    let darts = run(Hypergradient::Darts {
        alpha: 0.01,
        xi: 1.0,
    });
    let direct: Vec<f64> = (0..2).map(|j| C * (M0[j] - U[j]) as f64).collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mixed: Vec<f64> = direct
        .iter()
        .zip(analytic(&I))
        .map(|(d, h)| d - h)
        .collect();
    assert!((darts.direct_norm / norm(&direct) - 1.0).abs() < 1e-5);
    let got = darts.mixed_norm.expect("DARTS has a second-order term");
    assert!(
        (got / norm(&mixed) - 1.0).abs() < 1e-3,
        "{got} vs {}",
        norm(&mixed)
    );
    let first = run(Hypergradient::FirstOrder);
    assert_eq!(first.mixed_norm, None);
    assert_eq!(first.direct_norm, darts.direct_norm);
}

#[test]
fn neumann_hypergradient_approaches_the_exact_ift_value() {
    let exact = analytic(&PINV);
    let few = rel(
        &hyper(Hypergradient::Neumann {
            iterations: 2,
            alpha: 0.3,
        }),
        &exact,
    );
    let many = rel(
        &hyper(Hypergradient::Neumann {
            iterations: 80,
            alpha: 0.3,
        }),
        &exact,
    );
    assert!(many <= 1e-3, "80 terms: relative error {many}");
    assert!(
        few > many * 10.0,
        "more terms must get closer: {few} vs {many}"
    );
}

#[test]
fn hypergradient_leaves_the_module_bitwise_untouched() {
    let q = quad();
    let before = (host(q.1.theta.val()), host(q.1.m.val()));
    for method in [
        Hypergradient::Darts {
            alpha: 0.01,
            xi: 1.0,
        },
        Hypergradient::Neumann {
            iterations: 5,
            alpha: 0.3,
        },
    ] {
        on_quad(&q, method);
        assert_eq!((host(q.1.theta.val()), host(q.1.m.val())), before);
    }
}

// ---------------------------------------------------------------- non-quadratic problem

/// `L_tr(θ, M; A) = Σ_j M_j·sin(θ·ã_j)` with `ã_j` row `j` of the training batch (times a
/// dropout mask when `dropout`), `L_val(θ, M; B) = Σ_k softplus(θ·b_k) + ½c‖M − u‖²`.
///
/// The mixed term is `(∇²_{M,θ} L_tr · v)_j = cos(θ·ã_j)·(ã_j·v)`, and its central difference
/// at step `ε` is exactly `(sin(θ·ã_j + ε ã_j·v) − sin(θ·ã_j − ε ã_j·v)) / 2ε`: not exact for
/// any ε (unlike the quadratic above), so ε, the batch and the mask all show in the result.
struct WaveProblem {
    dropout: bool,
}

const WAVE_THETA: [f32; 3] = [0.7, -0.4, 1.1];
const WAVE_M: [f32; 2] = [0.9, -0.6];
const WAVE_U: [f32; 2] = [0.2, 0.4];
const WAVE_C: f64 = 0.5;
/// Training and validation batches (2 × 3 each), deliberately different.
const WAVE_TRAIN: [f32; 6] = [1.0, -0.5, 1.2, 0.6, 0.8, 1.5];
const WAVE_VAL: [f32; 6] = [0.4, -1.1, 0.6, 1.3, 0.2, 1.4];

/// The keep mask a dropout pass draws after the engine's reseed (1 = kept).
fn wave_mask() -> Tensor<AB, 2> {
    Tensor::random([2, 3], burn::tensor::Distribution::Bernoulli(0.5), &dev())
}

impl BilevelProblem<AB> for WaveProblem {
    type Module = Quad<AB>;
    type Batch = Tensor<AB, 2>;
    fn lower_loss(&self, q: &Quad<AB>, a: &Tensor<AB, 2>) -> Tensor<AB, 1> {
        let a = if self.dropout {
            a.clone() * wave_mask()
        } else {
            a.clone()
        };
        let z = a.matmul(q.theta.val().unsqueeze_dim(1)).reshape([2]);
        (q.m.val() * z.sin()).sum()
    }
    fn upper_loss(&self, q: &Quad<AB>, b: &Tensor<AB, 2>) -> Tensor<AB, 1> {
        let z = b.clone().matmul(q.theta.val().unsqueeze_dim(1));
        let softplus = z.exp().add_scalar(1.0).log().sum();
        softplus
            + (q.m.val() - t1(&WAVE_U))
                .square()
                .sum()
                .mul_scalar(0.5 * WAVE_C)
    }
}

fn wave() -> (Quad<AB>, ParamGroups) {
    let module = Quad {
        theta: Param::from_tensor(t1(&WAVE_THETA)),
        m: Param::from_tensor(t1(&WAVE_M)),
    };
    let groups = ParamGroups {
        lower: vec![module.theta.id],
        upper: vec![module.m.id],
    };
    (module, groups)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rows(flat: &[f32]) -> Vec<Vec<f64>> {
    flat.chunks(3)
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect()
}

/// `v = ∇_θ L_val = Σ_k σ(θ·b_k)·b_k` on the validation batch.
fn wave_v() -> Vec<f64> {
    let theta: Vec<f64> = WAVE_THETA.iter().map(|&x| x as f64).collect();
    let mut v = vec![0.0; 3];
    for b in rows(&WAVE_VAL) {
        let sigma = 1.0 / (1.0 + (-dot(&theta, &b)).exp());
        for i in 0..3 {
            v[i] += sigma * b[i];
        }
    }
    v
}

/// `h = c(M − u) − ξ·mixed`, where `mixed` is the central difference at step `eps` over the
/// batch rows `a` (or, with `eps = None`, its limit: the analytic mixed term).
fn wave_h(a: &[Vec<f64>], eps: Option<f64>) -> Vec<f64> {
    let theta: Vec<f64> = WAVE_THETA.iter().map(|&x| x as f64).collect();
    let v = wave_v();
    (0..2)
        .map(|j| {
            let (z, av) = (dot(&theta, &a[j]), dot(&a[j], &v));
            let mixed = match eps {
                None => z.cos() * av,
                Some(e) => ((z + e * av).sin() - (z - e * av).sin()) / (2.0 * e),
            };
            WAVE_C * (WAVE_M[j] - WAVE_U[j]) as f64 - mixed
        })
        .collect()
}

fn wave_hyper(dropout: bool, alpha: f64, reseed: &mut dyn FnMut(u64)) -> Vec<f32> {
    let (module, groups) = wave();
    let r = hypergradient(
        &WaveProblem { dropout },
        &module,
        &groups,
        &t2(&WAVE_TRAIN, 2, 3),
        &t2(&WAVE_VAL, 2, 3),
        Hypergradient::Darts { alpha, xi: 1.0 },
        0.0,
        reseed,
    )
    .unwrap();
    host(r.grad.get(groups.upper[0]).unwrap().clone())
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// DARTS on a non-quadratic lower loss with distinct training and validation batches: at a
/// small α it equals the analytic IFT value with `H⁻¹ = I` to finite-difference accuracy; at a
/// large α it equals the central difference at exactly `ε = α/‖v‖` on the *training* batch.
/// A step of `α` (not divided by `‖v‖`), or the validation batch in the `±` passes, would give
/// values that the asserted gaps show to be far outside the tolerance.
#[test]
fn darts_mixed_term_uses_eps_over_norm_v_and_the_training_batch() {
    let _guard = serial();
    let train = rows(&WAVE_TRAIN);
    let got = |alpha| -> Vec<f64> {
        wave_hyper(false, alpha, &mut |_| {})
            .iter()
            .map(|&x| x as f64)
            .collect()
    };
    const TOL: f64 = 2e-5;
    let analytic = wave_h(&train, None);
    let small = got(0.01);
    assert!(
        max_diff(&small, &analytic) < 2e-4,
        "{small:?} vs {analytic:?}"
    );
    let norm_v = dot(&wave_v(), &wave_v()).sqrt();
    assert!(
        (norm_v - 1.0).abs() > 0.3,
        "‖v‖ = {norm_v} must not hide ε's rule"
    );
    let alpha = 0.8;
    let big = got(alpha);
    let want = wave_h(&train, Some(alpha / norm_v));
    assert!(max_diff(&big, &want) < TOL, "{big:?} vs {want:?}");
    // The alternatives the test must tell apart are far from it.
    let wrong_eps = wave_h(&train, Some(alpha));
    let wrong_batch = wave_h(&rows(&WAVE_VAL), Some(alpha / norm_v));
    for (what, other) in [
        ("the limit ε → 0", &analytic),
        ("ε = α", &wrong_eps),
        ("the validation batch", &wrong_batch),
    ] {
        assert!(
            max_diff(&want, other) > 100.0 * TOL,
            "{what} is too close to tell apart"
        );
    }
}

/// With dropout in the lower loss, the `+` and `−` passes must see the same mask: the engine
/// reseeds both with the same value, and the result is the central difference over the masked
/// training rows. Masks that differ between the passes (simulated here by a reseed that never
/// repeats) give a difference dominated by O(1/ε) noise.
#[test]
fn darts_plus_and_minus_passes_share_their_dropout_mask() {
    let _guard = serial();
    let seed_of = |sub: u64| 1000 + sub;
    // The mask of the `±` passes: what a draw after reseed(2) gives.
    bidora_backend::seed::<AB>(&dev(), seed_of(2));
    let mask = host(wave_mask());
    assert!(
        mask.contains(&0.0) && mask.contains(&1.0),
        "{mask:?}: pick a seed whose mask drops some entries and keeps others"
    );
    let masked: Vec<f32> = WAVE_TRAIN.iter().zip(&mask).map(|(a, k)| a * k).collect();
    let norm_v = dot(&wave_v(), &wave_v()).sqrt();
    let want = wave_h(&rows(&masked), Some(0.01 / norm_v));
    let got: Vec<f64> = wave_hyper(true, 0.01, &mut |sub| {
        bidora_backend::seed::<AB>(&dev(), seed_of(sub))
    })
    .iter()
    .map(|&x| x as f64)
    .collect();
    assert!(max_diff(&got, &want) < 2e-4, "{got:?} vs {want:?}");
    let mut calls = 0;
    let unshared: Vec<f64> = wave_hyper(true, 0.01, &mut |sub| {
        calls += 1;
        bidora_backend::seed::<AB>(&dev(), seed_of(sub) + 7 * calls)
    })
    .iter()
    .map(|&x| x as f64)
    .collect();
    assert!(max_diff(&unshared, &want) > 1.0, "{unshared:?} vs {want:?}");
}

// ---------------------------------------------------------------- tiny DoRA regression

#[derive(Module, Debug)]
struct Net<B: Backend> {
    layer: AdaptedLinear<B>,
    head: Linear<B>,
}

impl<B: Backend> AdapterHost<B> for Net<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.layer.for_each_adapter(&join_path(prefix, "layer"), f);
    }
}

impl<B: Backend> Net<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(self.layer.forward(x).tanh())
    }
}

type Batch = (Tensor<AB, 2>, Tensor<AB, 2>);

struct Regression {
    gamma_reg: bool,
}

impl BilevelProblem<AB> for Regression {
    type Module = Net<AB>;
    type Batch = Batch;
    fn lower_loss(&self, net: &Net<AB>, (x, y): &Batch) -> Tensor<AB, 1> {
        (net.forward(x.clone()) - y.clone())
            .square()
            .mean()
            .reshape([1])
    }
    fn sub_batch(&self, (x, y): &Batch, fraction: f64) -> Option<Batch> {
        let n = ((x.dims()[0] as f64 * fraction).ceil() as usize).max(1);
        Some((x.clone().slice(0..n), y.clone().slice(0..n)))
    }
    fn shard(&self, (x, y): &Batch, rank: usize, world: usize) -> Option<Shard<Batch>> {
        let rows = shard_rows(x.dims()[0], rank, world);
        let weight = rows.len() as f64;
        let batch =
            (!rows.is_empty()).then(|| (x.clone().slice(rows.clone()), y.clone().slice(rows)));
        Some(Shard { batch, weight })
    }
    fn regularizer(&self, net: &Net<AB>) -> Option<Tensor<AB, 1>> {
        if self.gamma_reg {
            orthogonality(net, OrthoOptions::default())
        } else {
            None
        }
    }
}

const D: usize = 8;

fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(2862933555777941757)
        .wrapping_add(3037000493);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn net(dropout: f64, seed: u64) -> Net<AB> {
    net_init(dropout, seed, seed)
}

/// The base weights from `seed`; the adapter and head initialised from `init_seed`.
fn net_init(dropout: f64, seed: u64, init_seed: u64) -> Net<AB> {
    let base = Linear {
        weight: Param::from_tensor(t2(&lcg(D * D, seed), D, D)),
        bias: Some(Param::from_tensor(t1(&lcg(D, seed + 1)).mul_scalar(0.1))),
    };
    let config = AdapterConfig::new(AdapterMethod::Bidora)
        .with_rank(2, 4.0)
        .with_dropout(dropout);
    bidora_backend::seed::<AB>(&dev(), init_seed);
    let layer = AdaptedLinear::new(base, &config).unwrap();
    let head: Linear<AB> = LinearConfig::new(D, 2).init(&dev());
    // Burn initialises parameters lazily, on first use; force it now, while the seed holds.
    let _ = (head.weight.val(), head.bias.as_ref().map(|b| b.val()));
    Net { layer, head }
}

type Example = (Vec<f32>, Vec<f32>);

/// Inputs through a fixed "teacher"; the validation targets are the training targets with the
/// first output scaled by 1.8: a shift the magnitudes (trained on validation) can absorb.
fn examples(n: usize, seed: u64, val_shift: bool) -> Vec<Example> {
    let teacher = net(0.0, 99);
    let xs = lcg(n * D, seed);
    let x = t2(&xs, n, D);
    let y = host(teacher.forward(x));
    (0..n)
        .map(|i| {
            let mut target = y[i * 2..i * 2 + 2].to_vec();
            if val_shift {
                target[0] *= 1.8;
            }
            (xs[i * D..(i + 1) * D].to_vec(), target)
        })
        .collect()
}

fn stream(ex: Vec<Example>, seed: u64) -> impl BatchStream<Batch = Batch> {
    ShuffledBatches::new(ex, 8, seed, |items: &[&Example]| {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|e| e.0.clone()).collect();
        let y: Vec<f32> = items.iter().flat_map(|e| e.1.clone()).collect();
        (t2(&x, n, D), t2(&y, n, 2))
    })
    .unwrap()
}

fn loss_on(net: &Net<AB>, ex: &[Example]) -> f64 {
    let n = ex.len();
    let x: Vec<f32> = ex.iter().flat_map(|e| e.0.clone()).collect();
    let y: Vec<f32> = ex.iter().flat_map(|e| e.1.clone()).collect();
    let l = Regression { gamma_reg: false }.lower_loss(net, &(t2(&x, n, D), t2(&y, n, 2)));
    l.into_scalar().elem::<f64>()
}

fn config(mode: Mode, iterations: usize, hypergradient: Hypergradient) -> TrainConfig {
    TrainConfig {
        mode,
        iterations,
        hypergradient,
        gamma: 1e-3,
        lower: LevelConfig {
            weight_decay: 0.0,
            ..LevelConfig::with_lr(3e-2)
        },
        upper: LevelConfig {
            weight_decay: 0.0,
            ..LevelConfig::with_lr(3e-2)
        },
        schedule: Schedule::Constant,
        ..TrainConfig::default()
    }
}

fn run(
    cfg: &TrainConfig,
    module: Net<AB>,
    hooks: Hooks<'_, Net<AB>>,
    resume: Option<Checkpoint>,
) -> Result<bidora_bilevel::Outcome<Net<AB>>, TrainError> {
    run_on(cfg, module, hooks, resume, None)
}

/// The training and validation examples of [`run`], made once: their teacher draws from the
/// process-wide generator, which peers running as threads would otherwise race for.
fn run_data() -> &'static (Vec<Example>, Vec<Example>) {
    static DATA: std::sync::OnceLock<(Vec<Example>, Vec<Example>)> = std::sync::OnceLock::new();
    DATA.get_or_init(|| (examples(48, 1, false), examples(16, 2, true)))
}

/// [`run`] as one of the peers of `collective`, or alone.
fn run_on(
    cfg: &TrainConfig,
    module: Net<AB>,
    hooks: Hooks<'_, Net<AB>>,
    resume: Option<Checkpoint>,
    collective: Option<&dyn Collective<NdArray<f32>>>,
) -> Result<bidora_bilevel::Outcome<Net<AB>>, TrainError> {
    let problem = Regression { gamma_reg: true };
    let groups = {
        let p = ParamPartition::of(&module);
        ParamGroups::new(p.lower(), p.upper())
    };
    let mut trainer = Trainer::new(&problem, groups, cfg.clone(), dev())?;
    if let Some(c) = collective {
        trainer = trainer.with_peers(c);
    }
    let (train_set, val_set) = run_data();
    let mut train = stream(train_set.clone(), 11);
    let mut val = stream(val_set.clone(), 12);
    let mut both = stream([train_set.clone(), val_set.clone()].concat(), 13);
    trainer.run(
        module,
        Data {
            train: &mut train,
            val: Some(&mut val),
            retrain: Some(&mut both),
        },
        hooks,
        resume,
    )
}

fn snapshot(n: &Net<AB>) -> Vec<Vec<f32>> {
    vec![
        host(n.layer.weight.val()),
        host(n.layer.bias.as_ref().unwrap().val()),
        host(n.layer.lora_a.val()),
        host(n.layer.lora_b.val()),
        host(n.layer.magnitude.as_ref().unwrap().val()),
        host(n.head.weight.val()),
        host(n.head.bias.as_ref().unwrap().val()),
    ]
}

#[test]
fn each_level_changes_only_its_own_parameters() {
    let _guard = serial();
    let m0 = net(0.1, 5);
    let start = snapshot(&m0);
    let darts = Hypergradient::Darts {
        alpha: 0.01,
        xi: 1.0,
    };
    // Upper level only (lower lr = 0): θ (A, AB, head) and the frozen weights stay bitwise.
    let mut cfg = config(Mode::Bilevel, 6, darts);
    cfg.lower.lr = 0.0;
    let out = run(&cfg, m0.clone(), Hooks::default(), None).unwrap();
    let after = snapshot(&out.module);
    for i in [0, 1, 2, 3, 5, 6] {
        assert_eq!(after[i], start[i], "tensor {i} changed by upper steps");
    }
    assert_ne!(after[4], start[4], "magnitudes must move");
    // Lower level only (upper lr = 0): m and the frozen weights stay bitwise.
    let mut cfg = config(Mode::Bilevel, 6, darts);
    cfg.upper.lr = 0.0;
    let out = run(&cfg, m0, Hooks::default(), None).unwrap();
    let after = snapshot(&out.module);
    for i in [0, 1, 4] {
        assert_eq!(after[i], start[i], "tensor {i} changed by lower steps");
    }
    for i in [3, 5] {
        assert_ne!(after[i], start[i], "direction/head must move");
    }
}

/// [`Regression`] that records the first input value and the row count of every batch its
/// loss sees, and that may refuse to split batches.
struct Recording {
    inner: Regression,
    splits: bool,
    seen: std::cell::RefCell<Vec<(usize, f32)>>,
}

impl BilevelProblem<AB> for Recording {
    type Module = Net<AB>;
    type Batch = Batch;
    fn lower_loss(&self, net: &Net<AB>, b: &Batch) -> Tensor<AB, 1> {
        let first = host(b.0.clone().slice([0..1, 0..1]))[0];
        self.seen.borrow_mut().push((b.0.dims()[0], first));
        self.inner.lower_loss(net, b)
    }
    fn sub_batch(&self, b: &Batch, fraction: f64) -> Option<Batch> {
        self.splits
            .then(|| self.inner.sub_batch(b, fraction))
            .flatten()
    }
    fn regularizer(&self, net: &Net<AB>) -> Option<Tensor<AB, 1>> {
        self.inner.regularizer(net)
    }
}

/// The batches each pass of one BiDoRA iteration sees: `(rows, first input value)` for the
/// lower step, the validation loss, and the `+` and `−` passes.
fn passes_with_fd_fraction(
    fd_fraction: f64,
    hypergradient: Hypergradient,
    splits: bool,
) -> Result<Vec<(usize, f32)>, TrainError> {
    let problem = Recording {
        inner: Regression { gamma_reg: true },
        splits,
        seen: Default::default(),
    };
    let module = net(0.0, 5);
    let p = ParamPartition::of(&module);
    let cfg = TrainConfig {
        fd_fraction,
        ..config(Mode::Bilevel, 1, hypergradient)
    };
    let trainer = Trainer::new(&problem, ParamGroups::new(p.lower(), p.upper()), cfg, dev())?;
    let mut train = stream(examples(48, 1, false), 11);
    let mut val = stream(examples(16, 2, true), 12);
    let data = Data {
        train: &mut train,
        val: Some(&mut val),
        retrain: None,
    };
    trainer.run(module, data, Hooks::default(), None)?;
    Ok(problem.seen.into_inner())
}

#[test]
fn fd_fraction_runs_the_finite_differences_on_the_first_part_of_the_training_batch() {
    let _guard = serial();
    let darts = Hypergradient::Darts {
        alpha: 0.01,
        xi: 1.0,
    };
    let full = passes_with_fd_fraction(1.0, darts, true).unwrap();
    let (train, val) = (full[0], full[1]);
    assert_eq!(train.0, 8);
    assert_eq!(val.0, 8);
    assert_ne!(train.1, val.1, "the validation batch is another batch");
    assert_eq!(full, vec![train, val, train, train]);
    // Half: the ± passes see the first 4 training examples; 0.3 of 8 rounds up to 3.
    for (f, rows) in [(0.5, 4), (0.3, 3), (0.01, 1)] {
        let part = (rows, train.1);
        assert_eq!(
            passes_with_fd_fraction(f, darts, true).unwrap(),
            vec![train, val, part, part],
            "fd_fraction {f}"
        );
    }
    // First order has no finite difference, so no split is needed.
    let first = passes_with_fd_fraction(0.5, Hypergradient::FirstOrder, false).unwrap();
    assert_eq!(first, vec![train, val]);
    // A problem that cannot split its batches is refused, with the reason.
    let err = passes_with_fd_fraction(0.5, darts, false).unwrap_err();
    assert!(err.to_string().contains("sub_batch"), "{err}");
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let err = passes_with_fd_fraction(bad, darts, true).unwrap_err();
        assert!(err.to_string().contains("fd_fraction"), "{bad}: {err}");
    }
}

#[derive(Module, Debug)]
struct Lin<B: Backend> {
    layer: AdaptedLinear<B>,
}

impl<B: Backend> AdapterHost<B> for Lin<B> {
    fn for_each_adapter<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a AdaptedLinear<B>)) {
        self.layer.for_each_adapter(&join_path(prefix, "layer"), f);
    }
}

struct LinProblem;

impl BilevelProblem<AB> for LinProblem {
    type Module = Lin<AB>;
    type Batch = Batch;
    fn lower_loss(&self, m: &Lin<AB>, (x, y): &Batch) -> Tensor<AB, 1> {
        (m.layer.forward(x.clone()) - y.clone())
            .square()
            .mean()
            .reshape([1])
    }
}

/// Train targets come from `W0 + U·V`; validation targets from the same weight with output 0
/// scaled by 1.8 — a shift only the magnitudes, trained on validation data, can absorb.
#[test]
fn bilevel_training_lowers_validation_loss_on_a_planted_shift() {
    let _guard = serial();
    let w0 = t2(&lcg(D * D, 3), D, D);
    let teacher = w0.clone()
        + t2(&lcg(D * 2, 4), D, 2)
            .matmul(t2(&lcg(2 * D, 5), 2, D))
            .mul_scalar(0.3);
    let scale: Vec<f32> = (0..D).map(|j| if j == 0 { 1.8 } else { 1.0 }).collect();
    let make = |n: usize, seed: u64, shifted: bool| -> Vec<Example> {
        let xs = lcg(n * D, seed);
        let mut w = teacher.clone();
        if shifted {
            w = w * t1(&scale).unsqueeze_dim(0);
        }
        let y = host(t2(&xs, n, D).matmul(w));
        (0..n)
            .map(|i| {
                (
                    xs[i * D..(i + 1) * D].to_vec(),
                    y[i * D..(i + 1) * D].to_vec(),
                )
            })
            .collect()
    };
    let stream_d = |ex: Vec<Example>, seed: u64| {
        ShuffledBatches::new(ex, 8, seed, |items: &[&Example]| {
            let n = items.len();
            let x: Vec<f32> = items.iter().flat_map(|e| e.0.clone()).collect();
            let y: Vec<f32> = items.iter().flat_map(|e| e.1.clone()).collect();
            (t2(&x, n, D), t2(&y, n, D))
        })
        .unwrap()
    };
    let val = make(32, 7, true);
    let val_loss = |m: &Lin<AB>| {
        let n = val.len();
        let x: Vec<f32> = val.iter().flat_map(|e| e.0.clone()).collect();
        let y: Vec<f32> = val.iter().flat_map(|e| e.1.clone()).collect();
        LinProblem
            .lower_loss(m, &(t2(&x, n, D), t2(&y, n, D)))
            .into_scalar()
            .elem::<f64>()
    };
    let row_norms =
        |w: &Tensor<AB, 2>| -> Vec<f32> { host(w.clone().square().sum_dim(0).sqrt().reshape([D])) };
    let teacher_norms = row_norms(&teacher);
    let darts = Hypergradient::Darts {
        alpha: 0.01,
        xi: 1.0,
    };
    // (hypergradient, upper learning rate): the last is the control, magnitudes fixed.
    let mut results = Vec::new();
    for (method, upper_lr) in [
        (Hypergradient::FirstOrder, 3e-2),
        (darts, 3e-2),
        (darts, 0.0),
    ] {
        let config = AdapterConfig::new(AdapterMethod::Bidora).with_rank(2, 2.0);
        bidora_backend::seed::<AB>(&dev(), 1);
        let base = Linear {
            weight: Param::from_tensor(w0.clone()),
            bias: None,
        };
        let module = Lin {
            layer: AdaptedLinear::new(base, &config).unwrap(),
        };
        let before = val_loss(&module);
        let groups = {
            let p = ParamPartition::of(&module);
            ParamGroups::new(p.lower(), p.upper())
        };
        let mut cfg = config_lin(method);
        cfg.upper.lr = upper_lr;
        let trainer = Trainer::new(&LinProblem, groups, cfg, dev()).unwrap();
        let mut train = stream_d(make(64, 6, false), 1);
        let mut valid = stream_d(val.clone(), 2);
        let out = trainer
            .run(
                module,
                Data {
                    train: &mut train,
                    val: Some(&mut valid),
                    retrain: None,
                },
                Hooks::default(),
                None,
            )
            .unwrap();
        let after = val_loss(&out.module);
        // Magnitude over the teacher's row norm, per output.
        let m = host(out.module.layer.magnitude.as_ref().unwrap().val());
        let ratio: Vec<f32> = m.iter().zip(&teacher_norms).map(|(a, b)| a / b).collect();
        results.push((method, upper_lr, before, after, ratio));
    }
    for (method, upper_lr, before, after, ratio) in &results {
        let tag = format!(
            "{method:?}, upper lr {upper_lr}: val loss {before} -> {after}, m/‖teacher‖ {ratio:?}"
        );
        if *upper_lr > 0.0 {
            // The magnitude of the shifted output grows towards 1.8× its teacher norm; the
            // others stay near 1×.
            assert!(*after < 0.2 * before, "{tag}");
            assert!(ratio[0] > 1.5, "{tag}");
            assert!(ratio[1..].iter().all(|r| (r - 1.0).abs() < 0.25), "{tag}");
        } else {
            // Without upper steps the direction alone cannot absorb the shift.
            assert!(*after > 0.5 * before, "{tag}");
            assert!(ratio[0] < 1.1, "{tag}");
        }
    }
}

fn config_lin(method: Hypergradient) -> TrainConfig {
    config(Mode::Bilevel, 150, method)
}

#[test]
fn kill_and_resume_is_bitwise_identical() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.bin");
    let mut cfg = config(
        Mode::Bilevel,
        8,
        Hypergradient::Darts {
            alpha: 0.01,
            xi: 1.0,
        },
    );
    cfg.checkpoint_every = Some(3);
    cfg.retrain = Some(RetrainConfig {
        iterations: 5,
        level: LevelConfig::with_lr(1e-2),
    });
    cfg.schedule = Schedule::default();
    cfg.eval_every = Some(2);

    let val = examples(16, 2, true);
    let m0 = net(0.1, 5);
    let uninterrupted = {
        let mut eval = |n: &Net<AB>| Evaluation::single("val_loss", loss_on(n, &val), false);
        let hooks = Hooks {
            evaluate: Some(&mut eval),
            ..Default::default()
        };
        run(&cfg, m0.clone(), hooks, None).unwrap()
    };
    assert!(uninterrupted.completed);

    // Stop right after the checkpoint at search step 6, and again in the retraining phase.
    let mut resume = None;
    // Each checkpoint's training time, and the wall time of the process that wrote it.
    let mut timed: Vec<(f64, f64)> = Vec::new();
    for stop_at in [(Phase::Search, 6), (Phase::Retrain, 3)] {
        let mut phase = Phase::Search;
        let mut on_event = |e: &Event| match e {
            Event::PhaseStart { phase: p, .. } => {
                phase = *p;
                Control::Continue
            }
            Event::Checkpoint { step, .. } if (phase, *step) == stop_at => Control::Stop,
            _ => Control::Continue,
        };
        let mut eval = |n: &Net<AB>| Evaluation::single("val_loss", loss_on(n, &val), false);
        let hooks = Hooks {
            on_event: Some(&mut on_event),
            evaluate: Some(&mut eval),
            checkpoint: Some(path.clone()),
            base_identity: Some("base-5".into()),
        };
        // The first run starts like the uninterrupted one; resumed runs get a differently
        // initialised module, whose every value the checkpoint must overwrite.
        let template = if resume.is_some() {
            net_init(0.1, 5, 77)
        } else {
            m0.clone()
        };
        let started = std::time::Instant::now();
        let out = run(&cfg, template, hooks, resume.take()).unwrap();
        assert!(!out.completed);
        let ck = Checkpoint::load(&path).unwrap();
        assert_eq!(ck.state.phase, stop_at.0);
        timed.push((ck.state.elapsed_s.unwrap(), started.elapsed().as_secs_f64()));
        resume = Some(ck);
    }
    let mut eval = |n: &Net<AB>| Evaluation::single("val_loss", loss_on(n, &val), false);
    let hooks = Hooks {
        evaluate: Some(&mut eval),
        checkpoint: Some(path.clone()),
        base_identity: Some("base-5".into()),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let resumed = run(&cfg, net_init(0.1, 5, 77), hooks, resume).unwrap();
    assert!(resumed.completed);
    let last = Checkpoint::load(&path).unwrap().state.elapsed_s.unwrap();
    timed.push((last, started.elapsed().as_secs_f64()));
    // The training time adds up over the three processes: each checkpoint's exceeds the one
    // it resumed from by no more than its own process's wall time.
    let mut before = 0.0;
    for &(elapsed, wall) in &timed {
        assert!(elapsed > before && elapsed - before <= wall, "{timed:?}");
        before = elapsed;
    }
    assert_eq!(snapshot(&resumed.module), snapshot(&uninterrupted.module));
    assert_eq!(resumed.final_eval, uninterrupted.final_eval);
    assert_eq!(resumed.best_eval, uninterrupted.best_eval);
    // The checkpoint holds the trained values only: A [8×2], B [2×8], m [8] and the head
    // [8×2 + 2], not the frozen weight [8×8] and bias [8].
    let ck = Checkpoint::load(&path).unwrap();
    let saved: usize = ck.trained.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(saved, 16 + 16 + 8 + 18);
    assert_eq!(ck.param_ids.len(), 7);
    assert_eq!(ck.state.base.as_deref(), Some("base-5"));
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 8_000, "{size} bytes");
    // Another base model is refused.
    let err = run(
        &cfg,
        net_init(0.1, 5, 77),
        Hooks {
            base_identity: Some("base-6".into()),
            ..Default::default()
        },
        Some(Checkpoint::load(&path).unwrap()),
    )
    .unwrap_err();
    assert!(
        matches!(&err, TrainError::BaseChanged { saved, now, .. } if saved == "base-5" && now == "base-6"),
        "{err}"
    );
    // A different configuration is refused.
    let mut other = cfg.clone();
    other.gamma = 0.5;
    let err = run(
        &other,
        net(0.1, 5),
        Hooks::default(),
        Some(Checkpoint::load(&path).unwrap()),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("different training configuration"),
        "{err}"
    );
}

#[test]
fn retraining_resets_the_direction_and_freezes_magnitudes() {
    let _guard = serial();
    let mut cfg = config(Mode::Bilevel, 5, Hypergradient::FirstOrder);
    cfg.retrain = Some(RetrainConfig {
        iterations: 1,
        level: LevelConfig {
            weight_decay: 0.0,
            ..LevelConfig::with_lr(0.0)
        },
    });
    let m0 = net(0.0, 5);
    let start = snapshot(&m0);
    let out = run(&cfg, m0, Hooks::default(), None).unwrap();
    let after = snapshot(&out.module);
    // With a zero retraining rate, the direction and head are back to their initial values...
    for i in [2, 3, 5, 6] {
        assert_eq!(after[i], start[i], "tensor {i} not reset");
    }
    // ...while the searched magnitudes are kept.
    assert_ne!(after[4], start[4]);
}

/// Retraining at a non-zero rate trains the direction (and head) from its reset values and
/// leaves the searched magnitudes bitwise as the search left them.
#[test]
fn retraining_keeps_the_searched_magnitudes_bitwise() {
    let _guard = serial();
    let search_only = config(Mode::Bilevel, 5, Hypergradient::FirstOrder);
    let mut with_retrain = search_only.clone();
    with_retrain.retrain = Some(RetrainConfig {
        iterations: 4,
        level: LevelConfig {
            weight_decay: 0.0,
            ..LevelConfig::with_lr(3e-2)
        },
    });
    let m0 = net(0.1, 5);
    let start = snapshot(&m0);
    let searched = snapshot(
        &run(&search_only, m0.clone(), Hooks::default(), None)
            .unwrap()
            .module,
    );
    let retrained = snapshot(
        &run(&with_retrain, m0, Hooks::default(), None)
            .unwrap()
            .module,
    );
    assert_ne!(searched[4], start[4], "the search moved the magnitudes");
    assert_eq!(
        retrained[4], searched[4],
        "retraining changed the magnitudes"
    );
    for i in [2, 3, 5, 6] {
        assert_ne!(retrained[i], searched[i], "tensor {i} not retrained");
        assert_ne!(retrained[i], start[i], "tensor {i} not retrained");
    }
    for i in [0, 1] {
        assert_eq!(retrained[i], start[i], "frozen tensor {i} changed");
    }
}

struct Explodes;
impl BilevelProblem<AB> for Explodes {
    type Module = Net<AB>;
    type Batch = Batch;
    fn lower_loss(&self, net: &Net<AB>, (x, y): &Batch) -> Tensor<AB, 1> {
        // The loss is NaN once the first input of the batch is above 0.9.
        let l = (net.forward(x.clone()) - y.clone())
            .square()
            .mean()
            .reshape([1]);
        let first: f32 = x.clone().slice([0..1, 0..1]).into_scalar().elem();
        if first > 0.9 {
            l.mul_scalar(f64::NAN)
        } else {
            l
        }
    }
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.bin");
    let module = net(0.0, 5);
    let groups = ParamGroups::single(ParamPartition::of(&module).trainable());
    let mut cfg = config(Mode::SingleLevel, 40, Hypergradient::FirstOrder);
    cfg.checkpoint_every = Some(1);
    let trainer = Trainer::new(&Explodes, groups, cfg, dev()).unwrap();
    let mut ex = examples(40, 1, false);
    for (i, e) in ex.iter_mut().enumerate() {
        e.0[0] = if i == 17 { 0.95 } else { 0.0 };
    }
    // Batch size 1: exactly one step sees the poisoned example.
    let mut train = ShuffledBatches::new(ex, 1, 3, |items: &[&Example]| {
        (t2(&items[0].0, 1, D), t2(&items[0].1, 1, 2))
    })
    .unwrap();
    let err = trainer
        .run(
            module,
            Data {
                train: &mut train,
                val: None,
                retrain: None,
            },
            Hooks {
                checkpoint: Some(path.clone()),
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
    let TrainError::NonFinite { step, what, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(what, "lower loss");
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(
        ck.state.step, *step,
        "the last checkpoint is the one before the failing step"
    );
    assert!(err.to_string().contains(&format!("step {step}")));
}

#[test]
fn bad_configurations_are_refused() {
    let _guard = serial();
    let module = net(0.0, 5);
    let part = ParamPartition::of(&module);
    let problem = Regression { gamma_reg: false };
    let cfg = TrainConfig {
        unroll: 0,
        ..TrainConfig::default()
    };
    assert!(Trainer::new(
        &problem,
        ParamGroups::new(part.lower(), part.upper()),
        cfg,
        dev()
    )
    .is_err());
    // Bi-level with no magnitudes (a LoRA model) is refused with advice.
    let groups = ParamGroups {
        lower: part.lower(),
        upper: vec![],
    };
    let err = Trainer::new(&problem, groups, TrainConfig::default(), dev())
        .err()
        .unwrap();
    assert!(err.to_string().contains("single-level"), "{err}");
    let _ = values::<AB, _>(&module, &part.lower());
}

// ---------------------------------------------------------------- data parallelism

/// A sum over threads of this process, for the engine's tests without `burn-collective`: the
/// peers meet at a generation barrier and every peer takes the same sum.
#[derive(Clone)]
struct ThreadSum {
    rank: usize,
    world: usize,
    shared: std::sync::Arc<(std::sync::Mutex<Round>, std::sync::Condvar)>,
}

#[derive(Default)]
struct Round {
    generation: u64,
    arrived: usize,
    acc: Vec<f32>,
    result: Vec<f32>,
}

fn thread_sums(world: usize) -> Vec<ThreadSum> {
    let shared = std::sync::Arc::new(Default::default());
    (0..world)
        .map(|rank| ThreadSum {
            rank,
            world,
            shared: std::sync::Arc::clone(&shared),
        })
        .collect()
}

impl Collective<NdArray<f32>> for ThreadSum {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(
        &self,
        t: Tensor<NdArray<f32>, 1>,
    ) -> Result<Tensor<NdArray<f32>, 1>, TrainError> {
        let device = t.device();
        let mine = host(t);
        let (lock, cv) = &*self.shared;
        let mut round = lock.lock().unwrap();
        let generation = round.generation;
        if round.arrived == 0 {
            round.acc = vec![0.0; mine.len()];
        }
        for (a, x) in round.acc.iter_mut().zip(&mine) {
            *a += x;
        }
        round.arrived += 1;
        if round.arrived == self.world {
            round.result = std::mem::take(&mut round.acc);
            round.arrived = 0;
            round.generation += 1;
            cv.notify_all();
        } else {
            while round.generation == generation {
                round = cv.wait(round).unwrap();
            }
        }
        let n = round.result.len();
        Ok(Tensor::from_data(
            TensorData::new(round.result.clone(), [n]),
            &device,
        ))
    }
}

/// The configurations of the data-parallel tests: 5 steps of single-level training (LoRA /
/// DoRA style) and of BiDoRA with DARTS plus 2 retraining steps; no dropout, so that the
/// peers' results can equal one peer's.
fn parallel_configs() -> Vec<(&'static str, TrainConfig)> {
    let darts = Hypergradient::Darts {
        alpha: 0.01,
        xi: 1.0,
    };
    let bilevel = TrainConfig {
        retrain: Some(RetrainConfig {
            iterations: 2,
            level: LevelConfig {
                weight_decay: 0.0,
                ..LevelConfig::with_lr(3e-2)
            },
        }),
        ..config(Mode::Bilevel, 5, darts)
    };
    vec![
        ("single level", config(Mode::SingleLevel, 5, darts)),
        ("bi-level DARTS + retraining", bilevel),
    ]
}

/// Makes peer `rank`'s end of a run's collective, on the peer's own thread (Burn's peers
/// register with each other there).
type Join<'a> = dyn Fn(usize) -> Box<dyn Collective<NdArray<f32>>> + Sync + 'a;

/// Each peer a thread running the whole engine from its own start, writing its checkpoints
/// to its own path: every peer's trained values.
fn train_on_peers(
    cfg: &TrainConfig,
    starts: Vec<Net<AB>>,
    join: &Join<'_>,
    checkpoints: &[std::path::PathBuf],
) -> Vec<Result<Vec<Vec<f32>>, TrainError>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = checkpoints
            .iter()
            .zip(starts)
            .enumerate()
            .map(|(rank, (path, module))| {
                scope.spawn(move || {
                    let peer = join(rank);
                    let hooks = Hooks {
                        checkpoint: Some(path.clone()),
                        ..Hooks::default()
                    };
                    run_on(cfg, module, hooks, None, Some(peer.as_ref()))
                        .map(|o| snapshot(&o.module))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], tol: f32, what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(worst <= tol, "{what}: tensor {i} differs by {worst}");
    }
}

/// Checks that `world` peers made by `make` train like one peer on the whole batch, that only
/// rank 0 writes checkpoints, and that their checkpoint does not resume alone.
fn check_peers_match_one(new_run: &dyn Fn(usize) -> Box<Join<'static>>) {
    let dir = tempfile::tempdir().unwrap();
    // Peers initialised differently on purpose: they must start from rank 0's values.
    let m0 = net(0.0, 5);
    let other = net_init(0.0, 5, 77);
    for (what, cfg) in parallel_configs() {
        let cfg = TrainConfig {
            checkpoint_every: Some(2),
            ..cfg
        };
        let alone = snapshot(
            &run(&cfg, m0.clone(), Hooks::default(), None)
                .unwrap()
                .module,
        );
        // Two peers share the batches of 8 evenly, three unevenly (2, 3, 3 rows).
        for world in [2usize, 3] {
            let paths: Vec<_> = (0..world)
                .map(|r| dir.path().join(format!("{what}-{world}-{r}.ckpt")))
                .collect();
            let starts = (0..world)
                .map(|r| if r == 0 { m0.clone() } else { other.clone() })
                .collect();
            let outs = train_on_peers(&cfg, starts, new_run(world).as_ref(), &paths);
            for (rank, out) in outs.into_iter().enumerate() {
                let out = out.unwrap();
                let what = format!("{what}, {world} peers, rank {rank}");
                // Sums in another order; the central difference divides by 2ε: 6e-7 seen.
                assert_close(&out, &alone, 2e-6, &what);
            }
            assert!(paths[0].exists(), "rank 0 writes the checkpoint");
            for path in &paths[1..] {
                assert!(!path.exists(), "only rank 0 writes checkpoints");
            }
            // A run of `world` peers does not resume alone.
            let ck = Checkpoint::load(&paths[0]).unwrap();
            assert_eq!(ck.state.world, world);
            let err = run(&cfg, m0.clone(), Hooks::default(), Some(ck))
                .err()
                .unwrap();
            let want = format!("{world} peer(s), this run has 1");
            assert!(err.to_string().contains(&want), "{err}");
        }
    }
}

#[test]
fn peers_train_like_one_peer_on_the_whole_batch() {
    let _guard = serial();
    check_peers_match_one(&|world| {
        let sums = thread_sums(world);
        Box::new(move |rank| Box::new(sums[rank].clone()))
    });
}

/// The same with Burn's `burn-collective` as the transport.
#[cfg(feature = "collective")]
#[test]
fn burn_collective_peers_train_like_one_peer_on_the_whole_batch() {
    use bidora_bilevel::collective::LocalPeers;
    let _guard = serial();
    check_peers_match_one(&|world| {
        let peers = LocalPeers::new(world, std::time::Duration::from_secs(60));
        Box::new(move |rank| Box::new(peers.join::<NdArray<f32>>(rank, dev()).unwrap()))
    });
}

/// A peer of two whose fellow sends what it sends: never blocks.
struct Mirror;
impl Collective<NdArray<f32>> for Mirror {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_sum(
        &self,
        t: Tensor<NdArray<f32>, 1>,
    ) -> Result<Tensor<NdArray<f32>, 1>, TrainError> {
        Ok(t.mul_scalar(2.0))
    }
}

#[test]
fn a_problem_that_cannot_shard_refuses_several_peers() {
    let _guard = serial();
    let problem = Recording {
        inner: Regression { gamma_reg: false },
        splits: true,
        seen: Default::default(),
    };
    let module = net(0.0, 5);
    let p = ParamPartition::of(&module);
    let cfg = config(Mode::SingleLevel, 1, Hypergradient::FirstOrder);
    let trainer = Trainer::new(&problem, ParamGroups::single(p.trainable()), cfg, dev())
        .unwrap()
        .with_peers(&Mirror);
    let mut train = stream(examples(8, 1, false), 11);
    let data = Data {
        train: &mut train,
        val: None,
        retrain: None,
    };
    let err = trainer
        .run(module, data, Hooks::default(), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("shards its batches"), "{err}");
}
