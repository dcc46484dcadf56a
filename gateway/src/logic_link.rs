//! Carries the shards' effects to logic over gRPC and the answers back to the shards' inboxes.
//! Runs on the gateway's tokio runtime, so shard threads never wait on the network.

use std::sync::Arc;
use std::time::Duration;

use gochat_proto::logic::logic_client::LogicClient;
use gochat_proto::logic::{
    self as pb, AckBatch, ConnCloseRequest, ConnOpenBatch, ConnOpenRequest, GatewayLeaseRequest,
    RoomJoinRequest, RoomLeaveRequest, RoomPosition, SendRoomRequest,
};
use gochat_proto::wire::Position;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

use crate::protocol::close;
use crate::shard::{AuthRefused, AuthedUser, Command, Effect, Inbox, JoinAnswer, ShardStats};

/// Room sends from sockets waiting for logic; past this, senders are told to slow down.
const ROOM_SEND_BACKLOG: usize = 1024;
/// Authentication calls in flight to logic per gateway, each carrying the sockets that were
/// waiting (at most `AUTH_BATCH`). More wait here, in order, rather than pile onto logic: a flood
/// of calls that time out (and are cancelled) only slows it further.
const AUTH_CALLS_IN_FLIGHT: usize = 8;
const AUTH_BATCH: usize = 128;
/// What one authentication call may carry, in bytes of tokens and positions: far below the
/// 4 MiB a gRPC message may have, so no mix of clients' input can fail a call (and with it
/// the other sockets in it). Tokens are bounded before they get here
/// ([`gochat_proto::wire::MAX_TOKEN_BYTES`]); this bound holds whatever that bound becomes.
const AUTH_BATCH_BYTES: usize = 256 * 1024;
/// Largest answer taken from logic. A `ConnOpen` answer carries, per socket, what it missed
/// in its room and a chunk of kept messages (64 KiB each at most, plus one message): up to
/// ~19 MiB for a batch of `AUTH_BATCH` sockets, past gRPC's default 4 MiB. Control bounds each
/// part, so the sum is allowed in full: one user's kept messages must never fail the call other
/// users' sockets are in.
pub const ANSWER_MAX_BYTES: usize = 32 << 20;
/// How long a call is tried again while it finds its control unavailable (from 50 ms apart,
/// doubling up to a second): a little longer than discovery takes to drop a control that died
/// (its lease, 5 s by default). Until then the balanced channel may keep choosing it: a dead
/// peer fails at once, so it looks the least loaded.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(7);
/// Acknowledgements waiting for logic; past this they are dropped (the messages stay kept
/// and reach the user again: at least once).
const ACK_BACKLOG: usize = 4096;
/// Acknowledgements per call.
const ACK_BATCH: usize = 256;
/// Ordered lanes joins and leaves go to logic over: a connection's always take the same one.
const MEMBERSHIP_LANES: usize = 64;
/// Connection closes in flight to logic per gateway. A mass disconnect (a network blip at the
/// edge, clients starved of CPU, a drain) queues the rest as ids, 8 bytes each: a call (and
/// its retries) per connection at once swamped control with tens of thousands of streams per
/// gateway, failed the closes (leaving users online) and held hundreds of MB in their futures.
const CLOSES_IN_FLIGHT: usize = 32;

/// The lane of a connection's joins and leaves.
fn lane_of(conn_id: u64) -> usize {
    // Connection ids carry their shard and process in the high bits and count up below.
    (conn_id % MEMBERSHIP_LANES as u64) as usize
}

/// A socket waiting for logic's answer to its auth frame: its key in its shard, and its part
/// of a `ConnOpen` call (which names the shard and the connection).
struct PendingAuth {
    key: u32,
    request: ConnOpenRequest,
}

impl PendingAuth {
    /// About what it adds to a `ConnOpen` call.
    fn size(&self) -> usize {
        64 + self.request.token.len() + self.request.since.as_ref().map_or(0, |p| p.epoch.len())
    }
}

