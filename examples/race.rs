//! Seed section "race -- First-to-Complete": ask several providers the same question and take
//! whichever answers first; the others are cancelled (dropped) before `race` returns.
//!
//! ```text
//! cargo run -p sheepdog-examples --example race
//! ```
//!
//! 1. `race`: the fastest provider wins; the losers' calls are dropped mid-flight (a guard in
//!    each call counts the drops).
//! 2. With `race`, the first *completion* wins, even an error. `race_ok` waits for the first
//!    *success* instead, and returns every error (in input order) only if all fail.

use std::cell::Cell;
use std::time::{Duration, Instant};

use sheepdog::combinators::{race, race_ok, RaceOkError};
use sheepdog::time;

/// Counts the calls that were dropped before they finished.
struct Cancelled<'a>(&'a Cell<u32>, bool);

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.set(self.0.get() + 1);
        }
    }
}

/// A simulated provider: answers `prompt` after `latency_ms`, or fails if `fails`.
async fn provider(
    name: &'static str,
    latency_ms: u64,
    fails: bool,
    cancelled: &Cell<u32>,
) -> Result<String, String> {
    let mut guard = Cancelled(cancelled, false);
    time::sleep(Duration::from_millis(latency_ms)).await;
    guard.1 = true; // finished: not a cancellation
    if fails {
        Err(format!("{name}: 503 unavailable after {latency_ms} ms"))
    } else {
        Ok(format!("{name}'s summary after {latency_ms} ms"))
    }
}

fn main() {
    sheepdog::block_on(async {
        // 1. Fastest provider wins; the others are cancelled.
        let cancelled = Cell::new(0);
        let start = Instant::now();
        let fastest = race([
            provider("openai", 120, false, &cancelled),
            provider("anthropic", 45, false, &cancelled),
            provider("local-llama", 300, false, &cancelled),
        ])
        .await
        .expect("three providers were raced");
        println!(
            "1. race: {fastest:?} in {:.0?}; {} slower calls cancelled",
            start.elapsed(),
            cancelled.get()
        );

        // 2. A provider that fails fast wins `race`; `race_ok` skips failures.
        let cancelled = Cell::new(0);
        let first = race([
            provider("openai", 120, false, &cancelled),
            provider("flaky", 10, true, &cancelled),
        ])
        .await
        .expect("two providers were raced");
        println!("2. race (first completion): {first:?}");

        let start = Instant::now();
        let first_ok = race_ok([
            provider("openai", 120, false, &cancelled),
            provider("flaky", 10, true, &cancelled),
        ])
        .await;
        println!(
            "   race_ok (first success):  {first_ok:?} in {:.0?}",
            start.elapsed()
        );

        let all_down = race_ok([
            provider("openai", 30, true, &cancelled),
            provider("anthropic", 20, true, &cancelled),
        ])
        .await;
        match all_down {
            Err(RaceOkError::AllFailed(errors)) => {
                println!("   race_ok when all fail: every error, in input order: {errors:?}");
            }
            other => println!("   race_ok when all fail: unexpected {other:?}"),
        }
    });
}
