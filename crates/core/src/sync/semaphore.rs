//! [`Semaphore`]: a fair counter of permits.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::permits::{Excess, HasPermits, One, Permits, Waiter, MAX_PERMITS};
use super::WouldBlock;

/// A fair semaphore (AnyIO's `Semaphore`, plus weighted acquisition).
///
/// It holds a number of permits. [`acquire`](Semaphore::acquire) takes one (waiting if none is
/// free), [`acquire_many`](Semaphore::acquire_many) takes several at once; the returned
/// [`SemaphoreGuard`] gives them back when dropped. Waiters are served strictly in arrival
/// order, a weighted one at the head of the line included: a release hands permits directly to
/// the oldest waiter, and `try_acquire*` fails while anyone waits.
///
/// Like AnyIO's, the semaphore does not track holders: [`release`](Semaphore::release) adds
/// permits (up to the optional [maximum value](Semaphore::with_max_value)).
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::Semaphore;
///
/// futures::executor::block_on(async {
///     let sem = Semaphore::new(2);
///     let a = sem.acquire().await;
///     let b = sem.acquire().await;
///     assert_eq!(sem.value(), 0);
///     assert!(sem.try_acquire().is_err());
///     drop((a, b));
///     let two = sem.acquire_many(2).await.unwrap();
///     assert_eq!(two.permits(), 2);
/// });
/// ```
pub struct Semaphore {
    permits: Permits,
    max_value: Option<usize>,
    /// The maximum value, or [`MAX_PERMITS`] if none was set.
    limit: usize,
}

/// Misuse of a [`Semaphore`], or a `try_*` call that would have to wait.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::{Semaphore, SemaphoreError};
///
/// let sem = Semaphore::with_max_value(1, 1).unwrap();
/// assert_eq!(sem.release(1), Err(SemaphoreError::AboveMaxValue { value: 1, max_value: 1 }));
/// assert_eq!(sem.try_acquire_many(0).unwrap_err(), SemaphoreError::ZeroPermits);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SemaphoreError {
    /// Not enough permits are free, or others wait first.
    #[error("the semaphore would block")]
    WouldBlock,
    /// Zero permits were asked for or released.
    #[error("zero permits requested")]
    ZeroPermits,
    /// More permits were asked for than the semaphore can ever hold.
    #[error("{requested} permits requested, more than the semaphore can hold ({limit})")]
    TooManyPermits {
        /// How many were asked for.
        requested: usize,
        /// The most it can hold: its maximum value, or [`Semaphore::MAX_PERMITS`].
        limit: usize,
    },
    /// Releasing would raise the value above the maximum value; nothing was released.
    #[error(
        "releasing would raise the value above its maximum ({value} free, maximum {max_value})"
    )]
    AboveMaxValue {
        /// The value when the release was refused.
        value: usize,
        /// The maximum value ([`Semaphore::MAX_PERMITS`] if none was set).
        max_value: usize,
    },
    /// The initial value is above the maximum value, or the maximum value is zero.
    #[error("invalid semaphore bounds: initial value {initial}, maximum value {max_value}")]
    InvalidBounds {
        /// The initial value asked for.
        initial: usize,
        /// The maximum value asked for.
        max_value: usize,
    },
}

impl From<WouldBlock> for SemaphoreError {
    fn from(WouldBlock: WouldBlock) -> Self {
        SemaphoreError::WouldBlock
    }
}

/// A snapshot of a [`Semaphore`]'s state, from [`Semaphore::statistics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreStatistics {
    /// Free permits.
    pub value: usize,
    /// How many tasks wait.
    pub tasks_waiting: usize,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value())
            .field("max_value", &self.max_value)
            .finish_non_exhaustive()
    }
}

impl HasPermits for Semaphore {
    #[inline]
    fn permits(&self) -> &Permits {
        &self.permits
    }
}

impl Semaphore {
    /// The most permits a semaphore can hold.
    pub const MAX_PERMITS: usize = MAX_PERMITS;

    /// A semaphore with `permits` free permits and no maximum value. Zero is allowed: nothing
    /// can be acquired until permits are [released](Semaphore::release).
    ///
    /// # Panics
    ///
    /// If `permits` is above [`MAX_PERMITS`](Semaphore::MAX_PERMITS).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(3);
    /// assert_eq!(sem.value(), 3);
    /// assert_eq!(sem.max_value(), None);
    /// ```
    #[track_caller]
    pub fn new(permits: usize) -> Self {
        assert!(
            permits <= MAX_PERMITS,
            "a semaphore holds at most Semaphore::MAX_PERMITS permits"
        );
        Semaphore {
            permits: Permits::new(permits),
            max_value: None,
            limit: MAX_PERMITS,
        }
    }

