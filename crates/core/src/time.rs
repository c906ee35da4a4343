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

pub use crate::runtime::timer_slot::TimerSlot;

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
/// With an ambient runtime whose clock is not the system's, its clock is read and both bounds
/// are that reading (virtual time stays exact). Otherwise, on Linux and FreeBSD, the kernel's
/// coarse monotonic clock is read instead of the precise one ([`coarse_now`]): a few
/// nanoseconds through the vDSO instead of about twenty, at the price of bounds about three
/// clock ticks apart (some 13 ms at the common 250 Hz). Elsewhere the precise clock is read.
pub(crate) fn now_bounds() -> Bounds {
    coarse_now().map_or_else(|| Bounds::exact(now()), |c| c.bounds())
}

/// A reading of the coarse clock: `None` inside an ambient runtime whose clock is not the
/// system's ([`Runtime::system_clock`](crate::runtime::Runtime::system_clock): virtual time,
/// whose clock rules), or where there is no coarse clock.
///
/// The coarse clock is the precise one as of the kernel's last tick, so it trails it by less
/// than one tick (its resolution); everything derived from it assumes that. A reading names
/// its *epoch* (the number of whole periods since an anchor, a period being the tick rounded
/// up to a power of two nanoseconds, so that the epoch is a shift away); every instant at
/// which the epoch is `e` lies before [`epoch_end(e)`](epoch_end).
#[inline]
pub(crate) fn coarse_now() -> Option<Coarse> {
    if !runtime::context::system_clock() {
        return None;
    }
    coarse::now()
}

/// An instant never earlier than any at which the coarse epoch was `epoch`.
pub(crate) fn epoch_end(epoch: u64) -> Option<Instant> {
    coarse::epoch_end(epoch)
}

/// The latest coarse epoch that ends no later than `instant` (see [`epoch_end`]): while the
/// coarse clock reads that epoch or an earlier one, `instant` has not come.
pub(crate) fn last_epoch_before(instant: Instant) -> Option<u64> {
    coarse::last_epoch_before(instant)
}

/// The latest coarse epoch that can have been read at or before `upper`.
pub(crate) fn epoch_by(upper: Instant) -> Option<u64> {
    coarse::epoch_by(upper)
}

/// See [`coarse_now`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Coarse {
    /// Nanoseconds since the anchor, on the coarse clock.
    since: u64,
    /// `since / period`.
    pub(crate) epoch: u64,
}

impl Coarse {
    /// Bounds on the instant of the reading: the end of its epoch above, and below, the
    /// reading mapped onto the precise clock less one tick.
    pub(crate) fn bounds(&self) -> Bounds {
        coarse::bounds(self).unwrap_or_else(|| Bounds::exact(Instant::now()))
    }
}

/// The result of [`now_bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Never later than the true instant.
    pub(crate) lower: Instant,
    /// Never earlier than the true instant.
    pub(crate) upper: Instant,
    /// The coarse epoch read, if the coarse clock was read (`upper` is then its end).
    pub(crate) epoch: Option<u64>,
}

impl Bounds {
    /// A precise reading.
    pub(crate) fn exact(now: Instant) -> Self {
        Bounds {
            lower: now,
            upper: now,
            epoch: None,
        }
    }

    /// Whether both bounds are the same instant.
    pub(crate) fn is_exact(&self) -> bool {
        self.lower == self.upper
    }
}

#[cfg(all(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    not(shuttle),
    not(miri)
))]
mod coarse {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use rustix::time::{clock_getres, clock_gettime, ClockId, Timespec};

    use super::{Bounds, Coarse};

    /// A coarse reading taken together with a precise one: `coarse <= precise < coarse + tick`
    /// (on the coarse clock's scale, in nanoseconds).
    struct Anchor {
        precise: Instant,
        coarse: u64,
        /// The coarse clock's resolution: how far it may trail the precise one.
        tick: u64,
        /// An epoch's length is `1 << shift` nanoseconds, at least a tick.
        shift: u32,
    }

    static ANCHOR: OnceLock<Option<Anchor>> = OnceLock::new();

    fn nanos(Timespec { tv_sec, tv_nsec }: Timespec) -> Option<u64> {
        let secs = u64::try_from(tv_sec).ok()?;
        let nanos = u64::try_from(tv_nsec).ok()?;
        secs.checked_mul(1_000_000_000)?.checked_add(nanos)
    }