/// Acknowledged private messages on their way to logic, from connection `key` of `shard`.
struct PendingAck {
    shard: u32,
    key: u32,
    conn_id: u64,
    ack: pb::Ack,
}

#[derive(Clone)]
struct Link {
    logic: LogicClient<Channel>,
    gateway_id: Arc<str>,
    inboxes: Arc<[Arc<Inbox>]>,
    auths: Arc<tokio::sync::Semaphore>,
    /// Connections to tell logic are gone ([`Link::send_closes`]).
    closes: mpsc::UnboundedSender<u64>,
}

/// Runs until every effect sender (the shards) is gone, then until the acknowledgements it
/// holds are with logic: a kept message written to a client must not come to it again after
/// this gateway stopped.
pub async fn run(
    mut effects: mpsc::UnboundedReceiver<(u32, Effect)>,
    logic: LogicClient<Channel>,
    gateway_id: Arc<str>,
    inboxes: Arc<[Arc<Inbox>]>,
) {
    let (closes, closed) = mpsc::unbounded_channel();
    let link = Link {
        logic,
        gateway_id,
        inboxes,
        auths: Arc::new(tokio::sync::Semaphore::new(AUTH_CALLS_IN_FLIGHT)),
        closes,
    };
    tokio::spawn(link.clone().send_closes(closed));
    let (auths, waiting) = mpsc::unbounded_channel();
    tokio::spawn(link.clone().batch_auths(waiting));
    // Room sends go through one queue, in order, so a client's messages keep their order.
    let (room_sends, backlog) = mpsc::channel(ROOM_SEND_BACKLOG);
    tokio::spawn(link.clone().send_rooms(backlog));
    let (acks, ack_backlog) = mpsc::channel(ACK_BACKLOG);
    let acks_sent = tokio::spawn(link.clone().send_acks(ack_backlog));
    // A connection's joins and leaves go to logic one after the other, in the order it made
    // them (a leave then a join of the same room, taken the other way round, would leave logic
    // without the membership the shard has); different connections' go in parallel, over lanes.
    let lanes: Vec<mpsc::UnboundedSender<(u32, Effect)>> = (0..MEMBERSHIP_LANES)
        .map(|_| {
            let (lane, changes) = mpsc::unbounded_channel();
            tokio::spawn(link.clone().membership(changes));
            lane
        })
        .collect();
    while let Some((shard, effect)) = effects.recv().await {
        match effect {
            Effect::Auth { key, conn_id, token, room_id, since, acks } => {
                let gateway_id = link.gateway_id.to_string();
                let since = since.map(RoomPosition::from);
                let request = ConnOpenRequest { token, room_id, gateway_id, shard, conn_id, since, acks };
                let _ = auths.send(PendingAuth { key, request });
            }
            Effect::Closed { conn_id } => {
                let _ = link.closes.send(conn_id);
            }
            membership @ (Effect::Join { conn_id, .. } | Effect::Leave { conn_id, .. }) => {
                let _ = lanes[lane_of(conn_id)].send((shard, membership));
            }
            Effect::Ack { key, conn_id, user_id, ids, more } => {
                let ack = PendingAck { shard, key, conn_id, ack: pb::Ack { user_id, ids, more } };
                if acks.try_send(ack).is_err() {
                    tracing::warn!(
                        user_id,
                        "acknowledgements backlogged: one dropped (its messages stay kept)"
                    );
                }
            }
            send @ Effect::RoomSend { .. } => {
                if let Err(mpsc::error::TrySendError::Full((shard, Effect::RoomSend { key, conn_id, .. }))) =
                    room_sends.try_send((shard, send))
                {
                    link.notice(shard, key, conn_id, "sending too fast: message dropped").await;
                }
            }
        }
    }
    drop(acks);
    let _ = acks_sent.await;
}

