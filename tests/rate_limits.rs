//! The rate-limited executor (issue #7): budgets over 100 windows of saturating load on virtual
//! time (no interval-long window over budget, ≥ 99 % of the allowed rate used), FIFO order with
//! mixed costs, oversize and queue-full refusals, cancellation while queued, settlement,
//! provider feedback, shutdown both ways, the concurrency limit, streams, the ambient deadline,
//! lionagi's defects as regression tests, and a property test of submit/cancel/settle/release
//! sequences that checks no permit or token is ever lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::FutureExt;
use proptest::prelude::*;
use sheepdog_core::cancel::{fail_after, move_on_at};
use sheepdog_core::rate::{
    OwnedPermit, Permit, RateLimitConfigError, RateLimitError, RateLimiter, Replenishment,
    ShutdownMode,
};
use sheepdog_core::runtime::{self, yield_now, Runtime};
use sheepdog_core::sync::Event;
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::conformance;

const SEC: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// Yields until `condition` holds (other tasks make it true).
async fn until(condition: impl Fn() -> bool) {
    while !condition() {
        yield_now().await;
    }
}

/// Yields until `n` jobs wait in `limiter`'s line.
async fn until_queued(limiter: &RateLimiter, n: usize) {
    until(|| limiter.statistics().queued == n).await;
}

/// One concurrency slot and a budget of `requests` a minute.
fn one_slot_per_minute(requests: u64) -> RateLimiter {
    RateLimiter::builder()
        .limit_requests(requests)
        .concurrency_limit(1)
        .capacity_refresh_time(MINUTE)
        .build()
        .unwrap()
}

/// Queues three jobs behind a held slot (each counts in `ran` when it runs), and waits until
/// all three are in line.
async fn queue_three(
    cx: &sheepdog_tests::Cx,
    limiter: &RateLimiter,
    ran: &Arc<AtomicUsize>,
) -> Vec<runtime::JoinHandle<Result<usize, RateLimitError>>> {
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (l, r) = (limiter.clone(), Arc::clone(ran));
        tasks.push(cx.spawn(async move {
            l.submit(0, async move { r.fetch_add(1, Ordering::SeqCst) })
                .await
        }));
        until_queued(limiter, i + 1).await;
    }
    tasks
}

/// Runs `body` on a fresh virtual-time runtime and returns the virtual time it took.
fn virtual_run<F: Future<Output = ()>>(body: impl FnOnce() -> F) -> Duration {
    let rt = VirtualRuntime::new();
    rt.block_on(body());
    rt.clock().elapsed()
}

/// Tracks how many jobs run at once, and the most ever seen.
#[derive(Default)]
struct Occupancy {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Occupancy {
    async fn hold(&self, yields: usize) {
        let inside = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(inside, Ordering::SeqCst);
        for _ in 0..yields {
            yield_now().await;
        }
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Polls `future` once with a no-op waker.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Zero limits, capacities and intervals, and negative or NaN intervals, are typed errors from
/// `build()` (lionagi defect 2: `limit_requests=0` deferred forever).
#[test]
fn config_errors_are_typed() {
    let zero = |knob| Err(RateLimitConfigError::Zero { knob });
    let b = RateLimiter::builder;
    assert_eq!(
        b().limit_requests(0).build().map(drop),
        zero("limit_requests")
    );
    assert_eq!(b().limit_tokens(0).build().map(drop), zero("limit_tokens"));
    assert_eq!(
        b().queue_capacity(0).build().map(drop),
        zero("queue_capacity")
    );
    assert_eq!(
        b().concurrency_limit(0).build().map(drop),
        zero("concurrency_limit")
    );
    for secs in [0.0, -1.0, f64::NAN, f64::INFINITY, -0.0] {
        let err = b().capacity_refresh_secs(secs).build().unwrap_err();
        assert!(
            matches!(err, RateLimitConfigError::InvalidInterval { .. }),
            "{secs}: {err:?}"
        );
    }
    assert!(b().capacity_refresh_time(Duration::ZERO).build().is_err());
    // `None` is unlimited, and the seed's configuration builds.
    let limiter = b()
        .limit_requests(60)
        .limit_tokens(100_000)
        .capacity_refresh_secs(60.0)
        .queue_capacity(100)
        .concurrency_limit(5)
        .build()
        .unwrap();
    assert_eq!(limiter.capacity_refresh_time(), MINUTE);
    let unlimited = b()
        .limit_requests(None)
        .limit_tokens(None)
        .queue_capacity(None)
        .concurrency_limit(None)
        .build()
        .unwrap();
    let stats = unlimited.statistics();
    assert_eq!((stats.requests_left, stats.tokens_left), (None, None));
}

conformance! {
    /// A job whose cost exceeds the whole token budget fails at once, even with the queue
    /// full and every slot taken (lionagi defect 3: it waited forever); the job never runs.
    async fn oversize_job_is_rejected_at_once(cx) {
        let limiter = RateLimiter::builder()
            .limit_tokens(100)
            .concurrency_limit(1)
            .queue_capacity(1)
            .build()
            .unwrap();
        let held = limiter.try_acquire(0).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let err = limiter
            .submit(101, async move { r.fetch_add(1, Ordering::SeqCst) })
            .now_or_never()
            .expect("refused without waiting")
            .unwrap_err();
        assert_eq!(err, RateLimitError::ExceedsTokenWindow { cost: 101, limit: 100 });
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let stats = limiter.statistics();
        assert_eq!((stats.rejected, stats.queued, stats.tokens_left), (1, 0, Some(100)));
        // A cost of exactly the budget is allowed.
        drop(held);
        assert_eq!(limiter.submit(100, async { 7 }).await, Ok(7));
    }

    /// `try_submit` on a full queue fails with `QueueFull` at once; `submit` waits for room,
    /// in order, and then runs (lionagi defect 8: the queue was unbounded).
    async fn queue_full(cx) {
        let limiter = RateLimiter::builder()
            .concurrency_limit(1)
            .queue_capacity(2)
            .build()
            .unwrap();
        let held = limiter.try_acquire(0).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (l, o) = (limiter.clone(), Arc::clone(&order));
            tasks.push(cx.spawn(async move {
                l.submit(0, async move { o.lock().unwrap().push(i) }).await
            }));
            let l = limiter.clone();
            until(move || {
                let s = l.statistics();
                s.queued + s.waiting_for_room == i + 1
            })
            .await;
        }
        let stats = limiter.statistics();
        assert_eq!((stats.queued, stats.waiting_for_room), (2, 1));
        let err = limiter.try_submit(0, async {}).await.unwrap_err();
        assert_eq!(err, RateLimitError::QueueFull { capacity: 2 });
        drop(held);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.rejected, stats.completed), (4, 1, 4));
    }

