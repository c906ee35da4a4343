//! The public builders fed arbitrary input (the retry policy, the rate limiter, the flow
//! graph): each gives a typed error or a working value, never a panic or a hang. What the
//! working values then run is bounded by virtual time, so a hang fails the test.
//!
//! The checks live in `sheepdog_tests::builders`, shared with the coverage-guided fuzz targets
//! in `tests/fuzz`; here proptest feeds them values weighted towards the awkward ones.

use std::time::Duration;

use proptest::prelude::*;
use sheepdog_tests::builders::{
    check_flow_graph, check_rate_limiter, check_retry_policy, FlowInput, LimiterInput, LimiterOp,
    NodeKind, RetryInput,
};

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

/// Any optional `usize` capacity, weighted towards zero and small values.
fn capacity() -> impl Strategy<Value = Option<usize>> {
    proptest::option::of(prop_oneof![Just(0_usize), 0_usize..10, any::<usize>()])
}

/// Any step on a rate limiter.
fn limiter_op() -> impl Strategy<Value = LimiterOp> {
    let tokens = || prop_oneof![Just(0_u64), 0_u64..1_000, any::<u64>()];
    prop_oneof![
        tokens().prop_map(LimiterOp::TryAcquire),
        (tokens(), any::<u16>()).prop_map(|(tokens, millis)| LimiterOp::Submit { tokens, millis }),
        (any::<u8>(), tokens()).prop_map(|(permit, tokens)| LimiterOp::Settle { permit, tokens }),
        any::<u8>().prop_map(LimiterOp::Release),
        (limit(), limit()).prop_map(|(r, t)| LimiterOp::UpdateRemaining(r, t)),
        any::<u16>().prop_map(LimiterOp::Pause),
        any::<u16>().prop_map(LimiterOp::Sleep),
    ]
}

/// Any node behaviour.
fn node_kind() -> impl Strategy<Value = NodeKind> {
    prop_oneof![
        4 => Just(NodeKind::Ok),
        1 => Just(NodeKind::Fail),
        2 => any::<u8>().prop_map(NodeKind::Sleep),
    ]
}

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
        check_retry_policy(&RetryInput { attempts, base, max, factor, jitter, timeout, budget });
    }

    /// A rate limiter from any knobs: a typed error, or a limiter on which any sequence of
    /// acquisitions, submissions, settlements, releases, provider updates and pauses works or
    /// is refused with a typed error, within its limits, losing no slot.
    #[test]
    fn rate_limiter_from_anything(
        requests in limit(),
        tokens in limit(),
        refresh_secs in float(),
        queue in capacity(),
        concurrency in capacity(),
        fixed_window in any::<bool>(),
        ops in proptest::collection::vec(limiter_op(), 0..16),
    ) {
        check_rate_limiter(&LimiterInput {
            requests, tokens, refresh_secs, queue, concurrency, fixed_window, ops,
        });
    }

    /// A graph from random names and dependencies (colliding, dangling, cyclic): a typed
    /// error, or a flow whose run settles every node consistently with the graph.
    #[test]
    fn flow_graph_from_anything(
        nodes in proptest::collection::vec(
            (0_u8..12, proptest::collection::vec(0_u8..14, 0..4), node_kind()),
            0..12,
        ),
        limit in any::<u8>(),
        policy in any::<u8>(),
    ) {
        check_flow_graph(&FlowInput { nodes, limit, policy });
    }
}

/// Found by the `rate_limiter` fuzz target: settlements whose charges add up past `u64::MAX`
/// tokens made the sliding log's entries sum to more than the saturated total, so once they
/// expired the total wrapped and a waiting job was re-checked forever at the same instant.
#[test]
fn rate_limiter_charges_past_u64_max_balance() {
    check_rate_limiter(&LimiterInput {
        requests: None,
        tokens: Some(18_446_743_846_076_284_927),
        refresh_secs: 2.0,
        queue: None,
        concurrency: None,
        fixed_window: false,
        ops: vec![
            LimiterOp::TryAcquire(6_727_636_073_941_172_171),
            LimiterOp::Settle {
                permit: 0,
                tokens: 6_727_636_073_941_130_589,
            },
            LimiterOp::TryAcquire(6_727_636_073_935_011_840),
            LimiterOp::Settle {
                permit: 1,
                tokens: 18_400_966_308_085_456_221,
            },
            LimiterOp::Submit {
                tokens: 9_989_053_385_114_082_383,
                millis: 16_191,
            },
            LimiterOp::TryAcquire(0),
        ],
    });
}

/// Found by the `rate_limiter` fuzz target: with an interval of decades, waits that each ran
/// a virtual year into the watchdog took the clock past the thirty years at which instants
/// saturate; a job then waited for a saturated instant already in the past, and was woken and
/// re-checked at that same instant forever.
#[test]
fn rate_limiter_with_decades_long_interval_never_spins() {
    for fixed_window in [false, true] {
        check_rate_limiter(&LimiterInput {
            requests: None,
            tokens: Some(1_000),
            refresh_secs: 4.8e15,
            queue: None,
            concurrency: None,
            fixed_window,
            // Two fit; each of the others waits a virtual year, until the watchdog ends it.
            ops: vec![
                LimiterOp::Submit {
                    tokens: 500,
                    millis: 0,
                };
                40
            ],
        });
    }
}
