//! A rate-limited executor: request and token budgets per interval, a bounded FIFO queue and a
//! concurrency limit, for any async job (lionagi's `iModel` rate limiting, without its defects).
//!
//! | item | what it is |
//! |---|---|
//! | [`RateLimiter`] (alias [`RateLimitedExecutor`]) | the executor: [`submit`](RateLimiter::submit) a job with its estimated token cost; it waits in line for room, budget and a slot, then runs |
//! | [`RateLimiterBuilder`] | the seed's knobs: `limit_requests`, `limit_tokens`, `capacity_refresh_time`, `queue_capacity`, `concurrency_limit`, plus [`Replenishment`] and overtaking |
//! | [`Permit`], [`OwnedPermit`] | an admission held by the caller (streams, long-lived work): a concurrency slot and a reservation, settled with the real usage; a `Permit` borrows the limiter, an `OwnedPermit` (from [`try_acquire_owned`](RateLimiter::try_acquire_owned) / [`acquire_owned`](RateLimiter::acquire_owned) on an `Arc<RateLimiter>`) holds it |
//! | [`Usage`] | the handle a job reports its real token usage through |
//! | [`RateLimiterStatistics`] | queued, running, budgets left, admitted, rejected, completed |
//! | [`RateLimitError`], [`RateLimitConfigError`] | what can go wrong, typed |
//!
//! # The model
//!
//! A job costs one request and its estimated number of tokens. It is *admitted* when, at the
//! head of the line, there is a free concurrency slot, admission is not paused, and both
//! budgets have room for its cost; the cost is then reserved, and the job runs while it holds
//! its slot. When it ends, its real token usage (if it reported one) settles the reservation:
//! the difference is refunded or charged.
//!
//! | situation | [`submit`](RateLimiter::submit) | [`try_submit`](RateLimiter::try_submit) | [`try_acquire`](RateLimiter::try_acquire) |
//! |---|---|---|---|
//! | admissible now, nobody waiting | runs at once | runs at once | `Ok(Permit)` |
//! | must wait, room in the queue | waits in line | waits in line | [`WouldWait`](RateLimitError::WouldWait) |
//! | must wait, queue full | waits for room, in order | [`QueueFull`](RateLimitError::QueueFull) | [`WouldWait`](RateLimitError::WouldWait) |
//! | cost above the whole token budget | [`ExceedsTokenWindow`](RateLimitError::ExceedsTokenWindow) at once | the same | the same |
//! | closed or shut down | [`Closed`](RateLimitError::Closed) | the same | the same |
//!
//! Replenishment is [`Continuous`](Replenishment::Continuous) (the default: what a job used
//! comes back exactly one interval after it was admitted, so no interval-long window ever
//! holds more than the budget, and nothing comes back in a lump at a window edge) or
//! [`FixedWindow`](Replenishment::FixedWindow) (lionagi's: everything comes back at each
//! multiple of the interval). No background task is involved: budgets are brought up to date
//! from [`time::now`] whenever the limiter is used, and the job at the head
//! of the line sleeps until the instant its cost fits. (On the system's clock — outside any
//! runtime, or inside one whose [`system_clock`](crate::runtime::Runtime::system_clock) says
//! so, as smol's, async-std's and tokio's do — admissions read
//! the kernel's coarse clock instead, a few nanoseconds instead of some twenty, and record
//! uses at most a few milliseconds late, never early; `docs/rate.md` has the details.)
//!
//! # Order
//!
//! Jobs are admitted strictly in the order they started waiting: a small job never overtakes a
//! big one ahead of it, unless the builder's
//! [`allow_overtaking`](RateLimiterBuilder::allow_overtaking) says so. Admission hands the
//! slot and the reservation directly to the waiter, so a newcomer cannot take them first.
//!
//! # Cancellation
//!
//! Waiting is a cancellation point of the ambient [cancel scope](crate::cancel), and dropping a
//! waiting [`submit`](RateLimiter::submit) (for instance when the scope's deadline passes)
//! frees its place in line and reserves nothing: a reservation handed to it but not yet taken
//! is given back, and the next in line is served. Dropping a running job releases its slot
//! and settles its reported usage.
//!
//! # lionagi → sheepdog
//!
//! | lionagi | sheepdog |
//! |---|---|
//! | `iModel(limit_requests=60, limit_tokens=100_000, capacity_refresh_time=60, queue_capacity=100, concurrency_limit=5)` | `RateLimiter::builder().limit_requests(60).limit_tokens(100_000).capacity_refresh_time(Duration::from_secs(60)).queue_capacity(100).concurrency_limit(5).build()?` |
//! | `RateLimitedAPIExecutor`, `append` + `forward`, `invoke()` | [`RateLimitedExecutor`], [`submit(tokens, job)`](RateLimiter::submit) |
//! | `try_enqueue` → `False` | [`try_submit`](RateLimiter::try_submit) → [`QueueFull`](RateLimitError::QueueFull) |
//! | `required_tokens` (estimated, never settled) | the cost argument, settled through [`Usage`] or [`Permit::settle`] |
//! | `stream()` (bypassed admission) | [`acquire`](RateLimiter::acquire) a [`Permit`] and hold it while the stream runs |
//! | `executor.stop()` | [`shutdown(ShutdownMode)`](RateLimiter::shutdown) |
//!
//! The guide, with every lionagi defect and how it is avoided, is `docs/rate.md`.

mod ledger;
#[cfg(all(test, shuttle))]
mod model;
mod slots;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ledger::{Amount, Ledger, Mark, REQUESTS, TOKENS};
use slots::{Slots, EPOCH_MASK, MAX_CREDIT_REQUESTS, MAX_CREDIT_TOKENS};

use crate::shim::{AtomicU64, Mutex, MutexGuard};
use crate::sync::queue::{WaitList, Wakers};
use crate::sync::Event;
use crate::time::{self, Bounds, Coarse, Sleep};

/// Bounds on the current instant from a coarse reading already taken, or else from a new
/// reading (a precise one if the limiter does not use the coarse clock).
fn read_bounds(config: &Config, coarse: Option<Coarse>) -> Bounds {
    match coarse {
        Some(coarse) => coarse.bounds(),
        None if config.coarse => time::now_bounds(),
        None => Bounds::exact(time::now()),
    }
}

/// lionagi's name for the executor; the same type as [`RateLimiter`].
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::RateLimitedExecutor;
///
/// let executor = RateLimitedExecutor::builder().limit_requests(60).build().unwrap();
/// assert_eq!(executor.statistics().requests_left, Some(60));
/// ```
pub type RateLimitedExecutor = RateLimiter;

/// The futures returned by [`RateLimiter::acquire`] and [`RateLimiter::try_acquire_queued`].
pub mod futures {
    pub use super::Acquire;
}

/// How used budget comes back.
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::{RateLimiter, Replenishment};
///
/// let lionagi_like = RateLimiter::builder()
///     .limit_requests(60)
///     .replenishment(Replenishment::FixedWindow)
///     .build()
///     .unwrap();
/// # drop(lionagi_like);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Replenishment {
    /// What a job used comes back exactly one interval after its admission (a sliding window).
    /// The budget refills continuously as uses age out, never in one lump at a window edge,
    /// and no interval-long window, wherever it starts, ever holds more admissions or tokens
    /// than the budget. (A classic token bucket that starts full cannot promise that: it lets
    /// nearly twice the budget through in the first interval.)
    #[default]
    Continuous,
    /// lionagi's: the budgets are full again at each multiple of the interval after the first
    /// use; what was not used is lost. Two windows' worth can pass in a short time across an
    /// edge. A charge beyond the budget is carried over to the next windows as debt.
    FixedWindow,
}

/// What [`RateLimiter::shutdown`] does with the jobs still waiting in line.
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::ShutdownMode;
///
/// assert_ne!(ShutdownMode::FinishQueued, ShutdownMode::CancelQueued);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Let them be admitted under the budgets as usual, and run.
    FinishQueued,
    /// Fail them at once with [`RateLimitError::Closed`].
    CancelQueued,
}

/// A job was not admitted.
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::{RateLimitError, RateLimiter};
///
/// let limiter = RateLimiter::builder().limit_tokens(1_000).build().unwrap();
/// let err = limiter.try_acquire(5_000).unwrap_err();
/// assert_eq!(err, RateLimitError::ExceedsTokenWindow { cost: 5_000, limit: 1_000 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The queue of waiting jobs is full (`try_*` only; `submit` waits for room).
    #[error("the rate limiter's queue is full ({capacity} waiting)")]
    QueueFull {
        /// The queue capacity.
        capacity: usize,
    },
    /// The job's estimated cost is more than the whole token budget of an interval: it could
    /// never be admitted.
    #[error("a cost of {cost} tokens exceeds the whole token budget of {limit} per interval")]
    ExceedsTokenWindow {
        /// The job's estimated cost.
        cost: u64,
        /// The token budget per interval.
        limit: u64,
    },
    /// The limiter was closed or shut down, before the job was admitted.
    #[error("the rate limiter is closed")]
    Closed,
    /// The job could not be admitted at once ([`try_acquire`](RateLimiter::try_acquire) only).
    #[error("the job cannot be admitted without waiting")]
    WouldWait,
}

/// A knob of [`RateLimiterBuilder`] has a value that cannot work.
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::{RateLimitConfigError, RateLimiter};
///
/// let err = RateLimiter::builder().limit_requests(0).build().unwrap_err();
/// assert_eq!(err, RateLimitConfigError::Zero { knob: "limit_requests" });
/// let err = RateLimiter::builder().capacity_refresh_secs(f64::NAN).build().unwrap_err();
/// assert!(matches!(err, RateLimitConfigError::InvalidInterval { .. }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitConfigError {
    /// A limit or capacity of zero (`None`, not zero, means unlimited).
    #[error("{knob} must be at least 1 (use None for unlimited)")]
    Zero {
        /// Which knob.
        knob: &'static str,
    },
    /// The refresh interval is zero, negative, not a number, or too large.
    #[error("capacity_refresh_time must be a positive, finite duration (got {secs} s)")]
    InvalidInterval {
        /// The interval asked for, in seconds.
        secs: f64,
    },
}

/// A snapshot of a [`RateLimiter`], from [`RateLimiter::statistics`].
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::RateLimiter;
///
/// let limiter = RateLimiter::builder().limit_requests(10).limit_tokens(500).build().unwrap();
/// let permit = limiter.try_acquire(200).unwrap();
/// let stats = limiter.statistics();
/// assert_eq!((stats.running, stats.queued, stats.admitted), (1, 0, 1));
/// assert_eq!((stats.requests_left, stats.tokens_left), (Some(9), Some(300)));
/// drop(permit);
/// assert_eq!(limiter.statistics().completed, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimiterStatistics {
    /// Jobs waiting in the queue (at most the queue capacity).
    pub queued: usize,
    /// Callers of `submit` waiting for room in a full queue.
    pub waiting_for_room: usize,
    /// Jobs admitted and not finished (permits alive).
    pub running: usize,
    /// Requests left in the budget now; `None` if unlimited.
    pub requests_left: Option<u64>,
    /// Tokens left in the budget now; `None` if unlimited.
    pub tokens_left: Option<u64>,
    /// Jobs admitted so far.
    pub admitted: u64,
    /// Jobs refused so far (queue full, too costly, closed, cancelled by shutdown, would wait).
    pub rejected: u64,
    /// Admitted jobs that have finished (their permits were dropped).
    pub completed: u64,
    /// The instant admission is paused until, if it is paused.
    pub paused_until: Option<Instant>,
    /// Whether the limiter was closed or shut down.
    pub closed: bool,
}

/// Builds a [`RateLimiter`] from the seed's knobs. Every limit defaults to `None` (unlimited)
/// except the queue capacity (100, as lionagi's `iModel`) and the interval (60 s).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sheepdog_core::rate::RateLimiter;
///
/// let limiter = RateLimiter::builder()
///     .limit_requests(60)          // requests per interval
///     .limit_tokens(100_000)       // tokens per interval
///     .capacity_refresh_time(Duration::from_secs(60))
///     .queue_capacity(100)         // jobs that may wait
///     .concurrency_limit(5)        // jobs (streams included) running at once
///     .build()
///     .unwrap();
/// assert_eq!(limiter.statistics().tokens_left, Some(100_000));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RateLimiterBuilder {
    limits: [Option<u64>; 2],
    interval: Interval,
    queue_capacity: Option<usize>,
    concurrency_limit: Option<usize>,
    replenishment: Replenishment,
    allow_overtaking: bool,
}

