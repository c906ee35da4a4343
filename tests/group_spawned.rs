//! Spawned (parallel) task groups: the task-group checklist with children on the runtime, on
//! every runtime, through the adapter's concrete type and through the ambient handle.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::{join, pending};
use futures::FutureExt;
use sheepdog_core::cancel::{shield, CancelScope};
use sheepdog_core::group::{
    spawn_group, spawn_group_on, GroupClosed, GroupError, GroupRuntime, SpawnGroup, StartError,
    Started, TaskError,
};
use sheepdog_core::runtime::yield_now;
use sheepdog_tests::{conformance, forever, with_group_runtime, Live};
use std::future::Future;

/// Yields until `live` drops to zero (spawned children are dropped by their runtime).
async fn until_zero(live: &Live) {
    for _ in 0..100_000 {
        if live.count() == 0 {
            return;
        }
        yield_now().await;
    }
    panic!("{} children still alive", live.count());
}

async fn results_in_order<S: GroupRuntime>(tg: SpawnGroup<String, S>) -> Result<u64, String> {
    let handles: Vec<_> = (1..=100u64)
        .map(|i| {
            tg.spawn(async move {
                if i % 3 == 0 {
                    yield_now().await;
                }
                Ok(i)
            })
        })
        .collect();
    let mut sum = 0;
    for handle in handles {
        sum += handle.await.map_err(|e| e.to_string())?;
    }
    Ok(sum)
}

async fn first_error_cancels<S: GroupRuntime>(
    tg: SpawnGroup<&'static str, S>,
    live: Live,
) -> Result<(), &'static str> {
    for _ in 0..4 {
        tg.spawn(forever::<Result<(), _>>(&live));
    }
    tg.spawn(async {
        yield_now().await;
        Err::<(), _>("first")
    });
    let _guard = live.guard();
    pending::<()>().await;
    Ok(())
}

async fn start_cases<S: GroupRuntime>(
    tg: SpawnGroup<String, S>,
) -> Result<Vec<Result<u16, StartError<String>>>, String> {
    let ok = tg
        .start(|s: Started<u16, String>| async move {
            s.started(1);
            yield_now().await;
            Ok(())
        })
        .await;
    let failed = tg
        .start(|_s: Started<u16, String>| async move { Err("bind".to_owned()) })
        .await;
    let not_started = tg
        .start(|_s: Started<u16, String>| async move { Ok(()) })
        .await;
    Ok(vec![ok, failed, not_started])
}

async fn waits_under_outer_cancel<S: GroupRuntime>(
    tg: SpawnGroup<(), S>,
    live: Live,
    cleaned: Arc<AtomicUsize>,
) -> Result<(), ()> {
    for _ in 0..3 {
        tg.spawn(forever::<Result<(), _>>(&live));
    }
    let guard = CleanupOnDrop(cleaned);
    tg.spawn(async move {
        let _guard = guard;
        pending::<()>().await;
        Ok(())
    });
    Ok(())
}

