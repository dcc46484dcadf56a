//! The performance regression gate that CI runs.
//!
//! # Layout
//! Empty for now. It will hold the instruction-count benchmarks of the hot paths, the committed
//! baseline, and the `perf check` / `perf update` commands.
