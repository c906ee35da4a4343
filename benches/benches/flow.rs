//! Flow executor: scheduling overhead per node on 10,000-node graphs of no-op nodes (a chain,
//! and a random DAG with up to three dependencies per node), run in-task with no runtime.
//!
//! Run with `cargo bench -p sheepdog-benches --bench flow`.

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use sheepdog_core::flow::{Flow, FlowBuilder, NodeId, RunOptions};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

/// Nodes per graph.
const NODES: usize = 10_000;

fn main() {
    divan::main();
}

/// A graph of no-op nodes, and its last node; `deps(i)` names the dependencies of node `i`
/// (all earlier).
fn graph(deps: impl Fn(usize) -> Vec<usize>) -> (Flow<()>, NodeId) {
    let mut graph = FlowBuilder::<()>::new();
    let mut last = None;
    for i in 0..NODES {
        let names: Vec<String> = deps(i).iter().map(|d| format!("n{d}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        last = Some(
            graph
                .node(&format!("n{i}"), &names, |_| async { Ok(()) })
                .id(),
        );
    }
    (graph.build().expect("a DAG"), last.expect("nodes"))
}

/// Up to three random earlier dependencies per node, from a fixed seed.
fn random_deps() -> Vec<Vec<usize>> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..NODES)
        .map(|i| {
            let mut deps: Vec<usize> = (0..rng.usize(0..4))
                .filter(|_| i > 0)
                .map(|_| rng.usize(0..i))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect()
}

fn run(bencher: Bencher<'_, '_>, flow: &Flow<()>, options: impl Fn() -> RunOptions + Sync) {
    let report = futures::executor::block_on(flow.run(options()));
    assert!(report.all_completed());
    bencher
        .counter(ItemsCount::new(NODES))
        .bench_local(|| black_box(futures::executor::block_on(flow.run(options()))));
}

/// Each node depends on the one before it.
#[divan::bench(sample_count = 50)]
fn chain(bencher: Bencher<'_, '_>) {
    let (flow, _) = graph(|i| if i == 0 { vec![] } else { vec![i - 1] });
    run(bencher, &flow, RunOptions::new);
}

/// Each node depends on up to three random earlier nodes; `max_concurrent` 5 (the default).
#[divan::bench(sample_count = 50)]
fn random_dag(bencher: Bencher<'_, '_>) {
    let deps = random_deps();
    let (flow, _) = graph(|i| deps[i].clone());
    run(bencher, &flow, RunOptions::new);
}

/// The same random DAG keeping only the last node's output (cleanup on).
#[divan::bench(sample_count = 50)]
fn random_dag_keep_only(bencher: Bencher<'_, '_>) {
    let deps = random_deps();
    let (flow, last) = graph(|i| deps[i].clone());
    run(bencher, &flow, || RunOptions::new().keep_only([last]));
}
