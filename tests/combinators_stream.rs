//! `CompletionStream`: the reference checklist rows (completion order with indices, empty,
//! limit and no limit, early break cancels the rest, errors) on every runtime and both spawn
//! paths, and the progress guarantees of each variant on the virtual-time runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::pending;
use futures::{Stream, StreamExt};
use sheepdog_core::combinators::{CompletionStream, Outcome, ZeroLimit};
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::{after_yields, conformance, pending_until_dropped, BoxFut, Live};

/// Polls `stream` once (admitting and starting its futures) and ignores the result.
async fn poll_once<S: Stream + Unpin>(stream: &mut S) {
    futures::future::poll_fn(|cx| {
        let _ = stream.poll_next_unpin(cx);
        std::task::Poll::Ready(())
    })
    .await;
}

conformance! {
    /// Items come in completion order, each with its input index.
    async fn completion_order_with_indices(cx) {
        let stream = CompletionStream::new([3, 0, 2, 1].map(|y| after_yields(y, y * 100)));
        let items: Vec<(usize, usize)> = stream.collect().await;
        assert_eq!(items, vec![(1, 0), (3, 100), (2, 200), (0, 300)]);
    }

    /// Empty input ends at once.
    async fn empty_input_ends_at_once(cx) {
        let mut stream = CompletionStream::new(Vec::<BoxFut<u8>>::new());
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.size_hint(), (0, Some(0)));
    }

    /// With a limit, at most that many run, admitted in input order and made only when
    /// admitted; without one, every future starts at the first poll.
    async fn limit_and_no_limit(cx) {
        let made = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&made);
        let futures = (0..6).map(move |i| {
            m.fetch_add(1, Ordering::SeqCst);
            after_yields(6 - i, i)
        });
        let mut stream = CompletionStream::new(futures).limit(2).unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 0, "nothing is made before the first poll");
        let first = stream.next().await;
        assert_eq!(first, Some((1, 1)), "of the first two admitted, index 1 finishes first");
        assert!(stream.in_flight() <= 2);
        let rest: Vec<usize> = stream.map(|(i, _)| i).collect().await;
        assert_eq!(rest.len(), 5);
        assert_eq!(made.load(Ordering::SeqCst), 6);

        let mut unlimited = CompletionStream::new((0..5).map(|i| after_yields(10, i)));
        poll_once(&mut unlimited).await;
        assert_eq!(unlimited.in_flight(), 5);
        assert_eq!(CompletionStream::new([after_yields(0, 1)]).limit(0).err(), Some(ZeroLimit));
    }

    /// Breaking out early (dropping the stream) cancels what is left, and never starts the
    /// queued items.
    async fn early_break_cancels_the_rest(cx) {
        let live = Live::new();
        let made = AtomicUsize::new(0);
        let futures = (0..10_usize).map(|i| {
            made.fetch_add(1, Ordering::SeqCst);
            let guard = live.guard();
            Box::pin(async move {
                let _guard = guard;
                if i == 0 {
                    yield_now().await;
                    return i;
                }
                pending::<()>().await;
                i
            }) as BoxFut<usize>
        });
        let mut stream = CompletionStream::new(futures).limit(3).unwrap();
        let first = stream.next().await;
        assert_eq!(first.map(|(index, _)| index), Some(0));
        // A free slot is refilled when the stream is next polled, so after the break only the
        // two other admitted futures exist.
        assert_eq!(live.count(), 2);
        drop(stream);
        assert_eq!(live.count(), 0);
        assert_eq!(made.load(Ordering::SeqCst), 3, "queued items were never made");
    }

    /// Errors are ordinary items; the consumer decides, and stopping at one cancels the rest.
    async fn errors_are_items_and_break_cancels(cx) {
        let live = Live::new();
        let guard = live.guard();
        let futs: Vec<BoxFut<Result<u8, &str>>> = vec![
            Box::pin(async move {
                let _guard = guard;
                pending::<()>().await;
                Ok(0)
            }),
            after_yields(1, Err("bad input")),
            after_yields(0, Ok(2)),
        ];
        let mut stream = CompletionStream::new(futs);
        let mut seen = Vec::new();
        while let Some((index, result)) = stream.next().await {
            seen.push(index);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(seen, vec![2, 1]);
        drop(stream);
        assert_eq!(live.count(), 0);
    }

    /// The settled variant yields every outcome in completion order with its index: errors
    /// and panics are items, none of them stops the others, and the limit holds.
    async fn settled_variant_yields_every_outcome(cx) {
        let made = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&made);
        let futures = (0..6_usize).map(move |i| {
            m.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                for _ in 0..(6 - i) {
                    yield_now().await;
                }
                match i {
                    1 => Err(format!("call {i} failed")),
                    4 => panic!("call {i} panicked"),
                    _ => Ok(i * 10),
                }
            }) as BoxFut<Result<usize, String>>
        });
        let mut stream = CompletionStream::settled(futures).limit(2).unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 0, "nothing is made before the first poll");
        let mut items = Vec::new();
        while let Some((index, outcome)) = stream.next().await {
            assert!(stream.in_flight() <= 2);
            items.push((index, outcome));
        }
        assert_eq!(items[0].0, 1, "of the first two admitted, index 1 finishes first");
        items.sort_by_key(|(index, _)| *index);
        let order: Vec<usize> = items.iter().map(|(index, _)| *index).collect();
        assert_eq!(order, (0..6).collect::<Vec<_>>());
        assert!(matches!(items[0].1, Outcome::Ok(0)));
        assert_eq!(items[1].1.err().map(String::as_str), Some("call 1 failed"));
        assert_eq!(items[2].1.ok(), Some(&20));
        let panic = items[4].1.panic().expect("call 4 panicked");
        assert_eq!(panic.message(), Some("call 4 panicked"));
        assert_eq!(made.load(Ordering::SeqCst), 6);
        assert_eq!(CompletionStream::settled([after_yields(0, Ok::<u8, ()>(1))]).limit(0).err(), Some(ZeroLimit));
    }

    /// Dropping a settled stream cancels what is left, like the plain one.
    async fn settled_variant_drop_cancels(cx) {
        let live = Live::new();
        let futures = (0..5_usize).map(|i| {
            let guard = live.guard();
            Box::pin(async move {
                let _guard = guard;
                if i == 2 {
                    return Err(i);
                }
                pending::<()>().await;
                Ok(i)
            }) as BoxFut<Result<usize, usize>>
        });
        let mut stream = CompletionStream::settled(futures);
        let first = stream.next().await.expect("one item");
        assert_eq!(first.0, 2);
        assert_eq!(first.1.err(), Some(&2));
        assert_eq!(live.count(), 4);
        drop(stream);
        assert_eq!(live.count(), 0);
    }

    /// The spawned variant yields every output with its index, and dropping it aborts the
    /// spawned tasks.
    async fn spawned_variant_collects_and_aborts_on_drop(cx) {
        let stream = CompletionStream::spawned((0..5_u32).map(|i| async move {
            yield_now().await;
            i * i
        }))
        .unwrap()
        .limit(2)
        .unwrap();
        let mut items: Vec<(usize, u32)> =
            stream.map(|(i, out)| (i, out.unwrap())).collect().await;
        items.sort_unstable();
        assert_eq!(items, vec![(0, 0), (1, 1), (2, 4), (3, 9), (4, 16)]);

        let (futures, dropped): (Vec<_>, Vec<_>) = (0..3).map(|_| pending_until_dropped()).unzip();
        let mut stream = CompletionStream::spawned(futures).unwrap();
        poll_once(&mut stream).await;
        assert_eq!(stream.in_flight(), 3);
        drop(stream);
        for signal in dropped {
            signal.await.expect("the spawned task's future was dropped");
        }
    }
}

