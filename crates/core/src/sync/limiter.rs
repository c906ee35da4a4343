//! [`CapacityLimiter`]: a fair pool of tokens with an adjustable total and named borrowers.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};

use super::permits::{Excess, HasPermits, One, Permits, Waiter, MAX_PERMITS};
use super::WouldBlock;
use crate::shim::{Mutex, MutexGuard};

/// A fair pool of tokens (AnyIO's `CapacityLimiter`).
///
/// Each borrower holds at most one token. Anonymous borrowers use
/// [`acquire`](CapacityLimiter::acquire), which returns a guard; named borrowers (any
/// `Hash + Eq` value: a request id, a user name, a task's own key) use
/// [`acquire_on_behalf_of`](CapacityLimiter::acquire_on_behalf_of) and
/// [`release_on_behalf_of`](CapacityLimiter::release_on_behalf_of), and a second token for the
/// same name is an error. Rust has no task identity, so "one token per task" is expressed by
/// naming the borrower.
///
/// Waiters are served in arrival order with direct hand-off, and `try_*` calls fail while
/// anyone waits. The total can change while tokens are out: raising it serves that many
/// waiters at once; lowering it takes back only free tokens, and the rest are taken back as
/// they are returned (nobody is evicted), so for a while more tokens may be borrowed than the
/// total.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::CapacityLimiter;
///
/// futures::executor::block_on(async {
///     let limiter = CapacityLimiter::new(2);
///     let token = limiter.acquire().await;
///     limiter.acquire_on_behalf_of("job-7").await.unwrap();
///     assert_eq!(limiter.borrowed_tokens(), 2);
///     assert!(limiter.try_acquire().is_err());
///     limiter.release_on_behalf_of(&"job-7").unwrap();
///     drop(token);
///     assert_eq!(limiter.available_tokens(), 2);
/// });
/// ```
pub struct CapacityLimiter {
    permits: Permits,
    /// Named borrowers, holding a token or waiting for one.
    borrowers: Mutex<HashMap<Arc<dyn BorrowerKey>, Borrowing>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Borrowing {
    Waiting,
    Holding,
}

/// Misuse of a [`CapacityLimiter`], or a `try_*` call that would have to wait.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::{CapacityLimiter, CapacityLimiterError};
///
/// let limiter = CapacityLimiter::new(1);
/// assert_eq!(limiter.release_on_behalf_of(&1), Err(CapacityLimiterError::NotBorrowing));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapacityLimiterError {
    /// No token is free, or others wait first.
    #[error("the capacity limiter would block")]
    WouldBlock,
    /// The borrower already holds (or waits for) one of this limiter's tokens.
    #[error("this borrower is already holding one of this capacity limiter's tokens")]
    AlreadyBorrowing,
    /// The borrower holds no token of this limiter.
    #[error("this borrower is not holding any of this capacity limiter's tokens")]
    NotBorrowing,
    /// The total asked for is above [`CapacityLimiter::MAX_TOKENS`].
    #[error("a capacity limiter holds at most {max} tokens")]
    TooManyTokens {
        /// [`CapacityLimiter::MAX_TOKENS`].
        max: usize,
    },
}

impl From<WouldBlock> for CapacityLimiterError {
    fn from(WouldBlock: WouldBlock) -> Self {
        CapacityLimiterError::WouldBlock
    }
}

/// A snapshot of a [`CapacityLimiter`]'s state, from [`CapacityLimiter::statistics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapacityLimiterStatistics {
    /// Tokens held, by anonymous and named borrowers (may exceed the total after lowering it).
    pub borrowed_tokens: usize,
    /// The configured total.
    pub total_tokens: usize,
    /// Named borrowers holding a token.
    pub borrowers: usize,
    /// How many wait for a token.
    pub tasks_waiting: usize,
}

impl fmt::Debug for CapacityLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapacityLimiter")
            .field("statistics", &self.statistics())
            .finish_non_exhaustive()
    }
}

impl HasPermits for CapacityLimiter {
    #[inline]
    fn permits(&self) -> &Permits {
        &self.permits
    }
}

impl CapacityLimiter {
    /// The largest total a limiter accepts; use it for "unlimited" (AnyIO's `math.inf`).
    pub const MAX_TOKENS: usize = MAX_PERMITS;

