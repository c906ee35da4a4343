//! Runnable examples live in this package's `examples` targets: `demo.rs`, and one example per
//! section of the seed page (see the README's "Examples" section).
