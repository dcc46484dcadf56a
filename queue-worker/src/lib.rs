//! The gochat-rs queue-worker: reads the message queue, batches per room and per gateway, and
//! pushes the batches to gateways over their gRPC `Push` streams.
//!
//! # Layout
//! - [`queue`]: the [`Queue`] interface control enqueues to and workers read from, and its
//!   in-process implementation (the embedded default).
//! - [`batch`]: groups queued messages by room and by user, in order.
//! - [`gateways`]: discovery of gateway addresses (static for now) and one long-lived `Push`
//!   stream per gateway.
//! - [`worker`]: the loop — read by size or age, route through logic, push.

pub mod batch;
pub mod gateways;
pub mod queue;
pub mod worker;

pub use queue::{Delivery, MemoryQueue, Queue};
pub use worker::{Worker, WorkerConfig};

/// Errors of the queue and the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the queue is full ({0} messages waiting)")]
    Full(usize),
    #[error("the queue is closed")]
    Closed,
    #[error("invalid worker config: {0}")]
    Config(String),
    #[error("logic: {0}")]
    Logic(#[from] tonic::Status),
}
