//! Pretrained transformers for bidora, loaded offline from HF model folders (`config.json` +
//! `model.safetensors`, sharded too) or GGUF files, with LoRA/DoRA/BiDoRA adapters injected by
//! PEFT-style `target_modules`.
//!
//! - [`bert`]: BERT, RoBERTa and MPNet encoders (all-MiniLM-L6-v2, all-mpnet-base-v2), with
//!   the sequence- and token-classification heads in [`heads`];
//! - [`gpt2`]: the GPT-2 decoder (HF `Conv1D` weights, fused `c_attn`, tied LM head);
//! - [`llama`]: Llama-family decoders (RMSNorm, RoPE, grouped-query attention, SwiGLU; covers
//!   SmolLM2), from safetensors or from GGUF ([`gguf`]);
//! - [`causal`]: either decoder behind one type, with its tokeniser and end-of-sequence token,
//!   and the next-token loss on chosen positions that fine-tuning uses;
//! - [`generate`]: the KV cache, greedy decoding and beam search of both decoders;
//! - [`tokenizer`]: `tokenizer.json`, WordPiece `vocab.txt`, GPT-2 BPE files or a GGUF vocabulary.
//!
//! Module paths are HF's, so PEFT adapter files apply with the identity name map
//! (`bidora_adapters::peft::PeftAdapter::apply`), and every model reports its adapted layers
//! through `bidora_adapters::AdapterHost`.
//!
//! ```no_run
//! use bidora_adapters::peft::PeftAdapter;
//! use bidora_models::heads::BertForSequenceClassification;
//! use bidora_models::tokenizer::Tokenizer;
//! use burn::backend::NdArray;
//! use burn::tensor::{Int, Tensor, TensorData};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! type B = NdArray<f32>;
//! let dir = std::path::Path::new("all-MiniLM-L6-v2"); // config.json, model.safetensors, tokenizer
//! let device = Default::default();
//! // A 2-way classifier; a PEFT adapter (HF PEFT's or `bidora train`'s) with its saved head.
//! let (_, model) = BertForSequenceClassification::<B>::load(dir, 2, &device)?;
//! let model = model.with_peft(&PeftAdapter::load(std::path::Path::new("adapter"))?)?;
//! let enc = Tokenizer::load(dir)?.encode("A fine, funny film.", None, 128)?;
//! let n = enc.ids.len();
//! let ids: Vec<i64> = enc.ids.iter().map(|&i| i64::from(i)).collect();
//! let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
//! let logits = model.forward(ids, Tensor::ones([1, n], &device), Tensor::zeros([1, n], &device));
//! println!("{logits}");
//! # Ok(())
//! # }
//! ```

pub mod bert;
pub mod causal;
pub mod config;
mod error;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod heads;
pub mod host_llama;
pub mod layers;
pub mod llama;
pub mod tokenizer;
pub mod weights;

pub use config::Architecture;

pub use bidora_util::assets_dir;
pub use error::ModelError;
