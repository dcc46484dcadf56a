//! The gochat-rs control plane: gochat's REST API, the logic gRPC service, users, sessions,
//! routing and rooms, and the web page.
//!
//! # Layout
//! - [`config`]: `[control]` settings.
//! - [`store`]: users in SQL (SQLite through sqlx, with migrations).
//! - [`names`]: what a user name may hold, its normal form (NFKC) and its look-alike skeletons.
//! - [`password`]: argon2id password hashes.
//! - [`state`]: sessions, connections, room members and online counts, user → gateway routing.
//! - [`history`]: each room's numbered recent messages, for clients that reconnect.
//! - [`kept`]: private messages kept until their user's client acknowledges them.
//! - [`ids`]: unique, time-ordered message ids.
//! - [`memory`]: memory freed in bulk (quiet rooms and users forgotten), given back to the
//!   system.
//! - [`logic`]: the operations behind both the REST API and the gRPC service.
//! - [`limits`]: the REST API's rate limits, per client address and per user.
//! - [`api`]: the REST API, byte-compatible with gochat's.
//! - [`grpc`]: the `Logic` gRPC service gateways and queue-workers call.
//! - [`server_api`]: the server API for application backends, over HTTP (`/api/<method>`) and
//!   gRPC, behind API keys.
//! - [`site`]: serves the web page (embedded, or from a folder) and its `/config.js`.
//! - [`headers`]: security headers (content security policy, nosniff, no framing, no
//!   referrer) of the page and the REST API.
//! - [`http`]: serves the REST API and the page (HTTP or HTTPS), connections bounded in number
//!   and time.
//! - [`webhooks`]: user, room and message events POSTed in signed batches to configured URLs.
//! - [`metrics`]: REST requests, enqueues, rate-limit refusals, socket authentications,
//!   gateway sweeps and webhook deliveries in Prometheus' text format, on the admin listener.
//! - [`server`]: binds and runs the listeners.

#![warn(unreachable_pub)]
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub(crate) mod grpc;
pub(crate) mod headers;
pub mod history;
pub mod http;
pub mod ids;
pub mod kept;
pub mod limits;
pub mod logic;
pub(crate) mod memory;
pub mod metrics;
pub(crate) mod names;
pub(crate) mod password;
pub(crate) mod server;
pub mod server_api;
pub(crate) mod site;
pub mod state;
pub mod store;
pub mod webhooks;

pub use config::ControlConfig;
pub use server::{Control, ControlHandle};

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid control config: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTPS certificate: {0}")]
    Tls(#[from] gochat_runtime::tls::TlsError),
}
