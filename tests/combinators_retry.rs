//! `retry` and `RetryPolicy`: the reference checklist rows for retry. Timing is asserted to
//! the exact virtual instant on the virtual-time runtime; one conformance test checks the
//! basics on every runtime.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use futures::future::join;
use proptest::prelude::*;
use sheepdog_core::cancel::{fail_after, fail_at, CancelScope};
use sheepdog_core::combinators::{retry, AttemptError, GiveUp, PolicyError, RetryPolicy};
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::conformance;

const SEC: Duration = Duration::from_secs(1);

fn policy(attempts: u32, base: Duration, factor: f64, max: Duration) -> RetryPolicy {
    RetryPolicy::builder()
        .attempts(attempts)
        .base_delay(base)
        .factor(factor)
        .max_delay(max)
        .jitter(0.0)
        .build()
        .expect("a valid policy")
}

/// Runs a retry that always fails (after `work` of virtual time per call) on a fresh virtual
/// runtime; returns the instants of the calls (from the start) and the error.
fn always_failing(
    policy: RetryPolicy,
    work: Duration,
) -> (
    Vec<Duration>,
    sheepdog_core::combinators::RetryError<&'static str>,
) {
    let rt = VirtualRuntime::new();
    let calls = RefCell::new(Vec::new());
    let err = rt.block_on(async {
        let start = time::now();
        retry(
            || {
                calls.borrow_mut().push(time::now() - start);
                async move {
                    time::sleep(work).await;
                    Err::<(), _>("unavailable")
                }
            },
            policy,
        )
        .await
        .unwrap_err()
    });
    (calls.into_inner(), err)
}

fn secs(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|&s| Duration::from_secs(s)).collect()
}

/// Exact attempt count and backoff instants with jitter off: 1, 2, 4 seconds.
#[test]
fn exact_attempts_and_backoff() {
    let (calls, err) = always_failing(policy(4, SEC, 2.0, 60 * SEC), Duration::ZERO);
    assert_eq!(calls, secs(&[0, 1, 3, 7]));
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.reason(), GiveUp::Exhausted);
    assert_eq!(err.into_error(), Some("unavailable"));
}

/// lionagi's sequences: factor 5 → [1, 5]; factor 1 → [1, 1]; factor 100 capped at 5 →
/// [1, 5, 5].
#[test]
fn factor_sequences() {
    let gaps = |attempts, factor, max| {
        let (calls, _) = always_failing(policy(attempts, SEC, factor, max), Duration::ZERO);
        calls
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs())
            .collect::<Vec<_>>()
    };
    assert_eq!(gaps(3, 5.0, 60 * SEC), vec![1, 5]);
    assert_eq!(gaps(3, 1.0, 60 * SEC), vec![1, 1]);
    assert_eq!(gaps(4, 100.0, 5 * SEC), vec![1, 5, 5]);
    let huge = policy(3, SEC, 1e300, 5 * SEC);
    assert_eq!(huge.delay(u32::MAX), 5 * SEC);
}

/// Invalid policies are typed errors at construction; factor 1 and jitter 0 or 1 are fine.
/// Delays at the edge of `Duration`'s range (found by fuzzing): `f64` rounding can land just
/// past `Duration::MAX`; the delay is then `max_delay`, and jitter never panics.
#[test]
fn delays_at_duration_max_do_not_panic() {
    for (factor, jitter) in [(1.0, f64::MIN_POSITIVE), (2.0, 0.5), (1e300, 1.0)] {
        let policy = RetryPolicy::builder()
            .base_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .factor(factor)
            .jitter(jitter)
            .build()
            .unwrap();
        for k in [1, 2, 64, u32::MAX] {
            assert!(policy.delay(k) <= Duration::MAX);
            assert!(policy.jittered_delay(k) <= policy.delay(k));
        }
    }
}

#[test]
fn invalid_policies_are_rejected() {
    let b = RetryPolicy::builder;
    assert_eq!(b().attempts(0).build(), Err(PolicyError::ZeroAttempts));
    assert_eq!(b().factor(0.99).build(), Err(PolicyError::Factor(0.99)));
    assert_eq!(b().factor(-2.0).build(), Err(PolicyError::Factor(-2.0)));
    assert!(matches!(
        b().factor(f64::NAN).build(),
        Err(PolicyError::Factor(_))
    ));
    assert!(matches!(
        b().factor(f64::INFINITY).build(),
        Err(PolicyError::Factor(_))
    ));
    assert_eq!(b().jitter(-0.1).build(), Err(PolicyError::Jitter(-0.1)));
    assert_eq!(b().jitter(1.5).build(), Err(PolicyError::Jitter(1.5)));
    assert!(matches!(
        b().jitter(f64::NAN).build(),
        Err(PolicyError::Jitter(_))
    ));
    assert!(b().factor(1.0).jitter(0.0).build().is_ok());
    assert!(b().jitter(1.0).attempts(1).build().is_ok());
}

