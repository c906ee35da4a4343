//! Combinators against the peers, in one run: `gather` of 10,000 ready and yield-once futures
//! (vs `futures::future::join_all`, futures-concurrency's `Vec::join`, futures-buffered's
//! `join_all` and an in-place poll loop), `bounded_map` with limit 64 over 10,000 yield-once
//! futures (vs `buffered(64)` and futures-buffered's `BufferedOrdered`), and `CompletionStream`
//! with limit 64 (vs `buffer_unordered(64)`, `FuturesUnordered` and futures-buffered's
//! `BufferUnordered`).
//!
//! Everything runs on `futures::executor::block_on` (a bare poll loop), so only the combinator
//! is measured. Run with `cargo bench -p sheepdog-benches --bench combinators`; see
//! `docs/performance.md`.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use futures::executor::block_on;
use futures::stream::{self, FuturesUnordered, StreamExt};
use futures_buffered::BufferedStreamExt;
use futures_concurrency::future::Join;
use sheepdog_core::combinators::{bounded_map, gather, CompletionStream};

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

/// The physical reference: poll every unfinished future of a slice until all are done.
fn inplace<F: Future<Output = usize> + Unpin>(mut futs: Vec<F>) -> usize {
    let mut done = vec![None; futs.len()];
    block_on(futures::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in futs.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match Pin::new(fut).poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }));
    done.into_iter().flatten().sum()
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

/// Ordered results, limit 64, 10,000 yield-once calls.
#[divan::bench_group(counter = ItemsCount::new(N))]
mod bounded_map_64 {
    use super::*;

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
