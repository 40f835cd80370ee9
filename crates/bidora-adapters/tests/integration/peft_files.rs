//! HF PEFT adapter files: PEFT-written adapters load and reproduce PEFT's outputs, our files
//! round-trip exactly, and mismatches are clear errors.

use std::collections::BTreeMap;

use crate::common::tiny::{self, Tiny};
use crate::common::*;
use bidora_adapters::peft::{self, PeftAdapter, SaveOptions};
use bidora_adapters::tensor_io::HostTensor;
use bidora_adapters::{AdapterConfig, AdapterError, AdapterHost, AdapterMethod};
use burn::module::Param;
use burn::tensor::backend::Backend;

fn identity(p: &str) -> String {
    p.to_string()
}

/// Loads a PEFT-written adapter folder onto the tiny model, classifier included.
fn load_peft<B: Backend>(folder: &str, device: &B::Device) -> Tiny<B> {
    let io = tiny::io();
    let adapter = PeftAdapter::load(&fixtures().join(folder)).expect("adapter loads");
    assert!(adapter.warnings.is_empty(), "{:?}", adapter.warnings);
    let config = adapter.config.to_adapter_config();
    let model = tiny::build::<B>(&io, &config, device);
    let mut model = adapter.apply(model, &identity).expect("adapter fits");
    let w = &adapter.extra_tensors["classifier.weight"];
    let b = &adapter.extra_tensors["classifier.bias"];
    model.classifier.weight = Param::from_tensor(upload_t::<B>(w, device));
    model.classifier.bias = Some(Param::from_tensor(upload::<B, 1>(b, device)));
    model
}

fn all_params<B: Backend>(model: &Tiny<B>) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    for (path, layer) in model.adapters() {
        out.insert(format!("{path}.a"), host(layer.lora_a.val()));
        out.insert(format!("{path}.b"), host(layer.lora_b.val()));
        if let Some(m) = &layer.magnitude {
            out.insert(format!("{path}.m"), host(m.val()));
        }
        out.insert(format!("{path}.w"), host(layer.weight.val()));
    }
    out
}

bidora_backend::backend_tests! {
    #[test]
    fn peft_dora_adapter_reproduces_peft_outputs() {
        let io = tiny::io();
        let model = load_peft::<TestInner>("peft_dora", &device());
        let y = model.forward(upload::<TestInner, 2>(&io.tensors["x"], &device()));
        assert_close("DoRA logits", &host(y), &io.tensors["y_dora"], 1e-5);
        // The adapter really changes the output (guards against loading nothing).
        assert!(rel_err(&io.tensors["y_dora"], &io.tensors["y_base"]) > 0.1);
    }

    #[test]
    fn peft_lora_adapter_reproduces_peft_outputs() {
        let io = tiny::io();
        let model = load_peft::<TestInner>("peft_lora", &device());
        let y = model.forward(upload::<TestInner, 2>(&io.tensors["x"], &device()));
        assert_close("LoRA logits", &host(y), &io.tensors["y_lora"], 1e-5);
    }

    #[test]
    fn save_then_load_round_trips_exactly() {
        let model = load_peft::<TestInner>("peft_dora", &device());
        let dir = tempfile::tempdir().unwrap();
        let config = AdapterConfig::new(AdapterMethod::Bidora).with_rank(4, 10.0);
        let options = SaveOptions {
            task_type: Some("SEQ_CLS".into()),
            modules_to_save: vec!["classifier".into()],
            extra_tensors: BTreeMap::from([
                ("classifier.weight".to_string(), host(model.classifier.weight.val().transpose())),
                ("classifier.bias".to_string(), host(model.classifier.bias.as_ref().unwrap().val())),
            ]),
            ..Default::default()
        };
        peft::save(dir.path(), &model, &config, &options, &identity).unwrap();

        // A BiDoRA adapter is written as a PEFT DoRA adapter.
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["use_dora"], true);
        assert_eq!(json["peft_type"], "LORA");
        assert_eq!(json["r"], 4);
        assert_eq!(json["lora_alpha"], 10.0);
        assert_eq!(json["task_type"], "SEQ_CLS");
        assert_eq!(json["modules_to_save"][0], "classifier");

        // Same tensors, bit for bit, as the file PEFT wrote.
        let ours = PeftAdapter::load(dir.path()).unwrap();
        let theirs = PeftAdapter::load(&fixtures().join("peft_dora")).unwrap();
        assert_eq!(ours.layers, theirs.layers);
        assert_eq!(ours.extra_tensors, theirs.extra_tensors);

        // Loading onto a fresh model gives identical parameters and outputs.
        let io = tiny::io();
        let fresh = tiny::build::<TestInner>(&io, &ours.config.to_adapter_config(), &device());
        let reloaded = ours.apply(fresh, &identity).unwrap();
        assert_eq!(all_params(&reloaded), all_params(&model));
        let x = upload::<TestInner, 2>(&io.tensors["x"], &device());
        let mut reloaded = reloaded;
        reloaded.classifier = model.classifier.clone();
        assert_eq!(host(reloaded.forward(x.clone())), host(model.forward(x)));
    }

    #[test]
    fn adapter_for_another_model_is_a_clear_error() {
        let io = tiny::io();
        let adapter = PeftAdapter::load(&fixtures().join("peft_dora")).unwrap();
        // Rank 2 instead of 4.
        let config = adapter.config.to_adapter_config().with_rank(2, 5.0);
        let model = tiny::build::<TestInner>(&io, &config, &device());
        let err = adapter.apply(model, &identity).unwrap_err().to_string();
        assert!(err.contains("layers.0.query.lora_A.weight"), "{err}");
        assert!(err.contains("[4, 12]") && err.contains("[2, 12]"), "{err}");

        // Paths that do not exist in the model.
        let model = tiny::build::<TestInner>(&io, &adapter.config.to_adapter_config(), &device());
        let err = adapter
            .apply(model, &|p: &str| format!("encoder.{p}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no tensors for layer `encoder.layers.0.query`"), "{err}");
        assert!(err.contains("which the model does not adapt"), "{err}");

        // A LoRA model cannot take a DoRA adapter.
        let lora = adapter.config.to_adapter_config();
        let lora = AdapterConfig { method: AdapterMethod::Lora, ..lora };
        let model = tiny::build::<TestInner>(&io, &lora, &device());
        let err = adapter.apply(model, &identity).unwrap_err().to_string();
        assert!(err.contains("DoRA layer in the file but a LoRA layer in the model"), "{err}");
    }
}

