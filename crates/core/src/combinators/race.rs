//! `race` and `race_ok`: the first future to finish wins; the losers are dropped at once.

use std::fmt;
use std::future::Future;

use futures::future::poll_fn;

use super::join::Join;

/// `race` or `race_ok` was given no futures, so nothing could win.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::{race, EmptyRace};
///
/// let none: Vec<std::future::Ready<u8>> = Vec::new();
/// assert_eq!(futures::executor::block_on(race(none)), Err(EmptyRace));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("race() needs at least one future")]
pub struct EmptyRace;

/// Why [`race_ok`] has no value.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::{race_ok, RaceOkError};
///
/// let out = futures::executor::block_on(race_ok(
///     ["dns", "tls"].map(|e| async move { Err::<(), _>(e) }),
/// ));
/// assert_eq!(out, Err(RaceOkError::AllFailed(vec!["dns", "tls"])));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaceOkError<E> {
    /// There were no futures.
    Empty,
    /// Every future failed; their errors, in input order.
    AllFailed(Vec<E>),
}

impl<E> RaceOkError<E> {
    /// The errors, in input order (empty for [`RaceOkError::Empty`]).
    pub fn errors(&self) -> &[E] {
        match self {
            RaceOkError::Empty => &[],
            RaceOkError::AllFailed(errors) => errors,
        }
    }

    /// The errors by value, in input order.
    pub fn into_errors(self) -> Vec<E> {
        match self {
            RaceOkError::Empty => Vec::new(),
            RaceOkError::AllFailed(errors) => errors,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RaceOkError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaceOkError::Empty => f.write_str("race_ok() needs at least one future"),
            RaceOkError::AllFailed(errors) => {
                write!(f, "all {} futures failed", errors.len())?;
                errors
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, error)| write!(f, "; {i}: {error}"))
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RaceOkError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.errors().first().map(|error| error as _)
    }
}

/// Runs the futures concurrently; the first to complete wins, whatever its output (success
/// or failure), and every other future is dropped at once (the seed's `race`).
///
/// Futures are first polled in input order, so when several are ready at their first poll,
/// the earliest in the input wins. An earlier success beats later errors, and an earlier error
/// beats later successes: use [`race_ok`] to wait for the first success instead.
///
/// # Errors
///
/// [`EmptyRace`] if there are no futures (never a hang). The winner's output, `Err` or not, is
/// returned inside `Ok` as is.
///
/// # Panics
///
/// A panic in a future propagates; the others are dropped as it unwinds.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future in the race.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::combinators::race;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time::sleep;
///
/// let fastest = VirtualRuntime::new().block_on(race([("openai", 300), ("anthropic", 200)].map(
///     |(provider, ms)| async move {
///         sleep(Duration::from_millis(ms)).await;
///         provider
///     },
/// )));
/// assert_eq!(fastest, Ok("anthropic"));
/// # }
/// ```
pub async fn race<I>(futures: I) -> Result<<I::Item as Future>::Output, EmptyRace>
where
    I: IntoIterator,
    I::Item: Future,
{
    let mut join = Join::new(futures.into_iter());
    let winner = poll_fn(|cx| join.poll(cx, |_| true)).await;
    winner.and_then(|index| join.take(index)).ok_or(EmptyRace)
}

/// Runs the futures concurrently and returns the first success; the others are dropped at
/// once. If every future fails, returns all the errors, in input order.
///
/// # Errors
///
/// [`RaceOkError::AllFailed`] with every error when no future succeeds;
/// [`RaceOkError::Empty`] when there are no futures.
///
/// # Panics
///
/// A panic in a future propagates; the others are dropped as it unwinds.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future in the race.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::race_ok;
///
/// let mirror = futures::executor::block_on(race_ok(vec![
///     Box::pin(async { Err("mirror 1 down") }) as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
///     Box::pin(async { Ok("mirror 2") }),
/// ]));
/// assert_eq!(mirror, Ok("mirror 2"));
/// ```
pub async fn race_ok<I, T, E>(futures: I) -> Result<T, RaceOkError<E>>
where
    I: IntoIterator,
    I::Item: Future<Output = Result<T, E>>,
{
    let mut join = Join::new(futures.into_iter());
    if join.len() == 0 {
        return Err(RaceOkError::Empty);
    }
    if let Some(index) = poll_fn(|cx| join.poll(cx, Result::is_ok)).await {
        if let Some(Ok(value)) = join.take(index) {
            return Ok(value);
        }
    }
    let errors = join.take_all().filter_map(Result::err).collect();
    Err(RaceOkError::AllFailed(errors))
}
