//! Bounded memory channels: [`channel`], [`Sender`], [`Receiver`].

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::Stream;

use super::queue::{Abandoned, WaitList, Wakers};
use crate::shim::{Mutex, MutexGuard};

/// A bounded, multi-producer multi-consumer channel holding up to `capacity` items (AnyIO's
/// `create_memory_object_stream(max_buffer_size)`).
///
/// - `capacity` 0 is a **rendezvous**: a send completes only when a receiver takes the item.
///   `usize::MAX` is practically unbounded (AnyIO's `math.inf`).
/// - Both ends are cloneable; each item goes to one receiver (items are distributed, not
///   broadcast). An end closes when its last clone is dropped.
/// - Closing the last [`Sender`] ends the stream once the buffer is drained:
///   [`recv`](Receiver::recv) returns `None` (AnyIO's `EndOfStream`).
/// - Closing the last [`Receiver`] fails every send, waiting or not, with [`SendError`], which
///   gives the item back; items still buffered are dropped.
/// - Senders and receivers wait in FIFO order; an item goes straight to the oldest waiting
///   receiver.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::channel;
///
/// futures::executor::block_on(async {
///     let (tx, mut rx) = channel(2);
///     tx.send(1).await.unwrap();
///     tx.send(2).await.unwrap();
///     assert!(tx.try_send(3).is_err()); // full
///     drop(tx);
///     assert_eq!(rx.recv().await, Some(1));
///     assert_eq!(rx.recv().await, Some(2));
///     assert_eq!(rx.recv().await, None); // every sender closed, buffer drained
/// });
/// ```
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buffer: VecDeque::new(),
            capacity,
            senders: 1,
            receivers: 1,
            send_waiters: WaitList::default(),
            recv_waiters: WaitList::default(),
        }),
    });
    let receiver = Receiver {
        shared: Arc::clone(&shared),
        key: None,
    };
    (Sender { shared }, receiver)
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    buffer: VecDeque<T>,
    capacity: usize,
    senders: usize,
    receivers: usize,
    /// Senders waiting for room, each with its item; granted `Ok` once the item is taken, or
    /// `Err(item)` when the last receiver closes.
    send_waiters: WaitList<T, Result<(), T>>,
    /// Receivers waiting for an item; granted `Some(item)`, or `None` when the last sender
    /// closes (they then look at the buffer once more before reporting the end).
    recv_waiters: WaitList<(), Option<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> State<T> {
    /// Delivers `item` without waiting: to the oldest waiting receiver, else into the buffer
    /// if it has room. Gives the item back if neither is possible.
    fn offer(&mut self, item: T, wakers: &mut Wakers) -> Result<(), T> {
        if self.recv_waiters.is_empty() {
            if self.buffer.len() < self.capacity {
                self.buffer.push_back(item);
                return Ok(());
            }
            return Err(item);
        }
        wakers.extend(self.recv_waiters.grant_front(|()| Some(item)));
        Ok(())
    }

    /// Takes the next item without waiting: from the buffer (refilling it from the oldest
    /// waiting sender), else straight from the oldest waiting sender (rendezvous).
    fn take(&mut self, wakers: &mut Wakers) -> Option<T> {
        match self.buffer.pop_front() {
            Some(item) => {
                if self.buffer.len() < self.capacity {
                    let buffer = &mut self.buffer;
                    wakers.extend(self.send_waiters.grant_front(|next| {
                        buffer.push_back(next);
                        Ok(())
                    }));
                }
                Some(item)
            }
            None => {
                let mut taken = None;
                wakers.extend(self.send_waiters.grant_front(|item| {
                    taken = Some(item);
                    Ok(())
                }));
                taken
            }
        }
    }

    /// Gives back an item handed to a receiver that went away without taking it: to the next
    /// waiting receiver, else to the front of the buffer (which may then hold one item more
    /// than its capacity until it is received).
    fn redeliver(&mut self, item: T, wakers: &mut Wakers) {
        if self.recv_waiters.is_empty() {
            self.buffer.push_front(item);
        } else {
            wakers.extend(self.recv_waiters.grant_front(|()| Some(item)));
        }
    }

    fn statistics(&self) -> ChannelStatistics {
        ChannelStatistics {
            current_buffer_used: self.buffer.len(),
            max_buffer_size: self.capacity,
            open_send_streams: self.senders,
            open_receive_streams: self.receivers,
            tasks_waiting_send: self.send_waiters.len(),
            tasks_waiting_receive: self.recv_waiters.len(),
        }
    }
}

