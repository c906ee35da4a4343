//! sheepdog's [`Runtime`] for smol.
//!
//! [`SmolRuntime`] spawns either on smol's global executor ([`SmolRuntime::global`], the
//! default) or on an [`async_executor::Executor`](smol::Executor) the caller supplies
//! ([`SmolRuntime::with_executor`]). Timers are async-io's, smol's own.
//!
//! It follows sheepdog's [`Runtime`] contract exactly: dropping a sheepdog
//! [`JoinHandle`] aborts the task, as dropping a smol `Task` does.
//!
//! # Examples
//!
//! ```
//! use sheepdog_core::runtime::Runtime;
//! use sheepdog_smol::SmolRuntime;
//!
//! let out = SmolRuntime::global().block_on(async {
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use sheepdog_core::cancel::InheritScope;
use sheepdog_core::runtime::{
    with_handle, with_runtime, with_static_runtime, AbortHandle, BoxTask, CatchPanic, JoinError,
    JoinHandle, RawAbortHandle, RawJoinHandle, Runtime, RuntimeHandle, StaticRuntime,
};
use sheepdog_core::time::{AsyncIoTimer, BoxTimer};

/// sheepdog's [`Runtime`] on smol.
///
/// Cloning is cheap. With a caller-supplied executor, the executor's tasks run while some
/// thread drives it: [`block_on`](Runtime::block_on) does, for as long as it runs, and the
/// caller may run it on more threads. Dropping the last `Arc` of the executor (the caller's
/// and every `SmolRuntime` clone) drops every task it still holds; their sheepdog handles then
/// report [`JoinError::Cancelled`]. smol's global executor
/// is never dropped, so tasks spawned there live until they finish or are aborted.
#[derive(Clone)]
pub struct SmolRuntime {
    /// Keeps a caller-supplied executor alive; `None` for the global executor.
    executor: Option<Arc<smol::Executor<'static>>>,
    handle: RuntimeHandle,
}

impl fmt::Debug for SmolRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmolRuntime")
            .field("global", &self.executor.is_none())
            .finish()
    }
}

impl Default for SmolRuntime {
    fn default() -> Self {
        Self::global()
    }
}

/// The non-owning part; this is what sheepdog's ambient context and spawned tasks hold. It
/// refers to a supplied executor weakly, so a task can never keep its own executor alive.
#[derive(Debug, Clone)]
enum SmolHandle {
    Global,
    Executor(Weak<smol::Executor<'static>>),
}

static GLOBAL: SmolHandle = SmolHandle::Global;

impl StaticRuntime for SmolHandle {
    const RUNTIME: &'static dyn Runtime = &SmolHandle::Global;
}

impl SmolRuntime {
    /// Spawns on smol's global executor (driven by smol's own threads; set `SMOL_THREADS` to
    /// choose how many).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::runtime::Runtime;
    /// assert_eq!(sheepdog_smol::SmolRuntime::global().block_on(async { 1 }), 1);
    /// ```
    pub fn global() -> Self {
        SmolRuntime {
            executor: None,
            handle: RuntimeHandle::from_static(&GLOBAL),
        }
    }

    /// Spawns on `executor`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_smol::SmolRuntime;
    ///
    /// let executor = Arc::new(smol::Executor::new());
    /// let rt = SmolRuntime::with_executor(Arc::clone(&executor));
    /// let out = rt.block_on(async { rt.spawn(async { 5 }).await.unwrap() });
    /// assert_eq!(out, 5);
    /// ```
    pub fn with_executor(executor: Arc<smol::Executor<'static>>) -> Self {
        SmolRuntime {
            handle: RuntimeHandle::from_arc(Arc::new(SmolHandle::Executor(Arc::downgrade(
                &executor,
            )))),
            executor: Some(executor),
        }
    }

    /// The supplied executor, or `None` for smol's global executor.
    pub fn executor(&self) -> Option<&Arc<smol::Executor<'static>>> {
        self.executor.as_ref()
    }
}

impl SmolRuntime {
    fn spawn_task<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.executor {
            None => smol::spawn(task).detach(),
            Some(executor) => executor.spawn(task).detach(),
        }
    }
}

impl SmolHandle {
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            SmolHandle::Global => smol::spawn(task).detach(),
            SmolHandle::Executor(executor) => match executor.upgrade() {
                Some(executor) => executor.spawn(task).detach(),
                // The executor is gone: dropping the task reports a cancellation.
                None => drop(task),
            },
        }
    }
}

impl Runtime for SmolRuntime {
    fn spawn_boxed(&self, task: BoxTask) {
        self.spawn_task(task);
    }

    fn spawn_unboxed<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_task(task);
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
        self.handle.clone()
    }

    /// Runs `future` on the current thread; with a supplied executor, also runs the
    /// executor's tasks on this thread until `future` completes.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        let future = with_runtime(self, future);
        match &self.executor {
            None => smol::block_on(future),
            Some(executor) => smol::block_on(executor.run(future)),
        }
    }

    /// Spawns `future` as a smol task and adapts smol's own `Task`, so sheepdog adds no
    /// allocation of its own: the panic is caught inside the task, and the adapter maps abort
    /// and drop onto smol's cancellation.
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Only a task spawned inside a cancel scope is bound to it (and wrapped for that).
        match InheritScope::capture(future) {
            Err(future) => self.spawn_native(future, |outcome| outcome),
            Ok(bound) => self.spawn_native(bound, |outcome| {
                // `None`: the task's cancel scope cancelled it.
                outcome.and_then(|output| output.ok_or(JoinError::Cancelled))
            }),
        }
    }
}

