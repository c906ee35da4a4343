//! `race` and `race_ok`: the reference checklist rows for race, on every runtime and both
//! spawn paths.

use sheepdog_core::combinators::{race, race_ok, EmptyRace, RaceOkError};
use sheepdog_core::runtime::yield_now;
use sheepdog_tests::{after_yields, conformance, forever, BoxFut, Live};

conformance! {
    /// A panic in one racer propagates out of `race` with its payload; the others are
    /// dropped as it unwinds.
    async fn race_panic_propagates_and_drops_losers(cx) {
        use futures::FutureExt;
        let live = Live::new();
        let racers: Vec<BoxFut<u8>> = vec![
            forever(&live),
            Box::pin(async {
                yield_now().await;
                std::panic::panic_any(7_u32)
            }),
        ];
        let caught = std::panic::AssertUnwindSafe(race(racers)).catch_unwind().await;
        let payload = caught.expect_err("the panic propagates");
        assert_eq!(payload.downcast_ref::<u32>(), Some(&7));
        assert_eq!(live.count(), 0, "the losers were dropped");
    }

    /// Empty input is a typed error, not a hang or a panic.
    async fn empty_input_is_an_error(cx) {
        assert_eq!(race(Vec::<BoxFut<u8>>::new()).await, Err(EmptyRace));
        assert_eq!(
            race_ok(Vec::<BoxFut<Result<u8, ()>>>::new()).await,
            Err(RaceOkError::Empty)
        );
    }

    /// An earlier success beats later errors.
    async fn earlier_success_beats_later_errors(cx) {
        let out = race(vec![
            after_yields(4, Err("slow failure")),
            after_yields(1, Ok("fast")),
            after_yields(2, Err("failure")),
        ])
        .await;
        assert_eq!(out, Ok(Ok("fast")));
    }

    /// The first completion wins even when it is a failure, and it is returned as is.
    async fn first_failure_propagates(cx) {
        let out = race(vec![after_yields(3, Ok(1)), after_yields(1, Err("first"))]).await;
        assert_eq!(out, Ok(Err("first")));
    }

    /// Futures ready at their first poll: the earliest in the input wins.
    async fn ties_go_to_the_earliest_input(cx) {
        assert_eq!(race(vec![after_yields(0, 'a'), after_yields(0, 'b')]).await, Ok('a'));
    }

    /// The losers are dropped as soon as the winner completes.
    async fn losers_are_dropped_at_once(cx) {
        let live = Live::new();
        let out = race(vec![forever(&live), after_yields(2, 7), forever(&live)]).await;
        assert_eq!(out, Ok(7));
        assert_eq!(live.count(), 0);
        let out = race_ok(vec![forever(&live), after_yields(1, Err(())), after_yields(2, Ok(8))]).await;
        assert_eq!(out, Ok(8));
        assert_eq!(live.count(), 0);
    }

    /// race_ok waits past errors for the first success.
    async fn race_ok_skips_errors(cx) {
        let out = race_ok(vec![
            after_yields(1, Err("a")),
            after_yields(3, Ok("winner")),
            after_yields(0, Err("b")),
        ])
        .await;
        assert_eq!(out, Ok("winner"));
    }

    /// All fail: every error, in input order (not completion order).
    async fn race_ok_all_fail_gives_every_error(cx) {
        let out = race_ok(vec![
            after_yields(3, Err::<(), _>("first input")),
            after_yields(1, Err("second input")),
            after_yields(2, Err("third input")),
        ])
        .await;
        let err = out.unwrap_err();
        assert_eq!(err.errors(), ["first input", "second input", "third input"]);
        assert_eq!(err.to_string().matches("input").count(), 3);
    }
}