#[derive(Debug, Clone, Copy)]
enum Interval {
    Duration(Duration),
    Secs(f64),
}

impl Default for RateLimiterBuilder {
    fn default() -> Self {
        RateLimiterBuilder {
            limits: [None, None],
            interval: Interval::Duration(Duration::from_secs(60)),
            queue_capacity: Some(100),
            concurrency_limit: None,
            replenishment: Replenishment::Continuous,
            allow_overtaking: false,
        }
    }
}

impl RateLimiterBuilder {
    /// Requests admitted per interval (lionagi's `limit_requests`); `None` is unlimited.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limited = RateLimiter::builder().limit_requests(60).build().unwrap();
    /// let unlimited = RateLimiter::builder().limit_requests(None).build().unwrap();
    /// assert_eq!(limited.statistics().requests_left, Some(60));
    /// assert_eq!(unlimited.statistics().requests_left, None);
    /// ```
    pub fn limit_requests(mut self, limit: impl Into<Option<u64>>) -> Self {
        self.limits[ledger::REQUESTS] = limit.into();
        self
    }

    /// Tokens admitted per interval (lionagi's `limit_tokens`); `None` is unlimited.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_tokens(100_000).build().unwrap();
    /// assert_eq!(limiter.statistics().tokens_left, Some(100_000));
    /// ```
    pub fn limit_tokens(mut self, limit: impl Into<Option<u64>>) -> Self {
        self.limits[TOKENS] = limit.into();
        self
    }

    /// The interval the budgets are counted over (lionagi's `capacity_refresh_time`; default
    /// 60 s).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let per_second = RateLimiter::builder()
    ///     .limit_requests(10)
    ///     .capacity_refresh_time(Duration::from_secs(1))
    ///     .build()
    ///     .unwrap();
    /// # drop(per_second);
    /// ```
    pub fn capacity_refresh_time(mut self, interval: Duration) -> Self {
        self.interval = Interval::Duration(interval);
        self
    }

    /// The interval in seconds, as lionagi takes it. Zero, negative, NaN or infinite values
    /// make [`build`](Self::build) fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// assert!(RateLimiter::builder().capacity_refresh_secs(0.5).build().is_ok());
    /// assert!(RateLimiter::builder().capacity_refresh_secs(-1.0).build().is_err());
    /// ```
    pub fn capacity_refresh_secs(mut self, secs: f64) -> Self {
        self.interval = Interval::Secs(secs);
        self
    }

    /// How many jobs may wait in line (default 100); `None` is unbounded. When the queue is
    /// full, [`submit`](RateLimiter::submit) waits for room (in order) and
    /// [`try_submit`](RateLimiter::try_submit) fails with
    /// [`QueueFull`](RateLimitError::QueueFull).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// assert!(RateLimiter::builder().queue_capacity(10).build().is_ok());
    /// assert!(RateLimiter::builder().queue_capacity(0).build().is_err());
    /// ```
    pub fn queue_capacity(mut self, capacity: impl Into<Option<usize>>) -> Self {
        self.queue_capacity = capacity.into();
        self
    }

    /// How many admitted jobs (and held [`Permit`]s, streams included) may run at once;
    /// `None` (the default) is unlimited (in fact at most 1,048,575 at once, as is any larger
    /// limit).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().concurrency_limit(1).build().unwrap();
    /// let held = limiter.try_acquire(0).unwrap();
    /// assert!(limiter.try_acquire(0).is_err());
    /// drop(held);
    /// assert!(limiter.try_acquire(0).is_ok());
    /// ```
    pub fn concurrency_limit(mut self, limit: impl Into<Option<usize>>) -> Self {
        self.concurrency_limit = limit.into();
        self
    }

    /// How used budget comes back (default [`Replenishment::Continuous`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::{RateLimiter, Replenishment};
    ///
    /// let limiter = RateLimiter::builder()
    ///     .replenishment(Replenishment::FixedWindow)
    ///     .build()
    ///     .unwrap();
    /// # drop(limiter);
    /// ```
    pub fn replenishment(mut self, replenishment: Replenishment) -> Self {
        self.replenishment = replenishment;
        self
    }

    /// Lets a waiting job that fits be admitted before earlier ones that do not (default
    /// `false`: strict arrival order). Overtaking raises throughput with mixed costs, but a
    /// big job may then wait for as long as small ones keep coming.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_tokens(100).allow_overtaking(true).build();
    /// assert!(limiter.is_ok());
    /// ```
    pub fn allow_overtaking(mut self, allow: bool) -> Self {
        self.allow_overtaking = allow;
        self
    }

    /// Checks the knobs and builds the limiter; its budgets start full.
    ///
    /// # Errors
    ///
    /// [`RateLimitConfigError::Zero`] for a limit, queue capacity or concurrency limit of zero;
    /// [`RateLimitConfigError::InvalidInterval`] for an interval that is zero, negative, NaN
    /// or infinite.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::{RateLimitConfigError, RateLimiter};
    ///
    /// // lionagi waits forever with `limit_requests=0`; here it is an error.
    /// assert_eq!(
    ///     RateLimiter::builder().limit_requests(0).build().unwrap_err(),
    ///     RateLimitConfigError::Zero { knob: "limit_requests" },
    /// );
    /// ```
    pub fn build(self) -> Result<RateLimiter, RateLimitConfigError> {
        let zero = |knob| Err(RateLimitConfigError::Zero { knob });
        if self.limits[ledger::REQUESTS] == Some(0) {
            return zero("limit_requests");
        }
        if self.limits[TOKENS] == Some(0) {
            return zero("limit_tokens");
        }
        if self.queue_capacity == Some(0) {
            return zero("queue_capacity");
        }
        if self.concurrency_limit == Some(0) {
            return zero("concurrency_limit");
        }
        let interval = match self.interval {
            Interval::Duration(d) if !d.is_zero() => d,
            Interval::Duration(d) => {
                return Err(RateLimitConfigError::InvalidInterval {
                    secs: d.as_secs_f64(),
                })
            }
            Interval::Secs(secs) => match Duration::try_from_secs_f64(secs) {
                Ok(d) if !d.is_zero() => d,
                _ => return Err(RateLimitConfigError::InvalidInterval { secs }),
            },
        };
        let config = Config {
            queue_capacity: self.queue_capacity,
            allow_overtaking: self.allow_overtaking,
            interval,
            replenishment: self.replenishment,
            reads_clock: self.limits != [None, None],
            limits: self.limits,
            // Fixed windows must know which window an admission falls in: coarse bounds a few
            // milliseconds wide would leave that open too often with short intervals.
            coarse: self.limits != [None, None]
                && (self.replenishment == Replenishment::Continuous
                    || interval >= Duration::from_secs(1)),
        };
        let slots = Arc::new(Slots::new(self.concurrency_limit));
        let state = State {
            ledger: Ledger::new(self.limits, interval, self.replenishment),
            slots: Arc::clone(&slots),
            waiters: WaitList::default(),
            paused_until: None,
            closed: false,
            last_now: None,
            last_stamp: None,
            epoch_bounds: None,
            epoch_now: None,
            slow_left_up: false,
            next_id: 1,
            admitted: 0,
            rejected: 0,
            credit: None,
        };
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                config,
                slots,
                state: Mutex::new(state),
                drained: Event::new(),
            }),
        })
    }
}

/// A rate-limited executor: request and token budgets per interval, a bounded FIFO queue of
/// waiting jobs and a concurrency limit (see the [module documentation](self) for the model).
///
/// Cloning gives another handle to the same limiter.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::rate::RateLimiter;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// let rt = VirtualRuntime::new();
/// let clock = rt.clock();
/// rt.block_on(async {
///     let limiter = RateLimiter::builder()
///         .limit_requests(2)
///         .capacity_refresh_time(Duration::from_secs(60))
///         .build()
///         .unwrap();
///     let start = time::now();
///     for i in 0..3 {
///         limiter.submit(0, async { i }).await.unwrap();
///     }
///     // The third request waited until the first one's budget came back.
///     assert_eq!(time::now() - start, Duration::from_secs(60));
/// });
/// assert_eq!(clock.elapsed(), Duration::from_secs(60));
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    /// The concurrency slots and counters, also used without the lock.
    slots: Arc<Slots>,
    state: Mutex<State>,
    /// Set once the limiter is closed and nothing waits or runs.
    drained: Event,
}

#[derive(Debug)]
struct Config {
    queue_capacity: Option<usize>,
    allow_overtaking: bool,
    interval: Duration,
    replenishment: Replenishment,
    /// Whether a budget is limited, so that admission must read the clock.
    reads_clock: bool,
    /// The budgets per interval (as the ledger's).
    limits: [Option<u64>; 2],
    /// Whether admissions on the system's clock read the coarse clock ([`time::coarse_now`]).
    coarse: bool,
}

impl Config {
    /// The cost of a job of `tokens` in the budgets that are limited.
    fn cost(&self, tokens: u64) -> Amount {
        [
            u64::from(self.limits[REQUESTS].is_some()),
            if self.limits[TOKENS].is_some() {
                tokens
            } else {
                0
            },
        ]
    }
}

/// Credit handed out for lock-free admissions (see [`State::issue`]).
#[derive(Debug, Clone, Copy)]
struct Credit {
    /// Admissions it allows.
    requests: u64,
    /// Tokens it allows (meaningless when tokens are unlimited).
    tokens: u64,
    /// What of it the ledger counts as used until it is collected.
    held: Amount,
    /// The coarse clock's epoch it is valid in, with limited budgets.
    epoch: Option<u64>,
}

type Grant = Result<Mark, RateLimitError>;

/// The grant of a waiter failed with [`RateLimitError::Closed`], in its mailbox (a mark's word
/// is tagged `0b01` or `0b10`; see [`Mark::to_word`]).
const CLOSED_WORD: u64 = 0b11 << 62;

/// The grant a waiter of `tokens` took from its mailbox.
fn grant_of(word: u64, config: &Config, tokens: u64) -> Grant {
    Mark::from_word(word, config.cost(tokens)).ok_or(RateLimitError::Closed)
}

#[derive(Debug)]
struct State {
    ledger: Ledger,
    /// The same slots as `Shared::slots`; under the lock they change only while `SLOW` is
    /// set, or through the compare-and-swap that sets it.
    slots: Arc<Slots>,
    /// Everyone waiting, in order: the first `queue_capacity` are the queue, the rest wait for
    /// room. The request is the estimated token cost. Grants go through the waiters' mailboxes
    /// (`slots.mailboxes`, [`State::hand`]), so a waiter takes its admission without the lock.
    waiters: WaitList<u64, ()>,
    paused_until: Option<Instant>,
    closed: bool,
    /// The latest instant the books were brought up to, so that it never goes backwards.
    last_now: Option<Instant>,
    /// The latest instant a use was recorded at, so that recorded instants never go backwards.
    last_stamp: Option<Instant>,
    /// The bounds of the last coarse reading under the lock, for its epoch
    /// ([`clock_bounded`](Self::clock_bounded)).
    epoch_bounds: Option<Bounds>,
    /// What [`clock_bounded`](Self::clock_bounded) made of them last.
    epoch_now: Option<Now>,
    next_id: u64,
    /// Admissions so far (those on credit are added when the credit is collected).
    admitted: u64,
    rejected: u64,
    /// The credit in the slot word, if any was issued and not collected.
    credit: Option<Credit>,
    /// The hand-off that emptied the line left `SLOW` up; the next operation under the lock
    /// lowers it ([`State::serve_with`]).
    slow_left_up: bool,
}

/// What the limiter knows of the current instant, after [`State::clock`].
#[derive(Debug, Clone, Copy)]
struct Now {
    /// Never later than the true instant: the books and the pause are up to date to it.
    at: Instant,
    /// Never earlier than the true instant.
    upper: Instant,
    /// Never earlier than the true instant nor than any use recorded before: what is used now
    /// is recorded at this instant.
    stamp: Instant,
    /// Whether the clock was read precisely (`at` is then the reading, unless the clock
    /// seemed to go backwards).
    exact: bool,
}

