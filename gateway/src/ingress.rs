//! The gRPC `Gateway` service: batches from queue-workers, framed once and handed to the shards.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gochat_proto::gateway::gateway_server::Gateway;
use gochat_proto::gateway::{PushAck, PushBatch, ShardStats as ShardStatsMsg, StatsReply, StatsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::shard::{Command, Framed, Inbox, ShardStats};

/// The ids of the last messages delivered, so a message the queue delivers again (after a
/// worker died between our acknowledgement and its own) is not written twice.
pub struct Seen {
    ids: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
    capacity: usize,
}

impl Seen {
    pub fn new(capacity: usize) -> Self {
        Self { ids: Default::default(), order: Default::default(), capacity }
    }

    /// True the first time `id` is offered (within the window); 0 is "no id" and always new.
    pub fn first_time(&mut self, id: u64) -> bool {
        if id == 0 || self.capacity == 0 {
            return true;
        }
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    /// Drops the bodies seen before; `ids` is empty or matches `bodies`.
    fn filter(&mut self, bodies: &mut Vec<Vec<u8>>, ids: &[u64]) -> usize {
        if ids.len() != bodies.len() {
            return 0;
        }
        let before = bodies.len();
        let mut keep = ids.iter().map(|id| self.first_time(*id));
        bodies.retain(|_| keep.next().unwrap_or(true));
        before - bodies.len()
    }
}

#[derive(Clone)]
pub struct Ingress {
    pub gateway_id: Arc<str>,
    pub seen: Arc<std::sync::Mutex<Seen>>,
    pub inboxes: Arc<[Arc<Inbox>]>,
    pub stats: Arc<[Arc<ShardStats>]>,
    /// Becomes true at shutdown: push streams end so the gRPC server can drain.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Ingress {
    /// Hands one batch to the shards: a room's messages to every shard (each writes to its local
    /// members), a user's to the shard that holds the user.
    pub async fn deliver(&self, mut batch: PushBatch) {
        let repeats = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let rooms: usize = batch.rooms.iter_mut().map(|r| seen.filter(&mut r.bodies, &r.ids)).sum();
            let users: usize = batch.users.iter_mut().map(|u| seen.filter(&mut u.bodies, &u.ids)).sum();
            rooms + users
        };
        if repeats > 0 {
            tracing::debug!(repeats, "messages delivered before were dropped");
        }
        for room in batch.rooms {
            if room.bodies.is_empty() {
                continue;
            }
            let frames = Framed::encode(&room.bodies);
            for inbox in self.inboxes.iter() {
                inbox.push_wait(Command::Room { room_id: room.room_id, frames: frames.clone() }).await;
            }
        }
        for user in batch.users {
            if user.bodies.is_empty() {
                continue;
            }
            let frames = Framed::encode(&user.bodies);
            match self.inboxes.get(user.shard as usize) {
                Some(inbox) => {
                    inbox.push_wait(Command::User { user_id: user.user_id, frames }).await;
                }
                None => {
                    for inbox in self.inboxes.iter() {
                        inbox
                            .push_wait(Command::User { user_id: user.user_id, frames: frames.clone() })
                            .await;
                    }
                }
            }
        }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<PushAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Gateway for Ingress {
    type PushStream = AckStream;

    async fn push(&self, request: Request<Streaming<PushBatch>>) -> Result<Response<AckStream>, Status> {
        let mut batches = request.into_inner();
        let (acks, rx) = mpsc::channel(64);
        let this = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = batches.message() => m,
                    _ = stopping.wait_for(|s| *s) => return,
                };
                match next {
                    Ok(Some(batch)) => {
                        let batch_id = batch.batch_id;
                        this.deliver(batch).await;
                        if acks.send(Ok(PushAck { batch_id })).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "push stream ended");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let shards = self
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| ShardStatsMsg {
                shard: i as u32,
                connections: s.connections.load(Ordering::Relaxed),
                rooms: s.rooms.load(Ordering::Relaxed),
                frames_out: s.frames_out.load(Ordering::Relaxed),
                slow_consumer_closes: s.slow_consumer_closes.load(Ordering::Relaxed),
            })
            .collect();
        Ok(Response::new(StatsReply { gateway_id: self.gateway_id.to_string(), shards }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_within_the_window() {
        let mut seen = Seen::new(2);
        let mut bodies = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        assert_eq!(seen.filter(&mut bodies, &[1, 0, 2]), 0);
        let mut again = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        assert_eq!(seen.filter(&mut again, &[1, 0, 2]), 2, "ids 1 and 2 again; 0 has no id");
        assert_eq!(again, vec![b"b".to_vec()]);
        assert!(seen.first_time(3), "pushes 1 out of the window");
        assert!(seen.first_time(1), "forgotten past the window");
        let mut no_ids = vec![b"x".to_vec()];
        assert_eq!(seen.filter(&mut no_ids, &[]), 0);
        assert_eq!(no_ids.len(), 1);
    }
}
