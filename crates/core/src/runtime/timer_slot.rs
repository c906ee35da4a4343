//! Inline, pinned storage for a runtime's timer, so a cancel scope's deadline costs no
//! allocation.
//!
//! [`Runtime::timer`](super::Runtime::timer) returns a boxed timer: an allocation and a free
//! per waiting region, which measured about a sixth of a whole `fail_after` around a future
//! that waits once on tokio (see docs/performance.md, "Cancel scopes (T9)"). A [`TimerSlot`]
//! lives inside the region's own (pinned) future instead; the runtime writes its timer into it
//! ([`Runtime::timer_in`](super::Runtime::timer_in)), and the slot calls it through a static
//! table of functions, like `std::task::RawWaker` does. A timer too big (or too aligned) for
//! the slot is boxed into it.
//!
//! One of sheepdog's `unsafe` modules (with `runtime::inline` and `combinators::pinned`). It
//! is covered by the unit tests below, which run under miri
//! (`cargo +nightly miri test -p sheepdog-core --lib timer_slot`).

#![allow(
    unsafe_code,
    reason = "type-erased inline storage of a pinned timer; see the module documentation"
)]

use std::fmt;
use std::future::Future;
use std::marker::PhantomPinned;
use std::mem::{align_of, size_of, MaybeUninit};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::time::{BoxTimer, Timer};

/// How many machine words a timer may occupy to be stored inline: enough for tokio's `Sleep`
/// (14 words in tokio 1.54 on 64-bit targets).
const WORDS: usize = 14;

type Storage = [MaybeUninit<usize>; WORDS];

/// Storage for one [`Timer`], inline when it fits (up to 14 machine words, word-aligned),
/// boxed otherwise; for [`Runtime::timer_in`](crate::runtime::Runtime::timer_in).
///
/// A slot starts empty; an empty slot never fires. It is pinned while it holds a timer, so the
/// timer is pinned too: it is only ever dropped in place (by [`clear`](TimerSlot::clear),
/// by [`set`](TimerSlot::set) replacing it, or by dropping the slot).
///
/// # Examples
///
/// ```
/// use std::pin::pin;
/// use std::time::{Duration, Instant};
/// use sheepdog_core::time::{AsyncIoTimer, TimerSlot};
///
/// let mut slot = pin!(TimerSlot::new());
/// assert!(slot.is_empty());
/// slot.as_mut().set(AsyncIoTimer::at(Instant::now() + Duration::from_millis(1)));
/// futures::executor::block_on(slot.as_mut());
/// slot.as_mut().clear();
/// assert!(slot.is_empty());
/// ```
pub struct TimerSlot {
    /// Holds a value of the type `vtable` was made for, when `vtable` is `Some`.
    storage: Storage,
    /// The functions of the stored timer's type; the only code that touches `storage`.
    vtable: Option<&'static VTable>,
    /// The stored timer may be `!Unpin`: it must stay where it was written.
    _pinned: PhantomPinned,
    /// No automatic `Send` or `Sync`: the impls below say why they hold.
    _erased: std::marker::PhantomData<*mut ()>,
}

struct VTable {
    poll: unsafe fn(*mut (), &mut Context<'_>) -> Poll<()>,
    reset: unsafe fn(*mut (), Instant),
    drop: unsafe fn(*mut ()),
}

/// Names the vtable of a `T: Timer`.
struct VTableOf<T>(std::marker::PhantomData<fn(T)>);

impl<T: Timer> VTableOf<T> {
    const VTABLE: VTable = VTable {
        poll: Self::poll,
        reset: Self::reset,
        drop: Self::drop,
    };

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned, pinned `T` that nothing else accesses during
    /// the call.
    unsafe fn poll(ptr: *mut (), cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: guaranteed by the caller; the `T` is never moved (it is pinned in its slot).
        unsafe { Pin::new_unchecked(&mut *ptr.cast::<T>()) }.poll(cx)
    }

