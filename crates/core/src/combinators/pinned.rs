//! A fixed-length block of pinned values, each reachable as `Pin<&mut T>`: how the combinators
//! keep many futures in place in one allocation instead of one `Box` per future.
//!
//! Safe Rust can pin a whole boxed slice (`Pin<Box<[T]>>`) but cannot reach one element of it
//! as `Pin<&mut T>`. Boxing every future instead cost one allocation and one free per future,
//! which made `gather` of 10,000 ready futures allocate 20,006 times and run 213 times slower
//! than an in-place poll loop (docs/performance.md, "Combinators (T1–T5)"). The `unsafe`
//! here is that element projection ([`PinnedSlots`], [`PinnedCells`]), the move of finished
//! cells out of a block, and [`InPlace`], which gathers futures in their input vector itself:
//! a future is turned into its cell in its own slot, and outputs are packed over the finished
//! slots, so that `gather` of futures ready at once makes one pass over their block instead of
//! four (1.9× the in-place loop's time before, 1.0× after). All of it is covered by the tests
//! at the end of this file, which run under miri (`cargo +nightly miri test -p sheepdog-core
//! --lib pinned`).

#![allow(
    unsafe_code,
    reason = "pin projection to elements of a pinned block, and gathering in the input's own \
              block; see the module documentation"
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

/// Pinned slots that [`Join`](super::join::Join) can poll: a block of its own
/// ([`PinnedSlots`]) or a stretch of a gather's input block ([`PinnedCells`]).
pub(crate) trait Slots<T> {
    /// How many slots there are.
    fn len(&self) -> usize;
    /// Slot `index`, pinned (panics if out of bounds).
    fn get_mut(&mut self, index: usize) -> Pin<&mut T>;
}

impl<T> Slots<T> for PinnedSlots<T> {
    fn len(&self) -> usize {
        PinnedSlots::len(self)
    }

    fn get_mut(&mut self, index: usize) -> Pin<&mut T> {
        PinnedSlots::get_mut(self, index)
    }
}

/// A pinned slice of slots borrowed from an [`InPlace`] block.
pub(crate) struct PinnedCells<'a, T> {
    slots: Pin<&'a mut [T]>,
}

impl<T> Slots<T> for PinnedCells<'_, T> {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn get_mut(&mut self, index: usize) -> Pin<&mut T> {
        // SAFETY: as in `PinnedSlots::get_mut`: the slice is pinned and reached only through
        // this type, which never moves an element out; the elements are dropped in place by
        // the block that lends them.
        unsafe {
            self.slots
                .as_mut()
                .map_unchecked_mut(|slots| &mut slots[index])
        }
    }
}

/// Futures gathered in their input vector itself: each is turned into a [`MaybeDone`] cell in
/// its own slot just before its first poll, and while every earlier future has finished, its
/// output is packed over the futures before it; gathering futures that finish at once makes
/// one pass over their block and returns the outputs in it (no second block, no pass to move
/// the futures into cells nor one to move the outputs out of them).
///
/// The block is the input vector's allocation; it holds, in order:
///
/// - `done` outputs, packed (output `i` at byte `i * size_of::<F::Output>()`), in the room of
///   the first `done` futures, every one of which has finished;
/// - cells `done..cells` (a cell in the slot of its future, same size and alignment:
///   [`FITS`](Self::FITS)), pinned in place from their first poll on;
/// - futures `cells..len`, never polled.
///
/// Output `i` lies in bytes `i * so .. (i + 1) * so`, inside the first `i + 1` slots as
/// `so <= sf`: packing an output never overwrites a slot still in use. Dropping the block
/// drops the outputs, the cells and the futures, each once, in place.
pub(crate) struct InPlace<F: Future> {
    /// The allocation, its length kept at 0 so that it only frees the memory; the elements
    /// are owned through the indices below.
    buf: Vec<F>,
    len: usize,
    done: usize,
    cells: usize,
    _outputs: PhantomData<F::Output>,
}

impl<F: Future> InPlace<F> {
    /// Whether a future's cell fits its slot exactly (the same size and alignment, as when
    /// `MaybeDone` finds room for its states in the future's own spare values) and its output
    /// can be packed (no larger, no more strictly aligned, not zero-sized).
    pub(crate) const FITS: bool = size_of::<MaybeDone<F>>() == size_of::<F>()
        && align_of::<MaybeDone<F>>() == align_of::<F>()
        && size_of::<F::Output>() != 0
        && size_of::<F::Output>() <= size_of::<F>()
        && align_of::<F::Output>() <= align_of::<F>();

