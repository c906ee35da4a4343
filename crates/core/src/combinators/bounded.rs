//! `bounded_map` and its forms: map items through an async function with at most `limit`
//! calls in flight.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{Map, StreamExt};
use futures::Stream;

use super::gather::{collect_ordered, never};
use super::inflight::{Feed, FromIter, FromStream};
use super::outcome::{settle, Outcome};

/// A concurrency limit of zero was given; at least one future must be allowed in flight.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::{bounded_map, ZeroLimit};
///
/// let err = bounded_map(vec![1, 2], 0, |n| async move { n }).err();
/// assert_eq!(err, Some(ZeroLimit));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the concurrency limit must be at least 1")]
pub struct ZeroLimit;

/// Checks a concurrency limit.
pub(crate) fn check_limit(limit: usize) -> Result<NonZeroUsize, ZeroLimit> {
    NonZeroUsize::new(limit).ok_or(ZeroLimit)
}

/// Maps every item through `f` with at most `limit` calls in flight, and returns the outputs
/// in input order (the seed's `bounded_map`).
///
/// Calls start in input order, each as soon as a slot frees up, so exactly `limit` run while
/// enough items are left. `f` is called only when an item is admitted: at most `limit` futures
/// exist at any time, however many items there are (lionagi creates all `N` tasks up front).
/// Everything runs in the calling task, on any executor.
///
/// The limit is checked before `items` is read, so a bad limit costs nothing.
///
/// # Errors
///
/// [`ZeroLimit`] if `limit` is 0, before anything runs.
///
/// # Panics
///
/// A panic in `f` or in one of its futures propagates; the futures in flight are dropped and no
/// further item is started. Use [`bounded_map_settled`] to catch panics per item.
///
/// # Cancel safety
///
/// Dropping the returned future drops the futures in flight; items not yet started are never
/// started.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::bounded_map;
///
/// let documents = ["doc1.txt", "doc2.txt", "doc3.txt", "doc4.txt", "doc5.txt"];
/// let summarize = |doc: &'static str| async move { format!("summary of {doc}") };
/// let summaries = futures::executor::block_on(bounded_map(documents, 3, summarize)?);
/// assert_eq!(summaries[4], "summary of doc5.txt");
/// # Ok::<(), sheepdog_core::combinators::ZeroLimit>(())
/// ```
pub fn bounded_map<I, F, Fut>(
    items: I,
    limit: usize,
    f: F,
) -> Result<impl Future<Output = Vec<Fut::Output>>, ZeroLimit>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    let limit = check_limit(limit)?.get();
    let source = FromIter(items.into_iter().map(f));
    Ok(async move { never(collect_ordered(source, limit, Ok).await) })
}

/// [`bounded_map`] for fallible calls: the values in input order, or the first error.
///
/// The first error drops every call in flight at once, and no queued item is ever started.
///
/// # Errors
///
/// [`ZeroLimit`] if `limit` is 0 (from this function, before anything runs); the returned
/// future fails with the first error a call returns.
///
/// # Panics
///
/// As [`bounded_map`].
///
/// # Cancel safety
///
/// As [`bounded_map`].
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::try_bounded_map;
///
/// let parse = |s: &'static str| async move { s.parse::<u8>() };
/// let out = futures::executor::block_on(try_bounded_map(["1", "x", "3"], 2, parse)?);
/// assert!(out.is_err());
/// # Ok::<(), sheepdog_core::combinators::ZeroLimit>(())
/// ```
pub fn try_bounded_map<I, F, Fut, T, E>(
    items: I,
    limit: usize,
    f: F,
) -> Result<impl Future<Output = Result<Vec<T>, E>>, ZeroLimit>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let limit = check_limit(limit)?.get();
    let source = FromIter(items.into_iter().map(f));
    Ok(collect_ordered(source, limit, |output| output))
}

/// [`bounded_map`] that runs every item to the end and returns how each one ended, in input
/// order (the seed's `bounded_map(..., return_exceptions=True)`).
///
/// Errors and panics of the calls' futures land in their slots as [`Outcome`]s. A panic in
/// `f` itself (while making a future) still propagates. A cancellation from outside is not
/// caught: it drops everything.
///
/// # Errors
///
/// [`ZeroLimit`] if `limit` is 0, before anything runs.
///
/// # Cancel safety
///
/// As [`bounded_map`].
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::bounded_map_settled;
///
/// let fetch = |n: u32| async move { if n == 2 { Err("timeout") } else { Ok(n * 10) } };
/// let out = futures::executor::block_on(bounded_map_settled(1..=3, 2, fetch)?);
/// assert_eq!(out[0].ok(), Some(&10));
/// assert_eq!(out[1].err(), Some(&"timeout"));
/// # Ok::<(), sheepdog_core::combinators::ZeroLimit>(())
/// ```
pub fn bounded_map_settled<I, F, Fut, T, E>(
    items: I,
    limit: usize,
    f: F,
) -> Result<impl Future<Output = Vec<Outcome<T, E>>>, ZeroLimit>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let limit = check_limit(limit)?.get();
    let source = FromIter(items.into_iter().map(f).map(settle));
    Ok(async move { never(collect_ordered(source, limit, Ok).await) })
}

