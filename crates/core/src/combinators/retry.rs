//! `retry`: call an async operation again with exponential backoff, aware of deadlines.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use crate::cancel::{current_effective_deadline, fail_at, Elapsed, FailAfter};
use crate::time::{self, Sleep};

/// A [`RetryPolicy`] that cannot work was asked for.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `attempts` was 0: there must be at least one call.
    #[error("attempts must be at least 1")]
    ZeroAttempts,
    /// The backoff factor was below 1, infinite or NaN (1 keeps the delay constant).
    #[error("the backoff factor must be a finite number >= 1, not {0}")]
    Factor(f64),
    /// The jitter was outside `0.0..=1.0` or NaN.
    #[error("the jitter must be between 0 and 1, not {0}")]
    Jitter(f64),
}

/// How [`retry`] spaces and bounds its attempts. Build one with [`RetryPolicy::builder`].
///
/// - `attempts`: the total number of calls (1 = no retry). Default 3.
/// - The delay before retry `k` (`k = 1` after the first failure) is
///   `min(max_delay, base_delay * factor^(k-1))`. Defaults: 100 ms, 2 s, 2.0.
/// - `jitter` in `0.0..=1.0` shortens each delay by a random fraction of at most `jitter`
///   (`delay * (1 - jitter * r)`, `r` uniform in `[0, 1)`), so a jittered delay **never exceeds
///   `max_delay`** (lionagi's can reach `max_delay * (1 + jitter)`). Default 0.1; 0 turns it
///   off; 1 is "full jitter".
/// - `attempt_timeout`: an optional deadline for each call; a call that overruns it is a
///   failed attempt (retried like an error), not a cancellation.
/// - `budget`: an optional limit on the whole retry, **attempts included** (not only the
///   sleeps): calls run under the budget's deadline, and no sleep is started that would end
///   past it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sheepdog_core::combinators::RetryPolicy;
///
/// let policy = RetryPolicy::builder()
///     .attempts(4)
///     .base_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(5))
///     .jitter(0.0)
///     .build()?;
/// assert_eq!(policy.delay(1), Duration::from_millis(500));
/// assert_eq!(policy.delay(3), Duration::from_secs(2));
/// assert_eq!(policy.delay(9), Duration::from_secs(5));
/// # Ok::<(), sheepdog_core::combinators::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    factor: f64,
    jitter: f64,
    attempt_timeout: Option<Duration>,
    budget: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            factor: 2.0,
            jitter: 0.1,
            attempt_timeout: None,
            budget: None,
        }
    }
}

impl RetryPolicy {
    /// A builder starting from the defaults (3 attempts, 100 ms base, 2 s cap, factor 2,
    /// jitter 0.1, no timeout, no budget).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::combinators::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().attempts(5).build().unwrap();
    /// assert_eq!(policy.attempts(), 5);
    /// ```
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: RetryPolicy::default(),
        }
    }

    /// The total number of calls.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The per-call deadline, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The limit on the whole retry, if any.
    pub fn budget(&self) -> Option<Duration> {
        self.budget
    }

    /// The delay before retry `k` without jitter: `min(max_delay, base_delay * factor^(k-1))`
    /// (`k = 0` is treated as 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sheepdog_core::combinators::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().base_delay(Duration::from_secs(1)).factor(100.0)
    ///     .max_delay(Duration::from_secs(5)).build().unwrap();
    /// assert_eq!([1, 2, 3].map(|k| policy.delay(k).as_secs()), [1, 5, 5]);
    /// ```
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        if exponent == 0 || self.factor == 1.0 {
            return self.base_delay.min(self.max_delay);
        }
        let secs = self.base_delay.as_secs_f64() * self.factor.powi(exponent);
        // Out of `Duration`'s range (an overflow to infinity, or just past `Duration::MAX`
        // after rounding) means "more than `max_delay`".
        Duration::try_from_secs_f64(secs).map_or(self.max_delay, |delay| delay.min(self.max_delay))
    }

    /// The delay before retry `k` with jitter applied: never more than [`delay`](Self::delay),
    /// so never more than `max_delay`.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::combinators::RetryPolicy;
    ///
    /// let policy = RetryPolicy::builder().jitter(1.0).build().unwrap();
    /// assert!(policy.jittered_delay(4) <= policy.delay(4));
    /// ```
    pub fn jittered_delay(&self, retry: u32) -> Duration {
        let delay = self.delay(retry);
        if self.jitter == 0.0 {
            return delay;
        }
        // Computed in `f64`, which can round a huge delay just past `Duration::MAX`: then the
        // unjittered delay stands.
        let secs = delay.as_secs_f64() * (1.0 - self.jitter * fastrand::f64());
        Duration::try_from_secs_f64(secs).map_or(delay, |jittered| jittered.min(delay))
    }
}

