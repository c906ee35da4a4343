//! The sheepdog demo: a client that talks to a simulated LLM provider the way a real program
//! would, and runs every story of the seed page end to end on the default (smol) runtime.
//!
//! ```text
//! cargo run -p sheepdog-examples --example demo
//! cargo run -p sheepdog-examples --example demo -- --docs 1000 --limit-requests 80 --seed 7
//! cargo run -p sheepdog-examples --example demo -- --no-client-limit   # see the provider push back
//! cargo run -p sheepdog-examples --example demo -- --help
//! ```
//!
//! # The provider
//!
//! Three simulated endpoints, `alpha/mini`, `alpha/large` and `beta/mini`. Each call sleeps for
//! a random latency, uses a random number of completion tokens, and sometimes fails with a
//! `503 overloaded` or stalls far past any sensible deadline. A prompt longer than the model's
//! context is refused with a `400`. Every endpoint **enforces its own rate limit**: at most
//! `--limit-requests` requests and `--limit-tokens` tokens in any window of `--window-ms`
//! (a sliding window, the strictest kind). A request over the limit is refused with a
//! `429` and a retry-after hint. Tokens are charged on arrival as `prompt + max_tokens` and the
//! unused part is refunded when the answer is complete.
//!
//! The provider counts, on its side, every request that arrives: the busiest window it saw,
//! in requests and in tokens, is the **proof** printed at the end. The demo exits with a
//! failure status if any window held more than the limit.
//!
//! # The client
//!
//! One `RateLimiter` per endpoint (lionagi's `iModel`) with the provider's published limits,
//! counted over the window plus `--headroom-ms`: the headroom covers the moment between the
//! client's admission and the request's arrival (a network's transit time, here the
//! scheduler's). Every call goes `retry` → `RateLimiter::submit_with` → `fail_after` →
//! provider; the real token usage is reported back through `Usage`. `retry` retries 429s
//! (waiting as long as the provider asks), 503s and timeouts, never 400s.
//!
//! The stories, in order:
//!
//! 1. `gather`: three briefing questions at once, answers in input order.
//! 2. `race`: the same prompt to two providers; the fastest answer wins, the other call is
//!    dropped mid-flight.
//! 3. `bounded_map` over `--docs` documents, with per-task model routing: the mini model
//!    classifies each document, and only the complex ones go to the large model.
//! 4. `CompletionStream`: the large model's summaries are fact-checked, and the results are
//!    handled in the order they finish.
//! 5. `flow`: a small graph writes the final digest, at most two operations at a time.
//!
//! `--headroom-ms 0` shows why the headroom is there: admissions a few milliseconds late on
//! the provider's clock are enough to put a 51st request in some window, and the run fails.
//!
//! A progress bar shows each stage while it runs (on a terminal; it hides itself otherwise),
//! then a summary table reports what happened.

use std::collections::VecDeque;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sheepdog::cancel::fail_after;
use sheepdog::combinators::{bounded_map, gather, race, retry, CompletionStream, RetryError};
use sheepdog::combinators::{RetryPolicy, ZeroLimit};
use sheepdog::flow::{EventKind, FlowBuilder, RunOptions};
use sheepdog::rate::{RateLimitError, RateLimiter, Usage};
use sheepdog::time;

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// The command-line options.
#[derive(Debug, Clone)]
struct Options {
    docs: usize,
    limit_requests: u64,
    limit_tokens: u64,
    window: Duration,
    headroom: Duration,
    max_in_flight: usize,
    concurrency: usize,
    deadline: Duration,
    failure_rate: f64,
    stall_rate: f64,
    seed: u64,
    client_limit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            docs: 300,
            limit_requests: 50,
            limit_tokens: 40_000,
            window: Duration::from_millis(200),
            headroom: Duration::from_millis(25),
            max_in_flight: 8,
            concurrency: 24,
            deadline: Duration::from_millis(100),
            failure_rate: 0.05,
            stall_rate: 0.02,
            seed: 1,
            client_limit: true,
        }
    }
}

const USAGE: &str = "\
sheepdog demo: a rate-limited client for a simulated LLM provider, running gather, race,
bounded_map with per-task model routing, CompletionStream and a flow, then proving that the
provider's rate limits were never exceeded.

USAGE:
    demo [OPTIONS]

