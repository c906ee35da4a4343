//! `gather`, `try_gather`, `gather_settled`: run many futures at once, outputs in input order.

use std::convert::Infallible;
use std::future::Future;
use std::ops::ControlFlow;
use std::task::Poll;

use futures::future::poll_fn;

use super::inflight::{Feed, Source};
use super::join::Join;
use super::outcome::{settle, Outcome};
use super::pinned::InPlace;

/// Runs the futures of `source` concurrently, at most `cap` at once, and collects what `keep`
/// makes of each output into a vector in input order. The first `Err` from `keep` ends the
/// run: every future still in flight is dropped at once and no further one is made.
pub(crate) async fn collect_ordered<S, U, E>(
    source: S,
    cap: usize,
    mut keep: impl FnMut(<S::Fut as Future>::Output) -> Result<U, E>,
) -> Result<Vec<U>, E>
where
    S: Source,
{
    let mut outputs: Vec<Option<U>> = Vec::new();
    outputs.resize_with(source.size_hint().0, || None);
    let mut feed = Feed::new(source);
    let mut failed = None;
    poll_fn(move |cx| {
        let polled = feed.poll_each(cx, cap, |index, output| match keep(output) {
            Ok(value) => {
                if outputs.len() <= index {
                    outputs.resize_with(index + 1, || None);
                }
                outputs[index] = Some(value);
                ControlFlow::Continue(())
            }
            Err(error) => {
                failed = Some(error);
                ControlFlow::Break(())
            }
        });
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(ControlFlow::Break(())) => {
                feed.close();
                Poll::Ready(Err(failed.take().expect("an error stopped the run")))
            }
            Poll::Ready(ControlFlow::Continue(())) => {
                let outputs = std::mem::take(&mut outputs);
                Poll::Ready(Ok(outputs.into_iter().flatten().collect()))
            }
        }
    })
    .await
}

pub(crate) fn never<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// Runs every future concurrently in the calling task and returns their outputs in input
/// order (the seed's `gather`).
///
/// The futures are polled in place by the returned future — no spawning, any executor, no
/// `Send` or `'static` needed. An empty input gives an empty vector at once. For futures of
/// different types, use [`GatherTuple`](super::GatherTuple) on a tuple.
///
/// # Panics
///
/// A panic in one future propagates out of `gather`; the other futures are dropped as the
/// panic unwinds. Use [`gather_settled`] to catch panics into their slots.
///
/// # Cancel safety
///
/// Dropping the returned future (or cancelling the scope around it) drops every future it
/// holds, at once; their outputs are lost.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::gather;
///
/// let topics = ["market trends", "competitors", "technology"];
/// let reports = futures::executor::block_on(gather(
///     topics.iter().map(|topic| async move { format!("analysis of {topic}") }),
/// ));
/// assert_eq!(reports[0], "analysis of market trends");
/// assert_eq!(reports.len(), 3);
/// ```
pub async fn gather<I>(futures: I) -> Vec<<I::Item as Future>::Output>
where
    I: IntoIterator,
    I::Item: Future,
{
    if !InPlace::<I::Item>::FITS {
        let mut join = Join::new(futures.into_iter());
        poll_fn(|cx| join.poll(cx, |_| false)).await;
        return join.into_outputs();
    }
    // Poll the futures in their input vector (a `Vec` is taken as is) while they finish in
    // order, packing each output over the futures before it: when every future is ready at
    // once, that is the only pass.
    let mut block = InPlace::new(futures.into_iter().collect());
    // `Ready` without waiting: a pending future hands over to the joining driver in this same
    // call, so that the futures after it are polled now.
    let finished = poll_fn(|cx| Poll::Ready(block.poll_prefix(cx).is_ready())).await;
    if !finished {
        let mut join = Join::in_place(block.cells());
        poll_fn(|cx| join.poll(cx, |_| false)).await;
    }
    shrunk(block.into_outputs())
}

/// `outputs`, shrunk if its block has room for more than twice as many (futures much larger
/// than their outputs), so that a gather never returns much more memory than its outputs take.
fn shrunk<T>(mut outputs: Vec<T>) -> Vec<T> {
    if outputs.capacity() / 2 > outputs.len() {
        outputs.shrink_to_fit();
    }
    outputs
}

/// Runs every future concurrently and returns their values in input order, or the first
/// error.
///
/// The first future to fail (in the order failures are observed) ends it: every other future is
/// dropped at once — they are cancelled, not awaited — and that error is returned as is, not
/// wrapped. Because the rest are dropped, there is never a second error to aggregate.
///
/// # Errors
///
/// The first error any future returns.
///
/// # Panics
///
/// A panic in one future propagates; the others are dropped as it unwinds.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future it holds.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::try_gather;
///
/// let ok = futures::executor::block_on(try_gather(
///     [1, 2].map(|n| async move { Ok::<_, String>(n) }),
/// ));
/// assert_eq!(ok, Ok(vec![1, 2]));
/// ```
pub async fn try_gather<I, T, E>(futures: I) -> Result<Vec<T>, E>
where
    I: IntoIterator,
    I::Item: Future<Output = Result<T, E>>,
{
    let mut join = Join::new(futures.into_iter());
    if let Some(failed) = poll_fn(|cx| join.poll(cx, Result::is_err)).await {
        if let Some(Err(error)) = join.take(failed) {
            return Err(error);
        }
    }
    let mut values = Vec::with_capacity(join.len());
    for output in join.take_all() {
        values.push(output?);
    }
    Ok(values)
}

/// Runs every future to the end and returns how each one ended, in input order (the seed's
/// `gather(..., return_exceptions=True)`).
///
/// Errors and panics are caught into their slots as [`Outcome`]s; no failure cancels the
/// others. A cancellation from outside is not caught: cancelling the enclosing scope (or
/// dropping the returned future) drops every future, and there is no result at all.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future it holds; outcomes already collected are
/// lost.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::gather_settled;
///
/// let results = futures::executor::block_on(gather_settled(
///     ["task A", "task B"].map(|name| async move {
///         if name == "task B" { Err(format!("{name} failed")) } else { Ok(name.len()) }
///     }),
/// ));
/// assert_eq!(results[0].ok(), Some(&6));
/// assert_eq!(results[1].err().map(String::as_str), Some("task B failed"));
/// ```
pub async fn gather_settled<I, T, E>(futures: I) -> Vec<Outcome<T, E>>
where
    I: IntoIterator,
    I::Item: Future<Output = Result<T, E>>,
{
    gather(futures.into_iter().map(settle)).await
}
