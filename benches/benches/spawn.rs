//! Spawn throughput: sheepdog's `Runtime::spawn` against each runtime's own spawn.
//!
//! Every benchmark spawns [`TASKS`] trivial tasks (task `i` returns `i as u64`), then awaits
//! them all in spawn order and sums their outputs. Each group pairs the runtime's raw spawn
//! (`raw`) with the same work spawned through sheepdog's adapter (`sheepdog`) and as the children
//! of a sheepdog spawned task group (`group`, target T6); the tokio groups also measure tokio's
//! `JoinSet` (`joinset`), drained in completion order. `in_task` compares sheepdog's in-task
//! group with `FuturesUnordered` and futures-buffered, with no runtime at all.
//!
//! Runtimes are built once, in statics, outside the timed region. Allocations are counted by
//! divan's [`AllocProfiler`](divan::AllocProfiler); it only sees allocations made on the bench
//! thread, which is where every spawn (and so every task allocation) happens here.
//!
//! Run with `cargo bench -p sheepdog-benches --bench spawn`; see `docs/performance.md`.

use std::sync::{Arc, OnceLock};

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use sheepdog_core::runtime::{self, with_runtime, Runtime};
use sheepdog_smol::SmolRuntime;

mod shared {
    pub(crate) mod tasks;
}
use shared::tasks::{group_of_tasks, in_task_group, Tokio, TASKS};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

/// Size of the block [`main`] allocates and frees before any benchmark runs (see there).
const HEAP_WARMUP_BYTES: usize = 8 << 20;

fn main() {
    // glibc's malloc returns freed memory at the top of the heap to the OS once more than
    // `M_TRIM_THRESHOLD` (128 KiB by default) is free, so a benchmark that frees ~1 MB per
    // iteration pays page faults on every iteration, or not, depending on which earlier
    // allocation happened to raise the dynamic threshold. Freeing one large mmapped block first
    // raises the mmap threshold to its size and the trim threshold to twice that (glibc's
    // dynamic threshold), so every benchmark runs on an equally warm heap. Elsewhere this is a
    // harmless allocation.
    drop(black_box(vec![0_u8; HEAP_WARMUP_BYTES]));
    divan::main();
}

/// The expected sum, checked once per benchmark outside the timed region.
fn check(sum: u64) {
    assert_eq!(sum, TASKS * (TASKS - 1) / 2);
}

/// The four tokio benchmarks of a group whose `rt()` returns its `Tokio`.
macro_rules! tokio_benches {
    () => {
        #[divan::bench]
        fn raw(bencher: Bencher<'_, '_>) {
            let rt = rt();
            bench(bencher, || rt.raw());
        }

        #[divan::bench]
        fn sheepdog(bencher: Bencher<'_, '_>) {
            let rt = rt();
            bench(bencher, || rt.sheepdog());
        }

        #[divan::bench]
        fn ambient(bencher: Bencher<'_, '_>) {
            let rt = rt();
            bench(bencher, || rt.ambient());
        }

        #[divan::bench]
        fn joinset(bencher: Bencher<'_, '_>) {
            let rt = rt();
            bench(bencher, || rt.joinset());
        }

        #[divan::bench]
        fn group(bencher: Bencher<'_, '_>) {
            let rt = rt();
            bench(bencher, || rt.group());
        }
    };
}

/// Checks `iteration` once, then times it, counting `TASKS` items per iteration.
fn bench(bencher: Bencher<'_, '_>, iteration: impl Fn() -> u64 + Sync) {
    check(iteration());
    bencher
        .counter(ItemsCount::new(TASKS))
        .bench_local(|| black_box(iteration()));
}

/// tokio's current-thread runtime; tasks run on the bench thread inside `block_on`.
#[divan::bench_group(sample_count = 300)]
mod tokio_current_thread {
    use super::*;

    fn rt() -> &'static Tokio {
        static RT: OnceLock<Tokio> = OnceLock::new();
        RT.get_or_init(|| {
            Tokio::new(
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("build tokio current-thread runtime"),
            )
        })
    }

    tokio_benches!();
}

/// tokio's multi-thread runtime with 2 workers; the bench thread spawns from `block_on` and the
/// workers run the tasks.
#[divan::bench_group(sample_count = 300)]
mod tokio_multi_thread {
    use super::*;

    fn rt() -> &'static Tokio {
        static RT: OnceLock<Tokio> = OnceLock::new();
        RT.get_or_init(|| {
            Tokio::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_time()
                    .build()
                    .expect("build tokio multi-thread runtime"),
            )
        })
    }

    tokio_benches!();
}