OPTIONS:
    --docs N              documents to summarize (default 300)
    --limit-requests N    requests the provider allows per window, per endpoint (default 50)
    --limit-tokens N      tokens the provider allows per window, per endpoint (default 40000)
    --window-ms MS        the provider's rate-limit window (default 200)
    --headroom-ms MS      added to the window by the client's limiter (default 25)
    --max-in-flight N     calls running at once per endpoint, the limiter's concurrency
                          limit (default 8)
    --concurrency N       documents in flight in bounded_map (default 24)
    --deadline-ms MS      fail_after deadline of each attempt (default 100)
    --failure-rate PCT    percent of calls failing with 503 (default 5)
    --stall-rate PCT      percent of calls stalling past the deadline (default 2)
    --seed S              seed of the simulation (default 1)
    --no-client-limit     no request or token budget in the client: watch the 429s
    -h, --help            print this help

Exits with status 1 if the provider saw any window over its limit, 2 on bad arguments.
";

fn parse(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options::default();
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|err| format!("{name}: {err}"))
        };
        let positive = |name: &str, value: u64| {
            if value == 0 {
                Err(format!("{name} must be at least 1"))
            } else {
                Ok(value)
            }
        };
        let size = |name: &str, value: u64| {
            usize::try_from(positive(name, value)?).map_err(|_| format!("{name}: too large"))
        };
        let percent = |name: &str, value: u64| {
            if value > 100 {
                Err(format!("{name} is a percentage, 0 to 100"))
            } else {
                Ok(value as f64 / 100.0)
            }
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--docs" => options.docs = size(&arg, number(&arg)?)?,
            "--limit-requests" => options.limit_requests = positive(&arg, number(&arg)?)?,
            "--limit-tokens" => options.limit_tokens = positive(&arg, number(&arg)?)?,
            "--window-ms" => {
                options.window = Duration::from_millis(positive(&arg, number(&arg)?)?);
            }
            "--headroom-ms" => options.headroom = Duration::from_millis(number(&arg)?),
            "--max-in-flight" => options.max_in_flight = size(&arg, number(&arg)?)?,
            "--concurrency" => options.concurrency = size(&arg, number(&arg)?)?,
            "--deadline-ms" => {
                options.deadline = Duration::from_millis(positive(&arg, number(&arg)?)?);
            }
            "--failure-rate" => options.failure_rate = percent(&arg, number(&arg)?)?,
            "--stall-rate" => options.stall_rate = percent(&arg, number(&arg)?)?,
            "--seed" => options.seed = number(&arg)?,
            "--no-client-limit" => options.client_limit = false,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(options))
}

// ---------------------------------------------------------------------------------------------
// The simulated provider
// ---------------------------------------------------------------------------------------------

/// A model's context window, in tokens; longer prompts are refused with a 400.
const CONTEXT: u64 = 8_192;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// "complex or simple?": the simulated model answers from the document's nature.
    Classify { complex: bool },
    /// Anything else: the answer is text.
    Generate,
}

/// One chat completion request.
#[derive(Debug, Clone)]
struct Request {
    label: String,
    kind: Kind,
    prompt_tokens: u64,
    max_tokens: u64,
}

impl Request {
    fn new(label: impl Into<String>, prompt_tokens: u64, max_tokens: u64) -> Self {
        Request {
            label: label.into(),
            kind: Kind::Generate,
            prompt_tokens,
            max_tokens,
        }
    }

    /// What the provider charges on arrival, and so what the client reserves.
    fn cost(&self) -> u64 {
        self.prompt_tokens + self.max_tokens
    }
}

/// A provider's answer.
#[derive(Debug, Clone)]
struct Reply {
    endpoint: &'static str,
    text: String,
    /// Tokens the call finally used (prompt and completion).
    tokens: u64,
    latency: Duration,
}

/// A provider's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ProviderError {
    /// 429: over the rate limit; try again after this long.
    RateLimited { retry_after: Duration },
    /// 503: the provider is overloaded.
    Overloaded,
    /// 400: the request can never succeed.
    BadRequest(String),
}

/// How many calls are running now, and the most seen at once.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an endpoint counted; everything in the summary's provider columns comes from here.
#[derive(Debug, Default, Clone)]
struct ProviderCounts {
    arrived: u64,
    answered: u64,
    /// Arrivals that found their window already full; each got a 429.
    rate_limited: u64,
    overloaded: u64,
    bad_request: u64,
    /// Calls whose future the client dropped before the answer (timeouts, race losers).
    dropped: u64,
    tokens_charged: u64,
    /// The most requests, and tokens, that arrived in any one window.
    busiest_requests: u64,
    busiest_tokens: u64,
    peak_in_flight: usize,
}

