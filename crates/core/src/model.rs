//! shuttle models that cross module boundaries (`RUSTFLAGS="--cfg shuttle" cargo test -p
//! sheepdog-core --lib shuttle`): a spawned group's first-failure path with its children on
//! separate (shuttle) threads, and the rate limiter's token settlement racing a queued
//! waiter's cancellation. Every model counts the outcomes it reached and asserts that each
//! outcome it allows was explored.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::cancel::{checkpoint, CancelScope};
use crate::group::{spawn_group_on, GroupError};
use crate::rate::RateLimiter;
use crate::runtime::{self, BoxTask, Runtime, RuntimeHandle};
use crate::time::{BoxTimer, Timer};

/// How many random schedules each model explores.
const SCHEDULES: usize = 2_000;

/// Explores `model` over random schedules. `model` names the outcome it reached; every name in
/// `expected` must be reached at least once, and no other.
fn explore_outcomes(expected: &'static [&'static str], model: fn() -> &'static str) {
    let seen = Arc::new(std::sync::Mutex::new(BTreeMap::<&'static str, usize>::new()));
    let record = Arc::clone(&seen);
    shuttle::check_random(
        move || {
            let outcome = model();
            assert!(expected.contains(&outcome), "unexpected outcome {outcome}");
            *record.lock().unwrap().entry(outcome).or_default() += 1;
        },
        SCHEDULES,
    );
    let seen = seen.lock().unwrap();
    // The figures docs/reliability.md quotes (`-- --nocapture` shows them).
    eprintln!("{SCHEDULES} schedules: {seen:?}");
    for outcome in expected {
        assert!(
            seen.contains_key(outcome),
            "outcome {outcome} never explored; saw {seen:?}"
        );
    }
}

/// Yields the shuttle thread a (replayably) random number of times.
fn yield_randomly(max: usize) {
    use shuttle::rand::Rng;
    for _ in 0..shuttle::rand::thread_rng().gen_range(0..max) {
        shuttle::thread::yield_now();
    }
}

/// A runtime whose every task is a shuttle thread, so a spawned group's children really run in
/// parallel with each other and with the group. It has no timers (the models set no deadline).
#[derive(Clone, Copy, Debug)]
struct ShuttleRuntime;

/// A timer that never fires; the models never arm one.
struct NeverTimer;

impl Future for NeverTimer {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl Timer for NeverTimer {
    fn reset(self: std::pin::Pin<&mut Self>, _: Instant) {}
}

impl Runtime for ShuttleRuntime {
    fn spawn_boxed(&self, task: BoxTask) {
        shuttle::thread::spawn(move || shuttle::future::block_on(task));
    }

    fn timer(&self, _deadline: Instant) -> BoxTimer {
        Box::pin(NeverTimer)
    }

    fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::from_static(&ShuttleRuntime)
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        shuttle::future::block_on(runtime::with_runtime(self, future))
    }
}

/// A child that fails after a random number of cancellation points, recording that it got as
/// far as returning its error.
async fn failing_child(name: &'static str, returned: Arc<AtomicBool>) -> Result<(), &'static str> {
    use shuttle::rand::Rng;
    let steps = shuttle::rand::thread_rng().gen_range(0..6);
    for _ in 0..steps {
        shuttle::thread::yield_now();
        checkpoint().await;
    }
    returned.store(true, Ordering::SeqCst);
    Err(name)
}

/// Two children of a spawned group fail on two threads. The group reports exactly the
/// failures that happened: one (`Failed`) when the first cancelled the other before it
/// failed, both (`Multiple`, in the order they were recorded) when the second failed before the
/// cancellation reached it; never a cancellation as a failure, never a lost child.
#[test]
fn shuttle_spawned_group_first_failure() {
    explore_outcomes(&["only a", "only b", "both"], || {
        let a_returned = Arc::new(AtomicBool::new(false));
        let b_returned = Arc::new(AtomicBool::new(false));
        let (a, b) = (Arc::clone(&a_returned), Arc::clone(&b_returned));
        let out = ShuttleRuntime.block_on(spawn_group_on(ShuttleRuntime, |tg| async move {
            tg.spawn(failing_child("a", a));
            tg.spawn(failing_child("b", b));
            Ok::<_, &'static str>(())
        }));
        let (a, b) = (
            a_returned.load(Ordering::SeqCst),
            b_returned.load(Ordering::SeqCst),
        );
        match out {
            Err(GroupError::Failed("a")) => {
                assert!(a && !b, "b failed but was not reported");
                "only a"
            }
            Err(GroupError::Failed("b")) => {
                assert!(b && !a, "a failed but was not reported");
                "only b"
            }
            Err(GroupError::Multiple(errors)) => {
                assert!(a && b);
                let mut sorted = errors.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, ["a", "b"], "each failure exactly once: {errors:?}");
                "both"
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// A permit charged 8 of a 10-token budget settles at 2 on one thread (refunding 6) while a
/// waiter that needs 5 is cancelled on another. The waiter is admitted (the refund came first)
/// or cancelled; either way the ledger balances: what is left is the budget minus exactly what
/// was charged, and nothing the cancelled waiter reserved stays reserved.
#[test]
fn shuttle_rate_settlement_versus_waiter_cancel() {
    explore_outcomes(&["admitted", "cancelled"], || {
        let limiter = Arc::new(
            RateLimiter::builder()
                .limit_tokens(10)
                // Long enough that nothing refills while the model runs on the real clock.
                .capacity_refresh_time(Duration::from_secs(3_600))
                .build()
                .expect("a valid limiter"),
        );
        // Owned: the permit moves to the settling thread.
        let mut held = Arc::clone(&limiter)
            .try_acquire_owned(8)
            .expect("8 of 10 tokens are free");
        let settler = shuttle::thread::spawn(move || {
            yield_randomly(24);
            held.settle(2);
            drop(held);
        });
        let scope = CancelScope::new();
        let canceller = scope.clone();
        let cancel = shuttle::thread::spawn(move || {
            yield_randomly(24);
            canceller.cancel();
        });
        let waited = shuttle::future::block_on(scope.run(limiter.acquire(5)));
        settler.join().unwrap();
        cancel.join().unwrap();
        let outcome = match waited {
            Some(Ok(permit)) => {
                assert_eq!(permit.tokens(), 5);
                assert_eq!(limiter.statistics().tokens_left, Some(3));
                drop(permit);
                "admitted"
            }
            None => "cancelled",
            Some(Err(error)) => panic!("unexpected {error:?}"),
        };
        let stats = limiter.statistics();
        assert_eq!(
            (stats.running, stats.queued),
            (0, 0),
            "a slot or a place was lost"
        );
        let left = if outcome == "admitted" { 3 } else { 8 };
        assert_eq!(
            limiter.statistics().tokens_left,
            Some(left),
            "tokens lost or created"
        );
        // What is left can really be taken, and not one token more.
        assert!(limiter.try_acquire(left + 1).is_err());
        assert!(limiter.try_acquire(left).is_ok());
        outcome
    });
}
