//! A deterministic virtual-time runtime for tests (feature `test-util`).
//!
//! [`VirtualRuntime`] runs every task on the thread that calls [`Runtime::block_on`], in the
//! order they were woken, and keeps its own clock. The clock moves only when
//!
//! - a test calls [`VirtualClock::advance`], or
//! - every task is idle (nothing is ready to run) and a timer is pending: the clock then jumps
//!   straight to the earliest timer's deadline.
//!
//! So an hour of back-off finishes in microseconds, and a test that sleeps asserts exact
//! virtual instants instead of racing the wall clock. If everything is idle with no timer
//! pending and nothing wakes the runtime from another thread within the deadlock timeout
//! (10 s of real time by default), `block_on` panics instead of hanging.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use sheepdog_core::runtime::Runtime;
//! use sheepdog_core::testing::VirtualRuntime;
//! use sheepdog_core::time;
//!
//! let rt = VirtualRuntime::new();
//! let clock = rt.clock();
//! rt.block_on(async {
//!     time::sleep(Duration::from_secs(3600)).await; // one virtual hour, no real waiting
//! });
//! assert_eq!(clock.elapsed(), Duration::from_secs(3600));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::runtime::{BoxTask, Runtime, RuntimeHandle, WithRuntime};
use crate::time::{BoxTimer, Timer};

const DEFAULT_DEADLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A single-threaded, deterministic runtime whose clock is virtual.
///
/// See the [module documentation](self) for when the clock moves. Dropping the runtime drops
/// every task it still holds; their handles report [`JoinError::Cancelled`].
///
/// [`JoinError::Cancelled`]: crate::runtime::JoinError::Cancelled
pub struct VirtualRuntime {
    shared: Arc<Shared>,
    handle: Arc<VirtualHandle>,
    deadlock_timeout: Duration,
}

/// A non-owning handle to a [`VirtualRuntime`]; this is what the ambient context holds.
#[derive(Debug)]
struct VirtualHandle {
    shared: Arc<Shared>,
}

struct Shared {
    /// The real instant that virtual time zero maps to.
    base: Instant,
    inner: Mutex<Inner>,
    wakeup: Condvar,
}

struct Inner {
    /// Virtual time elapsed since `base`.
    offset: Duration,
    timers: BTreeMap<(Instant, u64), Waker>,
    next_timer_id: u64,
    ready: VecDeque<(usize, u64)>,
    tasks: Vec<Slot>,
    free: Vec<usize>,
    live_tasks: usize,
    main_woken: bool,
    running: bool,
    closed: bool,
}

#[derive(Default)]
struct Slot {
    generation: u64,
    /// `None` while the task is being polled, or when the slot is free.
    task: Option<BoxTask>,
    waker: Option<Waker>,
    queued: bool,
    occupied: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Instant {
        self.base + self.lock().offset
    }

    fn spawn(self: &Arc<Self>, task: BoxTask) {
        let mut inner = self.lock();
        if inner.closed {
            drop(inner);
            // Dropping the task reports a cancellation to its handle.
            drop(task);
            return;
        }
        let id = inner.free.pop().unwrap_or_else(|| {
            inner.tasks.push(Slot::default());
            inner.tasks.len() - 1
        });
        let slot = &mut inner.tasks[id];
        slot.generation += 1;
        let generation = slot.generation;
        slot.task = Some(task);
        slot.occupied = true;
        slot.queued = true;
        slot.waker = Some(Waker::from(Arc::new(TaskWaker {
            shared: Arc::downgrade(self),
            id,
            generation,
        })));
        inner.live_tasks += 1;
        inner.ready.push_back((id, generation));
        drop(inner);
        self.wakeup.notify_one();
    }

    /// Moves the clock forward by `by` and wakes every timer that is now due.
    fn advance(&self, by: Duration) {
        let due = {
            let mut inner = self.lock();
            inner.offset += by;
            let now = self.base + inner.offset;
            take_due(&mut inner, now)
        };
        due.into_iter().for_each(Waker::wake);
    }
}

fn take_due(inner: &mut Inner, now: Instant) -> Vec<Waker> {
    let later = inner.timers.split_off(&(now, u64::MAX));
    std::mem::replace(&mut inner.timers, later)
        .into_values()
        .collect()
}

struct TaskWaker {
    shared: Weak<Shared>,
    id: usize,
    generation: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut inner = shared.lock();
        let Some(slot) = inner.tasks.get_mut(self.id) else {
            return;
        };
        if !slot.occupied || slot.generation != self.generation || slot.queued {
            return;
        }
        slot.queued = true;
        inner.ready.push_back((self.id, self.generation));
        drop(inner);
        shared.wakeup.notify_one();
    }
}

struct MainWaker {
    shared: Weak<Shared>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().main_woken = true;
            shared.wakeup.notify_one();
        }
    }
}

