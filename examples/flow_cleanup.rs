//! Seed section "Flow Cleanup": a large graph whose intermediate results are freed as the run
//! goes, so that only the final result is left at the end (`keep_only`, the seed's
//! `flow_with_cleanup(..., keep_only=[final_op_id])`).
//!
//! ```text
//! cargo run -p sheepdog-examples --example flow_cleanup
//! ```
//!
//! Twelve `extract-i` nodes each load a 512 KiB chunk; each `embed-i` turns its chunk into a
//! small vector; `index` combines the vectors. Every output is a `Blob` that counts the live
//! bytes. The flow runs twice, four nodes at a time:
//!
//! - keeping every output: the report holds all 25 outputs, and every chunk stays in memory;
//! - with `keep_only([index])`: each chunk is dropped as soon as its `embed` node has read it,
//!   so the peak stays at a few chunks, and the report holds one output (`outputs_kept`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sheepdog::flow::{Flow, FlowBuilder, NodeRef, RunOptions};
use sheepdog::time;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// An operation's output that counts the bytes alive.
struct Blob(Vec<u8>);

impl Blob {
    fn new(len: usize) -> Blob {
        let live = LIVE_BYTES.fetch_add(len, Ordering::SeqCst) + len;
        PEAK_BYTES.fetch_max(live, Ordering::SeqCst);
        Blob(vec![1; len])
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        LIVE_BYTES.fetch_sub(self.0.len(), Ordering::SeqCst);
    }
}

const CHUNKS: usize = 12;
const CHUNK_BYTES: usize = 512 * 1024;
const VECTOR_BYTES: usize = 4 * 1024;

fn kib(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

fn build() -> (Flow<String>, NodeRef<Blob>) {
    let mut graph = FlowBuilder::<String>::new();
    let mut embed_names = Vec::new();
    let mut embeds = Vec::new();
    for i in 0..CHUNKS {
        let extract_name = format!("extract-{i}");
        let latency = Duration::from_millis(10 + 3 * i as u64);
        let extract = graph.node(&extract_name, &[], move |_| async move {
            time::sleep(latency).await; // read the chunk
            Ok(Blob::new(CHUNK_BYTES))
        });
        let embed_name = format!("embed-{i}");
        embeds.push(graph.node(&embed_name, &[&extract_name], move |inputs| {
            let read = inputs.get(extract).map_or(0, |chunk| chunk.0.len());
            async move {
                time::sleep(Duration::from_millis(15)).await; // the embedding call
                if read == 0 {
                    return Err(format!("embed-{i}: no chunk"));
                }
                Ok(Blob::new(VECTOR_BYTES))
            }
        }));
        embed_names.push(embed_name);
    }
    let deps: Vec<&str> = embed_names.iter().map(String::as_str).collect();
    let index = graph.node("index", &deps, move |inputs| {
        let vectors = embeds.iter().filter(|&&e| inputs.get(e).is_some()).count();
        async move {
            time::sleep(Duration::from_millis(10)).await;
            Ok(Blob::new(vectors * 64))
        }
    });
    (graph.build().expect("the graph is a DAG"), index)
}

fn main() {
    sheepdog::block_on(async {
        let (flow, index) = build();
        for (label, options) in [
            ("keep everything", RunOptions::new().max_concurrent(4)),
            (
                "keep_only([index])",
                RunOptions::new().max_concurrent(4).keep_only([index]),
            ),
        ] {
            PEAK_BYTES.store(LIVE_BYTES.load(Ordering::SeqCst), Ordering::SeqCst);
            let report = flow.run(options).await;
            println!(
                "{label:<20} nodes {}, outputs_kept {:>2}, index output {} bytes, \
                 peak {:>7.1} KiB, held by the report {:>7.1} KiB",
                flow.len(),
                report.outputs_kept(),
                report.output(index).map_or(0, |blob| blob.0.len()),
                kib(PEAK_BYTES.load(Ordering::SeqCst)),
                kib(LIVE_BYTES.load(Ordering::SeqCst)),
            );
            drop(report);
        }
        println!(
            "after both reports are dropped: {} bytes live",
            LIVE_BYTES.load(Ordering::SeqCst)
        );
    });
}
