//! The children of an in-task group: a slab polled by the group's own future, with a ready
//! queue fed by one small waker per waiting child.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Context;

use futures::task::{waker_ref, ArcWake, AtomicWaker};

use super::member::{Entry, Shared};

/// How many children one poll of the group polls before it yields to its executor.
const BUDGET: usize = 4096;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An in-task group's children. `D` is the unsized child type (`dyn Entry<E> + Send + 'env`
/// or `dyn Entry<E> + 'env`).
pub(crate) struct InTask<'env, E, D: ?Sized> {
    pub(crate) shared: Arc<Shared<E>>,
    /// Children added since the group's future last ran; it moves them into the slab.
    incoming: Mutex<Vec<Pin<Box<D>>>>,
    /// Only the group's future uses it; the mutex makes the group `Sync`.
    slab: Mutex<Slab<D>>,
    ready: Arc<ReadyQueue>,
    _env: PhantomData<&'env ()>,
}

struct Slab<D: ?Sized> {
    children: Vec<Option<Slot<D>>>,
    free: Vec<usize>,
    /// Wakers of finished children that nobody else holds, reused for the next ones, so a
    /// child that finishes at its first poll costs no waker allocation.
    spare: Vec<Arc<ChildWaker>>,
}

struct Slot<D: ?Sized> {
    child: Pin<Box<D>>,
    waker: Arc<ChildWaker>,
}

/// Indices of children woken since the group's future last polled them.
struct ReadyQueue {
    indices: Mutex<Vec<usize>>,
    group: AtomicWaker,
}

/// The waker a child is polled with: waking it queues the child's index.
struct ChildWaker {
    index: AtomicUsize,
    /// Already in the ready queue (so a burst of wake-ups queues it once).
    queued: AtomicBool,
    queue: Arc<ReadyQueue>,
}

impl ArcWake for ChildWaker {
    fn wake_by_ref(this: &Arc<Self>) {
        if !this.queued.swap(true, Ordering::AcqRel) {
            lock(&this.queue.indices).push(this.index.load(Ordering::Acquire));
            this.queue.group.wake();
        }
    }
}

impl<E, D: ?Sized> InTask<'_, E, D> {
    pub(crate) fn new() -> Self {
        InTask {
            shared: Shared::new(),
            incoming: Mutex::new(Vec::new()),
            slab: Mutex::new(Slab {
                children: Vec::new(),
                free: Vec::new(),
                spare: Vec::new(),
            }),
            ready: Arc::new(ReadyQueue {
                indices: Mutex::new(Vec::new()),
                group: AtomicWaker::new(),
            }),
            _env: PhantomData,
        }
    }

    /// Adds a child already counted in with [`Shared::join`]; the group polls it next time.
    pub(crate) fn push(&self, child: Pin<Box<D>>) {
        let mut incoming = lock(&self.incoming);
        incoming.push(child);
        // The group drains the whole list when it runs: wake it for the first one only.
        if incoming.len() == 1 {
            drop(incoming);
            self.ready.group.wake();
        }
    }

    /// Drops every child (the group's future was dropped): their handles report cancellation.
    pub(crate) fn clear(&self) {
        let incoming = std::mem::take(&mut *lock(&self.incoming));
        let children = std::mem::take(&mut lock(&self.slab).children);
        drop((incoming, children));
    }
}

impl<E, D: ?Sized + Entry<E>> InTask<'_, E, D> {
    /// Polls new and woken children until none is left to poll, or the budget is spent (then
    /// the group's future is woken again, so its executor gets a turn first).
    pub(crate) fn poll_children(&self, cx: &mut Context<'_>) {
        self.ready.group.register(cx.waker());
        let mut slab = lock(&self.slab);
        let mut polled = 0;
        loop {
            let incoming = std::mem::take(&mut *lock(&self.incoming));
            let woken = std::mem::take(&mut *lock(&self.ready.indices));
            if incoming.is_empty() && woken.is_empty() {
                return;
            }
            polled += incoming.len() + woken.len();
            for child in incoming {
                let index = slab.insert(child, &self.ready);
                slab.poll(index, &self.shared);
            }
            for index in woken {
                slab.poll(index, &self.shared);
            }
            if polled >= BUDGET {
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
                .is_some_and(|slot| slot.child.as_mut().sweep(&self.shared));
            if swept {
                slab.remove(index);
            }
        }
    }
}

impl<D: ?Sized> Slab<D> {
    fn insert(&mut self, child: Pin<Box<D>>, queue: &Arc<ReadyQueue>) -> usize {
        let index = self.free.pop().unwrap_or(self.children.len());
        let waker = self.spare.pop().unwrap_or_else(|| {
            Arc::new(ChildWaker {
                index: AtomicUsize::new(index),
                queued: AtomicBool::new(false),
                queue: Arc::clone(queue),
            })
        });
        waker.index.store(index, Ordering::Release);
        let slot = Some(Slot { child, waker });
        if index == self.children.len() {
            self.children.push(slot);
        } else {
            self.children[index] = slot;
        }
        index
    }

    fn remove(&mut self, index: usize) {
        if let Some(slot) = self.children[index].take() {
            self.free.push(index);
            drop(slot.child);
            // Reuse the waker only if no clone of it is left anywhere.
            let mut waker = slot.waker;
            if Arc::get_mut(&mut waker).is_some() {
                waker.queued.store(false, Ordering::Release);
                self.spare.push(waker);
            }
        }
    }

    fn poll<E>(&mut self, index: usize, group: &Shared<E>)
    where
        D: Entry<E>,
    {
        // A stale index (the child ended since it was woken) finds an empty or reused slot:
        // at worst a spurious poll.
        let Some(slot) = self.children.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        slot.waker.queued.store(false, Ordering::Release);
        let waker = waker_ref(&slot.waker);
        let polled = slot
            .child
            .as_mut()
            .poll_entry(&mut Context::from_waker(&waker), group);
        if polled.is_ready() {
            self.remove(index);
        }
    }
}