impl State {
    /// Reads the clock precisely if anything depends on it (limited budgets or a pause),
    /// brings the budgets and the pause up to date, and returns the instant.
    fn clock(&mut self) -> Option<Now> {
        self.clock_with(None)
    }

    /// [`clock`](Self::clock) from [`time::now_bounds`] if the limiter uses the coarse clock
    /// (on the system's clock, a cheap reading within a few clock ticks instead of a precise
    /// one).
    ///
    /// Bounds worked out from a coarse reading are kept for its epoch: a later reading in the
    /// same epoch reuses them (the same upper bound, the epoch's end; an earlier lower bound,
    /// which is still never later than the true instant), without the arithmetic on instants.
    fn clock_bounded(&mut self, config: &Config) -> Option<Now> {
        if self.ledger.is_unlimited() && self.paused_until.is_none() {
            return None;
        }
        let Some(coarse) = config.coarse.then(time::coarse_now).flatten() else {
            return self.clock_with(Some(Bounds::exact(time::now())));
        };
        let bounds = match self.epoch_bounds {
            Some(bounds) if bounds.epoch == Some(coarse.epoch) => {
                // Nothing moved the books since the last reading of this epoch: it would come
                // out the same (and bring the books up to where they are).
                if let Some(now) = self.epoch_now {
                    if self.last_now == Some(now.at)
                        && self.last_stamp == Some(now.stamp)
                        && self.paused_until.is_none()
                    {
                        return Some(now);
                    }
                }
                bounds
            }
            _ => {
                let bounds = coarse.bounds();
                self.epoch_bounds = bounds.epoch.is_some().then_some(bounds);
                bounds
            }
        };
        let now = self.clock_with(Some(bounds));
        self.epoch_now = now.filter(|_| self.epoch_bounds.is_some());
        now
    }

    /// [`clock`](Self::clock), with bounds on the instant read before the lock was taken if
    /// they were (so the lock is held for less time, and the clock read may be a cheap one).
    fn clock_with(&mut self, read: Option<Bounds>) -> Option<Now> {
        if self.ledger.is_unlimited() && self.paused_until.is_none() {
            return None;
        }
        let read = read.unwrap_or_else(|| Bounds::exact(time::now()));
        let at = self
            .last_now
            .map_or(read.lower, |last| read.lower.max(last));
        let upper = read.upper.max(at);
        let stamp = self.last_stamp.map_or(upper, |last| upper.max(last));
        self.last_now = Some(at);
        self.last_stamp = Some(stamp);
        self.ledger.advance(at);
        if self.paused_until.is_some_and(|until| until <= at) {
            self.paused_until = None;
            self.sync_slow();
        }
        Some(Now {
            at,
            upper,
            stamp,
            exact: read.is_exact(),
        })
    }

    /// The clock for an admission of `tokens`, from `read` (bounds read before the lock), and
    /// whether the budgets have room for it ([`budget_ok`](Self::budget_ok)). When the bounds
    /// leave that answer open (a use comes back, a window turns or a pause ends between
    /// them), the clock is read precisely.
    fn admission_clock(&mut self, read: Option<Bounds>, tokens: u64) -> (Option<Now>, bool) {
        let now = self.clock_with(read);
        let ok = self.budget_ok(tokens);
        match now {
            Some(n) if !n.exact && self.unsure_until(n.upper, ok) => {
                let now = self.clock();
                (now, self.budget_ok(tokens))
            }
            _ => (now, ok),
        }
    }

    /// Whether what [`budget_ok`](Self::budget_ok) answered (`ok`), or the window a use would
    /// be recorded in, could change before `upper`.
    fn unsure_until(&self, upper: Instant, ok: bool) -> bool {
        self.paused_until.is_some_and(|until| until <= upper) || self.ledger.unsure_until(upper, ok)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes the credit back out of the slot word (first thing under the lock, so that while
    /// the lock is held nothing is admitted without it): counts the admissions made on it,
    /// records what they used, and stops holding the rest.
    ///
    /// What was spent is recorded at the end of the credit's coarse epoch, the instant every
    /// admission on it names in its mark: each was made in that epoch, unless the coarse
    /// clock went round the epochs the slot word can tell apart; then it is recorded now.
    fn collect(&mut self) {
        let Some(credit) = self.credit.take() else {
            return;
        };
        let unspent = self.slots.collect();
        self.admitted += credit.requests - unspent.requests;
        let Some(epoch) = credit.epoch else { return };
        let limited = self.ledger.limits().map(|limit| limit.is_some());
        let unspent = [
            if limited[REQUESTS] {
                unspent.requests
            } else {
                0
            },
            if limited[TOKENS] { unspent.tokens } else { 0 },
        ];
        self.ledger.unhold(unspent);
        self.slots.unblock();
        let spent = [0, 1].map(|d| credit.held[d] - unspent[d]);
        if spent == [0, 0] {
            return;
        }
        let read = time::now_bounds();
        let at = match time::epoch_by(read.upper) {
            Some(by) if by <= epoch.saturating_add(EPOCH_MASK) => time::epoch_end(epoch),
            _ => None,
        }
        .unwrap_or(read.upper);
        let stamp = self.last_stamp.map_or(at, |last| at.max(last));
        self.last_stamp = Some(stamp);
        let id = self.id();
        self.ledger.record(stamp, spent, id);
    }

    /// After a refusal: if the request budget is spent, lets later refusals happen without
    /// the lock until the coarse epoch in which it can have room again.
    fn block_fast_refusals(&self, now: Option<Now>) {
        let Some(now) = now else { return };
        if !self.waiters.is_empty() || self.paused_until.is_some() || self.closed {
            return;
        }
        let any = self.ledger.cost(0);
        if any[REQUESTS] == 0 || self.ledger.fits(any) {
            return;
        }
        let ready = self.ledger.ready_at(now.at, any);
        if let Some(epoch) = time::last_epoch_before(ready) {
            self.slots.block_until(epoch);
        }
    }

    /// Hands out credit for lock-free admissions, if nobody waits, admission is neither
    /// paused nor closed, and (with limited budgets) the replenishment is continuous and
    /// `epoch` is the coarse clock's epoch this operation read (after `clock`).
    ///
    /// With limited budgets the credit is what the budgets have left, counted as used until it
    /// is collected, valid in `epoch` only: an admission on it is recorded at the epoch's end
    /// (never earlier than the admission), and the next operation under the lock after the
    /// epoch ends collects it. Without budgets it only counts admissions.
    fn issue(&mut self, config: &Config, epoch: Option<u64>) {
        if self.credit.is_some()
            || !self.waiters.is_empty()
            || self.closed
            || self.paused_until.is_some()
        {
            return;
        }
        let credit = if config.reads_clock {
            let Some(epoch) = epoch else { return };
            if config.replenishment != Replenishment::Continuous {
                return;
            }
            let [requests_left, tokens_left] = self.ledger.left();
            let requests =
                requests_left.map_or(MAX_CREDIT_REQUESTS, |left| left.min(MAX_CREDIT_REQUESTS));
            let tokens = tokens_left.map_or(MAX_CREDIT_TOKENS, |left| left.min(MAX_CREDIT_TOKENS));
            if requests == 0 {
                return;
            }
            let held = [
                if requests_left.is_some() { requests } else { 0 },
                if tokens_left.is_some() { tokens } else { 0 },
            ];
            self.ledger.hold(held);
            Credit {
                requests,
                tokens,
                held,
                epoch: Some(epoch),
            }
        } else {
            Credit {
                requests: MAX_CREDIT_REQUESTS,
                tokens: 0,
                held: [0, 0],
                epoch: None,
            }
        };
        self.slots
            .issue(credit.epoch.unwrap_or(0), credit.requests, credit.tokens);
        self.credit = Some(credit);
    }

    /// Admits the waiter `key` (or fails it, with [`CLOSED_WORD`]): takes it out of the line
    /// and posts `word` to its mailbox. Returns its waker, to be woken after the lock.
    fn hand(&mut self, key: usize, word: u64) -> Waker {
        let (_, waker) = self.waiters.hand(key);
        self.slots.mailboxes.post(key, word);
        waker
    }

    /// Puts a waiter of `tokens` at the back of the line, reusing the slot of one that took
    /// its grant if there is one; returns its key.
    fn push(&mut self, tokens: u64, waker: &Waker) -> usize {
        let mailboxes = &self.slots.mailboxes;
        self.waiters.reclaim(|key| mailboxes.taken(key));
        let key = self.waiters.push(tokens, waker);
        mailboxes.open(key);
        key
    }

    /// Keeps the `SLOW` flag in line with who waits, closing and pausing.
    fn sync_slow(&mut self) {
        self.slow_left_up = false;
        self.slots
            .set_slow(!self.waiters.is_empty() || self.closed || self.paused_until.is_some());
    }

    /// [`sync_slow`](Self::sync_slow) if the hand-off that emptied the line left `SLOW` up.
    fn lower_slow_left_up(&mut self) {
        if self.slow_left_up {
            self.sync_slow();
        }
    }

    /// Whether a job of `tokens` is within the budgets and admission is not paused, ignoring
    /// the slots and who waits (after `clock`).
    fn budget_ok(&self, tokens: u64) -> bool {
        self.paused_until.is_none() && self.ledger.fits(self.ledger.cost(tokens))
    }

    /// Reserves the cost of a job of `tokens`, whose slot was taken (after `clock`).
    fn reserve(&mut self, now: Option<Now>, tokens: u64) -> Mark {
        let id = self.id();
        match now {
            Some(now) => {
                let cost = self.ledger.cost(tokens);
                self.ledger.take(now.stamp, cost, id)
            }
            None => Mark::empty(id),
        }
    }

    /// Gives back everything a reservation that was granted but never taken holds, and its
    /// slot (the admission is uncounted).
    fn give_back(&mut self, mark: &mut Mark) {
        self.clock();
        let amount = mark.amount;
        self.ledger.refund(mark, amount);
        self.slots.unblock();
        self.admitted -= 1;
        self.slots.release_locked();
    }

    /// Admits waiters while the head of the line (or, with overtaking, any waiter in the
    /// queue) can be admitted; wakes them, and the new head so it re-arms its timer.
    ///
    /// `nudge` also wakes the head when nobody was admitted: callers that changed what the
    /// head waits for (a freed slot, a refund, a pause) pass `true`, so a head that had no
    /// timer, or one for a later instant, looks again. The head's own poll passes `false`.
    ///
    /// Returns the instant it read, if it read the clock.
    fn serve(&mut self, config: &Config, wakers: &mut Wakers, nudge: bool) -> Option<Now> {
        self.serve_with(config, wakers, nudge, false)
    }

    /// [`serve`](Self::serve) with a slot in hand if `in_hand`: one the caller holds and
    /// releases, which goes straight to the first waiter admitted (no release and retake of
    /// the slot word), or else back to the word.
    fn serve_with(
        &mut self,
        config: &Config,
        wakers: &mut Wakers,
        nudge: bool,
        mut in_hand: bool,
    ) -> Option<Now> {
        if self.waiters.is_empty() {
            if in_hand {
                self.slots.release_locked();
            }
            self.sync_slow();
            return None;
        }
        // While the line is not empty `SLOW` is up, so the slots change only under the lock:
        // with none free, nobody can be admitted, and the clock is not needed.
        let mut now = None;
        // The first waiter to admit, if worked out for the current books.
        let mut first = None;
        if in_hand || self.slots.free() {
            now = self.clock_bounded(config);
            if let Some(n) = now {
                first = self.next_admissible(config);
                if !n.exact && self.unsure_until(n.upper, first.is_some()) {
                    now = self.clock();
                    first = None;
                }
            }
        }
        let mut admitted = false;
        while let Some((key, tokens)) = first.take().or_else(|| self.next_admissible(config)) {
            if in_hand {
                in_hand = false;
            } else if !self.slots.take_or_flag(true, false) {
                break;
            }
            self.admitted += 1;
            let mark = self.reserve(now, tokens);
            wakers.push(self.hand(key, mark.to_word()));
            admitted = true;
        }
        if in_hand {
            self.slots.release_locked();
        }
        // Only a head that may sleep on a timer (budgets or a pause) needs the nudge: without
        // them, whatever frees its way admits it right here.
        let timed = !self.ledger.is_unlimited() || self.paused_until.is_some();
        if (admitted || nudge) && timed {
            wakers.extend(self.waiters.front_waker());
        }
        if admitted && self.waiters.is_empty() {
            // The line was just emptied by a hand-off: `SLOW` stays up (a superset of when it
            // must be) and the next operation under the lock lowers it. A line that fills and
            // empties by turns (one waiter at a time) then never pays to lower and raise it.
            self.slow_left_up = true;
        } else {
            self.sync_slow();
        }
        now
    }

    /// The waiter to admit next if a slot is free: the head of the line if admission is not
    /// paused and its cost fits (with overtaking: the first in the queue whose cost fits).
    fn next_admissible(&self, config: &Config) -> Option<(usize, u64)> {
        if self.paused_until.is_some() || self.waiters.is_empty() {
            return None;
        }
        let ledger = &self.ledger;
        let fits = |&(_, &tokens): &(usize, &u64)| ledger.fits(ledger.cost(tokens));
        let next = if config.allow_overtaking {
            let queue = config.queue_capacity.unwrap_or(usize::MAX);
            self.waiters.iter().take(queue).find(fits)
        } else {
            self.waiters.front_entry().filter(fits)
        };
        next.map(|(key, &tokens)| (key, tokens))
    }

    /// When the head of the line should look again if nothing else happens: the end of a
    /// pause, or the instant its cost (with overtaking: any queued cost) fits. `None` when only
    /// a released slot can help, or the line is empty.
    fn next_wake(&self, config: &Config, now: Option<Now>) -> Option<Instant> {
        let now = now?.at;
        if self.waiters.is_empty() || !self.slots.free() {
            return None;
        }
        if let Some(until) = self.paused_until {
            return Some(until);
        }
        if config.allow_overtaking {
            let queue = config.queue_capacity.unwrap_or(usize::MAX);
            self.waiters
                .iter()
                .take(queue)
                .map(|(_, &tokens)| self.ledger.ready_at(now, self.ledger.cost(tokens)))
                .min()
        } else {
            let tokens = *self.waiters.front()?;
            Some(self.ledger.ready_at(now, self.ledger.cost(tokens)))
        }
    }

    fn drained(&self) -> bool {
        self.closed && self.waiters.is_empty() && self.slots.running() == 0
    }

    /// Refuses a job that can never be admitted (closed, or too costly), counting it.
    fn refuse(&mut self, tokens: u64) -> Result<(), RateLimitError> {
        let refusal = if self.closed {
            RateLimitError::Closed
        } else {
            match self.ledger.limits()[TOKENS] {
                Some(limit) if tokens > limit => RateLimitError::ExceedsTokenWindow {
                    cost: tokens,
                    limit,
                },
                _ => return Ok(()),
            }
        };
        self.rejected += 1;
        Err(refusal)
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.shared.config)
            .field("statistics", &self.statistics())
            .finish()
    }
}

impl RateLimiter {
    /// A builder with every limit unlimited, a queue of 100 and a 60 s interval.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::rate::RateLimiter::builder().build().unwrap();
    /// assert_eq!(limiter.statistics().requests_left, None);
    /// ```
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// The `submit` family's admission when it can be had at once, on credit, as the first
    /// poll of an [`Acquire`] would have it (and not inside a cancelled scope), without
    /// making an `Acquire`. The family holds its admission as a `Held` that borrows the
    /// limiter (no reference count per job), made from the mark.
    #[inline]
    fn admit_now(&self, tokens: u64) -> Option<Mark> {
        if crate::cancel::is_cancelled() {
            return None;
        }
        let shared = &*self.shared;
        let coarse = shared.config.coarse.then(time::coarse_now).flatten();
        shared.admit_on_credit(tokens, coarse)
    }