    /// # Safety
    ///
    /// As for [`poll`](Self::poll).
    unsafe fn reset(ptr: *mut (), deadline: Instant) {
        // SAFETY: as in `poll`.
        unsafe { Pin::new_unchecked(&mut *ptr.cast::<T>()) }.reset(deadline);
    }

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned `T` that is never used again.
    unsafe fn drop(ptr: *mut ()) {
        // SAFETY: guaranteed by the caller; dropping in place keeps the pinning promise.
        unsafe { ptr.cast::<T>().drop_in_place() }
    }
}

/// A timer that did not fit inline, boxed.
struct Boxed(BoxTimer);

impl Future for Boxed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Timer for Boxed {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.0.as_mut().reset(deadline);
    }
}

impl TimerSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        TimerSlot {
            storage: [MaybeUninit::uninit(); WORDS],
            vtable: None,
            _pinned: PhantomPinned,
            _erased: std::marker::PhantomData,
        }
    }

    /// Whether a `T` is stored inline (rather than boxed) by [`set`](TimerSlot::set).
    pub const fn fits_inline<T>() -> bool {
        size_of::<T>() <= size_of::<Storage>() && align_of::<T>() <= align_of::<Storage>()
    }

    /// Whether the slot holds no timer.
    pub fn is_empty(&self) -> bool {
        self.vtable.is_none()
    }

    /// Stores `timer`, dropping the timer the slot held; inline if it fits, boxed otherwise.
    pub fn set<T: Timer + 'static>(self: Pin<&mut Self>, timer: T) {
        if Self::fits_inline::<T>() {
            self.write(timer);
        } else {
            self.set_boxed(Box::pin(timer));
        }
    }

    /// Stores the timer `make` returns, dropping the timer the slot held first; inline if it
    /// fits, boxed otherwise. Where `make` can be inlined, the timer is built in place rather
    /// than moved in (a copy of a large timer just after it was built stalls the processor).
    #[inline]
    pub fn set_with<T: Timer + 'static>(mut self: Pin<&mut Self>, make: impl FnOnce() -> T) {
        if Self::fits_inline::<T>() {
            // A scope's slot is always empty here: no call for nothing.
            if !self.is_empty() {
                self.as_mut().clear();
            }
            // SAFETY: nothing here moves the slot or its contents: the fields are written in
            // place.
            let this = unsafe { self.get_unchecked_mut() };
            // SAFETY: as in `write`: the storage is large and aligned enough (checked above),
            // holds nothing (cleared above) and is pinned with the slot.
            unsafe { this.storage.as_mut_ptr().cast::<T>().write(make()) };
            this.vtable = Some(&VTableOf::<T>::VTABLE);
        } else {
            self.as_mut().clear();
            self.set_boxed(Box::pin(make()));
        }
    }

    /// Stores an already boxed timer (what [`Runtime::timer`](crate::runtime::Runtime::timer)
    /// returns), dropping the timer the slot held.
    pub fn set_boxed(self: Pin<&mut Self>, timer: BoxTimer) {
        self.write(Boxed(timer));
    }

    /// Writes a timer known to fit.
    fn write<T: Timer + 'static>(mut self: Pin<&mut Self>, timer: T) {
        const {
            assert!(size_of::<Boxed>() <= size_of::<Storage>());
            assert!(align_of::<Boxed>() <= align_of::<Storage>());
        }
        debug_assert!(Self::fits_inline::<T>());
        self.as_mut().clear();
        // SAFETY: nothing here moves the slot or its contents: the fields are written in place.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: `storage` is large and aligned enough for a `T` (checked by the callers), it
        // holds nothing (cleared above), and it is pinned with the slot, so the `T` written
        // here stays at this address until it is dropped in place.
        unsafe { this.storage.as_mut_ptr().cast::<T>().write(timer) };
        this.vtable = Some(&VTableOf::<T>::VTABLE);
    }

    /// Drops the timer the slot holds (deregistering it), if any.
    #[inline]
    pub fn clear(self: Pin<&mut Self>) {
        // SAFETY: only the `vtable` field is replaced; the storage is dropped in place.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(vtable) = this.vtable.take() {
            // SAFETY: `storage` holds the timer `vtable` was made for (both set in `write`),
            // and with `vtable` now `None` it is never used again.
            unsafe { (vtable.drop)(this.storage.as_mut_ptr().cast()) }
        }
    }

    /// Re-arms the stored timer for `deadline`; does nothing on an empty slot.
    pub fn reset(self: Pin<&mut Self>, deadline: Instant) {
        // SAFETY: the timer is reached through a pinned reference and not moved.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(vtable) = this.vtable {
            // SAFETY: `storage` holds the timer `vtable` was made for, pinned, and the
            // exclusive borrow of the slot makes this access exclusive.
            unsafe { (vtable.reset)(this.storage.as_mut_ptr().cast(), deadline) }
        }
    }
}