/// Builds a [`RetryPolicy`]; [`build`](RetryPolicyBuilder::build) checks it.
#[derive(Debug, Clone)]
#[must_use = "call build() to get the policy"]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// The total number of calls (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.policy.attempts = attempts;
        self
    }

    /// The delay before the first retry.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.policy.base_delay = delay;
        self
    }

    /// The longest delay between two calls (jitter included).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.policy.max_delay = delay;
        self
    }

    /// The growth factor of the delay (at least 1).
    pub fn factor(mut self, factor: f64) -> Self {
        self.policy.factor = factor;
        self
    }

    /// The largest fraction a delay is shortened by at random (`0.0..=1.0`).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.policy.jitter = jitter;
        self
    }

    /// A deadline for each call, `timeout` after it starts.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.policy.attempt_timeout = Some(timeout);
        self
    }

    /// A limit on the whole retry, calls and sleeps together.
    pub fn budget(mut self, budget: Duration) -> Self {
        self.policy.budget = Some(budget);
        self
    }

    /// Checks and returns the policy.
    ///
    /// # Errors
    ///
    /// [`PolicyError`] for zero attempts, a factor below 1 (or not finite), or a jitter outside
    /// `0.0..=1.0` (or NaN).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::combinators::{PolicyError, RetryPolicy};
    ///
    /// assert_eq!(RetryPolicy::builder().attempts(0).build(), Err(PolicyError::ZeroAttempts));
    /// assert_eq!(RetryPolicy::builder().factor(0.5).build(), Err(PolicyError::Factor(0.5)));
    /// assert!(RetryPolicy::builder().factor(1.0).build().is_ok());
    /// assert!(RetryPolicy::builder().jitter(f64::NAN).build().is_err());
    /// ```
    pub fn build(self) -> Result<RetryPolicy, PolicyError> {
        let policy = self.policy;
        if policy.attempts == 0 {
            return Err(PolicyError::ZeroAttempts);
        }
        if !(policy.factor.is_finite() && policy.factor >= 1.0) {
            return Err(PolicyError::Factor(policy.factor));
        }
        if !(0.0..=1.0).contains(&policy.jitter) {
            return Err(PolicyError::Jitter(policy.jitter));
        }
        Ok(policy)
    }
}

/// What one attempt failed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError<E> {
    /// The call returned this error.
    #[error("{0}")]
    Failed(E),
    /// The call overran its deadline (the per-attempt timeout or the budget) and was dropped.
    #[error("the attempt timed out")]
    TimedOut(Elapsed),
}

/// Why [`retry`] stopped without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// Every allowed attempt failed.
    Exhausted,
    /// The `retry_on` predicate refused the error.
    NotRetryable,
    /// The next sleep would have ended at or past the ambient deadline
    /// ([`current_effective_deadline`]).
    Deadline,
    /// The budget ran out (during a call, or the next sleep would have overrun it).
    Budget,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GiveUp::Exhausted => "no attempts left",
            GiveUp::NotRetryable => "error not retryable",
            GiveUp::Deadline => "the next try would overrun the deadline",
            GiveUp::Budget => "retry budget spent",
        })
    }
}

/// [`retry`] gave up: how many calls ran, why it stopped, and the last failure.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::{retry, GiveUp, RetryPolicy};
///
/// let policy = RetryPolicy::builder().attempts(2).build().unwrap();
/// let err = futures::executor::block_on(retry(|| async { Err::<(), _>("refused") }, policy)
///     .retry_on(|_: &&str| false))
///     .unwrap_err();
/// assert_eq!(err.attempts(), 1);
/// assert_eq!(err.reason(), GiveUp::NotRetryable);
/// assert_eq!(err.into_error(), Some("refused"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryError<E> {
    attempts: u32,
    reason: GiveUp,
    last: AttemptError<E>,
}

impl<E> RetryError<E> {
    /// How many calls ran.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why retrying stopped.
    pub fn reason(&self) -> GiveUp {
        self.reason
    }

    /// The last failure.
    pub fn last(&self) -> &AttemptError<E> {
        &self.last
    }

    /// The last failure, by value.
    pub fn into_last(self) -> AttemptError<E> {
        self.last
    }

