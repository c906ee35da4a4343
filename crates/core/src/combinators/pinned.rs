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
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::pin::Pin;
use std::task::{Context, Poll};

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

/// Futures polled in their input vector itself, each finished one's output written over the
/// futures before it, so that gathering futures that finish at once makes one pass over their
/// block and returns the outputs in it (no cell per future, no second block).
///
/// The block is the input vector's allocation; it holds, in order:
///
/// - `done` outputs, packed (output `i` at byte `i * size_of::<F::Output>()`), in the room of
///   the first `done` futures, every one of which has finished and been dropped in place;
/// - the futures `live..end`, in their slots (slot `i` at byte `i * size_of::<F>()`), pinned
///   from their first poll on (`live` is `done`, or `done + 1` while the future `done` is being
///   dropped);
/// - from `end` to `len`, slots whose futures were moved out by [`split`](Self::split).
///
/// Output `i` lies in bytes `i * so .. (i + 1) * so`, inside the first `i + 1` slots as long as
/// `so <= sf` ([`FITS`](Self::FITS)): an output never overwrites a future that has not
/// finished. Dropping the block drops the outputs and the live futures, each once, in place.
pub(crate) struct InPlace<F: Future> {
    /// The allocation, with its length kept at 0 so that it only frees the memory; the
    /// elements are managed by the indices below.
    buf: Vec<F>,
    len: usize,
    done: usize,
    live: usize,
    end: usize,
    _outputs: PhantomData<F::Output>,
}

impl<F: Future> InPlace<F> {
    /// Whether the outputs can be packed over their futures: an output no larger than its
    /// future, aligned no more strictly, and not zero-sized.
    pub(crate) const FITS: bool = size_of::<F::Output>() != 0
        && size_of::<F::Output>() <= size_of::<F>()
        && align_of::<F::Output>() <= align_of::<F>();

    /// Takes over the futures of `futures`, not yet polled.
    ///
    /// # Panics
    ///
    /// If the layouts do not [fit](Self::FITS) (a bug of the caller).
    pub(crate) fn new(mut futures: Vec<F>) -> Self {
        assert!(Self::FITS, "outputs must fit in their futures' slots");
        let len = futures.len();
        // SAFETY: the length only shrinks to 0, so the elements are leaked by the vector (it
        // will never drop them) and from now on owned through the indices of `InPlace`.
        unsafe { futures.set_len(0) };
        InPlace {
            buf: futures,
            len,
            done: 0,
            live: 0,
            end: len,
            _outputs: PhantomData,
        }
    }

    fn slot(&mut self, index: usize) -> *mut F {
        debug_assert!(index < self.len);
        // SAFETY: `index < len <= capacity`, inside the allocation.
        unsafe { self.buf.as_mut_ptr().add(index) }
    }

    fn output_slot(&mut self, index: usize) -> *mut F::Output {
        debug_assert!(index < self.len);
        // SAFETY: `index * so < len * sf` (`FITS`), inside the allocation, and aligned because
        // the block is aligned for `F`, whose alignment is a multiple of the output's.
        unsafe { self.buf.as_mut_ptr().cast::<F::Output>().add(index) }
    }

