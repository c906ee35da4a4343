//! The in-flight driver behind the bounded combinators and the completion streams: a set of
//! futures admitted over time, polled in place by the combinator's own future, completed in
//! any order.
//!
//! - Futures live in pinned blocks of slots ([`PinnedSlots`]), not one `Box` each. A freed
//!   slot is reused (`Pin::set`), so a bounded combinator allocates one block of `limit` slots
//!   however long its input is; an unbounded one adds blocks of doubling size.
//! - A new future is polled at once when it is admitted, with the parent's waker (the
//!   combinator's task), and its slot is freed again at once if it is ready. A future that
//!   returned `Pending` is polled with the parent's waker once more on the combinator's next
//!   call (a future that yields once finishes there, never touching a waker block), and if
//!   still pending, with its slot's own waker on the call after: one [`SlotWakers`] block per
//!   block of slots, made the first time a slot in it needs one, so a slot waker costs no
//!   allocation of its own.
//! - A slot waker lists its slot on the block's lock-free ready list (at most once until the
//!   slot is polled again) and wakes the combinator's task; the driver polls exactly the listed
//!   slots, so one wake costs `O(1)` and not a scan of every slot.
//! - The slots to poll are kept in bitmaps (one bit per slot), polled lowest first: no lists
//!   to push to, no per-slot flags to keep them unique. A round is the set of slots to poll;
//!   slots admitted, still pending or woken meanwhile wait for the next round.
//! - One call polls each slot at most once, so a future that wakes itself on every poll
//!   cannot starve the caller or its siblings. [`Feed::poll_next`] (the streams) returns at
//!   the first output, leaving the rest of the round for the next call, and keeps outputs of
//!   futures ready at admission in a small queue counted against its cap;
//!   [`Feed::poll_each`] (`bounded_map` and its forms, which collect everything) hands every
//!   output of a call to its caller and refills a freed slot at once.
//! - Dropping the driver drops every future still in it, at once.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::pinned::PinnedSlots;
use super::wakers::SlotWakers;

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing.
    Empty,
    /// A future polled once, with the parent's waker: polled with it again next.
    Parent,
    /// A future polled twice with the parent's waker: polled with its own waker next.
    Promote,
    /// A future polled with its own slot waker: polled again when that waker fires.
    Own,
}

pin_project_lite::pin_project! {
    /// One slot: the future and the driver's bookkeeping for it, side by side in the pinned
    /// block (one bounds check reaches both).
    struct Slot<F> {
        // The caller's key for the future in the slot (its input index).
        key: usize,
        mode: Mode,
        #[pin]
        future: Option<F>,
    }
}

/// A set of slot numbers, one bit each.
#[derive(Debug, Default)]
struct Bits {
    words: Vec<u64>,
    /// No word below this one has a bit set.
    low: usize,
}

impl Bits {
    /// Room for slots `0..slots`.
    fn reserve(&mut self, slots: usize) {
        self.words.resize(slots.div_ceil(64), 0);
    }

    /// Adds `slot` (within the reserved room).
    #[inline]
    fn insert(&mut self, slot: usize) {
        let word = slot / 64;
        self.words[word] |= 1 << (slot % 64);
        self.low = self.low.min(word);
    }

    /// Removes and returns the lowest slot in the set.
    #[inline]
    fn pop(&mut self) -> Option<usize> {
        while let Some(word) = self.words.get_mut(self.low) {
            if *word != 0 {
                let bit = word.trailing_zeros() as usize;
                *word &= *word - 1;
                return Some(self.low * 64 + bit);
            }
            self.low += 1;
        }
        None
    }

    /// Whether the set is empty.
    #[inline]
    fn is_empty(&mut self) -> bool {
        while let Some(&word) = self.words.get(self.low) {
            if word != 0 {
                return false;
            }
            self.low += 1;
        }
        true
    }
}

/// A pinned block of slots, with its slot wakers once one of its slots needs one.
type Block<F> = (PinnedSlots<Slot<F>>, Option<SlotWakers>);

/// The futures' storage: pinned blocks, the first of `first` slots, each next one as large as
/// all before it. The first block is held apart from the others (empty, without an
/// allocation, until the first slot is needed), so a slot in it is reached with one bounds
/// check and no indirection through the vector.
struct Blocks<F> {
    head: Block<F>,
    more: Vec<Block<F>>,
    first: usize,
}

