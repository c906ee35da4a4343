//! Deadlines of cancel scopes, on the virtual-time runtime: exact instants, no real waiting.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join, pending};
use sheepdog_core::cancel::{
    checkpoint, current_effective_deadline, fail_after, fail_at, move_on_after, move_on_at, shield,
    with_cleanup, CancelScope,
};
use sheepdog_core::runtime::{self, Runtime};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;

const SEC: Duration = Duration::from_secs(1);

/// Runs `body` on a fresh virtual-time runtime and returns the virtual time it took.
fn virtual_run<F: Future<Output = ()>>(body: impl FnOnce() -> F) -> Duration {
    let rt = VirtualRuntime::new();
    rt.block_on(body());
    rt.clock().elapsed()
}

/// Zero and past deadlines cancel at the first wait; a future that never waits still
/// completes.
#[test]
fn zero_and_past_deadlines() {
    let took = virtual_run(|| async {
        assert!(fail_after(Duration::ZERO, time::sleep(SEC)).await.is_err());
        assert_eq!(fail_after(Duration::ZERO, async { 5 }).await, Ok(5));
        assert_eq!(move_on_after(Duration::ZERO, checkpoint()).await, None);
        let past = time::now() - SEC;
        assert!(fail_at(past, time::sleep(SEC)).await.is_err());
        assert_eq!(move_on_at(past, async { 6 }).await, Some(6));
    });
    assert_eq!(took, Duration::ZERO);
}

/// A deadline fires exactly on time and reports the instant that passed.
#[test]
fn deadlines_fire_exactly() {
    let took = virtual_run(|| async {
        let start = time::now();
        let err = fail_after(3 * SEC, time::sleep(10 * SEC))
            .await
            .unwrap_err();
        assert_eq!(err.deadline(), start + 3 * SEC);
        assert_eq!(time::now(), start + 3 * SEC);
        assert_eq!(move_on_after(2 * SEC, time::sleep(SEC)).await, Some(()));
    });
    assert_eq!(took, 4 * SEC);
}

/// A region with no enclosing scope waits without a node of its own; asked for its scope at a
/// later poll, it makes one (with the deadline it already fixed), and its deadline still
/// catches, spawned tasks and nested scopes below it included.
#[test]
fn a_root_region_makes_its_node_when_asked_after_waiting() {
    let took = virtual_run(|| async {
        let start = time::now();
        let spawned_ran_out = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&spawned_ran_out);
        let err = fail_after(5 * SEC, async move {
            time::sleep(SEC).await; // waits as a root frame
            assert_eq!(current_effective_deadline(), Some(start + 5 * SEC)); // makes the node
                                                                             // Detached: only the scope it was spawned in can stop it.
            runtime::spawn(async move {
                time::sleep(60 * SEC).await;
                flag.store(true, Ordering::SeqCst);
            })
            .detach();
            let inner = CancelScope::new();
            inner.run(time::sleep(60 * SEC)).await;
            unreachable!("the outer deadline cancels the region first");
        })
        .await
        .unwrap_err();
        assert_eq!(err.deadline(), start + 5 * SEC);
        assert_eq!(time::now(), start + 5 * SEC);
        time::sleep(120 * SEC).await;
        assert!(
            !spawned_ran_out.load(Ordering::SeqCst),
            "the spawned task was cancelled"
        );
    });
    assert_eq!(took, 125 * SEC);
}

/// A shorter inner `fail_after` fails inside an outer `move_on_after`, which catches nothing.
#[test]
fn fail_after_inside_move_on_after() {
    let took = virtual_run(|| async {
        let outer = CancelScope::new().with_timeout(10 * SEC);
        let out = outer.run(fail_after(SEC, time::sleep(5 * SEC))).await;
        assert!(matches!(out, Some(Err(_))));
        assert!(!outer.cancelled_caught());
    });
    assert_eq!(took, SEC);
}

/// With nested deadlines the shorter outer one wins, and only the outer scope catches.
#[test]
fn shorter_outer_deadline_wins() {
    let took = virtual_run(|| async {
        let outer = CancelScope::new().with_timeout(SEC);
        let inner = CancelScope::new().with_timeout(5 * SEC);
        let i = inner.clone();
        let out = outer
            .run(async move { i.run(time::sleep(10 * SEC)).await })
            .await;
        assert_eq!(out, None);
        assert!(outer.cancelled_caught());
        assert!(!inner.cancel_called() && !inner.cancelled_caught());
    });
    assert_eq!(took, SEC);
}

