//! `CompletionStream`: `(index, output)` pairs in completion order, with an optional limit.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::bounded::{check_limit, ZeroLimit};
use super::inflight::{Feed, FromIter};
use super::outcome::{settle, Settle};
use crate::runtime::{self, JoinHandle, NoRuntime, RuntimeHandle};

/// A [`Stream`] of `(index, output)` in completion order (the seed's `CompletionStream`).
///
/// `index` is the future's position in the input. With [`limit(n)`](CompletionStream::limit),
/// at most `n` futures are in flight, admitted in input order as earlier ones finish, and the
/// input's futures are only made when admitted (the input may be endless). Without a limit,
/// every future is admitted at the first poll.
///
/// **Dropping the stream, or breaking out of the loop that reads it, cancels what is left**:
/// the futures in flight are dropped at once and the rest are never started (lionagi waits for
/// all of them; AnyIO's `as_completed` cancels, as we do).
///
/// # Progress between items
///
/// [`CompletionStream::new`] runs its futures **in the consumer's task**: they make progress
/// only while the stream is being polled (in `next().await`). While the consumer is busy with
/// an item, the futures in flight are not polled, exactly like `buffer_unordered` (futures-rs
/// issue 2387); their wakes are remembered, nothing is lost, and no executor is needed.
/// [`CompletionStream::spawned`] instead spawns each future on the ambient runtime when it is
/// admitted: the futures in flight keep running (in parallel, on a multi-thread runtime) while
/// the consumer is busy, and the stream yields their [`JoinHandle`] outputs. Admission still
/// happens when the stream is polled, so a queued item starts when the consumer asks for the
/// next one.
///
/// # Cancel safety
///
/// `next()` is cancel-safe: dropping it loses no output (a finished output is only taken out
/// when it is returned).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use futures::StreamExt;
/// use sheepdog_core::combinators::CompletionStream;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time::sleep;
///
/// VirtualRuntime::new().block_on(async {
///     let tasks = [30_u64, 10, 20].map(|ms| async move {
///         sleep(Duration::from_millis(ms)).await;
///         format!("topic analysed in {ms} ms")
///     });
///     let mut stream = CompletionStream::new(tasks).limit(5)?;
///     let mut order = Vec::new();
///     while let Some((idx, result)) = stream.next().await {
///         order.push(idx);
///         assert!(result.starts_with("topic"));
///     }
///     assert_eq!(order, vec![1, 2, 0]);
///     Ok::<(), sheepdog_core::combinators::ZeroLimit>(())
/// })?;
/// # }
/// # Ok::<(), sheepdog_core::combinators::ZeroLimit>(())
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct CompletionStream<I>
where
    I: Iterator,
    I::Item: Future,
{
    feed: Feed<FromIter<I>>,
    limit: usize,
}

impl<I> fmt::Debug for CompletionStream<I>
where
    I: Iterator,
    I::Item: Future,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionStream")
            .field("limit", &self.limit)
            .field("feed", &self.feed)
            .finish()
    }
}

impl<I> Unpin for CompletionStream<I>
where
    I: Iterator,
    I::Item: Future,
{
}

impl<I> CompletionStream<I>
where
    I: Iterator,
    I::Item: Future,
{
    /// A stream over `futures`, run in the consumer's task, with no limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use sheepdog_core::combinators::CompletionStream;
    ///
    /// let stream = CompletionStream::new((0..3).map(|i| async move { i * 2 }));
    /// let pairs: Vec<(usize, i32)> = futures::executor::block_on(stream.collect());
    /// assert_eq!(pairs, vec![(0, 0), (1, 2), (2, 4)]);
    /// ```
    pub fn new<T>(futures: T) -> Self
    where
        T: IntoIterator<IntoIter = I>,
    {
        CompletionStream {
            feed: Feed::new(FromIter(futures.into_iter())),
            limit: usize::MAX,
        }
    }

    /// At most `limit` futures in flight.
    ///
    /// # Errors
    ///
    /// [`ZeroLimit`] if `limit` is 0 (lionagi reads 0 as "unlimited"; here it is an error).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::combinators::{CompletionStream, ZeroLimit};
    ///
    /// let futures = (0..3).map(|i| async move { i });
    /// assert_eq!(CompletionStream::new(futures).limit(0).unwrap_err(), ZeroLimit);
    /// ```
    pub fn limit(mut self, limit: usize) -> Result<Self, ZeroLimit> {
        self.limit = check_limit(limit)?.get();
        Ok(self)
    }

    /// How many futures are in flight now.
    pub fn in_flight(&self) -> usize {
        self.feed.flight.len()
    }
}

impl<I> Stream for CompletionStream<I>
where
    I: Iterator,
    I::Item: Future,
{
    type Item = (usize, <I::Item as Future>::Output);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.feed.poll_next(cx, this.limit)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.feed.remaining_hint();
        let running = self.feed.unfinished();
        (
            low.saturating_add(running),
            high.and_then(|h| h.checked_add(running)),
        )
    }
}

