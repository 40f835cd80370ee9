//! GPT-2 and Llama (safetensors and GGUF) against HF transformers on small random-weight
//! models from `scripts/golden/tiny_models.py`, GGUF dequantisation against the `gguf`
//! package, and GGUF reading errors.
#![allow(clippy::unwrap_used)]

mod common;

use bidora_adapters::{AdapterConfig, AdapterHost, AdapterMethod};
use bidora_models::generate::{greedy_cached, greedy_continue, KvCache};
use bidora_models::gguf::{Gguf, Value};
use bidora_models::gpt2::Gpt2LmHeadModel;
use bidora_models::heads::causal_lm_loss;
use bidora_models::llama::LlamaForCausalLM;
use bidora_models::ModelError;
use burn::tensor::{Int, Tensor, TensorData};
use common::*;

#[test]
fn gpt2_hidden_states_logits_and_loss_match_transformers() {
    let f = golden("tiny-gpt2");
    let (config, model) =
        Gpt2LmHeadModel::<B>::load(&fixtures().join("tiny-gpt2"), &Default::default()).unwrap();
    assert_eq!(config.n_layer, 2);
    let (ids, mask) = (ints(&f["input_ids"]), ints(&f["attention_mask"]));
    let hidden = model.transformer.forward(ids.clone(), mask.clone());
    let h = max_abs_masked(hidden, &f["last_hidden_state"], &f["attention_mask"]);
    assert!(h <= 1e-4, "hidden: max abs error {h}");
    let logits = model.forward(ids, mask);
    let e = max_abs_masked(logits.clone(), &f["logits"], &f["attention_mask"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
    let loss = causal_lm_loss(logits, ints(&f["labels"]));
    assert!(max_abs(loss, &f["loss"]) <= 1e-5);
}

#[test]
fn gpt2_fused_c_attn_takes_one_adapter_per_block() {
    let (_, model) =
        Gpt2LmHeadModel::<B>::load(&fixtures().join("tiny-gpt2"), &Default::default()).unwrap();
    let adapted = model
        .with_adapters(
            &AdapterConfig::new(AdapterMethod::Dora)
                .with_rank(2, 4.0)
                .with_targets(["c_attn"]),
        )
        .unwrap();
    let layers = adapted.adapters();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].0, "transformer.h.0.attn.c_attn");
    // One adapter over the fused projection: 32 inputs, 3 × 32 outputs (PEFT's shapes).
    assert_eq!((layers[0].1.d_input(), layers[0].1.d_output()), (32, 96));
    let err = Gpt2LmHeadModel::<B>::load(&fixtures().join("tiny-gpt2"), &Default::default())
        .unwrap()
        .1
        .with_adapters(&AdapterConfig::new(AdapterMethod::Lora).with_targets(["query"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("h.0.attn.c_attn"), "{err}");
}

#[test]
fn llama_with_grouped_query_attention_matches_transformers() {
    let f = golden("tiny-llama");
    let (config, model) =
        LlamaForCausalLM::<B>::load(&fixtures().join("tiny-llama"), &Default::default()).unwrap();
    assert_eq!((config.num_attention_heads, config.kv_heads()), (4, 2));
    assert!(model.lm_head.is_some());
    let (ids, mask) = (ints(&f["input_ids"]), ints(&f["attention_mask"]));
    let hidden = model.model.forward(ids.clone(), mask.clone());
    let h = max_abs_masked(hidden, &f["last_hidden_state"], &f["attention_mask"]);
    assert!(h <= 1e-4, "hidden: max abs error {h}");
    let logits = model.forward(ids, mask);
    let e = max_abs_masked(logits.clone(), &f["logits"], &f["attention_mask"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
    let loss = causal_lm_loss(logits, ints(&f["labels"]));
    assert!(max_abs(loss, &f["loss"]) <= 1e-5);
    let adapted = model
        .with_adapters(
            &AdapterConfig::new(AdapterMethod::Bidora).with_targets(["q_proj", "v_proj"]),
        )
        .unwrap();
    assert_eq!(adapted.adapters()[1].0, "model.layers.0.self_attn.v_proj");
}

#[test]
fn llama_from_gguf_unpermutes_query_and_key_rows() {
    let f = golden("tiny-llama");
    let want = golden("tiny-llama-gguf");
    let (config, model) =
        LlamaForCausalLM::<B>::load_gguf(&fixtures().join("tiny-llama.gguf"), &Default::default())
            .unwrap();
    assert_eq!(config.kv_heads(), 2);
    assert!(!config.tie_word_embeddings);
    let logits = model.forward(ints(&f["input_ids"]), ints(&f["attention_mask"]));
    let e = max_abs_masked(logits, &want["logits"], &f["attention_mask"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
}

#[test]
fn gguf_dequantisation_equals_the_gguf_package() {
    let g = Gguf::read(&fixtures().join("quants.gguf")).unwrap();
    let want = golden("quants");
    for ty in ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"] {
        assert_eq!(g.type_of(ty).as_deref(), Some(ty));
        let got = g.tensor(ty).unwrap();
        assert_eq!(got.shape, want[ty].shape, "{ty}");
        let e = got
            .data
            .iter()
            .zip(&want[ty].data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(e <= 1e-6, "{ty}: max abs error {e}");
    }
    assert_eq!(
        g.get("bidora.note"),
        Some(&Value::String("quantisation test tensors".into()))
    );
    assert_eq!(g.get("bidora.count").and_then(Value::as_u64), Some(5));
    assert_eq!(
        g.get("bidora.list")
            .and_then(Value::as_array)
            .map(<[Value]>::len),
        Some(3)
    );
}

#[test]
fn malformed_gguf_files_are_clear_errors() {
    let bytes = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    let path = std::path::Path::new("x.gguf");
    let err = Gguf::parse(path, b"GGML\x03\0\0\0".to_vec()).err().unwrap();
    assert!(err.to_string().contains("no GGUF magic"), "{err}");
    // Cut inside the metadata: an error naming the byte, never a panic.
    for cut in [3, 10, 30, 100, 200] {
        let err = Gguf::parse(path, bytes[..cut].to_vec()).err().unwrap();
        assert!(err.to_string().contains("x.gguf"), "{err}");
    }
    // Cut inside the tensor data: the header parses, the tensor read fails.
    let g = Gguf::parse(path, bytes[..bytes.len() - 40].to_vec()).unwrap();
    let err = g.tensor("Q4_1").unwrap_err().to_string();
    assert!(err.contains("past the end"), "{err}");
    // Not a Llama file.
    let err =
        LlamaForCausalLM::<B>::load_gguf(&fixtures().join("quants.gguf"), &Default::default())
            .err()
            .unwrap();
    assert!(matches!(err, ModelError::Invalid(_)), "{err}");
    assert!(
        err.to_string()
            .contains("has no `llama.attention.head_count` metadata"),
        "{err}"
    );
}

#[test]
fn peft_dora_on_gpt2_fused_c_attn_reproduces_peft_logits() {
    use bidora_adapters::peft::PeftAdapter;
    let f = golden("tiny-gpt2");
    let want = golden("tiny-gpt2_dora");
    let adapter = PeftAdapter::load(&fixtures().join("tiny-gpt2_dora")).unwrap();
    assert!(adapter.config.fan_in_fan_out);
    let (_, model) =
        Gpt2LmHeadModel::<B>::load(&fixtures().join("tiny-gpt2"), &Default::default()).unwrap();
    let model = model
        .with_adapters(&adapter.config.to_adapter_config())
        .unwrap();
    // c_attn, attn.c_proj and mlp.c_proj in both blocks.
    assert_eq!(model.adapters().len(), 6);
    let model = adapter.apply(model, &|p: &str| p.to_string()).unwrap();
    let logits = model.forward(ints(&f["input_ids"]), ints(&f["attention_mask"]));
    let e = max_abs_masked(logits, &want["logits"], &f["attention_mask"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
}

#[test]
fn peft_rslora_on_llama_reproduces_peft_logits() {
    use bidora_adapters::peft::PeftAdapter;
    let f = golden("tiny-llama");
    let want = golden("tiny-llama_lora");
    let adapter = PeftAdapter::load(&fixtures().join("tiny-llama_lora")).unwrap();
    let (_, model) =
        LlamaForCausalLM::<B>::load(&fixtures().join("tiny-llama"), &Default::default()).unwrap();
    let model = model
        .with_adapters(&adapter.config.to_adapter_config())
        .unwrap();
    let model = adapter.apply(model, &|p: &str| p.to_string()).unwrap();
    let logits = model.forward(ints(&f["input_ids"]), ints(&f["attention_mask"]));
    let e = max_abs_masked(logits, &want["logits"], &f["attention_mask"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
    // The adapter does not fit GPT-2: every missing layer is named.
    let (_, gpt2) =
        Gpt2LmHeadModel::<B>::load(&fixtures().join("tiny-gpt2"), &Default::default()).unwrap();
    let err = gpt2
        .with_adapters(&adapter.config.to_adapter_config())
        .unwrap_err()
        .to_string();
    assert!(err.contains("match no layer"), "{err}");
}

/// The KV cache: the prompt fed in two chunks gives the logits of one full pass, and greedy
/// decoding with the cache (one position per token) picks the tokens of decoding without it,
/// from the same logits (to 1e-5).
fn kv_cache_matches_full_passes(
    full: impl Fn(Tensor<B, 2, Int>, Tensor<B, 2, Int>) -> Tensor<B, 3>,
    cached: impl Fn(Tensor<B, 2, Int>, &mut KvCache<B>) -> Tensor<B, 3>,
) {
    let device = Default::default();
    let ids = |v: &[u32]| {
        let data: Vec<i64> = v.iter().map(|&t| t as i64).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, v.len()]), &device)
    };
    let prompt = [5u32, 17, 3, 42, 8, 11, 2];
    let whole = full(ids(&prompt), Tensor::ones([1, prompt.len()], &device));
    let mut cache = KvCache::new();
    let first = cached(ids(&prompt[..3]), &mut cache);
    assert_eq!(cache.len(), 3);
    let rest = cached(ids(&prompt[3..]), &mut cache);
    assert_eq!(cache.len(), prompt.len());
    let chunked = Tensor::cat(vec![first, rest], 1);
    let diff = (chunked - whole).abs().max().into_scalar();
    assert!(diff < 1e-5, "chunked against full: {diff}");

    let new = 12;
    let plain = greedy_continue(&full, &prompt, new, None, &device);
    let (tokens, logits) = greedy_cached(&cached, &prompt, new, None, &device);
    assert_eq!(tokens, plain);
    // Each step's logits against a full pass over the prompt and the tokens before it.
    for (k, step) in logits.into_iter().enumerate() {
        let prefix: Vec<u32> = prompt.iter().chain(&plain[..k]).copied().collect();
        let s = prefix.len();
        let all = full(ids(&prefix), Tensor::ones([1, s], &device));
        let v = all.dims()[2];
        let want = all.slice([0..1, s - 1..s, 0..v]).reshape([v]);
        let diff = (step - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "step {k}: {diff}");
    }
}

#[test]
fn llama_kv_cache_gives_the_logits_and_tokens_of_full_passes() {
    let (_, model) =
        LlamaForCausalLM::<B>::load(&fixtures().join("tiny-llama"), &Default::default()).unwrap();
    kv_cache_matches_full_passes(
        |i, m| model.forward(i, m),
        |i, c| model.forward_cached(i, c),
    );
}

#[test]
fn gpt2_kv_cache_gives_the_logits_and_tokens_of_full_passes() {
    let (_, model) =
        Gpt2LmHeadModel::<B>::load(&fixtures().join("tiny-gpt2"), &Default::default()).unwrap();
    kv_cache_matches_full_passes(
        |i, m| model.forward(i, m),
        |i, c| model.forward_cached(i, c),
    );
}
