//! The ambient runtime: a thread-local swapped in around each poll.

use crate::shim::{thread_local, LocalKey};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use super::{JoinHandle, Runtime, RuntimeHandle};

/// Which ambient runtime is installed on this thread. Kept apart from the shared handle so
/// that installing a `'static` runtime (the common case: tokio tasks, smol's and async-std's
/// global executors) moves two words in a plain `Copy` cell and nothing else.
#[derive(Clone, Copy)]
enum Kind {
    None,
    Static(&'static dyn Runtime),
    /// The handle in `SHARED`.
    Shared,
}

thread_local! {
    static KIND: Cell<Kind> = const { Cell::new(Kind::None) };
    static SHARED: Cell<Option<RuntimeHandle>> = const { Cell::new(None) };
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

/// Returns the ambient runtime, if the calling code runs inside a future that sheepdog drives
/// (or inside a runtime whose adapter registered a detector; see [`register_detector`]).
///
/// # Examples
///
/// ```
/// assert!(sheepdog_core::runtime::current().is_none());
/// ```
pub fn current() -> Option<RuntimeHandle> {
    current_raw().map(|handle| handle.portable())
}

/// The ambient handle installed around the current poll, if any (no detector is asked).
#[inline]
pub(crate) fn installed() -> Option<RuntimeHandle> {
    match KIND.with(Cell::get) {
        Kind::None => None,
        Kind::Static(runtime) => Some(RuntimeHandle::from_static(runtime)),
        Kind::Shared => peek(&SHARED),
    }
}

/// Whether [`time::now`](crate::time::now) reads the system's monotonic clock here: no ambient
/// runtime is installed (runtimes found through a detector read the system clock), or the
/// installed one says its clock is the system's ([`Runtime::system_clock`]).
#[inline]
pub(crate) fn system_clock() -> bool {
    match KIND.with(Cell::get) {
        Kind::None => true,
        Kind::Static(runtime) => runtime.system_clock(),
        // Looked at in place: no reference count is taken.
        Kind::Shared => SHARED.with(|cell| {
            let handle = cell.take();
            let system = handle.as_ref().is_none_or(|rt| rt.system_clock());
            cell.set(handle);
            system
        }),
    }
}

/// The ambient handle exactly as installed (it may be tied to the polling context), or else
/// what a registered detector reports.
#[inline]
pub(crate) fn current_raw() -> Option<RuntimeHandle> {
    installed().or_else(detect)
}

/// A clone of the value in a thread-local `Cell<Option<T>>`, leaving it in place.
pub(crate) fn peek<T: Clone + 'static>(key: &'static LocalKey<Cell<Option<T>>>) -> Option<T> {
    key.with(|cell| {
        let value = cell.take();
        let copy = value.clone();
        cell.set(value);
        copy
    })
}

/// Moves `slot` into the thread-local `key` while `f` runs, then moves it back (also on
/// unwind), restoring the previous value: a scoped "current X" without reference counting.
pub(crate) fn with_swapped<T: 'static, R>(
    key: &'static LocalKey<Cell<Option<T>>>,
    slot: &mut Option<T>,
    f: impl FnOnce() -> R,
) -> R {
    struct Swap<'a, T: 'static> {
        key: &'static LocalKey<Cell<Option<T>>>,
        slot: &'a mut Option<T>,
        previous: Option<T>,
    }
    impl<T: 'static> Drop for Swap<'_, T> {
        fn drop(&mut self) {
            *self.slot = self.key.with(|cell| cell.replace(self.previous.take()));
        }
    }
    let previous = key.with(|cell| cell.replace(slot.take()));
    let _swap = Swap {
        key,
        slot,
        previous,
    };
    f()
}

/// How many context detectors can be registered; there is one per adapter at most.
const DETECTOR_SLOTS: usize = 8;

/// A function that reports the runtime the calling thread is inside, if any.
type Detector = fn() -> Option<RuntimeHandle>;

static DETECTORS: [OnceLock<Detector>; DETECTOR_SLOTS] =
    [const { OnceLock::new() }; DETECTOR_SLOTS];

/// Registers a function that reports the runtime the calling thread is inside, for runtimes
/// that track that themselves (tokio does). It is consulted when no ambient runtime is
/// installed, so sheepdog code finds such a runtime even in futures it did not wrap — for
/// example inside `#[tokio::main]`, or in tasks an adapter spawns without a wrapper.
///
/// For adapters; each registers once. Returns `false` if every slot is taken (eight
/// detectors), in which case `detect` is not consulted.
///
/// # Examples
///
/// ```
/// use sheepdog_core::runtime::{self, register_detector, RuntimeHandle};
///
/// fn nothing_here() -> Option<RuntimeHandle> {
///     None
/// }
/// assert!(register_detector(nothing_here));
/// assert!(runtime::current().is_none());
/// ```
pub fn register_detector(detect: Detector) -> bool {
    DETECTORS.iter().any(|slot| slot.set(detect).is_ok())
}

