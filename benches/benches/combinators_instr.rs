//! Instruction counts of the combinator scenarios (targets T1–T5), for callgrind.
//!
//! `combinators_instr SCENARIO ITERATIONS` runs one scenario `ITERATIONS` times on
//! `futures::executor::block_on`. Run it under callgrind at two iteration counts and divide the
//! difference of the totals by the difference of the counts: what is left is the cost of one
//! iteration, without the process start-up. `benches/instr.sh` does exactly that for every
//! scenario; see docs/performance.md, "Combinators (T1–T5)".
//!
//! Every scenario builds its input the same way as its `input_*` baseline, so subtracting the
//! baseline leaves the combinator alone.

use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::Pin;

use futures::executor::block_on;
use futures::stream::{self, FuturesUnordered, StreamExt};
use futures_buffered::BufferedStreamExt;
use futures_concurrency::future::{Join, Race};
use sheepdog_benches::{chain, slots, Yields};
use sheepdog_core::combinators::{
    bounded_map, gather, race, retry, try_gather, CompletionStream, RetryPolicy,
};

const LIMIT: usize = 64;

fn yield_once(i: usize) -> Yields {
    Yields(1, i)
}

fn ready_futs(n: usize) -> Vec<Ready<usize>> {
    (0..black_box(n)).map(ready).collect()
}

fn yield_futs(n: usize) -> Vec<Yields> {
    (0..black_box(n)).map(yield_once).collect()
}

/// The in-place poll loop: poll every unfinished future of the vector until all are done.
fn inplace<F: Future<Output = usize> + Unpin>(futs: Vec<F>) -> usize {
    block_on(sheepdog_benches::inplace(futs))
}

/// The 64-slot loop: 64 futures in place, each refilled from the input as it finishes.
fn slots64(n: usize) -> usize {
    block_on(slots((0..black_box(n)).map(yield_once), LIMIT))
}

fn chain_boxed(n: usize) -> Vec<Pin<Box<dyn Future<Output = usize>>>> {
    chain(n)
        .into_iter()
        .map(|f| Box::pin(f) as Pin<Box<dyn Future<Output = usize>>>)
        .collect()
}

/// Race inputs: future `i` finishes after `i + 1` yields, so future 0 wins.
fn race_futs(n: usize) -> Vec<Yields> {
    (0..black_box(n)).map(|i| Yields(i + 1, i)).collect()
}

fn sum(v: Vec<usize>) -> usize {
    v.iter().sum()
}

