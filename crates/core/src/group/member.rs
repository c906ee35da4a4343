//! The machinery both kinds of group share: a member (a child or the body) running in the
//! group's scope, the group's shared state, and where a member's outcome is delivered.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;

use crate::cancel::node::{self, Below, Current, Deadline, Lazy, Node};
use crate::shim::AtomicUsize;

pub(crate) type Payload = Box<dyn Any + Send + 'static>;

/// How a member ended.
pub(crate) enum Outcome<T, E> {
    Done(Result<T, E>),
    Panicked(Payload),
    Cancelled,
}

/// A failure the group reports, in the order it happened.
pub(crate) enum Failure<E> {
    Error(E),
    Panic(Payload),
}

/// Set in [`Shared::state`] once the group has finished: nothing can join it any more.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// What a group and its members share, besides the group's cancel scope (see [`GroupRef`]).
///
/// A spawned group keeps it in its scope's node ([`Node::with_group`]), so that a child reaches
/// both through the one reference its frame holds anyway; an in-task group keeps it next to its
/// node.
pub(crate) struct Shared<E> {
    /// Members not settled yet (children only; the body is tracked by the group), plus
    /// [`CLOSED`].
    state: AtomicUsize,
    failures: Mutex<Vec<Failure<E>>>,
    /// The group's waker, woken when the last member settles.
    waker: AtomicWaker,
    /// The wakers of spawned members waiting without a node of their own.
    pub(crate) registry: Registry,
}

impl<E> Shared<E> {
    pub(crate) fn new() -> Self {
        Shared {
            state: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
            waker: AtomicWaker::new(),
            registry: Registry::default(),
        }
    }

