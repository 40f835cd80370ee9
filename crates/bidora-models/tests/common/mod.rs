//! Helpers shared by the model tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bidora_adapters::tensor_io::{read_safetensors, HostTensor};
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};

pub type B = NdArray<f32>;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tensors of `tests/fixtures/{name}.safetensors`.
pub fn golden(name: &str) -> BTreeMap<String, HostTensor> {
    read_safetensors(&fixtures().join(format!("{name}.safetensors")))
        .unwrap()
        .tensors
}

pub fn ints<const D: usize>(t: &HostTensor) -> Tensor<B, D, Int> {
    let data: Vec<i64> = t.data.iter().map(|v| *v as i64).collect();
    Tensor::from_data(TensorData::new(data, t.shape.clone()), &Default::default())
}

pub fn floats<const D: usize>(t: &HostTensor) -> Tensor<B, D> {
    Tensor::from_data(
        TensorData::new(t.data.clone(), t.shape.clone()),
        &Default::default(),
    )
}

/// Largest absolute difference; shapes must agree.
pub fn max_abs<const D: usize>(got: Tensor<B, D>, want: &HostTensor) -> f32 {
    assert_eq!(got.dims().to_vec(), want.shape, "shape");
    let got = got.into_data().to_vec::<f32>().unwrap();
    got.iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute difference over the rows of `[batch, seq, ...]` where `mask` is 1.
pub fn max_abs_masked(got: Tensor<B, 3>, want: &HostTensor, mask: &HostTensor) -> f32 {
    assert_eq!(got.dims().to_vec(), want.shape, "shape");
    let inner = want.shape[2];
    let got = got.into_data().to_vec::<f32>().unwrap();
    let mut e = 0.0f32;
    for (row, m) in mask.data.iter().enumerate() {
        if *m == 0.0 {
            continue;
        }
        let span = row * inner..(row + 1) * inner;
        for (a, b) in got[span.clone()].iter().zip(&want.data[span]) {
            e = e.max((a - b).abs());
        }
    }
    e
}

pub use bidora_models::assets_dir;

/// `assets_dir()/name/inner`, which must exist (the README's test command fetches it).
pub fn required_asset(name: &str, inner: &str) -> PathBuf {
    let path = assets_dir().join(name).join(inner);
    assert!(
        path.exists(),
        "{} not found: run `cargo xtask assets {name}` first",
        path.display()
    );
    path
}

/// Ids of a fixture tensor.
pub fn ids_of(t: &HostTensor) -> Vec<u32> {
    t.data.iter().map(|v| *v as u32).collect()
}

/// The host decoder against the Burn model it was built from: the logits of the prompt (in one
/// pass) and of each greedy step (one position each) agree to `tol` of their largest value, the
/// tokens are the same, and two prompts decoded as one batch give each prompt's tokens alone.
#[allow(dead_code)] // not every test binary uses it
pub fn host_decoder_matches(
    host: &bidora_models::host_llama::HostLlama,
    model: &bidora_models::llama::LlamaForCausalLM<B>,
    prompt: &[u32],
    steps: usize,
    tol: f32,
) {
    use bidora_models::generate::greedy_cached;
    use bidora_models::host_llama::HostCache;
    let device = Default::default();
    let (tokens, logits) = greedy_cached(
        |i, c| model.forward_cached(i, c),
        prompt,
        steps,
        None,
        &device,
    );
    let mut cache = HostCache::default();
    let mut input = prompt.to_vec();
    for (step, (want, &token)) in logits.into_iter().zip(&tokens).enumerate() {
        let got = host.forward(&input, 1, &mut cache).unwrap();
        let want: Vec<f32> = want.into_data().to_vec().unwrap();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(
            err <= tol * scale,
            "step {step}: max error {err} of {scale}"
        );
        input = vec![token];
    }
    assert_eq!(host.greedy(prompt, steps, None), tokens);
    let other: Vec<u32> = prompt.iter().rev().copied().collect();
    let alone = host.greedy(&other, steps, None);
    let both = host
        .greedy_batch(&[prompt.to_vec(), other], steps, None)
        .unwrap();
    assert_eq!(both, vec![tokens, alone]);
}
