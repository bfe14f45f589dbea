//! Received packets' buffers are used again (patches/russh, `packet_pool`): a session
//! receiving bulk data allocates no buffer per packet once the first few came back.
//!
//! Here, in the crate allowed unsafe code, for the counting allocator; a file of its own:
//! the pool is process-wide and the allocations are counted for the whole process, so no
//! other test may run beside this one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use russh::{client, server};

/// Counts allocations as large as a bulk packet's buffer.
struct CountLarge;

const LARGE: usize = 16 * 1024;
static LARGE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system's allocator unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= LARGE {
            LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountLarge = CountLarge;

/// Each message's size: one packet each, well inside the pooled sizes.
const MESSAGE: usize = 32 * 1024;
/// Messages per round: 8 MiB.
const MESSAGES: usize = 256;
/// Messages sent before waiting for the server to have taken them in. A receiver that
/// falls behind holds more packets at once than the pool keeps (8), and those beyond it
/// are allocated afresh, as they must be: the pool bounds memory, not the backlog. How far
/// behind depends on the scheduler (a loaded CI machine let 56 of 256 through), so the
/// test bounds the backlog itself, to what the pool is for.
const BATCH: usize = 4;

/// A server that accepts anyone and counts the channel data it receives (and drops it).
#[derive(Clone)]
struct Sink(Arc<tokio::sync::watch::Sender<usize>>);

impl server::Handler for Sink {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<server::Auth, Self::Error> {
        Ok(server::Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        mut channel: russh::Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let received = self.0.clone();
        tokio::spawn(async move {
            reply.accept().await;
            while let Some(message) = channel.wait().await {
                if let russh::ChannelMsg::Data { data } = message {
                    // Its packet's buffer goes back to the pool before the sender hears
                    // of it.
                    let len = data.len();
                    drop(data);
                    received.send_modify(|n| *n += len);
                }
            }
        });
        Ok(())
    }
}

struct TrustAny;

impl client::Handler for TrustAny {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_receiving_bulk_data_reads_into_the_same_buffers_again() {
    let host_key = russh::keys::PrivateKey::from(
        russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[5; 32]),
    );
    let config = Arc::new(server::Config {
        keys: vec![host_key],
        window_size: 16 << 20,
        maximum_packet_size: 65_535,
        ..Default::default()
    });
    let (received, mut progress) = tokio::sync::watch::channel(0usize);
    let sink = Sink(Arc::new(received));
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let running =
        tokio::spawn(async move { server::run_stream(config, theirs, sink).await?.await });
    let session = client::connect_stream(Arc::new(client::Config::default()), ours, TrustAny)
        .await
        .expect("connecting");
    let mut session = session;
    assert!(
        session
            .authenticate_none("bulk")
            .await
            .expect("auth")
            .success()
    );
    let channel = session.channel_open_session().await.expect("channel");
    let message = bytes::Bytes::from(vec![0x5a; MESSAGE]);

    // A round fills the pool; the next is counted.
    let mut sent = 0;
    let mut large_allocations = Vec::new();
    for _ in 0..2 {
        let before = LARGE_ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..MESSAGES / BATCH {
            for _ in 0..BATCH {
                channel.data_bytes(message.clone()).await.expect("sending");
            }
            sent += BATCH * MESSAGE;
            progress
                .wait_for(|n| *n >= sent)
                .await
                .expect("the server ended");
        }
        large_allocations.push(LARGE_ALLOCATIONS.load(Ordering::Relaxed) - before);
    }
    let pooled = russh::packet_pool::pooled();
    eprintln!("large allocations, filling round and counted round: {large_allocations:?}");
    assert!(
        large_allocations[1] < MESSAGES / 8,
        "{} large allocations for {MESSAGES} packets received (first round: {})",
        large_allocations[1],
        large_allocations[0],
    );
    assert!((1..=8).contains(&pooled), "{pooled} buffers in the pool");
    russh::packet_pool::release();
    assert_eq!(russh::packet_pool::pooled(), 0);
    drop(session);
    running.abort();
}
