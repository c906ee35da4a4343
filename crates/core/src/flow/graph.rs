//! Building a flow: named nodes with dependencies, validated once.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::{Flow, Inputs, NodeId, NodeRef, Operation, Output};
use crate::combinators::RetryPolicy;

/// Why a graph cannot run.
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, GraphError};
///
/// let mut graph = FlowBuilder::<()>::new();
/// graph.node("a", &["missing"], |_| async { Ok(()) });
/// assert_eq!(
///     graph.build().unwrap_err(),
///     GraphError::UnknownDependency { node: "a".into(), dependency: "missing".into() }
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Two nodes have this name.
    #[error("two nodes are named {0:?}")]
    DuplicateName(String),
    /// `node` depends on a name no node has.
    #[error("node {node:?} depends on {dependency:?}, which is not a node")]
    UnknownDependency {
        /// The node.
        node: String,
        /// The missing dependency.
        dependency: String,
    },
    /// These nodes depend on each other in a cycle, in this order (each depends on the next,
    /// and the last on the first).
    #[error("the nodes {0:?} form a cycle")]
    Cycle(Vec<String>),
}

struct Spec<E> {
    name: Arc<str>,
    deps: Vec<String>,
    operation: Operation<E>,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
}

/// Builds a [`Flow`]: add named nodes with their dependencies, then [`build`] it.
///
/// A node's operation is called with its dependencies' outputs ([`Inputs`]) and returns its
/// own output, typed: [`node`](FlowBuilder::node) returns a [`NodeRef<T>`] that reads it back.
///
/// [`build`]: FlowBuilder::build
///
/// # Examples
///
/// ```
/// use sheepdog_core::flow::{FlowBuilder, GraphError};
///
/// let mut graph = FlowBuilder::<()>::new();
/// graph.node("a", &["b"], |_| async { Ok(1) });
/// graph.node("b", &["a"], |_| async { Ok(2) });
/// assert_eq!(
///     graph.build().unwrap_err(),
///     GraphError::Cycle(vec!["a".into(), "b".into()])
/// );
/// ```
pub struct FlowBuilder<E> {
    specs: Vec<Spec<E>>,
}

impl<E> Default for FlowBuilder<E> {
    fn default() -> Self {
        FlowBuilder { specs: Vec::new() }
    }
}

impl<E> fmt::Debug for FlowBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowBuilder")
            .field(
                "nodes",
                &self.specs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<E: Send + Sync + 'static> FlowBuilder<E> {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds node `name`, run after every node named in `deps`, by calling `operation` with
    /// their outputs. Names and dependencies are checked by [`build`](FlowBuilder::build).
    pub fn node<T, F, Fut>(&mut self, name: &str, deps: &[&str], operation: F) -> NodeRef<T>
    where
        F: Fn(Inputs<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + Sync + 'static,
    {
        let id = NodeId(self.specs.len());
        let operation: Operation<E> = Arc::new(move |inputs| {
            operation(inputs)
                .map(|result| result.map(|output| Arc::new(output) as Output))
                .boxed()
        });
        self.specs.push(Spec {
            name: Arc::from(name),
            deps: deps.iter().map(|&dep| dep.to_owned()).collect(),
            operation,
            timeout: None,
            retry: None,
        });
        NodeRef {
            id,
            output: PhantomData,
        }
    }

    /// Fails `node` with [`NodeError::Timeout`](super::NodeError::Timeout) if it runs longer
    /// than `timeout` (measured from when it starts, not while it waits for its
    /// dependencies).
    ///
    /// # Panics
    ///
    /// If `node` was not made by this builder.
    pub fn timeout(&mut self, node: impl Into<NodeId>, timeout: Duration) -> &mut Self {
        self.specs[node.into().0].timeout = Some(timeout);
        self
    }

    /// Retries `node`'s operation under `policy` (see
    /// [`retry`](crate::combinators::retry)): each attempt is called with the same inputs, and a
    /// node that fails every attempt fails with
    /// [`NodeError::Retried`](super::NodeError::Retried). A [`timeout`](FlowBuilder::timeout)
    /// bounds all the attempts together.
    ///
    /// # Panics
    ///
    /// If `node` was not made by this builder.
    pub fn retry(&mut self, node: impl Into<NodeId>, policy: RetryPolicy) -> &mut Self {
        self.specs[node.into().0].retry = Some(policy);
        self
    }

    /// Checks the graph and makes it runnable.
    ///
    /// # Errors
    ///
    /// [`GraphError`]: a duplicate name, a dependency on an unknown name, or a cycle (named
    /// in order).
    pub fn build(self) -> Result<Flow<E>, GraphError> {
        let mut index = HashMap::with_capacity(self.specs.len());
        for (i, spec) in self.specs.iter().enumerate() {
            if index.insert(&*spec.name, i).is_some() {
                return Err(GraphError::DuplicateName(spec.name.to_string()));
            }
        }
        let mut deps = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let mut ids = Vec::with_capacity(spec.deps.len());
            for dep in &spec.deps {
                let Some(&i) = index.get(dep.as_str()) else {
                    return Err(GraphError::UnknownDependency {
                        node: spec.name.to_string(),
                        dependency: dep.clone(),
                    });
                };
                if !ids.contains(&NodeId(i)) {
                    ids.push(NodeId(i));
                }
            }
            deps.push(ids);
        }
        let mut dependents = vec![Vec::new(); self.specs.len()];
        for (i, ids) in deps.iter().enumerate() {
            for dep in ids {
                dependents[dep.0].push(NodeId(i));
            }
        }
        if let Some(cycle) = find_cycle(&deps) {
            let names = cycle
                .into_iter()
                .map(|i| self.specs[i].name.to_string())
                .collect();
            return Err(GraphError::Cycle(names));
        }
        let mut names = Vec::with_capacity(self.specs.len());
        let mut operations = Vec::with_capacity(self.specs.len());
        let mut timeouts = Vec::with_capacity(self.specs.len());
        let mut retries = Vec::with_capacity(self.specs.len());
        for spec in self.specs {
            names.push(spec.name);
            operations.push(spec.operation);
            timeouts.push(spec.timeout);
            retries.push(spec.retry);
        }
        Ok(Flow {
            names: names.into(),
            operations,
            timeouts,
            retries,
            deps,
            dependents,
        })
    }
}

/// A cycle among the nodes, if there is one: each node in it depends on the next, and the
/// last on the first. Iterative depth-first search, O(nodes + edges).
fn find_cycle(deps: &[Vec<NodeId>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; deps.len()];
    for root in 0..deps.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // The path from `root`, each entry with the index of its next dependency to visit.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let Some(dep) = deps[node].get(*next).map(|id| id.0) else {
                marks[node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match marks[dep] {
                Mark::New => {
                    marks[dep] = Mark::OnPath;
                    path.push((dep, 0));
                }
                Mark::OnPath => {
                    let start = path.iter().position(|&(n, _)| n == dep)?;
                    return Some(path[start..].iter().map(|&(n, _)| n).collect());
                }
                Mark::Done => {}
            }
        }
    }
    None
}
