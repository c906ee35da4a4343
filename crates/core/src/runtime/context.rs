//! The ambient runtime: a thread-local swapped in around each poll.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{JoinHandle, Runtime};

thread_local! {
    static CURRENT: Cell<Option<Arc<dyn Runtime>>> = const { Cell::new(None) };
}

/// There is no ambient runtime: the code is not running inside a future that sheepdog drives.
///
/// Enter one with [`Runtime::block_on`], [`with_runtime`], or by spawning through sheepdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "no sheepdog runtime in this context: run this code inside `Runtime::block_on`, a task \
     spawned through sheepdog, or `sheepdog::runtime::with_runtime(rt, future)`"
)]
pub struct NoRuntime;

/// Returns the ambient runtime, if the calling code runs inside a future that sheepdog drives.
///
/// # Examples
///
/// ```
/// assert!(sheepdog_core::runtime::current().is_none());
/// ```
pub fn current() -> Option<Arc<dyn Runtime>> {
    CURRENT.with(|cell| {
        let rt = cell.take();
        let copy = rt.clone();
        cell.set(rt);
        copy
    })
}

/// Returns the ambient runtime, or [`NoRuntime`] with a message that says how to provide one.
///
/// # Errors
///
/// [`NoRuntime`] when called outside any future that sheepdog drives.
///
/// # Examples
///
/// ```
/// let err = sheepdog_core::runtime::try_current().unwrap_err();
/// assert!(err.to_string().contains("block_on"));
/// ```
pub fn try_current() -> Result<Arc<dyn Runtime>, NoRuntime> {
    current().ok_or(NoRuntime)
}

/// Runs `f` with the ambient runtime borrowed, without touching its reference count.
///
/// The ambient slot is empty while `f` runs, so `f` must not spawn or poll futures.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&Arc<dyn Runtime>>) -> R) -> R {
    CURRENT.with(|cell| {
        let rt = cell.take();
        // Put the runtime back even if `f` panics.
        struct Restore<'a> {
            cell: &'a Cell<Option<Arc<dyn Runtime>>>,
            rt: Option<Arc<dyn Runtime>>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.cell.set(self.rt.take());
            }
        }
        let restore = Restore { cell, rt };
        f(restore.rt.as_ref())
    })
}

/// Spawns `future` on the ambient runtime.
///
/// Dropping the returned handle aborts the task; see [`JoinHandle::detach`].
///
/// # Panics
///
/// Panics when there is no ambient runtime; [`try_spawn`] returns [`NoRuntime`] instead.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::{self, Runtime};
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let sum = VirtualRuntime::new().block_on(async {
///     let a = runtime::spawn(async { 40 });
///     let b = runtime::spawn(async { 2 });
///     a.await.unwrap() + b.await.unwrap()
/// });
/// assert_eq!(sum, 42);
/// # }
/// ```
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match try_spawn(future) {
        Ok(handle) => handle,
        Err(err) => panic!("sheepdog::runtime::spawn: {err}"),
    }
}

/// Spawns `future` on the ambient runtime, or returns [`NoRuntime`].
///
/// # Errors
///
/// [`NoRuntime`] when called outside any future that sheepdog drives; `future` is dropped.
///
/// # Examples
///
/// ```
/// let err = sheepdog_core::runtime::try_spawn(async {}).unwrap_err();
/// assert_eq!(err, sheepdog_core::runtime::NoRuntime);
/// ```
pub fn try_spawn<F>(future: F) -> Result<JoinHandle<F::Output>, NoRuntime>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = current().ok_or(NoRuntime)?;
    let (task, handle) = super::TaskFuture::new(future, Some(Arc::clone(&rt)));
    rt.spawn_boxed(Box::pin(task));
    Ok(handle)
}

/// Runs `future` with `runtime` as its ambient runtime.
///
/// Use it to enter sheepdog from code that was not started through it, for example a
/// `#[tokio::main]` function, so that [`spawn`] and [`time::sleep`](crate::time::sleep) find the
/// runtime.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::{self, with_runtime};
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let rt = VirtualRuntime::new();
/// let seen = futures::executor::block_on(with_runtime(&rt, async { runtime::current().is_some() }));
/// assert!(seen);
/// # }
/// ```
pub fn with_runtime<R, F>(runtime: &R, future: F) -> WithRuntime<F>
where
    R: Runtime + ?Sized,
    F: Future,
{
    WithRuntime::new(Some(runtime.handle()), future)
}

pin_project_lite::pin_project! {
    /// The future returned by [`with_runtime`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct WithRuntime<F> {
        #[pin]
        future: F,
        runtime: Option<Arc<dyn Runtime>>,
    }
}

impl<F> WithRuntime<F> {
    pub(crate) fn new(runtime: Option<Arc<dyn Runtime>>, future: F) -> Self {
        WithRuntime { future, runtime }
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for WithRuntime<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithRuntime")
            .field("future", &self.future)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for WithRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        enter(this.runtime, || this.future.poll(cx))
    }
}

/// Makes `slot` the ambient runtime while `f` runs, then moves it back into `slot`.
///
/// Moving the `Arc` in and out (rather than cloning it) keeps each poll free of reference-count
/// traffic. A `None` slot leaves the current ambient runtime in place.
pub(crate) fn enter<R>(slot: &mut Option<Arc<dyn Runtime>>, f: impl FnOnce() -> R) -> R {
    if slot.is_none() {
        return f();
    }
    struct Swap<'a> {
        slot: &'a mut Option<Arc<dyn Runtime>>,
        previous: Option<Arc<dyn Runtime>>,
    }
    impl Drop for Swap<'_> {
        fn drop(&mut self) {
            let ours = CURRENT.with(|cell| cell.replace(self.previous.take()));
            *self.slot = ours;
        }
    }
    let previous = CURRENT.with(|cell| cell.replace(slot.take()));
    let _swap = Swap { slot, previous };
    f()
}
