//! The in-flight driver behind the bounded combinators and the completion streams: a set of
//! futures admitted over time, polled in place by the combinator's own future, completed in
//! any order.
//!
//! - Futures live in pinned blocks of slots ([`PinnedSlots`]), not one `Box` each. A freed
//!   slot is reused (`Pin::set`), so a bounded combinator allocates one block of `limit` slots
//!   however long its input is; an unbounded one adds blocks of doubling size.
//! - A new future is first polled with the parent's waker (the combinator's task), and polled
//!   again with it on the combinator's next poll; only a future still pending after that gets
//!   a slot waker of its own (made once per slot, reused by its later occupants), at its third
//!   poll, on the next call. A future that finishes at once or after one yield never costs a
//!   waker or a wake of the ready list.
//! - A slot waker queues its slot's number on a shared ready list (at most once until the slot
//!   is polled again) and wakes the combinator's task; the driver polls exactly the queued
//!   slots, so one wake costs `O(1)` and not a scan of every slot.
//! - One call to [`InFlight::poll_next`] polls each slot at most once, so a future that wakes
//!   itself on every poll cannot starve the caller or its siblings.
//! - Dropping the driver drops every future still in it, at once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::Stream;

use super::pinned::PinnedSlots;
use crate::ready::{ReadyList, SlotWaker};

/// How the future in a slot is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Admitted, not polled yet: polled with the parent's waker.
    Fresh,
    /// Polled once with the parent's waker and pending: polled with it again on the next call.
    Parent,
    /// Polled twice with the parent's waker and pending: polled with its own waker (made then)
    /// on the next call.
    Promote,
    /// Polled with its own slot waker: polled again when that waker fires.
    Own,
}

/// The driver's bookkeeping for one slot (kept apart from the pinned futures).
struct Meta {
    /// The caller's key for the future in the slot (its input index).
    key: usize,
    mode: Mode,
    /// Whether the slot is on this call's `todo` list.
    scheduled: bool,
    /// The slot's own waker, made the first time a future in the slot needs one.
    waker: Option<(Arc<SlotWaker>, Waker)>,
}

/// The futures' storage: pinned blocks, the first of `first` slots, each next one as large as
/// all before it.
struct Blocks<F> {
    blocks: Vec<PinnedSlots<Option<F>>>,
    first: usize,
}

impl<F> Blocks<F> {
    fn capacity(&self) -> usize {
        // first + 2 first + 4 first + ... = first * (2^blocks - 1)
        self.blocks
            .len()
            .checked_sub(1)
            .map_or(0, |last| self.first * ((2 << last) - 1))
    }

    /// Adds a block of empty slots.
    fn grow(&mut self) {
        self.first = self.first.max(1);
        let len = self.first << self.blocks.len();
        self.blocks
            .push(PinnedSlots::new((0..len).map(|_| None).collect()));
    }

    fn get_mut(&mut self, slot: usize) -> Pin<&mut Option<F>> {
        if slot < self.first {
            return self.blocks[0].get_mut(slot);
        }
        // Block k starts at first * (2^k - 1).
        let k = (slot / self.first + 1).ilog2() as usize;
        let start = self.first * ((1 << k) - 1);
        self.blocks[k].get_mut(slot - start)
    }
}

/// Futures in flight, keyed by the caller, completed in any order.
pub(crate) struct InFlight<F> {
    futures: Blocks<F>,
    meta: Vec<Meta>,
    free: Vec<usize>,
    /// Slots to poll in this call, in order, from `todo[next..]`.
    todo: Vec<usize>,
    next: usize,
    /// Slots polled with the parent's waker and pending: to poll on the next call (once or
    /// twice; the third poll is with the slot's own waker).
    parent: Vec<usize>,
    /// Made when the first slot waker is.
    ready: Option<Arc<ReadyList>>,
    len: usize,
}

impl<F> fmt::Debug for InFlight<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &self.len)
            .field("slots", &self.meta.len())
            .finish_non_exhaustive()
    }
}

impl<F> InFlight<F> {
    /// An empty set whose first block of slots will hold `first` (at least one).
    pub(crate) fn with_first_block(first: usize) -> Self {
        InFlight {
            futures: Blocks {
                blocks: Vec::new(),
                first,
            },
            meta: Vec::new(),
            free: Vec::new(),
            todo: Vec::new(),
            next: 0,
            parent: Vec::new(),
            ready: None,
            len: 0,
        }
    }

    /// How many futures are in flight.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sizes the first block of slots, if it has not been made yet.
    pub(crate) fn size_first_block(&mut self, first: usize) {
        if self.futures.blocks.is_empty() {
            self.futures.first = first;
        }
    }

