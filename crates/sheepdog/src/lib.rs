//! Structured concurrency that brings every task home, on tokio, smol or async-std.
//!
//! Every task sheepdog starts belongs to a scope. It finishes or is cancelled before that scope
//! returns, and its result, error or panic reaches the caller: nothing is detached behind your
//! back, nothing is lost. On that footing sheepdog carries what AnyIO and Trio give Python and
//! what lionagi builds on them for LLM work: `gather`, `race`, `bounded_map`,
//! `CompletionStream`, `retry`, task groups, cancel scopes with deadlines and shields, fair
//! locks and limiters, a rate-limited executor with request and token budgets, and a flow (DAG)
//! executor.
//!
//! This is the crate to depend on. It re-exports [`sheepdog_core`] and the runtime adapters
//! that cargo features enable, and names one of them [`DefaultRuntime`].
//!
//! # A complete example
//!
//! Forty calls to a flaky, rate-limited service: at most eight in flight, each attempt under a
//! deadline, failures retried with back-off, results in input order.
//!
//! ```
//! # #[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))] {
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use sheepdog::cancel::fail_after;
//! use sheepdog::combinators::{bounded_map, retry, RetryPolicy};
//! use sheepdog::rate::RateLimiter;
//!
//! #[derive(Debug)]
//! enum CallError {
//!     Busy,
//!     TimedOut,
//! }
//!
//! // A stand-in for a network call: every fifth call is refused.
//! static CALLS: AtomicU32 = AtomicU32::new(0);
//! async fn summarize(doc: u32) -> Result<String, CallError> {
//!     sheepdog::time::sleep(Duration::from_millis(1)).await;
//!     if CALLS.fetch_add(1, Ordering::Relaxed) % 5 == 4 {
//!         return Err(CallError::Busy);
//!     }
//!     Ok(format!("summary of doc {doc}"))
//! }
//!
//! // The service allows 200 requests and 100,000 tokens per second.
//! let limiter = RateLimiter::builder()
//!     .limit_requests(200)
//!     .limit_tokens(100_000)
//!     .capacity_refresh_time(Duration::from_secs(1))
//!     .concurrency_limit(8)
//!     .build()
//!     .expect("valid limits");
//! let policy = RetryPolicy::builder()
//!     .attempts(4)
//!     .base_delay(Duration::from_millis(2))
//!     .build()
//!     .expect("a valid policy");
//!
//! let summaries = bounded_map(1..=40, 16, |doc| {
//!     let (limiter, policy) = (&limiter, policy.clone());
//!     async move {
//!         let attempt = || async move {
//!             // Wait for budget (an estimated 300 tokens) and a slot, then call with a deadline.
//!             let call = fail_after(Duration::from_millis(500), summarize(doc));
//!             match limiter.submit(300, call).await {
//!                 Ok(Ok(result)) => result,
//!                 Ok(Err(_elapsed)) => Err(CallError::TimedOut),
//!                 Err(closed) => unreachable!("the limiter stays open: {closed}"),
//!             }
//!         };
//!         retry(attempt, policy).await
//!     }
//! })
//! .expect("a limit above zero");
//!
//! let summaries = sheepdog::block_on(summaries);
//! assert_eq!(summaries.len(), 40);
//! assert!(summaries.iter().all(Result::is_ok)); // every refusal was retried
//! assert_eq!(summaries[0].as_deref().ok(), Some("summary of doc 1"));
//! # }
//! ```
//!
//! `cargo run -p sheepdog-examples --example demo` in the repository runs the same pattern at
//! scale against a simulated LLM provider that enforces its own rate limit, and proves it was
//! never exceeded.
//!
//! # What is here
//!
//! | module | holds | seed / AnyIO names |
//! |---|---|---|
//! | [`combinators`] | [`gather`](combinators::gather), [`try_gather`](combinators::try_gather), [`gather_settled`](combinators::gather_settled), [`race`](combinators::race), [`race_ok`](combinators::race_ok), [`bounded_map`](combinators::bounded_map) (+ try, settled, stream), [`CompletionStream`](combinators::CompletionStream), [`retry`](combinators::retry) with [`RetryPolicy`](combinators::RetryPolicy); in the caller's task, on any executor | `gather`, `race`, `bounded_map`, `CompletionStream`, `retry` |
//! | [`rate`] | [`RateLimiter`](rate::RateLimiter) (alias [`RateLimitedExecutor`](rate::RateLimitedExecutor)): request and token budgets per interval (sliding or fixed window), a bounded FIFO queue, a concurrency limit, settlement of real usage | `iModel(limit_requests=.., limit_tokens=.., ..)` |
//! | [`flow`] | [`FlowBuilder`](flow::FlowBuilder) and [`Flow`](flow::Flow): a DAG of named async operations, `max_concurrent`, failure policies, `keep_only` cleanup, progress events | `Session.flow`, `flow_with_cleanup` |
//! | [`group`] | [`task_group`](group::task_group) (in-task, children may borrow), [`spawn_group`](group::spawn_group) (parallel), `start`/`started`, [`GroupError`](group::GroupError) | `create_task_group`, `TaskGroup` |
//! | [`cancel`] | [`CancelScope`](cancel::CancelScope), [`fail_after`](cancel::fail_after), [`move_on_after`](cancel::move_on_after), [`shield`](cancel::shield), [`with_cleanup`](cancel::with_cleanup), [`checkpoint`](cancel::checkpoint), [`current_effective_deadline`](cancel::current_effective_deadline) | `CancelScope`, `fail_after`, `move_on_after` |
//! | [`sync`] | fair [`Lock`](sync::Lock), [`Semaphore`](sync::Semaphore), [`CapacityLimiter`](sync::CapacityLimiter), [`Event`](sync::Event), [`Condition`](sync::Condition), bounded [`channel`](sync::channel)s | AnyIO's synchronization primitives, memory object streams |
//! | [`time`] | [`sleep`](time::sleep), [`sleep_until`](time::sleep_until), [`now`](time::now) on the ambient runtime's clock | `anyio.sleep` |
//! | [`runtime`] | the [`Runtime`] contract, sheepdog's [`JoinHandle`] (panics kept, abort on drop) and [`JoinError`], the ambient runtime ([`runtime::spawn`], [`runtime::current`]) | |
//! | `testing` (feature `test-util`) | `VirtualRuntime`: deterministic, virtual time | |
//!
//! What every item shares:
//!
//! | when | what happens |
//! |---|---|
//! | a combinator, group or flow returns | none of the work it started is still running |
//! | it is dropped or its scope is cancelled | everything it owns is dropped, at its current `.await` |
//! | a child fails | `try_*` forms and groups drop the siblings and return the error as it is |
//! | a child panics | the panic reaches the caller with its payload (settled forms keep it in the slot) |
//! | an argument cannot work (`limit == 0`, a zero budget) | a typed error, before anything runs |
//!
//! # Runtimes and features
//!
//! | feature | adapter | type |
//! |---|---|---|
//! | `smol` (default) | `sheepdog-smol` | [`smol::SmolRuntime`] (smol's global executor, or one you supply) |
//! | `tokio` | `sheepdog-tokio` | [`tokio::TokioRuntime`] |
//! | `async-std` | `sheepdog-async-std` | [`async_std::AsyncStdRuntime`] (async-std is discontinued upstream; prefer smol) |
//! | `test-util` | — | [`testing::VirtualRuntime`], a deterministic virtual-time runtime |
//!
//! [`block_on`] runs a future on the [`DefaultRuntime`]. Inside `#[tokio::main]` (with the
//! `tokio` feature) nothing is needed: sheepdog finds the tokio runtime it runs on.
//!
//! Features are additive, so a build can end up with several runtimes (an application on the
//! default smol, a dependency asking for tokio). Then every enabled adapter is available under
//! its module, and [`DefaultRuntime`] is chosen by a fixed precedence: **tokio, then async-std,
//! then smol**. A runtime somebody enabled explicitly wins over the default one. Code that must
//! run on a particular runtime names its type instead of `DefaultRuntime`.
//!
//! With no runtime feature at all, everything that does not spawn still works on any executor
//! (timers fall back to async-io); `DefaultRuntime` and [`block_on`] are then absent.
//!
//! # Guides
//!
//! In the repository's `docs/` folder: getting started, concepts (structured concurrency, the
//! scope tree, what dropping means), coming from AnyIO and lionagi (every seed name mapped,
//! what differs and why, performance guidelines), and one page per area with its semantics
//! tables: cancellation, task groups, combinators, synchronization, rate limiting, flows, the
//! runtime contract, testing and performance.

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

