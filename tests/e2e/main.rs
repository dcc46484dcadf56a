//! The root crate's integration tests, as one test binary: each module was a test binary of its
//! own, and each of those linked the whole workspace. They start `gochat up` in-process on free
//! ports (or the `gochat` binary as processes) and drive it with real clients; `common` holds
//! what they share.
//!
//! A subset: `cargo test --test e2e -- sockets::` (a module), or a test's name. The tests of
//! different modules run in parallel in this one process: a test must not rely on running alone.

mod common;

mod abuse;
mod autobahn;
mod binary;
mod cli;
mod cluster;
mod compat;
mod compression;
mod config;
mod discovery;
mod drivers;
mod floods;
mod kept;
mod metrics;
mod openapi;
mod placement;
mod recovery;
mod rest_api;
mod rooms;
mod server_api;
mod sockets;
mod tls;
mod webhooks;