    /// 300 waiters behind a concurrency limit of 1 are admitted exactly in arrival order.
    async fn fifo_admission_order(cx) {
        const N: usize = 300;
        let limiter = RateLimiter::builder()
            .concurrency_limit(1)
            .queue_capacity(None)
            .limit_tokens(1_000_000)
            .build()
            .unwrap();
        let held = limiter.try_acquire(0).unwrap();
        let order = Arc::new(Mutex::new(Vec::with_capacity(N)));
        let mut tasks = Vec::with_capacity(N);
        for i in 0..N {
            let (l, o) = (limiter.clone(), Arc::clone(&order));
            // Mixed costs: big and small jobs alternate.
            let cost = if i % 3 == 0 { 900 } else { 1 };
            tasks.push(cx.spawn(async move {
                l.submit(cost, async move { o.lock().unwrap().push(i) }).await
            }));
            until_queued(&limiter, i + 1).await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..N).collect::<Vec<_>>());
    }

    /// A waiter cancelled while queued leaves the line: its place is free, it reserved
    /// nothing, and the one behind it is served.
    async fn cancel_while_queued_frees_the_place(cx) {
        let limiter = RateLimiter::builder()
            .limit_tokens(1_000)
            .concurrency_limit(1)
            .queue_capacity(2)
            .build()
            .unwrap();
        let held = limiter.try_acquire(100).unwrap();
        let l = limiter.clone();
        let a = cx.spawn(async move { l.submit(300, async { "a" }).await });
        until_queued(&limiter, 1).await;
        let l = limiter.clone();
        let b = cx.spawn(async move { l.submit(200, async { "b" }).await });
        until_queued(&limiter, 2).await;
        assert!(matches!(
            limiter.try_submit(0, async {}).await,
            Err(RateLimitError::QueueFull { .. })
        ));
        a.abort();
        assert!(a.await.unwrap_err().is_cancelled());
        let stats = limiter.statistics();
        assert_eq!((stats.queued, stats.tokens_left, stats.running), (1, Some(900), 1));
        drop(held);
        assert_eq!(b.await.unwrap(), Ok("b"));
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.tokens_left, stats.running), (2, Some(700), 0));
    }

    /// A waiter that was admitted but dropped before it took its permit gives the slot and
    /// the reservation back, and they go to the next in line (poll level).
    async fn admitted_but_dropped_passes_on(cx) {
        let limiter = RateLimiter::builder()
            .limit_tokens(1_000)
            .concurrency_limit(1)
            .build()
            .unwrap();
        let held = limiter.try_acquire(0).unwrap();
        let mut a = Box::pin(limiter.acquire(10));
        let mut b = Box::pin(limiter.acquire(20));
        assert!(poll_once(&mut a).is_pending());
        assert!(poll_once(&mut b).is_pending());
        drop(held); // hands the slot and 10 tokens to `a`, which has not run yet
        assert_eq!(limiter.statistics().tokens_left, Some(990));
        drop(a);
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.tokens_left), (1, Some(980)), "b admitted");
        let Poll::Ready(Ok(permit)) = poll_once(&mut b) else {
            panic!("b was handed the slot")
        };
        assert_eq!(permit.tokens(), 20);
        drop(permit);
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.running, stats.queued), (2, 0, 0));
    }

    /// The `submit` family through the hand-off path: a queued `submit` dropped after the
    /// release handed it the slot (before its job ran) gives its whole reservation back and
    /// the slot passes to the next in line; a `submit_with` admitted by hand-off settles the
    /// usage its job reports; a `submit` admitted by hand-off keeps its estimate charged.
    async fn submit_through_the_hand_off_cancels_and_settles(cx) {
        let limiter = RateLimiter::builder()
            .limit_tokens(1_000)
            .capacity_refresh_time(Duration::from_secs(3_600))
            .concurrency_limit(1)
            .build()
            .unwrap();
        let held = limiter.try_acquire(100).unwrap();
        let mut a = Box::pin(limiter.submit(300, async { "a" }));
        let mut b = Box::pin(limiter.submit_with(200, |usage| async move {
            usage.report(50);
            "b"
        }));
        assert!(poll_once(&mut a).is_pending());
        assert!(poll_once(&mut b).is_pending());
        drop(held); // to `a`, whose job has not run
        assert_eq!(limiter.statistics().tokens_left, Some(600));
        drop(a);
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.queued), (1, 0), "b was handed a's slot");
        assert_eq!(stats.tokens_left, Some(700));
        assert_eq!(b.await, Ok("b"));
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.admitted), (0, 2));
        assert_eq!(stats.tokens_left, Some(850), "b's 200 settled to 50");
        let held = limiter.try_acquire(0).unwrap();
        let l = limiter.clone();
        let c = cx.spawn(async move { l.submit(100, async { "c" }).await });
        until_queued(&limiter, 1).await;
        drop(held);
        assert_eq!(c.await.unwrap(), Ok("c"));
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.admitted, stats.completed), (0, 4, 4));
        assert_eq!(stats.tokens_left, Some(750), "c's estimate stays charged");
    }

    /// The concurrency limit is never exceeded, across 60 tasks of 5 jobs each.
    async fn concurrency_limit_never_exceeded(cx) {
        let limiter = RateLimiter::builder()
            .concurrency_limit(3)
            .queue_capacity(None)
            .build()
            .unwrap();
        let occupancy = Arc::new(Occupancy::default());
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let (l, o) = (limiter.clone(), Arc::clone(&occupancy));
                cx.spawn(async move {
                    for _ in 0..5 {
                        l.submit(0, o.hold(3)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let max = occupancy.max.load(Ordering::SeqCst);
        assert!((1..=3).contains(&max), "max in flight {max}");
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.completed, stats.running), (300, 300, 0));
    }

    /// Settlement: reported usage below the estimate is refunded, above it is charged, and a
    /// permit can settle repeatedly as a stream's usage grows.
    async fn settlement_refunds_and_charges(cx) {
        let limiter = RateLimiter::builder().limit_tokens(10_000).build().unwrap();
        let out = limiter
            .submit_with(1_000, |usage| async move {
                usage.report(400);
                "refund"
            })
            .await;
        assert_eq!(out, Ok("refund"));
        assert_eq!(limiter.statistics().tokens_left, Some(9_600));
        limiter
            .submit_with(1_000, |usage| async move { usage.report(1_500) })
            .await
            .unwrap();
        assert_eq!(limiter.statistics().tokens_left, Some(8_100));
        // Not reported: the estimate stands.
        limiter.submit(500, async {}).await.unwrap();
        assert_eq!(limiter.statistics().tokens_left, Some(7_600));
        let mut permit = limiter.acquire(100).await.unwrap();
        permit.settle(300);
        assert_eq!(limiter.statistics().tokens_left, Some(7_300));
        permit.settle(50);
        assert_eq!(limiter.statistics().tokens_left, Some(7_550));
        permit.settle(50);
        drop(permit);
        assert_eq!(limiter.statistics().tokens_left, Some(7_550));
        // A job dropped while running still settles what it reported.
        let l = limiter.clone();
        let task = cx.spawn(async move {
            l.submit_with(600, |usage| async move {
                usage.report(100);
                futures::future::pending::<()>().await;
            })
            .await
        });
        let l = limiter.clone();
        until(move || l.statistics().running == 1).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.tokens_left), (0, Some(7_450)));
    }

    /// A long-lived stream holds its permit, and with it a concurrency slot, for its whole
    /// life, and costs a request like any job (lionagi defect 7: streams skipped admission).
    async fn stream_holds_its_slot(cx) {
        let limiter = Arc::new(
            RateLimiter::builder()
                .limit_requests(10)
                .limit_tokens(1_000)
                .concurrency_limit(1)
                .build()
                .unwrap(),
        );
        // The stream runs in a task of its own: its permit holds the limiter.
        let permit = Arc::clone(&limiter).acquire_owned(200).await.unwrap();
        let finish = Arc::new(Event::new());
        let f = Arc::clone(&finish);
        let stream = cx.spawn(async move {
            let mut permit: OwnedPermit = permit;
            let usage = permit.usage();
            for _ in 0..10 {
                usage.add(15);
                yield_now().await;
            }
            f.wait().await;
            for _ in 0..10 {
                usage.add(15);
                yield_now().await;
            }
            drop(permit);
        });
        let l = limiter.clone();
        let other = cx.spawn(async move { l.submit(50, async { "after" }).await });
        until_queued(&limiter, 1).await;
        // The stream still holds the only slot.
        assert_eq!(limiter.statistics().running, 1);
        finish.set();
        stream.await.unwrap();
        assert_eq!(other.await.unwrap(), Ok("after"));
        let stats = limiter.statistics();
        assert_eq!(stats.requests_left, Some(8));
        assert_eq!(stats.tokens_left, Some(1_000 - 300 - 50));
    }

    /// `shutdown(FinishQueued)` refuses newcomers, admits and runs the queued jobs, and
    /// returns when nothing waits or runs.
    async fn shutdown_finishes_queued(cx) {
        let limiter = RateLimiter::builder().concurrency_limit(1).build().unwrap();
        let held = limiter.try_acquire(0).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let tasks = queue_three(&cx, &limiter, &ran).await;
        let l = limiter.clone();
        let shutdown = cx.spawn(async move { l.shutdown(ShutdownMode::FinishQueued).await });
        let l = limiter.clone();
        until(move || l.statistics().closed).await;
        assert_eq!(limiter.submit(0, async {}).await, Err(RateLimitError::Closed));
        drop(held);
        shutdown.await.unwrap();
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        let stats = limiter.statistics();
        assert_eq!((stats.queued, stats.running, stats.completed), (0, 0, 4));
    }

    /// `shutdown(CancelQueued)` fails the queued jobs at once with `Closed` (they never run),
    /// and returns once the running job is done.
    async fn shutdown_cancels_queued(cx) {
        let limiter = RateLimiter::builder().concurrency_limit(1).build().unwrap();
        let held = limiter.try_acquire(0).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let tasks = queue_three(&cx, &limiter, &ran).await;
        let l = limiter.clone();
        let shutdown = cx.spawn(async move { l.shutdown(ShutdownMode::CancelQueued).await });
        for task in tasks {
            assert_eq!(task.await.unwrap(), Err(RateLimitError::Closed));
        }
        assert_eq!(limiter.statistics().running, 1);
        drop(held);
        shutdown.await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let stats = limiter.statistics();
        assert_eq!((stats.rejected, stats.running, stats.queued), (3, 0, 0));
    }

    /// Inside a runtime whose clock is the system's (every runtime here but virtual time),
    /// admissions read the coarse clock and may go on credit, as outside any runtime; on
    /// virtual time the runtime's clock is read precisely. Either way no interval-long window
    /// holds more than the budget, refunds settle, and the books balance.
    async fn in_runtime_no_window_over_budget(cx) {
        let rt = runtime::current().expect("inside the runtime");
        assert_eq!(rt.system_clock(), !cx.flavor.is_virtual());
        let (limiter, interval) = bracketed_limiter();
        // (called at, returned at, tokens), on the runtime's clock.
        let mut log: Vec<(Instant, Instant, u64)> = Vec::new();
        let start = time::now();
        let mut i = 0u64;
        while time::now() - start < interval * 10 {
            let tokens = 10 + (i * 37) % 60;
            i += 1;
            let called = time::now();
            let admitted = if i % 2 == 0 {
                limiter.try_acquire(tokens)
            } else {
                limiter.acquire(tokens).now_or_never().unwrap_or(Err(RateLimitError::WouldWait))
            };
            let returned = time::now();
            if let Ok(mut permit) = admitted {
                let used = if i % 4 == 0 { tokens / 2 } else { tokens };
                permit.settle(used);
                log.push((called, returned, used));
            }
            if i % 16 == 0 {
                // Lets virtual time move (and real time on a loaded machine, harmlessly).
                time::sleep(Duration::from_millis(1)).await;
            }
        }
        assert_bracketed_log(&limiter, &log, interval);
    }
}

