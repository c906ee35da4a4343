//! Fair semaphore (target T7 of docs/performance.md): sheepdog's `Semaphore` against tokio's
//! (FIFO) and async-lock's (not FIFO), in one run.
//!
//! - `uncontended`: acquire (one poll, ready) + release, 10,000 per iteration, no runtime;
//! - `try_acquire`: `try_acquire` + release, 10,000 per iteration;
//! - `contended`: 64 tasks on a tokio current-thread runtime share 4 permits; each task takes
//!   a permit, yields once holding it, and releases it, 100 times. `bare` is the same tasks
//!   yielding without a semaphore: the net cost per acquire/release pair is
//!   `(peer - bare) / 6,400`. `bare_two_yields` yields twice a round: the extra task switch
//!   per pair that a FIFO hand-off costs whatever the semaphore (the releasing task waits its
//!   turn again);
//! - `two_threads`: two threads each run 100,000 `try_acquire` + release on one shared
//!   semaphore with 64 permits; the figure per item is per op per thread.
//!
//! Run with `cargo bench -p sheepdog-benches --bench sync`.
//!
//! Instruction counts: with `SYNC_COUNT=<scenario>:<n>` in the environment the binary skips
//! divan and runs one scenario `n` times. Once per op: `uncontended`, `lock`, `limiter`,
//! `try_acquire`, and the peers' `uncontended_tokio`, `uncontended_async_lock`,
//! `try_acquire_tokio`, `try_acquire_async_lock`. With 64 tasks × `n` rounds: `contended`,
//! `contended_tokio`, `contended_async_lock`, `contended_bare`, `contended_bare_two_yields`.
//! Run it under `valgrind --tool=callgrind` at two `n`: the difference over the difference in
//! ops is the count per op (see `docs/performance.md`, "Fair synchronization (T7)").

use std::future::Future;
use std::sync::{Arc, OnceLock};

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use sheepdog_benches::{on_two_threads, poll_ready};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

/// Operations per iteration (uncontended, try_acquire).
const OPS: usize = 10_000;

fn main() {
    if let Ok(spec) = std::env::var("SYNC_COUNT") {
        count(&spec);
        return;
    }
    divan::main();
}

/// Runs one scenario `n` times, for instruction counts (no divan, no timing).
fn count(spec: &str) {
    let (scenario, n) = spec.split_once(':').expect("SYNC_COUNT=<scenario>:<n>");
    let n: usize = n.parse().expect("a count");
    match scenario {
        "uncontended" => {
            let sem = sheepdog_core::sync::Semaphore::new(1);
            for _ in 0..n {
                drop(black_box(poll_ready(black_box(&sem).acquire())));
            }
        }
        "lock" => {
            let lock = sheepdog_core::sync::Lock::new();
            for _ in 0..n {
                drop(black_box(poll_ready(black_box(&lock).lock())));
            }
        }
        "limiter" => {
            let limiter = sheepdog_core::sync::CapacityLimiter::new(1);
            for _ in 0..n {
                drop(black_box(poll_ready(black_box(&limiter).acquire())));
            }
        }
        "try_acquire" => {
            let sem = sheepdog_core::sync::Semaphore::new(1);
            for _ in 0..n {
                drop(black_box(black_box(&sem).try_acquire().expect("free")));
            }
        }
        "uncontended_tokio" => {
            let sem = tokio::sync::Semaphore::new(1);
            for _ in 0..n {
                drop(black_box(poll_ready(black_box(&sem).acquire())));
            }
        }
        "uncontended_async_lock" => {
            let sem = async_lock::Semaphore::new(1);
            for _ in 0..n {
                drop(black_box(poll_ready(black_box(&sem).acquire())));
            }
        }
        "try_acquire_tokio" => {
            let sem = tokio::sync::Semaphore::new(1);
            for _ in 0..n {
                drop(black_box(black_box(&sem).try_acquire().expect("free")));
            }
        }
        "try_acquire_async_lock" => {
            let sem = async_lock::Semaphore::new(1);
            for _ in 0..n {
                drop(black_box(black_box(&sem).try_acquire().expect("free")));
            }
        }
        "contended" => contended::run_sheepdog(n),
        "contended_tokio" => contended::run_tokio(n),
        "contended_async_lock" => contended::run_async_lock(n),
        "contended_bare" => contended::run_bare(n),
        "contended_bare_two_yields" => contended::run_bare_two_yields(n),
        other => panic!("unknown scenario {other}"),
    }
}

/// Acquire (ready at once) + release.
#[divan::bench_group(sample_count = 300)]
mod uncontended {
    use super::*;

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let sem = sheepdog_core::sync::Semaphore::new(1);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(poll_ready(black_box(&sem).acquire())));
            }
        });
    }

    #[divan::bench]
    fn tokio(bencher: Bencher<'_, '_>) {
        let sem = tokio::sync::Semaphore::new(1);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(poll_ready(black_box(&sem).acquire())));
            }
        });
    }

    #[divan::bench]
    fn async_lock(bencher: Bencher<'_, '_>) {
        let sem = async_lock::Semaphore::new(1);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(poll_ready(black_box(&sem).acquire())));
            }
        });
    }

    /// sheepdog's `Lock` and `CapacityLimiter` share the semaphore's core.
    #[divan::bench]
    fn sheepdog_lock(bencher: Bencher<'_, '_>) {
        let lock = sheepdog_core::sync::Lock::new();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(poll_ready(black_box(&lock).lock())));
            }
        });
    }

    #[divan::bench]
    fn sheepdog_limiter(bencher: Bencher<'_, '_>) {
        let limiter = sheepdog_core::sync::CapacityLimiter::new(1);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(poll_ready(black_box(&limiter).acquire())));
            }
        });
    }
}