/// A snapshot of a channel's state (AnyIO's `MemoryObjectStreamStatistics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStatistics {
    /// Items in the buffer.
    pub current_buffer_used: usize,
    /// The capacity given to [`channel`].
    pub max_buffer_size: usize,
    /// Open sender clones.
    pub open_send_streams: usize,
    /// Open receiver clones.
    pub open_receive_streams: usize,
    /// Sends waiting for room (or, with capacity 0, for a receiver).
    pub tasks_waiting_send: usize,
    /// Receives waiting for an item.
    pub tasks_waiting_receive: usize,
}

/// Every receiver is closed; the item that could not be sent is inside (AnyIO's
/// `BrokenResourceError`).
///
/// # Examples
///
/// ```
/// let (tx, rx) = sheepdog_core::sync::channel::<u8>(1);
/// drop(rx);
/// let err = futures::executor::block_on(tx.send(7)).unwrap_err();
/// assert_eq!(err.into_inner(), 7);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every receiver of the channel is closed")]
pub struct SendError<T>(pub T);

impl<T> SendError<T> {
    /// The item that was not sent.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError").finish_non_exhaustive()
    }
}

/// Why [`Sender::try_send`] did not send; the item is inside.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::{channel, TrySendError};
///
/// let (tx, _rx) = channel(0);
/// assert!(matches!(tx.try_send(1), Err(TrySendError::Full(1)))); // nobody is receiving
/// ```
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The buffer is full (with capacity 0: no receiver is waiting); AnyIO's `WouldBlock`.
    #[error("the channel is full")]
    Full(T),
    /// Every receiver is closed; AnyIO's `BrokenResourceError`.
    #[error("every receiver of the channel is closed")]
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The item that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(item) | TrySendError::Closed(item) => item,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

/// Why [`Receiver::try_recv`] returned no item.
///
/// # Examples
///
/// ```
/// use sheepdog_core::sync::{channel, TryRecvError};
///
/// let (tx, mut rx) = channel::<u8>(1);
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
/// drop(tx);
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No item is ready; AnyIO's `WouldBlock`.
    #[error("the channel is empty")]
    Empty,
    /// The buffer is empty and every sender is closed; AnyIO's `EndOfStream`.
    #[error("the channel is empty and every sender is closed")]
    Closed,
}

/// The sending end of a [`channel`]. Clone it for more senders; the channel's sending side
/// closes when the last clone is dropped.
///
/// # Examples
///
/// ```
/// let (tx, mut rx) = sheepdog_core::sync::channel(4);
/// let tx2 = tx.clone();
/// tx.try_send("a").unwrap();
/// tx2.try_send("b").unwrap();
/// assert_eq!(rx.try_recv(), Ok("a"));
/// ```
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("statistics", &self.statistics())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut wakers = Wakers::default();
        {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                // Receivers wait only on an empty buffer: the stream has ended for them.
                state.recv_waiters.grant_all(|()| None, &mut wakers);
            }
        }
        wakers.wake_all();
    }
}

impl<T> Sender<T> {
    /// Sends `item`, waiting for room in the buffer (with capacity 0: for a receiver) behind
    /// the senders that waited before.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the item if every receiver is closed, also while waiting.
    ///
    /// # Cancel safety
    ///
    /// A cancellation point. Dropped before it completes, the item was not sent and is
    /// dropped with the future; once the future completed the item was delivered. Inside a
    /// cancelled scope the future never completes.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, mut rx) = sheepdog_core::sync::channel(1);
    /// futures::executor::block_on(async {
    ///     tx.send(5).await.unwrap();
    ///     assert_eq!(rx.recv().await, Some(5));
    /// });
    /// ```
    pub fn send(&self, item: T) -> ChannelSend<'_, T> {
        ChannelSend {
            shared: &self.shared,
            item: Some(item),
            key: None,
        }
    }

    /// Sends `item` if that needs no waiting: a receiver is waiting, or the buffer has room.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] if the buffer is full (with capacity 0: no receiver waits);
    /// [`TrySendError::Closed`] if every receiver is closed. The item is inside either way.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, _rx) = sheepdog_core::sync::channel(1);
    /// tx.try_send(1).unwrap();
    /// assert!(tx.try_send(2).is_err());
    /// ```
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut wakers = Wakers::default();
        let sent = {
            let mut state = self.shared.lock();
            if state.receivers == 0 {
                Err(TrySendError::Closed(item))
            } else {
                state.offer(item, &mut wakers).map_err(TrySendError::Full)
            }
        };
        wakers.wake_all();
        sent
    }

    /// Whether every receiver is closed (sends will fail).
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = sheepdog_core::sync::channel::<()>(1);
    /// assert!(!tx.is_closed());
    /// drop(rx);
    /// assert!(tx.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receivers == 0
    }

    /// The channel's state.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, _rx) = sheepdog_core::sync::channel(3);
    /// tx.try_send(()).unwrap();
    /// let stats = tx.statistics();
    /// assert_eq!((stats.current_buffer_used, stats.max_buffer_size), (1, 3));
    /// ```
    pub fn statistics(&self) -> ChannelStatistics {
        self.shared.lock().statistics()
    }
}

