//! The gRPC `Gateway` service: batches from queue-workers, framed once and handed to the shards.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gochat_proto::gateway::gateway_server::Gateway;
use gochat_proto::gateway::{PushAck, PushBatch, ShardStats as ShardStatsMsg, StatsReply, StatsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Delivery;
use crate::protocol::{close, deflate};
use crate::shard::{Command, Framed, Framings, Inbox, ShardStats};

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

    /// Whether `id` was delivered in an earlier batch (within the window); 0 is "no id".
    fn delivered(&self, id: u64) -> bool {
        id != 0 && self.ids.contains(&id)
    }

    /// Remembers `id` as delivered.
    fn record(&mut self, id: u64) {
        if id == 0 || self.capacity == 0 || !self.ids.insert(id) {
            return;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    /// Drops from one batch the messages delivered by earlier batches, then remembers this
    /// batch's. Within a batch one id legitimately appears several times (a user's message to
    /// each shard holding the user), so a batch is never checked against itself.
    pub fn filter_batch(&mut self, batch: &mut PushBatch) -> usize {
        let mut dropped = 0;
        // Ids and numbers stay beside their bodies: the delivery latency is observed from what
        // is kept, and a joining connection is cut at a number.
        let mut filter = |bodies: &mut Vec<Vec<u8>>, ids: &mut Vec<u64>, seqs: Option<&mut Vec<u64>>| {
            if ids.len() != bodies.len() {
                return;
            }
            let before = bodies.len();
            let keep: Vec<bool> = ids.iter().map(|id| !self.delivered(*id)).collect();
            retain_kept(bodies, &keep);
            retain_kept(ids, &keep);
            if let Some(seqs) = seqs.filter(|s| s.len() == keep.len()) {
                retain_kept(seqs, &keep);
            }
            dropped += before - bodies.len();
        };
        for room in &mut batch.rooms {
            filter(&mut room.bodies, &mut room.ids, Some(&mut room.seqs));
        }
        for user in &mut batch.users {
            filter(&mut user.bodies, &mut user.ids, None);
        }
        filter(&mut batch.everyone, &mut batch.everyone_ids, None);
        let ids: Vec<u64> = batch
            .rooms
            .iter()
            .flat_map(|r| &r.ids)
            .chain(batch.users.iter().flat_map(|u| &u.ids))
            .chain(&batch.everyone_ids)
            .copied()
            .collect();
        ids.into_iter().for_each(|id| self.record(id));
        dropped
    }
}

/// Keeps the items of `v` whose place in `keep` is true.
fn retain_kept<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut k = keep.iter();
    v.retain(|_| *k.next().unwrap_or(&true));
}

#[derive(Clone)]
pub struct Ingress {
    pub gateway_id: Arc<str>,
    pub seen: Arc<std::sync::Mutex<Seen>>,
    pub inboxes: Arc<[Arc<Inbox>]>,
    pub stats: Arc<[Arc<ShardStats>]>,
    pub delivery: Arc<Delivery>,
    /// Becomes true at shutdown: push streams end so the gRPC server can drain.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// `permessage-deflate`, when the gateway offers it.
    pub compression: Option<deflate::Settings>,
}

impl Ingress {
    /// Hands one batch to the shards: a room's messages to every shard (each writes to its local
    /// members), a user's to the shard that holds the user.
    pub async fn deliver(&self, mut batch: PushBatch) {
        let repeats = self.seen.lock().unwrap_or_else(|p| p.into_inner()).filter_batch(&mut batch);
        self.delivery.batches.inc();
        if repeats > 0 {
            self.delivery.duplicates.add(repeats as u64);
            tracing::debug!(repeats, "messages delivered before were dropped");
        }
        // The binary protocol and compression are framed too while any client here uses them.
        let any = |count: fn(&ShardStats) -> &AtomicU64| {
            self.stats.iter().any(|s| count(s).load(Ordering::Relaxed) > 0)
        };
        let framings = Framings {
            binary: any(|s| &s.binary_connections),
            deflate: self.compression.filter(|_| any(|s| &s.deflate_connections)),
        };
        if !batch.everyone.is_empty() {
            let frames = Framed::encode_numbered(&batch.everyone, &[], framings);
            for inbox in self.inboxes.iter() {
                inbox.push_wait(Command::Everyone { frames: frames.copy() }).await;
            }
            self.delivery.handed_off(batch.everyone.len(), &batch.everyone_ids);
        }
        for room in batch.rooms {
            if room.bodies.is_empty() {
                continue;
            }
            let frames = Framed::encode_numbered(&room.bodies, &room.seqs, framings);
            // Each shard its own copy: a member's frame is a reference, counted per member.
            let (last, others) = self.inboxes.split_last().expect("a gateway has a shard");
            for inbox in others {
                inbox.push_wait(Command::Room { room_id: room.room_id, frames: frames.copy() }).await;
            }
            last.push_wait(Command::Room { room_id: room.room_id, frames }).await;
            self.delivery.handed_off(room.bodies.len(), &room.ids);
        }
        for user in batch.users {
            // The shard that holds the user; all of them when it is not one of ours.
            let inboxes = match self.inboxes.get(user.shard as usize) {
                Some(inbox) => std::slice::from_ref(inbox),
                None => &self.inboxes[..],
            };
            if !user.bodies.is_empty() {
                let frames = Framed::encode_numbered(&user.bodies, &[], framings);
                for inbox in inboxes {
                    inbox.push_wait(Command::User { user_id: user.user_id, frames: frames.clone() }).await;
                }
                self.delivery.handed_off(user.bodies.len(), &user.ids);
            }
            if !user.end_sessions.is_empty() {
                for inbox in inboxes {
                    let sessions = user.end_sessions.clone();
                    inbox.push_wait(Command::EndSessions { user_id: user.user_id, sessions }).await;
                }
            }
            for &room_id in &user.leave_rooms {
                for inbox in inboxes {
                    inbox.push_wait(Command::Kick { user_id: user.user_id, room_id }).await;
                }
            }
            if user.close_code != 0 {
                // Checked by control; a code a client must not be sent becomes a policy close.
                let code = u16::try_from(user.close_code)
                    .ok()
                    .filter(|c| gochat_proto::wire::is_app_close_code(*c))
                    .unwrap_or(close::POLICY_VIOLATION);
                for inbox in inboxes {
                    let reason = user.close_reason.clone();
                    inbox.push_wait(Command::Disconnect { user_id: user.user_id, code, reason }).await;
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
                sends: s.sends.load(Ordering::Relaxed),
                slow_consumer_closes: s.slow_consumer_closes.load(Ordering::Relaxed),
                frames_throttled: s.frames_throttled.load(Ordering::Relaxed),
                flood_closes: s.flood_closes.load(Ordering::Relaxed),
                tls_handshake_failures: s.tls_handshake_failures.load(Ordering::Relaxed),
            })
            .collect();
        Ok(Response::new(StatsReply { gateway_id: self.gateway_id.to_string(), shards }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use gochat_proto::gateway::{RoomPush, UserPush};

    fn batch(rooms: &[(u64, &[u64])], users: &[(u64, u32, &[u64])]) -> PushBatch {
        let bodies = |ids: &[u64]| ids.iter().map(|id| id.to_string().into_bytes()).collect();
        PushBatch {
            batch_id: 1,
            rooms: rooms
                .iter()
                .map(|(room_id, ids)| RoomPush {
                    room_id: *room_id,
                    bodies: bodies(ids),
                    ids: ids.to_vec(),
                    seqs: ids.iter().map(|id| id + 100).collect(),
                })
                .collect(),
            users: users
                .iter()
                .map(|(user_id, shard, ids)| UserPush {
                    user_id: *user_id,
                    shard: *shard,
                    bodies: bodies(ids),
                    ids: ids.to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn repeats_of_earlier_batches_are_dropped_within_the_window() {
        let mut seen = Seen::new(3);
        // One private message to a user on two shards: both copies belong to this batch.
        let mut first = batch(&[(7, &[1, 0, 2])], &[(9, 0, &[3]), (9, 1, &[3])]);
        assert_eq!(seen.filter_batch(&mut first), 0);
        assert_eq!(first.users[1].bodies.len(), 1, "the second shard's copy is kept");
        let mut again = batch(&[(7, &[1, 0, 2])], &[(9, 1, &[3])]);
        assert_eq!(seen.filter_batch(&mut again), 3, "ids 1, 2 and 3 again; 0 has no id");
        assert_eq!(again.rooms[0].bodies, vec![b"0".to_vec()]);
        assert_eq!(again.rooms[0].seqs, [100], "numbers follow their bodies");
        assert_eq!(again.rooms[0].ids, [0], "ids stay beside their bodies");
        assert!(again.users[0].ids.is_empty());
        let mut later = batch(&[(7, &[4])], &[]);
        assert_eq!(seen.filter_batch(&mut later), 0);
        let mut old = batch(&[(7, &[1])], &[]);
        assert_eq!(seen.filter_batch(&mut old), 0, "1 fell out of a window of 3");
        let mut no_ids = PushBatch {
            rooms: vec![RoomPush { room_id: 1, bodies: vec![b"x".to_vec()], ids: vec![], seqs: vec![] }],
            ..Default::default()
        };
        assert_eq!(seen.filter_batch(&mut no_ids), 0);
    }
}
