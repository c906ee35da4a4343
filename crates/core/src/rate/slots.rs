//! The concurrency slots of a [`RateLimiter`](super::RateLimiter) and its admission *credit*,
//! in one atomic word that the common paths use without taking the limiter's lock.
//!
//! The word holds a `SLOW` flag, the number of running jobs and a credit: a number of
//! admissions and of tokens that may be admitted without the lock, valid while the coarse
//! clock's epoch is the one named in the word (see [`RateLimiter`](super::RateLimiter)'s
//! `State::issue`). A lock-free admission is one compare-and-swap that takes a slot and spends
//! credit together; a lock-free release is one that gives the slot back.
//!
//! The flag is set, under the lock, whenever anyone waits, the limiter is closed or admission
//! is paused; from then on every admission and every release goes through the lock (so
//! releases serve the waiters and nobody barges past them). A hand-off that empties the line
//! leaves it up, and the next operation under the lock lowers it: a line that fills and empties
//! by turns then neither lowers nor raises it (two read-modify-writes) on every waiter. The lock-holding paths set the flag
//! in the same compare-and-swap that decides a job must wait, so a release that happens
//! meanwhile is either seen by that compare-and-swap or goes through the lock.
//!
//! Credit is only ever added under the lock, after the previous credit was collected (taken
//! out of the word, so that what was spent of it is known), and the lock holder collects it
//! first thing: while the lock is held, nothing is admitted without it.

use crate::shim::AtomicU64;
use crate::sync::queue::Mailboxes;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Set while every operation must take the lock.
const SLOW: u64 = 1;
/// One running job, in the units of the word: the running jobs are bits 1 to 20.
const ONE: u64 = 1 << 1;
const RUNNING: u64 = ((1 << 20) - 1) << 1;
/// The most jobs that can run at once (the concurrency limit is capped at it).
pub(crate) const MAX_RUNNING: usize = (1 << 20) - 1;
/// The credit's epoch (its low bits): bits 21 to 31.
const EPOCH_SHIFT: u32 = 21;
const EPOCH_BITS: u32 = 11;
pub(crate) const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
/// Admissions left in the credit: bits 32 to 41.
const REQ_SHIFT: u32 = 32;
pub(crate) const MAX_CREDIT_REQUESTS: u64 = (1 << 10) - 1;
/// Tokens left in the credit: bits 42 to 63.
const TOK_SHIFT: u32 = 42;
pub(crate) const MAX_CREDIT_TOKENS: u64 = (1 << 22) - 1;
const CREDIT: u64 = !(SLOW | RUNNING);

fn running_of(word: u64) -> usize {
    // At most 2^20 - 1: the cast never truncates.
    ((word & RUNNING) / ONE) as usize
}

fn epoch_of(word: u64) -> u64 {
    (word >> EPOCH_SHIFT) & EPOCH_MASK
}

fn requests_of(word: u64) -> u64 {
    (word >> REQ_SHIFT) & MAX_CREDIT_REQUESTS
}

fn tokens_of(word: u64) -> u64 {
    word >> TOK_SHIFT
}

/// Credit that was in the word when it was collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unspent {
    pub(crate) requests: u64,
    pub(crate) tokens: u64,
}

#[derive(Debug)]
pub(crate) struct Slots {
    /// `tokens << 42 | requests << 32 | epoch << 21 | running << 1 | SLOW`.
    word: AtomicU64,
    /// The concurrency limit (at most `MAX_RUNNING`).
    limit: usize,
    /// One more than the last coarse epoch in which no job can be admitted, whatever its cost
    /// (the request budget is spent until then); zero when unknown. Set and cleared under the
    /// lock; lets [`try_acquire`](super::RateLimiter::try_acquire) refuse without it.
    blocked: AtomicU64,
    /// Refusals made without the lock.
    pub(crate) rejected: AtomicU64,
    /// The waiters' mailboxes: an admitted waiter takes its grant without the lock.
    pub(crate) mailboxes: Mailboxes,
}

