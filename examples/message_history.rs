//! Seed section "Clearing Message History" (under "Memory Management"): a long-running worker
//! whose conversation history would grow with every chunk it processes, unless it clears the
//! history once the context is no longer needed.
//!
//! ```text
//! cargo run -p sheepdog-examples --example message_history
//! ```
//!
//! A producer feeds 40 data chunks through a bounded channel to a worker, both children of one
//! task group. The worker's simulated `Branch` keeps its messages in a plain `Vec`; each chunk
//! adds a prompt and a reply. Two runs: one that never clears (the history grows with the
//! input) and one that calls `messages.clear()` after each chunk (the history never holds more
//! than one exchange). The results themselves are kept in both runs.

use std::time::Duration;

use sheepdog::group::task_group;
use sheepdog::sync::channel;
use sheepdog::time;

/// One message of a conversation.
struct Message {
    role: &'static str,
    content: String,
}

/// A simulated branch: every `communicate` appends the prompt and the reply to its history.
#[derive(Default)]
struct Branch {
    messages: Vec<Message>,
}

impl Branch {
    async fn communicate(&mut self, prompt: String) -> String {
        time::sleep(Duration::from_millis(2)).await;
        let reply = format!(
            "processed {} bytes of context",
            self.history_bytes() + prompt.len()
        );
        self.messages.push(Message {
            role: "user",
            content: prompt,
        });
        self.messages.push(Message {
            role: "assistant",
            content: reply.clone(),
        });
        reply
    }

    fn history_bytes(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum()
    }
}

/// What one worker run saw.
struct Stats {
    results: usize,
    peak_messages: usize,
    peak_bytes: usize,
    last_reply: String,
}

async fn run(chunks: usize, clear: bool) -> Stats {
    let out = task_group(|tg| async move {
        let (tx, mut rx) = channel::<String>(4);
        tg.spawn(async move {
            for i in 0..chunks {
                let chunk = format!("chunk {i}: {}", "lorem ipsum ".repeat(20));
                if tx.send(chunk).await.is_err() {
                    break; // the worker is gone
                }
            }
            Ok::<_, String>(()) // dropping `tx` ends the worker's loop
        });
        let worker = tg.spawn(async move {
            let mut branch = Branch::default();
            let mut results = Vec::new();
            let (mut peak_messages, mut peak_bytes) = (0, 0);
            while let Some(chunk) = rx.recv().await {
                let result = branch.communicate(format!("Process: {chunk}")).await;
                results.push(result);
                peak_messages = peak_messages.max(branch.messages.len());
                peak_bytes = peak_bytes.max(branch.history_bytes());
                if clear {
                    branch.messages.clear(); // free memory, reset context
                }
            }
            Ok(Stats {
                results: results.len(),
                peak_messages,
                peak_bytes,
                last_reply: results.pop().unwrap_or_default(),
            })
        });
        worker.await.map_err(|e| e.to_string())
    })
    .await;
    out.expect("neither child fails")
}

fn main() {
    sheepdog::block_on(async {
        for clear in [false, true] {
            let stats = run(40, clear).await;
            println!(
                "{:<22} {} results, history peaked at {:>2} messages / {:>5} bytes; last reply: {}",
                if clear {
                    "clear after each chunk"
                } else {
                    "never clear"
                },
                stats.results,
                stats.peak_messages,
                stats.peak_bytes,
                stats.last_reply,
            );
        }
    });
}
