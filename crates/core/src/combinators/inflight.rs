//! The one in-flight driver behind every combinator: a set of futures polled in place by the
//! combinator's own future, each slot with its own waker, so a wake re-polls only that slot.
//!
//! - Slots are boxed once and reused (`Pin::set`), so a bounded combinator allocates
//!   `O(limit)` slots however long its input is.
//! - A slot's waker queues the slot's number on a shared ready list (at most once until the
//!   slot is polled again) and wakes the combinator's task; the driver polls exactly the queued
//!   slots, so one wake costs `O(1)` and not a scan of every slot.
//! - One call to [`InFlight::poll_next`] polls each queued slot at most once, so a future that
//!   wakes itself on every poll cannot starve the caller or its siblings.
//! - Dropping the driver drops every future still in it, at once.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::ready::{ReadyList, SlotWaker};

struct Slot<F> {
    /// `None` while the slot is free.
    future: Pin<Box<Option<F>>>,
    /// The caller's key for the future in the slot (its input index).
    key: usize,
    waker: Waker,
    state: Arc<SlotWaker>,
}

/// Futures in flight, keyed by the caller, completed in any order.
pub(crate) struct InFlight<F> {
    slots: Vec<Slot<F>>,
    free: Vec<usize>,
    /// Slots to poll in this round, in order.
    todo: VecDeque<usize>,
    ready: Arc<ReadyList>,
    len: usize,
}

impl<F> fmt::Debug for InFlight<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &self.len)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<F> Default for InFlight<F> {
    fn default() -> Self {
        InFlight {
            slots: Vec::new(),
            free: Vec::new(),
            todo: VecDeque::new(),
            ready: Arc::default(),
            len: 0,
        }
    }
}

impl<F> InFlight<F> {
    /// How many futures are in flight.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no future is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `future` under `key`; it is polled (after the futures added before it) on the next
    /// call to [`poll_next`](Self::poll_next).
    pub(crate) fn push(&mut self, key: usize, future: F) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot].future.as_mut().set(Some(future));
                slot
            }
            None => self.new_slot(future),
        };
        let entry = &mut self.slots[slot];
        entry.key = key;
        entry.state.scheduled();
        self.todo.push_back(slot);
        self.len += 1;
    }

    fn new_slot(&mut self, future: F) -> usize {
        let slot = self.slots.len();
        let (state, waker) = SlotWaker::new(slot, &self.ready);
        self.slots.push(Slot {
            future: Box::pin(Some(future)),
            key: 0,
            waker,
            state,
        });
        slot
    }

    /// Moves the slots woken since the last look onto this round's list.
    fn take_woken(&mut self) {
        self.ready.drain_into(&mut self.todo);
    }
}

impl<F: Future> InFlight<F> {
    /// Polls the queued futures until one completes: `Ready(Some((key, output)))`, its slot
    /// freed. `Ready(None)` when nothing is in flight.
    ///
    /// Each call polls every queued slot at most once; slots woken meanwhile wait for the next
    /// call (their wake has already re-scheduled the caller's task).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, F::Output)>> {
        if self.is_empty() {
            return Poll::Ready(None);
        }
        self.ready.register(cx.waker());
        self.take_woken();
        while let Some(slot) = self.todo.pop_front() {
            if let Poll::Ready(done) = self.poll_slot(slot) {
                return Poll::Ready(Some(done));
            }
        }
        Poll::Pending
    }

    /// Polls one slot with its own waker; on completion drops the future in place and frees
    /// the slot.
    fn poll_slot(&mut self, slot: usize) -> Poll<(usize, F::Output)> {
        let entry = &mut self.slots[slot];
        entry.state.polling();
        let Some(future) = entry.future.as_mut().as_pin_mut() else {
            // A stale wake of a future that has finished.
            return Poll::Pending;
        };
        let output = match future.poll(&mut Context::from_waker(&entry.waker)) {
            Poll::Ready(output) => output,
            Poll::Pending => return Poll::Pending,
        };
        entry.future.as_mut().set(None);
        self.free.push(slot);
        self.len -= 1;
        Poll::Ready((entry.key, output))
    }
}

/// Futures taken from a source in input order and run through an [`InFlight`] set: the
/// admission half shared by the bounded combinators and the completion streams. Futures are
/// made (the source's `next` called) only when admitted, so at most `cap` exist at once.
pub(crate) struct Feed<I: Iterator> {
    source: I,
    exhausted: bool,
    next_key: usize,
    pub(crate) flight: InFlight<I::Item>,
}

impl<I: Iterator> fmt::Debug for Feed<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("admitted", &self.next_key)
            .field("exhausted", &self.exhausted)
            .field("flight", &self.flight)
            .finish_non_exhaustive()
    }
}

impl<I: Iterator> Feed<I> {
    pub(crate) fn new(source: I) -> Self {
        Feed {
            source,
            exhausted: false,
            next_key: 0,
            flight: InFlight::default(),
        }
    }

    /// Admits futures in input order until `cap` are in flight or the source ends; returns
    /// how many were admitted. Each future's key is its input index.
    pub(crate) fn admit(&mut self, cap: usize) -> usize {
        let mut admitted = 0;
        while !self.exhausted && self.flight.len() < cap {
            match self.source.next() {
                Some(future) => {
                    self.flight.push(self.next_key, future);
                    self.next_key += 1;
                    admitted += 1;
                }
                None => self.exhausted = true,
            }
        }
        admitted
    }

    /// How many futures have been admitted so far (the next one's input index).
    pub(crate) fn admitted(&self) -> usize {
        self.next_key
    }

    /// The source's size hint for the futures not yet admitted.
    pub(crate) fn remaining_hint(&self) -> (usize, Option<usize>) {
        if self.exhausted {
            (0, Some(0))
        } else {
            self.source.size_hint()
        }
    }

    /// Stops admitting and drops every future in flight.
    pub(crate) fn close(&mut self) {
        self.exhausted = true;
        self.flight = InFlight::default();
    }
}

impl<I> Feed<I>
where
    I: Iterator,
    I::Item: Future,
{
    /// Admits up to `cap` in flight, then polls: the next `(input index, output)` in
    /// completion order, or `Ready(None)` once the source has ended and everything finished.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        cap: usize,
    ) -> Poll<Option<(usize, <I::Item as Future>::Output)>> {
        self.admit(cap);
        self.flight.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::poll_fn;

    /// A future that needs `n` wakes; it wakes itself each time (a yield).
    async fn yields(n: usize, out: usize) -> usize {
        for _ in 0..n {
            crate::runtime::yield_now().await;
        }
        out
    }

    #[test]
    fn completes_in_completion_order_and_reuses_slots() {
        let mut flight = InFlight::default();
        flight.push(0, Box::pin(yields(2, 10)));
        flight.push(1, Box::pin(yields(0, 11)));
        flight.push(2, Box::pin(yields(1, 12)));
        let mut order = Vec::new();
        futures::executor::block_on(poll_fn(|cx| loop {
            match flight.poll_next(cx) {
                Poll::Ready(Some(done)) => order.push(done),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }));
        assert_eq!(order, vec![(1, 11), (2, 12), (0, 10)]);
        assert_eq!(flight.slots.len(), 3);
        flight.push(7, Box::pin(yields(0, 70)));
        assert_eq!(flight.slots.len(), 3, "a free slot is reused");
        assert!(!flight.is_empty());
    }
}
