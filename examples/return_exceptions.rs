//! Seed section "gather -- Concurrent Execution", its `return_exceptions=True` form:
//! `gather_settled` runs every call to the end and puts each outcome — value or error — in
//! the slot of the call that produced it, so one failure does not hide the other answers.
//!
//! ```text
//! cargo run -p sheepdog-examples --example return_exceptions
//! ```
//!
//! Six simulated calls, some of which fail (a seeded random draw decides which, so every run
//! prints the same thing). A panic would land in its slot too, as `Outcome::Panicked`.

use std::fmt;
use std::time::Duration;

use sheepdog::combinators::{gather_settled, Outcome};
use sheepdog::time;

/// What a simulated provider call can fail with.
#[derive(Debug)]
enum CallError {
    RateLimited,
    Overloaded,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::RateLimited => f.write_str("429 rate limited"),
            CallError::Overloaded => f.write_str("529 overloaded"),
        }
    }
}

/// A simulated `branch.communicate(prompt)`: `draw` in `0..10` decides how it ends.
async fn communicate(task: String, latency_ms: u64, draw: u32) -> Result<String, CallError> {
    time::sleep(Duration::from_millis(latency_ms)).await;
    match draw {
        0..=1 => Err(CallError::RateLimited),
        2 => Err(CallError::Overloaded),
        _ => Ok(format!("the answer to {task}, as requested by the caller")),
    }
}

fn main() {
    let mut rng = fastrand::Rng::with_seed(7);
    let calls: Vec<_> = (1..=6)
        .map(|i| communicate(format!("Task {i}"), rng.u64(5..60), rng.u32(0..10)))
        .collect();

    let outcomes = sheepdog::block_on(gather_settled(calls));

    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Ok(answer) => {
                let head: String = answer.chars().take(30).collect();
                println!("slot {i}: Success: {head}...");
            }
            Outcome::Err(error) => println!("slot {i}: Failed: {error}"),
            Outcome::Panicked(panic) => println!("slot {i}: Panicked: {panic:?}"),
        }
    }
    let failed = outcomes.iter().filter(|o| !o.is_ok()).count();
    println!(
        "{} of {} calls succeeded; {failed} failed, each in its own slot",
        outcomes.len() - failed,
        outcomes.len()
    );
}
