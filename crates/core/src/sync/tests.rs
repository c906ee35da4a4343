//! Poll-level unit tests of the wait queue and the primitives (small enough for miri).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::permits::{Gone, Permits, Waiter, MAX_PERMITS};
use super::queue::{Abandoned, Mailboxes, WaitList, Wakers};
use super::*;

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Counter(AtomicUsize);

impl ::futures::task::ArcWake for Counter {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<Counter>, Waker) {
    let counter = Arc::new(Counter::default());
    (Arc::clone(&counter), ::futures::task::waker(counter))
}

fn wakes(counter: &Counter) -> usize {
    counter.0.load(Ordering::SeqCst)
}

fn poll<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(waker))
}

/// Queues `request` as the rate limiter does with mailboxes: reclaims the handed slots whose
/// grants were taken, pushes, and opens the new waiter's (empty) mailbox; returns its key.
fn push_opened(
    list: &mut WaitList<u32, ()>,
    boxes: &Mailboxes,
    request: u32,
    waker: &Waker,
) -> usize {
    list.reclaim(|key| boxes.taken(key));
    let key = list.push(request, waker);
    boxes.open(key);
    key
}

#[test]
fn queue_grants_in_order_and_hands_back_what_was_abandoned() {
    let (counter, waker) = counting_waker();
    let mut list: WaitList<u32, u32> = WaitList::default();
    let keys: Vec<usize> = (0..4).map(|i| list.push(i, &waker)).collect();
    assert_eq!(list.len(), 4);
    // Leaving from the middle keeps the order of the others.
    assert!(matches!(list.abandon(keys[1]), Abandoned::Waiting(1)));
    let mut wakers = Wakers::default();
    wakers.extend(list.grant_front(|r| r * 10));
    wakers.wake_all();
    assert_eq!(wakes(&counter), 1);
    assert_eq!(list.front(), Some(&2));
    // A granted waiter takes its grant once; an abandoned grant comes back.
    assert_eq!(list.poll(keys[0], &waker), Some(0));
    let _ = list.grant_front(|r| r * 10);
    assert!(matches!(list.abandon(keys[2]), Abandoned::Granted(20)));
    assert_eq!(list.take_grant(keys[3]), None);
    // Freed slots are reused.
    let again = list.push(9, &waker);
    assert!(keys.contains(&again));
    assert_eq!(list.len(), 2);
}

/// Grants handed through mailboxes: the waiter takes its grant without the list, once; its
/// slot is reused only after it did; a waiter that leaves gets its request back if it still
/// waited, and learns it was handed its grant otherwise (the grant stays in its mailbox).
#[test]
fn queue_hands_grants_through_mailboxes_and_reuses_slots_once_taken() {
    let (counter, waker) = counting_waker();
    let mut list: WaitList<u32, ()> = WaitList::default();
    let boxes = Mailboxes::default();
    let push = |list: &mut WaitList<u32, ()>, request| push_opened(list, &boxes, request, &waker);
    let a = push(&mut list, 1);
    let b = push(&mut list, 2);
    assert_eq!(boxes.take(a), None, "still waiting");
    let (request, woken) = list.hand(a);
    boxes.post(a, 10);
    woken.wake();
    assert_eq!((request, wakes(&counter), list.len()), (1, 1, 1));
    // Not taken yet: a newcomer gets a fresh slot.
    let c = push(&mut list, 3);
    assert!(c != a && c != b);
    assert_eq!(boxes.take(a), Some(10));
    assert!(boxes.taken(a));
    // Taken: the next newcomer reuses the slot, and finds its mailbox empty.
    let d = push(&mut list, 4);
    assert_eq!(d, a);
    assert_eq!(boxes.take(d), None);
    // A waiter that leaves while in line gets its request back; one handed its grant finds
    // it still in its mailbox.
    assert_eq!(list.abandon_handed(b), Some(2));
    let (_, _) = list.hand(c);
    boxes.post(c, 30);
    assert_eq!(list.abandon_handed(c), None);
    assert_eq!(boxes.take(c), Some(30));
    assert_eq!((list.len(), list.front()), (1, Some(&4)));
    // Many mailboxes: every segment is reached and starts empty.
    for key in [7, 8, 23, 24, 1_000] {
        boxes.open(key);
        assert_eq!(boxes.take(key), None);
        boxes.post(key, key as u64 + 1);
        assert!(!boxes.taken(key));
        assert_eq!(boxes.take(key), Some(key as u64 + 1));
        assert!(boxes.taken(key));
    }
}

