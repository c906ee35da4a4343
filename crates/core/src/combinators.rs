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
//! | [`bounded_map_stream`] | — | a panic propagates | a `Stream`, input order, bounded buffer |
//! | [`CompletionStream`] | `CompletionStream(limit=…)` | a panic propagates | `(index, output)` in completion order; drop cancels the rest |
//! | [`retry`] | `retry` | per [`RetryPolicy`] | `Result<T, RetryError<E>>` |
//!
//! All of them share one driver: futures in boxed slots (reused, so a bounded combinator
//! allocates `O(limit)` slots), each slot with its own waker, so a wake re-polls only the
//! future that was woken. See `docs/combinators.md` for the design decisions.

mod bounded;
mod completion;
mod gather;
mod inflight;
mod outcome;
mod race;
mod retry;
mod tuple;

pub use bounded::{
    bounded_map, bounded_map_settled, bounded_map_stream, try_bounded_map, BoundedMapStream,
    ZeroLimit,
};
pub use completion::{CompletionStream, Spawning};
pub use gather::{gather, gather_settled, try_gather};
pub use outcome::{settle, Outcome, Settle};
pub use race::{race, race_ok, EmptyRace, RaceOkError};
pub use retry::{
    retry, AttemptError, GiveUp, NoHint, PolicyError, Retry, RetryError, RetryHint, RetryPolicy,
    RetryPolicyBuilder,
};
pub use tuple::{GatherTuple, SettleTuple, TryGatherTuple};
