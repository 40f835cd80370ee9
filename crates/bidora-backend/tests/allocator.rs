//! `retain_freed_memory` keeps a freed 24 MiB block in the process. Its own test binary: the
//! measurement reads the process's resident set, which other tests would disturb.

/// Resident memory of this process in bytes, from `/proc/self/statm` (Linux only).
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn a_freed_block_stays_resident() {
    let taken = bidora_backend::retain_freed_memory();
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(!taken, "only glibc has these settings");
        return;
    }
    assert!(taken, "glibc refused a setting");
    let size = 24 << 20;
    let before = resident_bytes().expect("/proc/self/statm");
    let block = vec![1u8; size];
    assert_eq!(
        block
            .iter()
            .step_by(4096)
            .map(|&b| b as usize)
            .sum::<usize>(),
        size / 4096
    );
    drop(block);
    let after = resident_bytes().expect("/proc/self/statm");
    // With glibc's defaults the block is an mmap of its own, unmapped on free: `after` falls
    // back to `before`. Kept, it stays resident for the next tensor of that size.
    assert!(
        after >= before + size * 9 / 10,
        "freed block returned to the kernel: resident {before} -> {after} bytes"
    );
}
