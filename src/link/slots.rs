//! The delivery slots of one handler link: `max_in_flight` permits shared
//! by every source of the link, so that the bound holds for the link as a
//! whole.
//!
//! Slots are handed out first come, first served: a source that has a
//! message waits in one queue with the others (its place kept while it
//! waits), and takes one slot per message. When several sources have
//! messages waiting, freed slots go to them in turn, so a flood on one
//! source cannot starve another.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// One delivery slot, held while its `handle-message` call runs.
pub(crate) type Slot = OwnedSemaphorePermit;

/// The slots of a link.
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    max_in_flight: usize,
    sources: usize,
}

impl Slots {
    pub(crate) fn new(max_in_flight: usize, sources: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            sources: sources.max(1),
        }
    }

    /// A source's place in the queue for slots.
    pub(crate) fn queue(&self) -> SlotQueue {
        SlotQueue {
            waiting: PollSemaphore::new(Arc::clone(&self.semaphore)),
            semaphore: Arc::clone(&self.semaphore),
            max_in_flight: self.max_in_flight,
            fair_share: self.max_in_flight.div_ceil(self.sources),
        }
    }
}

/// How one source takes slots.
pub(crate) struct SlotQueue {
    /// Keeps this source's place in the queue between polls.
    waiting: PollSemaphore,
    semaphore: Arc<Semaphore>,
    max_in_flight: usize,
    fair_share: usize,
}

impl SlotQueue {
    /// The next free slot. Cancel-safe: the place in the queue is kept
    /// between calls, so a source that waits while doing other work is
    /// served in its turn.
    pub(crate) async fn next(&mut self) -> Slot {
        let permit = std::future::poll_fn(|cx| self.waiting.poll_acquire(cx)).await;
        // The semaphore is never closed.
        permit.expect("the slots of a link are never closed")
    }

    /// A slot if one is free now that no other source waits for.
    pub(crate) fn try_next(&self) -> Option<Slot> {
        Arc::clone(&self.semaphore).try_acquire_owned().ok()
    }

    /// Slots free now.
    pub(crate) fn free(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// The link's `max_in_flight`.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The slots this source may count on while every source is busy:
    /// `max_in_flight` divided among the link's sources.
    pub(crate) fn fair_share(&self) -> usize {
        self.fair_share
    }
}
