//! Instruction counts of the task-group scenarios (target T6), for callgrind.
//!
//! `group_instr SCENARIO ITERATIONS` runs one scenario `ITERATIONS` times; each iteration
//! spawns (or pushes) [`TASKS`] trivial children and awaits them, as in `benches/spawn.rs`. Run
//! it under callgrind at two iteration counts and divide the difference of the totals by the
//! difference of the children counts: what is left is the cost of one child, without the
//! process start-up. `benches/group_instr.sh` does exactly that; see docs/performance.md,
//! "Task groups (T6)".

use std::convert::Infallible;
use std::hint::black_box;

use futures::StreamExt;
use sheepdog_core::group::{spawn_group_on, task_group};
use sheepdog_core::runtime::Runtime;
use sheepdog_tokio::TokioRuntime;

/// How many children each iteration spawns and awaits.
const TASKS: u64 = 10_000;

fn tokio_raw(rt: &tokio::runtime::Runtime) -> u64 {
    rt.block_on(async {
        let handles: Vec<_> = (0..TASKS).map(|i| tokio::spawn(async move { i })).collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("tokio task finished");
        }
        sum
    })
}

fn tokio_sheepdog(rt: &tokio::runtime::Runtime, sd: &TokioRuntime) -> u64 {
    rt.block_on(async {
        let handles: Vec<_> = (0..TASKS).map(|i| sd.spawn(async move { i })).collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("sheepdog task finished");
        }
        sum
    })
}

fn tokio_group(rt: &tokio::runtime::Runtime, sd: &TokioRuntime) -> u64 {
    rt.block_on(spawn_group_on(sd.clone(), |tg| async move {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| tg.spawn(async move { Ok::<_, Infallible>(i) }))
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("child finished");
        }
        Ok(sum)
    }))
    .expect("the group finished")
}

fn tokio_joinset(rt: &tokio::runtime::Runtime) -> u64 {
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..TASKS {
            set.spawn(async move { i });
        }
        let mut sum = 0;
        while let Some(output) = set.join_next().await {
            sum += output.expect("tokio task finished");
        }
        sum
    })
}

fn in_task_group() -> u64 {
    futures::executor::block_on(task_group(|tg| async move {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| tg.spawn(async move { Ok::<_, Infallible>(i) }))
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("child finished");
        }
        Ok(sum)
    }))
    .expect("the group finished")
}

fn futures_unordered() -> u64 {
    let set = futures::stream::FuturesUnordered::new();
    for i in 0..TASKS {
        set.push(async move { i });
    }
    futures::executor::block_on(set.fold(0, |sum, i| async move { sum + i }))
}

fn futures_buffered() -> u64 {
    let mut set = futures_buffered::FuturesUnordered::new();
    for i in 0..TASKS {
        set.push(async move { i });
    }
    futures::executor::block_on(set.fold(0, |sum, i| async move { sum + i }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().expect("usage: group_instr SCENARIO ITERATIONS");
    let iterations: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("usage: group_instr SCENARIO ITERATIONS");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("build tokio current-thread runtime");
    let sd = TokioRuntime::from_handle(rt.handle().clone());
    // A warm-up iteration, so both counts see the same allocator and runtime state.
    let run = || match scenario.as_str() {
        "tokio_raw" => tokio_raw(&rt),
        "tokio_sheepdog" => tokio_sheepdog(&rt, &sd),
        "tokio_group" => tokio_group(&rt, &sd),
        "tokio_joinset" => tokio_joinset(&rt),
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
