//! Gradients against central finite differences, in f64 on ndarray.
//!
//! This runs in its own test binary on purpose: Burn 0.21 keeps a per-device default float
//! dtype in a process-wide registry, set by the first tensor made on the device. The CPU device
//! is shared by `NdArray<f32>` and `NdArray<f64>`, so f64 tests must not share a process with
//! f32 tests.

#![allow(clippy::unwrap_used)]

mod common;

use bidora_adapters::regularizer::{self, GramCache, OrthoOptions};
use bidora_adapters::{AdaptedLinear, LayerSettings, NormMode};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use common::values;

/// Gradients of `sum(y ⊙ C) + 0.7·R` against central finite differences, in f64 on ndarray,
/// for the exact norm (the one whose gradient is the true derivative), direct and low-rank.
mod finite_differences {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type F = NdArray<f64>;
    type AD = Autodiff<F>;

    struct Point {
        w: Vec<f64>,
        a: Vec<f64>,
        b: Vec<f64>,
        m: Vec<f64>,
        x: Vec<f64>,
        c: Vec<f64>,
    }

    fn t64<B: Backend, const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    fn layer<B: Backend>(p: &Point, d: (usize, usize, usize), low_rank: bool) -> AdaptedLinear<B> {
        let (d_in, d_out, r) = d;
        AdaptedLinear::from_parts(
            t64(&p.w, [d_in, d_out]),
            None,
            t64(&p.a, [d_in, r]),
            t64(&p.b, [r, d_out]),
            Some(t64(&p.m, [d_out])),
            0.0,
            LayerSettings {
                scaling: 1.5,
                norm_mode: NormMode::Exact,
                low_rank_norm: low_rank,
            },
        )
        .unwrap()
    }

    fn loss<B: Backend>(l: &AdaptedLinear<B>, x: Tensor<B, 2>, c: Tensor<B, 2>) -> Tensor<B, 1> {
        let cache = GramCache::new(l);
        let r = regularizer::orthogonality_low_rank(l, &cache, OrthoOptions::default()).unwrap();
        (l.forward(x) * c).sum() + r.mul_scalar(0.7)
    }

    fn value(p: &Point, d: (usize, usize, usize), n: usize, low_rank: bool) -> f64 {
        let l = layer::<F>(p, d, low_rank);
        loss(&l, t64(&p.x, [n, d.0]), t64(&p.c, [n, d.1])).into_scalar()
    }

    fn check(d: (usize, usize, usize), low_rank: bool) {
        let (d_in, d_out, r) = d;
        let n = 3;
        let w = values(d_in * d_out, 7);
        let mut m = vec![0.0; d_out];
        for j in 0..d_out {
            m[j] = (0..d_in)
                .map(|i| w[i * d_out + j].powi(2))
                .sum::<f64>()
                .sqrt()
                * (1.1 + 0.05 * j as f64);
        }
        let p = Point {
            w,
            a: values(d_in * r, 8),
            b: values(r * d_out, 9),
            m,
            x: values(n * d_in, 10),
            c: values(n * d_out, 11),
        };
        let l = layer::<AD>(&p, d, low_rank);
        assert_eq!(
            l.weight.val().into_data().dtype,
            burn::tensor::DType::F64,
            "the test must run in f64"
        );
        let x = t64::<AD, 2>(&p.x, [n, d_in]).require_grad();
        let grads = loss(&l, x.clone(), t64(&p.c, [n, d_out])).backward();
        let analytic = [
            (
                "A",
                l.lora_a
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec::<f64>()
                    .unwrap(),
            ),
            (
                "B",
                l.lora_b
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec::<f64>()
                    .unwrap(),
            ),
            (
                "m",
                l.magnitude
                    .as_ref()
                    .unwrap()
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .to_vec::<f64>()
                    .unwrap(),
            ),
            (
                "x",
                x.grad(&grads).unwrap().into_data().to_vec::<f64>().unwrap(),
            ),
        ];
        let h = 1e-6;
        for (name, grad) in analytic {
            for k in 0..grad.len() {
                let bump = |delta: f64| {
                    let mut q = Point {
                        w: p.w.clone(),
                        a: p.a.clone(),
                        b: p.b.clone(),
                        m: p.m.clone(),
                        x: p.x.clone(),
                        c: p.c.clone(),
                    };
                    let v = match name {
                        "A" => &mut q.a,
                        "B" => &mut q.b,
                        "m" => &mut q.m,
                        _ => &mut q.x,
                    };
                    v[k] += delta;
                    value(&q, d, n, low_rank)
                };
                let fd = (bump(h) - bump(-h)) / (2.0 * h);
                let err = (fd - grad[k]).abs() / fd.abs().max(1.0);
                assert!(err < 1e-6, "{d:?} low_rank={low_rank}: d/d{name}[{k}] autodiff {} vs finite difference {fd}", grad[k]);
            }
        }
    }

    #[test]
    fn exact_norm_gradients_match_finite_differences() {
        for d in [(5, 5, 2), (6, 4, 3), (4, 6, 1)] {
            check(d, false);
            check(d, true);
        }
    }
}
