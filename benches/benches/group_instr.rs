//! Instruction counts of the task-group scenarios (target T6), for callgrind.
//!
//! `group_instr SCENARIO ITERATIONS` runs one scenario `ITERATIONS` times; each iteration
//! spawns (or pushes) [`TASKS`] trivial children and awaits them, as in `benches/spawn.rs`. Run
//! it under callgrind at two iteration counts and divide the difference of the totals by the
//! difference of the children counts: what is left is the cost of one child, without the
//! process start-up. `benches/group_instr.sh` does exactly that; see docs/performance.md,
//! "Task groups (T6)".

use std::hint::black_box;

mod shared {
    pub(crate) mod tasks;
}
use shared::tasks::{futures_buffered, futures_unordered, in_task_group, Tokio, TASKS};

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().expect("usage: group_instr SCENARIO ITERATIONS");
    let iterations: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("usage: group_instr SCENARIO ITERATIONS");
    let rt = Tokio::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("build tokio current-thread runtime"),
    );
    // A warm-up iteration, so both counts see the same allocator and runtime state.
    let run = || match scenario.as_str() {
        "tokio_raw" => rt.raw(),
        "tokio_sheepdog" => rt.sheepdog(),
        "tokio_ambient" => rt.ambient(),
        "tokio_group" => rt.group(),
        "tokio_joinset" => rt.joinset(),
        "in_task_group" => in_task_group(),
        "futures_unordered" => futures_unordered(),
        "futures_buffered" => futures_buffered(),
        other => panic!("unknown scenario {other}"),
    };
    let timed = std::env::var_os("GROUP_TIMES").is_some();
    if timed {
        // As in `benches/spawn.rs`: raise glibc's mmap and trim thresholds first, so the
        // timings pay no page faults for the large vectors.
        drop(black_box(vec![0_u8; 8 << 20]));
    }
    let mut times = Vec::new();
    for _ in 0..=iterations {
        let start = std::time::Instant::now();
        assert_eq!(black_box(run()), TASKS * (TASKS - 1) / 2);
        times.push(start.elapsed());
    }
    // With `GROUP_TIMES` set, also the fastest and the median iteration, in nanoseconds per
    // child: a wall-clock check that a loaded machine disturbs less than divan's medians.
    if std::env::var_os("GROUP_TIMES_ALL").is_some() {
        let all: Vec<u128> = times.iter().map(|t| t.as_micros()).collect();
        eprintln!("{all:?}");
    }
    if timed {
        times.sort();
        let per_child = |d: std::time::Duration| d.as_secs_f64() * 1e9 / TASKS as f64;
        eprintln!(
            "{scenario}: fastest {:.1} ns, median {:.1} ns per child",
            per_child(times[0]),
            per_child(times[times.len() / 2])
        );
    }
}