    /// The last call's error, or `None` if the last call timed out.
    pub fn into_error(self) -> Option<E> {
        match self.last {
            AttemptError::Failed(error) => Some(error),
            AttemptError::TimedOut(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up after {} attempt(s), {}: {}",
            self.attempts, self.reason, self.last
        )
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.last {
            AttemptError::Failed(error) => Some(error),
            AttemptError::TimedOut(elapsed) => Some(elapsed),
        }
    }
}

/// Calls `op` until it succeeds, following `policy` (the seed's `retry`). Before awaiting it,
/// [`retry_on`](Retry::retry_on) and [`retry_after`](Retry::retry_after) refine it.
///
/// `op` makes a fresh future for each attempt; `policy.attempts()` is the total number of
/// calls. Between calls it sleeps with [`time::sleep`] (virtual time works), and it never
/// starts a sleep that would end at or past [`current_effective_deadline`] or the budget: it
/// gives up at once with the last error instead (lionagi sleeps up to the deadline first).
/// Cancellation is never retried: cancelling the scope around `retry` drops it, sleep or call.
/// A per-attempt timeout is not a cancellation from outside: it counts as a failed attempt.
///
/// # Errors
///
/// [`RetryError`] with the number of calls, the reason ([`GiveUp`]) and the last failure.
///
/// # Panics
///
/// A panic in `op` or its future propagates. Polling the future again after it completed
/// panics.
///
/// # Cancel safety
///
/// Dropping the future drops the call or sleep in progress; no further call is made.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::combinators::{retry, RetryPolicy};
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// #[derive(Debug)]
/// enum Flaky { Connection, BadRequest }
///
/// let rt = VirtualRuntime::new();
/// let mut calls = 0;
/// let policy = RetryPolicy::builder()
///     .attempts(3)
///     .base_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(5))
///     .jitter(0.1)
///     .build()
///     .unwrap();
/// let result = rt.block_on(
///     retry(|| { calls += 1; let n = calls; async move {
///         if n < 3 { Err(Flaky::Connection) } else { Ok("reply") }
///     }}, policy)
///     .retry_on(|e: &Flaky| matches!(e, Flaky::Connection)),
/// );
/// assert_eq!(result.unwrap(), "reply");
/// assert!(rt.clock().elapsed() <= Duration::from_millis(1500));
/// # let _ = Flaky::BadRequest;
/// # }
/// ```
pub fn retry<Op, Fut, T, E>(op: Op, policy: RetryPolicy) -> Retry<Op, Fut, fn(&E) -> bool, NoHint>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    Retry {
        op,
        policy,
        retry_on: |_| true,
        hint: NoHint,
        attempts: 0,
        budget_end: None,
        state: State::Start,
    }
}

/// Where [`retry`] reads a retry-after hint from an error: any `FnMut(&E) -> Option<Duration>`,
/// or [`NoHint`].
pub trait RetryHint<E> {
    /// How long the error asks to wait before the next call, if it says.
    fn retry_after(&mut self, error: &E) -> Option<Duration>;
}

/// No retry-after hints (the default of [`retry`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHint;

impl<E> RetryHint<E> for NoHint {
    fn retry_after(&mut self, _: &E) -> Option<Duration> {
        None
    }
}

impl<E, F: FnMut(&E) -> Option<Duration>> RetryHint<E> for F {
    fn retry_after(&mut self, error: &E) -> Option<Duration> {
        self(error)
    }
}

impl<Op, Fut, P, H> Retry<Op, Fut, P, H> {
    /// Retries only errors for which `predicate` returns `true` (the seed's `retry_on`); any
    /// other error ends the retry at once ([`GiveUp::NotRetryable`]). Timeouts of attempts are
    /// always retried.
    pub fn retry_on<E, Q: FnMut(&E) -> bool>(self, predicate: Q) -> Retry<Op, Fut, Q, H> {
        Retry {
            op: self.op,
            policy: self.policy,
            retry_on: predicate,
            hint: self.hint,
            attempts: self.attempts,
            budget_end: self.budget_end,
            state: self.state,
        }
    }

