//! The public builders (the retry policy, the rate limiter, the flow graph) fed arbitrary
//! input, then made to work: each check builds from its input and, if the builder accepted it,
//! runs what it built on virtual time and asserts the invariants. A check panics on a broken
//! invariant, on a panic inside sheepdog, and on a hang (a virtual-time watchdog).
//!
//! Two drivers share these checks: the property tests in `tests/builders_fuzz.rs` (proptest
//! strategies weighted towards awkward values) and the coverage-guided fuzz targets in
//! `tests/fuzz` (libFuzzer, which derives the inputs through `arbitrary` under `cfg(fuzzing)`).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sheepdog_core::cancel::fail_after;
use sheepdog_core::combinators::{retry, RetryPolicy};
use sheepdog_core::flow::{FailurePolicy, FlowBuilder, NodeId, NodeStatus, RunOptions};
use sheepdog_core::rate::{Permit, RateLimiter, Replenishment};
use sheepdog_core::runtime::Runtime;
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;

/// A watchdog in virtual time: anything the builders' values run must end well before it.
pub const WATCHDOG: Duration = Duration::from_secs(365 * 24 * 3600);

/// The knobs of a [`RetryPolicy`], as anything may set them.
#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct RetryInput {
    /// `attempts`.
    pub attempts: u32,
    /// `base_delay`.
    pub base: Duration,
    /// `max_delay`.
    pub max: Duration,
    /// `factor`.
    pub factor: f64,
    /// `jitter`.
    pub jitter: f64,
    /// `attempt_timeout`, if set.
    pub timeout: Option<Duration>,
    /// `budget`, if set.
    pub budget: Option<Duration>,
}

/// Builds a retry policy from `input`: a typed error, or a policy whose retry of an
/// always-failing call ends after at most `attempts` calls and reports how many ran.
pub fn check_retry_policy(input: &RetryInput) {
    let mut builder = RetryPolicy::builder()
        .attempts(input.attempts)
        .base_delay(input.base)
        .max_delay(input.max)
        .factor(input.factor)
        .jitter(input.jitter);
    if let Some(timeout) = input.timeout {
        builder = builder.attempt_timeout(timeout);
    }
    if let Some(budget) = input.budget {
        builder = builder.budget(budget);
    }
    let Ok(policy) = builder.build() else {
        return;
    };
    assert!(
        policy.attempts() >= 1,
        "a built policy makes at least one call"
    );
    // A policy allowing millions of attempts is valid, but the check only needs to see that
    // retrying ends and never exceeds the count.
    if policy.attempts() > 20 {
        return;
    }
    let rt = VirtualRuntime::new();
    let calls = Cell::new(0_u32);
    let out = rt.block_on(fail_after(
        WATCHDOG,
        retry(
            || {
                calls.set(calls.get() + 1);
                async { Err::<(), _>("always") }
            },
            policy.clone(),
        ),
    ));
    let error = out
        .expect("retrying ends")
        .expect_err("the call always fails");
    assert!(error.attempts() <= policy.attempts());
    assert_eq!(error.attempts(), calls.get());
}

/// One step a [`LimiterInput`] takes on the limiter it built.
#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum LimiterOp {
    /// `try_acquire(tokens)`, keeping the permit if one is granted.
    TryAcquire(u64),
    /// `submit(tokens, job)` of a job that sleeps `millis`, bounded by the watchdog.
    Submit {
        /// The estimated cost.
        tokens: u64,
        /// How long the job runs, in virtual milliseconds.
        millis: u16,
    },
    /// `settle` on a kept permit (by index, modulo the number kept).
    Settle {
        /// Which kept permit.
        permit: u8,
        /// The real usage.
        tokens: u64,
    },
    /// Drops a kept permit (by index, modulo the number kept).
    Release(u8),
    /// `update_remaining`, as a provider's headers would.
    UpdateRemaining(Option<u64>, Option<u64>),
    /// `pause_for` that many virtual milliseconds.
    Pause(u16),
    /// Lets that many virtual milliseconds pass.
    Sleep(u16),
}

