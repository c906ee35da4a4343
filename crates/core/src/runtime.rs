//! The [`Runtime`] contract, sheepdog's [`JoinHandle`], and the ambient runtime context.
//!
//! sheepdog never assumes an executor. Everything that needs one (spawning, timers, the clock)
//! goes through the small [`Runtime`] trait, which the adapter crates implement for tokio
//! (`sheepdog-tokio`), smol (`sheepdog-smol`) and async-std (`sheepdog-async-std`), and which
//! [`testing::VirtualRuntime`](crate::testing) implements with virtual time.
//!
//! # The ambient context
//!
//! While sheepdog polls a future — inside [`Runtime::block_on`], inside every task spawned
//! through sheepdog, and inside [`with_runtime`] — it makes the runtime visible to the code
//! running in that future, through a thread-local that is swapped in before each poll and out
//! after it. [`current`] reads it; [`spawn`] and [`time::sleep`](crate::time::sleep) use it.
//! Spawned children carry the runtime they were spawned on.
//!
//! With no ambient runtime, [`time`](crate::time) falls back to async-io's timer, so sleeps and
//! deadlines also work under `futures::executor::block_on` or any other executor.

pub(crate) mod context;
mod handle;
mod inline;
mod task;
pub(crate) mod timer_slot;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

pub use context::{
    current, register_detector, spawn, try_current, try_spawn, with_handle, with_runtime,
    with_static_runtime, NoRuntime, StaticRuntime, WithRuntime, WithStaticRuntime,
};
pub use handle::RuntimeHandle;
pub use task::{
    AbortHandle, CatchPanic, JoinError, JoinHandle, Panic, RawAbortHandle, RawJoinHandle,
    TaskFuture,
};

use crate::time::{BoxTimer, TimerSlot};