impl Slots {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Slots {
            word: AtomicU64::new(0),
            limit: limit.unwrap_or(MAX_RUNNING).min(MAX_RUNNING),
            blocked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            mailboxes: Mailboxes::default(),
        }
    }

    /// Under the lock: nothing can be admitted in coarse epochs up to `epoch`.
    pub(crate) fn block_until(&self, epoch: u64) {
        self.blocked.store(epoch.saturating_add(1), Release);
    }

    /// Under the lock: budget came back early (a refund), so the block no longer holds.
    pub(crate) fn unblock(&self) {
        self.blocked.store(0, Release);
    }

    /// The lock-free refusal: whether admission is certainly impossible in coarse `epoch`
    /// (and the flag is clear, so the refusal is `WouldWait` rather than a closed limiter's);
    /// counts the refusal.
    #[inline]
    pub(crate) fn refuse_blocked(&self, epoch: u64) -> bool {
        let blocked = epoch < self.blocked.load(Acquire) && self.word.load(Acquire) & SLOW == 0;
        if blocked {
            self.rejected.fetch_add(1, Relaxed);
        }
        blocked
    }

    /// Applies `f` to the word atomically unless it returns `None`; whether it applied.
    #[inline]
    fn update(&self, f: impl FnMut(u64) -> Option<u64>) -> bool {
        self.update_from(self.word.load(Acquire), f)
    }

    /// [`update`](Self::update) from `seen`, a value the word had.
    #[inline]
    fn update_from(&self, mut seen: u64, mut f: impl FnMut(u64) -> Option<u64>) -> bool {
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

    /// The lock-free admission: takes a slot and spends one admission and `tokens` of the
    /// credit, if the flag is clear, a slot is free, the credit is for `epoch` (when given:
    /// its low bits) and holds enough.
    #[cfg(test)]
    pub(crate) fn try_take_credit(&self, epoch: Option<u64>, tokens: u64) -> bool {
        self.try_take_credit_from(self.snapshot(), epoch, tokens)
    }

    /// The word as it is now, for [`open`](Self::open) and
    /// [`try_take_credit_from`](Self::try_take_credit_from).
    #[inline]
    pub(crate) fn snapshot(&self) -> u64 {
        self.word.load(Acquire)
    }

    /// Whether a lock-free admission could succeed at all with the word at `seen` (the flag
    /// is clear), before paying for a clock reading: a waiter that is bound to queue behind
    /// others, or behind the hand-off that left the flag up, skips it.
    #[inline]
    pub(crate) fn open(seen: u64) -> bool {
        seen & SLOW == 0
    }

    /// [`try_take_credit`](Self::try_take_credit) from `seen`, a value the word had.
    #[inline]
    pub(crate) fn try_take_credit_from(&self, seen: u64, epoch: Option<u64>, tokens: u64) -> bool {
        let limit = self.limit;
        self.update_from(seen, |w| {
            let ok = w & SLOW == 0
                && running_of(w) < limit
                && epoch.is_none_or(|e| e & EPOCH_MASK == epoch_of(w))
                && requests_of(w) >= 1
                && tokens_of(w) >= tokens;
            ok.then(|| w + ONE - (1 << REQ_SHIFT) - (tokens << TOK_SHIFT))
        })
    }

    /// Under the lock: takes the credit out of the word.
    pub(crate) fn collect(&self) -> Unspent {
        let w = self.word.fetch_and(!CREDIT, AcqRel);
        Unspent {
            requests: requests_of(w),
            tokens: tokens_of(w),
        }
    }

    /// Under the lock, after [`collect`](Self::collect): puts a credit in the word.
    pub(crate) fn issue(&self, epoch: u64, requests: u64, tokens: u64) {
        debug_assert!(requests <= MAX_CREDIT_REQUESTS && tokens <= MAX_CREDIT_TOKENS);
        let credit = (epoch & EPOCH_MASK) << EPOCH_SHIFT
            | requests.min(MAX_CREDIT_REQUESTS) << REQ_SHIFT
            | tokens.min(MAX_CREDIT_TOKENS) << TOK_SHIFT;
        self.word.fetch_or(credit, AcqRel);
    }

    /// Under the lock: takes a slot if `admissible` and one is free; otherwise sets the flag
    /// when `wait` (the caller is about to queue), in the same compare-and-swap.
    pub(crate) fn take_or_flag(&self, admissible: bool, wait: bool) -> bool {
        let limit = self.limit;
        let mut took = false;
        self.update(|w| {
            took = admissible && running_of(w) < limit;
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

    /// Under the lock: whether every slot is taken; if so and `wait` (the caller is about to
    /// queue), sets the flag in the same compare-and-swap that saw them taken.
    pub(crate) fn full_then_flag(&self, wait: bool) -> bool {
        let limit = self.limit;
        let mut full = false;
        self.update(|w| {
            full = running_of(w) >= limit;
            // With the flag up already, releases go through the lock this caller holds.
            (full && wait && w & SLOW == 0).then_some(w | SLOW)
        });
        full
    }

    /// The lock-free release: gives the slot back if the flag is clear.
    #[inline]
    pub(crate) fn release_fast(&self) -> bool {
        self.update(|w| (w & SLOW == 0).then(|| w - ONE))
    }

    /// Under the lock: gives a slot back.
    pub(crate) fn release_locked(&self) {
        self.word.fetch_sub(ONE, AcqRel);
    }

    /// Under the lock: sets or clears the flag (a load when it is already as asked).
    pub(crate) fn set_slow(&self, slow: bool) {
        if (self.word.load(Acquire) & SLOW != 0) == slow {
            // Only lock holders change the flag, and one holds the lock.
            return;
        }
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
        slots.issue(0, 10, 0);
        assert!(slots.try_take_credit(None, 0));
        assert!(slots.try_take_credit(None, 0));
        assert!(!slots.try_take_credit(None, 0), "limit reached");
        // A waiter queues: the flag goes up in the compare-and-swap that refused it.
        assert!(!slots.take_or_flag(true, true));
        assert!(!slots.release_fast(), "releases must serve the waiter");
        slots.release_locked();
        assert_eq!(slots.running(), 1);
        assert!(
            !slots.try_take_credit(None, 0),
            "no barging past the waiter"
        );
        assert!(slots.take_or_flag(true, false));
        slots.set_slow(false);
        assert!(slots.release_fast());
        assert_eq!(slots.running(), 1);
        assert_eq!(
            slots.collect(),
            Unspent {
                requests: 8,
                tokens: 0
            }
        );
        assert_eq!(slots.running(), 1, "collecting leaves the slots alone");
    }

    /// A waiter that finds every slot taken raises the flag in the compare-and-swap that saw
    /// them taken (so the release that follows goes through the lock), and only then; a caller
    /// that will not wait leaves the flag alone.
    #[test]
    fn full_slots_raise_the_flag_for_a_waiter() {
        let slots = Slots::new(Some(1));
        assert!(!slots.full_then_flag(true), "a slot is free");
        assert!(slots.take_or_flag(true, false));
        assert!(
            slots.full_then_flag(false),
            "full, but the caller does not wait"
        );
        assert!(slots.release_fast(), "the flag stayed down");
        assert!(slots.take_or_flag(true, false));
        assert!(slots.full_then_flag(true));
        assert!(slots.full_then_flag(true), "already raised: still full");
        assert!(!slots.release_fast(), "the release must serve the waiter");
        assert_eq!(slots.running(), 1);
        slots.release_locked();
        slots.set_slow(false);
        assert!(!slots.full_then_flag(true), "the slot came back");
        assert!(slots.take_or_flag(true, false));
        assert!(slots.release_fast());
    }

    /// Credit is spent in whole admissions and tokens, only in its own epoch, and collecting
    /// it stops lock-free admission until the next issue.
    #[test]
    fn credit_is_bounded_and_dated() {
        let slots = Slots::new(None);
        slots.issue(EPOCH_MASK + 1 + 5, 3, 100);
        assert!(!slots.try_take_credit(Some(4), 10), "another epoch");
        assert!(slots.try_take_credit(Some(5), 60));
        assert!(!slots.try_take_credit(Some(5), 41), "40 tokens left");
        assert!(slots.try_take_credit(Some(5), 40));
        assert!(slots.try_take_credit(Some(5), 0));
        assert!(!slots.try_take_credit(Some(5), 0), "no admission left");
        assert_eq!(
            slots.collect(),
            Unspent {
                requests: 0,
                tokens: 0
            }
        );
        slots.issue(6, MAX_CREDIT_REQUESTS, MAX_CREDIT_TOKENS);
        assert!(slots.try_take_credit(Some(6), MAX_CREDIT_TOKENS));
        assert_eq!(slots.running(), 4);
        assert_eq!(
            slots.collect(),
            Unspent {
                requests: MAX_CREDIT_REQUESTS - 1,
                tokens: 0
            }
        );
        assert!(!slots.try_take_credit(Some(6), 0), "collected");
    }
}
