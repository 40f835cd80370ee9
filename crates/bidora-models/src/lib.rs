//! Pretrained transformers for bidora, loaded offline from HF model folders (`config.json` +
//! `model.safetensors`, sharded too) or GGUF files, with LoRA/DoRA/BiDoRA adapters injected by
//! PEFT-style `target_modules`.
//!
//! - [`bert`]: BERT, RoBERTa and MPNet encoders (all-MiniLM-L6-v2, all-mpnet-base-v2), with
//!   the sequence- and token-classification heads in [`heads`];
//! - [`gpt2`]: the GPT-2 decoder (HF `Conv1D` weights, fused `c_attn`, tied LM head);
//! - [`llama`]: Llama-family decoders (RMSNorm, RoPE, grouped-query attention, SwiGLU; covers
//!   SmolLM2), from safetensors or from GGUF ([`gguf`]);
//! - [`tokenizer`]: `tokenizer.json`, WordPiece `vocab.txt`, GPT-2 BPE files or a GGUF vocabulary.
//!
//! Module paths are HF's, so PEFT adapter files apply with the identity name map
//! (`bidora_adapters::peft::PeftAdapter::apply`), and every model reports its adapted layers
//! through `bidora_adapters::AdapterHost`.

pub mod bert;
pub mod config;
mod error;
pub mod gguf;
pub mod gpt2;
pub mod heads;
pub mod layers;
pub mod llama;
pub mod tokenizer;
pub mod weights;

pub use config::Architecture;
pub use error::ModelError;
