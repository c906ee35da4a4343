//! Cancel scopes (target T9 of docs/performance.md): what a deadline costs on a future that is
//! ready at once, and on one that waits once, against the runtimes' own timeouts.
//!
//! Each iteration runs 10,000 operations one after another. Run with
//! `cargo bench -p sheepdog-benches --bench cancel`.
//!
//! Instruction counts: with `CANCEL_COUNT=<scenario>:<n>` in the environment the binary skips
//! divan and runs one scenario `n` times: `ready_bare`, `ready_fail_after`,
//! `ready_move_on_after`, `ready_tokio_timeout` (one op each), and `tokio_bare`,
//! `tokio_timeout`, `tokio_fail_after`, `task_timeout`, `task_fail_after`, `smol_bare`,
//! `smol_fail_after` (`n` ops inside one `block_on`). Run it under `valgrind --tool=callgrind`
//! at two `n`: the difference over the difference in ops is the count per op (see
//! `docs/performance.md`, "Cancel scopes (T9)").

use std::pin::pin;
use std::sync::OnceLock;
use std::time::Duration;

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use sheepdog_benches::poll_ready;
use sheepdog_core::cancel::{fail_after, move_on_after};
use sheepdog_core::runtime::{yield_now, Runtime};
use sheepdog_smol::SmolRuntime;
use sheepdog_tokio::TokioRuntime;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

/// Operations per iteration.
const OPS: usize = 10_000;

/// A deadline far enough never to fire.
const FAR: Duration = Duration::from_secs(3600);

fn main() {
    if let Ok(spec) = std::env::var("CANCEL_COUNT") {
        count(&spec);
        return;
    }
    divan::main();
}

/// Runs one scenario `n` times, for instruction counts (no divan, no timing).
fn count(spec: &str) {
    let (scenario, n) = spec.split_once(':').expect("CANCEL_COUNT=<scenario>:<n>");
    let n: usize = n.parse().expect("a count");
    let tokio = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    };
    match scenario {
        "ready_bare" => {
            for i in 0..n {
                black_box(poll_ready(std::future::ready(black_box(i))));
            }
        }
        "ready_fail_after" => {
            for i in 0..n {
                let out = poll_ready(fail_after(FAR, std::future::ready(black_box(i))));
                black_box(out.expect("no timeout"));
            }
        }
        "ready_move_on_after" => {
            for i in 0..n {
                let out = poll_ready(move_on_after(FAR, std::future::ready(black_box(i))));
                black_box(out.expect("no timeout"));
            }
        }
        "ready_tokio_timeout" => {
            let rt = tokio();
            let _entered = rt.enter();
            for i in 0..n {
                let out = poll_ready(tokio::time::timeout(FAR, std::future::ready(black_box(i))));
                black_box(out.expect("no timeout"));
            }
        }
        "tokio_bare" => tokio().block_on(async {
            for _ in 0..n {
                yield_now().await;
            }
        }),
        "tokio_timeout" => tokio().block_on(async {
            for _ in 0..n {
                tokio::time::timeout(FAR, yield_now())
                    .await
                    .expect("no timeout");
            }
        }),
        "tokio_fail_after" => {
            let rt = tokio();
            let _registers_the_detector = TokioRuntime::from_handle(rt.handle().clone());
            rt.block_on(async {
                for _ in 0..n {
                    fail_after(FAR, yield_now()).await.expect("no timeout");
                }
            });
        }
        "task_timeout" => tokio().block_on(async {
            tokio::spawn(async move {
                for _ in 0..n {
                    tokio::time::timeout(FAR, yield_now())
                        .await
                        .expect("no timeout");
                }
            })
            .await
            .expect("the task ran");
        }),
        "task_fail_after" => {
            let rt = tokio();
            let _registers_the_detector = TokioRuntime::from_handle(rt.handle().clone());
            rt.block_on(async {
                tokio::spawn(async move {
                    for _ in 0..n {
                        fail_after(FAR, yield_now()).await.expect("no timeout");
                    }
                })
                .await
                .expect("the task ran");
            });
        }
        "smol_bare" => smol::block_on(async {
            for _ in 0..n {
                yield_now().await;
            }
        }),
        "smol_fail_after" => SmolRuntime::global().block_on(async {
            for _ in 0..n {
                fail_after(FAR, yield_now()).await.expect("no timeout");
            }
        }),
        other => panic!("unknown scenario {other}"),
    }
}