impl<F> Blocks<F> {
    /// No block yet (the first one is made by [`grow`](Self::grow)).
    fn new(first: usize) -> Self {
        Blocks {
            head: (PinnedSlots::new(Vec::new()), None),
            more: Vec::new(),
            first,
        }
    }

    /// How many blocks have been made.
    fn count(&self) -> usize {
        if self.head.0.len() == 0 {
            0
        } else {
            1 + self.more.len()
        }
    }

    /// Every block, the first one first (an unmade first block is empty).
    fn iter(&self) -> impl Iterator<Item = &Block<F>> {
        std::iter::once(&self.head).chain(&self.more)
    }

    fn capacity(&self) -> usize {
        // first + 2 first + 4 first + ... = first * (2^blocks - 1)
        self.count()
            .checked_sub(1)
            .map_or(0, |last| self.first * ((2 << last) - 1))
    }

    /// Adds a block of empty slots.
    fn grow(&mut self) {
        self.first = self.first.max(1);
        let count = self.count();
        let len = self.first << count;
        let block = (
            PinnedSlots::new(
                (0..len)
                    .map(|_| Slot {
                        key: 0,
                        mode: Mode::Empty,
                        future: None,
                    })
                    .collect(),
            ),
            None,
        );
        if count == 0 {
            self.head = block;
        } else {
            self.more.push(block);
        }
    }

    /// The cell of `slot`, pinned, its block's slot wakers, its place in the block and the
    /// block's length. The first block is looked up without `locate`, and with one bounds
    /// check (the bounded forms never have another block).
    #[inline(always)]
    fn cell(&mut self, slot: usize) -> (Pin<&mut Slot<F>>, &mut Option<SlotWakers>, usize, usize) {
        let len = self.head.0.len();
        if slot >= len {
            return self.cell_beyond_first(slot);
        }
        let (futures, wakers) = &mut self.head;
        (futures.get_mut(slot), wakers, slot, len)
    }

    /// [`cell`](Self::cell) of a slot beyond the first block.
    #[inline(never)]
    fn cell_beyond_first(
        &mut self,
        slot: usize,
    ) -> (Pin<&mut Slot<F>>, &mut Option<SlotWakers>, usize, usize) {
        let (k, at) = self.locate(slot);
        let (futures, wakers) = match k.checked_sub(1) {
            None => &mut self.head,
            Some(k) => &mut self.more[k],
        };
        let len = futures.len();
        (futures.get_mut(at), wakers, at, len)
    }

    /// The block of `slot` and its place in it.
    #[inline]
    fn locate(&self, slot: usize) -> (usize, usize) {
        if slot < self.first {
            return (0, slot);
        }
        // Block k starts at first * (2^k - 1).
        let k = (slot / self.first + 1).ilog2() as usize;
        (k, slot - self.first * ((1 << k) - 1))
    }
}

/// Futures in flight, keyed by the caller, completed in any order.
pub(crate) struct InFlight<F> {
    futures: Blocks<F>,
    /// How many slots have been handed out (the rest of the blocks is untouched).
    slots: usize,
    free: Vec<usize>,
    /// Slots to poll, in this call and, if it returns an output first, the next ones.
    round: Bits,
    /// Slots to poll in the round after: added, pending, or woken since `round` was made.
    next: Bits,
    /// Scratch space for the woken slots of one block.
    woken: Vec<usize>,
    len: usize,
}

impl<F> fmt::Debug for InFlight<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &self.len)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl<F> InFlight<F> {
    /// An empty set whose first block of slots will hold `first` (at least one).
    pub(crate) fn with_first_block(first: usize) -> Self {
        InFlight {
            futures: Blocks::new(first),
            slots: 0,
            free: Vec::new(),
            round: Bits::default(),
            next: Bits::default(),
            woken: Vec::new(),
            len: 0,
        }
    }

    /// How many futures are in flight.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sizes the first block of slots, if it has not been made yet.
    pub(crate) fn size_first_block(&mut self, first: usize) {
        if self.futures.count() == 0 {
            self.futures.first = first;
        }
    }

    /// Whether no future is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A free slot, made if there is none.
    #[inline]
    fn free_slot(&mut self) -> usize {
        match self.free.pop() {
            Some(slot) => slot,
            None => self.new_slot(),
        }
    }