    /// Honours a retry-after hint an error carries (a `Retry-After` header, a rate-limit
    /// reset): when `hint` returns `Some(wait)`, the next delay is at least `wait`. The hint is
    /// not capped by `max_delay` (the server knows best), but it is checked against the
    /// deadline and the budget like any delay.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use std::time::Duration;
    /// use sheepdog_core::combinators::{retry, RetryPolicy};
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    ///
    /// struct RateLimited { reset_in: Duration }
    ///
    /// let rt = VirtualRuntime::new();
    /// let policy = RetryPolicy::builder().attempts(2).jitter(0.0).build().unwrap();
    /// let mut first = true;
    /// let out = rt.block_on(retry(|| {
    ///     let fail = std::mem::take(&mut first);
    ///     async move { if fail { Err(RateLimited { reset_in: Duration::from_secs(7) }) } else { Ok(1) } }
    /// }, policy).retry_after(|e: &RateLimited| Some(e.reset_in)));
    /// assert!(out.is_ok());
    /// assert_eq!(rt.clock().elapsed(), Duration::from_secs(7));
    /// # }
    /// ```
    pub fn retry_after<E, G: FnMut(&E) -> Option<Duration>>(self, hint: G) -> Retry<Op, Fut, P, G> {
        Retry {
            op: self.op,
            policy: self.policy,
            retry_on: self.retry_on,
            hint,
            attempts: self.attempts,
            budget_end: self.budget_end,
            state: self.state,
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<Fut> {
        Start,
        Call { #[pin] call: Fut },
        TimedCall { #[pin] call: FailAfter<Fut> },
        Sleep { #[pin] sleep: Sleep },
        Done,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`retry`]; [`retry_on`](Retry::retry_on) and
    /// [`retry_after`](Retry::retry_after) refine it before it is awaited.
    #[project = RetryProj]
    #[must_use = "a retry does nothing until awaited"]
    pub struct Retry<Op, Fut, P, H> {
        op: Op,
        policy: RetryPolicy,
        retry_on: P,
        hint: H,
        attempts: u32,
        budget_end: Option<Instant>,
        #[pin]
        state: State<Fut>,
    }
}

impl<Op, Fut, P, H> fmt::Debug for Retry<Op, Fut, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("policy", &self.policy)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<Op, Fut, T, E, P, H> Future for Retry<Op, Fut, P, H>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
    H: RetryHint<E>,
{
    type Output = Result<T, RetryError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let failure = match this.state.as_mut().project() {
                StateProj::Start => {
                    if let Some(budget) = this.policy.budget {
                        *this.budget_end = Some(time::saturating_add(time::now(), budget));
                    }
                    None
                }
                StateProj::Sleep { sleep } => {
                    ready!(sleep.poll(cx));
                    None
                }
                StateProj::Call { call } => match ready!(call.poll(cx)) {
                    Ok(value) => return this.finish(Ok(value)),
                    Err(error) => Some(AttemptError::Failed(error)),
                },
                StateProj::TimedCall { call } => match ready!(call.poll(cx)) {
                    Ok(Ok(value)) => return this.finish(Ok(value)),
                    Ok(Err(error)) => Some(AttemptError::Failed(error)),
                    Err(elapsed) => Some(AttemptError::TimedOut(elapsed)),
                },
                StateProj::Done => panic!("`Retry` polled after completion"),
            };
            match failure {
                None => this.start_call(),
                Some(failure) => {
                    if let Err(error) = this.after_failure(failure) {
                        return this.finish(Err(error));
                    }
                }
            }
        }
    }
}

impl<Op, Fut, T, E, P, H> RetryProj<'_, Op, Fut, P, H>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
    H: RetryHint<E>,
{
    fn finish(&mut self, result: Result<T, RetryError<E>>) -> Poll<Result<T, RetryError<E>>> {
        self.state.set(State::Done);
        Poll::Ready(result)
    }

    /// Makes the next call, under the earliest of its own timeout and the budget.
    fn start_call(&mut self) {
        *self.attempts += 1;
        let call = (self.op)();
        let timeout = self
            .policy
            .attempt_timeout
            .map(|t| time::saturating_add(time::now(), t));
        let deadline = match (timeout, *self.budget_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.state.set(match deadline {
            Some(deadline) => State::TimedCall {
                call: fail_at(deadline, call),
            },
            None => State::Call { call },
        });
    }

    /// Decides what follows a failed call: a sleep, the next call, or giving up.
    fn after_failure(&mut self, failure: AttemptError<E>) -> Result<(), RetryError<E>> {
        let attempts = *self.attempts;
        let give_up = |reason, last| RetryError {
            attempts,
            reason,
            last,
        };
        let now = time::now();
        let mut delay = self.policy.jittered_delay(*self.attempts);
        match &failure {
            AttemptError::Failed(error) => {
                if !(self.retry_on)(error) {
                    return Err(give_up(GiveUp::NotRetryable, failure));
                }
                if let Some(wait) = self.hint.retry_after(error) {
                    delay = delay.max(wait);
                }
            }
            AttemptError::TimedOut(_) => {
                if self.budget_end.is_some_and(|end| now >= end) {
                    return Err(give_up(GiveUp::Budget, failure));
                }
            }
        }
        if *self.attempts >= self.policy.attempts {
            return Err(give_up(GiveUp::Exhausted, failure));
        }
        let wake = time::saturating_add(now, delay);
        if current_effective_deadline().is_some_and(|deadline| wake >= deadline) {
            return Err(give_up(GiveUp::Deadline, failure));
        }
        if self.budget_end.is_some_and(|end| wake >= end) {
            return Err(give_up(GiveUp::Budget, failure));
        }
        if delay.is_zero() {
            self.start_call();
        } else {
            self.state.set(State::Sleep {
                sleep: time::sleep_until(wake),
            });
        }
        Ok(())
    }
}