/// The receiving end of a [`channel`]. Clone it for more receivers (each item goes to one of
/// them); the channel's receiving side closes when the last clone is dropped. It is also a
/// [`Stream`] of the items, ending when every sender is closed and the buffer is drained.
///
/// Polled as a `Stream` and left pending, a receiver keeps its place in line; an item handed
/// to it waits in its place until it is polled again or dropped (then the item passes to the
/// next receiver).
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
///
/// let (tx, rx) = sheepdog_core::sync::channel(8);
/// for i in 0..3 {
///     tx.try_send(i).unwrap();
/// }
/// drop(tx);
/// let all: Vec<i32> = futures::executor::block_on(rx.collect());
/// assert_eq!(all, [0, 1, 2]);
/// ```
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// This receiver's place in line, while it waits.
    key: Option<usize>,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("statistics", &self.statistics())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.lock().receivers += 1;
        Receiver {
            shared: Arc::clone(&self.shared),
            key: None,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.leave_line();
        let mut wakers = Wakers::default();
        let dropped = {
            let mut state = self.shared.lock();
            state.receivers -= 1;
            if state.receivers > 0 {
                return;
            }
            state.send_waiters.grant_all(Err, &mut wakers);
            std::mem::take(&mut state.buffer)
        };
        wakers.wake_all();
        // Items are dropped outside the lock: their destructors may use the channel.
        drop(dropped);
    }
}

impl<T> Receiver<T> {
    /// Receives the next item, waiting behind the receivers that waited before. Returns
    /// `None` once every sender is closed and the buffer is drained (AnyIO's `EndOfStream`);
    /// items buffered before the senders closed are still delivered.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, and a cancellation point: dropping the future gives up its place in line;
    /// an item already handed to it goes to the next waiting receiver, or back to the front of
    /// the buffer. Inside a cancelled scope the future never completes.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, mut rx) = sheepdog_core::sync::channel(1);
    /// tx.try_send('x').unwrap();
    /// assert_eq!(futures::executor::block_on(rx.recv()), Some('x'));
    /// ```
    pub fn recv(&mut self) -> ChannelRecv<'_, T> {
        ChannelRecv { receiver: self }
    }

    /// Receives an item if one is ready (buffered, or offered by a waiting sender).
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if none is ready; [`TryRecvError::Closed`] if the buffer is
    /// empty and every sender is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use sheepdog_core::sync::{channel, TryRecvError};
    ///
    /// let (tx, mut rx) = channel(1);
    /// tx.try_send(3).unwrap();
    /// assert_eq!(rx.try_recv(), Ok(3));
    /// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    /// ```
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut wakers = Wakers::default();
        let received = {
            let mut state = self.shared.lock();
            match take_grant(&mut self.key, &mut state, None) {
                Some(item) => Ok(item),
                // Still in line (an earlier poll left it there): nothing is ready for it.
                None if self.key.is_some() => Err(TryRecvError::Empty),
                None => match state.take(&mut wakers) {
                    Some(item) => Ok(item),
                    None if state.senders == 0 => Err(TryRecvError::Closed),
                    None => Err(TryRecvError::Empty),
                },
            }
        };
        wakers.wake_all();
        received
    }

    /// The channel's state.
    ///
    /// # Examples
    ///
    /// ```
    /// let (_tx, rx) = sheepdog_core::sync::channel::<u8>(0);
    /// let stats = rx.statistics();
    /// assert_eq!((stats.open_send_streams, stats.open_receive_streams), (1, 1));
    /// ```
    pub fn statistics(&self) -> ChannelStatistics {
        self.shared.lock().statistics()
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if super::cancelled() {
            return Poll::Pending;
        }
        let mut wakers = Wakers::default();
        let polled = {
            let mut state = self.shared.lock();
            match take_grant(&mut self.key, &mut state, Some(cx.waker())) {
                Some(granted) => Poll::Ready(Some(granted)),
                None if self.key.is_some() => Poll::Pending,
                None => match state.take(&mut wakers) {
                    Some(item) => Poll::Ready(Some(item)),
                    None if state.senders == 0 => Poll::Ready(None),
                    None => {
                        self.key = Some(state.recv_waiters.push((), cx.waker()));
                        Poll::Pending
                    }
                },
            }
        };
        wakers.wake_all();
        polled
    }

    /// Leaves the line, passing on an item handed over but not taken; returns whether there
    /// was one.
    pub(crate) fn leave_line(&mut self) -> bool {
        let Some(key) = self.key.take() else {
            return false;
        };
        let mut wakers = Wakers::default();
        let passed = {
            let mut state = self.shared.lock();
            match state.recv_waiters.abandon(key) {
                Abandoned::Granted(Some(item)) => {
                    state.redeliver(item, &mut wakers);
                    true
                }
                _ => false,
            }
        };
        wakers.wake_all();
        passed
    }
}

