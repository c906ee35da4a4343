//! Combinators against the peers, in one run: `gather` of 10,000 ready and yield-once futures
//! (vs `futures::future::join_all`, futures-concurrency's `Vec::join`, futures-buffered's
//! `join_all` and an in-place poll loop), `bounded_map` with limit 64 over 10,000 yield-once
//! futures (vs `buffered(64)` and futures-buffered's `BufferedOrdered`), and `CompletionStream`
//! with limit 64 (vs `buffer_unordered(64)`, `FuturesUnordered` and futures-buffered's
//! `BufferUnordered`).
//!
//! Also: `gather` of 16 ready futures, futures woken one at a time (1,000 and 2,000, for
//! linearity), `race` of 2 and 16 futures (vs futures-concurrency's `race` and
//! `futures::future::select_all`) and `retry`'s first-try success (vs a direct call).
//!
//! Everything runs on `futures::executor::block_on` (a bare poll loop), so only the combinator
//! is measured. Instruction counts come from the `combinators_instr` bench under callgrind
//! (`benches/instr.sh`). Run with `cargo bench -p sheepdog-benches --bench combinators`; see
//! `docs/performance.md`.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use futures::executor::block_on;
use futures::stream::{self, FuturesUnordered, StreamExt};
use futures_buffered::BufferedStreamExt;
use futures_concurrency::future::{Join, Race};
use sheepdog_benches::{chain, slots, Yields};
use sheepdog_core::combinators::{bounded_map, gather, race, retry, CompletionStream, RetryPolicy};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

const N: usize = 10_000;
const LIMIT: usize = 64;

fn main() {
    divan::main();
}

/// A future that returns `Pending` once (waking itself), then its value.
struct YieldOnce(Option<usize>, bool);

