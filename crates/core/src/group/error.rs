//! What a group, a child's handle and `start` can fail with.

use std::fmt;

/// Why a group did not return its body's output.
///
/// Failures (errors returned by the body or a child) are kept in the order they happened. The
/// common single-failure case is [`GroupError::Failed`], with the error itself: no collection
/// to unwrap. Panics are never in here: a group re-raises a child's panic in its caller, after
/// every other child has been cancelled.
///
/// Cancellation is never reported as a failure. [`GroupError::Cancelled`] only says that the
/// group's own scope was cancelled (through [`TaskGroup::cancel`](super::TaskGroup::cancel) or
/// its [`cancel_scope`](super::TaskGroup::cancel_scope)) before its body returned, so there is
/// no output to give.
///
/// # Examples
///
/// ```
/// use sheepdog_core::group::{task_group, GroupError};
///
/// let out: Result<(), _> = futures::executor::block_on(task_group(|tg| async move {
///     tg.spawn(async { Err::<(), _>("disk full") });
///     tg.spawn(async { Ok(()) });
///     Ok(())
/// }));
/// match out {
///     Err(GroupError::Failed(error)) => assert_eq!(error, "disk full"),
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError<E> {
    /// Exactly one failure.
    Failed(E),
    /// Two or more failures, in the order they happened.
    Multiple(Vec<E>),
    /// The group's own scope was cancelled before its body returned; nothing failed.
    Cancelled,
}

impl<E> GroupError<E> {
    /// `None` for no failures (the group was cancelled).
    pub(crate) fn from_failures(mut errors: Vec<E>) -> Self {
        match errors.len() {
            0 => GroupError::Cancelled,
            1 => GroupError::Failed(errors.remove(0)),
            _ => GroupError::Multiple(errors),
        }
    }

    /// The failures in the order they happened (empty for [`GroupError::Cancelled`]).
    pub fn failures(&self) -> &[E] {
        match self {
            GroupError::Failed(error) => std::slice::from_ref(error),
            GroupError::Multiple(errors) => errors,
            GroupError::Cancelled => &[],
        }
    }

    /// The failures in the order they happened, by value.
    pub fn into_failures(self) -> Vec<E> {
        match self {
            GroupError::Failed(error) => vec![error],
            GroupError::Multiple(errors) => errors,
            GroupError::Cancelled => Vec::new(),
        }
    }

    /// The first failure, which is what cancelled the group.
    pub fn first(&self) -> Option<&E> {
        self.failures().first()
    }
}

impl<E: fmt::Display> fmt::Display for GroupError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::Failed(error) => error.fmt(f),
            GroupError::Multiple(errors) => {
                write!(f, "{} tasks failed", errors.len())?;
                errors
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, error)| write!(f, "; {}: {error}", i + 1))
            }
            GroupError::Cancelled => f.write_str("the task group was cancelled"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for GroupError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.first().map(|error| error as _)
    }
}

/// Why a child's [`TaskHandle`](super::TaskHandle) has no output.
///
/// # Examples
///
/// ```
/// use sheepdog_core::group::{task_group, TaskError};
///
/// let out = futures::executor::block_on(task_group(|tg| async move {
///     let stuck = tg.spawn(std::future::pending::<Result<(), ()>>());
///     tg.cancel();
///     Ok(stuck)
/// }));
/// let stuck = out.unwrap();
/// assert_eq!(futures::executor::block_on(stuck), Err(TaskError::Cancelled));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The child returned an error or panicked. The failure itself went to the group, which
    /// reports it (or re-raises the panic).
    #[error("the task failed; its group reports the failure")]
    Failed,
    /// The child was cancelled before it finished.
    #[error("the task was cancelled")]
    Cancelled,
}

/// Why `start` gave no value.
///
/// # Examples
///
/// ```
/// use sheepdog_core::group::{task_group, StartError, Started};
///
/// let out = futures::executor::block_on(task_group(|tg| async move {
///     // The child returns without calling `started`.
///     Ok::<_, ()>(tg.start(|_s: Started<u8, ()>| async { Ok(()) }).await)
/// }));
/// assert_eq!(out, Ok(Err(StartError::NotStarted)));
/// ```
///
/// A panic in the child before it called `started` is not in here: it is re-raised in the
/// caller of `start`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError<E> {
    /// The child returned this error before calling `started`.
    #[error("the task failed before it started")]
    Failed(E),
    /// The child returned without calling `started`.
    #[error("the task ended without calling started()")]
    NotStarted,
    /// The child was cancelled before it called `started`.
    #[error("the task was cancelled before it started")]
    Cancelled,
    /// The group has finished, so the child was never added.
    #[error("the task group has finished")]
    Closed,
}

/// The group has finished: no task can join it any more (see [`SpawnGroup`]'s example).
///
/// [`SpawnGroup`]: super::SpawnGroup
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this task group has finished; no new tasks can be started")]
pub struct GroupClosed;
