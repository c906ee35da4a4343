//! Coverage-guided fuzzing of `builders::check_retry_policy` (see `tests/support/builders.rs`):
//! `cargo fuzz run --fuzz-dir tests/fuzz retry_policy`.
#![no_main]

#[path = "../../support/builders.rs"]
#[allow(dead_code, reason = "each target uses one of the shared checks")]
mod builders;

libfuzzer_sys::fuzz_target!(|input: builders::RetryInput| builders::check_retry_policy(&input));