/// A request that arrived within the last window.
#[derive(Debug)]
struct Arrival {
    at: Instant,
    id: u64,
    /// What it is charged: its cost on arrival, what it used once answered. A refused request
    /// keeps the cost it asked for, so the measurement sees the load the client offered.
    tokens: u64,
    /// Whether it was let through; only those count against the limit.
    admitted: bool,
}

#[derive(Debug)]
struct ProviderState {
    rng: fastrand::Rng,
    window_log: VecDeque<Arrival>,
    next_id: u64,
    in_flight: usize,
    counts: ProviderCounts,
}

/// One simulated model endpoint with its own rate limit.
#[derive(Debug)]
struct Provider {
    name: &'static str,
    /// Latency of a normal answer, in milliseconds.
    latency_ms: (u64, u64),
    limit_requests: u64,
    limit_tokens: u64,
    window: Duration,
    failure_rate: f64,
    stall_rate: f64,
    all_calls: Arc<Gauge>,
    state: Mutex<ProviderState>,
}

/// What the provider decided to do with an admitted request.
enum Plan {
    Answer { latency: Duration, completion: u64 },
    Overloaded { latency: Duration },
    Stall,
}

/// Marks a call as running; if the call's future is dropped before it finishes, the provider
/// counts it as dropped by the client.
struct Running<'a> {
    provider: &'a Provider,
    finished: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.provider.all_calls.leave();
        let mut state = self.provider.lock();
        state.in_flight -= 1;
        if !self.finished {
            state.counts.dropped += 1;
        }
    }
}

impl Provider {
    fn lock(&self) -> MutexGuard<'_, ProviderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one request, as the provider's server would.
    async fn complete(&self, request: &Request) -> Result<Reply, ProviderError> {
        let arrived = time::now();
        let (id, plan) = {
            let mut state = self.lock();
            let state = &mut *state;
            state.counts.arrived += 1;
            // Forget what has left the window, then look at this request as one more in it.
            while let Some(oldest) = state.window_log.front() {
                if oldest.at + self.window <= arrived {
                    state.window_log.pop_front();
                } else {
                    break;
                }
            }
            // The measurement: everything that arrived in the window, this request included.
            let seen = state.window_log.len() as u64 + 1;
            let seen_tokens =
                state.window_log.iter().map(|a| a.tokens).sum::<u64>() + request.cost();
            state.counts.busiest_requests = state.counts.busiest_requests.max(seen);
            state.counts.busiest_tokens = state.counts.busiest_tokens.max(seen_tokens);
            // The enforcement: only what was let through counts against the limit.
            let admitted = state.window_log.iter().filter(|a| a.admitted);
            let requests = admitted.clone().count() as u64 + 1;
            let tokens = admitted.map(|a| a.tokens).sum::<u64>() + request.cost();
            let id = state.next_id;
            state.next_id += 1;
            let over = requests > self.limit_requests || tokens > self.limit_tokens;
            state.window_log.push_back(Arrival {
                at: arrived,
                id,
                tokens: request.cost(),
                admitted: !over,
            });
            if over {
                state.counts.rate_limited += 1;
                let retry_after = self.room_at(&state.window_log, request.cost()) - arrived;
                return Err(ProviderError::RateLimited { retry_after });
            }
            state.counts.tokens_charged += request.cost();
            state.in_flight += 1;
            state.counts.peak_in_flight = state.counts.peak_in_flight.max(state.in_flight);
            let rng = &mut state.rng;
            let draw = rng.f64();
            let plan = if draw < self.stall_rate {
                Plan::Stall
            } else if draw < self.stall_rate + self.failure_rate {
                Plan::Overloaded {
                    latency: Duration::from_millis(rng.u64(1..=self.latency_ms.0)),
                }
            } else {
                Plan::Answer {
                    latency: Duration::from_millis(rng.u64(self.latency_ms.0..=self.latency_ms.1)),
                    completion: rng.u64(request.max_tokens / 4..=request.max_tokens),
                }
            };
            (id, plan)
        };
        self.all_calls.enter();
        let mut running = Running {
            provider: self,
            finished: false,
        };

        let outcome = if request.prompt_tokens > CONTEXT {
            time::sleep(Duration::from_millis(1)).await;
            Err(ProviderError::BadRequest(format!(
                "prompt of {} tokens, context {CONTEXT}",
                request.prompt_tokens
            )))
        } else {
            match plan {
                Plan::Stall => {
                    // Far past any deadline the client sets: only a timeout ends this call.
                    time::sleep(Duration::from_secs(30)).await;
                    Err(ProviderError::Overloaded)
                }
                Plan::Overloaded { latency } => {
                    time::sleep(latency).await;
                    Err(ProviderError::Overloaded)
                }
                Plan::Answer {
                    latency,
                    completion,
                } => {
                    time::sleep(latency).await;
                    let text = match request.kind {
                        Kind::Classify { complex: true } => "complex".to_owned(),
                        Kind::Classify { complex: false } => "simple".to_owned(),
                        Kind::Generate => format!("{} ({completion} tokens)", request.label),
                    };
                    Ok(Reply {
                        endpoint: self.name,
                        text,
                        tokens: request.prompt_tokens + completion,
                        latency,
                    })
                }
            }
        };

        // Settle the charge: an answer costs what it used, a failure costs nothing.
        let used = outcome.as_ref().map_or(0, |reply| reply.tokens);
        let mut state = self.lock();
        if let Some(entry) = state.window_log.iter_mut().find(|a| a.id == id) {
            entry.tokens = used;
        }
        state.counts.tokens_charged -= request.cost() - used;
        match &outcome {
            Ok(_) => state.counts.answered += 1,
            Err(ProviderError::Overloaded) => state.counts.overloaded += 1,
            Err(ProviderError::BadRequest(_)) => state.counts.bad_request += 1,
            Err(ProviderError::RateLimited { .. }) => {}
        }
        drop(state);
        running.finished = true;
        outcome
    }

