//! The shared harness of sheepdog's conformance suite.
//!
//! [`conformance!`] turns one async test body into two `#[test]`s per runtime — tokio
//! current-thread, tokio multi-thread (2 workers), smol, async-std, and the virtual-time
//! runtime — one spawning through the runtime's concrete type (`Runtime::spawn`, which an
//! adapter may implement with its native join handle) and one through the ambient runtime
//! (`runtime::spawn`, the type-erased path). The body receives a [`Cx`]; the runtime is also
//! ambient. Every run sits under a watchdog, so a hang fails the test instead of stalling the
//! suite.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub mod builders;

pub use sheepdog_core::runtime::Runtime;
use sheepdog_core::runtime::{self, JoinHandle, RuntimeHandle};

/// The runtime a test body receives.
pub type Rt = RuntimeHandle;

/// How a test body spawns its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnPath {
    /// `Runtime::spawn` on the adapter's concrete type.
    Concrete,
    /// `sheepdog_core::runtime::spawn`, through the ambient `dyn Runtime`.
    Ambient,
}

/// What a test body receives: the runtime, its flavor, and a spawner for the chosen path.
#[derive(Debug, Clone)]
pub struct Cx {
    /// The runtime (also ambient while the body runs).
    pub rt: Rt,
    /// Which runtime this is.
    pub flavor: Flavor,
    /// Which spawn path [`Cx::spawn`] takes.
    pub path: SpawnPath,
    concrete: Concrete,
}

#[derive(Debug, Clone)]
enum Concrete {
    Tokio(sheepdog_tokio::TokioRuntime),
    Smol(sheepdog_smol::SmolRuntime),
    AsyncStd(sheepdog_async_std::AsyncStdRuntime),
    Virtual,
}

impl Cx {
    /// Spawns `future` through this test's spawn path.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match (self.path, &self.concrete) {
            (SpawnPath::Ambient, _) | (SpawnPath::Concrete, Concrete::Virtual) => {
                runtime::spawn(future)
            }
            (SpawnPath::Concrete, Concrete::Tokio(rt)) => rt.spawn(future),
            (SpawnPath::Concrete, Concrete::Smol(rt)) => rt.spawn(future),
            (SpawnPath::Concrete, Concrete::AsyncStd(rt)) => rt.spawn(future),
        }
    }
}

/// The runtime a spawned task group spawns its children on, for [`with_group_runtime!`].
#[derive(Debug, Clone)]
pub enum GroupRt {
    /// Through the adapter's concrete type.
    Tokio(sheepdog_tokio::TokioRuntime),
    /// Through the adapter's concrete type.
    Smol(sheepdog_smol::SmolRuntime),
    /// Through the adapter's concrete type.
    AsyncStd(sheepdog_async_std::AsyncStdRuntime),
    /// Through the type-erased handle (the ambient path, and the virtual-time runtime).
    Handle(RuntimeHandle),
}

impl Cx {
    /// The runtime a spawned group should use on this test's spawn path.
    pub fn group_runtime(&self) -> GroupRt {
        match (self.path, &self.concrete) {
            (SpawnPath::Ambient, _) | (SpawnPath::Concrete, Concrete::Virtual) => {
                GroupRt::Handle(self.rt.clone())
            }
            (SpawnPath::Concrete, Concrete::Tokio(rt)) => GroupRt::Tokio(rt.clone()),
            (SpawnPath::Concrete, Concrete::Smol(rt)) => GroupRt::Smol(rt.clone()),
            (SpawnPath::Concrete, Concrete::AsyncStd(rt)) => GroupRt::AsyncStd(*rt),
        }
    }
}

/// Evaluates `$body` with `$rt` bound to the runtime [`Cx::group_runtime`] picks; the body is
/// expanded once per runtime type, so it may be generic over it.
#[macro_export]
macro_rules! with_group_runtime {
    ($cx:expr, |$rt:ident| $body:expr) => {
        match $cx.group_runtime() {
            $crate::GroupRt::Tokio($rt) => $body,
            $crate::GroupRt::Smol($rt) => $body,
            $crate::GroupRt::AsyncStd($rt) => $body,
            $crate::GroupRt::Handle($rt) => $body,
        }
    };
}

/// How long one test may run (in real time) before the watchdog fails it; miri interprets
/// every instruction, so under it the watchdog waits ten times as long.
pub const WATCHDOG: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 60 });

