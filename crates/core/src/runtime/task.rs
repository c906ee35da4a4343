//! sheepdog's task wrapper and join handle: one implementation, so every runtime behaves alike.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;

use super::RuntimeHandle;
use crate::cancel::InheritScope;

/// Why a task did not produce its output.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let rt = VirtualRuntime::new();
/// let err = rt
///     .block_on(async { rt.spawn(async { panic!("boom") }).await })
///     .unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.panic_message(), Some("boom"));
/// # }
/// ```
#[derive(thiserror::Error)]
pub enum JoinError {
    /// The task was aborted, or its runtime shut down before it finished.
    #[error("task was cancelled")]
    Cancelled,
    /// The task panicked; the payload is kept.
    #[error("task panicked{}", PanicMessage(.0))]
    Panic(Panic),
}

/// The payload of a panic, kept so it can be inspected or re-raised.
///
/// The payload sits in a mutex only to make [`JoinError`] `Sync` (so it fits in `anyhow::Error`
/// and friends); it is only ever moved out by value. The message, when the payload is a string,
/// is copied out once so it can be read through `&self`.
pub struct Panic(Box<PanicInner>);

/// Boxed so that a `JoinError` (and so every `Result<T, JoinError>` a task produces) stays one
/// word: panics are rare, task outputs are not.
struct PanicInner {
    payload: Mutex<Box<dyn Any + Send + 'static>>,
    message: Option<String>,
}

impl Panic {
    pub(crate) fn new(payload: Box<dyn Any + Send + 'static>) -> Self {
        Panic(Box::new(PanicInner {
            message: payload_str(&*payload).map(str::to_owned),
            payload: Mutex::new(payload),
        }))
    }

    /// Returns the payload, ready for [`std::panic::resume_unwind`].
    pub fn into_payload(self) -> Box<dyn Any + Send + 'static> {
        self.0
            .payload
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the panic message, if the payload is a string (as `panic!` produces).
    pub fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
}

impl fmt::Debug for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(message) => f.debug_tuple("Panic").field(&message).finish(),
            None => f.write_str("Panic(..)"),
        }
    }
}

struct PanicMessage<'a>(&'a Panic);

impl fmt::Display for PanicMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.message() {
            Some(message) => write!(f, ": {message}"),
            None => Ok(()),
        }
    }
}

fn payload_str(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("JoinError::Cancelled"),
            JoinError::Panic(panic) => write!(f, "JoinError::{panic:?}"),
        }
    }
}

impl JoinError {
    /// The error for a task that panicked with `payload` (for adapters converting their
    /// runtime's own join errors).
    ///
    /// # Examples
    ///
    /// ```
    /// let err = sheepdog_core::JoinError::from_panic(Box::new("lost"));
    /// assert_eq!(err.panic_message(), Some("lost"));
    /// ```
    pub fn from_panic(payload: Box<dyn Any + Send + 'static>) -> Self {
        JoinError::Panic(Panic::new(payload))
    }

    /// Whether the task was cancelled (aborted, or dropped by its runtime).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JoinError::Cancelled)
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panic(_))
    }

    /// Returns the panic message if the task panicked with a string payload.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panic(panic) => panic.message(),
            JoinError::Cancelled => None,
        }
    }

    /// Returns the panic payload.
    ///
    /// # Panics
    ///
    /// Panics if the task was cancelled rather than panicking; [`try_into_panic`] does not.
    ///
    /// [`try_into_panic`]: JoinError::try_into_panic
    #[track_caller]
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        match self.try_into_panic() {
            Ok(payload) => payload,
            Err(_) => panic!("JoinError::into_panic called on a cancelled task's error"),
        }
    }

    /// Returns the panic payload, or gives the error back if the task was cancelled.
    ///
    /// # Errors
    ///
    /// Returns `self` when the task was cancelled.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JoinError> {
        match self {
            JoinError::Panic(panic) => Ok(panic.into_payload()),
            JoinError::Cancelled => Err(self),
        }
    }

    /// Re-raises the task's panic in the current thread with its original payload; returns the
    /// error unchanged if the task was cancelled.
    pub fn resume_panic(self) -> JoinError {
        match self {
            JoinError::Panic(panic) => resume_unwind(panic.into_payload()),
            JoinError::Cancelled => self,
        }
    }
}

