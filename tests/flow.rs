//! The flow executor: the lionagi flow checklist on every runtime (time on virtual time), and
//! random DAGs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use proptest::prelude::*;
use sheepdog_core::combinators::RetryPolicy;
use sheepdog_core::flow::{
    EventKind, FailurePolicy, FlowBuilder, FlowCanceller, GraphError, NodeError, NodeId,
    NodeStatus, Outcome, RunOptions,
};
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_core::time;
use sheepdog_tests::{conformance, pending_until_dropped, Live};

/// Tracks how many operations run at once, and the most seen.
#[derive(Clone, Default)]
struct Peak(Arc<(AtomicUsize, AtomicUsize)>);

impl Peak {
    async fn during(&self, yields: usize) {
        let now = self.0 .0.fetch_add(1, Ordering::SeqCst) + 1;
        self.0 .1.fetch_max(now, Ordering::SeqCst);
        for _ in 0..yields {
            yield_now().await;
        }
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }

    fn max(&self) -> usize {
        self.0 .1.load(Ordering::SeqCst)
    }
}

fn names<E>(report: &sheepdog_core::flow::FlowReport<E>, ids: &[NodeId]) -> Vec<String> {
    ids.iter().map(|&id| report.name(id).to_owned()).collect()
}

conformance! {
    /// A chain passes each output to the next; nodes settle in dependency order.
    async fn linear_chain(cx) {
        let mut graph = FlowBuilder::<String>::new();
        let a = graph.node("a", &[], |_| async { Ok(1u32) });
        let b = graph.node("b", &["a"], move |inputs| async move {
            yield_now().await;
            Ok(inputs.get(a).copied().unwrap_or(0) + 10)
        });
        let c = graph.node("c", &["b"], move |inputs| async move {
            Ok(format!("c saw {}", inputs.get(b).copied().unwrap_or(0)))
        });
        let report = graph.build().unwrap().run(RunOptions::new()).await;
        assert!(report.all_completed());
        assert_eq!(report.output(c).map(String::as_str), Some("c saw 11"));
        assert_eq!(report.settle_order_names(), ["a", "b", "c"]);
    }

    /// A diamond: the last node sees both branches; the branches run in parallel.
    async fn diamond(cx) {
        let peak = Peak::default();
        let mut graph = FlowBuilder::<()>::new();
        let root = graph.node("root", &[], |_| async { Ok(2u64) });
        let branch = |factor: u64| {
            let peak = peak.clone();
            move |inputs: sheepdog_core::flow::Inputs<()>| {
                let peak = peak.clone();
                async move {
                    peak.during(3).await;
                    Ok(inputs.get(root).copied().unwrap_or(0) * factor)
                }
            }
        };
        let left = graph.node("left", &["root"], branch(3));
        let right = graph.node("right", &["root"], branch(5));
        let join = graph.node("join", &["left", "right"], move |inputs| async move {
            Ok(inputs.get(left).copied().unwrap_or(0) + inputs.get(right).copied().unwrap_or(0))
        });
        let report = graph.build().unwrap().run(RunOptions::new()).await;
        assert_eq!(report.output(join), Some(&16));
        assert_eq!(peak.max(), 2, "the two branches overlapped");
    }

    /// The empty graph and the single node.
    async fn empty_and_single(cx) {
        let report = FlowBuilder::<()>::new().build().unwrap().run(RunOptions::new()).await;
        assert!(report.all_completed() && report.settle_order().is_empty());
        let mut graph = FlowBuilder::<()>::new();
        let only = graph.node("only", &[], |_| async { Ok("done") });
        let report = graph.build().unwrap().run(RunOptions::new()).await;
        assert_eq!(report.output(only), Some(&"done"));
    }

    /// `max_concurrent` is never exceeded, and is reached when the graph allows.
    async fn max_concurrent_is_observed(cx) {
        let peak = Peak::default();
        let mut graph = FlowBuilder::<()>::new();
        for i in 0..12 {
            let peak = peak.clone();
            graph.node(&format!("n{i}"), &[], move |_| {
                let peak = peak.clone();
                async move {
                    peak.during(4).await;
                    Ok(())
                }
            });
        }
        let report = graph.build().unwrap().run(RunOptions::new().max_concurrent(3)).await;
        assert!(report.all_completed());
        assert_eq!(peak.max(), 3);
    }

    /// Sequential runs one node at a time, lowest index first among the ready ones.
    async fn sequential_order_is_deterministic(cx) {
        let mut graph = FlowBuilder::<()>::new();
        graph.node("c", &["b"], |_| async { Ok(()) });
        graph.node("x", &[], |_| async { yield_now().await; Ok(()) });
        graph.node("b", &[], |_| async { Ok(()) });
        graph.node("a", &["x", "b"], |_| async { Ok(()) });
        let report = graph.build().unwrap().run(RunOptions::new().sequential()).await;
        assert_eq!(report.settle_order_names(), ["x", "b", "c", "a"]);
    }

    /// Default policy: a failure skips its dependents (transitively), and names the cause;
    /// independent nodes still complete.
    async fn failure_skips_dependents(cx) {
        let mut graph = FlowBuilder::<&str>::new();
        let bad = graph.node("bad", &[], |_| async { Err::<(), _>("boom") });
        let child = graph.node("child", &["bad"], |_| async { Ok(()) });
        let grandchild = graph.node("grandchild", &["child"], |_| async { Ok(()) });
        let other = graph.node("other", &[], |_| async { Ok(1) });
        let report = graph.build().unwrap().run(RunOptions::new()).await;
        assert!(matches!(report.status(bad), NodeStatus::Failed(e) if matches!(**e, NodeError::Failed("boom"))));
        assert!(matches!(report.status(child), NodeStatus::Skipped { because } if *because == bad.id()));
        assert!(matches!(report.status(grandchild), NodeStatus::Skipped { because } if *because == child.id()));
        assert_eq!(report.output(other), Some(&1));
        assert_eq!(names(&report, &report.with_outcome(Outcome::Skipped)), ["child", "grandchild"]);
    }

    /// `Continue`: dependents run and see the failure.
    async fn continue_shows_the_failure(cx) {
        let mut graph = FlowBuilder::<&str>::new();
        let bad = graph.node("bad", &[], |_| async { Err::<u8, _>("boom") });
        let seen = graph.node("seen", &["bad"], move |inputs| async move {
            Ok(match inputs.failure(bad) {
                Some(NodeError::Failed(message)) => format!("upstream failed: {message}"),
                _ => "no failure".to_owned(),
            })
        });
        let report = graph
            .build()
            .unwrap()
            .run(RunOptions::new().policy(FailurePolicy::Continue))
            .await;
        assert_eq!(report.output(seen).map(String::as_str), Some("upstream failed: boom"));
    }

    /// `FailFast`: the first failure drops the running nodes; nothing else starts.
    async fn fail_fast_cancels_running_nodes(cx) {
        let (slow, dropped) = pending_until_dropped();
        let slow = Arc::new(Mutex::new(Some(slow)));
        let mut graph = FlowBuilder::<&str>::new();
        let running = graph.node("slow", &[], move |_| {
            let slow = slow.lock().unwrap().take();
            async move {
                if let Some(slow) = slow {
                    slow.await;
                }
                Ok(())
            }
        });
        graph.node("bad", &[], |_| async { yield_now().await; Err::<(), _>("boom") });
        let later = graph.node("later", &["slow"], |_| async { Ok(()) });
        let report = graph
            .build()
            .unwrap()
            .run(RunOptions::new().policy(FailurePolicy::FailFast))
            .await;
        assert!(matches!(report.status(running), NodeStatus::Cancelled));
        assert!(matches!(report.status(later), NodeStatus::Cancelled));
        assert!(dropped.await.is_ok(), "the running node was dropped");
    }

    /// `keep_only` keeps exactly the asked outputs and frees the rest as the run goes: a
    /// chain of 40 holds at most two outputs at any time.
    async fn keep_only_frees_outputs_as_it_goes(cx) {
        let live = Live::new();
        let peak = Arc::new(AtomicUsize::new(0));
        let mut graph = FlowBuilder::<()>::new();
        let mut last = None;
        for i in 0..40 {
            let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("n{}", i - 1)] };
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            let (live, peak) = (live.clone(), Arc::clone(&peak));
            last = Some(graph.node(&format!("n{i}"), &deps, move |_| {
                let (live, peak) = (live.clone(), Arc::clone(&peak));
                async move {
                    peak.fetch_max(live.count(), Ordering::SeqCst);
                    Ok(live.guard())
                }
            }));
        }
        let last = last.unwrap();
        let report = graph.build().unwrap().run(RunOptions::new().keep_only([last])).await;
        assert!(report.all_completed());
        assert!(peak.load(Ordering::SeqCst) <= 1, "outputs were freed as the chain ran");
        assert_eq!(report.outputs_kept(), 1);
        assert!(report.output(last).is_some());
        assert_eq!(live.count(), 1, "only the kept output is alive");
    }

    /// Progress: each node starts, then settles, once; every node appears.
    async fn progress_events_are_complete_and_ordered(cx) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut graph = FlowBuilder::<()>::new();
        graph.node("a", &[], |_| async { Ok(()) });
        graph.node("b", &["a"], |_| async { Err::<(), _>(()) });
        graph.node("c", &["b"], |_| async { Ok(()) });
        let report = graph.build().unwrap().run(RunOptions::new().progress(tx)).await;
        drop(report);
        let events: Vec<_> = rx.collect().await;
        let of = |name: &str| -> Vec<EventKind> {
            events.iter().filter(|e| &*e.name == name).map(|e| e.kind).collect()
        };
        assert_eq!(of("a"), [EventKind::Started, EventKind::Settled(Outcome::Completed)]);
        assert_eq!(of("b"), [EventKind::Started, EventKind::Settled(Outcome::Failed)]);
        assert_eq!(of("c"), [EventKind::Settled(Outcome::Skipped)]);
    }

    /// A node that panics fails with its payload; the flow goes on.
    async fn panicking_node_is_a_failure(cx) {
        let mut graph = FlowBuilder::<()>::new();
        let bad = graph.node("bad", &[], |_| async {
            yield_now().await;
            panic!("node blew up");
            #[allow(unreachable_code)]
            Ok(())
        });
        let other = graph.node("other", &[], |_| async { Ok(5) });
        let report = graph.build().unwrap().run(RunOptions::new()).await;
        match report.status(bad) {
            NodeStatus::Failed(error) => match &**error {
                NodeError::Panicked(panic) => assert_eq!(panic.message(), Some("node blew up")),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(report.output(other), Some(&5));
    }

    /// The canceller stops a run: running nodes are dropped, the rest never start, and the
    /// report still comes back.
    async fn canceller_stops_the_run(cx) {
        let (slow, dropped) = pending_until_dropped();
        let slow = Arc::new(Mutex::new(Some(slow)));
        let canceller = FlowCanceller::new();
        let mut graph = FlowBuilder::<()>::new();
        let first = graph.node("first", &[], move |_| {
            let slow = slow.lock().unwrap().take();
            async move {
                if let Some(slow) = slow {
                    slow.await;
                }
                Ok(())
            }
        });
        let second = graph.node("second", &["first"], |_| async { Ok(()) });
        let flow = graph.build().unwrap();
        let run = flow.run(RunOptions::new().canceller(&canceller));
        let stop = async {
            yield_now().await;
            canceller.cancel();
        };
        let (report, ()) = futures::future::join(run, stop).await;
        assert!(matches!(report.status(first), NodeStatus::Cancelled));
        assert!(matches!(report.status(second), NodeStatus::Cancelled));
        assert!(dropped.await.is_ok());
    }

    /// Spawned: nodes run on the runtime, with the same results.
    async fn spawned_nodes(cx) {
        let mut graph = FlowBuilder::<()>::new();
        let parts: Vec<_> = (0..8u64)
            .map(|i| graph.node(&format!("part{i}"), &[], move |_| async move { Ok(i * i) }))
            .collect();
        let deps: Vec<String> = (0..8).map(|i| format!("part{i}")).collect();
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        let sum = graph.node("sum", &deps, move |inputs| {
            let parts = parts.clone();
            async move { Ok(parts.iter().filter_map(|&p| inputs.get(p)).sum::<u64>()) }
        });
        let report = graph.build().unwrap().run(RunOptions::new().spawned()).await;
        assert_eq!(report.output(sum), Some(&140));
    }

    /// A node with a retry policy is called again with the same inputs until it succeeds;
    /// one that fails every attempt reports how many ran (virtual time).
    async fn node_retry(cx) {
        if !cx.flavor.is_virtual() {
            return;
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let policy = RetryPolicy::builder()
            .attempts(3)
            .base_delay(Duration::from_secs(1))
            .build()
            .unwrap();
        let mut graph = FlowBuilder::<&str>::new();
        let seed = graph.node("seed", &[], |_| async { Ok(10u32) });
        let counter = Arc::clone(&calls);
        let flaky = graph.node("flaky", &["seed"], move |inputs| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if call < 2 {
                    return Err("try again");
                }
                Ok(inputs.get(seed).copied().unwrap_or(0) + 1)
            }
        });
        let hopeless = graph.node("hopeless", &[], |_| async { Err::<(), _>("never") });
        graph.retry(flaky, policy.clone()).retry(hopeless, policy);
        let report = graph.build().unwrap().run(RunOptions::new()).await;
        assert_eq!(report.output(flaky), Some(&11));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        match report.status(hopeless) {
            NodeStatus::Failed(error) => match &**error {
                NodeError::Retried(retried) => assert_eq!(retried.attempts(), 3),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A node timeout fails the node with `Timeout` (virtual time).
    async fn node_timeout(cx) {
        if !cx.flavor.is_virtual() {
            return;
        }
        let mut graph = FlowBuilder::<()>::new();
        let slow = graph.node("slow", &[], |_| async {
            time::sleep(Duration::from_secs(10)).await;
            Ok(())
        });
        graph.timeout(slow, Duration::from_secs(1));
        let started = time::now();
        let report = graph.build().unwrap().run(RunOptions::new()).await;
        assert!(matches!(report.status(slow), NodeStatus::Failed(e) if matches!(**e, NodeError::Timeout(_))));
        assert_eq!(time::now() - started, Duration::from_secs(1));
    }
}

/// Build-time errors name the nodes.
#[test]
fn graph_errors_name_the_nodes() {
    let mut graph = FlowBuilder::<()>::new();
    graph.node("a", &[], |_| async { Ok(()) });
    graph.node("a", &[], |_| async { Ok(()) });
    assert_eq!(
        graph.build().unwrap_err(),
        GraphError::DuplicateName("a".into())
    );

    let mut graph = FlowBuilder::<()>::new();
    graph.node("a", &["ghost"], |_| async { Ok(()) });
    assert_eq!(
        graph.build().unwrap_err(),
        GraphError::UnknownDependency {
            node: "a".into(),
            dependency: "ghost".into()
        }
    );

    let mut graph = FlowBuilder::<()>::new();
    graph.node("start", &[], |_| async { Ok(()) });
    graph.node("x", &["start", "z"], |_| async { Ok(()) });
    graph.node("y", &["x"], |_| async { Ok(()) });
    graph.node("z", &["y"], |_| async { Ok(()) });
    assert_eq!(
        graph.build().unwrap_err(),
        GraphError::Cycle(vec!["x".into(), "z".into(), "y".into()])
    );

    let mut graph = FlowBuilder::<()>::new();
    graph.node("self", &["self"], |_| async { Ok(()) });
    assert_eq!(
        graph.build().unwrap_err(),
        GraphError::Cycle(vec!["self".into()])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 128 }))]

    /// Random DAGs under random limits: every node runs exactly once, after all of its
    /// dependencies, and the limit is never exceeded.
    #[test]
    fn random_dags_respect_dependencies(
        edges in proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 0..4), 1..40),
        limit in 1usize..6,
    ) {
        let n = edges.len();
        let log = Arc::new(Mutex::new(Vec::new()));
        let peak = Peak::default();
        let mut graph = FlowBuilder::<()>::new();
        let mut deps_of = Vec::new();
        for (i, picks) in edges.iter().enumerate() {
            // Dependencies only on earlier nodes: a DAG.
            let mut deps: Vec<usize> = if i == 0 { vec![] } else { picks.iter().map(|p| p.index(i)).collect() };
            deps.sort_unstable();
            deps.dedup();
            let names: Vec<String> = deps.iter().map(|d| format!("n{d}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let (log, peak) = (Arc::clone(&log), peak.clone());
            graph.node(&format!("n{i}"), &names, move |_| {
                let (log, peak) = (Arc::clone(&log), peak.clone());
                async move {
                    log.lock().unwrap().push((i, true));
                    peak.during(i % 3).await;
                    log.lock().unwrap().push((i, false));
                    Ok(())
                }
            });
            deps_of.push(deps);
        }
        let flow = graph.build().unwrap();
        let report = sheepdog_core::testing::VirtualRuntime::new()
            .block_on(flow.run(RunOptions::new().max_concurrent(limit)));
        prop_assert!(report.all_completed());
        prop_assert!(peak.max() <= limit);
        let log = log.lock().unwrap();
        let started = |i: usize| log.iter().position(|&e| e == (i, true));
        let ended = |i: usize| log.iter().position(|&e| e == (i, false));
        for (i, deps) in deps_of.iter().enumerate() {
            prop_assert_eq!(log.iter().filter(|&&e| e == (i, true)).count(), 1);
            for &d in deps {
                prop_assert!(ended(d) < started(i), "n{} started before n{} ended", i, d);
            }
        }
        prop_assert_eq!(report.settle_order().len(), n);
    }
}

/// Greedy list scheduling of `durations` (ms) with dependencies `deps` on `limit` slots,
/// lowest index first among the ready nodes: the makespan a good executor should match.
fn list_schedule(durations: &[u64], deps: &[Vec<usize>], limit: usize) -> u64 {
    let n = durations.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut running: Vec<(u64, usize)> = Vec::new();
    let mut now = 0;
    loop {
        while running.len() < limit {
            let Some(i) = ready.pop_first() else { break };
            running.push((now + durations[i], i));
        }
        if running.is_empty() {
            return now;
        }
        running.sort_unstable();
        let (end, i) = running.remove(0);
        now = end;
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.insert(d);
            }
        }
    }
}

