//! Seed section "gather -- Concurrent Execution": three analyses run at once and their results
//! come back in **input** order, whatever order they finish in.
//!
//! ```text
//! cargo run -p sheepdog-examples --example gather
//! ```
//!
//! 1. `gather` over a vector of calls: the slowest call sets the total time (not the sum), and
//!    `results[i]` answers prompt `i`.
//! 2. The tuple form, `(a, b, c).gather()`, for calls of different types.
//! 3. `try_gather`: the first error is returned as is, and the calls still running are dropped.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use sheepdog::combinators::{gather, try_gather, GatherTuple};
use sheepdog::time;

/// A simulated `branch.communicate(prompt)` that answers after `latency_ms`.
async fn communicate(prompt: &str, latency_ms: u64, finished: &RefCell<Vec<String>>) -> String {
    time::sleep(Duration::from_millis(latency_ms)).await;
    finished.borrow_mut().push(prompt.to_owned());
    format!("analysis of {prompt} ({latency_ms} ms)")
}

fn main() {
    sheepdog::block_on(async {
        // 1. Results in input order; completion order is whatever the latencies make it.
        let finished = RefCell::new(Vec::new());
        let prompts = [
            ("market trends", 90),
            ("competitor landscape", 30),
            ("technology adoption", 60),
        ];
        let start = Instant::now();
        let results = gather(
            prompts
                .iter()
                .map(|&(prompt, latency)| communicate(prompt, latency, &finished)),
        )
        .await;
        let elapsed = start.elapsed();
        println!("1. gather of {} calls in {elapsed:.0?}", results.len());
        println!("   finished in order: {:?}", finished.borrow());
        for (i, result) in results.iter().enumerate() {
            println!("   results[{i}] = {result}");
        }

        // 2. Different output types: the tuple form.
        let (words, score, tags) = (
            async {
                time::sleep(Duration::from_millis(20)).await;
                12_usize
            },
            async {
                time::sleep(Duration::from_millis(10)).await;
                0.87_f64
            },
            async { vec!["ai", "markets"] },
        )
            .gather()
            .await;
        println!("2. tuple gather: words={words}, score={score}, tags={tags:?}");

        // 3. The first error wins and cancels the rest.
        let finished = RefCell::new(Vec::new());
        let start = Instant::now();
        let outcome: Result<Vec<String>, String> = try_gather([
            Box::pin(async { Ok(communicate("slow report", 2_000, &finished).await) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
            Box::pin(async {
                time::sleep(Duration::from_millis(15)).await;
                Err("provider returned 500".to_owned())
            }),
        ])
        .await;
        println!(
            "3. try_gather: {outcome:?} after {:.0?}; calls that finished: {:?} (the slow one was dropped)",
            start.elapsed(),
            finished.borrow()
        );
    });
}