    /// A semaphore with `initial` free permits whose value may never exceed `max_value`
    /// (AnyIO's `Semaphore(initial, max_value=…)`).
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::InvalidBounds`] if `max_value` is zero or above
    /// [`MAX_PERMITS`](Semaphore::MAX_PERMITS), or `initial` is above `max_value`.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::sync::Semaphore;
    ///
    /// let sem = Semaphore::with_max_value(0, 2).unwrap();
    /// sem.release(2).unwrap();
    /// assert!(sem.release(1).is_err());
    /// assert!(Semaphore::with_max_value(3, 2).is_err());
    /// ```
    pub fn with_max_value(initial: usize, max_value: usize) -> Result<Self, SemaphoreError> {
        if max_value == 0 || max_value > MAX_PERMITS || initial > max_value {
            return Err(SemaphoreError::InvalidBounds { initial, max_value });
        }
        Ok(Semaphore {
            permits: Permits::new(initial),
            max_value: Some(max_value),
            limit: max_value,
        })
    }

    /// The number of free permits (AnyIO's `value`).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(1);
    /// let _permit = sem.try_acquire().unwrap();
    /// assert_eq!(sem.value(), 0);
    /// ```
    pub fn value(&self) -> usize {
        self.permits.available()
    }

    /// The maximum value, if one was set.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::with_max_value(1, 4).unwrap();
    /// assert_eq!(sem.max_value(), Some(4));
    /// ```
    pub fn max_value(&self) -> Option<usize> {
        self.max_value
    }

    #[inline]
    fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for one permit, in line behind those who asked before.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, and a cancellation point: dropping the future gives up its place in line;
    /// a permit already handed to it goes to the next waiter. Inside a cancelled scope the
    /// future never completes.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(1);
    /// let permit = futures::executor::block_on(sem.acquire());
    /// assert_eq!(permit.permits(), 1);
    /// ```
    #[inline]
    pub fn acquire(&self) -> SemaphoreAcquire<'_> {
        SemaphoreAcquire {
            waiter: Waiter::of(self, One),
        }
    }

    /// Waits for `n` permits at once, in line behind those who asked before; while it waits at
    /// the head of the line, smaller requests behind it wait too.
    ///
    /// # Errors
    ///
    /// The future completes at once with [`SemaphoreError::ZeroPermits`] if `n` is zero, or
    /// [`SemaphoreError::TooManyPermits`] if `n` is above the maximum value (or
    /// [`MAX_PERMITS`](Semaphore::MAX_PERMITS)) and so could never be granted.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Semaphore::acquire): the `n` permits, if already handed over, go to
    /// the next waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::sync::Semaphore;
    ///
    /// let sem = Semaphore::new(5);
    /// futures::executor::block_on(async {
    ///     let three = sem.acquire_many(3).await.unwrap();
    ///     assert_eq!(sem.value(), 2);
    ///     drop(three);
    ///     assert_eq!(sem.value(), 5);
    /// });
    /// ```
    pub fn acquire_many(&self, n: usize) -> SemaphoreAcquireMany<'_> {
        SemaphoreAcquireMany {
            checked: self.check_request(n),
            waiter: Waiter::of(self, n),
        }
    }

    fn check_request(&self, n: usize) -> Result<(), SemaphoreError> {
        if n == 0 {
            return Err(SemaphoreError::ZeroPermits);
        }
        if n > self.limit() {
            return Err(SemaphoreError::TooManyPermits {
                requested: n,
                limit: self.limit(),
            });
        }
        Ok(())
    }

    /// Takes one permit if one is free and nobody waits.
    ///
    /// # Errors
    ///
    /// [`WouldBlock`] if no permit is free or others wait first.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(1);
    /// let permit = sem.try_acquire().unwrap();
    /// assert!(sem.try_acquire().is_err());
    /// drop(permit);
    /// assert!(sem.try_acquire().is_ok());
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<SemaphoreGuard<'_>, WouldBlock> {
        if self.permits.try_acquire(1) {
            Ok(self.guard(1))
        } else {
            Err(WouldBlock)
        }
    }

    /// Takes `n` permits if they are free and nobody waits.
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::ZeroPermits`], [`SemaphoreError::TooManyPermits`] as for
    /// [`acquire_many`](Semaphore::acquire_many), or [`SemaphoreError::WouldBlock`].
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(3);
    /// let two = sem.try_acquire_many(2).unwrap();
    /// assert!(sem.try_acquire_many(2).is_err());
    /// drop(two);
    /// ```
    pub fn try_acquire_many(&self, n: usize) -> Result<SemaphoreGuard<'_>, SemaphoreError> {
        self.check_request(n)?;
        if self.permits.try_acquire(n) {
            Ok(self.guard(n))
        } else {
            Err(SemaphoreError::WouldBlock)
        }
    }

    /// Adds `n` permits, serving waiters first (AnyIO's `release`, which any task may call).
    ///
    /// # Errors
    ///
    /// [`SemaphoreError::ZeroPermits`] if `n` is zero; [`SemaphoreError::AboveMaxValue`] if the
    /// value would exceed the maximum value (or [`MAX_PERMITS`](Semaphore::MAX_PERMITS)), in
    /// which case nothing is released.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(0);
    /// sem.release(2).unwrap();
    /// assert_eq!(sem.value(), 2);
    /// ```
    pub fn release(&self, n: usize) -> Result<(), SemaphoreError> {
        if n == 0 {
            return Err(SemaphoreError::ZeroPermits);
        }
        self.permits
            .release(n, self.limit(), Excess::Refuse)
            .map_err(|above| SemaphoreError::AboveMaxValue {
                value: above.value,
                max_value: self.limit(),
            })
    }

    /// The value and how many wait.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(2);
    /// assert_eq!(sem.statistics().value, 2);
    /// assert_eq!(sem.statistics().tasks_waiting, 0);
    /// ```
    pub fn statistics(&self) -> SemaphoreStatistics {
        SemaphoreStatistics {
            value: self.value(),
            tasks_waiting: self.permits.waiting(),
        }
    }

    #[inline]
    fn guard(&self, permits: usize) -> SemaphoreGuard<'_> {
        SemaphoreGuard {
            semaphore: self,
            permits,
        }
    }
}

