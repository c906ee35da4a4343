//! Task groups: children that run concurrently and all come home before the group returns.
//!
//! | group | children | runs on |
//! |---|---|---|
//! | [`task_group`] → [`TaskGroup`] | `Send`, may borrow from the caller (`'env`) | any executor: the group's own future polls them (concurrent, not parallel) |
//! | [`local_task_group`] → [`LocalTaskGroup`] | need not be `Send`, may borrow | any executor, the group future is not `Send` |
//! | [`spawn_group`] / [`spawn_group_on`] → [`SpawnGroup`] | `Send + 'static` | spawned on the [`Runtime`]: parallel |
//!
//! Every kind follows AnyIO's task-group semantics:
//!
//! - The body runs inside the group's cancel scope ([`TaskGroup::cancel_scope`]); children
//!   belong to that scope wherever `spawn` was called from.
//! - [`spawn`](TaskGroup::spawn) (AnyIO `start_soon`) returns a [`TaskHandle`] that yields the
//!   child's result; dropping the handle leaves the child running in the group.
//! - [`start`](TaskGroup::start) waits until the child calls [`Started::started`] and returns
//!   its value. A failure before `started` goes to the caller of `start`; after it, to the
//!   group. A child that ends without calling `started` is [`StartError::NotStarted`].
//! - The group returns only when the body and every child have finished or been cancelled.
//! - The first failure (an error or a panic, from the body or a child) cancels the body and
//!   every child. The group then returns [`GroupError`] with every error in the order they
//!   happened ([`GroupError::Failed`] when there is one), or re-raises the first panic with its
//!   payload. Cancellations are never failures.
//! - Cancelling the group's scope ([`TaskGroup::cancel`]) cancels the body and every child; the
//!   group still waits for them, then returns the body's output if the body had already
//!   returned, or [`GroupError::Cancelled`].
//!
//! # Dropping a group
//!
//! Rust cannot await in `drop`, so dropping a group future early (because an enclosing scope
//! was cancelled, or because the caller gave up on it) is a cancellation that does not wait:
//!
//! - an in-task group drops every child on the spot, so when `drop` returns every child is
//!   gone;
//! - a spawned group cancels its scope, so every child is dropped by its runtime at its next
//!   poll, soon after but not before `drop` returns. A child that is inside a shielded region
//!   finishes that region first.
//!
//! To wait for the children, cancel the group through its scope and await the group: that is
//! the awaited close. A cancelled enclosing scope waits the same way for a spawned group's
//! children before it completes.
//!
//! Nothing is ever detached: every child is counted in and out of its group.
//!
//! [`Runtime`]: crate::Runtime

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::cancel::node::{self, Node};
use crate::cancel::CancelScope;
use crate::runtime::{self, JoinHandle, Runtime, RuntimeHandle};

mod cell;
mod error;
mod handle;
mod in_task;
mod member;
#[cfg(all(test, shuttle))]
mod model;

use cell::{Entry, Owned, Release};
pub use error::{GroupClosed, GroupError, StartError, TaskError};
use handle::StartSlot;
pub use handle::{Started, TaskHandle};
use in_task::InTask;
use member::{Child, Failure, Framed, GroupRef, LocalChild, Member, Outcome, Shared};

/// Runs `body` with an in-task [`TaskGroup`] and returns its output once every child is done.
///
/// The children are polled by the returned future itself: they run concurrently with the
/// body on whatever executor polls the group, need not be `'static` and may borrow from the
/// caller. Use [`spawn_group`] for parallel children.
///
/// # Errors
///
/// [`GroupError`] with every error the body and the children returned, in order, or
/// [`GroupError::Cancelled`] if the group's own scope was cancelled before the body returned.
///
/// # Panics
///
/// Re-raises the first panic of the body or a child, with its payload, once every other child
/// has been cancelled and dropped.
///
/// # Cancel safety
///
/// Dropping the future cancels the body and drops every child before `drop` returns.
///
/// # Examples
///
/// ```
/// use sheepdog_core::group::task_group;
///
/// let words = vec!["sheep", "dog"];
/// let words = &words;
/// let total = futures::executor::block_on(task_group(|tg| async move {
///     // The children borrow `words`: no `'static` needed.
///     let a = tg.spawn(async { Ok::<_, String>(words[0].len()) });
///     let b = tg.spawn(async { Ok(words[1].len()) });
///     Ok(a.await.unwrap() + b.await.unwrap())
/// }));
/// assert_eq!(total, Ok(8));
/// ```
pub async fn task_group<'env, E, R, B, Fut>(body: B) -> Result<R, GroupError<E>>
where
    B: FnOnce(TaskGroup<'env, E>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let group = TaskGroup {
        core: Arc::new(InTask::new()),
    };
    let body = body(group.clone());
    Driver::new(group.core.group(), &*group.core, body).await
}

