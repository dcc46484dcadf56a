//! gochat-rs: a gochat-compatible IM system — an io_uring-ready connection gateway, a tonic
//! control plane and a queue-worker — in one `gochat` binary.
//!
//! # Layout
//! - [`cluster`]: a local cluster of separate processes (Redis, etcd, PostgreSQL, gateways,
//!   controls, workers) for tests and demos (`gochat cluster`).
//! - [`config`]: the TOML config file, a section per role, and any key from the environment
//!   (`GOCHAT_<SECTION>__<KEY>`).
//! - [`discovery`]: how the roles find each other — static addresses from the config (the
//!   default), or etcd leases and watches (cargo feature `etcd`, in `discovery/etcd/`).
//! - [`health`]: `gochat health`, the check for containers and supervisors.
//! - [`logging`]: the log on stderr, text or JSON lines.
//! - [`roles`]: starting each role and running it until stopped, reading the config again on
//!   SIGHUP (`up` runs all of them in one process, the embedded default).
//! - `main.rs`: the CLI — parse, start tracing, load and validate config, run the role or
//!   subcommand named.
//!
//! The roles themselves are the workspace crates `gochat-gateway`, `gochat-control` and
//! `gochat-queue-worker`, with `gochat-proto` the contracts between them and `gochat-queue` the
//! queue from control to the workers.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod discovery;
pub mod health;
pub mod logging;
pub mod roles;

pub use config::Config;