#[test]
fn permits_fast_path_then_fifo_hand_off() {
    let (counter, waker) = counting_waker();
    let permits = Permits::new(1);
    assert!(permits.try_acquire(1));
    let mut first = Waiter::new(&permits, 1);
    let mut second = Waiter::new(&permits, 1);
    assert!(first
        .poll_acquire(&mut Context::from_waker(&waker))
        .is_pending());
    assert!(second
        .poll_acquire(&mut Context::from_waker(&waker))
        .is_pending());
    assert_eq!(permits.waiting(), 2);
    // Releasing hands the permit to `first` directly: nothing is counted as free, and a
    // newcomer cannot take it.
    permits.release(1, 1, permits_excess()).unwrap();
    assert_eq!(wakes(&counter), 1);
    assert_eq!(permits.available(), 0);
    assert!(!permits.try_acquire(1));
    // `first` is dropped before it takes the permit: it goes to `second`.
    assert_eq!(first.abandon(), Gone::Granted);
    assert_eq!(wakes(&counter), 2);
    assert!(second
        .poll_acquire(&mut Context::from_waker(&waker))
        .is_ready());
    permits.release(1, 1, permits_excess()).unwrap();
    // The line is empty again: the fast path works.
    assert!(permits.try_acquire(1));
}

fn permits_excess() -> super::permits::Excess {
    super::permits::Excess::Refuse
}

/// Waiters leaving from the middle of the line leave holes; once holes outnumber the waiters
/// the line is compacted. Order, lookups (a waiter polled again with a new waker) and counts
/// survive both.
#[test]
fn permits_line_with_holes_keeps_order_and_lookups() {
    let permits = Permits::new(0);
    let mut waiters: Vec<Waiter<'_>> = (0..100).map(|_| Waiter::new(&permits, 1)).collect();
    let noop = Waker::noop().clone();
    for waiter in &mut waiters {
        assert!(waiter
            .poll_acquire(&mut Context::from_waker(&noop))
            .is_pending());
    }
    // Everyone but the first five and the last five leaves: holes, then a compaction.
    for waiter in &mut waiters[5..95] {
        assert_eq!(waiter.abandon(), Gone::Waiting);
    }
    assert_eq!(permits.waiting(), 10);
    // The survivors swap in counting wakers: each is found in the compacted line.
    let counters: Vec<_> = (0..100).map(|_| counting_waker()).collect();
    for (i, waiter) in waiters.iter_mut().enumerate() {
        if !(5..95).contains(&i) {
            let cx = &mut Context::from_waker(&counters[i].1);
            assert!(waiter.poll_acquire(cx).is_pending());
        }
    }
    // One release at a time serves them in arrival order, each woken once.
    let survivors: Vec<usize> = (0..5).chain(95..100).collect();
    for (served, &i) in survivors.iter().enumerate() {
        permits.release(1, MAX_PERMITS, permits_excess()).unwrap();
        assert_eq!(wakes(&counters[i].0), 1, "waiter {i} is next");
        let cx = &mut Context::from_waker(&counters[i].1);
        assert!(waiters[i].poll_acquire(cx).is_ready());
        assert_eq!(permits.waiting(), survivors.len() - served - 1);
    }
    // The line is empty: the fast path is open, and the permits come back whole.
    permits.release(10, MAX_PERMITS, permits_excess()).unwrap();
    assert_eq!(permits.available(), 10);
    assert!(permits.try_acquire(10));
}

/// A release of several permits serves every waiter it can, in order, and counts the rest.
#[test]
fn permits_one_release_serves_several_waiters_in_order() {
    let permits = Permits::new(0);
    let (counter, waker) = counting_waker();
    let cx = &mut Context::from_waker(&waker);
    let mut two = Waiter::new(&permits, 2);
    let mut one = Waiter::new(&permits, 1);
    let mut three = Waiter::new(&permits, 3);
    for waiter in [&mut two, &mut one, &mut three] {
        assert!(waiter.poll_acquire(cx).is_pending());
    }
    // 4 permits: `two` and `one` are served, `three` (wanting 3) waits with 1 counted as free
    // but not takeable by newcomers.
    permits.release(4, MAX_PERMITS, permits_excess()).unwrap();
    assert_eq!(wakes(&counter), 2);
    assert_eq!(permits.available(), 1);
    assert!(!permits.try_acquire(1), "no barging past the line");
    assert!(two.poll_acquire(cx).is_ready());
    assert!(one.poll_acquire(cx).is_ready());
    assert!(three.poll_acquire(cx).is_pending());
    // `three` leaves: the one free permit stays counted, and the fast path reopens.
    assert_eq!(three.abandon(), Gone::Waiting);
    assert_eq!((permits.available(), permits.waiting()), (1, 0));
    assert!(permits.try_acquire(1));
}

