//! The adapter crate's integration tests, in one binary (one link, one monomorphisation of
//! the backends): layer properties, PEFT numerical parity, and PEFT adapter files.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod layer;
mod peft_files;
mod peft_parity;