    /// Counts a new member in, unless the group has finished.
    pub(crate) fn join(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        while state & CLOSED == 0 {
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
        false
    }

    /// Closes the group if no member is left; otherwise registers `waker` for the last one.
    pub(crate) fn try_close(&self, waker: &Waker) -> bool {
        if self.close() {
            return true;
        }
        self.waker.register(waker);
        self.close()
    }

    fn close(&self) -> bool {
        self.state
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Closes the group whatever its count (its future was dropped): nothing joins it after.
    pub(crate) fn close_now(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    pub(crate) fn settled(&self) {
        if self.state.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    pub(crate) fn take_failures(&self) -> Vec<Failure<E>> {
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A group as its members see it: its cancel scope and what they share.
pub(crate) struct GroupRef<'a, E> {
    /// The group's cancel scope.
    pub(crate) node: &'a Arc<Node>,
    pub(crate) shared: &'a Shared<E>,
}

impl<E> Clone for GroupRef<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for GroupRef<'_, E> {}

impl<'a, E> GroupRef<'a, E> {
    /// The group of a spawned group's scope node.
    pub(crate) fn of_spawned(node: &'a Arc<Node>) -> Self
    where
        E: 'static,
    {
        let Some(shared) = node.group::<Shared<E>>() else {
            unreachable!("a spawned group's node holds its state")
        };
        GroupRef { node, shared }
    }

    /// Records a failure and cancels the group (the body and every member).
    pub(crate) fn fail(self, failure: Failure<E>) {
        self.shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(failure);
        self.node.cancel();
    }
}

impl<E> std::ops::Deref for GroupRef<'_, E> {
    type Target = Shared<E>;

    fn deref(&self) -> &Shared<E> {
        self.shared
    }
}

/// The wakers of a spawned group's members that wait in a frame (with no node of their own,
/// which a group's cancellation would wake): the group wakes them all when it is cancelled.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers (or refreshes) the waker of the member holding `index`.
    pub(crate) fn register(&self, index: &mut Option<usize>, waker: &Waker) {
        let mut slots = self.lock();
        match *index {
            Some(i) => match &mut slots.wakers[i] {
                Some(current) if current.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            },
            None => {
                let i = match slots.free.pop() {
                    Some(i) => {
                        slots.wakers[i] = Some(waker.clone());
                        i
                    }
                    None => {
                        slots.wakers.push(Some(waker.clone()));
                        slots.wakers.len() - 1
                    }
                };
                *index = Some(i);
            }
        }
    }

    /// Removes the waker of the member holding `index`, if it registered one. Inlined: a
    /// member that never waited (most of them) only checks its `None`.
    #[inline]
    pub(crate) fn unregister(&self, index: &mut Option<usize>) {
        if let Some(i) = index.take() {
            self.remove(i);
        }
    }

    fn remove(&self, i: usize) {
        let mut slots = self.lock();
        slots.wakers[i] = None;
        slots.free.push(i);
    }

    /// Wakes every registered member, so each sees the group's cancellation.
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = self.lock().wakers.iter().flatten().cloned().collect();
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The region a member runs in, as the member holds it.
pub(crate) trait Region {
    /// Whether the group's cancellation reaches the member now: its scope is effectively
    /// cancelled and no shielded region inside it is still running. `group` is the group's
    /// node.
    fn cancelled(&self, group: Option<&Node>) -> bool;
    /// Runs `f` (a poll of the member) with the region current.
    fn enter<R>(&mut self, f: impl FnOnce() -> R) -> R;
    /// The region's node, if it has been made.
    fn node(&self) -> Option<&Arc<Node>>;
    /// Leaves the scope tree (the member ended). Idempotent.
    fn leave(&mut self);
}

/// The region of a spawned child or a group's body: a frame below the group's node, made into
/// a node only if something inside asks for it (a nested scope, a spawn). While the member
/// waits, whatever drives it must make sure the group's cancellation reaches it: an in-task
/// group's body is swept by the group, a spawned child registers its waker (see [`Child`]).
/// A plain child costs no allocation here.
/// Two words, where a general frame (`Current`) takes five: a spawned child's region is
/// moved with the child on every step of its spawn.
pub(crate) struct Framed(Below);

impl Framed {
    pub(crate) fn new(group: &Arc<Node>) -> Self {
        Framed(Below::Frame(Arc::clone(group)))
    }

    /// The group's node: the frame's parent, or the parent of the node made from the frame.
    /// Still there after the member left the scope tree.
    #[inline]
    pub(crate) fn group_node(&self) -> &Arc<Node> {
        let group = match &self.0 {
            Below::Frame(parent) => Some(parent),
            Below::Node(made) => made.parent(),
            Below::Entered => None,
        };
        let Some(group) = group else {
            unreachable!("a framed member runs below its group's node")
        };
        group
    }
}

// Inlined into each child's poll, a generic function the caller's crate instantiates.
impl Region for Framed {
    #[inline]
    fn cancelled(&self, _group: Option<&Node>) -> bool {
        match &self.0 {
            Below::Frame(parent) => parent.effectively_cancelled(),
            Below::Node(node) => node.effectively_cancelled() && node.shields_below() == 0,
            Below::Entered => false,
        }
    }

    fn enter<R>(&mut self, f: impl FnOnce() -> R) -> R {
        node::enter_below(&mut self.0, f)
    }

    #[inline]
    fn node(&self) -> Option<&Arc<Node>> {
        match &self.0 {
            Below::Node(node) => Some(node),
            Below::Frame(_) | Below::Entered => None,
        }
    }

    // Keeps the frame (or its node, unlinked), which holds the member's one reference to its
    // group: a spawned child still reports to its group after it left the tree.
    #[inline]
    fn leave(&mut self) {
        if let Below::Node(node) = &self.0 {
            node.exit();
        }
    }
}

/// The region of an in-task child: a frame right below the group's node, which the group
/// makes current once around all its children's polls (see [`InTask`](super::in_task)), so the
/// member holds no reference to it: no reference counting per child, and one word. `None`
/// until something inside makes the frame's node.
pub(crate) struct InGroup(Option<Arc<Node>>);

// Inlined into each child's poll, as for `Framed`.
impl Region for InGroup {
    #[inline]
    fn cancelled(&self, group: Option<&Node>) -> bool {
        match &self.0 {
            Some(node) => node.effectively_cancelled() && node.shields_below() == 0,
            None => group.is_some_and(Node::effectively_cancelled),
        }
    }

    fn enter<R>(&mut self, f: impl FnOnce() -> R) -> R {
        match self.0.take() {
            // The group's node is current (the group entered it): the frame goes on top.
            None => node::enter_lazy(
                Lazy {
                    deadline: Deadline::None,
                    shield: false,
                },
                &mut self.0,
                f,
            ),
            Some(made) => {
                let mut slot = Some(Current::Node(made));
                let out = node::enter(&mut slot, f);
                if let Some(Current::Node(made)) = slot {
                    self.0 = Some(made);
                }
                out
            }
        }
    }

    #[inline]
    fn node(&self) -> Option<&Arc<Node>> {
        self.0.as_ref()
    }

    #[inline]
    fn leave(&mut self) {
        if let Some(node) = self.0.take() {
            node.exit();
        }
    }
}

pin_project_lite::pin_project! {
    /// A future running in the group's scope: polled in its own region, with panics caught
    /// and cancellation checked before and after every poll.
    pub(crate) struct Member<F, G: Region> {
        #[pin]
        future: Option<F>,
        region: G,
    }

    impl<F, G: Region> PinnedDrop for Member<F, G> {
        fn drop(this: Pin<&mut Self>) {
            this.project().region.leave();
        }
    }
}

impl<F> Member<F, Framed> {
    /// A member running in a frame below the group's node (see [`Framed`]).
    pub(crate) fn new(group: &Arc<Node>, future: F) -> Self {
        Member {
            future: Some(future),
            region: Framed::new(group),
        }
    }
}

impl<F> Member<F, Framed> {
    /// The group's node (see [`Framed::group_node`]).
    pub(crate) fn group_node(self: Pin<&Self>) -> &Arc<Node> {
        self.project_ref().region.group_node()
    }
}

impl<F> Member<F, InGroup> {
    /// A member polled only inside its group's node (see [`InGroup`]).
    pub(crate) fn in_group(future: F) -> Self {
        Member {
            future: Some(future),
            region: InGroup(None),
        }
    }
}

impl<F, G: Region> Member<F, G> {
    /// Whether the group's cancellation reaches this member now (see [`Region::cancelled`]).
    ///
    /// Takes the pinned member and reads its fields through the projection: a `&Self` would
    /// cover the future too, whose state (an `async fn`'s) may hold references into itself.
    fn cancelled(self: Pin<&mut Self>, group: Option<&Node>) -> bool {
        self.project().region.cancelled(group)
    }

    /// Whether the member's future is still there (it has not ended).
    fn running(self: Pin<&mut Self>) -> bool {
        self.project().future.is_some()
    }

    /// Drops the future and leaves the scope tree.
    fn finish(self: Pin<&mut Self>) {
        let mut this = self.project();
        this.future.set(None);
        this.region.leave();
    }

    /// Cancels the member now if the group's cancellation reaches it. Returns whether it did.
    pub(crate) fn sweep(mut self: Pin<&mut Self>, group: &Node) -> bool {
        if !self.as_mut().running() || !self.as_mut().cancelled(Some(group)) {
            return false;
        }
        self.finish();
        true
    }

    /// Cancels the member now, whatever its scope says (its `start` caller gave up).
    pub(crate) fn abandon(mut self: Pin<&mut Self>) -> bool {
        if !self.as_mut().running() {
            return false;
        }
        self.finish();
        true
    }
}

impl<F, G, T, E> Member<F, G>
where
    F: Future<Output = Result<T, E>>,
    G: Region,
{
    /// Polls the member; `Ready` exactly once, with how it ended. When it waits, its node (if
    /// something inside made one) or else `wait_in_frame` gets the waker the group's
    /// cancellation must wake.
    ///
    /// `group` is the group's node, for a region that does not hold it ([`InGroup`]).
    pub(crate) fn poll_outcome(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        group: Option<&Node>,
        wait_in_frame: impl FnOnce(&Waker, &G),
    ) -> Poll<Outcome<T, E>> {
        assert!(
            self.as_mut().running(),
            "a group member was polled after it ended"
        );
        if self.as_mut().cancelled(group) {
            return Poll::Ready(self.finish_with(Outcome::Cancelled));
        }
        let this = self.as_mut().project();
        let mut future = this.future;
        // A future that finishes is dropped right there, in its region and under the same
        // `catch_unwind`: a panic in its destructor becomes the outcome, as for `finish_with`.
        let polled = this.region.enter(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let Some(running) = future.as_mut().as_pin_mut() else {
                    unreachable!("checked above")
                };
                let polled = running.poll(cx);
                if polled.is_ready() {
                    future.set(None);
                }
                polled
            }))
        });
        let outcome = match polled {
            Ok(Poll::Ready(output)) => {
                this.region.leave();
                return Poll::Ready(Outcome::Done(output));
            }
            Err(payload) => Outcome::Panicked(payload),
            Ok(Poll::Pending) => {
                match this.region.node() {
                    Some(node) => node.register_waker(cx.waker()),
                    None => wait_in_frame(cx.waker(), this.region),
                }
                // A cancellation made during that poll is handled now rather than missed.
                if !this.region.cancelled(group) {
                    return Poll::Pending;
                }
                Outcome::Cancelled
            }
        };
        Poll::Ready(self.finish_with(outcome))
    }

    /// Drops the future and leaves the scope tree; a panic in the future's destructor
    /// becomes the outcome, so it reaches the group instead of escaping the poll.
    fn finish_with(self: Pin<&mut Self>, outcome: Outcome<T, E>) -> Outcome<T, E> {
        match catch_unwind(AssertUnwindSafe(|| self.finish())) {
            Ok(()) => outcome,
            Err(payload) => Outcome::Panicked(payload),
        }
    }
}

/// Where a child's outcome goes: to its handle (and its failure to the group), or to the
/// caller of `start`.
pub(crate) trait Sink<E> {
    /// The child's output on success.
    type Output;
    /// What the child's future returns once the outcome is delivered.
    type Delivered;

