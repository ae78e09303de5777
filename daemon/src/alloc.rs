//! The global allocator of the static (musl) builds: blocks of 256 KiB and more come straight
//! from the kernel, so zeroed ones are never written to before they are used.
//!
//! musl's `calloc`, as zig links it into eddy's static builds, writes zeros over every page of
//! a large block, although a fresh anonymous mapping is zero already. sled allocates 40 latency
//! histograms of 512 KiB with `calloc` at start (its `miri_optimizations` feature exists so
//! that they stay untouched), and on musl all 21 MiB became resident at once: an idle x86_64
//! musl eddy had 31.5 MiB of RSS against 7.6 MiB with glibc (BENCHMARKS.md). glibc's `calloc`
//! knows a fresh mapping is zero, so the gnu builds keep the system allocator.
//!
//! Only the route of large blocks changes, and musl maps those itself too (above ~128 KiB):
//! smaller ones go to the system allocator unchanged. A block's size decides its route, and
//! Rust hands the same layout back on free and realloc, so every block is freed by the side
//! that made it.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of this many bytes or more are mapped directly.
pub const MAP_FROM: usize = 256 * 1024;

/// The largest alignment a mapping is sure to have (the smallest page size of eddy's targets).
const PAGE: usize = 4096;

/// The system allocator, but for blocks of [`MAP_FROM`] bytes or more: those are anonymous
/// mappings (zero, and untouched until used), resized with `mremap` and unmapped on free.
#[derive(Debug, Default, Clone, Copy)]
pub struct LargeBlocksMapped;

fn is_mapped(size: usize, align: usize) -> bool {
    size >= MAP_FROM && align <= PAGE
}

#[allow(unsafe_code)]
fn map(size: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

// SAFETY: every block is either the system allocator's (size below MAP_FROM, or an alignment
// above a page) and goes back to it, or a mapping of exactly `layout.size()` bytes made here,
// page-aligned (so aligned for any `align <= PAGE`), zero when new, and unmapped with the same
// length. `realloc` moves a block between the two routes by allocating, copying the smaller
// of the two sizes and freeing, as `GlobalAlloc::realloc`'s default does.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for LargeBlocksMapped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_mapped(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            // SAFETY: forwarded as given.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_mapped(layout.size(), layout.align()) {
            // A fresh anonymous mapping reads as zero: nothing to write.
            map(layout.size())
        } else {
            // SAFETY: forwarded as given.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_mapped(layout.size(), layout.align()) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `map` (same route).
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: made by the system allocator with this layout (same route).
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let was_mapped = is_mapped(layout.size(), layout.align());
        let mapped = is_mapped(new_size, layout.align());
        match (was_mapped, mapped) {
            // SAFETY: the system allocator's block, staying with it.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                // SAFETY: `ptr` is a mapping of `layout.size()` bytes made here; `mremap` may
                // move it, keeping its contents, and a grown tail reads as zero.
                let moved =
                    unsafe { libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
                if moved == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    moved.cast()
                }
            }
            _ => {
                // SAFETY: `new_size` is non-zero (the caller's contract) and the alignment is
                // the block's own, so the layout is valid.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: a valid non-zero layout.
                let new_ptr = unsafe { self.alloc(new_layout) };
                if !new_ptr.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and do not overlap
                    // (the old one is still allocated); the old block is freed by its route.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new_ptr
            }
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// RssAnon of this process, in KiB.
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon in /proc/self/status")
    }

    #[test]
    fn large_zeroed_blocks_stay_untouched_until_used() {
        // Like sled's histograms: 40 zeroed blocks of 512 KiB (20 MiB), none written.
        let layout = Layout::from_size_align(512 * 1024, 8).unwrap();
        let before = rss_anon_kib();
        let blocks: Vec<*mut u8> = (0..40)
            .map(|_| {
                // SAFETY: a valid non-zero layout.
                let ptr = unsafe { LargeBlocksMapped.alloc_zeroed(layout) };
                assert!(!ptr.is_null());
                ptr
            })
            .collect();
        let grown = rss_anon_kib().saturating_sub(before);
        // Other tests' threads allocate meanwhile: a margin of 8 MiB, far below the 20 MiB that
        // writing the blocks makes resident (what musl's calloc did).
        assert!(grown < 8 * 1024, "20 MiB of zeroed blocks made {grown} KiB resident");
        for ptr in &blocks {
            // SAFETY: each block holds 512 KiB; read its first and last bytes.
            unsafe {
                assert_eq!(*ptr.add(0), 0);
                assert_eq!(*ptr.add(layout.size() - 1), 0);
            }
        }
        for ptr in blocks {
            // SAFETY: made above with this layout.
            unsafe { LargeBlocksMapped.dealloc(ptr, layout) };
        }
    }

    /// The pattern byte at offset `i` for `seed`.
    fn pattern(seed: u8, i: usize) -> u8 {
        seed.wrapping_add(u8::try_from(i % 251).expect("below 251"))
    }

    /// Fills `len` bytes at `ptr` with a pattern from `seed`.
    unsafe fn fill(ptr: *mut u8, len: usize, seed: u8) {
        for i in 0..len {
            // SAFETY: the caller's block holds `len` bytes.
            unsafe { *ptr.add(i) = pattern(seed, i) };
        }
    }

    /// Whether `len` bytes at `ptr` hold the pattern of `seed`.
    unsafe fn holds(ptr: *const u8, len: usize, seed: u8) -> bool {
        // SAFETY: the caller's block holds `len` bytes.
        (0..len).all(|i| unsafe { *ptr.add(i) } == pattern(seed, i))
    }

    #[test]
    fn realloc_keeps_the_contents_across_both_routes() {
        // small → small, small → mapped, mapped → mapped (grow, shrink), mapped → small.
        let sizes = [1000, 4000, MAP_FROM + 1, 3 * MAP_FROM, MAP_FROM, MAP_FROM - 1, 10];
        for align in [1, 8, 64, PAGE] {
            let mut layout = Layout::from_size_align(sizes[0], align).unwrap();
            // SAFETY: a valid non-zero layout; every later size is non-zero; each block is
            // used within its current size and freed with its current layout.
            unsafe {
                let mut ptr = LargeBlocksMapped.alloc(layout);
                assert!(!ptr.is_null());
                fill(ptr, layout.size(), 7);
                for &new_size in &sizes[1..] {
                    let kept = layout.size().min(new_size);
                    ptr = LargeBlocksMapped.realloc(ptr, layout, new_size);
                    assert!(!ptr.is_null(), "realloc {} → {new_size}", layout.size());
                    assert_eq!(ptr as usize % align, 0, "aligned to {align}");
                    assert!(holds(ptr, kept, 7), "contents kept {} → {new_size}", layout.size());
                    layout = Layout::from_size_align(new_size, align).unwrap();
                    fill(ptr, new_size, 7);
                }
                LargeBlocksMapped.dealloc(ptr, layout);
            }
        }
    }

    #[test]
    fn alignments_above_a_page_stay_with_the_system_allocator() {
        let layout = Layout::from_size_align(MAP_FROM * 2, 2 * PAGE).unwrap();
        assert!(!is_mapped(layout.size(), layout.align()));
        // SAFETY: a valid non-zero layout, freed with it.
        unsafe {
            let ptr = LargeBlocksMapped.alloc_zeroed(layout);
            assert!(!ptr.is_null());
            assert_eq!(ptr as usize % layout.align(), 0);
            assert_eq!(*ptr.add(layout.size() - 1), 0);
            LargeBlocksMapped.dealloc(ptr, layout);
        }
    }
}