/// A release that frees exactly what the oldest waiter wants (the common contended release,
/// handed off without the general path), next to the releases it leaves to the general path:
/// one that frees less than the head wants, and one above the maximum.
#[test]
fn permits_exact_hand_off_and_what_it_leaves_to_the_general_path() {
    let permits = Permits::new(0);
    let (counter, waker) = counting_waker();
    let cx = &mut Context::from_waker(&waker);
    let mut two = Waiter::new(&permits, 2);
    let mut one = Waiter::new(&permits, 1);
    assert!(two.poll_acquire(cx).is_pending());
    assert!(one.poll_acquire(cx).is_pending());
    // Less than the head wants: counted, but kept for the line.
    permits.release(1, MAX_PERMITS, permits_excess()).unwrap();
    assert_eq!((permits.available(), wakes(&counter)), (1, 0));
    assert!(!permits.try_acquire(1), "no barging past the line");
    // Above a maximum of 1: refused whole, nothing handed over.
    assert!(permits.release(1, 1, permits_excess()).is_err());
    assert_eq!((permits.available(), wakes(&counter)), (1, 0));
    // Exactly what the head wants: `two` is served, `one` still waits, nothing is free.
    permits.release(1, MAX_PERMITS, permits_excess()).unwrap();
    assert_eq!(
        (permits.available(), permits.waiting(), wakes(&counter)),
        (0, 1, 1)
    );
    assert!(!permits.try_acquire(1), "no barging past the line");
    assert!(two.poll_acquire(cx).is_ready());
    assert!(one.poll_acquire(cx).is_pending());
    // The last waiter: the line empties and the fast path opens again.
    permits.release(1, MAX_PERMITS, permits_excess()).unwrap();
    assert_eq!(
        (permits.available(), permits.waiting(), wakes(&counter)),
        (0, 0, 2)
    );
    assert!(one.poll_acquire(cx).is_ready());
    permits.release(3, MAX_PERMITS, permits_excess()).unwrap();
    assert!(permits.try_acquire(3));
}

#[test]
fn weighted_waiter_at_the_head_blocks_smaller_ones() {
    let sem = Semaphore::new(2);
    let waker = Waker::noop().clone();
    let held = sem.try_acquire_many(2).unwrap();
    let mut big = sem.acquire_many(2);
    let mut small = sem.acquire();
    assert!(poll(&mut big, &waker).is_pending());
    assert!(poll(&mut small, &waker).is_pending());
    drop(held);
    let Poll::Ready(Ok(two)) = poll(&mut big, &waker) else {
        panic!("the head of the line gets both permits")
    };
    assert!(poll(&mut small, &waker).is_pending());
    drop(two);
    assert!(poll(&mut small, &waker).is_ready());
}

#[test]
fn semaphore_errors_are_typed() {
    let sem = Semaphore::with_max_value(1, 2).unwrap();
    assert_eq!(sem.release(0), Err(SemaphoreError::ZeroPermits));
    sem.release(1).unwrap();
    assert_eq!(
        sem.release(1),
        Err(SemaphoreError::AboveMaxValue {
            value: 2,
            max_value: 2
        })
    );
    assert_eq!(
        sem.try_acquire_many(3).unwrap_err(),
        SemaphoreError::TooManyPermits {
            requested: 3,
            limit: 2
        }
    );
    let waker = Waker::noop().clone();
    assert_eq!(
        poll(&mut sem.acquire_many(0), &waker).map(|r| r.unwrap_err()),
        Poll::Ready(SemaphoreError::ZeroPermits)
    );
    assert!(matches!(
        Semaphore::with_max_value(0, 0),
        Err(SemaphoreError::InvalidBounds { .. })
    ));
}

