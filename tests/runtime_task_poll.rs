//! Poll-level checks of sheepdog's task wrapper and join handle, with counting wakers: no lost
//! wake-ups, no spurious ones, and nothing kept alive after a task settles.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use sheepdog_core::runtime::{JoinError, TaskFuture};
use sheepdog_tests::CountingWaker;

fn counting() -> (Arc<CountingWaker>, Waker) {
    CountingWaker::new()
}

fn wakes(counter: &CountingWaker) -> usize {
    counter.wakes()
}

/// Completing the task wakes the handle's waiter exactly once and hands over the output.
#[test]
fn completion_wakes_the_joiner_once() {
    let (gate_tx, gate_rx) = futures::channel::oneshot::channel::<u8>();
    let (task, handle) = TaskFuture::new(async move { gate_rx.await.unwrap() * 2 }, None);
    let mut task = pin!(task);
    let mut handle = pin!(handle);
    let (task_count, task_waker) = counting();
    let (join_count, join_waker) = counting();

    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&task_waker))
        .is_pending());
    assert!(handle
        .as_mut()
        .poll(&mut Context::from_waker(&join_waker))
        .is_pending());
    // Polling the handle again with the same waker registers nothing new.
    assert!(handle
        .as_mut()
        .poll(&mut Context::from_waker(&join_waker))
        .is_pending());

    gate_tx.send(21).unwrap();
    assert_eq!(wakes(&task_count), 1, "the gate woke the task");
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&task_waker))
        .is_ready());
    assert_eq!(wakes(&join_count), 1, "completion wakes the joiner once");
    match handle.as_mut().poll(&mut Context::from_waker(&join_waker)) {
        Poll::Ready(Ok(42)) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(wakes(&join_count), 1);
}

/// Abort wakes the task once; the next poll drops the future and reports `Cancelled`.
#[test]
fn abort_wakes_the_task_and_cancels() {
    let (task, handle) = TaskFuture::new(futures::future::pending::<()>(), None);
    let mut task = pin!(task);
    let (task_count, task_waker) = counting();
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&task_waker))
        .is_pending());
    handle.abort();
    handle.abort();
    assert_eq!(wakes(&task_count), 1, "a second abort does not wake again");
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&task_waker))
        .is_ready());
    let outcome = futures::executor::block_on(handle);
    assert!(matches!(outcome, Err(JoinError::Cancelled)));
}

/// A task dropped by its runtime before completion reports `Cancelled` and wakes the joiner.
#[test]
fn dropped_task_reports_cancelled() {
    let (task, handle) = TaskFuture::new(futures::future::pending::<()>(), None);
    let mut handle = pin!(handle);
    let (join_count, join_waker) = counting();
    assert!(handle
        .as_mut()
        .poll(&mut Context::from_waker(&join_waker))
        .is_pending());
    drop(task);
    assert_eq!(wakes(&join_count), 1);
    assert!(matches!(
        handle.as_mut().poll(&mut Context::from_waker(&join_waker)),
        Poll::Ready(Err(JoinError::Cancelled))
    ));
}

/// Once the handle has its output, dropping it does not wake (or abort) the finished task.
#[test]
fn dropping_a_settled_handle_does_not_wake_the_task() {
    let (task, handle) = TaskFuture::new(async { 1 }, None);
    let mut task = pin!(task);
    let (task_count, task_waker) = counting();
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&task_waker))
        .is_ready());
    let mut handle = handle;
    assert!(matches!(
        std::pin::Pin::new(&mut handle)
            .poll(&mut Context::from_waker(futures::task::noop_waker_ref())),
        Poll::Ready(Ok(1))
    ));
    drop(handle);
    assert_eq!(wakes(&task_count), 0);
}

/// A task registers its waker only when it waits, and the waker it registered is released
/// once both the task and its handle are gone: nothing is kept alive by a settled task.
#[test]
fn wakers_are_registered_lazily_and_released() {
    // Finished at the first poll: no waker is registered at all.
    let (task, handle) = TaskFuture::new(async { 1 }, None);
    let mut task = pin!(task);
    let (count, waker) = counting();
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_ready());
    drop(waker);
    assert_eq!(
        Arc::strong_count(&count),
        1,
        "no waker kept for a task that never waited"
    );
    drop(handle);

    // Waited once: the waker is registered, then released with the task state.
    let (gate_tx, gate_rx) = futures::channel::oneshot::channel::<()>();
    let (task, handle) = TaskFuture::new(async move { gate_rx.await.ok() }, None);
    let mut task = Box::pin(task);
    let (count, waker) = counting();
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    gate_tx.send(()).unwrap();
    assert!(task
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_ready());
    drop(waker);
    drop(task);
    assert_eq!(futures::executor::block_on(handle).unwrap(), Some(()));
    assert_eq!(
        Arc::strong_count(&count),
        1,
        "the registered waker was released"
    );
}

/// A panic during poll is caught, the future is dropped, and the joiner gets the payload.
#[test]
fn panic_is_caught_at_poll() {
    let (task, handle) = TaskFuture::new(async { panic!("inside poll") }, None);
    let mut task = pin!(task);
    let poll = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        task.as_mut()
            .poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }));
    assert!(
        matches!(poll, Ok(Poll::Ready(()))),
        "the panic must not escape"
    );
    let err = futures::executor::block_on(handle).unwrap_err();
    assert_eq!(err.panic_message(), Some("inside poll"));
}
