//! Dropping a task group at any point leaves no child behind: a proptest over the shape of the
//! group (children, how long each runs, which fail) and the poll after which it is dropped.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use futures::future::pending;
use proptest::prelude::*;
use sheepdog_core::group::{spawn_group, task_group};
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_core::testing::VirtualRuntime;
use sheepdog_tests::Live;

/// One child: how many times it yields, then whether it fails (or waits forever).
#[derive(Debug, Clone, Copy)]
enum Plan {
    Finish(u8),
    Fail(u8),
    Forever,
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        4 => (0u8..6).prop_map(Plan::Finish),
        1 => (0u8..6).prop_map(Plan::Fail),
        2 => Just(Plan::Forever),
    ]
}

/// The child for `plan`, holding a live guard from the moment it is made.
fn child(live: &Live, plan: Plan) -> impl Future<Output = Result<(), u8>> + Send + 'static {
    let guard = live.guard();
    async move {
        let _guard = guard;
        match plan {
            Plan::Finish(yields) | Plan::Fail(yields) => {
                for _ in 0..yields {
                    yield_now().await;
                }
                if let Plan::Fail(code) = plan {
                    return Err(code);
                }
                Ok(())
            }
            Plan::Forever => pending().await,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]

    /// In-task: after the group returns, or the moment it is dropped, every child is gone.
    #[test]
    fn in_task_group_leaves_nothing_behind(
        plans in proptest::collection::vec(plan(), 0..24),
        polls in 0usize..40,
    ) {
        let live = Live::new();
        {
            let live = &live;
            let plans = &plans;
            let mut group = pin!(task_group(|tg| async move {
                for &plan in plans {
                    tg.spawn(child(live, plan));
                }
                let _guard = live.guard();
                yield_now().await;
                Ok::<_, u8>(())
            }));
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..polls {
                if group.as_mut().poll(&mut cx).is_ready() {
                    break;
                }
            }
        }
        prop_assert_eq!(live.count(), 0);
    }

    /// Spawned (on the virtual-time runtime): the group's future dropped after any number of
    /// polls cancels every child, and their runtime drops them all.
    #[test]
    fn spawned_group_leaves_nothing_behind(
        plans in proptest::collection::vec(plan(), 0..24),
        polls in 0usize..20,
    ) {
        let live = Live::new();
        let rt = VirtualRuntime::new();
        let group_live = live.clone();
        rt.block_on(async move {
            let mut group = Box::pin(spawn_group(|tg| async move {
                for plan in plans {
                    tg.spawn(child(&group_live, plan));
                }
                yield_now().await;
                Ok::<_, u8>(())
            }));
            for _ in 0..polls {
                let ready = futures::future::poll_fn(|cx| Poll::Ready(group.as_mut().poll(cx).is_ready())).await;
                if ready {
                    break;
                }
                yield_now().await;
            }
        });
        // Let the runtime run the cancelled children to their end.
        rt.block_on(async {
            for _ in 0..1_000 {
                if rt.live_tasks() == 0 {
                    break;
                }
                yield_now().await;
            }
        });
        prop_assert_eq!(rt.live_tasks(), 0);
        prop_assert_eq!(live.count(), 0);
    }
}
