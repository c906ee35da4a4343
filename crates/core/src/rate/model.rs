//! shuttle models of the rate limiter (`RUSTFLAGS="--cfg shuttle" cargo test -p sheepdog-core
//! --lib shuttle`): a slot released on one thread while the waiter it would go to is cancelled
//! on another (either the waiter gets the slot, or the slot passes on; it is never lost), and
//! lock-free admissions on credit racing the lock holder that collects the credit (every
//! admission counted exactly once), a waiter taking its grant from its mailbox while the
//! release that hands it over runs on another thread, a waiter taking or dropping its grant on
//! one thread while the release hands it over on another (the grant passes on in order),
//! a waiter's late take racing the push that may reuse its slot (no ABA), a shutdown racing
//! the hand-off (it returns whatever the waiter does), and a newcomer racing the release of
//! the job whose hand-off left the `SLOW` flag up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::cancel::model::explore;
use crate::cancel::CancelScope;

use super::{OwnedPermit, RateLimiter};

/// Yields a (replayably) random number of times.
fn yield_randomly() {
    use shuttle::rand::Rng;
    for _ in 0..shuttle::rand::thread_rng().gen_range(0..24) {
        shuttle::thread::yield_now();
    }
}

/// A limiter of 100 requests and one concurrency slot, and an owned permit (one request) that
/// holds the slot: it can move to the thread that releases it.
fn one_slot_held() -> (Arc<RateLimiter>, OwnedPermit) {
    let limiter = Arc::new(
        RateLimiter::builder()
            .limit_requests(100)
            .concurrency_limit(1)
            .build()
            .expect("a valid limiter"),
    );
    let held = Arc::clone(&limiter)
        .try_acquire_owned(1)
        .expect("the slot is free");
    (limiter, held)
}

/// Drops `held` on a new thread after yielding randomly: the release races the caller.
fn release_on_thread(held: OwnedPermit) -> shuttle::thread::JoinHandle<()> {
    shuttle::thread::spawn(move || {
        yield_randomly();
        drop(held);
    })
}

/// Pins `waiter` and polls it once: it must queue (the slot is held).
fn queued<F: Future>(waiter: F) -> Pin<Box<F>> {
    let mut waiter = Box::pin(waiter);
    let noop = &mut Context::from_waker(Waker::noop());
    assert!(
        waiter.as_mut().poll(noop).is_pending(),
        "admitted, not queued"
    );
    waiter
}

/// Asserts that `admitted` admissions were counted, all completed, and nothing is left
/// running or queued; returns the statistics for further checks.
fn assert_settled(limiter: &RateLimiter, admitted: u64) -> super::RateLimiterStatistics {
    let stats = limiter.statistics();
    assert_eq!(
        (stats.admitted, stats.completed, stats.running, stats.queued),
        (admitted, admitted, 0, 0),
        "an admission was lost or counted twice"
    );
    stats
}

/// One concurrency slot: the holder releases it on one thread, the waiter's scope is cancelled
/// on another. Afterwards the slot is free again, whoever won.
#[test]
fn shuttle_slot_release_versus_waiter_cancel() {
    explore(|| {
        let limiter = Arc::new(
            RateLimiter::builder()
                .concurrency_limit(1)
                .build()
                .expect("a valid limiter"),
        );
        // Owned: the permit moves to the releasing thread.
        let held = Arc::clone(&limiter)
            .try_acquire_owned(0)
            .expect("the slot is free");
        let releaser = release_on_thread(held);
        let scope = CancelScope::new();
        let canceller = scope.clone();
        let cancel = shuttle::thread::spawn(move || {
            yield_randomly();
            canceller.cancel();
        });
        let waited = shuttle::future::block_on(scope.run(limiter.acquire(0)));
        releaser.join().unwrap();
        cancel.join().unwrap();
        let got_it = matches!(waited, Some(Ok(_)));
        drop(waited);
        let stats = limiter.statistics();
        assert_eq!(
            (stats.running, stats.queued),
            (0, 0),
            "a slot or a place was lost"
        );
        assert!(limiter.try_acquire(0).is_ok(), "the slot did not come back");
        got_it
    });
}