    /// Polls the futures in order from the first unfinished one while they finish, packing
    /// each output. `Ready` once every future has finished; `Pending` as soon as one does
    /// not (it is then the first unfinished future, see [`split`](Self::split)).
    pub(crate) fn poll_prefix(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        debug_assert_eq!(self.end, self.len, "not split");
        while self.done < self.len {
            let index = self.done;
            let slot = self.slot(index);
            // SAFETY: the future `index` is live (`live == done == index`) and stays at this
            // address until it is dropped in place: the block never moves or reallocates
            // while the futures in it live, and its elements are reached only through this
            // type. If the poll panics, nothing has changed and `Drop` drops it in place.
            let output = match unsafe { Pin::new_unchecked(&mut *slot) }.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(output) => output,
            };
            self.drop_future(index);
            // SAFETY: bytes `index * so .. (index + 1) * so` lie in slots `0..=index`, all of
            // whose futures have been dropped, and hold no output (`done == index`).
            unsafe { self.output_slot(index).write(output) };
            self.done = index + 1;
        }
        Poll::Ready(())
    }

    /// Drops the future `index == done` in place; if its drop panics, it is not dropped
    /// again.
    fn drop_future(&mut self, index: usize) {
        debug_assert_eq!((self.done, self.live), (index, index));
        self.live = index + 1;
        let slot = self.slot(index);
        // SAFETY: the future is live and is no longer counted as such (`live` moved past it),
        // so it is dropped exactly once, in place, as `Pin` requires.
        unsafe { std::ptr::drop_in_place(slot) };
    }

    /// The first unfinished future, pinned where it is, and the futures after it, moved out
    /// one by one (they have never been polled; [`poll_prefix`](Self::poll_prefix) stops at
    /// the first pending one). Whatever the iterator does not yield is dropped with it.
    pub(crate) fn split(&mut self) -> (Pin<&mut F>, Unpolled<'_, F>) {
        assert!(
            self.done < self.len && self.end == self.len,
            "split once, while unfinished"
        );
        let head = self.done;
        self.end = head + 1;
        let slot = self.slot(head);
        let rest = Unpolled {
            // SAFETY: `head + 1 <= len`, at most one past the end of the futures.
            next: unsafe { slot.add(1) },
            // SAFETY: `len <= capacity`.
            end: unsafe { self.buf.as_mut_ptr().add(self.len) },
            _block: PhantomData,
        };
        // SAFETY: the future `head` is live and pinned in place (see `poll_prefix`); the
        // reference lives as long as the borrow of the block, which cannot move meanwhile,
        // and the iterator reaches only slots after it.
        (unsafe { Pin::new_unchecked(&mut *slot) }, rest)
    }

    /// Once the first unfinished future has finished (its output first in `rest`) and so have
    /// the ones after it (their outputs the rest of `rest`, in order): every output in input
    /// order, in the block when it holds earlier outputs, else in `rest`'s own vector.
    ///
    /// # Panics
    ///
    /// If `rest` does not hold exactly the outputs of the futures [`split`](Self::split) off.
    pub(crate) fn finish(mut self, rest: Vec<F::Output>) -> Vec<F::Output> {
        assert!(
            self.end == self.done + 1 && rest.len() == self.len - self.done,
            "one output for each future split off"
        );
        self.drop_future(self.done);
        if self.done == 0 {
            // No output before: `rest` is every output; the block is freed empty.
            self.live = 0;
            self.end = 0;
            return rest;
        }
        let mut rest = std::mem::ManuallyDrop::new(rest);
        let at = self.output_slot(self.done);
        // SAFETY: the bytes from output `done` to output `len` lie in slots `done..len`, none
        // of which holds a future now (dropped in place or moved out), so they are free and
        // do not overlap `rest`'s allocation. The outputs are moved (the vector is freed
        // without dropping them, below), so each is still dropped once.
        unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), at, rest.len()) };
        self.done = self.len;
        self.live = self.len;
        self.end = self.len;
        // SAFETY: the moved outputs are not dropped by the vector, only its memory freed.
        unsafe {
            rest.set_len(0);
            std::mem::ManuallyDrop::drop(&mut rest);
        }
        self.into_outputs()
    }

    /// Every output in input order, once every future has finished; the block becomes the
    /// vector when the alignments are the same and its size in bytes is a whole number of
    /// outputs, else the outputs are moved into a new one.
    ///
    /// # Panics
    ///
    /// If a future has not finished.
    pub(crate) fn into_outputs(self) -> Vec<F::Output> {
        assert!(self.done == self.len, "every future has finished");
        let this = std::mem::ManuallyDrop::new(self);
        let len = this.len;
        // SAFETY: `this` is never dropped; its block is taken out of it once, here.
        let mut buf = unsafe { std::ptr::read(&this.buf) };
        let bytes = buf.capacity() * size_of::<F>();
        let ptr = buf.as_mut_ptr().cast::<F::Output>();
        if align_of::<F::Output>() == align_of::<F>() && bytes % size_of::<F::Output>() == 0 {
            let _forgotten = std::mem::ManuallyDrop::new(buf);
            // SAFETY: the allocation was made for `buf.capacity()` values of `F`: as many
            // bytes as `bytes / so` outputs take, with the outputs' alignment (checked just
            // above), so it is freed with the same layout; its first `len` outputs are initialized (`done ==
            // len`). The vector of futures is forgotten, not freed.
            unsafe { Vec::from_raw_parts(ptr, len, bytes / size_of::<F::Output>()) }
        } else {
            let mut outputs = Vec::with_capacity(len);
            // SAFETY: the `len` outputs are moved into the new vector and the block is then
            // freed without dropping anything (its length is 0).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, outputs.as_mut_ptr(), len);
                outputs.set_len(len);
            }
            drop(buf);
            outputs
        }
    }
}

