//! The virtual-time runtime: the clock moves only by `advance` or by jumping to the next timer
//! when everything is idle; runs are deterministic; a deadlock fails instead of hanging.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::poll_fn;
use sheepdog_core::runtime::{self, yield_now, Runtime};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_core::time;
use sheepdog_tests::pending_until_dropped;

/// An hour of exponential back-off finishes at once, at exactly the virtual instants.
#[test]
fn an_hour_of_backoff_takes_no_real_time() {
    let rt = VirtualRuntime::new();
    let clock = rt.clock();
    let wakes = rt.block_on(async {
        let start = time::now();
        let mut wakes = Vec::new();
        let mut delay = Duration::from_secs(1);
        while delay <= Duration::from_secs(2048) {
            time::sleep(delay).await;
            wakes.push((time::now() - start).as_secs());
            delay *= 2;
        }
        wakes
    });
    assert_eq!(
        wakes,
        [1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, 4095]
    );
    assert_eq!(clock.elapsed(), Duration::from_secs(4095));
}

/// When everything is idle the clock jumps to the earliest timer, one timer at a time, so each
/// sleeper wakes at its own deadline.
#[test]
fn idle_runtime_jumps_to_each_timer_in_order() {
    let rt = VirtualRuntime::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    rt.block_on(async {
        let start = time::now();
        let handles: Vec<_> = [7u64, 3, 5]
            .into_iter()
            .map(|secs| {
                let log = Arc::clone(&log);
                runtime::spawn(async move {
                    time::sleep(Duration::from_secs(secs)).await;
                    log.lock()
                        .unwrap()
                        .push((secs, (time::now() - start).as_secs()));
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
    });
    assert_eq!(*log.lock().unwrap(), [(3, 3), (5, 5), (7, 7)]);
    assert_eq!(rt.clock().elapsed(), Duration::from_secs(7));
}

/// `advance` fires due timers without jumping further; the clock stays where it was put.
#[test]
fn advance_moves_the_clock_exactly() {
    let rt = VirtualRuntime::new();
    let clock = rt.clock();
    rt.block_on(async {
        let sleeper = runtime::spawn(time::sleep(Duration::from_secs(5)));
        yield_now().await; // the sleeper registers its timer
        clock.advance(Duration::from_secs(2));
        yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(3));
        sleeper.await.unwrap();
        assert_eq!(clock.elapsed(), Duration::from_secs(5));
    });
}

/// With nothing to run and no timer pending, the runtime waits for a wake-up from another
/// thread (here a channel send) instead of declaring a deadlock, and virtual time stays put.
#[test]
fn idle_runtime_waits_for_other_threads() {
    let rt = VirtualRuntime::new();
    let (tx, rx) = futures::channel::oneshot::channel();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        tx.send("from another thread").unwrap();
    });
    assert_eq!(rt.block_on(rx).unwrap(), "from another thread");
    sender.join().unwrap();
    assert_eq!(rt.clock().elapsed(), Duration::ZERO);
}

/// A timer moved earlier while a task is parked on it wakes the task at the new deadline.
#[test]
fn timer_reset_earlier_while_parked() {
    let rt = VirtualRuntime::new();
    let clock = rt.clock();
    rt.block_on(async {
        let start = time::now();
        let mut timer = rt.timer(start + Duration::from_secs(3600));
        let parked = poll_fn(|cx| std::task::Poll::Ready(timer.as_mut().poll(cx).is_pending()));
        assert!(parked.await);
        timer.as_mut().reset(start + Duration::from_secs(10));
        timer.await;
        assert_eq!(time::now() - start, Duration::from_secs(10));
    });
    assert_eq!(clock.elapsed(), Duration::from_secs(10));
}

/// Two runs of the same program interleave their tasks identically.
#[test]
fn runs_are_deterministic() {
    fn run() -> Vec<(u32, u32)> {
        let rt = VirtualRuntime::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        rt.block_on(async {
            let handles: Vec<_> = (0..8u32)
                .map(|task| {
                    let log = Arc::clone(&log);
                    runtime::spawn(async move {
                        for step in 0..4u32 {
                            log.lock().unwrap().push((task, step));
                            if (task + step) % 3 == 0 {
                                time::sleep(Duration::from_millis(u64::from(task))).await;
                            } else {
                                yield_now().await;
                            }
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.await.unwrap();
            }
        });
        let log = log.lock().unwrap().clone();
        log
    }
    let first = run();
    assert_eq!(first.len(), 32);
    for _ in 0..5 {
        assert_eq!(run(), first);
    }
}

/// A deadline already reached completes without registering a timer.
#[test]
fn past_deadline_registers_no_timer() {
    let rt = VirtualRuntime::new();
    rt.block_on(async {
        time::sleep(Duration::ZERO).await;
        time::sleep_until(time::now() - Duration::from_secs(1)).await;
    });
    assert_eq!(rt.clock().elapsed(), Duration::ZERO);
    assert!(format!("{rt:?}").contains("pending_timers: 0"));
}

/// Dropping the runtime drops every task it holds; their handles report `Cancelled`.
#[test]
#[allow(
    clippy::async_yields_async,
    reason = "the handle is taken out of the runtime on purpose, to await it after shutdown"
)]
fn dropping_the_runtime_cancels_its_tasks() {
    let rt = VirtualRuntime::new();
    let (never, dropped) = pending_until_dropped();
    let handle = rt.block_on(async {
        let handle = runtime::spawn(never);
        yield_now().await;
        handle
    });
    assert_eq!(rt.live_tasks(), 1);
    drop(rt);
    futures::executor::block_on(dropped).unwrap();
    assert!(futures::executor::block_on(handle)
        .unwrap_err()
        .is_cancelled());
}

/// Everything idle, no timer, nobody to wake it: `block_on` panics instead of hanging.
#[test]
#[should_panic(expected = "VirtualRuntime deadlock")]
fn deadlock_panics_instead_of_hanging() {
    let rt = VirtualRuntime::new().deadlock_timeout(Duration::from_millis(20));
    rt.block_on(futures::future::pending::<()>());
}

/// `block_on` cannot be re-entered from inside the runtime.
#[test]
#[should_panic(expected = "already running")]
fn reentrant_block_on_panics() {
    let rt = Arc::new(VirtualRuntime::new());
    let inner = Arc::clone(&rt);
    rt.block_on(async move { inner.block_on(async {}) });
}

/// Tasks spawned while no `block_on` runs wait for the next one; the runtime is reusable.
#[test]
fn tasks_wait_for_the_next_block_on() {
    let rt = VirtualRuntime::new();
    let handle = rt.spawn(async { 11 });
    assert_eq!(rt.live_tasks(), 1);
    assert_eq!(rt.block_on(handle).unwrap(), 11);
    assert_eq!(rt.block_on(async { 2 }), 2);
}
