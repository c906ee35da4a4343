//! A fixed-length block of pinned values, each reachable as `Pin<&mut T>`: how the combinators
//! keep many futures in place in one allocation instead of one `Box` per future.
//!
//! Safe Rust can pin a whole boxed slice (`Pin<Box<[T]>>`) but cannot reach one element of it
//! as `Pin<&mut T>`. Boxing every future instead cost one allocation and one free per future,
//! which made `gather` of 10,000 ready futures allocate 20,006 times and run 213 times slower
//! than an in-place poll loop (docs/performance.md, "Combinators (T1–T5)"). The one `unsafe`
//! block below is that element projection; it is covered by the tests at the end of this file,
//! which run under miri (`cargo +nightly miri test -p sheepdog-core --lib pinned`).

#![allow(
    unsafe_code,
    reason = "pin projection to one element of a pinned slice; see the module documentation"
)]

use std::future::Future;
use std::pin::Pin;

use futures::future::MaybeDone;

/// `len` values, pinned in one heap block for as long as the block lives.
///
/// The block never grows, shrinks or reorders, and hands out its elements only pinned, so an
/// element, once pinned, stays at its address until it is dropped in place (by `Pin::set` or
/// when the block is dropped).
pub(crate) struct PinnedSlots<T> {
    slots: Pin<Box<[T]>>,
}

impl<T> PinnedSlots<T> {
    /// Pins the values of `values` in place (no copy when the vector is exactly full).
    pub(crate) fn new(values: Vec<T>) -> Self {
        PinnedSlots {
            slots: Box::into_pin(values.into_boxed_slice()),
        }
    }

    /// How many slots there are.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Slot `index`, pinned.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub(crate) fn get_mut(&mut self, index: usize) -> Pin<&mut T> {
        // SAFETY: `map_unchecked_mut` requires that the value behind the returned pointer is
        // never moved while pinned. The slice lives in a `Box` that is itself pinned and
        // private to this type, which never exposes it unpinned, never resizes, reallocates
        // or reorders it, and never moves an element out (the only way to change an element
        // is `Pin::set` on the returned reference, which drops the old value in place). When
        // the block is dropped, `Box<[T]>` drops every element in place before freeing the
        // memory, so the drop guarantee of `Pin` holds too. Indexing panics rather than
        // producing an out-of-bounds reference.
        unsafe {
            self.slots
                .as_mut()
                .map_unchecked_mut(|slots| &mut slots[index])
        }
    }

    /// Slot `index`, shared.
    pub(crate) fn get(&self, index: usize) -> &T {
        &self.slots[index]
    }
}

