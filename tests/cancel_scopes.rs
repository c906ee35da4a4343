//! Cancel scopes without time: manual cancellation, nesting, who catches, shields, spawned
//! tasks, cleanup — on every runtime and both spawn paths.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::{join, pending};
use sheepdog_core::cancel::{self, checkpoint, shield, with_cleanup, CancelScope};
use sheepdog_core::runtime::yield_now;
use sheepdog_tests::{conformance, pending_until_dropped};

conformance! {
    /// A cancel before the region starts is honoured: the region never runs its future.
    async fn cancel_before_entry_is_honoured(cx) {
        let scope = CancelScope::new();
        scope.cancel();
        scope.cancel(); // idempotent
        let ran = AtomicUsize::new(0);
        let out = scope
            .run(async {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        assert_eq!(out, None);
        assert!(scope.cancel_called() && scope.cancelled_caught());
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    /// A scope with no deadline completes normally and catches nothing.
    async fn plain_scope_completes(cx) {
        let scope = CancelScope::new();
        let out = scope
            .run(async {
                checkpoint().await;
                5
            })
            .await;
        assert_eq!(out, Some(5));
        assert!(!scope.cancel_called() && !scope.cancelled_caught());
        assert_eq!(scope.deadline(), None);
    }

    /// A scope with no deadline is still cancellable while its region waits.
    async fn plain_scope_is_cancellable(cx) {
        let scope = CancelScope::new();
        let canceller = scope.clone();
        let (out, ()) = join(scope.run(pending::<()>()), async move {
            yield_now().await;
            canceller.cancel();
        })
        .await;
        assert_eq!(out, None);
        assert!(scope.cancelled_caught());
    }

    /// `cancel` from another OS thread wakes the region.
    async fn cancel_from_another_thread(cx) {
        let scope = CancelScope::new();
        let remote = scope.clone();
        let thread = std::thread::spawn(move || remote.cancel());
        assert_eq!(scope.run(pending::<()>()).await, None);
        thread.join().unwrap();
        assert!(scope.cancelled_caught());
    }

    /// The outermost cancelled scope catches; an inner scope never completes once an ancestor
    /// is cancelled, and does not report a catch.
    async fn outermost_cancelled_scope_catches(cx) {
        // Both cancelled: the outer one catches.
        let outer = CancelScope::new();
        let inner = CancelScope::new();
        let (o, i) = (outer.clone(), inner.clone());
        let out = outer
            .run(async move {
                let r = i.run(async {
                    o.cancel();
                    i.cancel();
                    checkpoint().await;
                })
                .await;
                panic!("the inner region must not complete: {r:?}");
            })
            .await;
        assert_eq!(out, None);
        assert!(outer.cancelled_caught() && !inner.cancelled_caught());
        assert!(inner.cancel_called());

        // Only the outer cancelled: same, and the inner scope was never cancelled itself.
        let outer = CancelScope::new();
        let inner = CancelScope::new();
        let o = outer.clone();
        let i = inner.clone();
        let out = outer
            .run(async move {
                i.run(async {
                    o.cancel();
                    checkpoint().await;
                })
                .await
            })
            .await;
        assert_eq!(out, None);
        assert!(outer.cancelled_caught());
        assert!(!inner.cancel_called() && !inner.cancelled_caught());
    }

    /// An inner shield resists the outer cancellation and runs to completion; the outer scope
    /// catches at the first wait after the shield ends.
    async fn shield_resists_outer_cancel(cx) {
        let outer = CancelScope::new();
        let o = outer.clone();
        let shield_steps = AtomicUsize::new(0);
        let after_shield = AtomicUsize::new(0);
        let out = outer
            .run(async {
                shield(async {
                    o.cancel();
                    for _ in 0..5 {
                        checkpoint().await; // not frozen: shielded
                        assert!(!cancel::is_cancelled());
                        shield_steps.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .await;
                assert!(cancel::is_cancelled());
                checkpoint().await; // the outer cancellation is delivered here
                after_shield.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        assert_eq!(out, None);
        assert!(outer.cancelled_caught());
        assert_eq!(shield_steps.load(Ordering::SeqCst), 5);
        assert_eq!(after_shield.load(Ordering::SeqCst), 0);
    }

    /// A shield never protects against its own scope's cancellation.
    async fn shield_does_not_block_its_own_cancel(cx) {
        let outer = CancelScope::new();
        let shielded = CancelScope::new().shielded(true);
        let s = shielded.clone();
        let out = outer
            .run(async {
                let inner = s.run(async {
                    s.cancel();
                    checkpoint().await;
                    "not reached"
                });
                inner.await
            })
            .await;
        assert_eq!(out, Some(None));
        assert!(shielded.cancelled_caught() && !outer.cancelled_caught());
    }

    /// While a shield runs inside a cancelled scope, unshielded work beside it is frozen at
    /// its next wait; the scope catches once the shield ends.
    async fn work_beside_a_shield_is_frozen(cx) {
        let outer = CancelScope::new();
        let o = outer.clone();
        let beside = AtomicUsize::new(0);
        let shielded_steps = AtomicUsize::new(0);
        let out = outer
            .run(join(
                shield(async {
                    o.cancel();
                    for _ in 0..10 {
                        checkpoint().await;
                        shielded_steps.fetch_add(1, Ordering::SeqCst);
                    }
                }),
                async {
                    loop {
                        checkpoint().await;
                        beside.fetch_add(1, Ordering::SeqCst);
                    }
                },
            ))
            .await;
        assert!(out.is_none());
        assert_eq!(shielded_steps.load(Ordering::SeqCst), 10);
        // The unshielded loop may have passed one wait before the shield's first step
        // cancelled the scope, never more.
        assert!(beside.load(Ordering::SeqCst) <= 1, "{}", beside.load(Ordering::SeqCst));
    }

    /// Unshielding at run time exposes a pending outer cancellation.
    async fn unshielding_exposes_outer_cancel(cx) {
        let outer = CancelScope::new();
        let inner = CancelScope::new().shielded(true);
        let (o, i) = (outer.clone(), inner.clone());
        let out = outer
            .run(async move {
                i.run(async {
                    o.cancel();
                    checkpoint().await; // shielded: passes
                    i.set_shield(false);
                    checkpoint().await; // exposed: frozen
                    unreachable!("unshielded inside a cancelled scope");
                })
                .await
            })
            .await;
        assert_eq!(out, None);
        assert!(outer.cancelled_caught() && !inner.cancelled_caught());
    }

    /// A task spawned inside a scope belongs to it: cancelling the scope cancels the task
    /// (its future is dropped and its handle reports `Cancelled`), even though the handle
    /// lives outside the scope.
    async fn spawned_tasks_stop_with_their_scope(cx) {
        let scope = CancelScope::new();
        let (never, dropped) = pending_until_dropped();
        let (tx, rx) = futures::channel::oneshot::channel();
        let spawner = cx.clone();
        let (out, ()) = join(
            scope.run(async move {
                let handle = spawner.spawn(never);
                tx.send(handle).unwrap();
                pending::<()>().await;
            }),
            async {
                let handle = rx.await.unwrap();
                yield_now().await;
                scope.cancel();
                assert!(handle.await.unwrap_err().is_cancelled());
            },
        )
        .await;
        assert_eq!(out, None);
        dropped.await.expect("the task's future was dropped");
    }

    /// A task spawned inside a shield is protected from the outer cancellation.
    async fn spawned_task_inside_a_shield_survives(cx) {
        let outer = CancelScope::new();
        let (tx, rx) = futures::channel::oneshot::channel();
        let spawner = cx.clone();
        let (out, ()) = join(
            outer.run(async move {
                shield(async move {
                    let handle = spawner.spawn(async {
                        for _ in 0..3 {
                            checkpoint().await;
                        }
                        "finished"
                    });
                    tx.send(handle).unwrap();
                })
                .await;
                pending::<()>().await;
            }),
            async {
                let handle = rx.await.unwrap();
                outer.cancel();
                assert_eq!(handle.await.unwrap(), "finished");
            },
        )
        .await;
        assert_eq!(out, None);
    }

    /// `with_cleanup` runs the cleanup after a normal finish and after a cancellation, and the
    /// cancelled scope waits for it before catching.
    async fn cleanup_runs_however_the_body_ends(cx) {
        let cleanups = AtomicUsize::new(0);
        let out = with_cleanup(async { 1 }, std::time::Duration::from_secs(5), || async {
            checkpoint().await;
            cleanups.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        assert_eq!(out, 1);
        assert_eq!(cleanups.load(Ordering::SeqCst), 1);

        let scope = CancelScope::new();
        let s = scope.clone();
        let out = scope
            .run(with_cleanup(
                async move {
                    s.cancel();
                    checkpoint().await;
                    unreachable!("the body was cancelled");
                },
                std::time::Duration::from_secs(5),
                || async {
                    for _ in 0..3 {
                        checkpoint().await; // the cleanup is shielded
                    }
                    cleanups.fetch_add(1, Ordering::SeqCst);
                },
            ))
            .await;
        assert_eq!(out, None::<()>);
        assert!(scope.cancelled_caught());
        assert_eq!(cleanups.load(Ordering::SeqCst), 2);
    }

    /// `is_cancelled` reports the effective state of the current scope.
    async fn is_cancelled_follows_the_scope(cx) {
        assert!(!cancel::is_cancelled());
        let scope = CancelScope::new();
        let s = scope.clone();
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = Arc::clone(&seen);
        scope
            .run(async move {
                assert!(!cancel::is_cancelled());
                s.cancel();
                if cancel::is_cancelled() {
                    seen2.store(1, Ordering::SeqCst);
                }
                checkpoint().await;
            })
            .await;
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert!(!cancel::is_cancelled());
    }
}