    /// Waits in line until the job can be admitted, then runs `job` and returns its output.
    /// `tokens` is the job's estimated token cost (ignored when tokens are unlimited); each
    /// job also costs one request. When the queue is full, waits for room first, in order.
    ///
    /// Admission reserves one request and the estimate; nothing settles it afterwards (the
    /// estimate stays charged in full), and the job holds only its concurrency slot while it
    /// runs. Use [`submit_with`](Self::submit_with) to report the job's real usage.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::ExceedsTokenWindow`] at once if `tokens` is above the token budget;
    /// [`RateLimitError::Closed`] if the limiter is closed, or shut down with
    /// [`ShutdownMode::CancelQueued`] while the job waited.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits frees its place in line and reserves nothing;
    /// dropping it while `job` runs drops `job` and releases its slot (the estimated cost stays
    /// charged).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_requests(60).limit_tokens(10_000).build().unwrap();
    /// let answer = futures::executor::block_on(limiter.submit(120, async { 42 })).unwrap();
    /// assert_eq!(answer, 42);
    /// assert_eq!(limiter.statistics().tokens_left, Some(9_880));
    /// ```
    pub async fn submit<F: Future>(
        &self,
        tokens: u64,
        job: F,
    ) -> Result<F::Output, RateLimitError> {
        let mark = match self.admit_now(tokens) {
            Some(mark) => mark,
            None => self.admit_mark(tokens, false).await?,
        };
        // No usage handle: nothing will settle the mark, so only the slot is held.
        let _ = mark;
        let slot = SlotHeld(&self.shared);
        let output = job.await;
        drop(slot);
        Ok(output)
    }

    /// Like [`submit`](Self::submit), but `job` is called with a [`Usage`] handle through
    /// which it reports its real token usage; when it ends, the difference from the estimate
    /// is refunded or charged.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    ///
    /// # Cancel safety
    ///
    /// As [`submit`](Self::submit); usage reported before the drop is settled.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_tokens(1_000).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let reply = limiter
    ///         .submit_with(500, |usage| async move {
    ///             // The provider said the call really took 120 tokens.
    ///             usage.report(120);
    ///             "reply"
    ///         })
    ///         .await
    ///         .unwrap();
    ///     assert_eq!(reply, "reply");
    /// });
    /// assert_eq!(limiter.statistics().tokens_left, Some(880));
    /// ```
    pub async fn submit_with<J, F>(&self, tokens: u64, job: J) -> Result<F::Output, RateLimitError>
    where
        J: FnOnce(Usage) -> F,
        F: Future,
    {
        let mark = match self.admit_now(tokens) {
            Some(mark) => mark,
            None => self.admit_mark(tokens, false).await?,
        };
        let mut held = Held::new(&*self.shared, mark, tokens);
        let output = job(held.usage()).await;
        drop(held);
        Ok(output)
    }

    /// Like [`submit`](Self::submit), but fails with [`RateLimitError::QueueFull`] at once
    /// instead of waiting for room in a full queue (it still waits in line once queued).
    ///
    /// # Errors
    ///
    /// [`RateLimitError::QueueFull`], and those of [`submit`](Self::submit).
    ///
    /// # Cancel safety
    ///
    /// As [`submit`](Self::submit).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    /// use sheepdog_core::rate::{RateLimitError, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder().concurrency_limit(1).queue_capacity(1).build().unwrap();
    /// let _running = limiter.try_acquire(0).unwrap();
    /// futures::executor::block_on(async {
    ///     let mut waiting = std::pin::pin!(limiter.try_submit(0, async {}));
    ///     // Polled once, it takes the only place in the queue.
    ///     assert!(waiting.as_mut().now_or_never().is_none());
    ///     let err = limiter.try_submit(0, async {}).await.unwrap_err();
    ///     assert_eq!(err, RateLimitError::QueueFull { capacity: 1 });
    /// });
    /// ```
    pub async fn try_submit<F: Future>(
        &self,
        tokens: u64,
        job: F,
    ) -> Result<F::Output, RateLimitError> {
        let mark = match self.admit_now(tokens) {
            Some(mark) => mark,
            None => self.admit_mark(tokens, true).await?,
        };
        // No usage handle: nothing will settle the mark, so only the slot is held.
        let _ = mark;
        let slot = SlotHeld(&self.shared);
        let output = job.await;
        drop(slot);
        Ok(output)
    }

    /// [`submit_with`](Self::submit_with) that fails with [`RateLimitError::QueueFull`]
    /// instead of waiting for room.
    ///
    /// # Errors
    ///
    /// As [`try_submit`](Self::try_submit).
    ///
    /// # Cancel safety
    ///
    /// As [`submit_with`](Self::submit_with).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_tokens(100).build().unwrap();
    /// let out = futures::executor::block_on(
    ///     limiter.try_submit_with(10, |usage| async move { usage.report(25); 1 }),
    /// );
    /// assert_eq!(out, Ok(1));
    /// assert_eq!(limiter.statistics().tokens_left, Some(75));
    /// ```
    pub async fn try_submit_with<J, F>(
        &self,
        tokens: u64,
        job: J,
    ) -> Result<F::Output, RateLimitError>
    where
        J: FnOnce(Usage) -> F,
        F: Future,
    {
        let mark = match self.admit_now(tokens) {
            Some(mark) => mark,
            None => self.admit_mark(tokens, true).await?,
        };
        let mut held = Held::new(&*self.shared, mark, tokens);
        let output = job(held.usage()).await;
        drop(held);
        Ok(output)
    }

    /// Waits in line like [`submit`](Self::submit) and returns the admission itself: a
    /// [`Permit`] that holds a concurrency slot and the reservation until it is dropped. Use it
    /// for streams and other long-lived work, and [settle](Permit::settle) the real usage.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future frees its place in line and reserves nothing (a
    /// permit handed to it but not yet taken is given back).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_tokens(1_000).concurrency_limit(2).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let mut stream_permit = limiter.acquire(300).await.unwrap();
    ///     assert_eq!(limiter.statistics().running, 1);
    ///     // ... the stream runs; at its end the provider reports 340 tokens.
    ///     stream_permit.settle(340);
    /// });
    /// let stats = limiter.statistics();
    /// assert_eq!((stats.running, stats.tokens_left), (0, Some(660)));
    /// ```
    pub fn acquire(&self, tokens: u64) -> Acquire<'_> {
        Acquire::new(self, tokens, false)
    }

