//! The [`Queue`] interface control enqueues to and workers read from, and [`MemoryQueue`], the
//! in-process queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use gochat_proto::queue::QueueMessage;
use tokio::sync::Notify;

use crate::Error;

/// A message read from the queue; acknowledge its `id` once every gateway took it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Opaque to the worker; meaningful to the queue that handed it out.
    pub id: String,
    pub message: QueueMessage,
}

#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Appends a message; fails with [`Error::Full`] rather than growing without bound.
    async fn publish(&self, message: QueueMessage) -> Result<(), Error>;
    /// Up to `max` messages, waiting at most `wait` for the first one.
    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, Error>;
    /// The deliveries with these ids were handed to their gateways.
    async fn ack(&self, ids: &[String]) -> Result<(), Error>;
    /// Stops handing out messages (readers wake with [`Error::Closed`] where that applies).
    fn close(&self) {}
    /// Splits the queue's partitions among the live `workers` (from discovery), `me` among
    /// them: this process then reads only its share, so each partition (and so each room) is
    /// handled by one worker at a time and keeps its order. Without it, every reader reads
    /// every partition. A queue with one partition ignores it.
    fn share_with(&self, _me: &str, _workers: gochat_runtime::peers::Members) {}
}

/// The in-process queue of the embedded default: bounded, FIFO, gone with the process.
pub struct MemoryQueue {
    inner: Mutex<Inner>,
    ready: Notify,
    capacity: usize,
    closed: AtomicBool,
}

struct Inner {
    messages: VecDeque<Delivery>,
    next_id: u64,
}

impl MemoryQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner { messages: VecDeque::new(), next_id: 0 }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("queue lock").messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self, max: usize) -> Vec<Delivery> {
        let mut inner = self.inner.lock().expect("queue lock");
        let n = max.min(inner.messages.len());
        inner.messages.drain(..n).collect()
    }
}

#[async_trait::async_trait]
impl Queue for MemoryQueue {
    async fn publish(&self, message: QueueMessage) -> Result<(), Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        {
            let mut inner = self.inner.lock().expect("queue lock");
            if inner.messages.len() >= self.capacity {
                return Err(Error::Full(inner.messages.len()));
            }
            inner.next_id += 1;
            let id = inner.next_id;
            inner.messages.push_back(Delivery { id: id.to_string(), message });
        }
        self.ready.notify_one();
        Ok(())
    }

    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.ready.notified();
            let got = self.take(max);
            if !got.is_empty() {
                // Others may be waiting for what is left.
                if !self.is_empty() {
                    self.ready.notify_one();
                }
                return Ok(got);
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, _ids: &[String]) -> Result<(), Error> {
        Ok(())
    }

    /// Wakes readers and refuses further publishes.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_proto::queue::queue_message::Target;

    fn msg(room: u64) -> QueueMessage {
        QueueMessage { target: Some(Target::RoomId(room)), body: b"{}".to_vec(), ..Default::default() }
    }

    #[tokio::test]
    async fn fifo_bounded_and_waits() {
        let q = MemoryQueue::new(2);
        q.publish(msg(1)).await.unwrap();
        q.publish(msg(2)).await.unwrap();
        assert!(matches!(q.publish(msg(3)).await, Err(Error::Full(2))));
        let got = q.read(10, Duration::from_millis(1)).await.unwrap();
        assert_eq!(got.iter().map(|d| d.message.clone()).collect::<Vec<_>>(), vec![msg(1), msg(2)]);
        assert_ne!(got[0].id, got[1].id);
        assert!(q.read(10, Duration::from_millis(5)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reader_wakes_on_publish() {
        let q = std::sync::Arc::new(MemoryQueue::new(8));
        let reader = tokio::spawn({
            let q = q.clone();
            async move { q.read(1, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        q.publish(msg(7)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader).await.unwrap().unwrap().unwrap();
        assert_eq!(got[0].message, msg(7));
    }
}
