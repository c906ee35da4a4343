//! The deadline timers of cancel scopes.
//!
//! A scope that waits with a deadline needs a timer. Runtimes with a cheap timer of their own
//! (tokio's wheel, the virtual clock) give one per scope. async-io's timers (smol, async-std,
//! and the fallback with no runtime) cost several syscalls each — registering one wakes the
//! reactor thread — so those scopes share a per-thread [`Queue`] instead: a min-heap of
//! deadlines driven by **one** async-io timer, re-armed only when a deadline earlier than the
//! one it is armed for arrives. Registering and removing a deadline is a short critical
//! section with no syscall; a scope that ends before its deadline (the common case) leaves at
//! most a stale timer behind, which fires once, finds nothing due and re-arms for the earliest
//! deadline left.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use crate::time::TimerSlot;

pin_project_lite::pin_project! {
    /// A scope's deadline timer: made when its region first waits with a deadline, dropped
    /// (deregistered) as soon as the region ends. A runtime's own timer is kept inline, in
    /// `slot` (see [`Runtime::timer_in`](crate::runtime::Runtime::timer_in)).
    pub(crate) struct ScopeTimer {
        state: TimerState,
        #[pin]
        slot: TimerSlot,
    }
}

enum TimerState {
    /// No timer yet (or any more).
    Unset,
    /// The runtime's own timer, in `slot`.
    Own { deadline: Instant },
    /// An entry in this thread's shared async-io deadline queue.
    Shared(Entry),
}

impl fmt::Debug for ScopeTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            TimerState::Unset => f.write_str("Unset"),
            TimerState::Own { deadline, .. } => f
                .debug_struct("Own")
                .field("deadline", deadline)
                .finish_non_exhaustive(),
            TimerState::Shared(entry) => f.debug_tuple("Shared").field(entry).finish(),
        }
    }
}

impl ScopeTimer {
    /// No timer: nothing is registered until [`poll_at`](ScopeTimer::poll_at).
    pub(crate) const fn new() -> Self {
        ScopeTimer {
            state: TimerState::Unset,
            slot: TimerSlot::new(),
        }
    }

    /// `Ready` once `deadline` has passed (never earlier, by the runtime's clock); registers
    /// `cx`'s waker otherwise. The first call makes the timer, on the ambient runtime (or in
    /// this thread's shared async-io queue); a call with another deadline re-arms it.
    #[inline(never)]
    pub(crate) fn poll_at(
        self: Pin<&mut Self>,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut this = self.project();
        match this.state {
            TimerState::Unset => {
                // Nothing to drop in `Unset`: skip the drop glue.
                std::mem::forget(std::mem::replace(
                    this.state,
                    arm(this.slot.as_mut(), deadline),
                ));
            }
            TimerState::Own { deadline: at, .. } if *at != deadline => {
                *at = deadline;
                this.slot.as_mut().reset(deadline);
            }
            TimerState::Shared(entry) if entry.deadline != deadline => entry.reset(deadline),
            _ => {}
        }
        match this.state {
            TimerState::Own { deadline } => loop {
                if this.slot.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The clock the deadline was computed on (`time::now`: the installed
                // runtime's, or the system's, which runtimes found by a detector use).
                if crate::time::now() >= *deadline {
                    return Poll::Ready(());
                }
                // Fired before the clock agrees: re-arm and wait again.
                this.slot.as_mut().reset(*deadline);
            },
            TimerState::Shared(entry) => entry.poll(cx),
            TimerState::Unset => unreachable!("armed above"),
        }
    }

    /// Drops the timer (deregistering it), if there is one.
    pub(crate) fn clear(self: Pin<&mut Self>) {
        let this = self.project();
        if !matches!(this.state, TimerState::Unset) {
            this.slot.clear();
            *this.state = TimerState::Unset;
        }
    }
}

std::thread_local! {
    /// Timers of regions that ended, empty, for the next regions that wait on this thread: a
    /// waiting region takes one instead of allocating (the runtime's timer is written inline
    /// into it, see [`TimerSlot`]).
    static SPARE: RefCell<Vec<Pin<Box<ScopeTimer>>>> = const { RefCell::new(Vec::new()) };
    /// The most recent spare, apart: one region after another (the common case) takes and
    /// gives back this one with a move in and out of a cell.
    static LAST_SPARE: Cell<Option<Pin<Box<ScopeTimer>>>> = const { Cell::new(None) };
}

/// How many spare timers a thread keeps (besides the last one).
const SPARE_MAX: usize = 32;

/// A region's deadline timer: none until the region waits with a deadline, then a boxed
/// [`ScopeTimer`] taken from this thread's spares (so a region that completes at once stays
/// small and one that waits allocates nothing in the steady state). Handed back as soon as
/// the region ends.
#[derive(Debug)]
pub(crate) struct RegionTimer(Option<Pin<Box<ScopeTimer>>>);

impl RegionTimer {
    pub(crate) const fn new() -> Self {
        RegionTimer(None)
    }