/// Lock-free admissions on credit (unlimited budgets, one slot) race each other, their
/// releases, and a lock holder that collects the credit (`statistics`): every admission is
/// counted exactly once, the slot is never held twice, and nothing is left running.
#[test]
fn shuttle_credit_admissions_versus_collection() {
    explore(|| {
        let limiter = RateLimiter::builder()
            .concurrency_limit(1)
            .build()
            .expect("a valid limiter");
        let admit = |limiter: RateLimiter| {
            move || {
                let mut admitted = 0;
                for _ in 0..3 {
                    if let Ok(permit) = limiter.try_acquire(0) {
                        admitted += 1;
                        assert_eq!(limiter.statistics().running, 1, "one slot, held twice");
                        yield_randomly();
                        drop(permit);
                    }
                }
                admitted
            }
        };
        let one = shuttle::thread::spawn(admit(limiter.clone()));
        let two = shuttle::thread::spawn(admit(limiter.clone()));
        yield_randomly();
        let seen = limiter.statistics();
        assert!(seen.running <= 1 && seen.completed <= seen.admitted);
        let admitted = one.join().unwrap() + two.join().unwrap();
        let stats = limiter.statistics();
        assert_eq!(
            (stats.admitted, stats.completed, stats.running),
            (admitted, admitted, 0),
            "an admission was lost or counted twice"
        );
        seen.admitted > 0
    });
}

/// A waiter in line is polled again on one thread while a release on another hands it the
/// slot through its mailbox: the poll finds the grant without the lock (`true`), or finds
/// none, leaves its new waker in line and is woken by the hand-off (`false`). Either way it
/// gets the slot once, and the next waiter reuses the line's slot.
#[test]
fn shuttle_mailbox_take_versus_hand_off() {
    explore(|| {
        let (limiter, held) = one_slot_held();
        let noop = &mut Context::from_waker(Waker::noop());
        let mut waiter = queued(limiter.acquire(1));
        let releaser = release_on_thread(held);
        yield_randomly();
        // `block_on`'s waker is not the one in line: a poll that finds no grant must swap it
        // in, or the hand-off wakes the old one and this hangs.
        let mut polls = 0;
        let permit = shuttle::future::block_on(std::future::poll_fn(|cx| {
            polls += 1;
            waiter.as_mut().poll(cx)
        }))
        .expect("handed the slot");
        releaser.join().unwrap();
        let mut next = queued(limiter.acquire(1));
        assert_eq!(limiter.lock().waiters.slab_len(), 1, "the slot was reused");
        drop(permit);
        let Poll::Ready(Ok(last)) = next.as_mut().poll(noop) else {
            panic!("handed the slot")
        };
        drop(last);
        let stats = assert_settled(&limiter, 3);
        assert_eq!(stats.requests_left, Some(97));
        polls == 1
    });
}

/// Two waiters in line behind one slot. The release hands the slot to the first on one
/// thread while, on another, the first is dropped — before the hand-off, after it but before
/// taking its grant, or after taking it (`true`, it then drops the permit). Whichever way, the
/// second is admitted and woken (no hang), nothing is admitted twice or lost, and the line
/// holds no more slots than waiters.
#[test]
fn shuttle_handed_waiter_dropped_versus_release_passes_on() {
    explore(|| {
        use shuttle::rand::Rng;
        let (limiter, held) = one_slot_held();
        let mut first = queued(Arc::clone(&limiter).acquire_owned(1));
        let mut second = queued(limiter.acquire(1));
        let releaser = release_on_thread(held);
        let leaver = shuttle::thread::spawn(move || {
            yield_randomly();
            let noop = &mut Context::from_waker(Waker::noop());
            // Sometimes it looks in its mailbox first (and may find its grant).
            if shuttle::rand::thread_rng().gen_bool(0.5) {
                if let Poll::Ready(admitted) = first.as_mut().poll(noop) {
                    let permit = admitted.expect("admitted, not failed");
                    yield_randomly();
                    drop(permit);
                    return true;
                }
                yield_randomly();
            }
            drop(first);
            false
        });
        let took = leaver.join().unwrap();
        releaser.join().unwrap();
        // The grant is the second's now, or on its way: it must be woken with it.
        let permit = shuttle::future::block_on(second.as_mut()).expect("handed the slot");
        drop(permit);
        let admitted = 2 + u64::from(took);
        let stats = assert_settled(&limiter, admitted);
        assert_eq!(
            stats.requests_left,
            Some(100 - admitted),
            "a request was lost"
        );
        assert!(limiter.lock().waiters.slab_len() <= 2);
        assert!(limiter.try_acquire(1).is_ok(), "the slot did not come back");
        took
    });
}