impl Future for TimerSlot {
    type Output = ();

    /// Polls the stored timer; an empty slot is `Pending` for ever (and keeps no waker).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: the timer is reached through a pinned reference and not moved.
        let this = unsafe { self.get_unchecked_mut() };
        match this.vtable {
            // SAFETY: as in `reset`.
            Some(vtable) => unsafe { (vtable.poll)(this.storage.as_mut_ptr().cast(), cx) },
            None => Poll::Pending,
        }
    }
}

impl Drop for TimerSlot {
    fn drop(&mut self) {
        if let Some(vtable) = self.vtable.take() {
            // SAFETY: `storage` holds the timer `vtable` was made for; this is its last use,
            // and it is dropped where it was written (a slot that holds a timer was pinned).
            unsafe { (vtable.drop)(self.storage.as_mut_ptr().cast()) }
        }
    }
}

impl Default for TimerSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TimerSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerSlot")
            .field("empty", &self.is_empty())
            .finish_non_exhaustive()
    }
}

// SAFETY: a slot only ever holds a `T: Timer` (or a `BoxTimer`), and `Timer: Send`, so moving
// the slot to another thread moves that timer. The vtable is an immutable `'static` table of
// function pointers.
unsafe impl Send for TimerSlot {}
// SAFETY: a shared `&TimerSlot` gives no access to the stored timer (only `is_empty`, which reads
// the vtable pointer); every access to the timer takes `Pin<&mut TimerSlot>`.
unsafe impl Sync for TimerSlot {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Waker;

    #[derive(Default)]
    struct Log {
        polls: AtomicUsize,
        resets: AtomicUsize,
        drops: AtomicUsize,
    }

    /// A timer that records what is done to it, checks that it never moved, and fires on its
    /// second poll.
    struct Fake<const PAD: usize> {
        log: Arc<Log>,
        at: Option<*const Self>,
        polled: bool,
        _pad: [usize; PAD],
        _pinned: PhantomPinned,
    }

    // SAFETY (test): the raw pointer is only compared, never dereferenced.
    unsafe impl<const PAD: usize> Send for Fake<PAD> {}

    fn fake<const PAD: usize>(log: &Arc<Log>) -> Fake<PAD> {
        Fake {
            log: Arc::clone(log),
            at: None,
            polled: false,
            _pad: [7; PAD],
            _pinned: PhantomPinned,
        }
    }

    impl<const PAD: usize> Fake<PAD> {
        fn check_place(self: Pin<&mut Self>) -> &mut Self {
            // SAFETY (test): only plain fields are touched; nothing is moved.
            let this = unsafe { self.get_unchecked_mut() };
            let here: *const Self = this;
            assert_eq!(*this.at.get_or_insert(here), here, "a pinned timer moved");
            this
        }
    }

