//! In-task task groups (`task_group`, `local_task_group`): the AnyIO task-group checklist on
//! every runtime and both spawn paths.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::{join, pending, poll_fn};
use futures::FutureExt;
use sheepdog_core::cancel::{shield, CancelScope};
use sheepdog_core::group::{
    local_task_group, task_group, GroupError, StartError, Started, TaskError,
};
use sheepdog_core::runtime::yield_now;
use sheepdog_tests::{conformance, forever, pending_until_dropped, Live};
use std::future::Future;

/// A child that completes at once, then panics when it is dropped.
struct PanicsOnDrop;

impl Future for PanicsOnDrop {
    type Output = Result<(), ()>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        std::panic::panic_any("panic in drop");
    }
}

conformance! {
    /// A panic in a child's destructor is a failure like any other: re-raised by the group.
    async fn panic_in_a_childs_drop_is_reraised(cx) {
        let caught = AssertUnwindSafe(task_group(|tg| async move {
            tg.spawn(PanicsOnDrop);
            Ok(())
        }))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("re-raised");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"panic in drop"));
    }

    /// Children borrow from the caller; handles give each child's result; the group returns
    /// the body's output once everything is done.
    async fn spawn_borrows_and_returns_results(cx) {
        let words = vec!["alpha".to_owned(), "beta".to_owned()];
        let words = &words;
        let out = task_group(|tg| async move {
            let handles: Vec<_> = words
                .iter()
                .map(|w| tg.spawn(async move {
                    yield_now().await;
                    Ok::<_, String>(w.len())
                }))
                .collect();
            let mut lens = Vec::new();
            for handle in handles {
                lens.push(handle.await.unwrap());
            }
            Ok(lens)
        })
        .await;
        assert_eq!(out, Ok(vec![5, 4]));
    }

    /// The group waits for children whose handles were dropped (AnyIO `start_soon`).
    async fn group_waits_for_unawaited_children(cx) {
        let done = AtomicUsize::new(0);
        let done = &done;
        let out = task_group(|tg| async move {
            for _ in 0..3 {
                tg.spawn(async {
                    yield_now().await;
                    yield_now().await;
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(())
                });
            }
            Ok(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert_eq!(done.load(Ordering::SeqCst), 3);
    }

    /// `start` returns the value passed to `started`, with and without a value; the child
    /// keeps running in the group afterwards.
    async fn start_returns_the_started_value(cx) {
        let after = AtomicUsize::new(0);
        let after = &after;
        let out = task_group(|tg| async move {
            let port = tg
                .start(|started: Started<u16, String>| async {
                    started.started(8080);
                    yield_now().await;
                    after.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
                .unwrap();
            let unit = tg
                .start(|started: Started<(), String>| async move {
                    started.started(());
                    Ok(())
                })
                .await;
            assert_eq!(unit, Ok(()));
            Ok(port)
        })
        .await;
        assert_eq!(out, Ok(8080));
        assert_eq!(after.load(Ordering::SeqCst), 1, "the child ran on after started()");
    }

    /// A failure before `started` goes to the caller of `start`, not to the group.
    async fn failure_before_started_goes_to_the_caller(cx) {
        let out = task_group(|tg| async move {
            let res = tg
                .start(|_started: Started<u16, String>| async {
                    yield_now().await;
                    Err("bind failed".to_owned())
                })
                .await;
            assert_eq!(res, Err(StartError::Failed("bind failed".to_owned())));
            Ok("group unaffected")
        })
        .await;
        assert_eq!(out, Ok("group unaffected"));
    }

    /// A failure after `started` goes to the group and cancels the body.
    async fn failure_after_started_goes_to_the_group(cx) {
        let body_reached_end = AtomicUsize::new(0);
        let body_reached_end = &body_reached_end;
        let out: Result<(), _> = task_group(|tg| async move {
            let v = tg
                .start(|started: Started<u8, String>| async {
                    started.started(1);
                    yield_now().await;
                    Err("crashed later".to_owned())
                })
                .await
                .unwrap();
            assert_eq!(v, 1);
            pending::<()>().await;
            body_reached_end.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await;
        assert_eq!(out, Err(GroupError::Failed("crashed later".to_owned())));
        assert_eq!(body_reached_end.load(Ordering::SeqCst), 0);
    }

    /// A child that returns without calling `started` is an error, not a hang.
    async fn no_started_is_an_error(cx) {
        let out = task_group(|tg| async move {
            let res = tg
                .start(|_started: Started<u8, String>| async { Ok(()) })
                .await;
            Ok(res)
        })
        .await;
        assert_eq!(out, Ok(Err(StartError::NotStarted)));
    }

    /// Two `start`s in a row each get their own value.
    async fn start_twice(cx) {
        let out = task_group(|tg| async move {
            let a = tg.start(|s: Started<u8, ()>| async move { s.started(1); Ok(()) }).await;
            let b = tg.start(|s: Started<u8, ()>| async move { s.started(2); Ok(()) }).await;
            Ok((a, b))
        })
        .await;
        assert_eq!(out, Ok((Ok(1), Ok(2))));
    }

    /// A panic before `started` is re-raised in the caller of `start`; as that caller is the
    /// group's body, the group re-raises it after cancelling the other children.
    async fn panic_before_started_reaches_the_caller(cx) {
        let live = Live::new();
        let live = &live;
        let caught = AssertUnwindSafe(task_group(|tg| async move {
            tg.spawn(forever::<Result<(), ()>>(live));
            tg.start(|_s: Started<u8, ()>| async {
                yield_now().await;
                panic!("boom before started");
            })
            .await
            .map(drop)
            .map_err(drop)
        }))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("the panic is re-raised");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom before started"));
        assert_eq!(live.count(), 0, "the sibling was cancelled before the re-raise");
    }

    /// `start` from a cancelled scope: the child is cancelled with that scope, the group
    /// carries on.
    async fn start_in_a_cancelled_scope(cx) {
        let live = Live::new();
        let live = &live;
        let out = task_group(|tg| async move {
            let scope = CancelScope::new();
            scope.cancel();
            let res = scope
                .run(tg.start(|s: Started<u8, ()>| async {
                    let _guard = live.guard();
                    pending::<()>().await;
                    s.started(1);
                    Ok(())
                }))
                .await;
            assert_eq!(res, None);
            Ok("carried on")
        })
        .await;
        assert_eq!(out, Ok("carried on"));
        assert_eq!(live.count(), 0);
    }

    /// The caller of `start` giving up before the child started cancels the child only.
    async fn abandoned_start_cancels_the_child(cx) {
        let (child, dropped) = pending_until_dropped();
        let out = task_group(|tg| async move {
            let scope = CancelScope::new();
            let canceller = scope.clone();
            let (res, ()) = join(
                scope.run(tg.start(|_s: Started<u8, ()>| async {
                    child.await;
                    Ok(())
                })),
                async move {
                    yield_now().await;
                    canceller.cancel();
                },
            )
            .await;
            assert_eq!(res, None);
            Ok(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert!(dropped.await.is_ok(), "the child was dropped");
    }

    /// The first error cancels every sibling and the body at once; the error comes back bare.
    async fn first_error_cancels_siblings_and_body(cx) {
        let live = Live::new();
        let live = &live;
        let out: Result<(), _> = task_group(|tg| async move {
            for _ in 0..5 {
                tg.spawn(forever::<Result<(), _>>(live));
            }
            tg.spawn(async {
                yield_now().await;
                Err::<(), _>("first")
            });
            let _guard = live.guard();
            pending::<()>().await;
            Ok(())
        })
        .await;
        assert_eq!(out, Err(GroupError::Failed("first")));
        assert_eq!(live.count(), 0);
    }

    /// An error returned by the body cancels the children and is reported.
    async fn body_error_cancels_children(cx) {
        let live = Live::new();
        let live = &live;
        let out: Result<(), _> = task_group(|tg| async move {
            tg.spawn(forever::<Result<(), _>>(live));
            yield_now().await;
            Err("body failed")
        })
        .await;
        assert_eq!(out, Err(GroupError::Failed("body failed")));
        assert_eq!(live.count(), 0);
    }

    /// Failures that happen while the group is already cancelling (here: inside shields) are
    /// all reported, in order.
    async fn several_errors_all_reported_in_order(cx) {
        let out: Result<(), _> = task_group(|tg| async move {
            tg.spawn(async {
                shield(async { for _ in 0..3 { yield_now().await } }).await;
                Err::<(), _>("second")
            });
            tg.spawn(async {
                yield_now().await;
                Err::<(), _>("first")
            });
            shield(async { for _ in 0..6 { yield_now().await } }).await;
            Err("third, from the body")
        })
        .await;
        assert_eq!(
            out,
            Err(GroupError::Multiple(vec!["first", "second", "third, from the body"]))
        );
    }

    /// A child's panic is re-raised in the caller, payload intact, after the siblings were
    /// cancelled.
    async fn child_panic_is_reraised_with_payload(cx) {
        let live = Live::new();
        let live = &live;
        let caught = AssertUnwindSafe(task_group(|tg| async move {
            tg.spawn(forever::<Result<(), u8>>(live));
            tg.spawn(async {
                yield_now().await;
                std::panic::panic_any(42_u32);
                #[allow(unreachable_code)]
                Ok(())
            });
            pending::<()>().await;
            Ok(())
        }))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("re-raised");
        assert_eq!(payload.downcast_ref::<u32>(), Some(&42));
        assert_eq!(live.count(), 0);
    }

    /// Handles report value, failure and cancellation.
    async fn handles_report_each_outcome(cx) {
        let out: Result<(), _> = task_group(|tg| async move {
            let ok = tg.spawn(async { Ok(1) });
            assert_eq!(ok.await, Ok(1));
            let cancelled = tg.spawn(async { pending::<Result<u8, &str>>().await });
            let failed = tg.spawn(async {
                yield_now().await;
                Err::<u8, _>("nope")
            });
            // The body is cancelled by the failure, so check the handles from a shield.
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

    /// `cancel()` stops forever-running children; the body's output is still returned.
    async fn cancel_stops_children_and_keeps_body_output(cx) {
        let live = Live::new();
        let live = &live;
        let out = task_group(|tg| async move {
            tg.spawn(forever::<Result<(), ()>>(live));
            yield_now().await;
            tg.cancel();
            Ok("result")
        })
        .await;
        assert_eq!(out, Ok("result"));
        assert_eq!(live.count(), 0);
    }

    /// Cancelling the group before the body returns gives `GroupError::Cancelled`, which is
    /// not a failure.
    async fn cancel_before_body_returns_is_cancelled(cx) {
        let scope_seen = std::sync::Mutex::new(None);
        let scope_seen = &scope_seen;
        let out: Result<(), GroupError<()>> = task_group(|tg| async move {
            *scope_seen.lock().unwrap() = Some(tg.cancel_scope());
            tg.cancel();
            yield_now().await;
            unreachable!("cancelled at the wait above")
        })
        .await;
        assert_eq!(out, Err(GroupError::Cancelled));
        let scope = scope_seen.lock().unwrap().take().unwrap();
        assert!(scope.cancel_called() && scope.cancelled_caught());
    }

    /// Children belong to the group's scope, not to the scope `spawn` was called from.
    async fn children_belong_to_the_group_scope(cx) {
        let out = task_group(|tg| async move {
            let inner = CancelScope::new();
            let canceller = inner.clone();
            let mut handle = None;
            let region = inner
                .run(async {
                    handle = Some(tg.spawn(async {
                        for _ in 0..3 {
                            yield_now().await
                        }
                        Ok::<_, ()>("survived")
                    }));
                    canceller.cancel();
                    yield_now().await;
                })
                .await;
            assert_eq!(region, None, "the spawning region was cancelled");
            let handle = handle.unwrap();
            Ok(handle.await)
        })
        .await;
        assert_eq!(out, Ok(Ok("survived")));
    }

    /// Nested groups: an inner failure surfaces through the outer group; cancelling the
    /// outer group cancels the inner group's children.
    async fn nested_groups(cx) {
        let live = Live::new();
        let live = &live;
        let out: Result<(), GroupError<String>> = task_group(|outer| async move {
            outer.spawn(async move {
                task_group(|inner| async move {
                    inner.spawn(forever::<Result<(), String>>(live));
                    pending::<()>().await;
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())
            });
            outer.spawn(async {
                task_group(|inner| async move {
                    inner.spawn(async { yield_now().await; Err::<(), _>("deep".to_owned()) });
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())
            });
            Ok(())
        })
        .await;
        assert_eq!(out, Err(GroupError::Failed("deep".to_owned())));
        assert_eq!(live.count(), 0);
    }

    /// An outer scope cancelled while the group waits for its children (the body is done):
    /// the children are cancelled and the outer scope catches.
    async fn cancel_while_exiting(cx) {
        let live = Live::new();
        let live = &live;
        let scope = CancelScope::new();
        let canceller = scope.clone();
        let (out, ()) = join(
            scope.run(task_group(|tg| async move {
                tg.spawn(forever::<Result<(), ()>>(live));
                Ok(())
            })),
            async move {
                yield_now().await;
                canceller.cancel();
            },
        )
        .await;
        assert_eq!(out, None);
        assert!(scope.cancelled_caught());
        assert_eq!(live.count(), 0);
    }

    /// An empty group returns the body's output.
    async fn empty_group(cx) {
        assert_eq!(task_group(async |_tg| Ok::<_, ()>(7)).await, Ok(7));
    }

    /// 10,000 children in one group (100 under miri).
    async fn ten_thousand_children(cx) {
        let children = sheepdog_tests::scaled(10_000, 100);
        let sum = task_group(|tg| async move {
            let handles: Vec<_> = (0..children)
                .map(|i| tg.spawn(async move {
                    if i % 7 == 0 {
                        yield_now().await;
                    }
                    Ok::<_, ()>(i)
                }))
                .collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.unwrap();
            }
            Ok(sum)
        })
        .await;
        assert_eq!(sum, Ok((0..children).sum()));
    }

    /// Children that are not `Send` run in a local group.
    async fn local_group_runs_non_send_children(cx) {
        let cell = std::rc::Rc::new(std::cell::Cell::new(0));
        let cell = &cell;
        let out = local_task_group(|tg| async move {
            for _ in 0..4 {
                let cell = std::rc::Rc::clone(cell);
                tg.spawn(async move {
                    yield_now().await;
                    cell.set(cell.get() + 1);
                    Ok::<_, ()>(())
                });
            }
            Ok(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert_eq!(cell.get(), 4);
    }

    /// Dropping the group future mid-way drops every child before `drop` returns.
    async fn drop_mid_way_drops_every_child(cx) {
        for polls in 0..4 {
            let live = Live::new();
            let live = &live;
            let mut group = Box::pin(task_group(|tg| async move {
                for _ in 0..3 {
                    tg.spawn(forever::<Result<(), ()>>(live));
                }
                let _guard = live.guard();
                pending::<()>().await;
                Ok(())
            }));
            for _ in 0..polls {
                poll_fn(|cx| {
                    assert!(group.as_mut().poll(cx).is_pending());
                    std::task::Poll::Ready(())
                })
                .await;
            }
            drop(group);
            assert_eq!(live.count(), 0, "after {polls} polls");
        }
    }
}