/// Renews this gateway's lease in logic, a third of its lifetime before it runs out. When logic
/// says the lease was gone, it took this gateway for dead and forgot its connections: every
/// shard then closes its connections ([`close::SERVICE_RESTART`]) so clients reconnect and are
/// routable again.
/// Each renewal carries the version and the open connections, for the server API's `info`.
/// `leased` says whether the last renewal went through.
pub async fn keep_lease(
    mut logic: LogicClient<Channel>,
    gateway_id: Arc<str>,
    inboxes: Arc<[Arc<Inbox>]>,
    stats: Arc<[Arc<ShardStats>]>,
    leased: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut first = true;
    loop {
        let connections =
            stats.iter().map(|s| s.connections.load(std::sync::atomic::Ordering::Relaxed)).sum();
        let req = GatewayLeaseRequest {
            gateway_id: gateway_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            connections,
        };
        let renewed = logic.gateway_lease(req).await;
        leased.store(renewed.is_ok(), std::sync::atomic::Ordering::Relaxed);
        let every = match renewed {
            Ok(reply) => {
                let reply = reply.into_inner();
                if !reply.known && !first {
                    tracing::warn!(
                        "logic had taken this gateway for dead (lease expired); closing every connection so clients reconnect"
                    );
                    for inbox in inboxes.iter() {
                        inbox.push_wait(Command::CloseAll).await;
                    }
                }
                first = false;
                Duration::from_millis(reply.ttl_ms / 3).max(Duration::from_millis(100))
            }
            Err(status) => {
                tracing::warn!(%status, "gateway lease not renewed; retrying");
                Duration::from_millis(500)
            }
        };
        tokio::time::sleep(every).await;
    }
}

impl Link {
    /// Sends the sockets waiting for authentication to logic together, a call per batch, with
    /// at most `AUTH_CALLS_IN_FLIGHT` calls at once.
    async fn batch_auths(self, mut waiting: mpsc::UnboundedReceiver<PendingAuth>) {
        while let Some(first) = waiting.recv().await {
            let mut next = Some(first);
            while let Some(first) = next.take() {
                let Ok(permit) = self.auths.clone().acquire_owned().await else { return };
                let batch;
                (batch, next) = take_batch(first, &mut waiting);
                let link = self.clone();
                tokio::spawn(async move {
                    link.auth(batch).await;
                    drop(permit);
                });
            }
        }
    }

    async fn auth(self, batch: Vec<PendingAuth>) {
        let requests: Vec<ConnOpenRequest> = batch.iter().map(|a| a.request.clone()).collect();
        // A control that died leaves calls on its connection failing as unavailable; the
        // balanced channel sends a retry to a live one (opening a connection is idempotent).
        let batch_req = ConnOpenBatch { requests };
        let answer = retry_unavailable(|| {
            let (mut logic, req) = (self.logic.clone(), batch_req.clone());
            async move { logic.conn_open(req).await }
        })
        .await;
        let results: Vec<Result<Box<AuthedUser>, AuthRefused>> = match answer {
            Ok(reply) if reply.get_ref().results.len() == batch.len() => reply
                .into_inner()
                .results
                .into_iter()
                .map(|r| AuthedUser::try_from(r).map(Box::new).map_err(|status| auth_refusal(&status)))
                .collect(),
            Ok(_) => {
                let refusal = refused(close::INTERNAL_ERROR, "logic answered a different count");
                batch.iter().map(|_| Err(refusal.clone())).collect()
            }
            Err(status) => {
                let refusal = auth_refusal(&status);
                if refusal.close_code != close::POLICY_VIOLATION {
                    // One line per call, not per socket: a call carries up to AUTH_BATCH.
                    tracing::warn!(%status, sockets = batch.len(), "logic unavailable for socket auths");
                }
                batch.iter().map(|_| Err(refusal.clone())).collect()
            }
        };
        for (a, result) in batch.into_iter().zip(results) {
            let (key, shard, conn_id) = (a.key, a.request.shard, a.request.conn_id);
            if matches!(&result, Err(r) if r.close_code != close::POLICY_VIOLATION) {
                // Logic may have recorded the connection before failing or timing out: undo it.
                let _ = self.closes.send(conn_id);
            }
            if let Some(inbox) = self.inboxes.get(shard as usize) {
                inbox.push_wait(Command::AuthDone { key, conn_id, result }).await;
            }
        }
    }

