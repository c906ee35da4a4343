//! Cancel scopes: Trio/AnyIO-style cancellation with deadlines and shields, for Rust futures.
//!
//! Rust cancels a future by dropping it. sheepdog keeps that and adds a tree of scopes on top:
//!
//! - a [`CancelScope`] owns a *region* — the future passed to [`CancelScope::run`] — and can be
//!   cancelled through any clone of it, from any thread, before or while the region runs;
//! - scopes nest: a region started inside another region's future is its child, and so is
//!   every task spawned through sheepdog from inside it. Cancelling a scope cancels everything
//!   below it, except what a **shielded** scope protects;
//! - the **outermost** effectively cancelled scope *catches*: its region drops its future and
//!   completes with `None`, and reports [`cancelled_caught`](CancelScope::cancelled_caught);
//!   inner regions never complete on their own once an ancestor is cancelled;
//! - a scope can have a **deadline** (readable and movable while it runs); reaching it cancels
//!   the scope. [`fail_after`] turns that into an [`Elapsed`] error, [`move_on_after`] into
//!   `None`.
//!
//! Cancellation takes effect where the code waits: every time a task is polled, the catching
//! region checks before polling its future, so cancelled work never runs past its next
//! `Pending`. sheepdog's own waits ([`checkpoint`], [`time::sleep`]) also
//! refuse to complete inside a cancelled scope. Code that never waits cannot be interrupted —
//! Rust has no preemption.
//!
//! | AnyIO / Trio | sheepdog |
//! |---|---|
//! | `with CancelScope() as s:` | `let s = CancelScope::new(); s.run(fut).await` |
//! | `s.cancel()` | `s.cancel()` (any clone, any thread, also before `run`) |
//! | `s.cancel_called`, `s.cancelled_caught` | `s.cancel_called()`, `s.cancelled_caught()` |
//! | `s.deadline = t` | `s.set_deadline(t)` |
//! | `CancelScope(shield=True)`, `s.shield = x` | `CancelScope::new().shielded(true)`, `s.set_shield(x)` |
//! | `with fail_after(d):` | `fail_after(d, fut).await` → `Result<T, Elapsed>` |
//! | `with move_on_after(d):` | `move_on_after(d, fut).await` → `Option<T>` |
//! | `fail_at`, `move_on_at` | `fail_at`, `move_on_at` |
//! | `current_effective_deadline()` | `current_effective_deadline()` → `Option<Instant>` |
//! | `checkpoint()` | `checkpoint().await` |
//! | `try: … finally: with CancelScope(shield=True): await cleanup()` | `with_cleanup(body, timeout, cleanup)` |
//!
//! See `docs/cancellation.md` for the full model and what shielding can and cannot protect.

mod deadlines;
mod lent;
#[cfg(all(test, shuttle))]
pub(crate) mod model;
pub(crate) mod node;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use node::{Current, Deadline, Frame, Lazy, LazyEntry, Node};

use deadlines::RegionTimer;

use crate::time;

/// A deadline passed before the future completed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sheepdog_core::cancel::fail_after;
///
/// let out = futures::executor::block_on(fail_after(
///     Duration::from_millis(1),
///     futures::future::pending::<()>(),
/// ));
/// assert!(out.is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed {
    deadline: Instant,
}

impl Elapsed {
    /// The deadline that passed.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// A cancel scope: a cheap, cloneable handle to one node of the scope tree.
///
/// Create it, configure it, then run one region in it with [`run`](CancelScope::run); keep a
/// clone to cancel it, move its deadline or read its state. A scope can run only one region.
///
/// # Examples
///
/// The seed's `with move_on_after(10) as scope: … if scope.cancelled_caught:`:
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::cancel::CancelScope;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// VirtualRuntime::new().block_on(async {
///     let scope = CancelScope::new().with_timeout(Duration::from_secs(10));
///     let result = scope
///         .run(async {
///             time::sleep(Duration::from_secs(60)).await; // a slow "quick check"
///             "answer"
///         })
///         .await;
///     let result = if scope.cancelled_caught() { "timed out, using fallback" } else { result.unwrap() };
///     assert_eq!(result, "timed out, using fallback");
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct CancelScope {
    node: Arc<Node>,
}

impl fmt::Debug for CancelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelScope")
            .field("cancel_called", &self.cancel_called())
            .field("cancelled_caught", &self.cancelled_caught())
            .field("shield", &self.shield())
            .finish_non_exhaustive()
    }
}

