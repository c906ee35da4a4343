//! Draws `docs/rate-admissions.svg`: when the rate limiter admits jobs under saturating load,
//! with continuous (sliding-window) replenishment and with lionagi's fixed windows.
//!
//! ```text
//! cargo run -p sheepdog-examples --example rate_chart                       # rewrites docs/rate-admissions.svg
//! cargo run -p sheepdog-examples --example rate_chart -- --out /tmp/chart.svg
//! ```
//!
//! Both runs use the same limiter (20 requests per 1 s interval) and the same load, on the
//! virtual-time runtime (`sheepdog::testing::VirtualRuntime`), so the chart is exact and the
//! same on every machine: a trickle of one job every 100 ms, then at 0.75 s a flood of 100 jobs
//! that keeps the limiter saturated until the end. Each job records the virtual instant it was
//! admitted. The chart shows, for each mode, the admissions in every 100 ms sub-window (bars)
//! and the admissions in the trailing 1 s window (line) against the limit (dashed).
//!
//! With continuous replenishment the trailing count never rises above the limit. With fixed
//! windows it does: the flood takes what is left of the first window at 0.75 s and a whole new
//! window at 1 s, nearly twice the limit within one second.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sheepdog::combinators::gather;
use sheepdog::rate::{RateLimiter, Replenishment};
use sheepdog::testing::VirtualRuntime;
use sheepdog::{time, Runtime};

/// Requests admitted per interval.
const LIMIT: u64 = 20;
/// The limiter's interval.
const INTERVAL: Duration = Duration::from_secs(1);
/// The width of a bar.
const SUB_WINDOW: Duration = Duration::from_millis(100);
/// The time the chart covers.
const SPAN: Duration = Duration::from_secs(6);

/// When each job arrives: the trickle, then the flood.
fn arrivals() -> Vec<Duration> {
    let trickle = (0..8).map(|i| SUB_WINDOW * i);
    let flood = std::iter::repeat_n(Duration::from_millis(750), 100);
    trickle.chain(flood).collect()
}

/// Runs the load against a limiter in `mode`; returns every admission's offset from the start.
fn admissions(mode: Replenishment) -> Vec<Duration> {
    let rt = VirtualRuntime::new();
    let limiter = RateLimiter::builder()
        .limit_requests(LIMIT)
        .capacity_refresh_time(INTERVAL)
        .queue_capacity(None)
        .replenishment(mode)
        .build()
        .expect("a valid configuration");
    let admitted = Arc::new(Mutex::new(Vec::new()));
    rt.block_on(async {
        let start = time::now();
        let jobs = arrivals().into_iter().map(|at| {
            let (limiter, admitted) = (&limiter, Arc::clone(&admitted));
            async move {
                time::sleep_until(start + at).await;
                limiter
                    .submit(0, async move {
                        // Virtual time stands still between admission and this first poll.
                        let offset = time::now() - start;
                        admitted
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(offset);
                    })
                    .await
                    .expect("an open limiter with no token budget admits every job");
            }
        });
        gather(jobs).await;
    });
    let mut admitted = Arc::try_unwrap(admitted)
        .expect("every job has finished")
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    admitted.sort();
    admitted
}

/// Admissions in each sub-window of the span.
fn per_sub_window(admitted: &[Duration]) -> Vec<u64> {
    let bars = (SPAN.as_millis() / SUB_WINDOW.as_millis()) as usize;
    let mut counts = vec![0; bars];
    for at in admitted {
        let bar = (at.as_millis() / SUB_WINDOW.as_millis()) as usize;
        if let Some(count) = counts.get_mut(bar) {
            *count += 1;
        }
    }
    counts
}

/// The admissions in the trailing interval `(t - INTERVAL, t]`, for `t` every 10 ms.
fn trailing(admitted: &[Duration]) -> Vec<(Duration, u64)> {
    let step = Duration::from_millis(10);
    (0..=SPAN.as_millis() / step.as_millis())
        .map(|i| {
            let t = step * u32::try_from(i).expect("a short span");
            let count = admitted
                .iter()
                .filter(|&&at| at <= t && at + INTERVAL > t)
                .count() as u64;
            (t, count)
        })
        .collect()
}

/// The busiest trailing interval, over every admission instant (where a maximum is reached).
fn busiest(admitted: &[Duration]) -> u64 {
    admitted
        .iter()
        .map(|&t| {
            admitted
                .iter()
                .filter(|&&at| at <= t && at + INTERVAL > t)
                .count() as u64
        })
        .max()
        .unwrap_or(0)
}

/// One panel of the chart.
struct Panel<'a> {
    title: &'a str,
    admitted: &'a [Duration],
    window_edges: bool,
}

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 250.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 70.0;
const GAP: f64 = 70.0;
const Y_MAX: f64 = 45.0;

