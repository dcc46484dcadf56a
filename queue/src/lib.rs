//! The message queue between control, which enqueues every message, and the queue-workers,
//! which read it in batches and push to the gateways.
//!
//! # Layout
//! - `queue`: the [`Queue`] interface, what it hands out ([`Delivery`]), and [`MemoryQueue`],
//!   the in-process queue of the embedded default (control and worker in one process).
//! - `redis_queue`: [`RedisQueue`] on Redis Streams with a consumer group, for control and
//!   workers in separate processes.
//! - Here: `[queue]` in the config file ([`QueueConfig`], [`QueueKind`]), which opens either,
//!   and the queue's [`Error`].
//!
//! Every item is used from the crate root (`gochat_queue::Queue`); the modules are private.

#![forbid(unsafe_code)]

mod queue;
mod redis_queue;

use std::sync::Arc;

pub use queue::{Delivery, MemoryQueue, Queue};
pub use redis_queue::{RedisQueue, RedisQueueConfig};
use serde::{Deserialize, Serialize};

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the queue is full ({0} messages waiting)")]
    Full(usize),
    #[error("the queue is closed")]
    Closed,
    #[error("invalid queue config: {0}")]
    Config(String),
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
