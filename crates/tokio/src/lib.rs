//! sheepdog's [`Runtime`] for tokio.
//!
//! [`TokioRuntime`] runs sheepdog on a tokio runtime: the one the caller is already inside
//! ([`TokioRuntime::current`]), one given by handle ([`TokioRuntime::from_handle`]), or one it
//! owns ([`TokioRuntime::new_current_thread`], [`TokioRuntime::new_multi_thread`],
//! [`TokioRuntime::from_runtime`]). Current-thread and multi-thread runtimes both work.
//!
//! It follows sheepdog's [`Runtime`] contract exactly; in particular, dropping a sheepdog
//! [`JoinHandle`] aborts the task, although dropping a tokio
//! `JoinHandle` would detach it.
//!
//! The tokio runtime must have its time driver enabled (`enable_time` or `enable_all` on the
//! builder; `#[tokio::main]` does this). The constructors here enable it.
//!
//! Building any `TokioRuntime` registers a detector with sheepdog, after which sheepdog code
//! running inside *any* tokio runtime (a `#[tokio::main]` function, a `tokio::spawn`ed task)
//! finds that runtime as its ambient runtime, with no wrapper. [`TokioRuntime::spawn`] spawns
//! the future as a plain tokio task and adapts tokio's own `JoinHandle`, so it costs what
//! `tokio::spawn` costs.
//!
//! # Examples
//!
//! ```
//! use sheepdog_core::runtime::Runtime;
//! use sheepdog_tokio::TokioRuntime;
//!
//! let rt = TokioRuntime::new_multi_thread(2).unwrap();
//! let out = rt.block_on(async {
//!     let child = sheepdog_core::runtime::spawn(async { 21 * 2 });
//!     child.await.unwrap()
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use sheepdog_core::cancel::InheritScope;
use sheepdog_core::runtime::{
    register_detector, with_handle, AbortHandle, BoxTask, JoinError, JoinHandle, RawAbortHandle,
    RawJoinHandle, Runtime, RuntimeHandle, StaticRuntime,
};
use sheepdog_core::time::{BoxTimer, Timer, TimerSlot};

/// There is no tokio runtime on this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoTokioRuntime;

impl fmt::Display for NoTokioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no tokio runtime is running on this thread: call `TokioRuntime::current()` from \
             inside a tokio runtime (for example within `#[tokio::main]`), pass a handle with \
             `TokioRuntime::from_handle`, or create one with `TokioRuntime::new_multi_thread`",
        )
    }
}

impl std::error::Error for NoTokioRuntime {}

/// sheepdog's [`Runtime`] on tokio.
///
/// Cloning is cheap. A `TokioRuntime` made by one of the `new_*` constructors or by
/// [`from_runtime`](TokioRuntime::from_runtime) owns its tokio runtime, which shuts down when
/// the last clone is dropped (in the background if that happens inside an async context);
/// one made by [`current`](TokioRuntime::current) or [`from_handle`](TokioRuntime::from_handle)
/// only refers to it.
#[derive(Clone)]
pub struct TokioRuntime {
    handle: Arc<TokioHandle>,
    owner: Option<Arc<Owner>>,
}

impl fmt::Debug for TokioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioRuntime")
            .field("flavor", &self.handle.handle.runtime_flavor())
            .field("owned", &self.owner.is_some())
            .finish()
    }
}

/// The non-owning part; this is what sheepdog's ambient context and spawned tasks hold.
#[derive(Debug)]
struct TokioHandle {
    handle: tokio::runtime::Handle,
}

struct Owner {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime from inside an async context panics in tokio; shut it down in
            // the background instead.
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                drop(runtime);
            }
        }
    }
}

impl TokioRuntime {
    /// Refers to the tokio runtime the calling thread is inside.
    ///
    /// # Errors
    ///
    /// [`NoTokioRuntime`] when called outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_tokio::TokioRuntime;
    ///
    /// assert!(TokioRuntime::current().is_err());
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// rt.block_on(async { assert!(TokioRuntime::current().is_ok()) });
    /// ```
    pub fn current() -> Result<Self, NoTokioRuntime> {
        tokio::runtime::Handle::try_current()
            .map(Self::from_handle)
            .map_err(|_| NoTokioRuntime)
    }

    /// Refers to the tokio runtime behind `handle`, without owning it.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_tokio::TokioRuntime;
    ///
    /// let tokio_rt = tokio::runtime::Builder::new_multi_thread().enable_time().build().unwrap();
    /// let rt = TokioRuntime::from_handle(tokio_rt.handle().clone());
    /// assert_eq!(rt.block_on(async { 7 }), 7);
    /// ```
    pub fn from_handle(handle: tokio::runtime::Handle) -> Self {
        register_tokio_detector();
        TokioRuntime {
            handle: Arc::new(TokioHandle { handle }),
            owner: None,
        }
    }