fn detect() -> Option<RuntimeHandle> {
    for slot in &DETECTORS {
        match slot.get() {
            Some(detect) => {
                if let Some(handle) = detect() {
                    return Some(handle);
                }
            }
            None => return None,
        }
    }
    None
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
pub fn try_current() -> Result<RuntimeHandle, NoRuntime> {
    current().ok_or(NoRuntime)
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
    let rt = current_raw().ok_or(NoRuntime)?;
    Ok(super::spawn_on_handle(&*rt, rt.clone(), future))
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

/// Runs `future` with `handle` installed as its ambient runtime, exactly as given.
///
/// For adapters: a handle installed this way may be tied to the context the future is polled
/// in (for example "the tokio runtime of the current thread"), as long as the adapter only
/// polls the future in that context. [`current`] hands out [`Runtime::handle`] of it instead,
/// which works anywhere. Users call [`with_runtime`].
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::{self, with_handle, Runtime};
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let rt = VirtualRuntime::new();
/// let inside = futures::executor::block_on(with_handle(rt.handle(), async {
///     runtime::current().is_some()
/// }));
/// assert!(inside);
/// # }
/// ```
pub fn with_handle<F: Future>(handle: RuntimeHandle, future: F) -> WithRuntime<F> {
    WithRuntime::new(Some(handle), future)
}

pin_project_lite::pin_project! {
    /// The future returned by [`with_runtime`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct WithRuntime<F> {
        #[pin]
        future: F,
        runtime: Option<RuntimeHandle>,
    }
}

impl<F> WithRuntime<F> {
    pub(crate) fn new(runtime: Option<RuntimeHandle>, future: F) -> Self {
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

/// A runtime value that exists once per process (or once per polling context), so a future
/// can carry it as a type instead of a value (for adapters; see [`with_static_runtime`]).
pub trait StaticRuntime: 'static {
    /// The runtime to install as ambient.
    const RUNTIME: &'static dyn Runtime;
}

/// Runs `future` with `S::RUNTIME` as its ambient runtime, adding nothing to the future's size.
///
/// For adapters: a spawned task's size decides the size of the runtime's task allocation, so
/// carrying the ambient runtime as a type instead of a value can halve it (tokio rounds task
/// cells to 128 bytes). As with [`with_handle`], the runtime may be tied to the context the
/// future is polled in.
///
/// # Examples
///
/// ```
/// use std::time::Instant;
/// use sheepdog_core::runtime::{self, with_static_runtime, BoxTask, Runtime, RuntimeHandle, StaticRuntime};
/// use sheepdog_core::time::{AsyncIoTimer, BoxTimer};
///
/// #[derive(Debug)]
/// struct Inline;
///
/// impl Runtime for Inline {
///     fn spawn_boxed(&self, task: BoxTask) {
///         std::thread::spawn(move || futures::executor::block_on(task));
///     }
///     fn timer(&self, deadline: Instant) -> BoxTimer {
///         Box::pin(AsyncIoTimer::at(deadline))
///     }
///     fn handle(&self) -> RuntimeHandle {
///         RuntimeHandle::from_static(&Inline)
///     }
///     fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
///         futures::executor::block_on(with_static_runtime::<Inline, _>(future))
///     }
/// }
///
/// impl StaticRuntime for Inline {
///     const RUNTIME: &'static dyn Runtime = &Inline;
/// }
///
/// assert!(Inline.block_on(async { runtime::current().is_some() }));
/// ```
pub fn with_static_runtime<S: StaticRuntime, F: Future>(future: F) -> WithStaticRuntime<S, F> {
    WithStaticRuntime {
        future,
        _runtime: std::marker::PhantomData,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`with_static_runtime`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct WithStaticRuntime<S, F> {
        #[pin]
        future: F,
        _runtime: std::marker::PhantomData<fn() -> S>,
    }
}

impl<S, F: std::fmt::Debug> std::fmt::Debug for WithStaticRuntime<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithStaticRuntime")
            .field("future", &self.future)
            .finish_non_exhaustive()
    }
}

impl<S: StaticRuntime, F: Future> Future for WithStaticRuntime<S, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let future = self.project().future;
        enter_static(S::RUNTIME, || future.poll(cx))
    }
}

/// Makes `slot` the ambient runtime while `f` runs, then moves it back into `slot`.
///
/// Moving the handle in and out (rather than cloning it) keeps each poll free of reference-count
/// traffic. A `None` slot leaves the current ambient runtime in place.
pub(crate) fn enter<R>(slot: &mut Option<RuntimeHandle>, f: impl FnOnce() -> R) -> R {
    let Some(handle) = slot.as_ref() else {
        return f();
    };
    if let Some(runtime) = handle.as_static() {
        return enter_static(runtime, f);
    }
    let _kind = RestoreKind::replace(Kind::Shared);
    with_swapped(&SHARED, slot, f)
}

/// Puts the previous `KIND` back when dropped (also on unwind).
struct RestoreKind(Kind);

impl RestoreKind {
    fn replace(kind: Kind) -> Self {
        RestoreKind(KIND.with(|cell| cell.replace(kind)))
    }
}

impl Drop for RestoreKind {
    fn drop(&mut self) {
        KIND.with(|cell| cell.set(self.0));
    }
}

/// Makes `runtime` the ambient runtime while `f` runs.
pub(crate) fn enter_static<R>(runtime: &'static dyn Runtime, f: impl FnOnce() -> R) -> R {
    let _kind = RestoreKind::replace(Kind::Static(runtime));
    f()
}
