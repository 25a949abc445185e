//! `ferry_io::memory::tune_allocator` (in a test binary of its own: the allocator's counters are process-wide).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_large_buffer_goes_back_to_the_system_and_the_next_one_is_mapped_again() {
    /// Bytes currently held in mmap-ed chunks.
    fn mapped() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.hblkhd
    }
    if std::env::var_os("GLIBC_TUNABLES").is_some() || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        eprintln!("skipped: the allocator is tuned through the environment");
        return;
    }
    assert!(ferry_io::memory::tune_allocator(), "mallopt refused the settings");
    let size = 4 << 20;
    for round in 0..3 {
        let before = mapped();
        let buf = std::hint::black_box(vec![1u8; size]);
        let during = mapped();
        // without a fixed threshold, glibc serves the second buffer from its heap, where it stays after the free
        assert!(during >= before + size, "round {round}: a {size}-byte buffer was not mapped ({before} -> {during})");
        drop(buf);
        assert!(mapped() < during, "round {round}: the buffer's mapping was not returned");
    }
}