    #[inline]
    fn read() -> Option<u64> {
        nanos(clock_gettime(ClockId::MonotonicCoarse))
    }

    fn anchor() -> Option<Anchor> {
        let tick = nanos(clock_getres(ClockId::MonotonicCoarse))?;
        // A resolution that is zero or over 100 ms is not a tick-driven coarse clock.
        if tick == 0 || tick > 100_000_000 {
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
                    shift: tick.next_power_of_two().trailing_zeros(),
                });
            }
        }
        None
    }

    #[inline]
    fn get() -> Option<&'static Anchor> {
        ANCHOR.get_or_init(anchor).as_ref()
    }

    #[inline]
    pub(super) fn now() -> Option<Coarse> {
        let anchor = get()?;
        let since = read()?.checked_sub(anchor.coarse)?;
        Some(Coarse {
            since,
            epoch: since >> anchor.shift,
        })
    }

    /// With `a` the anchor's precise instant, whose value on the coarse scale lies in
    /// `[coarse, coarse + tick)`, and the true value of the reading's instant in
    /// `[now, now + tick)`, the true instant lies within `a + (now - coarse) ± tick`; and
    /// `now - coarse < (epoch + 1) * period` puts the upper bound below the epoch's end.
    pub(super) fn bounds(reading: &Coarse) -> Option<Bounds> {
        let anchor = get()?;
        let mid = anchor
            .precise
            .checked_add(Duration::from_nanos(reading.since))?;
        Some(Bounds {
            lower: mid.checked_sub(Duration::from_nanos(anchor.tick))?,
            upper: epoch_end(reading.epoch)?,
            epoch: Some(reading.epoch),
        })
    }

    /// `a + (epoch + 1) * period + tick`: a reading in `epoch` has
    /// `now - coarse < (epoch + 1) * period`, so the true instant is before that.
    #[inline]
    pub(super) fn epoch_end(epoch: u64) -> Option<Instant> {
        let anchor = get()?;
        let periods = epoch.checked_add(1)?;
        if periods.leading_zeros() < anchor.shift {
            return None;
        }
        let nanos = (periods << anchor.shift).checked_add(anchor.tick)?;
        anchor.precise.checked_add(Duration::from_nanos(nanos))
    }

    /// The largest `e` with `epoch_end(e) <= instant`.
    pub(super) fn last_epoch_before(instant: Instant) -> Option<u64> {
        let anchor = get()?;
        let since = instant.checked_duration_since(anchor.precise)?;
        let since = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        (since.checked_sub(anchor.tick)? >> anchor.shift).checked_sub(1)
    }

    /// A reading in epoch `e` has `a + e * period - tick <= a + (now - coarse) - tick <= true
    /// instant`, so by `upper` the epoch is at most `(upper - a + tick) / period`.
    pub(super) fn epoch_by(upper: Instant) -> Option<u64> {
        let anchor = get()?;
        let since = upper.saturating_duration_since(anchor.precise);
        let since = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        Some(since.saturating_add(anchor.tick) >> anchor.shift)
    }
}

#[cfg(not(all(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    not(shuttle),
    not(miri)
)))]
mod coarse {
    use std::time::Instant;

    use super::{Bounds, Coarse};

    // No coarse clock here (or under shuttle or miri): the callers read the precise one.

    pub(super) fn now() -> Option<Coarse> {
        None
    }

    pub(super) fn bounds(_: &Coarse) -> Option<Bounds> {
        None
    }

    pub(super) fn epoch_end(_: u64) -> Option<Instant> {
        None
    }

    pub(super) fn epoch_by(_: Instant) -> Option<u64> {
        None
    }

    pub(super) fn last_epoch_before(_: Instant) -> Option<u64> {
        None
    }
}

/// How far ahead an addition saturates: about thirty years, far enough to mean "never" for
/// every practical purpose, near enough for every platform's `Instant` to represent.
pub(crate) const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `instant + duration`, with `duration` capped at [`FAR`], instead of panicking on overflow.
///
/// The cap is relative to `instant`, never to the system clock: a virtual clock may run decades
/// ahead of it, and a deadline must never land before the instant it was computed from.
pub(crate) fn saturating_add(instant: Instant, duration: Duration) -> Instant {
    let duration = duration.min(FAR);
    // `Instant` counts from boot on every supported platform, so thirty years more fits; if it
    // ever did not, the largest step that fits is still at or after `instant`.
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(duration / 2))
        .unwrap_or(instant)
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
