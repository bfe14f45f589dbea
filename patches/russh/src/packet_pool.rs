//! Buffers of received packets, used again (patches/russh/README.md).
//!
//! Each large received packet becomes the `Bytes` its channel data is sliced from, and is
//! freed wherever the last slice is dropped: usually on another task, after the data was
//! written on. Allocated afresh per packet, each was new memory to the process when the
//! allocator gives freed pages back at once (the static agent's mimalloc): 16 page faults
//! per 64 KiB. Here the last slice's drop puts the allocation back into a small
//! process-wide pool, and the next large packet is read into it.

use std::sync::Mutex;

use bytes::Bytes;

/// Packets smaller than this are allocated as before: the pool is for bulk data.
const POOLED_FROM: usize = 16 * 1024;
/// Larger allocations are not kept (the largest packet russh accepts is ~256 KiB).
const POOLED_UP_TO: usize = 320 * 1024;
/// How many free buffers the process keeps: enough for the packets between the session
/// reading them and the relay writing them on to come and go without allocating, and a
/// bounded amount of memory (8 × ~64 KiB with the packets we use) whatever the number of
/// sessions.
const KEPT: usize = 8;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `len` bytes: a pooled one for a large packet when there
/// is one big enough, else a new one.
pub(crate) fn take(len: usize) -> Vec<u8> {
    if (POOLED_FROM..=POOLED_UP_TO).contains(&len) {
        if let Some(buffer) = lock().pop() {
            if buffer.capacity() >= len {
                return buffer;
            }
        }
    }
    Vec::with_capacity(len)
}

/// The received packet in `buffer` as `Bytes`; a large one goes back to the pool when the
/// last `Bytes` sliced from it is dropped.
pub(crate) fn packet(buffer: Vec<u8>) -> Bytes {
    if (POOLED_FROM..=POOLED_UP_TO).contains(&buffer.capacity()) {
        Bytes::from_owner(Returned(buffer))
    } else {
        Bytes::from(buffer)
    }
}

/// Frees the buffers the pool keeps, e.g. before a process that went idle gives its free
/// memory back to the system.
pub fn release() {
    let free = std::mem::take(&mut *lock());
    drop(free);
}

/// How many free buffers the pool holds now.
pub fn pooled() -> usize {
    lock().len()
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    // A panic while holding the lock left a list of buffers, which is still valid.
    FREE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Returned(Vec<u8>);

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.0);
        buffer.clear();
        let mut free = lock();
        if free.len() < KEPT {
            free.push(buffer);
        }
    }
}