/// The knobs of a [`RateLimiter`] and what to do with it.
#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct LimiterInput {
    /// `limit_requests`.
    pub requests: Option<u64>,
    /// `limit_tokens`.
    pub tokens: Option<u64>,
    /// `capacity_refresh_secs`.
    pub refresh_secs: f64,
    /// `queue_capacity`.
    pub queue: Option<usize>,
    /// `concurrency_limit`.
    pub concurrency: Option<usize>,
    /// Fixed window instead of the continuous (sliding) one.
    pub fixed_window: bool,
    /// The steps, in order.
    pub ops: Vec<LimiterOp>,
}

/// Builds a rate limiter from `input`: a typed error, or a limiter on which every step either
/// works or is refused with a typed error, never a panic or a hang, and whose statistics stay
/// within its limits throughout. Once every permit is dropped nothing is running or queued.
pub fn check_rate_limiter(input: &LimiterInput) {
    let replenishment = if input.fixed_window {
        Replenishment::FixedWindow
    } else {
        Replenishment::Continuous
    };
    let built = RateLimiter::builder()
        .limit_requests(input.requests)
        .limit_tokens(input.tokens)
        .capacity_refresh_secs(input.refresh_secs)
        .queue_capacity(input.queue)
        .concurrency_limit(input.concurrency)
        .replenishment(replenishment)
        .build();
    let Ok(limiter) = built else {
        return;
    };
    let rt = VirtualRuntime::new();
    let within_limits = |limiter: &RateLimiter| {
        let stats = limiter.statistics();
        if let (Some(left), Some(limit)) = (stats.requests_left, input.requests) {
            assert!(left <= limit, "{left} requests left of {limit}");
        }
        if let (Some(left), Some(limit)) = (stats.tokens_left, input.tokens) {
            assert!(left <= limit, "{left} tokens left of {limit}");
        }
        if let Some(limit) = input.concurrency {
            assert!(
                stats.running <= limit,
                "{} running of {limit}",
                stats.running
            );
        }
    };
    rt.block_on(async {
        let mut kept: Vec<Permit<'_>> = Vec::new();
        for op in input.ops.iter().take(64) {
            match *op {
                LimiterOp::TryAcquire(tokens) => {
                    if let Ok(permit) = limiter.try_acquire(tokens) {
                        assert_eq!(permit.tokens(), tokens);
                        kept.push(permit);
                    }
                }
                LimiterOp::Submit { tokens, millis } => {
                    let job = time::sleep(Duration::from_millis(millis.into()));
                    // Run, or refused with a typed error; a submit blocked by permits this
                    // check still holds is cut off by the watchdog, which is not a hang.
                    let _ = fail_after(WATCHDOG, limiter.submit(tokens, job)).await;
                }
                LimiterOp::Settle { permit, tokens } => {
                    if !kept.is_empty() {
                        let i = usize::from(permit) % kept.len();
                        kept[i].settle(tokens);
                    }
                }
                LimiterOp::Release(permit) => {
                    if !kept.is_empty() {
                        drop(kept.swap_remove(usize::from(permit) % kept.len()));
                    }
                }
                LimiterOp::UpdateRemaining(requests, tokens) => {
                    limiter.update_remaining(requests, tokens);
                }
                LimiterOp::Pause(millis) => {
                    limiter.pause_for(Duration::from_millis(millis.into()));
                }
                LimiterOp::Sleep(millis) => {
                    time::sleep(Duration::from_millis(millis.into())).await;
                }
            }
            within_limits(&limiter);
        }
        drop(kept);
    });
    let stats = limiter.statistics();
    assert_eq!(
        (stats.running, stats.queued),
        (0, 0),
        "a slot or a place was kept after every permit was dropped"
    );
}

/// What a node of a [`FlowInput`] does when it runs.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum NodeKind {
    /// Completes at once.
    Ok,
    /// Fails at once.
    Fail,
    /// Completes after that many virtual milliseconds.
    Sleep(u8),
}

