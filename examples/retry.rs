//! Seed section "retry -- Exponential Backoff": a flaky request retried with a backoff policy,
//! only for the errors worth retrying, and never past an enclosing deadline.
//!
//! ```text
//! cargo run -p sheepdog-examples --example retry
//! ```
//!
//! 1. A request that fails with connection errors (seeded, so the run is reproducible) is
//!    retried with `attempts = 4`, `base_delay = 50 ms`, `max_delay = 500 ms`, `jitter = 0.1`,
//!    and `retry_on` accepting only `Connection` and `Value` errors.
//! 2. An error `retry_on` refuses ends the retry at once (`GiveUp::NotRetryable`).
//! 3. Inside `fail_after(150 ms)`, retry reads the deadline before each sleep: it gives up with
//!    the last real error (`GiveUp::Deadline`) instead of sleeping into a timeout.

use std::fmt;
use std::time::{Duration, Instant};

use sheepdog::cancel::fail_after;
use sheepdog::combinators::{retry, RetryPolicy};
use sheepdog::time;

/// What the simulated request can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestError {
    Connection,
    Value,
    BadRequest,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestError::Connection => "connection reset",
            RequestError::Value => "malformed reply",
            RequestError::BadRequest => "400 bad request",
        })
    }
}

/// The seed's `retry_on=(ValueError, ConnectionError)`.
fn retryable(error: &RequestError) -> bool {
    matches!(error, RequestError::Connection | RequestError::Value)
}

/// A simulated `branch.communicate("Flaky request")` that fails with `error` when it does.
async fn flaky_request(attempt: u32, fails: Option<RequestError>) -> Result<String, RequestError> {
    time::sleep(Duration::from_millis(10)).await;
    match fails {
        Some(error) => Err(error),
        None => Ok(format!("reply on attempt {attempt}")),
    }
}

fn main() {
    let policy = RetryPolicy::builder()
        .attempts(4)
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(500))
        .jitter(0.1)
        .build()
        .expect("a valid policy");

    sheepdog::block_on(async {
        // 1. Flaky: each call fails with a connection error 60% of the time (seeded).
        let mut rng = fastrand::Rng::with_seed(8);
        let start = Instant::now();
        let mut attempt = 0;
        let result = retry(
            || {
                attempt += 1;
                let fails = (rng.u32(0..10) < 6).then_some(RequestError::Connection);
                println!(
                    "   attempt {attempt} at {:>3} ms: {}",
                    start.elapsed().as_millis(),
                    fails.map_or("succeeds".to_owned(), |e| format!("fails ({e})"))
                );
                flaky_request(attempt, fails)
            },
            policy.clone(),
        )
        .retry_on(retryable)
        .await;
        println!("1. flaky request: {result:?} after {attempt} attempt(s)");

        // 2. Not worth retrying: one call, then the error.
        let mut calls = 0;
        let refused = retry(
            || {
                calls += 1;
                flaky_request(calls, Some(RequestError::BadRequest))
            },
            policy.clone(),
        )
        .retry_on(retryable)
        .await
        .expect_err("a bad request never succeeds");
        println!(
            "2. bad request: {refused} (reason: {:?}, calls: {calls})",
            refused.reason()
        );

        // 3. The enclosing deadline caps the retry: it returns the last error before the
        //    deadline fires, rather than sleeping into a timeout.
        let slow_policy = RetryPolicy::builder()
            .attempts(5)
            .base_delay(Duration::from_millis(100))
            .jitter(0.0)
            .build()
            .expect("a valid policy");
        let start = Instant::now();
        let mut calls = 0;
        let capped = fail_after(
            Duration::from_millis(150),
            retry(
                || {
                    calls += 1;
                    flaky_request(calls, Some(RequestError::Value))
                },
                slow_policy,
            )
            .retry_on(retryable),
        )
        .await;
        match capped {
            Ok(Err(error)) => println!(
                "3. under fail_after(150 ms): gave up after {:.0?}, {calls} calls: {error} (reason: {:?})",
                start.elapsed(),
                error.reason()
            ),
            other => println!("3. under fail_after(150 ms): {other:?}"),
        }
    });
}
