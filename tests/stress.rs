//! The stress tier: large runs that check nothing is lost. Each test runs a bounded size by
//! default (CI runs those), and its full size under `--ignored`:
//!
//! ```text
//! cargo test --release -p sheepdog-tests --test stress -- --ignored
//! ```
//!
//! - 100,000 tasks in nested spawned groups, with random failures and random cancellations,
//!   on tokio's multi-thread runtime: every child's outcome is reported exactly once, every
//!   failure reaches its group, and no task outlives its group.
//! - The rate limiter saturated for 10,000 virtual seconds: no window over budget, every job
//!   admitted and completed, the budgets balance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sheepdog_core::cancel::move_on_after;
use sheepdog_core::group::{spawn_group_on, GroupError, TaskError};
use sheepdog_core::rate::RateLimiter;
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::Live;
use sheepdog_tokio::TokioRuntime;

/// `groups` spawned groups of `children` each, inside one outer group, on tokio's multi-thread
/// runtime. A seeded tenth of the groups hit a child that fails; another tenth run under a
/// deadline that cuts them short. Every child's handle is kept and awaited at the end.
fn nested_groups(groups: usize, children: usize) {
    let rt = TokioRuntime::new_multi_thread(2).expect("tokio runtime");
    let live = Live::new();
    let handles = Arc::new(Mutex::new(Vec::with_capacity(groups * children)));
    let failed_groups = Arc::new(AtomicUsize::new(0));
    let group_rt = rt.clone();
    let (outer_live, outer_handles, outer_failed) = (
        live.clone(),
        Arc::clone(&handles),
        Arc::clone(&failed_groups),
    );
    let result = rt.block_on(spawn_group_on(group_rt.clone(), move |outer| async move {
        let mut rng = fastrand::Rng::with_seed(42);
        for g in 0..groups {
            let fails = rng.u8(0..10) == 0;
            let deadline = (rng.u8(0..10) == 0).then(|| Duration::from_millis(rng.u64(0..3)));
            let (live, handles, failed_groups, rt) = (
                outer_live.clone(),
                Arc::clone(&outer_handles),
                Arc::clone(&outer_failed),
                group_rt.clone(),
            );
            outer.spawn(async move {
                let group = spawn_group_on(rt, move |tg| async move {
                    for c in 0..children {
                        let guard = live.guard();
                        let handle = tg.spawn(async move {
                            let _guard = guard;
                            if c % 7 == 0 {
                                yield_now().await;
                            }
                            if fails && c == children / 2 {
                                return Err(g);
                            }
                            Ok(c)
                        });
                        handles.lock().unwrap().push(handle);
                    }
                    Ok(())
                });
                let outcome = match deadline {
                    None => Some(group.await),
                    Some(limit) => move_on_after(limit, group).await,
                };
                if let Some(Err(GroupError::Failed(_) | GroupError::Multiple(_))) = outcome {
                    failed_groups.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, usize>(())
            });
        }
        Ok::<_, usize>(())
    }));
    assert!(result.is_ok(), "the outer group has no failure of its own");
    assert_eq!(live.count(), 0, "a task outlived its group");
    let handles = std::mem::take(&mut *handles.lock().unwrap());
    assert_eq!(handles.len(), groups * children);
    let (mut completed, mut failed, mut cancelled) = (0, 0, 0);
    rt.block_on(async {
        for handle in handles {
            match handle.await {
                Ok(_) => completed += 1,
                Err(TaskError::Failed) => failed += 1,
                Err(TaskError::Cancelled) => cancelled += 1,
            }
        }
    });
    assert_eq!(completed + failed + cancelled, groups * children);
    assert_eq!(
        failed,
        failed_groups.load(Ordering::SeqCst),
        "one failing child per failed group, each reported to its group"
    );
}

#[test]
fn nested_groups_bounded() {
    nested_groups(20, 100);
}

#[test]
#[ignore = "full size: 100,000 tasks; run with --ignored (release recommended)"]
fn nested_groups_full() {
    nested_groups(100, 1_000);
}

/// The limiter saturated by a producer that keeps its queue full for `seconds` virtual
/// seconds: every sliding one-second window holds at most the budget, every job is admitted
/// and completes, and the statistics balance at the end.
fn limiter_saturated(seconds: u64) {
    const PER_SECOND: u64 = 10;
    let rt = VirtualRuntime::new();
    let limiter = RateLimiter::builder()
        .limit_requests(PER_SECOND)
        .limit_tokens(PER_SECOND * 100)
        .capacity_refresh_time(Duration::from_secs(1))
        .queue_capacity(50)
        .concurrency_limit(4)
        .build()
        .expect("a valid limiter");
    let jobs = (seconds * PER_SECOND) as usize;
    let admitted = std::sync::Mutex::new(Vec::with_capacity(jobs));
    rt.block_on(async {
        let start = time::now();
        let all = (0..jobs).map(|_| {
            let (limiter, admitted) = (&limiter, &admitted);
            limiter.submit_with(100, move |usage| async move {
                admitted.lock().unwrap().push(time::now() - start);
                time::sleep(Duration::from_millis(30)).await;
                usage.report(60); // refunds 40 a job
            })
        });
        for result in sheepdog_core::combinators::gather(all).await {
            result.expect("every job admitted");
        }
    });
    let admitted = admitted.into_inner().unwrap();
    assert_eq!(admitted.len(), jobs);
    // Sliding windows over the sorted admission times.
    let mut times = admitted;
    times.sort_unstable();
    let window = Duration::from_secs(1);
    let mut left = 0;
    for right in 0..times.len() {
        while times[right] - times[left] >= window {
            left += 1;
        }
        assert!(
            (right - left + 1) as u64 <= PER_SECOND,
            "{} admissions within one second ending at {:?}",
            right - left + 1,
            times[right]
        );
    }
    let stats = limiter.statistics();
    assert_eq!(stats.admitted, jobs as u64);
    assert_eq!(stats.completed, jobs as u64);
    assert_eq!((stats.queued, stats.running), (0, 0));
    // Saturated: the run takes about `seconds` virtual seconds, not much longer.
    assert!(rt.clock().elapsed() <= Duration::from_secs(seconds + 1));
}

#[test]
fn limiter_saturated_bounded() {
    limiter_saturated(100);
}

#[test]
#[ignore = "full size: 10,000 virtual seconds; run with --ignored (release recommended)"]
fn limiter_saturated_full() {
    limiter_saturated(10_000);
}
