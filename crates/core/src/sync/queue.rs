//! The fair wait queue every primitive of [`sync`](crate::sync) shares: a FIFO of waiters kept in
//! a slab (no intrusive pointers, so no `unsafe`), each with its waker and what it asked for.
//!
//! A waiter is *granted* by the side that can serve it: it leaves the line, its slot holds the
//! grant (a permit, an item, a notification) and its waker is returned for waking once the
//! caller has released its lock. The waiter takes the grant at its next poll. A waiter that
//! goes away calls [`WaitList::abandon`] and learns whether it still waited (its request comes
//! back) or had been granted (the grant comes back, for the caller to pass on) — so nothing
//! handed to a waiter is ever lost.

use std::task::Waker;

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
            Slot::Vacant { .. } => unreachable!("a key is used only by its waiter"),
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
        let placeholder = Slot::Vacant { next_free: None };
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

    pub(crate) fn wake_all(self) {
        if let Some(waker) = self.one {
            waker.wake();
        }
        if let Some(waker) = self.two {
            waker.wake();
        }
        self.more.into_iter().for_each(Waker::wake);
    }
}
