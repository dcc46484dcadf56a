//! Rolling upgrades: roles one version apart work together. These tests act as the previous
//! release's gateway and worker — with its message types (`gochat-proto-previous`, compiled from
//! `proto/previous/`), over real gRPC — against the current control, gateway and worker, and
//! call every method one role calls on another. (That proto changes only add is checked in
//! `proto/previous`.)

use crate::common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use common::{post, test_config, unique, End, RedisPrefix, User, Ws, WAIT};
use futures_util::{Stream, StreamExt};
use gochat::roles::WorkerHandle;
use gochat_control::Control;
use gochat_gateway::Gateway;
use gochat_proto::wire;
use gochat_proto_previous::gateway::gateway_client::GatewayClient;
use gochat_proto_previous::gateway::gateway_server::{Gateway as GatewayService, GatewayServer};
use gochat_proto_previous::gateway::{PushAck, PushBatch, RoomPush, StatsReply, StatsRequest, UserPush};
use gochat_proto_previous::logic::logic_client::LogicClient;
use gochat_proto_previous::logic::{
    Ack, AckBatch, CheckAuthRequest, ConnCloseRequest, ConnOpenBatch, ConnOpenRequest, GatewayLeaseRequest,
    GatewayResetRequest, GetUserRequest, RoomJoinRequest, RoomLeaveRequest, RouteRequest, SendRoomRequest,
    ShardAddress,
};
use gochat_proto_previous::queue::queue_message::Target;
use gochat_proto_previous::queue::QueueMessage;
use gochat_queue::{MemoryQueue, Queue, RedisQueue, RedisQueueConfig};
use gochat_queue_worker::gateways::GatewayAddr;
use gochat_queue_worker::Worker;
use gochat_test_services::{require, Service};
use prost::Message as _;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

const OLD_GATEWAY: &str = "gateway-previous";
const ROOM: u64 = 31;
const OTHER_ROOM: u64 = 32;

