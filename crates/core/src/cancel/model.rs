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

/// Explores `model` over random schedules; `model` returns which of its two outcomes it
/// reached (here: whether the region completed, `true`, or its scope caught the cancellation,
/// `false`). Both must occur. The sync models use it too.
pub(crate) fn explore(model: fn() -> bool) {
    let completed = std::sync::Arc::new(AtomicUsize::new(0));
    let caught = std::sync::Arc::new(AtomicUsize::new(0));
    let (c, k) = (
        std::sync::Arc::clone(&completed),
        std::sync::Arc::clone(&caught),
    );
    shuttle::check_random(
        move || {
            let counter = if model() { &c } else { &k };
            counter.fetch_add(1, Ordering::Relaxed);
        },
        SCHEDULES,
    );
    let (completed, caught) = (
        completed.load(Ordering::Relaxed),
        caught.load(Ordering::Relaxed),
    );
    assert!(
        completed > 0 && caught > 0,
        "completed {completed}, caught {caught}"
    );
}

/// `cancel` on one thread against the region's own completion on another.
#[test]
fn shuttle_cancel_versus_complete() {
    explore(|| {
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
                true
            }
            None => {
                assert!(scope.cancelled_caught());
                false
            }
            Some(other) => panic!("unexpected output {other}"),
        }
    });
}

/// An outer cancel against an inner region's completion: the outer scope catches, or both
/// complete; the inner scope never catches.
#[test]
fn shuttle_outer_cancel_versus_inner_complete() {
    explore(|| {
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
                true
            }
            None => {
                assert!(outer.cancelled_caught());
                false
            }
            other => panic!("unexpected output {other:?}"),
        }
    });
}
