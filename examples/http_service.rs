//! The rate-limited API story, over real HTTP on loopback with tokio: a server that enforces a
//! rate limit with `429 Too Many Requests` and a retry-after hint, and a client that fans out
//! requests through a `RateLimiter` with `bounded_map` and `retry`, waiting as long as the
//! server asks when it still says 429.
//!
//! ```text
//! cargo run -p sheepdog-examples --example http_service
//! ```
//!
//! - The server runs on tokio through `sheepdog-tokio`, listens on `127.0.0.1:0`, and handles
//!   each connection as a child of a sheepdog `spawn_group`, under a per-connection deadline.
//!   It speaks just enough HTTP/1.1 (one request per connection, `Connection: close`) by hand.
//! - The limit is a fixed window: 5 requests per 200 ms window. A request over the limit gets
//!   `429` with two hints: the standard `Retry-After` (whole seconds, rounded up, as HTTP
//!   defines it) and `Retry-After-Ms`, the exact wait in **milliseconds** until the window
//!   ends, which this client reads.
//! - The client sends 30 requests, 8 at a time. Each call goes through the client's
//!   `RateLimiter` (5 requests per 200 ms, the server's published limit), and through `retry`
//!   with `.retry_after(..)`, so the rare 429 that still comes back (the client's window slides,
//!   the server's is fixed) waits until the next window instead of hammering the server.
//! - Shutdown: the accept loop runs in a cancel scope; cancelling it stops accepting, and the
//!   group waits for the connections in flight. The program prints a summary and ends.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sheepdog::cancel::{fail_after, CancelScope};
use sheepdog::combinators::{bounded_map, retry, RetryPolicy};
use sheepdog::group::{spawn_group, task_group};
use sheepdog::rate::{RateLimitError, RateLimiter};
use sheepdog::Runtime;
use sheepdog_tokio::TokioRuntime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: u32 = 5;
const WINDOW: Duration = Duration::from_millis(200);
const REQUESTS: u32 = 30;
const CONCURRENCY: usize = 8;

/// A fixed-window counter: at most `LIMIT` admissions per `WINDOW`, windows counted from
/// the server's start.
struct FixedWindow {
    origin: Instant,
    /// (window number, admissions in it, the most admissions any window has seen)
    state: Mutex<(u128, u32, u32)>,
}

impl FixedWindow {
    fn new() -> Self {
        FixedWindow {
            origin: Instant::now(),
            state: Mutex::new((0, 0, 0)),
        }
    }

    /// Admits a request, or says how long until the next window opens.
    fn admit(&self) -> Result<(), Duration> {
        let since = self.origin.elapsed();
        let window = since.as_nanos() / WINDOW.as_nanos();
        let mut state = self.state.lock().expect("not poisoned");
        if state.0 != window {
            *state = (window, 0, state.2);
        }
        if state.1 < LIMIT {
            state.1 += 1;
            state.2 = state.2.max(state.1);
            Ok(())
        } else {
            let next = WINDOW * u32::try_from(window + 1).expect("a short run");
            Err(next - since)
        }
    }

    fn busiest_window(&self) -> u32 {
        self.state.lock().expect("not poisoned").2
    }
}

/// What the server counted.
#[derive(Default)]
struct ServerStats {
    ok: AtomicUsize,
    limited: AtomicUsize,
    failed: AtomicUsize,
}

/// Reads one request, answers `200` or `429`.
async fn handle(stream: TcpStream, limiter: &FixedWindow) -> io::Result<bool> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut header = String::new();
    while reader.read_line(&mut header).await? > 2 {
        header.clear(); // skip the headers, up to the empty line
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (response, admitted) = match limiter.admit() {
        Ok(()) => {
            let body = format!("summary of {path}\n");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            (head + &body, true)
        }
        Err(wait) => (
            format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {}\r\nRetry-After-Ms: {}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                wait.as_millis().div_ceil(1000),
                wait.as_millis() + 1,
            ),
            false,
        ),
    };
    write.write_all(response.as_bytes()).await?;
    write.shutdown().await?;
    Ok(admitted)
}

/// Accepts connections until `accepting` is cancelled; every connection is a child of the
/// group, so `serve` returns only once the last one is done.
async fn serve(
    listener: TcpListener,
    accepting: CancelScope,
    stats: Arc<ServerStats>,
) -> io::Result<()> {
    let limiter = Arc::new(FixedWindow::new());
    let busiest = Arc::clone(&limiter);
    let served = spawn_group(|tg| async move {
        let accept_loop = async {
            loop {
                let (stream, _peer) = listener.accept().await?;
                let (stats, limiter) = (Arc::clone(&stats), Arc::clone(&limiter));
                tg.spawn(async move {
                    let counter =
                        match fail_after(Duration::from_secs(2), handle(stream, &limiter)).await {
                            Ok(Ok(true)) => &stats.ok,
                            Ok(Ok(false)) => &stats.limited,
                            Ok(Err(_)) | Err(_) => &stats.failed,
                        };
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, io::Error>(())
                });
            }
        };
        accepting.run(accept_loop).await.unwrap_or(Ok(()))
    })
    .await;
    println!(
        "server: busiest window admitted {} (limit {LIMIT} per {WINDOW:?})",
        busiest.busiest_window()
    );
    served.map_err(|error| io::Error::other(error.to_string()))
}