/// The deadline can be moved earlier or later while the region runs; the timer follows.
#[test]
fn deadline_moves_while_running() {
    // Earlier: 10 s → 2 s, moved at 1 s.
    let took = virtual_run(|| async {
        let start = time::now();
        let scope = CancelScope::new().with_deadline(start + 10 * SEC);
        let mover = scope.clone();
        let (out, ()) = join(scope.run(pending::<()>()), async move {
            time::sleep(SEC).await;
            mover.set_deadline(start + 2 * SEC);
        })
        .await;
        assert_eq!(out, None);
        assert_eq!(scope.deadline(), Some(start + 2 * SEC));
    });
    assert_eq!(took, 2 * SEC);

    // Later: 2 s → 5 s, moved at 1 s.
    let took = virtual_run(|| async {
        let start = time::now();
        let scope = CancelScope::new().with_deadline(start + 2 * SEC);
        let mover = scope.clone();
        let (out, ()) = join(scope.run(pending::<()>()), async move {
            time::sleep(SEC).await;
            mover.set_deadline(start + 5 * SEC);
        })
        .await;
        assert_eq!(out, None);
    });
    assert_eq!(took, 5 * SEC);
}

/// A manual cancel is not a timeout: the scope caught it before its deadline.
#[test]
fn manual_cancel_is_not_a_timeout() {
    virtual_run(|| async {
        let scope = CancelScope::new().with_timeout(10 * SEC);
        let canceller = scope.clone();
        let (out, ()) = join(scope.run(pending::<()>()), async move {
            time::sleep(SEC).await;
            canceller.cancel();
        })
        .await;
        assert_eq!(out, None);
        assert!(scope.cancelled_caught());
        assert!(
            time::now() < scope.deadline().unwrap(),
            "cancelled before the deadline"
        );
    });
}

/// The outer cancellation arrives right after a shield ends: at the shield's end, not at
/// the outer deadline, and not later.
#[test]
fn cancellation_delivered_right_after_the_shield() {
    let after = Arc::new(AtomicBool::new(false));
    let after2 = Arc::clone(&after);
    let took = virtual_run(|| async move {
        let out = move_on_after(SEC, async move {
            shield(time::sleep(5 * SEC)).await;
            time::sleep(SEC).await;
            after2.store(true, Ordering::SeqCst);
        })
        .await;
        assert_eq!(out, None);
    });
    assert_eq!(took, 5 * SEC);
    assert!(!after.load(Ordering::SeqCst));
}

/// A shield does not protect against its own deadline, even inside a cancelled scope.
#[test]
fn shield_keeps_its_own_deadline() {
    let took = virtual_run(|| async {
        let outer = CancelScope::new();
        let o = outer.clone();
        let shielded = CancelScope::new().shielded(true).with_timeout(2 * SEC);
        let s = shielded.clone();
        let out = outer
            .run(async move {
                o.cancel();
                s.run(time::sleep(10 * SEC)).await
            })
            .await;
        // The shield caught its own deadline. The outer region's future then completed in the
        // same poll, without another wait, so (as in AnyIO) the outer scope catches nothing.
        assert!(shielded.cancelled_caught());
        assert_eq!(out, Some(None));
        assert!(!outer.cancelled_caught());
    });
    assert_eq!(took, 2 * SEC);
}

/// `current_effective_deadline` is the minimum up to the nearest shield, resolves relative
/// deadlines, and reports an already-due instant inside a cancelled scope.
#[test]
fn effective_deadline() {
    virtual_run(|| async {
        assert_eq!(current_effective_deadline(), None);
        let start = time::now();
        fail_at(start + 5 * SEC, async {
            assert_eq!(current_effective_deadline(), Some(start + 5 * SEC));
            move_on_after(2 * SEC, async {
                assert_eq!(current_effective_deadline(), Some(start + 2 * SEC));
                shield(async {
                    assert_eq!(
                        current_effective_deadline(),
                        None,
                        "a shield hides the outer"
                    );
                    let own = CancelScope::new().shielded(true).with_timeout(7 * SEC);
                    own.run(async {
                        assert_eq!(current_effective_deadline(), Some(start + 7 * SEC));
                    })
                    .await;
                })
                .await;
            })
            .await;
        })
        .await
        .unwrap();
        let scope = CancelScope::new();
        let s = scope.clone();
        scope
            .run(async move {
                s.cancel();
                assert!(current_effective_deadline().unwrap() <= time::now());
                checkpoint().await;
            })
            .await;
    });
}