// ---------------------------------------------------------------------------------------------
// Time: on the virtual-time runtime only
// ---------------------------------------------------------------------------------------------

/// One admission, as a job saw it when it started.
#[derive(Debug, Clone, Copy)]
struct Admission {
    at: Instant,
    tokens: u64,
}

/// Runs `workers` tasks that submit jobs back to back (saturating load) for `windows`
/// intervals, and returns every admission in order.
fn saturate(limiter: RateLimiter, windows: u32, workers: usize) -> (Instant, Vec<Admission>) {
    let rt = VirtualRuntime::new();
    rt.block_on(async move {
        let start = time::now();
        let end = start + limiter.capacity_refresh_time() * windows;
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (l, log) = (limiter.clone(), Arc::clone(&log));
                runtime::spawn(move_on_at(end, async move {
                    for i in 0.. {
                        // Costs 1..=10 in a pattern that differs between workers.
                        let tokens = ((w * 7 + i * 3) % 10 + 1) as u64;
                        let log = Arc::clone(&log);
                        l.submit(tokens, async move {
                            let at = time::now();
                            log.lock().unwrap().push(Admission { at, tokens });
                            time::sleep(SEC).await;
                        })
                        .await
                        .unwrap();
                    }
                }))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let log = std::mem::take(&mut *log.lock().unwrap());
        (start, log)
    })
}

