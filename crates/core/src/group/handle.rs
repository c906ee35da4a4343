//! A child's handle, and the hand-shake of `start`/`started`.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::cell::CellRef;
use super::error::{StartError, TaskError};
use super::member::{Failure, GroupRef, Outcome, Payload, Sink};
use crate::runtime::JoinHandle;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The handle of a child spawned into a group; awaiting it gives that child's result.
///
/// Dropping the handle does not cancel the child: the group still owns it, waits for it and
/// collects its failure.
///
/// | the child | awaiting the handle gives |
/// |---|---|
/// | returns `Ok(v)` | `Ok(v)` |
/// | returns `Err(e)` or panics | `Err(TaskError::Failed)`; the error (or panic) itself goes to the group |
/// | is cancelled (by the group's scope or an outer one) | `Err(TaskError::Cancelled)` |
///
/// # Cancel safety
///
/// Awaiting the handle is cancel-safe: dropping the `await` (or the handle) loses nothing the
/// group would report.
///
/// # Examples
///
/// ```
/// use sheepdog_core::group::{task_group, TaskError};
///
/// let out = futures::executor::block_on(task_group(|tg| async move {
///     let two = tg.spawn(async { Ok::<_, String>(2) });
///     Ok(two.await.map_err(|e| e.to_string())? * 21)
/// }));
/// assert_eq!(out.unwrap(), 42);
/// # let _: Option<TaskError> = None;
/// ```
pub struct TaskHandle<T> {
    repr: Repr<T>,
}

enum Repr<T> {
    /// An in-task child's result, in the child's own block. `None` once taken.
    Cell(Option<CellRef<Result<T, TaskError>>>),
    /// A spawned child's result is its task's output. `None` once taken or let go.
    Join(Option<JoinHandle<Result<T, TaskError>>>),
}

impl<T> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        if let Repr::Join(handle) = &mut self.repr {
            // The group, not this handle, owns the child: let it run.
            if let Some(handle) = handle.take() {
                handle.detach();
            }
        }
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> TaskHandle<T> {
    /// The handle of an in-task child, whose result is published in its block.
    pub(crate) fn from_cell(cell: CellRef<Result<T, TaskError>>) -> Self {
        TaskHandle {
            repr: Repr::Cell(Some(cell)),
        }
    }

    /// The handle of a spawned child, whose task returns its result.
    pub(crate) fn from_join(handle: JoinHandle<Result<T, TaskError>>) -> Self {
        TaskHandle {
            repr: Repr::Join(Some(handle)),
        }
    }

    /// Whether the child has ended (its result is ready, or was already taken).
    pub fn is_finished(&self) -> bool {
        match &self.repr {
            Repr::Cell(cell) => cell.as_ref().is_none_or(CellRef::is_complete),
            Repr::Join(handle) => handle.as_ref().is_none_or(JoinHandle::is_finished),
        }
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, TaskError>> {
        match &mut self.repr {
            Repr::Cell(cell) => {
                let taken = cell
                    .take()
                    .expect("a TaskHandle was polled after it completed")
                    .poll_take(cx);
                match taken {
                    // No result: the group unwound while delivering it, as if cancelled.
                    Ok(result) => Poll::Ready(result.unwrap_or(Err(TaskError::Cancelled))),
                    Err(waiting) => {
                        *cell = Some(waiting);
                        Poll::Pending
                    }
                }
            }
            Repr::Join(handle) => {
                let join = handle
                    .as_mut()
                    .expect("a TaskHandle was polled after it completed");
                let result = std::task::ready!(Pin::new(join).poll(cx));
                *handle = None;
                // The child catches its own panics, so the task itself can only have been
                // cancelled (its runtime shut down).
                Poll::Ready(result.unwrap_or(Err(TaskError::Cancelled)))
            }
        }
    }
}

/// A child's result as its handle reports it; its failure goes to the group.
fn result_of<T, E>(outcome: Outcome<T, E>, group: GroupRef<'_, E>) -> Result<T, TaskError> {
    match outcome {
        Outcome::Done(Ok(output)) => Ok(output),
        Outcome::Done(Err(error)) => {
            group.fail(Failure::Error(error));
            Err(TaskError::Failed)
        }
        Outcome::Panicked(payload) => {
            group.fail(Failure::Panic(payload));
            Err(TaskError::Failed)
        }
        Outcome::Cancelled => Err(TaskError::Cancelled),
    }
}

/// The sink of a child with a handle: its result is its task's output (a spawned child), or
/// goes into its block (an in-task one).
pub(crate) struct Direct<T>(PhantomData<fn() -> T>);

impl<T> Direct<T> {
    pub(crate) fn new() -> Self {
        Direct(PhantomData)
    }
}

impl<T, E> Sink<E> for Direct<T> {
    type Output = T;
    type Delivered = Result<T, TaskError>;

    fn deliver(self, outcome: Outcome<T, E>, group: GroupRef<'_, E>) -> Result<T, TaskError> {
        result_of(outcome, group)
    }

    fn cancelled(self) -> Result<T, TaskError> {
        Err(TaskError::Cancelled)
    }
}

/// The signal a child started with `start` gives once it is ready: the value it passes goes
/// to the caller of `start`.
///
/// It is consumed by [`started`](Started::started), so a child cannot signal twice. A child
/// that ends without calling it makes `start` fail with [`StartError::NotStarted`].
///
/// # Examples
///
/// ```
/// use sheepdog_core::group::{task_group, Started};
///
/// let port = futures::executor::block_on(task_group(|tg| async move {
///     let port = tg
///         .start(|started: Started<u16, String>| async move {
///             started.started(8080); // bound and listening: tell the caller
///             Ok(()) // ... then serve until the group ends
///         })
///         .await
///         .map_err(|e| e.to_string())?;
///     Ok(port)
/// }));
/// assert_eq!(port.unwrap(), 8080);
/// ```
pub struct Started<V, E> {
    slot: Arc<StartSlot<V, E>>,
}

impl<V, E> fmt::Debug for Started<V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started").finish_non_exhaustive()
    }
}

