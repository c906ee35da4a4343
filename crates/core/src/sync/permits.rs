//! The fair counting core of [`Lock`](super::Lock), [`Semaphore`](super::Semaphore) and
//! [`CapacityLimiter`](super::CapacityLimiter).
//!
//! One atomic word holds the available permits and a `SLOW` flag. While nobody waits (and no
//! debt is owed, see below) the flag is clear, and acquiring and releasing are one
//! compare-and-swap each, with no lock. As soon as a waiter queues, the flag is set in the same
//! compare-and-swap that decided it must wait; from then on every acquire fails its fast path
//! (no barging past the line) and every release goes through the lock and hands its permits
//! straight to the oldest waiters. The flag is cleared, under the lock, when the line empties.
//!
//! *Debt* is what a [`CapacityLimiter`](super::CapacityLimiter) owes after its total was lowered
//! below what is borrowed: released tokens pay it off before anyone else gets them.

use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::PoisonError;
use std::task::{Context, Poll};

use super::queue::{Abandoned, WaitList, Wakers};
use crate::shim::{AtomicUsize, Mutex, MutexGuard};

/// The most permits (or tokens) a primitive can hold.
pub(crate) const MAX_PERMITS: usize = usize::MAX >> 2;

/// Set while someone waits or debt is owed: every operation must take the lock.
const SLOW: usize = 1;
/// One permit, in the units of the state word.
const ONE: usize = 2;

#[derive(Debug)]
pub(crate) struct Permits {
    /// `available << 1 | SLOW`.
    state: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Waiters and how many permits each wants.
    waiters: WaitList<usize, ()>,
    /// Permits owed before any can be handed out again.
    debt: usize,
    /// The configured total (used by the capacity limiter only).
    total: usize,
}

/// What to do with permits that would raise the count above a maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Excess {
    /// Refuse the whole release.
    Refuse,
    /// Keep the count at the maximum and discard the rest.
    Discard,
}

/// The count would have gone above the maximum; nothing was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AboveMax {
    pub(crate) value: usize,
}

impl Permits {
    pub(crate) fn new(permits: usize) -> Self {
        debug_assert!(permits <= MAX_PERMITS);
        Permits {
            state: AtomicUsize::new(permits * ONE),
            inner: Mutex::new(Inner {
                total: permits,
                ..Inner::default()
            }),
        }
    }