impl<F: Future> Drop for InPlace<F> {
    fn drop(&mut self) {
        let (done, live, end) = (self.done, self.live, self.end);
        // Set before dropping, so that a panicking drop leaks the rest rather than dropping
        // anything twice.
        self.done = 0;
        self.live = 0;
        self.end = 0;
        // SAFETY: outputs `0..done` and futures `live..end` are initialized and owned here;
        // each is dropped once, in place (the futures may be pinned).
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.buf.as_mut_ptr().cast::<F::Output>(),
                done,
            ));
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.buf.as_mut_ptr().add(live),
                end - live,
            ));
        }
    }
}

/// The futures after the first unfinished one of an [`InPlace`] block, moved out one by one;
/// the ones not taken are dropped in place with the iterator.
pub(crate) struct Unpolled<'a, F> {
    next: *mut F,
    end: *mut F,
    _block: PhantomData<&'a mut F>,
}

impl<F> Iterator for Unpolled<'_, F> {
    type Item = F;

    fn next(&mut self) -> Option<F> {
        if self.next == self.end {
            return None;
        }
        // SAFETY: `next < end`: an initialized, never-polled future owned by the iterator,
        // read once (the pointer moves past it).
        unsafe {
            let future = self.next.read();
            self.next = self.next.add(1);
            Some(future)
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = if size_of::<F>() == 0 {
            0
        } else {
            // SAFETY: both pointers are in the same block, `next <= end`.
            unsafe { self.end.offset_from(self.next) }.unsigned_abs()
        };
        (len, Some(len))
    }
}

impl<F> ExactSizeIterator for Unpolled<'_, F> {}