    /// Whether no future is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `future` under `key`; it is polled (after the futures added before it) on the next
    /// call to [`poll_next`](Self::poll_next).
    pub(crate) fn push(&mut self, key: usize, future: F) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                if self.meta.len() == self.futures.capacity() {
                    self.futures.grow();
                }
                self.meta.push(Meta {
                    key,
                    mode: Mode::Fresh,
                    scheduled: false,
                    waker: None,
                });
                self.meta.len() - 1
            }
        };
        self.futures.get_mut(slot).set(Some(future));
        let meta = &mut self.meta[slot];
        meta.key = key;
        meta.mode = Mode::Fresh;
        if let Some((state, _)) = &meta.waker {
            // A late wake meant for the slot's previous future must not queue it.
            state.scheduled();
        }
        if !meta.scheduled {
            meta.scheduled = true;
            self.todo.push(slot);
        }
        self.len += 1;
    }

    /// Puts the slots woken since the last call, and those polled with the parent's waker,
    /// on this call's list.
    fn start_round(&mut self, cx: &Context<'_>) {
        if self.next == self.todo.len() {
            self.todo.clear();
            self.next = 0;
            if self.ready.is_none() {
                // The common case: only slots polled with the parent's waker to poll again.
                std::mem::swap(&mut self.todo, &mut self.parent);
                for &slot in &self.todo {
                    self.meta[slot].scheduled = true;
                }
                return;
            }
        }
        if let Some(ready) = &self.ready {
            ready.register(cx.waker());
            let start = self.todo.len();
            ready.drain_into(&mut self.todo);
            // Keep each slot on the list once.
            let mut i = start;
            while i < self.todo.len() {
                let meta = &mut self.meta[self.todo[i]];
                if meta.scheduled {
                    self.todo.remove(i);
                } else {
                    meta.scheduled = true;
                    i += 1;
                }
            }
        }
        for slot in self.parent.drain(..) {
            let meta = &mut self.meta[slot];
            if !meta.scheduled {
                meta.scheduled = true;
                self.todo.push(slot);
            }
        }
    }
}

impl<F: Future> InFlight<F> {
    /// Polls the scheduled futures until one completes: `Ready(Some((key, output)))`, its slot
    /// freed. `Ready(None)` when nothing is in flight.
    ///
    /// Each call polls every slot at most once; slots woken meanwhile wait for the next call
    /// (their wake has already re-scheduled the caller's task).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, F::Output)>> {
        if self.is_empty() {
            return Poll::Ready(None);
        }
        self.start_round(cx);
        while let Some(&slot) = self.todo.get(self.next) {
            self.next += 1;
            self.meta[slot].scheduled = false;
            if let Poll::Ready(done) = self.poll_slot(slot, cx) {
                return Poll::Ready(Some(done));
            }
        }
        Poll::Pending
    }

    /// Polls one slot with the waker its mode calls for; on completion drops the future in
    /// place and frees the slot.
    fn poll_slot(&mut self, slot: usize, cx: &mut Context<'_>) -> Poll<(usize, F::Output)> {
        let meta = &mut self.meta[slot];
        let mut future = self.futures.get_mut(slot);
        let Some(running) = future.as_mut().as_pin_mut() else {
            // A stale wake of a future that has finished.
            return Poll::Pending;
        };
        let polled = match meta.mode {
            Mode::Fresh | Mode::Parent => {
                let polled = running.poll(cx);
                if polled.is_pending() {
                    meta.mode = if meta.mode == Mode::Fresh {
                        Mode::Parent
                    } else {
                        Mode::Promote
                    };
                    self.parent.push(slot);
                }
                polled
            }
            Mode::Promote | Mode::Own => {
                meta.mode = Mode::Own;
                Self::poll_own(meta, &mut self.ready, future.as_mut(), slot, cx)
            }
        };
        let Poll::Ready(output) = polled else {
            return Poll::Pending;
        };
        future.set(None);
        self.free.push(slot);
        self.len -= 1;
        Poll::Ready((meta.key, output))
    }

    /// Polls the future in `slot` with the slot's own waker, made if it has none.
    fn poll_own(
        meta: &mut Meta,
        ready: &mut Option<Arc<ReadyList>>,
        mut future: Pin<&mut Option<F>>,
        slot: usize,
        cx: &Context<'_>,
    ) -> Poll<F::Output> {
        let (state, waker) = meta.waker.get_or_insert_with(|| {
            let ready = ready.get_or_insert_with(|| {
                // Registered before any slot waker exists, so that no wake is lost.
                let ready = Arc::<ReadyList>::default();
                ready.register(cx.waker());
                ready
            });
            SlotWaker::new(slot, ready)
        });
        state.polling();
        match future.as_mut().as_pin_mut() {
            Some(running) => running.poll(&mut Context::from_waker(waker)),
            None => Poll::Pending,
        }
    }
}

/// Where a [`Feed`] takes its futures from: an iterator or a stream of futures.
pub(crate) trait Source {
    /// The futures it yields.
    type Fut: Future;

