//! A checked view of a safetensors weight map: every tensor taken must exist with the expected
//! shape, and every tensor left over is reported, so a mismatch lists all problems at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bidora_adapters::tensor_io::{read_safetensors, HostTensor};
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::ModelError;

/// Tensors of a checkpoint, consumed by name.
pub struct Weights {
    path: PathBuf,
    prefix: String,
    tensors: BTreeMap<String, HostTensor>,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl Weights {
    /// Reads `model.safetensors` (or the shards of `model.safetensors.index.json`) in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut tensors = BTreeMap::new();
        let path = if single.is_file() {
            tensors = read_safetensors(&single)?.tensors;
            single
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Config {
                    path: index.clone(),
                    source,
                })?;
            let shards: BTreeSet<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if shards.is_empty() {
                return Err(ModelError::Invalid(format!(
                    "`{}` has no weight_map",
                    index.display()
                )));
            }
            for shard in shards {
                tensors.extend(read_safetensors(&dir.join(shard))?.tensors);
            }
            index
        } else {
            return Err(ModelError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json",
                ),
            });
        };
        Ok(Self::from_map(path, tensors))
    }

    /// Wraps an in-memory map (`path` names it in errors).
    pub fn from_map(path: PathBuf, tensors: BTreeMap<String, HostTensor>) -> Self {
        Weights {
            path,
            prefix: String::new(),
            tensors,
            used: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// Uses `prefix` (e.g. `bert.`) in front of every name when the checkpoint has it.
    pub fn detect_prefix(&mut self, prefix: &str, probe: &str) {
        if !self.tensors.contains_key(probe)
            && self.tensors.contains_key(&format!("{prefix}{probe}"))
        {
            self.prefix = prefix.to_string();
        }
    }

    /// Whether a tensor exists (prefix applied).
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(&format!("{}{name}", self.prefix))
    }

    /// Whether a tensor exists without the prefix (e.g. a head outside the base model).
    pub fn has_raw(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn take(&mut self, full: String, shape: &[usize]) -> Option<HostTensor> {
        match self.tensors.get(&full) {
            None => {
                self.problems.push(format!(
                    "missing tensor `{full}` (expected shape {shape:?})"
                ));
                None
            }
            Some(t) if t.shape != shape => {
                self.problems.push(format!(
                    "tensor `{full}` has shape {:?}, expected {shape:?}",
                    t.shape
                ));
                self.used.insert(full);
                None
            }
            Some(t) => {
                self.used.insert(full.clone());
                Some(t.clone())
            }
        }
    }

    /// A tensor of `shape` (prefix applied), or a zero placeholder after recording a problem.
    pub fn tensor<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Tensor<B, D> {
        let full = format!("{}{name}", self.prefix);
        self.raw_tensor(full, shape, device)
    }

    /// Like [`Weights::tensor`] without the prefix.
    pub fn raw_tensor<B: Backend, const D: usize>(
        &mut self,
        full: String,
        shape: [usize; D],
        device: &B::Device,
    ) -> Tensor<B, D> {
        match self.take(full, &shape) {
            Some(t) => Tensor::from_data(TensorData::new(t.data, shape), device),
            None => Tensor::zeros(shape, device),
        }
    }

    /// A PyTorch `[out, in]` linear weight as Burn's `[in, out]` parameter.
    pub fn linear_weight<B: Backend>(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Param<Tensor<B, 2>> {
        let t: Tensor<B, 2> = self.tensor(name, [d_out, d_in], device);
        Param::from_tensor(t.transpose())
    }

    /// A parameter as stored.
    pub fn param<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Param<Tensor<B, D>> {
        Param::from_tensor(self.tensor(name, shape, device))
    }

    /// Marks tensors that are buffers, not parameters (e.g. `position_ids`), as used.
    pub fn ignore(&mut self, name_suffix: &str) {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.ends_with(name_suffix))
            .cloned()
            .collect();
        self.used.extend(names);
    }

    /// Marks every tensor whose name starts with `prefix` (no model prefix applied) as used,
    /// e.g. a task head (`classifier.`) when only the base model is wanted.
    pub fn ignore_prefix(&mut self, prefix: &str) {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        self.used.extend(names);
    }

    /// Ends loading: any problem, or any tensor not taken, is an error listing them all.
    pub fn finish(self) -> Result<(), ModelError> {
        let mut problems = self.problems;
        for name in self.tensors.keys() {
            if !self.used.contains(name) {
                problems.push(format!(
                    "unexpected tensor `{name}` {:?}",
                    self.tensors[name].shape
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Weights {
                path: self.path,
                problems: problems
                    .iter()
                    .map(|p| format!("  - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        }
    }
}