impl<F: Future> PinnedSlots<MaybeDone<F>> {
    /// Every output in slot order, moved out of the block, if every cell holds one (`None`,
    /// and the block dropped in place, if not). The returned vector reuses the block's memory
    /// when the output's size and alignment allow it (the standard library's in-place
    /// collection), so gathering ready futures allocates nothing beyond their input.
    pub(crate) fn into_outputs(self) -> Option<Vec<F::Output>> {
        if !self
            .slots
            .iter()
            .all(|cell| matches!(cell, MaybeDone::Done(_)))
        {
            return None;
        }
        // SAFETY: `Pin::into_inner_unchecked` requires that nothing pinned is moved or left
        // undropped. Every cell is `MaybeDone::Done`: its future was dropped in place when it
        // finished (`MaybeDone::poll` replaces the future with its output through
        // `Pin::set`), and what the cell holds now, the output, is not structurally pinned
        // (`MaybeDone::take_output` moves it out of a pinned cell the same way). So no value
        // that relies on its address is left in the block, and moving the cells is sound.
        let cells = unsafe { Pin::into_inner_unchecked(self.slots) };
        Some(
            cells
                .into_vec()
                .into_iter()
                .map(|cell| match cell {
                    MaybeDone::Done(output) => output,
                    MaybeDone::Future(_) | MaybeDone::Gone => {
                        unreachable!("every cell was checked to hold an output")
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::rc::Rc;
    use std::task::{Context, Poll};

    use futures::future::MaybeDone;
    use futures::task::noop_waker_ref;

    use super::PinnedSlots;

    /// Records its drop, so the tests can check that every element is dropped exactly once.
    struct DropCount(Rc<Cell<usize>>);

    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// A self-referential (`!Unpin`) future: it borrows its own local across an await, so
    /// moving it after the first poll would leave a dangling pointer that miri reports.
    async fn self_borrowing(n: usize, drops: Rc<Cell<usize>>) -> usize {
        let _guard = DropCount(drops);
        let local = [n; 4];
        let borrowed = &local;
        crate::runtime::yield_now().await;
        borrowed.iter().sum()
    }

    #[test]
    fn pinned_futures_are_polled_in_place_and_dropped_once() {
        let drops = Rc::new(Cell::new(0));
        let futures = (0..5)
            .map(|n| MaybeDone::Future(self_borrowing(n, Rc::clone(&drops))))
            .collect();
        let mut slots = PinnedSlots::new(futures);
        assert_eq!(slots.len(), 5);
        let mut cx = Context::from_waker(noop_waker_ref());
        for round in 0..2 {
            for i in 0..slots.len() {
                let ready = slots.get_mut(i).poll(&mut cx).is_ready();
                assert_eq!(ready, round == 1);
            }
        }
        assert_eq!(drops.get(), 5, "a finished future is dropped in place");
        let outputs: Vec<_> = (0..5).map(|i| slots.get_mut(i).take_output()).collect();
        assert_eq!(outputs, (0..5).map(|n| Some(4 * n)).collect::<Vec<_>>());
        assert!(matches!(slots.get(0), MaybeDone::Gone));
    }

    #[test]
    fn outputs_move_out_only_once_every_future_has_finished() {
        let drops = Rc::new(Cell::new(0));
        let futures = (0..4)
            .map(|n| MaybeDone::Future(self_borrowing(n, Rc::clone(&drops))))
            .collect();
        let mut slots = PinnedSlots::new(futures);
        let mut cx = Context::from_waker(noop_waker_ref());
        for i in 0..4 {
            assert!(slots.get_mut(i).poll(&mut cx).is_pending());
        }
        // Two of four finish: the block is not given up, and the pending futures are
        // dropped in place with it.
        for i in 0..2 {
            assert!(slots.get_mut(i).poll(&mut cx).is_ready());
        }
        assert_eq!(slots.into_outputs(), None);
        assert_eq!(drops.get(), 4);

        let futures = (0..4)
            .map(|n| MaybeDone::Future(self_borrowing(n, Rc::clone(&drops))))
            .collect();
        let mut slots = PinnedSlots::new(futures);
        for _ in 0..2 {
            for i in 0..4 {
                let _ = slots.get_mut(i).poll(&mut cx);
            }
        }
        assert_eq!(drops.get(), 8);
        assert_eq!(slots.into_outputs(), Some(vec![0, 4, 8, 12]));
        // Outputs with drop glue, and a taken one: `None`, every output dropped once.
        let outputs = Rc::new(Cell::new(0));
        let cells: Vec<MaybeDone<std::future::Ready<DropCount>>> = (0..3)
            .map(|_| MaybeDone::Done(DropCount(Rc::clone(&outputs))))
            .collect();
        let mut slots = PinnedSlots::new(cells);
        drop(slots.get_mut(1).take_output());
        assert_eq!(outputs.get(), 1);
        assert!(slots.into_outputs().is_none());
        assert_eq!(outputs.get(), 3);
        let cells: Vec<MaybeDone<std::future::Ready<DropCount>>> = (0..3)
            .map(|_| MaybeDone::Done(DropCount(Rc::clone(&outputs))))
            .collect();
        let moved = PinnedSlots::new(cells).into_outputs().expect("all done");
        assert_eq!(moved.len(), 3);
        assert_eq!(outputs.get(), 3, "moved, not dropped");
        drop(moved);
        assert_eq!(outputs.get(), 6);
    }

    #[test]
    fn dropping_the_block_drops_pending_futures_in_place() {
        let drops = Rc::new(Cell::new(0));
        let futures = (0..3)
            .map(|n| Some(self_borrowing(n, Rc::clone(&drops))))
            .collect();
        let mut slots = PinnedSlots::new(futures);
        let mut cx = Context::from_waker(noop_waker_ref());
        for i in 0..3 {
            let future = slots.get_mut(i).as_pin_mut().expect("occupied");
            assert_eq!(future.poll(&mut cx), Poll::Pending);
        }
        // Replace one in place, as the bounded combinators reuse a slot.
        slots
            .get_mut(1)
            .set(Some(self_borrowing(9, Rc::clone(&drops))));
        assert_eq!(drops.get(), 1);
        let future = slots.get_mut(1).as_pin_mut().expect("occupied");
        assert_eq!(future.poll(&mut cx), Poll::Pending);
        drop(slots);
        assert_eq!(drops.get(), 4);
    }
}