/// State shared by a task and its [`JoinHandle`].
struct Header<T> {
    /// Set by `abort`; read by the task before each poll.
    aborted: AtomicBool,
    /// The task's waker, so `abort` can get the task polled (and dropped) promptly.
    task_waker: AtomicWaker,
    state: Mutex<State<T>>,
}

enum State<T> {
    Running { join_waker: Option<Waker> },
    Done(Result<T, JoinError>),
    Taken,
}

impl<T> Header<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held; recover anyway rather than lose a result.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn abort(&self) {
        if !self.aborted.swap(true, Ordering::AcqRel) {
            self.task_waker.wake();
        }
    }

    fn is_finished(&self) -> bool {
        !matches!(*self.lock(), State::Running { .. })
    }
}

/// A runtime's own abort handle, adapted to sheepdog (for adapters; see [`AbortHandle::from_raw`]).
pub trait RawAbortHandle: Send + Sync + 'static {
    /// Requests cancellation of the task.
    fn abort(&self);
    /// Whether the task has finished.
    fn is_finished(&self) -> bool;
}

impl<T: Send + 'static> RawAbortHandle for Header<T> {
    fn abort(&self) {
        Header::abort(self);
    }
    fn is_finished(&self) -> bool {
        Header::is_finished(self)
    }
}

/// Reports a task's outcome to its handle exactly once, and reports a cancellation if the task
/// is dropped before it finished (for example when its runtime shuts down).
struct Completer<T> {
    header: Arc<Header<T>>,
    done: bool,
}

impl<T> Completer<T> {
    fn complete(&mut self, outcome: Result<T, JoinError>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let waker = {
            let mut state = self.header.lock();
            match std::mem::replace(&mut *state, State::Done(outcome)) {
                State::Running { join_waker } => join_waker,
                State::Done(_) | State::Taken => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.complete(Err(JoinError::Cancelled));
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F> {
        Running { #[pin] future: F },
        Finished,
    }
}

pin_project_lite::pin_project! {
    /// A user future wrapped for spawning: catches panics, honours aborts, installs the ambient
    /// runtime around each poll, and reports the outcome to its [`JoinHandle`].
    ///
    /// Adapters receive it (boxed, as a [`BoxTask`](super::BoxTask), or unboxed through
    /// [`Runtime::spawn_unboxed`](super::Runtime::spawn_unboxed)) and only need to poll it.
    /// Users never touch it.
    #[must_use = "a task does nothing unless it is spawned"]
    pub struct TaskFuture<F: Future> {
        // Field order is drop order: the user future is dropped before the outcome is reported,
        // so whoever awaits the handle sees the future's destructors as already run.
        #[pin]
        stage: Stage<InheritScope<F>>,
        runtime: Option<RuntimeHandle>,
        completer: Completer<F::Output>,
    }
}

impl<F: Future> fmt::Debug for TaskFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFuture")
            .field("finished", &self.completer.done)
            .finish_non_exhaustive()
    }
}

impl<F> TaskFuture<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// Wraps `future` for spawning and returns it with the handle to its result.
    ///
    /// `runtime` becomes the ambient runtime while the task is polled; pass the handle of the
    /// runtime the task is spawned on. The task belongs to the cancel scope current at this
    /// call: cancelling that scope cancels the task.
    pub fn new(
        future: F,
        runtime: Option<RuntimeHandle>,
    ) -> (TaskFuture<F>, JoinHandle<F::Output>) {
        let header = Arc::new(Header {
            aborted: AtomicBool::new(false),
            task_waker: AtomicWaker::new(),
            state: Mutex::new(State::Running { join_waker: None }),
        });
        let task = TaskFuture {
            stage: Stage::Running {
                future: InheritScope::new(future),
            },
            runtime,
            completer: Completer {
                header: Arc::clone(&header),
                done: false,
            },
        };
        (
            task,
            JoinHandle {
                repr: Repr::Header(header),
                settled: false,
            },
        )
    }
}

impl<F: Future> Future for TaskFuture<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.completer.header.aborted.load(Ordering::Acquire) {
            return finish(this.stage, this.completer, Err(JoinError::Cancelled));
        }
        let future = match this.stage.as_mut().project() {
            StageProj::Running { future } => future,
            StageProj::Finished => return Poll::Ready(()),
        };
        let polled = super::context::enter(this.runtime, || {
            catch_unwind(AssertUnwindSafe(|| future.poll(cx)))
        });
        let outcome = match polled {
            Ok(Poll::Pending) => {
                // Only a task that waits needs to be woken by `abort`; register, then look at
                // the flag again so an abort that raced the registration is not missed.
                let header = &this.completer.header;
                header.task_waker.register(cx.waker());
                if !header.aborted.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
                Err(JoinError::Cancelled)
            }
            Ok(Poll::Ready(Some(output))) => Ok(output),
            // Its cancel scope was cancelled.
            Ok(Poll::Ready(None)) => Err(JoinError::Cancelled),
            Err(payload) => Err(JoinError::Panic(Panic::new(payload))),
        };
        finish(this.stage, this.completer, outcome)
    }
}

