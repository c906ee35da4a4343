//! The soak test: rounds of a mixed workload (a flow whose nodes run task groups of retried,
//! rate-limited, deadline-bound jobs, some of which fail) on the virtual-time runtime. After
//! every round: no task is alive, every job's outcome was reported exactly once, the rate
//! limiter's books balance, and the resident memory has not grown since the warm-up rounds.
//!
//! ```text
//! cargo test -p sheepdog-tests --test soak                 # 30 rounds
//! SHEEPDOG_SOAK_ROUNDS=2000 cargo test --release -p sheepdog-tests --test soak
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sheepdog_core::cancel::fail_after;
use sheepdog_core::combinators::{retry, RetryPolicy};
use sheepdog_core::flow::{FlowBuilder, RunOptions};
use sheepdog_core::group::task_group;
use sheepdog_core::rate::RateLimiter;
use sheepdog_core::runtime::Runtime;
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::Live;

/// The process's resident memory in bytes (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

const NODES: usize = 6;
const JOBS_PER_NODE: usize = 40;

/// One round; returns how many times each job reported its outcome.
fn round(seed: u64, limiter: &RateLimiter, live: &Live) -> Vec<u8> {
    let reports = Arc::new(Mutex::new(vec![0_u8; NODES * JOBS_PER_NODE]));
    let rt = VirtualRuntime::new();
    let policy = RetryPolicy::builder()
        .attempts(3)
        .base_delay(Duration::from_millis(10))
        .build()
        .expect("a valid policy");
    let mut graph = FlowBuilder::<String>::new();
    for node in 0..NODES {
        let deps: Vec<String> = (0..node)
            .filter(|d| d % 2 == 0)
            .map(|d| format!("n{d}"))
            .collect();
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        let (limiter, live, reports, policy) = (
            limiter.clone(),
            live.clone(),
            Arc::clone(&reports),
            policy.clone(),
        );
        graph.node(&format!("n{node}"), &deps, move |_| {
            let (limiter, live, reports, policy) = (
                limiter.clone(),
                live.clone(),
                Arc::clone(&reports),
                policy.clone(),
            );
            async move {
                let ok = task_group(|tg| async move {
                    for j in 0..JOBS_PER_NODE {
                        let id = node * JOBS_PER_NODE + j;
                        let mut rng = fastrand::Rng::with_seed(seed ^ id as u64);
                        let (limiter, guard, policy) =
                            (limiter.clone(), live.guard(), policy.clone());
                        let reports = Arc::clone(&reports);
                        let flaky = rng.u8(0..4) == 0;
                        let hopeless = rng.u8(0..20) == 0;
                        let latency = Duration::from_millis(rng.u64(1..40));
                        let handle = tg.spawn(async move {
                            let _guard = guard;
                            let mut attempt = 0;
                            let job = retry(
                                || {
                                    attempt += 1;
                                    let fail = hopeless || (flaky && attempt == 1);
                                    limiter.submit(10, async move {
                                        time::sleep(latency).await;
                                        if fail {
                                            Err("provider error")
                                        } else {
                                            Ok(())
                                        }
                                    })
                                },
                                policy,
                            );
                            let outcome = fail_after(Duration::from_millis(500), job).await;
                            reports.lock().unwrap()[id] += 1;
                            Ok::<_, String>(matches!(outcome, Ok(Ok(Ok(())))))
                        });
                        drop(handle);
                    }
                    Ok::<_, String>(())
                })
                .await;
                ok.map_err(|e| e.to_string())
            }
        });
    }
    let flow = graph.build().expect("a DAG");
    let report = rt.block_on(flow.run(RunOptions::new().max_concurrent(3)));
    assert!(report.all_completed(), "{report:?}");
    // Every node's task group returned only after its jobs ended.
    let reports = reports.lock().unwrap().clone();
    reports
}

#[test]
fn soak() {
    let rounds: usize = std::env::var("SHEEPDOG_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let live = Live::new();
    let limiter = RateLimiter::builder()
        .limit_requests(50)
        .capacity_refresh_time(Duration::from_secs(1))
        .concurrency_limit(8)
        .build()
        .expect("a valid limiter");
    let mut baseline = None;
    for r in 0..rounds {
        let reports = round(r as u64, &limiter, &live);
        assert!(
            reports.iter().all(|&n| n == 1),
            "round {r}: a job reported its outcome {:?} times",
            reports.iter().find(|&&n| n != 1)
        );
        assert_eq!(live.count(), 0, "round {r}: a job outlived its group");
        let stats = limiter.statistics();
        assert_eq!(
            stats.admitted, stats.completed,
            "round {r}: admitted but never completed"
        );
        assert_eq!((stats.queued, stats.running), (0, 0), "round {r}");
        // Memory stays flat: after a few warm-up rounds, the resident size may move by
        // allocator noise but not grow with the number of rounds.
        if let (true, Some(bytes)) = (r >= 5, resident_bytes()) {
            let base = *baseline.get_or_insert(bytes);
            assert!(
                bytes <= base + 8 * 1024 * 1024,
                "round {r}: resident memory grew from {base} to {bytes} bytes"
            );
        }
    }
}