    /// Takes over the futures of `futures`, not yet polled.
    ///
    /// # Panics
    ///
    /// If the layouts do not [fit](Self::FITS) (a bug of the caller).
    pub(crate) fn new(mut futures: Vec<F>) -> Self {
        assert!(
            Self::FITS,
            "cells and outputs must fit in the futures' slots"
        );
        let len = futures.len();
        // SAFETY: the length only shrinks to 0: the vector will never drop the elements,
        // which from now on are owned through the indices of `InPlace`.
        unsafe { futures.set_len(0) };
        InPlace {
            buf: futures,
            len,
            done: 0,
            cells: 0,
            _outputs: PhantomData,
        }
    }

    fn future(&mut self, index: usize) -> *mut F {
        debug_assert!(index < self.len);
        // SAFETY: `index < len <= capacity`, inside the allocation.
        unsafe { self.buf.as_mut_ptr().add(index) }
    }

    fn cell(&mut self, index: usize) -> *mut MaybeDone<F> {
        // Same size and alignment (`FITS`): cell `index` is slot `index`.
        self.future(index).cast()
    }

    fn output(&mut self, index: usize) -> *mut F::Output {
        debug_assert!(index < self.len);
        // SAFETY: `index * so < len * sf` (`FITS`), inside the allocation, and aligned: the
        // block is aligned for `F`, whose alignment is a multiple of the output's.
        unsafe { self.buf.as_mut_ptr().cast::<F::Output>().add(index) }
    }

    /// Turns the futures `cells..to` into cells, in their slots.
    fn make_cells(&mut self, to: usize) {
        while self.cells < to {
            let index = self.cells;
            // SAFETY: the future `index` has never been polled (so moving it is allowed) and
            // is owned here; it is read once and written back at once as a cell in the same
            // slot (`FITS`), and only then counted as a cell; neither step can panic.
            unsafe {
                let future = self.future(index).read();
                self.cell(index).write(MaybeDone::Future(future));
            }
            self.cells = index + 1;
        }
    }

    /// Polls the futures in order from the first unfinished one while they finish, packing
    /// each output. `Ready` once every future has finished; `Pending` as soon as one does not:
    /// every future left is then a cell, for [`cells`](Self::cells).
    pub(crate) fn poll_prefix(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.done < self.len {
            let index = self.done;
            self.make_cells(index + 1);
            let cell = self.cell(index);
            // SAFETY: cell `index` is initialized and stays in this slot until it is dropped
            // in place or, once `Gone`, overwritten by packed outputs: the block never moves
            // or reallocates, and its elements are reached only through this type. If the
            // poll panics, the cell is still counted and `Drop` drops it in place.
            let mut cell = unsafe { Pin::new_unchecked(&mut *cell) };
            if cell.as_mut().poll(cx).is_pending() {
                self.make_cells(self.len);
                return Poll::Pending;
            }
            let output = cell
                .take_output()
                .expect("a finished cell holds its output");
            // SAFETY: bytes `index * so .. (index + 1) * so` lie in slots `0..=index`, whose
            // futures have all finished (cell `index` is now `Gone`, which owns nothing) and
            // hold no output beyond the first `index`.
            unsafe { self.output(index).write(output) };
            self.done = index + 1;
        }
        Poll::Ready(())
    }

