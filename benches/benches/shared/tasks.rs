//! The spawn-and-await workloads that `spawn` (divan, wall time) and `group_instr` (callgrind,
//! instructions) both measure, so that the two benches measure the same thing.

use std::convert::Infallible;

use futures::StreamExt;
use sheepdog_core::group::{spawn_group_on, task_group, GroupRuntime};
use sheepdog_core::runtime::{self, with_runtime, Runtime};
use sheepdog_tokio::TokioRuntime;

/// How many tasks (or children) each iteration spawns and awaits.
pub(crate) const TASKS: u64 = 10_000;

/// A tokio runtime together with a sheepdog adapter that refers to it by handle.
pub(crate) struct Tokio {
    pub(crate) raw: tokio::runtime::Runtime,
    pub(crate) sheepdog: TokioRuntime,
}

impl Tokio {
    pub(crate) fn new(raw: tokio::runtime::Runtime) -> Self {
        let sheepdog = TokioRuntime::from_handle(raw.handle().clone());
        Tokio { raw, sheepdog }
    }

    /// `tokio::spawn` every task, then await the tokio handles in spawn order.
    pub(crate) fn raw(&self) -> u64 {
        self.raw.block_on(async {
            let handles: Vec<_> = (0..TASKS).map(|i| tokio::spawn(async move { i })).collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.expect("tokio task finished");
            }
            sum
        })
    }

    /// `Runtime::spawn` every task through sheepdog, then await the sheepdog handles in spawn
    /// order, inside the same tokio `block_on` as [`raw`](Tokio::raw).
    pub(crate) fn sheepdog(&self) -> u64 {
        let rt = &self.sheepdog;
        self.raw.block_on(async {
            let handles: Vec<_> = (0..TASKS).map(|i| rt.spawn(async move { i })).collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.expect("sheepdog task finished");
            }
            sum
        })
    }

    /// `sheepdog::runtime::spawn` (the ambient, type-erased path) every task, then await the
    /// sheepdog handles in spawn order, inside the same tokio `block_on`.
    pub(crate) fn ambient(&self) -> u64 {
        self.raw.block_on(with_runtime(&self.sheepdog, async {
            let handles: Vec<_> = (0..TASKS)
                .map(|i| runtime::spawn(async move { i }))
                .collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.expect("sheepdog task finished");
            }
            sum
        }))
    }

    /// Spawn every task as a child of a sheepdog spawned task group (through the concrete
    /// adapter), then await the children's handles in spawn order.
    pub(crate) fn group(&self) -> u64 {
        self.raw.block_on(group_of_tasks(self.sheepdog.clone()))
    }

    /// Spawn every task into a tokio `JoinSet`, then drain it (completion order).
    pub(crate) fn joinset(&self) -> u64 {
        self.raw.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..TASKS {
                set.spawn(async move { i });
            }
            let mut sum = 0;
            while let Some(output) = set.join_next().await {
                sum += output.expect("tokio task finished");
            }
            sum
        })
    }
}

/// A spawned task group on `rt` whose body spawns [`TASKS`] children and awaits their handles
/// in spawn order.
pub(crate) async fn group_of_tasks<S: GroupRuntime>(rt: S) -> u64 {
    spawn_group_on(rt, |tg| async move {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| tg.spawn(async move { Ok::<_, Infallible>(i) }))
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("child finished");
        }
        Ok(sum)
    })
    .await
    .expect("the group finished")
}

/// Children polled by one future, no runtime: an in-task group whose body spawns [`TASKS`]
/// children and awaits their handles in spawn order.
pub(crate) fn in_task_group() -> u64 {
    futures::executor::block_on(task_group(|tg| async move {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| tg.spawn(async move { Ok::<_, Infallible>(i) }))
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.expect("child finished");
        }
        Ok(sum)
    }))
    .expect("the group finished")
}

pub(crate) fn futures_unordered() -> u64 {
    let set = futures::stream::FuturesUnordered::new();
    for i in 0..TASKS {
        set.push(async move { i });
    }
    futures::executor::block_on(set.fold(0, |sum, i| async move { sum + i }))
}

pub(crate) fn futures_buffered() -> u64 {
    let mut set = futures_buffered::FuturesUnordered::new();
    for i in 0..TASKS {
        set.push(async move { i });
    }
    futures::executor::block_on(set.fold(0, |sum, i| async move { sum + i }))
}
