//! The gochat-rs queue-worker: reads the message queue, batches per room and per gateway, and
//! pushes the batches to gateways over their gRPC `Push` streams.
//!
//! # Layout
//! - [`batch`]: groups queued messages by room and by user, in order.
//! - [`gateways`]: discovery of gateway addresses (static for now) and one long-lived `Push`
//!   stream per gateway.
//! - [`worker`]: the loop — read by size or age, route through logic, push.
//! - [`metrics`]: what the worker counts (reads, pushes per gateway, failures, queue lag, push
//!   latency) in Prometheus' text format, for its admin listener.
//!
//! The queue it reads (the `Queue` interface, the in-process queue, Redis Streams and the
//! `[queue]` config) is the `gochat-queue` crate, shared with control, which enqueues.

#![forbid(unsafe_code)]

pub mod batch;
pub mod gateways;
pub mod metrics;
pub mod worker;

pub use worker::{Worker, WorkerConfig};

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid worker config: {0}")]
    Config(String),
    #[error("logic: {0}")]
    Logic(#[from] tonic::Status),
    /// Reading or acknowledging the queue failed; its own message says how.
    #[error(transparent)]
    Queue(#[from] gochat_queue::Error),
}
