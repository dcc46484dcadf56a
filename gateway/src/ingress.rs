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

#[derive(Clone)]
pub struct Ingress {
    pub gateway_id: Arc<str>,
    pub inboxes: Arc<[Arc<Inbox>]>,
    pub stats: Arc<[Arc<ShardStats>]>,
    /// Becomes true at shutdown: push streams end so the gRPC server can drain.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Ingress {
    /// Hands one batch to the shards: a room's messages to every shard (each writes to its local
    /// members), a user's to the shard that holds the user.
    pub async fn deliver(&self, batch: PushBatch) {
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