#[test]
fn limiter_lowering_the_total_takes_tokens_back_as_they_return() {
    let limiter = CapacityLimiter::new(3);
    let waker = Waker::noop().clone();
    let a = limiter.try_acquire().unwrap();
    let b = limiter.try_acquire().unwrap();
    limiter.set_total_tokens(1).unwrap();
    assert_eq!(limiter.borrowed_tokens(), 2);
    assert_eq!(limiter.available_tokens(), 0);
    let mut waiting = limiter.acquire();
    assert!(poll(&mut waiting, &waker).is_pending());
    drop(a); // pays off the reduction
    assert!(poll(&mut waiting, &waker).is_pending());
    drop(b); // the one token of the new total goes to the waiter
    let Poll::Ready(token) = poll(&mut waiting, &waker) else {
        panic!("served")
    };
    assert_eq!(limiter.borrowed_tokens(), 1);
    // Raising the total serves that many waiters at once.
    let mut w1 = limiter.acquire();
    let mut w2 = limiter.acquire();
    assert!(poll(&mut w1, &waker).is_pending());
    assert!(poll(&mut w2, &waker).is_pending());
    limiter.set_total_tokens(3).unwrap();
    assert!(poll(&mut w1, &waker).is_ready());
    assert!(poll(&mut w2, &waker).is_ready());
    drop(token);
}

#[test]
fn limiter_named_borrowers() {
    let limiter = CapacityLimiter::new(1);
    let waker = Waker::noop().clone();
    limiter.try_acquire_on_behalf_of("a").unwrap();
    assert_eq!(
        limiter.try_acquire_on_behalf_of("a"),
        Err(CapacityLimiterError::AlreadyBorrowing)
    );
    // Same value, different type: a different borrower.
    assert_eq!(
        limiter.try_acquire_on_behalf_of(String::from("a")),
        Err(CapacityLimiterError::WouldBlock)
    );
    let mut b = limiter.acquire_on_behalf_of("b");
    assert!(poll(&mut b, &waker).is_pending());
    // Waiting is not holding.
    assert_eq!(
        limiter.release_on_behalf_of(&"b"),
        Err(CapacityLimiterError::NotBorrowing)
    );
    limiter.release_on_behalf_of(&"a").unwrap();
    // Dropped after the hand-off: the token returns and "b" holds nothing.
    drop(b);
    assert_eq!(limiter.borrowed_tokens(), 0);
    assert_eq!(limiter.statistics().borrowers, 0);
    assert_eq!(
        limiter.release_on_behalf_of(&"b"),
        Err(CapacityLimiterError::NotBorrowing)
    );
}

#[test]
fn event_wakes_every_waiter_once() {
    let (counter, waker) = counting_waker();
    let event = Event::new();
    let mut waits: Vec<_> = (0..3).map(|_| event.wait()).collect();
    for wait in &mut waits {
        assert!(poll(wait, &waker).is_pending());
    }
    assert_eq!(event.tasks_waiting(), 3);
    event.set();
    event.set();
    assert_eq!(wakes(&counter), 3);
    for wait in &mut waits {
        assert!(poll(wait, &waker).is_ready());
    }
    assert!(poll(&mut event.wait(), &waker).is_ready());
}

#[test]
fn condition_notification_passes_on_when_the_waiter_is_dropped() {
    let cond = Condition::new();
    let waker = Waker::noop().clone();
    let mut first = cond.try_lock().unwrap().wait();
    assert!(poll(&mut first, &waker).is_pending());
    let mut second = cond.try_lock().unwrap().wait();
    assert!(poll(&mut second, &waker).is_pending());
    assert_eq!(cond.statistics().tasks_waiting, 2);
    assert_eq!(cond.try_lock().unwrap().notify(1), 1);
    drop(first); // notified, never resumed
    assert_eq!(cond.statistics().tasks_waiting, 0);
    let Poll::Ready(guard) = poll(&mut second, &waker) else {
        panic!("the notification passed to the second waiter")
    };
    assert!(cond.try_lock().is_err());
    drop(guard);
    assert!(cond.try_lock().is_ok());
}

