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
//! While the flag is set only the lock's holder changes the word, so under the lock a permit
//! handed from a release to a waiter never passes through the count: the common contended
//! release does no read-modify-write but the mutex's.
//!
//! Each waiter gets a *ticket* when it queues, in arrival order, and waiters are granted in
//! ticket order: the lock's holder publishes `served`, one past the last ticket it granted. A
//! woken waiter checks `served` against its ticket with one load, without the lock; the
//! granting side has already taken its entry (and its waker) out of the line. A release that
//! frees exactly what the oldest waiter wants (the common contended release) hands it over on a
//! short path of its own (`Permits::hand_off`); every other release takes the general one.
//!
//! *Debt* is what a [`CapacityLimiter`](super::CapacityLimiter) owes after its total was lowered
//! below what is borrowed: released tokens pay it off before anyone else gets them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};

use crate::shim::{AtomicU64, AtomicUsize, Mutex, MutexGuard};

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
    /// Every ticket below this one has been granted (written under the lock, read without).
    served: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Waiters and how many permits each wants.
    line: Line,
    /// Permits owed before any can be handed out again.
    debt: usize,
    /// The configured total (used by the capacity limiter only).
    total: usize,
}

/// The waiters in ticket (arrival) order. A waiter that leaves from the middle leaves a hole
/// (its entry without a waker), dropped when it reaches the front or when holes outnumber the
/// waiters; the front entry is always a waiter.
#[derive(Debug, Default)]
struct Line {
    entries: VecDeque<Entry>,
    /// The next ticket to give out.
    next_ticket: u64,
    /// Entries that are waiters (the others are holes).
    waiting: usize,
}

#[derive(Debug)]
struct Entry {
    ticket: u64,
    wanted: usize,
    /// `None` once the waiter left (a hole).
    waker: Option<Waker>,
}

impl Line {
    fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    fn push(&mut self, wanted: usize, waker: Waker) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.entries.push_back(Entry {
            ticket,
            wanted,
            waker: Some(waker),
        });
        self.waiting += 1;
        ticket
    }

    /// How many permits the oldest waiter wants.
    fn front(&self) -> Option<usize> {
        self.entries.front().map(|entry| entry.wanted)
    }

    /// Takes the oldest waiter out of the line (there is one): its ticket and waker.
    #[inline]
    fn pop(&mut self) -> (u64, Waker) {
        let Some(Entry {
            ticket,
            waker: Some(waker),
            ..
        }) = self.entries.pop_front()
        else {
            unreachable!("the front entry is a waiter");
        };
        self.waiting -= 1;
        self.drop_holes();
        (ticket, waker)
    }

    fn find(&mut self, ticket: u64) -> &mut Entry {
        let index = self
            .entries
            .binary_search_by_key(&ticket, |entry| entry.ticket)
            .expect("a waiting ticket is in the line");
        &mut self.entries[index]
    }

    /// The waiter with `ticket` leaves. Returns whether it was the oldest.
    fn remove(&mut self, ticket: u64) -> bool {
        let entry = self.find(ticket);
        debug_assert!(entry.waker.is_some(), "a waiter leaves once");
        entry.waker = None;
        self.waiting -= 1;
        let was_front = self
            .entries
            .front()
            .is_some_and(|entry| entry.ticket == ticket);
        self.drop_holes();
        if self.entries.len() > 2 * self.waiting + 32 {
            self.entries.retain(|entry| entry.waker.is_some());
        }
        was_front
    }

    fn drop_holes(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|entry| entry.waker.is_none())
        {
            self.entries.pop_front();
        }
    }
}

/// The wakers of the waiters granted under the lock, woken once it is released. Most releases
/// grant one waiter: that one needs no allocation.
#[derive(Debug, Default)]
#[must_use = "collected wakers must be woken"]
struct Wakers {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl Wakers {
    #[inline]
    fn push(&mut self, waker: Waker) {
        if self.first.is_none() {
            self.first = Some(waker);
        } else {
            self.more.push(waker);
        }
    }

