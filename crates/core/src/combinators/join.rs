//! The driver of the combinators that take all their futures at once (`gather` and its forms,
//! `race`, `race_ok`): the futures are kept in place in one pinned block, each next to its
//! output, and woken precisely without paying for it when nobody waits.
//!
//! - **One allocation for the futures.** They are moved once into a [`PinnedSlots`] block of
//!   [`MaybeDone`] cells; a finished future is dropped in place and its output stored in its
//!   cell, so gathering needs one more allocation, the output vector.
//! - **Parent waker first.** Every future is first polled with the combinator's own waker
//!   (the next.js trick). A future that is ready at once never needs a waker of its own.
//!   One exception: with 33 to [`OWN_AT_SECOND_POLL`] futures, if the first one is pending,
//!   the block of slot wakers is made at once and the others are polled with their own
//!   wakers from their first poll (a first future that waits predicts others that do; a
//!   gather of futures that finish one at a time then polls each twice, not three times).
//! - **Own waker after that.** A future that returned `Pending` is polled on the combinator's
//!   next call with its own slot waker: one [`SlotWakers`] block holds every slot's waker
//!   (allocated once, the first time a future needs one), so a slot waker costs no allocation
//!   of its own, and a future that yields once finishes at that second poll without ever
//!   waking its slot. Above [`OWN_AT_SECOND_POLL`] futures, the second poll is with the
//!   parent's waker again and the slot waker comes at the third (a large block is not worth
//!   making for futures that merely yield once). From then on a future is polled only when
//!   its waker fires, so one wake costs `O(1)` however many futures wait, and every future is
//!   polled at most three times without its waker having fired: waking futures one at a time
//!   stays linear in their number.
//! - **Few futures: no bookkeeping.** Up to [`SMALL`] futures are all polled with the
//!   parent's waker on every call, without lists or slot wakers.
//! - **Fair.** One call polls each future at most once, so a future that needs `k` wakes
//!   finishes on the `k + 1`-th call, whichever its position: `race` is won by the future that
//!   needs the fewest.

use std::future::Future;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use futures::future::MaybeDone;

use super::pinned::{PinnedCells, PinnedSlots, Slots};
use super::wakers::SlotWakers;

/// Up to this many futures, every call polls each unfinished future with the parent's waker
/// (as `futures::join_all` does below 30): cheaper than any bookkeeping at that size, and
/// still `O(1)` per future per call.
const SMALL: usize = 32;

/// Up to this many futures, one that is pending at its first poll is polled with its slot
/// waker at the second. With more, the second poll is with the parent's waker too and the
/// slot waker comes at the third: the block of slot wakers (32 bytes a slot) would then be
/// larger than 64 KiB, and allocating it for futures that merely yield once cost more than
/// the extra poll saves (glibc serves such blocks with `mmap`, and each one page-faults
/// afresh: `gather` of 10,000 yield-once futures took 3× the in-place loop's time with the
/// slot waker at the second poll, against 1.1× with it at the third).
const OWN_AT_SECOND_POLL: usize = 2048;

/// The slot wakers, made once a future needs one.
struct Own {
    wakers: SlotWakers,
    /// The woken slots of this poll.
    woken: Vec<usize>,
}

/// Futures polled together until they finish or the caller stops, in a block of cells of
/// their own (`C` the default) or in cells lent by a gather's input block.
pub(crate) struct Join<F: Future, C = PinnedSlots<MaybeDone<F>>> {
    cells: C,
    /// Slots polled once with the parent's waker and pending: polled with it again on the
    /// next call.
    parent: Vec<usize>,
    /// Slots polled twice with the parent's waker and pending: polled with their own waker on
    /// the next call.
    promote: Vec<usize>,
    own: Option<Own>,
    /// How many futures have not finished.
    remaining: usize,
    started: bool,
    /// The first future was polled once with the parent's waker before the join, and was
    /// pending: the first pass does not poll it again.
    head_pending: bool,
    /// The futures are in `cells`, which carries their auto traits.
    _futures: PhantomData<fn(F)>,
}