#[test]
fn channel_rendezvous_and_close() {
    let waker = Waker::noop().clone();
    let (tx, mut rx) = channel::<u32>(0);
    assert!(matches!(tx.try_send(1), Err(TrySendError::Full(1))));
    let mut send = tx.send(2);
    assert!(poll(&mut send, &waker).is_pending());
    assert_eq!(tx.statistics().tasks_waiting_send, 1);
    assert_eq!(rx.try_recv(), Ok(2));
    assert_eq!(poll(&mut send, &waker), Poll::Ready(Ok(())));
    drop(send);
    // A receiver handed an item and dropped passes it on.
    let mut rx2 = rx.clone();
    let mut recv = rx.recv();
    assert!(poll(&mut recv, &waker).is_pending());
    let mut recv2 = rx2.recv();
    assert!(poll(&mut recv2, &waker).is_pending());
    tx.try_send(3).unwrap();
    drop(recv);
    assert_eq!(poll(&mut recv2, &waker), Poll::Ready(Some(3)));
    drop(recv2);
    drop(rx2);
    // The last receiver closing fails waiting sends with the item.
    let mut send = tx.send(4);
    assert!(poll(&mut send, &waker).is_pending());
    drop(rx);
    assert_eq!(
        poll(&mut send, &waker).map(|r| r.unwrap_err().0),
        Poll::Ready(4)
    );
}

#[test]
fn channel_buffer_drains_after_senders_close() {
    let (tx, mut rx) = channel(2);
    tx.try_send('a').unwrap();
    tx.try_send('b').unwrap();
    drop(tx);
    assert_eq!(rx.try_recv(), Ok('a'));
    assert_eq!(rx.try_recv(), Ok('b'));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
}

/// Regression (found by the shuttle model): the last sender closed while an item handed to a
/// receiver was on its way back (that receiver went away), and the other waiting receiver was
/// told "end of stream" although the item was then put back into the buffer. A wake-up
/// without an item now makes the receiver look at the buffer again.
#[test]
fn end_of_stream_does_not_overtake_a_returned_item() {
    let waker = Waker::noop().clone();
    let (tx, mut first) = channel::<u32>(0);
    let mut second = first.clone();
    let mut recv_first = first.recv();
    assert!(poll(&mut recv_first, &waker).is_pending());
    let mut recv_second = second.recv();
    assert!(poll(&mut recv_second, &waker).is_pending());
    tx.try_send(7).unwrap(); // handed to `first`
    drop(tx); // `second` is woken for the end of the stream
    drop(recv_first); // `first` goes away: 7 goes back to the buffer
    assert_eq!(poll(&mut recv_second, &waker), Poll::Ready(Some(7)));
    drop(recv_second);
    assert_eq!(second.try_recv(), Err(TryRecvError::Closed));
}

/// `wake_all` wakes every collected waker exactly once, however many were collected
/// (`extend(None)` leaves no hole that would hide the later ones).
#[test]
fn wakers_wake_every_one_once() {
    for n in [0, 1, 2, 3, 5] {
        let (counter, waker) = counting_waker();
        let mut wakers = Wakers::default();
        for _ in 0..n {
            wakers.extend(None);
            wakers.push(waker.clone());
        }
        wakers.extend(None);
        wakers.wake_all();
        assert_eq!(wakes(&counter), n, "{n} wakers");
    }
}

/// Several slots handed at once and taken out of order: a push reclaims exactly those whose
/// grants were taken (never one still untaken, whose waiter will read its mailbox), a waiter
/// that leaves after it was handed keeps its slot until its grant is marked taken, and the
/// list of handed slots shrinks as they are reclaimed.
#[test]
fn queue_reclaims_only_taken_handed_slots() {
    let (_counter, waker) = counting_waker();
    let mut list: WaitList<u32, ()> = WaitList::default();
    let boxes = Mailboxes::default();
    let push = |list: &mut WaitList<u32, ()>, request| push_opened(list, &boxes, request, &waker);
    let keys: Vec<usize> = (0..4).map(|i| push(&mut list, i)).collect();
    for &key in &keys[..3] {
        let _ = list.hand(key);
        boxes.post(key, key as u64 + 1);
    }
    assert_eq!((list.len(), list.handed_len()), (1, 3));
    // The first and third take their grants; the second leaves without taking it.
    assert_eq!(boxes.take(keys[0]), Some(1));
    assert_eq!(boxes.take(keys[2]), Some(3));
    assert_eq!(list.abandon_handed(keys[1]), None);
    let fifth = push(&mut list, 5);
    assert!(
        fifth == keys[0] || fifth == keys[2],
        "a taken slot is reused"
    );
    assert_eq!(list.handed_len(), 1, "the second's slot is kept");
    let sixth = push(&mut list, 6);
    assert!(sixth == keys[0] || sixth == keys[2]);
    assert_ne!(fifth, sixth);
    // The second's grant is still in its mailbox: a newcomer gets a fresh slot.
    let seventh = push(&mut list, 7);
    assert!(!keys.contains(&seventh));
    assert_eq!(list.slab_len(), 5);
    // Taken by the side that saw it leave: now its slot is reused, and its mailbox is empty.
    assert_eq!(boxes.take(keys[1]), Some(2));
    let eighth = push(&mut list, 8);
    assert_eq!((eighth, list.handed_len()), (keys[1], 0));
    assert_eq!(boxes.take(eighth), None);
    let order: Vec<u32> = list.iter().map(|(_, &request)| request).collect();
    assert_eq!(order, [3, 5, 6, 7, 8]);
}