/// Errors the predicate refuses end the retry after one call.
#[test]
fn retry_on_filters_errors() {
    let rt = VirtualRuntime::new();
    let calls = RefCell::new(0);
    let err = rt
        .block_on(
            retry(
                || {
                    *calls.borrow_mut() += 1;
                    let n = *calls.borrow();
                    async move { Err::<(), _>(if n == 1 { "transient" } else { "fatal" }) }
                },
                policy(5, SEC, 1.0, SEC),
            )
            .retry_on(|e: &&str| *e == "transient"),
        )
        .unwrap_err();
    assert_eq!(err.attempts(), 2);
    assert_eq!(err.reason(), GiveUp::NotRetryable);
    assert_eq!(err.into_error(), Some("fatal"));
    assert_eq!(rt.clock().elapsed(), SEC);
}

/// A parent deadline caps the sleeps: the retry gives up as soon as the next sleep would
/// reach it, with the last error, instead of sleeping into it.
#[test]
fn parent_deadline_caps_the_sleep() {
    let rt = VirtualRuntime::new();
    let out = rt.block_on(fail_after(
        SEC * 5 / 2,
        retry(
            || async { Err::<(), _>("down") },
            policy(10, SEC, 2.0, 60 * SEC),
        ),
    ));
    let err = out
        .expect("retry returned before the deadline")
        .unwrap_err();
    assert_eq!(
        err.attempts(),
        2,
        "calls at 0 s and 1 s; the next would be at 3 s > 2.5 s"
    );
    assert_eq!(err.reason(), GiveUp::Deadline);
    assert_eq!(rt.clock().elapsed(), SEC);
}

/// An already expired deadline stops at once after the first failure.
#[test]
fn expired_deadline_stops_at_once() {
    let rt = VirtualRuntime::new();
    let out = rt.block_on(async {
        let past = time::now() - SEC;
        fail_at(
            past,
            retry(|| async { Err::<(), _>("down") }, policy(5, SEC, 1.0, SEC)),
        )
        .await
    });
    let err = out.expect("no wait happened").unwrap_err();
    assert_eq!((err.attempts(), err.reason()), (1, GiveUp::Deadline));
    assert_eq!(rt.clock().elapsed(), Duration::ZERO);
}

/// A retry-after hint sets the next delay (at least the hint, even above max_delay).
#[test]
fn retry_after_hint_is_honoured() {
    let rt = VirtualRuntime::new();
    let calls = RefCell::new(Vec::new());
    let out = rt.block_on(async {
        let start = time::now();
        retry(
            || {
                calls.borrow_mut().push(time::now() - start);
                let n = calls.borrow().len();
                async move {
                    if n < 3 {
                        Err(n as u64 * 4)
                    } else {
                        Ok(n)
                    }
                }
            },
            policy(3, SEC, 1.0, 2 * SEC),
        )
        .retry_after(|wait: &u64| Some(Duration::from_secs(*wait)))
        .await
    });
    assert_eq!(out, Ok(3));
    assert_eq!(calls.into_inner(), secs(&[0, 4, 12]));
}

/// The budget counts the calls' own time, not only the sleeps: calls of 3 s with 1 s and 2 s
/// sleeps under a 10 s budget; the third call is cut at 10 s.
#[test]
fn budget_counts_attempt_time() {
    let budget = RetryPolicy::builder()
        .attempts(10)
        .base_delay(SEC)
        .jitter(0.0)
        .max_delay(60 * SEC)
        .budget(10 * SEC)
        .build()
        .unwrap();
    let (calls, err) = always_failing(budget, 3 * SEC);
    assert_eq!(calls, secs(&[0, 4, 9]));
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.reason(), GiveUp::Budget);
    assert!(matches!(err.last(), AttemptError::TimedOut(_)));
}

