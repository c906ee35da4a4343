//! Benchmarks live in this package's `benches` targets; see docs/performance.md.