impl<F> Drop for Unpolled<'_, F> {
    fn drop(&mut self) {
        let len = self.size_hint().0;
        // SAFETY: the futures `next..end` are initialized, owned here and never polled.
        unsafe { std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.next, len)) };
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

    use std::pin::Pin;

    use super::{InPlace, PinnedSlots};

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

    /// Ready at once with a counted output, or pending at its first poll (then ready); holds
    /// a counted guard either way, and panics at its first poll if told to.
    enum Step {
        Ready,
        PendingOnce,
        Panic,
    }

    fn stepped(
        step: Step,
        n: usize,
        futures: &Rc<Cell<usize>>,
        outputs: &Rc<Cell<usize>>,
    ) -> impl Future<Output = (usize, DropCount)> {
        let guard = DropCount(Rc::clone(futures));
        let outputs = Rc::clone(outputs);
        async move {
            let _guard = guard;
            match step {
                Step::Ready => {}
                Step::PendingOnce => crate::runtime::yield_now().await,
                Step::Panic => panic!("stepped future {n} panics"),
            }
            (n, DropCount(outputs))
        }
    }

    #[test]
    fn in_place_ready_futures_leave_their_outputs_in_the_block() {
        let (futures, outputs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let input: Vec<_> = (0..5)
            .map(|n| stepped(Step::Ready, n, &futures, &outputs))
            .collect();
        let block_ptr = input.as_ptr() as usize;
        let reusable = (input.capacity() * std::mem::size_of_val(&input[0]))
            % std::mem::size_of::<(usize, DropCount)>()
            == 0;
        let mut block = InPlace::new(input);
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(block.poll_prefix(&mut cx).is_ready());
        assert_eq!(futures.get(), 5, "each future dropped once as it finished");
        let gathered = block.into_outputs();
        assert_eq!(
            gathered.as_ptr() as usize == block_ptr,
            reusable,
            "the same block"
        );
        assert_eq!(
            gathered.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..5).collect::<Vec<_>>()
        );
        assert_eq!(outputs.get(), 0);
        drop(gathered);
        assert_eq!(outputs.get(), 5);
    }

    #[test]
    fn in_place_split_and_finish_keep_input_order() {
        let mut cx = Context::from_waker(noop_waker_ref());
        // A finished prefix (outputs moved into the block) and none (`rest` returned as is).
        for prefix in [2, 0] {
            let (futures, outputs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
            let input: Vec<_> = (0..6)
                .map(|n| {
                    let step = if n == prefix {
                        Step::PendingOnce
                    } else {
                        Step::Ready
                    };
                    stepped(step, n, &futures, &outputs)
                })
                .collect();
            let mut block = InPlace::new(input);
            assert!(block.poll_prefix(&mut cx).is_pending());
            assert_eq!(futures.get(), prefix);
            let (mut head, rest) = block.split();
            let rest: Vec<_> = rest.collect();
            assert_eq!(rest.len(), 5 - prefix);
            let mut outs = vec![match head.as_mut().poll(&mut cx) {
                Poll::Ready(output) => output,
                Poll::Pending => panic!("ready at its second poll"),
            }];
            for future in rest {
                match Box::pin(future).as_mut().poll(&mut cx) {
                    Poll::Ready(output) => outs.push(output),
                    Poll::Pending => panic!("ready at once"),
                }
            }
            // (An async block drops its locals as it finishes, the head's too.)
            assert_eq!(futures.get(), 6);
            let gathered = block.finish(outs);
            assert_eq!(futures.get(), 6, "the head dropped once, in the block");
            assert_eq!(
                gathered.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                (0..6).collect::<Vec<_>>()
            );
            assert_eq!(outputs.get(), 0);
            drop(gathered);
            assert_eq!(outputs.get(), 6);
        }
    }

    #[test]
    fn in_place_drops_everything_once_on_panic_and_on_drop() {
        let mut cx = Context::from_waker(noop_waker_ref());
        // A panic in the in-order pass: two outputs and three futures (the panicking one
        // included) are left, each dropped once.
        let (futures, outputs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let steps = [
            Step::Ready,
            Step::Ready,
            Step::Panic,
            Step::Ready,
            Step::PendingOnce,
        ];
        let input: Vec<_> = steps
            .into_iter()
            .enumerate()
            .map(|(n, step)| stepped(step, n, &futures, &outputs))
            .collect();
        let mut block = InPlace::new(input);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = block.poll_prefix(&mut cx);
        }));
        assert!(panicked.is_err());
        drop(block);
        assert_eq!((futures.get(), outputs.get()), (5, 2));

        // Dropped after a split, with the head pending and some moved-out futures not taken:
        // each future and output once.
        let (futures, outputs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let steps = [
            Step::Ready,
            Step::PendingOnce,
            Step::Ready,
            Step::Ready,
            Step::Ready,
        ];
        let input: Vec<_> = steps
            .into_iter()
            .enumerate()
            .map(|(n, step)| stepped(step, n, &futures, &outputs))
            .collect();
        let mut block = InPlace::new(input);
        assert!(block.poll_prefix(&mut cx).is_pending());
        let (_head, mut rest) = block.split();
        drop(rest.next());
        drop(rest);
        assert_eq!(futures.get(), 4);
        drop(block);
        assert_eq!((futures.get(), outputs.get()), (5, 1));
    }

    #[test]
    fn in_place_outputs_move_to_a_new_vector_when_the_block_does_not_fit_them() {
        let mut cx = Context::from_waker(noop_waker_ref());
        // Alignment 8 futures, alignment 1 outputs.
        let input: Vec<Pin<Box<dyn Future<Output = u8>>>> = (0..3_u8)
            .map(|n| Box::pin(std::future::ready(n)) as Pin<Box<dyn Future<Output = u8>>>)
            .collect();
        let mut block = InPlace::new(input);
        assert!(block.poll_prefix(&mut cx).is_ready());
        assert_eq!(block.into_outputs(), vec![0, 1, 2]);
        // 24-byte futures, 16-byte outputs, an odd capacity: 72 bytes are not 16-byte outputs.
        let mut input = Vec::with_capacity(3);
        input.extend((0..3_u64).map(|n| std::future::ready([n; 2])));
        let mut input: Vec<_> = input
            .into_iter()
            .map(|f| {
                let pad = 0_u64;
                let mut f = Some(f);
                futures::future::poll_fn(move |_| {
                    let _ = pad;
                    Poll::Ready(f.take().map(|r| r.into_inner()).expect("once"))
                })
            })
            .collect();
        input.shrink_to(3);
        let mut block = InPlace::new(input);
        assert!(block.poll_prefix(&mut cx).is_ready());
        assert_eq!(block.into_outputs(), vec![[0, 0], [1, 1], [2, 2]]);
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
