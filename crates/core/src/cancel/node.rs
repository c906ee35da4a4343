//! The scope tree: one node per cancel scope (and per spawned task inside a scope), linked to
//! its parent, with downward propagation of cancellation through wakers.

use std::any::Any;
use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, PoisonError, Weak};

use crate::shim::{thread_local, AtomicBool, AtomicUsize, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

thread_local! {
    /// The innermost scope node of the code being polled on this thread (below a lazy frame,
    /// if `TOP` has one: then it is that frame's parent). Holds its reference without drop glue
    /// (see [`Held`]).
    static CURRENT: Cell<Option<Held>> = const { Cell::new(None) };
    /// What is on top of the current scope, in one byte: so that the common cases — no scope
    /// at all (checked on every spawn and every sleep), and a deadline region that completes
    /// at its first poll (entered and left here, without touching `CURRENT`) — cost a
    /// thread-local read or two and a one-byte write.
    static TOP: Cell<Top> = const { Cell::new(Top::BARE) };
}

/// A node's reference as `CURRENT` holds it: an `Arc` without drop glue, so the thread-local
/// registers no destructor and each access skips the check that it was registered (two
/// accesses on every poll of a region). Nothing is leaked by it: every function that puts a node
/// into `CURRENT` takes it out again when it returns or unwinds (its guard), so `CURRENT` is
/// empty whenever no region is being polled on the thread, and in particular when the thread
/// exits.
type Held = ManuallyDrop<Arc<Node>>;

/// Replaces the node in `CURRENT`, returning the one that was there.
#[inline]
fn replace_current(node: Option<Arc<Node>>) -> Option<Arc<Node>> {
    CURRENT
        .with(|cell| cell.replace(node.map(ManuallyDrop::new)))
        .map(ManuallyDrop::into_inner)
}

/// The state of the current scope that fits in a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Top(u8);

impl Top {
    const BARE: Top = Top(0);
    /// `CURRENT` holds a node.
    const NODE: u8 = 1;
    /// A region whose node has not been made yet is on top of `CURRENT` (its deadline lent
    /// to [`lent`](super::lent)): it is made (and pushed into `CURRENT`) the first time
    /// anything asks for the current node.
    const LAZY: u8 = 2;
    /// That lazy region is shielded.
    const SHIELD: u8 = 4;

    fn node(self) -> bool {
        self.0 & Self::NODE != 0
    }

    fn lazy(self) -> bool {
        self.0 & Self::LAZY != 0
    }

    fn lazy_shield(self) -> bool {
        self.0 & Self::SHIELD != 0
    }

    /// This top with a lazy frame (shielded or not) over it.
    fn with_lazy(self, shield: bool) -> Top {
        Top((self.0 & Self::NODE) | Self::LAZY | if shield { Self::SHIELD } else { 0 })
    }

    fn of_node(node: bool) -> Top {
        Top(if node { Self::NODE } else { 0 })
    }
}

/// The configuration of a region whose node has not been made yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lazy {
    pub(crate) deadline: Deadline,
    pub(crate) shield: bool,
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
    /// The state of the spawned task group whose scope this node is, if it is one: its
    /// children hold this node (as their frames' parent) and reach the group's state through
    /// it, one reference instead of two.
    group: Option<Box<dyn Any + Send + Sync>>,
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
        Self::make(deadline, shield, None)
    }

    /// The node of a spawned task group's scope, holding the group's state.
    pub(crate) fn with_group(group: Box<dyn Any + Send + Sync>) -> Arc<Node> {
        Self::make(Deadline::None, false, Some(group))
    }

    /// The state of the spawned task group whose scope this node is, if it is one of type `T`.
    pub(crate) fn group<T: Any>(&self) -> Option<&T> {
        self.group.as_deref()?.downcast_ref()
    }

    fn make(
        deadline: Deadline,
        shield: bool,
        group: Option<Box<dyn Any + Send + Sync>>,
    ) -> Arc<Node> {
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
            group,
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
                let at = after_now(now(), after);
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

/// `now + after`, saturating as [`time::saturating_add`](crate::time::saturating_add) does.
pub(crate) fn after_now(now: Instant, after: Duration) -> Instant {
    crate::time::saturating_add(now, after)
}

/// Whether no scope at all is current (no node and no lazy frame).
#[inline]
pub(crate) fn bare() -> bool {
    TOP.with(Cell::get) == Top::BARE
}

/// The innermost scope node of the code being polled, if any (making it from a lazy frame if
/// needed).
///
/// Inlined up to the check for no scope at all, which every spawn makes (a spawned group's
/// children are spawned outside every scope); the rest is out of line.
#[inline]
pub(crate) fn current() -> Option<Arc<Node>> {
    let top = TOP.with(Cell::get);
    if top == Top::BARE {
        return None;
    }
    current_in_scope(top)
}

/// [`current`] when a node or a lazy frame is current.
#[inline(never)]
fn current_in_scope(top: Top) -> Option<Arc<Node>> {
    if top.lazy() {
        let parent = replace_current(None);
        let node = Node::new(super::lent::get(), top.lazy_shield());
        node.enter(parent);
        replace_current(Some(Arc::clone(&node)));
        TOP.with(|cell| cell.set(Top::of_node(true)));
        return Some(node);
    }
    if !top.node() {
        return None;
    }
    crate::runtime::context::peek(&CURRENT).map(ManuallyDrop::into_inner)
}

/// Whether a node is current or a lazy frame is on top (whose node [`current`] would make).
#[inline]
pub(crate) fn in_scope() -> bool {
    TOP.with(Cell::get) != Top::BARE
}

/// Runs `f` with the node in `CURRENT`, if any, without cloning it.
#[inline]
fn with_current_node<R>(f: impl FnOnce(Option<&Arc<Node>>) -> R) -> R {
    CURRENT.with(|cell| {
        let node = cell.take();
        let out = f(node.as_deref());
        cell.set(node);
        out
    })
}

/// What [`enter`] and [`enter_node`] put back when they end (also on unwind).
struct Saved {
    top: Top,
    node: Option<Arc<Node>>,
}

impl Saved {
    /// Installs `top` and `node`, saving what they replace.
    fn install(top: Top, node: Option<Arc<Node>>) -> Saved {
        Saved {
            top: TOP.with(|cell| cell.replace(top)),
            node: replace_current(node),
        }
    }

    /// Puts the saved state back; returns what was current before.
    fn restore(&mut self) -> (Top, Option<Arc<Node>>) {
        let top = TOP.with(|cell| cell.replace(self.top));
        let node = replace_current(self.node.take());
        (top, node)
    }
}

/// Makes `slot` the current scope while `f` runs, moving it in and out (a frame made into a
/// node meanwhile comes back as the node).
pub(crate) fn enter<R>(slot: &mut Option<Current>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a> {
        slot: &'a mut Option<Current>,
        saved: Saved,
        /// The frame's deadline, if a frame was entered.
        deadline: Deadline,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let (top, node) = self.saved.restore();
            *self.slot = if top.lazy() {
                Some(Current::Frame(Frame {
                    parent: node,
                    deadline: self.deadline,
                    shield: top.lazy_shield(),
                }))
            } else {
                node.map(Current::Node)
            };
        }
    }
    let (node, lazy) = match slot.take() {
        None => (None, None),
        Some(Current::Node(node)) => (Some(node), None),
        Some(Current::Frame(frame)) => (
            frame.parent,
            Some(Lazy {
                deadline: frame.deadline,
                shield: frame.shield,
            }),
        ),
    };
    let top = Top::of_node(node.is_some());
    let top = match lazy {
        Some(lazy) => top.with_lazy(lazy.shield),
        None => top,
    };
    let _restore = Restore {
        saved: Saved::install(top, node),
        slot,
        deadline: lazy.map_or(Deadline::None, |lazy| lazy.deadline),
    };
    match lazy {
        Some(lazy) => super::lent::lend(&lazy.deadline, f),
        None => f(),
    }
}