#[test]
fn unknown_config_keys_warn_and_missing_keys_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("peft_lora/adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"r": 4, "lora_alpha": 10, "target_modules": ["query", "value"], "future_knob": 3}"#,
    )
    .unwrap();
    let adapter = PeftAdapter::load(dir.path()).unwrap();
    assert_eq!(adapter.warnings.len(), 1);
    assert!(adapter.warnings[0].contains("future_knob"));
    assert_eq!(adapter.config.peft_type, "LORA");
    assert_eq!(adapter.config.lora_dropout, 0.0);
    assert!(!adapter.config.use_dora);
    // Unknown keys survive a write.
    let text = serde_json::to_string(&adapter.config).unwrap();
    assert!(text.contains("\"future_knob\":3"));
}

#[test]
fn malformed_and_missing_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = PeftAdapter::load(dir.path()).unwrap_err();
    assert!(matches!(err, AdapterError::Io { .. }));
    assert!(err.to_string().contains("adapter_config.json"));

    std::fs::write(
        dir.path().join("adapter_config.json"),
        "{\"r\": 4,\n \"lora_alpha\": }",
    )
    .unwrap();
    let err = PeftAdapter::load(dir.path()).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("adapter_config.json") && chain.contains("line 2"),
        "{chain}"
    );

    std::fs::write(dir.path().join("adapter_config.json"), "{\"r\": 4}").unwrap();
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
    )
    .unwrap();
    let err = PeftAdapter::load(dir.path()).unwrap_err();
    assert!(matches!(err, AdapterError::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("adapter_model.safetensors"));

    std::fs::write(
        dir.path().join("adapter_config.json"),
        "{\"bias\": \"all\"}",
    )
    .unwrap();
    let err = PeftAdapter::load(dir.path()).unwrap_err();
    assert!(matches!(err, AdapterError::Unsupported(_)), "{err}");
}

#[test]
fn incomplete_layer_in_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = bidora_adapters::tensor_io::read_safetensors(
        &fixtures().join("peft_lora/adapter_model.safetensors"),
    )
    .unwrap();
    let mut tensors = src.tensors.clone();
    tensors.remove("base_model.model.layers.1.value.lora_B.weight");
    bidora_adapters::tensor_io::write_safetensors(
        &dir.path().join("adapter_model.safetensors"),
        &tensors,
        &Default::default(),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("peft_lora/adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let err = PeftAdapter::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("layers.1.value") && err.contains("lora_B.weight"),
        "{err}"
    );
}
