use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::mpsc::{OwnedPermit, Sender};

use super::WindowSizeRef;
use crate::{ChannelId, ChannelMsg};

/// Messages a channel's reader is behind by, beyond its queue, before a session waits for
/// it as published russh always did. Channel data cannot reach it: its window is not
/// opened again while messages wait here (patches/russh/README.md), so only a peer that
/// floods a channel with requests its reader does not read could.
const OVERFLOW_LIMIT: usize = 8192;

type Room = Pin<Box<dyn Future<Output = Result<OwnedPermit<ChannelMsg>, SendError<()>>> + Send>>;

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
///
/// Sending never waits for the channel's reader (below `OVERFLOW_LIMIT`): a message its
/// queue has no room for waits here, in order, and the session moves on. Published russh
/// waited, in the session's loop, so one slow reader stopped every channel of the session,
/// and a reader waiting on the session to take what it writes stalled it for good.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    overflow: Mutex<Overflow>,
}

#[derive(Default)]
struct Overflow {
    waiting: VecDeque<ChannelMsg>,
    /// Resolves when the queue has room again, while messages wait.
    room: Option<Room>,
    /// The channel's window was kept shut because messages waited (`is_behind`): it is
    /// to be opened once none wait, however they went.
    withheld: bool,
}

impl std::fmt::Debug for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overflow")
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self::with_window(sender, WindowSizeRef::new(0))
    }

    pub(crate) fn with_window(sender: Sender<ChannelMsg>, window_size: WindowSizeRef) -> Self {
        Self {
            sender,
            window_size,
            overflow: Mutex::default(),
        }
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }

    fn overflow(&self) -> MutexGuard<'_, Overflow> {
        // The list is valid whatever a panicking holder left undone.
        self.overflow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether messages wait for room in the channel's queue: its window is then not
    /// opened again.
    pub(crate) fn is_behind(&self) -> bool {
        let mut overflow = self.overflow();
        let behind = !overflow.waiting.is_empty();
        overflow.withheld |= behind;
        behind
    }

    /// Hands `msg` to the channel's reader after the messages before it. Fails only when
    /// the reader is gone.
    pub async fn send(&self, msg: ChannelMsg) -> Result<(), SendError<ChannelMsg>> {
        {
            let mut overflow = self.overflow();
            if overflow.waiting.is_empty() {
                return match self.sender.try_send(msg) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Closed(msg)) => Err(SendError(msg)),
                    Err(TrySendError::Full(msg)) => {
                        overflow.waiting.push_back(msg);
                        Ok(())
                    }
                };
            }
            if overflow.waiting.len() < OVERFLOW_LIMIT {
                overflow.waiting.push_back(msg);
                return Ok(());
            }
            overflow.room = None;
        }
        // Flooded: wait for the reader, the waiting messages first.
        loop {
            let next = self.overflow().waiting.pop_front();
            let Some(next) = next else { break };
            if self.sender.send(next).await.is_err() {
                return Err(SendError(msg));
            }
        }
        self.sender.send(msg).await
    }

    /// Moves waiting messages into the queue as far as it has room. Ready once none wait
    /// (or the reader is gone), with whether the channel's window was kept shut meanwhile;
    /// else `cx` is woken when there is room.
    fn poll_caught_up(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Self {
            sender, overflow, ..
        } = self;
        let overflow = overflow
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            let Some(first) = overflow.waiting.pop_front() else {
                overflow.room = None;
                return Poll::Ready(std::mem::take(&mut overflow.withheld));
            };
            match sender.try_send(first) {
                Ok(()) => continue,
                Err(TrySendError::Closed(_)) => {
                    overflow.waiting.clear();
                    continue;
                }
                Err(TrySendError::Full(first)) => overflow.waiting.push_front(first),
            }
            let room = overflow
                .room
                .get_or_insert_with(|| Box::pin(sender.clone().reserve_owned()));
            let room = std::task::ready!(room.as_mut().poll(cx));
            overflow.room = None;
            match room {
                Ok(permit) => {
                    if let Some(first) = overflow.waiting.pop_front() {
                        permit.send(first);
                    }
                }
                Err(_) => overflow.waiting.clear(),
            }
        }
    }
}

impl Drop for ChannelRef {
    /// A channel closed while its reader was behind: what it was sent still reaches it.
    fn drop(&mut self) {
        let overflow = self
            .overflow
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let waiting = std::mem::take(&mut overflow.waiting);
        if waiting.is_empty() {
            return;
        }
        let sender = self.sender.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for msg in waiting {
                    if sender.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

/// Resolves, with the channels whose windows were kept shut and whose readers caught up,
/// once some did: their waiting messages all went into their queues
/// (`ChannelRef::send`). Pending while none did.
pub(crate) fn caught_up(
    channels: &mut HashMap<ChannelId, ChannelRef>,
) -> impl Future<Output = Vec<ChannelId>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut caught_up = Vec::new();
        for (id, channel) in channels.iter_mut() {
            if channel.poll_caught_up(cx) == Poll::Ready(true) {
                caught_up.push(*id);
            }
        }
        if caught_up.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(caught_up)
        }
    })
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
