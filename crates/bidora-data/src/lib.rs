//! Data for bidora: task loaders, seeded splits, batching and metrics.
//!
//! The crate knows no tensor library and no tokeniser: loaders produce [`Example`]s, the
//! [`batch`] module pads encodings from any [`batch::Tokenizer`] into host batches, and
//! [`metrics`] scores predictions as the Python reference libraries do.
//!
//! ```
//! use bidora_data::{split::train_val_split, tasks};
//!
//! let rte = tasks::task("rte").unwrap();
//! assert_eq!(rte.primary().name(), "accuracy");
//! # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/glue");
//! # if dir.is_dir() {
//! let data = rte.load(&dir).unwrap();
//! let (d_tr, d_val) = train_val_split(data.train, 0.2, 42).unwrap();
//! assert_eq!(d_tr.len() + d_val.len(), 2490);
//! # }
//! ```

pub mod batch;
pub mod chat;
pub mod conll;
mod error;
pub mod example;
pub mod folders;
pub mod generation;
pub mod glue;
pub mod headlines;
pub mod jsonl;
pub mod lines;
pub mod metrics;
pub mod prompt;
pub mod ratings;
pub mod split;
pub mod tasks;

pub use error::DataError;
pub use example::{Example, Label};