impl<I, F> CompletionStream<Spawning<I>>
where
    I: Iterator<Item = F>,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// A stream that spawns each future on the ambient runtime when it is admitted, so the
    /// futures in flight keep running while the consumer is busy. Items are
    /// `(index, Result<output, JoinError>)`: a panic of a future comes back as
    /// [`JoinError::Panic`](crate::JoinError::Panic).
    ///
    /// The spawned tasks are children of the cancel scope the stream is polled in, and
    /// dropping the stream aborts them (sheepdog's [`JoinHandle`] aborts on drop).
    ///
    /// # Errors
    ///
    /// [`NoRuntime`] when called outside a future that sheepdog drives.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use futures::StreamExt;
    /// use sheepdog_core::combinators::CompletionStream;
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    ///
    /// let sum = VirtualRuntime::new().block_on(async {
    ///     let stream = CompletionStream::spawned((1..=4).map(|n| async move { n * n }))
    ///         .expect("inside a runtime")
    ///         .limit(2)
    ///         .expect("a non-zero limit");
    ///     stream.map(|(_, out)| out.expect("no panic")).fold(0, |a, b| async move { a + b }).await
    /// });
    /// assert_eq!(sum, 30);
    /// # }
    /// ```
    pub fn spawned<T>(futures: T) -> Result<Self, NoRuntime>
    where
        T: IntoIterator<IntoIter = I>,
    {
        let runtime = runtime::try_current()?;
        Ok(Self::spawned_on(runtime, futures))
    }

    /// [`spawned`](CompletionStream::spawned) on a given runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use futures::StreamExt;
    /// use sheepdog_core::combinators::CompletionStream;
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    ///
    /// let rt = VirtualRuntime::new();
    /// let stream = CompletionStream::spawned_on(rt.handle(), [async { 1 }]);
    /// let items: Vec<_> = rt.block_on(stream.collect());
    /// assert_eq!(items[0].1.as_ref().ok(), Some(&1));
    /// # }
    /// ```
    pub fn spawned_on<T>(runtime: RuntimeHandle, futures: T) -> Self
    where
        T: IntoIterator<IntoIter = I>,
    {
        CompletionStream::new(Spawning {
            source: futures.into_iter(),
            runtime,
        })
    }
}

impl<I, F, T, E> CompletionStream<Settling<I>>
where
    I: Iterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    /// A stream of `(index, Outcome)` in completion order: every future runs to the end and
    /// its error or panic is caught into its [`Outcome`](super::Outcome) instead of ending the stream (the
    /// streaming [`gather_settled`](super::gather_settled), the seed's
    /// `return_exceptions=True`). A failure never cancels the other futures; dropping the
    /// stream still does.
    ///
    /// Like [`new`](CompletionStream::new), it runs the futures in the consumer's task;
    /// [`limit`](CompletionStream::limit) bounds how many are in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use sheepdog_core::combinators::CompletionStream;
    ///
    /// let fetches = ["a.txt", "missing.txt", "b.txt"].map(|name| async move {
    ///     if name.starts_with("missing") { Err(format!("{name}: not found")) } else { Ok(name.len()) }
    /// });
    /// let stream = CompletionStream::settled(fetches).limit(2)?;
    /// let outcomes: Vec<_> = futures::executor::block_on(stream.collect());
    /// assert_eq!(outcomes.len(), 3, "the error did not end the stream");
    /// assert_eq!(outcomes[1].0, 1);
    /// assert_eq!(outcomes[1].1.err().map(String::as_str), Some("missing.txt: not found"));
    /// assert_eq!(outcomes[2].1.ok(), Some(&5));
    /// # Ok::<(), sheepdog_core::combinators::ZeroLimit>(())
    /// ```
    pub fn settled<C>(futures: C) -> Self
    where
        C: IntoIterator<IntoIter = I>,
    {
        CompletionStream::new(Settling {
            source: futures.into_iter(),
        })
    }
}

/// The source of a [`CompletionStream::settled`] stream: settles each future into an
/// [`Outcome`](super::Outcome).
#[derive(Debug)]
pub struct Settling<I> {
    source: I,
}

impl<I, F, T, E> Iterator for Settling<I>
where
    I: Iterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    type Item = Settle<F>;

    fn next(&mut self) -> Option<Settle<F>> {
        self.source.next().map(settle)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.source.size_hint()
    }
}

/// The source of a [`CompletionStream::spawned`] stream: spawns each future as it is
/// admitted.
pub struct Spawning<I> {
    source: I,
    runtime: RuntimeHandle,
}

impl<I> fmt::Debug for Spawning<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawning")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl<I, F> Iterator for Spawning<I>
where
    I: Iterator<Item = F>,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Item = JoinHandle<F::Output>;

    fn next(&mut self) -> Option<Self::Item> {
        let future = self.source.next()?;
        Some(runtime::spawn_on(&*self.runtime, future))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.source.size_hint()
    }
}