impl Default for CancelScope {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelScope {
    /// A handle to an existing node (a task group's scope).
    pub(crate) fn from_node(node: Arc<Node>) -> Self {
        CancelScope { node }
    }

    /// A scope with no deadline and no shield; it is still cancellable.
    pub fn new() -> Self {
        CancelScope {
            node: Node::new(Deadline::None, false),
        }
    }

    /// Sets an absolute deadline (builder form of [`set_deadline`](CancelScope::set_deadline)).
    #[must_use]
    pub fn with_deadline(self, deadline: Instant) -> Self {
        self.set_deadline(deadline);
        self
    }

    /// Sets a deadline `timeout` after the region first waits (or after the deadline is first
    /// read, if that comes earlier). A region that completes without waiting reads no clock.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.node.set_deadline(Deadline::After(timeout));
        self
    }

    /// Shields (or unshields) the scope (builder form of [`set_shield`](CancelScope::set_shield)).
    #[must_use]
    pub fn shielded(self, shield: bool) -> Self {
        self.set_shield(shield);
        self
    }

    /// Cancels the scope and everything below it that is not shielded. Idempotent; honoured
    /// even before the region starts; callable from any thread.
    pub fn cancel(&self) {
        self.node.cancel();
    }

    /// Whether the scope was cancelled, by [`cancel`](CancelScope::cancel) or by reaching its
    /// deadline.
    pub fn cancel_called(&self) -> bool {
        self.node.cancel_called()
    }

    /// Whether this scope caught a cancellation: its region was dropped and completed with
    /// `None`. An inner scope whose ancestor was cancelled never catches.
    pub fn cancelled_caught(&self) -> bool {
        self.node.caught()
    }

    /// The scope's deadline, if it has one. Reading a relative deadline (set with
    /// [`with_timeout`](CancelScope::with_timeout)) fixes it from now.
    pub fn deadline(&self) -> Option<Instant> {
        self.node.resolve_deadline(time::now)
    }

    /// Sets or moves the deadline, earlier or later, also while the region runs (its timer is
    /// re-armed). A deadline already past cancels the scope at its region's next poll.
    pub fn set_deadline(&self, deadline: Instant) {
        self.node.set_deadline(Deadline::At(deadline));
    }

    /// Removes the deadline.
    pub fn clear_deadline(&self) {
        self.node.set_deadline(Deadline::None);
    }

    /// Whether the scope is shielded from its ancestors' cancellation.
    pub fn shield(&self) -> bool {
        self.node.is_shielded()
    }

    /// Shields or unshields the scope, also while it runs. A shield protects the region from
    /// its ancestors' cancellation, never from the scope's own `cancel` or deadline;
    /// unshielding exposes an ancestor's pending cancellation at once.
    pub fn set_shield(&self, shield: bool) {
        self.node.set_shield(shield);
    }

    /// Runs `future` as this scope's region.
    ///
    /// The returned future completes with `Some(output)`, or with `None` if this scope caught a
    /// cancellation (then [`cancelled_caught`](CancelScope::cancelled_caught) is true). If an
    /// ancestor scope is cancelled instead, it never completes: the ancestor drops it.
    ///
    /// # Panics
    ///
    /// The region panics at its first poll if this scope (or a clone of it) already ran a
    /// region: a scope is single-use.
    ///
    /// # Cancel safety
    ///
    /// Dropping the region drops `future`, as for any future; the scope then counts as exited.
    pub fn run<F: Future>(&self, future: F) -> Scoped<F> {
        Scoped::with_node(Arc::clone(&self.node), future)
    }
}

pin_project_lite::pin_project! {
    /// The region of a [`CancelScope`], returned by [`CancelScope::run`] (and by
    /// [`move_on_after`], [`move_on_at`]).
    #[must_use = "futures do nothing unless awaited"]
    #[repr(C)]
    pub struct Scoped<F> {
        #[pin]
        future: Option<F>,
        // The scope's node. `None` until needed for the handle-less forms (`fail_after`,
        // `move_on_after`, `shield`, ...): their first poll runs in a frame that makes the
        // node only if something asks for it, so a region that completes at once allocates
        // nothing and reads no clock. One with no parent scope stays in a frame (`Root`) even
        // while it waits: only its own deadline can cancel it. While the region's future is
        // polled, the node is moved into the thread-local current scope.
        node: Option<Arc<Node>>,
        // The configuration of a node not made yet; a root region fixes a relative deadline
        // here when it first waits. (Two fields rather than a `Lazy`, whose padding made the
        // construction of a region copy bytes across it.)
        deadline: Deadline,
        shield: bool,
        phase: Phase,
        shield_counted: bool,
        // The deadline's timer while the region waits (boxed, from this thread's spare ones,
        // so a region that completes at once stays small); deregistered and handed back as
        // soon as the region completes.
        timer: RegionTimer,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A handle's node that this region never entered is not its to leave.
            let entered = !matches!(*this.phase, Phase::Done | Phase::Handle);
            if let (Some(node), true) = (this.node.as_ref(), entered) {
                exit(node, this.shield_counted);
            }
        }
    }
}

