//! The Runtime contract, checked identically on every runtime.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures::future::poll_fn;
use sheepdog_core::runtime::{self, yield_now, JoinError};
use sheepdog_core::time;
use sheepdog_tests::{conformance, pending_until_dropped, Live};

/// A panic payload that is not a string, to prove the payload survives by type.
#[derive(Debug, PartialEq)]
struct CustomPayload(u32);

conformance! {
    /// `spawn` returns the task's output through the handle, for one task and for many awaited
    /// in spawn order.
    async fn spawn_and_await(cx) {
        let one = runtime::spawn_on(&*cx.rt, async { 40 + 2 });
        assert_eq!(one.await.unwrap(), 42);

        let handles: Vec<_> = (0..200u32)
            .map(|i| {
                cx.spawn(async move {
                    if i % 3 == 0 {
                        yield_now().await;
                    }
                    i * 2
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i as u32 * 2);
        }
    }

    /// The runtime is ambient inside the entry future, inside spawned tasks, and inside tasks
    /// those tasks spawn.
    async fn ambient_runtime_everywhere(cx) {
        assert!(runtime::current().is_some());
        let nested = cx.spawn(async {
            assert!(runtime::current().is_some());
            runtime::spawn(async { runtime::current().is_some() }).await.unwrap()
        });
        assert!(nested.await.unwrap());
    }

    /// A panic inside a task arrives as `JoinError::Panic` with the payload, string or not;
    /// the awaiter does not panic.
    async fn panic_payload_is_preserved(cx) {
        let n = std::hint::black_box(7); // a run-time value, so the payload is a `String`
        let err = cx.spawn(async move { panic!("boom {n}") }).await.unwrap_err();
        assert!(err.is_panic() && !err.is_cancelled());
        assert_eq!(err.panic_message(), Some("boom 7"));
        assert!(err.to_string().contains("boom 7"), "{err}");
        let payload = err.into_panic();
        assert_eq!(payload.downcast::<String>().ok().as_deref().map(String::as_str), Some("boom 7"));

        let err = cx.spawn(async { panic!("static") }).await.unwrap_err();
        assert_eq!(err.panic_message(), Some("static"));
        assert_eq!(err.into_panic().downcast::<&str>().ok().map(|p| *p), Some("static"));

        let err = cx.spawn(async { std::panic::panic_any(CustomPayload(9)) })
            .await
            .unwrap_err();
        assert_eq!(err.panic_message(), None);
        let payload = err.into_panic();
        assert_eq!(payload.downcast::<CustomPayload>().ok().map(|p| *p), Some(CustomPayload(9)));

        // The runtime is still healthy after a task panicked.
        assert_eq!(cx.spawn(async { 1 }).await.unwrap(), 1);
    }

    /// `abort` drops the task's future and the handle reports `Cancelled`.
    async fn abort_cancels_a_pending_task(cx) {
        let (never, dropped) = pending_until_dropped();
        let handle = cx.spawn(never);
        yield_now().await;
        handle.abort();
        handle.abort(); // idempotent
        let err = handle.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert!(matches!(err, JoinError::Cancelled));
        // By the time the handle reports, the future's destructors have run.
        assert_eq!(dropped.now_or_never_ready(), Some(()));
    }

    /// Aborting a task that already finished keeps its output.
    async fn abort_after_completion_keeps_output(cx) {
        let handle = cx.spawn(async { 5 });
        while !handle.is_finished() {
            yield_now().await;
        }
        handle.abort();
        assert_eq!(handle.await.unwrap(), 5);
    }

    /// An `AbortHandle` cancels the task without owning its output.
    async fn abort_handle_cancels(cx) {
        let handle = cx.spawn(futures::future::pending::<()>());
        let abort = handle.abort_handle();
        assert!(!abort.is_finished());
        abort.clone().abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        assert!(abort.is_finished());
    }

    /// Dropping a `JoinHandle` aborts its task, on every runtime (smol's rule, not tokio's).
    async fn dropping_the_handle_aborts(cx) {
        let (never, dropped) = pending_until_dropped();
        let handle = cx.spawn(never);
        drop(handle);
        dropped.await.expect("the task's future was dropped");
    }

    /// A detached task runs to completion without its handle.
    async fn detach_lets_the_task_finish(cx) {
        let (tx, rx) = futures::channel::oneshot::channel();
        cx.spawn(async move {
            for _ in 0..3 {
                yield_now().await;
            }
            tx.send("finished").unwrap();
        })
        .detach();
        assert_eq!(rx.await.unwrap(), "finished");
    }

    /// A handle can be awaited from a task other than the spawner, and a dropped `.await` on a
    /// handle loses nothing.
    async fn handle_moves_between_tasks(cx) {
        let (go, wait) = futures::channel::oneshot::channel::<()>();
        let mut inner = cx.spawn(async move {
            wait.await.unwrap();
            "payload"
        });
        // Poll once and drop that await: the output must still arrive later.
        let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut inner).poll(cx).is_pending())).await;
        assert!(first, "the task cannot finish before it is told to");
        go.send(()).unwrap();
        let waiter = cx.spawn(async move { inner.await.unwrap() });
        assert_eq!(waiter.await.unwrap(), "payload");
    }

    /// Sleeps never end early, by the runtime's own clock, for zero, short and slightly longer
    /// durations, and for `sleep_until`.
    async fn sleep_never_wakes_early(cx) {
        for millis in [0u64, 1, 3, 10] {
            let duration = Duration::from_millis(millis);
            let start = time::now();
            time::sleep(duration).await;
            assert!(time::now() >= start + duration, "slept {millis} ms on {:?}", cx.flavor);
        }
        let deadline = cx.rt.now() + Duration::from_millis(4);
        time::sleep_until(deadline).await;
        assert!(cx.rt.now() >= deadline);
        // A deadline in the past completes at once.
        time::sleep_until(deadline - Duration::from_millis(1)).await;
    }

    /// `now` never goes backwards, and the ambient clock is the runtime's clock.
    async fn now_is_monotonic_and_agrees_with_the_runtime(cx) {
        let mut last = cx.rt.now();
        for _ in 0..100 {
            let ambient = time::now();
            let direct = cx.rt.now();
            assert!(last <= ambient && ambient <= direct);
            last = direct;
            yield_now().await;
        }
        let before = cx.rt.now();
        time::sleep(Duration::from_millis(2)).await;
        assert!(cx.rt.now() >= before + Duration::from_millis(2));
    }

    /// A runtime timer can be re-armed earlier while a task is parked on it.
    async fn timer_reset_rearms(cx) {
        let far = cx.rt.now() + Duration::from_secs(3600);
        let mut timer = cx.rt.timer(far);
        // Register the timer, then move its deadline close.
        assert!(poll_fn(|cx| Poll::Ready(timer.as_mut().poll(cx).is_pending())).await);
        let near = cx.rt.now() + Duration::from_millis(2);
        timer.as_mut().reset(near);
        timer.await;
        assert!(cx.rt.now() >= near);
        assert!(cx.rt.now() < far);
    }

    /// The live counter sees every task's future dropped once its handle reported.
    async fn no_future_outlives_its_outcome(cx) {
        let live = Live::new();
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let guard = live.guard();
                cx.spawn(async move {
                    let _guard = guard;
                    if i % 2 == 0 {
                        futures::future::pending::<()>().await;
                    }
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            if i % 2 == 0 {
                handle.abort();
                assert!(handle.await.unwrap_err().is_cancelled());
            } else {
                handle.await.unwrap();
            }
        }
        assert_eq!(live.count(), 0);
    }
}

/// Lets a test peek at a oneshot receiver without awaiting it.
trait NowOrNever {
    fn now_or_never_ready(self) -> Option<()>;
}

impl NowOrNever for futures::channel::oneshot::Receiver<()> {
    fn now_or_never_ready(mut self) -> Option<()> {
        self.try_recv().ok().flatten()
    }
}