    /// A new slot, in a new block if the last is full.
    #[cold]
    #[inline(never)]
    fn new_slot(&mut self) -> usize {
        if self.slots == self.futures.capacity() {
            self.futures.grow();
            let slots = self.futures.capacity();
            self.round.reserve(slots);
            self.next.reserve(slots);
        }
        self.slots += 1;
        self.slots - 1
    }

    /// Starts a new round, of the slots added, pending or woken since the last one, unless
    /// slots of the current round are still to poll; whether they are.
    #[inline]
    pub(crate) fn start_round(&mut self) -> bool {
        if !self.round.is_empty() {
            return true;
        }
        self.take_woken();
        std::mem::swap(&mut self.round, &mut self.next);
        false
    }

    /// Puts the slots woken since the last look on this call's list; whether there were any.
    fn take_woken(&mut self) -> bool {
        let mut any = false;
        let mut start = 0;
        for (futures, wakers) in self.futures.iter() {
            if let Some(wakers) = wakers {
                wakers.take_woken(&mut self.woken);
                for &at in &self.woken {
                    // A stale wake of a slot that has been emptied polls nothing.
                    if futures.get(at).mode == Mode::Own {
                        self.next.insert(start + at);
                        any = true;
                    }
                }
            }
            start += futures.len();
        }
        any
    }

    /// Before returning `Pending`: registers the caller's task with every block of slot
    /// wakers, then looks for wakes that came in before that (they are left for the next
    /// call, which the caller's task is woken for at once).
    fn register(&mut self, cx: &Context<'_>) {
        let mut any = false;
        for (_, wakers) in self.futures.iter() {
            if let Some(wakers) = wakers {
                wakers.register(cx.waker());
                any = true;
            }
        }
        if any && self.take_woken() {
            cx.waker().wake_by_ref();
        }
    }
}

impl<F: Future> InFlight<F> {
    /// Adds `future` under `key` and polls it once, with the parent's waker: its output if it
    /// is ready at once (it then takes no slot for longer), else it is polled on the next call.
    #[inline(always)]
    pub(crate) fn admit(&mut self, key: usize, future: F, cx: &mut Context<'_>) -> Poll<F::Output> {
        let slot = self.free_slot();
        let (cell, ..) = self.futures.cell(slot);
        let mut cell = cell.project();
        cell.future.set(Some(future));
        let polled = match cell.future.as_mut().as_pin_mut() {
            Some(running) => running.poll(cx),
            None => unreachable!("the slot was just filled"),
        };
        if polled.is_ready() {
            cell.future.set(None);
            self.free.push(slot);
            return polled;
        }
        *cell.key = key;
        *cell.mode = Mode::Parent;
        self.next.insert(slot);
        self.len += 1;
        Poll::Pending
    }