    /// The cells of the futures not finished by [`poll_prefix`](Self::poll_prefix), pinned
    /// where they are, the first of them polled once already.
    pub(crate) fn cells(&mut self) -> PinnedCells<'_, MaybeDone<F>> {
        assert_eq!(self.cells, self.len, "every future left is a cell");
        let first = self.cell(self.done);
        // SAFETY: cells `done..len` are initialized and contiguous (slot stride, `FITS`);
        // the slice borrows the block mutably, so nothing else reaches them meanwhile, and
        // they are pinned (never moved, dropped in place by the block).
        let cells = unsafe {
            Pin::new_unchecked(std::slice::from_raw_parts_mut(first, self.len - self.done))
        };
        PinnedCells { slots: cells }
    }

    /// Every output in input order, once every future has finished (the outputs of the
    /// cells packed after the others); the block becomes the vector when the alignments are
    /// the same and its size in bytes is a whole number of outputs, else the outputs are
    /// moved into a new one.
    ///
    /// # Panics
    ///
    /// If a future has not finished, or an output was taken.
    pub(crate) fn into_outputs(mut self) -> Vec<F::Output> {
        while self.done < self.len {
            let index = self.done;
            let cell = self.cell(index);
            // SAFETY: the cell is initialized and owned here; an output is not pinned
            // (`MaybeDone::take_output` moves it out of a pinned cell too), and its future has
            // already been dropped in place.
            let output = unsafe { Pin::new_unchecked(&mut *cell) }
                .take_output()
                .expect("every future has finished");
            // SAFETY: as in `poll_prefix`: the bytes lie in slots `0..=index`, all `Gone` or
            // holding earlier outputs below `index * so`.
            unsafe { self.output(index).write(output) };
            self.done = index + 1;
        }
        let this = std::mem::ManuallyDrop::new(self);
        let len = this.len;
        // SAFETY: `this` is never dropped; its block is taken out of it once, here.
        let mut buf = unsafe { std::ptr::read(&this.buf) };
        let bytes = buf.capacity() * size_of::<F>();
        let ptr = buf.as_mut_ptr().cast::<F::Output>();
        if align_of::<F::Output>() == align_of::<F>() && bytes % size_of::<F::Output>() == 0 {
            let _forgotten = std::mem::ManuallyDrop::new(buf);
            // SAFETY: the allocation was made for `capacity` values of `F`: as many bytes as
            // `bytes / so` outputs take, with the outputs' alignment (checked just above), so
            // it is freed with the same layout; its first `len` outputs are initialized. The
            // vector of futures is forgotten, not freed.
            unsafe { Vec::from_raw_parts(ptr, len, bytes / size_of::<F::Output>()) }
        } else {
            let mut outputs = Vec::with_capacity(len);
            // SAFETY: the `len` outputs are moved into the new vector; the block is then freed
            // without dropping anything (its length is 0).
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
        let (done, cells, len) = (self.done, self.cells, self.len);
        // Forgotten first, so that nothing is ever dropped twice.
        self.done = 0;
        self.cells = 0;
        self.len = 0;
        let base = self.buf.as_mut_ptr();
        // SAFETY: outputs `0..done`, cells `done..cells` and futures `cells..len` are
        // initialized, owned here and forgotten by `self` just above; each run is dropped
        // once, in place (cells may be pinned). Declared last, the outputs are dropped first,
        // then the cells, then the futures; a panic in a drop still drops the rest as it
        // unwinds, as a vector's elements are, so that every pinned cell is dropped before
        // `buf` frees its memory (the `Pin` drop guarantee).
        unsafe {
            let _futures = DropRun::new(base.add(cells), len - cells);
            let _cells = DropRun::new(base.add(done).cast::<MaybeDone<F>>(), cells - done);
            let _outputs = DropRun::new(base.cast::<F::Output>(), done);
        }
    }
}

/// A run of values dropped in place when it goes out of scope, unwinding included.
struct DropRun<T>(*mut [T]);

impl<T> DropRun<T> {
    /// # Safety
    ///
    /// The `len` values at `first` are initialized, owned by the caller, and not used again
    /// once the run is dropped.
    unsafe fn new(first: *mut T, len: usize) -> Self {
        DropRun(std::ptr::slice_from_raw_parts_mut(first, len))
    }
}