/// The streaming [`bounded_map`], for inputs too long (or endless) to collect, or that arrive
/// over time: maps every item of the [`Stream`] `items` through `f` and yields the outputs
/// **in input order**, with at most `limit` calls in flight.
///
/// An iterator becomes a stream with [`futures::stream::iter`]. Items are taken from `items`
/// only when a call can start, so only `O(limit)` items and futures exist at once, however
/// long the input is; while `items` has nothing ready, the calls in flight keep running.
///
/// Buffering is bounded by `limit`: the calls in flight plus the outputs that finished early and
/// wait for an earlier one never exceed `limit` (like `futures`' `buffered`). So while one slow
/// call holds up the head of the line, fewer than `limit` calls may run. For full concurrency
/// with results in completion order, use [`CompletionStream`](super::CompletionStream) with
/// [`limit`](super::CompletionStream::limit).
///
/// The calls run only while the stream is polled (see
/// [`CompletionStream`](super::CompletionStream) for what that means and for a spawned form).
///
/// # Errors
///
/// [`ZeroLimit`] if `limit` is 0, before `items` is read.
///
/// # Cancel safety
///
/// Dropping the stream drops the calls in flight, the buffered outputs and `items`; items not
/// yet started are never started.
///
/// # Examples
///
/// ```
/// use futures::{stream, StreamExt};
/// use sheepdog_core::combinators::bounded_map_stream;
///
/// let squares = bounded_map_stream(stream::iter(1_u64..), 4, |n| async move { n * n })?;
/// let first: Vec<u64> = futures::executor::block_on(squares.take(4).collect());
/// assert_eq!(first, vec![1, 4, 9, 16]);
/// # Ok::<(), sheepdog_core::combinators::ZeroLimit>(())
/// ```
pub fn bounded_map_stream<S, F, Fut>(
    items: S,
    limit: usize,
    f: F,
) -> Result<BoundedMapStream<Map<S, F>>, ZeroLimit>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future,
{
    let limit = check_limit(limit)?.get();
    Ok(BoundedMapStream {
        feed: Feed::new(FromStream(Box::pin(items.map(f)))),
        window: VecDeque::with_capacity(limit),
        limit,
    })
}

/// The stream returned by [`bounded_map_stream`].
#[must_use = "streams do nothing unless polled"]
pub struct BoundedMapStream<S>
where
    S: Stream,
    S::Item: Future,
{
    feed: Feed<FromStream<S>>,
    /// One entry per admitted, not yet yielded item, in input order: `None` while it runs.
    window: VecDeque<Option<<S::Item as Future>::Output>>,
    limit: usize,
}

impl<S> fmt::Debug for BoundedMapStream<S>
where
    S: Stream,
    S::Item: Future,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedMapStream")
            .field("limit", &self.limit)
            .field("in_flight", &self.feed.flight.len())
            .field("waiting", &self.window.len())
            .finish_non_exhaustive()
    }
}

impl<S> Unpin for BoundedMapStream<S>
where
    S: Stream,
    S::Item: Future,
{
}

impl<S> Stream for BoundedMapStream<S>
where
    S: Stream,
    S::Item: Future,
{
    type Item = <S::Item as Future>::Output;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(Some(_)) = this.window.front() {
                return Poll::Ready(this.window.pop_front().flatten());
            }
            let head = this.feed_head();
            // Room for as many more as the window has free entries.
            let cap = this.feed.flight.len() + this.limit - this.window.len();
            let polled = this.feed.poll_next(cx, cap);
            // One entry per admitted item, in input order.
            let admitted = this.feed.admitted() - head;
            this.window.resize_with(admitted, || None);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some((index, output))) => this.window[index - head] = Some(output),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.feed.remaining_hint();
        let waiting = self.window.len();
        (
            low.saturating_add(waiting),
            high.and_then(|h| h.checked_add(waiting)),
        )
    }
}

impl<S> BoundedMapStream<S>
where
    S: Stream,
    S::Item: Future,
{
    /// The input index of the window's first entry.
    fn feed_head(&self) -> usize {
        self.feed.admitted() - self.window.len()
    }
}