    #[inline]
    fn wake_all(self) {
        if let Some(waker) = self.first {
            waker.wake();
            if !self.more.is_empty() {
                wake_more(self.more);
            }
        }
    }
}

/// The wakers past the first (a release that serves several waiters, or a raised total).
#[cold]
#[inline(never)]
fn wake_more(more: Vec<Waker>) {
    more.into_iter().for_each(Waker::wake);
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
            served: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                total: permits,
                ..Inner::default()
            }),
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
        self.lock().line.waiting
    }

    /// Whether the waiter with `ticket` has been granted.
    #[inline]
    fn granted(&self, ticket: u64) -> bool {
        ticket < self.served.load(Acquire)
    }

    /// Takes `n` permits if they are available and nobody waits.
    #[inline]
    pub(crate) fn try_acquire(&self, n: usize) -> bool {
        let mut seen = self.state.load(Acquire);
        loop {
            if seen & SLOW != 0 || seen / ONE < n {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(seen, seen - n * ONE, AcqRel, Acquire)
            {
                Ok(_) => return true,
                Err(actual) => seen = actual,
            }
        }
    }

    /// Returns `n` permits: pays debt first, then serves waiters in order, then adds the rest to
    /// the count, which never goes above `max` (see [`Excess`]).
    #[inline]
    pub(crate) fn release(&self, n: usize, max: usize, excess: Excess) -> Result<(), AboveMax> {
        let mut seen = self.state.load(Acquire);
        loop {
            if seen & SLOW != 0 {
                return self.release_slow(n, max, excess);
            }
            let value = match (seen / ONE).checked_add(n) {
                Some(value) if value <= max => value,
                // Above the maximum: discard or refuse, in the general path.
                _ => return self.release_slow(n, max, excess),
            };
            match self
                .state
                .compare_exchange_weak(seen, value * ONE, AcqRel, Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => seen = actual,
            }
        }
    }

    /// A release while someone waits (or debt is owed, or above the maximum): under the lock.
    #[inline(never)]
    fn release_slow(&self, n: usize, max: usize, excess: Excess) -> Result<(), AboveMax> {
        let mut inner = self.lock();
        if let Some(waker) = self.hand_off(&mut inner, n, max) {
            drop(inner);
            waker.wake();
            return Ok(());
        }
        let mut wakers = Wakers::default();
        let released = self.release_locked(&mut inner, n, max, excess, &mut wakers);
        drop(inner);
        wakers.wake_all();
        released
    }

    /// The common contended release, under the lock: someone waits, nothing is owed, and the
    /// oldest waiter wants exactly what is free once these `n` are added. It takes them all,
    /// so nobody behind it can be served: returns its waker. Otherwise changes nothing.
    #[inline]
    fn hand_off(&self, inner: &mut Inner, n: usize, max: usize) -> Option<Waker> {
        let seen = self.state.load(Acquire);
        if seen & SLOW == 0 || inner.debt != 0 {
            return None;
        }
        let pool = (seen / ONE).checked_add(n).filter(|&pool| pool <= max)?;
        if inner.line.front() != Some(pool) {
            return None;
        }
        let (ticket, waker) = inner.line.pop();
        self.served.store(ticket + 1, Release);
        if inner.line.is_empty() {
            // Nothing left free (the waiter took it all), nobody waiting, nothing owed.
            self.state.store(0, Release);
        } else if seen != SLOW {
            self.state.store(SLOW, Release);
        }
        Some(waker)
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
        let seen = self.state.load(Acquire);
        if seen & SLOW == 0 {
            // Nobody waits and nothing is owed (so nothing was paid): the fast path's update,
            // racing with other fast paths.
            debug_assert_eq!(paid, 0);
            let mut seen = seen;
            loop {
                let value = raise(seen / ONE, rest, max, excess)
                    .map_err(|()| AboveMax { value: seen / ONE })?;
                match self
                    .state
                    .compare_exchange_weak(seen, value * ONE, AcqRel, Acquire)
                {
                    Ok(_) => return Ok(()),
                    Err(actual) if actual & SLOW == 0 => seen = actual,
                    Err(_) => unreachable!("only the lock's holder sets SLOW"),
                }
            }
        }
        // SLOW is set and the lock held: nobody else changes the count. The released permits
        // go straight to the oldest waiters; what is left joins the count.
        let pool =
            raise(seen / ONE, rest, max, excess).map_err(|()| AboveMax { value: seen / ONE })?;
        inner.debt -= paid;
        self.serve(inner, seen, pool, wakers);
        Ok(())
    }

    /// With `SLOW` set (the word was `seen`) and the lock held: hands `pool` permits to the
    /// oldest waiters while the oldest can be served, then stores what is left as the count and
    /// clears `SLOW` if the line is empty and nothing is owed.
    fn serve(&self, inner: &mut Inner, seen: usize, mut pool: usize, wakers: &mut Wakers) {
        debug_assert!(seen & SLOW != 0);
        let mut served = None;
        while let Some(wanted) = inner.line.front().filter(|&wanted| wanted <= pool) {
            pool -= wanted;
            let (ticket, waker) = inner.line.pop();
            served = Some(ticket + 1);
            wakers.push(waker);
        }
        if let Some(served) = served {
            self.served.store(served, Release);
        }
        let slow = !inner.line.is_empty() || inner.debt > 0;
        let state = (pool * ONE) | usize::from(slow);
        if state != seen {
            self.state.store(state, Release);
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
        (inner.total, borrowed, inner.line.waiting)
    }

    /// Changes the total (capacity limiter): raising it serves that many more waiters; lowering
    /// it takes what is available and records the rest as debt, evicting nobody.
    pub(crate) fn set_total(&self, total: usize) {
        let mut wakers = Wakers::default();
        {
            let mut inner = self.lock();
            let inner = &mut *inner;
            let old = std::mem::replace(&mut inner.total, total);
            if total >= old {
                let raised = self.release_locked(
                    inner,
                    total - old,
                    MAX_PERMITS,
                    Excess::Discard,
                    &mut wakers,
                );
                debug_assert!(raised.is_ok(), "discarding never refuses");
            } else {
                // One compare-and-swap takes what it can from the count and sets `SLOW` if debt
                // remains, so no fast-path release slips past the debt.
                let cut = old - total;
                let waiting = !inner.line.is_empty();
                let mut seen = self.state.load(Acquire);
                loop {
                    let available = seen / ONE;
                    let taken = available.min(cut);
                    let slow = waiting || inner.debt + cut - taken > 0;
                    let new = ((available - taken) * ONE) | usize::from(slow);
                    match self.state.compare_exchange_weak(seen, new, AcqRel, Acquire) {
                        Ok(_) => {
                            inner.debt += cut - taken;
                            break;
                        }
                        Err(actual) => seen = actual,
                    }
                }
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

/// A primitive built on [`Permits`], which a [`Waiter`] refers to: the waiter's future can then
/// hold one reference (to the primitive, for its guard) instead of two.
pub(crate) trait HasPermits {
    fn permits(&self) -> &Permits;
}

impl HasPermits for Permits {
    #[inline]
    fn permits(&self) -> &Permits {
        self
    }
}

/// How many permits a [`Waiter`] wants: [`One`] (known at compile time, so it takes no room in
/// the future) or any `usize`.
pub(crate) trait Wanted: Copy {
    fn get(self) -> usize;
}

/// One permit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct One;

impl Wanted for One {
    #[inline]
    fn get(self) -> usize {
        1
    }
}

impl Wanted for usize {
    #[inline]
    fn get(self) -> usize {
        self
    }
}

/// A pending acquisition of `n` permits of `owner`: takes them at once if it can, otherwise
/// waits in line. Dropped after it was granted, it gives its permits back, so they go to the
/// next in line.
pub(crate) struct Waiter<'a, P: HasPermits + ?Sized = Permits, N: Wanted = usize> {
    owner: &'a P,
    n: N,
    /// [`START`], [`DONE`], or `QUEUED + ticket` while in line (or granted, if `served` has
    /// passed the ticket). One word keeps the futures small.
    state: u64,
}

impl<P: HasPermits + ?Sized, N: Wanted> std::fmt::Debug for Waiter<'_, P, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            START => "start",
            DONE => "done",
            _ => "queued",
        };
        f.debug_struct("Waiter")
            .field("wanted", &self.n.get())
            .field("state", &state)
            .finish()
    }
}

/// Not polled yet.
const START: u64 = 0;
/// Completed, or gone.
const DONE: u64 = 1;
/// In line: `QUEUED + ticket`.
const QUEUED: u64 = 2;

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
    /// A waiter for `n` permits of bare [`Permits`] (tests and models).
    #[cfg(test)]
    pub(crate) fn new(permits: &'a Permits, n: usize) -> Self {
        Waiter::of(permits, n)
    }
}