/// Runs three 10 ms futures through a stream whose consumer spends 100 ms on each item, and
/// returns when each future finished (virtual time, from the start).
fn finish_times(spawned: bool) -> Vec<Duration> {
    let rt = VirtualRuntime::new();
    let done = Arc::new(Mutex::new(Vec::new()));
    let d = Arc::clone(&done);
    rt.block_on(async move {
        let start = time::now();
        let futures = (0..3).map(move |_| {
            let d = Arc::clone(&d);
            async move {
                time::sleep(Duration::from_millis(10)).await;
                time::sleep(Duration::from_millis(10)).await;
                d.lock().unwrap().push(time::now() - start);
            }
        });
        let consume = || time::sleep(Duration::from_millis(100));
        if spawned {
            let mut stream = CompletionStream::spawned(futures).unwrap();
            while stream.next().await.is_some() {
                consume().await;
            }
        } else {
            let mut stream = CompletionStream::new(futures);
            while stream.next().await.is_some() {
                consume().await;
            }
        }
    });
    let times = done.lock().unwrap();
    times.clone()
}

/// futures-rs 2387: with the spawned variant, in-flight work keeps progressing while the
/// consumer is busy between items: all three finish at 20 ms.
#[test]
fn spawned_variant_progresses_while_consumer_is_busy() {
    assert_eq!(finish_times(true), vec![Duration::from_millis(20); 3]);
}

/// The documented limit of the in-task variant: its futures run only while the stream is
/// polled. All three timers fire at 20 ms, but each future is only polled to completion
/// when the consumer asks for the next item: at 20, 120 and 220 ms.
#[test]
fn in_task_variant_progresses_only_while_polled() {
    let times = finish_times(false);
    assert_eq!(times, [20, 120, 220].map(Duration::from_millis));
}
