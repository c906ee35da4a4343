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
