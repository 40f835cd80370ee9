//! Reading a model folder's `config.json` and telling which architecture it holds.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::ModelError;

/// The architectures this crate implements, by HF `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `bert` (all-MiniLM-L6-v2 and other BERT checkpoints).
    Bert,
    /// `roberta`.
    Roberta,
    /// `mpnet` (all-mpnet-base-v2).
    Mpnet,
    /// `gpt2`.
    Gpt2,
    /// `llama` (SmolLM2 and other Llama-family decoders).
    Llama,
}

impl Architecture {
    /// Every supported `model_type`, for error messages.
    pub const SUPPORTED: &'static str = "bert, roberta, mpnet, gpt2, llama";

    /// The architecture of a `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "bert" => Architecture::Bert,
            "roberta" => Architecture::Roberta,
            "mpnet" => Architecture::Mpnet,
            "gpt2" => Architecture::Gpt2,
            "llama" => Architecture::Llama,
            _ => return None,
        })
    }

    /// Whether it is an encoder (BERT, RoBERTa, MPNet): the architectures with classification,
    /// regression and tagging heads.
    pub fn is_encoder(self) -> bool {
        matches!(
            self,
            Architecture::Bert | Architecture::Roberta | Architecture::Mpnet
        )
    }

    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Roberta => "roberta",
            Architecture::Mpnet => "mpnet",
            Architecture::Gpt2 => "gpt2",
            Architecture::Llama => "llama",
        }
    }

    /// Reads `dir/config.json` and returns its architecture (an error for an unknown one).
    pub fn detect(dir: &Path) -> Result<Self, ModelError> {
        let (path, text) = read(dir)?;
        let probe: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Config {
                path: path.clone(),
                source,
            })?;
        let model_type = probe["model_type"].as_str().unwrap_or("").to_string();
        Self::from_model_type(&model_type).ok_or(ModelError::UnknownArchitecture {
            path,
            model_type,
            supported: Self::SUPPORTED.into(),
        })
    }
}

fn read(dir: &Path) -> Result<(PathBuf, String), ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    Ok((path, text))
}

/// Reads `dir/config.json` as `T` after checking that its `model_type` is one of `accepted`.
pub(crate) fn load<T: DeserializeOwned>(
    dir: &Path,
    accepted: &[Architecture],
) -> Result<(PathBuf, T), ModelError> {
    let arch = Architecture::detect(dir)?;
    let path = dir.join("config.json");
    if !accepted.contains(&arch) {
        return Err(ModelError::Invalid(format!(
            "`{}` describes a `{}` model; this loader reads {}",
            path.display(),
            arch.model_type(),
            accepted
                .iter()
                .map(|a| a.model_type())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (path, text) = read(dir)?;
    let config = serde_json::from_str(&text).map_err(|source| ModelError::Config {
        path: path.clone(),
        source,
    })?;
    Ok((path, config))
}

/// Checks that `heads` divides `hidden`.
pub(crate) fn check_heads(path: &Path, hidden: usize, heads: usize) -> Result<(), ModelError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(ModelError::Invalid(format!(
            "`{}`: hidden size {hidden} is not a multiple of the {heads} attention heads",
            path.display()
        )));
    }
    Ok(())
}