    /// [`acquire`](Self::acquire) that fails with [`RateLimitError::QueueFull`] instead of
    /// waiting for room in a full queue.
    ///
    /// # Errors
    ///
    /// As [`try_submit`](Self::try_submit).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().build().unwrap();
    /// let permit = futures::executor::block_on(limiter.try_acquire_queued(10)).unwrap();
    /// assert_eq!(permit.tokens(), 10);
    /// ```
    pub fn try_acquire_queued(&self, tokens: u64) -> Acquire<'_> {
        Acquire::new(self, tokens, true)
    }

    /// Admits a job of `tokens` now, without waiting at all, or fails.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::WouldWait`] if others wait, no slot is free, admission is paused or
    /// the budgets are short; [`ExceedsTokenWindow`](RateLimitError::ExceedsTokenWindow) and
    /// [`Closed`](RateLimitError::Closed) as [`submit`](Self::submit).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::{RateLimitError, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder().limit_requests(1).build().unwrap();
    /// let first = limiter.try_acquire(0).unwrap();
    /// drop(first); // the request stays spent until the interval has passed
    /// assert_eq!(limiter.try_acquire(0).unwrap_err(), RateLimitError::WouldWait);
    /// ```
    #[inline]
    pub fn try_acquire(&self, tokens: u64) -> Result<Permit<'_>, RateLimitError> {
        self.try_admit(tokens)
            .map(|mark| Permit::new(&self.shared, mark, tokens))
    }

    /// [`try_acquire`](Self::try_acquire) for a limiter in an [`Arc`]: the [`OwnedPermit`]
    /// holds a reference count to it instead of borrowing it, so it can be moved into a
    /// spawned task or stored anywhere (as tokio's `Semaphore::try_acquire_owned`).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = Arc::new(RateLimiter::builder().concurrency_limit(1).build().unwrap());
    /// let permit = Arc::clone(&limiter).try_acquire_owned(5).unwrap();
    /// let worker = std::thread::spawn(move || {
    ///     // The work runs holding the slot; dropping the permit releases it.
    ///     assert_eq!(permit.tokens(), 5);
    /// });
    /// worker.join().unwrap();
    /// assert!(limiter.try_acquire(0).is_ok());
    /// ```
    pub fn try_acquire_owned(self: Arc<Self>, tokens: u64) -> Result<OwnedPermit, RateLimitError> {
        let mark = self.try_admit(tokens)?;
        Ok(OwnedPermit::new(self, mark, tokens))
    }

    /// [`acquire`](Self::acquire) for a limiter in an [`Arc`]: waits in line the same way and
    /// returns an [`OwnedPermit`], which holds a reference count to the limiter instead of
    /// borrowing it (as tokio's `Semaphore::acquire_owned`).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sheepdog_core::rate::{OwnedPermit, RateLimiter};
    ///
    /// let limiter = Arc::new(RateLimiter::builder().limit_tokens(1_000).build().unwrap());
    /// let permit: OwnedPermit =
    ///     futures::executor::block_on(Arc::clone(&limiter).acquire_owned(300)).unwrap();
    /// assert_eq!(limiter.statistics().tokens_left, Some(700));
    /// drop(permit);
    /// ```
    pub async fn acquire_owned(
        self: Arc<Self>,
        tokens: u64,
    ) -> Result<OwnedPermit, RateLimitError> {
        let mark = self.admit_mark(tokens, false).await?;
        Ok(OwnedPermit::new(self, mark, tokens))
    }

    /// Waits in line for an admission of `tokens`: the mark of its reservation, whose slot was
    /// taken and the admission counted.
    fn admit_mark(
        &self,
        tokens: u64,
        no_room_wait: bool,
    ) -> impl Future<Output = Result<Mark, RateLimitError>> + '_ {
        let mut acquire = Acquire::new(self, tokens, no_room_wait);
        std::future::poll_fn(move |cx| acquire.poll_mark(cx))
    }

    /// The admission of [`try_acquire`](Self::try_acquire): the mark of its reservation.
    fn try_admit(&self, tokens: u64) -> Result<Mark, RateLimitError> {
        let shared = &self.shared;
        let config = &shared.config;
        let coarse = config.coarse.then(time::coarse_now).flatten();
        if let Some(mark) = shared.admit_on_credit(tokens, coarse) {
            return Ok(mark);
        }
        if let Some(coarse) = coarse {
            let fits_window = config.limits[TOKENS].is_none_or(|limit| tokens <= limit);
            if fits_window && shared.slots.refuse_blocked(coarse.epoch) {
                return Err(RateLimitError::WouldWait);
            }
        }
        let read = config.reads_clock.then(|| read_bounds(config, coarse));
        let mut state = self.lock();
        state.refuse(tokens)?;
        let (now, budget_ok) = state.admission_clock(read, tokens);
        let ok = (state.waiters.is_empty() || config.allow_overtaking) && budget_ok;
        let took = shared.slots.take_or_flag(ok, false);
        let mark = if took {
            state.admitted += 1;
            Some(state.reserve(now, tokens))
        } else {
            state.rejected += 1;
            state.block_fast_refusals(now);
            None
        };
        state.lower_slow_left_up();
        state.issue(config, read.and_then(|read| read.epoch));
        drop(state);
        mark.ok_or(RateLimitError::WouldWait)
    }

    /// Pauses admission until `until` (for an HTTP 429 with `Retry-After`). A pause only ever
    /// extends: an earlier instant than the current pause changes nothing. Jobs already
    /// running are not affected.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-util")] {
    /// use std::time::Duration;
    /// use sheepdog_core::rate::RateLimiter;
    /// use sheepdog_core::runtime::Runtime;
    /// use sheepdog_core::testing::VirtualRuntime;
    /// use sheepdog_core::time;
    ///
    /// VirtualRuntime::new().block_on(async {
    ///     let limiter = RateLimiter::builder().build().unwrap();
    ///     let retry_at = time::now() + Duration::from_secs(30);
    ///     limiter.pause_until(retry_at);
    ///     limiter.submit(0, async {}).await.unwrap();
    ///     assert_eq!(time::now(), retry_at);
    /// });
    /// # }
    /// ```
    pub fn pause_until(&self, until: Instant) {
        let mut wakers = Wakers::default();
        {
            let mut state = self.lock();
            let until = state.paused_until.map_or(until, |p| p.max(until));
            state.paused_until = Some(until);
            state.slots.set_slow(true);
            state.clock();
            // The head re-reads the pause and re-arms its timer.
            wakers.extend(state.waiters.front_waker());
        }
        wakers.wake_all();
    }

    /// Pauses admission for `duration` from now (`Retry-After: <seconds>`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sheepdog_core::rate::{RateLimitError, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder().build().unwrap();
    /// limiter.pause_for(Duration::from_secs(60));
    /// assert!(limiter.statistics().paused_until.is_some());
    /// assert_eq!(limiter.try_acquire(0).unwrap_err(), RateLimitError::WouldWait);
    /// ```
    pub fn pause_for(&self, duration: Duration) {
        self.pause_until(time::now() + duration);
    }

    /// Ends a pause at once, and admits whoever can be admitted.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().build().unwrap();
    /// limiter.pause_for(Duration::from_secs(60));
    /// limiter.resume();
    /// assert!(limiter.try_acquire(0).is_ok());
    /// ```
    pub fn resume(&self) {
        let mut wakers = Wakers::default();
        {
            let mut state = self.lock();
            state.paused_until = None;
            state.serve(&self.shared.config, &mut wakers, true);
        }
        wakers.wake_all();
    }

    /// Lowers what is left of the budgets to a provider's own count (for example its
    /// `x-ratelimit-remaining-requests` / `-tokens` headers); `None` leaves a budget alone.
    /// The difference is counted as used now and comes back like any use. A figure above
    /// what the limiter has left changes nothing: the provider's count cannot include the
    /// requests still on their way to it, so raising from it could over-admit.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_requests(60).limit_tokens(100_000).build().unwrap();
    /// limiter.update_remaining(Some(5), Some(200_000));
    /// let stats = limiter.statistics();
    /// assert_eq!((stats.requests_left, stats.tokens_left), (Some(5), Some(100_000)));
    /// ```
    pub fn update_remaining(&self, requests: Option<u64>, tokens: Option<u64>) {
        let mut wakers = Wakers::default();
        {
            let mut state = self.lock();
            if let Some(now) = state.clock() {
                let id = state.id();
                state.ledger.lower_to(now.stamp, [requests, tokens], id);
            }
            wakers.extend(state.waiters.front_waker());
        }
        wakers.wake_all();
    }

    /// A snapshot of the queue, the running jobs, the budgets and the counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_requests(3).build().unwrap();
    /// let stats = limiter.statistics();
    /// assert_eq!((stats.queued, stats.running, stats.requests_left), (0, 0, Some(3)));
    /// ```
    pub fn statistics(&self) -> RateLimiterStatistics {
        let mut state = self.lock();
        state.clock();
        let waiting = state.waiters.len();
        let capacity = self.shared.config.queue_capacity.unwrap_or(usize::MAX);
        let [requests_left, tokens_left] = state.ledger.left();
        let (admitted, running) = (state.admitted, self.shared.slots.running());
        RateLimiterStatistics {
            queued: waiting.min(capacity),
            waiting_for_room: waiting.saturating_sub(capacity),
            running,
            requests_left,
            tokens_left,
            admitted,
            rejected: state.rejected + self.shared.slots.rejected.load(Ordering::Relaxed),
            // Every admission holds a slot until it completes; nothing is admitted on credit
            // while the lock is held.
            completed: admitted.saturating_sub(running as u64),
            paused_until: state.paused_until,
            closed: state.closed,
        }
    }

    /// The refresh interval the budgets are counted over.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().build().unwrap();
    /// assert_eq!(limiter.capacity_refresh_time(), Duration::from_secs(60));
    /// ```
    pub fn capacity_refresh_time(&self) -> Duration {
        self.shared.config.interval
    }

    /// How used budget comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::{RateLimiter, Replenishment};
    ///
    /// let limiter = RateLimiter::builder().build().unwrap();
    /// assert_eq!(limiter.replenishment(), Replenishment::Continuous);
    /// ```
    pub fn replenishment(&self) -> Replenishment {
        self.shared.config.replenishment
    }

    /// Closes admission: new jobs fail with [`RateLimitError::Closed`]; jobs already waiting
    /// are still admitted and run. Idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::{RateLimitError, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder().build().unwrap();
    /// limiter.close();
    /// assert_eq!(limiter.try_acquire(0).unwrap_err(), RateLimitError::Closed);
    /// ```
    pub fn close(&self) {
        let drained = {
            let mut state = self.lock();
            state.closed = true;
            state.sync_slow();
            state.drained()
        };
        if drained {
            self.shared.drained.set();
        }
    }

    /// Closes admission, deals with the waiting jobs as `mode` says, and returns once no job
    /// waits or runs. Running jobs are not interrupted: they belong to their callers' cancel
    /// scopes (cancel those to stop them).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops the waiting only; the limiter stays closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    /// use sheepdog_core::rate::{RateLimitError, RateLimiter, ShutdownMode};
    ///
    /// let limiter = RateLimiter::builder().concurrency_limit(1).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let running = limiter.try_acquire(0).unwrap();
    ///     let mut queued = std::pin::pin!(limiter.submit(0, async {}));
    ///     assert!(queued.as_mut().now_or_never().is_none());
    ///     let mut shutdown = std::pin::pin!(limiter.shutdown(ShutdownMode::CancelQueued));
    ///     assert!(shutdown.as_mut().now_or_never().is_none()); // `running` still runs
    ///     assert_eq!(queued.await.unwrap_err(), RateLimitError::Closed);
    ///     drop(running);
    ///     shutdown.await;
    /// });
    /// ```
    pub async fn shutdown(&self, mode: ShutdownMode) {
        let mut wakers = Wakers::default();
        let drained = {
            let mut state = self.lock();
            state.closed = true;
            state.sync_slow();
            if mode == ShutdownMode::CancelQueued {
                let cancelled = state.waiters.len() as u64;
                state.rejected += cancelled;
                while let Some(key) = state.waiters.front_key() {
                    wakers.push(state.hand(key, CLOSED_WORD));
                }
            }
            state.drained()
        };
        wakers.wake_all();
        if drained {
            self.shared.drained.set();
        }
        self.shared.drained.wait().await;
    }
}

impl Shared {
    /// Takes the lock, and the credit back (see [`State::collect`]).
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.collect();
        state
    }

    /// The lock-free admission: spends credit, if there is enough for `tokens` and (with
    /// limited budgets) it is for the coarse clock's current epoch.
    #[inline]
    fn admit_on_credit(&self, tokens: u64, coarse: Option<Coarse>) -> Option<Mark> {
        self.admit_on_credit_from(self.slots.snapshot(), tokens, coarse)
    }

    /// [`admit_on_credit`](Self::admit_on_credit) from `seen`, a value the slot word had.
    #[inline]
    fn admit_on_credit_from(&self, seen: u64, tokens: u64, coarse: Option<Coarse>) -> Option<Mark> {
        let config = &self.config;
        if !config.reads_clock {
            let took = self.slots.try_take_credit_from(seen, None, 0);
            return took.then(|| Mark::empty(0));
        }
        if config.replenishment != Replenishment::Continuous {
            return None;
        }
        let epoch = coarse?.epoch;
        let cost = config.cost(tokens);
        if !self
            .slots
            .try_take_credit_from(seen, Some(epoch), cost[TOKENS])
        {
            return None;
        }
        Some(Mark::on_credit(epoch, cost))
    }

    /// Runs `f` under the lock, serves the line, wakes whoever was admitted and marks the
    /// limiter drained if it is. `release`: the caller also releases its slot, which goes
    /// to the first waiter admitted if any ([`State::serve_with`]).
    fn update(&self, release: bool, f: impl FnOnce(&mut State)) {
        let mut wakers = Wakers::default();
        let drained = {
            let mut state = self.lock();
            f(&mut state);
            state.serve_with(&self.config, &mut wakers, true, release);
            state.drained()
        };
        wakers.wake_all();
        if drained {
            self.drained.set();
        }
    }
}

