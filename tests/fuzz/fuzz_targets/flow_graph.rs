//! Coverage-guided fuzzing of `builders::check_flow_graph` (see `tests/support/builders.rs`):
//! `cargo fuzz run --fuzz-dir tests/fuzz flow_graph`.
#![no_main]

#[path = "../../support/builders.rs"]
#[allow(dead_code, reason = "each target uses one of the shared checks")]
mod builders;

libfuzzer_sys::fuzz_target!(|input: builders::FlowInput| builders::check_flow_graph(&input));
