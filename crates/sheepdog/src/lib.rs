//! Structured concurrency that brings every task home, on tokio, smol or async-std.
//!
//! `sheepdog` is the crate applications and libraries depend on. It re-exports
//! [`sheepdog_core`] (everything executor-independent) and the runtime adapters enabled by cargo
//! features, and names one of them [`DefaultRuntime`].
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
//! Features are additive, so a build can end up with several runtimes (an application on the
//! default smol, a dependency asking for tokio). Then every enabled adapter is available under
//! its module, and [`DefaultRuntime`] is chosen by a fixed precedence: **tokio, then async-std,
//! then smol**. A runtime somebody enabled explicitly wins over the default one. Code that must
//! run on a particular runtime names its type instead of `DefaultRuntime`.
//!
//! With no runtime feature at all, everything that does not spawn still works on any executor
//! (timers fall back to async-io); `DefaultRuntime` and [`block_on`] are then absent.
//!
//! # Example
//!
//! ```
//! # #[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))] {
//! use std::time::Duration;
//!
//! let answer = sheepdog::block_on(async {
//!     let child = sheepdog::runtime::spawn(async {
//!         sheepdog::time::sleep(Duration::from_millis(1)).await;
//!         42
//!     });
//!     child.await.unwrap()
//! });
//! assert_eq!(answer, 42);
//! # }
//! ```

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