/// Why a request did not get its answer.
#[derive(Debug)]
enum HttpError {
    /// `429`, with the server's hint.
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// Any other status.
    Status(u16),
    Io(io::Error),
    /// The client's own rate limiter refused the request (it was closed).
    Limiter(RateLimitError),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::RateLimited { retry_after } => write!(f, "429, retry after {retry_after:?}"),
            HttpError::Status(code) => write!(f, "HTTP status {code}"),
            HttpError::Io(error) => write!(f, "I/O error: {error}"),
            HttpError::Limiter(error) => write!(f, "rate limiter: {error}"),
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(error: io::Error) -> Self {
        HttpError::Io(error)
    }
}

/// One `GET path` on a fresh connection; the body on `200`.
async fn get(addr: std::net::SocketAddr, path: &str) -> Result<String, HttpError> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    match status {
        200 => Ok(body.trim().to_owned()),
        429 => {
            let retry_after = lines
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("retry-after-ms"))
                .and_then(|(_, value)| value.trim().parse().ok())
                .map(Duration::from_millis);
            Err(HttpError::RateLimited { retry_after })
        }
        other => Err(HttpError::Status(other)),
    }
}

fn main() -> io::Result<()> {
    // sheepdog on tokio: a runtime with its I/O and time drivers, handed to sheepdog.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rt = TokioRuntime::from_runtime(tokio);

    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        let stats = Arc::new(ServerStats::default());
        let accepting = CancelScope::new();
        let policy = RetryPolicy::builder()
            .attempts(12)
            .base_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(400))
            .jitter(0.2)
            .build()
            .expect("a valid policy");
        let (calls, rate_limited) = (AtomicU32::new(0), Cell::new(0_u32));
        let limiter = RateLimiter::builder()
            .limit_requests(u64::from(LIMIT))
            .capacity_refresh_time(WINDOW)
            .concurrency_limit(CONCURRENCY)
            .build()
            .expect("a valid limit");
        let start = Instant::now();

        let run = task_group(|tg| {
            let (stats, accepting) = (Arc::clone(&stats), accepting.clone());
            let (calls, rate_limited, policy, limiter) = (&calls, &rate_limited, &policy, &limiter);
            async move {
                let server = tg.spawn(serve(listener, accepting.clone(), stats));
                // Every call goes through the client's rate limiter, set to the server's
                // published limit, so the client stays under it instead of learning it from
                // 429s. Its window slides while the server's is fixed, and requests take time
                // to arrive, so a rare 429 can still come back: `retry` and the hint handle it.
                let results = bounded_map(1..=REQUESTS, CONCURRENCY, |i| {
                    let path = format!("/summarize/doc{i}");
                    async move {
                        retry(
                            || {
                                calls.fetch_add(1, Ordering::SeqCst);
                                let request = get(addr, &path);
                                async move {
                                    limiter
                                        .submit(0, request)
                                        .await
                                        .unwrap_or_else(|e| Err(HttpError::Limiter(e)))
                                }
                            },
                            policy.clone(),
                        )
                        .retry_on(|e: &HttpError| {
                            !matches!(e, HttpError::Status(_) | HttpError::Limiter(_))
                        })
                        .retry_after(|e: &HttpError| match e {
                            HttpError::RateLimited { retry_after } => {
                                rate_limited.set(rate_limited.get() + 1);
                                *retry_after
                            }
                            _ => None,
                        })
                        .await
                    }
                })
                .expect("the limit is not zero")
                .await;
                accepting.cancel(); // graceful: stop accepting, drain the group
                server.await.expect("the server's errors go to the group");
                Ok::<_, io::Error>(results)
            }
        });
        // A watchdog: if anything hangs, the program fails instead of stalling.
        let results = fail_after(Duration::from_secs(20), run)
            .await
            .map_err(|elapsed| io::Error::new(io::ErrorKind::TimedOut, elapsed))?
            .map_err(|error| io::Error::other(error.to_string()))?;

        let succeeded = results.iter().filter(|r| r.is_ok()).count();
        if let Some(Ok(body)) = results.last() {
            println!("client: last answer {body:?}");
        }
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            println!("client: gave up: {error}");
        }
        let calls = calls.load(Ordering::SeqCst);
        println!(
            "client: {REQUESTS} requests, {calls} calls, {} retries, {} 429s seen; server: {} ok, {} 429, {} failed",
            calls - REQUESTS,
            rate_limited.get(),
            stats.ok.load(Ordering::SeqCst),
            stats.limited.load(Ordering::SeqCst),
            stats.failed.load(Ordering::SeqCst),
        );
        let admitted = limiter.statistics().admitted;
        println!("client limiter: {admitted} calls admitted, at most {LIMIT} per {WINDOW:?}");
        println!(
            "{succeeded} of {REQUESTS} succeeded{} in {} ms; server stopped",
            if succeeded == results.len() { " (all)" } else { "" },
            start.elapsed().as_millis()
        );
        if succeeded < results.len() {
            return Err(io::Error::other("some requests never got through"));
        }
        Ok(())
    })
}
