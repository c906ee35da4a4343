//! Inline storage for an adapter's native join handle, so wrapping it costs no allocation.
//!
//! A runtime's own join handle is usually one or two pointers. Boxing it behind
//! `dyn RawJoinHandle<T>` costs an allocation and a free per task, which measured 20–25 % of a
//! whole tokio spawn-and-await on the project's benchmark machine (see docs/performance.md).
//! [`InlineRaw`] stores the handle in a few words inside sheepdog's `JoinHandle` and calls it
//! through a static table of functions instead, like `std::task::RawWaker` does.
//!
//! One of the core's `unsafe` modules (`lib.rs` lists them all). It is
//! covered by the unit tests below, which run under miri
//! (`cargo +nightly miri test -p sheepdog-core --lib`).

#![allow(
    unsafe_code,
    reason = "type-erased inline storage; see the module documentation"
)]

use std::marker::PhantomData;
use std::mem::{align_of, size_of, MaybeUninit};
use std::task::{Context, Poll};

use super::task::{AbortHandle, JoinError, RawJoinHandle};

/// How many machine words a handle may occupy to be stored inline.
const WORDS: usize = 4;

type Storage = [MaybeUninit<usize>; WORDS];

/// A `RawJoinHandle<T>` of some type `H`, stored inline.
pub(crate) struct InlineRaw<T> {
    /// Holds a value of type `H`, written by [`InlineRaw::new`] and dropped by `Drop`.
    storage: Storage,
    /// The functions of `H`, monomorphised; they are the only code that touches `storage`.
    /// (A raw pointer rather than `&'static`, which would require `T: 'static` of the type.)
    vtable: *const VTable<T>,
    /// `InlineRaw<T>` owns an `H`, which may own a `T`.
    _owns: PhantomData<T>,
}

struct VTable<T> {
    poll_join: unsafe fn(*mut (), &mut Context<'_>) -> Poll<Result<T, JoinError>>,
    abort: unsafe fn(*const ()),
    is_finished: unsafe fn(*const ()) -> bool,
    abort_handle: unsafe fn(*const ()) -> AbortHandle,
    detach: unsafe fn(*mut ()),
    drop: unsafe fn(*mut ()),
}

/// Names the vtable of an `H: RawJoinHandle<T>`.
struct VTableOf<T, H>(PhantomData<fn(T, H)>);

impl<T, H: RawJoinHandle<T>> VTableOf<T, H> {
    const VTABLE: VTable<T> = VTable {
        poll_join: Self::poll_join,
        abort: Self::abort,
        is_finished: Self::is_finished,
        abort_handle: Self::abort_handle,
        detach: Self::detach,
        drop: Self::drop,
    };

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned `H` that nothing else accesses during the call.
    unsafe fn poll_join(ptr: *mut (), cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        // SAFETY: guaranteed by the caller (an `InlineRaw` holding an `H`, borrowed mutably).
        unsafe { (*ptr.cast::<H>()).poll_join(cx) }
    }

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned `H`.
    unsafe fn abort(ptr: *const ()) {
        // SAFETY: guaranteed by the caller (an `InlineRaw` holding an `H`, borrowed shared).
        unsafe { (*ptr.cast::<H>()).abort() }
    }

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned `H`.
    unsafe fn is_finished(ptr: *const ()) -> bool {
        // SAFETY: guaranteed by the caller (an `InlineRaw` holding an `H`, borrowed shared).
        unsafe { (*ptr.cast::<H>()).is_finished() }
    }

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned `H`.
    unsafe fn abort_handle(ptr: *const ()) -> AbortHandle {
        // SAFETY: guaranteed by the caller (an `InlineRaw` holding an `H`, borrowed shared).
        unsafe { (*ptr.cast::<H>()).abort_handle() }
    }

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned `H` that nothing else accesses during the call.
    unsafe fn detach(ptr: *mut ()) {
        // SAFETY: guaranteed by the caller (an `InlineRaw` holding an `H`, borrowed mutably).
        unsafe { (*ptr.cast::<H>()).detach() }
    }

    /// # Safety
    ///
    /// `ptr` points to a live, properly aligned `H` that is never used again.
    unsafe fn drop(ptr: *mut ()) {
        // SAFETY: guaranteed by the caller (`InlineRaw::drop`, which runs once).
        unsafe { ptr.cast::<H>().drop_in_place() }
    }
}

impl<T> InlineRaw<T> {
    /// Stores `raw` inline, or gives it back if it does not fit.
    pub(crate) fn new<H: RawJoinHandle<T> + 'static>(raw: H) -> Result<Self, H>
    where
        T: 'static,
    {
        if size_of::<H>() > size_of::<Storage>() || align_of::<H>() > align_of::<Storage>() {
            return Err(raw);
        }
        let mut storage: Storage = [MaybeUninit::uninit(); WORDS];
        // SAFETY: `storage` is large and aligned enough for an `H` (checked above), it is ours
        // alone, and it is uninitialised, so writing overwrites nothing that needs dropping.
        // Moving `InlineRaw` later moves the `H` bytewise, which every Rust type allows (an `H`
        // is never pinned here).
        unsafe { storage.as_mut_ptr().cast::<H>().write(raw) };
        Ok(InlineRaw {
            storage,
            vtable: &VTableOf::<T, H>::VTABLE as *const VTable<T>,
            _owns: PhantomData,
        })
    }

