//! Gives the system back the memory glibc's allocator keeps after the program freed it.
//!
//! glibc returns freed memory on its own only from the top of a heap, and each thread that
//! allocates may get a heap (arena) of its own. The agent relays in 64 KiB buffers, and up
//! to a channel's window of them can be queued while a transfer runs; once it ends they are
//! free, but the pages stay resident below whatever is still in use: a few MiB on a device
//! whose memory budget is 8 (bench/NOTES.md). `malloc_trim(0)` walks every arena and hands
//! back every whole free page (glibc ≥ 2.8).

/// Asks the allocator to return its free pages to the system; returns whether any came
/// back. It locks each arena in turn, so call it when work has just ended (the agent does
/// when its last relayed connection closes), not on a busy path. Elsewhere than on glibc it
/// does nothing and returns false: musl's and other allocators give memory back themselves
/// or have no such call.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes no pointer and has no precondition; glibc serializes it
    // with every other allocator call (MT-Safe in malloc_trim(3)).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// See the glibc version: nothing to do here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::release_free_memory;

    /// Resident memory of this process in KiB (`/proc/self/statm`'s second field, pages).
    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4
    }

    #[test]
    fn freed_buffers_below_a_live_allocation_go_back_to_the_system() {
        // 48 MiB in 64 KiB buffers, as the relay allocates them, each written so its
        // pages are resident, and one small allocation after them that stays: the top of
        // the heap is in use, so glibc cannot give the freed buffers back by itself.
        let mut buffers: Vec<Vec<u8>> = (0..768).map(|_| vec![1u8; 64 * 1024]).collect();
        let live = vec![2u8; 1024];
        buffers.clear();
        buffers.shrink_to_fit();
        let before = rss_kib();
        assert!(release_free_memory(), "malloc_trim released nothing");
        let after = rss_kib();
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "RSS {before} KiB before, {after} KiB after"
        );
        assert_eq!(live[1023], 2);
    }
}
