//! sheepdog's [`Runtime`] for async-std.
//!
//! **async-std is discontinued upstream** (its README says so, and RustSec advisory
//! RUSTSEC-2025-0052 marks it unmaintained); smol is its successor, and `sheepdog-smol` is the
//! adapter to move to. This adapter is kept for programs that still run on async-std.
//!
//! It follows sheepdog's [`Runtime`] contract exactly; in particular, dropping a sheepdog
//! [`JoinHandle`](sheepdog_core::JoinHandle) aborts the task, although dropping an async-std
//! `JoinHandle` would detach it. Timers are async-io's, which async-std itself uses.
//!
//! # Examples
//!
//! ```
//! use sheepdog_core::runtime::Runtime;
//! use sheepdog_async_std::AsyncStdRuntime;
//!
//! let out = AsyncStdRuntime.block_on(async {
//!     sheepdog_core::runtime::spawn(async { 6 * 7 }).await.unwrap()
//! });
//! assert_eq!(out, 42);
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

use std::future::Future;
use std::time::Instant;

use sheepdog_core::runtime::{with_runtime, BoxTask, Runtime, RuntimeHandle};
use sheepdog_core::time::{AsyncIoTimer, BoxTimer};

/// sheepdog's [`Runtime`] on async-std's global executor.
///
/// It holds nothing: every value refers to the same global runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsyncStdRuntime;

impl Runtime for AsyncStdRuntime {
    fn spawn_boxed(&self, task: BoxTask) {
        self.spawn_unboxed(task);
    }

    fn spawn_unboxed<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // async-std's handle detaches on drop; sheepdog's handle rules.
        drop(async_std::task::spawn(task));
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        Box::pin(AsyncIoTimer::at(deadline))
    }

    fn async_io_timers(&self) -> bool {
        true
    }

    fn system_clock(&self) -> bool {
        // `now` is the default, `Instant::now`.
        true
    }

    fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::from_static(&AsyncStdRuntime)
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        async_std::task::block_on(with_runtime(self, future))
    }
}
