//! The embedded-service story: a small TCP service inside a program, on smol, where every
//! connection is a child of one task group, each one runs under its own deadline, and shutdown
//! is a cancel scope: stop accepting, let the connections in flight finish, return.
//!
//! ```text
//! cargo run -p sheepdog-examples --example tcp_service
//! ```
//!
//! The server listens on `127.0.0.1:0` (loopback, a free port) and answers one line per
//! connection after 30 ms of "work". Each connection gets `fail_after(150 ms)`: a client that
//! is too slow to send its request is cut off. In the same program a client opens 12
//! connections, at most 4 at a time (`bounded_map`); every fourth one waits 250 ms before it
//! speaks, so the server's deadline drops it. Then the client starts one last request and, while
//! the server is still working on it, asks for shutdown: the accept loop's scope is cancelled,
//! the group waits for that connection, the reply still arrives, and the program ends.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sheepdog::cancel::{fail_after, CancelScope};
use sheepdog::combinators::{bounded_map, GatherTuple};
use sheepdog::group::{spawn_group, task_group};
use sheepdog::time;
use smol::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use smol::net::{TcpListener, TcpStream};

const CONNECTION_DEADLINE: Duration = Duration::from_millis(150);
const WORK: Duration = Duration::from_millis(30);

/// What the server counted.
#[derive(Default)]
struct ServerStats {
    accepted: AtomicUsize,
    answered: AtomicUsize,
    timed_out: AtomicUsize,
    failed: AtomicUsize,
    in_flight: AtomicUsize,
}

/// One connection: read a line, work on it, answer it.
async fn handle(mut stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.clone());
    let mut request = String::new();
    reader.read_line(&mut request).await?;
    time::sleep(WORK).await;
    let reply = format!("done: {}\n", request.trim());
    stream.write_all(reply.as_bytes()).await
}

/// Accepts connections until `accepting` is cancelled, then waits for the connections in
/// flight: every connection is a child of the group, so none outlives `serve`.
async fn serve(
    listener: TcpListener,
    accepting: CancelScope,
    stats: Arc<ServerStats>,
) -> io::Result<()> {
    let served = spawn_group(|tg| async move {
        let accept_loop = async {
            loop {
                let (stream, _peer) = listener.accept().await?;
                stats.accepted.fetch_add(1, Ordering::SeqCst);
                stats.in_flight.fetch_add(1, Ordering::SeqCst);
                let stats = Arc::clone(&stats);
                tg.spawn(async move {
                    let counter = match fail_after(CONNECTION_DEADLINE, handle(stream)).await {
                        Ok(Ok(())) => &stats.answered,
                        Ok(Err(_io)) => &stats.failed,
                        Err(_elapsed) => &stats.timed_out, // the stream is dropped: closed
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, io::Error>(()) // one bad connection does not stop the server
                });
            }
        };
        // `None`: the scope was cancelled, which is how this server is asked to stop.
        accepting.run(accept_loop).await.unwrap_or(Ok(()))
    })
    .await;
    served.map_err(|error| io::Error::other(error.to_string()))
}

/// How one client connection ended.
#[derive(Debug, PartialEq)]
enum Reply {
    Answered(String),
    CutOff,
}

/// Connects, waits `delay` before sending `request`, and reads the reply.
async fn request(
    addr: std::net::SocketAddr,
    request: String,
    delay: Duration,
) -> io::Result<Reply> {
    let mut stream = TcpStream::connect(addr).await?;
    time::sleep(delay).await;
    // The server may already have closed a slow connection: a failed write or an empty read.
    if stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .is_err()
    {
        return Ok(Reply::CutOff);
    }
    let mut reply = String::new();
    match stream.read_to_string(&mut reply).await {
        Ok(_) if !reply.is_empty() => Ok(Reply::Answered(reply.trim().to_owned())),
        Ok(_) => Ok(Reply::CutOff),
        Err(error) if error.kind() == io::ErrorKind::ConnectionReset => Ok(Reply::CutOff),
        Err(error) => Err(error),
    }
}

fn main() -> io::Result<()> {
    sheepdog::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let accepting = CancelScope::new();
        println!("listening on {addr}");
        let start = Instant::now();

        // A watchdog: if anything hangs, the program fails instead of stalling.
        let run = task_group(|tg| {
            let (stats, accepting) = (Arc::clone(&stats), accepting.clone());
            async move {
                let server = tg.spawn(serve(listener, accepting.clone(), Arc::clone(&stats)));

                // The client: 12 connections, 4 at a time; every fourth is too slow.
                let replies = bounded_map(0..12, 4, |i| {
                    let delay = if i % 4 == 3 { 250 } else { 0 };
                    request(addr, format!("job {i}"), Duration::from_millis(delay))
                })
                .expect("the limit is not zero")
                .await;

                // A last request, still being worked on when shutdown is asked for.
                let last = request(addr, "last job".to_owned(), Duration::ZERO);
                let shutdown = async {
                    // Wait until the server has accepted it (12 + 1 connections).
                    while stats.accepted.load(Ordering::SeqCst) < 13 {
                        time::sleep(Duration::from_millis(1)).await;
                    }
                    let in_flight = stats.in_flight.load(Ordering::SeqCst);
                    accepting.cancel(); // stop accepting; the group drains
                    in_flight
                };
                let (last, in_flight) = (last, shutdown).gather().await;
                server.await.expect("the server's errors go to the group");
                Ok::<_, io::Error>((replies, last?, in_flight))
            }
        });
        let (replies, last, in_flight_at_shutdown) = fail_after(Duration::from_secs(10), run)
            .await
            .map_err(|elapsed| io::Error::new(io::ErrorKind::TimedOut, elapsed))?
            .map_err(|error| io::Error::other(error.to_string()))?;

        for (i, reply) in replies.iter().enumerate() {
            println!(
                "  job {i:>2}: {:?}",
                reply.as_ref().map_err(ToString::to_string)
            );
        }
        println!("  last  : {last:?} (answered after shutdown began)");
        let answered = replies
            .iter()
            .filter(|r| matches!(r, Ok(Reply::Answered(_))))
            .count();
        println!(
            "client: {answered} answered, {} cut off; server: {} accepted, {} answered, {} timed out, \
             {} failed; {in_flight_at_shutdown} in flight at shutdown, {} after; stopped after {:.0?}",
            replies.len() - answered,
            stats.accepted.load(Ordering::SeqCst),
            stats.answered.load(Ordering::SeqCst),
            stats.timed_out.load(Ordering::SeqCst),
            stats.failed.load(Ordering::SeqCst),
            stats.in_flight.load(Ordering::SeqCst),
            start.elapsed(),
        );
        Ok(())
    })
}
