//! The concurrency slots of a [`RateLimiter`](super::RateLimiter), and its admission counter, in
//! one atomic word that the common paths use without taking the limiter's lock.
//!
//! The word holds a `SLOW` flag, the number of running jobs and (the low 32 bits of) the number
//! of jobs admitted so far, so taking a slot counts the admission in the same compare-and-swap,
//! and the number completed is derived (admitted minus running) instead of being counted. The
//! flag is set, under the lock, whenever anyone waits, the limiter is closed or admission is
//! paused; from then on every admission and every release goes through the lock (so releases
//! serve the waiters and nobody barges past them). While it is clear, a release is one atomic
//! operation, and so is an admission when no budget is limited (then nothing else needs the
//! lock). The lock-holding paths set the flag in the same compare-and-swap that decides a job
//! must wait, so a release that happens meanwhile is either seen by that compare-and-swap or
//! goes through the lock.
//!
//! The admission count's high part lives in `carried`: under the lock, once the word's field
//! has passed 2^31 it is moved there (the lock-free paths never let the field wrap; they go
//! to the lock when it is full).

use crate::shim::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

/// Set while every operation must take the lock.
const SLOW: u64 = 1;
/// One running job, in the units of the word.
const ONE: u64 = 2;
/// The running jobs' field: bits 1 to 31.
const RUNNING: u64 = ((1 << 31) - 1) << 1;
/// The most jobs that can run at once (the concurrency limit is capped at it).
pub(crate) const MAX_RUNNING: usize = (1 << 31) - 1;
/// Where the admission count's low part starts.
const ADMITTED_SHIFT: u32 = 32;
/// One admission, in the units of the word.
const ONE_ADMITTED: u64 = 1 << ADMITTED_SHIFT;
/// The admission field's value from which the lock-holding paths carry it into `carried`.
const CARRY_FROM: u64 = 1 << 31;

fn running_of(word: u64) -> usize {
    // At most 2^31 - 1: the cast never truncates.
    ((word & RUNNING) / ONE) as usize
}

fn admitted_of(word: u64) -> u64 {
    word >> ADMITTED_SHIFT
}

/// Whether one more admission fits in the word's field without wrapping.
fn room_to_count(word: u64) -> bool {
    admitted_of(word) < u64::from(u32::MAX)
}

#[derive(Debug)]
pub(crate) struct Slots {
    /// `admitted (low 32 bits) << 32 | running << 1 | SLOW`.
    word: AtomicU64,
    /// The concurrency limit (at most `MAX_RUNNING`).
    limit: usize,
    /// Admissions carried out of the word's field; changed under the limiter's lock only.
    carried: AtomicU64,
}

impl Slots {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Slots {
            word: AtomicU64::new(0),
            limit: limit.unwrap_or(MAX_RUNNING).min(MAX_RUNNING),
            carried: AtomicU64::new(0),
        }
    }

    /// Applies `f` to the word atomically unless it returns `None`; whether it applied.
    fn update(&self, mut f: impl FnMut(u64) -> Option<u64>) -> bool {
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
        running_of(self.word.load(Acquire))
    }

    pub(crate) fn free(&self) -> bool {
        self.running() < self.limit
    }

    /// Under the lock: `(admitted, running)`, from one reading of the word.
    pub(crate) fn counts(&self) -> (u64, usize) {
        let word = self.word.load(Acquire);
        (
            self.carried.load(Relaxed) + admitted_of(word),
            running_of(word),
        )
    }

    /// The lock-free admission: takes a slot (and counts it) if one is free and the flag is
    /// clear.
    pub(crate) fn try_take_fast(&self) -> bool {
        let limit = self.limit;
        self.update(|w| {
            (w & SLOW == 0 && running_of(w) < limit && room_to_count(w))
                .then(|| w + ONE + ONE_ADMITTED)
        })
    }

    /// Under the lock: moves the admission field into `carried` once it is large.
    fn carry(&self) {
        let field = admitted_of(self.word.load(Acquire));
        if field >= CARRY_FROM {
            // The lock-free paths only add to the field meanwhile, so subtracting what was
            // read never borrows.
            self.word.fetch_sub(field << ADMITTED_SHIFT, AcqRel);
            self.carried.fetch_add(field, Relaxed);
        }
    }

    /// Under the lock: takes a slot (and counts the admission) if `admissible` and one is
    /// free; otherwise sets the flag when `wait` (the caller is about to queue), in the same
    /// compare-and-swap.
    pub(crate) fn take_or_flag(&self, admissible: bool, wait: bool) -> bool {
        let limit = self.limit;
        loop {
            self.carry();
            let mut took = false;
            let mut full = false;
            self.update(|w| {
                took = admissible && running_of(w) < limit;
                full = took && !room_to_count(w);
                if full {
                    None
                } else if took {
                    Some(w + ONE + ONE_ADMITTED)
                } else if wait {
                    Some(w | SLOW)
                } else {
                    None
                }
            });
            // Only if 2^31 lock-free admissions raced this one since `carry`: carry again.
            if !full {
                return took;
            }
        }
    }

    /// The lock-free release: gives the slot back if the flag is clear.
    pub(crate) fn release_fast(&self) -> bool {
        self.update(|w| (w & SLOW == 0).then(|| w - ONE))
    }

    /// Under the lock: gives a slot back.
    pub(crate) fn release_locked(&self) {
        self.word.fetch_sub(ONE, AcqRel);
    }

    /// Under the lock: gives back a slot taken for an admission that was never used (a
    /// waiter dropped after it was granted), and uncounts the admission.
    pub(crate) fn release_unadmitted(&self) {
        if admitted_of(self.word.load(Acquire)) > 0 {
            // Only the lock-holding paths lower the field, so it stays above zero.
            self.word.fetch_sub(ONE + ONE_ADMITTED, AcqRel);
        } else {
            self.carried.fetch_sub(1, Relaxed);
            self.word.fetch_sub(ONE, AcqRel);
        }
    }

    /// Under the lock: sets or clears the flag.
    pub(crate) fn set_slow(&self, slow: bool) {
        if slow {
            self.word.fetch_or(SLOW, AcqRel);
        } else {
            self.word.fetch_and(!SLOW, AcqRel);
        }
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
        assert_eq!(slots.counts(), (3, 1));
    }

    /// The admission count survives its field filling up: the lock-free path stops short of
    /// wrapping, the locked path carries, and an unused admission is uncounted across a carry.
    #[test]
    fn the_admission_count_carries() {
        let slots = Slots::new(None);
        let almost = (u64::from(u32::MAX) - 1) << ADMITTED_SHIFT;
        slots.word.store(almost, Relaxed);
        assert!(slots.try_take_fast());
        assert!(!slots.try_take_fast(), "the field is full");
        assert!(slots.take_or_flag(true, false), "the locked path carries");
        assert_eq!(slots.counts(), (u64::from(u32::MAX) + 1, 2));
        assert_eq!(admitted_of(slots.word.load(Relaxed)), 1);
        slots.release_unadmitted();
        slots.release_unadmitted();
        assert_eq!(slots.counts(), (u64::from(u32::MAX) - 1, 0));
        assert!(slots.try_take_fast());
        assert_eq!(slots.counts(), (u64::from(u32::MAX), 1));
    }
}
