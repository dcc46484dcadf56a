//! The load generator for million-connection benchmarks of gochat-compatible servers.
//!
//! # Layout
//! Empty for now. It will hold the scenarios (`connections`, `fanout`, `latency`, `echo`,
//! `private`), the worker-process fan-out over source addresses, and the reports.