    /// The earliest instant a request of `cost` tokens fits in the window.
    fn room_at(&self, log: &VecDeque<Arrival>, cost: u64) -> Instant {
        let admitted = || log.iter().filter(|a| a.admitted);
        let mut requests = admitted().count() as u64 + 1;
        let mut tokens = admitted().map(|a| a.tokens).sum::<u64>() + cost;
        let mut at = time::now();
        for admitted in admitted() {
            if requests <= self.limit_requests && tokens <= self.limit_tokens {
                break;
            }
            requests -= 1;
            tokens -= admitted.tokens;
            at = admitted.at + self.window;
        }
        at
    }

    fn counts(&self) -> ProviderCounts {
        self.lock().counts.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// Why one attempt failed.
#[derive(Debug, Clone)]
enum CallError {
    Provider(ProviderError),
    /// `fail_after` dropped the call at its deadline.
    TimedOut,
    /// The client's own limiter refused the request.
    Limiter(RateLimitError),
}

impl CallError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::TimedOut
                | CallError::Provider(ProviderError::Overloaded)
                | CallError::Provider(ProviderError::RateLimited { .. })
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Provider(ProviderError::RateLimited { retry_after }) => Some(*retry_after),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Provider(ProviderError::RateLimited { retry_after }) => {
                write!(f, "429 rate limited, retry after {retry_after:?}")
            }
            CallError::Provider(ProviderError::Overloaded) => f.write_str("503 overloaded"),
            CallError::Provider(ProviderError::BadRequest(why)) => write!(f, "400 {why}"),
            CallError::TimedOut => f.write_str("timed out"),
            CallError::Limiter(error) => write!(f, "limiter: {error}"),
        }
    }
}

/// A call that failed for good.
type Failed = RetryError<CallError>;

/// The endpoints, by index into `Client::endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    AlphaMini = 0,
    AlphaLarge = 1,
    BetaMini = 2,
}

/// A provider endpoint and the client's limiter for it (lionagi's `iModel`).
#[derive(Debug)]
struct Endpoint {
    provider: Provider,
    limiter: RateLimiter,
}

/// What the client counted.
#[derive(Debug, Default)]
struct ClientCounts {
    attempts: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    gave_up: AtomicU64,
}

#[derive(Debug)]
struct Client {
    endpoints: Vec<Endpoint>,
    policy: RetryPolicy,
    deadline: Duration,
    counts: ClientCounts,
}

