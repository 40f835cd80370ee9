//! Plumbing shared by the bidora crates, written once: atomic file writes, the SplitMix64
//! generator behind every seeded draw on the host (data splits, batch order, per-step
//! reseeding) and the run's host stream built on it ([`rng`]: initialisation, dropout keys),
//! and the folder of the asset cache. No tensor library, no other crate of
//! ours: every layer may depend on it.

use std::io::Write;
use std::path::{Path, PathBuf};

pub mod rng;

/// A failed atomic write: what was being done, to which file, and why.
#[derive(Debug)]
pub struct WriteError {
    /// What failed (`"cannot write"`, `"cannot rename into place"`, ...).
    pub action: &'static str,
    /// The file being written.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.action, self.path.display())
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, an fsync and a rename,
/// so that a crash or a kill leaves either the old file or the new one, never a partial one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let fail = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| WriteError {
            action,
            path,
            source,
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(fail("cannot create a temporary file for"))?;
    tmp.write_all(bytes).map_err(fail("cannot write"))?;
    tmp.as_file().sync_all().map_err(fail("cannot flush"))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .map_err(fail("cannot rename into place"))?;
    Ok(())
}

/// The SplitMix64 increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: a small, well-mixed, seedable generator, the same on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Element `i` of the counter-based stream keyed by `key`, `mix(key + i·γ)`: it depends on
    /// the key and `i` only, so any element can be drawn without the ones before it.
    pub fn at(key: u64, i: u64) -> u64 {
        mix(key.wrapping_add(i.wrapping_mul(GAMMA)))
    }
}

/// Where `cargo xtask assets` unpacks the registry-shipped weights and data, and where tests,
/// benches and the demo look for them: `$BIDORA_ASSETS_DIR`, else
/// `$XDG_CACHE_HOME/bidora/assets`, else `~/.cache/bidora/assets`.
pub fn assets_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BIDORA_ASSETS_DIR") {
        return d.into();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        })
        .join("bidora/assets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // The first outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut g = SplitMix64(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        // The counter form gives element i + 1 of the sequence at key 0.
        assert_eq!(SplitMix64::at(0, 1), 0xE220_A839_7B1D_CDAF);
        assert_eq!(SplitMix64::at(0, 2), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn atomic_write_replaces_the_file_and_names_it_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        let err = atomic_write(&dir.path().join("missing/b.txt"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