/// The most requests and tokens admitted in any half-open window `[t, t + interval)`.
fn worst_window(log: &[Admission], interval: Duration) -> (usize, u64) {
    let (mut worst_requests, mut worst_tokens) = (0, 0);
    let mut end = 0;
    let mut tokens = 0;
    for (start, first) in log.iter().enumerate() {
        while end < log.len() && log[end].at < first.at + interval {
            tokens += log[end].tokens;
            end += 1;
        }
        worst_requests = worst_requests.max(end - start);
        worst_tokens = worst_tokens.max(tokens);
        tokens -= first.tokens;
    }
    (worst_requests, worst_tokens)
}

/// Continuous mode, 100 windows of saturating load: no interval-long window, wherever it
/// starts, holds more than the request or token budget, and at least 99 % of the allowed rate
/// is used.
#[test]
fn continuous_budgets_hold_over_100_windows_and_are_used() {
    const REQUESTS: u64 = 180;
    const TOKENS: u64 = 1_000;
    let limiter = RateLimiter::builder()
        .limit_requests(REQUESTS)
        .limit_tokens(TOKENS)
        .capacity_refresh_time(MINUTE)
        .concurrency_limit(16)
        .queue_capacity(None)
        .build()
        .unwrap();
    let (start, log) = saturate(limiter, 100, 64);
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    let (requests, tokens) = worst_window(&log, MINUTE);
    assert!(
        requests as u64 <= REQUESTS,
        "{requests} requests in one window"
    );
    assert!(tokens <= TOKENS, "{tokens} tokens in one window");
    let end = start + MINUTE * 100;
    let inside: Vec<_> = log.iter().filter(|a| a.at < end).collect();
    let used_requests = inside.len() as f64 / (REQUESTS * 100) as f64;
    let used_tokens = inside.iter().map(|a| a.tokens).sum::<u64>() as f64 / (TOKENS * 100) as f64;
    let used = used_requests.max(used_tokens);
    eprintln!(
        "{} admissions; worst window {requests} requests, {tokens} tokens; used {:.3} % of requests, {:.3} % of tokens",
        log.len(),
        used_requests * 100.0,
        used_tokens * 100.0
    );
    assert!(
        used >= 0.99,
        "used {:.2} % of requests, {:.2} % of tokens",
        used_requests * 100.0,
        used_tokens * 100.0
    );
}

/// Fixed-window mode (lionagi parity), 100 windows of saturating load: no window holds more
/// than the budgets, and every window is used.
#[test]
fn fixed_windows_hold_over_100_windows() {
    const REQUESTS: u64 = 50;
    const TOKENS: u64 = 200;
    let limiter = RateLimiter::builder()
        .limit_requests(REQUESTS)
        .limit_tokens(TOKENS)
        .capacity_refresh_time(MINUTE)
        .replenishment(Replenishment::FixedWindow)
        .concurrency_limit(16)
        .queue_capacity(None)
        .build()
        .unwrap();
    let (start, log) = saturate(limiter, 100, 32);
    let mut per_window = vec![(0u64, 0u64); 100];
    for a in &log {
        let index = ((a.at - start).as_secs() / 60) as usize;
        if index < 100 {
            per_window[index].0 += 1;
            per_window[index].1 += a.tokens;
        }
    }
    for (i, &(requests, tokens)) in per_window.iter().enumerate() {
        assert!(
            requests <= REQUESTS && tokens <= TOKENS,
            "window {i}: {requests}, {tokens}"
        );
        assert!(
            tokens > TOKENS - 10 || requests == REQUESTS,
            "window {i} underused: {tokens}"
        );
    }
}