impl Client {
    fn new(options: &Options, all_calls: &Arc<Gauge>) -> Self {
        let specs = [
            ("alpha/mini", (5, 30)),
            ("alpha/large", (15, 50)),
            ("beta/mini", (5, 40)),
        ];
        let endpoints = specs
            .iter()
            .zip(0_u64..)
            .map(|(&(name, latency_ms), index)| {
                let provider = Provider {
                    name,
                    latency_ms,
                    limit_requests: options.limit_requests,
                    limit_tokens: options.limit_tokens,
                    window: options.window,
                    failure_rate: options.failure_rate,
                    stall_rate: options.stall_rate,
                    all_calls: Arc::clone(all_calls),
                    state: Mutex::new(ProviderState {
                        rng: fastrand::Rng::with_seed(options.seed.wrapping_mul(31) + index),
                        window_log: VecDeque::new(),
                        next_id: 0,
                        in_flight: 0,
                        counts: ProviderCounts::default(),
                    }),
                };
                // The seed's iModel knobs, set to the provider's published limits.
                let (requests, tokens) = if options.client_limit {
                    (Some(options.limit_requests), Some(options.limit_tokens))
                } else {
                    (None, None)
                };
                let limiter = RateLimiter::builder()
                    .limit_requests(requests)
                    .limit_tokens(tokens)
                    .capacity_refresh_time(options.window + options.headroom)
                    .queue_capacity(100)
                    .concurrency_limit(options.max_in_flight)
                    .build()
                    .expect("the options were checked");
                Endpoint { provider, limiter }
            })
            .collect();
        let policy = RetryPolicy::builder()
            .attempts(8)
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(200))
            .jitter(0.2)
            .build()
            .expect("a valid policy");
        Client {
            endpoints,
            policy,
            deadline: options.deadline,
            counts: ClientCounts::default(),
        }
    }

    fn endpoint(&self, model: Model) -> &Endpoint {
        &self.endpoints[model as usize]
    }

    /// One call, retried: the seed's `retry(lambda: branch.communicate(...), ...)`.
    async fn ask(&self, model: Model, request: Request) -> Result<Reply, Failed> {
        let request = &request;
        let mut first = true;
        let result = retry(
            || {
                if !std::mem::take(&mut first) {
                    self.counts.retries.fetch_add(1, Ordering::Relaxed);
                }
                self.attempt(model, request)
            },
            self.policy.clone(),
        )
        .retry_on(CallError::is_retryable)
        .retry_after(CallError::retry_after)
        .await;
        if result.is_err() {
            self.counts.gave_up.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// One attempt: wait for the limiter's admission, then call the provider under a
    /// deadline, and report the tokens the call really used.
    async fn attempt(&self, model: Model, request: &Request) -> Result<Reply, CallError> {
        let endpoint = self.endpoint(model);
        let deadline = self.deadline;
        let outcome = endpoint
            .limiter
            .submit_with(request.cost(), |usage: Usage| async move {
                self.counts.attempts.fetch_add(1, Ordering::Relaxed);
                let outcome = fail_after(deadline, endpoint.provider.complete(request)).await;
                // The provider charged what the answer used, and nothing for a refusal.
                match &outcome {
                    Ok(Ok(reply)) => usage.report(reply.tokens),
                    Ok(Err(_)) => usage.report(0),
                    // Timed out: the provider may have charged it all; keep the reservation.
                    Err(_) => {}
                }
                outcome
            })
            .await;
        match outcome {
            Err(error) => Err(CallError::Limiter(error)),
            Ok(Err(_elapsed)) => {
                self.counts.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(CallError::TimedOut)
            }
            Ok(Ok(Err(error))) => Err(CallError::Provider(error)),
            Ok(Ok(Ok(reply))) => Ok(reply),
        }
    }

    /// 429s received so far, over every endpoint.
    fn rate_limited(&self) -> u64 {
        self.endpoints
            .iter()
            .map(|e| e.provider.counts().rate_limited)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

/// A document to summarize.
#[derive(Debug, Clone)]
struct Document {
    id: usize,
    tokens: u64,
    complex: bool,
}

fn documents(count: usize, seed: u64) -> Vec<Document> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|id| {
            // About one in a hundred is too long for any model's context.
            let tokens = if rng.u8(0..100) == 0 {
                rng.u64(9_000..12_000)
            } else {
                rng.u64(200..2_500)
            };
            Document {
                id,
                tokens,
                complex: rng.f64() < 0.2 + 0.3 * (tokens.min(2_500) as f64 / 2_500.0),
            }
        })
        .collect()
}

/// How one document went.
#[derive(Debug)]
struct Summarized {
    doc: usize,
    route: Option<Model>,
    result: Result<Reply, Failed>,
}

/// Per-task model selection: the mini model classifies, the large one takes the complex work.
async fn summarize(client: &Client, doc: &Document) -> Summarized {
    let preview = doc.tokens.min(400);
    let mut question = Request::new(format!("classify doc-{}", doc.id), preview, 4);
    question.kind = Kind::Classify {
        complex: doc.complex,
    };
    let class = match client.ask(Model::AlphaMini, question).await {
        Ok(reply) => reply.text,
        Err(failed) => {
            return Summarized {
                doc: doc.id,
                route: None,
                result: Err(failed),
            }
        }
    };
    let (model, max_tokens) = if class.contains("complex") {
        (Model::AlphaLarge, 600)
    } else {
        (Model::AlphaMini, 150)
    };
    let request = Request::new(format!("summary of doc-{}", doc.id), doc.tokens, max_tokens);
    Summarized {
        doc: doc.id,
        route: Some(model),
        result: client.ask(model, request).await,
    }
}

fn stage_bar(len: usize, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>13} [{bar:24}] {pos:>4}/{len:<4} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(80));
    bar
}