/// `try_acquire` + release.
#[divan::bench_group(sample_count = 300)]
mod try_acquire {
    use super::*;

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let sem = sheepdog_core::sync::Semaphore::new(1);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(black_box(&sem).try_acquire().expect("free")));
            }
        });
    }

    #[divan::bench]
    fn tokio(bencher: Bencher<'_, '_>) {
        let sem = tokio::sync::Semaphore::new(1);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(black_box(&sem).try_acquire().expect("free")));
            }
        });
    }

    #[divan::bench]
    fn async_lock(bencher: Bencher<'_, '_>) {
        let sem = async_lock::Semaphore::new(1);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(black_box(&sem).try_acquire().expect("free")));
            }
        });
    }
}

/// 64 tasks, 4 permits, tokio current-thread.
#[divan::bench_group(sample_count = 100)]
mod contended {
    use super::*;

    const TASKS: usize = 64;
    const ROUNDS: usize = 100;
    const PERMITS: usize = 4;

    fn rt() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("tokio runtime")
        })
    }

    /// Spawns [`TASKS`] tasks running `round` `rounds` times each, and awaits them.
    fn run<S, F>(shared: Arc<S>, rounds: usize, round: fn(Arc<S>) -> F)
    where
        S: Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        rt().block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        for _ in 0..rounds {
                            round(Arc::clone(&shared)).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        });
    }

    fn bench(bencher: Bencher<'_, '_>, run: fn(usize)) {
        bencher
            .counter(ItemsCount::new(TASKS * ROUNDS))
            .bench_local(|| run(ROUNDS));
    }

    pub(crate) fn run_bare(rounds: usize) {
        run(Arc::new(()), rounds, |_| tokio::task::yield_now());
    }

    /// Two yields a round: the task switch a FIFO hand-off adds to every pair (the releasing
    /// task must wait its turn again, so it is polled once more per round than in `bare`).
    pub(crate) fn run_bare_two_yields(rounds: usize) {
        run(Arc::new(()), rounds, |_| async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
    }

    pub(crate) fn run_sheepdog(rounds: usize) {
        run(
            Arc::new(sheepdog_core::sync::Semaphore::new(PERMITS)),
            rounds,
            |sem| async move {
                let _permit = sem.acquire().await;
                tokio::task::yield_now().await;
            },
        );
    }

    pub(crate) fn run_tokio(rounds: usize) {
        run(
            Arc::new(tokio::sync::Semaphore::new(PERMITS)),
            rounds,
            |sem| async move {
                let _permit = sem.acquire().await.expect("open");
                tokio::task::yield_now().await;
            },
        );
    }

    pub(crate) fn run_async_lock(rounds: usize) {
        run(
            Arc::new(async_lock::Semaphore::new(PERMITS)),
            rounds,
            |sem| async move {
                let _permit = sem.acquire().await;
                tokio::task::yield_now().await;
            },
        );
    }

    #[divan::bench]
    fn bare(bencher: Bencher<'_, '_>) {
        bench(bencher, run_bare);
    }

    #[divan::bench]
    fn bare_two_yields(bencher: Bencher<'_, '_>) {
        bench(bencher, run_bare_two_yields);
    }

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        bench(bencher, run_sheepdog);
    }

    #[divan::bench]
    fn tokio(bencher: Bencher<'_, '_>) {
        bench(bencher, run_tokio);
    }

    #[divan::bench]
    fn async_lock(bencher: Bencher<'_, '_>) {
        bench(bencher, run_async_lock);
    }
}

/// Two threads, `try_acquire` + release on one semaphore.
#[divan::bench_group(sample_count = 50)]
mod two_threads {
    use super::*;

    const OPS_PER_THREAD: usize = 100_000;
    const PERMITS: usize = 64;

    fn both<S: Sync>(shared: &S, op: fn(&S)) {
        on_two_threads(shared, OPS_PER_THREAD, op);
    }

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let sem = sheepdog_core::sync::Semaphore::new(PERMITS);
        bencher
            .counter(ItemsCount::new(OPS_PER_THREAD))
            .bench_local(|| {
                both(&sem, |sem| {
                    drop(black_box(sem.try_acquire().expect("free")))
                });
            });
    }

    #[divan::bench]
    fn tokio(bencher: Bencher<'_, '_>) {
        let sem = tokio::sync::Semaphore::new(PERMITS);
        bencher
            .counter(ItemsCount::new(OPS_PER_THREAD))
            .bench_local(|| {
                both(&sem, |sem| {
                    drop(black_box(sem.try_acquire().expect("free")))
                });
            });
    }

    #[divan::bench]
    fn async_lock(bencher: Bencher<'_, '_>) {
        let sem = async_lock::Semaphore::new(PERMITS);
        bencher
            .counter(ItemsCount::new(OPS_PER_THREAD))
            .bench_local(|| {
                both(&sem, |sem| {
                    drop(black_box(sem.try_acquire().expect("free")))
                });
            });
    }
}