/// The future returned by [`RateLimiter::acquire`] and [`RateLimiter::try_acquire_queued`]:
/// waits in line for admission and yields a [`Permit`].
///
/// # Cancel safety
///
/// Cancel safe: dropped while waiting, it leaves the line; dropped after it was admitted but
/// before it completed, it gives the reservation and the slot back to the next in line.
#[must_use = "futures do nothing unless awaited"]
pub struct Acquire<'a> {
    limiter: &'a RateLimiter,
    tokens: u64,
    /// Fail with `QueueFull` instead of waiting for room.
    no_room_wait: bool,
    state: AcquireState,
    /// The head of the line's timer: the instant its cost fits or a pause ends. Boxed: few
    /// waits need one, and every `submit` future carries the field.
    timer: HeadTimer,
}

/// [`Acquire`]'s timer, dropped out of line: most `Acquire`s never had one.
#[derive(Default)]
struct HeadTimer(Option<Box<Sleep>>);

impl Drop for HeadTimer {
    #[inline]
    fn drop(&mut self) {
        if let Some(timer) = self.0.take() {
            drop_timer(timer);
        }
    }
}

#[cold]
fn drop_timer(timer: Box<Sleep>) {
    drop(timer);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcquireState {
    Start,
    Queued(usize),
    Done,
}

impl fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("tokens", &self.tokens)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<'a> Acquire<'a> {
    #[inline]
    fn new(limiter: &'a RateLimiter, tokens: u64, no_room_wait: bool) -> Self {
        Acquire {
            limiter,
            tokens,
            no_room_wait,
            state: AcquireState::Start,
            timer: HeadTimer::default(),
        }
    }
}

impl<'a> Future for Acquire<'a> {
    type Output = Result<Permit<'a>, RateLimitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (limiter, tokens): (&'a RateLimiter, u64) = (this.limiter, this.tokens);
        this.poll_mark(cx)
            .map(|admitted| admitted.map(|mark| Permit::new(&limiter.shared, mark, tokens)))
    }
}

impl Acquire<'_> {
    /// Polls for the admission: the mark of its reservation, whose slot was taken and the
    /// admission counted.
    #[inline]
    fn poll_mark(&mut self, cx: &mut Context<'_>) -> Poll<Result<Mark, RateLimitError>> {
        if crate::cancel::is_cancelled() {
            // The catching scope was woken and will drop this wait.
            return Poll::Pending;
        }
        let mut coarse = None;
        let shared = &self.limiter.shared;
        match self.state {
            AcquireState::Start => {
                let seen = shared.slots.snapshot();
                // With the flag up the lock decides (and reads the clock if it needs it).
                if Slots::open(seen) {
                    coarse = shared.config.coarse.then(time::coarse_now).flatten();
                    if let Some(mark) = shared.admit_on_credit_from(seen, self.tokens, coarse) {
                        self.state = AcquireState::Done;
                        return Poll::Ready(Ok(mark));
                    }
                }
            }
            AcquireState::Queued(key) => {
                // Admitted (or failed) while queued: the grant is in the mailbox, no lock
                // needed.
                if let Some(word) = shared.slots.mailboxes.take(key) {
                    self.state = AcquireState::Done;
                    return Poll::Ready(grant_of(word, &shared.config, self.tokens));
                }
            }
            AcquireState::Done => {}
        }
        self.poll_locked(cx, coarse)
    }

    /// [`poll_mark`](Self::poll_mark) past the lock-free paths: under the lock. `coarse` is
    /// the coarse reading the first poll took, if it took one.
    #[inline(never)]
    fn poll_locked(
        &mut self,
        cx: &mut Context<'_>,
        coarse: Option<Coarse>,
    ) -> Poll<Result<Mark, RateLimitError>> {
        let this = self;
        let shared = &this.limiter.shared;
        let config = &shared.config;
        let mut wakers = Wakers::default();
        let wake_at = {
            let mut state = shared.lock();
            let now;
            let key = match this.state {
                AcquireState::Start => {
                    if let Err(refused) = state.refuse(this.tokens) {
                        this.state = AcquireState::Done;
                        return Poll::Ready(Err(refused));
                    }
                    let full = this.no_room_wait
                        && config
                            .queue_capacity
                            .is_some_and(|capacity| state.waiters.len() >= capacity);
                    let mut read = None;
                    // Every slot taken: the job waits (or is refused) whatever the budgets
                    // say, so the clock is not read. Otherwise it takes a slot if it may.
                    // Either way `SLOW` goes up before it queues, in the compare-and-swap that
                    // saw no slot it could take: a release meanwhile then serves this waiter
                    // instead of being lost.
                    let took = if shared.slots.full_then_flag(!full) {
                        now = None;
                        false
                    } else {
                        read = config.reads_clock.then(|| read_bounds(config, coarse));
                        let budget_ok;
                        (now, budget_ok) = state.admission_clock(read, this.tokens);
                        let ok = (state.waiters.is_empty() || config.allow_overtaking) && budget_ok;
                        shared.slots.take_or_flag(ok, !full)
                    };
                    if took {
                        this.state = AcquireState::Done;
                        state.admitted += 1;
                        state.lower_slow_left_up();
                        let mark = state.reserve(now, this.tokens);
                        state.issue(config, read.and_then(|read| read.epoch));
                        drop(state);
                        return Poll::Ready(Ok(mark));
                    }
                    if let (true, Some(capacity)) = (full, config.queue_capacity) {
                        state.rejected += 1;
                        this.state = AcquireState::Done;
                        return Poll::Ready(Err(RateLimitError::QueueFull { capacity }));
                    }
                    let key = state.push(this.tokens, cx.waker());
                    this.state = AcquireState::Queued(key);
                    key
                }
                AcquireState::Queued(key) => {
                    let mailboxes = &shared.slots.mailboxes;
                    let mut granted = mailboxes.take(key);
                    let mut read = None;
                    if granted.is_none() {
                        state.waiters.refresh(key, cx.waker());
                        // Time may have passed: admit whoever fits now, this waiter included.
                        read = state.serve(config, &mut wakers, false);
                        granted = mailboxes.take(key);
                    }
                    if let Some(word) = granted {
                        this.state = AcquireState::Done;
                        drop(state);
                        wakers.wake_all();
                        return Poll::Ready(grant_of(word, config, this.tokens));
                    }
                    now = read;
                    key
                }
                AcquireState::Done => panic!("`Acquire` polled after it completed"),
            };
            // A head that waits for a slot needs no timer (a release serves it), nor the clock.
            if state.waiters.front_key() == Some(key) && state.slots.free() {
                let now = now.or_else(|| state.clock());
                state.next_wake(config, now)
            } else {
                None
            }
        };
        wakers.wake_all();
        if let Some(at) = wake_at {
            let timer = this
                .timer
                .0
                .get_or_insert_with(|| Box::new(time::sleep_until(at)));
            if timer.deadline() != at {
                timer.reset(at);
            }
            if Pin::new(&mut **timer).poll(cx).is_ready() {
                // Due already: look again through the executor.
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    #[inline]
    fn drop(&mut self) {
        if let AcquireState::Queued(key) = std::mem::replace(&mut self.state, AcquireState::Done) {
            self.leave(key);
        }
    }
}

impl Acquire<'_> {
    /// Leaves the line (dropped while queued), passing on what was granted.
    #[cold]
    fn leave(&mut self, key: usize) {
        let shared = &self.limiter.shared;
        let mut wakers = Wakers::default();
        let drained = {
            let mut state = shared.lock();
            let was_head = state.waiters.front_key() == Some(key);
            if state.waiters.abandon_handed(key).is_some() {
                // A new head must arm its own timer.
                state.serve(&shared.config, &mut wakers, was_head);
            } else {
                let word = shared.slots.mailboxes.take(key);
                let word = word.expect("a waiter out of the line was handed its grant");
                if let Ok(mut mark) = grant_of(word, &shared.config, self.tokens) {
                    // Admitted but never taken: nothing was used, so everything goes back.
                    state.give_back(&mut mark);
                    state.serve(&shared.config, &mut wakers, true);
                }
            }
            state.drained()
        };
        wakers.wake_all();
        if drained {
            shared.drained.set();
        }
    }
}

/// An admission: a concurrency slot and a reservation of one request and the estimated
/// tokens, held until dropped. Returned by [`RateLimiter::acquire`] and
/// [`RateLimiter::try_acquire`]; it borrows the limiter (as tokio's `SemaphorePermit` borrows
/// its semaphore), so taking and dropping it touches nothing but the limiter's own word.
/// [`OwnedPermit`] is the form that holds a reference count instead, for work that outlives
/// the borrow (a spawned task).
///
/// Keep it for the whole life of a stream or other long-lived work, so the work counts
/// against the concurrency limit the whole time. [`settle`](Self::settle) (or a [`Usage`]
/// handle) reports the real token usage; dropping the permit releases the slot.
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::RateLimiter;
///
/// let limiter = RateLimiter::builder().limit_tokens(1_000).build().unwrap();
/// let mut permit = limiter.try_acquire(400).unwrap();
/// assert_eq!(limiter.statistics().tokens_left, Some(600));
/// permit.settle(100); // 300 tokens refunded
/// assert_eq!(limiter.statistics().tokens_left, Some(900));
/// ```
pub struct Permit<'a> {
    held: Held<&'a Shared>,
}

/// An admission that holds a reference count to its limiter instead of borrowing it, from
/// [`RateLimiter::try_acquire_owned`] and [`RateLimiter::acquire_owned`] (tokio's
/// `OwnedSemaphorePermit`). It behaves as a [`Permit`] in every other way.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use sheepdog_core::rate::RateLimiter;
///
/// let limiter = Arc::new(RateLimiter::builder().limit_tokens(1_000).build().unwrap());
/// let mut permit = Arc::clone(&limiter).try_acquire_owned(400).unwrap();
/// permit.settle(100); // 300 tokens refunded
/// assert_eq!(limiter.statistics().tokens_left, Some(900));
/// ```
pub struct OwnedPermit {
    held: Held<Owned>,
}

/// The limiter an [`OwnedPermit`] holds.
struct Owned(Arc<RateLimiter>);

impl Deref for Owned {
    type Target = Shared;

    #[inline]
    fn deref(&self) -> &Shared {
        &self.0.shared
    }
}

/// An admission held through `S`: a [`Permit`] and the `submit` family hold a reference to
/// the limiter's shared state, an [`OwnedPermit`] a reference count to the limiter.
struct Held<S: Deref<Target = Shared>> {
    shared: S,
    mark: Mark,
    /// The estimate the job was admitted with.
    tokens: u64,
    /// What is currently charged for it (the estimate, until settled).
    accounted: u64,
    usage: Option<Arc<AtomicU64>>,
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("tokens", &self.held.tokens)
            .field("accounted", &self.held.accounted)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("tokens", &self.held.tokens)
            .field("accounted", &self.held.accounted)
            .finish_non_exhaustive()
    }
}

impl<S: Deref<Target = Shared>> Held<S> {
    #[inline]
    fn new(shared: S, mark: Mark, tokens: u64) -> Self {
        Held {
            shared,
            mark,
            tokens,
            accounted: tokens,
            usage: None,
        }
    }

    fn settle(&mut self, tokens: u64) {
        let accounted = self.accounted;
        let mark = &mut self.mark;
        self.shared
            .update(false, |state| settle(state, mark, accounted, tokens));
        self.accounted = tokens;
    }

    fn usage(&mut self) -> Usage {
        let cell = self
            .usage
            .get_or_insert_with(|| Arc::new(AtomicU64::new(UNREPORTED)));
        Usage {
            cell: Arc::clone(cell),
        }
    }
}

impl<'a> Permit<'a> {
    #[inline]
    fn new(shared: &'a Shared, mark: Mark, tokens: u64) -> Self {
        Permit {
            held: Held::new(shared, mark, tokens),
        }
    }