/// Counts its drop.
struct CleanupOnDrop(Arc<AtomicUsize>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

conformance! {
    /// Children run on the runtime; handles give their results.
    async fn spawned_children_return_results(cx) {
        let out = with_group_runtime!(cx, |rt| spawn_group_on(rt, results_in_order).await);
        assert_eq!(out, Ok((1..=100).sum()));
    }

    /// The first error cancels every sibling and the body; the error comes back bare, and
    /// every child is gone when the group returns.
    async fn spawned_first_error_cancels_siblings(cx) {
        let live = Live::new();
        let out = with_group_runtime!(cx, |rt| {
            spawn_group_on(rt, |tg| first_error_cancels(tg, live.clone())).await
        });
        assert_eq!(out, Err(GroupError::Failed("first")));
        assert_eq!(live.count(), 0, "the group returned before its children were gone");
    }

    /// start: value, failure before started (to the caller), no started.
    async fn spawned_start(cx) {
        let out = with_group_runtime!(cx, |rt| spawn_group_on(rt, start_cases).await);
        assert_eq!(
            out,
            Ok(vec![
                Ok(1),
                Err(StartError::Failed("bind".to_owned())),
                Err(StartError::NotStarted),
            ])
        );
    }

    /// A failure after `started` goes to the group.
    async fn spawned_failure_after_started(cx) {
        let out: Result<u8, _> = spawn_group(|tg| async move {
            let v = tg
                .start(|s: Started<u8, &'static str>| async move {
                    s.started(3);
                    yield_now().await;
                    Err("later")
                })
                .await
                .map_err(|_| "start")?;
            pending::<()>().await;
            Ok(v)
        })
        .await;
        assert_eq!(out, Err(GroupError::Failed("later")));
    }

    /// A panicking child is re-raised in the caller with its payload, after its siblings
    /// are gone.
    async fn spawned_panic_is_reraised(cx) {
        let live = Live::new();
        let group_live = live.clone();
        let caught = AssertUnwindSafe(spawn_group(|tg| async move {
            tg.spawn(forever::<Result<(), ()>>(&group_live));
            tg.spawn(async {
                yield_now().await;
                std::panic::panic_any(String::from("child payload"));
                #[allow(unreachable_code)]
                Ok(())
            });
            pending::<()>().await;
            Ok(())
        }))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("re-raised");
        assert_eq!(payload.downcast_ref::<String>().map(String::as_str), Some("child payload"));
        assert_eq!(live.count(), 0);
    }

    /// Handles report cancellation and failure.
    async fn spawned_handles(cx) {
        let out: Result<(), _> = spawn_group(|tg| async move {
            let cancelled = tg.spawn(pending::<Result<u8, &str>>());
            let failed = tg.spawn(async {
                yield_now().await;
                Err::<u8, _>("nope")
            });
            shield(async {
                assert_eq!(failed.await, Err(TaskError::Failed));
                assert_eq!(cancelled.await, Err(TaskError::Cancelled));
            })
            .await;
            Ok(())
        })
        .await;
        assert_eq!(out, Err(GroupError::Failed("nope")));
    }

    /// Dropping a handle leaves the child running; the group waits for it.
    async fn spawned_dropped_handle_keeps_the_child(cx) {
        let done = Arc::new(AtomicUsize::new(0));
        let child_done = Arc::clone(&done);
        let out = spawn_group(|tg| async move {
            drop(tg.spawn(async move {
                for _ in 0..3 {
                    yield_now().await;
                }
                child_done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(())
            }));
            Ok(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert_eq!(done.load(Ordering::SeqCst), 1, "the group returned before its child ended");
    }

    /// An outer scope cancelled while the group waits for its children: the outer scope
    /// completes only once every spawned child is gone (structured, even in parallel).
    async fn outer_cancel_waits_for_spawned_children(cx) {
        let live = Live::new();
        let cleaned = Arc::new(AtomicUsize::new(0));
        let scope = CancelScope::new();
        let canceller = scope.clone();
        let (out, ()) = join(
            scope.run(with_group_runtime!(cx, |rt| {
                spawn_group_on(rt, |tg| waits_under_outer_cancel(tg, live.clone(), Arc::clone(&cleaned)))
                    .boxed()
            })),
            async move {
                for _ in 0..3 {
                    yield_now().await;
                }
                canceller.cancel();
            },
        )
        .await;
        assert_eq!(out, None);
        assert!(scope.cancelled_caught());
        assert_eq!(live.count(), 0, "the scope completed before the children were gone");
        assert_eq!(cleaned.load(Ordering::SeqCst), 1);
    }

    /// `cancel()` stops the children; the body's output is kept.
    async fn spawned_cancel_keeps_body_output(cx) {
        let live = Live::new();
        let group_live = live.clone();
        let out = spawn_group(|tg| async move {
            tg.spawn(forever::<Result<(), ()>>(&group_live));
            yield_now().await;
            tg.cancel();
            Ok("kept")
        })
        .await;
        assert_eq!(out, Ok("kept"));
        assert_eq!(live.count(), 0);
    }

    /// Children can spawn siblings through a clone; spawning after the group finished is a
    /// typed error (and `start` says `Closed`).
    async fn spawn_after_finish_is_an_error(cx) {
        let group = spawn_group(|tg| async move {
            let sibling_spawner = tg.clone();
            let nested = tg.spawn(async move {
                let inner = sibling_spawner.spawn(async { Ok::<_, ()>(2) });
                inner.await.map_err(drop)
            });
            assert_eq!(nested.await, Ok(2));
            Ok::<_, ()>(tg)
        })
        .await
        .unwrap();
        assert_eq!(group.try_spawn(async { Ok(()) }).err(), Some(GroupClosed));
        let start = group.start(|s: Started<(), ()>| async move { s.started(()); Ok(()) }).await;
        assert_eq!(start, Err(StartError::Closed));
    }

    /// Dropping a spawned group mid-way cancels every child: their runtime drops them soon
    /// after.
    async fn spawned_drop_mid_way_cancels_children(cx) {
        for polls in 0..3 {
            let live = Live::new();
            let group_live = live.clone();
            let mut group = Box::pin(spawn_group(|tg| async move {
                for _ in 0..3 {
                    tg.spawn(forever::<Result<(), ()>>(&group_live));
                }
                pending::<()>().await;
                Ok(())
            }));
            for _ in 0..polls {
                futures::future::poll_fn(|cx| {
                    assert!(group.as_mut().poll(cx).is_pending());
                    std::task::Poll::Ready(())
                })
                .await;
                yield_now().await;
            }
            drop(group);
            until_zero(&live).await;
        }
    }

    /// 10,000 children in one spawned group (100 under miri).
    async fn spawned_ten_thousand_children(cx) {
        let children = sheepdog_tests::scaled(10_000, 100);
        let out = spawn_group(|tg| async move {
            let handles: Vec<_> = (0..children).map(|i| tg.spawn(async move { Ok::<_, ()>(i) })).collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.unwrap();
            }
            Ok(sum)
        })
        .await;
        assert_eq!(out, Ok((0..children).sum()));
    }
}
