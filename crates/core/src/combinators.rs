//! Combinators: the seed's `gather`, `race`, `bounded_map`, `CompletionStream` and `retry`,
//! with structured-concurrency semantics, on any executor.
//!
//! Everything here runs its futures **in the calling task** (no spawning, no `Send` or
//! `'static` needed, borrowing allowed), except [`CompletionStream::spawned`], which spawns on
//! the ambient runtime on purpose. Cancellation is dropping: cancelling the scope around a
//! combinator, or dropping its future or stream, drops every future it holds, at once.
//!
//! | sheepdog | seed / lionagi | on failure | output |
//! |---|---|---|---|
//! | [`gather`] | `gather` | a panic propagates, the rest are dropped | `Vec` in input order |
//! | [`try_gather`] | `gather` | the first `Err` is returned bare, the rest are dropped | `Result<Vec<T>, E>` |
//! | [`gather_settled`] | `gather(return_exceptions=True)` | caught into its slot (errors and panics); outside cancellation still drops all | `Vec<Outcome>` |
//! | [`GatherTuple`], [`TryGatherTuple`], [`SettleTuple`] | `gather` of different types | as above | tuples |
//! | [`race`] | `race` | the first completion wins, `Ok` or `Err` | `Result<Output, EmptyRace>` |
//! | [`race_ok`] | — (futures-concurrency `race_ok`) | the first `Ok` wins, else all errors | `Result<T, RaceOkError<E>>` |
//! | [`bounded_map`], [`try_bounded_map`], [`bounded_map_settled`] | `bounded_map(limit=…)` | as gather / try / settled | in input order, `O(limit)` futures alive |
//! | [`bounded_map_stream`] | — | a panic propagates | a `Stream` in, a `Stream` out, input order, bounded buffer |
//! | [`CompletionStream`] | `CompletionStream(limit=…)` | a panic propagates | `(index, output)` in completion order; drop cancels the rest |
//! | [`CompletionStream::settled`] | `CompletionStream` + `return_exceptions=True` | caught into its item (errors and panics) | `(index, Outcome)` in completion order |
//! | [`retry`] | `retry` | per [`RetryPolicy`] | `Result<T, RetryError<E>>` |
//!
//! They share two drivers, both keeping the futures in place in pinned blocks of slots (not
//! one `Box` per future) and polling a new future with the combinator's own waker first, so a
//! future that is ready at once, or after one yield, costs no waker of its own; a future that
//! stays pending gets a slot waker, so a wake re-polls only the future that was woken. The
//! all-at-once combinators (`gather`, `race` and their forms) keep each output next to its
//! future; the bounded ones reuse `limit` slots. See `docs/combinators.md` for the design
//! decisions.

mod bounded;
mod completion;
mod gather;
mod inflight;
mod join;
mod outcome;
mod pinned;
mod race;
mod retry;
mod tuple;
mod wakers;

pub use bounded::{
    bounded_map, bounded_map_settled, bounded_map_stream, try_bounded_map, BoundedMapStream,
    ZeroLimit,
};
pub use completion::{CompletionStream, Settling, Spawning};
pub use gather::{gather, gather_settled, try_gather};
pub use outcome::{settle, Outcome, Settle};
pub use race::{race, race_ok, EmptyRace, RaceOkError};
pub use retry::{
    retry, AttemptError, GiveUp, NoHint, PolicyError, Retry, RetryError, RetryHint, RetryPolicy,
    RetryPolicyBuilder,
};
pub use tuple::{GatherTuple, SettleTuple, TryGatherTuple};

/// What the drivers' unit tests share.
#[cfg(test)]
mod test_support {
    use std::cell::RefCell;
    use std::future::Future;
    use std::rc::Rc;
    use std::task::{Poll, Waker};

    use futures::future::poll_fn;

    /// Futures that finish one at a time, last first: each finishes when the one after it
    /// has, and wakes the one before it (through the waker it was last polled with).
    pub(super) fn chain(n: usize) -> Vec<impl Future<Output = usize>> {
        let turn = Rc::new(RefCell::new((n, vec![None::<Waker>; n])));
        (0..n)
            .map(|i| {
                let turn = Rc::clone(&turn);
                poll_fn(move |cx| {
                    let mut turn = turn.borrow_mut();
                    if turn.0 == i + 1 {
                        turn.0 = i;
                        if let Some(waker) = i.checked_sub(1).and_then(|p| turn.1[p].take()) {
                            waker.wake();
                        }
                        Poll::Ready(i)
                    } else {
                        turn.1[i] = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
            })
            .collect()
    }
}