impl<F: Future> Join<F> {
    /// The futures of `futures`, not yet polled.
    pub(crate) fn new(futures: impl Iterator<Item = F>) -> Self {
        Self::with_cells(
            PinnedSlots::new(futures.map(MaybeDone::Future).collect()),
            false,
        )
    }

    /// Every output in input order, once all futures have finished and none was taken; the
    /// vector reuses the futures' block when the output's layout allows.
    ///
    /// A vector that reuses the block keeps its capacity, the block's size in outputs; if that
    /// is more than twice the outputs (futures much larger than their outputs), the vector is
    /// shrunk, so a gather never returns much more memory than its outputs take.
    pub(crate) fn into_outputs(self) -> Vec<F::Output> {
        shrunk(
            self.cells
                .into_outputs()
                .expect("every future has finished"),
        )
    }
}

/// `outputs`, shrunk if its block has room for more than twice as many (futures much larger
/// than their outputs), so that a gather never returns much more memory than its outputs take.
pub(crate) fn shrunk<T>(mut outputs: Vec<T>) -> Vec<T> {
    if outputs.capacity() / 2 > outputs.len() {
        outputs.shrink_to_fit();
    }
    outputs
}

impl<'a, F: Future> Join<F, PinnedCells<'a, MaybeDone<F>>> {
    /// The cells lent by a gather's input block, of which the first was polled once with the
    /// parent's waker and was pending (the first call treats it as polled; at least one
    /// cell needed). The outputs stay in the cells, for the block to collect.
    pub(crate) fn in_place(cells: PinnedCells<'a, MaybeDone<F>>) -> Self {
        assert!(cells.len() > 0, "a polled first future");
        Self::with_cells(cells, true)
    }
}

impl<F: Future, C: Slots<MaybeDone<F>>> Join<F, C> {
    fn with_cells(cells: C, head_pending: bool) -> Self {
        Join {
            remaining: cells.len(),
            cells,
            parent: Vec::new(),
            promote: Vec::new(),
            own: None,
            started: false,
            head_pending,
            _futures: PhantomData,
        }
    }

