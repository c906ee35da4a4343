//! The public builders fed arbitrary input (the retry policy, the rate limiter, the flow
//! graph): each gives a typed error or a working value, never a panic or a hang. What the
//! working values then run is bounded by virtual time, so a hang fails the test.

use std::time::Duration;

use proptest::prelude::*;
use sheepdog_core::cancel::fail_after;
use sheepdog_core::combinators::{retry, RetryPolicy};
use sheepdog_core::flow::{FlowBuilder, RunOptions};
use sheepdog_core::rate::RateLimiter;
use sheepdog_core::runtime::Runtime;
use sheepdog_core::testing::VirtualRuntime;

/// Any `f64`, weighted towards the awkward ones.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        -10.0..10.0_f64,
        any::<f64>(),
    ]
}

/// Any duration, weighted towards zero, tiny and huge.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        (0_u64..5_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
    ]
}

/// Any optional limit, weighted towards zero and one.
fn limit() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(1)),
        any::<u64>().prop_map(Some)
    ]
}

/// A watchdog in virtual time: anything the builders' values run must end well before it.
const WATCHDOG: Duration = Duration::from_secs(365 * 24 * 3600);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]

    /// A retry policy from any numbers: a typed error, or a policy whose retry of an
    /// always-failing call ends after at most `attempts` calls.
    #[test]
    fn retry_policy_from_anything(
        attempts in prop_oneof![Just(0_u32), Just(1), 0_u32..20, any::<u32>()],
        base in duration(),
        max in duration(),
        factor in float(),
        jitter in float(),
        timeout in proptest::option::of(duration()),
        budget in proptest::option::of(duration()),
    ) {
        let mut builder = RetryPolicy::builder()
            .attempts(attempts)
            .base_delay(base)
            .max_delay(max)
            .factor(factor)
            .jitter(jitter);
        if let Some(timeout) = timeout {
            builder = builder.attempt_timeout(timeout);
        }
        if let Some(budget) = budget {
            builder = builder.budget(budget);
        }
        let Ok(policy) = builder.build() else {
            return Ok(());
        };
        // Keep the run short: a policy allowing millions of attempts is valid, but the
        // check only needs to see that retrying ends and never exceeds the count.
        prop_assume!(policy.attempts() <= 20);
        let rt = VirtualRuntime::new();
        let calls = std::cell::Cell::new(0_u32);
        let out = rt.block_on(fail_after(WATCHDOG, retry(
            || {
                calls.set(calls.get() + 1);
                async { Err::<(), _>("always") }
            },
            policy.clone(),
        )));
        let result = out.expect("retrying ends");
        let error = result.expect_err("the call always fails");
        prop_assert!(error.attempts() <= policy.attempts());
        prop_assert_eq!(error.attempts(), calls.get());
    }

    /// A rate limiter from any knobs: a typed error, or a limiter that runs a job or refuses
    /// it with a typed error.
    #[test]
    fn rate_limiter_from_anything(
        requests in limit(),
        tokens in limit(),
        refresh in float(),
        queue in proptest::option::of(prop_oneof![Just(0_usize), 0_usize..10, any::<usize>()]),
        concurrency in proptest::option::of(prop_oneof![Just(0_usize), 0_usize..10, any::<usize>()]),
        cost in prop_oneof![Just(0_u64), 0_u64..1_000, any::<u64>()],
    ) {
        let built = RateLimiter::builder()
            .limit_requests(requests)
            .limit_tokens(tokens)
            .capacity_refresh_secs(refresh)
            .queue_capacity(queue)
            .concurrency_limit(concurrency)
            .build();
        let Ok(limiter) = built else {
            return Ok(());
        };
        let rt = VirtualRuntime::new();
        let out = rt.block_on(fail_after(WATCHDOG, limiter.submit(cost, async { 7 })));
        // Either the job ran or it was refused with a typed error; never a hang.
        if let Ok(Ok(value)) = out {
            prop_assert_eq!(value, 7);
        } else if let Err(elapsed) = out {
            prop_assert!(false, "the job neither ran nor was refused: {elapsed:?}");
        }
    }

    /// A graph from random names and dependencies: a typed error, or a flow that runs every
    /// node.
    #[test]
    fn flow_graph_from_anything(
        nodes in proptest::collection::vec(
            (0_u8..12, proptest::collection::vec(0_u8..14, 0..4)),
            0..12,
        ),
        limit in 1_usize..4,
    ) {
        let mut graph = FlowBuilder::<()>::new();
        for (name, deps) in &nodes {
            let deps: Vec<String> = deps.iter().map(|d| format!("n{d}")).collect();
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            graph.node(&format!("n{name}"), &deps, |_| async { Ok(()) });
        }
        let Ok(flow) = graph.build() else {
            return Ok(());
        };
        let rt = VirtualRuntime::new();
        let report = rt
            .block_on(fail_after(WATCHDOG, flow.run(RunOptions::new().max_concurrent(limit))))
            .expect("the flow ends");
        prop_assert!(report.all_completed());
        prop_assert_eq!(report.settle_order().len(), nodes.len());
    }
}