#[doc(inline)]
pub use sheepdog_core::*;

/// The tokio adapter (feature `tokio`).
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio {
    pub use sheepdog_tokio::*;
}

/// The smol adapter (feature `smol`, on by default).
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
pub mod smol {
    pub use sheepdog_smol::*;
}

/// The async-std adapter (feature `async-std`). async-std is discontinued upstream; prefer smol.
#[cfg(feature = "async-std")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-std")))]
pub mod async_std {
    pub use sheepdog_async_std::*;
}

/// The runtime selected by cargo features: tokio, else async-std, else smol.
#[cfg(feature = "tokio")]
pub type DefaultRuntime = sheepdog_tokio::TokioRuntime;

/// The runtime selected by cargo features: tokio, else async-std, else smol.
#[cfg(all(feature = "async-std", not(feature = "tokio")))]
pub type DefaultRuntime = sheepdog_async_std::AsyncStdRuntime;

/// The runtime selected by cargo features: tokio, else async-std, else smol.
#[cfg(all(feature = "smol", not(feature = "tokio"), not(feature = "async-std")))]
pub type DefaultRuntime = sheepdog_smol::SmolRuntime;

/// Returns the [`DefaultRuntime`].
///
/// - tokio: the tokio runtime the calling thread is inside, or else a process-wide
///   multi-thread runtime created on first use;
/// - async-std: its global executor;
/// - smol: its global executor.
///
/// # Panics
///
/// With tokio, panics if the process-wide runtime cannot be created (tokio reports an I/O
/// error, for example when no thread can be spawned).
///
/// # Examples
///
/// ```
/// use sheepdog::Runtime;
///
/// let rt = sheepdog::default_runtime();
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// ```
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub fn default_runtime() -> DefaultRuntime {
    #[cfg(feature = "tokio")]
    {
        use std::sync::OnceLock;
        static PROCESS_WIDE: OnceLock<sheepdog_tokio::TokioRuntime> = OnceLock::new();
        sheepdog_tokio::TokioRuntime::current().unwrap_or_else(|_| {
            PROCESS_WIDE
                .get_or_init(|| {
                    sheepdog_tokio::TokioRuntime::new_multi_thread(
                        std::thread::available_parallelism().map_or(2, |n| n.get()),
                    )
                    .expect("sheepdog: cannot create the process-wide tokio runtime")
                })
                .clone()
        })
    }
    #[cfg(all(feature = "async-std", not(feature = "tokio")))]
    {
        sheepdog_async_std::AsyncStdRuntime
    }
    #[cfg(all(feature = "smol", not(feature = "tokio"), not(feature = "async-std")))]
    {
        sheepdog_smol::SmolRuntime::global()
    }
}

/// Runs `future` to completion on the [`DefaultRuntime`], blocking the current thread.
///
/// This is the entry point for examples, tests and `main` functions.
///
/// # Panics
///
/// Propagates a panic of `future`. With tokio, panics when called from inside a tokio runtime
/// (tokio forbids blocking there) or when the process-wide runtime cannot be created.
///
/// # Examples
///
/// ```
/// assert_eq!(sheepdog::block_on(async { "done" }), "done");
/// ```
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    Runtime::block_on(&default_runtime(), future)
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The getting-started guide's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/getting-started.md")]
struct GettingStartedDoctests;

/// The concepts guide's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/concepts.md")]
struct ConceptsDoctests;
