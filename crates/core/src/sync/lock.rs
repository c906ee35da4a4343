//! [`Lock`]: fair mutual exclusion.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::permits::{Excess, HasPermits, One, Permits, Waiter};
use super::WouldBlock;

/// A fair, non-reentrant lock that protects no data (AnyIO's `Lock`).
///
/// Tasks get the lock in the order they asked for it: unlocking hands it directly to the
/// oldest waiter, and [`try_lock`](Lock::try_lock) fails while anyone waits. The lock is
/// released by dropping the [`LockGuard`], so only its holder can release it.
///
/// It is not reentrant: a task that awaits [`lock`](Lock::lock) while it holds the guard waits
/// for itself forever. To protect data, keep it next to the lock or use a `std::sync::Mutex`
/// inside the critical section (it is then never contended).
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::Lock;
///
/// futures::executor::block_on(async {
///     let lock = Lock::new();
///     let guard = lock.lock().await;
///     assert!(lock.locked());
///     assert!(lock.try_lock().is_err());
///     drop(guard);
///     assert!(!lock.locked());
/// });
/// ```
pub struct Lock {
    permits: Permits,
}

/// A snapshot of a [`Lock`]'s state, from [`Lock::statistics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStatistics {
    /// Whether the lock is held.
    pub locked: bool,
    /// How many tasks wait for it.
    pub tasks_waiting: usize,
}

impl Default for Lock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("locked", &self.locked())
            .finish_non_exhaustive()
    }
}

impl HasPermits for Lock {
    #[inline]
    fn permits(&self) -> &Permits {
        &self.permits
    }
}

impl Lock {
    /// An unlocked lock.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = sheepdog_core::sync::Lock::new();
    /// assert!(!lock.locked());
    /// ```
    pub fn new() -> Self {
        Lock {
            permits: Permits::new(1),
        }
    }

    /// Waits for the lock, in line behind the tasks that asked before.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, and a cancellation point: dropping the future gives up its place in line;
    /// if the lock had already been handed to it, it passes to the next waiter. Inside a
    /// cancelled scope the future never completes.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::sync::Lock;
    ///
    /// let lock = Lock::new();
    /// futures::executor::block_on(async {
    ///     let _guard = lock.lock().await;
    ///     // critical section
    /// });
    /// ```
    #[inline]
    pub fn lock(&self) -> LockAcquire<'_> {
        LockAcquire {
            waiter: Waiter::of(self, One),
        }
    }

    /// Takes the lock if it is free and nobody waits for it.
    ///
    /// # Errors
    ///
    /// [`WouldBlock`] if the lock is held or others wait for it (no barging).
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = sheepdog_core::sync::Lock::new();
    /// let guard = lock.try_lock().expect("free");
    /// assert!(lock.try_lock().is_err());
    /// drop(guard);
    /// ```
    #[inline]
    pub fn try_lock(&self) -> Result<LockGuard<'_>, WouldBlock> {
        if self.permits.try_acquire(1) {
            Ok(LockGuard { lock: self })
        } else {
            Err(WouldBlock)
        }
    }

    /// Whether the lock is held (or being handed to a waiter).
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = sheepdog_core::sync::Lock::new();
    /// let _guard = lock.try_lock().unwrap();
    /// assert!(lock.locked());
    /// ```
    pub fn locked(&self) -> bool {
        self.permits.available() == 0
    }

    /// Whether the lock is held, and how many wait for it.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = sheepdog_core::sync::Lock::new();
    /// let stats = lock.statistics();
    /// assert!(!stats.locked);
    /// assert_eq!(stats.tasks_waiting, 0);
    /// ```
    pub fn statistics(&self) -> LockStatistics {
        LockStatistics {
            locked: self.locked(),
            tasks_waiting: self.permits.waiting(),
        }
    }

    #[inline]
    fn unlock(&self) {
        let released = self.permits.release(1, 1, Excess::Discard);
        debug_assert!(released.is_ok(), "discarding never refuses");
    }
}

/// Holds a [`Lock`]; dropping it unlocks, handing the lock to the oldest waiter.
///
/// # Examples
///
/// ```
/// let lock = sheepdog_core::sync::Lock::new();
/// let guard = lock.try_lock().unwrap();
/// drop(guard); // unlocks
/// assert!(!lock.locked());
/// ```
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// The lock this guard holds.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = sheepdog_core::sync::Lock::new();
    /// let guard = lock.try_lock().unwrap();
    /// assert!(std::ptr::eq(guard.lock(), &lock));
    /// ```
    pub fn lock(&self) -> &Lock {
        self.lock
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

/// The future returned by [`Lock::lock`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct LockAcquire<'a> {
    waiter: Waiter<'a, Lock, One>,
}

impl<'a> Future for LockAcquire<'a> {
    type Output = LockGuard<'a>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LockGuard<'a>> {
        let lock = self.waiter.owner();
        self.waiter.poll_acquire(cx).map(|()| LockGuard { lock })
    }
}
