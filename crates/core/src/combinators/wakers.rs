//! One shared block of slot wakers for a combinator's futures: what a future that stays
//! pending is polled with, so that a wake re-polls only that future.
//!
//! The block is made once per combinator (two allocations, whatever the number of slots: a
//! reference-counted header with the combinator's task waker and the head of the ready list,
//! and the slots, each a state word, a link and a pointer back to the header). A slot's [`Waker`]
//! is a [`RawWaker`] whose data pointer is the address of its slot in the block; cloning it
//! adds one to the block's reference count (one count for the whole block, so wakers that
//! outlive the combinator keep the block alive and stay harmless). Waking a slot that is idle
//! (polled, not woken since) pushes its number onto an intrusive, lock-free stack (one
//! compare-and-swap, no mutex, no allocation) and wakes the combinator's task; the combinator
//! takes the whole stack with one swap. A slot is on the stack at most once: only a wake of an
//! idle slot lists it, and the combinator makes a slot idle again only once it has taken it
//! off the stack.
//!
//! This replaced one waker `Arc` per pending future and a mutex-guarded ready list: see
//! docs/performance.md, "Combinators (T1–T5)". The `unsafe` here is the waker vtable and the
//! back pointer from a slot to its block; the tests at the end of this file run under miri
//! (`cargo +nightly miri test -p sheepdog-core --lib combinators::wakers`), with wakers
//! cloned, woken and dropped on other threads and after the combinator is gone.

#![allow(
    unsafe_code,
    reason = "a RawWaker vtable over one shared block of slots; see the module documentation"
)]

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{RawWaker, RawWakerVTable, Waker};

use futures::task::AtomicWaker;

/// One slot's waker state.
struct Slot {
    /// The block this slot belongs to (set once, before any waker exists).
    block: *const Shared,
    /// The slot's number.
    index: usize,
    /// [`IDLE`], [`LISTED`] or [`HELD`].
    state: AtomicU8,
    /// The ready list's next entry below this one (index + 1, 0 for none); written by the
    /// waker that pushes the slot, before the push is published.
    next: AtomicUsize,
}

// SAFETY: `block` is only ever read, and it points at the `Shared` that owns this slot, which
// is itself `Sync` in every other field (atomics and an `AtomicWaker`) and lives at least as
// long as the slot. Sharing or sending a slot therefore shares nothing that is not
// thread-safe.
unsafe impl Send for Slot {}
// SAFETY: as above.
unsafe impl Sync for Slot {}

/// A slot's state: polled with its waker, not woken since (a wake lists it).
const IDLE: u8 = 0;
/// A slot's state: on the ready list (a wake changes nothing). Only a wake moves a slot here,
/// from `IDLE`, so a slot is on the list at most once.
const LISTED: u8 = 1;
/// A slot's state: held by the combinator, which will poll it anyway — not polled with its
/// waker yet, or taken off the list and not polled since (a wake changes nothing).
const HELD: u8 = 2;

/// What the slot wakers share with their combinator.
struct Shared {
    /// The combinator's task.
    parent: AtomicWaker,
    /// The most recently queued slot (index + 1; 0 when the list is empty).
    head: AtomicUsize,
    slots: Box<[Slot]>,
}