/// The scenario called `name`, resolved once so that the name lookup is not counted.
fn scenario(name: &str) -> fn() -> usize {
    match name {
        // T1 / T2: ready futures.
        "input_ready_10k" => || ready_futs(10_000).len(),
        "ref_inplace_ready_10k" => || inplace(ready_futs(10_000)),
        "gather_ready_10k" => || sum(block_on(gather(ready_futs(10_000)))),
        "fb_join_all_ready_10k" => || sum(block_on(futures_buffered::join_all(ready_futs(10_000)))),
        "join_all_ready_10k" => || sum(block_on(futures::future::join_all(ready_futs(10_000)))),
        "fc_join_ready_10k" => || sum(block_on(ready_futs(10_000).join())),
        "input_ready_16" => || ready_futs(16).len(),
        "ref_inplace_ready_16" => || inplace(ready_futs(16)),
        "gather_ready_16" => || sum(block_on(gather(ready_futs(16)))),
        "try_gather_ready_16" => || {
            let futs = (0..black_box(16)).map(|i| ready(Ok::<_, ()>(i)));
            sum(block_on(try_gather(futs)).unwrap_or_default())
        },
        "fb_join_all_ready_16" => || sum(block_on(futures_buffered::join_all(ready_futs(16)))),
        "join_all_ready_16" => || sum(block_on(futures::future::join_all(ready_futs(16)))),
        // T3: yield-once futures.
        "input_yield_10k" => || yield_futs(10_000).len(),
        "ref_inplace_yield_10k" => || inplace(yield_futs(10_000)),
        "gather_yield_10k" => || sum(block_on(gather(yield_futs(10_000)))),
        "fb_join_all_yield_10k" => || sum(block_on(futures_buffered::join_all(yield_futs(10_000)))),
        "fc_join_yield_10k" => || sum(block_on(yield_futs(10_000).join())),
        // T4: one-at-a-time wakes.
        "input_chain_1k" => || chain(1_000).len(),
        "input_chain_2k" => || chain(2_000).len(),
        "gather_chain_1k" => || sum(block_on(gather(chain(1_000)))),
        "gather_chain_2k" => || sum(block_on(gather(chain(2_000)))),
        "fb_join_all_chain_1k" => || sum(block_on(futures_buffered::join_all(chain(1_000)))),
        "fb_join_all_chain_2k" => || sum(block_on(futures_buffered::join_all(chain(2_000)))),
        "input_chain_boxed_1k" => || chain_boxed(1_000).len(),
        "futures_unordered_chain_1k" => || {
            let s: FuturesUnordered<_> = chain(1_000).into_iter().collect();
            block_on(s.fold(0, |a, v| ready(a + v)))
        },
        // T5: limit 64 over 10,000 yield-once calls.
        "ref_slots64_10k" => || slots64(10_000),
        "bounded_map_64_10k" => || {
            sum(block_on(
                bounded_map(0..black_box(10_000), LIMIT, yield_once).expect("limit"),
            ))
        },
        "buffered_64_10k" => || {
            sum(block_on(
                stream::iter(0..black_box(10_000))
                    .map(yield_once)
                    .buffered(LIMIT)
                    .collect(),
            ))
        },
        "fb_buffered_ordered_64_10k" => || {
            sum(block_on(
                stream::iter(0..black_box(10_000))
                    .map(yield_once)
                    .buffered_ordered(LIMIT)
                    .collect(),
            ))
        },
        "completion_64_10k" => || {
            let s = CompletionStream::new((0..black_box(10_000)).map(yield_once))
                .limit(LIMIT)
                .expect("limit");
            block_on(s.fold(0, |a, (_, v)| ready(a + v)))
        },
        "buffer_unordered_64_10k" => || {
            block_on(
                stream::iter(0..black_box(10_000))
                    .map(yield_once)
                    .buffer_unordered(LIMIT)
                    .fold(0, |a, v| ready(a + v)),
            )
        },
        "fb_buffered_unordered_64_10k" => || {
            block_on(
                stream::iter(0..black_box(10_000))
                    .map(yield_once)
                    .buffered_unordered(LIMIT)
                    .fold(0, |a, v| ready(a + v)),
            )
        },
        // Race of 2 and 16 (future 0 wins after one yield).
        "input_race_2" => || race_futs(2).len(),
        "input_race_16" => || race_futs(16).len(),
        "race_2" => || block_on(race(race_futs(2))).expect("not empty"),
        "race_16" => || block_on(race(race_futs(16))).expect("not empty"),
        "fc_race_2" => || block_on(race_futs(2).race()),
        "fc_race_16" => || block_on(race_futs(16).race()),
        "select_all_2" => || block_on(futures::future::select_all(race_futs(2))).0,
        "select_all_16" => || block_on(futures::future::select_all(race_futs(16))).0,
        // retry: a first-try success against calling the operation directly.
        "direct_ok" => || block_on(black_box(|| ready(Ok::<usize, ()>(1)))()).unwrap_or(0),
        "retry_ok" => || {
            let policy = black_box(RetryPolicy::default());
            block_on(retry(black_box(|| ready(Ok::<usize, ()>(1))), policy)).unwrap_or(0)
        },
        other => panic!("unknown scenario {other}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .expect("usage: combinators_instr SCENARIO ITERATIONS");
    let iterations: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("usage: combinators_instr SCENARIO ITERATIONS");
    let run = black_box(scenario(&name));
    let mut total = 0_usize;
    for _ in 0..iterations {
        total = total.wrapping_add(black_box(run()));
    }
    println!("{name} {total}");
}