/// An owned `smol::Executor`, driven on the bench thread by `smol::block_on(ex.run(..))`.
#[divan::bench_group(sample_count = 300)]
mod smol_executor {
    use super::*;

    struct Smol {
        executor: Arc<smol::Executor<'static>>,
        sheepdog: SmolRuntime,
    }

    fn rt() -> &'static Smol {
        static RT: OnceLock<Smol> = OnceLock::new();
        RT.get_or_init(|| {
            let executor = Arc::new(smol::Executor::new());
            let sheepdog = SmolRuntime::with_executor(Arc::clone(&executor));
            Smol { executor, sheepdog }
        })
    }

    /// `Executor::spawn` every task, then await the smol `Task`s in spawn order.
    fn run_raw(rt: &Smol) -> u64 {
        let ex = &rt.executor;
        smol::block_on(ex.run(async {
            let tasks: Vec<_> = (0..TASKS).map(|i| ex.spawn(async move { i })).collect();
            let mut sum = 0;
            for task in tasks {
                sum += task.await;
            }
            sum
        }))
    }

    /// `Runtime::spawn` every task through sheepdog, then await the sheepdog handles in spawn
    /// order, inside the same `smol::block_on(ex.run(..))` as [`run_raw`].
    fn run_sheepdog(rt: &Smol) -> u64 {
        let sd = &rt.sheepdog;
        smol::block_on(rt.executor.run(async {
            let handles: Vec<_> = (0..TASKS).map(|i| sd.spawn(async move { i })).collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.expect("sheepdog task finished");
            }
            sum
        }))
    }

    /// `sheepdog::runtime::spawn` (the ambient, type-erased path) every task, then await the
    /// handles in spawn order.
    fn run_ambient(rt: &Smol) -> u64 {
        smol::block_on(rt.executor.run(with_runtime(&rt.sheepdog, async {
            let handles: Vec<_> = (0..TASKS)
                .map(|i| runtime::spawn(async move { i }))
                .collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.expect("sheepdog task finished");
            }
            sum
        })))
    }

    #[divan::bench]
    fn ambient(bencher: Bencher<'_, '_>) {
        let rt = rt();
        bench(bencher, || run_ambient(rt));
    }

    #[divan::bench]
    fn group(bencher: Bencher<'_, '_>) {
        let rt = rt();
        bench(bencher, || {
            smol::block_on(rt.executor.run(group_of_tasks(rt.sheepdog.clone())))
        });
    }

    #[divan::bench]
    fn raw(bencher: Bencher<'_, '_>) {
        let rt = rt();
        bench(bencher, || run_raw(rt));
    }

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let rt = rt();
        bench(bencher, || run_sheepdog(rt));
    }
}

/// smol's global executor (its own worker thread runs the tasks; the bench thread spawns and
/// awaits from `smol::block_on`). sheepdog's handle to it is `'static`, so tasks carry no
/// runtime handle of their own.
#[divan::bench_group(sample_count = 300)]
mod smol_global {
    use super::*;

    fn run_raw() -> u64 {
        smol::block_on(async {
            let tasks: Vec<_> = (0..TASKS).map(|i| smol::spawn(async move { i })).collect();
            let mut sum = 0;
            for task in tasks {
                sum += task.await;
            }
            sum
        })
    }

    fn run_sheepdog() -> u64 {
        let sd = SmolRuntime::global();
        smol::block_on(async {
            let handles: Vec<_> = (0..TASKS).map(|i| sd.spawn(async move { i })).collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.expect("sheepdog task finished");
            }
            sum
        })
    }

    #[divan::bench]
    fn raw(bencher: Bencher<'_, '_>) {
        bench(bencher, run_raw);
    }

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        bench(bencher, run_sheepdog);
    }

    #[divan::bench]
    fn group(bencher: Bencher<'_, '_>) {
        bench(bencher, || {
            smol::block_on(group_of_tasks(SmolRuntime::global()))
        });
    }
}

/// Children polled by one future, no runtime (`futures::executor::block_on`): sheepdog's
/// in-task group (children's handles awaited in spawn order) against `FuturesUnordered` and
/// futures-buffered's `FuturesUnordered` (drained in completion order).
#[divan::bench_group(sample_count = 300)]
mod in_task {
    use super::*;

    #[divan::bench]
    fn group(bencher: Bencher<'_, '_>) {
        bench(bencher, in_task_group);
    }

    #[divan::bench]
    fn futures_unordered(bencher: Bencher<'_, '_>) {
        bench(bencher, shared::tasks::futures_unordered);
    }

    #[divan::bench]
    fn futures_buffered(bencher: Bencher<'_, '_>) {
        bench(bencher, shared::tasks::futures_buffered);
    }
}
