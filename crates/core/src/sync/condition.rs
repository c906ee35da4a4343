//! [`Condition`]: a lock with FIFO wait / notify.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{Context, Poll};

use super::lock::{Lock, LockAcquire, LockGuard, LockStatistics};
use super::queue::{Abandoned, WaitList, Wakers};
use super::WouldBlock;
use crate::shim::{Mutex, MutexGuard};

/// A condition variable with its own [`Lock`] (AnyIO's `Condition`).
///
/// Take the lock with [`lock`](Condition::lock); the [`ConditionGuard`] then
/// [`wait`](ConditionGuard::wait)s (releasing the lock until notified, then taking it back) and
/// [`notify`](ConditionGuard::notify)s. Notifying and waiting need the guard, so doing either
/// without the lock is a compile-time error rather than AnyIO's `RuntimeError`.
///
/// Waiters are notified in the order they started waiting. A notification handed to a
/// waiter whose wait is then dropped (cancelled) before it completes passes to the next
/// waiter, so `notify(1)` always wakes one waiter that goes on to run, if any is left.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::Condition;
///
/// futures::executor::block_on(async {
///     let cond = Condition::new();
///     let consumer = async {
///         let guard = cond.lock().await;
///         let _guard = guard.wait().await; // releases the lock while waiting
///         "notified"
///     };
///     let producer = async {
///         // Runs once the consumer waits (the join polls the consumer first).
///         cond.lock().await.notify(1);
///     };
///     let (out, ()) = futures::future::join(consumer, producer).await;
///     assert_eq!(out, "notified");
/// });
/// ```
pub struct Condition {
    lock: Lock,
    /// Waiters; a grant says whether it must be passed on if the waiter goes away (a
    /// `notify(n)` grant must, a `notify_all` one need not).
    waiters: Mutex<WaitList<(), bool>>,
}

/// A snapshot of a [`Condition`]'s state, from [`Condition::statistics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConditionStatistics {
    /// How many wait for a notification.
    pub tasks_waiting: usize,
    /// The state of the condition's lock.
    pub lock_statistics: LockStatistics,
}

impl Default for Condition {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("statistics", &self.statistics())
            .finish_non_exhaustive()
    }
}

impl Condition {
    /// A condition with an unlocked lock and no waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// let cond = sheepdog_core::sync::Condition::new();
    /// assert_eq!(cond.statistics().tasks_waiting, 0);
    /// ```
    pub fn new() -> Self {
        Condition {
            lock: Lock::new(),
            waiters: Mutex::new(WaitList::default()),
        }
    }

    fn waiters(&self) -> MutexGuard<'_, WaitList<(), bool>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the condition's lock (fair, like [`Lock::lock`]).
    ///
    /// # Cancel safety
    ///
    /// As for [`Lock::lock`].
    ///
    /// # Examples
    ///
    /// ```
    /// let cond = sheepdog_core::sync::Condition::new();
    /// let guard = futures::executor::block_on(cond.lock());
    /// assert!(cond.statistics().lock_statistics.locked);
    /// drop(guard);
    /// ```
    pub fn lock(&self) -> ConditionLock<'_> {
        ConditionLock {
            condition: self,
            acquire: self.lock.lock(),
        }
    }

    /// Takes the condition's lock if it is free and nobody waits for it.
    ///
    /// # Errors
    ///
    /// [`WouldBlock`] if the lock is held or others wait for it.
    ///
    /// # Examples
    ///
    /// ```
    /// let cond = sheepdog_core::sync::Condition::new();
    /// let guard = cond.try_lock().unwrap();
    /// assert!(cond.try_lock().is_err());
    /// drop(guard);
    /// ```
    pub fn try_lock(&self) -> Result<ConditionGuard<'_>, WouldBlock> {
        let guard = self.lock.try_lock()?;
        Ok(ConditionGuard {
            condition: self,
            _lock: guard,
        })
    }

    /// How many wait, and the lock's state.
    ///
    /// # Examples
    ///
    /// ```
    /// let cond = sheepdog_core::sync::Condition::new();
    /// assert!(!cond.statistics().lock_statistics.locked);
    /// ```
    pub fn statistics(&self) -> ConditionStatistics {
        ConditionStatistics {
            tasks_waiting: self.waiters().len(),
            lock_statistics: self.lock.statistics(),
        }
    }

    /// Notifies up to `n` waiters, oldest first; returns how many.
    fn notify(&self, n: usize, pass_on: bool) -> usize {
        let mut wakers = Wakers::default();
        let mut notified = 0;
        {
            let mut waiters = self.waiters();
            while notified < n {
                let Some(waker) = waiters.grant_front(|()| pass_on) else {
                    break;
                };
                wakers.push(waker);
                notified += 1;
            }
        }
        wakers.wake_all();
        notified
    }
}

/// Holds a [`Condition`]'s lock; dropping it unlocks.
///
/// # Examples
///
/// ```
/// let cond = sheepdog_core::sync::Condition::new();
/// let guard = cond.try_lock().unwrap();
/// assert_eq!(guard.notify_all(), 0); // nobody waits
/// ```
#[must_use = "the lock is released when the guard is dropped"]
pub struct ConditionGuard<'a> {
    condition: &'a Condition,
    _lock: LockGuard<'a>,
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard").finish_non_exhaustive()
    }
}