/// Like [`task_group`], for children that are not `Send` (the group future is not `Send`
/// either).
///
/// # Errors
///
/// As for [`task_group`].
///
/// # Panics
///
/// As for [`task_group`].
///
/// # Cancel safety
///
/// As for [`task_group`].
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// use sheepdog_core::group::local_task_group;
///
/// let shared = Rc::new(5); // not Send
/// let out = futures::executor::block_on(local_task_group(|tg| async move {
///     let shared = Rc::clone(&shared);
///     let child = tg.spawn(async move { Ok::<_, ()>(*shared * 2) });
///     Ok(child.await.unwrap())
/// }));
/// assert_eq!(out, Ok(10));
/// ```
pub async fn local_task_group<'env, E, R, B, Fut>(body: B) -> Result<R, GroupError<E>>
where
    B: FnOnce(LocalTaskGroup<'env, E>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let group = LocalTaskGroup {
        core: Arc::new(InTask::new()),
    };
    let body = body(group.clone());
    Driver::new(group.core.group(), &*group.core, body).await
}

/// Runs `body` with a [`SpawnGroup`] whose children are spawned on the ambient runtime
/// ([`runtime::current`]), and returns its output once every child is done.
///
/// # Errors
///
/// As for [`task_group`].
///
/// # Panics
///
/// If no runtime is ambient at the first poll. Re-raises the first panic of the body or a
/// child, as [`task_group`] does.
///
/// # Cancel safety
///
/// Dropping the future cancels the group's scope: every child is dropped by its runtime at
/// its next poll (see [Dropping a group](self#dropping-a-group)).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::group::spawn_group;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let sum = VirtualRuntime::new().block_on(spawn_group(|tg| async move {
///     let handles: Vec<_> = (1..=4u64)
///         .map(|i| tg.spawn(async move { Ok::<_, String>(i * i) }))
///         .collect();
///     let mut sum = 0;
///     for handle in handles {
///         sum += handle.await.unwrap();
///     }
///     Ok(sum)
/// }));
/// assert_eq!(sum, Ok(30));
/// # }
/// ```
pub async fn spawn_group<E, R, B, Fut>(body: B) -> Result<R, GroupError<E>>
where
    E: Send + 'static,
    B: FnOnce(SpawnGroup<E>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let handle = runtime::current()
        .expect("spawn_group needs an ambient runtime; use spawn_group_on to name one")
        .portable();
    spawn_group_on(handle, body).await
}

/// Like [`spawn_group`], spawning the children on `runtime`.
///
/// With a concrete runtime type (`TokioRuntime`, `SmolRuntime`, ...) the children take that
/// runtime's own spawn path; with a [`RuntimeHandle`], the type-erased one.
///
/// # Errors
///
/// As for [`task_group`].
///
/// # Panics
///
/// Re-raises the first panic of the body or a child, as [`task_group`] does.
///
/// # Cancel safety
///
/// As for [`spawn_group`].
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::group::spawn_group_on;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let rt = VirtualRuntime::new();
/// let out = rt.block_on(spawn_group_on(rt.handle(), |tg| async move {
///     let child = tg.spawn(async { Ok::<_, String>("done") });
///     Ok(child.await.unwrap())
/// }));
/// assert_eq!(out, Ok("done"));
/// # }
/// ```
pub async fn spawn_group_on<S, E, R, B, Fut>(runtime: S, body: B) -> Result<R, GroupError<E>>
where
    S: GroupRuntime,
    E: Send + 'static,
    B: FnOnce(SpawnGroup<E, S>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let group = SpawnGroup {
        node: Node::with_group(Box::new(Shared::<E>::new())),
        runtime,
        _errors: PhantomData,
    };
    let body = body(group.clone());
    Driver::new(group.group(), &Spawned(group.group().shared), body).await
}

