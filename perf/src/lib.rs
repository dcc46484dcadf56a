//! The performance regression gate that CI runs.
//!
//! CI machines are shared and noisy, so the gate counts instructions (valgrind's callgrind),
//! which repeat exactly for the same binary and input whatever else the machine does, and keeps
//! wall time for humans (criterion, `cargo bench`).
//!
//! # Layout
//! - [`workloads`]: the hot paths, each a setup and a measured region run under callgrind.
//! - [`callgrind`]: runs one workload under callgrind and reads its instruction count.
//! - [`baseline`]: the committed `perf/baseline.json`, the comparison and its table.
//! - [`smoke`]: a short macro run of `bench` against both gateway drivers, checking ratios
//!   and bounds rather than absolute times.
//! - `main.rs`: `perf check`, `perf update`, `perf list`.

#![forbid(unsafe_code)]

pub mod baseline;
pub mod callgrind;
pub mod smoke;
pub mod workloads;