    fn deliver(self, outcome: Outcome<Self::Output, E>, group: GroupRef<'_, E>) -> Self::Delivered;

    /// Delivers a cancellation (the child was dropped before it ended).
    fn cancelled(self) -> Self::Delivered;

    /// Whether whoever waits for this child gave up on it (only `start` callers can); if not,
    /// registers the child's waker to hear about it.
    fn abandoned(&self, _cx: &mut Context<'_>) -> bool {
        false
    }
}

/// Polls a child's member until it ends: the part of a child's poll both kinds of group
/// share. Gives the sink back with the outcome to deliver; `sink` is `None` from then on.
fn poll_child<F, G: Region, S, E>(
    member: Pin<&mut Member<F, G>>,
    sink: &mut Option<S>,
    cx: &mut Context<'_>,
    group: Option<&Node>,
    wait_in_frame: impl FnOnce(&Waker, &G),
) -> Poll<(S, Outcome<S::Output, E>)>
where
    F: Future<Output = Result<S::Output, E>>,
    S: Sink<E>,
{
    let Some(waiting) = sink.as_ref() else {
        // Swept (or finished) earlier: nothing waits for it any more.
        return Poll::Pending;
    };
    let mut member = member;
    let outcome = if waiting.abandoned(cx) && member.as_mut().abandon() {
        Outcome::Cancelled
    } else {
        std::task::ready!(member.poll_outcome(cx, group, wait_in_frame))
    };
    let Some(sink) = sink.take() else {
        unreachable!("checked above")
    };
    Poll::Ready((sink, outcome))
}

pin_project_lite::pin_project! {
    /// A child spawned on a runtime: a member plus where its outcome goes. Settles (counts out
    /// of the group) exactly once: when it ends, or when its runtime drops it unfinished. Its
    /// one reference to the group is its frame's parent, the group's node, which holds the
    /// group's state.
    pub(crate) struct Child<F, S: Sink<E>, E: 'static> {
        #[pin]
        member: Member<F, Framed>,
        sink: Option<S>,
        // Its place in the group's registry while it waits in a frame.
        registered: Option<usize>,
        group: PhantomData<fn(E)>,
    }