/// A runtime a [`SpawnGroup`] can spawn its children on: any cloneable [`Runtime`] (its own
/// spawn path), or a [`RuntimeHandle`].
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::group::{spawn_group_on, GroupRuntime};
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// fn total_on<S: GroupRuntime>(rt: &VirtualRuntime, on: S) -> Result<u32, sheepdog_core::group::GroupError<()>> {
///     rt.block_on(spawn_group_on(on, |tg| async move {
///         let child = tg.spawn(async { Ok(2) });
///         Ok(child.await.unwrap() + 1)
///     }))
/// }
/// let rt = VirtualRuntime::new();
/// assert_eq!(total_on(&rt, rt.handle()), Ok(3)); // a `RuntimeHandle`
/// # }
/// ```
pub trait GroupRuntime: Clone + Send + Sync + 'static {
    /// Spawns a child.
    #[doc(hidden)]
    fn spawn_member<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;
}

impl<R: Runtime + Clone> GroupRuntime for R {
    fn spawn_member<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(future)
    }
}

impl GroupRuntime for RuntimeHandle {
    fn spawn_member<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        runtime::spawn_on(&**self, future)
    }
}

/// The part of a group's driving that depends on where the children run.
trait Children {
    /// Polls the children the group's future drives.
    fn poll_children(&self, cx: &mut Context<'_>);
    /// Cancels now every child that the group's cancellation reaches.
    fn sweep(&self);
    /// Closes the group if every child is done (then nothing can join it); otherwise makes
    /// sure the group's future is woken when the last one is.
    fn try_close(&self, waker: &Waker) -> bool;
    /// Closes the group and drops every child still held (the group's future was dropped).
    fn clear(&self);
    /// Runs `f`, one poll of the group's future.
    fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

impl<E, D: ?Sized + Entry<E>> Children for InTask<'_, E, D> {
    fn poll_children(&self, cx: &mut Context<'_>) {
        InTask::poll_children(self, cx);
    }

    fn sweep(&self) {
        InTask::sweep(self);
    }

    // The group's future polls its children: it is woken when one of them is.
    fn try_close(&self, _: &Waker) -> bool {
        InTask::try_close(self)
    }

    fn clear(&self) {
        InTask::clear(self);
    }

    fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        InTask::enter(self, f)
    }
}

/// Spawned children drive themselves; the group's cancellation wakes those waiting (through
/// their nodes, or the group's registry of wakers).
struct Spawned<'a, E>(&'a Shared<E>);

impl<E> Children for Spawned<'_, E> {
    fn poll_children(&self, _: &mut Context<'_>) {}

    fn sweep(&self) {
        self.0.registry.wake_all();
    }

    fn try_close(&self, waker: &Waker) -> bool {
        self.0.try_close(waker)
    }

    // Spawned children are dropped by their runtime once they see the cancellation.
    fn clear(&self) {
        self.0.close_now();
    }
}

/// The handle of an in-task group, lent to the body of [`task_group`].
///
/// # Examples
///
/// ```
/// use sheepdog_core::group::{task_group, GroupError};
///
/// let out = futures::executor::block_on(task_group(|tg| async move {
///     tg.spawn(std::future::pending::<Result<(), ()>>()); // would run forever
///     tg.cancel(); // stop it: the group cancels it and waits for it
///     Ok("body done")
/// }));
/// assert_eq!(out, Ok("body done"));
/// # let _: Option<GroupError<()>> = None;
/// ```
pub struct TaskGroup<'env, E> {
    core: Arc<InTask<'env, E, dyn Entry<E> + Send + 'env>>,
}

/// The handle of an in-task group whose children need not be `Send`, lent to the body of
/// [`local_task_group`].
///
/// # Examples
///
/// ```
/// use std::cell::Cell;
/// use sheepdog_core::group::local_task_group;
///
/// let count = Cell::new(0); // not Sync: the children borrow it
/// let count = &count;
/// let out = futures::executor::block_on(local_task_group(|tg| async move {
///     for _ in 0..3 {
///         tg.spawn(async { count.set(count.get() + 1); Ok::<_, ()>(()) });
///     }
///     Ok(())
/// }));
/// assert_eq!((out, count.get()), (Ok(()), 3));
/// ```
pub struct LocalTaskGroup<'env, E> {
    core: Arc<InTask<'env, E, dyn Entry<E> + 'env>>,
}

