//! The gochat-rs connection gateway: thread-per-core shards over a sans-IO protocol core.
//!
//! # Layout
//! - [`protocol`]: sans-IO WebSocket handshake and framing, TCP `v1` framing, gochat's client
//!   requests, and TLS for `wss://` (rustls' unbuffered server connection for the handshake,
//!   then, for TLS 1.3, the traffic keys alone). Bytes in, messages and owed bytes out.
//! - [`shard`]: one shard's connections, rooms, users and timers (single-threaded, no locks),
//!   its bounded [`shard::Inbox`], and the effects it asks of logic.
//! - [`driver`]: what drives a shard's sockets — the native io_uring driver, or the epoll driver
//!   (an edge-triggered epoll loop per shard) — behind one small boundary.
//! - [`ingress`]: the gRPC `Gateway` service: batches from queue-workers, framed once, handed to
//!   the shards' inboxes.
//! - [`logic_link`]: carries the shards' effects (auth, close, room sends) to logic over gRPC.
//! - [`metrics`]: the shards' counters and the ingress' delivery counts and latency, in
//!   Prometheus' text format, on the admin listener.
//! - [`server`]: binds the listeners, starts the pinned shard threads and the gRPC server, and
//!   shuts them down.
//! - [`sys`]: the system calls made outside the drivers (the inbox's eventfd, CPU affinity).
//! - [`testkit`]: drives a shard without sockets, as a client would (tests, benches, fuzzers).

pub mod config;
// Unsafe code is denied in the workspace; these two modules call the OS directly (io_uring,
// epoll, eventfd, affinity), each block with its `// SAFETY:` reason.
#[allow(unsafe_code)]
pub mod driver;
pub mod ingress;
pub mod logic_link;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod shard;
#[allow(unsafe_code)]
pub mod sys;
pub mod testkit;

pub use config::GatewayConfig;
pub use server::{Gateway, GatewayHandle};

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid gateway config: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("logic endpoint: {0}")]
    Logic(String),
    #[error("wss certificate: {0}")]
    Tls(#[from] gochat_runtime::tls::TlsError),
}