/// An over-budget burst completes across windows, nothing dropped (reference checklist
/// "Processor / rate limits"; lionagi defect 1: more than `queue_capacity` waiting starved).
#[test]
fn over_budget_burst_completes_across_windows() {
    let took = virtual_run(|| async {
        let limiter = RateLimiter::builder()
            .limit_requests(60)
            .capacity_refresh_time(MINUTE)
            .queue_capacity(10)
            .build()
            .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..300)
            .map(|_| {
                let (l, d) = (limiter.clone(), Arc::clone(&done));
                runtime::spawn(async move {
                    l.submit(0, async move { d.fetch_add(1, Ordering::SeqCst) })
                        .await
                        .unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 300);
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.rejected, stats.queued), (300, 0, 0));
    });
    // 60 at once, then 60 more each minute.
    assert_eq!(took, 4 * MINUTE);
}

/// Runs lionagi's defect-4 scenario and returns the order the jobs ran in: with a budget of
/// 12 tokens, `[small0, big, small1, small2]` queued in that order.
fn mixed_costs_order(overtaking: bool) -> Vec<(&'static str, Duration)> {
    let rt = VirtualRuntime::new();
    rt.block_on(async move {
        let limiter = RateLimiter::builder()
            .limit_tokens(12)
            .capacity_refresh_time(MINUTE)
            .allow_overtaking(overtaking)
            .build()
            .unwrap();
        let start = time::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, cost) in [("small0", 4), ("big", 10), ("small1", 4), ("small2", 4)] {
            let (l, o) = (limiter.clone(), Arc::clone(&order));
            tasks.push(runtime::spawn(async move {
                l.submit(cost, async move {
                    o.lock().unwrap().push((name, time::now() - start))
                })
                .await
                .unwrap();
            }));
            // Each job is admitted or in line before the next one starts.
            let (l, n) = (limiter.clone(), tasks.len() as u64);
            until(move || {
                let s = l.statistics();
                s.admitted + s.queued as u64 == n
            })
            .await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        order
    })
}

/// FIFO with mixed costs: small jobs never overtake a big one ahead of them (lionagi defect 4).
#[test]
fn small_jobs_do_not_overtake_a_big_one() {
    assert_eq!(
        mixed_costs_order(false),
        vec![
            ("small0", Duration::ZERO),
            ("big", MINUTE),
            ("small1", 2 * MINUTE),
            ("small2", 2 * MINUTE),
        ]
    );
}

/// With `allow_overtaking(true)`, jobs that fit go first.
#[test]
fn overtaking_when_allowed() {
    assert_eq!(
        mixed_costs_order(true),
        vec![
            ("small0", Duration::ZERO),
            ("small1", Duration::ZERO),
            ("small2", Duration::ZERO),
            ("big", MINUTE),
        ]
    );
}

/// `pause_until` holds admission until the instant (HTTP 429 + Retry-After), only ever
/// extends, applies to a job already waiting for budget, and `resume` ends it.
#[test]
fn pause_until_holds_admission() {
    virtual_run(|| async {
        let limiter = RateLimiter::builder()
            .limit_requests(1)
            .capacity_refresh_time(MINUTE)
            .build()
            .unwrap();
        let start = time::now();
        limiter.pause_until(start + 30 * SEC);
        limiter.pause_until(start + 10 * SEC); // earlier: no effect
        limiter.submit(0, async {}).await.unwrap();
        assert_eq!(time::now() - start, 30 * SEC);
        // The next request's budget is back at 90 s; a pause until 100 s delays it further.
        let l = limiter.clone();
        let next = runtime::spawn(async move { l.submit(0, async { time::now() }).await.unwrap() });
        time::sleep(5 * SEC).await;
        limiter.pause_until(start + 100 * SEC);
        assert_eq!(next.await.unwrap() - start, 100 * SEC);
        // `resume` ends a pause at once.
        time::sleep(2 * MINUTE).await;
        limiter.pause_for(MINUTE);
        let l = limiter.clone();
        let resumed =
            runtime::spawn(async move { l.submit(0, async { time::now() }).await.unwrap() });
        let before = time::now();
        time::sleep(SEC).await;
        limiter.resume();
        assert_eq!(resumed.await.unwrap() - before, SEC);
    });
}

/// `update_remaining` lowers the budgets to a provider's count; the difference comes back
/// one interval later.
#[test]
fn update_remaining_from_provider_headers() {
    let took = virtual_run(|| async {
        let limiter = RateLimiter::builder()
            .limit_requests(10)
            .limit_tokens(1_000)
            .capacity_refresh_time(MINUTE)
            .build()
            .unwrap();
        limiter.update_remaining(Some(1), Some(500));
        let stats = limiter.statistics();
        assert_eq!(
            (stats.requests_left, stats.tokens_left),
            (Some(1), Some(500))
        );
        limiter.submit(0, async {}).await.unwrap();
        // No request left until the provider's usage ages out.
        limiter.submit(600, async {}).await.unwrap();
        assert_eq!(limiter.statistics().tokens_left, Some(400));
    });
    assert_eq!(took, MINUTE);
}

/// A charge beyond the estimate delays later jobs until it ages out.
#[test]
fn a_charge_delays_later_jobs() {
    let took = virtual_run(|| async {
        let limiter = RateLimiter::builder()
            .limit_tokens(100)
            .capacity_refresh_time(MINUTE)
            .build()
            .unwrap();
        limiter
            .submit_with(10, |usage| async move { usage.report(100) })
            .await
            .unwrap();
        limiter.submit(10, async {}).await.unwrap();
    });
    assert_eq!(took, MINUTE);
}