/// The spawning methods every kind of group has; `$add` puts a counted-in child where the
/// kind runs it.
macro_rules! spawn_methods {
    ($env:lifetime, $($send:tt)*) => {
        /// Adds a child (AnyIO `start_soon`); awaiting the returned handle gives its result.
        /// Dropping the handle leaves the child running in the group. A child added to a
        /// cancelled group is cancelled before it runs.
        ///
        /// # Panics
        ///
        /// If the group has finished (a clone of its handle outlived it); see `try_spawn`.
        #[track_caller]
        pub fn spawn<F, T>(&self, future: F) -> TaskHandle<T>
        where
            F: Future<Output = Result<T, E>> $($send)* + $env,
            T: $env $($send)*,
        {
            match self.try_spawn(future) {
                Ok(handle) => handle,
                Err(closed) => panic!("{closed}"),
            }
        }

        /// Like `spawn`, failing instead of panicking when the group has finished.
        ///
        /// # Errors
        ///
        /// [`GroupClosed`] if the group has finished.
        pub fn try_spawn<F, T>(&self, future: F) -> Result<TaskHandle<T>, GroupClosed>
        where
            F: Future<Output = Result<T, E>> $($send)* + $env,
            T: $env $($send)*,
        {
            self.spawn_direct(future)
        }

        /// Adds a child made by `task` and waits until it calls
        /// [`started`](Started::started); returns the value it passed. Until then the child's
        /// failures go to this caller; afterwards, to the group.
        ///
        /// # Errors
        ///
        /// [`StartError`] if the child failed, ended or was cancelled before calling
        /// `started`, or if the group has finished.
        ///
        /// # Panics
        ///
        /// Re-raises a panic of the child from before it called `started`.
        ///
        /// # Cancel safety
        ///
        /// Dropping the returned future before the child started cancels the child (not the
        /// group).
        pub fn start<V, F, Fut>(
            &self,
            task: F,
        ) -> impl Future<Output = Result<V, StartError<E>>> + $env
        where
            F: FnOnce(Started<V, E>) -> Fut,
            Fut: Future<Output = Result<(), E>> $($send)* + $env,
            V: $env $($send)*,
        {
            let (start, started, slot) = StartSlot::new();
            let added = self.add(task(started), slot);
            async move {
                added.map_err(|GroupClosed| StartError::Closed)?;
                start.await
            }
        }

        /// Cancels the group: the body and every child. The group still waits for them, then
        /// returns the body's output if the body had already returned, or
        /// [`GroupError::Cancelled`]. Idempotent.
        pub fn cancel(&self) {
            self.shared().node.cancel();
        }

        /// The group's cancel scope: cancel it from anywhere (then await the group for an
        /// awaited close).
        pub fn cancel_scope(&self) -> CancelScope {
            CancelScope::from_node(Arc::clone(&self.shared().node))
        }
    };
}

macro_rules! in_task_group {
    ($group:ident, $($send:tt)*) => {
        impl<'env, E: 'env $($send)*> $group<'env, E> {
            fn shared(&self) -> GroupRef<'_, E> {
                self.core.group()
            }

            fn add<F, K>(&self, future: F, sink: K) -> Result<(), GroupClosed>
            where
                F: Future<Output = Result<K::Output, E>> $($send)* + 'env,
                K: member::Sink<E, Delivered = ()> $($send)* + 'env,
            {
                let child = || Owned::without_handle(LocalChild::new(future, sink));
                if self.core.try_push(child) {
                    Ok(())
                } else {
                    Err(GroupClosed)
                }
            }

            fn spawn_direct<F, T>(&self, future: F) -> Result<TaskHandle<T>, GroupClosed>
            where
                F: Future<Output = Result<T, E>> $($send)* + 'env,
                T: 'env $($send)*,
            {
                let mut handle = None;
                let child = || {
                    let (child, cell) =
                        Owned::with_handle(LocalChild::new(future, handle::Direct::new()));
                    handle = Some(TaskHandle::from_cell(cell));
                    child
                };
                if !self.core.try_push(child) {
                    return Err(GroupClosed);
                }
                handle.ok_or(GroupClosed)
            }

            spawn_methods!('env, $($send)*);
        }

        impl<E> Clone for $group<'_, E> {
            fn clone(&self) -> Self {
                $group {
                    core: Arc::clone(&self.core),
                }
            }
        }

        impl<E> fmt::Debug for $group<'_, E> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($group))
                    .field("cancel_called", &self.core.node.cancel_called())
                    .field("closed", &self.core.is_closed())
                    .finish_non_exhaustive()
            }
        }
    };
}