/// A waiter takes its grant from its mailbox on one thread (a load, then the mark that it
/// took it) while a newcomer queues on another, whose push reclaims handed slots whose
/// grants were taken. The newcomer reuses the slot only once the take is complete (`true`)
/// or gets a fresh one (`false`); either way it is admitted when the first's permit is
/// dropped, and the first's grant is taken exactly once.
#[test]
fn shuttle_late_take_versus_slot_reuse() {
    explore(|| {
        let (limiter, held) = one_slot_held();
        let noop = &mut Context::from_waker(Waker::noop());
        let mut first = queued(Arc::clone(&limiter).acquire_owned(1));
        drop(held); // handed to `first`, untaken
        let taker = shuttle::thread::spawn(move || {
            yield_randomly();
            let noop = &mut Context::from_waker(Waker::noop());
            let Poll::Ready(Ok(permit)) = first.as_mut().poll(noop) else {
                panic!("the grant was in the mailbox")
            };
            permit
        });
        yield_randomly();
        let mut second = Box::pin(limiter.acquire(1));
        assert!(
            second.as_mut().poll(noop).is_pending(),
            "the slot is the first's"
        );
        let reused = limiter.lock().waiters.slab_len() == 1;
        drop(taker.join().unwrap());
        drop(shuttle::future::block_on(second.as_mut()).expect("handed the slot"));
        let stats = assert_settled(&limiter, 3);
        assert_eq!(stats.requests_left, Some(97));
        reused
    });
}

/// `shutdown(CancelQueued)` on one thread races the release that hands the only slot to the
/// waiter on another. The waiter is admitted (`true`; its permit is then dropped) or failed
/// with `Closed`, or is dropped with whatever it was handed: either way the shutdown returns
/// (no handed grant keeps it waiting forever), and nothing is left running or queued.
#[test]
fn shuttle_shutdown_versus_hand_off() {
    explore(|| {
        use shuttle::rand::Rng;
        let (limiter, held) = one_slot_held();
        let mut waiter = queued(limiter.acquire(1));
        let releaser = release_on_thread(held);
        let closer = {
            let limiter = Arc::clone(&limiter);
            shuttle::thread::spawn(move || {
                yield_randomly();
                shuttle::future::block_on(limiter.shutdown(super::ShutdownMode::CancelQueued));
            })
        };
        yield_randomly();
        let admitted = if shuttle::rand::thread_rng().gen_bool(0.25) {
            drop(waiter);
            false
        } else {
            match shuttle::future::block_on(waiter.as_mut()) {
                Ok(permit) => {
                    yield_randomly();
                    drop(permit);
                    true
                }
                Err(err) => {
                    assert_eq!(err, super::RateLimitError::Closed);
                    false
                }
            }
        };
        releaser.join().unwrap();
        closer.join().unwrap();
        let expected = 1 + u64::from(admitted);
        let stats = assert_settled(&limiter, expected);
        assert_eq!(stats.requests_left, Some(100 - expected));
        assert!(stats.closed);
        admitted
    });
}

/// The hand-off that emptied the line left the `SLOW` flag up. The admitted waiter takes its
/// permit and drops it on one thread while a newcomer arrives on another: the newcomer is
/// admitted at once (`false`) or queues and is woken by the release (`true`) — never left
/// waiting with the slot free — and the flag comes down once nobody waits.
#[test]
fn shuttle_flag_left_up_versus_newcomer() {
    explore(|| {
        let (limiter, held) = one_slot_held();
        let noop = &mut Context::from_waker(Waker::noop());
        let mut first = queued(Arc::clone(&limiter).acquire_owned(1));
        drop(held); // to `first`, emptying the line: the flag stays up
        assert!(!super::Slots::open(limiter.shared.slots.snapshot()));
        let runner = shuttle::thread::spawn(move || {
            yield_randomly();
            let permit = shuttle::future::block_on(first.as_mut()).expect("handed the slot");
            yield_randomly();
            drop(permit);
        });
        yield_randomly();
        let mut newcomer = Box::pin(limiter.acquire(1));
        let (waited, permit) = match newcomer.as_mut().poll(noop) {
            Poll::Ready(admitted) => (false, admitted),
            Poll::Pending => (true, shuttle::future::block_on(newcomer.as_mut())),
        };
        let permit = permit.expect("admitted");
        runner.join().unwrap();
        drop(permit);
        assert_settled(&limiter, 3);
        assert!(limiter.try_acquire(1).is_ok(), "the slot did not come back");
        assert!(
            super::Slots::open(limiter.shared.slots.snapshot()),
            "the flag stayed up with nobody waiting"
        );
        waited
    });
}