/// The ambient deadline is honoured while queued: the job gives up at the deadline, holds no
/// place and no budget afterwards, and the next job is admitted when the budget returns.
#[test]
fn ambient_deadline_while_queued() {
    virtual_run(|| async {
        let limiter = RateLimiter::builder()
            .limit_requests(1)
            .limit_tokens(100)
            .capacity_refresh_time(MINUTE)
            .build()
            .unwrap();
        let start = time::now();
        limiter.submit(30, async {}).await.unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let err = fail_after(
            10 * SEC,
            limiter.submit(50, async move {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(err.deadline(), start + 10 * SEC);
        assert_eq!(time::now() - start, 10 * SEC);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let stats = limiter.statistics();
        assert_eq!(
            (stats.queued, stats.requests_left, stats.tokens_left),
            (0, Some(0), Some(70))
        );
        assert_eq!((stats.admitted, stats.running), (1, 0));
        limiter.submit(100, async {}).await.unwrap();
        assert_eq!(time::now() - start, MINUTE);
    });
}

/// `limit_requests = 0` is a configuration error, never a hang (lionagi defect 2), while the
/// smallest real limit works across windows.
#[test]
fn limit_requests_zero_is_not_a_hang() {
    assert!(RateLimiter::builder().limit_requests(0).build().is_err());
    let took = virtual_run(|| async {
        let limiter = RateLimiter::builder().limit_requests(1).build().unwrap();
        for _ in 0..3 {
            limiter.submit(0, async {}).await.unwrap();
        }
    });
    assert_eq!(took, 2 * MINUTE);
}

// ---------------------------------------------------------------------------------------------
// Property test: no permit or token is lost
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Start a waiter for this many tokens (`try`: fail on a full queue instead of waiting).
    Submit { tokens: u64, r#try: bool },
    /// Drop the n-th pending waiter (modulo how many there are).
    Cancel(usize),
    /// Settle the n-th live permit to this many tokens.
    Settle(usize, u64),
    /// Drop the n-th live permit.
    Release(usize),
    /// Drop the n-th live permit, then at once (nobody polled since) the m-th pending waiter,
    /// which the release may just have handed its slot and reservation, untaken.
    ReleaseThenCancel(usize, usize),
    /// Settle the n-th live permit (a refund may admit waiters), then at once drop the m-th
    /// pending waiter, which may just have been handed its admission.
    SettleThenCancel(usize, u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..=60, any::<bool>()).prop_map(|(tokens, r#try)| Op::Submit { tokens, r#try }),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => (any::<usize>(), 0u64..=90).prop_map(|(i, t)| Op::Settle(i, t)),
        3 => any::<usize>().prop_map(Op::Release),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Op::ReleaseThenCancel(i, j)),
        1 => (any::<usize>(), 0u64..=90, any::<usize>())
            .prop_map(|(i, t, j)| Op::SettleThenCancel(i, t, j)),
    ]
}

type Waiting = Pin<Box<sheepdog_core::rate::futures::Acquire<'static>>>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]

    /// Any sequence of submit / cancel-while-queued / settle / release, and of a release or a
    /// settlement followed at once by a cancellation (of a waiter that may have been handed
    /// its admission and not taken it): admission is FIFO (unless overtaking is allowed, when
    /// waiters are handed their admissions from the middle of the line), the
    /// concurrency limit holds, the statistics match a model, and at the end every slot is
    /// back and the budgets hold exactly what the admitted jobs were charged.
    #[test]
    fn no_permit_or_token_is_lost(
        ops in proptest::collection::vec(op(), 1..60),
        concurrency in 1usize..=3,
        capacity in 1usize..=4,
        fixed in any::<bool>(),
        overtaking in any::<bool>(),
    ) {
        const REQUESTS: u64 = 12;
        const TOKENS: u64 = 200;
        // Leaked so the waiters can borrow it for 'static; one small limiter per case.
        let limiter: &'static RateLimiter = Box::leak(Box::new(
            RateLimiter::builder()
                .limit_requests(REQUESTS)
                .limit_tokens(TOKENS)
                .capacity_refresh_time(Duration::from_secs(3_600))
                .replenishment(if fixed { Replenishment::FixedWindow } else { Replenishment::Continuous })
                .concurrency_limit(concurrency)
                .queue_capacity(capacity)
                .allow_overtaking(overtaking)
                .build()
                .unwrap(),
        ));
        let mut pending: Vec<(usize, Waiting)> = Vec::new();
        let mut live: Vec<(Permit<'static>, u64)> = Vec::new();
        let mut arrivals = 0usize;
        let mut admitted = 0u64;
        // Tokens charged for every admitted job (dropped ones included): their settled figure.
        let mut charged_done = 0u64;
        let mut rejected = 0u64;
        for op in ops {
            match op {
                Op::Submit { tokens, r#try } => {
                    let full = pending.len() >= capacity;
                    let mut fut = Box::pin(if r#try {
                        limiter.try_acquire_queued(tokens)
                    } else {
                        limiter.acquire(tokens)
                    });
                    match poll_once(&mut fut) {
                        Poll::Ready(Ok(permit)) => {
                            prop_assert!(
                                overtaking || pending.is_empty(),
                                "a newcomer overtook a waiter"
                            );
                            admitted += 1;
                            live.push((permit, tokens));
                        }
                        Poll::Ready(Err(err)) => {
                            prop_assert_eq!(err, RateLimitError::QueueFull { capacity });
                            prop_assert!(r#try && full);
                            rejected += 1;
                        }
                        Poll::Pending => pending.push((arrivals, fut)),
                    }
                    arrivals += 1;
                }
                Op::Cancel(i) if !pending.is_empty() => {
                    drop(pending.remove(i % pending.len()));
                }
                Op::Settle(i, tokens) if !live.is_empty() => {
                    let n = live.len();
                    let (permit, accounted) = &mut live[i % n];
                    permit.settle(tokens);
                    *accounted = tokens;
                }
                Op::Release(i) if !live.is_empty() => {
                    let n = live.len();
                    let (permit, accounted) = live.remove(i % n);
                    drop(permit);
                    charged_done += accounted;
                }
                // A waiter handed its admission but dropped before it took it reserved
                // nothing: the model charges it nothing, and its slot passes on in order.
                Op::ReleaseThenCancel(i, j) if !live.is_empty() && !pending.is_empty() => {
                    let n = live.len();
                    let (permit, accounted) = live.remove(i % n);
                    drop(permit);
                    charged_done += accounted;
                    drop(pending.remove(j % pending.len()));
                }
                Op::SettleThenCancel(i, tokens, j) if !live.is_empty() && !pending.is_empty() => {
                    let n = live.len();
                    let (permit, accounted) = &mut live[i % n];
                    permit.settle(tokens);
                    *accounted = tokens;
                    drop(pending.remove(j % pending.len()));
                }
                _ => {}
            }
            // Poll every waiter; those admitted must be the oldest ones.
            let mut still = Vec::new();
            let mut blocked = false;
            for (arrival, mut fut) in pending.drain(..) {
                match poll_once(&mut fut) {
                    Poll::Ready(Ok(permit)) => {
                        prop_assert!(
                            overtaking || !blocked,
                            "waiter {} overtook an older one",
                            arrival
                        );
                        admitted += 1;
                        let tokens = permit.tokens();
                        live.push((permit, tokens));
                    }
                    Poll::Ready(Err(err)) => prop_assert!(false, "waiter failed: {:?}", err),
                    Poll::Pending => {
                        blocked = true;
                        still.push((arrival, fut));
                    }
                }
            }
            pending = still;
            let charged: u64 = charged_done + live.iter().map(|(_, t)| t).sum::<u64>();
            let stats = limiter.statistics();
            prop_assert!(stats.running <= concurrency);
            prop_assert_eq!(stats.running, live.len());
            prop_assert_eq!(stats.queued + stats.waiting_for_room, pending.len());
            prop_assert_eq!(stats.admitted, admitted);
            prop_assert_eq!(stats.rejected, rejected);
            prop_assert_eq!(stats.requests_left, Some(REQUESTS - admitted));
            prop_assert_eq!(stats.tokens_left, Some(TOKENS.saturating_sub(charged)));
        }
        let charged: u64 = charged_done + live.iter().map(|(_, t)| t).sum::<u64>();
        drop(pending);
        drop(live);
        let stats = limiter.statistics();
        prop_assert_eq!((stats.running, stats.queued, stats.waiting_for_room), (0, 0, 0));
        prop_assert_eq!(stats.completed, admitted);
        prop_assert_eq!(stats.tokens_left, Some(TOKENS.saturating_sub(charged)));
        // Every slot is back: if budget is left, a job is admitted at once.
        if admitted < REQUESTS && charged < TOKENS {
            prop_assert!(limiter.try_acquire(0).is_ok());
        }
    }
}

/// Regression: a waiter blocked only by the concurrency limit has no timer; when a slot frees
/// while the budget is still short, it must be woken to arm one, or it waits forever.
#[test]
fn slot_freed_before_budget_returns() {
    let took = virtual_run(|| async {
        let limiter = one_slot_per_minute(1);
        let held = limiter.try_acquire(0).unwrap();
        let l = limiter.clone();
        let waiter = runtime::spawn(async move { l.submit(0, async { time::now() }).await });
        until_queued(&limiter, 1).await;
        time::sleep(SEC).await;
        drop(held);
        let start = time::now() - SEC;
        assert_eq!(waiter.await.unwrap().unwrap() - start, MINUTE);
    });
    assert_eq!(took, MINUTE);
}

/// The hand-off that empties the line leaves the `SLOW` flag up while the admitted job runs:
/// a newcomer that queues behind that job's slot (no timer: only a release can help it) is
/// still woken by the release, arms its timer for the budget, and is admitted when it
/// returns; a lock-free refusal meanwhile sees the flag and asks the lock.
#[test]
fn the_flag_left_up_by_a_hand_off_strands_nobody() {
    let took = virtual_run(|| async {
        let limiter = one_slot_per_minute(2);
        let held = limiter.try_acquire(0).unwrap();
        let l = limiter.clone();
        let first = runtime::spawn(async move {
            let inner = l.clone();
            l.submit(0, async move {
                // Handed the slot, which emptied the line: the newcomer queues behind it.
                let newcomer =
                    runtime::spawn(async move { inner.submit(0, async { time::now() }).await });
                time::sleep(SEC).await;
                // In an `Option`: the job's output is the handle, not something to await.
                Some(newcomer)
            })
            .await
        });
        until_queued(&limiter, 1).await;
        drop(held);
        let l = limiter.clone();
        until(move || l.statistics().admitted == 2 && l.statistics().queued == 1).await;
        assert_eq!(
            limiter.try_acquire(0).unwrap_err(),
            RateLimitError::WouldWait
        );
        let newcomer = first.await.unwrap().unwrap().expect("the job ran");
        assert_eq!(newcomer.await.unwrap().unwrap(), time::now());
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.running, stats.queued), (3, 0, 0));
    });
    assert_eq!(took, MINUTE);
}

