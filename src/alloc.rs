//! [`BlockCache`]: a global allocator that keeps large freed blocks for the next request of
//! the same size.
//!
//! Why: a training step on the CPU allocates the same large buffers every step — activations
//! of `[B·T, d]`, the `[B·T, V]` logits and their gradient (100 MB for GPT-2 at 4 × 128
//! tokens) — and frees them at the end of the step. glibc serves blocks above its mmap
//! threshold (≤ 32 MiB) straight from the kernel and returns them on free, so every step pays
//! a page fault and a page clear per 4 KiB again: 14 % of a GPT-2 LoRA step in a profile, and
//! ~20 % of its wall time (`docs/performance.md`). Keeping freed blocks of ≥ 256 KiB and
//! handing them out again for the same size and alignment removes that cost; the total kept is
//! bounded, and everything else goes to the system allocator.
//!
//! Binaries opt in:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: balora::alloc::BlockCache = balora::alloc::BlockCache::new(2 << 30);
//! # fn main() { let v = vec![0u8; 1 << 20]; assert_eq!(v.len(), 1 << 20); }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks smaller than this go straight to the system allocator (glibc serves them well).
const MIN_BLOCK: usize = 256 << 10;
/// Cached blocks at most (a fixed table: the allocator must not allocate for itself).
const SLOTS: usize = 128;

#[derive(Clone, Copy)]
struct Block {
    size: usize,
    align: usize,
    /// The block's address (an integer: the table lives in a `Mutex` shared across threads).
    addr: usize,
}

struct Table {
    blocks: [Option<Block>; SLOTS],
    bytes: usize,
}

/// A global allocator that caches freed blocks of ≥ 256 KiB, up to `limit` bytes in total,
/// for reuse by requests of exactly the same size and alignment.
pub struct BlockCache {
    limit: usize,
    table: Mutex<Table>,
}

impl BlockCache {
    /// A cache that keeps at most `limit` bytes of freed blocks.
    pub const fn new(limit: usize) -> Self {
        Self {
            limit,
            table: Mutex::new(Table {
                blocks: [None; SLOTS],
                bytes: 0,
            }),
        }
    }

    /// Bytes currently kept for reuse.
    pub fn cached_bytes(&self) -> usize {
        self.table.lock().map_or(0, |t| t.bytes)
    }

    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut t = self.table.lock().ok()?;
        let slot = t.blocks.iter().position(|b| {
            b.is_some_and(|b| b.size == layout.size() && b.align == layout.align())
        })?;
        let block = t.blocks[slot].take()?;
        t.bytes -= block.size;
        Some(block.addr as *mut u8)
    }

    /// Keep `ptr` for reuse, first returning older blocks to the system if the cache is full
    /// (a size the program stopped asking for must not hold the cache forever); `false` when
    /// the block is larger than the whole cache (the caller frees it).
    fn keep(&self, ptr: *mut u8, layout: Layout) -> bool {
        if layout.size() > self.limit {
            return false;
        }
        let Ok(mut t) = self.table.lock() else {
            return false;
        };
        let mut victim = 0;
        while victim < SLOTS
            && (t.bytes + layout.size() > self.limit || t.blocks.iter().all(Option::is_some))
        {
            if let Some(old) = t.blocks[victim].take() {
                t.bytes -= old.size;
                // SAFETY: cached blocks were allocated by `System` with exactly this layout.
                unsafe {
                    System.dealloc(
                        old.addr as *mut u8,
                        Layout::from_size_align_unchecked(old.size, old.align),
                    );
                }
            }
            victim += 1;
        }
        let Some(slot) = t.blocks.iter().position(Option::is_none) else {
            return false;
        };
        t.blocks[slot] = Some(Block {
            size: layout.size(),
            align: layout.align(),
            addr: ptr as usize,
        });
        t.bytes += layout.size();
        true
    }
}

// SAFETY: blocks handed out are either fresh from `System` or were allocated by `System` with
// exactly the same size and alignment and then freed by the program (so nothing else refers
// to them); `dealloc` only ever returns to `System` what `System` allocated.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK
            && let Some(ptr) = self.take(layout)
        {
            return ptr;
        }
        // SAFETY: forwarded with the caller's (non-zero-size) layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK
            && let Some(ptr) = self.take(layout)
        {
            // SAFETY: the block holds `layout.size()` writable bytes.
            unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
            return ptr;
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= MIN_BLOCK && self.keep(ptr, layout) {
            return;
        }
        // SAFETY: `ptr` came from `System` with this layout (cached blocks included).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_size_zeroed_when_asked() {
        let cache = BlockCache::new(64 << 20);
        let layout = Layout::from_size_align(1 << 20, 64).unwrap();
        unsafe {
            let a = cache.alloc(layout);
            a.write_bytes(7, layout.size());
            cache.dealloc(a, layout);
            assert_eq!(cache.cached_bytes(), 1 << 20);
            let b = cache.alloc_zeroed(layout);
            assert_eq!(a, b, "the cached block is reused");
            assert!((0..layout.size()).all(|i| *b.add(i) == 0));
            assert_eq!(cache.cached_bytes(), 0);
            // another size or alignment never gets it
            cache.dealloc(b, layout);
            let other = Layout::from_size_align(1 << 20, 128).unwrap();
            let c = cache.alloc(other);
            assert_ne!(c, b);
            cache.dealloc(c, other);
        }
    }

    #[test]
    fn the_cache_never_holds_more_than_its_limit_or_small_blocks() {
        let cache = BlockCache::new(3 << 20);
        let big = Layout::from_size_align(2 << 20, 8).unwrap();
        let huge = Layout::from_size_align(4 << 20, 8).unwrap();
        let small = Layout::from_size_align(1024, 8).unwrap();
        unsafe {
            let (a, b) = (cache.alloc(big), cache.alloc(big));
            let (h, s) = (cache.alloc(huge), cache.alloc(small));
            cache.dealloc(a, big);
            cache.dealloc(b, big); // over the limit: `a` goes back to the system, `b` stays
            assert_eq!(cache.cached_bytes(), 2 << 20);
            assert_eq!(cache.take(big), Some(b));
            cache.dealloc(b, big);
            cache.dealloc(h, huge); // larger than the whole cache
            cache.dealloc(s, small); // small: never cached
            assert_eq!(cache.cached_bytes(), 2 << 20);
        }
    }
}
