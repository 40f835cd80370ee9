//! The model crate's error type.

use std::path::PathBuf;

/// What can go wrong loading or adapting a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is malformed.
    #[error("malformed model config `{path}`")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// `config.json` names an architecture this crate does not implement.
    #[error("`{path}`: unknown architecture `{model_type}` (supported: {supported})")]
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// Its `model_type`.
        model_type: String,
        /// The supported ones.
        supported: String,
    },
    /// The weights do not match the architecture.
    #[error("weights `{path}` do not match the model:\n{problems}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// One line per missing, unexpected or mis-shaped tensor.
        problems: String,
    },
    /// An adapter or tensor file problem.
    #[error(transparent)]
    Adapter(#[from] bidora_adapters::AdapterError),
    /// Target modules that match nothing, or another bad argument.
    #[error("{0}")]
    Invalid(String),
}
