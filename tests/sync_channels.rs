//! Bounded memory channels: the reference's §5 memory-stream checklist on every runtime and
//! both spawn paths, poll-level wake-up checks, deadlines on virtual time, and a
//! multi-producer multi-consumer run on plain threads.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sheepdog_core::cancel::{fail_after, CancelScope};
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_core::sync::{channel, SendError, TryRecvError, TrySendError};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::{conformance, CountingWaker, Live, LiveGuard};

/// Yields until `condition` holds (other tasks make it true).
async fn until(condition: impl Fn() -> bool) {
    while !condition() {
        yield_now().await;
    }
}

conformance! {
    /// Capacity 0 is a rendezvous: a send waits until a receiver takes the item, and
    /// `try_send` fails unless a receiver is already waiting.
    async fn rendezvous_back_pressure(cx) {
        let (tx, mut rx) = channel::<u32>(0);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Full(1))));
        let sent = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&sent);
        let sender = cx.spawn(async move {
            tx.send(2).await.unwrap();
            s.store(1, Ordering::SeqCst);
            tx
        });
        until(|| rx.statistics().tasks_waiting_send == 1).await;
        assert_eq!(sent.load(Ordering::SeqCst), 0, "no receiver yet: the send waits");
        assert_eq!(rx.statistics().current_buffer_used, 0);
        assert_eq!(rx.recv().await, Some(2));
        let tx = sender.await.unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        // A waiting receiver makes `try_send` succeed.
        let receiver = cx.spawn(async move { rx.recv().await });
        until(|| tx.statistics().tasks_waiting_receive == 1).await;
        tx.try_send(3).unwrap();
        assert_eq!(receiver.await.unwrap(), Some(3));
    }

    /// A buffered channel: sends complete until it is full, then wait; items come out in
    /// order; `try_*` and statistics agree.
    async fn buffered_and_nowait(cx) {
        let (tx, mut rx) = channel(2);
        tx.send('a').await.unwrap();
        tx.try_send('b').unwrap();
        assert!(matches!(tx.try_send('c'), Err(TrySendError::Full('c'))));
        let stats = tx.statistics();
        assert_eq!((stats.current_buffer_used, stats.max_buffer_size), (2, 2));
        assert_eq!((stats.open_send_streams, stats.open_receive_streams), (1, 1));
        let tx2 = tx.clone();
        let blocked = cx.spawn(async move { tx2.send('c').await.map_err(SendError::into_inner) });
        until(|| rx.statistics().tasks_waiting_send == 1).await;
        assert_eq!(rx.try_recv(), Ok('a'));
        // Taking one moved the waiting sender's item into the buffer.
        assert_eq!(blocked.await.unwrap(), Ok(()));
        assert_eq!(rx.recv().await, Some('b'));
        assert_eq!(rx.recv().await, Some('c'));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    /// Iterating the receiver as a stream ends when the senders are gone.
    async fn iteration(cx) {
        let (tx, rx) = channel(4);
        let producer = cx.spawn(async move {
            for i in 0..100 {
                tx.send(i).await.unwrap();
            }
        });
        let all: Vec<i32> = rx.collect().await;
        producer.await.unwrap();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    /// Closing the last sender ends the stream after the buffer drains; a receiver blocked
    /// at that moment sees the end.
    async fn buffered_items_survive_sender_close(cx) {
        let (tx, mut rx) = channel(3);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let tx2 = tx.clone();
        drop(tx);
        assert_eq!(rx.statistics().open_send_streams, 1);
        drop(tx2);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));

        let (tx, mut rx) = channel::<u8>(1);
        let receiver = cx.spawn(async move { rx.recv().await });
        until(|| tx.statistics().tasks_waiting_receive == 1).await;
        drop(tx);
        assert_eq!(receiver.await.unwrap(), None);
    }

    /// Closing the last receiver fails sends — also ones already waiting — with the item
    /// returned, and drops what was buffered.
    async fn receiver_close_fails_senders(cx) {
        let live = Live::new();
        let (tx, rx) = channel::<LiveGuard>(1);
        tx.send(live.guard()).await.unwrap();
        let tx2 = tx.clone();
        let item = live.guard();
        let blocked = cx.spawn(async move { tx2.send(item).await.map_err(SendError::into_inner) });
        until(|| tx.statistics().tasks_waiting_send == 1).await;
        let rx2 = rx.clone();
        drop(rx);
        assert!(!tx.is_closed());
        drop(rx2);
        assert!(tx.is_closed());
        let returned = blocked.await.unwrap().expect_err("the item comes back");
        assert_eq!(live.count(), 1, "the buffered item was dropped, the returned one lives");
        drop(returned);
        assert!(matches!(tx.try_send(live.guard()), Err(TrySendError::Closed(_))));
        assert!(tx.send(live.guard()).await.is_err());
        assert_eq!(live.count(), 0);
    }

    /// Clones distribute items (each goes to exactly one receiver) and count as open ends.
    async fn clones_distribute(cx) {
        let (tx, rx) = channel(8);
        let received = Arc::new(AtomicUsize::new(0));
        let sum = Arc::new(AtomicUsize::new(0));
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let (mut rx, received, sum) = (rx.clone(), Arc::clone(&received), Arc::clone(&sum));
                cx.spawn(async move {
                    while let Some(item) = rx.recv().await {
                        received.fetch_add(1, Ordering::SeqCst);
                        sum.fetch_add(item, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        assert_eq!(tx.statistics().open_receive_streams, 5);
        drop(rx);
        let producers: Vec<_> = (0..3)
            .map(|p| {
                let tx = tx.clone();
                cx.spawn(async move {
                    for i in 0..100 {
                        tx.send(p * 100 + i).await.unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        for task in producers.into_iter().chain(consumers) {
            task.await.unwrap();
        }
        assert_eq!(received.load(Ordering::SeqCst), 300);
        assert_eq!(sum.load(Ordering::SeqCst), (0..300).sum::<usize>());
    }

    /// Waiting senders deliver in the order they started waiting.
    async fn senders_are_fifo(cx) {
        let (tx, mut rx) = channel(0);
        let mut senders = Vec::new();
        for i in 0..50 {
            let tx = tx.clone();
            senders.push(cx.spawn(async move { tx.send(i).await.unwrap() }));
            until(|| rx.statistics().tasks_waiting_send == i + 1).await;
        }
        for i in 0..50 {
            assert_eq!(rx.recv().await, Some(i));
        }
        for sender in senders {
            sender.await.unwrap();
        }
    }

    /// A cancelled send delivers nothing and leaves the line; a cancelled receive leaves the
    /// line, and an item handed to it goes to the next receiver.
    async fn cancelled_send_and_receive(cx) {
        let (tx, mut rx) = channel::<u32>(0);
        let scope = CancelScope::new();
        let (s, t) = (scope.clone(), tx.clone());
        let sender = cx.spawn(async move { s.run(t.send(1)).await });
        until(|| tx.statistics().tasks_waiting_send == 1).await;
        scope.cancel();
        assert_eq!(sender.await.unwrap(), None);
        assert_eq!(tx.statistics().tasks_waiting_send, 0);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "the cancelled item was not sent");

        // A receiver that is handed an item and cancelled before it runs passes it on.
        let mut other = rx.clone();
        let scope = CancelScope::new();
        {
            let mut first = pin!(scope.run(rx.recv()));
            assert!(first.as_mut().now_or_never().is_none());
            let mut second = pin!(other.recv());
            assert!(second.as_mut().now_or_never().is_none());
            tx.try_send(5).expect("a receiver waits");
            scope.cancel();
            assert_eq!(first.as_mut().now_or_never(), Some(None));
            assert_eq!(second.as_mut().now_or_never(), Some(Some(5)));
        }
        // With nobody else waiting, the item goes back to the front of the buffer.
        {
            let mut only = pin!(rx.recv());
            assert!(only.as_mut().now_or_never().is_none());
            tx.try_send(6).unwrap();
            tx.try_send(7).expect_err("rendezvous: nobody waits any more");
        }
        assert_eq!(other.try_recv(), Ok(6));
    }

    /// Waits inside an already cancelled scope never complete, even when they could.
    async fn channel_waits_are_cancellation_points(cx) {
        let (tx, mut rx) = channel(1);
        let scope = CancelScope::new();
        scope.cancel();
        assert_eq!(scope.run(tx.send(1)).await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.try_send(2).unwrap();
        let scope = CancelScope::new();
        scope.cancel();
        assert_eq!(scope.run(rx.recv()).await, None);
        assert_eq!(rx.try_recv(), Ok(2));
    }
}

fn poll_with<F: Future>(future: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(waker))
}

/// A send wakes exactly the oldest waiting receiver, once; closing the senders wakes each
/// remaining receiver once.
#[test]
fn send_wakes_only_the_oldest_receiver() {
    let (tx, mut rx1) = channel::<u8>(4);
    let mut rx2 = rx1.clone();
    let (wakes1, waker1) = CountingWaker::new();
    let (wakes2, waker2) = CountingWaker::new();
    let mut recv1 = pin!(rx1.recv());
    let mut recv2 = pin!(rx2.recv());
    assert!(poll_with(recv1.as_mut(), &waker1).is_pending());
    assert!(poll_with(recv2.as_mut(), &waker2).is_pending());
    tx.try_send(1).unwrap();
    assert_eq!((wakes1.wakes(), wakes2.wakes()), (1, 0));
    assert_eq!(poll_with(recv1.as_mut(), &waker1), Poll::Ready(Some(1)));
    drop(tx);
    assert_eq!((wakes1.wakes(), wakes2.wakes()), (1, 1));
    assert_eq!(poll_with(recv2.as_mut(), &waker2), Poll::Ready(None));
}

/// Taking an item wakes the oldest blocked sender, once; a dropped send keeps no waker.
#[test]
fn receive_wakes_the_oldest_sender() {
    let (tx, mut rx) = channel::<u8>(1);
    tx.try_send(0).unwrap();
    let (wakes1, waker1) = CountingWaker::new();
    let (wakes2, waker2) = CountingWaker::new();
    let mut send1 = pin!(tx.send(1));
    {
        let mut send2 = pin!(tx.send(2));
        assert!(poll_with(send1.as_mut(), &waker1).is_pending());
        assert!(poll_with(send2.as_mut(), &waker2).is_pending());
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!((wakes1.wakes(), wakes2.wakes()), (1, 0));
        assert_eq!(poll_with(send1.as_mut(), &waker1), Poll::Ready(Ok(())));
    }
    drop(waker2);
    assert_eq!(
        Arc::strong_count(&wakes2),
        1,
        "the dropped send kept no waker"
    );
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(
        rx.try_recv(),
        Err(TryRecvError::Empty),
        "the dropped send sent nothing"
    );
}

/// A send under `fail_after` gives up at the deadline on virtual time; the item is not
/// delivered and the line is empty.
#[test]
fn send_and_receive_time_out_on_virtual_time() {
    VirtualRuntime::new().block_on(async {
        let start = time::now();
        let (tx, mut rx) = channel::<u8>(0);
        assert!(fail_after(Duration::from_secs(2), tx.send(1))
            .await
            .is_err());
        assert_eq!(time::now(), start + Duration::from_secs(2));
        assert_eq!(tx.statistics().tasks_waiting_send, 0);
        assert!(fail_after(Duration::from_secs(3), rx.recv()).await.is_err());
        assert_eq!(rx.statistics().tasks_waiting_receive, 0);
        assert_eq!(time::now(), start + Duration::from_secs(5));
    });
}

/// Four producer and four consumer threads over a small buffer: every item arrives exactly
/// once.
#[test]
fn threads_exchange_every_item_once() {
    const PER_PRODUCER: usize = if cfg!(miri) { 20 } else { 5_000 };
    let (tx, rx) = channel::<usize>(2);
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    futures::executor::block_on(tx.send(p * PER_PRODUCER + i)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let mut rx = rx.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(item) = futures::executor::block_on(rx.recv()) {
                    got.push(item);
                }
                got
            })
        })
        .collect();
    drop(rx);
    for producer in producers {
        producer.join().unwrap();
    }
    let mut all: Vec<usize> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..4 * PER_PRODUCER).collect::<Vec<_>>());
}
