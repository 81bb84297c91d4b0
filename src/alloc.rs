//! Process-level allocator settings for training binaries.
//!
//! Why: a training step on the CPU allocates the same large buffers every step — activations
//! of `[B·T, d]` (a few MB each), the `[B·T, V]` logits and their gradient (100 MB for GPT-2 at
//! 4 × 128 tokens) — and frees them at the end of the step. By default glibc serves blocks
//! above its mmap threshold (dynamic, at most 32 MiB) straight from the kernel and unmaps them
//! on free, so every step pays a page fault and a page clear per 4 KiB again: 14 % of a GPT-2
//! LoRA step in a profile. [`keep_freed_memory`] raises the threshold to 64 MiB, so the
//! activations come from the heap, where freed memory is reused, and keeps freed heap memory
//! in the process.
//!
//! Why 64 MiB and not more: the blocks above it are the few vocabulary-sized ones. Served from
//! the heap too (a 1 GiB threshold), they fragment it — BA-LoRA's teacher logits, the logits
//! and their gradient are freed at different points of the step — and the heap grew to 100 MB
//! over the live maximum (SmolLM2 BA-LoRA, 12 steps: 1577 MB vs 1474 MB peak; LoRA 1382 vs
//! 1351 MB; GPT-2 LoRA 1126 vs 1027 MB). Unmapped on free they cost their page clears again,
//! ~3 % of a step (GPT-2 LoRA 1.96 → 2.01 s, BA-LoRA 3.15 → 3.26 s, medians of 10 steps, two
//! pairs) — the price of a peak that is the live maximum. A cache of freed blocks keyed by
//! size was tried first: as fast, but 300–450 MB more for BA-LoRA.

/// Serve allocations up to 64 MiB from the heap and keep up to 1 GiB of freed heap memory in
/// the process instead of returning it to the kernel after every step. Returns whether the
/// setting took effect (glibc on Linux; elsewhere nothing happens and it returns `false`).
/// Call it once, first thing in `main`.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 64 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_setting_and_allocation_still_works() {
        assert!(super::keep_freed_memory());
        let v = vec![1u8; 200 << 20];
        assert_eq!(v.iter().map(|&b| usize::from(b)).sum::<usize>(), 200 << 20);
    }
}
