//! The synchronisation primitives of sheepdog's concurrent internals: `std`'s, or shuttle's
//! under `cfg(shuttle)` so that the model tests can explore their interleavings.

#[cfg(not(shuttle))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
#[cfg(not(shuttle))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(shuttle)]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
#[cfg(shuttle)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};

// Thread-locals too: shuttle runs its threads as coroutines on one OS thread, so sheepdog's
// current-scope and ambient-runtime cells must be per shuttle thread, or one model thread
// would see (and restore) another's scope.
#[cfg(not(shuttle))]
pub(crate) use std::thread::LocalKey;
#[cfg(not(shuttle))]
pub(crate) use std::thread_local;

#[cfg(shuttle)]
pub(crate) use shuttle::thread::LocalKey;
#[cfg(shuttle)]
pub(crate) use shuttle::thread_local;
