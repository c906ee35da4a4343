//! The shared harness of sheepdog's conformance suite.
//!
//! [`conformance!`] turns one async test body into one `#[test]` per runtime: tokio
//! current-thread, tokio multi-thread (2 workers), smol, async-std, and the virtual-time
//! runtime. The body receives the runtime as an `Arc<dyn Runtime>` and also finds it as the
//! ambient runtime. Every run sits under a watchdog, so a hang fails the test instead of
//! stalling the suite.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub use sheepdog_core::runtime::Runtime;

/// The runtime a test body receives.
pub type Rt = Arc<dyn Runtime>;

/// How long one test may run (in real time) before the watchdog fails it.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// The runtimes the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// tokio, current-thread scheduler.
    TokioCurrentThread,
    /// tokio, multi-thread scheduler with 2 workers.
    TokioMultiThread,
    /// smol's global executor.
    Smol,
    /// async-std's global executor.
    AsyncStd,
    /// sheepdog's deterministic virtual-time runtime.
    Virtual,
}

impl Flavor {
    /// Every flavor, in the order the macro generates them.
    pub const ALL: [Flavor; 5] = [
        Flavor::TokioCurrentThread,
        Flavor::TokioMultiThread,
        Flavor::Smol,
        Flavor::AsyncStd,
        Flavor::Virtual,
    ];

    /// Whether the flavor's clock is virtual.
    pub fn is_virtual(self) -> bool {
        self == Flavor::Virtual
    }
}

/// Runs `body` to completion on a fresh runtime of the given flavor, under the watchdog.
///
/// # Panics
///
/// Re-raises a panic of the body, and panics if the body has not finished within [`WATCHDOG`].
pub fn run<B, Fut>(flavor: Flavor, body: B)
where
    B: FnOnce(Rt) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(format!("conformance-{flavor:?}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                block_on_flavor(flavor, body)
            }));
            let _ = done_tx.send(outcome);
        })
        .expect("spawn the test thread");
    match done_rx.recv_timeout(WATCHDOG) {
        Ok(Ok(())) => worker.join().expect("test thread"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("watchdog: the test did not finish within {WATCHDOG:?} on {flavor:?}"),
    }
}

fn block_on_flavor<B, Fut>(flavor: Flavor, body: B)
where
    B: FnOnce(Rt) -> Fut,
    Fut: Future<Output = ()>,
{
    match flavor {
        Flavor::TokioCurrentThread => {
            let rt = sheepdog_tokio::TokioRuntime::new_current_thread().expect("tokio runtime");
            let handle = rt.handle();
            rt.block_on(body(handle));
        }
        Flavor::TokioMultiThread => {
            let rt = sheepdog_tokio::TokioRuntime::new_multi_thread(2).expect("tokio runtime");
            let handle = rt.handle();
            rt.block_on(body(handle));
        }
        Flavor::Smol => {
            let rt = sheepdog_smol::SmolRuntime::global();
            let handle = rt.handle();
            rt.block_on(body(handle));
        }
        Flavor::AsyncStd => {
            let rt = sheepdog_async_std::AsyncStdRuntime;
            let handle = rt.handle();
            rt.block_on(body(handle));
        }
        Flavor::Virtual => {
            let rt = sheepdog_core::testing::VirtualRuntime::new();
            let handle = rt.handle();
            rt.block_on(body(handle));
        }
    }
}

/// Defines one test per runtime flavor from a single async body.
///
/// ```ignore
/// conformance! {
///     /// What the test proves.
///     async fn spawn_returns_output(rt) {
///         let handle = sheepdog_core::runtime::spawn(async { 1 });
///         assert_eq!(handle.await.unwrap(), 1);
///     }
/// }
/// ```
///
/// The body may use `flavor` (a [`Flavor`]) as well as `rt`.
#[macro_export]
macro_rules! conformance {
    ($(
        $(#[$attr:meta])*
        async fn $name:ident($rt:ident, $flavor:ident) $body:block
    )*) => {$(
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports, reason = "the body may use anything the test file imports")]
            use super::*;

            #[allow(unused_variables, reason = "not every body looks at the flavor")]
            async fn body($rt: $crate::Rt, $flavor: $crate::Flavor) $body

            #[test]
            fn tokio_current_thread() {
                $crate::run($crate::Flavor::TokioCurrentThread, |rt| {
                    body(rt, $crate::Flavor::TokioCurrentThread)
                });
            }

            #[test]
            fn tokio_multi_thread() {
                $crate::run($crate::Flavor::TokioMultiThread, |rt| {
                    body(rt, $crate::Flavor::TokioMultiThread)
                });
            }

            #[test]
            fn smol() {
                $crate::run($crate::Flavor::Smol, |rt| body(rt, $crate::Flavor::Smol));
            }

            #[test]
            fn async_std() {
                $crate::run($crate::Flavor::AsyncStd, |rt| body(rt, $crate::Flavor::AsyncStd));
            }

            #[test]
            fn virtual_time() {
                $crate::run($crate::Flavor::Virtual, |rt| body(rt, $crate::Flavor::Virtual));
            }
        }
    )*};
}

/// Counts live values: each [`LiveGuard`] increments it on creation and decrements on drop.
///
/// Tests hold a guard inside a task's future to prove the future was dropped.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<AtomicUsize>);

impl Live {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a guard, incrementing the count.
    pub fn guard(&self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        LiveGuard(Arc::clone(&self.0))
    }

    /// How many guards are alive.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Decrements its [`Live`] counter when dropped.
#[derive(Debug)]
pub struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends `()` on a oneshot when dropped, so a test can await the drop of a task's future.
#[derive(Debug)]
pub struct DropSignal(Option<futures::channel::oneshot::Sender<()>>);

impl DropSignal {
    /// A signal and the receiver that completes when the signal is dropped.
    pub fn new() -> (DropSignal, futures::channel::oneshot::Receiver<()>) {
        let (tx, rx) = futures::channel::oneshot::channel();
        (DropSignal(Some(tx)), rx)
    }
}

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}
