//! Seed section "Flow-Level Concurrency": a graph of operations run in dependency order, at
//! most `max_concurrent` at a time, or one at a time with `sequential()` (the seed's
//! `parallel=False`, for debugging).
//!
//! ```text
//! cargo run -p sheepdog-examples --example flow
//! ```
//!
//! The graph: `load` feeds four independent analyses (`summary`, `keywords`, `sentiment`,
//! `entities`), and `report` waits for all four. It runs twice: with `max_concurrent(3)` (a
//! gauge inside each operation shows at most three run at once) and with `sequential()` (one
//! at a time, in a fixed order). Each run prints its time, its peak concurrency, the order
//! in which the nodes settled, and the report node's output.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sheepdog::flow::{Flow, FlowBuilder, NodeRef, RunOptions};
use sheepdog::time;

/// How many operations run now, and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    /// A simulated LLM call of `ms` milliseconds, counted while it runs.
    async fn call(&self, ms: u64) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        time::sleep(Duration::from_millis(ms)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Builds the graph; returns the flow and the node whose output is the final report.
fn build(gauge: &Arc<Gauge>) -> (Flow<String>, NodeRef<String>) {
    let mut graph = FlowBuilder::<String>::new();
    let g = Arc::clone(gauge);
    let load = graph.node("load", &[], move |_| {
        let g = Arc::clone(&g);
        async move {
            g.call(20).await;
            Ok("quarterly report, 40 pages".to_owned())
        }
    });
    let mut analyses = Vec::new();
    for (name, ms) in [
        ("summary", 60),
        ("keywords", 40),
        ("sentiment", 50),
        ("entities", 30),
    ] {
        let g = Arc::clone(gauge);
        analyses.push(graph.node(name, &["load"], move |inputs| {
            let g = Arc::clone(&g);
            let doc = inputs.get(load).cloned().unwrap_or_default();
            async move {
                g.call(ms).await;
                Ok(format!("{name} of {doc}"))
            }
        }));
    }
    let g = Arc::clone(gauge);
    let report = graph.node(
        "report",
        &["summary", "keywords", "sentiment", "entities"],
        move |inputs| {
            let g = Arc::clone(&g);
            let parts = analyses
                .iter()
                .filter(|&&a| inputs.get(a).is_some())
                .count();
            async move {
                g.call(10).await;
                Ok(format!("report built from {parts} analyses"))
            }
        },
    );
    (graph.build().expect("the graph is a DAG"), report)
}

fn main() {
    sheepdog::block_on(async {
        for (label, options) in [
            ("max_concurrent(3)", RunOptions::new().max_concurrent(3)),
            ("sequential()", RunOptions::new().sequential()),
        ] {
            let gauge = Arc::new(Gauge::default());
            let (flow, report_node) = build(&gauge);
            let start = Instant::now();
            let report = flow.run(options).await;
            let order = report.settle_order_names();
            println!(
                "{label:<18} {:>4} ms, peak concurrency {}, all completed: {}",
                start.elapsed().as_millis(),
                gauge.peak.load(Ordering::SeqCst),
                report.all_completed(),
            );
            println!("{:<18} settle order {order:?}", "");
            println!("{:<18} {:?}", "", report.output(report_node));
        }
    });
}