/// A region that completes without waiting registers no timer; one that waited deregisters
/// its timer when it completes.
#[test]
fn timer_only_when_the_region_waits() {
    let rt = VirtualRuntime::new();
    rt.block_on(async {
        assert_eq!(fail_after(SEC, async { 1 }).await, Ok(1));
    });
    assert!(format!("{rt:?}").contains("pending_timers: 0"), "{rt:?}");
    rt.block_on(async {
        assert_eq!(fail_after(10 * SEC, time::sleep(SEC)).await, Ok(()));
    });
    assert!(format!("{rt:?}").contains("pending_timers: 0"), "{rt:?}");
    assert_eq!(rt.clock().elapsed(), SEC);
}

/// A spawned task inside a timed-out scope is cancelled when the deadline passes.
#[test]
fn deadline_cancels_spawned_tasks() {
    let took = virtual_run(|| async {
        let (tx, rx) = futures::channel::oneshot::channel();
        let scope = CancelScope::new().with_timeout(3 * SEC);
        let (out, ()) = join(
            scope.run(async move {
                tx.send(runtime::spawn(time::sleep(100 * SEC))).unwrap();
                pending::<()>().await;
            }),
            async {
                let handle = rx.await.unwrap();
                assert!(handle.await.unwrap_err().is_cancelled());
            },
        )
        .await;
        assert_eq!(out, None);
    });
    assert_eq!(took, 3 * SEC);
}

/// The cleanup runs after a deadline, bounded by its own timeout, and the deadline's scope
/// waits for it.
#[test]
fn cleanup_after_a_deadline_is_bounded() {
    let cleaned = Arc::new(AtomicBool::new(false));
    let c = Arc::clone(&cleaned);
    let took = virtual_run(|| async move {
        let out = fail_after(
            SEC,
            with_cleanup(time::sleep(10 * SEC), 5 * SEC, move || async move {
                time::sleep(2 * SEC).await;
                c.store(true, Ordering::SeqCst);
            }),
        )
        .await;
        assert!(out.is_err());
    });
    assert_eq!(took, 3 * SEC);
    assert!(cleaned.load(Ordering::SeqCst));

    // A cleanup that overruns its own bound is cut at the bound.
    let took = virtual_run(|| async {
        let out = fail_after(
            SEC,
            with_cleanup(time::sleep(10 * SEC), 2 * SEC, || time::sleep(60 * SEC)),
        )
        .await;
        assert!(out.is_err());
    });
    assert_eq!(took, 3 * SEC);
}

/// A scope runs one region only.
#[test]
#[should_panic(expected = "only one region")]
fn a_scope_runs_one_region() {
    virtual_run(|| async {
        let scope = CancelScope::new();
        scope.run(async {}).await;
        scope.run(async {}).await;
    });
}

/// Deadline timers on every runtime: the runtime's own timer (tokio, virtual time) or the
/// per-thread queue that async-io runtimes share (smol, async-std). Short real deadlines on
/// the real runtimes, the same on virtual time.
mod timers {
    use std::time::Duration;

    use futures::future::{join, join_all, pending};
    use sheepdog_core::cancel::{fail_after, move_on_after, CancelScope};
    use sheepdog_core::runtime::yield_now;
    use sheepdog_core::time;
    use sheepdog_tests::conformance;

    const MS: Duration = Duration::from_millis(1);

