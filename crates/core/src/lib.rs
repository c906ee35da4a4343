//! Structured concurrency that brings every task home, on any executor.
//!
//! `sheepdog-core` holds everything in sheepdog that does not depend on a particular async
//! runtime. Most users depend on the `sheepdog` facade crate instead, which re-exports this crate
//! and picks a runtime adapter by cargo feature.
//!
//! # What is here
//!
//! | module | holds |
//! |---|---|
//! | [`runtime`] | the [`Runtime`] contract that adapters implement, sheepdog's [`JoinHandle`] and [`JoinError`], the ambient runtime ([`runtime::current`], [`runtime::spawn`]) |
//! | [`time`] | [`sleep`](time::sleep), [`sleep_until`](time::sleep_until), [`now`](time::now) through the ambient runtime, with async-io's timer as the fallback |
//! | [`cancel`] | [`CancelScope`](cancel::CancelScope), [`fail_after`](cancel::fail_after), [`move_on_after`](cancel::move_on_after), [`shield`](cancel::shield), [`checkpoint`](cancel::checkpoint), [`current_effective_deadline`](cancel::current_effective_deadline), [`with_cleanup`](cancel::with_cleanup) |
//! | [`flow`] | the flow executor: a DAG of named async operations with `max_concurrent`, failure policies, `keep_only` cleanup and progress events |
//! | [`group`] | task groups: [`task_group`](group::task_group) (in-task, borrowing), [`spawn_group`](group::spawn_group) (parallel), `start`/`started`, [`GroupError`](group::GroupError) |
//! | [`combinators`] | [`gather`](combinators::gather) / [`try_gather`](combinators::try_gather) / [`gather_settled`](combinators::gather_settled), [`race`](combinators::race) / [`race_ok`](combinators::race_ok), [`bounded_map`](combinators::bounded_map) (+ try, settled, stream), [`CompletionStream`](combinators::CompletionStream), [`retry`](combinators::retry) with [`RetryPolicy`](combinators::RetryPolicy) — in-task, on any executor |
//! | [`sync`] | fair [`Lock`](sync::Lock), [`Semaphore`](sync::Semaphore), [`CapacityLimiter`](sync::CapacityLimiter), [`Event`](sync::Event), [`Condition`](sync::Condition), bounded [`channel`](sync::channel)s — FIFO with direct hand-off, cancel-safe |
//! | [`rate`] | [`RateLimiter`](rate::RateLimiter) (alias `RateLimitedExecutor`): request and token budgets per interval (sliding or fixed window), a bounded FIFO queue, a concurrency limit, reservation with settlement, provider feedback (pause, remaining budgets), graceful shutdown |
//! | `testing` (feature `test-util`) | [`VirtualRuntime`](testing::VirtualRuntime): a deterministic runtime with virtual time |
//!
//! # Semantics every runtime shares
//!
//! | event | what the [`JoinHandle`] reports |
//! |---|---|
//! | the task returns `v` | `Ok(v)` |
//! | the task panics | `Err(JoinError::Panic(..))` with the payload; the awaiter does not panic |
//! | `abort()` before the task finished | `Err(JoinError::Cancelled)`; the future is dropped |
//! | the runtime shuts down first | `Err(JoinError::Cancelled)` |
//! | the handle is dropped | the task is aborted (use `detach()` to let it run) |
//!
//! # Runtime support
//!
//! | runtime | adapter crate | type |
//! |---|---|---|
//! | tokio (current-thread and multi-thread) | `sheepdog-tokio` | `TokioRuntime` |
//! | smol / async-executor | `sheepdog-smol` | `SmolRuntime` |
//! | async-std (discontinued upstream; smol is its successor) | `sheepdog-async-std` | `AsyncStdRuntime` |
//! | virtual time, for tests | this crate, feature `test-util` | `testing::VirtualRuntime` |
//!
//! # Feature flags
//!
//! - `test-util`: the [`testing`] module.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "test-util")] {
//! use std::time::Duration;
//! use sheepdog_core::runtime::{self, Runtime};
//! use sheepdog_core::testing::VirtualRuntime;
//! use sheepdog_core::time;
//!
//! let rt = VirtualRuntime::new();
//! let total = rt.block_on(async {
//!     let slow = runtime::spawn(async {
//!         time::sleep(Duration::from_secs(60)).await;
//!         2
//!     });
//!     40 + slow.await.unwrap()
//! });
//! assert_eq!(total, 42);
//! assert_eq!(rt.clock().elapsed(), Duration::from_secs(60));
//! # }
//! ```

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
// `unsafe` is denied everywhere but in `runtime::inline`, `runtime::timer_slot`,
// `cancel::lent`, `combinators::pinned`, `combinators::wakers` and `group::cell` (see their
// SAFETY comments and miri-run tests).
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

pub mod cancel;
pub mod combinators;
pub mod flow;
pub mod group;
#[cfg(all(test, shuttle))]
mod model;
pub mod rate;
mod ready;
pub mod runtime;
mod shim;
pub mod sync;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
pub mod time;

pub use runtime::{JoinError, JoinHandle, Runtime};
