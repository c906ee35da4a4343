//! Seed section "bounded_map -- Concurrent Mapping with Limit": summarize a batch of documents
//! with at most three calls in flight, results in input order.
//!
//! ```text
//! cargo run -p sheepdog-examples --example bounded_map
//! ```
//!
//! 1. `bounded_map` over 12 documents with `limit = 3`: a gauge inside the call records the
//!    highest number of calls in flight, which never passes the limit. Calls are made lazily,
//!    when a slot frees up, so only three futures ever exist.
//! 2. `bounded_map_settled` (the seed's "supports `return_exceptions=True`"): every document
//!    is tried, and each failure stays in its slot.
//! 3. `bounded_map_stream` over a `Stream` of documents that arrive over time (a channel fed
//!    by a producer): summaries come out in input order as soon as they are ready, with at most
//!    three calls in flight, and a document is read from the channel only when a call can start.

use std::cell::Cell;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sheepdog::combinators::{bounded_map, bounded_map_settled, bounded_map_stream, Outcome};
use sheepdog::time;

/// Tracks how many calls are in flight, and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: Cell<usize>,
    peak: Cell<usize>,
}

impl Gauge {
    fn enter(&self) {
        self.now.set(self.now.get() + 1);
        self.peak.set(self.peak.get().max(self.now.get()));
    }

    fn leave(&self) {
        self.now.set(self.now.get() - 1);
    }
}

/// A simulated `branch.communicate(f"Summarize: {doc}")`.
async fn summarize(doc: &str, latency_ms: u64, gauge: &Gauge) -> String {
    gauge.enter();
    time::sleep(Duration::from_millis(latency_ms)).await;
    gauge.leave();
    format!("summary of {doc}")
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(3);
    let documents: Vec<(String, u64)> = (1..=12)
        .map(|i| (format!("doc{i}.txt"), rng.u64(20..60)))
        .collect();
    let total_latency: u64 = documents.iter().map(|(_, ms)| ms).sum();

    sheepdog::block_on(async {
        // 1. At most three at a time.
        let gauge = Gauge::default();
        let start = Instant::now();
        let summaries = bounded_map(&documents, 3, |(doc, latency)| {
            summarize(doc, *latency, &gauge)
        })
        .expect("the limit is not zero")
        .await;
        println!(
            "1. {} documents, limit 3: peak in flight {}, {:.0?} (one at a time would take {total_latency} ms)",
            summaries.len(),
            gauge.peak.get(),
            start.elapsed(),
        );
        println!("   first: {:?}, last: {:?}", summaries[0], summaries[11]);

        // 2. Partial failure: each document gets its own outcome.
        let outcomes = bounded_map_settled(&documents, 4, |(doc, latency)| async move {
            time::sleep(Duration::from_millis(*latency / 2)).await;
            if doc.ends_with("7.txt") || doc.ends_with("11.txt") {
                Err(format!("{doc}: could not be parsed"))
            } else {
                Ok(format!("summary of {doc}"))
            }
        })
        .expect("the limit is not zero")
        .await;
        let failures: Vec<_> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, outcome)| match outcome {
                Outcome::Ok(_) => None,
                Outcome::Err(error) => Some(format!("slot {i}: {error}")),
                Outcome::Panicked(panic) => Some(format!("slot {i}: panicked: {panic:?}")),
            })
            .collect();
        println!(
            "2. settled: {} ok, failures: {failures:?}",
            outcomes.iter().filter(|o| o.is_ok()).count()
        );

        // 3. An input that arrives over time: a stream in, a stream out, in input order.
        let (tx, rx) = futures::channel::mpsc::unbounded::<(String, u64)>();
        let producer = async {
            for (doc, latency) in &documents {
                time::sleep(Duration::from_millis(5)).await;
                tx.unbounded_send((doc.clone(), *latency))
                    .expect("the stream is alive");
            }
            drop(tx);
        };
        let gauge = Gauge::default();
        let summaries = bounded_map_stream(rx, 3, |(doc, latency)| {
            let gauge = &gauge;
            async move { summarize(&doc, latency, gauge).await }
        })
        .expect("the limit is not zero");
        let ((), streamed) = futures::future::join(producer, summaries.collect::<Vec<_>>()).await;
        println!(
            "3. streamed input: {} summaries in input order, peak in flight {}; last: {:?}",
            streamed.len(),
            gauge.peak.get(),
            streamed.last().expect("twelve summaries"),
        );
    });
}