    /// Takes ownership of a tokio runtime; it shuts down when the last clone is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_tokio::TokioRuntime;
    ///
    /// let tokio_rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// let rt = TokioRuntime::from_runtime(tokio_rt);
    /// assert_eq!(rt.block_on(async { 7 }), 7);
    /// ```
    pub fn from_runtime(runtime: tokio::runtime::Runtime) -> Self {
        register_tokio_detector();
        TokioRuntime {
            handle: Arc::new(TokioHandle {
                handle: runtime.handle().clone(),
            }),
            owner: Some(Arc::new(Owner {
                runtime: Some(runtime),
            })),
        }
    }

    /// Creates and owns a current-thread tokio runtime with timers enabled.
    ///
    /// Its tasks run while some thread is inside [`block_on`](Runtime::block_on).
    ///
    /// # Errors
    ///
    /// The I/O error tokio reports when it cannot build the runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::runtime::Runtime;
    /// let rt = sheepdog_tokio::TokioRuntime::new_current_thread().unwrap();
    /// assert_eq!(rt.block_on(async { 1 }), 1);
    /// ```
    pub fn new_current_thread() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(Self::from_runtime)
    }

    /// Creates and owns a multi-thread tokio runtime with `workers` worker threads and timers
    /// enabled.
    ///
    /// # Errors
    ///
    /// The I/O error tokio reports when it cannot build the runtime.
    ///
    /// # Panics
    ///
    /// Panics if `workers` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::runtime::Runtime;
    /// let rt = sheepdog_tokio::TokioRuntime::new_multi_thread(2).unwrap();
    /// assert_eq!(rt.block_on(async { 1 }), 1);
    /// ```
    #[track_caller]
    pub fn new_multi_thread(workers: usize) -> std::io::Result<Self> {
        assert!(
            workers > 0,
            "a multi-thread runtime needs at least one worker"
        );
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_time()
            .build()
            .map(Self::from_runtime)
    }

    /// The tokio handle of the runtime.
    pub fn tokio_handle(&self) -> &tokio::runtime::Handle {
        &self.handle.handle
    }
}

impl Runtime for TokioRuntime {
    fn spawn_boxed(&self, task: BoxTask) {
        self.handle.spawn_boxed(task);
    }

    fn spawn_unboxed<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // tokio's own handle is dropped at once: it detaches, and sheepdog's handle rules.
        drop(self.handle.handle.spawn(task));
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        self.handle.timer(deadline)
    }

    fn timer_in(&self, deadline: Instant, slot: Pin<&mut TimerSlot>) {
        self.handle.timer_in(deadline, slot);
    }

    fn system_clock(&self) -> bool {
        // `now` is the default, `Instant::now` (not tokio's clock, which test-util can pause).
        true
    }

    fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::from_arc(Arc::clone(&self.handle) as Arc<dyn Runtime>)
    }

    /// Runs `future` on this runtime.
    ///
    /// On an owned runtime this is tokio's `Runtime::block_on`. On a runtime referred to by
    /// handle it is `Handle::block_on`, which cannot drive a current-thread runtime's timers
    /// unless another thread is inside that runtime's own `block_on`.
    ///
    /// # Panics
    ///
    /// Panics (in tokio) when called from inside an asynchronous context.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        // Both of tokio's `block_on`s poll inside the runtime's context.
        let future = with_handle(in_context(), future);
        match self.owner.as_ref().and_then(|owner| owner.runtime.as_ref()) {
            Some(runtime) => runtime.block_on(future),
            None => self.handle.handle.block_on(future),
        }
    }

    /// Spawns `future` as a tokio task and adapts tokio's own join handle, so sheepdog adds no
    /// allocation and no shared state of its own: tokio catches the panic, aborts, and reports
    /// shutdown; the adapter maps those to sheepdog's [`JoinError`] and aborts on drop.
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // No ambient wrapper: inside a tokio task the registered detector finds this runtime,
        // which keeps the task (and so tokio's allocation for it) as small as the raw one. Only
        // a task spawned inside a cancel scope is wrapped, to belong to that scope.
        match InheritScope::capture(future) {
            Err(future) => JoinHandle::from_raw(TokioJoin {
                handle: self.handle.handle.spawn(future),
                outcome: Ok,
            }),
            Ok(bound) => JoinHandle::from_raw(TokioJoin {
                handle: self.handle.handle.spawn(bound),
                // `None`: the task's cancel scope cancelled it.
                outcome: |output| output.ok_or(JoinError::Cancelled),
            }),
        }
    }
}

impl Runtime for TokioHandle {
    fn spawn_boxed(&self, task: BoxTask) {
        drop(self.handle.spawn(task));
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        // Timers register with the runtime of the current context; enter ours.
        let _entered = self.handle.enter();
        Box::pin(TokioTimer::at(deadline))
    }