/// A future that is ready immediately: the deadline wrapper's fixed cost.
#[divan::bench_group(sample_count = 200)]
mod ready {
    use super::*;

    #[divan::bench]
    fn bare(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for i in 0..OPS {
                black_box(poll_ready(std::future::ready(black_box(i))));
            }
        });
    }

    #[divan::bench]
    fn sheepdog_fail_after(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for i in 0..OPS {
                let out = poll_ready(fail_after(FAR, std::future::ready(black_box(i))));
                black_box(out.expect("no timeout"));
            }
        });
    }

    #[divan::bench]
    fn tokio_timeout(bencher: Bencher<'_, '_>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        let _entered = rt.enter();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            for i in 0..OPS {
                let out = poll_ready(tokio::time::timeout(FAR, std::future::ready(black_box(i))));
                black_box(out.expect("no timeout"));
            }
        });
    }
}

/// A future that waits once (yields), under a deadline, on a real runtime.
#[divan::bench_group(sample_count = 100)]
mod pending_once {
    use super::*;

    fn tokio() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("tokio runtime")
        })
    }

    #[divan::bench]
    fn tokio_bare(bencher: Bencher<'_, '_>) {
        let rt = tokio();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            rt.block_on(async {
                for _ in 0..OPS {
                    yield_now().await;
                }
            })
        });
    }

    #[divan::bench]
    fn tokio_timeout(bencher: Bencher<'_, '_>) {
        let rt = tokio();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            rt.block_on(async {
                for _ in 0..OPS {
                    tokio::time::timeout(FAR, yield_now())
                        .await
                        .expect("no timeout");
                }
            })
        });
    }

    /// Inside plain tokio code: sheepdog finds the runtime through the tokio detector.
    #[divan::bench]
    fn tokio_sheepdog_fail_after(bencher: Bencher<'_, '_>) {
        // Building any `TokioRuntime` registers the detector.
        let _registers_the_detector = TokioRuntime::from_handle(tokio().handle().clone());
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            tokio().block_on(async {
                for _ in 0..OPS {
                    fail_after(FAR, yield_now()).await.expect("no timeout");
                }
            })
        });
    }

    /// The same two inside a tokio task rather than `block_on` (where most code runs).
    #[divan::bench]
    fn tokio_task_timeout(bencher: Bencher<'_, '_>) {
        let rt = tokio();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            rt.block_on(async {
                tokio::spawn(async {
                    for _ in 0..OPS {
                        tokio::time::timeout(FAR, yield_now())
                            .await
                            .expect("no timeout");
                    }
                })
                .await
                .expect("the task ran")
            })
        });
    }

    #[divan::bench]
    fn tokio_task_sheepdog_fail_after(bencher: Bencher<'_, '_>) {
        let _registers_the_detector = TokioRuntime::from_handle(tokio().handle().clone());
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            tokio().block_on(async {
                tokio::spawn(async {
                    for _ in 0..OPS {
                        fail_after(FAR, yield_now()).await.expect("no timeout");
                    }
                })
                .await
                .expect("the task ran")
            })
        });
    }

    #[divan::bench]
    fn smol_bare(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            smol::block_on(async {
                for _ in 0..OPS {
                    yield_now().await;
                }
            })
        });
    }

    #[divan::bench]
    fn smol_async_io_timer_race(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            smol::block_on(async {
                for _ in 0..OPS {
                    let timer = pin!(async_io::Timer::after(FAR));
                    let work = pin!(yield_now());
                    match futures::future::select(work, timer).await {
                        futures::future::Either::Left(((), _)) => {}
                        futures::future::Either::Right(_) => panic!("timed out"),
                    }
                }
            })
        });
    }

    #[divan::bench]
    fn smol_sheepdog_fail_after(bencher: Bencher<'_, '_>) {
        let rt = SmolRuntime::global();
        bencher.counter(ItemsCount::new(OPS)).bench_local(|| {
            rt.block_on(async {
                for _ in 0..OPS {
                    fail_after(FAR, yield_now()).await.expect("no timeout");
                }
            })
        });
    }
}