    /// The estimated token cost it was admitted with.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::rate::RateLimiter::builder().build().unwrap();
    /// assert_eq!(limiter.try_acquire(7).unwrap().tokens(), 7);
    /// ```
    pub fn tokens(&self) -> u64 {
        self.held.tokens
    }

    /// Settles the real token usage so far: the difference from what is currently charged is
    /// refunded or charged at once. May be called again as usage grows (a stream); each call
    /// replaces the previous figure.
    ///
    /// A refund gives back budget that is still counted (continuous mode: admitted less than
    /// an interval ago; fixed window: the current window); a charge counts as used now, and
    /// may make the budget go into debt, which delays later jobs.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_tokens(1_000).build().unwrap();
    /// let mut permit = limiter.try_acquire(100).unwrap();
    /// permit.settle(250); // 150 more charged
    /// assert_eq!(limiter.statistics().tokens_left, Some(750));
    /// ```
    pub fn settle(&mut self, tokens: u64) {
        self.held.settle(tokens);
    }

    /// A handle through which the job reports its real usage; it is settled when the permit
    /// is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder().limit_tokens(1_000).build().unwrap();
    /// let mut permit = limiter.try_acquire(100).unwrap();
    /// permit.usage().report(40);
    /// drop(permit);
    /// assert_eq!(limiter.statistics().tokens_left, Some(960));
    /// ```
    pub fn usage(&mut self) -> Usage {
        self.held.usage()
    }
}

impl OwnedPermit {
    #[inline]
    fn new(limiter: Arc<RateLimiter>, mark: Mark, tokens: u64) -> Self {
        OwnedPermit {
            held: Held::new(Owned(limiter), mark, tokens),
        }
    }

    /// The limiter it was admitted by.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = Arc::new(RateLimiter::builder().build().unwrap());
    /// let permit = Arc::clone(&limiter).try_acquire_owned(1).unwrap();
    /// assert!(Arc::ptr_eq(permit.limiter(), &limiter));
    /// ```
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.held.shared.0
    }

    /// The estimated token cost it was admitted with (as [`Permit::tokens`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let limiter = Arc::new(sheepdog_core::rate::RateLimiter::builder().build().unwrap());
    /// assert_eq!(limiter.try_acquire_owned(7).unwrap().tokens(), 7);
    /// ```
    pub fn tokens(&self) -> u64 {
        self.held.tokens
    }

    /// Settles the real token usage so far (as [`Permit::settle`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = Arc::new(RateLimiter::builder().limit_tokens(1_000).build().unwrap());
    /// let mut permit = Arc::clone(&limiter).try_acquire_owned(100).unwrap();
    /// permit.settle(250); // 150 more charged
    /// assert_eq!(limiter.statistics().tokens_left, Some(750));
    /// ```
    pub fn settle(&mut self, tokens: u64) {
        self.held.settle(tokens);
    }

    /// A handle through which the job reports its real usage, settled when the permit is
    /// dropped (as [`Permit::usage`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use sheepdog_core::rate::RateLimiter;
    ///
    /// let limiter = Arc::new(RateLimiter::builder().limit_tokens(1_000).build().unwrap());
    /// let mut permit = Arc::clone(&limiter).try_acquire_owned(100).unwrap();
    /// permit.usage().report(40);
    /// drop(permit);
    /// assert_eq!(limiter.statistics().tokens_left, Some(960));
    /// ```
    pub fn usage(&mut self) -> Usage {
        self.held.usage()
    }
}

impl<S: Deref<Target = Shared>> Drop for Held<S> {
    #[inline]
    fn drop(&mut self) {
        if self.usage.is_none() && self.shared.slots.release_fast() {
            return;
        }
        self.release();
    }
}

impl<S: Deref<Target = Shared>> Held<S> {
    /// Settles what was reported and releases the slot (unless the release was done).
    fn release(&mut self) {
        let reported = self
            .usage
            .as_ref()
            .map(|cell| cell.load(Ordering::Acquire))
            .filter(|&tokens| tokens != UNREPORTED);
        let accounted = self.accounted;
        let settles = reported.is_some_and(|tokens| tokens != accounted);
        // Without a usage handle, `drop` tried the lock-free release already.
        if !settles && self.usage.is_some() && self.shared.slots.release_fast() {
            return;
        }
        let mark = &mut self.mark;
        self.shared.update(true, |state| {
            if let Some(tokens) = reported {
                settle(state, mark, accounted, tokens);
            }
        });
    }
}

/// The concurrency slot of a `submit` / `try_submit` job, released when dropped: without a
/// usage handle nothing settles the reservation (the estimate stays charged), so the job holds
/// only this, not a whole [`Held`] (a smaller future to move).
struct SlotHeld<'a>(&'a Shared);

impl Drop for SlotHeld<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.0.slots.release_fast() {
            self.0.update(true, |_| {});
        }
    }
}

/// Refunds or charges the difference between `accounted` and `tokens`.
fn settle(state: &mut State, mark: &mut Mark, accounted: u64, tokens: u64) {
    if state.ledger.limits()[TOKENS].is_none() || tokens == accounted {
        return;
    }
    mark.resolve(time::epoch_end);
    let Some(now) = state.clock() else { return };
    if tokens > accounted {
        let id = state.id();
        state
            .ledger
            .charge(now.stamp, mark, [0, tokens - accounted], id);
    } else {
        state.ledger.refund(mark, [0, accounted - tokens]);
        state.slots.unblock();
    }
}

const UNREPORTED: u64 = u64::MAX;

/// Reports a job's real token usage, to be settled against its estimate when the job ends.
/// Cloneable; every clone reports for the same job.
///
/// # Examples
///
/// ```
/// use sheepdog_core::rate::RateLimiter;
///
/// let limiter = RateLimiter::builder().limit_tokens(1_000).build().unwrap();
/// futures::executor::block_on(limiter.submit_with(200, |usage| async move {
///     for chunk in [30, 40, 50] {
///         usage.add(chunk); // a stream reports as it goes
///     }
/// }))
/// .unwrap();
/// assert_eq!(limiter.statistics().tokens_left, Some(880));
/// ```
#[derive(Clone)]
pub struct Usage {
    cell: Arc<AtomicU64>,
}

impl fmt::Debug for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Usage")
            .field("reported", &self.reported())
            .finish()
    }
}

impl Usage {
    /// Sets the job's total real usage (replacing earlier reports).
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::rate::RateLimiter::builder().build().unwrap();
    /// let mut permit = limiter.try_acquire(10).unwrap();
    /// let usage = permit.usage();
    /// usage.report(12);
    /// assert_eq!(usage.reported(), Some(12));
    /// ```
    pub fn report(&self, tokens: u64) {
        self.cell
            .store(tokens.min(UNREPORTED - 1), Ordering::Release);
    }

    /// Adds `tokens` to the reported usage (starting from zero).
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::rate::RateLimiter::builder().build().unwrap();
    /// let mut permit = limiter.try_acquire(10).unwrap();
    /// let usage = permit.usage();
    /// usage.add(3);
    /// usage.add(4);
    /// assert_eq!(usage.reported(), Some(7));
    /// ```
    pub fn add(&self, tokens: u64) {
        let mut seen = self.cell.load(Ordering::Acquire);
        loop {
            let base = if seen == UNREPORTED { 0 } else { seen };
            let new = base.saturating_add(tokens).min(UNREPORTED - 1);
            match self
                .cell
                .compare_exchange_weak(seen, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => seen = actual,
            }
        }
    }

