//! Rate limiter (target T8 of docs/performance.md): sheepdog's `RateLimiter` against governor
//! (GCRA, one budget, no queue) and leaky-bucket (fair, one budget), in one run.
//!
//! - `check`: an admission that succeeds, 10,000 per iteration, no runtime. sheepdog checks
//!   both budgets (requests and tokens) and takes a permit, which is then dropped (the release
//!   is part of every admission); governor checks one limiter (`check`) or two (`check` +
//!   `check_n`, the same two budgets). Budgets are large enough never to refuse.
//! - `check_in_runtime`: the same admission inside a sheepdog tokio runtime's `block_on`.
//! - `reject`: an admission refused because the budget is spent.
//! - `two_threads`: two threads each run 100,000 admissions on one shared limiter; the figure
//!   per item is per op per thread.
//! - `async_fast_path`: `acquire(..)` polled once (ready at once) + release; leaky-bucket's
//!   fair `acquire_one` polled once.
//! - `queued_round_trip`: one waiter queues behind a held permit, the permit is dropped (direct
//!   hand-off), the waiter takes it: per round trip.
//! - `jobs_100k`: 100,000 jobs, unlimited budgets, concurrency limit 64, on
//!   `futures::executor::block_on`: sheepdog's own `bounded_map(jobs, 64, ..)` alone (the
//!   reference of target T8) against the same with every job going through `submit` (the
//!   limiter's overhead on the fast path); the same pair with `buffer_unordered(64)` (the
//!   earlier reference); for jobs that yield once, also all 100,000 `submit`s polled at once so
//!   that all but 64 wait in line (the queued path).
//!
//! Run with `cargo bench -p sheepdog-benches --bench rate`.

use std::future::Future;
use std::num::NonZeroU32;

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use futures::stream::{self, StreamExt};
use governor::{Quota, RateLimiter as Governor};
use sheepdog_benches::{on_two_threads, poll_ready};
use sheepdog_core::rate::Replenishment;

mod shared {
    pub(crate) mod rate;
}
use shared::rate::{one_slot, queued_round_trips, roomy, spent, unlimited, BareSlots};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

/// Operations per iteration.
const OPS: usize = 10_000;

fn main() {
    divan::main();
}

fn roomy_governor() -> governor::DefaultDirectRateLimiter {
    Governor::direct(Quota::per_second(NonZeroU32::MAX))
}

/// An admission that succeeds.
#[divan::bench_group(sample_count = 200)]
mod check {
    use super::*;

    #[divan::bench]
    fn sheepdog_continuous(bencher: Bencher<'_, '_>) {
        let limiter = roomy(Replenishment::Continuous);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(
                    black_box(&limiter).try_acquire(black_box(3)).unwrap(),
                ));
            }
        });
    }

    #[divan::bench]
    fn sheepdog_fixed_window(bencher: Bencher<'_, '_>) {
        let limiter = roomy(Replenishment::FixedWindow);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(
                    black_box(&limiter).try_acquire(black_box(3)).unwrap(),
                ));
            }
        });
    }

    #[divan::bench]
    fn governor_one_budget(bencher: Bencher<'_, '_>) {
        let limiter = roomy_governor();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                black_box(black_box(&limiter).check()).unwrap();
            }
        });
    }

    #[divan::bench]
    fn governor_two_budgets(bencher: Bencher<'_, '_>) {
        let requests = roomy_governor();
        let tokens = roomy_governor();
        let three = NonZeroU32::new(3).unwrap();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                black_box(black_box(&requests).check()).unwrap();
                black_box(black_box(&tokens).check_n(three))
                    .unwrap()
                    .unwrap();
            }
        });
    }
}

/// An admission that succeeds inside a runtime: `try_acquire(3)` with both budgets, in a
/// sheepdog tokio runtime's `block_on` (its clock is the system's, so the limiter may read the
/// coarse clock and admit on credit there too).
#[divan::bench_group(sample_count = 100)]
mod check_in_runtime {
    use super::*;
    use sheepdog_core::runtime::Runtime;

    #[divan::bench]
    fn sheepdog_tokio(bencher: Bencher<'_, '_>) {
        let rt = sheepdog_tokio::TokioRuntime::new_current_thread().unwrap();
        let limiter = roomy(Replenishment::Continuous);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            rt.block_on(async {
                for _ in 0..OPS {
                    drop(black_box(
                        black_box(&limiter).try_acquire(black_box(3)).unwrap(),
                    ));
                }
            });
        });
    }
}

/// An admission refused because the budget is spent.
#[divan::bench_group(sample_count = 200)]
mod reject {
    use super::*;

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let limiter = spent();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                black_box(black_box(&limiter).try_acquire(black_box(3))).unwrap_err();
            }
        });
    }

    #[divan::bench]
    fn governor(bencher: Bencher<'_, '_>) {
        let limiter = Governor::direct(Quota::per_hour(NonZeroU32::MIN));
        limiter.check().unwrap();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                black_box(black_box(&limiter).check()).unwrap_err();
            }
        });
    }
}

/// Two threads admit on one shared limiter.
#[divan::bench_group(sample_count = 30)]
mod two_threads {
    use super::*;

    const OPS_PER_THREAD: usize = 100_000;