/// Drops the user future, then reports the outcome: whoever awaits the handle sees the
/// future's destructors as already run.
fn finish<F: Future>(
    stage: Pin<&mut Stage<InheritScope<F>>>,
    completer: &mut Completer<F::Output>,
    outcome: Result<F::Output, JoinError>,
) -> Poll<()> {
    drop_stage(stage);
    completer.complete(outcome);
    Poll::Ready(())
}

/// Drops the user future. A panic from its destructor is contained: the task's outcome is
/// already decided, and the runtime must never see an unwind.
fn drop_stage<F>(mut stage: Pin<&mut Stage<F>>) {
    let _ = catch_unwind(AssertUnwindSafe(|| stage.set(Stage::Finished)));
}

pin_project_lite::pin_project! {
    /// Runs a future with its panics contained, for adapters that spawn with their runtime's
    /// native join handle (see [`RawJoinHandle`]).
    ///
    /// A panic while polling becomes `Err(JoinError::Panic(..))` with the payload, and the
    /// future is dropped at once; a panic in the future's destructor (on completion, on
    /// cancellation, or when the runtime drops the task) is swallowed. Either way nothing
    /// unwinds into the executor.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::runtime::CatchPanic;
    ///
    /// let out = futures::executor::block_on(CatchPanic::new(async { panic!("contained") }));
    /// assert_eq!(out.unwrap_err().panic_message(), Some("contained"));
    /// ```
    #[must_use = "futures do nothing unless awaited"]
    pub struct CatchPanic<F> {
        #[pin]
        stage: Stage<F>,
    }

    impl<F> PinnedDrop for CatchPanic<F> {
        fn drop(this: Pin<&mut Self>) {
            drop_stage(this.project().stage);
        }
    }
}

impl<F> CatchPanic<F> {
    /// Wraps `future`.
    pub fn new(future: F) -> Self {
        CatchPanic {
            stage: Stage::Running { future },
        }
    }
}

impl<F> fmt::Debug for CatchPanic<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchPanic").finish_non_exhaustive()
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut stage = self.project().stage;
        let future = match stage.as_mut().project() {
            StageProj::Running { future } => future,
            StageProj::Finished => panic!("CatchPanic polled after completion"),
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => Ok(output),
            Err(payload) => Err(JoinError::from_panic(payload)),
        };
        drop_stage(stage);
        Poll::Ready(outcome)
    }
}

