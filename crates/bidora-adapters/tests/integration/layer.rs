//! Properties of the adapted layer that need no external reference: exactness at init,
//! gradients against central finite differences, merge/unmerge, the low-rank norm, the
//! orthogonality regulariser (hand-worked values and its two forms), and the parameter
//! partition.

use crate::common::tiny;
use crate::common::*;
use bidora_adapters::regularizer::{self, GramCache, OrthoOptions};
use bidora_adapters::{
    AdaptedLinear, AdapterConfig, AdapterHost, AdapterMethod, InitA, LayerSettings, NormMode,
    ParamGroup, ParamPartition,
};
use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

fn tensor<B: Backend, const D: usize>(
    v: Vec<f64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let data: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    seed: u64,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(tensor(values(d_in * d_out, seed), [d_in, d_out], device)),
        bias: bias.then(|| Param::from_tensor(tensor(values(d_out, seed + 1), [d_out], device))),
    }
}

/// A layer with every trainable tensor non-trivial.
fn trained_layer<B: Backend>(
    d_in: usize,
    d_out: usize,
    r: usize,
    dora: bool,
    settings: LayerSettings,
    seed: u64,
    device: &B::Device,
) -> AdaptedLinear<B> {
    let w = tensor::<B, 2>(values(d_in * d_out, seed), [d_in, d_out], device);
    let m = dora.then(|| {
        bidora_adapters::layer::column_norm(w.clone())
            * tensor::<B, 1>(values(d_out, seed + 3), [d_out], device)
                .mul_scalar(0.2)
                .add_scalar(1.0)
    });
    AdaptedLinear::from_parts(
        w,
        Some(tensor(values(d_out, seed + 4), [d_out], device)),
        tensor(values(d_in * r, seed + 1), [d_in, r], device).mul_scalar(0.5),
        tensor(values(r * d_out, seed + 2), [r, d_out], device).mul_scalar(0.5),
        m,
        0.0,
        settings,
    )
    .unwrap()
}

fn settings(norm_mode: NormMode, low_rank_norm: bool) -> LayerSettings {
    LayerSettings {
        scaling: 1.5,
        norm_mode,
        low_rank_norm,
    }
}

