//! `gather`, `try_gather`, `gather_settled`: run many futures at once, outputs in input order.

use std::convert::Infallible;
use std::future::Future;
use std::ops::ControlFlow;
use std::task::Poll;

use futures::future::poll_fn;

use super::inflight::{Feed, Source};
use super::join::{shrunk, Join};
use super::outcome::{settle, Outcome};
use super::pinned::InPlace;

/// Runs the futures of `source` concurrently, at most `cap` at once, and collects what `keep`
/// makes of each output into a vector in input order. The first `Err` from `keep` ends the
/// run: every future still in flight is dropped at once and no further one is made.
pub(crate) async fn collect_ordered<S, U, E>(
    source: S,
    cap: usize,
    mut keep: impl FnMut(<S::Fut as Future>::Output) -> Result<U, E>,
) -> Result<Vec<U>, E>
where
    S: Source,
{
    let mut outputs: Vec<Option<U>> = Vec::new();
    outputs.resize_with(source.size_hint().0, || None);
    let mut feed = Feed::new(source);
    let mut failed = None;
    poll_fn(move |cx| {
        let polled = feed.poll_each(cx, cap, |index, output| match keep(output) {
            Ok(value) => {
                if outputs.len() <= index {
                    outputs.resize_with(index + 1, || None);
                }
                outputs[index] = Some(value);
                ControlFlow::Continue(())
            }
            Err(error) => {
                failed = Some(error);
                ControlFlow::Break(())
            }
        });
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(ControlFlow::Break(())) => {
                feed.close();
                Poll::Ready(Err(failed.take().expect("an error stopped the run")))
            }
            Poll::Ready(ControlFlow::Continue(())) => {
                let outputs = std::mem::take(&mut outputs);
                Poll::Ready(Ok(outputs.into_iter().flatten().collect()))
            }
        }
    })
    .await
}

pub(crate) fn never<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// Runs every future concurrently in the calling task and returns their outputs in input
/// order (the seed's `gather`).
///
/// The futures are polled in place by the returned future — no spawning, any executor, no
/// `Send` or `'static` needed. An empty input gives an empty vector at once. For futures of
/// different types, use [`GatherTuple`](super::GatherTuple) on a tuple.
///
/// # Panics
///
/// A panic in one future propagates out of `gather`; the other futures are dropped as the
/// panic unwinds. Use [`gather_settled`] to catch panics into their slots.
///
/// # Cancel safety
///
/// Dropping the returned future (or cancelling the scope around it) drops every future it
/// holds, at once; their outputs are lost.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::gather;
///
/// let topics = ["market trends", "competitors", "technology"];
/// let reports = futures::executor::block_on(gather(
///     topics.iter().map(|topic| async move { format!("analysis of {topic}") }),
/// ));
/// assert_eq!(reports[0], "analysis of market trends");
/// assert_eq!(reports.len(), 3);
/// ```
pub async fn gather<I>(futures: I) -> Vec<<I::Item as Future>::Output>
where
    I: IntoIterator,
    I::Item: Future,
{
    if !InPlace::<I::Item>::FITS {
        let mut join = Join::new(futures.into_iter());
        poll_fn(|cx| join.poll(cx, |_| false)).await;
        return join.into_outputs();
    }
    // Poll the futures in their input vector (a `Vec` is taken as is) while they finish in
    // order, packing each output over the futures before it: when every future is ready at
    // once, that is the only pass.
    let mut block = InPlace::new(futures.into_iter().collect());
    // `Ready` without waiting: a pending future hands over to the joining driver in this same
    // call, so that the futures after it are polled now.
    let finished = poll_fn(|cx| Poll::Ready(block.poll_prefix(cx).is_ready())).await;
    if !finished {
        let mut join = Join::in_place(block.cells());
        poll_fn(|cx| join.poll(cx, |_| false)).await;
    }
    shrunk(block.into_outputs())
}

