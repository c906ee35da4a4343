//! shuttle models of task groups (`RUSTFLAGS="--cfg shuttle" cargo test -p sheepdog-core
//! --lib shuttle`): a group's cancellation against a child's completion, and a spawn racing
//! the group's close. Each asserts that both outcomes were explored.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use super::member::Shared;
use super::{task_group, GroupError};
use crate::cancel::checkpoint;
use crate::cancel::model::explore;

/// Yields a (replayably) random number of times, so the next step lands before, during or
/// after what another thread is doing.
fn yield_randomly() {
    use shuttle::rand::Rng;
    for _ in 0..shuttle::rand::thread_rng().gen_range(0..32) {
        shuttle::thread::yield_now();
    }
}

/// The group's scope cancelled from another thread while a child completes: the group returns
/// the child's result (the body had it already) or `Cancelled`, never anything else, and no
/// wake-up is lost.
#[test]
fn shuttle_group_cancel_versus_child_complete() {
    explore(|| {
        let scope = Arc::new(std::sync::Mutex::new(None));
        let slot = Arc::clone(&scope);
        let out = shuttle::future::block_on(task_group(|tg| async move {
            let canceller = tg.cancel_scope();
            *slot.lock().unwrap() = Some(shuttle::thread::spawn(move || {
                yield_randomly();
                canceller.cancel();
            }));
            let child = tg.spawn(async {
                for _ in 0..3 {
                    checkpoint().await;
                }
                Ok::<_, ()>(7)
            });
            child.await.map_err(drop)
        }));
        let canceller = scope.lock().unwrap().take().expect("the body ran");
        canceller.join().unwrap();
        match out {
            Ok(7) => true,
            Err(GroupError::Cancelled) => false,
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// A member joining (a spawn) on one thread against the group closing on another: either the
/// join wins and the group closes only after that member settled, or the close wins and the
/// join is refused. Never a member in a closed group.
#[test]
fn shuttle_spawn_versus_close() {
    explore(|| {
        let shared = Arc::new(Shared::<()>::new());
        let settled = Arc::new(AtomicBool::new(false));
        let (member, flag) = (Arc::clone(&shared), Arc::clone(&settled));
        let spawner = shuttle::thread::spawn(move || {
            yield_randomly();
            if !member.join() {
                return false;
            }
            yield_randomly();
            flag.store(true, Ordering::SeqCst);
            member.settled();
            true
        });
        while !shared.try_close(Waker::noop()) {
            shuttle::thread::yield_now();
        }
        let settled_at_close = settled.load(Ordering::SeqCst);
        let joined = spawner.join().unwrap();
        assert!(!joined || settled_at_close, "closed with a member inside");
        assert!(!shared.join(), "a closed group takes no member");
        joined
    });
}

/// An in-task child's handle awaited on another thread while the group publishes the result
/// (`group::cell`): the handle gets the result exactly once, whether it found it published at
/// its first poll or left its waker and was woken, and the block is freed once (a double free
/// or a lost wake-up would fail or hang the model).
#[test]
fn shuttle_handle_versus_publish() {
    explore(|| {
        let out = shuttle::future::block_on(task_group(|tg| async move {
            let handle = tg.spawn(async {
                crate::runtime::yield_now().await;
                Ok::<_, ()>(String::from("done"))
            });
            let finished = Arc::new(shuttle::sync::atomic::AtomicBool::new(false));
            let flag = Arc::clone(&finished);
            let waiter = shuttle::thread::spawn(move || {
                yield_randomly();
                let mut handle = handle;
                let out = shuttle::future::block_on(std::future::poll_fn(|cx| {
                    let first = std::pin::Pin::new(&mut handle).poll(cx);
                    std::task::Poll::Ready(first)
                }));
                let (result, at_once) = match out {
                    std::task::Poll::Ready(result) => (result, true),
                    std::task::Poll::Pending => (shuttle::future::block_on(handle), false),
                };
                flag.store(true, Ordering::SeqCst);
                (result, at_once)
            });
            // Keep the group polling its child until the other thread has the result.
            while !finished.load(Ordering::SeqCst) {
                crate::runtime::yield_now().await;
                shuttle::thread::yield_now();
            }
            let (result, at_once) = waiter.join().unwrap();
            assert_eq!(result.as_deref(), Ok("done"));
            Ok::<_, ()>(at_once)
        }));
        out.expect("the group finished")
    });
}
