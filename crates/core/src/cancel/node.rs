//! The scope tree: one node per cancel scope (and per spawned task inside a scope), linked to
//! its parent, with downward propagation of cancellation through wakers.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, PoisonError, Weak};

use crate::shim::{thread_local, AtomicBool, AtomicUsize, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

thread_local! {
    /// The innermost scope of the code being polled on this thread.
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
    /// Whether `CURRENT` holds anything: a plain `Copy` cell, so that the common case — no
    /// scope at all, checked on every spawn and every sleep — costs one thread-local read.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// What the thread-local current scope holds.
#[derive(Debug, Clone)]
pub(crate) enum Current {
    Node(Arc<Node>),
    /// A region whose node has not been made yet: it is made (and replaces the frame) the
    /// first time anything asks for the current node.
    Frame(Frame),
}

/// The configuration of a node not made yet, with the parent it will have.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) parent: Option<Arc<Node>>,
    pub(crate) deadline: Deadline,
    pub(crate) shield: bool,
}

/// A deadline as configured: absolute, or relative to when the region first waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    None,
    At(Instant),
    /// `fail_after` / `move_on_after`: resolved to `now + d` the first time the region waits
    /// or anything asks for the deadline, so a region that completes at once reads no clock.
    After(Duration),
}

#[derive(Debug)]
pub(crate) struct Node {
    cancel_called: AtomicBool,
    shield: AtomicBool,
    /// Shielded regions (and pending cleanups) running below this node, in any task.
    shields_below: AtomicUsize,
    parent: OnceLock<Option<Arc<Node>>>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    deadline: Deadline,
    caught: bool,
    /// The waker of the region (or task) driving this node, woken on cancellation, on a
    /// deadline change, and when the last shield below ends.
    waker: Option<Waker>,
    children: Vec<Option<Weak<Node>>>,
    free: Vec<usize>,
    /// This node's index in its parent's `children`.
    slot: Option<usize>,
}

