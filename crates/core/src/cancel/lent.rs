//! The deadline of the lazy frame on top of the current scope, lent by reference.
//!
//! A lazy region (`fail_after` and friends) that completes at its first poll must cost next
//! to nothing, and its deadline is read only if something inside makes the region's node. A
//! region therefore lends its deadline to this thread-local by reference while its future is
//! polled, instead of copying it in: a copy of the three words just after the caller built
//! them (with narrower stores) cannot be forwarded from the store buffer and stalled the first
//! poll by several nanoseconds (measured; see docs/performance.md, "Cancel scopes (T9)").
//!
//! One of sheepdog's `unsafe` modules; its unit tests run under miri
//! (`cargo +nightly miri test -p sheepdog-core --lib lent`).

#![allow(
    unsafe_code,
    reason = "a thread-local reference to a borrow that a running call holds; see `get`"
)]

use std::cell::Cell;

use super::node::Deadline;
use crate::shim::thread_local;

thread_local! {
    /// Null, or the deadline lent by the innermost [`lend`] call still running on this thread.
    static LENT: Cell<*const Deadline> = const { Cell::new(std::ptr::null()) };
}

/// Lends `deadline` to [`get`] while `f` runs; the previous loan is back when `f` returns or
/// unwinds.
#[inline]
pub(crate) fn lend<R>(deadline: &Deadline, f: impl FnOnce() -> R) -> R {
    struct Restore(*const Deadline);
    impl Drop for Restore {
        #[inline]
        fn drop(&mut self) {
            LENT.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(LENT.with(|cell| cell.replace(deadline)));
    f()
}

/// The deadline lent by the innermost running [`lend`], or `Deadline::None` if there is none.
pub(crate) fn get() -> Deadline {
    let lent = LENT.with(Cell::get);
    if lent.is_null() {
        return Deadline::None;
    }
    // SAFETY: a non-null pointer in `LENT` was stored by a `lend` call that is still running on
    // this thread: every `lend` puts the previous value back when it returns or unwinds (its
    // `Restore` guard), so the values `LENT` takes form a stack matching the running calls.
    // That call's `deadline: &Deadline` borrow lasts for the whole call, so the pointee is
    // alive and not mutated (`Deadline` has no interior mutability).
    unsafe { *lent }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn loans_nest_and_end_with_their_call() {
        assert_eq!(get(), Deadline::None);
        let outer = Deadline::After(Duration::from_secs(1));
        let inner = Deadline::After(Duration::from_secs(2));
        let seen = lend(&outer, || {
            let first = get();
            let nested = lend(&inner, get);
            (first, nested, get())
        });
        assert_eq!(seen, (outer, inner, outer));
        assert_eq!(get(), Deadline::None);
    }

    #[test]
    fn a_loan_ends_when_its_call_unwinds() {
        let outer = Deadline::After(Duration::from_secs(3));
        lend(&outer, || {
            let unwound = std::panic::catch_unwind(|| {
                let inner = Box::new(Deadline::After(Duration::from_secs(4)));
                lend(&inner, || panic!("unwinds through the loan"));
            });
            assert!(unwound.is_err());
            // The inner deadline (freed by now) is no longer lent.
            assert_eq!(get(), outer);
        });
        assert_eq!(get(), Deadline::None);
    }

    #[test]
    fn loans_are_per_thread() {
        let deadline = Deadline::After(Duration::from_secs(5));
        lend(&deadline, || {
            let other = std::thread::spawn(get).join().expect("the thread ran");
            assert_eq!(other, Deadline::None);
            assert_eq!(get(), deadline);
        });
    }
}
