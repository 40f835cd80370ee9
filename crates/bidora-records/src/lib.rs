//! The files a `bidora train` run writes, as types: each format is written and read through
//! one `serde` type, by the CLI and by the tools that read runs back (`cargo xtask results`).
//!
//! | file | type |
//! |---|---|
//! | `metrics.jsonl` | one [`Record`] per line |
//! | `report.json` | [`Report`] |
//! | `adapter/bidora.json` | [`AdapterInfo`] |
//!
//! The crate depends on `serde` only, so reading a run needs no tensor library.

pub mod metrics;
mod report;

pub use metrics::{kept_on_resume, Record};
pub use report::{AdapterInfo, BestEval, Metrics, ParameterCounts, Report};

use serde::{Deserialize, Serialize};

/// The phases of a run, as the files name them (`"search"`, `"retrain"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Single-level training, or BiDoRA's bi-level search.
    Search,
    /// BiDoRA's retraining of the direction with frozen magnitudes.
    Retrain,
}

impl Phase {
    /// The name used in the files and the progress output.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Search => "search",
            Phase::Retrain => "retrain",
        }
    }
}

/// A run file that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The file could not be read.
    #[error("cannot read `{path}`")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the JSON of its type.
    #[error("malformed `{path}`")]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a JSON file of type `T`, naming the file in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, RecordError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| RecordError::Json {
        path: path.to_path_buf(),
        source,
    })
}