    fn timer_in(&self, deadline: Instant, slot: Pin<&mut TimerSlot>) {
        let _entered = self.handle.enter();
        slot.set_with(|| TokioTimer::at(deadline));
    }

    fn system_clock(&self) -> bool {
        // `now` is the default, `Instant::now` (not tokio's clock, which test-util can pause).
        true
    }

    fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::from_arc(Arc::new(TokioHandle {
            handle: self.handle.clone(),
        }))
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(with_handle(in_context(), future))
    }
}

/// "The tokio runtime whose context the caller is in": the ambient handle of every future
/// sheepdog polls inside a tokio runtime (tasks and `block_on`). Being a static, it costs
/// nothing to install or clone; it is only ever used from inside that context, and
/// [`Runtime::handle`] turns it into a portable handle when code asks for the runtime.
#[derive(Debug)]
struct InContext;

impl StaticRuntime for InContext {
    const RUNTIME: &'static dyn Runtime = &InContext;
}

fn in_context() -> RuntimeHandle {
    RuntimeHandle::from_static(InContext::RUNTIME)
}

/// Lets sheepdog find the tokio runtime of the current thread when no ambient runtime is
/// installed (see `sheepdog_core::runtime::register_detector`). Done once, by the first
/// `TokioRuntime` constructed.
fn register_tokio_detector() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        register_detector(|| {
            // Inside a tokio task, the usual place, tokio's context is set and a thread-local
            // read says so; on a thread that drives a runtime (`block_on`, a worker) its
            // scheduler's context is set, another thread-local read (`worker_index`: such a
            // thread has entered the runtime, so a handle is current). Only elsewhere
            // (`Runtime::enter`, a blocking thread) ask for the handle, which clones (and
            // drops) tokio's reference-counted handle.
            (tokio::task::try_id().is_some()
                || tokio::runtime::worker_index().is_some()
                || tokio::runtime::Handle::try_current().is_ok())
            .then(in_context)
        });
    });
}

impl InContext {
    fn current() -> TokioHandle {
        TokioHandle {
            handle: tokio::runtime::Handle::current(),
        }
    }
}

impl Runtime for InContext {
    fn spawn_boxed(&self, task: BoxTask) {
        drop(tokio::spawn(task));
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        Box::pin(TokioTimer::at(deadline))
    }

    /// tokio's `Sleep`, stored inline in the slot (a cancel scope's), without an allocation.
    fn timer_in(&self, deadline: Instant, slot: Pin<&mut TimerSlot>) {
        slot.set_with(|| TokioTimer::at(deadline));
    }

    fn system_clock(&self) -> bool {
        // `now` is the default, `Instant::now` (not tokio's clock, which test-util can pause).
        true
    }

    fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::from_arc(Arc::new(Self::current()))
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        Self::current().block_on(future)
    }
}

/// tokio's join handle with sheepdog's semantics, for a task whose output `O` gives the
/// outcome through `outcome` (the output itself, or `None` for a scope's cancellation).
struct TokioJoin<O, T> {
    handle: tokio::task::JoinHandle<O>,
    outcome: fn(O) -> Result<T, JoinError>,
}

fn join_error(err: tokio::task::JoinError) -> JoinError {
    match err.try_into_panic() {
        Ok(payload) => JoinError::from_panic(payload),
        Err(_) => JoinError::Cancelled,
    }
}

impl<O: Send + 'static, T: Send + 'static> RawJoinHandle<T> for TokioJoin<O, T> {
    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|r| r.map_err(join_error).and_then(self.outcome))
    }

    fn abort(&self) {
        self.handle.abort();
    }

    fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    fn abort_handle(&self) -> AbortHandle {
        AbortHandle::from_raw(TokioAbort(self.handle.abort_handle()))
    }

    fn detach(&mut self) {
        // Dropping tokio's handle detaches the task; nothing to do before that.
    }
}

struct TokioAbort(tokio::task::AbortHandle);

impl RawAbortHandle for TokioAbort {
    fn abort(&self) {
        self.0.abort();
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

pin_project_lite::pin_project! {
    struct TokioTimer {
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl TokioTimer {
    /// A timer at `deadline` on the tokio runtime of the current context.
    fn at(deadline: Instant) -> Self {
        TokioTimer {
            sleep: tokio::time::sleep_until(deadline.into()),
        }
    }
}

impl Future for TokioTimer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl Timer for TokioTimer {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        self.project().sleep.reset(deadline.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokio_timers_are_stored_inline() {
        assert!(
            TimerSlot::fits_inline::<TokioTimer>(),
            "tokio's Sleep is {} bytes",
            std::mem::size_of::<TokioTimer>()
        );
    }
}
