//! Seed section "iModel Rate Limiting" (Configuration): a rate-limited executor with request
//! and token budgets per refresh interval, a bounded queue and a concurrency limit, in front of
//! a simulated provider.
//!
//! ```text
//! cargo run -p sheepdog-examples --example rate_limits
//! ```
//!
//! - The limiter is configured with the seed's five knobs, scaled down so the run takes about a
//!   second: 6 requests and 3,000 tokens per 300 ms, a queue of 20, 3 calls at once.
//! - 24 calls are submitted at once. Each reserves its estimated tokens and reports its real
//!   usage, so the difference is refunded or charged. The calls queue in order until budget
//!   and a slot are free.
//! - A call estimated above the whole token budget is refused at once instead of waiting
//!   forever (one of lionagi's defects), and `try_submit` on a full queue says `QueueFull`.
//! - At the end: admissions per window never passed the request budget.
//!
//! It runs on sheepdog's virtual-time runtime, so the one-second schedule takes no real time
//! and the window check is exact. On a real clock a job starts a moment after the limiter
//! grants it a slot, and that moment varies, so job start times measured from the outside can
//! crowd more than the budget into one window even though the grants never do.

use std::sync::Mutex;
use std::time::Duration;

use sheepdog::combinators::gather;
use sheepdog::rate::{RateLimitError, RateLimiter};
use sheepdog::testing::VirtualRuntime;
use sheepdog::{time, Runtime};

const REQUESTS_PER_WINDOW: u64 = 6;
const TOKENS_PER_WINDOW: u64 = 3_000;
const WINDOW: Duration = Duration::from_millis(300);
const CALLS: u64 = 24;

fn main() {
    let limiter = RateLimiter::builder()
        .limit_requests(REQUESTS_PER_WINDOW) // seed: limit_requests=60
        .limit_tokens(TOKENS_PER_WINDOW) // seed: limit_tokens=100_000
        .capacity_refresh_time(WINDOW) // seed: capacity_refresh_time=60
        .queue_capacity(20) // seed: queue_capacity=100
        .concurrency_limit(3) // seed: concurrency_limit=5
        .build()
        .expect("a valid configuration");
    let admissions = Mutex::new(Vec::new());
    let rt = VirtualRuntime::new();

    rt.block_on(async {
        // Inside the runtime, `time::now()` reads its virtual clock.
        let start = time::now();
        // Refused at once: no window could ever hold it.
        match limiter.submit(TOKENS_PER_WINDOW + 1, async {}).await {
            Err(RateLimitError::ExceedsTokenWindow { .. }) => {
                println!("oversize call: refused at once (more tokens than a whole window)")
            }
            other => println!("oversize call: unexpected {other:?}"),
        }

        let calls = (0..CALLS).map(|i| {
            let (limiter, admissions) = (&limiter, &admissions);
            let estimate = 300 + (i % 4) * 50;
            limiter.submit_with(estimate, move |usage| async move {
                admissions.lock().unwrap().push(time::now() - start);
                time::sleep(Duration::from_millis(20 + i % 3 * 10)).await;
                // The provider's reply says how many tokens the call really used.
                let real = estimate - 40 + (i % 5) * 20;
                usage.report(real);
                real
            })
        });
        // While those wait, the queue is full: `try_submit` does not wait for room.
        let probe = async {
            time::sleep(Duration::from_millis(5)).await;
            match limiter.try_submit(10, async {}).await {
                Err(RateLimitError::QueueFull { capacity }) => {
                    println!("try_submit while {capacity} wait: QueueFull")
                }
                other => println!("try_submit while 20 wait: {other:?}"),
            }
        };
        let (results, ()) = futures::future::join(gather(calls), probe).await;
        let used: u64 = results.iter().map(|r| *r.as_ref().expect("admitted")).sum();
        println!("{CALLS} calls done, {used} tokens really used");
    });

    let admissions = admissions.into_inner().unwrap();
    let busiest = admissions
        .iter()
        .map(|&at| {
            admissions
                .iter()
                .filter(|&&other| other >= at && other < at + WINDOW)
                .count()
        })
        .max()
        .unwrap_or(0);
    let stats = limiter.statistics();
    println!(
        "busiest {WINDOW:?} window: {busiest} admissions (limit {REQUESTS_PER_WINDOW}); admitted {}, rejected {}",
        stats.admitted, stats.rejected
    );
    println!(
        "took {} ms of virtual time",
        rt.clock().elapsed().as_millis()
    );
    assert!(
        busiest as u64 <= REQUESTS_PER_WINDOW,
        "the request budget was exceeded"
    );
}