/// Permits taken from a [`Semaphore`]; dropping the guard gives them back (to the oldest
/// waiters first).
///
/// If the semaphore has a maximum value and extra [`release`](Semaphore::release)s have
/// already filled it, the returning permits above the maximum are discarded.
///
/// # Examples
///
/// ```
/// let sem = sheepdog_core::sync::Semaphore::new(1);
/// let permit = sem.try_acquire().unwrap();
/// drop(permit);
/// assert_eq!(sem.value(), 1);
/// ```
#[must_use = "the permits are released when the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    semaphore: &'a Semaphore,
    permits: usize,
}

impl SemaphoreGuard<'_> {
    /// How many permits the guard holds.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(4);
    /// assert_eq!(sem.try_acquire_many(3).unwrap().permits(), 3);
    /// ```
    pub fn permits(&self) -> usize {
        self.permits
    }

    /// Keeps the permits taken: they are not returned to the semaphore.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = sheepdog_core::sync::Semaphore::new(2);
    /// sem.try_acquire().unwrap().forget();
    /// assert_eq!(sem.value(), 1);
    /// ```
    pub fn forget(mut self) {
        self.permits = 0;
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard")
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

impl Drop for SemaphoreGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.permits > 0 {
            let released = self.semaphore.permits.release(
                self.permits,
                self.semaphore.limit(),
                Excess::Discard,
            );
            debug_assert!(released.is_ok(), "discarding never refuses");
        }
    }
}

/// The future returned by [`Semaphore::acquire`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct SemaphoreAcquire<'a> {
    waiter: Waiter<'a, Semaphore, One>,
}

impl<'a> Future for SemaphoreAcquire<'a> {
    type Output = SemaphoreGuard<'a>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SemaphoreGuard<'a>> {
        let semaphore = self.waiter.owner();
        self.waiter.poll_acquire(cx).map(|()| semaphore.guard(1))
    }
}

/// The future returned by [`Semaphore::acquire_many`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct SemaphoreAcquireMany<'a> {
    checked: Result<(), SemaphoreError>,
    waiter: Waiter<'a, Semaphore>,
}

impl<'a> Future for SemaphoreAcquireMany<'a> {
    type Output = Result<SemaphoreGuard<'a>, SemaphoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.checked?;
        let (semaphore, n) = (self.waiter.owner(), self.waiter.wanted());
        self.waiter
            .poll_acquire(cx)
            .map(|()| Ok(semaphore.guard(n)))
    }
}