impl Future for YieldOnce {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.1 {
            Poll::Ready(self.0.take().expect("polled after completion"))
        } else {
            self.1 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn yield_once(i: usize) -> YieldOnce {
    YieldOnce(Some(i), false)
}

fn ready_futs() -> Vec<Ready<usize>> {
    (0..N).map(ready).collect()
}

fn yield_futs() -> Vec<YieldOnce> {
    (0..N).map(yield_once).collect()
}

/// Race inputs: future `i` finishes after `i + 1` yields, so future 0 wins.
fn race_futs(n: usize) -> Vec<Yields> {
    (0..n).map(|i| Yields(i + 1, i)).collect()
}

/// The 64-slot loop: 64 futures in place, each refilled from the input as it finishes.
fn slots64(n: usize) -> usize {
    block_on(slots((0..n).map(yield_once), LIMIT))
}

/// The physical reference: poll every unfinished future of a slice until all are done.
fn inplace<F: Future<Output = usize> + Unpin>(futs: Vec<F>) -> usize {
    block_on(sheepdog_benches::inplace(futs))
}

#[divan::bench_group(counter = ItemsCount::new(N))]
mod gather_ready {
    use super::*;

    #[divan::bench]
    fn ref_inplace(b: Bencher<'_, '_>) {
        b.with_inputs(ready_futs).bench_values(inplace);
    }

    #[divan::bench]
    fn sheepdog(b: Bencher<'_, '_>) {
        b.with_inputs(ready_futs)
            .bench_values(|f| block_on(gather(f)).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_join_all(b: Bencher<'_, '_>) {
        b.with_inputs(ready_futs)
            .bench_values(|f| block_on(futures::future::join_all(f)).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_concurrency_join(b: Bencher<'_, '_>) {
        b.with_inputs(ready_futs)
            .bench_values(|f| block_on(f.join()).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_buffered_join_all(b: Bencher<'_, '_>) {
        b.with_inputs(ready_futs).bench_values(|f| {
            block_on(futures_buffered::join_all(f))
                .iter()
                .sum::<usize>()
        });
    }
}

#[divan::bench_group(counter = ItemsCount::new(N))]
mod gather_yield_once {
    use super::*;

    #[divan::bench]
    fn ref_inplace(b: Bencher<'_, '_>) {
        b.with_inputs(yield_futs).bench_values(inplace);
    }

    #[divan::bench]
    fn sheepdog(b: Bencher<'_, '_>) {
        b.with_inputs(yield_futs)
            .bench_values(|f| block_on(gather(f)).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_join_all(b: Bencher<'_, '_>) {
        b.with_inputs(yield_futs)
            .bench_values(|f| block_on(futures::future::join_all(f)).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_concurrency_join(b: Bencher<'_, '_>) {
        b.with_inputs(yield_futs)
            .bench_values(|f| block_on(f.join()).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_buffered_join_all(b: Bencher<'_, '_>) {
        b.with_inputs(yield_futs).bench_values(|f| {
            block_on(futures_buffered::join_all(f))
                .iter()
                .sum::<usize>()
        });
    }
}

/// 16 ready futures (T2).
#[divan::bench_group(counter = ItemsCount::new(16_usize))]
mod gather_ready_16 {
    use super::*;

    fn futs() -> Vec<Ready<usize>> {
        (0..16).map(ready).collect()
    }

    #[divan::bench]
    fn ref_inplace(b: Bencher<'_, '_>) {
        b.with_inputs(futs).bench_values(inplace);
    }

    #[divan::bench]
    fn sheepdog(b: Bencher<'_, '_>) {
        b.with_inputs(futs)
            .bench_values(|f| block_on(gather(f)).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_join_all(b: Bencher<'_, '_>) {
        b.with_inputs(futs)
            .bench_values(|f| block_on(futures::future::join_all(f)).iter().sum::<usize>());
    }

    #[divan::bench]
    fn futures_buffered_join_all(b: Bencher<'_, '_>) {
        b.with_inputs(futs).bench_values(|f| {
            block_on(futures_buffered::join_all(f))
                .iter()
                .sum::<usize>()
        });
    }
}

/// Futures woken one at a time (T4), at 1,000 and 2,000 for linearity.
#[divan::bench_group]
mod one_at_a_time {
    use super::*;

    #[divan::bench(args = [1_000, 2_000])]
    fn sheepdog(b: Bencher<'_, '_>, n: usize) {
        b.with_inputs(|| chain(n))
            .bench_values(|f| block_on(gather(f)).iter().sum::<usize>());
    }

    #[divan::bench(args = [1_000, 2_000])]
    fn futures_buffered_join_all(b: Bencher<'_, '_>, n: usize) {
        b.with_inputs(|| chain(n)).bench_values(|f| {
            block_on(futures_buffered::join_all(f))
                .iter()
                .sum::<usize>()
        });
    }

    #[divan::bench(args = [1_000, 2_000])]
    fn futures_unordered(b: Bencher<'_, '_>, n: usize) {
        b.with_inputs(|| chain(n)).bench_values(|f| {
            let s: FuturesUnordered<_> = f.into_iter().collect();
            block_on(s.fold(0, |a, v| ready(a + v)))
        });
    }
}

/// `race` of 2 and 16 futures; future 0 wins after one yield.
#[divan::bench_group]
mod race_n {
    use super::*;

    #[divan::bench(args = [2, 16])]
    fn sheepdog(b: Bencher<'_, '_>, n: usize) {
        b.with_inputs(|| race_futs(n))
            .bench_values(|f| block_on(race(f)).expect("not empty"));
    }

    #[divan::bench(args = [2, 16])]
    fn futures_concurrency_race(b: Bencher<'_, '_>, n: usize) {
        b.with_inputs(|| race_futs(n))
            .bench_values(|f| block_on(f.race()));
    }

    #[divan::bench(args = [2, 16])]
    fn futures_select_all(b: Bencher<'_, '_>, n: usize) {
        b.with_inputs(|| race_futs(n))
            .bench_values(|f| block_on(futures::future::select_all(f)).0);
    }
}

/// `retry` whose first attempt succeeds, against calling the operation directly.
#[divan::bench_group]
mod retry_first_try {
    use super::*;

    #[divan::bench]
    fn direct(b: Bencher<'_, '_>) {
        b.bench(|| block_on(black_box(|| ready(Ok::<usize, ()>(1)))()));
    }

    #[divan::bench]
    fn sheepdog(b: Bencher<'_, '_>) {
        let policy = RetryPolicy::builder()
            .attempts(3)
            .base_delay(Duration::from_millis(1))
            .build()
            .expect("valid");
        b.bench(|| {
            block_on(retry(
                black_box(|| ready(Ok::<usize, ()>(1))),
                policy.clone(),
            ))
        });
    }
}

/// Ordered results, limit 64, 10,000 yield-once calls.
#[divan::bench_group(counter = ItemsCount::new(N))]
mod bounded_map_64 {
    use super::*;

    #[divan::bench]
    fn ref_slots64(b: Bencher<'_, '_>) {
        b.bench(|| slots64(black_box(N)));
    }

    #[divan::bench]
    fn sheepdog(b: Bencher<'_, '_>) {
        b.bench(|| {
            let out = block_on(bounded_map(0..black_box(N), LIMIT, yield_once).expect("limit > 0"));
            out.iter().sum::<usize>()
        });
    }

    #[divan::bench]
    fn futures_buffered(b: Bencher<'_, '_>) {
        b.bench(|| {
            block_on(
                stream::iter(0..black_box(N))
                    .map(yield_once)
                    .buffered(LIMIT)
                    .collect::<Vec<_>>(),
            )
            .iter()
            .sum::<usize>()
        });
    }

    #[divan::bench]
    fn futures_buffered_crate_ordered(b: Bencher<'_, '_>) {
        b.bench(|| {
            block_on(
                stream::iter(0..black_box(N))
                    .map(yield_once)
                    .buffered_ordered(LIMIT)
                    .collect::<Vec<_>>(),
            )
            .iter()
            .sum::<usize>()
        });
    }
}

/// Completion order, limit 64 (and the unbounded `FuturesUnordered`), 10,000 yield-once calls.
#[divan::bench_group(counter = ItemsCount::new(N))]
mod completion_stream {
    use super::*;

    #[divan::bench]
    fn ref_slots64(b: Bencher<'_, '_>) {
        b.bench(|| slots64(black_box(N)));
    }

    #[divan::bench]
    fn sheepdog_limit_64(b: Bencher<'_, '_>) {
        b.bench(|| {
            let s = CompletionStream::new((0..black_box(N)).map(yield_once))
                .limit(LIMIT)
                .expect("limit > 0");
            block_on(s.fold(0, |a, (_, v)| ready(a + v)))
        });
    }

    #[divan::bench]
    fn buffer_unordered_64(b: Bencher<'_, '_>) {
        b.bench(|| {
            block_on(
                stream::iter(0..black_box(N))
                    .map(yield_once)
                    .buffer_unordered(LIMIT)
                    .fold(0, |a, v| ready(a + v)),
            )
        });
    }

    #[divan::bench]
    fn futures_buffered_crate_unordered_64(b: Bencher<'_, '_>) {
        b.bench(|| {
            block_on(
                stream::iter(0..black_box(N))
                    .map(yield_once)
                    .buffered_unordered(LIMIT)
                    .fold(0, |a, v| ready(a + v)),
            )
        });
    }

    #[divan::bench]
    fn sheepdog_unbounded(b: Bencher<'_, '_>) {
        b.bench(|| {
            let s = CompletionStream::new((0..black_box(N)).map(yield_once));
            block_on(s.fold(0, |a, (_, v)| ready(a + v)))
        });
    }

    #[divan::bench]
    fn futures_unordered(b: Bencher<'_, '_>) {
        b.bench(|| {
            let s: FuturesUnordered<_> = (0..black_box(N)).map(yield_once).collect();
            block_on(s.fold(0, |a, v| ready(a + v)))
        });
    }
}