impl Shared {
    /// Queues `slot` (unless it is queued already) and wakes the combinator's task.
    fn wake_slot(&self, slot: &Slot) {
        if slot
            .state
            .compare_exchange(IDLE, LISTED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // Only the waker that listed the slot writes `next`, and the combinator reads it
            // only after taking the list, so this store races with nothing.
            slot.next.store(head, Ordering::Relaxed);
            match self.head.compare_exchange_weak(
                head,
                slot.index + 1,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => head = current,
            }
        }
        self.parent.wake();
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_by_ref_raw, drop_raw);

/// The `RawWaker` of `slot`: its data pointer is the slot's address.
fn raw(slot: &Slot) -> RawWaker {
    RawWaker::new(std::ptr::from_ref(slot).cast(), &VTABLE)
}

/// Clones a slot waker: one more reference to the block.
///
/// # Safety
///
/// `data` is the address of a slot in a live block, on which the caller's waker holds a
/// reference (every waker made here does, and borrowed ones live only while the combinator
/// holds its own).
unsafe fn clone_raw(data: *const ()) -> RawWaker {
    // SAFETY: by this function's contract, `data` points at a slot of a block that is alive
    // (the waker being cloned keeps it alive), so the slot and its back pointer are valid, and
    // the back pointer came from `Arc::as_ptr` of the block's `Arc`, as
    // `increment_strong_count` requires.
    unsafe {
        let slot = &*data.cast::<Slot>();
        Arc::increment_strong_count(slot.block);
        raw(slot)
    }
}

/// Wakes a slot and releases the waker's reference.
///
/// # Safety
///
/// As [`clone_raw`]; the waker is consumed.
unsafe fn wake_raw(data: *const ()) {
    // SAFETY: the waker being consumed holds a reference, so the slot is valid for the wake,
    // and its reference is released exactly once, by `drop_raw`.
    unsafe {
        wake_by_ref_raw(data);
        drop_raw(data);
    }
}

/// Wakes a slot.
///
/// # Safety
///
/// As [`clone_raw`].
unsafe fn wake_by_ref_raw(data: *const ()) {
    // SAFETY: the waker holds a reference to the block, so both the slot and the block it
    // points back to are alive for the duration of this call.
    unsafe {
        let slot = &*data.cast::<Slot>();
        (*slot.block).wake_slot(slot);
    }
}

/// Drops a slot waker: one reference to the block less; the last frees it.
///
/// # Safety
///
/// As [`clone_raw`]; the waker is consumed and its reference released exactly once.
unsafe fn drop_raw(data: *const ()) {
    // SAFETY: the slot is valid until the reference is released; the back pointer is read
    // before that, and `decrement_strong_count` is given the pointer `Arc::as_ptr` returned,
    // releasing the one count this waker held.
    unsafe {
        let block = (*data.cast::<Slot>()).block;
        Arc::decrement_strong_count(block);
    }
}

/// The combinator's handle on a block of slot wakers (it holds one reference to the block).
pub(crate) struct SlotWakers {
    shared: Arc<Shared>,
}

impl SlotWakers {
    /// A block of `len` slot wakers, which wake `parent`'s task; every slot starts held
    /// (not yet polled with its waker).
    pub(crate) fn new(len: usize, parent: &Waker) -> Self {
        let shared = Arc::new_cyclic(|block| Shared {
            parent: AtomicWaker::new(),
            head: AtomicUsize::new(0),
            slots: (0..len)
                .map(|index| Slot {
                    block: block.as_ptr(),
                    index,
                    state: AtomicU8::new(HELD),
                    next: AtomicUsize::new(0),
                })
                .collect(),
        });
        // Registered before any slot waker exists, so that no wake is lost.
        shared.parent.register(parent);
        SlotWakers { shared }
    }

    /// How many slots there are.
    pub(crate) fn len(&self) -> usize {
        self.shared.slots.len()
    }

    /// Registers the combinator's task, to be woken when a slot is.
    pub(crate) fn register(&self, parent: &Waker) {
        self.shared.parent.register(parent);
    }

    /// Slot `index` is about to be polled with its waker, which this returns borrowed (for a
    /// `Context` only; a clone of it is an owned waker like any other): a wake from now on
    /// lists the slot. A slot still on the list (from a wake of an earlier poll, or of an
    /// earlier future in the slot) stays there once: it will be reported and polled again.
    #[inline]
    pub(crate) fn polling(&self, index: usize) -> WakerRef<'_> {
        let slot = &self.shared.slots[index];
        // Only the combinator moves a slot out of `HELD`, and no waker moves it in or out of
        // `HELD`, so this load and store race with nothing that matters.
        if slot.state.load(Ordering::Relaxed) == HELD {
            slot.state.store(IDLE, Ordering::Release);
        }
        WakerRef {
            // SAFETY: the vtable's functions are thread-safe (atomics only) and follow the
            // `RawWaker` contract: a clone takes a reference to the block and wakes the same
            // slot, a wake or drop releases one. This waker itself holds no reference: it is
            // never dropped (`ManuallyDrop`) and cannot outlive `self` (the lifetime of
            // `WakerRef`), whose `Arc` keeps the block alive meanwhile.
            waker: ManuallyDrop::new(unsafe { Waker::from_raw(raw(slot)) }),
            _block: PhantomData,
        }
    }

    /// Replaces the contents of `woken` with the slots woken since the last call, in the order
    /// they were woken. Each is reported once, and held (a new wake is ignored) until
    /// [`polling`](Self::polling) is called for it.
    pub(crate) fn take_woken(&self, woken: &mut Vec<usize>) {
        woken.clear();
        if self.shared.head.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut head = self.shared.head.swap(0, Ordering::Acquire);
        while head != 0 {
            let slot = &self.shared.slots[head - 1];
            woken.push(head - 1);
            head = slot.next.load(Ordering::Relaxed);
            // Off the list: no waker writes `next` again before `polling` makes it idle.
            slot.state.store(HELD, Ordering::Relaxed);
        }
        // The list is newest first.
        woken.reverse();
    }
}

impl std::fmt::Debug for SlotWakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotWakers")
            .field("slots", &self.len())
            .finish_non_exhaustive()
    }
}

/// A borrowed slot waker (see [`SlotWakers::polling`]).
pub(crate) struct WakerRef<'a> {
    waker: ManuallyDrop<Waker>,
    _block: PhantomData<&'a SlotWakers>,
}