    impl<F, S: Sink<E>, E: 'static> PinnedDrop for Child<F, S, E> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(sink) = this.sink.take() {
                let group = GroupRef::<E>::of_spawned(this.member.as_ref().group_node());
                group.registry.unregister(this.registered);
                sink.cancelled();
                group.settled();
            }
        }
    }
}

impl<F, S: Sink<E>, E: 'static> Child<F, S, E> {
    /// A child already counted in with [`Shared::join`], of the spawned group whose node is
    /// `group`.
    pub(crate) fn new(future: F, sink: S, group: &Arc<Node>) -> Self {
        Child {
            member: Member::new(group, future),
            sink: Some(sink),
            registered: None,
            group: PhantomData,
        }
    }
}

impl<F, S, E: 'static> Future for Child<F, S, E>
where
    F: Future<Output = Result<S::Output, E>>,
    S: Sink<E>,
{
    type Output = S::Delivered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<S::Delivered> {
        let mut this = self.project();
        let registered = &mut *this.registered;
        let wait_in_frame = |waker: &Waker, region: &Framed| {
            let group = GroupRef::<E>::of_spawned(region.group_node());
            group.registry.register(registered, waker);
        };
        let (sink, outcome) = std::task::ready!(poll_child(
            this.member.as_mut(),
            this.sink,
            cx,
            None,
            wait_in_frame
        ));
        let group = GroupRef::<E>::of_spawned(this.member.as_ref().group_node());
        let delivered = sink.deliver(outcome, group);
        group.registry.unregister(this.registered);
        group.settled();
        Poll::Ready(delivered)
    }
}