/// A graph of nodes named by small numbers (so names collide and dependencies dangle), the
/// run's concurrency limit and failure policy.
#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct FlowInput {
    /// `(name, dependencies, behaviour)`, names and dependencies taken modulo 16.
    pub nodes: Vec<(u8, Vec<u8>, NodeKind)>,
    /// `max_concurrent`, taken as `1 + limit % 4`.
    pub limit: u8,
    /// The failure policy: `policy % 3` picks skip-dependents, continue or fail-fast.
    pub policy: u8,
}

/// Builds a flow from `input`: a typed error (duplicate name, unknown dependency, cycle), or a
/// flow whose run gives every node a status consistent with the graph: a node completed only
/// after all its dependencies completed, failed only if it was a failing node, skipped only
/// because of a dependency that did not complete; without fail-fast every node settles.
pub fn check_flow_graph(input: &FlowInput) {
    let nodes: Vec<(String, Vec<String>, NodeKind)> = input
        .nodes
        .iter()
        .take(24)
        .map(|(name, deps, kind)| {
            let deps = deps
                .iter()
                .take(4)
                .map(|d| format!("n{}", d % 16))
                .collect();
            (format!("n{}", name % 16), deps, *kind)
        })
        .collect();
    let mut graph = FlowBuilder::<&'static str>::new();
    for (name, deps, kind) in &nodes {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        let kind = *kind;
        graph.node(name, &deps, move |_| async move {
            match kind {
                NodeKind::Ok => Ok(()),
                NodeKind::Fail => Err("failed"),
                NodeKind::Sleep(millis) => {
                    time::sleep(Duration::from_millis(millis.into())).await;
                    Ok(())
                }
            }
        });
    }
    let Ok(flow) = graph.build() else {
        return;
    };
    let policy = match input.policy % 3 {
        0 => FailurePolicy::SkipDependents,
        1 => FailurePolicy::Continue,
        _ => FailurePolicy::FailFast,
    };
    let options = RunOptions::new()
        .max_concurrent(1 + usize::from(input.limit % 4))
        .policy(policy);
    let rt = VirtualRuntime::new();
    let report = rt
        .block_on(fail_after(WATCHDOG, flow.run(options)))
        .expect("the flow ends");
    assert_eq!(flow.len(), nodes.len());
    let ids: HashMap<&str, NodeId> = report
        .settle_order()
        .iter()
        .map(|&id| (report.name(id), id))
        .collect();
    let settled: HashSet<NodeId> = report.settle_order().iter().copied().collect();
    assert_eq!(
        settled.len(),
        report.settle_order().len(),
        "a node settled twice"
    );
    if !matches!(policy, FailurePolicy::FailFast) {
        assert_eq!(settled.len(), nodes.len(), "a node never settled");
    }
    for (name, deps, kind) in &nodes {
        let Some(&id) = ids.get(name.as_str()) else {
            continue;
        };
        // A node runs only after each dependency completed (or, under `Continue`, failed).
        let ran_after = |dep: &String| {
            ids.get(dep.as_str())
                .is_some_and(|&d| match report.status(d) {
                    NodeStatus::Completed => true,
                    NodeStatus::Failed(_) => matches!(policy, FailurePolicy::Continue),
                    _ => false,
                })
        };
        match report.status(id) {
            NodeStatus::Completed => {
                assert!(!matches!(kind, NodeKind::Fail), "{name} cannot complete");
                assert!(
                    deps.iter().all(ran_after),
                    "{name} ran before its dependencies"
                );
            }
            NodeStatus::Failed(_) => {
                assert!(matches!(kind, NodeKind::Fail), "{name} cannot fail");
                assert!(
                    deps.iter().all(ran_after),
                    "{name} ran before its dependencies"
                );
            }
            NodeStatus::Skipped { because } => {
                let because = report.name(*because);
                assert!(
                    deps.iter().any(|d| d == because),
                    "{name} skipped for a non-dependency"
                );
                assert!(
                    !matches!(report.status(ids[because]), NodeStatus::Completed),
                    "{name} skipped although {because} completed"
                );
            }
            NodeStatus::Cancelled => {
                assert!(
                    matches!(policy, FailurePolicy::FailFast),
                    "{name} cancelled without fail-fast"
                );
            }
        }
    }
}
