//! The flow executor: a graph of named async operations run in dependency order, at most
//! `max_concurrent` at a time, with a failure policy, real result cleanup and progress events
//! (lionagi's `Session.flow` and `flow_with_cleanup`, as a generic DAG runner).
//!
//! ```
//! # #[cfg(feature = "test-util")] {
//! use sheepdog_core::flow::{FlowBuilder, RunOptions};
//! use sheepdog_core::runtime::Runtime;
//! use sheepdog_core::testing::VirtualRuntime;
//!
//! let mut graph = FlowBuilder::<String>::new();
//! let fetch = graph.node("fetch", &[], |_| async { Ok("some text".to_owned()) });
//! let count = graph.node("count", &["fetch"], move |inputs| async move {
//!     Ok(inputs.get(fetch).map_or(0, |text| text.split(' ').count()))
//! });
//! let flow = graph.build().expect("a valid graph");
//!
//! let report = VirtualRuntime::new().block_on(flow.run(RunOptions::new()));
//! assert_eq!(report.output(count), Some(&2));
//! assert!(report.all_completed());
//! # }
//! ```
//!
//! | lionagi | sheepdog |
//! |---|---|
//! | `OperationGraphBuilder.add_operation(op, depends_on=[..])` | [`FlowBuilder::node`]`(name, deps, f)` |
//! | cycle check at run time | [`FlowBuilder::build`]: duplicate names, unknown dependencies and cycles (naming the cycle) are [`GraphError`]s |
//! | `Session.flow(graph, max_concurrent=5)` | [`Flow::run`] with [`RunOptions`] (`max_concurrent` 5 by default) |
//! | `parallel=False` | [`RunOptions::sequential`] |
//! | a failed node's dependents run with its error | [`FailurePolicy::Continue`]; the default is [`FailurePolicy::SkipDependents`] |
//! | cancellation tears the flow down | [`FailurePolicy::FailFast`], or [`FlowCanceller::cancel`]: the report says what was cancelled |
//! | `flow_with_cleanup(keep_only=..)` trims the returned dict | [`RunOptions::keep_only`] drops every other output as soon as no pending node needs it |
//! | `flow_stream` | [`RunOptions::progress`]: a [`FlowEvent`] per node start and settle |
//!
//! See `docs/flow.md` for the scheduling order and what each policy does.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;

use crate::cancel::fail_after;
use crate::combinators::{retry, RetryError, RetryPolicy};
use crate::runtime::{self, CatchPanic, JoinError, Panic};

mod graph;

pub use graph::{FlowBuilder, GraphError};

/// A node's output, type-erased; [`NodeRef`] gives it back its type.
type Output = Arc<dyn Any + Send + Sync>;

/// A node's operation: called with its inputs, once per run (once per attempt with a retry
/// policy).
type Operation<E> = Arc<dyn Fn(Inputs<E>) -> BoxFuture<'static, Result<Output, E>> + Send + Sync>;

/// A node of a flow, by position in the order the builder added them.
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, NodeId};
///
/// let mut graph = FlowBuilder::<()>::new();
/// graph.node("first", &[], |_| async { Ok(()) });
/// let second: NodeId = graph.node("second", &[], |_| async { Ok(()) }).id();
/// assert_eq!(second.index(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(usize);

impl NodeId {
    /// The node's position in the order the builder added it.
    pub fn index(self) -> usize {
        self.0
    }
}

/// A typed reference to a node: reads its output of type `T` from [`Inputs`] or a
/// [`FlowReport`].
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, RunOptions};
///
/// let mut graph = FlowBuilder::<()>::new();
/// let answer = graph.node("answer", &[], |_| async { Ok(41_u8) });
/// let next = graph.node("next", &["answer"], move |inputs| async move {
///     Ok(inputs.get(answer).copied().unwrap_or(0) + 1) // typed: `&u8`
/// });
/// let report = futures::executor::block_on(graph.build().unwrap().run(RunOptions::new()));
/// assert_eq!(report.output(next), Some(&42));
/// ```
pub struct NodeRef<T> {
    id: NodeId,
    output: PhantomData<fn() -> T>,
}