impl Deref for WakerRef<'_> {
    type Target = Waker;

    fn deref(&self) -> &Waker {
        &self.waker
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// A parent waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn parent() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    fn drained(wakers: &SlotWakers) -> Vec<usize> {
        let mut out = Vec::new();
        wakers.take_woken(&mut out);
        out
    }

    /// The waker of slot `index`, without marking it polled.
    fn slot_waker(wakers: &SlotWakers, index: usize) -> Waker {
        let state = &wakers.shared.slots[index].state;
        let before = state.load(Ordering::SeqCst);
        let waker = wakers.polling(index).clone();
        state.store(before, Ordering::SeqCst);
        waker
    }

    #[test]
    fn wakes_queue_each_slot_once_in_wake_order() {
        let (count, waker) = parent();
        let wakers = SlotWakers::new(4, &waker);
        assert_eq!(wakers.len(), 4);
        // Slots start held: a wake before the first poll is redundant.
        slot_waker(&wakers, 1).wake_by_ref();
        assert!(drained(&wakers).is_empty());
        for i in 0..4 {
            wakers.polling(i);
        }
        slot_waker(&wakers, 2).wake_by_ref();
        slot_waker(&wakers, 0).wake_by_ref();
        slot_waker(&wakers, 2).wake_by_ref();
        let owned = slot_waker(&wakers, 3).clone();
        owned.wake();
        assert_eq!(drained(&wakers), vec![2, 0, 3]);
        assert!(drained(&wakers).is_empty());
        // Held until polled again.
        slot_waker(&wakers, 0).wake_by_ref();
        assert!(drained(&wakers).is_empty());
        wakers.polling(0);
        slot_waker(&wakers, 0).wake_by_ref();
        assert_eq!(drained(&wakers), vec![0]);
        assert!(count.0.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn a_slot_polled_again_while_listed_is_listed_once() {
        let (_count, waker) = parent();
        let wakers = SlotWakers::new(3, &waker);
        for i in 0..3 {
            wakers.polling(i);
        }
        // Slot 1 is woken (a late wake, say, of the slot's previous future), then polled
        // again before the list is taken, and woken again: it must not be listed twice
        // (which would make the list a cycle).
        slot_waker(&wakers, 1).wake_by_ref();
        wakers.polling(1).wake_by_ref();
        slot_waker(&wakers, 2).wake_by_ref();
        wakers.polling(1).wake_by_ref();
        assert_eq!(drained(&wakers), vec![1, 2]);
        assert!(drained(&wakers).is_empty());
        wakers.polling(1).wake_by_ref();
        assert_eq!(drained(&wakers), vec![1]);
    }

    #[test]
    fn cloned_wakers_outlive_the_combinator() {
        let (count, waker) = parent();
        let wakers = SlotWakers::new(3, &waker);
        wakers.polling(1);
        let kept = slot_waker(&wakers, 1).clone();
        let also = kept.clone();
        assert!(kept.will_wake(&slot_waker(&wakers, 1)));
        assert!(!kept.will_wake(&slot_waker(&wakers, 2)));
        drop(wakers);
        // The block is still alive: waking it is harmless and wakes the (old) parent.
        kept.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        kept.wake();
        drop(also);
    }

    #[test]
    fn wakers_cloned_and_woken_on_other_threads() {
        let (count, waker) = parent();
        let wakers = SlotWakers::new(8, &waker);
        for i in 0..8 {
            wakers.polling(i);
        }
        let owned: Vec<Waker> = (0..8).map(|i| slot_waker(&wakers, i).clone()).collect();
        let threads: Vec<_> = owned
            .into_iter()
            .map(|w| {
                std::thread::spawn(move || {
                    let again = w.clone();
                    w.wake();
                    again.wake_by_ref();
                    again
                })
            })
            .collect();
        // Drain while the threads run: every slot shows up exactly once overall.
        let mut seen = Vec::new();
        let mut buffer = Vec::new();
        let kept: Vec<Waker> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        wakers.take_woken(&mut buffer);
        seen.extend_from_slice(&buffer);
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert!(count.0.load(Ordering::SeqCst) >= 1);
        // The last references go away on another thread, after the combinator's.
        drop(wakers);
        std::thread::spawn(move || drop(kept)).join().unwrap();
    }

    #[test]
    fn concurrent_wakes_while_draining() {
        let (_count, waker) = parent();
        let wakers = SlotWakers::new(4, &waker);
        for i in 0..4 {
            wakers.polling(i);
        }
        let owned: Vec<Waker> = (0..4).map(|i| slot_waker(&wakers, i).clone()).collect();
        let handle = std::thread::spawn(move || {
            for _ in 0..3 {
                for w in &owned {
                    w.wake_by_ref();
                }
            }
        });
        let mut buffer = Vec::new();
        let mut total = 0;
        for _ in 0..20 {
            wakers.take_woken(&mut buffer);
            for &i in &buffer {
                total += 1;
                // Polled with its borrowed waker, which the future wakes at once.
                wakers.polling(i).wake_by_ref();
            }
        }
        handle.join().unwrap();
        loop {
            wakers.take_woken(&mut buffer);
            if buffer.is_empty() {
                break;
            }
            total += buffer.len();
            for &i in &buffer {
                wakers.polling(i);
            }
        }
        assert!(total >= 4, "{total} wakes seen");
    }
}
