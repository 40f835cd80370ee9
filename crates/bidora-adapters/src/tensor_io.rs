//! Host-side tensors, safetensors files and atomic writes.
//!
//! Files are always written to a temporary file in the destination folder, flushed, and then
//! renamed over the destination, so an interrupted write never leaves a partial file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::AdapterError;

/// An f32 tensor in host memory, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and values; fails when they disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, AdapterError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(AdapterError::Shape {
                tensor: "host tensor".into(),
                expected: shape,
                found: vec![data.len()],
            });
        }
        Ok(HostTensor { shape, data })
    }

    /// Reads a backend tensor back to the host as f32 (`name` is used in errors).
    pub fn from_tensor<B: Backend, const D: usize>(
        tensor: Tensor<B, D>,
        name: &str,
    ) -> Result<Self, AdapterError> {
        let data = tensor.into_data().convert::<f32>();
        let shape = data.shape.to_vec();
        let values = data.to_vec::<f32>().map_err(|e| AdapterError::Data {
            tensor: name.to_string(),
            message: format!("{e:?}"),
        })?;
        Ok(HostTensor {
            shape,
            data: values,
        })
    }

    /// Uploads to `device` as a rank-`D` tensor; fails when the rank differs.
    pub fn to_tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, AdapterError> {
        if self.shape.len() != D {
            return Err(AdapterError::Mismatch {
                path: name.into(),
                message: format!(
                    "tensor `{name}` has rank {} (shape {:?}), expected rank {D}",
                    self.shape.len(),
                    self.shape
                ),
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        ))
    }

    /// The transpose of a matrix (PyTorch `[out, in]` ↔ Burn `[in, out]`).
    pub fn transposed(&self) -> Result<Self, AdapterError> {
        let [rows, cols] = match self.shape.as_slice() {
            [r, c] => [*r, *c],
            _ => {
                return Err(AdapterError::InvalidConfig(format!(
                    "cannot transpose a tensor of shape {:?}",
                    self.shape
                )))
            }
        };
        let mut out = vec![0.0f32; self.data.len()];
        for i in 0..rows {
            for j in 0..cols {
                out[j * rows + i] = self.data[i * cols + j];
            }
        }
        Ok(HostTensor {
            shape: vec![cols, rows],
            data: out,
        })
    }
}

/// The tensors of a safetensors file and its `__metadata__`.
#[derive(Clone, Debug, Default)]
pub struct SafetensorsFile {
    /// Tensors by name (F32, F16, BF16, F64, and integer buffers, all read as f32).
    pub tensors: BTreeMap<String, HostTensor>,
    /// The free-form string metadata.
    pub metadata: HashMap<String, String>,
}

/// Reads every tensor of a safetensors file, converting floating types to f32.
pub fn read_safetensors(path: &Path) -> Result<SafetensorsFile, AdapterError> {
    let bytes = std::fs::read(path).map_err(|source| AdapterError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    parse_safetensors(&bytes, path)
}

/// Parses safetensors bytes (`path` is used in errors).
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<SafetensorsFile, AdapterError> {
    let bad = |message: String| AdapterError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = decode(&view).map_err(|m| bad(format!("tensor `{name}`: {m}")))?;
        tensors.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(SafetensorsFile { tensors, metadata })
}

fn decode(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let bytes = view.data();
    let out = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        // Integer buffers (e.g. BERT's `position_ids`) are read as their values.
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        Dtype::U8 | Dtype::BOOL => bytes.iter().map(|b| f32::from(*b)).collect(),
        other => return Err(format!("unsupported dtype {other:?}")),
    };
    Ok(out)
}

/// Writes f32 tensors (and string metadata) as a safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: &HashMap<String, String>,
) -> Result<(), AdapterError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let raw = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), raw, t.shape.clone())
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, raw, shape) in &bytes {
        let view = TensorView::new(Dtype::F32, shape.clone(), raw).map_err(|e| {
            AdapterError::Safetensors {
                path: path.to_path_buf(),
                message: format!("tensor `{name}`: {e}"),
            }
        })?;
        views.push((name.clone(), view));
    }
    let meta = (!metadata.is_empty()).then(|| metadata.clone());
    let out = safetensors::serialize(views, meta).map_err(|e| AdapterError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    atomic_write(path, &out)
}

/// Writes `bytes` to `path` atomically ([`bidora_util::atomic_write`]).
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), AdapterError> {
    bidora_util::atomic_write(path, bytes).map_err(|e| AdapterError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })
}