/// Where a region is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A handle-less region, not polled yet (its node, if it has one, was made while its
    /// first poll unwound).
    Fresh,
    /// A [`CancelScope`]'s region, not polled yet: its node is the scope's.
    Handle,
    /// Waiting in a frame with no parent scope and no node.
    Root,
    /// Entered the scope tree with its node.
    Node,
    /// Completed (its future dropped, its node left the tree).
    Done,
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

fn exit(node: &Node, shield_counted: &mut bool) {
    if std::mem::take(shield_counted) {
        node.shield_ended();
    }
    node.exit();
}

impl<F> Scoped<F> {
    /// The region of a scope's handle.
    fn with_node(node: Arc<Node>, future: F) -> Self {
        Scoped {
            future: Some(future),
            node: Some(node),
            timer: RegionTimer::new(),
            deadline: Deadline::None,
            shield: false,
            phase: Phase::Handle,
            shield_counted: false,
        }
    }

    /// A region whose scope nobody else holds, configured by value.
    #[inline]
    fn lazy(deadline: Deadline, shield: bool, future: F) -> Self {
        Scoped {
            future: Some(future),
            node: None,
            timer: RegionTimer::new(),
            deadline,
            shield,
            phase: Phase::Fresh,
            shield_counted: false,
        }
    }

    /// The region's deadline as fixed so far (for [`Elapsed`]).
    fn fixed_deadline(&self) -> Option<Instant> {
        match &self.node {
            Some(node) => node.resolve_deadline(time::now),
            None => match self.deadline {
                Deadline::At(at) => Some(at),
                _ => None,
            },
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = Option<F::Output>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        // Fields are read through the projection only: a `&Self` would cover the wrapped
        // future too, and an `async fn`'s state may hold references into itself (miri's
        // Stacked Borrows reports the shared reborrow as invalidating them).
        let this = self.as_mut().project();
        if *this.phase == Phase::Fresh && this.node.is_none() {
            // The first poll of a region with no handle: the hot path of `fail_after` and
            // friends, kept small (a future that completes at once costs two one-byte writes
            // of a thread-local and the loan of its deadline, a pointer written and restored).
            let shield = *this.shield;
            if let LazyEntry::Ready = node::lazy_entry(shield) {
                let Some(future) = this.future.as_pin_mut() else {
                    unreachable!("not polled yet")
                };
                let polled =
                    node::enter_lazy_at(this.deadline, shield, this.node, || future.poll(cx));
                if this.node.is_none() {
                    if let Poll::Ready(output) = polled {
                        let mut this = self.project();
                        this.future.set(None);
                        *this.phase = Phase::Done;
                        return Poll::Ready(Some(output));
                    }
                }
                return self.after_first_lazy(cx, polled);
            }
        }
        if *self.as_mut().project().phase == Phase::Root {
            return self.poll_root(cx);
        }
        self.poll_slow(cx)
    }
}

impl<F: Future> Scoped<F> {
    /// After a first poll on the fast path that waited, or made the region's node.
    #[inline(never)]
    fn after_first_lazy(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        polled: Poll<F::Output>,
    ) -> Poll<Option<F::Output>> {
        let this = self.as_mut().project();
        if this.node.is_none() {
            // It waited. The fast path ran on top of no lazy frame, so `in_scope` says
            // whether it has a parent.
            if !node::in_scope() {
                *this.phase = Phase::Root;
                return self.root_wait(cx);
            }
            let node = Node::new(*this.deadline, *this.shield);
            node.enter(node::current());
            *this.node = Some(node);
        }
        *this.phase = Phase::Node;
        self.poll_node(cx, Some(polled))
    }