in_task_group!(TaskGroup, + Send);
in_task_group!(LocalTaskGroup,);

/// The handle of a group whose children are spawned on a runtime (parallel), lent to the body
/// of [`spawn_group`] / [`spawn_group_on`].
///
/// It is cheap to clone and `'static`, so children can spawn siblings; spawning into a group
/// that has finished is [`GroupClosed`].
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::group::spawn_group;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
///
/// let rt = VirtualRuntime::new();
/// let out = rt.block_on(spawn_group(|tg| async move {
///     // A clone can go anywhere, even outlive the group.
///     Ok::<_, String>(tg.clone())
/// }));
/// let group = out.unwrap();
/// assert!(group.try_spawn(async { Ok(()) }).is_err(), "the group has finished");
/// # }
/// ```
pub struct SpawnGroup<E, S = RuntimeHandle> {
    /// The group's scope, which holds its state (`Shared<E>`, see [`Node::with_group`]).
    node: Arc<Node>,
    runtime: S,
    _errors: PhantomData<fn(E)>,
}

impl<E, S: Clone> Clone for SpawnGroup<E, S> {
    fn clone(&self) -> Self {
        SpawnGroup {
            node: Arc::clone(&self.node),
            runtime: self.runtime.clone(),
            _errors: PhantomData,
        }
    }
}

impl<E: 'static, S> fmt::Debug for SpawnGroup<E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnGroup")
            .field("cancel_called", &self.node.cancel_called())
            .field("closed", &self.group().is_closed())
            .finish_non_exhaustive()
    }
}

impl<E: 'static, S> SpawnGroup<E, S> {
    /// The group as its members see it (its state is in its node).
    fn group(&self) -> GroupRef<'_, E> {
        GroupRef::of_spawned(&self.node)
    }
}

impl<E: Send + 'static, S: GroupRuntime> SpawnGroup<E, S> {
    fn shared(&self) -> GroupRef<'_, E> {
        self.group()
    }

    /// Spawns a counted-in child on the group's runtime, outside the caller's scope: the
    /// child belongs to the group's scope only.
    fn spawn_child<F, K>(&self, future: F, sink: K) -> Result<JoinHandle<K::Delivered>, GroupClosed>
    where
        F: Future<Output = Result<K::Output, E>> + Send + 'static,
        K: member::Sink<E> + Send + 'static,
        K::Delivered: Send + 'static,
    {
        if !self.group().join() {
            return Err(GroupClosed);
        }
        let child = Child::new(future, sink, &self.node);
        Ok(node::outside(|| self.runtime.spawn_member(child)))
    }

    fn add<F, K>(&self, future: F, sink: K) -> Result<(), GroupClosed>
    where
        F: Future<Output = Result<K::Output, E>> + Send + 'static,
        K: member::Sink<E, Delivered = ()> + Send + 'static,
    {
        self.spawn_child(future, sink).map(JoinHandle::detach)
    }

    /// Adds a spawned child whose handle is its task's own join handle.
    fn spawn_direct<F, T>(&self, future: F) -> Result<TaskHandle<T>, GroupClosed>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
    {
        let join = self.spawn_child(future, handle::Direct::new())?;
        Ok(TaskHandle::from_join(join))
    }

    spawn_methods!('static, + Send);
}

pin_project_lite::pin_project! {
    /// Drives a group: polls the body (and in-task children), reacts to cancellation, and
    /// finishes once the body and every child are done.
    struct Driver<'a, B, R, E, C>
    where
        C: ?Sized,
        C: Children,
    {
        #[pin]
        body: Member<B, Framed>,
        // `Some(Some(output))` once the body returned its output, `Some(None)` once it
        // failed or was cancelled.
        body_out: Option<Option<R>>,
        group: GroupRef<'a, E>,
        children: &'a C,
        entered: bool,
        exited: bool,
        // The group's cancellation has been seen and swept.
        swept: bool,
        // Whether this group holds its ancestors open while it has spawned children.
        holds: bool,
    }

    impl<'a, B, R, E, C> PinnedDrop for Driver<'a, B, R, E, C>
    where
        C: ?Sized,
        C: Children,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.entered && !*this.exited {
                // Dropped early: cancel whatever still runs (spawned children stop at their
                // next poll; in-task children are dropped with the group right after).
                let node = this.group.node;
                node.cancel();
                this.children.clear();
                this.group.registry.wake_all();
                leave(node, *this.holds);
            }
        }
    }
}

