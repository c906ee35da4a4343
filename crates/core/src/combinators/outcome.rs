//! Settled outcomes: what `gather_settled` and friends put in each slot.

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::runtime::Panic;

/// How one future of a settled combinator ended: its value, its error, or its panic (the
/// seed's `return_exceptions=True` slot).
///
/// A cancellation is never an outcome: cancelling the combinator drops it and every future in
/// it, so there is no list to put a cancellation in.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::{gather_settled, Outcome};
///
/// let results = futures::executor::block_on(gather_settled(vec![
///     Box::pin(async { Ok::<_, String>(1) }) as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
///     Box::pin(async { Err("no route".to_owned()) }),
///     Box::pin(async { panic!("bug") }),
/// ]));
/// assert!(matches!(results[0], Outcome::Ok(1)));
/// assert_eq!(results[1].err(), Some(&"no route".to_owned()));
/// assert_eq!(results[2].panic().and_then(|p| p.message()), Some("bug"));
/// ```
#[derive(Debug)]
pub enum Outcome<T, E> {
    /// The future returned `Ok(value)`.
    Ok(T),
    /// The future returned `Err(error)`.
    Err(E),
    /// The future panicked; the payload is kept.
    Panicked(Panic),
}

impl<T, E> Outcome<T, E> {
    /// Whether the future returned `Ok`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// Whether the future returned `Err`.
    pub fn is_err(&self) -> bool {
        matches!(self, Outcome::Err(_))
    }

    /// Whether the future panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Outcome::Panicked(_))
    }

    /// The value, if the future returned `Ok`.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(value) => Some(value),
            _ => None,
        }
    }

    /// The error, if the future returned `Err`.
    pub fn err(&self) -> Option<&E> {
        match self {
            Outcome::Err(error) => Some(error),
            _ => None,
        }
    }

    /// The panic, if the future panicked.
    pub fn panic(&self) -> Option<&Panic> {
        match self {
            Outcome::Panicked(panic) => Some(panic),
            _ => None,
        }
    }

    /// The future's own result; a panic is re-raised here, payload intact.
    ///
    /// # Panics
    ///
    /// Resumes the future's panic if it panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::combinators::Outcome;
    ///
    /// let outcome: Outcome<u8, ()> = Outcome::Ok(3);
    /// assert_eq!(outcome.into_result(), Ok(3));
    /// ```
    pub fn into_result(self) -> Result<T, E> {
        match self {
            Outcome::Ok(value) => Ok(value),
            Outcome::Err(error) => Err(error),
            Outcome::Panicked(panic) => resume_unwind(panic.into_payload()),
        }
    }
}

/// Runs `future` and settles it into an [`Outcome`]: a panic while polling it is caught.
///
/// This is the building block of the settled combinators; use it to settle one future of a
/// hand-written combination.
///
/// # Cancel safety
///
/// Dropping it drops `future`.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::settle;
///
/// let outcome = futures::executor::block_on(settle(async { Err::<(), _>("refused") }));
/// assert_eq!(outcome.err(), Some(&"refused"));
/// ```
pub fn settle<F, T, E>(future: F) -> Settle<F>
where
    F: Future<Output = Result<T, E>>,
{
    Settle { future }
}

pin_project_lite::pin_project! {
    /// The future returned by [`settle`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless awaited"]
    pub struct Settle<F> {
        #[pin]
        future: F,
    }
}

impl<F, T, E> Future for Settle<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Outcome<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T, E>> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(value))) => Poll::Ready(Outcome::Ok(value)),
            Ok(Poll::Ready(Err(error))) => Poll::Ready(Outcome::Err(error)),
            Err(payload) => Poll::Ready(Outcome::Panicked(Panic::new(payload))),
        }
    }
}
