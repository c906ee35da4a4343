//! Seed sections "Cancel Scopes" and "Branch as Context Manager": hard and soft timeouts around
//! a call, and an async cleanup (the seed's log dump on leaving `async with Branch(...)`) that
//! runs however the work ends, even when a deadline cuts it short.
//!
//! ```text
//! cargo run -p sheepdog-examples --example deadlines
//! ```
//!
//! 1. `fail_after`: a hard timeout; the slow call is dropped and the caller gets `Elapsed`.
//! 2. `move_on_after`: a soft timeout; the caller gets `None` and uses a fallback. The same
//!    with a kept `CancelScope`, to read `cancelled_caught()` as the seed does.
//! 3. `with_cleanup`: the branch's logs are dumped (an async write) when the work finishes,
//!    and also when an enclosing deadline cancels it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sheepdog::cancel::{fail_after, move_on_after, with_cleanup, CancelScope};
use sheepdog::time;

/// A simulated branch that logs every exchange.
struct Branch {
    name: &'static str,
    log: Mutex<Vec<String>>,
}

impl Branch {
    fn new(name: &'static str) -> Self {
        Branch {
            name,
            log: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, line: String) {
        self.log.lock().expect("not poisoned").push(line);
    }

    /// A simulated `branch.communicate(prompt)` that takes `latency_ms`.
    async fn communicate(&self, prompt: &str, latency_ms: u64) -> String {
        self.record(format!("sent {prompt:?}"));
        time::sleep(Duration::from_millis(latency_ms)).await;
        self.record(format!("received the reply to {prompt:?}"));
        format!("reply to {prompt:?}")
    }

    /// The exit half of `async with Branch(...)`: writes the log out (asynchronously).
    async fn dump_logs(&self) {
        time::sleep(Duration::from_millis(5)).await; // the write
        let lines = std::mem::take(&mut *self.log.lock().expect("not poisoned"));
        println!(
            "   [{}] dumped {} log lines: {lines:?}",
            self.name,
            lines.len()
        );
    }
}

fn main() {
    sheepdog::block_on(async {
        let branch = Branch::new("analysis");

        // 1. Hard timeout.
        let start = Instant::now();
        match fail_after(
            Duration::from_millis(50),
            branch.communicate("Complex analysis...", 300),
        )
        .await
        {
            Ok(result) => println!("1. fail_after: {result}"),
            Err(elapsed) => println!("1. fail_after: {elapsed} after {:.0?}", start.elapsed()),
        }

        // 2. Soft timeout, with and without the scope in hand.
        let result = move_on_after(
            Duration::from_millis(20),
            branch.communicate("Quick check...", 80),
        )
        .await
        .unwrap_or_else(|| "Timed out, using fallback".to_owned());
        println!("2. move_on_after: {result}");

        let scope = CancelScope::new().with_timeout(Duration::from_millis(20));
        let mut result = scope.run(branch.communicate("Quick check...", 80)).await;
        if scope.cancelled_caught() {
            result = Some("Timed out, using fallback".to_owned());
        }
        println!(
            "   CancelScope: cancelled_caught = {}, result = {result:?}",
            scope.cancelled_caught()
        );
        branch.log.lock().expect("not poisoned").clear();

        // 3. Cleanup on exit, whether the work completes or is cancelled.
        println!("3. with_cleanup:");
        let quick = Branch::new("quick");
        let out = with_cleanup(
            quick.communicate("Analyze this data", 10),
            Duration::from_secs(1),
            || quick.dump_logs(),
        )
        .await;
        println!("   completed: {out:?}");

        let slow = Branch::new("slow");
        let out = move_on_after(
            Duration::from_millis(30),
            with_cleanup(
                slow.communicate("Analyze this huge data set", 500),
                Duration::from_secs(1),
                || slow.dump_logs(),
            ),
        )
        .await;
        println!("   cut short by a 30 ms deadline: {out:?} (the logs were still dumped)");
    });
}