    /// Polls the slots that may progress (woken, or admitted in an earlier call) until one
    /// completes: `Ready((key, output))`, its slot freed; `Pending` when every one of them has
    /// been polled.
    pub(crate) fn poll_round(&mut self, cx: &mut Context<'_>) -> Poll<(usize, F::Output)> {
        // (With nothing in flight no slot is listed: this finds none.)
        // The current round's next slot, else the first of a new round.
        let mut leftover = true;
        let mut next = self.round.pop();
        if next.is_none() {
            self.take_woken();
            std::mem::swap(&mut self.round, &mut self.next);
            leftover = false;
            next = self.round.pop();
        }
        while let Some(slot) = next {
            if let Poll::Ready(done) = self.poll_slot(slot, cx) {
                return Poll::Ready(done);
            }
            next = self.round.pop();
        }
        if leftover && !self.next.is_empty() {
            // This call finished an earlier round: the next one (which may hold slots whose
            // wake brought this call) starts on the next call, right away.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// To call before returning `Pending` (after [`poll_round`](Self::poll_round) and any
    /// admission): makes sure a wake of a slot wakes the caller's task.
    pub(crate) fn park(&mut self, cx: &Context<'_>) {
        self.register(cx);
    }

    /// Polls one slot with its own waker (made with its block's, on first use); on completion
    /// drops the future in place and frees the slot.
    #[inline(always)]
    fn poll_slot(&mut self, slot: usize, cx: &mut Context<'_>) -> Poll<(usize, F::Output)> {
        let (cell, wakers, at, block_len) = self.futures.cell(slot);
        let mut cell = cell.project();
        // An empty slot (`Mode::Empty`) has no future.
        let Some(running) = cell.future.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let polled = match *cell.mode {
            Mode::Empty | Mode::Parent => {
                // Second poll, still with the parent's waker: a future that yields once
                // finishes here without a slot waker.
                let polled = running.poll(cx);
                if polled.is_pending() {
                    *cell.mode = Mode::Promote;
                    self.next.insert(slot);
                }
                polled
            }
            Mode::Promote | Mode::Own => {
                *cell.mode = Mode::Own;
                let wakers = wakers.get_or_insert_with(|| SlotWakers::new(block_len, cx.waker()));
                running.poll(&mut Context::from_waker(&wakers.polling(at)))
            }
        };
        let Poll::Ready(output) = polled else {
            return Poll::Pending;
        };
        cell.future.set(None);
        *cell.mode = Mode::Empty;
        self.free.push(slot);
        self.len -= 1;
        Poll::Ready((*cell.key, output))
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
    /// Outputs of futures that were ready at their first poll, when admitted, not yet
    /// returned by [`poll_next`](Self::poll_next) (they count against its cap until they are).
    ready: VecDeque<(usize, <S::Fut as Future>::Output)>,
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
            ready: VecDeque::new(),
        }
    }

    /// How many futures are in flight, or finished and not yet returned by
    /// [`poll_next`](Self::poll_next).
    pub(crate) fn unfinished(&self) -> usize {
        self.flight.len() + self.ready.len()
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
        self.ready.clear();
    }

    /// [`poll_next`](Self::poll_next) without stopping at the first output: hands every output
    /// of this call to `each`, in completion order, and admits into a freed slot at once.
    /// `Ready(Continue)` once the source has ended and everything finished, `Ready(Break)` as
    /// soon as `each` breaks (the rest are left as they are), else `Pending`.
    pub(crate) fn poll_each(
        &mut self,
        cx: &mut Context<'_>,
        cap: usize,
        mut each: impl FnMut(usize, <S::Fut as Future>::Output) -> ControlFlow<()>,
    ) -> Poll<ControlFlow<()>> {
        if !self.flight.is_empty() {
            // A previous call of this form always finished its round.
            let _ = self.flight.start_round();
            while let Some(slot) = self.flight.round.pop() {
                if let Poll::Ready((key, output)) = self.flight.poll_slot(slot, cx) {
                    if each(key, output).is_break() {
                        return Poll::Ready(ControlFlow::Break(()));
                    }
                }
            }
        }
        if self.next_key == 0 {
            // The first block of slots holds the whole input, or `cap` futures if fewer.
            let (low, high) = self.source.size_hint();
            self.flight
                .size_first_block(high.unwrap_or(low).clamp(4, cap.max(4)).min(cap));
        }
        while !self.exhausted && self.flight.len() < cap {
            match self.source.poll_take(cx) {
                Poll::Ready(Some(future)) => {
                    let key = self.next_key;
                    self.next_key += 1;
                    if let Poll::Ready(output) = self.flight.admit(key, future, cx) {
                        if each(key, output).is_break() {
                            return Poll::Ready(ControlFlow::Break(()));
                        }
                    }
                }
                Poll::Ready(None) => self.exhausted = true,
                Poll::Pending => break,
            }
        }
        if self.exhausted && self.flight.is_empty() {
            Poll::Ready(ControlFlow::Continue(()))
        } else {
            self.flight.park(cx);
            Poll::Pending
        }
    }

    /// Admits futures in input order, each polled at once, until `cap` are in flight (or
    /// finished at admission and not returned yet) or the source ends (or, for a stream, has
    /// none ready); then, unless one was ready at once, polls those in flight that may
    /// progress until one finishes: the next `(input index, output)` in completion order,
    /// `Ready(None)` once the source has ended and everything finished, or `Pending`.
    ///
    /// Futures already in flight finish one per call: a call returns at the first.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        cap: usize,
    ) -> Poll<Option<(usize, <S::Fut as Future>::Output)>> {
        if let Some(done) = self.ready.pop_front() {
            return Poll::Ready(Some(done));
        }
        if self.next_key == 0 {
            // The first block of slots holds the whole input, or `cap` futures if fewer.
            let (low, high) = self.source.size_hint();
            self.flight
                .size_first_block(high.unwrap_or(low).clamp(4, cap.max(4)).min(cap));
        }
        while !self.exhausted && self.flight.len() + self.ready.len() < cap {
            match self.source.poll_take(cx) {
                Poll::Ready(Some(future)) => {
                    let key = self.next_key;
                    self.next_key += 1;
                    if let Poll::Ready(output) = self.flight.admit(key, future, cx) {
                        self.ready.push_back((key, output));
                    }
                }
                Poll::Ready(None) => self.exhausted = true,
                Poll::Pending => break,
            }
        }
        if let Some(done) = self.ready.pop_front() {
            return Poll::Ready(Some(done));
        }
        if let Poll::Ready(done) = self.flight.poll_round(cx) {
            return Poll::Ready(Some(done));
        }
        if self.exhausted && self.flight.is_empty() {
            Poll::Ready(None)
        } else {
            self.flight.park(cx);
            Poll::Pending
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

    /// Drives `flight` as `Feed` does, admitting `futures` (keyed by position) whenever the
    /// slots in flight have all been polled.
    fn run<F: Future>(flight: &mut InFlight<F>, futures: Vec<F>) -> Vec<(usize, F::Output)> {
        let mut input = futures.into_iter().enumerate();
        let mut order = Vec::new();
        futures::executor::block_on(poll_fn(|cx| 'call: loop {
            if let Poll::Ready(done) = flight.poll_round(cx) {
                order.push(done);
                continue;
            }
            for (key, future) in input.by_ref() {
                if let Poll::Ready(output) = flight.admit(key, future, cx) {
                    order.push((key, output));
                    continue 'call;
                }
            }
            if flight.is_empty() {
                return Poll::Ready(());
            }
            flight.park(cx);
            return Poll::Pending;
        }));
        order
    }

    #[test]
    fn completes_in_completion_order_and_reuses_slots() {
        let mut flight = InFlight::with_first_block(2);
        let futures = vec![
            Box::pin(yields(4, 10)),
            Box::pin(yields(0, 11)),
            Box::pin(yields(2, 12)),
        ];
        assert_eq!(run(&mut flight, futures), vec![(1, 11), (2, 12), (0, 10)]);
        assert_eq!(
            flight.slots, 2,
            "the slot of a future ready at once is reused"
        );
        assert_eq!(flight.futures.count(), 1);
        assert!(flight.is_empty());
        let again = vec![Box::pin(yields(1, 70)), Box::pin(yields(1, 71))];
        assert_eq!(run(&mut flight, again), vec![(0, 70), (1, 71)]);
        assert_eq!(flight.slots, 2, "free slots are reused");
    }

    #[test]
    fn blocks_grow_and_address_every_slot() {
        let mut flight = InFlight::with_first_block(3);
        let futures = (0..40)
            .map(|key| Box::pin(yields(key % 5 + 1, key)))
            .collect();
        let mut done = run(&mut flight, futures);
        assert_eq!(flight.futures.capacity(), 3 + 6 + 12 + 24);
        done.sort_unstable();
        assert_eq!(done, (0..40).map(|k| (k, k)).collect::<Vec<_>>());
    }

    /// [`chain`](crate::combinators::test_support::chain), boxed.
    fn chain(n: usize) -> Vec<Pin<Box<dyn Future<Output = usize>>>> {
        crate::combinators::test_support::chain(n)
            .into_iter()
            .map(|f| Box::pin(f) as Pin<Box<dyn Future<Output = usize>>>)
            .collect()
    }

    #[test]
    fn one_at_a_time_wakes_go_through_the_slot_wakers() {
        let mut flight = InFlight::with_first_block(8);
        let done = run(&mut flight, chain(50));
        assert_eq!(done, (0..50).rev().map(|i| (i, i)).collect::<Vec<_>>());
        assert!(flight.is_empty());
        // The same slots again, with wakers left over from the first run.
        let again = run(&mut flight, chain(20));
        assert_eq!(again, (0..20).rev().map(|i| (i, i)).collect::<Vec<_>>());
    }

    #[test]
    fn bits_pop_lowest_first() {
        let mut bits = Bits::default();
        let mut other = Bits::default();
        bits.reserve(256);
        other.reserve(256);
        for slot in [130, 3, 64, 3] {
            bits.insert(slot);
        }
        other.insert(1);
        assert!(!other.is_empty());
        assert_eq!(other.pop(), Some(1));
        assert!(other.is_empty());
        bits.insert(1);
        bits.insert(200);
        let popped: Vec<_> = std::iter::from_fn(|| bits.pop()).collect();
        assert_eq!(popped, vec![1, 3, 64, 130, 200]);
        bits.insert(5);
        assert_eq!(bits.pop(), Some(5));
        assert_eq!(bits.pop(), None);
    }
}