impl<T> Drop for DropRun<T> {
    fn drop(&mut self) {
        // SAFETY: by `new`'s contract the values are initialized and owned by this run, which
        // is dropped once.
        unsafe { std::ptr::drop_in_place(self.0) }
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

    use std::marker::PhantomData;

    use super::{InPlace, PinnedSlots, Slots};

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

    /// What a [`Stepped`] future does at its first poll.
    #[derive(Clone, Copy)]
    enum Step {
        Ready,
        PendingOnce,
        Panic,
    }

    /// A hand-written future: ready at once with a counted output, or pending at its first
    /// poll (then ready), or panicking; it holds a counted guard until it finishes or is
    /// dropped. Its `Step` field leaves `MaybeDone` room for its states, so its cell fits its
    /// slot (an async block's does not).
    struct Stepped {
        step: Step,
        n: usize,
        guard: Option<DropCount>,
        output: Option<DropCount>,
    }

    impl Future for Stepped {
        type Output = (usize, DropCount);

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(usize, DropCount)> {
            match self.step {
                Step::Panic => panic!("stepped future {} panics", self.n),
                Step::PendingOnce => {
                    self.step = Step::Ready;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Step::Ready => {
                    self.guard = None;
                    let output = self.output.take().expect("polled after it finished");
                    Poll::Ready((self.n, output))
                }
            }
        }
    }

    /// One [`Stepped`] future a step, numbered in order, and the counts of the drops of their
    /// guards (the futures) and of their outputs.
    fn stepped_input(steps: &[Step]) -> (Vec<Stepped>, Rc<Cell<usize>>, Rc<Cell<usize>>) {
        let (futures, outputs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let input = (steps.iter().enumerate())
            .map(|(n, &step)| Stepped {
                step,
                n,
                guard: Some(DropCount(Rc::clone(&futures))),
                output: Some(DropCount(Rc::clone(&outputs))),
            })
            .collect();
        (input, futures, outputs)
    }

    /// Asserts that `gathered` holds the `count` outputs of a [`stepped_input`] in input
    /// order, none of them dropped yet, and that dropping it drops each once.
    #[track_caller]
    fn assert_outputs_in_order(
        gathered: Vec<(usize, DropCount)>,
        count: usize,
        outputs: &Cell<usize>,
    ) {
        assert_eq!(
            gathered.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..count).collect::<Vec<_>>()
        );
        assert_eq!(outputs.get(), 0);
        drop(gathered);
        assert_eq!(outputs.get(), count);
    }

    /// Takes over `input` and runs the in-order pass, which must panic; returns the block as
    /// the panic left it.
    #[track_caller]
    fn block_whose_prefix_panicked<F: Future>(input: Vec<F>) -> InPlace<F> {
        let mut block = InPlace::new(input);
        let mut cx = Context::from_waker(noop_waker_ref());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = block.poll_prefix(&mut cx);
        }));
        assert!(panicked.is_err(), "the in-order pass did not panic");
        block
    }

    /// A future of alignment `A`'s, ready at once with `value`.
    struct ReadyIn<A, T> {
        step: Step,
        _align: A,
        value: T,
    }

    impl<A: Unpin, T: Copy + Unpin> Future for ReadyIn<A, T> {
        type Output = T;

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<T> {
            assert!(matches!(self.step, Step::Ready), "polled once");
            self.step = Step::Panic;
            Poll::Ready(self.value)
        }
    }

    #[test]
    fn in_place_ready_futures_leave_their_outputs_in_the_block() {
        let (input, futures, outputs) = stepped_input(&[Step::Ready; 5]);
        const { assert!(InPlace::<Stepped>::FITS) };
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
        assert_outputs_in_order(gathered, 5, &outputs);
    }

    #[test]
    fn in_place_cells_are_joined_where_they_are_and_keep_input_order() {
        let mut cx = Context::from_waker(noop_waker_ref());
        // Some outputs packed before the first pending future, and none.
        for prefix in [2, 0] {
            let steps: Vec<_> = (0..6)
                .map(|n| {
                    if n == prefix || n == 4 {
                        Step::PendingOnce
                    } else {
                        Step::Ready
                    }
                })
                .collect();
            let (input, futures, outputs) = stepped_input(&steps);
            let (block_ptr, slot) = (input.as_ptr() as usize, std::mem::size_of_val(&input[0]));
            let mut block = InPlace::new(input);
            assert!(block.poll_prefix(&mut cx).is_pending());
            assert_eq!(futures.get(), prefix);
            let mut cells = block.cells();
            assert_eq!(cells.len(), 6 - prefix);
            let cell_ptr = std::ptr::from_ref(&*cells.get_mut(0)) as usize;
            assert_eq!(
                cell_ptr,
                block_ptr + prefix * slot,
                "the cells are the futures' own slots"
            );
            for round in 0..2 {
                for i in 0..cells.len() {
                    let _ = cells.get_mut(i).poll(&mut cx);
                }
                assert_eq!(futures.get(), if round == 0 { 5 } else { 6 });
            }
            let gathered = block.into_outputs();
            assert_outputs_in_order(gathered, 6, &outputs);
        }
    }

    #[test]
    fn in_place_drops_everything_once_on_panic_and_on_drop() {
        let mut cx = Context::from_waker(noop_waker_ref());
        // A panic in the in-order pass: two outputs and three futures (the panicking one
        // included) are left, each dropped once.
        let (input, futures, outputs) = stepped_input(&[
            Step::Ready,
            Step::Ready,
            Step::Panic,
            Step::Ready,
            Step::PendingOnce,
        ]);
        let block = block_whose_prefix_panicked(input);
        assert_eq!((futures.get(), outputs.get()), (2, 0));
        // (A future that has not finished drops the output it holds.)
        drop(block);
        assert_eq!((futures.get(), outputs.get()), (5, 5));

        // Dropped while joining: an output packed, cells pending, finished (their outputs
        // held in them) and never polled, each dropped once.
        let (input, futures, outputs) = stepped_input(&[
            Step::Ready,
            Step::PendingOnce,
            Step::Ready,
            Step::PendingOnce,
            Step::Ready,
        ]);
        let mut block = InPlace::new(input);
        assert!(block.poll_prefix(&mut cx).is_pending());
        let mut cells = block.cells();
        for i in 1..3 {
            let _ = cells.get_mut(i).poll(&mut cx);
        }
        assert_eq!((futures.get(), outputs.get()), (2, 0));
        // (A future that has not finished drops the output it holds.)
        drop(block);
        assert_eq!((futures.get(), outputs.get()), (5, 5));
    }

    #[test]
    fn in_place_outputs_move_to_a_new_vector_when_the_block_does_not_fit_them() {
        let mut cx = Context::from_waker(noop_waker_ref());
        // Alignment 8 futures, alignment 1 outputs.
        let input: Vec<_> = (0..3_u8)
            .map(|n| ReadyIn {
                step: Step::Ready,
                _align: 0_u64,
                value: n,
            })
            .collect();
        assert_eq!(std::mem::align_of_val(&input[0]), 8);
        let mut block = InPlace::new(input);
        assert!(block.poll_prefix(&mut cx).is_ready());
        assert_eq!(block.into_outputs(), vec![0, 1, 2]);
        // 24-byte futures, 16-byte outputs, three of them: 72 bytes are not whole outputs.
        let mut input = Vec::with_capacity(3);
        input.extend((0..3_u64).map(|n| ReadyIn {
            step: Step::Ready,
            _align: (),
            value: [n; 2],
        }));
        assert_eq!(
            (std::mem::size_of_val(&input[0]), input.capacity()),
            (24, 3)
        );
        let mut block = InPlace::new(input);
        assert!(block.poll_prefix(&mut cx).is_ready());
        assert_eq!(block.into_outputs(), vec![[0, 0], [1, 1], [2, 2]]);
    }

    /// An output whose drop panics when armed (and counts itself either way).
    struct Bomb {
        drops: Rc<Cell<usize>>,
        armed: bool,
    }

    impl Drop for Bomb {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
            assert!(!self.armed, "an output's drop panics");
        }
    }

    /// A future ready at once with its output (`Step::Ready`), or pending at every poll
    /// (`Step::PendingOnce`, never woken); it holds a counted guard until it finishes or is
    /// dropped, and checks that it is dropped where it was first polled.
    struct Holding<O> {
        step: Step,
        guard: Option<DropCount>,
        output: Option<O>,
        home: usize,
    }

    impl<O> Holding<O> {
        fn new(step: Step, futures: &Rc<Cell<usize>>, output: O) -> Self {
            Holding {
                step,
                guard: Some(DropCount(Rc::clone(futures))),
                output: Some(output),
                home: 0,
            }
        }
    }

    impl<O> Drop for Holding<O> {
        fn drop(&mut self) {
            let here = std::ptr::from_mut(self) as usize;
            assert!(
                self.home == 0 || self.home == here,
                "moved after its first poll"
            );
        }
    }

    impl<O> Future for Holding<O> {
        type Output = O;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<O> {
            // SAFETY: nothing is moved out of the pinned future; its fields are not pinned.
            let this = unsafe { self.get_unchecked_mut() };
            let here = std::ptr::from_mut(this) as usize;
            assert!(
                this.home == 0 || this.home == here,
                "moved after its first poll"
            );
            this.home = here;
            match this.step {
                Step::Ready => {
                    this.guard = None;
                    Poll::Ready(this.output.take().expect("polled after it finished"))
                }
                Step::PendingOnce => Poll::Pending,
                Step::Panic => panic!("a holding future panics"),
            }
        }
    }

    #[test]
    fn a_panicking_output_drop_still_drops_the_pinned_cells_before_freeing_them() {
        let mut cx = Context::from_waker(noop_waker_ref());
        let (futures, outputs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let bomb = |armed| Bomb {
            drops: Rc::clone(&outputs),
            armed,
        };
        // Two outputs packed (the first panics when dropped), one cell pending, one never
        // polled.
        let input = vec![
            Holding::new(Step::Ready, &futures, bomb(true)),
            Holding::new(Step::Ready, &futures, bomb(false)),
            Holding::new(Step::PendingOnce, &futures, bomb(false)),
            Holding::new(Step::Ready, &futures, bomb(false)),
        ];
        const { assert!(InPlace::<Holding<Bomb>>::FITS) };
        let mut block = InPlace::new(input);
        assert!(block.poll_prefix(&mut cx).is_pending());
        assert_eq!((futures.get(), outputs.get()), (2, 0));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(block)));
        assert!(panicked.is_err(), "the output's panic propagates");
        // The pinned cells are dropped in place before the block is freed (the `Pin` drop
        // guarantee), with the outputs each once, as a vector drops its elements.
        assert_eq!((futures.get(), outputs.get()), (4, 4));
    }

    /// A future ready at once with a counted output, whose drop (when it finishes, dropped in
    /// its cell) panics when armed.
    struct Defused {
        step: Step,
        armed: bool,
        drops: Rc<Cell<usize>>,
        output: Option<DropCount>,
    }

    impl Drop for Defused {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
            assert!(!self.armed, "a future's drop panics");
        }
    }

    impl Future for Defused {
        type Output = DropCount;

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<DropCount> {
            assert!(matches!(self.step, Step::Ready));
            Poll::Ready(self.output.take().expect("polled once"))
        }
    }

    #[test]
    fn a_future_whose_drop_panics_as_it_finishes_leaves_its_output_to_be_dropped_once() {
        const { assert!(InPlace::<Defused>::FITS) };
        let (futures, outputs) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let input: Vec<_> = [false, true, false]
            .into_iter()
            .map(|armed| Defused {
                step: Step::Ready,
                armed,
                drops: Rc::clone(&futures),
                output: Some(DropCount(Rc::clone(&outputs))),
            })
            .collect();
        let block = block_whose_prefix_panicked(input);
        // The finished future's output was stored in its cell as its drop unwound.
        assert_eq!((futures.get(), outputs.get()), (2, 0));
        drop(block);
        assert_eq!((futures.get(), outputs.get()), (3, 3));
    }

    /// Futures with their spare values (the room `MaybeDone` takes for its states) at the
    /// start or the end of their bytes, each ready at its first poll (`Step::Ready`) or its
    /// second (`Step::PendingOnce`) with two words `[n, !n]`, so that an output packed over
    /// the wrong bytes shows.
    macro_rules! laid_out {
        ($($name:ident { $($field:ident: $ty:ty),* })*) => {$(
            #[repr(C)]
            struct $name {
                $($field: $ty),*
            }

            impl Future for $name {
                type Output = [usize; 2];

                fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<[usize; 2]> {
                    match self.step {
                        Step::Ready => {
                            self.step = Step::Panic;
                            Poll::Ready([self.n, !self.n])
                        }
                        Step::PendingOnce => {
                            self.step = Step::Ready;
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        Step::Panic => panic!("polled after it finished"),
                    }
                }
            }
        )*};
    }

    /// A two-byte future ready at once with a default `T` (larger or more aligned).
    struct Widen<T> {
        step: Step,
        _n: u8,
        _output: PhantomData<fn() -> T>,
    }

    impl<T: Default> Future for Widen<T> {
        type Output = T;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<T> {
            assert!(matches!(self.step, Step::Ready));
            Poll::Ready(T::default())
        }
    }

    /// A future without spare values: its cell is larger than it.
    struct Plain(u64);

    impl Future for Plain {
        type Output = u64;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u64> {
            Poll::Ready(self.0)
        }
    }

    laid_out! {
        SpareFirst { step: Step, n: usize, _pad: usize }
        SpareLast { n: usize, _pad: usize, step: Step }
        SameSize { step: Step, n: usize }
    }

    #[test]
    fn outputs_pack_wherever_the_cells_keep_their_state() {
        use std::mem::{align_of, size_of};
        const {
            assert!(InPlace::<SpareFirst>::FITS && InPlace::<SpareLast>::FITS);
            // An output as large as its future leaves its cell no room for the states.
            assert!(size_of::<SameSize>() == size_of::<[usize; 2]>());
            assert!(!InPlace::<SameSize>::FITS);
        };
        // Every other layout does not fit: outputs or futures of no size, outputs larger or
        // more aligned than their futures, cells larger than their futures.
        const {
            assert!(!InPlace::<std::future::Ready<()>>::FITS);
            assert!(!InPlace::<ReadyIn<(), ()>>::FITS);
            assert!(!InPlace::<std::future::Pending<u8>>::FITS);
            assert!(!InPlace::<Widen<[u8; 8]>>::FITS);
            assert!(size_of::<Widen<u64>>() == 2 && align_of::<Widen<u64>>() == 1);
            assert!(!InPlace::<Widen<u64>>::FITS);
            assert!(!InPlace::<Plain>::FITS);
            // (An `Option` keeps spare values in its tag: `ready(n)` is gathered in place.)
            assert!(InPlace::<std::future::Ready<u64>>::FITS);
            assert!(InPlace::<ReadyIn<(), u64>>::FITS);
        };
        let steps = |n: usize| {
            if n % 3 == 1 {
                Step::PendingOnce
            } else {
                Step::Ready
            }
        };
        let expected: Vec<[usize; 2]> = (0..7).map(|n| [n, !n]).collect();
        for first_waits in [false, true] {
            let step = |n| {
                if first_waits && n == 0 {
                    Step::PendingOnce
                } else {
                    steps(n)
                }
            };
            let futures: Vec<_> = (0..7)
                .map(|n| SpareFirst {
                    step: step(n),
                    n,
                    _pad: 0,
                })
                .collect();
            assert_eq!(
                futures::executor::block_on(super::super::gather(futures)),
                expected
            );
            let futures: Vec<_> = (0..7)
                .map(|n| SpareLast {
                    n,
                    _pad: 0,
                    step: step(n),
                })
                .collect();
            assert_eq!(
                futures::executor::block_on(super::super::gather(futures)),
                expected
            );
            let futures: Vec<_> = (0..7).map(|n| SameSize { step: step(n), n }).collect();
            assert_eq!(
                futures::executor::block_on(super::super::gather(futures)),
                expected
            );
        }
        // The layouts that do not fit take the joining driver: outputs of no size, larger
        // outputs, a future of no size.
        let units = futures::executor::block_on(super::super::gather(
            (0..3).map(|_| std::future::ready(())),
        ));
        assert_eq!(units.len(), 3);
        let large =
            futures::executor::block_on(super::super::gather((0..3_u64).map(|n| ReadyIn {
                step: Step::Ready,
                _align: 0_u8,
                value: [n; 4],
            })));
        assert_eq!(large, (0..3).map(|n| [n; 4]).collect::<Vec<_>>());
        let widened: Vec<u64> =
            futures::executor::block_on(super::super::gather((0..3).map(|_| Widen {
                step: Step::Ready,
                _n: 0,
                _output: PhantomData,
            })));
        assert_eq!(widened, [0_u64; 3]);
        let plain = futures::executor::block_on(super::super::gather((0..3).map(Plain)));
        assert_eq!(plain, [0, 1, 2]);
        let ready =
            futures::executor::block_on(super::super::gather((0..3).map(std::future::ready)));
        assert_eq!(ready, [0, 1, 2]);
        let empty = futures::executor::block_on(super::super::gather(
            (0..2).map(|_| std::future::pending::<u8>()).take(0),
        ));
        assert!(empty.is_empty());
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