    fn vtable(&self) -> &VTable<T> {
        // SAFETY: `vtable` was made from a `&'static VTable<T>` in `new` and is never changed.
        unsafe { &*self.vtable }
    }

    fn ptr(&self) -> *const () {
        self.storage.as_ptr().cast()
    }

    fn ptr_mut(&mut self) -> *mut () {
        self.storage.as_mut_ptr().cast()
    }

    pub(crate) fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        // SAFETY: `storage` holds the `H` that `vtable` was made for (both set together in
        // `new`), it lives until `drop`, and `&mut self` makes this access exclusive.
        unsafe { (self.vtable().poll_join)(self.ptr_mut(), cx) }
    }

    pub(crate) fn abort(&self) {
        // SAFETY: as in `poll_join`; `RawJoinHandle::abort` takes `&H`, and `H: Sync`.
        unsafe { (self.vtable().abort)(self.ptr()) }
    }

    pub(crate) fn is_finished(&self) -> bool {
        // SAFETY: as in `abort`.
        unsafe { (self.vtable().is_finished)(self.ptr()) }
    }

    pub(crate) fn abort_handle(&self) -> AbortHandle {
        // SAFETY: as in `abort`.
        unsafe { (self.vtable().abort_handle)(self.ptr()) }
    }

    pub(crate) fn detach(&mut self) {
        // SAFETY: as in `poll_join`.
        unsafe { (self.vtable().detach)(self.ptr_mut()) }
    }
}

impl<T> Drop for InlineRaw<T> {
    fn drop(&mut self) {
        let drop_fn = self.vtable().drop;
        let ptr = self.ptr_mut();
        // SAFETY: `storage` holds the `H` that `vtable` was made for, and this is the last use.
        unsafe { drop_fn(ptr) }
    }
}

// SAFETY: an `InlineRaw<T>` only ever holds an `H: RawJoinHandle<T>`, whose supertraits are
// `Send + Sync`, so moving it to, or sharing it with, another thread moves or shares an `H`. The
// vtable pointer refers to an immutable `'static` table of function pointers.
unsafe impl<T> Send for InlineRaw<T> {}
// SAFETY: see `Send` above.
unsafe impl<T> Sync for InlineRaw<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Waker;

    /// A fake native handle that records what was done to it.
    struct Fake {
        log: Arc<Log>,
        output: Option<Box<u64>>,
    }

    #[derive(Default)]
    struct Log {
        aborts: AtomicUsize,
        detaches: AtomicUsize,
        drops: AtomicUsize,
    }

    impl RawJoinHandle<u64> for Fake {
        fn poll_join(&mut self, _cx: &mut Context<'_>) -> Poll<Result<u64, JoinError>> {
            match self.output.take() {
                Some(output) => Poll::Ready(Ok(*output)),
                None => Poll::Ready(Err(JoinError::Cancelled)),
            }
        }
        fn abort(&self) {
            self.log.aborts.fetch_add(1, Ordering::SeqCst);
        }
        fn is_finished(&self) -> bool {
            self.output.is_none()
        }
        fn abort_handle(&self) -> AbortHandle {
            AbortHandle::from_raw(Finished)
        }
        fn detach(&mut self) {
            self.log.detaches.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.log.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Finished;

    impl crate::runtime::task::RawAbortHandle for Finished {
        fn abort(&self) {}
        fn is_finished(&self) -> bool {
            true
        }
    }

    /// Too big to be stored inline.
    struct Big([usize; WORDS + 1]);

    impl RawJoinHandle<String> for Big {
        fn poll_join(&mut self, _cx: &mut Context<'_>) -> Poll<Result<String, JoinError>> {
            Poll::Ready(Ok(self.0.len().to_string()))
        }
        fn abort(&self) {}
        fn is_finished(&self) -> bool {
            true
        }
        fn abort_handle(&self) -> AbortHandle {
            AbortHandle::from_raw(Finished)
        }
        fn detach(&mut self) {}
    }

    fn fake(log: &Arc<Log>) -> Fake {
        Fake {
            log: Arc::clone(log),
            output: Some(Box::new(42)),
        }
    }

    #[test]
    fn calls_reach_the_stored_handle_and_drop_runs_once() {
        let log = Arc::new(Log::default());
        let raw = InlineRaw::new(fake(&log)).ok().expect("fits inline");
        assert!(!raw.is_finished());
        raw.abort();
        raw.abort();
        assert_eq!(log.aborts.load(Ordering::SeqCst), 2);
        assert!(raw.abort_handle().is_finished());
        // Moving the storage moves the handle bytewise; it must still work afterwards.
        let mut moved = Box::new(raw);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(moved.poll_join(&mut cx), Poll::Ready(Ok(42))));
        assert!(moved.is_finished());
        moved.detach();
        assert_eq!(log.detaches.load(Ordering::SeqCst), 1);
        assert_eq!(log.drops.load(Ordering::SeqCst), 0);
        drop(moved);
        assert_eq!(log.drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_handle_too_big_is_given_back() {
        let big = InlineRaw::new(Big([7; WORDS + 1])).err().expect("too big");
        assert_eq!(big.0, [7; WORDS + 1]);
    }

    #[test]
    fn many_handles_drop_exactly_once() {
        let log = Arc::new(Log::default());
        let handles: Vec<_> = (0..64)
            .map(|_| InlineRaw::new(fake(&log)).ok().expect("fits inline"))
            .collect();
        drop(handles);
        assert_eq!(log.drops.load(Ordering::SeqCst), 64);
    }
}
