//! The sheepdog demo: fan out simulated LLM calls on the default (smol) runtime and bring every
//! one of them home — results, panics and cancellations alike.
//!
//! ```text
//! cargo run -p sheepdog-examples --example demo
//! cargo run -p sheepdog-examples --example demo -- --calls 200 --seed 7
//! ```
//!
//! What it shows today (later releases extend it with gather, race, bounded_map, retry, the
//! rate-limited executor and flows):
//!
//! - spawning many tasks and awaiting them in input order (`sheepdog::runtime::spawn`);
//! - a task that panics arrives as a `JoinError` carrying the panic message, and the program
//!   carries on;
//! - a task the caller gives up on is aborted, and awaiting its handle confirms the
//!   cancellation only after the task's future (and everything it held) has been dropped;
//! - every call runs under its own deadline (`fail_after`); slow calls time out and are
//!   dropped, their futures cancelled;
//! - every task is accounted for at the end.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sheepdog::cancel::fail_after;
use sheepdog::runtime::{self, JoinError};
use sheepdog::time;

/// The command-line options.
#[derive(Debug)]
struct Options {
    calls: usize,
    deadline_ms: u64,
    seed: u64,
}

const USAGE: &str = "\
sheepdog demo: fan out simulated LLM calls and account for every one

USAGE:
    demo [--calls N] [--seed S] [--deadline-ms D]

OPTIONS:
    --calls N   number of simulated provider calls (default 50, at least 1)
    --seed S    seed for the simulated latencies and failures (default 1)
    --deadline-ms D
                per-call deadline in milliseconds (default 40; latencies are 5-50 ms)
    -h, --help  print this help
";

fn parse(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        calls: 50,
        deadline_ms: 40,
        seed: 1,
    };
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|err| format!("{name}: {err}"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--calls" => {
                options.calls = usize::try_from(value("--calls")?)
                    .map_err(|_| "--calls: too large".to_owned())?;
                if options.calls == 0 {
                    return Err("--calls must be at least 1".to_owned());
                }
            }
            "--seed" => options.seed = value("--seed")?,
            "--deadline-ms" => options.deadline_ms = value("--deadline-ms")?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(options))
}

/// What one simulated provider call does.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Answer { latency: Duration, tokens: u32 },
    Crash { latency: Duration },
}

/// Counts simulated calls whose future is still alive.
#[derive(Debug, Clone, Default)]
struct InFlight(Arc<AtomicUsize>);

struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(&self.0))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn simulated_call(prompt: usize, behaviour: Behaviour, in_flight: InFlight) -> String {
    let _guard = in_flight.enter();
    match behaviour {
        Behaviour::Answer { latency, tokens } => {
            time::sleep(latency).await;
            format!("answer to prompt {prompt} ({tokens} tokens)")
        }
        Behaviour::Crash { latency } => {
            time::sleep(latency).await;
            panic!("provider crashed on prompt {prompt}")
        }
    }
}

fn main() -> ExitCode {
    let options = match parse(std::env::args()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Keep the demo's output readable: report crashes through JoinError, not the panic hook.
    std::panic::set_hook(Box::new(|_| {}));

    let mut rng = fastrand::Rng::with_seed(options.seed);
    let behaviours: Vec<Behaviour> = (0..options.calls)
        .map(|_| {
            let latency = Duration::from_millis(rng.u64(5..50));
            if rng.u8(0..10) == 0 {
                Behaviour::Crash { latency }
            } else {
                let tokens = rng.u32(50..1000);
                Behaviour::Answer { latency, tokens }
            }
        })
        .collect();
    let abandoned = options.calls / 10;

    let in_flight = InFlight::default();
    let deadline = Duration::from_millis(options.deadline_ms);
    let started = Instant::now();
    let outcomes = sheepdog::block_on(async {
        let handles: Vec<_> = behaviours
            .iter()
            .enumerate()
            .map(|(prompt, &behaviour)| {
                // Each call runs under its own deadline (AnyIO's `fail_after`).
                runtime::spawn(fail_after(
                    deadline,
                    simulated_call(prompt, behaviour, in_flight.clone()),
                ))
            })
            .collect();
        let mut outcomes = Vec::with_capacity(handles.len());
        for (prompt, handle) in handles.into_iter().enumerate() {
            if prompt < abandoned {
                // The caller lost interest: abort the call, then await the confirmation.
                handle.abort();
            }
            outcomes.push(handle.await);
        }
        outcomes
    });
    let elapsed = started.elapsed();

    let (mut answered, mut crashed, mut cancelled, mut timed_out) = (0, 0, 0, 0);
    for (prompt, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(Err(_elapsed)) => timed_out += 1,
            Ok(Ok(answer)) => {
                answered += 1;
                if answered <= 3 {
                    println!("  #{prompt:<4} {answer}");
                }
            }
            Err(err @ JoinError::Panic(_)) => {
                crashed += 1;
                println!("  #{prompt:<4} failed: {err}");
            }
            Err(JoinError::Cancelled) => cancelled += 1,
        }
    }
    let still_alive = in_flight.0.load(Ordering::SeqCst);

    println!();
    println!("  calls         {:>6}", options.calls);
    println!("  answered      {answered:>6}");
    println!("  timed out     {timed_out:>6}   (fail_after: the deadline cancelled the call)");
    println!("  crashed       {crashed:>6}   (reported as JoinError, payload kept)");
    println!("  cancelled     {cancelled:>6}   (aborted by the caller, confirmed by awaiting)");
    println!("  still alive   {still_alive:>6}   (futures not yet dropped: must be 0)");
    println!("  wall time     {:>6.0?}", elapsed);

    let accounted = answered + timed_out + crashed + cancelled == options.calls && still_alive == 0;
    if accounted {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: some calls were not accounted for");
        ExitCode::FAILURE
    }
}
