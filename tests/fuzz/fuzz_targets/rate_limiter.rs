//! Coverage-guided fuzzing of `builders::check_rate_limiter` (see `tests/support/builders.rs`):
//! `cargo fuzz run --fuzz-dir tests/fuzz rate_limiter`.
#![no_main]

#[path = "../../support/builders.rs"]
#[allow(dead_code, reason = "each target uses one of the shared checks")]
mod builders;

libfuzzer_sys::fuzz_target!(|input: builders::LimiterInput| builders::check_rate_limiter(&input));
