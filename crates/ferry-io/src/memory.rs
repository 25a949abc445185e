//! Keeping a process's resident memory flat in the size of the work it does.
//!
//! glibc's `malloc` gives every thread that allocates its own arena (up to 8 per core), and each time a large
//! buffer served by `mmap` is freed it raises its mmap threshold to that size, so that later buffers of that size
//! come from those arenas instead: memory freed there stays in the process. Ferry's pipelines hand megabyte
//! buffers from thread to thread (bzip2 blocks and decoded streams, CSV chunks), so the resident size grew with
//! the amount of data moved: the App server reached 97 MiB importing the medium sample and 109 MiB importing the
//! large one (132 MiB with the plan after it), the Connector 75 MiB. With a fixed 256 KiB mmap threshold (buffers
//! above it are mapped and unmapped each time) and one arena shared by all threads (glibc's per-thread caches
//! still serve small allocations without a lock), the large run stays at 97 MiB with the plan (86 MiB with the
//! import's 16 MiB page cache) and the Connector at 56-60 MiB, for no measurable CPU; two arenas left the App at
//! 110 MiB once our faster bzip2 decoder kept more buffers in flight (`ferry bench pipeline`,
//! docs/performance.md).

/// Buffers above this size are mapped and given back to the system when freed.
pub const MMAP_THRESHOLD: usize = 256 * 1024;
/// malloc arenas shared by all threads.
pub const ARENAS: usize = 1;

/// Apply the settings above to glibc's allocator, unless the operator tuned it already (`GLIBC_TUNABLES` or
/// `MALLOC_ARENA_MAX` in the environment, which then win). Call first in `main`, before any thread exists.
/// Returns whether the settings were applied; elsewhere than Linux with glibc it does nothing.
pub fn tune_allocator() -> bool {
    if std::env::var_os("GLIBC_TUNABLES").is_some() || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS as libc::c_int) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}