/// Makes `node` (taken out of `slot`) the current scope while `f` runs, then moves it back
/// into `slot` (also on unwind): a region's poll with no reference counting.
pub(crate) fn enter_node<R>(slot: &mut Option<Arc<Node>>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a> {
        slot: &'a mut Option<Arc<Node>>,
        saved: Saved,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            // No lazy frame can be left on top: only `current` consumes one, and `enter`
            // restores its own.
            *self.slot = self.saved.restore().1;
        }
    }
    let node = slot.take();
    let saved = Saved::install(Top::of_node(node.is_some()), node);
    let _restore = Restore { slot, saved };
    f()
}

/// The region of a member that runs in a plain frame (no deadline, no shield) right below a
/// node: that node, until something inside makes the frame's own node, then the frame's node
/// (whose parent it is). [`enter`] with a `Current::Frame`, in two words instead of five.
#[derive(Debug)]
pub(crate) enum Below {
    Frame(Arc<Node>),
    Node(Arc<Node>),
    /// Only while [`enter_below`] has the node in `CURRENT`.
    Entered,
}

/// [`enter`] for a [`Below`] region: two thread-local swaps (`TOP`, `CURRENT`) and the lent
/// deadline, and back. The region's reference moves into `CURRENT` and back, uncounted.
#[inline]
pub(crate) fn enter_below<R>(below: &mut Below, f: impl FnOnce() -> R) -> R {
    /// Puts what was current back, and the region (its node, if made meanwhile) into `below`,
    /// also on unwind.
    struct Restore<'a> {
        below: &'a mut Below,
        top: Top,
        node: Option<Held>,
    }
    impl Drop for Restore<'_> {
        #[inline]
        fn drop(&mut self) {
            let top = TOP.with(|cell| cell.replace(self.top));
            let node = CURRENT.with(|cell| cell.replace(self.node.take()));
            // `CURRENT` holds the region's node if it was made (the lazy frame is gone), or
            // else its parent.
            let region = match node {
                Some(node) if top.lazy() => Below::Frame(ManuallyDrop::into_inner(node)),
                Some(made) => Below::Node(ManuallyDrop::into_inner(made)),
                None => Below::Entered,
            };
            // `below` holds `Entered` while the region runs (it is borrowed here): there is
            // nothing to drop, and skipping the drop skips its check.
            std::mem::forget(std::mem::replace(self.below, region));
        }
    }
    /// A plain frame's deadline: none. It is lent like any lazy frame's, so a frame made into
    /// a node inside never takes the deadline an enclosing region lent.
    static NO_DEADLINE: Deadline = Deadline::None;
    let (node, frame) = match std::mem::replace(below, Below::Entered) {
        Below::Frame(parent) => (parent, true),
        Below::Node(made) => (made, false),
        Below::Entered => unreachable!("a region entered twice"),
    };
    let top = Top::of_node(true);
    let _restore = Restore {
        top: TOP.with(|cell| cell.replace(if frame { top.with_lazy(false) } else { top })),
        node: CURRENT.with(|cell| cell.replace(Some(ManuallyDrop::new(node)))),
        below,
    };
    if frame {
        super::lent::lend(&NO_DEADLINE, f)
    } else {
        f()
    }
}

