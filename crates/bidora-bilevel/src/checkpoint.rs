//! Checkpoint files: one file per checkpoint, written atomically.
//!
//! A checkpoint holds what training changes and nothing else: the values of the trained
//! parameters (both levels' groups: for adapters the direction, magnitudes and head; for full
//! fine-tuning every weight), both optimisers' states, the stream positions and step, and the
//! direction from before the search (for the retraining phase). The frozen base weights are not
//! in it: a resumed run rebuilds the module from the same base model and overwrites the trained
//! values. `CheckpointState::base` records the caller's identity of that base model, so that a
//! resume against another or a modified model is refused.
//!
//! Layout (version 2): the magic `BIDORA-CKPT\0`, a little-endian `u32` version, then
//! length-prefixed (`u64`) sections:
//!
//! 1. the JSON [`CheckpointState`];
//! 2. the id of every parameter of the module in visiting order (`u64` count, then `u64`s):
//!    the optimiser states are keyed by these ids, and a resumed module takes them over;
//! 3. the trained values: `u64` count, then per parameter its id, `u64` length and `f32`s;
//! 4. the lower and 5. the upper optimiser records (Burn's bincode records, full precision);
//! 6. the direction from before the search, in the layout of section 3.
//!
//! Values are stored as `f32`: exact for `f32`, `f16` and `bf16` modules.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::trainer::{Evaluation, Phase};
use crate::TrainError;

const MAGIC: &[u8; 12] = b"BIDORA-CKPT\0";
const VERSION: u32 = 2;
const SECTIONS: usize = 6;

/// Parameter values by raw parameter id.
pub type HostValues = Vec<(u64, Vec<f32>)>;

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
    /// The identity of the frozen base model, as the caller gave it
    /// ([`Hooks::base_identity`](crate::Hooks::base_identity)): a resume with another one is
    /// refused.
    #[serde(default)]
    pub base: Option<String>,
    /// The number of peers that trained the run (1 alone): a resume on another number is
    /// refused, since the batches' shards and dropout masks depend on it.
    #[serde(default = "one")]
    pub world: usize,
    /// Seconds of training when the checkpoint was written, summed over the processes that
    /// made it: each process counts from its start (or resume) to its checkpoint, so work
    /// redone after a resume is counted once. `None` in checkpoints from before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
}

fn one() -> usize {
    1
}

/// A checkpoint's contents.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Run state.
    pub state: CheckpointState,
    /// The raw id of every parameter of the module, in visiting order.
    pub param_ids: Vec<u64>,
    /// Values of the trained parameters (both levels' groups).
    pub trained: HostValues,
    /// Lower (or retraining) optimiser record bytes.
    pub lower_optim: Vec<u8>,
    /// Upper optimiser record bytes.
    pub upper_optim: Vec<u8>,
    /// Direction values from before the search.
    pub initial_direction: HostValues,
}

impl Checkpoint {
    /// Serialises to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let state = serde_json::to_vec(&self.state).unwrap_or_default();
        let mut ids = Vec::with_capacity(8 * (self.param_ids.len() + 1));
        ids.extend_from_slice(&(self.param_ids.len() as u64).to_le_bytes());
        for id in &self.param_ids {
            ids.extend_from_slice(&id.to_le_bytes());
        }
        let (trained, initial) = (
            encode_values(&self.trained),
            encode_values(&self.initial_direction),
        );
        let sections: [&[u8]; SECTIONS] = [
            &state,
            &ids,
            &trained,
            &self.lower_optim,
            &self.upper_optim,
            &initial,
        ];
        for section in sections {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
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
            return Err(bad(&format!(
                "checkpoint format version {version}, this bidora reads version {VERSION}: \
                 start the run again"
            )));
        }
        let mut sections = Vec::with_capacity(SECTIONS);
        for _ in 0..SECTIONS {
            let len = r.u64().ok_or_else(|| bad("truncated section header"))? as usize;
            sections.push(r.take(len).ok_or_else(|| bad("truncated section"))?);
        }
        if r.pos != bytes.len() {
            return Err(bad("trailing bytes after the last section"));
        }
        let state: CheckpointState = serde_json::from_slice(sections[0])
            .map_err(|e| bad(&format!("bad state section: {e}")))?;
        let mut ir = Reader {
            bytes: sections[1],
            pos: 0,
        };
        let n = ir.u64().ok_or_else(|| bad("truncated id section"))?;
        let param_ids = (0..n)
            .map(|_| ir.u64().ok_or_else(|| bad("truncated id section")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Checkpoint {
            state,
            param_ids,
            trained: decode_values(sections[2]).ok_or_else(|| bad("truncated value section"))?,
            lower_optim: sections[3].to_vec(),
            upper_optim: sections[4].to_vec(),
            initial_direction: decode_values(sections[5])
                .ok_or_else(|| bad("truncated direction section"))?,
        })
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        bidora_util::atomic_write(path, &self.to_bytes()).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("{e}: {}", e.source),
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

fn encode_values(values: &HostValues) -> Vec<u8> {
    let floats: usize = values.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(8 + 16 * values.len() + 4 * floats);
    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for (id, v) in values {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

fn decode_values(bytes: &[u8]) -> Option<HostValues> {
    let mut r = Reader { bytes, pos: 0 };
    let count = r.u64()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let id = r.u64()?;
        let n = usize::try_from(r.u64()?).ok()?;
        let raw = r.take(n.checked_mul(4)?)?;
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push((id, values));
    }
    (r.pos == bytes.len()).then_some(out)
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
