//! shuttle models of the scope tree (`RUSTFLAGS="--cfg shuttle" cargo test -p sheepdog-core
//! --lib shuttle`). Under `cfg(shuttle)` the tree's locks and atomics are shuttle's, so each
//! model explores interleavings of a cancel on one thread against a region completing on
//! another, checks the outcome is consistent, that no wake-up is lost (shuttle reports a
//! deadlock if the region's task is never woken), and that both outcomes were explored.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{checkpoint, CancelScope};

/// How many random schedules each model explores.
const SCHEDULES: usize = 2_000;

/// Cancels `scope` after yielding a (replayably) random number of times, so that schedules
/// where the cancel comes before, during and after the region's completion all occur.
fn cancel_later(scope: CancelScope) {
    use shuttle::rand::Rng;
    let yields = shuttle::rand::thread_rng().gen_range(0..48);
    for _ in 0..yields {
        shuttle::thread::yield_now();
    }
    scope.cancel();
}

/// `cancel` on one thread against the region's own completion on another.
#[test]
fn shuttle_cancel_versus_complete() {
    static COMPLETED: AtomicUsize = AtomicUsize::new(0);
    static CAUGHT: AtomicUsize = AtomicUsize::new(0);
    shuttle::check_random(
        || {
            let scope = CancelScope::new();
            let canceller = scope.clone();
            let thread = shuttle::thread::spawn(move || cancel_later(canceller));
            let out = shuttle::future::block_on(scope.run(async {
                checkpoint().await;
                7
            }));
            thread.join().unwrap();
            assert!(scope.cancel_called());
            match out {
                Some(7) => {
                    assert!(!scope.cancelled_caught());
                    COMPLETED.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    assert!(scope.cancelled_caught());
                    CAUGHT.fetch_add(1, Ordering::Relaxed);
                }
                Some(other) => panic!("unexpected output {other}"),
            }
        },
        SCHEDULES,
    );
    let (completed, caught) = (
        COMPLETED.load(Ordering::Relaxed),
        CAUGHT.load(Ordering::Relaxed),
    );
    assert!(
        completed > 0 && caught > 0,
        "completed {completed}, caught {caught}"
    );
}

/// An outer cancel against an inner region's completion: the outer scope catches, or both
/// complete; the inner scope never catches.
#[test]
fn shuttle_outer_cancel_versus_inner_complete() {
    static COMPLETED: AtomicUsize = AtomicUsize::new(0);
    static CAUGHT: AtomicUsize = AtomicUsize::new(0);
    shuttle::check_random(
        || {
            let outer = CancelScope::new();
            let inner = CancelScope::new();
            let canceller = outer.clone();
            let thread = shuttle::thread::spawn(move || cancel_later(canceller));
            let i = inner.clone();
            let out = shuttle::future::block_on(outer.run(async move {
                i.run(async {
                    checkpoint().await;
                    1
                })
                .await
            }));
            thread.join().unwrap();
            assert!(!inner.cancelled_caught() && !inner.cancel_called());
            match out {
                Some(Some(1)) => {
                    assert!(!outer.cancelled_caught());
                    COMPLETED.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    assert!(outer.cancelled_caught());
                    CAUGHT.fetch_add(1, Ordering::Relaxed);
                }
                other => panic!("unexpected output {other:?}"),
            }
        },
        SCHEDULES,
    );
    let (completed, caught) = (
        COMPLETED.load(Ordering::Relaxed),
        CAUGHT.load(Ordering::Relaxed),
    );
    assert!(
        completed > 0 && caught > 0,
        "completed {completed}, caught {caught}"
    );
}
