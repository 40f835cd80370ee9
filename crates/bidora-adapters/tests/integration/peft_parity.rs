//! Forward outputs, merged weights and gradients against the PEFT / torch golden fixtures
//! (`scripts/golden/adapters.py`), on every compiled backend.

use crate::common::*;
use bidora_adapters::{AdaptedLinear, LayerSettings, NormMode};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

/// Relative error allowed against float64 references, f32 arithmetic.
const TOL: f64 = 1e-5;

fn build<B: AutodiffBackend>(
    g: &Golden,
    case: &Case,
    low_rank_norm: bool,
    device: &B::Device,
) -> AdaptedLinear<B> {
    let norm_mode = match case.norm.as_str() {
        "exact" => NormMode::Exact,
        _ => NormMode::Detached,
    };
    AdaptedLinear::from_parts(
        upload_t::<B>(g.get(case, "W0"), device),
        g.maybe(case, "bias").map(|b| upload::<B, 1>(b, device)),
        upload_t::<B>(g.get(case, "lora_A"), device),
        upload_t::<B>(g.get(case, "lora_B"), device),
        g.maybe(case, "magnitude")
            .map(|m| upload::<B, 1>(m, device)),
        0.0,
        LayerSettings {
            scaling: case.alpha / case.r as f64,
            norm_mode,
            low_rank_norm,
        },
    )
    .expect("valid layer")
}

fn check_case<B: AutodiffBackend>(
    g: &Golden,
    case: &Case,
    low_rank_norm: bool,
    device: &B::Device,
) {
    let tag = format!("{} (low-rank norm: {low_rank_norm})", case.name);
    let layer = build::<B>(g, case, low_rank_norm, device);
    let x: Tensor<B, 3> = upload::<B, 3>(g.get(case, "x"), device).require_grad();
    let c: Tensor<B, 3> = upload::<B, 3>(g.get(case, "C"), device);
    let y = layer.forward(x.clone());
    assert_close(
        &format!("{tag}: y"),
        &host(y.clone()),
        g.get(case, "y"),
        TOL,
    );

    let merged = layer.merged_weight().transpose();
    assert_close(
        &format!("{tag}: merged weight"),
        &host(merged),
        g.get(case, "merged_weight"),
        TOL,
    );

    let grads = (y * c).sum().backward();
    let ga = layer.lora_a.val().grad(&grads).expect("grad A").transpose();
    let gb = layer.lora_b.val().grad(&grads).expect("grad B").transpose();
    let gx = x.grad(&grads).expect("grad x");
    assert_close(
        &format!("{tag}: dL/dA"),
        &host(ga),
        g.get(case, "grad_lora_A"),
        TOL,
    );
    assert_close(
        &format!("{tag}: dL/dB"),
        &host(gb),
        g.get(case, "grad_lora_B"),
        TOL,
    );
    assert_close(
        &format!("{tag}: dL/dx"),
        &host(gx),
        g.get(case, "grad_x"),
        TOL,
    );
    if let Some(m) = &layer.magnitude {
        let gm = m.val().grad(&grads).expect("grad m");
        assert_close(
            &format!("{tag}: dL/dm"),
            &host(gm),
            g.get(case, "grad_magnitude"),
            TOL,
        );
    }
}

bidora_backend::backend_tests! {

    fn run_cases(filter: impl Fn(&Case) -> bool, low_rank: bool) -> usize {
        let g = Golden::load();
        let mut n = 0;
        for case in g.cases.iter().filter(|c| filter(c)) {
            check_case::<TestBackend>(&g, case, low_rank, &device());
            n += 1;
        }
        n
    }

    #[test]
    fn lora_matches_peft() {
        let n = run_cases(|c| c.method == "lora", false);
        assert_eq!(n, 9, "3 shapes x 3 ranks");
    }

    #[test]
    fn dora_detached_norm_matches_peft() {
        let n = run_cases(|c| c.method == "dora" && c.norm == "detached", false);
        assert_eq!(n, 9);
        let g = Golden::load();
        assert!(g.cases.iter().filter(|c| c.norm == "detached").all(|c| c.source == "peft"));
    }

    #[test]
    fn dora_exact_norm_matches_torch_autograd() {
        let n = run_cases(|c| c.method == "dora" && c.norm == "exact", false);
        assert_eq!(n, 9);
    }

    #[test]
    fn low_rank_norm_matches_the_same_references() {
        let n = run_cases(|c| c.method == "dora", true);
        assert_eq!(n, 18);
    }
}
