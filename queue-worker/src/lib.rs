//! The gochat-rs queue-worker: reads the message queue, batches per room and per gateway, and
//! pushes the batches to gateways over their gRPC `Push` streams.
//!
//! # Layout
//! - [`queue`]: the [`Queue`] interface control enqueues to and workers read from, and its
//!   in-process implementation (the embedded default); [`redis_queue`]: Redis Streams with a
//!   consumer group, for control and workers in separate processes.
//! - [`batch`]: groups queued messages by room and by user, in order.
//! - [`gateways`]: discovery of gateway addresses (static for now) and one long-lived `Push`
//!   stream per gateway.
//! - [`worker`]: the loop — read by size or age, route through logic, push.
//! - [`metrics`]: what the worker counts (reads, pushes per gateway, failures, queue lag, push
//!   latency) in Prometheus' text format, for its admin listener.

pub mod batch;
pub mod gateways;
pub mod metrics;
pub mod queue;
pub mod redis_queue;
pub mod worker;

use std::sync::Arc;

pub use queue::{Delivery, MemoryQueue, Queue};
pub use redis_queue::{RedisQueue, RedisQueueConfig};
use serde::{Deserialize, Serialize};
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
    #[error("queue: {0}")]
    Queue(String),
}

/// Which queue: the in-process one, or Redis Streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    Memory,
    Redis,
}

/// `[queue]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `memory` (one process: `gochat up`, or `gochat control` with its own worker) or `redis`.
    pub kind: QueueKind,
    /// With `memory`: messages held before pushes are refused.
    pub capacity: usize,
    /// With `redis`: `[queue.redis]`.
    pub redis: RedisQueueConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { kind: QueueKind::Memory, capacity: 100_000, redis: RedisQueueConfig::default() }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), Error> {
        match self.kind {
            QueueKind::Memory if self.capacity == 0 => {
                Err(Error::Config("queue capacity must be above 0".into()))
            }
            QueueKind::Memory => Ok(()),
            QueueKind::Redis => self.redis.validate(),
        }
    }

    /// Opens the configured queue.
    pub async fn open(&self) -> Result<Arc<dyn Queue>, Error> {
        Ok(match self.kind {
            QueueKind::Memory => Arc::new(MemoryQueue::new(self.capacity)),
            QueueKind::Redis => Arc::new(RedisQueue::open(self.redis.clone()).await?),
        })
    }
}
