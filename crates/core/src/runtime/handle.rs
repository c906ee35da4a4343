//! [`RuntimeHandle`]: a cheap, cloneable reference to a runtime.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use super::Runtime;

/// A cheap, cloneable reference to a [`Runtime`], as the ambient context stores it.
///
/// It dereferences to `dyn Runtime`. A handle refers either to a shared runtime value (an
/// `Arc`, for runtimes with state such as a caller-supplied executor) or to a `'static` one
/// (for process-wide runtimes, which then cost nothing to clone).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use sheepdog_core::runtime::{self, Runtime};
/// use sheepdog_core::testing::VirtualRuntime;
///
/// VirtualRuntime::new().block_on(async {
///     let handle = runtime::current().expect("inside block_on");
///     let child = runtime::spawn_on(&*handle, async { 1 });
///     assert_eq!(child.await.unwrap(), 1);
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct RuntimeHandle(Repr);

#[derive(Clone)]
enum Repr {
    Shared(Arc<dyn Runtime>),
    Static(&'static dyn Runtime),
}

impl RuntimeHandle {
    /// A handle to a shared runtime value.
    pub fn from_arc(runtime: Arc<dyn Runtime>) -> Self {
        RuntimeHandle(Repr::Shared(runtime))
    }

    /// A handle to a process-wide runtime value; cloning it costs nothing.
    pub fn from_static(runtime: &'static dyn Runtime) -> Self {
        RuntimeHandle(Repr::Static(runtime))
    }

    /// The runtime, if this handle refers to a `'static` one.
    pub(crate) fn as_static(&self) -> Option<&'static dyn Runtime> {
        match self.0 {
            Repr::Static(runtime) => Some(runtime),
            Repr::Shared(_) => None,
        }
    }

    /// A handle that works from any thread: shared handles already do; a static one may be
    /// tied to its polling context, so it is asked for its [`Runtime::handle`].
    pub(crate) fn portable(self) -> Self {
        match self.0 {
            Repr::Shared(_) => self,
            Repr::Static(runtime) => runtime.handle(),
        }
    }
}

impl Deref for RuntimeHandle {
    type Target = dyn Runtime;

    fn deref(&self) -> &(dyn Runtime + 'static) {
        match &self.0 {
            Repr::Shared(runtime) => &**runtime,
            Repr::Static(runtime) => *runtime,
        }
    }
}

impl fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Repr::Shared(_) => "shared",
            Repr::Static(_) => "static",
        };
        f.debug_tuple("RuntimeHandle").field(&kind).finish()
    }
}