/// Runs every future concurrently and returns their values in input order, or the first
/// error.
///
/// The first future to fail (in the order failures are observed) ends it: every other future is
/// dropped at once — they are cancelled, not awaited — and that error is returned as is, not
/// wrapped. Because the rest are dropped, there is never a second error to aggregate.
///
/// # Errors
///
/// The first error any future returns.
///
/// # Panics
///
/// A panic in one future propagates; the others are dropped as it unwinds.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future it holds.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::try_gather;
///
/// let ok = futures::executor::block_on(try_gather(
///     [1, 2].map(|n| async move { Ok::<_, String>(n) }),
/// ));
/// assert_eq!(ok, Ok(vec![1, 2]));
/// ```
pub async fn try_gather<I, T, E>(futures: I) -> Result<Vec<T>, E>
where
    I: IntoIterator,
    I::Item: Future<Output = Result<T, E>>,
{
    let mut join = Join::new(futures.into_iter());
    if let Some(failed) = poll_fn(|cx| join.poll(cx, Result::is_err)).await {
        if let Some(Err(error)) = join.take(failed) {
            return Err(error);
        }
    }
    let mut values = Vec::with_capacity(join.len());
    for output in join.take_all() {
        values.push(output?);
    }
    Ok(values)
}

/// Runs every future to the end and returns how each one ended, in input order (the seed's
/// `gather(..., return_exceptions=True)`).
///
/// Errors and panics are caught into their slots as [`Outcome`]s; no failure cancels the
/// others. A cancellation from outside is not caught: cancelling the enclosing scope (or
/// dropping the returned future) drops every future, and there is no result at all.
///
/// # Cancel safety
///
/// Dropping the returned future drops every future it holds; outcomes already collected are
/// lost.
///
/// # Examples
///
/// ```
/// use sheepdog_core::combinators::gather_settled;
///
/// let results = futures::executor::block_on(gather_settled(
///     ["task A", "task B"].map(|name| async move {
///         if name == "task B" { Err(format!("{name} failed")) } else { Ok(name.len()) }
///     }),
/// ));
/// assert_eq!(results[0].ok(), Some(&6));
/// assert_eq!(results[1].err().map(String::as_str), Some("task B failed"));
/// ```
pub async fn gather_settled<I, T, E>(futures: I) -> Vec<Outcome<T, E>>
where
    I: IntoIterator,
    I::Item: Future<Output = Result<T, E>>,
{
    gather(futures.into_iter().map(settle)).await
}

#[cfg(test)]
mod tests {
    //! `gather` in its input block, driven by hand: every pattern of ready, yielding, waiting,
    //! panicking and never-ready futures up to a small length, run to the end and dropped
    //! after every call; and the joining driver's three size classes behind a first future
    //! that waits. Every future and output must be dropped exactly once, no future polled
    //! after it finished, no wake lost, and stale wakes after the gather harmless.

