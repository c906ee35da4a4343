//! The fair wait queue every primitive of [`sync`](crate::sync) shares: a FIFO of waiters kept in
//! a slab (no intrusive pointers, so no `unsafe`), each with its waker and what it asked for.
//!
//! A waiter is *granted* by the side that can serve it: it leaves the line, its slot holds the
//! grant (a permit, an item, a notification) and its waker is returned for waking once the
//! caller has released its lock. The waiter takes the grant at its next poll. A waiter that
//! goes away calls [`WaitList::abandon`] and learns whether it still waited (its request comes
//! back) or had been granted (the grant comes back, for the caller to pass on) — so nothing
//! handed to a waiter is ever lost.
//!
//! A grant that fits in a word can instead be *handed* through a [`Mailboxes`] cell that lives
//! beside the lock ([`WaitList::hand`]): the waiter then takes it with one load, without the
//! lock. Its slot stays reserved until the waiter has, and a later [`WaitList::push`] reuses
//! it ([`WaitList::reclaim`]); the rate limiter's line works this way.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::OnceLock;
use std::task::Waker;

use crate::shim::AtomicU64;

/// A FIFO of waiters with direct hand-off. Keys stay valid until the waiter takes its grant or
/// abandons its slot; only the waiter that got a key may use it.
#[derive(Debug)]
pub(crate) struct WaitList<R, G> {
    slots: Vec<Slot<R, G>>,
    /// The first vacant slot; vacant slots are chained through `Slot::Vacant`.
    free: Option<usize>,
    /// The oldest and newest waiting slots; waiting slots are chained in arrival order.
    head: Option<usize>,
    tail: Option<usize>,
    waiting: usize,
    /// Slots handed through a mailbox whose waiters may not have taken their grants yet.
    handed: Vec<usize>,
}

#[derive(Debug)]
enum Slot<R, G> {
    Vacant {
        next_free: Option<usize>,
    },
    Waiting {
        request: R,
        waker: Waker,
        prev: Option<usize>,
        next: Option<usize>,
    },
    Granted(G),
    /// Granted through its mailbox ([`WaitList::hand`]); reused once the waiter took it.
    Handed,
}

/// What a waiter left behind when it abandoned its slot.
#[derive(Debug)]
pub(crate) enum Abandoned<R, G> {
    /// It was still in line; here is its request back.
    Waiting(R),
    /// It had been granted; the grant must be passed on.
    Granted(G),
}

impl<R, G> Default for WaitList<R, G> {
    fn default() -> Self {
        WaitList {
            slots: Vec::new(),
            free: None,
            head: None,
            tail: None,
            waiting: 0,
            handed: Vec::new(),
        }
    }
}

