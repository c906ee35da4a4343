//! What each adapter must do on its own: shutting down cancels its tasks, no task outlives a
//! dropped executor, a missing runtime is a typed error, and the async-io fallback works with
//! no runtime at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sheepdog_core::runtime::{self, yield_now, NoRuntime, Runtime};
use sheepdog_core::time;
use sheepdog_smol::SmolRuntime;
use sheepdog_tests::{pending_until_dropped, Live};
use sheepdog_tokio::{NoTokioRuntime, TokioRuntime};

/// No task outlives a dropped smol executor: every future is dropped and every handle reports
/// `Cancelled`.
#[test]
fn smol_dropped_executor_drops_every_task() {
    let live = Live::new();
    let executor = Arc::new(smol::Executor::new());
    let rt = SmolRuntime::with_executor(Arc::clone(&executor));
    let handles = rt.block_on(async {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let guard = live.guard();
                runtime::spawn(async move {
                    let _guard = guard;
                    futures::future::pending::<()>().await;
                })
            })
            .collect();
        // Let every task start, so each holds its guard inside a running future.
        for _ in 0..10 {
            yield_now().await;
        }
        handles
    });
    assert_eq!(live.count(), 100);
    drop(rt);
    drop(executor);
    assert_eq!(live.count(), 0, "a task outlived its executor");
    for handle in handles {
        let err = futures::executor::block_on(handle).unwrap_err();
        assert!(err.is_cancelled());
    }
}

/// Spawning through a handle whose executor is gone reports `Cancelled` instead of hanging.
#[test]
fn smol_spawn_after_executor_dropped_is_cancelled() {
    let executor = Arc::new(smol::Executor::new());
    let rt = SmolRuntime::with_executor(Arc::clone(&executor));
    let handle = rt.handle();
    drop(rt);
    drop(executor);
    let err = futures::executor::block_on(runtime::spawn_on(&*handle, async { 1 })).unwrap_err();
    assert!(err.is_cancelled());
}

/// Dropping an owned tokio runtime cancels its unfinished tasks.
#[test]
#[allow(
    clippy::async_yields_async,
    reason = "the handle is taken out of the runtime on purpose, to await it after shutdown"
)]
fn tokio_shutdown_cancels_tasks() {
    for rt in [
        TokioRuntime::new_current_thread().unwrap(),
        TokioRuntime::new_multi_thread(2).unwrap(),
    ] {
        let (never, dropped) = pending_until_dropped();
        let handle = rt.block_on(async {
            let handle = runtime::spawn(never);
            yield_now().await;
            handle
        });
        drop(rt);
        futures::executor::block_on(dropped).expect("future dropped at shutdown");
        let err = futures::executor::block_on(handle).unwrap_err();
        assert!(err.is_cancelled());
    }
}

/// An owned tokio runtime dropped from inside an async context shuts down in the background
/// instead of panicking.
#[test]
fn tokio_owned_runtime_dropped_inside_async_context() {
    let outer = TokioRuntime::new_current_thread().unwrap();
    let inner = TokioRuntime::new_multi_thread(1).unwrap();
    outer.block_on(async move { drop(inner) });
}

/// `TokioRuntime::current` outside tokio is a typed error that says what to do.
#[test]
fn tokio_current_outside_a_runtime_is_a_typed_error() {
    let err = TokioRuntime::current().unwrap_err();
    assert_eq!(err, NoTokioRuntime);
    let message = err.to_string();
    assert!(
        message.contains("TokioRuntime::new_multi_thread"),
        "{message}"
    );

    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let found = tokio_rt.block_on(async { TokioRuntime::current().is_ok() });
    assert!(found);
}

/// A `TokioRuntime` built from another runtime's handle drives it (multi-thread handle
/// `block_on`), and the tokio handle is reachable.
#[test]
fn tokio_from_handle_works() {
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let rt = TokioRuntime::from_handle(tokio_rt.handle().clone());
    assert_eq!(
        rt.tokio_handle().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread
    );
    let out = rt.block_on(async {
        time::sleep(Duration::from_millis(1)).await;
        runtime::spawn(async { 3 }).await.unwrap()
    });
    assert_eq!(out, 3);
}

/// `#[tokio::main]`-style code finds the tokio runtime without any wrapper once a
/// `TokioRuntime` exists (its detector is registered), and `with_runtime` works as well.
#[test]
fn tokio_code_finds_the_runtime_without_a_wrapper() {
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let out = tokio_rt.block_on(async {
        let rt = TokioRuntime::current().unwrap();
        assert!(
            runtime::current().is_some(),
            "the tokio detector finds the runtime"
        );
        time::sleep(Duration::from_millis(1)).await;
        let direct = runtime::spawn(async { 4 }).await.unwrap();
        let wrapped =
            runtime::with_runtime(&rt, async { runtime::spawn(async { 5 }).await.unwrap() }).await;
        direct + wrapped
    });
    assert_eq!(out, 9);
}

/// Outside every runtime, spawning is a typed error and `spawn` panics with that message.
#[test]
fn spawning_without_a_runtime_is_a_typed_error() {
    assert!(runtime::current().is_none());
    assert_eq!(runtime::try_current().unwrap_err(), NoRuntime);
    assert_eq!(runtime::try_spawn(async {}).unwrap_err(), NoRuntime);
    let panic = std::panic::catch_unwind(|| drop(runtime::spawn(async {}))).unwrap_err();
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    assert!(message.contains("no sheepdog runtime"), "{message}");
}

/// With no runtime at all, sleeps fall back to async-io's timer and work under
/// `futures::executor::block_on`, never waking early.
#[test]
fn fallback_timer_under_futures_block_on() {
    futures::executor::block_on(async {
        assert!(runtime::current().is_none());
        let start = Instant::now();
        time::sleep(Duration::from_millis(3)).await;
        assert!(Instant::now() >= start + Duration::from_millis(3));
        let mut sleep = time::sleep(Duration::from_secs(3600));
        sleep.reset(Instant::now() + Duration::from_millis(1));
        (&mut sleep).await;
        assert!(Instant::now() >= sleep.deadline());
    });
}