impl Node {
    pub(crate) fn new(deadline: Deadline, shield: bool) -> Arc<Node> {
        Arc::new(Node {
            cancel_called: AtomicBool::new(false),
            shield: AtomicBool::new(shield),
            shields_below: AtomicUsize::new(0),
            parent: OnceLock::new(),
            state: Mutex::new(State {
                deadline,
                caught: false,
                waker: None,
                children: Vec::new(),
                free: Vec::new(),
                slot: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Links this node under `parent` (once; later calls are ignored). Returns `false` if the
    /// node was already entered.
    pub(crate) fn enter(self: &Arc<Self>, parent: Option<Arc<Node>>) -> bool {
        if self.parent.set(parent).is_err() {
            return false;
        }
        if let Some(parent) = self.parent() {
            let mut state = parent.lock();
            let weak = Some(Arc::downgrade(self));
            let slot = match state.free.pop() {
                Some(slot) => {
                    state.children[slot] = weak;
                    slot
                }
                None => {
                    state.children.push(weak);
                    state.children.len() - 1
                }
            };
            drop(state);
            self.lock().slot = Some(slot);
        }
        true
    }

    /// Unlinks this node from its parent.
    pub(crate) fn exit(&self) {
        let (slot, waker) = {
            let mut state = self.lock();
            (state.slot.take(), state.waker.take())
        };
        if let (Some(parent), Some(slot)) = (self.parent(), slot) {
            let mut state = parent.lock();
            state.children[slot] = None;
            state.free.push(slot);
        }
        drop(waker);
    }

    pub(crate) fn parent(&self) -> Option<&Arc<Node>> {
        self.parent.get().and_then(Option::as_ref)
    }

    pub(crate) fn cancel_called(&self) -> bool {
        self.cancel_called.load(Ordering::Acquire)
    }

    pub(crate) fn is_shielded(&self) -> bool {
        self.shield.load(Ordering::Acquire)
    }

    /// Cancels this node and wakes every region and task below it that can see the
    /// cancellation (stopping at shields). Idempotent.
    pub(crate) fn cancel(&self) {
        if self.cancel_called.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut wakers = Vec::new();
        self.collect_wakers(&mut wakers);
        wakers.into_iter().for_each(Waker::wake);
    }

    fn collect_wakers(&self, wakers: &mut Vec<Waker>) {
        let children: Vec<Arc<Node>> = {
            let state = self.lock();
            wakers.extend(state.waker.clone());
            state
                .children
                .iter()
                .flatten()
                .filter_map(Weak::upgrade)
                .collect()
        };
        for child in children {
            if !child.is_shielded() {
                child.collect_wakers(wakers);
            }
        }
    }

    /// Whether this node or an ancestor visible from it (up to the nearest shield) was
    /// cancelled.
    pub(crate) fn effectively_cancelled(&self) -> bool {
        let mut node = self;
        loop {
            if node.cancel_called() {
                return true;
            }
            if node.is_shielded() {
                return false;
            }
            match node.parent() {
                Some(parent) => node = parent,
                None => return false,
            }
        }
    }

    /// Whether an ancestor visible from this node was cancelled (so that ancestor, not this
    /// node, catches).
    pub(crate) fn ancestor_cancelled(&self) -> bool {
        !self.is_shielded() && self.parent().is_some_and(|p| p.effectively_cancelled())
    }

    pub(crate) fn shields_below(&self) -> usize {
        self.shields_below.load(Ordering::Acquire)
    }

    /// Records a shield (or a pending cleanup) starting below every ancestor of `self`.
    pub(crate) fn shield_started(&self) {
        let mut node = self.parent();
        while let Some(ancestor) = node {
            ancestor.shields_below.fetch_add(1, Ordering::AcqRel);
            node = ancestor.parent();
        }
    }

    /// Records a shield ending; wakes ancestors for which it was the last, so a catcher that
    /// was driving it can now finish.
    pub(crate) fn shield_ended(&self) {
        let mut wakers = Vec::new();
        let mut node = self.parent();
        while let Some(ancestor) = node {
            if ancestor.shields_below.fetch_sub(1, Ordering::AcqRel) == 1 {
                wakers.extend(ancestor.lock().waker.clone());
            }
            node = ancestor.parent();
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn register_waker(&self, waker: &Waker) {
        let mut state = self.lock();
        match &state.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => state.waker = Some(waker.clone()),
        }
    }

    pub(crate) fn wake(&self) {
        let waker = self.lock().waker.clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(crate) fn caught(&self) -> bool {
        self.lock().caught
    }

    pub(crate) fn set_caught(&self) {
        self.lock().caught = true;
    }

    /// The absolute deadline, resolving a relative one against `now` if needed.
    pub(crate) fn resolve_deadline(&self, now: impl FnOnce() -> Instant) -> Option<Instant> {
        let mut state = self.lock();
        match state.deadline {
            Deadline::None => None,
            Deadline::At(at) => Some(at),
            Deadline::After(after) => {
                let at = crate::time::saturating_add(now(), after);
                state.deadline = Deadline::At(at);
                Some(at)
            }
        }
    }

    pub(crate) fn set_deadline(&self, deadline: Deadline) {
        self.lock().deadline = deadline;
        self.wake();
    }

    pub(crate) fn set_shield(&self, shield: bool) {
        if self.shield.swap(shield, Ordering::AcqRel) != shield {
            // Unshielding may expose an ancestor's cancellation; shielding may end one.
            self.wake();
            if !shield && self.ancestor_cancelled() {
                let mut wakers = Vec::new();
                self.collect_wakers(&mut wakers);
                wakers.into_iter().for_each(Waker::wake);
            }
        }
    }
}

/// The innermost scope node of the code being polled, if any (making it from a frame if
/// needed).
pub(crate) fn current() -> Option<Arc<Node>> {
    if !ACTIVE.with(Cell::get) {
        return None;
    }
    CURRENT.with(|cell| match cell.take() {
        None => None,
        Some(Current::Node(node)) => {
            cell.set(Some(Current::Node(Arc::clone(&node))));
            Some(node)
        }
        Some(Current::Frame(frame)) => {
            let node = Node::new(frame.deadline, frame.shield);
            node.enter(frame.parent);
            cell.set(Some(Current::Node(Arc::clone(&node))));
            Some(node)
        }
    })
}

/// Makes `slot` the current scope while `f` runs, moving it in and out (a frame made into a
/// node meanwhile comes back as the node).
pub(crate) fn enter<R>(slot: &mut Option<Current>, f: impl FnOnce() -> R) -> R {
    struct RestoreActive(bool);
    impl Drop for RestoreActive {
        fn drop(&mut self) {
            ACTIVE.with(|active| active.set(self.0));
        }
    }
    let _active = RestoreActive(ACTIVE.with(|active| active.replace(slot.is_some())));
    crate::runtime::context::with_swapped(&CURRENT, slot, f)
}

/// Whether the code being polled is inside an effectively cancelled scope.
pub(crate) fn current_cancelled() -> bool {
    if !ACTIVE.with(Cell::get) {
        return false;
    }
    CURRENT.with(|cell| {
        let current = cell.take();
        let cancelled = match &current {
            None => false,
            Some(Current::Node(node)) => node.effectively_cancelled(),
            // A frame's own scope has no handle, so only a visible ancestor can cancel it.
            Some(Current::Frame(frame)) => {
                !frame.shield
                    && frame
                        .parent
                        .as_ref()
                        .is_some_and(|parent| parent.effectively_cancelled())
            }
        };
        cell.set(current);
        cancelled
    })
}