impl<T> NodeRef<T> {
    /// The node this refers to.
    pub fn id(self) -> NodeId {
        self.id
    }
}

impl<T> Clone for NodeRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for NodeRef<T> {}

impl<T> fmt::Debug for NodeRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeRef").field(&self.id.0).finish()
    }
}

impl<T> From<NodeRef<T>> for NodeId {
    fn from(node: NodeRef<T>) -> NodeId {
        node.id
    }
}

/// Why a node has no output.
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, NodeError, NodeStatus, RunOptions};
///
/// let mut graph = FlowBuilder::<&str>::new();
/// let bad = graph.node("bad", &[], |_| async { Err::<(), _>("no answer") });
/// let report = futures::executor::block_on(graph.build().unwrap().run(RunOptions::new()));
/// match report.status(bad) {
///     NodeStatus::Failed(error) => assert!(matches!(**error, NodeError::Failed("no answer"))),
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum NodeError<E> {
    /// The operation returned this error.
    #[error("the node failed")]
    Failed(E),
    /// The operation did not finish within its timeout.
    #[error("the node timed out after {0:?}")]
    Timeout(Duration),
    /// The operation panicked; the payload is kept.
    #[error("the node panicked")]
    Panicked(Panic),
    /// The operation failed every attempt its retry policy allowed
    /// ([`FlowBuilder::retry`]).
    #[error("the node failed after {} attempts", .0.attempts())]
    Retried(RetryError<E>),
}

/// A node's dependencies' outputs (and failures, under [`FailurePolicy::Continue`]).
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FailurePolicy, FlowBuilder, RunOptions};
///
/// let mut graph = FlowBuilder::<&str>::new();
/// let ok = graph.node("ok", &[], |_| async { Ok(1) });
/// let bad = graph.node("bad", &[], |_| async { Err::<u8, _>("down") });
/// let both = graph.node("both", &["ok", "bad"], move |inputs| async move {
///     Ok((inputs.get(ok).copied(), inputs.get(bad).copied(), inputs.failure(bad).is_some()))
/// });
/// let options = RunOptions::new().policy(FailurePolicy::Continue);
/// let report = futures::executor::block_on(graph.build().unwrap().run(options));
/// assert_eq!(report.output(both), Some(&(Some(1), None, true)));
/// ```
pub struct Inputs<E> {
    values: Vec<(NodeId, Settled<E>)>,
}

/// A settled node's result as its dependents see it.
type Settled<E> = Result<Output, Arc<NodeError<E>>>;

impl<E> Clone for Inputs<E> {
    fn clone(&self) -> Self {
        Inputs {
            values: self.values.clone(),
        }
    }
}

impl<E> fmt::Debug for Inputs<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inputs")
            .field("dependencies", &self.values.len())
            .finish()
    }
}

impl<E> Inputs<E> {
    fn find(&self, id: NodeId) -> Option<&Settled<E>> {
        self.values
            .iter()
            .find_map(|(dep, settled)| (*dep == id).then_some(settled))
    }

    /// The output of dependency `node`; `None` if `node` is not a dependency of this node or
    /// it failed.
    pub fn get<T: 'static>(&self, node: NodeRef<T>) -> Option<&T> {
        self.find(node.id)?.as_ref().ok()?.downcast_ref()
    }

    /// Why dependency `node` has no output (only seen under [`FailurePolicy::Continue`]).
    pub fn failure(&self, node: impl Into<NodeId>) -> Option<&NodeError<E>> {
        self.find(node.into())?.as_ref().err().map(|error| &**error)
    }
}