    fn both<S: Sync>(shared: &S, op: fn(&S)) {
        on_two_threads(shared, OPS_PER_THREAD, op);
    }

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let limiter = roomy(Replenishment::Continuous);
        bencher
            .counter(ItemsCount::new(OPS_PER_THREAD))
            .bench_local(|| {
                both(&limiter, |l| drop(black_box(l.try_acquire(3).unwrap())));
            });
    }

    #[divan::bench]
    fn governor(bencher: Bencher<'_, '_>) {
        let limiter = roomy_governor();
        bencher
            .counter(ItemsCount::new(OPS_PER_THREAD))
            .bench_local(|| {
                both(&limiter, |l| l.check().unwrap());
            });
    }
}

/// `acquire` ready at once, polled once, and released.
#[divan::bench_group(sample_count = 200)]
mod async_fast_path {
    use super::*;

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let limiter = roomy(Replenishment::Continuous);
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                drop(black_box(
                    poll_ready(black_box(&limiter).acquire(3)).unwrap(),
                ));
            }
        });
    }

    #[divan::bench]
    fn leaky_bucket_fair(bencher: Bencher<'_, '_>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let limiter = leaky_bucket::RateLimiter::builder()
            .max(usize::MAX / 2)
            .initial(usize::MAX / 2)
            .refill(1)
            .build();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for _ in 0..OPS {
                poll_ready(black_box(&limiter).acquire_one());
            }
        });
    }
}

/// A waiter queues behind a held permit and is handed it when the permit is dropped.
#[divan::bench_group(sample_count = 200)]
mod queued_round_trip {
    use super::*;

    #[divan::bench]
    fn sheepdog(bencher: Bencher<'_, '_>) {
        let limiter = one_slot();
        bencher
            .counter(ItemsCount::new(OPS))
            .bench_local(|| queued_round_trips(&limiter, OPS));
    }
}

/// 100,000 jobs, unlimited budgets, at most 64 at once: `ready` jobs complete at their first
/// poll; `yield_once` jobs yield once first, so that with all 100,000 submitted at once the
/// limiter's queue holds every job past the first 64.
#[divan::bench_group(sample_count = 30)]
mod jobs_100k {
    use super::*;
    use sheepdog_core::combinators::bounded_map;
    use sheepdog_core::runtime::yield_now;

    const JOBS: usize = 100_000;
    const LIMIT: usize = 64;

    /// Runs every job of `jobs` with at most `at_once` polled together.
    fn run<F: Future>(jobs: impl Iterator<Item = F>, at_once: usize) {
        futures::executor::block_on(stream::iter(jobs).buffer_unordered(at_once).for_each(
            |out| async move {
                black_box(out);
            },
        ));
    }

    /// Runs every job of `jobs` through sheepdog's `bounded_map`, at most `LIMIT` at once.
    fn run_bounded<F: Future>(jobs: impl Iterator<Item = F>) {
        let all = bounded_map(jobs, LIMIT, |job| job).unwrap();
        black_box(futures::executor::block_on(all));
    }

    #[divan::bench]
    fn ready_bounded_map(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run_bounded((0..JOBS).map(|i| async move { black_box(i) }));
        });
    }

    #[divan::bench]
    fn ready_sheepdog_submit_bounded_map(bencher: Bencher<'_, '_>) {
        let limiter = unlimited(LIMIT);
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run_bounded((0..JOBS).map(|i| limiter.submit(0, async move { black_box(i) })));
        });
    }

    /// The floor: each job takes and gives back a slot with two atomic operations and
    /// nothing else (`BareSlots`; not a limiter).
    #[divan::bench]
    fn ready_two_atomics_floor_bounded_map(bencher: Bencher<'_, '_>) {
        let slots = BareSlots::new(LIMIT);
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run_bounded((0..JOBS).map(|i| slots.run(async move { black_box(i) })));
        });
    }

    #[divan::bench]
    fn yield_once_bounded_map(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run_bounded((0..JOBS).map(|i| async move {
                yield_now().await;
                black_box(i)
            }));
        });
    }

    #[divan::bench]
    fn yield_once_sheepdog_submit_bounded_map(bencher: Bencher<'_, '_>) {
        let limiter = unlimited(LIMIT);
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run_bounded((0..JOBS).map(|i| {
                limiter.submit(0, async move {
                    yield_now().await;
                    black_box(i)
                })
            }));
        });
    }

    #[divan::bench]
    fn ready_buffer_unordered(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run((0..JOBS).map(|i| async move { black_box(i) }), LIMIT);
        });
    }

    #[divan::bench]
    fn ready_sheepdog_submit(bencher: Bencher<'_, '_>) {
        let limiter = unlimited(LIMIT);
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run(
                (0..JOBS).map(|i| limiter.submit(0, async move { black_box(i) })),
                LIMIT,
            );
        });
    }

    #[divan::bench]
    fn yield_once_buffer_unordered(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run(
                (0..JOBS).map(|i| async move {
                    yield_now().await;
                    black_box(i)
                }),
                LIMIT,
            );
        });
    }

    /// `JOBS` yield-once jobs submitted to an unlimited limiter, `in_flight` polled at once.
    fn yield_once_submits(bencher: Bencher<'_, '_>, in_flight: usize) {
        let limiter = unlimited(LIMIT);
        bencher.counter(ItemsCount::new(JOBS)).bench_local(|| {
            run(
                (0..JOBS).map(|i| {
                    limiter.submit(0, async move {
                        yield_now().await;
                        black_box(i)
                    })
                }),
                in_flight,
            );
        });
    }

    #[divan::bench]
    fn yield_once_sheepdog_submit(bencher: Bencher<'_, '_>) {
        yield_once_submits(bencher, LIMIT);
    }

    #[divan::bench]
    fn yield_once_sheepdog_all_queued(bencher: Bencher<'_, '_>) {
        yield_once_submits(bencher, JOBS);
    }
}