pin_project_lite::pin_project! {
    /// A child of an in-task group, polled (and swept) by the group's future, which lends it
    /// the group's state at every poll.
    pub(crate) struct LocalChild<F, S: Sink<E>, E> {
        #[pin]
        member: Member<F, InGroup>,
        sink: Option<S>,
        group: PhantomData<fn(E)>,
    }

    impl<F, S: Sink<E>, E> PinnedDrop for LocalChild<F, S, E> {
        fn drop(this: Pin<&mut Self>) {
            // Only dropped unsettled when the whole group is torn down.
            if let Some(sink) = this.project().sink.take() {
                sink.cancelled();
            }
        }
    }
}

impl<F, S: Sink<E>, E> LocalChild<F, S, E> {
    /// A child already counted in with [`Shared::join`].
    pub(crate) fn new(future: F, sink: S) -> Self {
        LocalChild {
            member: Member::in_group(future),
            sink: Some(sink),
            group: PhantomData,
        }
    }
}

impl<F, S, E> LocalChild<F, S, E>
where
    F: Future<Output = Result<S::Output, E>>,
    S: Sink<E>,
{
    /// Polls the child; once it ends, its outcome is delivered and what the sink made of it
    /// returned. The group sweeps its in-task children when it is cancelled: no registration.
    pub(crate) fn poll_deliver(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        group: GroupRef<'_, E>,
    ) -> Poll<S::Delivered> {
        let this = self.project();
        let polled = poll_child(this.member, this.sink, cx, Some(group.node), |_, _| {});
        let (sink, outcome) = std::task::ready!(polled);
        Poll::Ready(sink.deliver(outcome, group))
    }

    /// Cancels the child now if the group's cancellation reaches it, delivering the
    /// cancellation; `None` if it did not.
    pub(crate) fn sweep_deliver(
        self: Pin<&mut Self>,
        group: GroupRef<'_, E>,
    ) -> Option<S::Delivered> {
        let this = self.project();
        if !this.member.sweep(group.node) {
            return None;
        }
        let sink = this.sink.take()?;
        Some(sink.deliver(Outcome::Cancelled, group))
    }
}

impl<F, S: Sink<E>, E> LocalChild<F, S, E> {
    /// Delivers a cancellation if the child has not delivered its outcome yet (the group is
    /// being torn down, so it is not counted out).
    pub(crate) fn cancel_now(self: Pin<&mut Self>) -> Option<S::Delivered> {
        self.project().sink.take().map(Sink::cancelled)
    }
}