    /// A limiter with `total_tokens` tokens. Zero is allowed (as in AnyIO ≥ 4.12): every
    /// acquisition waits until the total is raised.
    ///
    /// # Panics
    ///
    /// If `total_tokens` is above [`MAX_TOKENS`](CapacityLimiter::MAX_TOKENS).
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(40);
    /// assert_eq!(limiter.total_tokens(), 40);
    /// ```
    #[track_caller]
    pub fn new(total_tokens: usize) -> Self {
        assert!(
            total_tokens <= MAX_PERMITS,
            "a capacity limiter holds at most CapacityLimiter::MAX_TOKENS tokens"
        );
        CapacityLimiter {
            permits: Permits::new(total_tokens),
            borrowers: Mutex::new(HashMap::new()),
        }
    }

    fn borrowers(&self) -> MutexGuard<'_, HashMap<Arc<dyn BorrowerKey>, Borrowing>> {
        self.borrowers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The configured total.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(3);
    /// assert_eq!(limiter.total_tokens(), 3);
    /// ```
    pub fn total_tokens(&self) -> usize {
        self.permits.total()
    }

    /// Changes the total while the limiter is in use. Raising it hands the new tokens to
    /// waiters at once, oldest first; lowering it evicts nobody: borrowed tokens are taken
    /// back as they are returned.
    ///
    /// # Errors
    ///
    /// [`CapacityLimiterError::TooManyTokens`] above
    /// [`MAX_TOKENS`](CapacityLimiter::MAX_TOKENS); the total is then unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::sync::CapacityLimiter;
    ///
    /// let limiter = CapacityLimiter::new(2);
    /// let a = limiter.try_acquire().unwrap();
    /// let b = limiter.try_acquire().unwrap();
    /// limiter.set_total_tokens(1).unwrap();
    /// assert_eq!(limiter.borrowed_tokens(), 2); // nobody evicted
    /// drop(a);
    /// assert!(limiter.try_acquire().is_err()); // the returned token paid the reduction
    /// drop(b);
    /// assert_eq!(limiter.available_tokens(), 1);
    /// ```
    pub fn set_total_tokens(&self, total_tokens: usize) -> Result<(), CapacityLimiterError> {
        if total_tokens > MAX_PERMITS {
            return Err(CapacityLimiterError::TooManyTokens { max: MAX_PERMITS });
        }
        self.permits.set_total(total_tokens);
        Ok(())
    }

    /// Tokens currently held.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(3);
    /// let _token = limiter.try_acquire().unwrap();
    /// assert_eq!(limiter.borrowed_tokens(), 1);
    /// ```
    pub fn borrowed_tokens(&self) -> usize {
        self.permits.usage().1
    }

    /// Tokens free right now: the total minus what is borrowed, or zero if more is borrowed
    /// than the total (AnyIO reports a negative number there).
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(3);
    /// let _token = limiter.try_acquire().unwrap();
    /// assert_eq!(limiter.available_tokens(), 2);
    /// ```
    pub fn available_tokens(&self) -> usize {
        self.permits.available()
    }

    /// Borrowed and total tokens, named borrowers and waiters, read together.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(3);
    /// limiter.try_acquire_on_behalf_of(42_u32).unwrap();
    /// let stats = limiter.statistics();
    /// assert_eq!((stats.borrowed_tokens, stats.total_tokens), (1, 3));
    /// assert_eq!((stats.borrowers, stats.tasks_waiting), (1, 0));
    /// ```
    pub fn statistics(&self) -> CapacityLimiterStatistics {
        let borrowers = self
            .borrowers()
            .values()
            .filter(|&&b| b == Borrowing::Holding)
            .count();
        let (total_tokens, borrowed_tokens, tasks_waiting) = self.permits.usage();
        CapacityLimiterStatistics {
            borrowed_tokens,
            total_tokens,
            borrowers,
            tasks_waiting,
        }
    }