/// An owned permission to await a spawned task's output.
///
/// Awaiting it gives `Ok(output)`, or [`JoinError`] if the task panicked (the payload is kept)
/// or was cancelled.
///
/// **Dropping a `JoinHandle` aborts its task.** This is the same on every runtime; call
/// [`detach`](JoinHandle::detach) to let a task run on without its handle.
///
/// # Cancel safety
///
/// Awaiting a handle is cancel safe: dropping the `.await` (not the handle) loses nothing, and
/// the output can still be awaited through the same handle.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let rt = VirtualRuntime::new();
/// rt.block_on(async {
///     let handle = rt.spawn(async { "done" });
///     assert_eq!(handle.await.unwrap(), "done");
/// });
/// # }
/// ```
#[must_use = "dropping a JoinHandle aborts its task; call `.detach()` to let it run"]
pub struct JoinHandle<T> {
    repr: Repr<T>,
    /// Nothing to abort on drop: the handle was detached, or it already returned the outcome.
    settled: bool,
}

enum Repr<T> {
    /// sheepdog's own task state, shared with a [`TaskFuture`].
    Header(Arc<Header<T>>),
    /// A runtime's own join handle, adapted by its adapter, stored inline (the common case).
    Inline(super::inline::InlineRaw<T>),
    /// The same, when it is too big to store inline.
    Boxed(Box<dyn RawJoinHandle<T>>),
}

/// A runtime's own join handle, adapted to sheepdog's semantics (for adapters).
///
/// An adapter that can give sheepdog's [`JoinHandle`] semantics with its runtime's native
/// handle (saving sheepdog's own task state) implements this and builds the handle with
/// [`JoinHandle::from_raw`]. The implementation must report a panic as
/// [`JoinError::from_panic`] with the original payload, report a task that was aborted or
/// dropped by its runtime as [`JoinError::Cancelled`], and deliver an output that was ready
/// before an abort.
///
/// # Examples
///
/// A handle for an output that is already known (a real adapter wraps its runtime's handle):
///
/// ```
/// use std::task::{Context, Poll};
/// use sheepdog_core::runtime::{AbortHandle, JoinError, JoinHandle, RawAbortHandle, RawJoinHandle};
///
/// struct Ready(Option<u32>);
/// struct Done;
///
/// impl RawAbortHandle for Done {
///     fn abort(&self) {}
///     fn is_finished(&self) -> bool {
///         true
///     }
/// }
///
/// impl RawJoinHandle<u32> for Ready {
///     fn poll_join(&mut self, _cx: &mut Context<'_>) -> Poll<Result<u32, JoinError>> {
///         Poll::Ready(self.0.take().ok_or(JoinError::Cancelled))
///     }
///     fn abort(&self) {}
///     fn is_finished(&self) -> bool {
///         true
///     }
///     fn abort_handle(&self) -> AbortHandle {
///         AbortHandle::from_raw(Done)
///     }
///     fn detach(&mut self) {}
/// }
///
/// let handle = JoinHandle::from_raw(Ready(Some(7)));
/// assert!(handle.is_finished());
/// assert_eq!(futures::executor::block_on(handle).unwrap(), 7);
/// ```
pub trait RawJoinHandle<T>: Send + Sync {
    /// Polls for the task's outcome.
    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>>;
    /// Requests cancellation of the task; the future is dropped at the runtime's next chance.
    fn abort(&self);
    /// Whether the task has finished.
    fn is_finished(&self) -> bool;
    /// A cloneable handle that aborts the task.
    fn abort_handle(&self) -> AbortHandle;
    /// Lets the task run to completion without this handle, which is dropped right after.
    fn detach(&mut self);
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let finished = match &self.repr {
            Repr::Header(header) => header.is_finished(),
            Repr::Inline(raw) => raw.is_finished(),
            Repr::Boxed(raw) => raw.is_finished(),
        };
        f.debug_struct("JoinHandle")
            .field("finished", &finished)
            .finish_non_exhaustive()
    }
}

