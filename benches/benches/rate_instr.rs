//! Instruction counts of the rate limiter scenarios (target T8), for callgrind.
//!
//! `rate_instr SCENARIO ITERATIONS` builds the scenario's limiter once and then runs its
//! operation `ITERATIONS` times. Run it under callgrind at two iteration counts and divide the
//! difference of the totals by the difference of the counts: what is left is the cost of one
//! operation, without the start-up. `benches/rate_instr.sh` does that for every scenario; see
//! docs/performance.md, "Rate limiter (T8)". Each `jobs_*` iteration is one job of a
//! 1,000-job `bounded_map` (limit 64; `jobs_yield_bu_*`: `buffer_unordered(64)`), so its
//! figure is per job, the map's setup included.
//!
//! valgrind has no vDSO: every clock read is a system call whose kernel part callgrind does
//! not count, so the clock is cheaper here than it is.

use std::hint::black_box;
use std::num::NonZeroU32;

use futures::stream::{self, StreamExt};
use governor::{Quota, RateLimiter as Governor};
use sheepdog_benches::{poll_ready, Yields};
use sheepdog_core::combinators::bounded_map;
use sheepdog_core::rate::Replenishment;

mod shared {
    pub(crate) mod rate;
}
use shared::rate::{one_slot, queued_round_trips, roomy, spent, unlimited, BareSlots};

const LIMIT: usize = 64;
const JOBS: usize = 1_000;

/// Runs `n` rounds of the scenario called `name` (a round of a `jobs_*` scenario is `JOBS`
/// jobs; the caller divides).
fn run(name: &str, n: usize) -> usize {
    let mut total = 0_usize;
    match name {
        "check" => {
            let limiter = roomy(Replenishment::Continuous);
            for _ in 0..n {
                drop(black_box(
                    black_box(&limiter).try_acquire(black_box(3)).unwrap(),
                ));
            }
        }
        "check_in_tokio" => {
            use sheepdog_core::runtime::Runtime;
            let rt = sheepdog_tokio::TokioRuntime::new_current_thread().unwrap();
            let limiter = roomy(Replenishment::Continuous);
            rt.block_on(async {
                for _ in 0..n {
                    drop(black_box(
                        black_box(&limiter).try_acquire(black_box(3)).unwrap(),
                    ));
                }
            });
        }
        "check_fixed" => {
            let limiter = roomy(Replenishment::FixedWindow);
            for _ in 0..n {
                drop(black_box(
                    black_box(&limiter).try_acquire(black_box(3)).unwrap(),
                ));
            }
        }
        "governor" => {
            let limiter = Governor::direct(Quota::per_second(NonZeroU32::MAX));
            for _ in 0..n {
                black_box(black_box(&limiter).check()).unwrap();
            }
        }
        "reject" => {
            let limiter = spent();
            for _ in 0..n {
                black_box(black_box(&limiter).try_acquire(black_box(3))).unwrap_err();
            }
        }
        "async_fast_path" => {
            let limiter = roomy(Replenishment::Continuous);
            for _ in 0..n {
                drop(black_box(
                    poll_ready(black_box(&limiter).acquire(3)).unwrap(),
                ));
            }
        }
        "queued_round_trip" => {
            queued_round_trips(&one_slot(), n);
        }
        "jobs_ready_reference" => {
            for _ in 0..n {
                let all = bounded_map(0..JOBS, LIMIT, |i| async move { black_box(i) }).unwrap();
                total += futures::executor::block_on(all).len();
            }
        }
        "jobs_ready_submit" => {
            let limiter = unlimited(LIMIT);
            for _ in 0..n {
                let all = bounded_map(0..JOBS, LIMIT, |i| {
                    limiter.submit(0, async move { black_box(i) })
                })
                .unwrap();
                total += futures::executor::block_on(all).len();
            }
        }
        "jobs_ready_floor" => {
            let slots = BareSlots::new(LIMIT);
            for _ in 0..n {
                let all = bounded_map(0..JOBS, LIMIT, |i| slots.run(async move { black_box(i) }))
                    .unwrap();
                total += futures::executor::block_on(all).len();
            }
        }
        "poll_ready_floor" => {
            for _ in 0..n {
                black_box(poll_ready(std::future::ready(black_box(3_u64))));
            }
        }
        "jobs_yield_reference" => {
            for _ in 0..n {
                let all = bounded_map(0..JOBS, LIMIT, |i| Yields(1, i)).unwrap();
                total += futures::executor::block_on(all).len();
            }
        }
        "jobs_yield_submit" => {
            let limiter = unlimited(LIMIT);
            for _ in 0..n {
                let all = bounded_map(0..JOBS, LIMIT, |i| limiter.submit(0, Yields(1, i))).unwrap();
                total += futures::executor::block_on(all).len();
            }
        }
        "jobs_yield_bu_reference" => {
            for _ in 0..n {
                let all = stream::iter((0..JOBS).map(|i| Yields(1, i))).buffer_unordered(LIMIT);
                total += futures::executor::block_on(all.count());
            }
        }
        "jobs_yield_bu_submit" => {
            let limiter = unlimited(LIMIT);
            for _ in 0..n {
                let jobs = (0..JOBS).map(|i| limiter.submit(0, Yields(1, i)));
                let all = stream::iter(jobs).buffer_unordered(LIMIT);
                total += futures::executor::block_on(all.count());
            }
        }
        "sizes" => {
            let limiter = unlimited(LIMIT);
            let job = async move { black_box(1_usize) };
            println!("job {}", std::mem::size_of_val(&job));
            println!("submit {}", std::mem::size_of_val(&limiter.submit(0, job)));
        }
        other => panic!("unknown scenario {other}"),
    }
    total
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: rate_instr SCENARIO ITERATIONS";
    let name = args.next().expect(usage);
    let n: usize = args.next().and_then(|n| n.parse().ok()).expect(usage);
    println!("{name} {}", run(&name, black_box(n)));
}