    /// Waits for a token for an anonymous borrower; the guard returns it when dropped.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, and a cancellation point: dropping the future gives up its place in line;
    /// a token already handed to it goes to the next waiter. Inside a cancelled scope the
    /// future never completes.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(1);
    /// let token = futures::executor::block_on(limiter.acquire());
    /// assert_eq!(limiter.borrowed_tokens(), 1);
    /// drop(token);
    /// ```
    #[inline]
    pub fn acquire(&self) -> LimiterAcquire<'_> {
        LimiterAcquire {
            waiter: Waiter::of(self, One),
        }
    }

    /// Takes a token for an anonymous borrower if one is free and nobody waits.
    ///
    /// # Errors
    ///
    /// [`WouldBlock`] if no token is free or others wait first.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(1);
    /// let token = limiter.try_acquire().unwrap();
    /// assert!(limiter.try_acquire().is_err());
    /// drop(token);
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<CapacityLimiterGuard<'_>, WouldBlock> {
        if self.permits.try_acquire(1) {
            Ok(CapacityLimiterGuard { limiter: self })
        } else {
            Err(WouldBlock)
        }
    }

    /// Waits for a token on behalf of `borrower`, who then holds it until
    /// [`release_on_behalf_of`](CapacityLimiter::release_on_behalf_of).
    ///
    /// # Errors
    ///
    /// [`CapacityLimiterError::AlreadyBorrowing`] (at once) if `borrower` already holds or
    /// waits for a token of this limiter.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, and a cancellation point: dropped before it completes, the borrower
    /// holds nothing and a token already handed to it goes to the next waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::sync::{CapacityLimiter, CapacityLimiterError};
    ///
    /// let limiter = CapacityLimiter::new(2);
    /// futures::executor::block_on(async {
    ///     limiter.acquire_on_behalf_of("alice").await.unwrap();
    ///     let again = limiter.acquire_on_behalf_of("alice").await;
    ///     assert_eq!(again, Err(CapacityLimiterError::AlreadyBorrowing));
    ///     limiter.release_on_behalf_of(&"alice").unwrap();
    /// });
    /// ```
    pub fn acquire_on_behalf_of<B>(&self, borrower: B) -> LimiterAcquireOnBehalfOf<'_>
    where
        B: Hash + Eq + Send + Sync + 'static,
    {
        LimiterAcquireOnBehalfOf {
            limiter: self,
            borrower: Arc::new(borrower),
            registered: false,
            waiter: Waiter::of(self, One),
        }
    }

    /// Takes a token on behalf of `borrower` if one is free and nobody waits.
    ///
    /// # Errors
    ///
    /// [`CapacityLimiterError::AlreadyBorrowing`] if `borrower` already holds or waits for a
    /// token; [`CapacityLimiterError::WouldBlock`] if none is free or others wait first.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::sync::CapacityLimiter::new(1);
    /// limiter.try_acquire_on_behalf_of(7_u64).unwrap();
    /// assert!(limiter.try_acquire_on_behalf_of(8_u64).is_err());
    /// ```
    pub fn try_acquire_on_behalf_of<B>(&self, borrower: B) -> Result<(), CapacityLimiterError>
    where
        B: Hash + Eq + Send + Sync + 'static,
    {
        let mut borrowers = self.borrowers();
        if borrowers.contains_key(&borrower as &dyn BorrowerKey) {
            return Err(CapacityLimiterError::AlreadyBorrowing);
        }
        if !self.permits.try_acquire(1) {
            return Err(CapacityLimiterError::WouldBlock);
        }
        borrowers.insert(Arc::new(borrower), Borrowing::Holding);
        Ok(())
    }

    /// Returns the token `borrower` holds, to the oldest waiter first.
    ///
    /// # Errors
    ///
    /// [`CapacityLimiterError::NotBorrowing`] if `borrower` holds no token of this limiter
    /// (it never acquired one, already released it, or is still waiting for it).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::sync::{CapacityLimiter, CapacityLimiterError};
    ///
    /// let limiter = CapacityLimiter::new(1);
    /// limiter.try_acquire_on_behalf_of("bob").unwrap();
    /// limiter.release_on_behalf_of(&"bob").unwrap();
    /// assert_eq!(limiter.release_on_behalf_of(&"bob"), Err(CapacityLimiterError::NotBorrowing));
    /// ```
    pub fn release_on_behalf_of<B>(&self, borrower: &B) -> Result<(), CapacityLimiterError>
    where
        B: Hash + Eq + Send + Sync + 'static,
    {
        {
            let mut borrowers = self.borrowers();
            let key = borrower as &dyn BorrowerKey;
            if borrowers.get(key) != Some(&Borrowing::Holding) {
                return Err(CapacityLimiterError::NotBorrowing);
            }
            borrowers.remove(key);
        }
        self.return_token();
        Ok(())
    }

    #[inline]
    fn return_token(&self) {
        let released = self.permits.release(1, MAX_PERMITS, Excess::Discard);
        debug_assert!(released.is_ok(), "discarding never refuses");
    }
}