fn live_message(client: &Client, all_calls: &Gauge) -> String {
    format!(
        "in flight {:>2} · retries {} · timeouts {} · 429s {}",
        all_calls.now.load(Ordering::Relaxed),
        client.counts.retries.load(Ordering::Relaxed),
        client.counts.timeouts.load(Ordering::Relaxed),
        client.rate_limited(),
    )
}

/// Why a call failed, in a few words.
fn failed_reason(failed: &Failed) -> String {
    format!(
        "{} ({}, {} attempt(s))",
        failed.last(),
        failed.reason(),
        failed.attempts()
    )
}

fn short(text: &str) -> &str {
    text.split(" (").next().unwrap_or(text)
}

/// Everything the stages produced, for the summary.
#[derive(Debug)]
struct Outcomes {
    summarized: Vec<Summarized>,
    checked: usize,
    checks_failed: usize,
    digest_ok: bool,
}

async fn run(options: &Options, client: Arc<Client>, all_calls: &Gauge) -> Outcomes {
    // 1. gather: three questions at once, answers in input order.
    let bar = stage_bar(3, "1 gather");
    let started = Instant::now();
    let topics = [
        "market trends",
        "competitor landscape",
        "technology adoption",
    ];
    let answers = gather(topics.iter().map(|topic| {
        let (client, bar) = (&client, &bar);
        async move {
            let answer = client
                .ask(
                    Model::AlphaLarge,
                    Request::new(format!("analysis of {topic}"), 300, 400),
                )
                .await;
            bar.inc(1);
            answer
        }
    }))
    .await;
    bar.finish_and_clear();
    println!(
        "1 gather         3 analyses in {} ms (their latencies add up to {} ms), in input order:",
        started.elapsed().as_millis(),
        answers
            .iter()
            .flatten()
            .map(|reply| reply.latency.as_millis())
            .sum::<u128>(),
    );
    for (topic, answer) in topics.iter().zip(&answers) {
        match answer {
            Ok(reply) => println!("                   {topic:<22} -> {}", short(&reply.text)),
            Err(failed) => println!("                   {topic:<22} -> failed: {failed}"),
        }
    }

    // 2. race: the same prompt to two providers; the first answer wins, the other is dropped.
    let rounds = 5;
    let bar = stage_bar(rounds, "2 race");
    let mut wins = Vec::new();
    for round in 0..rounds {
        let prompt = || Request::new(format!("summary of paper {round}"), 800, 200);
        let fastest = race([
            client.ask(Model::AlphaMini, prompt()),
            client.ask(Model::BetaMini, prompt()),
        ])
        .await
        .expect("two contestants");
        wins.push(fastest.map_or("(both failed)", |reply| reply.endpoint));
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "2 race           {rounds} rounds, winners: {}",
        wins.join(", ")
    );

    // 3. bounded_map over the documents, through the limiter, with per-task model routing.
    let documents = documents(options.docs, options.seed);
    let bar = stage_bar(documents.len(), "3 bounded_map");
    let started = Instant::now();
    let summarized = bounded_map(&documents, options.concurrency, |doc| {
        let (client, bar) = (&client, &bar);
        async move {
            let summary = summarize(client, doc).await;
            bar.inc(1);
            bar.set_message(live_message(client, all_calls));
            summary
        }
    })
    .expect("--concurrency is at least 1")
    .await;
    bar.finish_and_clear();
    let ok = summarized.iter().filter(|s| s.result.is_ok()).count();
    let routed_large = summarized
        .iter()
        .filter(|s| s.route == Some(Model::AlphaLarge))
        .count();
    println!(
        "3 bounded_map    {} documents in {:.2} s, {} at a time: {ok} summarized, {} failed",
        documents.len(),
        started.elapsed().as_secs_f64(),
        options.concurrency,
        summarized.len() - ok,
    );
    println!(
        "                   routed by the mini model: {routed_large} to alpha/large, {} to alpha/mini",
        summarized
            .iter()
            .filter(|s| s.route == Some(Model::AlphaMini))
            .count(),
    );
    for failed in summarized.iter().filter(|s| s.result.is_err()).take(3) {
        if let Err(error) = &failed.result {
            println!(
                "                   doc-{}: {}",
                failed.doc,
                failed_reason(error)
            );
        }
    }

    // 4. CompletionStream: fact-check the large model's summaries as they finish.
    let to_check: Vec<&Summarized> = summarized
        .iter()
        .filter(|s| s.route == Some(Model::AlphaLarge) && s.result.is_ok())
        .collect();
    let bar = stage_bar(to_check.len(), "4 stream");
    let checks = to_check.iter().map(|s| {
        let request = Request::new(format!("fact-check doc-{}", s.doc), 700, 100);
        client.ask(Model::BetaMini, request)
    });
    let mut stream = match CompletionStream::new(checks).limit(6) {
        Ok(stream) => stream,
        Err(ZeroLimit) => unreachable!("6 is not zero"),
    };
    let mut arrival = Vec::with_capacity(to_check.len());
    let mut checks_failed = 0;
    while let Some((index, result)) = stream.next().await {
        // Each result is handled the moment it is ready, whatever its position.
        arrival.push(index);
        checks_failed += usize::from(result.is_err());
        bar.inc(1);
        bar.set_message(live_message(&client, all_calls));
    }
    drop(stream);
    bar.finish_and_clear();
    let out_of_order = arrival.iter().enumerate().filter(|&(i, &j)| i != j).count();
    let first: Vec<String> = arrival
        .iter()
        .take(6)
        .map(|&i| format!("doc-{}", to_check[i].doc))
        .collect();
    println!(
        "4 stream         {} fact-checks, 6 at a time, each handled as soon as it finished",
        arrival.len(),
    );
    println!(
        "                   {out_of_order} out of input order; first: {}, ...",
        first.join(", "),
    );

    // 5. flow: the final digest, at most two operations at a time.
    let digest_ok = digest(&client, ok).await;
    Outcomes {
        summarized,
        checked: arrival.len(),
        checks_failed,
        digest_ok,
    }
}

