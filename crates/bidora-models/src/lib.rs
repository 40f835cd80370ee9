//! Pretrained transformers for bidora, loaded offline from HF model folders (`config.json` +
//! `model.safetensors`, sharded too), with LoRA/DoRA/BiDoRA adapters injected by PEFT-style
//! `target_modules`.
//!
//! Implemented so far: the BERT family ([`bert::Bert`], covering all-MiniLM-L6-v2) and HF's
//! `BertForSequenceClassification` head. Module paths are HF's, so PEFT adapter files apply
//! with the identity name map (`bidora_adapters::peft::PeftAdapter::apply`).

pub mod bert;
mod error;
pub mod tokenizer;
pub mod weights;

pub use error::ModelError;