impl SmolRuntime {
    /// Spawns `future` with its panics contained, and adapts smol's `Task` with `outcome`
    /// turning the task's output into sheepdog's.
    fn spawn_native<F, T>(
        &self,
        future: F,
        outcome: fn(Result<F::Output, JoinError>) -> Result<T, JoinError>,
    ) -> JoinHandle<T>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
        T: Send + 'static,
    {
        let future = CatchPanic::new(future);
        let task = match &self.executor {
            None => smol::spawn(with_static_runtime::<SmolHandle, _>(future)),
            Some(executor) => executor.spawn(with_handle(self.handle.clone(), future)),
        };
        JoinHandle::from_raw(SmolJoin {
            slot: Mutex::new(Slot::Running(task)),
            outcome,
        })
    }
}

/// The outcome of an aborted smol task: its output if it finished first, else `None`.
type Cancelling<O> = Pin<Box<dyn Future<Output = Option<O>> + Send>>;

/// smol's `Task` with sheepdog's semantics: abort through `&self`, and an abort reported only
/// once the task's future has been dropped. The task's output `O` becomes sheepdog's outcome
/// through `outcome`.
struct SmolJoin<O, T> {
    slot: Mutex<Slot<O>>,
    outcome: fn(O) -> Result<T, JoinError>,
}

enum Slot<O> {
    Running(smol::Task<O>),
    /// Aborted: smol's `Task::cancel` future, which resolves once the task is gone (boxed
    /// twice so the slot stays two words and the handle fits inline).
    Cancelling(Box<Cancelling<O>>),
    /// Moved out so an `AbortHandle` can share it (never nested).
    Shared(Arc<Mutex<Slot<O>>>),
    /// The outcome was delivered.
    Taken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<O: Send + 'static> Slot<O> {
    /// The task's output, or `Err(Cancelled)` if an abort got to it first.
    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<O, JoinError>> {
        let outcome = match self {
            Slot::Running(task) => match Pin::new(task).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(output) => Ok(output),
            },
            Slot::Cancelling(cancel) => match cancel.as_mut().as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // The task finished before the abort reached it: its output is kept.
                Poll::Ready(Some(output)) => Ok(output),
                Poll::Ready(None) => Err(JoinError::Cancelled),
            },
            Slot::Shared(shared) => return lock(shared).poll_join(cx),
            Slot::Taken => panic!("JoinHandle polled after it returned its output"),
        };
        *self = Slot::Taken;
        Poll::Ready(outcome)
    }

    fn abort(&mut self) {
        match self {
            Slot::Running(task) if !task.is_finished() => {}
            Slot::Shared(shared) => return lock(shared).abort(),
            // Finished (the output is kept), already aborted, or delivered.
            _ => return,
        }
        let Slot::Running(task) = std::mem::replace(self, Slot::Taken) else {
            unreachable!("matched Running above")
        };
        // `Task::cancel` starts cancelling at its first poll; make that happen now.
        let mut cancel: Cancelling<O> = Box::pin(task.cancel());
        *self = match cancel
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => Slot::Cancelling(Box::new(cancel)),
            Poll::Ready(output) => Slot::Cancelling(Box::new(Box::pin(std::future::ready(output)))),
        };
    }

    fn detach(&mut self) {
        match std::mem::replace(self, Slot::Taken) {
            Slot::Running(task) => task.detach(),
            Slot::Shared(shared) => lock(&shared).detach(),
            // An aborted task stays aborted.
            slot @ Slot::Cancelling(_) => *self = slot,
            Slot::Taken => {}
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Slot::Running(task) => task.is_finished(),
            Slot::Cancelling(_) => false,
            Slot::Shared(shared) => lock(shared).is_finished(),
            Slot::Taken => true,
        }
    }
}

impl<O: Send + 'static, T: Send + 'static> RawJoinHandle<T> for SmolJoin<O, T> {
    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        self.slot
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .poll_join(cx)
            .map(|outcome| outcome.and_then(self.outcome))
    }

    fn abort(&self) {
        lock(&self.slot).abort();
    }

    fn is_finished(&self) -> bool {
        lock(&self.slot).is_finished()
    }

    fn abort_handle(&self) -> AbortHandle {
        let mut slot = lock(&self.slot);
        let shared = match &*slot {
            Slot::Shared(shared) => Arc::clone(shared),
            _ => {
                let shared = Arc::new(Mutex::new(std::mem::replace(&mut *slot, Slot::Taken)));
                *slot = Slot::Shared(Arc::clone(&shared));
                shared
            }
        };
        AbortHandle::from_raw(SmolAbort(shared))
    }

    fn detach(&mut self) {
        self.slot
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .detach();
    }
}

struct SmolAbort<O>(Arc<Mutex<Slot<O>>>);

impl<O: Send + 'static> RawAbortHandle for SmolAbort<O> {
    fn abort(&self) {
        lock(&self.0).abort();
    }

    fn is_finished(&self) -> bool {
        lock(&self.0).is_finished()
    }
}

impl Runtime for SmolHandle {
    fn spawn_boxed(&self, task: BoxTask) {
        self.spawn(task);
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
        match self {
            SmolHandle::Global => RuntimeHandle::from_static(&GLOBAL),
            SmolHandle::Executor(_) => RuntimeHandle::from_arc(Arc::new(self.clone())),
        }
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        let future = with_runtime(self, future);
        match self {
            SmolHandle::Global => smol::block_on(future),
            SmolHandle::Executor(executor) => match executor.upgrade() {
                Some(executor) => smol::block_on(executor.run(future)),
                None => smol::block_on(future),
            },
        }
    }
}