/// What happens to the rest of the flow when a node fails.
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FailurePolicy, FlowBuilder, NodeStatus, RunOptions};
///
/// let mut graph = FlowBuilder::<()>::new();
/// let bad = graph.node("bad", &[], |_| async { Err::<(), _>(()) });
/// let after = graph.node("after", &["bad"], |_| async { Ok(()) });
/// let flow = graph.build().unwrap();
/// let report = futures::executor::block_on(flow.run(RunOptions::new())); // SkipDependents
/// assert!(matches!(report.status(after), NodeStatus::Skipped { because } if *because == bad.id()));
/// let report = futures::executor::block_on(
///     flow.run(RunOptions::new().policy(FailurePolicy::Continue)),
/// );
/// assert!(matches!(report.status(after), NodeStatus::Completed));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// The failed node's dependents (and theirs) are skipped; independent nodes still run.
    #[default]
    SkipDependents,
    /// Dependents run anyway and see the failure through [`Inputs::failure`] (lionagi's
    /// behaviour).
    Continue,
    /// The first failure cancels the whole flow: running nodes are dropped, and nothing else
    /// starts.
    FailFast,
}

/// How a run goes.
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, RunOptions};
///
/// let mut graph = FlowBuilder::<()>::new();
/// graph.node("a", &[], |_| async { Ok(vec![0_u8; 1024]) });
/// let b = graph.node("b", &["a"], |_| async { Ok(1) });
/// let options = RunOptions::new().sequential().keep_only([b]);
/// let report = futures::executor::block_on(graph.build().unwrap().run(options));
/// assert_eq!(report.outputs_kept(), 1); // `a`'s output was dropped once `b` had run
/// ```
#[derive(Debug, Clone)]
pub struct RunOptions {
    max_concurrent: usize,
    policy: FailurePolicy,
    keep_only: Option<Vec<NodeId>>,
    spawn: bool,
    progress: Option<futures::channel::mpsc::UnboundedSender<FlowEvent>>,
    canceller: Option<FlowCanceller>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl RunOptions {
    /// At most 5 nodes at once (as `Session.flow`), skip dependents of failed nodes, keep
    /// every output, run in-task.
    pub fn new() -> Self {
        RunOptions {
            max_concurrent: 5,
            policy: FailurePolicy::SkipDependents,
            keep_only: None,
            spawn: false,
            progress: None,
            canceller: None,
        }
    }

    /// At most `limit` nodes run at once. A node waits for its dependencies before it takes a
    /// slot, so no limit can deadlock.
    ///
    /// # Panics
    ///
    /// If `limit` is zero (`#[track_caller]`): a flow that may run nothing is a bug.
    #[track_caller]
    pub fn max_concurrent(mut self, limit: usize) -> Self {
        assert!(limit > 0, "max_concurrent must be at least 1");
        self.max_concurrent = limit;
        self
    }

    /// One node at a time (lionagi's `parallel=False`), in a deterministic order: among the
    /// nodes that are ready, the one added to the builder first.
    pub fn sequential(self) -> Self {
        self.max_concurrent(1)
    }

    /// What happens when a node fails.
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Keep only these nodes' outputs: every other output is dropped as soon as no pending
    /// node needs it, so a long chain holds O(width) outputs, not O(nodes).
    pub fn keep_only<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<NodeId>,
    {
        self.keep_only = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Spawn every node on the ambient runtime (parallel CPU work) instead of polling them in
    /// the run's own future.
    pub fn spawned(mut self) -> Self {
        self.spawn = true;
        self
    }

    /// Send a [`FlowEvent`] here when a node starts and when it settles.
    pub fn progress(mut self, events: futures::channel::mpsc::UnboundedSender<FlowEvent>) -> Self {
        self.progress = Some(events);
        self
    }

    /// Stop the run when `canceller` is cancelled; the report still comes back.
    pub fn canceller(mut self, canceller: &FlowCanceller) -> Self {
        self.canceller = Some(canceller.clone());
        self
    }
}

/// Cancels a running flow from anywhere: running nodes are dropped, nothing else starts, and
/// the run returns its report with those nodes [`NodeStatus::Cancelled`].
///
/// To drop a flow without a report, cancel the scope around it instead.
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, FlowCanceller, NodeStatus, RunOptions};
///
/// let mut graph = FlowBuilder::<()>::new();
/// let stuck = graph.node("stuck", &[], |_| std::future::pending::<Result<(), ()>>());
/// let flow = graph.build().unwrap();
/// let canceller = FlowCanceller::new();
/// let run = flow.run(RunOptions::new().canceller(&canceller));
/// canceller.cancel(); // before or while it runs
/// let report = futures::executor::block_on(run);
/// assert!(matches!(report.status(stuck), NodeStatus::Cancelled));
/// ```
#[derive(Debug, Clone, Default)]
pub struct FlowCanceller {
    inner: Arc<CancelSignal>,
}

#[derive(Debug, Default)]
struct CancelSignal {
    cancelled: AtomicBool,
    waker: AtomicWaker,
}

impl FlowCanceller {
    /// A canceller for one or more runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the runs using this canceller. Idempotent.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.waker.wake();
    }

