//! The adapter crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or saving adapters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid adapter configuration: {0}")]
    InvalidConfig(String),
    /// A tensor has the wrong shape.
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Which tensor.
        tensor: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A file could not be read or written.
    #[error("{action} `{path}`")]
    Io {
        /// What was being done ("cannot read", "cannot write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("malformed JSON in `{path}`")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file is malformed.
    #[error("malformed safetensors file `{path}`: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An adapter file and the model it is loaded onto do not match.
    #[error("adapter `{path}` does not fit the model: {message}")]
    Mismatch {
        /// The adapter file or folder.
        path: PathBuf,
        /// Which tensors or layers disagree.
        message: String,
    },
    /// A feature of the file format that this crate does not implement.
    #[error("unsupported adapter: {0}")]
    Unsupported(String),
    /// Reading tensor data back from a backend failed.
    #[error("cannot read tensor `{tensor}` from the device: {message}")]
    Data {
        /// Which tensor.
        tensor: String,
        /// What went wrong.
        message: String,
    },
}
