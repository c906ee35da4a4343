//! Benchmarks live in this package's `benches` targets; see docs/performance.md. This library
//! holds what several of them share.

use std::future::Future;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};

/// Polls `future` once with a no-op waker; it must be ready.
///
/// # Panics
///
/// If the future is not ready at its first poll.
pub fn poll_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("expected a ready future"),
    }
}

/// Runs `op` `ops` times on this thread and on a second one, started together: the two-thread
/// contention benchmarks.
pub fn on_two_threads<S: Sync>(shared: &S, ops: usize, op: fn(&S)) {
    let barrier = Barrier::new(2);
    let work = || {
        barrier.wait();
        for _ in 0..ops {
            op(std::hint::black_box(shared));
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(work);
        work();
    });
}