impl<T> JoinHandle<T> {
    /// Wraps a runtime's own join handle (for adapters; see [`RawJoinHandle`]).
    ///
    /// A handle of up to four machine words is stored inline, without an allocation.
    pub fn from_raw(raw: impl RawJoinHandle<T> + 'static) -> Self
    where
        T: 'static,
    {
        let repr = match super::inline::InlineRaw::new(raw) {
            Ok(inline) => Repr::Inline(inline),
            Err(raw) => Repr::Boxed(Box::new(raw)),
        };
        JoinHandle {
            repr,
            settled: false,
        }
    }

    fn request_abort(&self) {
        match &self.repr {
            Repr::Header(header) => header.abort(),
            Repr::Inline(raw) => raw.abort(),
            Repr::Boxed(raw) => raw.abort(),
        }
    }
}

impl<T: Send + 'static> JoinHandle<T> {
    /// Requests cancellation of the task.
    ///
    /// The task's future is dropped the next time the runtime polls the task; awaiting the
    /// handle then gives [`JoinError::Cancelled`], unless the task had already finished, in which
    /// case its output is still delivered. Aborting twice is harmless.
    pub fn abort(&self) {
        self.request_abort();
    }

    /// Returns a cloneable handle that can abort the task without owning its output.
    pub fn abort_handle(&self) -> AbortHandle {
        match &self.repr {
            Repr::Header(header) => AbortHandle {
                raw: Arc::clone(header) as Arc<dyn RawAbortHandle>,
            },
            Repr::Inline(raw) => raw.abort_handle(),
            Repr::Boxed(raw) => raw.abort_handle(),
        }
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished (produced an output, panicked, or been cancelled).
    pub fn is_finished(&self) -> bool {
        match &self.repr {
            Repr::Header(header) => header.is_finished(),
            Repr::Inline(raw) => raw.is_finished(),
            Repr::Boxed(raw) => raw.is_finished(),
        }
    }

    /// Lets the task run to completion without this handle; its output is discarded.
    ///
    /// This is the only way sheepdog lets a task outlive its handle. A detached task that
    /// panics still runs the panic hook (which prints the message by default); its payload is
    /// then dropped.
    pub fn detach(mut self) {
        match &mut self.repr {
            Repr::Header(_) => {}
            Repr::Inline(raw) => raw.detach(),
            Repr::Boxed(raw) => raw.detach(),
        }
        self.settled = true;
    }
}

// sheepdog never pins anything inside a `JoinHandle`.
impl<T> Unpin for JoinHandle<T> {}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if !self.settled {
            self.request_abort();
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = match &mut self.repr {
            Repr::Header(header) => {
                let mut state = header.lock();
                match &mut *state {
                    State::Running { join_waker } => {
                        match join_waker {
                            Some(waker) if waker.will_wake(cx.waker()) => {}
                            _ => *join_waker = Some(cx.waker().clone()),
                        }
                        return Poll::Pending;
                    }
                    State::Done(_) => match std::mem::replace(&mut *state, State::Taken) {
                        State::Done(outcome) => outcome,
                        State::Running { .. } | State::Taken => {
                            unreachable!("matched Done above")
                        }
                    },
                    State::Taken => panic!("JoinHandle polled after it returned its output"),
                }
            }
            Repr::Inline(raw) => match raw.poll_join(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => outcome,
            },
            Repr::Boxed(raw) => match raw.poll_join(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => outcome,
            },
        };
        self.settled = true;
        Poll::Ready(outcome)
    }
}

/// A cloneable handle that aborts a task without owning its output.
///
/// Dropping an `AbortHandle` does nothing.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let rt = VirtualRuntime::new();
/// rt.block_on(async {
///     let handle = rt.spawn(futures::future::pending::<()>());
///     handle.abort_handle().abort();
///     assert!(handle.await.unwrap_err().is_cancelled());
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct AbortHandle {
    raw: Arc<dyn RawAbortHandle>,
}

impl fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortHandle")
            .field("finished", &self.raw.is_finished())
            .finish()
    }
}

impl AbortHandle {
    /// Wraps a runtime's own abort handle (for adapters; see [`RawAbortHandle`]).
    pub fn from_raw(raw: impl RawAbortHandle) -> Self {
        AbortHandle { raw: Arc::new(raw) }
    }

    /// Requests cancellation of the task; see [`JoinHandle::abort`].
    pub fn abort(&self) {
        self.raw.abort();
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.raw.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's `Result<T, JoinError>` costs one word over `T`.
    #[test]
    fn join_error_is_one_word() {
        assert_eq!(
            std::mem::size_of::<JoinError>(),
            std::mem::size_of::<usize>()
        );
    }
}
