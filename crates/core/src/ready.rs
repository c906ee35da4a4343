//! The ready list behind the in-task task group (the combinators have their own shared waker
//! block, `combinators::wakers`): futures held in numbered slots, each polled with its own waker, whose
//! wake queues the slot's number and wakes the driver's task. A wake costs O(1), and the
//! driver polls exactly the slots that were woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

use futures::task::AtomicWaker;

/// What the slot wakers share with their driver.
#[derive(Default)]
pub(crate) struct ReadyList {
    /// Slots woken since the driver last looked.
    queue: Mutex<Vec<usize>>,
    /// The task that polls the driver.
    parent: AtomicWaker,
}

impl ReadyList {
    /// Registers the driver's task, to be woken when a slot is.
    pub(crate) fn register(&self, waker: &Waker) {
        self.parent.register(waker);
    }

    /// Wakes the driver's task.
    pub(crate) fn wake_parent(&self) {
        self.parent.wake();
    }

    /// Moves the slots woken since the last look into `into`.
    pub(crate) fn drain_into(&self, into: &mut impl Extend<usize>) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        into.extend(queue.drain(..));
    }
}

/// The waker of one slot: stays with its slot, whichever future occupies it (a stale wake
/// only makes a spurious poll of the next one).
pub(crate) struct SlotWaker {
    slot: usize,
    /// Whether the slot is already on the ready list (its wake would be redundant).
    queued: AtomicBool,
    ready: Arc<ReadyList>,
}

impl SlotWaker {
    /// The waker of slot `slot`, starting as queued (the driver polls a new slot anyway).
    pub(crate) fn new(slot: usize, ready: &Arc<ReadyList>) -> (Arc<SlotWaker>, Waker) {
        let state = Arc::new(SlotWaker {
            slot,
            queued: AtomicBool::new(true),
            ready: Arc::clone(ready),
        });
        let waker = Waker::from(Arc::clone(&state));
        (state, waker)
    }

    /// The slot is about to be polled: a wake from now on queues it again.
    pub(crate) fn polling(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.slot);
            self.ready.wake_parent();
        }
    }
}
