//! The rate limiters and the queued round trip that `rate` (divan) and `rate_instr`
//! (callgrind) both measure, so the two benches measure the same thing.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use sheepdog_core::rate::{RateLimiter, Replenishment};

/// A limiter with both budgets so large it never refuses. The interval is short so that the
/// sliding log stays small (what came in more than 10 ms ago has left it).
pub(crate) fn roomy(replenishment: Replenishment) -> RateLimiter {
    RateLimiter::builder()
        .limit_requests(1 << 40)
        .limit_tokens(1 << 50)
        .capacity_refresh_time(Duration::from_millis(10))
        .replenishment(replenishment)
        .build()
        .unwrap()
}

/// A limiter whose request budget is spent for the next hour: every admission is refused.
pub(crate) fn spent() -> RateLimiter {
    let limiter = RateLimiter::builder()
        .limit_requests(1)
        .limit_tokens(1_000)
        .capacity_refresh_time(Duration::from_secs(3_600))
        .build()
        .unwrap();
    drop(limiter.try_acquire(1).unwrap());
    limiter
}

/// Unlimited budgets and queue, at most `limit` jobs at once.
pub(crate) fn unlimited(limit: usize) -> RateLimiter {
    RateLimiter::builder()
        .concurrency_limit(limit)
        .queue_capacity(None)
        .build()
        .unwrap()
}

/// A limiter that never refuses on its budgets but admits one job at a time.
pub(crate) fn one_slot() -> RateLimiter {
    RateLimiter::builder()
        .limit_requests(1 << 40)
        .limit_tokens(1 << 50)
        .capacity_refresh_time(Duration::from_millis(10))
        .concurrency_limit(1)
        .build()
        .unwrap()
}

/// `rounds` queued round trips on a [`one_slot`] limiter: a waiter queues behind the held
/// permit, the permit is dropped (handed off), the waiter takes it and holds it in turn.
pub(crate) fn queued_round_trips(limiter: &RateLimiter, rounds: usize) {
    let cx = &mut Context::from_waker(Waker::noop());
    let mut held = limiter.try_acquire(1).unwrap();
    for _ in 0..rounds {
        let mut waiter = pin!(limiter.acquire(1));
        assert!(waiter.as_mut().poll(cx).is_pending());
        drop(held);
        let Poll::Ready(Ok(permit)) = waiter.as_mut().poll(cx) else {
            panic!("handed off")
        };
        held = black_box(permit);
    }
}

/// The least a thread-safe concurrency limit can cost a job: one compare-and-swap to take a
/// slot and one read-modify-write to give it back, and nothing else (no budgets, no queue, no
/// cancellation, no waiting: a job that finds no slot panics). Not a limiter; the floor under
/// `submit`'s overhead in the `jobs_100k` scenarios.
pub(crate) struct BareSlots {
    taken: AtomicUsize,
    limit: usize,
}

impl BareSlots {
    pub(crate) fn new(limit: usize) -> Self {
        BareSlots {
            taken: AtomicUsize::new(0),
            limit,
        }
    }

    /// Runs `job` holding a slot.
    pub(crate) async fn run<F: Future>(&self, job: F) -> F::Output {
        let limit = self.limit;
        let took = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        assert!(took.is_ok(), "bounded_map never runs more than the limit");
        let output = job.await;
        self.taken.fetch_sub(1, Ordering::Release);
        output
    }
}