/// Regression: `resume` must let the head of the line look again, or it sleeps until the end
/// of the pause it no longer has.
#[test]
fn resume_wakes_a_waiter_sleeping_on_the_pause() {
    let took = virtual_run(|| async {
        let limiter = RateLimiter::builder()
            .limit_requests(1)
            .capacity_refresh_time(MINUTE)
            .build()
            .unwrap();
        limiter.submit(0, async {}).await.unwrap();
        limiter.pause_for(2 * MINUTE);
        let l = limiter.clone();
        let waiter = runtime::spawn(async move { l.submit(0, async {}).await });
        time::sleep(30 * SEC).await; // the pause lasts to 120 s, the budget is back at 60 s
        limiter.resume();
        waiter.await.unwrap().unwrap();
    });
    assert_eq!(took, MINUTE);
}

/// Plain threads hammer one limiter (lock-free fast paths racing the queue's lock): the
/// concurrency limit holds, every job completes, nothing is left running or queued. Once with
/// unlimited budgets (admission and release both lock-free while nobody waits) and once with
/// budgets (release lock-free).
#[test]
fn threads_race_the_fast_paths() {
    const THREADS: usize = 4;
    let rounds = if cfg!(miri) { 20 } else { 2_000 };
    for budgets in [false, true] {
        let mut builder = RateLimiter::builder()
            .concurrency_limit(2)
            .queue_capacity(None);
        if budgets {
            builder = builder.limit_requests(1 << 40).limit_tokens(1 << 40);
        }
        let limiter = builder.build().unwrap();
        let occupancy = Arc::new(Occupancy::default());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..THREADS {
            let (l, o, done) = (limiter.clone(), Arc::clone(&occupancy), done_tx.clone());
            std::thread::spawn(move || {
                for i in 0..rounds {
                    if (t + i) % 3 == 0 {
                        if let Ok(permit) = l.try_acquire(1) {
                            futures::executor::block_on(o.hold(0));
                            drop(permit);
                        }
                    } else {
                        futures::executor::block_on(l.submit(1, o.hold(1))).unwrap();
                    }
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..THREADS {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("watchdog: a thread hung");
        }
        let max = occupancy.max.load(Ordering::SeqCst);
        assert!((1..=2).contains(&max), "max in flight {max}");
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.queued), (0, 0));
        assert_eq!(stats.admitted, stats.completed);
    }
}

/// Outside any runtime admissions read the kernel's coarse clock and, while nobody waits,
/// spend credit without the lock. On the real clock, one thread admits back to back for 0.6 s
/// (ten intervals): no run of admissions that certainly fell within one interval (from just
/// before the first call to just after the last returned) holds more than the budgets, and
/// most of the allowed rate is used.
#[test]
fn outside_a_runtime_no_window_over_budget_on_the_real_clock() {
    let (limiter, interval) = bracketed_limiter();
    // (called at, returned at, tokens)
    let mut log: Vec<(Instant, Instant, u64)> = Vec::new();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < interval * 10 {
        let tokens = 10 + (i * 37) % 60;
        i += 1;
        let called = Instant::now();
        let admitted = limiter.try_acquire(tokens);
        let returned = Instant::now();
        if let Ok(mut permit) = admitted {
            // Some jobs report less than they reserved: refunds on credit admissions too.
            let used = if i % 4 == 0 { tokens / 2 } else { tokens };
            permit.settle(used);
            log.push((called, returned, used));
        }
    }
    // (How much of the rate is used is measured on virtual time, not here: on the real clock
    // a loaded machine decides it.)
    assert_bracketed_log(&limiter, &log, interval);
}

/// The request and token budgets of the bracketed-log tests, per interval.
const BRACKETED_BUDGETS: (u64, u64) = (40, 2_000);

/// The limiter of the bracketed-log tests ([`BRACKETED_BUDGETS`] every 60 ms), and its interval.
fn bracketed_limiter() -> (RateLimiter, Duration) {
    let interval = Duration::from_millis(60);
    let (requests, tokens) = BRACKETED_BUDGETS;
    let limiter = RateLimiter::builder()
        .limit_requests(requests)
        .limit_tokens(tokens)
        .capacity_refresh_time(interval)
        .build()
        .unwrap();
    (limiter, interval)
}

/// Checks a log of admissions by a [`bracketed_limiter`], each as (called at, returned at,
/// tokens settled), made back to back over ten intervals and all released: no run of them
/// that certainly fell within one interval (from just before the first call to just after the
/// last returned) holds more than the [`BRACKETED_BUDGETS`], the budget came back at least
/// once, and the books balance.
fn assert_bracketed_log(
    limiter: &RateLimiter,
    log: &[(Instant, Instant, u64)],
    interval: Duration,
) {
    let (requests, tokens) = BRACKETED_BUDGETS;
    for (k, &(first_called, ..)) in log.iter().enumerate() {
        let within = log[k..]
            .iter()
            .take_while(|&&(_, returned, _)| returned - first_called < interval);
        let (count, used) = within.fold((0, 0), |(n, t), &(.., used)| (n + 1, t + used));
        assert!(count <= requests, "{count} admissions within one interval");
        assert!(used <= tokens, "{used} tokens within one interval");
    }
    assert!(log.len() as u64 > requests, "only {} admissions", log.len());
    let stats = limiter.statistics();
    assert_eq!(stats.admitted, log.len() as u64);
    assert_eq!((stats.completed, stats.running), (stats.admitted, 0));
}

/// Outside any runtime: admissions on credit are counted, settled and refunded like any; a
/// spent request budget refuses without the lock (counted), yet a closed limiter still says
/// `Closed`; and the budget comes back after the interval.
#[test]
fn outside_a_runtime_credit_and_fast_refusals_keep_the_books() {
    // Long enough that the refusals below come well inside one interval, even on a loaded
    // machine; the sleep at the end only has to be longer.
    let interval = Duration::from_millis(500);
    let limiter = RateLimiter::builder()
        .limit_requests(3)
        .limit_tokens(1_000)
        .capacity_refresh_time(interval)
        .build()
        .unwrap();
    let a = limiter.try_acquire(300).unwrap();
    let mut b = limiter.try_acquire(200).unwrap();
    b.settle(50);
    assert_eq!(limiter.statistics().tokens_left, Some(650));
    let out = futures::executor::block_on(limiter.submit_with(100, |usage| async move {
        usage.report(10);
        7
    }));
    assert_eq!(out, Ok(7));
    let stats = limiter.statistics();
    assert_eq!(
        (stats.tokens_left, stats.requests_left),
        (Some(640), Some(0))
    );
    assert_eq!((stats.admitted, stats.completed, stats.running), (3, 1, 2));
    drop((a, b));
    for _ in 0..100 {
        assert_eq!(
            limiter.try_acquire(1).unwrap_err(),
            RateLimitError::WouldWait
        );
    }
    assert_eq!(limiter.statistics().rejected, 100);
    // Oversize jobs are still told so.
    assert_eq!(
        limiter.try_acquire(5_000).unwrap_err(),
        RateLimitError::ExceedsTokenWindow {
            cost: 5_000,
            limit: 1_000
        }
    );
    // Every use comes back one interval after it, give or take a few clock ticks.
    std::thread::sleep(interval * 3);
    let again = limiter.try_acquire(1).unwrap();
    drop(again);
    limiter.close();
    assert_eq!(limiter.try_acquire(1).unwrap_err(), RateLimitError::Closed);
    let stats = limiter.statistics();
    assert_eq!(
        (stats.admitted, stats.completed, stats.rejected),
        (4, 4, 102)
    );
}