/// A type-erased task handed to [`Runtime::spawn_boxed`].
///
/// It wraps a user future together with sheepdog's bookkeeping: it catches panics (so it never
/// unwinds into the runtime), honours [`JoinHandle::abort`], installs the ambient context, and
/// reports its outcome to the [`JoinHandle`].
pub type BoxTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What sheepdog needs from an async runtime: spawning, a timer and a clock.
///
/// This trait is a contract. Every adapter implements it identically, and the conformance suite
/// in the `sheepdog-tests` package checks each one against the points below.
///
/// # Spawning
///
/// [`spawn_boxed`](Runtime::spawn_boxed) receives a [`BoxTask`] that sheepdog has already wrapped:
/// panics are caught inside it, abort requests are honoured inside it, and its result travels to
/// the [`JoinHandle`] through sheepdog's own state. The runtime must
///
/// - poll the task until it returns `Ready`, never after;
/// - drop it (without polling it to completion) if the runtime shuts down first — sheepdog then
///   reports [`JoinError::Cancelled`] to the handle;
/// - never require anything of the task's completion: the runtime's own join handle, if any, is
///   dropped or detached at once.
///
/// Because the wrapping is done once, in the core, every adapter gives the same semantics:
///
/// - awaiting a [`JoinHandle<T>`] gives `Ok(T)`, or `Err(JoinError)` if the task panicked
///   (the error carries the payload; it is never re-raised in the awaiter) or was cancelled;
/// - [`JoinHandle::abort`] cancels the task: its future is dropped at the runtime's next
///   opportunity to poll it;
/// - **dropping a `JoinHandle` aborts the task**, on every runtime (as smol does; tokio and
///   async-std would detach). A task that should outlive its handle must say so with
///   [`JoinHandle::detach`].
///
/// # Time
///
/// [`timer`](Runtime::timer) returns a resettable timer that fires no earlier than its deadline
/// as read by [`now`](Runtime::now). `now` and the timers of one runtime must agree: sheepdog's
/// virtual-time runtime moves both together, and [`time::sleep`](crate::time::sleep) re-checks
/// `now` after a timer fires, so a sleep never ends early.
///
/// # Handles and ownership
///
/// [`handle`](Runtime::handle) returns a [`RuntimeHandle`] that does **not** keep the runtime
/// alive and that works from any thread. sheepdog stores handles in the ambient context and in
/// every spawned task; if they owned the runtime, a task that never finishes would keep its own
/// executor alive forever.
///
/// # Implementing
///
/// ```
/// use std::time::Instant;
/// use sheepdog_core::runtime::{BoxTask, Runtime, RuntimeHandle};
/// use sheepdog_core::time::{AsyncIoTimer, BoxTimer};
///
/// /// Runs every task on a fresh OS thread (a toy; do not use this).
/// #[derive(Clone, Debug)]
/// struct ThreadPerTask;
///
/// impl Runtime for ThreadPerTask {
///     fn spawn_boxed(&self, task: BoxTask) {
///         std::thread::spawn(move || futures::executor::block_on(task));
///     }
///     fn timer(&self, deadline: Instant) -> BoxTimer {
///         Box::pin(AsyncIoTimer::at(deadline))
///     }
///     fn handle(&self) -> RuntimeHandle {
///         RuntimeHandle::from_static(&ThreadPerTask)
///     }
///     fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
///         futures::executor::block_on(sheepdog_core::runtime::with_runtime(self, future))
///     }
/// }
///
/// let rt = ThreadPerTask;
/// let answer = rt.block_on(async {
///     let child = sheepdog_core::runtime::spawn(async { 6 * 7 });
///     child.await.unwrap()
/// });
/// assert_eq!(answer, 42);
/// ```
pub trait Runtime: Send + Sync + 'static {
    /// Spawns a sheepdog-wrapped task and lets it run to completion detached from any
    /// runtime-specific join handle.
    ///
    /// Users call [`spawn`](Runtime::spawn) (or [`runtime::spawn`](spawn)) instead.
    fn spawn_boxed(&self, task: BoxTask);

    /// Spawns a sheepdog-wrapped task without boxing it.
    ///
    /// The default boxes the task and calls [`spawn_boxed`](Runtime::spawn_boxed); adapters
    /// override it to hand the future to their executor directly, saving an allocation per task.
    fn spawn_unboxed<F>(&self, task: F)
    where
        Self: Sized,
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_boxed(Box::pin(task));
    }

    /// Returns a timer that fires at `deadline` (never before, as read by
    /// [`now`](Runtime::now)) and can be re-armed.
    fn timer(&self, deadline: Instant) -> BoxTimer;

    /// Stores a timer that fires at `deadline` (as [`timer`](Runtime::timer) makes one) in
    /// `slot`, replacing the timer it held.
    ///
    /// Cancel scopes keep their deadline's timer in a slot inside the region's own future. The
    /// default boxes [`timer`](Runtime::timer)'s timer into it; adapters whose timer fits in a
    /// [`TimerSlot`] override this to store it inline, saving an allocation per waiting
    /// region.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use std::pin::pin;
    /// use std::time::Duration;
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    /// use sheepdog_core::time::TimerSlot;
    ///
    /// let rt = VirtualRuntime::new();
    /// rt.block_on(async {
    ///     let mut slot = pin!(TimerSlot::new());
    ///     rt.timer_in(rt.now() + Duration::from_secs(5), slot.as_mut());
    ///     slot.await; // five virtual seconds
    /// });
    /// # }
    /// ```
    fn timer_in(&self, deadline: Instant, slot: Pin<&mut TimerSlot>) {
        slot.set_boxed(self.timer(deadline));
    }

    /// Whether this runtime's timers are async-io's, on the system clock (smol, async-std).
    ///
    /// async-io registers every timer with its reactor thread, at the cost of a few syscalls,
    /// so cancel scopes on such a runtime do not take one [`timer`](Runtime::timer) each: they
    /// share one async-io timer per thread, re-armed for the earliest deadline. Return `true`
    /// only if [`timer`](Runtime::timer) is async-io's and [`now`](Runtime::now) is the system
    /// clock. The default is `false`: every deadline gets a timer from
    /// [`timer`](Runtime::timer).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    ///
    /// // Virtual time has timers of its own: each scope deadline gets one.
    /// assert!(!VirtualRuntime::new().async_io_timers());
    /// # }
    /// ```
    fn async_io_timers(&self) -> bool {
        false
    }

    /// Reads this runtime's clock.
    ///
    /// The default reads the system's monotonic clock. Virtual-time runtimes override it.
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Whether [`now`](Runtime::now) reads the system's monotonic clock (what `Instant::now`
    /// returns), so that sheepdog may read that clock by cheaper means where the precision of
    /// `now` is not needed.
    ///
    /// The rate limiter uses it: where the clock is the system's, an admission reads the
    /// kernel's coarse clock (a few nanoseconds, bounds a few milliseconds wide) and may be
    /// admitted without the limiter's lock, as it is outside any runtime; elsewhere it reads
    /// [`now`](Runtime::now) precisely, so virtual time stays exact. Return `true` only if
    /// `now` is `Instant::now` (smol, async-std, tokio: sheepdog's tokio adapter reads the
    /// system clock, not tokio's pausable one). The default is `false`, which is always safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    ///
    /// // Virtual time is not the system's clock.
    /// assert!(!VirtualRuntime::new().system_clock());
    /// # }
    /// ```
    fn system_clock(&self) -> bool {
        false
    }

    /// Returns a handle to this runtime that does not keep the runtime alive and that works
    /// from any thread.
    ///
    /// This is what [`current`] returns, and what sheepdog stores in the ambient context and in
    /// spawned tasks unless the adapter chooses a cheaper one for its own tasks.
    fn handle(&self) -> RuntimeHandle;

    /// Runs `future` to completion on this runtime, blocking the current thread, with this
    /// runtime as the ambient runtime.
    ///
    /// # Panics
    ///
    /// Implementations may panic when called from inside an asynchronous context of the same
    /// runtime (tokio does); a panic in `future` itself propagates to the caller.
    fn block_on<F: Future>(&self, future: F) -> F::Output
    where
        Self: Sized;

    /// Spawns `future` on this runtime and returns a handle to its result.
    ///
    /// The task runs with this runtime as its ambient runtime. Dropping the returned handle
    /// aborts the task; see [`JoinHandle::detach`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    ///
    /// let rt = VirtualRuntime::new();
    /// let out = rt.block_on(async { rt.spawn(async { 1 + 1 }).await });
    /// assert_eq!(out.unwrap(), 2);
    /// # }
    /// ```
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        Self: Sized,
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (task, handle) = TaskFuture::new(future, Some(self.handle()));
        self.spawn_unboxed(task);
        handle
    }
}

