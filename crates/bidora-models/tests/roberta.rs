//! RoBERTa against HF transformers on a small random-weight model written in HF layout by
//! `scripts/golden/tiny_models.py` (no real RoBERTa weights ship in a registry package).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bidora_adapters::tensor_io::{read_safetensors, HostTensor};
use bidora_adapters::{AdapterConfig, AdapterHost, AdapterMethod};
use bidora_models::bert::{Bert, BertForSequenceClassification};
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};

type B = NdArray<f32>;

fn ints(t: &HostTensor) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = t.data.iter().map(|v| *v as i64).collect();
    Tensor::from_data(
        TensorData::new(data, [t.shape[0], t.shape[1]]),
        &Default::default(),
    )
}

#[test]
fn hidden_states_match_transformers_with_padding_aware_positions() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let f = read_safetensors(&fixtures.join("tiny-roberta.safetensors"))
        .unwrap()
        .tensors;
    let (config, bert) =
        Bert::<B>::load(&fixtures.join("tiny-roberta"), &Default::default()).unwrap();
    assert_eq!(config.model_type, "roberta");
    assert_eq!(bert.roberta_padding_idx, Some(1));
    let out = bert.forward(
        ints(&f["input_ids"]),
        ints(&f["attention_mask"]),
        ints(&f["token_type_ids"]),
    );
    for (name, got) in [
        (
            "last_hidden_state",
            out.last_hidden_state.into_data().to_vec::<f32>().unwrap(),
        ),
        (
            "pooler_output",
            out.pooler_output
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        ),
    ] {
        let want = &f[name];
        let e = got
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(e <= 1e-4, "{name}: max abs error {e}");
    }
    // Adapters inject on RoBERTa's layers too.
    let adapted = bert
        .freeze()
        .inject(&AdapterConfig::new(AdapterMethod::Dora).with_rank(2, 4.0))
        .unwrap();
    assert_eq!(adapted.adapters().len(), 4);
    // Its classification head is not BERT's: refused rather than silently wrong.
    let err = BertForSequenceClassification::<B>::load(
        &fixtures.join("tiny-roberta"),
        2,
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not implemented yet"), "{err}");
}