    /// Applies `f` to the state word atomically, unless it returns `None`; returns the value it
    /// saw (`Err` if `f` declined). A plain compare-and-swap loop.
    fn update(&self, mut f: impl FnMut(usize) -> Option<usize>) -> Result<usize, usize> {
        let mut seen = self.state.load(Acquire);
        loop {
            let new = f(seen).ok_or(seen)?;
            match self.state.compare_exchange_weak(seen, new, AcqRel, Acquire) {
                Ok(previous) => return Ok(previous),
                Err(actual) => seen = actual,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Permits available right now (zero while debt is owed).
    pub(crate) fn available(&self) -> usize {
        self.state.load(Acquire) / ONE
    }

    /// How many waiters are in line.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Takes `n` permits if they are available and nobody waits.
    pub(crate) fn try_acquire(&self, n: usize) -> bool {
        self.update(|s| (s & SLOW == 0 && s / ONE >= n).then(|| s - n * ONE))
            .is_ok()
    }

    /// Returns `n` permits: pays debt first, then serves waiters in order, then adds the rest to
    /// the count, which never goes above `max` (see [`Excess`]).
    pub(crate) fn release(&self, n: usize, max: usize, excess: Excess) -> Result<(), AboveMax> {
        let fast = self.update(|s| {
            if s & SLOW != 0 {
                return None;
            }
            raise(s / ONE, n, max, excess).ok().map(|value| value * ONE)
        });
        match fast {
            Ok(_) => Ok(()),
            Err(s) if s & SLOW == 0 => Err(AboveMax { value: s / ONE }),
            Err(_) => {
                let mut wakers = Wakers::default();
                let released = self.release_locked(&mut self.lock(), n, max, excess, &mut wakers);
                wakers.wake_all();
                released
            }
        }
    }

    fn release_locked(
        &self,
        inner: &mut Inner,
        n: usize,
        max: usize,
        excess: Excess,
        wakers: &mut Wakers,
    ) -> Result<(), AboveMax> {
        let paid = n.min(inner.debt);
        let rest = n - paid;
        if rest > 0 {
            self.update(|s| {
                let value = raise(s / ONE, rest, max, excess).ok()?;
                Some((value * ONE) | (s & SLOW))
            })
            .map_err(|s| AboveMax { value: s / ONE })?;
        }
        inner.debt -= paid;
        self.serve(inner, wakers);
        Ok(())
    }

    /// Hands available permits to the oldest waiters while the oldest can be served, then
    /// brings the `SLOW` flag in line with the queue and the debt.
    fn serve(&self, inner: &mut Inner, wakers: &mut Wakers) {
        while let Some(&wanted) = inner.waiters.front() {
            let took = self.update(|s| (s / ONE >= wanted).then(|| s - wanted * ONE));
            if took.is_err() {
                break;
            }
            wakers.extend(inner.waiters.grant_front(|_| ()));
        }
        if inner.waiters.is_empty() && inner.debt == 0 {
            self.state.fetch_and(!SLOW, AcqRel);
        } else {
            self.state.fetch_or(SLOW, AcqRel);
        }
    }

    /// The configured total (capacity limiter).
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// `(total, borrowed, waiting)`, read together (capacity limiter).
    pub(crate) fn usage(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        let available = self.available();
        let borrowed = (inner.total + inner.debt).saturating_sub(available);
        (inner.total, borrowed, inner.waiters.len())
    }

    /// Changes the total (capacity limiter): raising it serves that many more waiters; lowering
    /// it takes what is available and records the rest as debt, evicting nobody.
    pub(crate) fn set_total(&self, total: usize) {
        let mut wakers = Wakers::default();
        {
            let mut inner = self.lock();
            let old = std::mem::replace(&mut inner.total, total);
            if total >= old {
                let raised = self.release_locked(
                    &mut inner,
                    total - old,
                    MAX_PERMITS,
                    Excess::Discard,
                    &mut wakers,
                );
                debug_assert!(raised.is_ok(), "discarding never refuses");
            } else {
                let cut = old - total;
                let before =
                    self.update(|s| Some(((s / ONE).saturating_sub(cut) * ONE) | (s & SLOW)));
                let taken = before.map_or(0, |s| (s / ONE).min(cut));
                inner.debt += cut - taken;
                self.serve(&mut inner, &mut wakers);
            }
        }
        wakers.wake_all();
    }
}

/// `value + n`, bounded by `max` as `excess` says.
fn raise(value: usize, n: usize, max: usize, excess: Excess) -> Result<usize, ()> {
    match value.checked_add(n).filter(|&sum| sum <= max) {
        Some(sum) => Ok(sum),
        None if excess == Excess::Discard => Ok(max.max(value)),
        None => Err(()),
    }
}

/// A pending acquisition of `n` permits: takes them at once if it can, otherwise waits in line.
/// Dropped after it was granted, it gives its permits back, so they go to the next in line.
#[derive(Debug)]
pub(crate) struct Waiter<'a> {
    permits: &'a Permits,
    n: usize,
    state: WaiterState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaiterState {
    Start,
    Queued(usize),
    Done,
}

/// What a waiter that went away had reached (for tests and models).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// It never queued, or had already completed.
    Idle,
    /// It was still in line.
    Waiting,
    /// It had been handed its permits, which were passed on.
    Granted,
}

impl<'a> Waiter<'a> {
    pub(crate) fn new(permits: &'a Permits, n: usize) -> Self {
        Waiter {
            permits,
            n,
            state: WaiterState::Start,
        }
    }

    /// How many permits it asks for.
    pub(crate) fn wanted(&self) -> usize {
        self.n
    }

    /// Polls for the permits. Inside a cancelled scope it never completes: the catching
    /// scope drops it, and the drop passes on anything it was handed.
    pub(crate) fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if super::cancelled() {
            return Poll::Pending;
        }
        match self.state {
            WaiterState::Start => {
                if self.permits.try_acquire(self.n) {
                    self.state = WaiterState::Done;
                    return Poll::Ready(());
                }
                self.enqueue(cx)
            }
            WaiterState::Queued(key) => {
                let granted = self.permits.lock().waiters.poll(key, cx.waker());
                if granted.is_some() {
                    self.state = WaiterState::Done;
                    return Poll::Ready(());
                }
                Poll::Pending
            }
            WaiterState::Done => panic!("an acquisition was polled after it completed"),
        }
    }

    /// The slow path: under the lock, takes the permits if nobody is in line and enough are
    /// available; otherwise sets `SLOW` (in the same compare-and-swap) and queues.
    fn enqueue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let n = self.n;
        let mut inner = self.permits.lock();
        let line_empty = inner.waiters.is_empty();
        let before = self.permits.update(|s| {
            if line_empty && s / ONE >= n {
                Some(s - n * ONE)
            } else {
                Some(s | SLOW)
            }
        });
        let Ok(before) = before else {
            unreachable!("the update always applies")
        };
        if line_empty && before / ONE >= n {
            self.state = WaiterState::Done;
            return Poll::Ready(());
        }
        self.state = WaiterState::Queued(inner.waiters.push(n, cx.waker()));
        Poll::Pending
    }

    /// Leaves the line, passing on permits handed over but not taken.
    pub(crate) fn abandon(&mut self) -> Gone {
        let WaiterState::Queued(key) = std::mem::replace(&mut self.state, WaiterState::Done) else {
            return Gone::Idle;
        };
        let mut wakers = Wakers::default();
        let gone = {
            let mut inner = self.permits.lock();
            match inner.waiters.abandon(key) {
                Abandoned::Waiting(_) => {
                    // The next in line may be servable now that this one is gone.
                    self.permits.serve(&mut inner, &mut wakers);
                    Gone::Waiting
                }
                Abandoned::Granted(()) => {
                    let passed = self.permits.release_locked(
                        &mut inner,
                        self.n,
                        MAX_PERMITS,
                        Excess::Discard,
                        &mut wakers,
                    );
                    debug_assert!(passed.is_ok(), "discarding never refuses");
                    Gone::Granted
                }
            }
        };
        wakers.wake_all();
        gone
    }

    /// Whether the permits were taken (the waiter completed).
    pub(crate) fn is_done(&self) -> bool {
        self.state == WaiterState::Done
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}