    /// Whether [`cancel`](FlowCanceller::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }
}

/// Progress of a run, one event per node start and settle, for progress bars and logs.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use sheepdog_core::flow::{EventKind, FlowBuilder, Outcome, RunOptions};
///
/// let mut graph = FlowBuilder::<()>::new();
/// graph.node("only", &[], |_| async { Ok(()) });
/// let (events, received) = futures::channel::mpsc::unbounded();
/// futures::executor::block_on(graph.build().unwrap().run(RunOptions::new().progress(events)));
/// let kinds: Vec<EventKind> = futures::executor::block_on(received.map(|e| e.kind).collect());
/// assert_eq!(kinds, [EventKind::Started, EventKind::Settled(Outcome::Completed)]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// The node.
    pub node: NodeId,
    /// Its name.
    pub name: Arc<str>,
    /// What happened.
    pub kind: EventKind,
}

/// What a [`FlowEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The node took a concurrency slot and started.
    Started,
    /// The node settled with this outcome.
    Settled(Outcome),
}

/// How a node settled, without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Completed with an output.
    Completed,
    /// Failed, timed out or panicked.
    Failed,
    /// Skipped because a dependency failed or was skipped.
    Skipped,
    /// Cancelled (fail-fast or the canceller) before or while it ran.
    Cancelled,
}

/// How one node ended (see [`FailurePolicy`]'s example).
#[derive(Debug)]
pub enum NodeStatus<E> {
    /// It completed; its output is in the report unless `keep_only` dropped it.
    Completed,
    /// It failed.
    Failed(Arc<NodeError<E>>),
    /// It never ran because this dependency failed or was skipped.
    Skipped {
        /// The dependency.
        because: NodeId,
    },
    /// It was cancelled before or while it ran.
    Cancelled,
}

impl<E> NodeStatus<E> {
    fn outcome(&self) -> Outcome {
        match self {
            NodeStatus::Completed => Outcome::Completed,
            NodeStatus::Failed(_) => Outcome::Failed,
            NodeStatus::Skipped { .. } => Outcome::Skipped,
            NodeStatus::Cancelled => Outcome::Cancelled,
        }
    }
}

/// What a run did: every node's status, the outputs kept, and the order nodes settled in.
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, Outcome, RunOptions};
///
/// let mut graph = FlowBuilder::<()>::new();
/// graph.node("a", &[], |_| async { Ok(()) });
/// graph.node("b", &["a"], |_| async { Err::<(), _>(()) });
/// let report = futures::executor::block_on(graph.build().unwrap().run(RunOptions::new()));
/// assert_eq!(report.settle_order_names(), ["a", "b"]);
/// assert_eq!(report.with_outcome(Outcome::Failed).len(), 1);
/// assert!(!report.all_completed());
/// ```
pub struct FlowReport<E> {
    names: Arc<[Arc<str>]>,
    statuses: Vec<NodeStatus<E>>,
    outputs: Vec<Option<Output>>,
    order: Vec<NodeId>,
}

