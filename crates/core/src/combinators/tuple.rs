//! `gather` for tuples of futures of different types (up to 12), built on futures-concurrency's
//! tuple `Join` and `TryJoin`, whose semantics match ours: every future polled in the calling
//! task, outputs in position order, and for `try_join` the first error returned as is.

use std::future::Future;

use futures_concurrency::future::{Join, TryJoin};

use super::outcome::{settle, Outcome, Settle};

/// `gather` for a tuple of futures of different types: `(a, b, c).gather().await` gives
/// `(a_out, b_out, c_out)`. Implemented for tuples of 1 to 12 futures.
///
/// # Panics
///
/// A panic in one future propagates; the others are dropped as it unwinds.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future in the tuple.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::GatherTuple;
///
/// let (name, age) = futures::executor::block_on((async { "Ada" }, async { 36_u8 }).gather());
/// assert_eq!((name, age), ("Ada", 36));
/// ```
pub trait GatherTuple {
    /// The tuple of outputs.
    type Output;
    /// The future that runs them.
    type Future: Future<Output = Self::Output>;
    /// Runs every future concurrently and returns their outputs in position order.
    fn gather(self) -> Self::Future;
}

/// `try_gather` for a tuple of futures of different types that share an error type: the
/// tuple of values, or the first error (the other futures are dropped as soon as the returned
/// future completes). Implemented for tuples of 1 to 12 futures.
///
/// # Errors
///
/// The first error a future returns.
///
/// # Panics
///
/// A panic in one future propagates.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future in the tuple.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::TryGatherTuple;
///
/// let out = futures::executor::block_on(
///     (async { Ok::<_, String>(1) }, async { Err::<&str, _>("down".to_owned()) }).try_gather(),
/// );
/// assert_eq!(out, Err("down".to_owned()));
/// ```
pub trait TryGatherTuple {
    /// The tuple of values.
    type Ok;
    /// The shared error type.
    type Error;
    /// The future that runs them.
    type Future: Future<Output = Result<Self::Ok, Self::Error>>;
    /// Runs every future concurrently: the values in position order, or the first error.
    fn try_gather(self) -> Self::Future;
}

/// `gather_settled` for a tuple of fallible futures of different types: each position gets
/// its [`Outcome`] (value, error or panic). Implemented for tuples of 1 to 12 futures.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future in the tuple.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::SettleTuple;
///
/// let (a, b) = futures::executor::block_on(
///     (async { Ok::<_, ()>(1) }, async { Err::<u8, _>("no") }).gather_settled(),
/// );
/// assert!(a.is_ok() && b.is_err());
/// ```
pub trait SettleTuple {
    /// The tuple of outcomes.
    type Output;
    /// The future that runs them.
    type Future: Future<Output = Self::Output>;
    /// Runs every future to the end and returns how each one ended, in position order.
    fn gather_settled(self) -> Self::Future;
}

macro_rules! impl_tuples {
    ($(($F:ident $T:ident $E:ident))+) => {
        impl<$($F: Future),+> GatherTuple for ($($F,)+) {
            type Output = ($($F::Output,)+);
            type Future = <($($F,)+) as Join>::Future;

            fn gather(self) -> Self::Future {
                Join::join(self)
            }
        }

        impl<Err, $($F, $T),+> TryGatherTuple for ($($F,)+)
        where
            $($F: Future<Output = Result<$T, Err>>,)+
        {
            type Ok = ($($T,)+);
            type Error = Err;
            type Future = <($($F,)+) as TryJoin>::Future;

            fn try_gather(self) -> Self::Future {
                TryJoin::try_join(self)
            }
        }

        impl<$($F, $T, $E),+> SettleTuple for ($($F,)+)
        where
            $($F: Future<Output = Result<$T, $E>>,)+
        {
            type Output = ($(Outcome<$T, $E>,)+);
            type Future = <($(Settle<$F>,)+) as Join>::Future;

            #[allow(non_snake_case, reason = "the tuple's fields are named after their types")]
            fn gather_settled(self) -> Self::Future {
                let ($($F,)+) = self;
                Join::join(($(settle($F),)+))
            }
        }
    };
}

impl_tuples! { (A TA EA) }
impl_tuples! { (A TA EA) (B TB EB) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) (G TG EG) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) (G TG EG) (H TH EH) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) (G TG EG) (H TH EH) (I TI EI) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) (G TG EG) (H TH EH) (I TI EI) (J TJ EJ) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) (G TG EG) (H TH EH) (I TI EI) (J TJ EJ) (K TK EK) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) (G TG EG) (H TH EH) (I TI EI) (J TJ EJ) (K TK EK) (L TL EL) }
impl_tuples! { (A TA EA) (B TB EB) (C TC EC) (D TD ED) (F TF EF) (G TG EG) (H TH EH) (I TI EI) (J TJ EJ) (K TK EK) (L TL EL) (M TM EM) }