    /// Tells logic of the connections that closed, [`CLOSES_IN_FLIGHT`] at a time, in the order
    /// they closed.
    async fn send_closes(self, mut closed: mpsc::UnboundedReceiver<u64>) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(CLOSES_IN_FLIGHT));
        while let Some(conn_id) = closed.recv().await {
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
            let link = self.clone();
            tokio::spawn(async move {
                link.closed(conn_id).await;
                drop(permit);
            });
        }
    }

    /// Tells logic a connection is gone, retrying while logic is away: a lost close would leave
    /// the user online.
    async fn closed(mut self, conn_id: u64) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            let req = ConnCloseRequest { gateway_id: self.gateway_id.to_string(), conn_id };
            match self.logic.conn_close(req).await {
                Ok(_) => return,
                Err(status) if attempt < 12 => {
                    tracing::debug!(conn_id, %status, attempt, "connection close not taken yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(status) => {
                    tracing::warn!(conn_id, %status, "logic never took a connection close");
                    return;
                }
            }
        }
    }

    async fn send_rooms(mut self, mut backlog: mpsc::Receiver<(u32, Effect)>) {
        while let Some((shard, effect)) = backlog.recv().await {
            let Effect::RoomSend { key, conn_id, user_id, room_id, msg } = effect else { continue };
            let req = SendRoomRequest { from_user_id: user_id, room_id, msg };
            if let Err(status) = self.logic.send_room(req).await {
                let message = match status.code() {
                    Code::InvalidArgument | Code::NotFound => status.message().to_string(),
                    _ => {
                        tracing::warn!(user_id, room_id, %status, "room send from a socket failed");
                        "message not sent: service unavailable, try again".to_string()
                    }
                };
                self.notice(shard, key, conn_id, &message).await;
            }
        }
    }

    /// Joins a live socket to another room and hands the shard logic's answer.
    async fn join(
        self,
        shard: u32,
        key: u32,
        conn_id: u64,
        user_id: u64,
        room_id: u64,
        since: Option<Position>,
    ) {
        let req = RoomJoinRequest {
            gateway_id: self.gateway_id.to_string(),
            conn_id,
            user_id,
            room_id,
            since: since.map(RoomPosition::from),
        };
        let answer = retry_unavailable(|| {
            let (mut logic, req) = (self.logic.clone(), req.clone());
            async move { logic.room_join(req).await }
        })
        .await;
        let result = match answer {
            Ok(joined) => Ok(Box::new(JoinAnswer::from(joined.into_inner()))),
            Err(status) => Err(match status.code() {
                Code::InvalidArgument | Code::NotFound => status.message().to_string(),
                _ => {
                    tracing::warn!(room_id, %status, "room join from a socket failed");
                    format!("joining room {room_id} failed: service unavailable, try again")
                }
            }),
        };
        if let Some(inbox) = self.inboxes.get(shard as usize) {
            inbox.push_wait(Command::JoinDone { key, conn_id, room_id, result }).await;
        }
    }

    /// Tells logic a socket left a room, retrying while logic is away (a lost leave would keep
    /// the user in the room).
    /// Carries out one lane's joins and leaves, each after the one before.
    async fn membership(self, mut changes: mpsc::UnboundedReceiver<(u32, Effect)>) {
        while let Some((shard, change)) = changes.recv().await {
            match change {
                Effect::Join { key, conn_id, user_id, room_id, since } => {
                    self.clone().join(shard, key, conn_id, user_id, room_id, since).await
                }
                Effect::Leave { conn_id, room_id } => self.clone().leave(conn_id, room_id).await,
                _ => {}
            }
        }
    }

    async fn leave(self, conn_id: u64, room_id: u64) {
        let req = RoomLeaveRequest { gateway_id: self.gateway_id.to_string(), conn_id, room_id };
        let done = retry_unavailable(|| {
            let (mut logic, req) = (self.logic.clone(), req.clone());
            async move { logic.room_leave(req).await }
        })
        .await;
        if let Err(status) = done {
            tracing::warn!(conn_id, room_id, %status, "logic did not take a room leave");
        }
    }

    /// Sends acknowledgements to logic in batches, and the next kept messages logic answers to
    /// the connections that asked for more.
    async fn send_acks(self, mut backlog: mpsc::Receiver<PendingAck>) {
        while let Some(first) = backlog.recv().await {
            let mut batch = vec![first];
            while batch.len() < ACK_BATCH {
                match backlog.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let req = AckBatch { acks: batch.iter().map(|a| a.ack.clone()).collect() };
            let answer = retry_unavailable(|| {
                let (mut logic, req) = (self.logic.clone(), req.clone());
                async move { logic.ack(req).await }
            })
            .await;
            let replies = match answer {
                Ok(r) => r.into_inner().pending,
                Err(status) => {
                    // The messages stay kept and reach the user again.
                    tracing::warn!(%status, acks = batch.len(), "acknowledgements not taken");
                    continue;
                }
            };
            for (ack, pending) in batch.into_iter().zip(replies).filter(|(a, _)| a.ack.more) {
                if let Some(inbox) = self.inboxes.get(ack.shard as usize) {
                    let (key, conn_id) = (ack.key, ack.conn_id);
                    inbox.push_wait(Command::Kept { key, conn_id, kept: pending.into() }).await;
                }
            }
        }
    }

    async fn notice(&self, shard: u32, key: u32, conn_id: u64, message: &str) {
        if let Some(inbox) = self.inboxes.get(shard as usize) {
            inbox.push_wait(Command::Notice { key, conn_id, message: message.to_string() }).await;
        }
    }
}

