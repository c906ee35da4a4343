//! Seed section "CompletionStream -- Results As They Arrive": handle each analysis as soon as
//! it is done (completion order, not input order), with at most five in flight.
//!
//! ```text
//! cargo run -p sheepdog-examples --example completion_stream
//! ```
//!
//! 1. Ten topics, `limit(5)`: items arrive as `(input index, result)` in the order they finish.
//! 2. Breaking out of the loop drops the stream, and with it every call still in flight: no
//!    context manager is needed. A guard in each call counts the ones cancelled that way.
//! 3. `CompletionStream::settled`: every outcome in completion order, failures included, and
//!    no failure stops the others (the streaming `gather_settled`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sheepdog::combinators::{CompletionStream, Outcome};
use sheepdog::time;

/// Counts calls that started and calls that were dropped before they finished.
#[derive(Default)]
struct Tally {
    started: Cell<u32>,
    cancelled: Cell<u32>,
}

struct CancelGuard<'a>(&'a Tally, bool);

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.set(self.0.cancelled.get() + 1);
        }
    }
}

/// A simulated `branch.communicate(f"Analyze topic {i}")`.
async fn analyze(topic: usize, latency_ms: u64, tally: &Tally) -> String {
    tally.started.set(tally.started.get() + 1);
    let mut guard = CancelGuard(tally, false);
    time::sleep(Duration::from_millis(latency_ms)).await;
    guard.1 = true;
    format!("topic {topic}: {latency_ms} ms of careful thought")
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(11);
    let latencies: Vec<u64> = (0..10).map(|_| rng.u64(10..120)).collect();

    sheepdog::block_on(async {
        // 1. Everything, in completion order, five at a time.
        let tally = Tally::default();
        let start = Instant::now();
        let calls = latencies
            .iter()
            .enumerate()
            .map(|(i, &ms)| analyze(i, ms, &tally));
        let mut stream = CompletionStream::new(calls)
            .limit(5)
            .expect("the limit is not zero");
        let mut order = Vec::new();
        while let Some((idx, result)) = stream.next().await {
            let at = start.elapsed().as_millis();
            println!("   Task {idx} finished at {at:>3} ms: {result}");
            order.push(idx);
        }
        println!("1. completion order {order:?} (input order would be 0..9)");

        // 2. Stop after the first three answers: the rest are cancelled by the drop.
        let tally = Tally::default();
        let calls = latencies
            .iter()
            .enumerate()
            .map(|(i, &ms)| analyze(i, ms, &tally));
        let mut stream = CompletionStream::new(calls)
            .limit(5)
            .expect("the limit is not zero");
        let mut first = Vec::new();
        while let Some((idx, _)) = stream.next().await {
            first.push(idx);
            if first.len() == 3 {
                break;
            }
        }
        drop(stream);
        println!(
            "2. stopped after tasks {first:?}: {} calls started, {} cancelled in flight, {} never started",
            tally.started.get(),
            tally.cancelled.get(),
            latencies.len() as u32 - tally.started.get(),
        );

        // 3. Settled: failures are items too, in the order things finish.
        let calls = latencies.iter().enumerate().map(|(i, &ms)| async move {
            time::sleep(Duration::from_millis(ms)).await;
            if i % 4 == 3 {
                Err(format!("topic {i}: provider timed out"))
            } else {
                Ok(format!("topic {i} analysed"))
            }
        });
        let mut stream = CompletionStream::settled(calls)
            .limit(5)
            .expect("the limit is not zero");
        let (mut ok, mut failed) = (0, Vec::new());
        while let Some((idx, outcome)) = stream.next().await {
            match outcome {
                Outcome::Ok(_) => ok += 1,
                Outcome::Err(error) => failed.push(format!("{idx}: {error}")),
                Outcome::Panicked(panic) => failed.push(format!("{idx}: panicked: {panic:?}")),
            }
        }
        println!("3. settled: {ok} ok, failed as they came: {failed:?}");
    });
}
