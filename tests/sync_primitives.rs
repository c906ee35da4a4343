//! Lock, Semaphore, CapacityLimiter, Event and Condition: the reference's §5 checklists on
//! every runtime and both spawn paths, FIFO order with 10,000 waiters, waits inside cancelled
//! scopes, poll-level lost-wake-up checks with counting wakers, deadlines on virtual time, a
//! plain-thread stress test and a property test of acquire/cancel/drop sequences.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::join;
use futures::FutureExt;
use sheepdog_core::cancel::{fail_after, move_on_after, CancelScope};
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_core::sync::{
    CapacityLimiter, CapacityLimiterError, Condition, Event, Lock, Semaphore, SemaphoreError,
    WouldBlock,
};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::{conformance, CountingWaker};

/// How many waiters the FIFO tests queue (100 under miri).
#[allow(clippy::cast_possible_truncation, reason = "at most 10,000")]
const FIFO_WAITERS: usize = sheepdog_tests::scaled(10_000, 100) as usize;

/// Yields until `condition` holds (other tasks make it true).
async fn until(condition: impl Fn() -> bool) {
    while !condition() {
        yield_now().await;
    }
}

/// Tracks how many holders are inside a critical section at once, and the most ever seen.
#[derive(Default)]
struct Occupancy {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Occupancy {
    async fn hold(&self, n: usize) {
        let inside = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.max.fetch_max(inside, Ordering::SeqCst);
        yield_now().await;
        self.now.fetch_sub(n, Ordering::SeqCst);
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Tasks queued in a known order, and the order in which they got in.
struct Fifo {
    tasks: Vec<sheepdog_core::JoinHandle<()>>,
    order: Arc<Mutex<Vec<usize>>>,
}

impl Fifo {
    /// Queues `n` tasks one after another (each is in line before the next is spawned).
    async fn queue<Q, F>(
        cx: &sheepdog_tests::Cx,
        n: usize,
        waiting: impl Fn() -> usize,
        task: Q,
    ) -> Fifo
    where
        Q: Fn(usize, Arc<Mutex<Vec<usize>>>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let order = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tasks.push(cx.spawn(task(i, Arc::clone(&order))));
            until(|| waiting() == i + 1).await;
        }
        Fifo { tasks, order }
    }

    /// Awaits every task and checks they got in exactly in the order they queued.
    async fn check(self) {
        let n = self.tasks.len();
        for task in self.tasks {
            task.await.unwrap();
        }
        let order = self.order.lock().unwrap();
        let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
        assert_eq!(inversions, 0, "admitted out of order");
        assert_eq!(*order, (0..n).collect::<Vec<_>>());
    }
}

conformance! {
    /// Only one holder at a time, across many tasks that wait inside the critical section.
    async fn lock_excludes(cx) {
        let lock = Arc::new(Lock::new());
        let occupancy = Arc::new(Occupancy::default());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (lock, occupancy) = (Arc::clone(&lock), Arc::clone(&occupancy));
                cx.spawn(async move {
                    for _ in 0..5 {
                        let _guard = lock.lock().await;
                        occupancy.hold(1).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(occupancy.max(), 1);
        assert!(!lock.locked());
    }

    /// Unlocking hands the lock to the oldest waiter: a newcomer's `try_lock` fails even
    /// before the waiter runs, and the waiter then holds it.
    async fn lock_hands_off_without_barging(cx) {
        let lock = Arc::new(Lock::new());
        let guard = lock.try_lock().unwrap();
        let (l, done) = (Arc::clone(&lock), Arc::new(Event::new()));
        let d = Arc::clone(&done);
        let waiter = cx.spawn(async move {
            let _guard = l.lock().await;
            d.wait().await;
            "got it"
        });
        until(|| lock.statistics().tasks_waiting == 1).await;
        drop(guard);
        // Whether or not the waiter has run yet, the lock is its own.
        assert_eq!(lock.try_lock().unwrap_err(), WouldBlock);
        assert!(lock.locked());
        done.set();
        assert_eq!(waiter.await.unwrap(), "got it");
        assert!(!lock.statistics().locked);
        assert!(lock.try_lock().is_ok());
    }

    /// Not reentrant: the holder asking again waits (for itself), it does not get it twice.
    async fn lock_is_not_reentrant(cx) {
        let lock = Lock::new();
        let _guard = lock.lock().await;
        assert!(lock.try_lock().is_err());
        let mut again = pin!(lock.lock());
        assert!(again.as_mut().now_or_never().is_none());
        assert_eq!(lock.statistics().tasks_waiting, 1);
    }

    /// FIFO: 10,000 tasks get the lock in exactly the order they asked (zero inversions).
    async fn lock_is_fifo_with_10000_waiters(cx) {
        let lock = Arc::new(Lock::new());
        let guard = lock.try_lock().unwrap();
        let fifo = Fifo::queue(&cx, FIFO_WAITERS, || lock.statistics().tasks_waiting, |i, order| {
            let lock = Arc::clone(&lock);
            async move {
                let _guard = lock.lock().await;
                order.lock().unwrap().push(i);
            }
        })
        .await;
        drop(guard);
        fifo.check().await;
    }

    /// FIFO for a semaphore: 10,000 waiters, one permit, admitted in arrival order.
    async fn semaphore_is_fifo_with_10000_waiters(cx) {
        let sem = Arc::new(Semaphore::new(0));
        let fifo = Fifo::queue(&cx, FIFO_WAITERS, || sem.statistics().tasks_waiting, |i, order| {
            let sem = Arc::clone(&sem);
            async move {
                let _permit = sem.acquire().await;
                order.lock().unwrap().push(i);
            }
        })
        .await;
        sem.release(1).unwrap();
        fifo.check().await;
        assert_eq!(sem.value(), 1);
    }

    /// FIFO for a capacity limiter with zero tokens, opened to one.
    async fn limiter_is_fifo_with_10000_waiters(cx) {
        let limiter = Arc::new(CapacityLimiter::new(0));
        let fifo = Fifo::queue(&cx, FIFO_WAITERS, || limiter.statistics().tasks_waiting, |i, order| {
            let limiter = Arc::clone(&limiter);
            async move {
                let _token = limiter.acquire().await;
                order.lock().unwrap().push(i);
            }
        })
        .await;
        limiter.set_total_tokens(1).unwrap();
        fifo.check().await;
        assert_eq!(limiter.borrowed_tokens(), 0);
    }

    /// A wait inside a cancelled scope gives up, and a lock handed to it passes on.
    async fn lock_wait_cancelled_by_scope(cx) {
        let lock = Arc::new(Lock::new());
        let guard = lock.try_lock().unwrap();
        // Cancelled while waiting.
        let scope = CancelScope::new();
        let (s, l) = (scope.clone(), Arc::clone(&lock));
        let cancelled = cx.spawn(async move { s.run(l.lock().map(drop)).await });
        until(|| lock.statistics().tasks_waiting == 1).await;
        scope.cancel();
        assert_eq!(cancelled.await.unwrap(), None);
        assert!(scope.cancelled_caught());
        assert_eq!(lock.statistics().tasks_waiting, 0);
        // Cancelled after the hand-off, before it ran: the next waiter gets the lock.
        let scope = CancelScope::new();
        let mut first = pin!(scope.run(lock.lock().map(drop)));
        assert!(first.as_mut().now_or_never().is_none());
        let mut second = pin!(lock.lock());
        assert!(second.as_mut().now_or_never().is_none());
        drop(guard); // handed to `first`
        scope.cancel();
        assert_eq!(first.as_mut().now_or_never(), Some(None));
        let guard = second.as_mut().now_or_never().expect("passed to the second waiter");
        drop(guard);
        assert!(!lock.locked());
    }

    /// A wait inside an already cancelled scope never completes, even when it could at once
    /// (an uncontended lock, a set event): waits are cancellation points.
    async fn waits_are_cancellation_points(cx) {
        let lock = Lock::new();
        let sem = Semaphore::new(1);
        let limiter = CapacityLimiter::new(1);
        let event = Event::new();
        event.set();
        let reached = AtomicUsize::new(0);
        let scope = CancelScope::new();
        scope.cancel();
        let out = scope
            .run(async {
                let _l = lock.lock().await;
                reached.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        assert_eq!(out, None);
        let cancelled = || {
            let scope = CancelScope::new();
            scope.cancel();
            scope
        };
        assert_eq!(cancelled().run(sem.acquire().map(drop)).await, None);
        assert_eq!(cancelled().run(limiter.acquire().map(drop)).await, None);
        assert_eq!(cancelled().run(event.wait()).await, None);
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        assert!(!lock.locked() && sem.value() == 1 && limiter.borrowed_tokens() == 0);
    }

    /// Semaphore: counting, nowait, max value, weighted requests at the head of the line.
    async fn semaphore_basics(cx) {
        let sem = Arc::new(Semaphore::with_max_value(2, 3).unwrap());
        let a = sem.acquire().await;
        let b = sem.try_acquire().unwrap();
        assert_eq!(sem.value(), 0);
        assert_eq!(sem.try_acquire().unwrap_err(), WouldBlock);
        let s = Arc::clone(&sem);
        let big = cx.spawn(async move { s.acquire_many(2).await.map(|g| g.permits()) });
        until(|| sem.statistics().tasks_waiting == 1).await;
        drop(a);
        // One permit is free but the head of the line wants two: no barging.
        assert_eq!(sem.try_acquire().unwrap_err(), WouldBlock);
        drop(b);
        assert_eq!(big.await.unwrap(), Ok(2));
        assert_eq!(sem.value(), 2);
        sem.release(1).unwrap();
        assert_eq!(
            sem.release(1),
            Err(SemaphoreError::AboveMaxValue { value: 3, max_value: 3 })
        );
        assert!(matches!(
            sem.acquire_many(4).await,
            Err(SemaphoreError::TooManyPermits { requested: 4, limit: 3 })
        ));
        assert_eq!(sem.acquire_many(0).await.unwrap_err(), SemaphoreError::ZeroPermits);
    }

    /// At most `n` tasks hold a semaphore at once.
    async fn semaphore_bounds_concurrency(cx) {
        let sem = Arc::new(Semaphore::new(3));
        let occupancy = Arc::new(Occupancy::default());
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (sem, occupancy) = (Arc::clone(&sem), Arc::clone(&occupancy));
                cx.spawn(async move {
                    let n = 1 + i % 2;
                    for _ in 0..4 {
                        let _permits = sem.acquire_many(n).await.unwrap();
                        occupancy.hold(n).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(occupancy.max() <= 3);
        assert_eq!(sem.value(), 3);
    }

    /// Event: waiters on every task wake when it is set; it stays set.
    async fn event_wakes_everyone(cx) {
        let event = Arc::new(Event::new());
        let woken = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (event, woken) = (Arc::clone(&event), Arc::clone(&woken));
                cx.spawn(async move {
                    event.wait().await;
                    woken.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        until(|| event.tasks_waiting() == 10).await;
        assert_eq!(woken.load(Ordering::SeqCst), 0);
        event.set();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(woken.load(Ordering::SeqCst), 10);
        assert!(event.is_set());
        event.wait().await;
    }

    /// Condition: `notify(1)` wakes exactly the oldest waiter, `notify_all` the rest, and
    /// each wakes holding the lock.
    async fn condition_notify_order(cx) {
        let cond = Arc::new(Condition::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (c, o) = (Arc::clone(&cond), Arc::clone(&order));
            tasks.push(cx.spawn(async move {
                let guard = c.lock().await;
                let _guard = guard.wait().await;
                assert!(c.try_lock().is_err(), "woken holding the lock");
                o.lock().unwrap().push(i);
            }));
            until(|| cond.statistics().tasks_waiting == i + 1).await;
        }
        for woken in 1..=2 {
            assert_eq!(cond.lock().await.notify(1), 1);
            until(|| order.lock().unwrap().len() == woken).await;
            assert_eq!(cond.statistics().tasks_waiting, 4 - woken);
        }
        assert_eq!(*order.lock().unwrap(), [0, 1], "notified oldest first");
        assert_eq!(cond.lock().await.notify_all(), 2);
        for task in tasks {
            task.await.unwrap();
        }
        // Waiters notified together take the lock back in the order they run.
        let mut order = order.lock().unwrap().clone();
        order[2..].sort_unstable();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    /// Condition: a notification handed to a waiter that is then cancelled passes to the
    /// next waiter.
    async fn condition_hands_notification_over_on_cancel(cx) {
        let cond = Arc::new(Condition::new());
        let scope = CancelScope::new();
        let (s, c) = (scope.clone(), Arc::clone(&cond));
        let first = cx.spawn(async move {
            let guard = c.lock().await;
            s.run(guard.wait().map(drop)).await
        });
        until(|| cond.statistics().tasks_waiting == 1).await;
        let c = Arc::clone(&cond);
        let second = cx.spawn(async move {
            let guard = c.lock().await;
            drop(guard.wait().await);
            "second woke"
        });
        until(|| cond.statistics().tasks_waiting == 2).await;
        {
            // Notify while holding the lock, and cancel the notified waiter before it can
            // take the lock back.
            let guard = cond.lock().await;
            assert_eq!(guard.notify(1), 1);
            scope.cancel();
        }
        assert_eq!(first.await.unwrap(), None);
        assert_eq!(second.await.unwrap(), "second woke");
        assert_eq!(cond.statistics().tasks_waiting, 0);
        assert!(!cond.statistics().lock_statistics.locked);
    }

    /// CapacityLimiter: zero tokens, growing wakes exactly that many waiters, shrinking evicts
    /// nobody, statistics.
    async fn limiter_resizing(cx) {
        let limiter = Arc::new(CapacityLimiter::new(0));
        let got = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Event::new());
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (limiter, got, release) =
                    (Arc::clone(&limiter), Arc::clone(&got), Arc::clone(&release));
                cx.spawn(async move {
                    let _token = limiter.acquire().await;
                    got.fetch_add(1, Ordering::SeqCst);
                    release.wait().await;
                })
            })
            .collect();
        until(|| limiter.statistics().tasks_waiting == 5).await;
        limiter.set_total_tokens(2).unwrap();
        until(|| got.load(Ordering::SeqCst) == 2).await;
        let stats = limiter.statistics();
        assert_eq!((stats.borrowed_tokens, stats.total_tokens, stats.tasks_waiting), (2, 2, 3));
        limiter.set_total_tokens(1).unwrap();
        assert_eq!(limiter.borrowed_tokens(), 2, "nobody evicted");
        assert_eq!(limiter.available_tokens(), 0);
        limiter.set_total_tokens(CapacityLimiter::MAX_TOKENS).unwrap();
        release.set();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(got.load(Ordering::SeqCst), 5);
        assert_eq!(limiter.borrowed_tokens(), 0);
        assert_eq!(
            limiter.set_total_tokens(CapacityLimiter::MAX_TOKENS + 1),
            Err(CapacityLimiterError::TooManyTokens { max: CapacityLimiter::MAX_TOKENS })
        );
    }

    /// CapacityLimiter: one token per named borrower, typed misuse errors, a cancelled
    /// named acquisition leaves nothing behind.
    async fn limiter_borrowers(cx) {
        let limiter = Arc::new(CapacityLimiter::new(1));
        limiter.acquire_on_behalf_of(1_u32).await.unwrap();
        assert_eq!(
            limiter.acquire_on_behalf_of(1_u32).await,
            Err(CapacityLimiterError::AlreadyBorrowing)
        );
        assert_eq!(limiter.release_on_behalf_of(&2_u32), Err(CapacityLimiterError::NotBorrowing));
        assert_eq!(limiter.try_acquire_on_behalf_of(2_u32), Err(CapacityLimiterError::WouldBlock));
        let l = Arc::clone(&limiter);
        let waiter = cx.spawn(async move { l.acquire_on_behalf_of(2_u32).await });
        until(|| limiter.statistics().tasks_waiting == 1).await;
        // Waiting for a token already counts as borrowing for a second request...
        assert_eq!(
            limiter.try_acquire_on_behalf_of(2_u32),
            Err(CapacityLimiterError::AlreadyBorrowing)
        );
        // ...but not for a release.
        assert_eq!(limiter.release_on_behalf_of(&2_u32), Err(CapacityLimiterError::NotBorrowing));
        // A freed token is reserved for the waiter (AnyIO #1170): no over-subscription.
        limiter.release_on_behalf_of(&1_u32).unwrap();
        assert!(limiter.try_acquire().is_err());
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(limiter.statistics().borrowers, 1);
        // Cancelled while waiting: borrower 3 holds nothing afterwards.
        assert_eq!(move_on_after_free(&limiter).await, None);
        assert_eq!(limiter.release_on_behalf_of(&3_u32), Err(CapacityLimiterError::NotBorrowing));
        limiter.release_on_behalf_of(&2_u32).unwrap();
        limiter.acquire_on_behalf_of(3_u32).await.unwrap();
        limiter.release_on_behalf_of(&3_u32).unwrap();
        assert_eq!(limiter.borrowed_tokens(), 0);
    }
}

/// Runs borrower 3's acquisition in a scope that is cancelled once it waits.
async fn move_on_after_free(limiter: &CapacityLimiter) -> Option<Result<(), CapacityLimiterError>> {
    let scope = CancelScope::new();
    let s = scope.clone();
    let (out, ()) = join(scope.run(limiter.acquire_on_behalf_of(3_u32)), async move {
        yield_now().await;
        s.cancel();
    })
    .await;
    out
}

// ---------------------------------------------------------------------------------------------
// Poll level: lost and spurious wake-ups, with counting wakers.

fn poll_with<F: Future>(future: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(waker))
}

/// A release wakes exactly the waiter it hands the permit to — once — and nobody else.
#[test]
fn release_wakes_only_the_head_once() {
    let sem = Semaphore::new(1);
    let held = sem.try_acquire().unwrap();
    let (first_wakes, first_waker) = CountingWaker::new();
    let (second_wakes, second_waker) = CountingWaker::new();
    let mut first = pin!(sem.acquire());
    let mut second = pin!(sem.acquire());
    assert!(poll_with(first.as_mut(), &first_waker).is_pending());
    assert!(poll_with(second.as_mut(), &second_waker).is_pending());
    drop(held);
    assert_eq!((first_wakes.wakes(), second_wakes.wakes()), (1, 0));
    let permit = match poll_with(first.as_mut(), &first_waker) {
        Poll::Ready(permit) => permit,
        Poll::Pending => panic!("the woken waiter holds the permit"),
    };
    assert!(poll_with(second.as_mut(), &second_waker).is_pending());
    drop(permit);
    assert_eq!((first_wakes.wakes(), second_wakes.wakes()), (1, 1));
}

/// A waiter that is granted and then dropped wakes the next one (the permit passed on).
#[test]
fn dropping_a_granted_waiter_wakes_the_next() {
    let lock = Lock::new();
    let held = lock.try_lock().unwrap();
    let (_, first_waker) = CountingWaker::new();
    let (second_wakes, second_waker) = CountingWaker::new();
    let mut first = Box::pin(lock.lock());
    let mut second = pin!(lock.lock());
    assert!(poll_with(first.as_mut(), &first_waker).is_pending());
    assert!(poll_with(second.as_mut(), &second_waker).is_pending());
    drop(held);
    assert_eq!(second_wakes.wakes(), 0);
    drop(first);
    assert_eq!(second_wakes.wakes(), 1);
    assert!(poll_with(second.as_mut(), &second_waker).is_ready());
}

/// The waker of the latest poll is the one woken (a task that moved is not lost), and a
/// finished or dropped waiter keeps no waker.
#[test]
fn latest_waker_is_woken_and_none_is_kept() {
    let limiter = CapacityLimiter::new(1);
    let token = limiter.try_acquire().unwrap();
    let (old_wakes, old_waker) = CountingWaker::new();
    let (new_wakes, new_waker) = CountingWaker::new();
    {
        let mut waiter = pin!(limiter.acquire());
        assert!(poll_with(waiter.as_mut(), &old_waker).is_pending());
        assert!(poll_with(waiter.as_mut(), &new_waker).is_pending());
        drop(token);
        assert_eq!((old_wakes.wakes(), new_wakes.wakes()), (0, 1));
        assert!(poll_with(waiter.as_mut(), &new_waker).is_ready());
    }
    let event = Event::new();
    {
        let mut wait = pin!(event.wait());
        assert!(poll_with(wait.as_mut(), &old_waker).is_pending());
    }
    event.set();
    drop((old_waker, new_waker));
    assert_eq!(Arc::strong_count(&old_wakes), 1, "no waker kept");
    assert_eq!(Arc::strong_count(&new_wakes), 1, "no waker kept");
    assert_eq!(old_wakes.wakes(), 0, "a dropped wait is not woken");
}

/// A semaphore waiter cancelled through its scope (the scope wrapper is polled by hand)
/// wakes the next waiter when it gives up a permit it was handed.
#[test]
fn scope_cancel_after_hand_off_wakes_the_next() {
    let sem = Semaphore::new(0);
    let scope = CancelScope::new();
    let (first_wakes, first_waker) = CountingWaker::new();
    let (second_wakes, second_waker) = CountingWaker::new();
    let mut first = pin!(scope.run(sem.acquire_many(2)));
    let mut second = pin!(sem.acquire_many(2));
    assert!(poll_with(first.as_mut(), &first_waker).is_pending());
    assert!(poll_with(second.as_mut(), &second_waker).is_pending());
    sem.release(2).unwrap();
    scope.cancel();
    assert!(first_wakes.wakes() >= 1);
    assert!(matches!(
        poll_with(first.as_mut(), &first_waker),
        Poll::Ready(None)
    ));
    assert_eq!(second_wakes.wakes(), 1);
    match poll_with(second.as_mut(), &second_waker) {
        Poll::Ready(Ok(permits)) => assert_eq!(permits.permits(), 2),
        other => panic!("expected both permits, got {other:?}"),
    };
}

// ---------------------------------------------------------------------------------------------
// Deadlines, on virtual time only.

const SEC: Duration = Duration::from_secs(1);

/// Waits under `fail_after` give up exactly at the deadline and leave the line; a limiter's
/// token freed later goes to whoever waits then.
#[test]
fn waits_time_out_on_virtual_time() {
    let rt = VirtualRuntime::new();
    rt.block_on(async {
        let start = time::now();
        let limiter = CapacityLimiter::new(1);
        let token = limiter.acquire().await;
        assert!(fail_after(3 * SEC, limiter.acquire()).await.is_err());
        assert_eq!(time::now(), start + 3 * SEC);
        assert_eq!(limiter.statistics().tasks_waiting, 0);
        let event = Event::new();
        assert_eq!(move_on_after(2 * SEC, event.wait()).await, None);
        let lock = Lock::new();
        let _held = lock.lock().await;
        assert!(fail_after(SEC, lock.lock()).await.is_err());
        assert_eq!(lock.statistics().tasks_waiting, 0);
        // Freed later, while another waits with a longer deadline: that one gets it in time.
        let (got, ()) = join(fail_after(10 * SEC, limiter.acquire()), async {
            time::sleep(4 * SEC).await;
            drop(token);
        })
        .await;
        assert!(got.is_ok());
        assert_eq!(time::now(), start + 10 * SEC);
    });
}

// ---------------------------------------------------------------------------------------------
// Plain threads.

/// 50 threads each acquire a 4-permit semaphore `rounds` times through `block_on`; the
/// permits in use never exceed 4 and all are back at the end.
fn thread_stress(rounds: usize) {
    const THREADS: usize = 50;
    const PERMITS: usize = 4;
    let sem = Arc::new(Semaphore::new(PERMITS));
    let in_use = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (sem, in_use) = (Arc::clone(&sem), Arc::clone(&in_use));
            std::thread::spawn(move || {
                for i in 0..rounds {
                    let permit = if (t + i) % 3 == 0 {
                        match sem.try_acquire() {
                            Ok(permit) => permit,
                            Err(WouldBlock) => continue,
                        }
                    } else {
                        futures::executor::block_on(sem.acquire())
                    };
                    let inside = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(inside <= PERMITS, "{inside} holders of {PERMITS} permits");
                    in_use.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(sem.value(), PERMITS);
    assert_eq!(sem.statistics().tasks_waiting, 0);
}

/// The default size: 50 threads × 1,000 acquisitions (fast in debug builds).
#[test]
fn threads_never_exceed_the_limit() {
    thread_stress(if cfg!(miri) { 10 } else { 1_000 });
}

/// The size: 50 threads × 10,000 acquisitions. Run with
/// `cargo test -p sheepdog-tests --test sync_primitives -- --ignored`.
#[test]
#[ignore = "slow in debug builds; run explicitly"]
fn threads_never_exceed_the_limit_full_size() {
    thread_stress(10_000);
}

// ---------------------------------------------------------------------------------------------
// Property: random acquire / cancel / drop sequences never lose or duplicate a permit.

mod prop {
    use super::*;
    use proptest::prelude::*;
    use sheepdog_core::sync::SemaphoreGuard;

    const TOTAL: usize = 4;

    #[derive(Debug, Clone)]
    enum Op {
        /// Start waiting for `n` permits (polled once).
        Acquire(usize),
        /// Take permits without waiting.
        TryAcquire(usize),
        /// Poll every pending acquisition once.
        Settle,
        /// Drop the pending acquisition at this index (cancel it).
        Cancel(usize),
        /// Drop the guard at this index.
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1..=TOTAL).prop_map(Op::Acquire),
            (1..=TOTAL).prop_map(Op::TryAcquire),
            Just(Op::Settle),
            any::<usize>().prop_map(Op::Cancel),
            any::<usize>().prop_map(Op::Release),
        ]
    }

    type Pending<'a> = (
        usize,
        usize,
        Pin<Box<dyn Future<Output = Result<SemaphoreGuard<'a>, SemaphoreError>> + 'a>>,
    );

    /// Polls every pending acquisition in arrival order; checks that only the oldest can have
    /// completed (FIFO) and that after settling nobody who could be served still waits.
    fn settle<'a>(
        pending: &mut Vec<Pending<'a>>,
        held: &mut Vec<SemaphoreGuard<'a>>,
        sem: &Semaphore,
    ) {
        let waker = Waker::noop();
        let mut still = Vec::new();
        for (id, n, mut future) in pending.drain(..) {
            match future.as_mut().poll(&mut Context::from_waker(waker)) {
                Poll::Ready(guard) => {
                    assert!(still.is_empty(), "waiter {id} served before an older one");
                    let guard = guard.unwrap();
                    assert_eq!(guard.permits(), n);
                    held.push(guard);
                }
                Poll::Pending => still.push((id, n, future)),
            }
        }
        *pending = still;
        if let Some((_, n, _)) = pending.first() {
            assert!(*n > sem.value(), "the head could be served but waits");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]

        #[test]
        fn no_permit_is_lost(ops in proptest::collection::vec(op(), 1..64)) {
            let sem = Semaphore::new(TOTAL);
            let mut pending: Vec<Pending<'_>> = Vec::new();
            let mut held: Vec<SemaphoreGuard<'_>> = Vec::new();
            for (id, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Acquire(n) => {
                        pending.push((id, n, Box::pin(sem.acquire_many(n))));
                        settle(&mut pending, &mut held, &sem);
                    }
                    Op::TryAcquire(n) => {
                        if let Ok(guard) = sem.try_acquire_many(n) {
                            prop_assert!(pending.is_empty(), "barged past waiters");
                            held.push(guard);
                        }
                    }
                    Op::Settle => settle(&mut pending, &mut held, &sem),
                    Op::Cancel(i) if !pending.is_empty() => {
                        let i = i % pending.len();
                        drop(pending.remove(i));
                    }
                    Op::Release(i) if !held.is_empty() => {
                        let i = i % held.len();
                        drop(held.remove(i));
                    }
                    Op::Cancel(_) | Op::Release(_) => {}
                }
                settle(&mut pending, &mut held, &sem);
                let in_hand: usize = held.iter().map(SemaphoreGuard::permits).sum();
                prop_assert_eq!(in_hand + sem.value(), TOTAL);
                prop_assert_eq!(sem.statistics().tasks_waiting, pending.len());
            }
            drop(pending);
            drop(held);
            prop_assert_eq!(sem.value(), TOTAL);
            prop_assert_eq!(sem.statistics().tasks_waiting, 0);
        }
    }
}
