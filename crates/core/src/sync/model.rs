//! shuttle models of the fair wait queue (`RUSTFLAGS="--cfg shuttle" cargo test -p
//! sheepdog-core --lib shuttle`). Under `cfg(shuttle)` the primitives' locks and atomics are
//! shuttle's, so each model explores interleavings of a hand-off on one thread against the
//! waiter going away on another. Each checks that what was handed over reaches the next
//! waiter (shuttle reports a deadlock if it is lost), that the counts come back whole, and —
//! through [`explore`] — that both orders (handed over before the drop, or after) occurred.

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

/// A release on one thread against the oldest waiter being dropped on another: the permit
/// goes to the second waiter either way.
#[test]
fn shuttle_semaphore_hand_off_versus_drop() {
    explore(|| {
        let permits = Arc::new(Permits::new(0));
        let releaser = Arc::clone(&permits);
        let mut first = Waiter::new(&permits, 1);
        let mut second = Waiter::new(&permits, 1);
        assert!(first.poll_acquire(&mut noop_cx()).is_pending());
        assert!(second.poll_acquire(&mut noop_cx()).is_pending());
        let thread = shuttle::thread::spawn(move || {
            yield_randomly();
            releaser.release(1, MAX_PERMITS, Excess::Refuse).unwrap();
        });
        yield_randomly();
        let gone = first.abandon();
        assert_ne!(gone, Gone::Idle);
        shuttle::future::block_on(std::future::poll_fn(|cx| second.poll_acquire(cx)));
        thread.join().unwrap();
        permits.release(1, MAX_PERMITS, Excess::Refuse).unwrap();
        assert_eq!((permits.available(), permits.waiting()), (1, 0));
        assert!(permits.try_acquire(1), "the fast path is open again");
        gone == Gone::Granted
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