impl<'a> ConditionGuard<'a> {
    /// Wakes up to `n` waiters, oldest first, and returns how many were woken. Each takes the
    /// lock back once this guard is dropped; waiters woken together queue for the lock in the
    /// order they run.
    ///
    /// # Examples
    ///
    /// ```
    /// let cond = sheepdog_core::sync::Condition::new();
    /// assert_eq!(cond.try_lock().unwrap().notify(3), 0);
    /// ```
    pub fn notify(&self, n: usize) -> usize {
        self.condition.notify(n, true)
    }

    /// Wakes every waiter and returns how many were woken.
    ///
    /// # Examples
    ///
    /// ```
    /// let cond = sheepdog_core::sync::Condition::new();
    /// assert_eq!(cond.try_lock().unwrap().notify_all(), 0);
    /// ```
    pub fn notify_all(&self) -> usize {
        self.condition.notify(usize::MAX, false)
    }

    /// Releases the lock, waits to be notified, then takes the lock back (in line with other
    /// lockers) and returns the guard again.
    ///
    /// As with every condition variable, wake-ups should be checked against the condition the
    /// code waits for, in a loop.
    ///
    /// # Cancel safety
    ///
    /// A cancellation point. Dropping the future while it waits for a notification leaves the
    /// line; dropping it after it was notified but before it got the lock back passes the
    /// notification to the next waiter. Either way the lock is not held afterwards (it was
    /// released when the wait began). Inside a cancelled scope the future never completes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use sheepdog_core::sync::Condition;
    ///
    /// futures::executor::block_on(async {
    ///     let cond = Condition::new();
    ///     let ready = AtomicBool::new(false);
    ///     let waiter = async {
    ///         let mut guard = cond.lock().await;
    ///         while !ready.load(Ordering::SeqCst) {
    ///             guard = guard.wait().await;
    ///         }
    ///     };
    ///     let notifier = async {
    ///         let guard = cond.lock().await;
    ///         ready.store(true, Ordering::SeqCst);
    ///         guard.notify_all();
    ///     };
    ///     futures::future::join(waiter, notifier).await;
    /// });
    /// ```
    pub fn wait(self) -> ConditionWait<'a> {
        ConditionWait {
            condition: self.condition,
            stage: Stage::Start(Some(self)),
        }
    }
}

/// The future returned by [`Condition::lock`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct ConditionLock<'a> {
    condition: &'a Condition,
    acquire: LockAcquire<'a>,
}

impl<'a> Future for ConditionLock<'a> {
    type Output = ConditionGuard<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ConditionGuard<'a>> {
        let condition = self.condition;
        Pin::new(&mut self.acquire)
            .poll(cx)
            .map(|guard| ConditionGuard {
                condition,
                _lock: guard,
            })
    }
}

/// The future returned by [`ConditionGuard::wait`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct ConditionWait<'a> {
    condition: &'a Condition,
    stage: Stage<'a>,
}

#[derive(Debug)]
enum Stage<'a> {
    /// Holding the lock, not yet in line.
    Start(Option<ConditionGuard<'a>>),
    /// In line for a notification, the lock released.
    Waiting(usize),
    /// Notified (`pass_on` says whether the notification goes to another waiter if this
    /// one is dropped now), taking the lock back.
    Relocking {
        pass_on: bool,
        acquire: LockAcquire<'a>,
    },
    Done,
}

impl<'a> Future for ConditionWait<'a> {
    type Output = ConditionGuard<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ConditionGuard<'a>> {
        if super::cancelled() {
            return Poll::Pending;
        }
        let this = &mut *self;
        let condition = this.condition;
        loop {
            match &mut this.stage {
                Stage::Start(guard) => {
                    // Join the line while still holding the lock, so that no notify can
                    // slip in between, then release it.
                    let key = condition.waiters().push((), cx.waker());
                    drop(guard.take());
                    this.stage = Stage::Waiting(key);
                }
                Stage::Waiting(key) => {
                    let Some(pass_on) = condition.waiters().poll(*key, cx.waker()) else {
                        return Poll::Pending;
                    };
                    this.stage = Stage::Relocking {
                        pass_on,
                        acquire: condition.lock.lock(),
                    };
                }
                Stage::Relocking { acquire, .. } => {
                    let guard = std::task::ready!(Pin::new(acquire).poll(cx));
                    this.stage = Stage::Done;
                    return Poll::Ready(ConditionGuard {
                        condition,
                        _lock: guard,
                    });
                }
                Stage::Done => panic!("a condition wait was polled after it completed"),
            }
        }
    }
}

impl ConditionWait<'_> {
    /// Gives up the wait; returns whether a notification it had been handed was passed on.
    pub(crate) fn abandon(&mut self) -> bool {
        let pass_on = match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Waiting(key) => match self.condition.waiters().abandon(key) {
                Abandoned::Granted(pass_on) => pass_on,
                Abandoned::Waiting(()) => false,
            },
            // Dropping `acquire` gives up the lock's line (or passes the lock on).
            Stage::Relocking { pass_on, .. } => pass_on,
            Stage::Start(_) | Stage::Done => false,
        };
        if pass_on {
            self.condition.notify(1, true);
        }
        pass_on
    }
}

impl Drop for ConditionWait<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}