impl Default for VirtualRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for VirtualRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.shared.lock();
        f.debug_struct("VirtualRuntime")
            .field("elapsed", &inner.offset)
            .field("live_tasks", &inner.live_tasks)
            .field("pending_timers", &inner.timers.len())
            .finish()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl VirtualRuntime {
    /// Creates a runtime whose virtual clock starts now.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = sheepdog_core::testing::VirtualRuntime::new();
    /// assert_eq!(rt.clock().elapsed(), std::time::Duration::ZERO);
    /// ```
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            base: Instant::now(),
            inner: Mutex::new(Inner {
                offset: Duration::ZERO,
                timers: BTreeMap::new(),
                next_timer_id: 0,
                ready: VecDeque::new(),
                tasks: Vec::new(),
                free: Vec::new(),
                live_tasks: 0,
                main_woken: false,
                running: false,
                closed: false,
            }),
            wakeup: Condvar::new(),
        });
        VirtualRuntime {
            handle: Arc::new(VirtualHandle {
                shared: Arc::clone(&shared),
            }),
            shared,
            deadlock_timeout: DEFAULT_DEADLOCK_TIMEOUT,
        }
    }

    /// Sets how long (in real time) `block_on` waits for a wake-up from another thread when
    /// every task is idle and no timer is pending, before it panics as deadlocked.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = sheepdog_core::testing::VirtualRuntime::new().deadlock_timeout(Duration::from_secs(1));
    /// # drop(rt);
    /// ```
    #[must_use]
    pub fn deadlock_timeout(mut self, timeout: Duration) -> Self {
        self.deadlock_timeout = timeout;
        self
    }

    /// A handle to this runtime's clock.
    pub fn clock(&self) -> VirtualClock {
        VirtualClock {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The number of spawned tasks that have not finished (and not been dropped).
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::runtime::Runtime;
    /// let rt = sheepdog_core::testing::VirtualRuntime::new();
    /// rt.block_on(async { rt.spawn(async {}).await.unwrap() });
    /// assert_eq!(rt.live_tasks(), 0);
    /// ```
    pub fn live_tasks(&self) -> usize {
        self.shared.lock().live_tasks
    }

    /// Runs every ready task once; returns how many were polled.
    fn run_ready(&self) -> usize {
        let batch = self.shared.lock().ready.len();
        let mut polled = 0;
        for _ in 0..batch {
            let (id, mut task, waker) = {
                let mut inner = self.shared.lock();
                let Some((id, generation)) = inner.ready.pop_front() else {
                    break;
                };
                let slot = &mut inner.tasks[id];
                if !slot.occupied || slot.generation != generation {
                    continue;
                }
                slot.queued = false;
                let (Some(task), Some(waker)) = (slot.task.take(), slot.waker.clone()) else {
                    continue;
                };
                (id, task, waker)
            };
            polled += 1;
            let finished = task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready();
            let mut inner = self.shared.lock();
            if finished || inner.closed {
                let slot = &mut inner.tasks[id];
                slot.occupied = false;
                slot.waker = None;
                slot.queued = false;
                inner.free.push(id);
                inner.live_tasks -= 1;
                drop(inner);
                drop(task);
            } else {
                inner.tasks[id].task = Some(task);
            }
        }
        polled
    }
}

impl Drop for VirtualRuntime {
    fn drop(&mut self) {
        let (tasks, timers, ready) = {
            let mut inner = self.shared.lock();
            inner.closed = true;
            inner.live_tasks = 0;
            inner.free.clear();
            (
                std::mem::take(&mut inner.tasks),
                std::mem::take(&mut inner.timers),
                std::mem::take(&mut inner.ready),
            )
        };
        // Dropped outside the lock: a task's destructor may spawn or touch timers.
        drop(ready);
        drop(timers);
        drop(tasks);
    }
}

impl Runtime for VirtualRuntime {
    fn spawn_boxed(&self, task: BoxTask) {
        self.shared.spawn(task);
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        self.handle.timer(deadline)
    }

    fn now(&self) -> Instant {
        self.shared.now()
    }

    fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::from_arc(Arc::clone(&self.handle) as Arc<dyn Runtime>)
    }

    /// Runs `future` to completion, running spawned tasks and moving virtual time as described
    /// in the [module documentation](self).
    ///
    /// # Panics
    ///
    /// Panics when called re-entrantly (from inside a task of the same runtime), and when every
    /// task is idle with no timer pending for longer than the deadlock timeout.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        {
            let mut inner = self.shared.lock();
            assert!(
                !inner.running,
                "VirtualRuntime::block_on called while this runtime is already running"
            );
            inner.running = true;
            inner.main_woken = true;
        }
        struct NotRunning<'a>(&'a Shared);
        impl Drop for NotRunning<'_> {
            fn drop(&mut self) {
                self.0.lock().running = false;
            }
        }
        let _running = NotRunning(&self.shared);

        let mut future = pin!(WithRuntime::new(Some(self.handle()), future));
        let main_waker = Waker::from(Arc::new(MainWaker {
            shared: Arc::downgrade(&self.shared),
        }));
        let mut cx = Context::from_waker(&main_waker);
        loop {
            let main_woken = std::mem::take(&mut self.shared.lock().main_woken);
            if main_woken {
                if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                    return output;
                }
            }
            if self.run_ready() > 0 {
                continue;
            }
            let mut inner = self.shared.lock();
            if inner.main_woken || !inner.ready.is_empty() {
                continue;
            }
            // Everything is idle: jump to the earliest timer, if there is one.
            if let Some(&(deadline, _)) = inner.timers.keys().next() {
                let now = self.shared.base + inner.offset;
                if deadline > now {
                    inner.offset = deadline - self.shared.base;
                }
                let now = self.shared.base + inner.offset;
                let due = take_due(&mut inner, now);
                drop(inner);
                due.into_iter().for_each(Waker::wake);
                continue;
            }
            // Nothing to run and no timer: only another thread can wake us now.
            let (inner, timeout) = self
                .shared
                .wakeup
                .wait_timeout_while(inner, self.deadlock_timeout, |inner| {
                    !inner.main_woken && inner.ready.is_empty() && inner.timers.is_empty()
                })
                .unwrap_or_else(PoisonError::into_inner);
            if timeout.timed_out() {
                let live = inner.live_tasks;
                drop(inner);
                panic!(
                    "VirtualRuntime deadlock: the main future and all {live} live task(s) are \
                     idle, no timer is pending, and nothing woke them for {:?}",
                    self.deadlock_timeout
                );
            }
        }
    }
}

