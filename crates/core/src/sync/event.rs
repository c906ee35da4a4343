//! [`Event`]: set once, wait for it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::task::{Context, Poll};

use crate::shim::AtomicBool;

/// A one-shot event (AnyIO's `Event`): [`set`](Event::set) it once and every
/// [`wait`](Event::wait), past and future, completes. It cannot be cleared.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::Event;
///
/// futures::executor::block_on(async {
///     let ready = Event::new();
///     let waiter = async {
///         ready.wait().await;
///         "saw it"
///     };
///     let setter = async { ready.set() };
///     let (seen, ()) = futures::future::join(waiter, setter).await;
///     assert_eq!(seen, "saw it");
///     assert!(ready.is_set());
/// });
/// ```
pub struct Event {
    set: AtomicBool,
    // event-listener's `Event` is exactly this primitive's wait list: everyone is woken on
    // `set`, so no hand-off order is needed.
    waiters: event_listener::Event,
}

impl Default for Event {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish_non_exhaustive()
    }
}

impl Event {
    /// An event that is not set.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!sheepdog_core::sync::Event::new().is_set());
    /// ```
    pub fn new() -> Self {
        Event {
            set: AtomicBool::new(false),
            waiters: event_listener::Event::new(),
        }
    }

    /// Sets the event and wakes every waiter. Idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = sheepdog_core::sync::Event::new();
    /// event.set();
    /// event.set();
    /// assert!(event.is_set());
    /// ```
    pub fn set(&self) {
        if !self.set.swap(true, AcqRel) {
            self.waiters.notify(usize::MAX);
        }
    }

    /// Whether the event is set.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = sheepdog_core::sync::Event::new();
    /// assert!(!event.is_set());
    /// ```
    pub fn is_set(&self) -> bool {
        self.set.load(Acquire)
    }

    /// Waits until the event is set (at once if it is).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, and a cancellation point: even on a set event it never completes inside
    /// a cancelled scope (as in AnyIO, where it still checkpoints).
    ///
    /// # Examples
    ///
    /// ```
    /// let event = sheepdog_core::sync::Event::new();
    /// event.set();
    /// futures::executor::block_on(event.wait());
    /// ```
    pub fn wait(&self) -> EventWait<'_> {
        EventWait {
            event: self,
            listener: None,
        }
    }

    /// How many wait for the event.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(sheepdog_core::sync::Event::new().tasks_waiting(), 0);
    /// ```
    pub fn tasks_waiting(&self) -> usize {
        self.waiters.total_listeners()
    }
}

/// The future returned by [`Event::wait`].
#[must_use = "futures do nothing unless awaited"]
pub struct EventWait<'a> {
    event: &'a Event,
    listener: Option<event_listener::EventListener>,
}

impl fmt::Debug for EventWait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventWait")
            .field("waiting", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl Future for EventWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if super::cancelled() {
            return Poll::Pending;
        }
        let this = &mut *self;
        loop {
            if this.event.is_set() {
                this.listener = None;
                return Poll::Ready(());
            }
            match &mut this.listener {
                // Listen first, then check the flag again (the loop): a `set` in between
                // notifies this listener.
                None => this.listener = Some(this.event.waiters.listen()),
                Some(listener) => {
                    std::task::ready!(Pin::new(listener).poll(cx));
                    this.listener = None;
                }
            }
        }
    }
}
