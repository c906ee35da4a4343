//! Fair synchronization: locks, semaphores, capacity limiters, events, conditions and bounded
//! channels that serve their waiters first come, first served, and never lose what they hand
//! over.
//!
//! | item | what it is |
//! |---|---|
//! | [`Lock`] | mutual exclusion without data; FIFO with direct hand-off; not reentrant |
//! | [`Semaphore`] | a counter of permits; FIFO; optional maximum value; weighted acquisition |
//! | [`CapacityLimiter`] | a pool of tokens whose total can change while in use; named borrowers hold one token each |
//! | [`Event`] | set once, wait for it |
//! | [`Condition`] | a [`Lock`] with `wait` / `notify(n)` / `notify_all`, FIFO |
//! | [`channel`] | bounded memory channel ([`Sender`], [`Receiver`]); capacity 0 is a rendezvous |
//!
//! # AnyIO → sheepdog
//!
//! | AnyIO | sheepdog |
//! |---|---|
//! | `Lock()`, `async with lock:` | `Lock::new()`, `let _guard = lock.lock().await;` |
//! | `lock.acquire_nowait()` (raises `WouldBlock`) | `lock.try_lock()` → `Err(WouldBlock)` |
//! | `lock.release()` | drop the [`LockGuard`] |
//! | `Semaphore(n, max_value=m)` | `Semaphore::new(n)`, `Semaphore::with_max_value(n, m)?` |
//! | `sem.acquire()`, `sem.acquire_nowait()`, `sem.release()`, `sem.value` | `sem.acquire().await`, `sem.try_acquire()`, drop the guard or `sem.release(1)?`, `sem.value()` |
//! | — | `sem.acquire_many(n).await?` (weighted) |
//! | `CapacityLimiter(total)` | `CapacityLimiter::new(total)` |
//! | `limiter.total_tokens = t` | `limiter.set_total_tokens(t)?` |
//! | `acquire_on_behalf_of(b)`, `release_on_behalf_of(b)` | the same names; `b` is any `Hash + Eq` value |
//! | `borrowed_tokens`, `available_tokens`, `statistics()` | the same names, as methods |
//! | `Event()`, `set()`, `is_set()`, `wait()` | the same |
//! | `Condition()`, `async with cond:`, `cond.wait()`, `cond.notify(n)`, `cond.notify_all()` | `Condition::new()`, `let g = cond.lock().await;`, `let g = g.wait().await;`, `g.notify(n)`, `g.notify_all()` |
//! | `create_memory_object_stream(max_buffer_size)` | `channel(capacity)` → `(Sender, Receiver)` |
//! | `send`, `send_nowait`, `receive`, `receive_nowait` | `send`, `try_send`, `recv` (`None` = `EndOfStream`), `try_recv` |
//! | `clone()`, `close()` | `clone()`, drop the end |
//! | `BrokenResourceError` on send | [`SendError`] with the item inside |
//! | `async for item in receiver:` | `Receiver` is a [`Stream`](::futures::Stream) |
//!
//! # Fairness
//!
//! Waiters are served in the order they started waiting. A release hands its permit (token,
//! item, notification) **directly** to the oldest waiter, so a newcomer can never take it
//! first: while anyone waits, `try_*` calls fail even if a permit is momentarily counted as
//! free. A weighted acquisition at the head of the line blocks smaller ones behind it.
//!
//! # Cancellation
//!
//! Every wait is a cancellation point of the ambient [cancel scope](crate::cancel): inside an
//! effectively cancelled scope it never completes (even if it could at once), and the catching
//! scope drops it. Dropping a wait at any point is safe and loses nothing: a waiter that was
//! handed a permit, token, item or notification and is dropped before it took it passes it on
//! to the next waiter. A wait that can complete at once does not yield to the executor; await
//! [`checkpoint`](crate::cancel::checkpoint) for that.
//!
//! The primitives work on any executor (they need no runtime) and from plain threads through
//! any `block_on`.

mod channel;
mod condition;
mod event;
mod limiter;
mod lock;
mod permits;
pub(crate) mod queue;
mod semaphore;

#[cfg(all(test, shuttle))]
mod model;
#[cfg(test)]
mod tests;

pub use channel::{
    channel, ChannelStatistics, Receiver, SendError, Sender, TryRecvError, TrySendError,
};
pub use condition::{Condition, ConditionGuard, ConditionStatistics};
pub use event::Event;
pub use limiter::{
    CapacityLimiter, CapacityLimiterError, CapacityLimiterGuard, CapacityLimiterStatistics,
};
pub use lock::{Lock, LockGuard, LockStatistics};
pub use semaphore::{Semaphore, SemaphoreError, SemaphoreGuard, SemaphoreStatistics};

/// The futures returned by the primitives' `async` operations.
pub mod futures {
    pub use super::channel::{ChannelRecv, ChannelSend};
    pub use super::condition::{ConditionLock, ConditionWait};
    pub use super::event::EventWait;
    pub use super::limiter::{LimiterAcquire, LimiterAcquireOnBehalfOf};
    pub use super::lock::LockAcquire;
    pub use super::semaphore::{SemaphoreAcquire, SemaphoreAcquireMany};
}

/// The operation would have to wait: nothing is available, or others are waiting first.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::{Lock, WouldBlock};
///
/// let lock = Lock::new();
/// let _held = lock.try_lock().unwrap();
/// assert_eq!(lock.try_lock().unwrap_err(), WouldBlock);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("the operation would block")]
pub struct WouldBlock;

/// Whether the calling code is inside an effectively cancelled scope, where waits never
/// complete.
#[inline]
fn cancelled() -> bool {
    crate::cancel::is_cancelled()
}