/// The sockets of one `ConnOpen` call: `first` and those waiting behind it, in order, up to
/// `AUTH_BATCH` of them and `AUTH_BATCH_BYTES`; the one that would go past the bytes is handed
/// back to start the next call.
fn take_batch(
    first: PendingAuth,
    waiting: &mut mpsc::UnboundedReceiver<PendingAuth>,
) -> (Vec<PendingAuth>, Option<PendingAuth>) {
    let mut bytes = first.size();
    let mut batch = vec![first];
    while batch.len() < AUTH_BATCH {
        match waiting.try_recv() {
            Ok(a) if bytes + a.size() > AUTH_BATCH_BYTES => return (batch, Some(a)),
            Ok(a) => {
                bytes += a.size();
                batch.push(a);
            }
            Err(_) => break,
        }
    }
    (batch, None)
}

/// Runs `call` again while no control answers it, for up to [`UNAVAILABLE_FOR`]: a control
/// that died leaves calls failing so (refused, or cut off when its connection broke under a
/// call), and the balanced channel sends a retry to a live one once discovery has dropped it.
/// Only for calls that are safe to repeat.
async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let give_up = tokio::time::Instant::now() + UNAVAILABLE_FOR;
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Err(status) if no_answer(&status) && tokio::time::Instant::now() + delay < give_up => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}

