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

/// Bounds on the current instant: the true reading of the clock [`now`] follows lies in
/// `[lower, upper]`.
///
/// With an ambient runtime, its clock is read and both bounds are that reading (virtual time
/// stays exact). Without one, on Linux and FreeBSD, the kernel's coarse monotonic clock is read
/// instead of the precise one: a few nanoseconds through the vDSO instead of about twenty, at
/// the price of bounds about two clock ticks apart (8 ms at the common 250 Hz). Elsewhere the
/// precise clock is read.
///
/// The coarse clock is the precise one as of the kernel's last tick, so it trails it by less
/// than one tick (its resolution); the bounds assume that.
pub(crate) fn now_bounds() -> Bounds {
    match runtime::context::installed() {
        Some(rt) => Bounds::exact(rt.now()),
        None => coarse::bounds().unwrap_or_else(|| Bounds::exact(Instant::now())),
    }
}

/// The result of [`now_bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Never later than the true instant.
    pub(crate) lower: Instant,
    /// Never earlier than the true instant.
    pub(crate) upper: Instant,
}

impl Bounds {
    /// A precise reading.
    pub(crate) fn exact(now: Instant) -> Self {
        Bounds {
            lower: now,
            upper: now,
        }
    }

    /// Whether both bounds are the same instant.
    pub(crate) fn is_exact(&self) -> bool {
        self.lower == self.upper
    }
}

#[cfg(all(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    not(shuttle)
))]
mod coarse {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use rustix::time::{clock_getres, clock_gettime, ClockId, Timespec};

    use super::Bounds;

    /// A coarse reading taken together with a precise one: `coarse <= precise < coarse + tick`.
    struct Anchor {
        precise: Instant,
        coarse: Duration,
        /// The coarse clock's resolution: how far it may trail the precise one.
        tick: Duration,
    }

    static ANCHOR: OnceLock<Option<Anchor>> = OnceLock::new();

    fn read() -> Option<Duration> {
        let Timespec { tv_sec, tv_nsec } = clock_gettime(ClockId::MonotonicCoarse);
        let secs = u64::try_from(tv_sec).ok()?;
        let nanos = u32::try_from(tv_nsec).ok()?;
        Some(Duration::new(secs, nanos))
    }

    fn anchor() -> Option<Anchor> {
        let res = clock_getres(ClockId::MonotonicCoarse);
        let tick = Duration::new(
            u64::try_from(res.tv_sec).ok()?,
            u32::try_from(res.tv_nsec).ok()?,
        );
        // A resolution that is zero or over 100 ms is not a tick-driven coarse clock.
        if tick.is_zero() || tick > Duration::from_millis(100) {
            return None;
        }
        for _ in 0..100 {
            // The precise reading lies between two coarse readings; when they agree, the
            // coarse clock had that value while the precise one was read:
            // `coarse <= precise < coarse + tick`.
            let before = read()?;
            let precise = Instant::now();
            let after = read()?;
            if before == after {
                return Some(Anchor {
                    precise,
                    coarse: before,
                    tick,
                });
            }
        }
        None
    }

    /// Bounds from the coarse clock, or `None` if it is not usable here.
    pub(super) fn bounds() -> Option<Bounds> {
        let anchor = ANCHOR.get_or_init(anchor).as_ref()?;
        // With `a` the anchor's precise instant, whose value on the coarse scale lies in
        // `[coarse, coarse + tick)`, and the true value in `[now, now + tick)`, the true
        // instant lies within `a + (now - coarse) ± tick`.
        let since = read()?.checked_sub(anchor.coarse)?;
        let mid = anchor.precise.checked_add(since)?;
        Some(Bounds {
            lower: mid.checked_sub(anchor.tick)?,
            upper: mid.checked_add(anchor.tick)?,
        })
    }
}

#[cfg(not(all(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    not(shuttle)
)))]
mod coarse {
    use super::Bounds;

    /// No coarse clock here (or under shuttle): the caller reads the precise one.
    pub(super) fn bounds() -> Option<Bounds> {
        None
    }
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

/// A sleep that ignores cancel scopes, for sheepdog's own deadline timers. It arms the
/// runtime's timer at its first poll without reading the clock first (a deadline already past
/// makes the timer fire at once, and the clock is read then).
pub(crate) fn timer_until(deadline: Instant) -> Sleep {
    Sleep {
        cancellable: false,
        check_first: false,
        ..sleep_until(deadline)
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