/// A token held by an anonymous borrower of a [`CapacityLimiter`]; dropping it returns the
/// token (to the oldest waiter first, or to pay off a lowered total).
///
/// # Examples
///
/// ```
/// let limiter = sheepdog_core::sync::CapacityLimiter::new(1);
/// let token = limiter.try_acquire().unwrap();
/// drop(token);
/// assert_eq!(limiter.borrowed_tokens(), 0);
/// ```
#[must_use = "the token is returned when the guard is dropped"]
pub struct CapacityLimiterGuard<'a> {
    limiter: &'a CapacityLimiter,
}

impl fmt::Debug for CapacityLimiterGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapacityLimiterGuard")
            .finish_non_exhaustive()
    }
}

impl Drop for CapacityLimiterGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.limiter.return_token();
    }
}

/// The future returned by [`CapacityLimiter::acquire`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct LimiterAcquire<'a> {
    waiter: Waiter<'a, CapacityLimiter, One>,
}

impl<'a> Future for LimiterAcquire<'a> {
    type Output = CapacityLimiterGuard<'a>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let limiter = self.waiter.owner();
        self.waiter
            .poll_acquire(cx)
            .map(|()| CapacityLimiterGuard { limiter })
    }
}

/// The future returned by [`CapacityLimiter::acquire_on_behalf_of`].
#[must_use = "futures do nothing unless awaited"]
pub struct LimiterAcquireOnBehalfOf<'a> {
    limiter: &'a CapacityLimiter,
    borrower: Arc<dyn BorrowerKey>,
    /// Whether the borrower is in the limiter's table (as waiting, until the token comes).
    registered: bool,
    waiter: Waiter<'a, CapacityLimiter, One>,
}

impl fmt::Debug for LimiterAcquireOnBehalfOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterAcquireOnBehalfOf")
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

impl Future for LimiterAcquireOnBehalfOf<'_> {
    type Output = Result<(), CapacityLimiterError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if super::cancelled() {
            return Poll::Pending;
        }
        let this = &mut *self;
        if !this.registered {
            let mut borrowers = this.limiter.borrowers();
            if borrowers.contains_key(&*this.borrower) {
                return Poll::Ready(Err(CapacityLimiterError::AlreadyBorrowing));
            }
            borrowers.insert(Arc::clone(&this.borrower), Borrowing::Waiting);
            this.registered = true;
        }
        if this.waiter.poll_acquire(cx).is_pending() {
            return Poll::Pending;
        }
        this.limiter
            .borrowers()
            .insert(Arc::clone(&this.borrower), Borrowing::Holding);
        Poll::Ready(Ok(()))
    }
}

impl Drop for LimiterAcquireOnBehalfOf<'_> {
    fn drop(&mut self) {
        if self.registered && !self.waiter.is_done() {
            self.waiter.abandon();
            self.limiter.borrowers().remove(&*self.borrower);
        }
    }
}

/// A borrower's name with its type erased: any `Hash + Eq` value, compared with values of
/// the same type only.
trait BorrowerKey: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
    fn eq_key(&self, other: &dyn BorrowerKey) -> bool;
    fn hash_key(&self, state: &mut dyn Hasher);
}

impl<B: Hash + Eq + Send + Sync + 'static> BorrowerKey for B {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn eq_key(&self, other: &dyn BorrowerKey) -> bool {
        other.as_any().downcast_ref::<B>() == Some(self)
    }

    fn hash_key(&self, mut state: &mut dyn Hasher) {
        TypeId::of::<B>().hash(&mut state);
        self.hash(&mut state);
    }
}

impl PartialEq for dyn BorrowerKey {
    fn eq(&self, other: &Self) -> bool {
        self.eq_key(other)
    }
}

impl Eq for dyn BorrowerKey {}

impl Hash for dyn BorrowerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.hash_key(state);
    }
}
