//! Checkpoint files: one file per checkpoint, written atomically.
//!
//! Layout: the magic `BIDORA-CKPT\0`, a little-endian `u32` version, then length-prefixed
//! (`u64`) sections: the JSON [`CheckpointState`], the module record, the lower and upper
//! optimiser records (Burn's bincode records, full precision), and the direction's values from
//! before the search (for the retraining phase).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::trainer::{Evaluation, Phase};
use crate::TrainError;

const MAGIC: &[u8; 12] = b"BIDORA-CKPT\0";
const VERSION: u32 = 1;

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The phase.
    pub phase: Phase,
    /// Steps completed in this phase.
    pub step: usize,
    /// Positions of the train, validation and retraining streams.
    pub positions: [u64; 3],
    /// The best evaluation so far: phase, step, value.
    pub best: Option<(Phase, usize, Evaluation)>,
    /// The last evaluation.
    pub last_eval: Option<Evaluation>,
    /// The training configuration, as JSON: a resume with another configuration is refused.
    pub config: serde_json::Value,
}

/// A checkpoint's contents.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Run state.
    pub state: CheckpointState,
    /// Module record bytes.
    pub module: Vec<u8>,
    /// Lower (or retraining) optimiser record bytes.
    pub lower_optim: Vec<u8>,
    /// Upper optimiser record bytes (empty in single-level runs).
    pub upper_optim: Vec<u8>,
    /// Direction values from before the search, as `(param id, values)`.
    pub initial_direction: Vec<(u64, Vec<f32>)>,
}

impl Checkpoint {
    /// Serialises to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let state = serde_json::to_vec(&self.state).unwrap_or_default();
        for section in [&state, &self.module, &self.lower_optim, &self.upper_optim] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        let mut init = Vec::new();
        init.extend_from_slice(&(self.initial_direction.len() as u64).to_le_bytes());
        for (id, values) in &self.initial_direction {
            init.extend_from_slice(&id.to_le_bytes());
            init.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for v in values {
                init.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&(init.len() as u64).to_le_bytes());
        out.extend_from_slice(&init);
        out
    }

    /// Parses bytes written by [`Checkpoint::to_bytes`] (`path` is used in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TrainError> {
        let bad = |message: &str| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        let mut r = Reader { bytes, pos: 0 };
        if r.take(MAGIC.len()).ok_or_else(|| bad("file too short"))? != MAGIC {
            return Err(bad("not a bidora checkpoint (bad magic)"));
        }
        let version = r.u32().ok_or_else(|| bad("truncated header"))?;
        if version != VERSION {
            return Err(bad(&format!("unsupported checkpoint version {version}")));
        }
        let mut sections = Vec::new();
        for _ in 0..5 {
            let len = r.u64().ok_or_else(|| bad("truncated section header"))? as usize;
            sections.push(
                r.take(len)
                    .ok_or_else(|| bad("truncated section"))?
                    .to_vec(),
            );
        }
        let state: CheckpointState = serde_json::from_slice(&sections[0])
            .map_err(|e| bad(&format!("bad state section: {e}")))?;
        let mut ir = Reader {
            bytes: &sections[4],
            pos: 0,
        };
        let count = ir.u64().ok_or_else(|| bad("truncated direction section"))?;
        let mut initial_direction = Vec::new();
        for _ in 0..count {
            let id = ir.u64().ok_or_else(|| bad("truncated direction section"))?;
            let n = ir.u64().ok_or_else(|| bad("truncated direction section"))? as usize;
            let raw = ir
                .take(n.checked_mul(4).ok_or_else(|| bad("bad length"))?)
                .ok_or_else(|| bad("truncated direction section"))?;
            let values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            initial_direction.push((id, values));
        }
        let mut it = sections.into_iter().skip(1);
        Ok(Checkpoint {
            state,
            module: it.next().unwrap_or_default(),
            lower_optim: it.next().unwrap_or_default(),
            upper_optim: it.next().unwrap_or_default(),
            initial_direction,
        })
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        bidora_adapters::tensor_io::atomic_write(path, &self.to_bytes()).map_err(|e| {
            TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ),
            }
        })
    }

    /// Reads a checkpoint file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_bytes(&bytes, path)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }
}