/// `full` normally, `small` under miri: the size of a test's workload (children, waiters,
/// rounds) that is large for the thoroughness it buys, not for what it checks.
pub const fn scaled(full: u64, small: u64) -> u64 {
    if cfg!(miri) {
        small
    } else {
        full
    }
}

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
pub fn run<B, Fut>(flavor: Flavor, path: SpawnPath, body: B)
where
    B: FnOnce(Cx) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(format!("conformance-{flavor:?}-{path:?}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                block_on_flavor(flavor, path, body)
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

fn block_on_flavor<B, Fut>(flavor: Flavor, path: SpawnPath, body: B)
where
    B: FnOnce(Cx) -> Fut,
    Fut: Future<Output = ()>,
{
    let cx = |rt: Rt, concrete| Cx {
        rt,
        flavor,
        path,
        concrete,
    };
    match flavor {
        Flavor::TokioCurrentThread | Flavor::TokioMultiThread => {
            let rt = if flavor == Flavor::TokioCurrentThread {
                sheepdog_tokio::TokioRuntime::new_current_thread()
            } else {
                sheepdog_tokio::TokioRuntime::new_multi_thread(2)
            }
            .expect("tokio runtime");
            rt.block_on(body(cx(rt.handle(), Concrete::Tokio(rt.clone()))));
        }
        Flavor::Smol => {
            let rt = sheepdog_smol::SmolRuntime::global();
            rt.block_on(body(cx(rt.handle(), Concrete::Smol(rt.clone()))));
        }
        Flavor::AsyncStd => {
            let rt = sheepdog_async_std::AsyncStdRuntime;
            rt.block_on(body(cx(rt.handle(), Concrete::AsyncStd(rt))));
        }
        Flavor::Virtual => {
            let rt = sheepdog_core::testing::VirtualRuntime::new();
            rt.block_on(body(cx(rt.handle(), Concrete::Virtual)));
        }
    }
}

/// Defines two tests per runtime flavor (concrete and ambient spawn path) from one async body.
///
/// ```ignore
/// conformance! {
///     /// What the test proves.
///     async fn spawn_returns_output(cx) {
///         let handle = cx.spawn(async { 1 });
///         assert_eq!(handle.await.unwrap(), 1);
///     }
/// }
/// ```
///
/// The body receives `cx`, a [`Cx`] (`cx.rt`, `cx.flavor`, `cx.path`, `cx.spawn(..)`).
#[macro_export]
macro_rules! conformance {
    ($(
        $(#[$attr:meta])*
        async fn $name:ident($cx:ident) $body:block
    )*) => {$(
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports, reason = "the body may use anything the test file imports")]
            use super::*;

            #[allow(unused_variables, reason = "not every body looks at its context")]
            async fn body($cx: $crate::Cx) $body

            $crate::conformance!(@tests
                tokio_current_thread: TokioCurrentThread,
                tokio_multi_thread: TokioMultiThread,
                #[cfg_attr(miri, ignore = "miri cannot run async-io's reactor (timerfd_create)")]
                smol: Smol,
                #[cfg_attr(miri, ignore = "miri cannot run async-io's reactor (timerfd_create)")]
                async_std: AsyncStd,
                virtual_time: Virtual,
            );
        }
    )*};
    (@tests $($(#[$flavor_attr:meta])* $test:ident: $flavor:ident,)*) => {
        $crate::paste_tests! { $($(#[$flavor_attr])* $test: $flavor,)* }
    };
}

/// Expands each `name: Flavor` pair into a concrete-path test `name` and an ambient-path test
/// `name_ambient` (an implementation detail of [`conformance!`]).
#[macro_export]
#[doc(hidden)]
macro_rules! paste_tests {
    ($($(#[$flavor_attr:meta])* $test:ident: $flavor:ident,)*) => {$(
        mod $test {
            #[test]
            $(#[$flavor_attr])*
            fn concrete() {
                $crate::run($crate::Flavor::$flavor, $crate::SpawnPath::Concrete, super::body);
            }

            #[test]
            $(#[$flavor_attr])*
            fn ambient() {
                $crate::run($crate::Flavor::$flavor, $crate::SpawnPath::Ambient, super::body);
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

/// A boxed `Send` future, for inputs that mix several futures of one output type.
pub type BoxFut<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// Completes with `out` after `yields` trips through the executor.
pub fn after_yields<T: Send + 'static>(yields: usize, out: T) -> BoxFut<T> {
    Box::pin(async move {
        for _ in 0..yields {
            sheepdog_core::runtime::yield_now().await;
        }
        out
    })
}

/// A future that never finishes and holds a guard of `live` from the moment it is made, so the
/// count also proves that futures dropped before their first poll are gone.
pub fn forever<T: Send + 'static>(live: &Live) -> BoxFut<T> {
    let guard = live.guard();
    Box::pin(async move {
        let _guard = guard;
        futures::future::pending::<()>().await;
        unreachable!("pending never completes")
    })
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

/// A future that never completes, and the receiver that completes once that future has been
/// dropped: spawn the future, then await the receiver to prove the task's future is gone.
pub fn pending_until_dropped() -> (
    impl Future<Output = ()> + Send + 'static,
    futures::channel::oneshot::Receiver<()>,
) {
    let (signal, dropped) = DropSignal::new();
    let future = async move {
        let _signal = signal;
        futures::future::pending::<()>().await;
    };
    (future, dropped)
}

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A waker that counts its wake-ups, for poll-level tests of lost or spurious wake-ups.
#[derive(Debug, Default)]
pub struct CountingWaker {
    wakes: AtomicUsize,
}

impl CountingWaker {
    /// A counter and a waker that increments it.
    pub fn new() -> (Arc<CountingWaker>, std::task::Waker) {
        let counter = Arc::new(CountingWaker::default());
        let waker = futures::task::waker(Arc::clone(&counter));
        (counter, waker)
    }

    /// How many times the waker was woken.
    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl futures::task::ArcWake for CountingWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}