    /// The next future, `Ready(None)` at the end; `Pending` (with `cx` registered) if a stream
    /// has none yet.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::Fut>>;

    /// Bounds on how many futures are left.
    fn size_hint(&self) -> (usize, Option<usize>);
}

/// An iterator of futures as a [`Source`].
#[derive(Debug)]
pub(crate) struct FromIter<I>(pub(crate) I);

impl<I> Source for FromIter<I>
where
    I: Iterator,
    I::Item: Future,
{
    type Fut = I::Item;

    fn poll_take(&mut self, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

/// A stream of futures as a [`Source`] (pinned once, in a box, so any stream will do).
pub(crate) struct FromStream<S>(pub(crate) Pin<Box<S>>);

impl<S> Source for FromStream<S>
where
    S: Stream,
    S::Item: Future,
{
    type Fut = S::Item;

    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.0.as_mut().poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

/// Futures taken from a source in input order and run through an [`InFlight`] set: the
/// admission half shared by the bounded combinators and the completion streams. Futures are
/// made (the source's `next` called) only when admitted, so at most `cap` exist at once.
pub(crate) struct Feed<S: Source> {
    source: S,
    exhausted: bool,
    next_key: usize,
    pub(crate) flight: InFlight<S::Fut>,
}

impl<S: Source> fmt::Debug for Feed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("admitted", &self.next_key)
            .field("exhausted", &self.exhausted)
            .field("flight", &self.flight)
            .finish_non_exhaustive()
    }
}

impl<S: Source> Feed<S> {
    /// A feed over `source`.
    pub(crate) fn new(source: S) -> Self {
        Feed {
            source,
            exhausted: false,
            next_key: 0,
            flight: InFlight::with_first_block(0),
        }
    }

    /// Admits futures in input order until `cap` are in flight or the source ends (or, for a
    /// stream, has none ready); returns how many were admitted. Each future's key is its input
    /// index.
    pub(crate) fn admit(&mut self, cx: &mut Context<'_>, cap: usize) -> usize {
        if self.next_key == 0 {
            // The first block of slots holds the whole input, or `cap` futures if fewer.
            let (low, high) = self.source.size_hint();
            self.flight
                .size_first_block(high.unwrap_or(low).clamp(4, cap.max(4)).min(cap));
        }
        let mut admitted = 0;
        while !self.exhausted && self.flight.len() < cap {
            match self.source.poll_take(cx) {
                Poll::Ready(Some(future)) => {
                    self.flight.push(self.next_key, future);
                    self.next_key += 1;
                    admitted += 1;
                }
                Poll::Ready(None) => self.exhausted = true,
                Poll::Pending => break,
            }
        }
        admitted
    }

    /// Whether the source has ended (everything admitted).
    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted
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
        self.flight = InFlight::with_first_block(0);
    }

    /// Admits up to `cap` in flight, then polls: the next `(input index, output)` in
    /// completion order, `Ready(None)` once the source has ended and everything finished, or
    /// `Pending`.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        cap: usize,
    ) -> Poll<Option<(usize, <S::Fut as Future>::Output)>> {
        self.admit(cx, cap);
        match self.flight.poll_next(cx) {
            Poll::Ready(None) if !self.exhausted => Poll::Pending,
            polled => polled,
        }
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

    fn drain<F: Future>(flight: &mut InFlight<F>) -> Vec<(usize, F::Output)> {
        let mut order = Vec::new();
        futures::executor::block_on(poll_fn(|cx| loop {
            match flight.poll_next(cx) {
                Poll::Ready(Some(done)) => order.push(done),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }));
        order
    }

    #[test]
    fn completes_in_completion_order_and_reuses_slots() {
        let mut flight = InFlight::with_first_block(2);
        flight.push(0, Box::pin(yields(4, 10)));
        flight.push(1, Box::pin(yields(0, 11)));
        flight.push(2, Box::pin(yields(2, 12)));
        assert_eq!(drain(&mut flight), vec![(1, 11), (2, 12), (0, 10)]);
        assert_eq!(flight.meta.len(), 3);
        assert_eq!(flight.futures.blocks.len(), 2, "blocks of 2 and 4 slots");
        flight.push(7, Box::pin(yields(0, 70)));
        assert_eq!(flight.meta.len(), 3, "a free slot is reused");
        assert!(!flight.is_empty());
        assert_eq!(drain(&mut flight), vec![(7, 70)]);
    }

    #[test]
    fn blocks_grow_and_address_every_slot() {
        let mut flight = InFlight::with_first_block(3);
        for key in 0..40 {
            flight.push(key, Box::pin(yields(key % 5, key)));
        }
        assert_eq!(flight.futures.capacity(), 3 + 6 + 12 + 24);
        let mut done = drain(&mut flight);
        done.sort_unstable();
        assert_eq!(done, (0..40).map(|k| (k, k)).collect::<Vec<_>>());
    }
}
