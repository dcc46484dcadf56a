//! What every gochat-rs role runs besides its own work, and the launcher of local clusters; no
//! contract (those are in `gochat-proto`).
//!
//! # Layout
//! - [`launch`]: starting gochat-rs processes on this machine (free ports, their config files,
//!   the processes), for `gochat cluster` and the bench.
//! - [`metrics`]: Prometheus' text format (counters, histograms) and the admin listener every
//!   role serves `GET /metrics` on.
//! - [`os`]: the few system calls beyond the standard library (limits, clocks, signals, the
//!   allocator), each behind a safe function.
//! - [`peers`]: the members of a role (from discovery) and gRPC channels that follow them.
//! - [`redis`]: connections to Redis, one node or a Redis Cluster, behind one handle.
//! - [`tls`]: server certificates from PEM files, reloaded when they change (wss, HTTPS).

pub mod launch;
pub mod metrics;
pub mod os;
pub mod peers;
pub mod redis;
pub mod tls;