impl<'a, P: HasPermits + ?Sized, N: Wanted> Waiter<'a, P, N> {
    #[inline]
    pub(crate) fn of(owner: &'a P, n: N) -> Self {
        Waiter {
            owner,
            n,
            state: START,
        }
    }

    /// The primitive it waits on.
    #[inline]
    pub(crate) fn owner(&self) -> &'a P {
        self.owner
    }

    /// How many permits it asks for.
    #[inline]
    pub(crate) fn wanted(&self) -> usize {
        self.n.get()
    }

    /// Polls for the permits. Inside a cancelled scope it never completes: the catching
    /// scope drops it, and the drop passes on anything it was handed.
    #[inline]
    pub(crate) fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if super::cancelled() {
            return Poll::Pending;
        }
        let permits = self.owner.permits();
        let ready = match self.state {
            START => permits.try_acquire(self.n.get()),
            DONE => panic!("an acquisition was polled after it completed"),
            queued => permits.granted(queued - QUEUED),
        };
        if ready {
            self.state = DONE;
            return Poll::Ready(());
        }
        permits.poll_slow(self.n.get(), &mut self.state, cx)
    }

    /// Leaves the line, passing on permits handed over but not taken.
    #[inline]
    pub(crate) fn abandon(&mut self) -> Gone {
        let state = std::mem::replace(&mut self.state, DONE);
        if state >= QUEUED {
            self.owner.permits().leave(self.n.get(), state - QUEUED)
        } else {
            Gone::Idle
        }
    }

    /// Whether the permits were taken (the waiter completed).
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.state == DONE
    }
}

