//! The children of an in-task group: a slab polled by the group's own future, each slot with
//! its own waker on the shared ready list (`crate::ready`).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

use super::cell::{Confined, Entry, Owned, Release};
use super::member::{GroupRef, Shared};
use crate::cancel::node::{self, Current};
use crate::cancel::node::{Deadline, Node};
use crate::ready::{ReadyList, SlotWaker};

/// How many children one poll of the group polls before it yields to its executor.
const BUDGET: usize = 4096;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An in-task group's children. `D` is the unsized child type (`dyn Entry<E> + Send + 'env`
/// or `dyn Entry<E> + 'env`).
pub(crate) struct InTask<'env, E, D: ?Sized + Release> {
    /// The group's cancel scope.
    pub(crate) node: Arc<Node>,
    pub(crate) shared: Shared<E>,
    /// Children added since the group's future last ran (it moves them into the slab), and
    /// whether the group has finished. The group closes under this lock once it holds no child
    /// and none is incoming, so no count of children is kept.
    incoming: Mutex<Incoming<D>>,
    /// Children spawned on the thread polling the group's future, during that poll: no lock
    /// (see [`Confined`]). The group takes them before its poll ends.
    local: Confined<Owned<D>>,
    /// Only the group's future uses it; the mutex makes the group `Sync`.
    slab: Mutex<Slab<D>>,
    ready: Arc<ReadyList>,
    _env: PhantomData<&'env ()>,
}

struct Incoming<D: ?Sized + Release> {
    /// In chunks of [`CHUNK`]: a body that spawns thousands of children at once grows no
    /// large buffer (whose copies, and whose frees past glibc's consolidation threshold,
    /// measured about 10 % of a ready child's cost).
    children: Vec<Vec<Owned<D>>>,
    closed: bool,
}

/// How many incoming children one chunk holds.
const CHUNK: usize = 32;

impl<D: ?Sized + Release> Incoming<D> {
    fn push(&mut self, child: Owned<D>) {
        match self.children.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(child),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(child);
                self.children.push(chunk);
            }
        }
    }
}

struct Slab<D: ?Sized + Release> {
    children: Vec<Option<Owned<D>>>,
    /// Each slot's waker, made once and kept for whichever child occupies the slot.
    wakers: Vec<(Arc<SlotWaker>, Waker)>,
    free: Vec<usize>,
}

impl<E, D: ?Sized + Release> InTask<'_, E, D> {
    pub(crate) fn new() -> Self {
        InTask {
            node: Node::new(Deadline::None, false),
            shared: Shared::new(),
            incoming: Mutex::new(Incoming {
                children: Vec::new(),
                closed: false,
            }),
            local: Confined::new(),
            slab: Mutex::new(Slab {
                children: Vec::new(),
                wakers: Vec::new(),
                free: Vec::new(),
            }),
            ready: Arc::default(),
            _env: PhantomData,
        }
    }

    /// The group as its members see it.
    pub(crate) fn group(&self) -> GroupRef<'_, E> {
        GroupRef {
            node: &self.node,
            shared: &self.shared,
        }
    }

    /// Adds the child `make` makes, unless the group has finished; the group polls it next
    /// time.
    pub(crate) fn try_push(&self, make: impl FnOnce() -> Owned<D>) -> bool {
        let child = match self.local.push(make()) {
            Ok(()) => return true,
            Err(None) => return false,
            Err(Some(child)) => child,
        };
        let mut incoming = lock(&self.incoming);
        if incoming.closed {
            drop(incoming);
            // Dropped outside the lock: the child's destructor is the caller's code.
            drop(child);
            return false;
        }
        incoming.push(child);
        // The group drains the whole list when it runs: wake it for the first one only.
        if incoming.children.len() == 1 && incoming.children[0].len() == 1 {
            drop(incoming);
            self.ready.wake_parent();
        }
        true
    }

    /// Closes the group if it holds no child and none is incoming: nothing joins it after.
    /// Called by the group's future, inside [`InTask::enter`].
    pub(crate) fn try_close(&self) -> bool {
        let slab = lock(&self.slab);
        let mut incoming = lock(&self.incoming);
        if incoming.closed {
            return true;
        }
        if !incoming.children.is_empty()
            || slab.children.len() != slab.free.len()
            || !self.local.close_if_empty()
        {
            return false;
        }
        incoming.closed = true;
        true
    }

    /// Runs `f` (a poll of the group's future) with spawns on this thread going to the
    /// lock-free local list.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        self.local.enter(f)
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.incoming).closed
    }

    /// Closes the group and drops every child (the group's future was dropped): their handles
    /// report cancellation.
    pub(crate) fn clear(&self) {
        let incoming = {
            let mut incoming = lock(&self.incoming);
            incoming.closed = true;
            std::mem::take(&mut incoming.children)
        };
        let children = std::mem::take(&mut lock(&self.slab).children);
        drop((incoming, children));
    }
}

