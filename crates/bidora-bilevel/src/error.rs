//! The training engine's error type.

use std::path::PathBuf;

/// What can stop a training run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A loss or gradient became NaN or infinite. The last checkpoint written is intact.
    #[error("{what} is {value} at step {step}: training stopped (the last checkpoint, if any, is intact)")]
    NonFinite {
        /// Which quantity.
        what: String,
        /// Its value.
        value: f64,
        /// The step (0-based, within the phase).
        step: usize,
    },
    /// The configuration is inconsistent.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A checkpoint was written against another base model than the one being resumed.
    #[error("checkpoint `{path}` was written for another base model (saved identity {saved}, now {now}): resume with the run's own model")]
    BaseChanged {
        /// The checkpoint file.
        path: PathBuf,
        /// The identity saved in the checkpoint.
        saved: String,
        /// The identity given now.
        now: String,
    },
    /// A checkpoint could not be written or read.
    #[error("checkpoint `{path}`: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Data parallelism: an exchange with the other peers failed (a peer stopped, died or did
    /// not answer in time). Rank 0's last checkpoint, if any, is intact.
    #[error("peer {rank} of {world}: {message} (the last checkpoint, if any, is intact)")]
    Peer {
        /// This peer's rank.
        rank: usize,
        /// The number of peers.
        world: usize,
        /// What failed.
        message: String,
    },
}
