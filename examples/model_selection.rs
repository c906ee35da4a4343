//! Seed section "Per-Task Model Selection": a cheap, fast model classifies each task, and only
//! the tasks it calls complex go to the slow, expensive model.
//!
//! ```text
//! cargo run -p sheepdog-examples --example model_selection
//! ```
//!
//! Two simulated branches, `fast` (a small model: 15 ms, 1 unit a call) and `powerful` (a large
//! model: 90 ms, 20 units a call). Six tasks are routed concurrently with `gather`; each one is
//! classified by `fast`, then analysed by whichever branch the class calls for. The simulated
//! classifier calls a task complex when its prompt is long. The summary compares the cost with
//! sending every task straight to the large model.

use std::cell::Cell;
use std::time::{Duration, Instant};

use sheepdog::combinators::gather;
use sheepdog::time;

/// A simulated chat model.
struct Model {
    name: &'static str,
    latency: Duration,
    cost_per_call: u32,
}

/// A simulated `Branch(chat_model=..., system=...)`: counts its calls.
struct Branch {
    model: Model,
    system: &'static str,
    calls: Cell<u32>,
}

impl Branch {
    fn new(model: Model, system: &'static str) -> Self {
        Branch {
            model,
            system,
            calls: Cell::new(0),
        }
    }

    async fn communicate(&self, prompt: &str) -> String {
        self.calls.set(self.calls.get() + 1);
        time::sleep(self.model.latency).await;
        if let Some(task) = prompt.strip_prefix("Classify: complex or simple? ") {
            let class = if task.split_whitespace().count() > 6 {
                "complex"
            } else {
                "simple"
            };
            return class.to_owned();
        }
        format!("[{} / {}] {prompt}", self.model.name, self.system)
    }

    fn cost(&self) -> u32 {
        self.calls.get() * self.model.cost_per_call
    }
}

fn main() {
    let fast = Branch::new(
        Model {
            name: "small-model",
            latency: Duration::from_millis(15),
            cost_per_call: 1,
        },
        "Classify briefly.",
    );
    let powerful = Branch::new(
        Model {
            name: "large-model",
            latency: Duration::from_millis(90),
            cost_per_call: 20,
        },
        "Provide detailed analysis.",
    );
    let tasks = [
        "Is this email spam?",
        "Translate 'hello' to French",
        "Compare three vendor contracts and flag every clause that shifts liability to us",
        "Tag this ticket",
        "Explain why our churn rose in Q3 given the pricing change and the new competitor",
        "Summarize this tweet",
    ];

    let start = Instant::now();
    let routed = sheepdog::block_on(gather(tasks.iter().map(|task| {
        let (fast, powerful) = (&fast, &powerful);
        async move {
            let category = fast
                .communicate(&format!("Classify: complex or simple? {task}"))
                .await;
            let analysis = if category.contains("complex") {
                powerful
                    .communicate(&format!("Detailed analysis of: {task}"))
                    .await
            } else {
                fast.communicate(&format!("Brief analysis of: {task}"))
                    .await
            };
            (category, analysis)
        }
    })));
    let elapsed = start.elapsed();

    for (task, (category, analysis)) in tasks.iter().zip(&routed) {
        let head: String = analysis.chars().take(64).collect();
        println!("{category:>7}: {task}\n         -> {head}...");
    }
    let spent = fast.cost() + powerful.cost();
    let all_large = tasks.len() as u32 * powerful.model.cost_per_call;
    println!(
        "\n{} tasks in {elapsed:.0?}: {} calls to {}, {} to {}; cost {spent} units \
         (every task straight to {}: {all_large})",
        tasks.len(),
        fast.calls.get(),
        fast.model.name,
        powerful.calls.get(),
        powerful.model.name,
        powerful.model.name,
    );
}
