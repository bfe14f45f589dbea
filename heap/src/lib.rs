//! The agent's and support-cli's heap: the allocator of the agent's static build, how the
//! system's allocator keeps freed buffers for reuse (`init`), and giving the system back the
//! memory an allocator keeps after the program freed it.
//!
//! glibc returns freed memory on its own only from the top of a heap, and each thread that
//! allocates may get a heap (arena) of its own. The agent relays in 64 KiB buffers, and up
//! to a channel's window of them can be queued while a transfer runs; once it ends they are
//! free, but the pages stay resident below whatever is still in use: a few MiB on a device
//! whose memory budget is 8 (bench/NOTES.md). `malloc_trim(0)` walks every arena and hands
//! back every whole free page (glibc ≥ 2.8).
//!
//! The static build links musl (packaging/build-static-agent.sh), whose allocator goes the
//! other way: it returns a freed relay buffer to the system at once and maps one again for
//! the next packet, which cost the agent +0.5 CPU s per GB relayed (+70 %, bench/NOTES.md).
//! There the agent allocates through mimalloc, which reuses freed pages within a thread and
//! purges them once free (`init`). It is built (packaging/build-static-agent.sh) without
//! transparent huge pages, which made every 64 KiB it touched a resident 2 MiB (20 MiB
//! idle instead of 7), and commits its arenas as it uses them.

/// The static (musl) agent's allocator; see the crate's head.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (include/mimalloc.h of mimalloc 3, the 16th option):
/// how long freed pages wait before they go back to the system, 1 s by default.
#[cfg(target_env = "musl")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the allocator up; call first thing in `main`. With mimalloc (the static agent),
/// freed pages go back to the system at once rather than a second later: mimalloc has no
/// thread of its own, so on an agent gone idle the delayed purge would wait for the next
/// allocation, and the pages freed by a transfer stayed resident (9.4 MiB idle against 7.1,
/// bench/NOTES.md).
///
/// `MIMALLOC_PURGE_DELAY` in the environment (milliseconds, mimalloc's own variable) wins.
#[cfg(target_env = "musl")]
#[allow(unsafe_code)]
pub fn init() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set takes no pointer; options may be set at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Relay buffers and SSH packets (64 KiB) are allocated and freed once per
/// packet or so while data streams. glibc gives the top of its heap back to the system as
/// soon as more than its trim threshold (128 KiB) is free there, so a freed buffer went back
/// at once and the next one was faulted in again page by page: 60–140 page faults per MB
/// moved in support-cli (bench/NOTES.md). Up to these sizes, freed memory stays for reuse;
/// `release_free_memory` still gives it all back when work has ended.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREE_BYTES: libc::c_int = 32 << 20;

/// Allocations at least this large get pages of their own (mmap) and give them back when
/// freed. Setting the trim threshold fixes glibc's own (128 KiB, else raised as large blocks
/// are freed), so it is set here, well above the 64 KiB buffers.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_PAGES_FROM: libc::c_int = 4 << 20;

/// Sets the allocator up; call first thing in `main`. With glibc: freed buffers stay in the
/// heap for the next ones rather than going back to the system and faulting in again
/// (`KEEP_FREE_BYTES`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn init() {
    // SAFETY: mallopt takes no pointer; glibc serializes it with every other allocator call
    // (MT-Safe in mallopt(3)).
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_BYTES);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM);
    }
}

/// See the musl and glibc versions: nothing to set up for other allocators.
#[cfg(not(any(target_env = "musl", all(target_os = "linux", target_env = "gnu"))))]
pub fn init() {}

/// Asks the allocator to return its free pages to the system. It locks each arena in turn,
/// so call it when work has just ended (the agent does when its last relayed connection
/// closes), not on a busy path. Returns whether any memory came back where the allocator
/// says so (glibc's); mimalloc does not say, and other allocators have no such call: false.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes no pointer and has no precondition; glibc serializes it
    // with every other allocator call (MT-Safe in malloc_trim(3)).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// See the glibc version: here mimalloc's collection, forced: the calling thread's free
/// pages, and every arena's free memory purged at once rather than after the purge delay
/// (pages another thread still holds stay with it; `init`'s purge delay covers those).
#[cfg(target_env = "musl")]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: mi_collect takes no pointer and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
    false
}

/// See the glibc version: nothing to do here.
#[cfg(not(any(all(target_os = "linux", target_env = "gnu"), target_env = "musl")))]
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