/// A budget too small for the next sleep gives up before sleeping.
#[test]
fn budget_stops_before_a_sleep_that_would_overrun() {
    let budget = RetryPolicy::builder()
        .attempts(10)
        .base_delay(4 * SEC)
        .jitter(0.0)
        .budget(5 * SEC)
        .max_delay(60 * SEC)
        .build()
        .unwrap();
    let (calls, err) = always_failing(budget, 2 * SEC);
    assert_eq!(calls, secs(&[0]));
    assert_eq!((err.attempts(), err.reason()), (1, GiveUp::Budget));
    assert_eq!(err.into_error(), Some("unavailable"));
}

/// A per-attempt timeout is a failed attempt (retried), not a cancellation.
#[test]
fn attempt_timeout_counts_as_a_failed_attempt() {
    let timed = RetryPolicy::builder()
        .attempts(2)
        .base_delay(SEC)
        .jitter(0.0)
        .attempt_timeout(2 * SEC)
        .build()
        .unwrap();
    let (calls, err) = always_failing(timed, 5 * SEC);
    assert_eq!(calls, secs(&[0, 3]));
    assert_eq!((err.attempts(), err.reason()), (2, GiveUp::Exhausted));
    assert!(matches!(err.last(), AttemptError::TimedOut(_)));
}

/// Cancelling the scope around a retry drops it: no further call is made.
#[test]
fn cancellation_is_never_retried() {
    let rt = VirtualRuntime::new();
    let calls = RefCell::new(0);
    let scope = CancelScope::new();
    let (out, ()) = rt.block_on(join(
        scope.run(retry(
            || {
                *calls.borrow_mut() += 1;
                async {
                    time::sleep(10 * SEC).await;
                    Err::<(), _>("unreachable: cancelled first")
                }
            },
            policy(5, SEC, 1.0, SEC),
        )),
        async {
            time::sleep(SEC).await;
            scope.cancel();
        },
    ));
    assert!(out.is_none());
    assert_eq!(*calls.borrow(), 1);
    assert_eq!(rt.clock().elapsed(), SEC);
}

proptest! {
    /// With jitter on, a delay never exceeds max_delay nor the un-jittered delay, and is
    /// shortened by at most the jitter fraction.
    #[test]
    fn jitter_never_exceeds_max_delay(
        base_ms in 0_u64..10_000,
        max_ms in 0_u64..20_000,
        factor in 1.0_f64..50.0,
        jitter in 0.0_f64..=1.0,
        retry_k in 1_u32..100,
    ) {
        let policy = RetryPolicy::builder()
            .base_delay(Duration::from_millis(base_ms))
            .max_delay(Duration::from_millis(max_ms))
            .factor(factor)
            .jitter(jitter)
            .build()
            .unwrap();
        let plain = policy.delay(retry_k);
        prop_assert!(plain <= Duration::from_millis(max_ms));
        for _ in 0..8 {
            let jittered = policy.jittered_delay(retry_k);
            prop_assert!(jittered <= plain);
            prop_assert!(jittered.as_secs_f64() >= plain.as_secs_f64() * (1.0 - jitter) - 1e-9);
        }
    }
}

/// With full jitter, the gaps between calls on virtual time stay within max_delay.
#[test]
fn jittered_gaps_stay_under_max_delay() {
    let policy = RetryPolicy::builder()
        .attempts(12)
        .base_delay(SEC)
        .max_delay(3 * SEC)
        .jitter(1.0)
        .build()
        .unwrap();
    let (calls, err) = always_failing(policy, Duration::ZERO);
    assert_eq!(err.attempts(), 12);
    for gap in calls.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap <= 3 * SEC, "gap {gap:?}");
    }
}

conformance! {
    /// On every runtime: success after transient failures with zero delays, and the first
    /// success needs no sleep.
    async fn succeeds_after_transient_failures(cx) {
        let zero = RetryPolicy::builder().base_delay(Duration::ZERO).attempts(3).build().unwrap();
        let mut n = 0;
        let out = retry(
            || {
                n += 1;
                let fail = n < 3;
                async move {
                    yield_now().await;
                    if fail { Err("flaky") } else { Ok(n) }
                }
            },
            zero.clone(),
        )
        .await;
        assert_eq!(out, Ok(3));
        let start: Instant = time::now();
        assert_eq!(retry(|| async { Ok::<_, ()>(1) }, RetryPolicy::default()).await, Ok(1));
        assert!(time::now() - start < Duration::from_secs(1));
    }
}
