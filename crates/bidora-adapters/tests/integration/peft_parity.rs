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
    dropout: f64,
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
        dropout,
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
    let layer = build::<B>(g, case, low_rank_norm, case.dropout, device);
    let x: Tensor<B, 3> = upload::<B, 3>(g.get(case, "x"), device).require_grad();
    let c: Tensor<B, 3> = upload::<B, 3>(g.get(case, "C"), device);
    let y = if case.dropout > 0.0 {
        // Training mode with the fixture's mask in place of a random one.
        let keep: Tensor<B, 3> = upload::<B, 3>(g.get(case, "mask"), device);
        let dropped = x.clone() * keep.div_scalar(1.0 - case.dropout);
        layer.forward_dropped(x.clone(), dropped)
    } else {
        layer.forward(x.clone())
    };
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
        run_all_cases(|c| c.dropout == 0.0 && filter(c), low_rank)
    }

    fn run_all_cases(filter: impl Fn(&Case) -> bool, low_rank: bool) -> usize {
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

    /// Training mode, non-zero B, m away from ‖W0‖, a fixed mask: PEFT's dropout form (the
    /// base output is not dropped, the DoRA correction and the low-rank update are), forward
    /// and gradients, for LoRA, detached-norm DoRA (PEFT) and exact-norm DoRA (torch).
    #[test]
    fn dropout_path_matches_peft_with_a_fixed_mask() {
        let n = run_all_cases(|c| c.dropout > 0.0, false);
        assert_eq!(n, 6, "LoRA, DoRA detached, DoRA exact x 2 shapes");
        let n = run_all_cases(|c| c.dropout > 0.0 && c.method == "dora", true);
        assert_eq!(n, 4);
    }

    #[test]
    fn low_rank_norm_matches_the_same_references() {
        let n = run_cases(|c| c.method == "dora", true);
        assert_eq!(n, 18);
    }
}

/// `forward` in training mode is `forward_dropped` with the mask `dropout` draws from the
/// backend's seeded generator (the fixture test above pins `forward_dropped` itself).
#[test]
fn forward_draws_its_mask_from_the_seeded_dropout() {
    use burn::backend::{Autodiff, NdArray};
    type B = Autodiff<NdArray<f32>>;
    let device = Default::default();
    let g = Golden::load();
    let case = g
        .cases
        .iter()
        .find(|c| c.dropout > 0.0 && c.method == "dora")
        .expect("a DoRA dropout case");
    let layer = build::<B>(&g, case, false, case.dropout, &device);
    let x: Tensor<B, 3> = upload::<B, 3>(g.get(case, "x"), &device);
    bidora_backend::seed::<B>(&device, 11);
    let y = host(layer.forward(x.clone()));
    bidora_backend::seed::<B>(&device, 11);
    let dropped = bidora_adapters::dropout::dropout(&layer.dropout, x.clone());
    let kept = host(dropped.clone())
        .data
        .iter()
        .filter(|v| **v != 0.0)
        .count();
    assert!(kept > 0 && kept < x.shape().num_elements(), "a real mask");
    assert_eq!(y.data, host(layer.forward_dropped(x.clone(), dropped)).data);
    // ... and differs from the eval-mode output.
    assert_ne!(y.data, host(layer.forward_dropped(x.clone(), x)).data);
}