/// Runs `f` outside every scope, as [`enter`] with an empty slot would, but without moving
/// the current node out of `CURRENT` and back: only `TOP` says there is no scope, which is all
/// that [`current`], [`bare`] and [`current_cancelled`] read. (A spawned group spawns each child
/// this way, so the runtime's spawn does not bind the child to the spawner's scope.)
pub(crate) fn outside<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Top);
    impl Drop for Restore {
        #[inline]
        fn drop(&mut self) {
            TOP.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(TOP.with(|cell| cell.replace(Top::BARE)));
    f()
}

/// What [`enter_lazy`] found before running anything.
pub(crate) enum LazyEntry {
    /// The frame can go on top of the current scope.
    Ready,
    /// The current scope is a lazy frame itself, or (for an unshielded region) is already
    /// cancelled: the caller takes the slow path, through [`current`].
    Slow,
}

/// Whether a lazy region can be entered on the fast path (see [`enter_lazy`]).
#[inline]
pub(crate) fn lazy_entry(shield: bool) -> LazyEntry {
    let top = TOP.with(Cell::get);
    if top.lazy() || (!shield && top.node() && current_node_cancelled()) {
        return LazyEntry::Slow;
    }
    LazyEntry::Ready
}

/// Whether the node in `CURRENT` is effectively cancelled (out of line: only code inside a
/// scope gets here).
#[inline(never)]
fn current_node_cancelled() -> bool {
    with_current_node(|n| n.is_some_and(|n| n.effectively_cancelled()))
}

/// Runs `f` with a lazy frame configured by `lazy` on top of the current scope, which must not
/// be a lazy frame itself (check [`lazy_entry`] first). `CURRENT` is not touched unless
/// something inside asks for the current node: then the frame's node is made and stored in
/// `made` (also on unwind, so the caller can leave the tree).
#[inline]
pub(crate) fn enter_lazy<R>(lazy: Lazy, made: &mut Option<Arc<Node>>, f: impl FnOnce() -> R) -> R {
    enter_lazy_at(&lazy.deadline, lazy.shield, made, f)
}

/// [`enter_lazy`] with the deadline lent by reference (the region's own field): the fast
/// path of a region's first poll, which then copies nothing.
#[inline]
pub(crate) fn enter_lazy_at<R>(
    deadline: &Deadline,
    shield: bool,
    made: &mut Option<Arc<Node>>,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<'a> {
        top: Top,
        made: &'a mut Option<Arc<Node>>,
    }
    impl Drop for Restore<'_> {
        #[inline]
        fn drop(&mut self) {
            let top = TOP.with(|cell| cell.replace(self.top));
            if !top.lazy() {
                made_into_node(self.made);
            }
        }
    }
    let top = TOP.with(Cell::get);
    debug_assert!(!top.lazy(), "enter_lazy on top of a lazy frame");
    TOP.with(|cell| cell.set(top.with_lazy(shield)));
    let _restore = Restore { top, made };
    super::lent::lend(deadline, f)
}

/// A lazy frame was made into a node while it was on top: the node is in `CURRENT`, its
/// parent is what was there before. Moves the node into `made`, the parent back.
#[cold]
#[inline(never)]
fn made_into_node(made: &mut Option<Arc<Node>>) {
    let node = replace_current(None);
    replace_current(node.as_ref().and_then(|n| n.parent().cloned()));
    *made = node;
}

/// Whether the code being polled is inside an effectively cancelled scope.
///
/// Inlined into every wait's fast path (a semaphore's acquire, say): outside any scope it is one
/// thread-local read; the rest of the check is out of line.
#[inline]
pub(crate) fn current_cancelled() -> bool {
    let top = TOP.with(Cell::get);
    top.node() && current_cancelled_slow(top)
}

/// The part of [`current_cancelled`] for code inside a scope.
#[inline(never)]
fn current_cancelled_slow(top: Top) -> bool {
    // A lazy frame's own scope has no handle, so only a visible ancestor can cancel it.
    if top.lazy() && top.lazy_shield() {
        return false;
    }
    with_current_node(|node| node.is_some_and(|node| node.effectively_cancelled()))
}