/// Whether a call failed without a control's answer: unavailable, or the transport failed
/// under it (cancelled, broken pipe: such errors carry the transport's error as their source).
fn no_answer(status: &tonic::Status) -> bool {
    status.code() == Code::Unavailable
        || std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

fn refused(close_code: u16, message: &str) -> AuthRefused {
    AuthRefused { close_code, message: message.to_string() }
}

/// Maps logic's answer to what the client is told: a bad token is a policy close
/// ([`close::POLICY_VIOLATION`]); an unreachable or failing logic asks the client to try again
/// ([`close::TRY_AGAIN_LATER`]).
fn auth_refusal(status: &tonic::Status) -> AuthRefused {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound => {
            refused(close::POLICY_VIOLATION, status.message())
        }
        _ => refused(close::TRY_AGAIN_LATER, "authentication service unavailable, try again"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_call_carries_a_bounded_number_of_bytes_whatever_the_tokens() {
        let (tx, mut waiting) = mpsc::unbounded_channel();
        let pending = |conn_id, token_len| PendingAuth {
            key: 0,
            request: ConnOpenRequest {
                token: "t".repeat(token_len),
                room_id: 1,
                gateway_id: String::new(),
                shard: 0,
                conn_id,
                since: None,
                acks: false,
            },
        };
        // Large tokens among small ones: 300 sockets waiting at once.
        for conn_id in 0..300 {
            tx.send(pending(conn_id, if conn_id % 3 == 0 { 48 } else { 40_000 })).unwrap();
        }
        let mut next = waiting.try_recv().ok();
        let mut seen = Vec::new();
        while let Some(first) = next.take() {
            let batch;
            (batch, next) = take_batch(first, &mut waiting);
            let bytes: usize = batch.iter().map(PendingAuth::size).sum();
            assert!(bytes <= AUTH_BATCH_BYTES, "a call of {bytes} bytes");
            assert!(!batch.is_empty() && batch.len() <= AUTH_BATCH);
            seen.extend(batch.iter().map(|a| a.request.conn_id));
            if next.is_none() {
                next = waiting.try_recv().ok();
            }
        }
        assert_eq!(seen, (0..300).collect::<Vec<_>>(), "every socket once, in order");
        // Small tokens still go 128 to a call.
        for conn_id in 0..200 {
            tx.send(pending(conn_id, 48)).unwrap();
        }
        let first = waiting.try_recv().unwrap();
        assert_eq!(take_batch(first, &mut waiting).0.len(), AUTH_BATCH);
    }

    /// A logic service that only records joins, leaves and closes, a join taking longer than a
    /// leave; and how many closes it had at once, at most.
    #[derive(Default, Clone)]
    struct Membership {
        log: Arc<std::sync::Mutex<Vec<String>>>,
        closing: Arc<AtomicUsize>,
        most_closing: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl gochat_proto::logic::logic_server::Logic for Membership {
        async fn room_join(
            &self,
            req: tonic::Request<RoomJoinRequest>,
        ) -> Result<tonic::Response<pb::Joined>, tonic::Status> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = req.into_inner();
            self.log.lock().unwrap().push(format!("join {} {}", r.conn_id, r.room_id));
            Ok(tonic::Response::new(pb::Joined::default()))
        }
        async fn room_leave(
            &self,
            req: tonic::Request<RoomLeaveRequest>,
        ) -> Result<tonic::Response<pb::RoomLeaveReply>, tonic::Status> {
            let r = req.into_inner();
            self.log.lock().unwrap().push(format!("leave {} {}", r.conn_id, r.room_id));
            Ok(tonic::Response::new(pb::RoomLeaveReply {}))
        }
        async fn conn_open(
            &self,
            _: tonic::Request<ConnOpenBatch>,
        ) -> Result<tonic::Response<pb::ConnOpenResults>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn conn_close(
            &self,
            req: tonic::Request<ConnCloseRequest>,
        ) -> Result<tonic::Response<pb::ConnCloseReply>, tonic::Status> {
            let now = self.closing.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_closing.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.log.lock().unwrap().push(format!("close {}", req.into_inner().conn_id));
            self.closing.fetch_sub(1, Ordering::SeqCst);
            Ok(tonic::Response::new(pb::ConnCloseReply::default()))
        }
        async fn check_auth(
            &self,
            _: tonic::Request<pb::CheckAuthRequest>,
        ) -> Result<tonic::Response<pb::User>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn get_user(
            &self,
            _: tonic::Request<pb::GetUserRequest>,
        ) -> Result<tonic::Response<pb::User>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn send_room(
            &self,
            _: tonic::Request<SendRoomRequest>,
        ) -> Result<tonic::Response<pb::SendReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn route(
            &self,
            _: tonic::Request<pb::RouteRequest>,
        ) -> Result<tonic::Response<pb::RouteReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn gateway_reset(
            &self,
            _: tonic::Request<pb::GatewayResetRequest>,
        ) -> Result<tonic::Response<pb::ConnCloseReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn gateway_lease(
            &self,
            _: tonic::Request<GatewayLeaseRequest>,
        ) -> Result<tonic::Response<pb::GatewayLeaseReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn ack(
            &self,
            _: tonic::Request<AckBatch>,
        ) -> Result<tonic::Response<pb::AckReplies>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
        async fn worker_report(
            &self,
            _: tonic::Request<pb::NodeReport>,
        ) -> Result<tonic::Response<pb::NodeReportReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    /// A link to `logic` served on loopback; its effects sender.
    async fn link_to(logic: &Membership) -> mpsc::UnboundedSender<(u32, Effect)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = gochat_proto::logic::logic_server::LogicServer::new(logic.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = gochat_runtime::peers::channel(&format!("http://{addr}")).unwrap();
        let inbox = Arc::new(Inbox::new(64).unwrap());
        let (effects, effects_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(effects_rx, LogicClient::new(channel), "g".into(), Arc::new([inbox])));
        effects
    }

    #[tokio::test]
    async fn a_mass_disconnect_reaches_logic_whole_a_bounded_number_at_a_time() {
        let logic = Membership::default();
        let effects = link_to(&logic).await;
        for conn_id in 0..2000 {
            effects.send((0, Effect::Closed { conn_id })).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while logic.log.lock().unwrap().len() < 2000 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut closed: Vec<u64> = logic
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.strip_prefix("close ").unwrap().parse().unwrap())
            .collect();
        closed.sort_unstable();
        assert_eq!(closed, (0..2000).collect::<Vec<_>>(), "every close, once");
        let most = logic.most_closing.load(Ordering::SeqCst);
        assert!((2..=CLOSES_IN_FLIGHT).contains(&most), "{most} closes at once");
    }

    #[tokio::test]
    async fn a_connections_joins_and_leaves_reach_logic_in_the_order_it_made_them() {
        let logic = Membership::default();
        let effects = link_to(&logic).await;
        // Each connection joins a room (slow at logic) and leaves it right after (fast).
        for conn_id in [5, 6] {
            let join = Effect::Join { key: 0, conn_id, user_id: 1, room_id: 7, since: None };
            effects.send((0, join)).unwrap();
            effects.send((0, Effect::Leave { conn_id, room_id: 7 })).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while logic.log.lock().unwrap().len() < 4 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = logic.log.lock().unwrap().clone();
        for conn_id in [5, 6] {
            let of_conn: Vec<&String> = seen.iter().filter(|s| s.contains(&format!(" {conn_id} "))).collect();
            assert_eq!(of_conn, [&format!("join {conn_id} 7"), &format!("leave {conn_id} 7")], "{seen:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_control_is_tried_until_discovery_has_dropped_it() {
        // Calls reach the dead control for as long as its lease lives (5 s), then a live one.
        let started = tokio::time::Instant::now();
        let calls = AtomicUsize::new(0);
        let answer = retry_unavailable(|| {
            calls.fetch_add(1, Ordering::Relaxed);
            let dead = started.elapsed() < Duration::from_secs(5);
            async move {
                if dead {
                    Err(tonic::Status::unavailable("connection refused"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(answer.is_ok(), "given up before the lease ran out");
        assert!(calls.load(Ordering::Relaxed) < 15, "spaced out, not a busy loop");
        let gave_up = retry_unavailable(|| async { Err::<(), _>(tonic::Status::unavailable("down")) }).await;
        assert_eq!(gave_up.unwrap_err().code(), Code::Unavailable);
        assert!(started.elapsed() < Duration::from_secs(5) + UNAVAILABLE_FOR + Duration::from_secs(1));
        let refused =
            retry_unavailable(|| async { Err::<(), _>(tonic::Status::unauthenticated("bad token")) });
        let before = tokio::time::Instant::now();
        assert_eq!(refused.await.unwrap_err().code(), Code::Unauthenticated);
        assert_eq!(before.elapsed(), Duration::ZERO, "other failures are not retried");
    }
}
