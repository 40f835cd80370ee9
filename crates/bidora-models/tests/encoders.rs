//! RoBERTa and MPNet (encoders, sequence-classification, regression and token-classification
//! heads and their losses) against HF transformers on small random-weight models written in HF
//! layout by `scripts/golden/tiny_models.py`.
#![allow(clippy::unwrap_used)]

mod common;

use bidora_adapters::{AdapterConfig, AdapterHost, AdapterMethod};
use bidora_models::bert::{relative_position_bucket, Bert, Family};
use bidora_models::heads::{
    cross_entropy, mse_loss, BertForSequenceClassification, BertForTokenClassification,
};
use common::*;

#[test]
fn roberta_hidden_states_match_transformers_with_padding_aware_positions() {
    let f = golden("tiny-roberta");
    let (config, bert) =
        Bert::<B>::load(&fixtures().join("tiny-roberta"), &Default::default()).unwrap();
    assert_eq!(config.model_type, "roberta");
    assert_eq!(bert.padding_idx, Some(1));
    let out = bert.forward(
        ints(&f["input_ids"]),
        ints(&f["attention_mask"]),
        ints(&f["token_type_ids"]),
    );
    let h = max_abs(out.last_hidden_state, &f["last_hidden_state"]);
    let p = max_abs(out.pooler_output.unwrap(), &f["pooler_output"]);
    assert!(h <= 1e-4 && p <= 1e-4, "max abs errors {h} {p}");
    // Adapters inject on RoBERTa's layers by PEFT's default names.
    let adapted = bert
        .freeze()
        .inject(&AdapterConfig::new(AdapterMethod::Dora).with_rank(2, 4.0))
        .unwrap();
    assert_eq!(adapted.adapters().len(), 4);
}

#[test]
fn roberta_classification_head_matches_transformers() {
    let f = golden("tiny-roberta-cls");
    let (_, model) = BertForSequenceClassification::<B>::load(
        &fixtures().join("tiny-roberta-cls"),
        3,
        &Default::default(),
    )
    .unwrap();
    assert!(model.bert.pooler.is_none());
    let logits = model.forward(
        ints(&f["input_ids"]),
        ints(&f["attention_mask"]),
        ints(&f["token_type_ids"]),
    );
    let loss = cross_entropy(logits.clone(), ints(&f["labels"]));
    let e = max_abs(logits, &f["logits"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
    assert!(max_abs(loss, &f["loss"]) <= 1e-5);
    // The adapted layers report RoBERTa's checkpoint prefix.
    let adapted = model
        .with_adapters(&AdapterConfig::new(AdapterMethod::Lora).with_rank(2, 4.0))
        .unwrap();
    assert_eq!(
        adapted.adapters()[0].0,
        "roberta.encoder.layer.0.attention.self.query"
    );
    // A head of the wrong size is a listed mismatch.
    let err = BertForSequenceClassification::<B>::load(
        &fixtures().join("tiny-roberta-cls"),
        2,
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("classifier.out_proj.weight") && err.contains("[3, 32]"),
        "{err}"
    );
}

#[test]
fn mpnet_relative_buckets_equal_hf_for_every_distance() {
    let f = golden("tiny-mpnet-cls");
    let want = &f["buckets"].data;
    for (i, rel) in (-300i64..300).enumerate() {
        assert_eq!(
            relative_position_bucket(rel, 32, 128) as f32,
            want[i],
            "relative position {rel}"
        );
    }
}

#[test]
fn mpnet_encoder_and_regression_head_match_transformers() {
    let f = golden("tiny-mpnet-cls");
    let (config, model) = BertForSequenceClassification::<B>::load(
        &fixtures().join("tiny-mpnet-cls"),
        1,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(config.model_type, "mpnet");
    assert_eq!(model.bert.family, Family::Mpnet);
    assert!(model.bert.embeddings.token_type.is_none());
    let (ids, mask, types) = (
        ints(&f["input_ids"]),
        ints(&f["attention_mask"]),
        ints(&f["token_type_ids"]),
    );
    let hidden = model
        .bert
        .forward(ids.clone(), mask.clone(), types.clone())
        .last_hidden_state;
    let h = max_abs(hidden, &f["last_hidden_state"]);
    assert!(h <= 1e-4, "hidden states: max abs error {h}");
    let logits = model.forward(ids, mask, types);
    let loss = mse_loss(logits.clone(), floats(&f["targets"]));
    let e = max_abs(logits, &f["logits"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
    assert!(max_abs(loss, &f["loss"]) <= 1e-5);
    let adapted = model
        .with_adapters(
            &AdapterConfig::new(AdapterMethod::Bidora)
                .with_rank(2, 4.0)
                .with_targets(["q", "v"]),
        )
        .unwrap();
    let names: Vec<String> = adapted.adapters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[0], "mpnet.encoder.layer.0.attention.attn.q");
    assert_eq!(names.len(), 4);
}

#[test]
fn mpnet_token_classification_matches_transformers_and_skips_ignored_labels() {
    let f = golden("tiny-mpnet-tok");
    let (_, model) = BertForTokenClassification::<B>::load(
        &fixtures().join("tiny-mpnet-tok"),
        5,
        &Default::default(),
    )
    .unwrap();
    let logits = model.forward(
        ints(&f["input_ids"]),
        ints(&f["attention_mask"]),
        ints(&f["token_type_ids"]),
    );
    let e = max_abs(logits.clone(), &f["logits"]);
    assert!(e <= 1e-4, "logits: max abs error {e}");
    let [b, s, c] = logits.dims();
    let labels = ints::<2>(&f["labels"]).reshape([b * s]);
    let loss = cross_entropy(logits.reshape([b * s, c]), labels);
    assert!(max_abs(loss, &f["loss"]) <= 1e-5);
}

#[test]
fn a_peft_adapter_for_another_model_is_refused_with_the_differences() {
    use bidora_adapters::peft::PeftAdapter;
    // The MiniLM adapter (hidden 384, `bert.` paths) on the tiny RoBERTa (hidden 32).
    let adapter = PeftAdapter::load(&fixtures().join("minilm_dora")).unwrap();
    let (_, model) = BertForSequenceClassification::<B>::load(
        &fixtures().join("tiny-roberta-cls"),
        3,
        &Default::default(),
    )
    .unwrap();
    let err = model.with_peft(&adapter).unwrap_err().to_string();
    assert!(
        err.contains("no tensors for layer `roberta.encoder.layer.0.attention.self.query`"),
        "{err}"
    );
    assert!(
        err.contains("bert.encoder.layer.0.attention.self.query"),
        "{err}"
    );
}

#[test]
fn the_base_loader_skips_task_heads_the_strict_one_lists_them() {
    let dir = fixtures().join("tiny-mpnet-cls");
    let err = Bert::<B>::load(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected tensor `classifier.out_proj.weight` [1, 32]"),
        "{err}"
    );
    let (config, bert) = Bert::<B>::load_base(&dir, &Default::default()).unwrap();
    assert_eq!(config.model_type, "mpnet");
    assert_eq!(bert.layers.len(), 2);
}