impl<P: HasPermits + ?Sized, N: Wanted> Drop for Waiter<'_, P, N> {
    #[inline]
    fn drop(&mut self) {
        if self.state >= QUEUED {
            self.owner
                .permits()
                .leave(self.n.get(), self.state - QUEUED);
        }
    }
}

/// The waiters' slow paths, shared by every kind of [`Waiter`].
impl Permits {
    /// A poll that could not complete at once: queue (first poll), or, in line, look for the
    /// grant under the lock and keep the latest waker.
    #[inline(never)]
    fn poll_slow(&self, n: usize, state: &mut u64, cx: &mut Context<'_>) -> Poll<()> {
        if *state == START {
            return self.enqueue(n, state, cx);
        }
        let ticket = *state - QUEUED;
        let mut inner = self.lock();
        // Granted since the check without the lock?
        if self.granted(ticket) {
            *state = DONE;
            return Poll::Ready(());
        }
        let entry = inner.line.find(ticket);
        let stored = entry.waker.as_mut().expect("a waiting entry has a waker");
        if !stored.will_wake(cx.waker()) {
            stored.clone_from(cx.waker());
        }
        Poll::Pending
    }

    /// Under the lock, takes the permits if nobody is in line and enough are available;
    /// otherwise sets `SLOW` (in the same compare-and-swap, unless it is set already) and
    /// queues.
    fn enqueue(&self, n: usize, state: &mut u64, cx: &mut Context<'_>) -> Poll<()> {
        // Cloned before the lock is taken (a waker's clone may run any code), and dropped
        // after it is released if the permits are taken at once after all.
        let waker = cx.waker().clone();
        let mut inner = self.lock();
        let mut seen = self.state.load(Acquire);
        // With `SLOW` set, someone waits or debt is owed: queue behind. Only the lock's holder
        // clears it, so it stays set.
        while seen & SLOW == 0 {
            // Nobody waits: take the permits if they are there, else set `SLOW` and queue. The
            // fast paths may race with this.
            let new = if seen / ONE >= n {
                seen - n * ONE
            } else {
                seen | SLOW
            };
            match self.state.compare_exchange_weak(seen, new, AcqRel, Acquire) {
                Ok(_) if new & SLOW == 0 => {
                    *state = DONE;
                    return Poll::Ready(());
                }
                Ok(_) => break,
                Err(actual) => seen = actual,
            }
        }
        *state = QUEUED + inner.line.push(n, waker);
        Poll::Pending
    }

    /// The waiter with `ticket`, wanting `n`, goes away: it leaves the line, or passes on the
    /// permits it was granted.
    #[cold]
    #[inline(never)]
    fn leave(&self, n: usize, ticket: u64) -> Gone {
        let mut wakers = Wakers::default();
        let gone = {
            let mut inner = self.lock();
            if self.granted(ticket) {
                let passed =
                    self.release_locked(&mut inner, n, MAX_PERMITS, Excess::Discard, &mut wakers);
                debug_assert!(passed.is_ok(), "discarding never refuses");
                Gone::Granted
            } else {
                if inner.line.remove(ticket) {
                    // The next in line may be servable from the count now that the oldest is
                    // gone (or the line is empty). `SLOW` is set: this waiter was in line.
                    let seen = self.state.load(Acquire);
                    self.serve(&mut inner, seen, seen / ONE, &mut wakers);
                }
                Gone::Waiting
            }
        };
        wakers.wake_all();
        gone
    }
}