/// On virtual time, a DAG of timed nodes under `max_concurrent` 4 finishes within 5% of
/// greedy list scheduling (and never under the critical path).
#[test]
fn makespan_matches_list_scheduling() {
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..20 {
        let n = rng.usize(10..60);
        let durations: Vec<u64> = (0..n).map(|_| rng.u64(1..100)).collect();
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                let mut d: Vec<usize> = (0..rng.usize(0..3))
                    .filter(|_| i > 0)
                    .map(|_| rng.usize(0..i))
                    .collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();
        let mut graph = FlowBuilder::<()>::new();
        for i in 0..n {
            let names: Vec<String> = deps[i].iter().map(|d| format!("n{d}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let ms = durations[i];
            graph.node(&format!("n{i}"), &names, move |_| async move {
                time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            });
        }
        let flow = graph.build().unwrap();
        let rt = sheepdog_core::testing::VirtualRuntime::new();
        let report = rt.block_on(flow.run(RunOptions::new().max_concurrent(4)));
        assert!(report.all_completed());
        let makespan = rt.clock().elapsed().as_millis() as u64;
        let greedy = list_schedule(&durations, &deps, 4);
        let mut finish = vec![0u64; n];
        for i in 0..n {
            finish[i] = durations[i] + deps[i].iter().map(|&d| finish[d]).max().unwrap_or(0);
        }
        let critical = finish.iter().copied().max().unwrap_or(0);
        assert!(
            makespan >= critical,
            "{makespan} < critical path {critical}"
        );
        assert!(
            makespan * 100 <= greedy * 105,
            "{makespan} vs greedy {greedy}"
        );
    }
}