fn leave(node: &Node, holds: bool) {
    if holds {
        node.shield_ended();
    }
    node.exit();
}

impl<'a, B, R, E, C: ?Sized + Children> Driver<'a, B, R, E, C> {
    fn new(group: GroupRef<'a, E>, children: &'a C, body: B) -> Self {
        Driver {
            body: Member::new(group.node, body),
            body_out: None,
            group,
            children,
            entered: false,
            exited: false,
            swept: false,
            holds: false,
        }
    }
}

/// Whether a group's children can outlive a poll of its future (so a cancelled ancestor must
/// wait for them).
trait Holds {
    const HOLDS: bool;
}

impl<E, D: ?Sized + Release> Holds for InTask<'_, E, D> {
    const HOLDS: bool = false;
}

impl<E> Holds for Spawned<'_, E> {
    const HOLDS: bool = true;
}

impl<B, R, E, C> Future for Driver<'_, B, R, E, C>
where
    B: Future<Output = Result<R, E>>,
    C: Children + Holds + ?Sized,
{
    type Output = Result<R, GroupError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let node = this.group.node;
        if *this.exited {
            // Finished while an ancestor's cancellation was pending: that ancestor drops us.
            return Poll::Pending;
        }
        if !*this.entered {
            *this.entered = true;
            node.enter(node::current());
            if C::HOLDS {
                // Until the spawned children are home, a cancelled ancestor keeps polling its
                // region (as for a shield) instead of dropping it.
                *this.holds = true;
                node.shield_started();
            }
        }
        // One poll, with spawns on this thread going to the in-task group's lock-free list.
        let children: &C = this.children;
        children.enter(|| {
            loop {
                if !*this.swept && node.effectively_cancelled() {
                    *this.swept = true;
                    if this.body_out.is_none() && this.body.as_mut().sweep(node) {
                        *this.body_out = Some(None);
                    }
                    children.sweep();
                }
                if this.body_out.is_none() {
                    // The body is swept like an in-task child.
                    if let Poll::Ready(outcome) =
                        this.body.as_mut().poll_outcome(cx, Some(node), |_, _| {})
                    {
                        *this.body_out = Some(match outcome {
                            Outcome::Done(Ok(output)) => Some(output),
                            Outcome::Done(Err(error)) => {
                                this.group.fail(Failure::Error(error));
                                None
                            }
                            Outcome::Panicked(payload) => {
                                this.group.fail(Failure::Panic(payload));
                                None
                            }
                            Outcome::Cancelled => None,
                        });
                    }
                }
                children.poll_children(cx);
                if this.body_out.is_some() && children.try_close(cx.waker()) {
                    *this.exited = true;
                    leave(node, *this.holds);
                    return finish(*this.group, this.body_out.take().flatten());
                }
                node.register_waker(cx.waker());
                // A cancellation made during that poll is swept now rather than missed.
                if *this.swept || !node.effectively_cancelled() {
                    return Poll::Pending;
                }
            }
        })
    }
}

/// The group's result once everything is done.
fn finish<R, E>(group: GroupRef<'_, E>, output: Option<R>) -> Poll<Result<R, GroupError<E>>> {
    let mut errors = Vec::new();
    for failure in group.take_failures() {
        match failure {
            Failure::Error(error) => errors.push(error),
            Failure::Panic(payload) => resume_unwind(payload),
        }
    }
    if !errors.is_empty() {
        return Poll::Ready(Err(GroupError::from_failures(errors)));
    }
    let node = group.node;
    if node.ancestor_cancelled() {
        // Leaving a group is a checkpoint (as in AnyIO): the cancelled ancestor catches, and
        // drops this future.
        return Poll::Pending;
    }
    if let Some(output) = output {
        return Poll::Ready(Ok(output));
    }
    node.set_caught();
    Poll::Ready(Err(GroupError::Cancelled))
}
