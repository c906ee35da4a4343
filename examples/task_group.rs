//! Task groups: the structure under the seed's fan-out stories (`gather` of several
//! `branch.communicate(..)` calls), where every call is a child of one group, a failure stops
//! its siblings, and nothing outlives the group.
//!
//! ```text
//! cargo run -p sheepdog-examples --example task_group
//! ```
//!
//! 1. Three simulated analyses run as children of a spawned (parallel) group; the results come
//!    back through their handles.
//! 2. A "provider" child is started with `start`: the caller gets its value once it says it is
//!    ready, and the child keeps serving inside the group.
//! 3. One call fails: the group cancels the slow sibling at once and reports the failure bare.

use std::time::Duration;

use sheepdog::group::{spawn_group, GroupError, Started};
use sheepdog::time;

/// A simulated `branch.communicate(prompt)`: answers after `latency`, or fails.
async fn communicate(prompt: &'static str, latency_ms: u64) -> Result<String, String> {
    time::sleep(Duration::from_millis(latency_ms)).await;
    if prompt.contains("fail") {
        return Err(format!("provider error on {prompt:?}"));
    }
    Ok(format!("analysis of {prompt}"))
}

fn main() {
    sheepdog::block_on(async {
        // 1. Fan out, results in input order through the handles.
        let prompts = [
            "market trends",
            "competitor landscape",
            "technology adoption",
        ];
        let answers = spawn_group(|tg| async move {
            let handles: Vec<_> = prompts
                .into_iter()
                .zip([30, 10, 20])
                .map(|(prompt, latency)| tg.spawn(communicate(prompt, latency)))
                .collect();
            let mut answers = Vec::new();
            for handle in handles {
                answers.push(handle.await.map_err(|e| e.to_string())?);
            }
            Ok(answers)
        })
        .await;
        println!("1. fan-out: {answers:?}");

        // 2. start: wait until the child is ready, get its value, let it keep running.
        let served = spawn_group(|tg| async move {
            let endpoint = tg
                .start(|started: Started<&'static str, String>| async move {
                    time::sleep(Duration::from_millis(5)).await; // connect
                    started.started("provider-a:443");
                    communicate("warm-up request", 10).await.map(drop)
                })
                .await
                .map_err(|e| e.to_string())?;
            println!("2. start: provider ready at {endpoint}");
            Ok("served")
        })
        .await;
        println!("   group result: {served:?}");

        // 3. The first failure cancels the siblings; one failure comes back bare.
        let failed: Result<(), GroupError<String>> = spawn_group(|tg| async move {
            tg.spawn(communicate("slow analysis", 5_000));
            tg.spawn(communicate("please fail", 10));
            Ok(())
        })
        .await;
        match failed {
            Err(GroupError::Failed(error)) => {
                println!("3. first failure: {error} (the slow sibling was cancelled)");
            }
            other => println!("3. unexpected: {other:?}"),
        }
    });
}
