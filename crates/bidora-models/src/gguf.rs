//! GGUF files (llama.cpp's format): metadata and tensors, dequantised to `f32`
//! ([`Gguf::tensor`]) or kept in their blocks for decoding ([`Gguf::matrix`]).
//!
//! Supported tensor types: F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (blocks of 32 values with an
//! f16 scale, and for Q4_1 an f16 minimum). Dimensions are stored fastest-first; tensors are
//! returned in row-major (PyTorch) order, so `blk.0.attn_q.weight` with GGUF dims
//! `[in, out]` comes back as `[out, in]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bidora_adapters::tensor_io::HostTensor;
use bidora_backend::kernels::quant::{QuantFormat, QuantMatrix};
use half::{bf16, f16};

use crate::ModelError;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// string.
    String(String),
    /// array.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    /// As a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor is.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Row-major shape (GGUF's dims reversed).
    pub shape: Vec<usize>,
    /// GGML type id.
    pub ggml_type: u32,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF file, held in memory.
pub struct Gguf {
    /// The file (for error messages).
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor directory.
    pub tensors: BTreeMap<String, TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn bad(&self, what: impl std::fmt::Display) -> ModelError {
        ModelError::Invalid(format!(
            "malformed GGUF file `{}` at byte {}: {what}",
            self.path.display(),
            self.pos
        ))
    }
    fn take(&mut self, n: usize) -> Result<&[u8], ModelError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.bad(format!("{n} bytes needed, the file ends first")))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn len(&mut self) -> Result<usize, ModelError> {
        let n = self.u64()?;
        // No count can exceed the bytes left: reject before allocating.
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.bytes.len() - self.pos)
            .ok_or_else(|| self.bad(format!("count {n} exceeds the file")))
    }
    fn string(&mut self) -> Result<String, ModelError> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("a string is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, ModelError> {
        Ok(match ty {
            0 => Value::U64(self.array::<1>()?[0] as u64),
            1 => Value::I64(i8::from_le_bytes(self.array()?) as i64),
            2 => Value::U64(u16::from_le_bytes(self.array()?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.array()?) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(i32::from_le_bytes(self.array()?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.array()?) as f64),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 if depth == 0 => {
                let inner = self.u32()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.bad(format!("unknown value type {other}"))),
        })
    }
}

/// GGML type ids.
const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;
const BF16: u32 = 30;

/// Bytes per block and values per block of a type.
fn block_layout(ty: u32) -> Option<(usize, usize)> {
    Some(match ty {
        F32 => (4, 1),
        F16 | BF16 => (2, 1),
        Q4_0 => (18, 32),
        Q4_1 => (20, 32),
        Q8_0 => (34, 32),
        _ => return None,
    })
}

fn type_name(ty: u32) -> String {
    match ty {
        F32 => "F32".into(),
        F16 => "F16".into(),
        Q4_0 => "Q4_0".into(),
        Q4_1 => "Q4_1".into(),
        Q8_0 => "Q8_0".into(),
        BF16 => "BF16".into(),
        other => format!("type {other}"),
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `n` values of type `ty` from `bytes` (which must hold exactly them).
fn dequantize(ty: u32, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        F16 => out.extend(bytes.chunks_exact(2).map(|c| half_at(c, 0))),
        BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = half_at(block, 0);
                out.extend(block[2..].iter().map(|q| d * (*q as i8) as f32));
            }
        }
        Q4_0 | Q4_1 => {
            let header = if ty == Q4_0 { 2 } else { 4 };
            for block in bytes.chunks_exact(header + 16) {
                let d = half_at(block, 0);
                let (offset, min) = if ty == Q4_0 {
                    (-8.0, 0.0)
                } else {
                    (0.0, half_at(block, 2))
                };
                let qs = &block[header..];
                // Low nibbles are values 0..16 of the block, high nibbles 16..32.
                out.extend(qs.iter().map(|q| ((q & 0x0F) as f32 + offset) * d + min));
                out.extend(qs.iter().map(|q| ((q >> 4) as f32 + offset) * d + min));
            }
        }
        _ => {}
    }
    out
}