impl<E, D: ?Sized + Entry<E>> InTask<'_, E, D> {
    /// Polls new and woken children until none is left to poll, or the budget is spent (then
    /// the group's future is woken again, so its executor gets a turn first).
    pub(crate) fn poll_children(&self, cx: &mut Context<'_>) {
        // The children run in frames right below the group's node: make it current once for
        // all of them (see `Member::in_group`).
        let mut group = Some(Current::Node(Arc::clone(&self.node)));
        node::enter(&mut group, || self.poll_children_here(cx));
    }

    fn poll_children_here(&self, cx: &mut Context<'_>) {
        self.ready.register(cx.waker());
        let mut slab = lock(&self.slab);
        let mut woken = Vec::new();
        let mut polled = 0;
        loop {
            let incoming = std::mem::take(&mut lock(&self.incoming).children);
            let local = self.local.take();
            self.ready.drain_into(&mut woken);
            if incoming.is_empty() && local.is_empty() && woken.is_empty() {
                return;
            }
            polled += incoming.iter().map(Vec::len).sum::<usize>() + local.len() + woken.len();
            for child in incoming.into_iter().flatten().chain(local) {
                slab.poll_new(child, &self.ready, self.group());
            }
            for index in woken.drain(..) {
                slab.poll(index, self.group());
            }
            if polled >= BUDGET {
                // Children spawned meanwhile wait in the locked list, where a drop of the
                // group's future (on any thread) finds them.
                let spawned = self.local.take();
                if !spawned.is_empty() {
                    let mut incoming = lock(&self.incoming);
                    spawned.into_iter().for_each(|child| incoming.push(child));
                }
                cx.waker().wake_by_ref();
                return;
            }
        }
    }

    /// Cancels now every child the group's cancellation reaches.
    pub(crate) fn sweep(&self) {
        let mut slab = lock(&self.slab);
        for index in 0..slab.children.len() {
            let swept = slab.children[index]
                .as_mut()
                .is_some_and(|child| child.as_mut().sweep(self.group()));
            if swept {
                slab.remove(index);
            }
        }
    }
}

impl<D: ?Sized + Release> Slab<D> {
    /// Polls a new child with the waker of the slot it would take, and keeps it there only
    /// if it did not finish: a child that finishes at its first poll never enters the slab.
    fn poll_new<E>(&mut self, mut child: Owned<D>, ready: &Arc<ReadyList>, group: GroupRef<'_, E>)
    where
        D: Entry<E>,
    {
        let index = match self.free.last() {
            Some(&index) => index,
            None => {
                let index = self.children.len();
                self.children.push(None);
                self.wakers.push(SlotWaker::new(index, ready));
                self.free.push(index);
                index
            }
        };
        let (state, waker) = &self.wakers[index];
        // A wake from now on queues the slot (a wake left from the slot's previous child only
        // makes a spurious poll).
        state.polling();
        let polled = child
            .as_mut()
            .poll_entry(&mut Context::from_waker(waker), group);
        if polled.is_pending() {
            self.free.pop();
            self.children[index] = Some(child);
        }
    }

    fn remove(&mut self, index: usize) {
        if self.children[index].take().is_some() {
            self.free.push(index);
        }
    }

    fn poll<E>(&mut self, index: usize, group: GroupRef<'_, E>)
    where
        D: Entry<E>,
    {
        // A stale index (the child ended since it was woken) finds an empty or reused slot:
        // at worst a spurious poll.
        let Some(child) = self.children.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let (state, waker) = &self.wakers[index];
        state.polling();
        let polled = child
            .as_mut()
            .poll_entry(&mut Context::from_waker(waker), group);
        if polled.is_ready() {
            self.remove(index);
        }
    }
}