    /// Every poll but a lazy region's first on the fast path.
    #[inline(never)]
    fn poll_slow(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.as_mut().project();
        match *this.phase {
            Phase::Done => panic!("a cancel scope's region was polled after it completed"),
            Phase::Root => return self.poll_root(cx),
            Phase::Node => return self.poll_node(cx, None),
            Phase::Handle => {
                let Some(node) = this.node.as_ref() else {
                    unreachable!("a handle's region has its node")
                };
                assert!(
                    node.enter(node::current()),
                    "a CancelScope can run only one region"
                );
                *this.phase = Phase::Node;
                return self.poll_node(cx, None);
            }
            Phase::Fresh => {}
        }
        *this.phase = Phase::Node;
        // A lazy region on top of another lazy frame, or (unshielded) inside a cancelled
        // scope: its parent's node is made now.
        let config = Lazy {
            deadline: *this.deadline,
            shield: *this.shield,
        };
        let parent = node::current();
        let make = |parent| {
            let node = Node::new(config.deadline, config.shield);
            node.enter(parent);
            node
        };
        if !config.shield && parent.as_ref().is_some_and(|p| p.effectively_cancelled()) {
            *this.node = Some(make(parent));
            return self.poll_node(cx, None);
        }
        let Some(future) = this.future.as_pin_mut() else {
            unreachable!("not polled yet")
        };
        let mut frame = Some(Current::Frame(Frame {
            parent: parent.clone(),
            deadline: config.deadline,
            shield: config.shield,
        }));
        let polled = node::enter(&mut frame, || future.poll(cx));
        let mut this = self.as_mut().project();
        match (polled, frame) {
            (Poll::Ready(output), Some(Current::Frame(_))) => {
                this.future.set(None);
                *this.phase = Phase::Done;
                Poll::Ready(Some(output))
            }
            (polled, Some(Current::Node(node))) => {
                *this.node = Some(node);
                self.poll_node(cx, Some(polled))
            }
            (polled, _) => {
                *this.node = Some(make(parent));
                self.poll_node(cx, Some(polled))
            }
        }
    }

    /// Polls a region that runs in a frame with no parent: only its deadline can end it early,
    /// so it needs no node, no lock and no waker of its own — just the runtime's timer.
    #[inline(never)]
    fn poll_root(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let mut this = self.as_mut().project();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            unreachable!("the future is only taken when the region completes")
        };
        let polled = if node::bare() {
            // Polled outside any scope again (the usual case): the frame goes on top in the
            // thread-local cells, as at the first poll.
            node::enter_lazy_at(this.deadline, *this.shield, this.node, || future.poll(cx))
        } else {
            // Polled inside some scope (moved there after it started): its frame still has no
            // parent.
            let mut frame = Some(Current::Frame(Frame {
                parent: None,
                deadline: *this.deadline,
                shield: *this.shield,
            }));
            let polled = node::enter(&mut frame, || future.poll(cx));
            if let Some(Current::Node(node)) = frame {
                *this.node = Some(node);
            }
            polled
        };
        if this.node.is_some() {
            // Something inside made the frame's node: go on as a region with a node.
            *this.phase = Phase::Node;
            return self.poll_node(cx, Some(polled));
        }
        if let Poll::Ready(output) = polled {
            this.future.set(None);
            this.timer.give_back();
            *this.phase = Phase::Done;
            return Poll::Ready(Some(output));
        }
        self.root_wait(cx)
    }

    /// A root region waits: arms its deadline's timer (fixing a relative deadline at the first
    /// wait, as a node would), and catches if the deadline passed. Inlined into its two
    /// callers, which are out of line themselves (one call fewer per wait).
    #[inline(always)]
    fn root_wait(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let mut this = self.project();
        let deadline = match *this.deadline {
            Deadline::None => return Poll::Pending,
            Deadline::At(at) => at,
            Deadline::After(after) => {
                let now = time::now();
                // `after_now` without its cap when the sum is in range (the usual case).
                let at = match now.checked_add(after) {
                    Some(at) if after <= time::FAR => at,
                    _ => node::after_now(now, after),
                };
                *this.deadline = Deadline::At(at);
                at
            }
        };
        if this.timer.poll_at(deadline, cx).is_pending() {
            return Poll::Pending;
        }
        // The deadline passed: nothing else can reach this scope, so it catches.
        this.future.set(None);
        this.timer.give_back();
        *this.phase = Phase::Done;
        Poll::Ready(None)
    }