async fn register(api: &str, prefix: &str) -> User {
    let name = unique(prefix);
    let r = post(api, "/user/register", json!({"userName": name, "passWord": "secret-1"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let token = r["data"].as_str().unwrap().to_string();
    let auth = post(api, "/user/checkAuth", json!({"authToken": token})).await;
    User { token, id: auth["data"]["userId"].as_u64().unwrap(), name }
}

async fn api_ok(api: &str, path: &str, body: Value) {
    let r = post(api, path, body).await;
    assert_eq!(r["code"], 0, "{path}: {r}");
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("bodies are JSON")
}

/// The previous release's gateway service: hands each batch to the test and acknowledges it.
struct OldGateway {
    batches: mpsc::UnboundedSender<PushBatch>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<PushAck, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayService for OldGateway {
    type PushStream = AckStream;

    async fn push(&self, req: Request<Streaming<PushBatch>>) -> Result<Response<AckStream>, Status> {
        let batches = self.batches.clone();
        let acks = req.into_inner().map(move |batch| {
            let batch = batch?;
            let batch_id = batch.batch_id;
            let _ = batches.send(batch);
            Ok(PushAck { batch_id })
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        Ok(Response::new(StatsReply { gateway_id: OLD_GATEWAY.into(), shards: Vec::new() }))
    }
}

/// Batches pushed to the previous-version gateway.
struct Batches(mpsc::UnboundedReceiver<PushBatch>);

impl Batches {
    /// What `find` returns of the first batch it returns something for.
    async fn find<T>(&mut self, what: &str, mut find: impl FnMut(&PushBatch) -> Option<T>) -> T {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let batch = self.0.recv().await.expect("the gateway service runs");
                if let Some(t) = find(&batch) {
                    return t;
                }
            }
        });
        found.await.unwrap_or_else(|_| panic!("no batch with {what} in time"))
    }

    /// The body with `msg` pushed to `room`, with its id and number in the room.
    async fn room(&mut self, room: u64, msg: &str) -> (Value, u64, u64) {
        self.find(&format!("{msg:?} for room {room}"), |b| {
            b.rooms.iter().filter(|r| r.room_id == room).find_map(|r| {
                let i = r.bodies.iter().position(|body| json_of(body)["msg"] == msg)?;
                Some((json_of(&r.bodies[i]), r.ids[i], r.seqs[i]))
            })
        })
        .await
    }

    /// The body with `msg` pushed to `user` on `shard`, with its id.
    async fn user(&mut self, user: u64, shard: u32, msg: &str) -> (Value, u64) {
        self.find(&format!("{msg:?} for user {user}"), |b| {
            b.users.iter().filter(|u| u.user_id == user && u.shard == shard).find_map(|u| {
                let i = u.bodies.iter().position(|body| json_of(body)["msg"] == msg)?;
                Some((json_of(&u.bodies[i]), u.ids[i]))
            })
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_version_gateway_authenticates_sockets_and_receives_batches() {
    let cfg = test_config();
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new(10_000));
    let control = Control::start(cfg.control.clone(), queue.clone()).await.expect("control starts");
    let api = format!("http://{}", control.api_addr);

    // The previous-version gateway's Push service, and a current worker pushing to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GatewayServer::new(OldGateway { batches: tx }))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let mut batches = Batches(rx);
    let mut worker_cfg = cfg.worker.clone();
    worker_cfg.logic = format!("http://{}", control.grpc_addr);
    worker_cfg.gateways = vec![GatewayAddr { id: OLD_GATEWAY.into(), grpc }];
    let worker = Worker::new(worker_cfg, queue.clone()).expect("a worker");
    let worker = WorkerHandle::start(worker, None).await.expect("the worker starts");

    // Starting, the gateway clears what logic held for it, then takes its lease.
    let mut logic = LogicClient::connect(format!("http://{}", control.grpc_addr)).await.unwrap();
    let gateway_id = || OLD_GATEWAY.to_string();
    logic.gateway_reset(GatewayResetRequest { gateway_id: gateway_id() }).await.expect("GatewayReset");
    let lease = logic.gateway_lease(GatewayLeaseRequest { gateway_id: gateway_id() }).await.unwrap();
    assert_eq!(lease.get_ref().ttl_ms, cfg.control.gateway_lease_secs * 1000);
    assert!(!lease.get_ref().known, "a new gateway's lease is new");
    let renewed = logic.gateway_lease(GatewayLeaseRequest { gateway_id: gateway_id() }).await.unwrap();
    assert!(renewed.get_ref().known, "then renewed");

    // Sockets authenticate, several to a call: a good token, a forged one, another user's.
    let (alice, bob) = (register(&api, "alice").await, register(&api, "bob").await);
    let open = |conn_id, token: &str, shard, acks| ConnOpenRequest {
        token: token.to_string(),
        room_id: ROOM,
        gateway_id: gateway_id(),
        shard,
        conn_id,
        since: None,
        acks,
    };
    let requests =
        vec![open(1, &alice.token, 0, false), open(2, "forged", 0, false), open(3, &bob.token, 1, true)];
    let results = logic.conn_open(ConnOpenBatch { requests }).await.expect("ConnOpen").into_inner().results;
    assert_eq!(results.len(), 3, "one answer per socket");
    let user = results[0].user.clone().expect("alice authenticated");
    assert_eq!((user.user_id, user.user_name.as_str(), results[0].code), (alice.id, alice.name.as_str(), 0));
    let position = results[0].joined.as_ref().and_then(|j| j.position.clone());
    assert!(position.is_some(), "the room keeps history: its position: {:?}", results[0]);
    assert!(results[1].user.is_none(), "a forged token is refused");
    assert_eq!(results[1].code, Code::Unauthenticated as i32);
    assert!(!results[1].message.is_empty());
    assert_eq!(results[2].user.as_ref().map(|u| u.user_id), Some(bob.id));

    // A room message over the REST API and one from a socket reach the gateway, numbered.
    api_ok(&api, "/push/pushRoom", json!({"authToken": alice.token, "roomId": ROOM, "msg": "over REST"}))
        .await;
    let (body, id, seq) = batches.room(ROOM, "over REST").await;
    assert_eq!((body["op"].as_i64(), body["fromUserName"].as_str()), (Some(3), Some(alice.name.as_str())));
    assert!(id != 0 && seq >= 1, "id {id}, seq {seq}");
    let send = SendRoomRequest { from_user_id: alice.id, room_id: ROOM, msg: "from a socket".into() };
    logic.send_room(send).await.expect("SendRoom");
    let (_, _, next) = batches.room(ROOM, "from a socket").await;
    assert_eq!(next, seq + 1);
    // A socket that asks from the room's position recovers what came since.
    let recovering = ConnOpenRequest { since: position, ..open(6, &alice.token, 0, false) };
    let results = logic.conn_open(ConnOpenBatch { requests: vec![recovering] }).await.unwrap().into_inner();
    let joined = results.results[0].joined.clone().expect("joined");
    assert_eq!(joined.recovered, Some(true));
    let missed: Vec<Value> = joined.bodies.iter().map(|b| json_of(b)).collect();
    assert!(
        missed.iter().any(|b| b["msg"] == "over REST") && missed.iter().any(|b| b["msg"] == "from a socket")
    );
    logic.conn_close(ConnCloseRequest { gateway_id: gateway_id(), conn_id: 6 }).await.expect("ConnClose");

    // A private message to bob goes to his shard, and stays kept until his socket acknowledges it.
    let to_bob = json!({"authToken": alice.token, "toUserId": bob.id, "roomId": ROOM, "msg": "for bob"});
    api_ok(&api, "/push/push", to_bob).await;
    let (body, id) = batches.user(bob.id, 1, "for bob").await;
    assert_eq!(body["op"], wire::OP_SINGLE_SEND);
    let again =
        logic.conn_open(ConnOpenBatch { requests: vec![open(4, &bob.token, 1, true)] }).await.unwrap();
    let pending = again.into_inner().results[0].pending.clone().expect("kept messages");
    assert_eq!(pending.ids, [id], "kept until acknowledged");
    assert_eq!(json_of(&pending.bodies[0])["msg"], "for bob");
    let acks = AckBatch { acks: vec![Ack { user_id: bob.id, ids: vec![id], more: true }] };
    let replies = logic.ack(acks).await.expect("Ack").into_inner();
    assert_eq!(replies.pending.len(), 1, "one answer per ack");
    assert!(replies.pending[0].ids.is_empty(), "nothing more kept");
    let after =
        logic.conn_open(ConnOpenBatch { requests: vec![open(5, &bob.token, 1, true)] }).await.unwrap();
    assert_eq!(after.into_inner().results[0].pending.clone().unwrap_or_default().ids, Vec::<u64>::new());

    // A socket joins another room, gets its messages, and leaves it.
    let join = RoomJoinRequest {
        gateway_id: gateway_id(),
        conn_id: 1,
        user_id: alice.id,
        room_id: OTHER_ROOM,
        since: None,
    };
    let joined = logic.room_join(join).await.expect("RoomJoin").into_inner();
    assert!(joined.position.is_some());
    let other = json!({"authToken": alice.token, "roomId": OTHER_ROOM, "msg": "in the other room"});
    api_ok(&api, "/push/pushRoom", other).await;
    batches.room(OTHER_ROOM, "in the other room").await;
    let leave = RoomLeaveRequest { gateway_id: gateway_id(), conn_id: 1, room_id: OTHER_ROOM };
    logic.room_leave(leave).await.expect("RoomLeave");
    let route = RouteRequest { room_ids: vec![ROOM, OTHER_ROOM], user_ids: vec![alice.id, bob.id] };
    let routes = logic.route(route.clone()).await.expect("Route").into_inner();
    assert_eq!(routes.rooms[0].gateway_ids, [OLD_GATEWAY]);
    assert_eq!(routes.rooms[1].gateway_ids, Vec::<String>::new(), "left");
    assert_eq!(routes.users[1].shards, [ShardAddress { gateway_id: gateway_id(), shard: 1 }]);

    // Closed sockets are gone from the routes.
    for conn_id in [3, 4, 5] {
        logic.conn_close(ConnCloseRequest { gateway_id: gateway_id(), conn_id }).await.expect("ConnClose");
    }
    let routes = logic.route(route.clone()).await.unwrap().into_inner();
    assert!(routes.users[1].shards.is_empty(), "{routes:?}");

    // The lookups logic serves.
    let user = logic.check_auth(CheckAuthRequest { token: alice.token.clone() }).await.expect("CheckAuth");
    assert_eq!(user.get_ref().user_id, alice.id);
    let forged = logic.check_auth(CheckAuthRequest { token: "forged".into() }).await;
    assert_eq!(forged.unwrap_err().code(), Code::Unauthenticated);
    let user = logic.get_user(GetUserRequest { user_id: bob.id }).await.expect("GetUser");
    assert_eq!(user.get_ref().user_name, bob.name);

    // A gateway restarting forgets every socket it had.
    logic.gateway_reset(GatewayResetRequest { gateway_id: gateway_id() }).await.unwrap();
    let routes = logic.route(route).await.unwrap().into_inner();
    assert_eq!((routes.rooms[0].gateway_ids.len(), routes.users[0].shards.len()), (0, 0));

    worker.shutdown().await;
    let _ = stop.send(());
    let _ = server.await;
    queue.close();
    control.shutdown().await;
}

/// The previous release's worker: reads what control queued in Redis (the stream keys and
/// entry field are part of the contract too), routes it through logic and pushes it to the one
/// gateway, acknowledging each batch's entries once the gateway acknowledged it.
struct OldWorker {
    redis: redis::aio::MultiplexedConnection,
    keys: Vec<String>,
    group: String,
    logic: LogicClient<Channel>,
    gateway_id: String,
    push: mpsc::Sender<PushBatch>,
    acks: Streaming<PushAck>,
    next_batch: u64,
}

impl OldWorker {
    async fn start(queue: &RedisQueueConfig, logic: &str, gateway_id: &str, gateway: &str) -> Self {
        let client = redis::Client::open(queue.url.as_str()).unwrap();
        let redis = client.get_multiplexed_async_connection().await.expect("Redis");
        let keys = (0..queue.streams).map(|s| format!("{}:queue:{s}", queue.prefix)).collect();
        let logic = LogicClient::connect(logic.to_string()).await.expect("logic");
        let mut gateway = GatewayClient::connect(gateway.to_string()).await.expect("gateway gRPC");
        let (push, batches) = mpsc::channel(16);
        let acks = gateway.push(ReceiverStream::new(batches)).await.expect("Push stream").into_inner();
        let (group, gateway_id) = (queue.group.clone(), gateway_id.to_string());
        Self { redis, keys, group, logic, gateway_id, push, acks, next_batch: 0 }
    }

    /// Passes on what is queued until a message `wanted` is among it; returns that message.
    async fn deliver(&mut self, what: &str, wanted: impl Fn(&QueueMessage) -> bool) -> QueueMessage {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Some(m) = self.pass_on().await.into_iter().find(&wanted) {
                return m;
            }
        }
        panic!("the previous-version worker did not see {what} in time");
    }

    /// One read of the queue, routed and pushed; returns the messages it read.
    async fn pass_on(&mut self) -> Vec<QueueMessage> {
        let options = redis::streams::StreamReadOptions::default()
            .group(&self.group, "previous-worker")
            .count(256)
            .block(100);
        let ids = vec![">"; self.keys.len()];
        let reply: redis::streams::StreamReadReply =
            redis::AsyncCommands::xread_options(&mut self.redis, &self.keys, &ids, &options).await.unwrap();
        let mut read = Vec::new();
        let mut entries: Vec<(String, String)> = Vec::new();
        for key in reply.keys {
            for entry in key.ids {
                let bytes: Vec<u8> = entry.get("m").expect("an entry holds its message in field m");
                read.push(QueueMessage::decode(bytes.as_slice()).expect("a previous-version QueueMessage"));
                entries.push((key.key.clone(), entry.id));
            }
        }
        if read.is_empty() {
            return read;
        }
        self.push_batch(&read).await;
        for (key, id) in entries {
            let _: u64 = redis::AsyncCommands::xack(&mut self.redis, key, &self.group, &[id]).await.unwrap();
        }
        read
    }

    async fn push_batch(&mut self, messages: &[QueueMessage]) {
        let room_ids: Vec<u64> = messages
            .iter()
            .filter_map(|m| match m.target {
                Some(Target::RoomId(r)) => Some(r),
                _ => None,
            })
            .collect();
        let user_ids: Vec<u64> = messages
            .iter()
            .filter_map(|m| match &m.target {
                Some(Target::UserId(u)) => Some(*u),
                Some(Target::SessionEnd(end)) => Some(end.user_id),
                _ => None,
            })
            .collect();
        let route = RouteRequest { room_ids, user_ids };
        let routes = self.logic.route(route).await.expect("Route").into_inner();
        let mut rooms: BTreeMap<u64, RoomPush> = BTreeMap::new();
        let mut users: BTreeMap<(u64, u32), UserPush> = BTreeMap::new();
        for m in messages {
            let (user_id, end) = match &m.target {
                Some(Target::RoomId(room_id)) => {
                    let route =
                        routes.rooms.iter().find(|r| r.room_id == *room_id).expect("a route per room");
                    if route.gateway_ids.is_empty() {
                        continue;
                    }
                    assert_eq!(route.gateway_ids, [self.gateway_id.as_str()], "one gateway in this test");
                    let push = rooms
                        .entry(*room_id)
                        .or_insert_with(|| RoomPush { room_id: *room_id, ..Default::default() });
                    push.bodies.push(m.body.clone());
                    push.ids.push(m.id);
                    push.seqs.push(m.seq);
                    continue;
                }
                Some(Target::UserId(user_id)) => (*user_id, None),
                Some(Target::SessionEnd(end)) => (end.user_id, Some(end.session)),
                None => panic!("a queued message without a target: {m:?}"),
            };
            let route = routes.users.iter().find(|u| u.user_id == user_id).expect("a route per user");
            for shard in &route.shards {
                assert_eq!(shard.gateway_id, self.gateway_id, "one gateway in this test");
                let push = users.entry((user_id, shard.shard)).or_insert_with(|| UserPush {
                    user_id,
                    shard: shard.shard,
                    ..Default::default()
                });
                match end {
                    Some(session) => push.end_sessions.push(session),
                    None => {
                        push.bodies.push(m.body.clone());
                        push.ids.push(m.id);
                    }
                }
            }
        }
        if rooms.is_empty() && users.is_empty() {
            return;
        }
        self.next_batch += 1;
        let batch = PushBatch {
            batch_id: self.next_batch,
            rooms: rooms.into_values().collect(),
            users: users.into_values().collect(),
        };
        self.push.send(batch).await.expect("the Push stream is open");
        let ack = tokio::time::timeout(WAIT, self.acks.message()).await.expect("an ack in time");
        assert_eq!(ack.expect("Push stream").expect("an ack").batch_id, self.next_batch);
    }
}

/// Frames on `ws` until a chat message (op `op`) with `msg`.
async fn chat(ws: &mut Ws, op: i32, msg: &str) -> Value {
    loop {
        let frame = ws.recv_op(op).await;
        if frame["msg"] == msg {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_version_worker_routes_and_pushes() {
    require!(Service::Redis);
    let cfg = test_config();
    let redis = RedisPrefix::new("compat");
    let queue_cfg = RedisQueueConfig {
        url: redis.url.clone(),
        prefix: redis.prefix.clone(),
        streams: 2,
        ..RedisQueueConfig::default()
    };
    let queue: Arc<dyn Queue> =
        Arc::new(RedisQueue::open(queue_cfg.clone()).await.expect("Redis at REDIS_URL"));
    let control = Control::start(cfg.control.clone(), queue.clone()).await.expect("control starts");
    let api = format!("http://{}", control.api_addr);
    let mut gateway_cfg = cfg.gateway.clone();
    gateway_cfg.logic = format!("http://{}", control.grpc_addr);
    let gateway = Gateway::start(gateway_cfg).await.expect("gateway starts");
    // No current worker: only the previous-version one takes the queue.
    let mut worker = OldWorker::start(
        &queue_cfg,
        &format!("http://{}", control.grpc_addr),
        &gateway.id,
        &format!("http://{}", gateway.grpc_addr),
    )
    .await;

    let ws_url = format!("ws://{}/ws", gateway.ws_addr);
    let (alice, bob) = (register(&api, "alice").await, register(&api, "bob").await);
    let mut wa = common::ws_at(&ws_url, &alice, ROOM).await;
    let mut wb = common::ws_at(&ws_url, &bob, ROOM).await;

    // A room message, queued by control, read, routed and pushed by the previous worker.
    api_ok(&api, "/push/pushRoom", json!({"authToken": alice.token, "roomId": ROOM, "msg": "room"})).await;
    let queued = worker.deliver("the room message", |m| json_of(&m.body)["msg"] == "room").await;
    assert_eq!(queued.target, Some(Target::RoomId(ROOM)));
    assert!(queued.id != 0 && queued.seq >= 1, "{queued:?}");
    for ws in [&mut wa, &mut wb] {
        let frame = chat(ws, wire::OP_ROOM_SEND, "room").await;
        assert_eq!(frame["msgId"], queued.id.to_string());
    }

    // A private message goes to its user's shard.
    let to_bob = json!({"authToken": alice.token, "toUserId": bob.id, "roomId": ROOM, "msg": "private"});
    api_ok(&api, "/push/push", to_bob).await;
    let queued = worker.deliver("the private message", |m| json_of(&m.body)["msg"] == "private").await;
    assert_eq!(queued.target, Some(Target::UserId(bob.id)));
    chat(&mut wb, wire::OP_SINGLE_SEND, "private").await;

    // A logout ends the sockets of that session only.
    api_ok(&api, "/user/logout", json!({"authToken": bob.token})).await;
    let end = worker.deliver("the session end", |m| matches!(m.target, Some(Target::SessionEnd(_)))).await;
    let Some(Target::SessionEnd(end)) = end.target else { unreachable!() };
    assert_eq!((end.user_id, end.session), (bob.id, wire::session_fingerprint(&bob.token)));
    assert!(matches!(wb.recv_end().await, End::Close(1008, _)), "bob's socket closed");
    wa.send_json(json!({"op": wire::OP_ROOM_SEND, "roomId": ROOM, "msg": "still here"})).await;
    worker.deliver("alice's room message", |m| json_of(&m.body)["msg"] == "still here").await;
    chat(&mut wa, wire::OP_ROOM_SEND, "still here").await;

    // The gateway's counters, read with the previous types.
    let mut stats = GatewayClient::connect(format!("http://{}", gateway.grpc_addr)).await.unwrap();
    let reply = stats.stats(StatsRequest {}).await.expect("Stats").into_inner();
    assert_eq!((reply.gateway_id.as_str(), reply.shards.len()), (&*gateway.id, gateway.shards));
    common::eventually("one socket left", || {
        let mut stats = stats.clone();
        async move {
            let reply = stats.stats(StatsRequest {}).await.unwrap().into_inner();
            reply.shards.iter().map(|s| s.connections).sum::<u64>() == 1
        }
    })
    .await;

    drop(worker);
    gateway.shutdown().await;
    queue.close();
    control.shutdown().await;
}
