//! The facade with several runtime features on at once (this package enables all of them):
//! every adapter is reachable, and `DefaultRuntime` follows the documented precedence
//! (tokio, then async-std, then smol).

use sheepdog::Runtime;

/// With tokio, smol and async-std all enabled, the default runtime is tokio's.
#[test]
fn several_features_pick_tokio_first() {
    assert_eq!(
        std::any::type_name::<sheepdog::DefaultRuntime>(),
        std::any::type_name::<sheepdog::tokio::TokioRuntime>()
    );
}

/// Every enabled adapter is usable through the facade.
#[test]
fn every_enabled_adapter_is_reachable() {
    let on_smol = sheepdog::smol::SmolRuntime::global()
        .block_on(async { sheepdog::runtime::spawn(async { "smol" }).await.unwrap() });
    let on_async_std = sheepdog::async_std::AsyncStdRuntime.block_on(async {
        sheepdog::runtime::spawn(async { "async-std" })
            .await
            .unwrap()
    });
    let on_tokio = sheepdog::tokio::TokioRuntime::new_current_thread()
        .unwrap()
        .block_on(async { sheepdog::runtime::spawn(async { "tokio" }).await.unwrap() });
    assert_eq!(
        [on_smol, on_async_std, on_tokio],
        ["smol", "async-std", "tokio"]
    );
}

/// `sheepdog::block_on` runs on the default runtime, with it ambient, and the process-wide
/// tokio runtime is reused across calls.
#[test]
fn block_on_uses_the_default_runtime() {
    for _ in 0..3 {
        let inside_tokio = sheepdog::block_on(async {
            let child = sheepdog::runtime::spawn(async {
                sheepdog::tokio::TokioRuntime::current().is_ok()
            });
            child.await.unwrap()
        });
        assert!(inside_tokio);
    }
}

/// Inside a tokio runtime, `default_runtime` refers to that runtime instead of the
/// process-wide one.
#[test]
fn default_runtime_prefers_the_current_tokio_runtime() {
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let flavor =
        tokio_rt.block_on(async { sheepdog::default_runtime().tokio_handle().runtime_flavor() });
    assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
}