impl<R, G> WaitList<R, G> {
    /// How many waiters are in line (granted ones no longer count).
    pub(crate) fn len(&self) -> usize {
        self.waiting
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Puts a waiter at the back of the line.
    pub(crate) fn push(&mut self, request: R, waker: &Waker) -> usize {
        let slot = Slot::Waiting {
            request,
            waker: waker.clone(),
            prev: self.tail,
            next: None,
        };
        let key = match self.free {
            Some(key) => {
                let Slot::Vacant { next_free } = self.slots[key] else {
                    unreachable!("the free list holds only vacant slots")
                };
                self.free = next_free;
                self.slots[key] = slot;
                key
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        match self.tail {
            Some(tail) => self.set_next(tail, Some(key)),
            None => self.head = Some(key),
        }
        self.tail = Some(key);
        self.waiting += 1;
        key
    }

    /// The request of the oldest waiter.
    pub(crate) fn front(&self) -> Option<&R> {
        match &self.slots[self.head?] {
            Slot::Waiting { request, .. } => Some(request),
            _ => unreachable!("the line holds only waiting slots"),
        }
    }

    /// Grants the oldest waiter: `grant` turns its request into what it will receive. Returns
    /// the waiter's waker, to be woken after the caller's lock is released.
    pub(crate) fn grant_front(&mut self, grant: impl FnOnce(R) -> G) -> Option<Waker> {
        let key = self.head?;
        Some(self.grant(key, grant))
    }

    /// Grants the waiter `key`, wherever it is in line (for queues whose caller allows
    /// overtaking). Returns its waker, to be woken after the caller's lock is released.
    ///
    /// # Panics
    ///
    /// If `key` is not waiting.
    pub(crate) fn grant(&mut self, key: usize, grant: impl FnOnce(R) -> G) -> Waker {
        let (request, waker) = self.unlink(key);
        self.slots[key] = Slot::Granted(grant(request));
        waker
    }

    /// Takes the waiter `key` out of the line, wherever it is, to be granted through its
    /// mailbox (the caller posts the grant there): returns its request and its waker, to be
    /// woken after the caller's lock is released. The slot stays reserved until the waiter
    /// has taken the grant ([`reclaim`](Self::reclaim)).
    ///
    /// # Panics
    ///
    /// If `key` is not waiting.
    pub(crate) fn hand(&mut self, key: usize) -> (R, Waker) {
        self.handed.push(key);
        self.unlink_leaving(key, Slot::Handed)
    }

    /// The key and the request of the oldest waiter.
    #[inline]
    pub(crate) fn front_entry(&self) -> Option<(usize, &R)> {
        let key = self.head?;
        match &self.slots[key] {
            Slot::Waiting { request, .. } => Some((key, request)),
            _ => unreachable!("the line holds only waiting slots"),
        }
    }

    /// Returns to the free list the handed slots whose waiters took their grants (`taken`
    /// says which), if no slot is free; [`push`](Self::push) then reuses them.
    #[inline]
    pub(crate) fn reclaim(&mut self, taken: impl Fn(usize) -> bool) {
        if self.free.is_some() || self.handed.is_empty() {
            return;
        }
        // Usually the last slot handed is the only one, its grant taken.
        if let [key] = self.handed[..] {
            if taken(key) {
                self.handed.clear();
                self.vacate(key);
            }
            return;
        }
        let mut handed = std::mem::take(&mut self.handed);
        handed.retain(|&key| {
            let done = taken(key);
            if done {
                self.vacate(key);
            }
            !done
        });
        self.handed = handed;
    }

    /// Refreshes the waker of the waiter `key`, if it still waits.
    pub(crate) fn refresh(&mut self, key: usize, waker: &Waker) {
        if let Slot::Waiting { waker: stored, .. } = &mut self.slots[key] {
            if !stored.will_wake(waker) {
                stored.clone_from(waker);
            }
        }
    }

    /// The waiter `key` of a line that hands grants through mailboxes goes away: leaves the
    /// line and gets its request back if it still waited, or `None` if it was handed its
    /// grant (the caller takes it out of the mailbox, to pass it on, and marks the mailbox
    /// taken; the slot is reclaimed later).
    pub(crate) fn abandon_handed(&mut self, key: usize) -> Option<R> {
        if let Slot::Handed = self.slots[key] {
            return None;
        }
        let (request, _waker) = self.unlink(key);
        self.vacate(key);
        Some(request)
    }

    /// How many slots the list has allocated (in use or free).
    #[cfg(test)]
    pub(crate) fn slab_len(&self) -> usize {
        self.slots.len()
    }

    /// How many handed slots are kept for reclaiming (their waiters may not have taken their
    /// grants yet).
    #[cfg(test)]
    pub(crate) fn handed_len(&self) -> usize {
        self.handed.len()
    }

    /// The key of the oldest waiter.
    pub(crate) fn front_key(&self) -> Option<usize> {
        self.head
    }

    /// A clone of the oldest waiter's waker.
    pub(crate) fn front_waker(&self) -> Option<Waker> {
        match &self.slots[self.head?] {
            Slot::Waiting { waker, .. } => Some(waker.clone()),
            _ => unreachable!("the line holds only waiting slots"),
        }
    }

    /// The waiters' keys and requests, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &R)> + '_ {
        let mut next = self.head;
        std::iter::from_fn(move || {
            let key = next?;
            let Slot::Waiting {
                request,
                next: after,
                ..
            } = &self.slots[key]
            else {
                unreachable!("the line holds only waiting slots")
            };
            next = *after;
            Some((key, request))
        })
    }

    /// Grants every waiter, oldest first, collecting their wakers into `wakers`.
    pub(crate) fn grant_all(&mut self, mut grant: impl FnMut(R) -> G, wakers: &mut Wakers) {
        while let Some(waker) = self.grant_front(&mut grant) {
            wakers.push(waker);
        }
    }

    /// Takes the waiter's grant if it has one; otherwise refreshes its waker.
    pub(crate) fn poll(&mut self, key: usize, waker: &Waker) -> Option<G> {
        if let Slot::Waiting { waker: stored, .. } = &mut self.slots[key] {
            if !stored.will_wake(waker) {
                stored.clone_from(waker);
            }
            return None;
        }
        self.take_grant(key)
    }

    /// Takes the waiter's grant if it has one, leaving its waker alone otherwise.
    pub(crate) fn take_grant(&mut self, key: usize) -> Option<G> {
        match self.slots[key] {
            Slot::Waiting { .. } => None,
            Slot::Granted(_) => match self.vacate(key) {
                Slot::Granted(grant) => Some(grant),
                _ => unreachable!("matched above"),
            },
            Slot::Vacant { .. } | Slot::Handed => {
                unreachable!("a key is used only by its waiter")
            }
        }
    }

    /// The waiter goes away: leaves the line, or hands back its grant.
    pub(crate) fn abandon(&mut self, key: usize) -> Abandoned<R, G> {
        if let Slot::Waiting { .. } = self.slots[key] {
            let (request, _waker) = self.unlink(key);
            self.vacate(key);
            return Abandoned::Waiting(request);
        }
        match self.vacate(key) {
            Slot::Granted(grant) => Abandoned::Granted(grant),
            _ => unreachable!("a key is used only by its waiter"),
        }
    }

    /// Takes a waiting slot out of the line, leaving a placeholder to be overwritten.
    fn unlink(&mut self, key: usize) -> (R, Waker) {
        self.unlink_leaving(key, Slot::Vacant { next_free: None })
    }

    /// [`unlink`](Self::unlink), leaving `placeholder` in the slot.
    #[inline]
    fn unlink_leaving(&mut self, key: usize, placeholder: Slot<R, G>) -> (R, Waker) {
        let Slot::Waiting {
            request,
            waker,
            prev,
            next,
        } = std::mem::replace(&mut self.slots[key], placeholder)
        else {
            unreachable!("only waiting slots are unlinked")
        };
        match prev {
            Some(prev) => self.set_next(prev, next),
            None => self.head = next,
        }
        match next {
            Some(next) => self.set_prev(next, prev),
            None => self.tail = prev,
        }
        self.waiting -= 1;
        (request, waker)
    }

    /// Returns a slot to the free list, handing back what it held.
    fn vacate(&mut self, key: usize) -> Slot<R, G> {
        let vacant = Slot::Vacant {
            next_free: self.free,
        };
        self.free = Some(key);
        std::mem::replace(&mut self.slots[key], vacant)
    }

    fn set_next(&mut self, key: usize, to: Option<usize>) {
        let Slot::Waiting { next, .. } = &mut self.slots[key] else {
            unreachable!("the line holds only waiting slots")
        };
        *next = to;
    }

    fn set_prev(&mut self, key: usize, to: Option<usize>) {
        let Slot::Waiting { prev, .. } = &mut self.slots[key] else {
            unreachable!("the line holds only waiting slots")
        };
        *prev = to;
    }
}

/// The mailboxes of a [`WaitList`] whose grants fit in a word, one per slot key, kept beside
/// the lock so that a waiter reads its own without it. A mailbox holds [`EMPTY`] while its
/// waiter waits, the grant once handed ([`post`](Self::post), under the lock), and [`TAKEN`]
/// once the waiter took it ([`take`](Self::take), without the lock); the lock's holder reuses
/// the slot only after that ([`taken`](Self::taken)).
///
/// Mailboxes are allocated in segments of doubling size that never move, so a reference to
/// one stays valid while the list's owner lives; no `unsafe` is needed.
#[derive(Debug, Default)]
pub(crate) struct Mailboxes {
    segments: [OnceLock<Box<[AtomicU64]>>; SEGMENTS],
}

/// A mailbox whose waiter waits (or whose slot is not in use).
pub(crate) const EMPTY: u64 = 0;
/// A mailbox whose grant was taken.
pub(crate) const TAKEN: u64 = u64::MAX;
/// Mailboxes in the first segment; segment `s` holds `FIRST << s`.
const FIRST: usize = 8;
const SEGMENTS: usize = 32;

impl Mailboxes {
    /// The segment and the index in it of mailbox `key`.
    #[inline]
    fn locate(key: usize) -> (usize, usize) {
        let k = key / FIRST + 1;
        let segment = (usize::BITS - 1 - k.leading_zeros()) as usize;
        (segment, key - FIRST * ((1 << segment) - 1))
    }

    #[inline]
    fn cell(&self, key: usize) -> &AtomicU64 {
        let (segment, index) = Self::locate(key);
        let cells = self.segments[segment]
            .get()
            .expect("a mailbox is opened before it is used");
        &cells[index]
    }

    /// Under the lock, for a waiter just pushed with `key`: makes its mailbox exist and empty.
    #[inline]
    pub(crate) fn open(&self, key: usize) {
        let (segment, index) = Self::locate(key);
        let cells = match self.segments[segment].get() {
            Some(cells) => cells,
            None => self.grow(segment),
        };
        cells[index].store(EMPTY, Relaxed);
    }

    /// Under the lock: allocates `segment` (every mailbox in it empty).
    #[cold]
    fn grow(&self, segment: usize) -> &[AtomicU64] {
        self.segments[segment].get_or_init(|| {
            (0..FIRST << segment)
                .map(|_| AtomicU64::new(EMPTY))
                .collect()
        })
    }

    /// Under the lock: hands `grant` (neither [`EMPTY`] nor [`TAKEN`]) to the waiter `key`.
    pub(crate) fn post(&self, key: usize, grant: u64) {
        debug_assert!(grant != EMPTY && grant != TAKEN);
        self.cell(key).store(grant, Release);
    }

    /// By the waiter `key`, with or without the lock: its grant, if it was handed one (the
    /// mailbox is then marked taken, and the waiter must not use `key` again).
    #[inline]
    pub(crate) fn take(&self, key: usize) -> Option<u64> {
        let cell = self.cell(key);
        let grant = cell.load(Acquire);
        if grant == EMPTY {
            return None;
        }
        debug_assert_ne!(grant, TAKEN, "a waiter takes its grant once");
        cell.store(TAKEN, Release);
        Some(grant)
    }

    /// Under the lock: whether the waiter of the handed slot `key` took its grant.
    #[inline]
    pub(crate) fn taken(&self, key: usize) -> bool {
        self.cell(key).load(Acquire) == TAKEN
    }
}

/// Wakers collected under a lock and woken after it is released; two wakers (a granted waiter
/// and the next head of a line) need no allocation.
#[derive(Debug, Default)]
#[must_use = "collected wakers must be woken"]
pub(crate) struct Wakers {
    one: Option<Waker>,
    two: Option<Waker>,
    more: Vec<Waker>,
}

impl Wakers {
    pub(crate) fn push(&mut self, waker: Waker) {
        if self.one.is_none() {
            self.one = Some(waker);
        } else if self.two.is_none() {
            self.two = Some(waker);
        } else {
            self.more.push(waker);
        }
    }

    pub(crate) fn extend(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            self.push(waker);
        }
    }

    #[inline]
    pub(crate) fn wake_all(self) {
        // Filled in order: without a first waker there is none.
        let Some(waker) = self.one else { return };
        waker.wake();
        if let Some(waker) = self.two {
            waker.wake();
        }
        if !self.more.is_empty() {
            Self::wake_more(self.more);
        }
    }

    #[cold]
    fn wake_more(more: Vec<Waker>) {
        more.into_iter().for_each(Waker::wake);
    }
}