    /// See [`ScopeTimer::poll_at`]; takes a spare timer at the first call.
    #[inline]
    pub(crate) fn poll_at(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        self.0
            .get_or_insert_with(take_spare)
            .as_mut()
            .poll_at(deadline, cx)
    }

    /// Drops the timer (deregistering it), if any, and keeps its box as a spare.
    #[inline]
    pub(crate) fn give_back(&mut self) {
        if let Some(timer) = self.0.take() {
            keep_spare(timer);
        }
    }
}

impl Drop for RegionTimer {
    #[inline]
    fn drop(&mut self) {
        self.give_back();
    }
}

/// A spare timer of this thread, or a new one.
#[inline]
fn take_spare() -> Pin<Box<ScopeTimer>> {
    LAST_SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .or_else(|| {
            SPARE
                .try_with(|spare| spare.borrow_mut().pop())
                .ok()
                .flatten()
        })
        .unwrap_or_else(new_spare)
}

/// A new timer box, when this thread has no spare (out of line: it builds the timer on the
/// stack, which gave the hot path of [`take_spare`] a large frame).
#[cold]
#[inline(never)]
fn new_spare() -> Pin<Box<ScopeTimer>> {
    Box::pin(ScopeTimer::new())
}

#[inline(never)]
fn keep_spare(mut timer: Pin<Box<ScopeTimer>>) {
    timer.as_mut().clear();
    // During the thread's teardown the box is simply freed.
    let Ok(Some(older)) = LAST_SPARE.try_with(|last| last.replace(Some(timer))) else {
        return;
    };
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_MAX {
            spare.push(older);
        }
    });
}

/// Makes a timer for `deadline` on the ambient runtime (its own, into `slot`), or an entry in
/// this thread's shared async-io queue (registered at its first poll).
#[inline]
fn arm(slot: Pin<&mut TimerSlot>, deadline: Instant) -> TimerState {
    // Used in place, by reference: moving the handle out of the `Option` just returned copied
    // it with loads wider than the stores that wrote it, which stalled (measured).
    let runtime = crate::runtime::context::current_raw();
    match runtime.as_deref() {
        Some(runtime) if !runtime.async_io_timers() => {
            runtime.timer_in(deadline, slot);
            TimerState::Own { deadline }
        }
        _ => TimerState::Shared(Entry {
            queue: None,
            key: 0,
            deadline,
        }),
    }
}

/// A deadline registered in a [`Queue`] (once polled); dropping it removes it.
#[derive(Debug)]
pub(crate) struct Entry {
    queue: Option<Arc<Queue>>,
    key: usize,
    deadline: Instant,
}

impl Entry {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.queue {
            None => {
                let queue = Queue::of_this_thread();
                let registered = queue.register(self.deadline, cx.waker());
                match registered {
                    Some(key) => {
                        self.key = key;
                        self.queue = Some(queue);
                        Poll::Pending
                    }
                    None => Poll::Ready(()),
                }
            }
            Some(queue) => queue.poll(self.key, cx.waker()),
        }
    }

    fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(queue) = &self.queue {
            queue.reset(self.key, deadline);
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.remove(self.key);
        }
    }
}

/// One thread's shared deadlines, driven by one async-io timer.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// A binary min-heap of slot keys, by their slots' deadlines.
    heap: Vec<usize>,
    slots: Vec<Slot>,
    /// Keys of unused slots.
    free: Vec<usize>,
    /// The driving timer and the deadline it is armed for (`None`: not armed).
    timer: async_io::Timer,
    armed: Option<Instant>,
    /// Wakes the queue when the driving timer fires.
    waker: Waker,
}

#[derive(Debug)]
struct Slot {
    deadline: Instant,
    /// Index in `heap`; `FIRED` once popped because its deadline passed.
    pos: usize,
    waker: Option<Waker>,
}

const FIRED: usize = usize::MAX;