    /// The usage reported so far, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = sheepdog_core::rate::RateLimiter::builder().build().unwrap();
    /// let mut permit = limiter.try_acquire(10).unwrap();
    /// assert_eq!(permit.usage().reported(), None);
    /// ```
    pub fn reported(&self) -> Option<u64> {
        Some(self.cell.load(Ordering::Acquire)).filter(|&tokens| tokens != UNREPORTED)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::Waker;

    use super::*;

    fn poll<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Pins `waiter` and polls it once: it must queue.
    #[track_caller]
    fn queued<F: Future>(waiter: F) -> Pin<Box<F>> {
        let mut waiter = Box::pin(waiter);
        assert!(poll(waiter.as_mut()).is_pending(), "admitted, not queued");
        waiter
    }

    /// One concurrency slot and budgets of `requests` and `tokens` that refill only after an
    /// hour (so no test here sees them refill).
    fn one_slot_with_budgets(requests: u64, tokens: u64) -> RateLimiter {
        RateLimiter::builder()
            .limit_requests(requests)
            .limit_tokens(tokens)
            .capacity_refresh_time(Duration::from_secs(3_600))
            .concurrency_limit(1)
            .build()
            .unwrap()
    }

    /// Poll level, no runtime and no timer (runs under miri): queueing behind the concurrency
    /// limit, hand-off on release, a dropped admitted waiter passing its slot on, `QueueFull`,
    /// and shutdown failing what waits.
    #[test]
    fn hand_off_and_refusals_without_a_runtime() {
        let limiter = RateLimiter::builder()
            .concurrency_limit(1)
            .queue_capacity(2)
            .build()
            .unwrap();
        let held = limiter.try_acquire(0).unwrap();
        let mut a = queued(limiter.acquire(0));
        let mut b = queued(limiter.try_acquire_queued(0));
        let mut c = pin!(limiter.try_acquire_queued(0));
        assert_eq!(
            poll(c.as_mut()).map(|r| r.map(drop)),
            Poll::Ready(Err(RateLimitError::QueueFull { capacity: 2 }))
        );
        drop(held); // handed to `a`, which has not taken it yet
        assert_eq!(limiter.statistics().running, 1);
        assert_eq!(
            limiter.try_acquire(0).unwrap_err(),
            RateLimitError::WouldWait
        );
        let Poll::Ready(Ok(permit_a)) = poll(a.as_mut()) else {
            panic!("a was handed the slot")
        };
        let mut shutdown = pin!(limiter.shutdown(ShutdownMode::CancelQueued));
        assert!(poll(shutdown.as_mut()).is_pending(), "`a` still runs");
        assert_eq!(
            poll(b.as_mut()).map(|r| r.map(drop)),
            Poll::Ready(Err(RateLimitError::Closed))
        );
        drop(permit_a);
        assert!(poll(shutdown.as_mut()).is_ready());
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.completed, stats.running), (2, 2, 0));
        assert_eq!((stats.rejected, stats.queued), (3, 0));
    }

    /// With budgets: a waiter behind the only slot queues (without reading the clock), and the
    /// release hands it the slot and reserves its cost in one step; the books balance.
    #[test]
    fn hand_off_with_budgets_reserves_and_balances() {
        let limiter = one_slot_with_budgets(10, 100);
        let held = limiter.try_acquire(10).unwrap();
        let mut waiter = queued(limiter.acquire(20));
        let stats = limiter.statistics();
        assert_eq!((stats.queued, stats.tokens_left), (1, Some(90)));
        drop(held); // straight to the waiter: the slot never comes free
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.admitted, stats.queued), (1, 2, 0));
        assert_eq!(
            (stats.requests_left, stats.tokens_left),
            (Some(8), Some(70))
        );
        assert_eq!(
            limiter.try_acquire(0).unwrap_err(),
            RateLimitError::WouldWait
        );
        let Poll::Ready(Ok(permit)) = poll(waiter.as_mut()) else {
            panic!("handed off")
        };
        assert_eq!(permit.tokens(), 20);
        drop(permit);
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.completed, stats.rejected), (0, 2, 1));
        // Nobody waits: the fast path is open again, and the budgets are what was charged.
        let again = limiter.try_acquire(70).unwrap();
        assert_eq!(limiter.statistics().tokens_left, Some(0));
        drop(again);
    }

    /// Waiters queued and served one at a time (the queued round trip): each takes its grant
    /// from its mailbox, the line's slot is reused every time, and the `SLOW` flag that the
    /// last hand-off left up comes down at the next operation under the lock, reopening the
    /// fast paths.
    #[test]
    fn one_waiter_at_a_time_reuses_its_slot_and_reopens_the_fast_path() {
        let limiter = one_slot_with_budgets(1_000, 10_000);
        let mut held = limiter.try_acquire(1).unwrap();
        for round in 0..50 {
            let mut waiter = queued(limiter.acquire(1));
            drop(held);
            let Poll::Ready(Ok(permit)) = poll(waiter.as_mut()) else {
                panic!("handed off in round {round}")
            };
            held = permit;
            let state = limiter.lock();
            assert_eq!(state.waiters.slab_len(), 1, "the slot is reused");
            assert!(!Slots::open(limiter.shared.slots.snapshot()), "left up");
        }
        drop(held); // under the lock: the flag comes down
        assert!(Slots::open(limiter.shared.slots.snapshot()));
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.running, stats.queued), (51, 0, 0));
        assert_eq!(stats.requests_left, Some(1_000 - 51));
        let again = limiter.try_acquire(1).unwrap();
        assert!(Slots::open(limiter.shared.slots.snapshot()));
        drop(again);
    }

    /// Permits and the futures that wait for them can move to other threads (tasks).
    #[test]
    fn permits_and_waits_are_send() {
        fn send<T: Send>(value: T) -> T {
            value
        }
        let limiter = Arc::new(RateLimiter::builder().build().unwrap());
        drop(send(limiter.try_acquire(1).unwrap()));
        drop(send(limiter.acquire(1)));
        drop(send(limiter.submit(1, async {})));
        drop(send(Arc::clone(&limiter).try_acquire_owned(1).unwrap()));
        let owned = send(Arc::clone(&limiter).acquire_owned(1));
        let Poll::Ready(Ok(permit)) = poll(pin!(owned)) else {
            panic!("admitted at once")
        };
        assert!(Arc::ptr_eq(permit.limiter(), &limiter));
        drop(permit);
        assert_eq!(limiter.statistics().running, 0);
    }

    /// The lock-free paths (unlimited budgets) and the queue agree on the slot count.
    #[test]
    fn fast_paths_defer_to_waiters() {
        let limiter = RateLimiter::builder().concurrency_limit(2).build().unwrap();
        let one = limiter.try_acquire(0).unwrap();
        let two = limiter.try_acquire(0).unwrap();
        let mut waiter = queued(limiter.acquire(0));
        drop(one); // goes through the lock, to the waiter
        assert_eq!(
            limiter.try_acquire(0).unwrap_err(),
            RateLimitError::WouldWait
        );
        let Poll::Ready(Ok(three)) = poll(waiter.as_mut()) else {
            panic!("handed off")
        };
        drop((two, three));
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.admitted, stats.completed), (0, 3, 3));
        // Nobody waits any more: both slots are free to the fast path again.
        let _x = limiter.try_acquire(0).unwrap();
        let _y = limiter.try_acquire(0).unwrap();
    }

    /// Mixed costs across the hand-off path (poll level, runs under miri): a waiter handed its
    /// grant and dropped before it took it gives back its slot and its whole reservation, the
    /// slot goes to the next in line only if its cost fits, and a cheaper waiter behind a head
    /// that does not fit is not handed anything (no overtaking), until the head leaves.
    #[test]
    fn a_handed_waiter_dropped_untaken_passes_on_in_order_with_mixed_costs() {
        let limiter = one_slot_with_budgets(100, 100);
        let held = limiter.try_acquire(10).unwrap();
        let a = queued(limiter.acquire(50));
        let b = queued(limiter.acquire(95));
        let mut c = queued(limiter.acquire(10));
        drop(held); // to `a`, which does not take it
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.queued, stats.admitted), (1, 2, 2));
        assert_eq!(stats.tokens_left, Some(40));
        drop(a);
        // Its 50 tokens and request came back, and its slot: `b` (95) does not fit in 90,
        // and `c` (10) would, but must not pass `b`.
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.queued, stats.admitted), (0, 2, 1));
        assert_eq!(
            (stats.requests_left, stats.tokens_left),
            (Some(99), Some(90))
        );
        // (`b` is not polled: at the head with a slot free, it would arm a timer, out of
        // miri's reach.)
        assert!(poll(c.as_mut()).is_pending(), "c overtook b");
        assert_eq!(limiter.lock().waiters.handed_len(), 1, "only a's slot");
        // The head leaves: the slot and the budget go to `c`.
        drop(b);
        let stats = limiter.statistics();
        assert_eq!(
            (stats.running, stats.queued, stats.tokens_left),
            (1, 0, Some(80))
        );
        let Poll::Ready(Ok(permit)) = poll(c.as_mut()) else {
            panic!("c was handed the slot")
        };
        assert_eq!(permit.tokens(), 10);
        drop(permit);
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.completed, stats.running), (2, 2, 0));
        assert_eq!(
            (stats.requests_left, stats.tokens_left),
            (Some(98), Some(80))
        );
        assert!(
            Slots::open(limiter.shared.slots.snapshot()),
            "the flag came down"
        );
    }

    /// Churn through the hand-off path: every round, two slots are handed to two waiters at
    /// once; one of them is dropped before it takes its grant (its slot passes on), the other
    /// takes it late, after newer waiters were handed theirs. The line's slab and its list of
    /// handed slots stay as small as the most waiters alive at once, however many rounds run.
    #[test]
    fn handed_and_dropped_waiters_keep_the_slab_bounded() {
        let limiter = RateLimiter::builder().concurrency_limit(2).build().unwrap();
        let mut held = vec![
            limiter.try_acquire(0).unwrap(),
            limiter.try_acquire(0).unwrap(),
        ];
        let rounds = if cfg!(miri) { 20 } else { 300 };
        for round in 0..rounds {
            let mut waiters: Vec<_> = (0..4).map(|_| queued(limiter.acquire(0))).collect();
            held.clear(); // both slots handed, to the first two waiters
            let mut w3 = waiters.pop().unwrap();
            let w2 = waiters.pop().unwrap();
            let mut w1 = waiters.pop().unwrap();
            drop(waiters.pop()); // untaken: its slot goes to `w2`
            drop(w2); // untaken too: to `w3`
            let Poll::Ready(Ok(late)) = poll(w1.as_mut()) else {
                panic!("w1 was handed a slot in round {round}")
            };
            let Poll::Ready(Ok(last)) = poll(w3.as_mut()) else {
                panic!("w3 was handed a slot in round {round}")
            };
            held = vec![late, last];
            let state = limiter.lock();
            assert!(
                state.waiters.slab_len() <= 4,
                "the slab grew to {} in round {round}",
                state.waiters.slab_len()
            );
            assert!(state.waiters.handed_len() <= state.waiters.slab_len());
        }
        drop(held);
        let stats = limiter.statistics();
        assert_eq!(
            (stats.admitted, stats.completed, stats.running),
            (2 + 2 * rounds, 2 + 2 * rounds, 0)
        );
        assert_eq!(stats.queued, 0);
    }

    /// Waiters handed their grants and never polled again (still alive) keep their slots, but
    /// do not stop the line from reusing the slots of the waiters that did take theirs: with
    /// two of them stuck, a third slot churns through many rounds without the slab or the
    /// handed list growing. Dropped at last, the stuck ones give everything back.
    #[test]
    fn stuck_handed_waiters_do_not_stop_slot_reuse() {
        let limiter = RateLimiter::builder()
            .limit_requests(1_000)
            .concurrency_limit(3)
            .build()
            .unwrap();
        let mut permits: Vec<_> = (0..3).map(|_| limiter.try_acquire(0).unwrap()).collect();
        let stuck: Vec<_> = (0..2).map(|_| queued(limiter.acquire(0))).collect();
        let mut running = permits.pop().unwrap();
        drop(permits); // to the two stuck waiters, which never look
        let rounds = if cfg!(miri) { 20 } else { 200 };
        for round in 0..rounds {
            let mut waiter = queued(limiter.acquire(0));
            drop(running);
            let Poll::Ready(Ok(permit)) = poll(waiter.as_mut()) else {
                panic!("handed the slot in round {round}")
            };
            running = permit;
            let state = limiter.lock();
            assert_eq!(state.waiters.slab_len(), 3, "round {round}");
            assert!(state.waiters.handed_len() <= 3, "round {round}");
        }
        drop(stuck);
        let stats = limiter.statistics();
        assert_eq!((stats.running, stats.admitted), (1, 3 + rounds));
        assert_eq!(stats.requests_left, Some(1_000 - 3 - rounds));
        drop(running);
        assert_eq!(limiter.statistics().completed, 3 + rounds);
    }

    /// A line slot is reused only once its waiter took its grant (no ABA): the waiter that
    /// took it stays alive, finished, while a newcomer reuses the slot; dropping it then
    /// disturbs nothing, and the newcomer is handed the next grant. A waiter handed `Closed`
    /// and dropped without taking it empties its own mailbox.
    #[test]
    fn a_reused_slot_is_not_disturbed_by_its_previous_waiter() {
        let limiter = RateLimiter::builder()
            .limit_tokens(1_000)
            .concurrency_limit(1)
            .build()
            .unwrap();
        let held = limiter.try_acquire(1).unwrap();
        let mut first = queued(limiter.acquire(2));
        drop(held);
        let Poll::Ready(Ok(permit)) = poll(first.as_mut()) else {
            panic!("handed off")
        };
        let mut second = queued(limiter.acquire(3));
        assert_eq!(limiter.lock().waiters.slab_len(), 1, "the slot was reused");
        drop(first); // finished: must not touch the slot it had
        let stats = limiter.statistics();
        assert_eq!((stats.queued, stats.running), (1, 1));
        drop(permit);
        let Poll::Ready(Ok(permit)) = poll(second.as_mut()) else {
            panic!("the newcomer was handed the slot")
        };
        assert_eq!(permit.tokens(), 3);
        // Handed `Closed` and dropped untaken: its mailbox is emptied, nothing is given back.
        let third = queued(limiter.acquire(4));
        let mut shutdown = pin!(limiter.shutdown(ShutdownMode::CancelQueued));
        assert!(poll(shutdown.as_mut()).is_pending());
        drop(third);
        {
            let state = limiter.lock();
            let key = state.waiters.front_key();
            assert_eq!((key, state.waiters.slab_len()), (None, 1));
            assert!(
                limiter.shared.slots.mailboxes.taken(0),
                "taken by its leaving"
            );
        }
        drop(permit);
        assert!(poll(shutdown.as_mut()).is_ready());
        let stats = limiter.statistics();
        assert_eq!((stats.admitted, stats.completed, stats.rejected), (3, 3, 1));
        assert_eq!(stats.tokens_left, Some(1_000 - 6));
    }

    /// Shutdown both ways with a grant handed but not taken: draining waits for the handed
    /// waiter; dropped untaken, it gives its slot back and the next waiter is admitted (drain)
    /// or, when the queue was cancelled, the limiter is drained at once.
    #[test]
    fn shutdown_with_handed_untaken_grants() {
        for mode in [ShutdownMode::FinishQueued, ShutdownMode::CancelQueued] {
            let limiter = RateLimiter::builder()
                .limit_requests(10)
                .concurrency_limit(1)
                .build()
                .unwrap();
            let held = limiter.try_acquire(0).unwrap();
            let a = queued(limiter.acquire(0));
            let mut b = queued(limiter.acquire(0));
            drop(held); // to `a`, untaken
            let mut shutdown = Box::pin(limiter.shutdown(mode));
            assert!(
                poll(shutdown.as_mut()).is_pending(),
                "{mode:?}: a was admitted"
            );
            drop(a);
            if mode == ShutdownMode::FinishQueued {
                assert!(poll(shutdown.as_mut()).is_pending(), "b is still to run");
                let Poll::Ready(Ok(permit)) = poll(b.as_mut()) else {
                    panic!("b was handed a's slot")
                };
                drop(permit);
            } else {
                assert_eq!(
                    poll(b.as_mut()).map(|r| r.map(drop)),
                    Poll::Ready(Err(RateLimitError::Closed))
                );
            }
            assert!(poll(shutdown.as_mut()).is_ready(), "{mode:?}: not drained");
            let stats = limiter.statistics();
            let admitted = if mode == ShutdownMode::FinishQueued {
                2
            } else {
                1
            };
            assert_eq!(
                (stats.admitted, stats.completed, stats.running),
                (admitted, admitted, 0)
            );
            assert_eq!(stats.requests_left, Some(10 - admitted));
        }
    }
}
