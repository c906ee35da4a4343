//! The concurrency slots of a [`RateLimiter`](super::RateLimiter), and its counters, in atomics
//! that the common paths use without taking the limiter's lock.
//!
//! One word holds the number of running jobs and a `SLOW` flag. The flag is set, under the
//! lock, whenever anyone waits, the limiter is closed or admission is paused; from then on
//! every admission and every release goes through the lock (so releases serve the waiters and
//! nobody barges past them). While it is clear, a release is one compare-and-swap, and so is an
//! admission when no budget is limited (then nothing else needs the lock). The lock-holding
//! paths set the flag in the same compare-and-swap that decides a job must wait, so a release
//! that happens meanwhile is either seen by that compare-and-swap or goes through the lock.

use crate::shim::{AtomicU64, AtomicUsize};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

/// Set while every operation must take the lock.
const SLOW: usize = 1;
/// One running job, in the units of the word.
const ONE: usize = 2;

#[derive(Debug)]
pub(crate) struct Slots {
    /// `running << 1 | SLOW`.
    word: AtomicUsize,
    /// The concurrency limit (effectively unlimited if none was set).
    limit: usize,
    pub(crate) admitted: AtomicU64,
    pub(crate) completed: AtomicU64,
}

impl Slots {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Slots {
            word: AtomicUsize::new(0),
            limit: limit.unwrap_or(usize::MAX / ONE),
            admitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        }
    }

    /// Applies `f` to the word atomically unless it returns `None`; whether it applied.
    fn update(&self, mut f: impl FnMut(usize) -> Option<usize>) -> bool {
        let mut seen = self.word.load(Acquire);
        loop {
            let Some(new) = f(seen) else { return false };
            match self.word.compare_exchange_weak(seen, new, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(actual) => seen = actual,
            }
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.word.load(Acquire) / ONE
    }

    pub(crate) fn free(&self) -> bool {
        self.running() < self.limit
    }

    /// The lock-free admission: takes a slot if one is free and the flag is clear.
    pub(crate) fn try_take_fast(&self) -> bool {
        let limit = self.limit;
        self.update(|w| (w & SLOW == 0 && w / ONE < limit).then_some(w + ONE))
    }

    /// Under the lock: takes a slot if `admissible` and one is free; otherwise sets the flag
    /// when `wait` (the caller is about to queue), in the same compare-and-swap.
    pub(crate) fn take_or_flag(&self, admissible: bool, wait: bool) -> bool {
        let limit = self.limit;
        let mut took = false;
        self.update(|w| {
            took = admissible && w / ONE < limit;
            if took {
                Some(w + ONE)
            } else if wait {
                Some(w | SLOW)
            } else {
                None
            }
        });
        took
    }

    /// The lock-free release: gives the slot back if the flag is clear.
    pub(crate) fn release_fast(&self) -> bool {
        self.update(|w| (w & SLOW == 0).then(|| w - ONE))
    }

    /// Under the lock: gives a slot back.
    pub(crate) fn release_locked(&self) {
        self.word.fetch_sub(ONE, AcqRel);
    }

    /// Under the lock: sets or clears the flag.
    pub(crate) fn set_slow(&self, slow: bool) {
        if slow {
            self.word.fetch_or(SLOW, AcqRel);
        } else {
            self.word.fetch_and(!SLOW, AcqRel);
        }
    }

    pub(crate) fn count_admitted(&self) {
        self.admitted.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_completed(&self) {
        self.completed.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_sends_everyone_to_the_lock() {
        let slots = Slots::new(Some(2));
        assert!(slots.try_take_fast());
        assert!(slots.try_take_fast());
        assert!(!slots.try_take_fast(), "limit reached");
        // A waiter queues: the flag goes up in the compare-and-swap that refused it.
        assert!(!slots.take_or_flag(true, true));
        assert!(!slots.release_fast(), "releases must serve the waiter");
        slots.release_locked();
        assert_eq!(slots.running(), 1);
        assert!(!slots.try_take_fast(), "no barging past the waiter");
        assert!(slots.take_or_flag(true, false));
        slots.set_slow(false);
        assert!(slots.release_fast());
        assert_eq!(slots.running(), 1);
    }
}