/// The seed's `Session.flow(graph, max_concurrent=2)`: an outline, three sections written from
/// it, and a digest that waits for all three.
async fn digest(client: &Arc<Client>, summaries: usize) -> bool {
    let mut graph = FlowBuilder::<Failed>::new();
    let c = Arc::clone(client);
    let outline = graph.node("outline", &[], move |_| {
        let c = Arc::clone(&c);
        async move {
            let prompt = Request::new(format!("outline of {summaries} summaries"), 4_000, 500);
            c.ask(Model::AlphaLarge, prompt).await.map(|r| r.text)
        }
    });
    let sections = ["themes", "risks", "open questions"];
    for section in sections {
        let c = Arc::clone(client);
        graph.node(section, &["outline"], move |inputs| {
            let c = Arc::clone(&c);
            let outline = inputs.get(outline).cloned().unwrap_or_default();
            async move {
                let prompt = Request::new(format!("{section} from {}", short(&outline)), 900, 300);
                c.ask(Model::AlphaMini, prompt).await.map(|r| r.text)
            }
        });
    }
    let c = Arc::clone(client);
    let digest = graph.node("digest", &sections, move |_| {
        let c = Arc::clone(&c);
        async move {
            let prompt = Request::new("digest of the three sections", 1_500, 600);
            c.ask(Model::AlphaLarge, prompt).await.map(|r| r.text)
        }
    });
    let flow = graph.build().expect("the graph is a DAG");

    let bar = stage_bar(flow.len(), "5 flow");
    let (events, mut progress) = mpsc::unbounded();
    let started = Instant::now();
    let run = flow.run(RunOptions::new().max_concurrent(2).progress(events));
    let watch = async {
        while let Some(event) = progress.next().await {
            if let EventKind::Settled(_) = event.kind {
                bar.inc(1);
                bar.set_message(format!("{} settled", event.name));
            }
        }
    };
    let (report, ()) = futures::future::join(run, watch).await;
    bar.finish_and_clear();
    let order = report.settle_order_names();
    println!(
        "5 flow           {} nodes, 2 at a time, {} ms: {}",
        flow.len(),
        started.elapsed().as_millis(),
        order.join(", "),
    );
    println!(
        "                   -> {}",
        report
            .output(digest)
            .map_or("(no digest)", |text| short(text)),
    );
    report.all_completed()
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let options = match parse(std::env::args()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let all_calls = Arc::new(Gauge::default());
    let client = Arc::new(Client::new(&options, &all_calls));
    println!(
        "sheepdog demo: {} documents; the provider allows {} requests and {} tokens per {} ms",
        options.docs,
        options.limit_requests,
        options.limit_tokens,
        options.window.as_millis(),
    );
    println!(
        "per endpoint; client limiter {}",
        if options.client_limit {
            format!(
                "on (window + {} ms headroom, {} in flight per endpoint)",
                options.headroom.as_millis(),
                options.max_in_flight
            )
        } else {
            format!(
                "OFF (--no-client-limit; {} in flight per endpoint)",
                options.max_in_flight
            )
        },
    );
    println!();

    let started = Instant::now();
    let outcomes = sheepdog::block_on(run(&options, Arc::clone(&client), &all_calls));
    let elapsed = started.elapsed();

    summary(&options, &client, &all_calls, &outcomes, elapsed)
}

fn summary(
    options: &Options,
    client: &Client,
    all_calls: &Gauge,
    outcomes: &Outcomes,
    elapsed: Duration,
) -> ExitCode {
    let counts: Vec<(&str, ProviderCounts)> = client
        .endpoints
        .iter()
        .map(|e| (e.provider.name, e.provider.counts()))
        .collect();
    let total = |f: fn(&ProviderCounts) -> u64| counts.iter().map(|(_, c)| f(c)).sum::<u64>();

    println!();
    println!("summary (counted by the provider, per endpoint)");
    println!(
        "  {:<28}{:>12}{:>12}{:>12}{:>12}",
        "", counts[0].0, counts[1].0, counts[2].0, "total"
    );
    let row = |label: &str, f: fn(&ProviderCounts) -> u64| {
        print!("  {label:<28}");
        for (_, c) in &counts {
            print!("{:>12}", f(c));
        }
        println!("{:>12}", total(f));
    };
    row("calls", |c| c.arrived);
    row("answered", |c| c.answered);
    row("503 overloaded", |c| c.overloaded);
    row("400 bad request", |c| c.bad_request);
    row("429 rate limited", |c| c.rate_limited);
    row("dropped mid-call", |c| c.dropped);
    row("tokens charged", |c| c.tokens_charged);
    print!("  {:<28}", "peak concurrency");
    for (_, c) in &counts {
        print!(
            "{:>12}",
            format!("{} / {}", c.peak_in_flight, options.max_in_flight)
        );
    }
    println!("{:>12}", all_calls.peak.load(Ordering::SeqCst));

    let docs_ok = outcomes
        .summarized
        .iter()
        .filter(|s| s.result.is_ok())
        .count();
    let attempts = client.counts.attempts.load(Ordering::SeqCst);
    println!();
    println!("client");
    println!(
        "  documents                 {} summarized, {} failed (not retryable or out of attempts)",
        docs_ok,
        outcomes.summarized.len() - docs_ok
    );
    println!(
        "  fact-checks               {} streamed, {} failed; digest flow {}",
        outcomes.checked,
        outcomes.checks_failed,
        if outcomes.digest_ok {
            "completed"
        } else {
            "did not complete"
        }
    );
    println!(
        "  retries                   {} ({} timeouts by fail_after after {} ms; {} call(s) gave up)",
        client.counts.retries.load(Ordering::SeqCst),
        client.counts.timeouts.load(Ordering::SeqCst),
        options.deadline.as_millis(),
        client.counts.gave_up.load(Ordering::SeqCst),
    );
    println!(
        "  throughput                {attempts} calls in {:.2} s = {:.0} calls/s, {:.0} documents/s",
        elapsed.as_secs_f64(),
        attempts as f64 / elapsed.as_secs_f64(),
        outcomes.summarized.len() as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "  highest concurrency       {} calls at once over all endpoints (limiter: {} per endpoint)",
        all_calls.peak.load(Ordering::SeqCst),
        options.max_in_flight
    );

    println!();
    println!(
        "rate limits (the provider's count over every sliding {} ms window)",
        options.window.as_millis()
    );
    println!(
        "  {:<14}{:>22}{:>26}{:>12}",
        "endpoint", "busiest: requests", "busiest: tokens", "over limit"
    );
    let mut exceeded = false;
    for (name, c) in &counts {
        exceeded |= c.rate_limited > 0;
        println!(
            "  {name:<14}{:>22}{:>26}{:>12}",
            format!("{} / {}", c.busiest_requests, options.limit_requests),
            format!("{} / {}", c.busiest_tokens, options.limit_tokens),
            c.rate_limited,
        );
    }
    if exceeded {
        println!(
            "  EXCEEDED: {} requests arrived over a full window and were refused with 429",
            total(|c| c.rate_limited)
        );
        ExitCode::FAILURE
    } else {
        println!("  no window exceeded its limit: not a single 429");
        ExitCode::SUCCESS
    }
}
