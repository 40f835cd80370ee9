//! Keep freed memory in the process: the largest single speed-up of a CPU training step.
//!
//! Every element-wise operation of the ndarray backend allocates its output: a MiniLM step at
//! batch 16 × 128 allocates and frees hundreds of buffers of 1–13 MB. glibc's malloc serves
//! such blocks with `mmap` above a threshold and hands freed memory back to the kernel when the
//! top of the heap exceeds another, so the next buffer of the same size page-faults its way
//! back in (each 4 KiB page zeroed by the kernel). Measured on all-MiniLM-L6-v2 (2 threads,
//! docs/PERFORMANCE.md): 1.86 s per LoRA step with the defaults, 1.28 s with
//! [`retain_freed_memory`]; peak RSS unchanged (876 MB against 879 MB), since the memory kept
//! is memory the step needs again.
//!
//! A library cannot choose the allocator of the program it is linked into, so binaries call
//! [`retain_freed_memory`] first thing in `main` (the `bidora` CLI and the benches do).

/// Largest request glibc's malloc serves from the heap rather than with its own `mmap`: 32 MiB,
/// above every activation of the models here (MiniLM's attention scores at batch 16 × 128 are
/// 12.6 MB); larger blocks, such as a full fine-tuning embedding gradient, keep using `mmap`.
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Free memory at the top of the heap that glibc keeps before it returns any (1 GiB).
pub const TRIM_THRESHOLD: usize = 1 << 30;
/// Extra memory glibc asks the kernel for whenever the heap grows (64 MiB).
pub const TOP_PAD: usize = 64 << 20;

/// Tells glibc's malloc to serve blocks up to [`MMAP_THRESHOLD`] from its heap and to keep up
/// to [`TRIM_THRESHOLD`] of freed memory, so repeated same-sized tensors reuse pages instead of
/// faulting fresh ones in. Returns whether the settings were taken: `false` on targets other
/// than Linux with glibc (musl, macOS, Windows), where it does nothing.
///
/// Call it once, before the first tensor is made. It overrides `GLIBC_TUNABLES` settings of
/// the same three parameters.
pub fn retain_freed_memory() -> bool {
    imp::retain_freed_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod imp {
    use super::{MMAP_THRESHOLD, TOP_PAD, TRIM_THRESHOLD};

    pub fn retain_freed_memory() -> bool {
        let settings = [
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (libc::M_TOP_PAD, TOP_PAD),
        ];
        // Every setting is applied, even after one is refused (no short-circuit).
        settings
            .into_iter()
            .fold(true, |all_taken, (param, value)| {
                let value = i32::try_from(value).unwrap_or(i32::MAX);
                // SAFETY: `mallopt` only changes glibc malloc's tuning parameters; it is safe to
                // call at any time, from any thread, and returns 1 on success, 0 for a rejected
                // value.
                let taken = unsafe { libc::mallopt(param, value) == 1 };
                all_taken && taken
            })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn retain_freed_memory() -> bool {
        false
    }
}