impl<V, E> Started<V, E> {
    /// Hands `value` to the caller of `start`. From now on the child's failures go to the
    /// group, not to that caller.
    pub fn started(self, value: V) {
        let mut state = lock(&self.slot.state);
        if let StartStage::Waiting { starter, .. } = &mut state.stage {
            let starter = starter.take();
            state.stage = StartStage::Value(value);
            state.started = true;
            drop(state);
            if let Some(waker) = starter {
                waker.wake();
            }
        }
    }
}

pub(crate) struct StartSlot<V, E> {
    state: Mutex<StartState<V, E>>,
}

struct StartState<V, E> {
    stage: StartStage<V, E>,
    /// `started` was called: failures now belong to the group.
    started: bool,
}

enum StartStage<V, E> {
    Waiting {
        starter: Option<Waker>,
        child: Option<Waker>,
    },
    Value(V),
    Failed(E),
    Panicked(Payload),
    NotStarted,
    Cancelled,
    /// Taken by the caller of `start`, or given up by it (then `started` is false).
    Gone,
}

impl<V, E> StartSlot<V, E> {
    pub(crate) fn new() -> (Start<V, E>, Started<V, E>, Arc<Self>) {
        let slot = Arc::new(StartSlot {
            state: Mutex::new(StartState {
                stage: StartStage::Waiting {
                    starter: None,
                    child: None,
                },
                started: false,
            }),
        });
        (
            Start {
                slot: Arc::clone(&slot),
            },
            Started {
                slot: Arc::clone(&slot),
            },
            slot,
        )
    }
}

impl<V, E> StartSlot<V, E> {
    /// Hands the outcome of a child that has not called `started` to the caller of `start`.
    fn before_started(&self, outcome: Outcome<(), E>) {
        let mut state = lock(&self.state);
        if state.started {
            return;
        }
        let StartStage::Waiting { starter, .. } = &mut state.stage else {
            // The caller of `start` gave up; it was cancelled, so nobody waits for this.
            return;
        };
        let starter = starter.take();
        state.stage = match outcome {
            Outcome::Done(Ok(())) => StartStage::NotStarted,
            Outcome::Done(Err(error)) => StartStage::Failed(error),
            Outcome::Panicked(payload) => StartStage::Panicked(payload),
            Outcome::Cancelled => StartStage::Cancelled,
        };
        drop(state);
        if let Some(waker) = starter {
            waker.wake();
        }
    }
}

impl<V, E> Sink<E> for Arc<StartSlot<V, E>> {
    type Output = ();
    type Delivered = ();

    fn deliver(self, outcome: Outcome<(), E>, group: GroupRef<'_, E>) {
        let state = lock(&self.state);
        if state.started {
            drop(state);
            match outcome {
                Outcome::Done(Err(error)) => group.fail(Failure::Error(error)),
                Outcome::Panicked(payload) => group.fail(Failure::Panic(payload)),
                Outcome::Done(Ok(())) | Outcome::Cancelled => {}
            }
            return;
        }
        drop(state);
        self.before_started(outcome);
    }

    fn cancelled(self) {
        self.before_started(Outcome::Cancelled);
    }
    fn abandoned(&self, cx: &mut Context<'_>) -> bool {
        let mut state = lock(&self.state);
        if state.started {
            return false;
        }
        match &mut state.stage {
            StartStage::Waiting { child, .. } => {
                if !child.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *child = Some(cx.waker().clone());
                }
                false
            }
            _ => true,
        }
    }
}

/// The future `start` returns: the child's `started` value, or why there is none.
pub(crate) struct Start<V, E> {
    slot: Arc<StartSlot<V, E>>,
}

impl<V, E> Future for Start<V, E> {
    type Output = Result<V, StartError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.slot.state);
        let result = match std::mem::replace(&mut state.stage, StartStage::Gone) {
            StartStage::Waiting { child, .. } => {
                state.stage = StartStage::Waiting {
                    starter: Some(cx.waker().clone()),
                    child,
                };
                return Poll::Pending;
            }
            StartStage::Value(value) => Ok(value),
            StartStage::Failed(error) => Err(StartError::Failed(error)),
            StartStage::NotStarted => Err(StartError::NotStarted),
            StartStage::Cancelled => Err(StartError::Cancelled),
            StartStage::Panicked(payload) => {
                drop(state);
                resume_unwind(payload)
            }
            StartStage::Gone => panic!("a start future was polled after it completed"),
        };
        Poll::Ready(result)
    }
}

impl<V, E> Drop for Start<V, E> {
    fn drop(&mut self) {
        let mut state = lock(&self.slot.state);
        if let StartStage::Waiting { child, .. } = &mut state.stage {
            // The caller gave up before the child started: the child is cancelled.
            let child = child.take();
            state.stage = StartStage::Gone;
            drop(state);
            if let Some(waker) = child {
                waker.wake();
            }
        }
    }
}