impl Queue {
    /// This thread's queue.
    fn of_this_thread() -> Arc<Queue> {
        std::thread_local! {
            static QUEUE: Arc<Queue> = Queue::new();
        }
        // During the thread's teardown a region gets a queue of its own.
        QUEUE.try_with(Arc::clone).unwrap_or_else(|_| Queue::new())
    }

    fn new() -> Arc<Queue> {
        Arc::new_cyclic(|weak: &Weak<Queue>| Queue {
            state: Mutex::new(State {
                heap: Vec::new(),
                slots: Vec::new(),
                free: Vec::new(),
                timer: async_io::Timer::never(),
                armed: None,
                waker: Waker::from(Arc::new(Driver {
                    queue: weak.clone(),
                })),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `deadline` with `waker`; `None` if it has already passed.
    fn register(&self, deadline: Instant, waker: &Waker) -> Option<usize> {
        let mut state = self.lock();
        let slot = Slot {
            deadline,
            pos: state.heap.len(),
            waker: Some(waker.clone()),
        };
        let key = match state.free.pop() {
            Some(key) => {
                state.slots[key] = slot;
                key
            }
            None => {
                state.slots.push(slot);
                state.slots.len() - 1
            }
        };
        state.heap.push(key);
        let last = state.heap.len() - 1;
        state.sift_up(last);
        let wake = state.arm();
        let fired = state.slots[key].pos == FIRED;
        if fired {
            state.release(key);
        }
        drop(state);
        wake.into_iter().for_each(Waker::wake);
        (!fired).then_some(key)
    }

    fn poll(&self, key: usize, waker: &Waker) -> Poll<()> {
        let mut state = self.lock();
        let slot = &mut state.slots[key];
        if slot.pos == FIRED {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        Poll::Pending
    }

    fn reset(&self, key: usize, deadline: Instant) {
        let mut state = self.lock();
        let pos = state.slots[key].pos;
        state.slots[key].deadline = deadline;
        if pos == FIRED {
            // Fired already: back into the heap for the new deadline.
            let pos = state.heap.len();
            state.slots[key].pos = pos;
            state.heap.push(key);
            state.sift_up(pos);
        } else {
            state.sift_up(pos);
            let pos = state.slots[key].pos;
            state.sift_down(pos);
        }
        let wake = state.arm();
        drop(state);
        wake.into_iter().for_each(Waker::wake);
    }

    fn remove(&self, key: usize) {
        let mut state = self.lock();
        let pos = state.slots[key].pos;
        if pos != FIRED {
            state.remove_at(pos);
        }
        let waker = state.slots[key].waker.take();
        state.free.push(key);
        drop(state);
        drop(waker);
    }

    /// The driving timer fired: wake every entry that is due, re-arm for the rest.
    fn fire(&self) {
        let mut state = self.lock();
        state.armed = None;
        let wake = state.arm();
        drop(state);
        wake.into_iter().for_each(Waker::wake);
    }
}

impl State {
    fn deadline_at(&self, pos: usize) -> Instant {
        self.slots[self.heap[pos]].deadline
    }

    fn place(&mut self, pos: usize, key: usize) {
        self.heap[pos] = key;
        self.slots[key].pos = pos;
    }

    fn sift_up(&mut self, mut pos: usize) {
        let key = self.heap[pos];
        let deadline = self.slots[key].deadline;
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.deadline_at(parent) <= deadline {
                break;
            }
            self.place(pos, self.heap[parent]);
            pos = parent;
        }
        self.place(pos, key);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let key = self.heap[pos];
        let deadline = self.slots[key].deadline;
        let len = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.deadline_at(right) < self.deadline_at(left) {
                right
            } else {
                left
            };
            if self.deadline_at(child) >= deadline {
                break;
            }
            self.place(pos, self.heap[child]);
            pos = child;
        }
        self.place(pos, key);
    }

    /// Takes the entry at heap position `pos` out of the heap.
    fn remove_at(&mut self, pos: usize) {
        let Some(last) = self.heap.pop() else {
            unreachable!("removing from an empty heap")
        };
        if pos < self.heap.len() {
            self.place(pos, last);
            self.sift_up(pos);
            let pos = self.slots[last].pos;
            self.sift_down(pos);
        }
    }

    /// Frees a slot that fired during its own registration.
    fn release(&mut self, key: usize) {
        self.slots[key].waker = None;
        self.free.push(key);
    }

    /// Pops every due entry (returning their wakers) and makes sure the driving timer is armed
    /// no later than the earliest deadline left. Reads the clock only if something is queued.
    fn arm(&mut self) -> Vec<Waker> {
        let mut wake = Vec::new();
        loop {
            let Some(&first) = self.heap.first() else {
                return wake;
            };
            let earliest = self.slots[first].deadline;
            if self.armed.is_some_and(|armed| armed <= earliest) {
                // Armed early enough (perhaps for an entry removed since: it then fires
                // once for nothing and re-arms).
                return wake;
            }
            if earliest <= Instant::now() {
                self.remove_at(0);
                let slot = &mut self.slots[first];
                slot.pos = FIRED;
                wake.extend(slot.waker.take());
                continue;
            }
            self.timer.set_at(earliest);
            self.armed = Some(earliest);
            let mut cx = Context::from_waker(&self.waker);
            if Pin::new(&mut self.timer).poll(&mut cx).is_pending() {
                return wake;
            }
            // Already due by the time it was registered: go round again.
            self.armed = None;
        }
    }
}

/// The waker of a queue's driving timer.
struct Driver {
    queue: Weak<Queue>,
}

impl Wake for Driver {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(queue) = self.queue.upgrade() {
            queue.fire();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    // async-io's reactor (epoll, its own thread) is out of miri's reach.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn heap_keeps_the_earliest_first_through_resets_and_removals() {
        let queue = Queue::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let base = Instant::now() + Duration::from_secs(3600);
        let keys: Vec<usize> = [5u64, 3, 9, 1, 7, 2, 8]
            .iter()
            .map(|s| {
                let key = queue.register(base + Duration::from_secs(*s), &waker);
                key.expect("far in the future")
            })
            .collect();
        let earliest = |queue: &Queue| {
            let state = queue.lock();
            state.heap.first().map(|&k| state.slots[k].deadline)
        };
        assert_eq!(earliest(&queue), Some(base + Duration::from_secs(1)));
        // The shared timer was armed three times (5 s, 3 s, 1 s), never for a later deadline.
        assert_eq!(queue.lock().armed, Some(base + Duration::from_secs(1)));
        queue.remove(keys[3]);
        // Removing the earliest leaves the timer armed early: it fires once for nothing.
        assert_eq!(queue.lock().armed, Some(base + Duration::from_secs(1)));
        assert_eq!(earliest(&queue), Some(base + Duration::from_secs(2)));
        queue.reset(keys[2], base);
        assert_eq!(earliest(&queue), Some(base));
        queue.reset(keys[2], base + Duration::from_secs(20));
        assert_eq!(earliest(&queue), Some(base + Duration::from_secs(2)));
        for &key in &keys {
            if key != keys[3] {
                queue.remove(key);
            }
        }
        assert_eq!(earliest(&queue), None);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn due_entries_fire_through_the_shared_timer() {
        let queue = Queue::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let soon = Instant::now() + Duration::from_millis(20);
        let keys: Vec<usize> = (0..3)
            .map(|i| {
                let key = queue.register(soon + Duration::from_millis(i), &waker);
                key.expect("not due yet")
            })
            .collect();
        let far = queue
            .register(soon + Duration::from_secs(3600), &waker)
            .expect("far");
        let start = Instant::now();
        while count.0.load(Ordering::SeqCst) < 3 {
            assert!(start.elapsed() < Duration::from_secs(10), "never fired");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(Instant::now() >= soon + Duration::from_millis(2));
        for key in keys {
            assert!(queue.poll(key, &waker).is_ready());
            queue.remove(key);
        }
        assert!(queue.poll(far, &waker).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        // A deadline already past is not registered at all.
        assert_eq!(queue.register(Instant::now(), &waker), None);
        queue.remove(far);
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn an_entry_made_on_one_thread_is_removed_from_another() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let deadline = Instant::now() + Duration::from_secs(3600);
        let (entry, queue) = std::thread::spawn(move || {
            let mut timer = Box::pin(ScopeTimer::new());
            let cx = &mut Context::from_waker(&waker);
            assert!(timer.as_mut().poll_at(deadline, cx).is_pending());
            assert!(
                matches!(timer.state, TimerState::Shared(_)),
                "no runtime: the shared queue"
            );
            (timer, Queue::of_this_thread())
        })
        .join()
        .expect("the thread ran");
        assert_eq!(queue.lock().heap.len(), 1);
        drop(entry);
        assert!(queue.lock().heap.is_empty());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }
}