    use std::cell::RefCell;
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Once};
    use std::task::{Context, Poll, Wake, Waker};

    use super::gather;
    use crate::combinators::pinned::InPlace;

    /// What a [`Scripted`] future does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Plan {
        /// Ready after this many `Pending`s, each waking its waker at once.
        Yields(u8),
        /// Ready after this many `Pending`s, each woken later by the driver through the
        /// waker the future parked.
        Waits(u8),
        /// Panics after this many self-woken `Pending`s.
        Panics(u8),
        /// Never ready, never wakes.
        Forever,
    }

    /// The panic payload of a [`Scripted`] future (the panic hook keeps it quiet).
    struct ScriptedPanic;

    fn quiet_scripted_panics() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !info.payload().is::<ScriptedPanic>() {
                    previous(info);
                }
            }));
        });
    }

    /// What the futures of one run record.
    #[derive(Default)]
    struct Log {
        /// The driver's current call to the gather's `poll`, from 1.
        call: usize,
        /// Per future: the last call that polled it (one call polls each future once).
        last_call: Vec<usize>,
        polls: Vec<usize>,
        finished: Vec<bool>,
        future_drops: Vec<usize>,
        output_drops: Vec<usize>,
        /// Wakers parked by `Waits` futures, not yet woken.
        parked: Vec<Waker>,
        /// Every waker ever parked, woken again once the gather is gone.
        stale: Vec<Waker>,
    }

    /// A hand-written future following its [`Plan`]; its `Plan` leaves `MaybeDone` room for
    /// its states, so `gather` polls it in its input vector.
    struct Scripted {
        plan: Plan,
        n: usize,
        log: Rc<RefCell<Log>>,
        /// Where it was first polled (0 before): a future must not move once polled.
        home: usize,
    }

    /// A counted output.
    struct Out {
        n: usize,
        log: Rc<RefCell<Log>>,
    }

    impl Drop for Out {
        fn drop(&mut self) {
            self.log.borrow_mut().output_drops[self.n] += 1;
        }
    }

    impl Drop for Scripted {
        fn drop(&mut self) {
            let here = std::ptr::from_mut(self) as usize;
            assert!(
                self.home == 0 || self.home == here,
                "moved after its first poll"
            );
            self.log.borrow_mut().future_drops[self.n] += 1;
        }
    }

    impl Future for Scripted {
        type Output = Out;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Out> {
            let this = self.get_mut();
            let here = std::ptr::from_mut(this) as usize;
            assert!(
                this.home == 0 || this.home == here,
                "moved after its first poll"
            );
            this.home = here;
            let n = this.n;
            let mut log = this.log.borrow_mut();
            assert!(!log.finished[n], "future {n} polled after it finished");
            log.polls[n] += 1;
            let call = log.call;
            assert!(
                call == 0 || log.last_call[n] < call,
                "future {n} polled twice in one call"
            );
            log.last_call[n] = log.call;
            match this.plan {
                Plan::Yields(0) | Plan::Waits(0) => {
                    log.finished[n] = true;
                    Poll::Ready(Out {
                        n,
                        log: Rc::clone(&this.log),
                    })
                }
                Plan::Panics(0) => {
                    drop(log);
                    std::panic::panic_any(ScriptedPanic)
                }
                Plan::Yields(left) => {
                    this.plan = Plan::Yields(left - 1);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Plan::Panics(left) => {
                    this.plan = Plan::Panics(left - 1);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Plan::Waits(left) => {
                    this.plan = Plan::Waits(left - 1);
                    log.parked.push(cx.waker().clone());
                    log.stale.push(cx.waker().clone());
                    Poll::Pending
                }
                Plan::Forever => Poll::Pending,
            }
        }
    }

    /// The gather's task waker: records that it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// How a run ended.
    #[derive(Debug, PartialEq, Eq)]
    enum Ended {
        /// Every output, in input order (the `n` of each).
        Ready(Vec<usize>),
        /// A future's panic came out of the gather's poll.
        Panicked,
        /// Pending with nothing woken and nothing left to wake.
        Stuck,
        /// Dropped by the driver after this many calls.
        Dropped,
    }

    /// Runs `gather` over futures following `plans`, polling it only when its waker was
    /// woken (after each call, the parked futures are woken, the latest parked first), and drops
    /// it after `drop_after` calls if given. Checks that every future and every output was
    /// dropped exactly once, then wakes every waker ever parked, stale by then.
    fn drive(plans: &[Plan], drop_after: Option<usize>) -> (Ended, Vec<usize>) {
        quiet_scripted_panics();
        let len = plans.len();
        let log = Rc::new(RefCell::new(Log {
            last_call: vec![0; len],
            polls: vec![0; len],
            finished: vec![false; len],
            future_drops: vec![0; len],
            output_drops: vec![0; len],
            ..Log::default()
        }));
        let futures: Vec<Scripted> = plans
            .iter()
            .enumerate()
            .map(|(n, &plan)| Scripted {
                plan,
                n,
                log: Rc::clone(&log),
                home: 0,
            })
            .collect();
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut gathering = Box::pin(gather(futures));
        let mut calls = 0;
        let ended = loop {
            if drop_after == Some(calls) {
                break Ended::Dropped;
            }
            flag.0.store(false, Ordering::SeqCst);
            log.borrow_mut().call = calls + 1;
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| gathering.as_mut().poll(&mut cx)));
            calls += 1;
            match polled {
                Err(payload) => {
                    assert!(payload.is::<ScriptedPanic>(), "only a future's panic");
                    break Ended::Panicked;
                }
                Ok(Poll::Ready(outputs)) => {
                    let order = outputs.iter().map(|out| out.n).collect();
                    let finished = log.borrow().finished.iter().all(|&done| done);
                    assert!(finished, "an output for every future");
                    assert_eq!(
                        log.borrow().output_drops,
                        vec![0; len],
                        "no output dropped before it is returned"
                    );
                    drop(outputs);
                    break Ended::Ready(order);
                }
                Ok(Poll::Pending) => {}
            }
            let parked = std::mem::take(&mut log.borrow_mut().parked);
            if parked.is_empty() && !flag.0.load(Ordering::SeqCst) {
                break Ended::Stuck;
            }
            for waker in parked.into_iter().rev() {
                waker.wake();
            }
            assert!(calls < 1_000, "no progress");
        };
        drop(gathering);
        let record = log.borrow();
        assert_eq!(
            record.future_drops,
            vec![1; len],
            "{plans:?}, {ended:?}: every future dropped once"
        );
        let outputs: Vec<usize> = record
            .finished
            .iter()
            .map(|&done| usize::from(done))
            .collect();
        assert_eq!(
            record.output_drops, outputs,
            "{plans:?}, {ended:?}: every output made dropped once"
        );
        let polls = record.polls.clone();
        let stale: Vec<Waker> = record.stale.clone();
        drop(record);
        for waker in stale {
            waker.wake();
        }
        (ended, polls)
    }

    /// What a run of `plans` to its end must give.
    fn expected(plans: &[Plan]) -> Ended {
        if plans.iter().any(|plan| matches!(plan, Plan::Panics(_))) {
            Ended::Panicked
        } else if plans.contains(&Plan::Forever) {
            Ended::Stuck
        } else {
            Ended::Ready((0..plans.len()).collect())
        }
    }

    /// Every sequence of `len` plans drawn from `choices`.
    fn patterns(choices: &[Plan], len: usize) -> Vec<Vec<Plan>> {
        let mut all = vec![Vec::new()];
        for _ in 0..len {
            all = all
                .into_iter()
                .flat_map(|prefix| {
                    choices.iter().map(move |&plan| {
                        let mut next = prefix.clone();
                        next.push(plan);
                        next
                    })
                })
                .collect();
        }
        all
    }

    #[test]
    fn every_pattern_runs_to_its_end_and_drops_everything_once_at_every_call() {
        const { assert!(InPlace::<Scripted>::FITS) };
        let (choices, longest): (&[Plan], usize) = if cfg!(miri) {
            (
                &[
                    Plan::Yields(0),
                    Plan::Yields(1),
                    Plan::Waits(1),
                    Plan::Panics(0),
                    Plan::Forever,
                ],
                3,
            )
        } else {
            (
                &[
                    Plan::Yields(0),
                    Plan::Yields(1),
                    Plan::Yields(2),
                    Plan::Waits(1),
                    Plan::Waits(2),
                    Plan::Panics(0),
                    Plan::Panics(1),
                    Plan::Forever,
                ],
                4,
            )
        };
        for len in 0..=longest {
            for plans in patterns(choices, len) {
                let (ended, _) = drive(&plans, None);
                assert_eq!(ended, expected(&plans), "{plans:?}");
                // Dropped before the first call, and after each call that did not end it.
                let mut drop_after = 0;
                loop {
                    let (ended, _) = drive(&plans, Some(drop_after));
                    if ended != Ended::Dropped {
                        assert_eq!(ended, expected(&plans), "{plans:?}");
                        break;
                    }
                    drop_after += 1;
                }
            }
        }
    }

    #[test]
    fn a_first_future_that_waits_is_polled_again_in_every_size_class() {
        // (futures, finished before the first that waits): the joined cells number 1, 2,
        // 32 (few), 33 and 2,048 (slot wakers from the first pass), 2,049 and more (slot
        // wakers at the third poll), each with and without a packed prefix.
        // (Under miri, one shape a class and two first futures: it interprets slowly.)
        let (shapes, heads): (&[(usize, usize)], &[Plan]) = if cfg!(miri) {
            (
                &[(3, 1), (40, 8), (45, 12), (2_049, 0)],
                &[Plan::Waits(1), Plan::Panics(1)],
            )
        } else {
            (
                &[
                    (1, 0),
                    (3, 1),
                    (32, 0),
                    (40, 8),
                    (33, 0),
                    (45, 12),
                    (2_048, 0),
                    (2_050, 2),
                    (2_049, 0),
                    (2_100, 40),
                ],
                &[
                    Plan::Waits(1),
                    Plan::Yields(1),
                    Plan::Waits(2),
                    Plan::Panics(1),
                ],
            )
        };
        for &(len, prefix) in shapes {
            for &head in heads {
                let plans: Vec<Plan> = (0..len)
                    .map(|n| match n {
                        n if n < prefix => Plan::Yields(0),
                        n if n == prefix => head,
                        n => [
                            Plan::Yields(0),
                            Plan::Yields(1),
                            Plan::Waits(1),
                            Plan::Waits(2),
                        ][n % 4],
                    })
                    .collect();
                let (ended, polls) = drive(&plans, None);
                assert_eq!(ended, expected(&plans), "{len} futures, head {head:?}");
                if ended == Ended::Panicked {
                    continue;
                }
                let cells = len - prefix;
                for (n, (&plan, &polled)) in plans.iter().zip(&polls).enumerate() {
                    let pendings = match plan {
                        Plan::Yields(k) | Plan::Waits(k) => usize::from(k),
                        Plan::Panics(_) | Plan::Forever => unreachable!(),
                    };
                    // Few cells are all polled at every call; more are polled at most three
                    // times without a wake of their own.
                    if cells > 32 {
                        assert!(
                            polled <= pendings + 3,
                            "{len} futures, head {head:?}: future {n} polled {polled} times"
                        );
                    }
                    assert!(polled > pendings, "future {n} finished");
                }
            }
        }
    }

    /// A future ready at its second poll (waking itself at the first) with a byte: its
    /// output is less aligned than it, so the outputs move to a vector of their own.
    struct Byte {
        plan: Plan,
        value: u8,
        _align: u64,
    }

    impl Future for Byte {
        type Output = u8;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
            let this = self.get_mut();
            match this.plan {
                Plan::Yields(0) => {
                    this.plan = Plan::Forever;
                    Poll::Ready(this.value)
                }
                Plan::Yields(left) => {
                    this.plan = Plan::Yields(left - 1);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                _ => panic!("polled after it finished"),
            }
        }
    }

    /// Runs `future` on a thread-local executor (`futures`'), waking itself as needed.
    fn run<T>(future: impl Future<Output = T>) -> T {
        futures::executor::block_on(future)
    }

    #[test]
    fn inputs_with_spare_capacity_or_not_in_a_vector_come_back_in_order() {
        const { assert!(InPlace::<Byte>::FITS) };
        let log = Rc::new(RefCell::new(Log {
            finished: vec![false; 8],
            last_call: vec![0; 8],
            polls: vec![0; 8],
            future_drops: vec![0; 8],
            output_drops: vec![0; 8],
            ..Log::default()
        }));
        let scripted = |n: usize, plan| Scripted {
            plan,
            n,
            log: Rc::clone(&log),
            home: 0,
        };
        for plan in [Plan::Yields(0), Plan::Yields(1)] {
            log.borrow_mut().finished.fill(false);
            // A vector with room for many more: the block becomes the outputs' vector, then
            // is shrunk (freed and reallocated with the outputs' layouts, which miri checks).
            let mut input = Vec::with_capacity(40);
            input.extend((0..3).map(|n| scripted(n, plan)));
            let outputs = run(gather(input));
            assert_eq!(
                outputs.iter().map(|out| out.n).collect::<Vec<_>>(),
                [0, 1, 2]
            );
            assert!(outputs.capacity() <= 6, "capacity {}", outputs.capacity());
            drop(outputs);
            log.borrow_mut().finished.fill(false);
            // A vector's iterator, advanced: what is left of it.
            let mut input = (0..5)
                .map(|n| scripted(n, plan))
                .collect::<Vec<_>>()
                .into_iter();
            drop(input.next());
            let outputs = run(gather(input));
            assert_eq!(
                outputs.iter().map(|out| out.n).collect::<Vec<_>>(),
                [1, 2, 3, 4]
            );
            drop(outputs);
            log.borrow_mut().finished.fill(false);
            // Not a vector at all, and an in-place collection from a vector of another type.
            let outputs = run(gather((0..4).map(|n| scripted(n, plan))));
            assert_eq!(
                outputs.iter().map(|out| out.n).collect::<Vec<_>>(),
                [0, 1, 2, 3]
            );
            drop(outputs);
            log.borrow_mut().finished.fill(false);
            let ids: Vec<[usize; 4]> = (0..4).map(|n| [n; 4]).collect();
            let outputs = run(gather(ids.into_iter().map(|[n, ..]| scripted(n, plan))));
            assert_eq!(
                outputs.iter().map(|out| out.n).collect::<Vec<_>>(),
                [0, 1, 2, 3]
            );
            drop(outputs);
            // Outputs less aligned than their futures: moved to a vector of their own.
            let mut bytes = Vec::with_capacity(9);
            bytes.extend((0..5).map(|value| Byte {
                plan,
                value,
                _align: 0,
            }));
            assert_eq!(run(gather(bytes)), [0, 1, 2, 3, 4]);
            let none: Vec<Byte> = Vec::with_capacity(4);
            assert!(run(gather(none)).is_empty());
            assert!(run(gather(Vec::<Scripted>::with_capacity(3))).is_empty());
            assert!(run(gather(Vec::<Scripted>::new())).is_empty());
        }
        let record = log.borrow();
        // Twice over: future 0 of the advanced iterator was dropped without an output.
        assert_eq!(record.future_drops, [8, 8, 8, 6, 2, 0, 0, 0]);
        assert_eq!(record.output_drops, [6, 8, 8, 6, 2, 0, 0, 0]);
    }
}