    impl<const PAD: usize> Future for Fake<PAD> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            let this = self.check_place();
            this.log.polls.fetch_add(1, Ordering::SeqCst);
            if std::mem::replace(&mut this.polled, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl<const PAD: usize> Timer for Fake<PAD> {
        fn reset(self: Pin<&mut Self>, _deadline: Instant) {
            let this = self.check_place();
            this.polled = false;
            this.log.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl<const PAD: usize> Drop for Fake<PAD> {
        fn drop(&mut self) {
            self.log.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn exercise<const PAD: usize>() {
        let log = Arc::new(Log::default());
        let mut cx = Context::from_waker(Waker::noop());
        let mut slot = Box::pin(TimerSlot::new());
        assert!(slot.is_empty());
        assert!(
            slot.as_mut().poll(&mut cx).is_pending(),
            "an empty slot never fires"
        );
        slot.as_mut().set(fake::<PAD>(&log));
        assert!(!slot.is_empty());
        assert!(slot.as_mut().poll(&mut cx).is_pending());
        assert!(slot.as_mut().poll(&mut cx).is_ready());
        slot.as_mut().reset(Instant::now());
        assert!(slot.as_mut().poll(&mut cx).is_pending());
        assert_eq!(log.polls.load(Ordering::SeqCst), 3);
        assert_eq!(log.resets.load(Ordering::SeqCst), 1);
        // Replacing drops the old timer in place.
        slot.as_mut().set(fake::<PAD>(&log));
        assert_eq!(log.drops.load(Ordering::SeqCst), 1);
        assert!(slot.as_mut().poll(&mut cx).is_pending());
        slot.as_mut().clear();
        assert!(slot.is_empty());
        assert_eq!(log.drops.load(Ordering::SeqCst), 2);
        slot.as_mut().clear();
        slot.as_mut().reset(Instant::now());
        assert_eq!(log.drops.load(Ordering::SeqCst), 2);
        // Dropping the slot drops what it holds.
        slot.as_mut().set(fake::<PAD>(&log));
        assert!(slot.as_mut().poll(&mut cx).is_pending());
        drop(slot);
        assert_eq!(log.drops.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_small_timer_is_stored_inline_and_dropped_once() {
        exercise::<0>();
    }

    #[test]
    fn a_timer_that_fills_the_slot_is_stored_inline() {
        assert_eq!(size_of::<Fake<{ WORDS - 4 }>>(), size_of::<Storage>());
        assert!(TimerSlot::fits_inline::<Fake<{ WORDS - 4 }>>());
        exercise::<{ WORDS - 4 }>();
    }

    #[test]
    fn a_timer_too_big_is_boxed() {
        assert!(!TimerSlot::fits_inline::<Fake<{ WORDS - 3 }>>());
        exercise::<{ WORDS - 3 }>();
    }

    #[test]
    fn a_timer_can_be_built_in_place() {
        let log = Arc::new(Log::default());
        let mut cx = Context::from_waker(Waker::noop());
        let mut slot = Box::pin(TimerSlot::new());
        slot.as_mut().set_with(|| fake::<3>(&log));
        assert!(slot.as_mut().poll(&mut cx).is_pending());
        // Replacing drops the old timer before the new one is built.
        slot.as_mut().set_with(|| {
            assert_eq!(log.drops.load(Ordering::SeqCst), 1);
            fake::<{ WORDS }>(&log)
        });
        assert!(slot.as_mut().poll(&mut cx).is_pending());
        assert!(slot.as_mut().poll(&mut cx).is_ready());
        drop(slot);
        assert_eq!(log.drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_boxed_timer_can_be_stored() {
        let log = Arc::new(Log::default());
        let mut cx = Context::from_waker(Waker::noop());
        let mut slot = pin!(TimerSlot::new());
        slot.as_mut().set_boxed(Box::pin(fake::<1>(&log)));
        assert!(slot.as_mut().poll(&mut cx).is_pending());
        assert!(slot.as_mut().poll(&mut cx).is_ready());
        slot.as_mut().set(fake::<0>(&log));
        assert_eq!(log.drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_slot_moves_freely_while_empty() {
        let slot = TimerSlot::new();
        let moved = Box::new(slot);
        let mut slot = Box::into_pin(moved);
        let log = Arc::new(Log::default());
        slot.as_mut().set(fake::<2>(&log));
        drop(slot);
        assert_eq!(log.drops.load(Ordering::SeqCst), 1);
    }
}