/// Takes an item handed to a receiver while it waited (at `key`). A wake-up without an item
/// (the last sender closed) only sends it back to look at the buffer: an item handed to a
/// receiver that then went away may have been put back there in the meantime.
fn take_grant<T>(
    key: &mut Option<usize>,
    state: &mut State<T>,
    waker: Option<&Waker>,
) -> Option<T> {
    let slot = (*key)?;
    let granted = match waker {
        Some(waker) => state.recv_waiters.poll(slot, waker),
        None => state.recv_waiters.take_grant(slot),
    }?;
    *key = None;
    granted
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().poll_recv(cx)
    }
}

/// The future returned by [`Sender::send`].
#[must_use = "futures do nothing unless awaited"]
pub struct ChannelSend<'a, T> {
    shared: &'a Shared<T>,
    /// The item, until it is offered.
    item: Option<T>,
    /// The place in line, while waiting (the item is then held by the line).
    key: Option<usize>,
}

impl<T> fmt::Debug for ChannelSend<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSend")
            .field("waiting", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Unpin for ChannelSend<'_, T> {}

impl<T> Future for ChannelSend<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if super::cancelled() {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut wakers = Wakers::default();
        let polled = {
            let mut state = this.shared.lock();
            match (this.key, this.item.take()) {
                (Some(key), _) => match state.send_waiters.poll(key, cx.waker()) {
                    Some(granted) => {
                        this.key = None;
                        Poll::Ready(granted.map_err(SendError))
                    }
                    None => Poll::Pending,
                },
                (None, Some(item)) if state.receivers == 0 => Poll::Ready(Err(SendError(item))),
                (None, Some(item)) => match state.offer(item, &mut wakers) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(item) => {
                        this.key = Some(state.send_waiters.push(item, cx.waker()));
                        Poll::Pending
                    }
                },
                (None, None) => panic!("a send was polled after it completed"),
            }
        };
        wakers.wake_all();
        polled
    }
}

impl<T> Drop for ChannelSend<'_, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // The item (unsent, or refused by a closed channel) is dropped outside the lock.
            let abandoned = self.shared.lock().send_waiters.abandon(key);
            drop(abandoned);
        }
    }
}

/// The future returned by [`Receiver::recv`].
#[must_use = "futures do nothing unless awaited"]
pub struct ChannelRecv<'a, T> {
    receiver: &'a mut Receiver<T>,
}

impl<T> fmt::Debug for ChannelRecv<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelRecv").finish_non_exhaustive()
    }
}

impl<T> Future for ChannelRecv<'_, T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.receiver.poll_recv(cx)
    }
}

impl<T> Drop for ChannelRecv<'_, T> {
    fn drop(&mut self) {
        self.receiver.leave_line();
    }
}