fn svg(panels: &[Panel<'_>]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 24.0;
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |t: Duration| LEFT + t.as_secs_f64() / SPAN.as_secs_f64() * plot_width;
    let mut out = String::new();
    let w = &mut out;
    // `write!` to a String cannot fail.
    let _ = writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(w, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        w,
        r#"<text x="{LEFT}" y="26" font-size="17" font-weight="bold">sheepdog RateLimiter: {LIMIT} requests per {} s, a trickle then a flood of 100 jobs at 0.75 s</text>"#,
        INTERVAL.as_secs()
    );
    let _ = writeln!(
        w,
        r##"<text x="{LEFT}" y="46" fill="#444">virtual time; bars: admissions per {} ms; line: admissions in the trailing {} s; dashed: the limit</text>"##,
        SUB_WINDOW.as_millis(),
        INTERVAL.as_secs()
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + GAP) + 24.0;
        let bottom = top + PANEL_HEIGHT;
        let y = |count: f64| bottom - count / Y_MAX * PANEL_HEIGHT;
        let peak = busiest(panel.admitted);
        let _ = writeln!(
            w,
            r#"<text x="{LEFT}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
            top - 10.0,
            panel.title,
        );
        let colour = if peak > LIMIT { "#c0392b" } else { "#2e7d32" };
        let _ = writeln!(
            w,
            r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="end" fill="{colour}">busiest {} s window: {peak} (limit {LIMIT})</text>"#,
            WIDTH - RIGHT,
            top - 10.0,
            INTERVAL.as_secs()
        );
        // Grid and axes.
        for count in (0..=40).step_by(10) {
            let gy = y(f64::from(count));
            let _ = writeln!(
                w,
                r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{count}</text>"##,
                WIDTH - RIGHT,
                LEFT - 8.0,
                gy + 4.0
            );
        }
        for second in 0..=SPAN.as_secs() {
            let gx = x(Duration::from_secs(second));
            let stroke = if panel.window_edges && second > 0 {
                r##"stroke="#9a9a9a" stroke-dasharray="2 3""##
            } else {
                r##"stroke="#e4e4e4""##
            };
            let _ = writeln!(
                w,
                r##"<line x1="{gx:.1}" y1="{top:.1}" x2="{gx:.1}" y2="{bottom:.1}" {stroke}/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#444">{second} s</text>"##,
                bottom + 16.0
            );
        }
        let _ = writeln!(
            w,
            r##"<line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#333"/><line x1="{LEFT}" y1="{top:.1}" x2="{LEFT}" y2="{bottom:.1}" stroke="#333"/>"##,
            WIDTH - RIGHT
        );
        // Bars: admissions per sub-window.
        let bar_width = x(SUB_WINDOW) - x(Duration::ZERO);
        for (b, &count) in per_sub_window(panel.admitted).iter().enumerate() {
            if count == 0 {
                continue;
            }
            let bx = x(SUB_WINDOW * u32::try_from(b).expect("few bars"));
            let by = y(count as f64);
            let _ = writeln!(
                w,
                r##"<rect x="{:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="#7aa6d8"/>"##,
                bx + 1.0,
                bar_width - 2.0,
                bottom - by
            );
        }
        // The trailing-window line.
        let points: Vec<String> = trailing(panel.admitted)
            .iter()
            .map(|&(t, count)| format!("{:.1},{:.1}", x(t), y(count as f64)))
            .collect();
        let _ = writeln!(
            w,
            r##"<polyline points="{}" fill="none" stroke="#d9822b" stroke-width="2"/>"##,
            points.join(" ")
        );
        // The limit.
        let ly = y(LIMIT as f64);
        let _ = writeln!(
            w,
            r##"<line x1="{LEFT}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#c0392b">limit {LIMIT}</text>"##,
            WIDTH - RIGHT,
            WIDTH - RIGHT - 4.0,
            ly - 5.0
        );
    }
    // Legend.
    let ly = height - 14.0;
    let _ = writeln!(
        w,
        r##"<rect x="{LEFT}" y="{:.1}" width="14" height="10" fill="#7aa6d8"/><text x="{:.1}" y="{ly:.1}">admissions per {} ms</text>"##,
        ly - 9.0,
        LEFT + 20.0,
        SUB_WINDOW.as_millis()
    );
    let _ = writeln!(
        w,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#d9822b" stroke-width="2"/><text x="{:.1}" y="{ly:.1}">admissions in the trailing {} s</text>"##,
        LEFT + 200.0,
        ly - 4.0,
        LEFT + 222.0,
        ly - 4.0,
        LEFT + 228.0,
        INTERVAL.as_secs()
    );
    let _ = writeln!(
        w,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#9a9a9a" stroke-dasharray="2 3"/><text x="{:.1}" y="{ly:.1}">fixed-window edges</text>"##,
        LEFT + 450.0,
        ly - 4.0,
        LEFT + 472.0,
        ly - 4.0,
        LEFT + 478.0
    );
    let _ = writeln!(w, "</svg>");
    out
}

const USAGE: &str = "\
rate_chart: run the RateLimiter on virtual time, continuous vs fixed-window replenishment, and
draw the admissions over time as an SVG chart.

USAGE:
    rate_chart [--out PATH]

OPTIONS:
    --out PATH   where to write the SVG (default: docs/rate-admissions.svg in the workspace)
    -h, --help   print this help
";

fn main() -> ExitCode {
    let mut out = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/rate-admissions.svg"
    ));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--out" => match args.next() {
                Some(path) => out = PathBuf::from(path),
                None => {
                    eprintln!("error: --out needs a path\n\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("error: unknown argument `{other}`\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }

    let continuous = admissions(Replenishment::Continuous);
    let fixed = admissions(Replenishment::FixedWindow);
    for (name, admitted) in [("continuous", &continuous), ("fixed window", &fixed)] {
        println!(
            "{name:<13} {} jobs admitted, the last at {:.2} s; busiest {} s window: {} (limit {LIMIT})",
            admitted.len(),
            admitted.last().map_or(0.0, Duration::as_secs_f64),
            INTERVAL.as_secs(),
            busiest(admitted),
        );
    }
    let chart = svg(&[
        Panel {
            title: "Continuous (the default): each use comes back one interval after its admission",
            admitted: &continuous,
            window_edges: false,
        },
        Panel {
            title: "FixedWindow (lionagi's): the whole budget comes back at each window edge",
            admitted: &fixed,
            window_edges: true,
        },
    ]);
    if let Err(error) = std::fs::write(&out, chart) {
        eprintln!("error: cannot write {}: {error}", out.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {}", out.display());
    if busiest(&continuous) > LIMIT {
        eprintln!("error: the continuous mode let more than {LIMIT} through in one interval");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
