//! Poll-level and cross-thread checks of the scope tree: no waker outlives its region, a
//! cancel racing a completion always ends in exactly one consistent outcome (both outcomes
//! occur), and nothing hangs.

use std::future::Future;
use std::pin::pin;

use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};

use sheepdog_core::cancel::{checkpoint, CancelScope};
use sheepdog_core::runtime::yield_now;
use sheepdog_tests::CountingWaker;

/// A region keeps its task's waker only while it runs: once it has completed (or been
/// dropped), the scope handle that outlives it holds no waker.
#[test]
fn no_waker_is_kept_after_a_region_ends() {
    for cancel in [false, true] {
        let (counter, waker) = CountingWaker::new();
        let scope = CancelScope::new();
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        {
            let mut region = pin!(scope.run(rx));
            let mut cx = Context::from_waker(&waker);
            assert!(region.as_mut().poll(&mut cx).is_pending());
            if cancel {
                scope.cancel();
                assert_eq!(counter.wakes(), 1, "cancel wakes the region");
                assert!(matches!(region.as_mut().poll(&mut cx), Poll::Ready(None)));
            } else {
                tx.send(()).unwrap();
                assert!(matches!(
                    region.as_mut().poll(&mut cx),
                    Poll::Ready(Some(Ok(())))
                ));
            }
        }
        drop(waker);
        assert_eq!(
            Arc::strong_count(&counter),
            1,
            "the scope (still alive) released the waker"
        );
        assert_eq!(scope.cancelled_caught(), cancel);
    }
}

/// A scope runs one region only: a second region panics at its first poll, and dropping it
/// leaves the first one as it was (still woken by its scope's cancellation).
#[test]
fn a_second_region_leaves_the_first_alone() {
    let (counter, waker) = CountingWaker::new();
    let scope = CancelScope::new();
    let mut first = pin!(scope.run(futures::future::pending::<()>()));
    assert!(first
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut second = pin!(scope.run(async {}));
        let _ = second
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()));
    }));
    assert!(second.is_err(), "a scope runs one region only");
    scope.cancel();
    assert_eq!(
        counter.wakes(),
        1,
        "the first region is still woken by its scope"
    );
    assert!(matches!(
        first.as_mut().poll(&mut Context::from_waker(&waker)),
        Poll::Ready(None)
    ));
    assert!(scope.cancelled_caught());
}

/// Dropping a region mid-way releases its waker and unlinks it from its parent.
#[test]
fn dropping_a_region_releases_everything() {
    let (counter, waker) = CountingWaker::new();
    let outer = CancelScope::new();
    let inner = CancelScope::new();
    {
        let mut region = pin!(outer.run(inner.run(futures::future::pending::<()>())));
        assert!(region
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
    }
    drop(waker);
    assert_eq!(Arc::strong_count(&counter), 1);
    // Cancelling the outer scope afterwards wakes nobody and does not panic.
    outer.cancel();
    assert_eq!(counter.wakes(), 0);
}

/// `cancel` on one thread races a region completing on another. Every run ends in exactly
/// one consistent outcome — the output with nothing caught, or `None` with the cancellation
/// caught — and across runs both outcomes occur. Nothing hangs.
#[test]
fn cancel_races_completion() {
    let runs = if cfg!(miri) { 20 } else { 2_000 };
    let mut completed = 0;
    let mut caught = 0;
    for run in 0..runs {
        let scope = CancelScope::new();
        let canceller = scope.clone();
        let barrier = Arc::new(Barrier::new(2));
        let b = Arc::clone(&barrier);
        let spins = run % 64;
        let thread = std::thread::spawn(move || {
            b.wait();
            for _ in 0..spins {
                std::hint::spin_loop();
            }
            canceller.cancel();
        });
        let out = futures::executor::block_on(scope.run(async {
            barrier.wait();
            for _ in 0..(run % 3) {
                yield_now().await;
            }
            checkpoint().await;
            run
        }));
        thread.join().unwrap();
        assert!(scope.cancel_called());
        match out {
            Some(value) => {
                assert_eq!(value, run);
                assert!(!scope.cancelled_caught());
                completed += 1;
            }
            None => {
                assert!(scope.cancelled_caught());
                caught += 1;
            }
        }
    }
    assert!(
        completed > 0 && caught > 0,
        "completed {completed}, caught {caught}"
    );
}
