//! Sleeping and reading the clock through the ambient runtime.
//!
//! [`sleep`], [`sleep_until`] and [`now`] use the ambient [`Runtime`](crate::runtime::Runtime)
//! (so they follow virtual time in tests). With no ambient runtime they fall back to the system
//! clock and async-io's timer, which works under any executor, including
//! `futures::executor::block_on`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::{self, RuntimeHandle};

/// A resettable timer, as a [`Runtime`](crate::runtime::Runtime) provides it.
///
/// It completes once its deadline has been reached. Implementations wrap the runtime's own
/// timer; [`AsyncIoTimer`] is the portable one.
pub trait Timer: Future<Output = ()> + Send {
    /// Re-arms the timer for a new deadline (earlier or later), even after it has fired.
    fn reset(self: Pin<&mut Self>, deadline: Instant);
}

/// A boxed [`Timer`], as returned by [`Runtime::timer`](crate::runtime::Runtime::timer).
pub type BoxTimer = Pin<Box<dyn Timer>>;

/// The portable timer: async-io's `Timer`, driven by async-io's reactor thread when no other
/// thread drives it, so it works under every executor.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use sheepdog_core::time::AsyncIoTimer;
///
/// let deadline = Instant::now() + Duration::from_millis(1);
/// futures::executor::block_on(AsyncIoTimer::at(deadline));
/// assert!(Instant::now() >= deadline);
/// ```
#[derive(Debug)]
#[must_use = "timers do nothing unless polled"]
pub struct AsyncIoTimer {
    timer: async_io::Timer,
}

impl AsyncIoTimer {
    /// A timer that fires at `deadline`.
    pub fn at(deadline: Instant) -> Self {
        AsyncIoTimer {
            timer: async_io::Timer::at(deadline),
        }
    }
}

impl Future for AsyncIoTimer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.timer).poll(cx).map(drop)
    }
}

impl Timer for AsyncIoTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.timer.set_at(deadline);
    }
}

/// Reads the ambient runtime's clock, or the system's monotonic clock when there is none.
///
/// # Examples
///
/// ```
/// let a = sheepdog_core::time::now();
/// let b = sheepdog_core::time::now();
/// assert!(b >= a);
/// ```
pub fn now() -> std::time::Instant {
    // Only an installed ambient runtime can have a clock of its own (a virtual one); runtimes
    // found through a detector read the system clock, so they need not be looked up here.
    runtime::context::installed().map_or_else(Instant::now, |rt| rt.now())
}

/// An instant so far ahead that it is never reached, used to saturate additions that would
/// overflow.
pub(crate) fn far_future() -> Instant {
    // About thirty years: far enough for every practical purpose, near enough for every
    // platform's `Instant` to represent.
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// `instant + duration`, saturating at [`far_future`] instead of panicking on overflow.
pub(crate) fn saturating_add(instant: Instant, duration: Duration) -> Instant {
    let cap = far_future();
    match instant.checked_add(duration) {
        Some(t) if t <= cap => t,
        _ => cap.max(instant),
    }
}

/// Waits until `duration` has elapsed on the ambient clock.
///
/// The deadline is computed when `sleep` is called. A zero duration completes at once, without
/// registering a timer.
///
/// # Cancel safety
///
/// Cancel safe: dropping a `Sleep` only deregisters its timer.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// futures::executor::block_on(sheepdog_core::time::sleep(Duration::from_millis(2)));
/// assert!(start.elapsed() >= Duration::from_millis(2));
/// ```
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(saturating_add(now(), duration))
}

/// Waits until the ambient clock reaches `deadline`; never completes earlier.
///
/// Inside an effectively cancelled [cancel scope](crate::cancel) it never completes at all:
/// the scope that catches the cancellation drops it.
///
/// A deadline already reached completes at the first poll, without registering a timer.
///
/// # Cancel safety
///
/// Cancel safe: dropping a `Sleep` only deregisters its timer.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let deadline = Instant::now() + Duration::from_millis(2);
/// futures::executor::block_on(sheepdog_core::time::sleep_until(deadline));
/// assert!(Instant::now() >= deadline);
/// ```
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        timer: None,
        clock: None,
        cancellable: true,
        check_first: true,
    }
}

/// The future returned by [`sleep`] and [`sleep_until`].
///
/// The timer is created lazily, at the first poll that finds the deadline still ahead, on the
/// runtime that is ambient at that poll.
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    timer: Option<BoxTimer>,
    /// The runtime whose clock the timer follows; `None` means the system clock.
    clock: Option<RuntimeHandle>,
    /// Whether the sleep refuses to end inside a cancelled scope (user sleeps do; a scope's
    /// own deadline timer must not).
    cancellable: bool,
    /// Whether the first poll reads the clock to skip the timer for a deadline already past.
    check_first: bool,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .field("armed", &self.timer.is_some())
            .finish()
    }
}

impl Sleep {
    /// The instant this sleep completes at.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline, earlier or later, re-arming the timer; works after completion too.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(timer) = &mut self.timer {
            timer.as_mut().reset(deadline);
        }
    }

    fn clock_now(&self) -> Instant {
        self.clock.as_ref().map_or_else(Instant::now, |rt| rt.now())
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.cancellable && crate::cancel::is_cancelled() {
            // Inside a cancelled scope a sleep never ends: the catching scope, already woken,
            // drops the sleeping code instead.
            return Poll::Pending;
        }
        let this = &mut *self;
        if this.timer.is_none() {
            this.clock = runtime::context::current_raw();
            if this.check_first && this.clock_now() >= this.deadline {
                return Poll::Ready(());
            }
            let deadline = this.deadline;
            this.timer = Some(match &this.clock {
                Some(rt) => rt.timer(deadline),
                None => Box::pin(AsyncIoTimer::at(deadline)),
            });
        }
        let clock = this.clock.as_deref();
        let Some(timer) = this.timer.as_mut() else {
            unreachable!("armed above")
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Never early: if the timer fired before the clock agrees, re-arm and wait again.
            if clock.map_or_else(Instant::now, |rt| rt.now()) >= this.deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(this.deadline);
        }
    }
}
