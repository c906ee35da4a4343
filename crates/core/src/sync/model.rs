//! shuttle models of the fair wait queue (`RUSTFLAGS="--cfg shuttle" cargo test -p
//! sheepdog-core --lib shuttle`). Under `cfg(shuttle)` the primitives' locks and atomics are
//! shuttle's, so each model explores interleavings of a hand-off on one thread against the
//! waiter going away on another. Each checks that what was handed over reaches the next
//! waiter (shuttle reports a deadlock if it is lost), that the counts come back whole, and —
//! through [`explore`] — that both orders (handed over before the drop, or after) occurred.
//!
//! The permits' own protocol has four more races, modelled below: a woken waiter checking its
//! grant without the lock while the release is still granting it; a waiter leaving from the
//! middle of the line (a hole) while releases hand permits past it; a weighted head leaving
//! while releases first count a permit and then hand exactly what it wants over (the exact
//! hand-off, which skips the general path); and a release on the lock-free fast path against
//! a waiter that is deciding, under the lock, to queue.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use shuttle::rand::Rng;

use super::permits::{Excess, Gone, Permits, Waiter, MAX_PERMITS};
use super::{channel, CapacityLimiter, Condition, Semaphore};
use crate::cancel::model::explore;

/// Yields a (replayably) random number of times.
fn yield_randomly() {
    let yields = shuttle::rand::thread_rng().gen_range(0..24);
    for _ in 0..yields {
        shuttle::thread::yield_now();
    }
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Releases one permit `times` times on another thread, each after a random number of yields.
fn release_later(permits: &Arc<Permits>, times: usize) -> shuttle::thread::JoinHandle<()> {
    let releaser = Arc::clone(permits);
    shuttle::thread::spawn(move || {
        for _ in 0..times {
            yield_randomly();
            releaser.release(1, MAX_PERMITS, Excess::Refuse).unwrap();
        }
    })
}

/// The end of a model: `thread` is done, nothing is left free or waiting, and `n` permits given
/// back are available on the lock-free fast path again.
fn all_handed_over(permits: &Permits, thread: shuttle::thread::JoinHandle<()>, n: usize) {
    thread.join().unwrap();
    assert_eq!((permits.available(), permits.waiting()), (0, 0));
    permits.release(n, MAX_PERMITS, Excess::Refuse).unwrap();
    assert_eq!(permits.available(), n);
    assert!(permits.try_acquire(n), "the fast path is open again");
}

/// Waits (blocking the shuttle thread) until `waiter` is granted.
fn granted(waiter: &mut Waiter<'_>) {
    shuttle::future::block_on(std::future::poll_fn(|cx| waiter.poll_acquire(cx)));
}

/// A release on one thread against the oldest waiter being dropped on another: the permit
/// goes to the second waiter either way.
#[test]
fn shuttle_semaphore_hand_off_versus_drop() {
    explore(|| {
        let permits = Arc::new(Permits::new(0));
        let mut first = Waiter::new(&permits, 1);
        let mut second = Waiter::new(&permits, 1);
        assert!(first.poll_acquire(&mut noop_cx()).is_pending());
        assert!(second.poll_acquire(&mut noop_cx()).is_pending());
        let thread = release_later(&permits, 1);
        yield_randomly();
        let gone = first.abandon();
        assert_ne!(gone, Gone::Idle);
        granted(&mut second);
        all_handed_over(&permits, thread, 1);
        gone == Gone::Granted
    });
}

/// A release granting the only waiter on one thread while the waiter is polled again on
/// another: the poll sees the grant without the lock (`true`), or finds none, keeps its (new)
/// waker in line and is woken by the grant (`false`).
#[test]
fn shuttle_permits_grant_check_without_the_lock_versus_release() {
    explore(|| {
        let permits = Arc::new(Permits::new(0));
        let mut waiter = Waiter::new(&permits, 1);
        assert!(waiter.poll_acquire(&mut noop_cx()).is_pending());
        let thread = release_later(&permits, 1);
        yield_randomly();
        // `block_on`'s waker is not the one in line: a poll that finds no grant must swap it
        // in, or the grant's wake-up goes to the old one and this hangs.
        let mut polls = 0;
        shuttle::future::block_on(std::future::poll_fn(|cx| {
            polls += 1;
            waiter.poll_acquire(cx)
        }));
        assert_eq!(
            waiter.abandon(),
            Gone::Idle,
            "a completed waiter holds nothing"
        );
        all_handed_over(&permits, thread, 1);
        polls == 1
    });
}

/// Three waiters; two releases on one thread while the middle waiter leaves on another. The
/// first gets the first permit; the second permit reaches the third either way: passed on by
/// the middle waiter if it had been granted (`true`), or handed past the hole it left.
#[test]
fn shuttle_permits_middle_waiter_leaves_versus_hand_offs() {
    explore(|| {
        let permits = Arc::new(Permits::new(0));
        let mut first = Waiter::new(&permits, 1);
        let mut middle = Waiter::new(&permits, 1);
        let mut last = Waiter::new(&permits, 1);
        for waiter in [&mut first, &mut middle, &mut last] {
            assert!(waiter.poll_acquire(&mut noop_cx()).is_pending());
        }
        let thread = release_later(&permits, 2);
        yield_randomly();
        let gone = middle.abandon();
        assert_ne!(gone, Gone::Idle);
        granted(&mut first);
        granted(&mut last);
        all_handed_over(&permits, thread, 2);
        gone == Gone::Granted
    });
}

/// Two single releases on one thread against a head waiter wanting two leaving on another,
/// with a waiter wanting one behind it. The first release is only counted (less than the head
/// wants), the second frees exactly what the head wants and hands it over without the general
/// path; if the head was granted it passes both on (`true`), otherwise the one behind is
/// served from the count or by the hand-off. Either way one permit ends up free.
#[test]
fn shuttle_permits_exact_hand_off_versus_weighted_head_leaving() {
    explore(|| {
        let permits = Arc::new(Permits::new(0));
        let mut head = Waiter::new(&permits, 2);
        let mut behind = Waiter::new(&permits, 1);
        assert!(head.poll_acquire(&mut noop_cx()).is_pending());
        assert!(behind.poll_acquire(&mut noop_cx()).is_pending());
        let thread = release_later(&permits, 2);
        yield_randomly();
        let gone = head.abandon();
        assert_ne!(gone, Gone::Idle);
        granted(&mut behind);
        thread.join().unwrap();
        assert_eq!((permits.available(), permits.waiting()), (1, 0));
        // `behind` gives its permit back: both are free on the fast path again.
        all_handed_over_after_join(&permits, 1, 2);
        gone == Gone::Granted
    });
}

/// The end of a model whose thread was joined: `back` permits returned, `n` then free on the
/// lock-free fast path.
fn all_handed_over_after_join(permits: &Permits, back: usize, n: usize) {
    permits.release(back, MAX_PERMITS, Excess::Refuse).unwrap();
    assert_eq!((permits.available(), permits.waiting()), (n, 0));
    assert!(permits.try_acquire(n), "the fast path is open again");
}

/// A release on the lock-free fast path on one thread against a waiter that found nothing
/// free and is queueing (setting `SLOW` under the lock) on another: the waiter takes the
/// permit at once if the release came first (`true`), or the release sees `SLOW`, goes
/// through the lock and hands the permit over. Never both, never neither.
#[test]
fn shuttle_permits_fast_release_versus_queueing() {
    explore(|| {
        let permits = Arc::new(Permits::new(0));
        let thread = release_later(&permits, 1);
        yield_randomly();
        let mut waiter = Waiter::new(&permits, 1);
        let mut polls = 0;
        shuttle::future::block_on(std::future::poll_fn(|cx| {
            polls += 1;
            waiter.poll_acquire(cx)
        }));
        all_handed_over(&permits, thread, 1);
        polls == 1
    });
}

/// Lowering and raising a limiter's total on one thread while a holder returns its token and
/// a waiter waits on another: the waiter is served once the total allows, and the books
/// balance at the end.
#[test]
fn shuttle_limiter_resize_versus_release() {
    explore(|| {
        let limiter = Arc::new(CapacityLimiter::new(2));
        limiter.try_acquire_on_behalf_of(1_u8).unwrap();
        limiter.try_acquire_on_behalf_of(2_u8).unwrap();
        let l = Arc::clone(&limiter);
        let thread = shuttle::thread::spawn(move || {
            yield_randomly();
            l.release_on_behalf_of(&1_u8).unwrap();
        });
        limiter.set_total_tokens(1).unwrap();
        let lowered_first = limiter.borrowed_tokens() == 2;
        yield_randomly();
        limiter.set_total_tokens(2).unwrap();
        let token = shuttle::future::block_on(limiter.acquire());
        thread.join().unwrap();
        assert_eq!(limiter.borrowed_tokens(), 2);
        drop(token);
        limiter.release_on_behalf_of(&2_u8).unwrap();
        assert_eq!(limiter.available_tokens(), 2);
        assert_eq!(limiter.statistics().tasks_waiting, 0);
        lowered_first
    });
}

/// A send on one thread against the oldest waiting receiver being dropped on another: the
/// item reaches the second receiver either way.
#[test]
fn shuttle_channel_hand_off_versus_receiver_drop() {
    explore(|| {
        let (tx, mut first) = channel::<u32>(0);
        let mut second = first.clone();
        assert!(first.poll_recv(&mut noop_cx()).is_pending());
        assert!(second.poll_recv(&mut noop_cx()).is_pending());
        let thread = shuttle::thread::spawn(move || {
            yield_randomly();
            tx.try_send(7).expect("a receiver waits");
        });
        yield_randomly();
        let passed_on = first.leave_line();
        drop(first);
        let item = shuttle::future::block_on(std::future::poll_fn(|cx| second.poll_recv(cx)));
        assert_eq!(item, Some(7));
        thread.join().unwrap();
        assert_eq!(second.statistics().current_buffer_used, 0);
        passed_on
    });
}

/// `notify(1)` on one thread against the oldest condition waiter being dropped on another:
/// the second waiter is woken either way.
#[test]
fn shuttle_condition_notify_versus_waiter_drop() {
    explore(|| {
        let cond = Arc::new(Condition::new());
        let mut first = cond.try_lock().unwrap().wait();
        assert!(pin!(&mut first).poll(&mut noop_cx()).is_pending());
        let mut second = cond.try_lock().unwrap().wait();
        assert!(pin!(&mut second).poll(&mut noop_cx()).is_pending());
        let c = Arc::clone(&cond);
        let thread = shuttle::thread::spawn(move || {
            yield_randomly();
            let guard = shuttle::future::block_on(c.lock());
            assert_eq!(guard.notify(1), 1);
        });
        yield_randomly();
        let passed_on = first.abandon();
        drop(first);
        let guard = shuttle::future::block_on(second);
        drop(guard);
        thread.join().unwrap();
        assert_eq!(cond.statistics().tasks_waiting, 0);
        passed_on
    });
}

/// Random sequences of acquire, try-acquire and "cancel" (drop a pending acquisition) on
/// three threads against one semaphore: the permits in use never exceed the total, nothing
/// hangs, and every permit is back at the end.
#[test]
fn shuttle_semaphore_random_operations_lose_nothing() {
    const PERMITS: usize = 2;
    shuttle::check_random(
        || {
            let sem = Arc::new(Semaphore::new(PERMITS));
            let in_use = Arc::new(crate::shim::AtomicUsize::new(0));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let (sem, in_use) = (Arc::clone(&sem), Arc::clone(&in_use));
                    shuttle::thread::spawn(move || random_operations(&sem, &in_use, PERMITS))
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(sem.value(), PERMITS);
            assert_eq!(sem.statistics().tasks_waiting, 0);
        },
        1_000,
    );
}

fn random_operations(sem: &Semaphore, in_use: &crate::shim::AtomicUsize, total: usize) {
    use std::sync::atomic::Ordering::SeqCst;
    let hold = |n: usize| {
        assert!(in_use.fetch_add(n, SeqCst) + n <= total, "over the limit");
        shuttle::thread::yield_now();
        in_use.fetch_sub(n, SeqCst);
    };
    for _ in 0..3 {
        match shuttle::rand::thread_rng().gen_range(0..4) {
            0 => {
                let guard = shuttle::future::block_on(sem.acquire());
                hold(1);
                drop(guard);
            }
            1 => {
                let guard = shuttle::future::block_on(sem.acquire_many(2)).unwrap();
                hold(2);
                drop(guard);
            }
            2 => {
                if let Ok(guard) = sem.try_acquire() {
                    hold(1);
                    drop(guard);
                }
            }
            _ => {
                // Start waiting, then give up: whatever was handed over must pass on.
                let mut acquire = pin!(sem.acquire());
                if let Poll::Ready(guard) = acquire.as_mut().poll(&mut noop_cx()) {
                    hold(1);
                    drop(guard);
                }
                yield_randomly();
            }
        }
    }
}