    /// Polls a region with a node (entered in the tree); `polled` is what a poll of its future
    /// that already ran gave.
    fn poll_node(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut polled: Option<Poll<F::Output>>,
    ) -> Poll<Option<F::Output>> {
        let mut this = self.project();
        loop {
            let Some(node) = this.node.as_ref() else {
                unreachable!("a region in the tree has its node")
            };
            // Keep the ancestors' count of shields below them in step with `set_shield`.
            if node.is_shielded() != *this.shield_counted {
                *this.shield_counted = !*this.shield_counted;
                if *this.shield_counted {
                    node.shield_started();
                } else {
                    node.shield_ended();
                }
            }
            let polled_now = match polled.take() {
                Some(polled) => polled,
                None => {
                    if node.shields_below() == 0 {
                        if node.ancestor_cancelled() {
                            // Not ours to catch: the cancelled ancestor's region drops this one.
                            node.register_waker(cx.waker());
                            return Poll::Pending;
                        }
                        if node.cancel_called() {
                            this.future.set(None);
                            this.timer.give_back();
                            *this.phase = Phase::Done;
                            exit(node, this.shield_counted);
                            node.set_caught();
                            return Poll::Ready(None);
                        }
                    }
                    // Not cancelled, or cancelled with a shield below it still running: poll
                    // the region's future (its unshielded parts stay frozen at their waits).
                    let Some(future) = this.future.as_mut().as_pin_mut() else {
                        unreachable!("the future is only taken when the region completes")
                    };
                    node::enter_node(this.node, || future.poll(cx))
                }
            };
            let Some(node) = this.node.as_ref() else {
                unreachable!("moved back after the poll")
            };
            if let Poll::Ready(output) = polled_now {
                this.future.set(None);
                this.timer.give_back();
                *this.phase = Phase::Done;
                exit(node, this.shield_counted);
                return Poll::Ready(Some(output));
            }
            node.register_waker(cx.waker());
            // A cancellation made during that poll (by the future itself, or before the waker
            // was registered) is handled now rather than missed.
            if node.cancel_called() || node.ancestor_cancelled() {
                if node.shields_below() == 0 {
                    continue;
                }
                return Poll::Pending;
            }
            let Some(deadline) = node.resolve_deadline(time::now) else {
                this.timer.give_back();
                return Poll::Pending;
            };
            // The timer is made at the first wait, so a region that completes at once
            // registers none; moving the deadline re-arms it.
            if this.timer.poll_at(deadline, cx).is_pending() {
                return Poll::Pending;
            }
            node.cancel();
        }
    }
}

/// Runs `future` with a deadline `duration` after it first waits; fails with [`Elapsed`] if
/// the deadline passes first.
///
/// A future that completes without waiting always succeeds, even with a zero duration, and
/// reads no clock. A zero duration fails at the first wait. Only the deadline makes it fail:
/// if an outer scope is cancelled, that scope catches and this future never completes.
///
/// # Errors
///
/// [`Elapsed`] when the deadline passed before `future` completed; `future` has been dropped.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::cancel::fail_after;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// VirtualRuntime::new().block_on(async {
///     let slow = fail_after(Duration::from_secs(30), time::sleep(Duration::from_secs(60)));
///     assert!(slow.await.is_err());
///     let quick = fail_after(Duration::from_secs(30), async { 7 });
///     assert_eq!(quick.await, Ok(7));
/// });
/// # }
/// ```
pub fn fail_after<F: Future>(duration: Duration, future: F) -> FailAfter<F> {
    FailAfter {
        scoped: Scoped::lazy(Deadline::After(duration), false, future),
    }
}

/// Runs `future` with the absolute deadline `deadline`; fails with [`Elapsed`] if it passes
/// first. A deadline already past fails at the first wait.
///
/// # Errors
///
/// [`Elapsed`] when the deadline passed before `future` completed; `future` has been dropped.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::cancel::fail_at;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// VirtualRuntime::new().block_on(async {
///     let deadline = time::now() + Duration::from_secs(5);
///     let err = fail_at(deadline, time::sleep(Duration::from_secs(9))).await.unwrap_err();
///     assert_eq!(err.deadline(), deadline);
/// });
/// # }
/// ```
pub fn fail_at<F: Future>(deadline: Instant, future: F) -> FailAfter<F> {
    FailAfter {
        scoped: Scoped::lazy(Deadline::At(deadline), false, future),
    }
}

/// Runs `future` with a deadline `duration` after it first waits; completes with `None` if
/// the deadline passes first (AnyIO's `move_on_after`).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::cancel::move_on_after;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// VirtualRuntime::new().block_on(async {
///     let out = move_on_after(Duration::from_secs(1), time::sleep(Duration::from_secs(2))).await;
///     assert_eq!(out, None);
/// });
/// # }
/// ```
pub fn move_on_after<F: Future>(duration: Duration, future: F) -> Scoped<F> {
    Scoped::lazy(Deadline::After(duration), false, future)
}