impl Gguf {
    /// Reads and parses a GGUF file.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, bytes)
    }

    /// Parses GGUF bytes (`path` names them in errors).
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self, ModelError> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if r.take(4)? != b"GGUF" {
            return Err(r.bad("not a GGUF file (no GGUF magic)"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!("unsupported GGUF version {version}")));
        }
        let n_tensors = r.len()?;
        let n_kv = r.len()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let dims = r.u32()? as usize;
            if dims > 4 {
                return Err(r.bad(format!("tensor `{name}` has {dims} dimensions")));
            }
            let mut shape = Vec::with_capacity(dims);
            for _ in 0..dims {
                shape.push(usize::try_from(r.u64()?).map_err(|_| r.bad("huge dimension"))?);
            }
            shape.reverse();
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            tensors.insert(
                name,
                TensorInfo {
                    shape,
                    ggml_type,
                    offset,
                },
            );
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(alignment) * alignment;
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
            data_start,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, or an error naming the key and the file.
    pub fn require(&self, key: &str) -> Result<&Value, ModelError> {
        self.get(key).ok_or_else(|| {
            ModelError::Invalid(format!(
                "GGUF file `{}` has no `{key}` metadata",
                self.path.display()
            ))
        })
    }

    /// A tensor's directory entry and its bytes, checked to lie inside the file.
    fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8]), ModelError> {
        let bad = |what: String| self.bad_tensor(name, what);
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| bad("no such tensor".into()))?;
        let n: usize = info.shape.iter().product();
        let (block_bytes, block_values) = block_layout(info.ggml_type).ok_or_else(|| {
            bad(format!(
                "{} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1 are)",
                type_name(info.ggml_type)
            ))
        })?;
        if !n.is_multiple_of(block_values) {
            return Err(bad(format!(
                "{n} values do not fill whole {}-value blocks",
                block_values
            )));
        }
        let size = n / block_values * block_bytes;
        let start = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_start))
            .filter(|s| s.checked_add(size).is_some_and(|e| e <= self.bytes.len()))
            .ok_or_else(|| bad("its data lies past the end of the file".into()))?;
        Ok((info, &self.bytes[start..start + size]))
    }

    fn bad_tensor(&self, name: &str, what: String) -> ModelError {
        ModelError::Invalid(format!(
            "GGUF file `{}`, tensor `{name}`: {what}",
            self.path.display()
        ))
    }

    /// A tensor dequantised to `f32`, in row-major order.
    pub fn tensor(&self, name: &str) -> Result<HostTensor, ModelError> {
        let (info, bytes) = self.raw(name)?;
        let n = info.shape.iter().product();
        Ok(HostTensor {
            shape: info.shape.clone(),
            data: dequantize(info.ggml_type, bytes, n),
        })
    }

    /// A 2-d tensor `[rows, cols]` as a [`QuantMatrix`]: Q8_0, Q4_0 and Q4_1 keep their blocks,
    /// F32 stays, F16 and BF16 become `f32`.
    pub fn matrix(&self, name: &str) -> Result<QuantMatrix, ModelError> {
        let (info, bytes) = self.raw(name)?;
        let &[rows, cols] = info.shape.as_slice() else {
            return Err(self.bad_tensor(name, format!("shape {:?} is not a matrix", info.shape)));
        };
        let format = match info.ggml_type {
            Q8_0 => QuantFormat::Q8_0,
            Q4_0 => QuantFormat::Q4_0,
            Q4_1 => QuantFormat::Q4_1,
            ty => {
                let values = dequantize(ty, bytes, rows * cols);
                return QuantMatrix::from_f32(rows, cols, values)
                    .map_err(|e| self.bad_tensor(name, e.to_string()));
            }
        };
        QuantMatrix::new(format, rows, cols, bytes.to_vec())
            .map_err(|e| self.bad_tensor(name, e.to_string()))
    }

    /// The GGML type name of a tensor (`Q4_1`, …).
    pub fn type_of(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|t| type_name(t.ggml_type))
    }
}