/// Spawns `future` on `runtime`, a `dyn Runtime` (for example the one [`current`] returns),
/// and returns a handle to its result.
///
/// The same as [`Runtime::spawn`], which needs a concrete runtime type. Dropping the returned
/// handle aborts the task.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::{self, Runtime};
/// use sheepdog_core::testing::VirtualRuntime;
///
/// VirtualRuntime::new().block_on(async {
///     let rt = runtime::current().expect("inside block_on");
///     assert_eq!(runtime::spawn_on(&*rt, async { "hi" }).await.unwrap(), "hi");
/// });
/// # }
/// ```
pub fn spawn_on<F>(runtime: &dyn Runtime, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_on_handle(runtime, runtime.handle(), future)
}

/// Spawns `future` on `runtime` with `ambient` as the task's ambient runtime.
pub(crate) fn spawn_on_handle<F>(
    runtime: &dyn Runtime,
    ambient: RuntimeHandle,
    future: F,
) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (task, handle) = TaskFuture::new(future, Some(ambient));
    runtime.spawn_boxed(Box::pin(task));
    handle
}

impl fmt::Debug for dyn Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Runtime")
    }
}

/// Yields once to the executor, letting other tasks run.
///
/// # Examples
///
/// ```
/// futures::executor::block_on(sheepdog_core::runtime::yield_now());
/// ```
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future returned by [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