/// Runs `future` with the absolute deadline `deadline`; completes with `None` if it passes
/// first (AnyIO's `move_on_at`).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::cancel::move_on_at;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// VirtualRuntime::new().block_on(async {
///     let deadline = time::now() + Duration::from_secs(1);
///     assert_eq!(move_on_at(deadline, async { 3 }).await, Some(3));
/// });
/// # }
/// ```
pub fn move_on_at<F: Future>(deadline: Instant, future: F) -> Scoped<F> {
    Scoped::lazy(Deadline::At(deadline), false, future)
}

pin_project_lite::pin_project! {
    /// The future returned by [`fail_after`] and [`fail_at`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct FailAfter<F> {
        #[pin]
        scoped: Scoped<F>,
    }
}

impl<F> fmt::Debug for FailAfter<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailAfter").finish_non_exhaustive()
    }
}

impl<F: Future> Future for FailAfter<F> {
    type Output = Result<F::Output, Elapsed>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut scoped = self.project().scoped;
        match scoped.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(output)) => Poll::Ready(Ok(output)),
            Poll::Ready(None) => {
                // Nothing but the deadline can cancel this scope: no handle to it exists.
                let deadline = scoped.fixed_deadline().unwrap_or_else(time::now);
                Poll::Ready(Err(Elapsed { deadline }))
            }
        }
    }
}

/// Runs `future` in a shielded scope: its ancestors' cancellation does not reach it, so it
/// runs to completion even inside a cancelled scope (whose region is kept alive meanwhile).
///
/// A shield cannot protect against a hard stop: dropping the task or the future (for example
/// [`JoinHandle::abort`](crate::runtime::JoinHandle::abort)) still drops it.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::cancel::{move_on_after, shield};
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// VirtualRuntime::new().block_on(async {
///     let mut saved = false;
///     let mut after_the_shield = false;
///     let out = move_on_after(Duration::from_secs(1), async {
///         shield(async {
///             time::sleep(Duration::from_secs(5)).await; // outlives the outer deadline
///             saved = true;
///         })
///         .await;
///         // The outer cancellation arrives at the next wait after the shield.
///         time::sleep(Duration::from_secs(1)).await;
///         after_the_shield = true;
///     })
///     .await;
///     assert_eq!(out, None);
///     assert!(saved && !after_the_shield);
/// });
/// # }
/// ```
pub fn shield<F: Future>(future: F) -> Shield<F> {
    Shield {
        scoped: Scoped::lazy(Deadline::None, true, future),
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`shield`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct Shield<F> {
        #[pin]
        scoped: Scoped<F>,
    }
}

impl<F> fmt::Debug for Shield<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shield").finish_non_exhaustive()
    }
}

impl<F: Future> Future for Shield<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().scoped.poll(cx).map(|output| {
            // Nobody holds the shield's scope, so nothing can cancel it.
            output.unwrap_or_else(|| unreachable!("a shield's own scope is never cancelled"))
        })
    }
}

/// The earliest deadline that applies to the calling code: the minimum over the current scope
/// and its ancestors up to (and including) the nearest shielded one.
///
/// Returns `None` if no deadline applies. If one of those scopes is already cancelled, returns
/// an instant that has already passed (the current time), so "would this wait overrun the
/// deadline?" checks stop at once.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::time::Duration;
/// use sheepdog_core::cancel::{current_effective_deadline, fail_at, move_on_after};
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// VirtualRuntime::new().block_on(async {
///     assert_eq!(current_effective_deadline(), None);
///     let outer = time::now() + Duration::from_secs(5);
///     fail_at(outer, async {
///         move_on_after(Duration::from_secs(60), async {
///             assert_eq!(current_effective_deadline(), Some(outer));
///         })
///         .await;
///     })
///     .await
///     .unwrap();
/// });
/// # }
/// ```
pub fn current_effective_deadline() -> Option<Instant> {
    let mut node = node::current()?;
    let mut earliest: Option<Instant> = None;
    loop {
        if node.cancel_called() {
            return Some(time::now());
        }
        if let Some(deadline) = node.resolve_deadline(time::now) {
            earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
        }
        if node.is_shielded() {
            return earliest;
        }
        match node.parent() {
            Some(parent) => node = Arc::clone(parent),
            None => return earliest,
        }
    }
}

/// A cancellation point: yields to the executor once, and never completes inside an
/// effectively cancelled scope (the catching scope drops the waiting code instead).
///
/// # Examples
///
/// ```
/// futures::executor::block_on(sheepdog_core::cancel::checkpoint());
/// ```
pub fn checkpoint() -> Checkpoint {
    Checkpoint {
        yield_now: crate::runtime::yield_now(),
    }
}