/// Random pushes, hand-offs (from the front, or from anywhere as with overtaking), takes and
/// leavings against a model of the line (a small deterministic generator, so it is
/// replayable and runs under miri): the line keeps arrival order, each grant is taken exactly
/// once by its own waiter, a key is never given to a newcomer while its previous waiter may
/// still read its mailbox, and the slab never holds more slots than the most waiters alive at
/// once (waiting, or handed and not yet taken).
#[test]
fn queue_with_mailboxes_against_a_model() {
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Held {
        Waiting,
        Handed(u64),
    }
    let (_counter, waker) = counting_waker();
    let mut list: WaitList<u32, ()> = WaitList::default();
    let boxes = Mailboxes::default();
    // The live waiters in arrival order: key, request, what they hold.
    let mut live: Vec<(usize, u32, Held)> = Vec::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    let (mut arrivals, mut grants, mut peak) = (0u32, 0u64, 0usize);
    let steps = if cfg!(miri) { 400 } else { 20_000 };
    for step in 0..steps {
        let waiting: Vec<usize> = (0..live.len())
            .filter(|&i| live[i].2 == Held::Waiting)
            .collect();
        match next(6) {
            0 | 1 => {
                let key = push_opened(&mut list, &boxes, arrivals, &waker);
                assert!(
                    live.iter().all(|&(k, ..)| k != key),
                    "step {step}: key {key} reused while its waiter may still read it"
                );
                live.push((key, arrivals, Held::Waiting));
                arrivals += 1;
            }
            2 | 3 if !waiting.is_empty() => {
                // From the front, or (overtaking) from anywhere in line.
                let i = if next(2) == 0 {
                    waiting[0]
                } else {
                    waiting[next(waiting.len())]
                };
                if i == waiting[0] {
                    assert_eq!(list.front_entry(), Some((live[i].0, &live[i].1)));
                }
                let (request, _) = list.hand(live[i].0);
                assert_eq!(request, live[i].1);
                grants += 1;
                boxes.post(live[i].0, grants);
                live[i].2 = Held::Handed(grants);
            }
            4 if !live.is_empty() => {
                // A waiter looks in its mailbox, without the lock.
                let i = next(live.len());
                match live[i].2 {
                    Held::Waiting => assert_eq!(boxes.take(live[i].0), None),
                    Held::Handed(grant) => {
                        assert_eq!(boxes.take(live[i].0), Some(grant));
                        live.remove(i);
                    }
                }
            }
            5 if !live.is_empty() => {
                // A waiter leaves: back comes its request, or its grant is in its mailbox.
                let i = next(live.len());
                let (key, request, held) = live.remove(i);
                match held {
                    Held::Waiting => assert_eq!(list.abandon_handed(key), Some(request)),
                    Held::Handed(grant) => {
                        assert_eq!(list.abandon_handed(key), None);
                        assert_eq!(boxes.take(key), Some(grant));
                    }
                }
            }
            _ => {}
        }
        peak = peak.max(live.len());
        let order: Vec<u32> = list.iter().map(|(_, &request)| request).collect();
        let expected: Vec<u32> = live
            .iter()
            .filter(|w| w.2 == Held::Waiting)
            .map(|w| w.1)
            .collect();
        assert_eq!(order, expected, "step {step}: the line's order");
        assert_eq!(list.len(), expected.len());
        assert!(
            list.slab_len() <= peak,
            "step {step}: {} slots for at most {peak} waiters",
            list.slab_len()
        );
        assert!(list.handed_len() <= list.slab_len());
    }
}