impl Runtime for VirtualHandle {
    fn spawn_boxed(&self, task: BoxTask) {
        self.shared.spawn(task);
    }

    fn timer(&self, deadline: Instant) -> BoxTimer {
        Box::pin(VirtualTimer {
            shared: Arc::clone(&self.shared),
            deadline,
            key: None,
        })
    }

    fn now(&self) -> Instant {
        self.shared.now()
    }

    fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::from_arc(Arc::new(VirtualHandle {
            shared: Arc::clone(&self.shared),
        }))
    }

    /// # Panics
    ///
    /// Always: a handle cannot drive the runtime; call `block_on` on the [`VirtualRuntime`].
    fn block_on<F: Future>(&self, _future: F) -> F::Output {
        panic!("block_on must be called on the VirtualRuntime itself, not on a handle to it")
    }
}

/// A handle to a [`VirtualRuntime`]'s clock: read it, or move it forward.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sheepdog_core::runtime::Runtime;
/// use sheepdog_core::testing::VirtualRuntime;
/// use sheepdog_core::time;
///
/// let rt = VirtualRuntime::new();
/// let clock = rt.clock();
/// rt.block_on(async {
///     let sleeper = rt.spawn(time::sleep(Duration::from_secs(5)));
///     clock.advance(Duration::from_secs(5)); // fires the timer without waiting
///     sleeper.await.unwrap();
///     assert_eq!(clock.elapsed(), Duration::from_secs(5));
/// });
/// ```
#[derive(Clone)]
pub struct VirtualClock {
    shared: Arc<Shared>,
}

impl fmt::Debug for VirtualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl VirtualClock {
    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.shared.now()
    }

    /// Virtual time elapsed since the runtime was created.
    pub fn elapsed(&self) -> Duration {
        self.shared.lock().offset
    }

    /// Moves the clock forward by `by` and wakes every timer that is now due.
    ///
    /// The woken tasks run at the runtime's next scheduling point.
    pub fn advance(&self, by: Duration) {
        self.shared.advance(by);
    }
}

struct VirtualTimer {
    shared: Arc<Shared>,
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for VirtualTimer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut inner = this.shared.lock();
        if this.shared.base + inner.offset >= this.deadline {
            if let Some(key) = this.key.take() {
                inner.timers.remove(&key);
            }
            return Poll::Ready(());
        }
        match this.key.and_then(|key| inner.timers.get_mut(&key)) {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let key = (this.deadline, inner.next_timer_id);
                inner.next_timer_id += 1;
                inner.timers.insert(key, cx.waker().clone());
                this.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Timer for VirtualTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        let this = &mut *self;
        this.deadline = deadline;
        let mut inner = this.shared.lock();
        // Keep the registered waker under the new deadline, so a task parked on this timer is
        // still woken at the right time.
        if let Some(waker) = this.key.take().and_then(|key| inner.timers.remove(&key)) {
            let key = (deadline, inner.next_timer_id);
            inner.next_timer_id += 1;
            let now = this.shared.base + inner.offset;
            if deadline <= now {
                drop(inner);
                waker.wake();
            } else {
                inner.timers.insert(key, waker);
                this.key = Some(key);
            }
        }
    }
}

impl Drop for VirtualTimer {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.lock().timers.remove(&key);
        }
    }
}