    /// How many futures there are.
    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    /// Polls the futures that may progress. `Ready(None)` once every future has finished;
    /// `Ready(Some(index))` as soon as future `index` finishes with an output for which
    /// `stop` returns true (the others are then left as they are, and the join must not be
    /// polled again). The outputs stay in their cells until taken with [`take`](Self::take).
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut stop: impl FnMut(&F::Output) -> bool,
    ) -> Poll<Option<usize>> {
        if !self.started {
            self.started = true;
            let len = self.cells.len();
            let mut first = 0;
            let head_pending = self.head_pending;
            if len > SMALL && len <= OWN_AT_SECOND_POLL {
                let mut cell = self.cells.get_mut(0);
                if head_pending || cell.as_mut().poll(cx).is_pending() {
                    // A first future that waits predicts others that do: the slot wakers are
                    // made now, and the rest polled with theirs from the start.
                    let own = self.own.insert(Own {
                        wakers: SlotWakers::new(len, cx.waker()),
                        woken: Vec::new(),
                    });
                    self.promote.push(0);
                    for index in 1..len {
                        if Self::poll_own(&mut self.cells, &own.wakers, index) {
                            self.remaining -= 1;
                            if Self::stops(&mut self.cells, index, &mut stop) {
                                return Poll::Ready(Some(index));
                            }
                        }
                    }
                    first = len;
                } else {
                    self.remaining -= 1;
                    if cell.output_mut().is_some_and(|output| stop(output)) {
                        return Poll::Ready(Some(0));
                    }
                    first = 1;
                }
            } else if head_pending {
                // Pending at the poll before the join: on to its second poll.
                first = 1;
                if len > SMALL {
                    self.parent.reserve_exact(len);
                    self.parent.push(0);
                }
            }
            for index in first..len {
                let mut cell = self.cells.get_mut(index);
                if cell.as_mut().poll(cx).is_pending() {
                    if len <= SMALL {
                        continue;
                    }
                    // Second poll with the slot's waker, or, with many futures, with the
                    // parent's again (see `OWN_AT_SECOND_POLL`).
                    let next = if len <= OWN_AT_SECOND_POLL {
                        &mut self.promote
                    } else {
                        &mut self.parent
                    };
                    if next.capacity() == 0 {
                        // Room for every future left, so the list never grows.
                        next.reserve_exact(len - index);
                    }
                    next.push(index);
                    continue;
                }
                self.remaining -= 1;
                if cell.output_mut().is_some_and(|output| stop(output)) {
                    return Poll::Ready(Some(index));
                }
            }
        } else if self.cells.len() <= SMALL {
            // Few futures: poll every unfinished one with the parent's waker, no lists.
            for index in 0..self.cells.len() {
                let mut cell = self.cells.get_mut(index);
                if !matches!(&*cell, MaybeDone::Future(_)) || cell.as_mut().poll(cx).is_pending() {
                    continue;
                }
                self.remaining -= 1;
                if cell.output_mut().is_some_and(|output| stop(output)) {
                    return Poll::Ready(Some(index));
                }
            }
        } else {
            if let Some(own) = &mut self.own {
                own.wakers.register(cx.waker());
                own.wakers.take_woken(&mut own.woken);
                for &index in &own.woken {
                    if Self::poll_own(&mut self.cells, &own.wakers, index) {
                        self.remaining -= 1;
                        if Self::stops(&mut self.cells, index, &mut stop) {
                            return Poll::Ready(Some(index));
                        }
                    }
                }
            }
            if !self.promote.is_empty() {
                // Third poll: with the slot's own waker, from which on the future is polled
                // only when it fires.
                let len = self.cells.len();
                let own = self.own.get_or_insert_with(|| Own {
                    wakers: SlotWakers::new(len, cx.waker()),
                    woken: Vec::new(),
                });
                for &index in &self.promote {
                    if Self::poll_own(&mut self.cells, &own.wakers, index) {
                        self.remaining -= 1;
                        if Self::stops(&mut self.cells, index, &mut stop) {
                            return Poll::Ready(Some(index));
                        }
                    }
                }
                self.promote.clear();
            }
            if !self.parent.is_empty() {
                // Second poll: with the parent's waker again, so that a future that yields
                // once finishes without a slot waker (nor the block of them).
                for &index in &self.parent {
                    let mut cell = self.cells.get_mut(index);
                    if cell.as_mut().poll(cx).is_pending() {
                        if self.promote.capacity() == 0 {
                            self.promote.reserve_exact(self.parent.len());
                        }
                        self.promote.push(index);
                        continue;
                    }
                    self.remaining -= 1;
                    if cell.output_mut().is_some_and(|output| stop(output)) {
                        return Poll::Ready(Some(index));
                    }
                }
                self.parent.clear();
            }
        }
        if self.remaining == 0 {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// Whether the caller wants to stop at the output of the finished future `index`.
    fn stops(cells: &mut C, index: usize, stop: &mut impl FnMut(&F::Output) -> bool) -> bool {
        match cells.get_mut(index).output_mut() {
            Some(output) => stop(output),
            None => false,
        }
    }

    /// A poll with the slot's own waker; whether the future finished now. A stale wake of a
    /// finished future polls nothing.
    fn poll_own(cells: &mut C, wakers: &SlotWakers, index: usize) -> bool {
        let mut cell = cells.get_mut(index);
        let MaybeDone::Future(_) = &*cell else {
            return false;
        };
        cell.as_mut()
            .poll(&mut Context::from_waker(&wakers.polling(index)))
            .is_ready()
    }

    /// The output of future `index`, once; `None` if it has not finished or was taken.
    pub(crate) fn take(&mut self, index: usize) -> Option<F::Output> {
        self.cells.get_mut(index).take_output()
    }

    /// Every output in input order, once all futures have finished.
    pub(crate) fn take_all(&mut self) -> impl ExactSizeIterator<Item = F::Output> + '_ {
        (0..self.cells.len()).map(|index| self.take(index).expect("every future has finished"))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::pin::Pin;
    use std::rc::Rc;

    use futures::future::poll_fn;

    use super::*;
    use crate::combinators::test_support::chain;

    #[test]
    fn a_ready_first_future_keeps_the_parent_waker_first() {
        // The first future is ready at once; the others wait one at a time, and get their
        // slot wakers at their second poll.
        let futures = std::iter::once(
            Box::pin(futures::future::ready(100_usize)) as Pin<Box<dyn Future<Output = usize>>>
        )
        .chain(
            chain(99)
                .into_iter()
                .map(|f| Box::pin(f) as Pin<Box<dyn Future<Output = usize>>>),
        );
        let mut join = Join::new(futures);
        futures::executor::block_on(poll_fn(|cx| join.poll(cx, |_| false).map(|_| ())));
        let mut expected = vec![100];
        expected.extend(0..99);
        assert_eq!(join.take_all().collect::<Vec<_>>(), expected);
        assert!(join.own.is_some());
    }

    #[test]
    fn outputs_reuse_the_block_without_keeping_much_more_than_they_need() {
        // Ready futures of 16 bytes with 8-byte outputs: the vector is the block itself.
        let mut join = Join::new((0..100_usize).map(std::future::ready));
        futures::executor::block_on(poll_fn(|cx| join.poll(cx, |_| false).map(|_| ())));
        let outputs = join.into_outputs();
        assert_eq!(outputs, (0..100).collect::<Vec<_>>());
        assert!(outputs.capacity() <= 200);
        // Futures of 256 bytes with 1-byte outputs: shrunk to the outputs.
        let mut join = Join::new((0..100_u8).map(|i| {
            let state = [u64::from(i); 32];
            poll_fn(move |_| Poll::Ready(state[31] as u8))
        }));
        futures::executor::block_on(poll_fn(|cx| join.poll(cx, |_| false).map(|_| ())));
        let outputs = join.into_outputs();
        assert_eq!(outputs, (0..100).collect::<Vec<_>>());
        assert!(outputs.capacity() <= 200, "capacity {}", outputs.capacity());
    }

    #[test]
    fn many_futures_get_their_slot_waker_at_the_third_poll() {
        let n = OWN_AT_SECOND_POLL + 100;
        let polls = Rc::new(RefCell::new(0_usize));
        let counted = chain(n).into_iter().map(|f| {
            let polls = Rc::clone(&polls);
            let mut f = Box::pin(f);
            poll_fn(move |cx| {
                *polls.borrow_mut() += 1;
                f.as_mut().poll(cx)
            })
        });
        let mut join = Join::new(counted);
        futures::executor::block_on(poll_fn(|cx| join.poll(cx, |_| false).map(|_| ())));
        assert_eq!(
            join.take_all().collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>()
        );
        // Three passes, then one poll per wake.
        assert!(*polls.borrow() <= 4 * n, "{} polls", polls.borrow());
    }

    #[test]
    fn one_at_a_time_wakes_poll_each_future_a_bounded_number_of_times() {
        let polls = Rc::new(RefCell::new(0_usize));
        let counted = chain(100).into_iter().map(|f| {
            let polls = Rc::clone(&polls);
            let mut f = Box::pin(f);
            poll_fn(move |cx| {
                *polls.borrow_mut() += 1;
                f.as_mut().poll(cx)
            })
        });
        let mut join = Join::new(counted);
        let mut driver_polls = 0;
        futures::executor::block_on(poll_fn(|cx| {
            driver_polls += 1;
            join.poll(cx, |_| false).map(|_| ())
        }));
        assert_eq!(
            join.take_all().collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        // First pass 100, second pass (own wakers) 99, then one poll per wake.
        assert!(*polls.borrow() <= 3 * 100, "{} polls", polls.borrow());
        assert!(driver_polls <= 101, "{driver_polls} driver polls");
    }
}