bidora_backend::backend_tests! {
    #[test]
    fn magnitude_drift_is_the_relative_change_from_the_initial_norms() {
        let dev = device();
        let s = settings(NormMode::Exact, false);
        // Columns (3, 4) and (0, 1) in Burn's [in, out] layout: ‖W0‖ = (5, 1).
        let w = tensor::<TestInner, 2>(vec![3.0, 0.0, 4.0, 1.0], [2, 2], &dev);
        let (a, b) = (Tensor::zeros([2, 1], &dev), Tensor::zeros([1, 2], &dev));
        let layer = |m: Option<Vec<f64>>| {
            let m = m.map(|v| tensor::<TestInner, 1>(v, [2], &dev));
            AdaptedLinear::from_parts(w.clone(), None, a.clone(), b.clone(), m, 0.0, s).unwrap()
        };
        // m = (6, 1): ‖(1, 0)‖ / ‖(5, 1)‖ = 1/√26.
        let drift = layer(Some(vec![6.0, 1.0])).magnitude_drift().unwrap();
        assert!((drift - 1.0 / 26f64.sqrt()).abs() < 1e-7, "{drift}");
        // m = (5, 3): 2/√26; at init (m = ‖W0‖) zero; LoRA has none.
        let drift = layer(Some(vec![5.0, 3.0])).magnitude_drift().unwrap();
        assert!((drift - 2.0 / 26f64.sqrt()).abs() < 1e-7, "{drift}");
        assert_eq!(layer(Some(vec![5.0, 1.0])).magnitude_drift(), Some(0.0));
        assert_eq!(layer(None).magnitude_drift(), None);
    }

    #[test]
    fn output_at_init_equals_the_base_layer_exactly() {
        let dev = device();
        let x = tensor::<TestBackend, 3>(values(2 * 3 * 12, 9), [2, 3, 12], &dev);
        for method in [AdapterMethod::Lora, AdapterMethod::Dora, AdapterMethod::Bidora] {
            for low_rank in [false, true] {
                for bias in [false, true] {
                    for dropout in [0.0, 0.3] {
                        let base = linear::<TestBackend>(12, 7, bias, 5, &dev);
                        let want = base.forward(x.clone());
                        let config = AdapterConfig::new(method)
                            .with_rank(4, 16.0)
                            .with_low_rank_norm(low_rank)
                            .with_dropout(dropout);
                        let layer = AdaptedLinear::new(base, &config).unwrap();
                        assert!(layer.lora_a.val().abs().sum().into_scalar() > 0.0);
                        let got = layer.forward(x.clone());
                        assert_eq!(
                            got.into_data(),
                            want.clone().into_data(),
                            "{method} low_rank={low_rank} bias={bias} dropout={dropout}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn merged_layer_equals_unmerged_forward_and_unmerge_restores_w0() {
        let dev = device();
        let x = tensor::<TestInner, 2>(values(5 * 10, 3), [5, 10], &dev);
        for dora in [false, true] {
            for (d_in, d_out) in [(10, 10), (10, 6), (10, 16)] {
                let xi = x.clone().narrow(1, 0, d_in);
                let layer = trained_layer::<TestInner>(d_in, d_out, 3, dora, settings(NormMode::Exact, false), 11, &dev);
                let merged = layer.merge();
                assert_eq!(merged.dora_factor.is_some(), dora);
                let want = host(layer.forward(xi.clone()));
                assert_close("merged forward", &host(merged.linear.forward(xi.clone())), &want, 1e-6);
                let back = layer.unmerge(&merged).unwrap();
                assert_close("unmerged W0", &host(back.weight.val()), &host(layer.weight.val()), 1e-6);
                assert_close("unmerged forward", &host(back.forward(xi)), &want, 1e-6);
            }
        }
    }

    #[test]
    fn low_rank_norm_equals_direct_norm() {
        let dev = device();
        for (d_in, d_out, r) in [(16, 16, 4), (24, 10, 8), (10, 24, 1)] {
            let direct = trained_layer::<TestInner>(d_in, d_out, r, true, settings(NormMode::Exact, false), 21, &dev);
            let low = trained_layer::<TestInner>(d_in, d_out, r, true, settings(NormMode::Exact, true), 21, &dev);
            let n_direct = host(direct.weight_norm());
            assert_close("low-rank norm", &host(low.weight_norm()), &n_direct, 1e-6);
            // And both equal the norm of the materialised direction.
            let v = host(direct.direction());
            let mut want = vec![0.0f32; d_out];
            for row in v.data.chunks_exact(d_out) {
                for (w, x) in want.iter_mut().zip(row) {
                    *w += x * x;
                }
            }
            let want = bidora_adapters::tensor_io::HostTensor::new(vec![d_out], want.iter().map(|s| s.sqrt()).collect()).unwrap();
            assert_close("direct norm", &n_direct, &want, 1e-6);
        }
    }

    #[test]
    fn regulariser_matches_hand_computed_values() {
        let dev = device();
        let s = settings(NormMode::Exact, false);
        let zeros_a = |d_in: usize| Tensor::<TestInner, 2>::zeros([d_in, 1], &dev);
        let zeros_b = |d_out: usize| Tensor::<TestInner, 2>::zeros([1, d_out], &dev);
        // PyTorch rows (1,0) and (1,1): cosine 1/√2 twice off the diagonal, so ‖G − I‖_F = 1.
        // Burn layout is the transpose: columns are the rows.
        let w = tensor::<TestInner, 2>(vec![1.0, 1.0, 0.0, 1.0], [2, 2], &dev);
        let square = AdaptedLinear::from_parts(w, None, zeros_a(2), zeros_b(2), None, 0.0, s).unwrap();
        let r = regularizer::layer_penalty(&square, OrthoOptions::default()).into_scalar();
        assert!((r - 1.0).abs() < 1e-6, "{r}");
        // Tall (out = 3 > in = 2): rows (1,0), (0,1), (2,0) normalise to (1,0), (0,1), (1,0);
        // DᵀD = diag(2, 1), scaled by 2/3: diag(4/3, 2/3) − I has norm √2/3.
        let w = tensor::<TestInner, 2>(vec![1.0, 0.0, 2.0, 0.0, 1.0, 0.0], [2, 3], &dev);
        let tall = AdaptedLinear::from_parts(w, None, zeros_a(2), zeros_b(3), None, 0.0, s).unwrap();
        let r = regularizer::layer_penalty(&tall, OrthoOptions::default()).into_scalar();
        assert!((r - 2f32.sqrt() / 3.0).abs() < 1e-6, "{r}");
        let r2 = regularizer::layer_penalty(&tall, OrthoOptions { squared: true }).into_scalar();
        assert!((r2 - 2.0 / 9.0).abs() < 1e-6, "{r2}");
        // Orthogonal rows: zero.
        let w = tensor::<TestInner, 2>(vec![0.0, 3.0, -2.0, 0.0], [2, 2], &dev);
        let ortho = AdaptedLinear::from_parts(w, None, zeros_a(2), zeros_b(2), None, 0.0, s).unwrap();
        let r = regularizer::layer_penalty(&ortho, OrthoOptions::default()).into_scalar();
        assert!(r.abs() < 1e-6, "{r}");
        // The model-level regulariser is the mean over layers.
        let host_layers = vec![square, tall];
        let mean = regularizer::orthogonality(&host_layers, OrthoOptions::default()).unwrap().into_scalar();
        assert!((mean - (1.0 + 2f32.sqrt() / 3.0) / 2.0).abs() < 1e-6, "{mean}");
        let empty: Vec<AdaptedLinear<TestInner>> = Vec::new();
        assert!(regularizer::orthogonality(&empty, OrthoOptions::default()).is_none());
    }

    #[test]
    fn regulariser_low_rank_form_equals_direct_form_with_gradients() {
        let dev = device();
        let layers: Vec<AdaptedLinear<TestBackend>> = [(16, 16, 4), (24, 10, 8), (10, 24, 2)]
            .iter()
            .enumerate()
            .map(|(i, &(d_in, d_out, r))| trained_layer(d_in, d_out, r, true, settings(NormMode::Exact, false), 40 + i as u64, &dev))
            .collect();
        let cache = GramCache::new(&layers);
        assert!(cache.get("0").is_some() && cache.get("1").is_some() && cache.get("2").is_none());
        let direct = regularizer::orthogonality(&layers, OrthoOptions::default()).unwrap();
        let low = regularizer::orthogonality_low_rank(&layers, &cache, OrthoOptions::default()).unwrap();
        assert_close("R", &host(low.clone()), &host(direct.clone()), 1e-5);
        let g_direct = direct.backward();
        let g_low = low.backward();
        for (path, layer) in layers.adapters() {
            for (name, p) in [("A", &layer.lora_a), ("B", &layer.lora_b)] {
                let want = host(p.val().grad(&g_direct).unwrap());
                let got = host(p.val().grad(&g_low).unwrap());
                assert_close(&format!("dR/d{name} of layer {path}"), &got, &want, 1e-4);
            }
        }
    }

    #[test]
    fn partition_splits_parameters_by_role_and_gradients_follow() {
        let dev = device();
        let io = tiny::io();
        let config = AdapterConfig::new(AdapterMethod::Bidora).with_rank(4, 8.0);
        let model = tiny::build::<TestBackend>(&io, &config, &dev);
        let part = ParamPartition::of(&model);
        assert_eq!(part.count(ParamGroup::Direction), 4 * (12 * 4 + 4 * 12));
        assert_eq!(part.count(ParamGroup::Magnitude), 4 * 12);
        assert_eq!(part.count(ParamGroup::Head), 12 * 3 + 3);
        assert_eq!(part.count(ParamGroup::Frozen), 4 * (12 * 12 + 12));
        let a = model.layers[1].value.lora_a.id;
        assert_eq!(part.path(a), Some("layers.1.value.lora_a"));
        assert_eq!(part.lower().len(), 8 + 2);
        assert_eq!(part.upper().len(), 4);
        assert_eq!(part.trainable().len(), 14);

        let x = tensor::<TestBackend, 2>(values(5 * 12, 1), [5, 12], &dev);
        let mut grads = model.forward(x).square().sum().backward();
        let upper = GradientsParams::from_params(&mut grads, &model, &part.upper());
        let lower = GradientsParams::from_params(&mut grads, &model, &part.lower());
        assert_eq!(upper.len(), 4);
        assert_eq!(lower.len(), 10);
        let m = model.layers[0].query.magnitude.as_ref().unwrap().id;
        assert!(upper.get::<TestInner, 1>(m).is_some());
        assert!(lower.get::<TestInner, 1>(m).is_none());
        // Frozen weights get no gradient at all.
        assert!(model.layers[0].query.weight.val().grad(&grads).is_none());
    }

    #[test]
    fn init_of_a_follows_the_config() {
        let dev = device();
        let base = LinearConfig::new(256, 32).init::<TestInner>(&dev);
        let kaiming = AdaptedLinear::new(base.clone(), &AdapterConfig::default().with_rank(16, 16.0)).unwrap();
        let a = host(kaiming.lora_a.val());
        let bound = 1.0 / 16.0; // 1/√256
        assert!(a.data.iter().all(|v| v.abs() <= bound));
        let var: f32 = a.data.iter().map(|v| v * v).sum::<f32>() / a.data.len() as f32;
        let want = bound * bound / 3.0;
        assert!((var - want).abs() < 0.15 * want, "variance {var} vs {want}");
        assert!(host(kaiming.lora_b.val()).data.iter().all(|v| *v == 0.0));
        let gauss = AdaptedLinear::new(base, &AdapterConfig::default().with_rank(16, 16.0).with_init_a(InitA::Gaussian)).unwrap();
        let a = host(gauss.lora_a.val());
        let var: f32 = a.data.iter().map(|v| v * v).sum::<f32>() / a.data.len() as f32;
        assert!((var - 1.0).abs() < 0.15, "variance {var}");
    }
}
