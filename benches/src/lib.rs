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

/// A future that returns `Pending` `self.0` times (waking itself each time), then `self.1`.
#[derive(Debug)]
pub struct Yields(pub usize, pub usize);

impl Future for Yields {
    type Output = usize;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.0 == 0 {
            Poll::Ready(self.1)
        } else {
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// `n` futures that finish one at a time, last first: future `i` waits until future `i + 1`
/// has finished, which wakes it (and only it).
pub fn chain(n: usize) -> Vec<impl Future<Output = usize>> {
    let state = std::rc::Rc::new(std::cell::RefCell::new((n, vec![None::<Waker>; n])));
    (0..n)
        .map(|i| {
            let state = std::rc::Rc::clone(&state);
            std::future::poll_fn(move |cx| {
                let mut state = state.borrow_mut();
                if state.0 == i + 1 {
                    state.0 = i;
                    if let Some(waker) = i.checked_sub(1).and_then(|p| state.1[p].take()) {
                        waker.wake();
                    }
                    Poll::Ready(i)
                } else {
                    state.1[i] = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .collect()
}

/// The physical reference for joins: polls every unfinished future of `futs` in place until
/// all are done, and sums their outputs.
pub async fn inplace<F: Future<Output = usize> + Unpin>(mut futs: Vec<F>) -> usize {
    let mut done = vec![None; futs.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in futs.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match std::pin::Pin::new(fut).poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().sum()
}

/// The physical reference for bounded maps: `limit` futures in place, each refilled from
/// `input` as it finishes; sums the outputs.
pub async fn slots<F, I>(mut input: I, limit: usize) -> usize
where
    F: Future<Output = usize> + Unpin,
    I: Iterator<Item = F>,
{
    let mut slots: Vec<Option<F>> = (0..limit).map(|_| input.next()).collect();
    let mut sum = 0;
    std::future::poll_fn(|cx| {
        let mut busy = false;
        for slot in &mut slots {
            // Poll the slot's future; a finished one is replaced by the next input, polled at
            // once (so that it registers the waker).
            while let Some(fut) = slot {
                match std::pin::Pin::new(fut).poll(cx) {
                    Poll::Ready(v) => {
                        sum += v;
                        *slot = input.next();
                    }
                    Poll::Pending => {
                        busy = true;
                        break;
                    }
                }
            }
        }
        if busy {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    sum
}