/// The future returned by [`checkpoint`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Checkpoint {
    yield_now: crate::runtime::YieldNow,
}

impl Future for Checkpoint {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if node::current_cancelled() {
            // The catching scope was woken by the cancellation and will drop us.
            return Poll::Pending;
        }
        Pin::new(&mut self.yield_now).poll(cx)
    }
}

/// Whether the calling code runs inside an effectively cancelled scope.
///
/// # Examples
///
/// ```
/// assert!(!sheepdog_core::cancel::is_cancelled());
/// ```
#[inline]
pub fn is_cancelled() -> bool {
    node::current_cancelled()
}

pin_project_lite::pin_project! {
    /// A future bound to the cancel scope that was current when it was created (for adapters
    /// and task wrappers).
    ///
    /// It is polled inside a child of that scope, and completes with `None` — its future
    /// dropped — as soon as the scope is effectively cancelled (unless a shield inside it is
    /// still running). Created outside any scope, it is transparent.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::cancel::{CancelScope, InheritScope};
    ///
    /// // Outside any scope there is nothing to bind to.
    /// assert!(InheritScope::capture(async { 1 }).is_err());
    ///
    /// let scope = CancelScope::new();
    /// let bound = futures::executor::block_on(scope.run(async {
    ///     // Made inside the region: bound to `scope`, as a spawned task would be.
    ///     InheritScope::capture(std::future::pending::<()>()).ok().expect("inside a scope")
    /// }))
    /// .expect("the region completed");
    /// scope.cancel();
    /// assert_eq!(futures::executor::block_on(bound), None, "cancelled with its scope");
    /// ```
    #[must_use = "futures do nothing unless awaited"]
    pub struct InheritScope<F> {
        #[pin]
        future: Option<F>,
        node: Option<Arc<Node>>,
        slot: Option<Current>,
    }

    impl<F> PinnedDrop for InheritScope<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(node) = this.project().node.take() {
                node.exit();
            }
        }
    }
}

impl<F> fmt::Debug for InheritScope<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InheritScope")
            .field("bound", &self.node.is_some())
            .finish_non_exhaustive()
    }
}

impl<F> InheritScope<F> {
    /// Binds `future` to the current scope, if there is one.
    pub fn new(future: F) -> Self {
        Self::capture(future).unwrap_or_else(|future| InheritScope {
            future: Some(future),
            node: None,
            slot: None,
        })
    }

    /// Binds `future` to the current scope, or gives it back if there is none (so an adapter
    /// can spawn it without any wrapper).
    ///
    /// # Errors
    ///
    /// Returns `future` unchanged when no scope is current.
    pub fn capture(future: F) -> Result<Self, F> {
        let Some(parent) = node::current() else {
            return Err(future);
        };
        let node = Node::new(Deadline::None, false);
        node.enter(Some(parent));
        Ok(InheritScope {
            future: Some(future),
            slot: Some(Current::Node(Arc::clone(&node))),
            node: Some(node),
        })
    }
}

impl<F: Future> Future for InheritScope<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let mut this = self.project();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            panic!("InheritScope polled after completion");
        };
        let Some(node) = this.node.as_ref() else {
            return future.poll(cx).map(Some);
        };
        let cancelled = |node: &Node| node.effectively_cancelled() && node.shields_below() == 0;
        let output = if cancelled(node) {
            None
        } else {
            match node::enter(this.slot, || future.poll(cx)) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => {
                    node.register_waker(cx.waker());
                    // A cancellation made during that poll is handled now rather than missed.
                    if !cancelled(node) {
                        return Poll::Pending;
                    }
                    None
                }
            }
        };
        // Drop the future, then leave the scope tree.
        this.future.set(None);
        if let Some(node) = this.node.take() {
            node.exit();
        }
        Poll::Ready(output)
    }
}