impl<E: fmt::Debug> fmt::Debug for FlowReport<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowReport")
            .field("statuses", &self.statuses)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl<E> FlowReport<E> {
    /// How node `node` ended.
    ///
    /// # Panics
    ///
    /// If `node` is not a node of this flow.
    pub fn status(&self, node: impl Into<NodeId>) -> &NodeStatus<E> {
        &self.statuses[node.into().0]
    }

    /// The output of `node`, if it completed and its output was kept.
    pub fn output<T: 'static>(&self, node: NodeRef<T>) -> Option<&T> {
        self.outputs.get(node.id.0)?.as_ref()?.downcast_ref()
    }

    /// A node's name.
    ///
    /// # Panics
    ///
    /// If `node` is not a node of this flow.
    pub fn name(&self, node: impl Into<NodeId>) -> &str {
        &self.names[node.into().0]
    }

    /// The nodes in the order they settled (completed, failed, skipped or cancelled).
    pub fn settle_order(&self) -> &[NodeId] {
        &self.order
    }

    /// The names of the nodes in the order they settled.
    pub fn settle_order_names(&self) -> Vec<&str> {
        self.order.iter().map(|&node| self.name(node)).collect()
    }

    /// The nodes with this outcome, in the order the builder added them.
    pub fn with_outcome(&self, outcome: Outcome) -> Vec<NodeId> {
        (0..self.statuses.len())
            .filter(|&i| self.statuses[i].outcome() == outcome)
            .map(NodeId)
            .collect()
    }

    /// Whether every node completed.
    pub fn all_completed(&self) -> bool {
        self.statuses
            .iter()
            .all(|status| matches!(status, NodeStatus::Completed))
    }

    /// How many outputs the report holds.
    pub fn outputs_kept(&self) -> usize {
        self.outputs.iter().flatten().count()
    }
}

/// A validated graph, ready to run (any number of times).
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, RunOptions};
///
/// let mut graph = FlowBuilder::<()>::new();
/// let n = graph.node("n", &[], |_| async { Ok(3) });
/// let flow = graph.build().unwrap();
/// for _ in 0..2 {
///     // Reusable: each run calls the operations again.
///     let report = futures::executor::block_on(flow.run(RunOptions::new()));
///     assert_eq!(report.output(n), Some(&3));
/// }
/// ```
pub struct Flow<E> {
    names: Arc<[Arc<str>]>,
    operations: Vec<Operation<E>>,
    timeouts: Vec<Option<Duration>>,
    retries: Vec<Option<RetryPolicy>>,
    deps: Vec<Vec<NodeId>>,
    dependents: Vec<Vec<NodeId>>,
}

impl<E> fmt::Debug for Flow<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flow")
            .field("nodes", &self.names)
            .finish_non_exhaustive()
    }
}

impl<E: Send + Sync + 'static> Flow<E> {
    /// How many nodes the flow has.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the flow has no node.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Runs the flow and reports what every node did.
    ///
    /// Node failures are in the report, never raised. With [`RunOptions::spawned`], the
    /// ambient runtime must be set.
    ///
    /// # Panics
    ///
    /// With [`RunOptions::spawned`], if no runtime is ambient.
    ///
    /// # Cancel safety
    ///
    /// Dropping the run drops every running node (or, spawned, aborts its task); no report.
    /// Use a [`FlowCanceller`] to stop a run and still get its report.
    pub async fn run(&self, options: RunOptions) -> FlowReport<E> {
        Run::new(self, options).drive().await
    }
}

/// How a node's run ended (`None`: its runtime cancelled its task).
type Ran<E> = Option<Result<Output, NodeError<E>>>;

/// A running node: its index and how it ended.
type Running<E> = BoxFuture<'static, (usize, Ran<E>)>;

/// The state of one run.
struct Run<'f, E> {
    flow: &'f Flow<E>,
    options: RunOptions,
    /// Dependencies not settled yet, per node.
    waiting_on: Vec<usize>,
    /// Dependents not settled yet, per node (an output is dropped when it reaches zero,
    /// unless kept).
    needed_by: Vec<usize>,
    keep: Vec<bool>,
    ready: BinaryHeap<Reverse<usize>>,
    running: FuturesUnordered<Running<E>>,
    results: Vec<Option<Settled<E>>>,
    statuses: Vec<Option<NodeStatus<E>>>,
    order: Vec<NodeId>,
}