    conformance! {
        /// A region with no enclosing scope (it needs no node) still times out, no earlier than
        /// its deadline, and reports that deadline.
        async fn root_region_times_out(cx) {
            let start = time::now();
            let err = fail_after(20 * MS, pending::<()>()).await.unwrap_err();
            assert!(time::now() >= start + 20 * MS);
            assert!(err.deadline() >= start + 20 * MS);
            assert!(err.deadline() <= time::now());
        }

        /// The same inside an enclosing scope (the region makes a node).
        async fn nested_region_times_out(cx) {
            let outer = CancelScope::new();
            let out = outer
                .run(async {
                    let start = time::now();
                    let out = move_on_after(15 * MS, pending::<()>()).await;
                    assert!(time::now() >= start + 15 * MS);
                    out
                })
                .await;
            assert_eq!(out, Some(None), "the inner scope caught, not the outer one");
            assert!(!outer.cancel_called());
        }

        /// Deadlines registered latest-first, soonest-last, fire soonest-first: a deadline
        /// earlier than the one the shared timer is armed for re-arms it.
        async fn deadlines_fire_in_order(cx) {
            let order = std::sync::Mutex::new(Vec::new());
            let waits = [60u32, 40, 20].map(|ms| {
                let order = &order;
                async move {
                    assert!(move_on_after(ms * MS, pending::<()>()).await.is_none());
                    order.lock().unwrap().push(ms);
                }
            });
            join_all(waits).await;
            assert_eq!(*order.lock().unwrap(), vec![20, 40, 60]);
        }

        /// Thousands of regions that end before their (far) deadline leave nothing behind that
        /// fires: a short deadline afterwards still fires on time, and a far one never does.
        async fn finished_regions_leave_no_deadline_behind(cx) {
            for i in 0..sheepdog_tests::scaled(2_000, 50) {
                let out = fail_after(Duration::from_secs(3600), async {
                    yield_now().await;
                    i
                })
                .await;
                assert_eq!(out, Ok(i));
            }
            let start = time::now();
            let (short, long) = join(
                move_on_after(10 * MS, pending::<()>()),
                fail_after(Duration::from_secs(3600), async {
                    time::sleep(30 * MS).await;
                    7
                }),
            )
            .await;
            assert_eq!(short, None);
            assert_eq!(long, Ok(7));
            assert!(time::now() >= start + 30 * MS);
        }

        /// A deadline moved earlier while the region waits re-arms the timer; moved later, it
        /// holds off the timeout.
        async fn moved_deadlines_rearm(cx) {
            let scope = CancelScope::new().with_timeout(Duration::from_secs(3600));
            let handle = scope.clone();
            let start = time::now();
            let (out, ()) = join(scope.run(pending::<()>()), async move {
                time::sleep(5 * MS).await;
                handle.set_deadline(time::now() + 10 * MS);
            })
            .await;
            assert_eq!(out, None);
            assert!(scope.cancelled_caught());
            assert!(time::now() >= start + 15 * MS);

            // Wide margins: the deadline is moved after one yield, which a loaded machine may
            // delay by some milliseconds, but not by 200.
            let scope = CancelScope::new().with_timeout(200 * MS);
            let handle = scope.clone();
            let (out, ()) = join(
                scope.run(async {
                    time::sleep(300 * MS).await;
                    1
                }),
                async move {
                    yield_now().await;
                    handle.set_deadline(time::now() + Duration::from_secs(3600));
                },
            )
            .await;
            assert_eq!(out, Some(1));
        }
    }
}

/// In plain tokio code (no sheepdog wrapper) a deadline runs on tokio's timer wherever the
/// tokio detector has to find the runtime: a current-thread `block_on`, a multi-thread
/// runtime's `block_on` thread and its workers, a blocking thread, and a thread that only
/// entered the runtime. It fires (not early), and a region that completes first is not cut.
#[test]
#[cfg_attr(
    miri,
    ignore = "real time on tokio's worker and blocking threads; no unsafe code on these paths"
)]
fn fail_after_in_plain_tokio_code_wherever_the_runtime_is_found() {
    use sheepdog_core::cancel::fail_after;
    use std::time::Instant;

    async fn check(place: &str) {
        assert!(
            runtime::current().is_some(),
            "{place}: the detector finds tokio"
        );
        let start = Instant::now();
        let out = fail_after(Duration::from_millis(5), pending::<()>()).await;
        assert!(out.is_err(), "{place}: the deadline fires");
        assert!(
            start.elapsed() >= Duration::from_millis(5),
            "{place}: not early"
        );
        let out = fail_after(Duration::from_secs(3600), runtime::yield_now()).await;
        assert!(out.is_ok(), "{place}: a region that completes is not cut");
    }

    let current = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    // Any `TokioRuntime` registers the detector.
    let _registers_the_detector = sheepdog_tokio::TokioRuntime::from_handle(multi.handle().clone());

    current.block_on(check("current-thread block_on"));
    multi.block_on(check("multi-thread block_on"));
    multi
        .block_on(multi.spawn(check("multi-thread worker")))
        .unwrap();
    multi
        .block_on(multi.spawn_blocking(|| futures::executor::block_on(check("blocking thread"))))
        .unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _entered = multi.enter();
            futures::executor::block_on(check("entered thread"));
        });
    });
}