/// Runs `body`, then `cleanup`, however `body` ends: with its output, or cancelled by an
/// enclosing scope (including by a deadline). The cleanup runs shielded, bounded by its own
/// `timeout`, and an enclosing cancelled scope waits for it before it catches.
///
/// This is the Rust form of `try: … finally: with CancelScope(shield=True): await cleanup()`
/// (and of the seed's `async with Branch(...)` that dumps logs on exit): Rust has no async
/// drop, so the async cleanup lives here.
///
/// Returns the body's output once the cleanup has finished. If the body is cancelled, the
/// enclosing scope drops this future right after the cleanup. Not covered: a panic in `body`
/// (it unwinds; only `Drop` runs), and dropping this future from outside the scope tree (for
/// example aborting its task), which drops the cleanup unrun.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
/// use sheepdog_core::cancel::{move_on_after, with_cleanup};
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// let logs_dumped = AtomicBool::new(false);
/// VirtualRuntime::new().block_on(async {
///     let out = move_on_after(Duration::from_secs(1), with_cleanup(
///         time::sleep(Duration::from_secs(10)), // the work: cut short by the deadline
///         Duration::from_secs(5),
///         || async {
///             time::sleep(Duration::from_millis(100)).await; // async cleanup still runs
///             logs_dumped.store(true, Ordering::SeqCst);
///         },
///     ))
///     .await;
///     assert_eq!(out, None);
/// });
/// assert!(logs_dumped.load(Ordering::SeqCst));
/// # }
/// ```
pub fn with_cleanup<B, C, CF>(body: B, timeout: Duration, cleanup: C) -> WithCleanup<B, C, CF>
where
    B: Future,
    C: FnOnce() -> CF,
    CF: Future<Output = ()>,
{
    WithCleanup {
        body: Some(body),
        timeout,
        cleanup: Some(cleanup),
        running: None,
        output: None,
        node: None,
        slot: None,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`with_cleanup`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct WithCleanup<B: Future, C, CF> {
        #[pin]
        body: Option<B>,
        timeout: Duration,
        cleanup: Option<C>,
        #[pin]
        running: Option<Scoped<CF>>,
        output: Option<B::Output>,
        // A node of its own under the current scope, counted as a shield below every ancestor
        // from entry to the end of the cleanup, so no ancestor drops the cleanup unrun.
        node: Option<Arc<Node>>,
        slot: Option<Current>,
    }

    impl<B: Future, C, CF> PinnedDrop for WithCleanup<B, C, CF> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(node) = this.project().node.take() {
                node.shield_ended();
                node.exit();
            }
        }
    }
}

impl<B: Future, C, CF> fmt::Debug for WithCleanup<B, C, CF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithCleanup")
            .field("cleaning_up", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl<B, C, CF> Future for WithCleanup<B, C, CF>
where
    B: Future,
    C: FnOnce() -> CF,
    CF: Future<Output = ()>,
{
    type Output = B::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<B::Output> {
        let mut this = self.project();
        if this.node.is_none() && this.cleanup.is_some() {
            let node = Node::new(Deadline::None, false);
            node.enter(node::current());
            node.shield_started();
            *this.slot = Some(Current::Node(Arc::clone(&node)));
            *this.node = Some(node);
        }
        if let Some(body) = this.body.as_mut().as_pin_mut() {
            let Some(node) = this.node.as_ref() else {
                unreachable!("entered above")
            };
            if node.effectively_cancelled() {
                this.body.set(None);
            } else {
                match node::enter(this.slot, || body.poll(cx)) {
                    Poll::Ready(output) => {
                        *this.output = Some(output);
                        this.body.set(None);
                    }
                    Poll::Pending => {
                        node.register_waker(cx.waker());
                        if !node.effectively_cancelled() {
                            return Poll::Pending;
                        }
                        // Cancelled during that poll: clean up now.
                        this.body.set(None);
                    }
                }
            }
        }
        if let Some(cleanup) = this.cleanup.take() {
            // The cleanup runs in a shielded scope of its own, under this node (the region
            // enters at its first poll, below, inside this node).
            let scope = CancelScope::new()
                .shielded(true)
                .with_timeout(*this.timeout);
            this.running.set(Some(scope.run(cleanup())));
        }
        if let Some(running) = this.running.as_mut().as_pin_mut() {
            if node::enter(this.slot, || running.poll(cx)).is_pending() {
                return Poll::Pending;
            }
            this.running.set(None);
            if let Some(node) = this.node.take() {
                node.shield_ended();
                node.exit();
            }
        }
        match this.output.take() {
            Some(output) => Poll::Ready(output),
            // The body was cancelled: the catching scope drops this future now that no shield
            // is left below it.
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region around a small future stays small: the caller moves it into place, and the
    /// timer of a region that waits lives in a box (see docs/performance.md, T9).
    #[test]
    fn a_region_around_a_small_future_is_small() {
        let size = std::mem::size_of::<FailAfter<std::future::Ready<usize>>>();
        assert!(size <= 64, "fail_after(ready) is {size} bytes");
        assert_eq!(
            std::mem::size_of::<Scoped<std::future::Ready<usize>>>(),
            size
        );
    }
}