impl<'f, E: Send + Sync + 'static> Run<'f, E> {
    fn new(flow: &'f Flow<E>, options: RunOptions) -> Self {
        let n = flow.len();
        let keep = match &options.keep_only {
            None => vec![true; n],
            Some(nodes) => {
                let mut keep = vec![false; n];
                nodes
                    .iter()
                    .filter(|id| id.0 < n)
                    .for_each(|id| keep[id.0] = true);
                keep
            }
        };
        let waiting_on: Vec<usize> = flow.deps.iter().map(Vec::len).collect();
        let ready = (0..n)
            .filter(|&i| waiting_on[i] == 0)
            .map(Reverse)
            .collect();
        Run {
            flow,
            waiting_on,
            needed_by: flow.dependents.iter().map(Vec::len).collect(),
            keep,
            ready,
            running: FuturesUnordered::new(),
            results: (0..n).map(|_| None).collect(),
            statuses: (0..n).map(|_| None).collect(),
            order: Vec::with_capacity(n),
            options,
        }
    }

    async fn drive(mut self) -> FlowReport<E> {
        loop {
            if self.cancelled() {
                self.cancel_rest();
                break;
            }
            self.start_ready();
            if self.running.is_empty() {
                break;
            }
            // `None`: the canceller fired; the top of the loop handles it.
            if let Some((index, result)) = futures::future::poll_fn(|cx| self.poll_next(cx)).await {
                self.finish(index, result);
            }
        }
        self.report()
    }

    /// The next node to settle, or `None` once the canceller fires.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, Ran<E>)>> {
        if let Some(canceller) = &self.options.canceller {
            canceller.inner.waker.register(cx.waker());
            if canceller.is_cancelled() {
                return Poll::Ready(None);
            }
        }
        match self.running.poll_next_unpin(cx) {
            Poll::Ready(Some(settled)) => Poll::Ready(Some(settled)),
            Poll::Ready(None) => unreachable!("polled only while nodes run"),
            Poll::Pending => Poll::Pending,
        }
    }

    fn cancelled(&self) -> bool {
        self.options
            .canceller
            .as_ref()
            .is_some_and(FlowCanceller::is_cancelled)
    }

    fn emit(&self, index: usize, kind: EventKind) {
        if let Some(events) = &self.options.progress {
            // A consumer that went away only stops getting events.
            let _ = events.unbounded_send(FlowEvent {
                node: NodeId(index),
                name: Arc::clone(&self.flow.names[index]),
                kind,
            });
        }
    }

    /// Starts ready nodes while there is a free slot, lowest index first.
    fn start_ready(&mut self) {
        while self.running.len() < self.options.max_concurrent {
            let Some(Reverse(index)) = self.ready.pop() else {
                return;
            };
            let inputs = Inputs {
                values: self.flow.deps[index]
                    .iter()
                    .map(|dep| {
                        let settled = self.results[dep.0]
                            .clone()
                            .expect("a ready node's dependencies have settled");
                        (*dep, settled)
                    })
                    .collect(),
            };
            self.emit(index, EventKind::Started);
            let operation = self.operation(index, inputs);
            let timeout = self.flow.timeouts[index];
            let node = async move {
                match timeout {
                    None => operation.await,
                    Some(limit) => fail_after(limit, operation)
                        .await
                        .unwrap_or(Err(NodeError::Timeout(limit))),
                }
            };
            let running: Running<E> = if self.options.spawn {
                let handle = runtime::spawn(node);
                Box::pin(async move { (index, joined(handle.await)) })
            } else {
                Box::pin(async move { (index, joined(CatchPanic::new(node).await)) })
            };
            self.running.push(running);
        }
    }

    /// One run of node `index`'s operation: a single call, or calls under its retry policy.
    fn operation(
        &self,
        index: usize,
        inputs: Inputs<E>,
    ) -> BoxFuture<'static, Result<Output, NodeError<E>>> {
        let operation = Arc::clone(&self.flow.operations[index]);
        match self.flow.retries[index].clone() {
            None => {
                let call = operation(inputs);
                Box::pin(async move { call.await.map_err(NodeError::Failed) })
            }
            Some(policy) => Box::pin(async move {
                retry(move || operation(inputs.clone()), policy)
                    .await
                    .map_err(NodeError::Retried)
            }),
        }
    }

    /// Records a node's result and releases what it unblocks.
    fn finish(&mut self, index: usize, result: Ran<E>) {
        let Some(result) = result else {
            // Its runtime cancelled the task (it is shutting down): nothing more will run.
            self.statuses[index] = Some(NodeStatus::Cancelled);
            self.order.push(NodeId(index));
            self.emit(index, EventKind::Settled(Outcome::Cancelled));
            self.cancel_rest();
            return;
        };
        let settled = result.map_err(Arc::new);
        let status = match &settled {
            Ok(_) => NodeStatus::Completed,
            Err(error) => NodeStatus::Failed(Arc::clone(error)),
        };
        let failed = settled.is_err();
        self.results[index] = Some(settled);
        self.settle(index, status);
        if failed && self.options.policy == FailurePolicy::FailFast {
            self.cancel_rest();
        }
    }

    fn settle(&mut self, index: usize, status: NodeStatus<E>) {
        self.emit(index, EventKind::Settled(status.outcome()));
        let blocked = !matches!(status, NodeStatus::Completed)
            && self.options.policy == FailurePolicy::SkipDependents;
        self.statuses[index] = Some(status);
        self.order.push(NodeId(index));
        // Its dependencies need it no more.
        for dep in &self.flow.deps[index] {
            self.needed_by[dep.0] -= 1;
            self.release(dep.0);
        }
        self.release(index);
        for &dependent in &self.flow.dependents[index] {
            let d = dependent.0;
            if self.statuses[d].is_some() {
                continue;
            }
            if blocked {
                // Skipped at once; its own dependents follow.
                self.waiting_on[d] = usize::MAX;
                self.settle(
                    d,
                    NodeStatus::Skipped {
                        because: NodeId(index),
                    },
                );
                continue;
            }
            self.waiting_on[d] -= 1;
            if self.waiting_on[d] == 0 {
                self.ready.push(Reverse(d));
            }
        }
    }

    /// Drops a node's output once it is settled, not kept, and no pending node needs it.
    fn release(&mut self, index: usize) {
        if !self.keep[index] && self.needed_by[index] == 0 && self.statuses[index].is_some() {
            self.results[index] = None;
        }
    }

    /// Cancels every node that has not settled: running ones are dropped.
    fn cancel_rest(&mut self) {
        self.running = FuturesUnordered::new();
        self.ready.clear();
        for index in 0..self.statuses.len() {
            if self.statuses[index].is_none() {
                self.emit(index, EventKind::Settled(Outcome::Cancelled));
                self.statuses[index] = Some(NodeStatus::Cancelled);
                self.order.push(NodeId(index));
            }
        }
    }

    fn report(self) -> FlowReport<E> {
        let outputs = self
            .results
            .into_iter()
            .enumerate()
            .map(|(i, settled)| match settled {
                Some(Ok(output)) if self.keep[i] => Some(output),
                _ => None,
            })
            .collect();
        FlowReport {
            names: Arc::clone(&self.flow.names),
            statuses: self
                .statuses
                .into_iter()
                .map(|status| status.unwrap_or(NodeStatus::Cancelled))
                .collect(),
            outputs,
            order: self.order,
        }
    }
}

/// A node's result from its task's (or its panic guard's) outcome; `None` if its runtime
/// cancelled it.
fn joined<E>(outcome: Result<Result<Output, NodeError<E>>, JoinError>) -> Ran<E> {
    match outcome {
        Ok(result) => Some(result),
        Err(JoinError::Panic(panic)) => Some(Err(NodeError::Panicked(panic))),
        Err(JoinError::Cancelled) => None,
    }
}
