//! The hot paths the gate counts. Each workload builds its input first, then runs the measured
//! operation `ITERATIONS` times inside [`gate_region`], the one function callgrind collects in;
//! the count is per operation.

use std::hint::black_box;
use std::io::IoSlice;
use std::sync::Arc;

use gochat_control::history::{Limits as HistoryLimits, MemoryHistory};
use gochat_control::kept::{Limits as KeptLimits, MemoryKeptStore};
use gochat_control::state::NewConn;
use gochat_control::state::{MemoryState, Session};
use gochat_gateway::protocol::{deflate, ws, Transport};
use gochat_gateway::shard::{AuthedUser, Command, Framed, Framings, Inbox, Shard, ShardLimits};
use gochat_gateway::testkit::tls::live_wss;
use gochat_gateway::testkit::{client_frame, live_ws, UPGRADE};
use gochat_proto::logic::{RoomRoute, RouteReply, ShardAddress, UserRoute};
use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::QueueMessage;
use gochat_proto::wire::ChatMessage;
use gochat_queue::Delivery;
use gochat_queue_worker::batch::Grouped;
use prost::Message as _;

/// Times each workload repeats its operation in the measured region.
pub const ITERATIONS: u64 = 100;

/// A typical room message (op 3).
const BODY: &[u8] = br#"{"code":0,"msg":"hello everyone, how is it going today?","fromUserId":1234,"fromUserName":"alice","toUserId":0,"toUserName":"","roomId":7,"op":3,"createTime":"2026-11-27 01:02:03","msgId":"123456789012345678"}"#;

pub struct Workload {
    pub name: &'static str,
    pub what: &'static str,
    run: fn(),
}

pub const ALL: &[Workload] = &[
    Workload {
        name: "ws_frame_parse",
        what: "parse and unmask a 212 B client text frame",
        run: ws_frame_parse,
    },
    Workload {
        name: "ws_frame_encode",
        what: "frame one body for WebSocket and TCP (Framed::encode)",
        run: ws_frame_encode,
    },
    Workload { name: "json_op_encode", what: "serialize a gochat op 3 message", run: json_op_encode },
    Workload {
        name: "room_fanout_1k",
        what: "one room frame to 1,000 members in a shard, gathered and marked written",
        run: room_fanout_1k,
    },
    Workload {
        name: "room_fanout_1k_coalesced",
        what: "four room frames to 1,000 members in a shard in one turn, one write each",
        run: room_fanout_1k_coalesced,
    },
    Workload {
        name: "room_fanout_1k_tls",
        what: "one room frame to 1,000 wss (TLS 1.3) members in a shard: sealed per member, written",
        run: room_fanout_1k_tls,
    },
    Workload {
        name: "inbox_handoff",
        what: "push and drain one command through a shard inbox",
        run: inbox_handoff,
    },
    Workload {
        name: "worker_batch_encode",
        what: "group 512 queued messages, split per gateway, encode the PushBatches",
        run: worker_batch_encode,
    },
    Workload {
        name: "rest_login_minus_hash",
        what: "login body parse, token, session record, envelope (no password hash)",
        run: rest_login_minus_hash,
    },
    Workload { name: "token_check", what: "look a session token up among 10,000", run: token_check },
    Workload {
        name: "ws_connect",
        what: "a gateway's part of one WebSocket connect: upgrade, auth frame, logic's answer, replies written, close",
        run: ws_connect,
    },
    Workload {
        name: "conn_open_record",
        what: "control's record of one connect in memory: token check, open into a room of 1,000, close",
        run: conn_open_record,
    },
    Workload {
        name: "history_append",
        what: "number a room message and keep it in a room's history of 100 (in memory)",
        run: history_append,
    },
    Workload {
        name: "inbox_keep_ack",
        what: "keep a private message for its user and acknowledge it (in memory)",
        run: inbox_keep_ack,
    },
    Workload {
        name: "binary_transcode",
        what: "turn one op 3 JSON body into the binary protocol's ServerFrame",
        run: binary_transcode,
    },
    Workload {
        name: "ws_frame_deflate",
        what: "frame a 212 B op 3 body for plain and compressing clients (deflated once, shared)",
        run: ws_frame_deflate,
    },
];

pub fn find(name: &str) -> Option<&'static Workload> {
    ALL.iter().find(|w| w.name == name)
}

impl Workload {
    pub fn run(&self) {
        (self.run)()
    }
}

/// The measured region: callgrind counts instructions only in here (`--toggle-collect`).
#[inline(never)]
pub fn gate_region<F: FnMut()>(mut op: F) {
    for _ in 0..ITERATIONS {
        op();
    }
}

fn ws_frame_parse() {
    let frame = client_frame(true, 1, BODY);
    let mut payload = Vec::with_capacity(frame.len());
    gate_region(|| {
        let h = ws::parse_header(black_box(&frame), 1 << 16, false).expect("valid").expect("whole");
        payload.clear();
        payload.extend_from_slice(&frame[h.header_len..h.header_len + h.payload_len]);
        ws::unmask(&mut payload, h.mask);
        black_box(&payload);
    });
}

fn ws_frame_encode() {
    let bodies = [BODY];
    gate_region(|| {
        black_box(Framed::encode(black_box(&bodies)));
    });
}

fn ws_frame_deflate() {
    let bodies = [BODY];
    let framings = Framings { binary: false, deflate: Some(deflate::Settings::default()) };
    gate_region(|| {
        black_box(Framed::encode_numbered(black_box(&bodies), &[], framings));
    });
}

fn chat_message() -> ChatMessage {
    ChatMessage {
        code: 0,
        msg: "hello everyone, how is it going today?".into(),
        from_user_id: 1234,
        from_user_name: "alice".into(),
        to_user_id: 0,
        to_user_name: String::new(),
        room_id: 7,
        op: 3,
        create_time: "2026-11-27 01:02:03".into(),
        msg_id: "123456789012345678".into(),
        seq: None,
        epoch: String::new(),
    }
}

fn json_op_encode() {
    let message = chat_message();
    gate_region(|| {
        black_box(serde_json::to_vec(black_box(&message)).expect("serializes"));
    });
}

fn room_fanout_1k() {
    room_fanout(1);
}

fn room_fanout_1k_coalesced() {
    room_fanout(4);
}

/// `batches` room frames to a room of 1,000 members in one shard turn, then what a driver does
/// for each member: gather its pending frames and record them written by one write.
fn room_fanout(batches: usize) {
    let limits = ShardLimits { max_outbound_bytes: 1 << 20, ..ShardLimits::default() };
    let mut shard = Shard::new(0, 1, limits, 0);
    for user in 0..1000 {
        live_ws(&mut shard, user, 7);
    }
    let frames = Framed::encode(&[BODY]);
    let mut dirty = Vec::with_capacity(1000);
    gate_region(|| {
        for _ in 0..batches {
            shard.on_command(Command::Room { room_id: 7, frames: frames.clone() });
        }
        write_dirty(&mut shard, &mut dirty);
    });
}

/// What a driver does after a shard turn: each connection with output gathers its pending
/// frames and has them marked written by one write.
#[inline]
fn write_dirty(shard: &mut Shard, dirty: &mut Vec<u32>) {
    shard.take_dirty(dirty);
    for &key in dirty.iter() {
        let Some(out) = shard.out_mut(key) else { continue };
        let mut iov = [IoSlice::new(&[]); 8];
        let n = out.io_slices(&mut iov);
        let len = iov[..n].iter().map(|s| s.len()).sum();
        shard.wrote(key, len);
    }
    dirty.clear();
}

/// `room_fanout_1k` with every member on wss: each one's copy of the frame is encrypted for it.
fn room_fanout_1k_tls() {
    let limits = ShardLimits { max_outbound_bytes: 1 << 20, ..ShardLimits::default() };
    let mut shard = Shard::new(0, 1, limits, 0);
    let (server, client) = tls_configs();
    shard.set_tls(server);
    // (Their clients are dropped: the shard goes on sealing for the members all the same.)
    for user in 0..1000 {
        live_wss(&mut shard, &client, user, 7);
    }
    let frames = Framed::encode(&[BODY]);
    let mut dirty = Vec::with_capacity(1000);
    gate_region(|| {
        shard.on_command(Command::Room { room_id: 7, frames: frames.clone() });
        write_dirty(&mut shard, &mut dirty);
    });
}

/// A server config as the gateway's (ring, stateless tickets) for a certificate made here, and a
/// client config trusting it. Clients resume with the tickets they got: the first handshake
/// alone signs.
fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .and_then(|p| p.self_signed(&key))
        .expect("a certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::try_from(key.serialize_der()).expect("a key in DER");
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert.der().clone()], key))
        .expect("a server config");
    server.ticketer = rustls::crypto::ring::Ticketer::new().expect("a ticketer");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.der().to_vec())).expect("a root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("a client config")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn inbox_handoff() {
    let inbox = Inbox::new(64).expect("eventfd");
    let frames = Framed::encode(&[BODY]);
    gate_region(|| {
        let _ = inbox.push(Command::Room { room_id: 7, frames: frames.clone() });
        inbox.drain(1, |cmd| {
            black_box(cmd);
        });
    });
}

fn worker_batch_encode() {
    let body = serde_json::to_vec(&chat_message()).expect("serializes");
    // Room messages numbered in their rooms' histories (the default).
    let deliveries: Vec<Delivery> = (0..512u64)
        .map(|i| Delivery {
            id: format!("0/{i}-0"),
            message: QueueMessage {
                target: Some(if i % 8 == 0 { Target::UserId(i) } else { Target::RoomId(i % 50) }),
                body: body.clone(),
                id: i + 1,
                seq: if i % 8 == 0 { 0 } else { i / 50 + 1 },
            },
        })
        .collect();
    let gateways = ["gateway-1", "gateway-2", "gateway-3"];
    let route = RouteReply {
        rooms: (0..50)
            .map(|room_id| RoomRoute {
                room_id,
                gateway_ids: gateways[..1 + room_id as usize % 3].iter().map(|g| g.to_string()).collect(),
            })
            .collect(),
        users: (0..512)
            .step_by(8)
            .map(|user_id| UserRoute {
                user_id,
                shards: vec![ShardAddress { gateway_id: gateways[user_id as usize % 3].into(), shard: 0 }],
            })
            .collect(),
    };
    gate_region(|| {
        let mut grouped = Grouped::default();
        deliveries.iter().cloned().for_each(|d| grouped.add(d));
        let (batches, ids) = grouped.split(route.clone(), &Vec::new());
        for batch in batches.values() {
            black_box(batch.encode_to_vec());
        }
        black_box(ids);
    });
}

fn rest_login_minus_hash() {
    let state = MemoryState::new(std::time::Duration::from_secs(3600));
    let body = br#"{"userName":"alice","passWord":"secret-1"}"#;
    let mut n = 0u64;
    gate_region(|| {
        let c = gochat_control::api::credentials(black_box(body)).expect("valid body");
        // (the password hash check, deliberately costly, is not counted)
        n += 1;
        let token = gochat_control::logic::new_token();
        state.create_session(token.clone(), Session { user_id: n, user_name: c.user_name });
        black_box(gochat_control::api::envelope(0, "login success", serde_json::Value::String(token)));
    });
}

fn token_check() {
    let state = MemoryState::new(std::time::Duration::from_secs(3600));
    let tokens: Vec<String> = (0..10_000)
        .map(|i| {
            let token = format!("{i:048x}");
            state.create_session(token.clone(), Session { user_id: i, user_name: format!("u{i}") });
            token
        })
        .collect();
    let mut i = 0;
    gate_region(|| {
        i = (i + 7919) % tokens.len();
        black_box(state.session(black_box(&tokens[i])));
    });
}

/// One WebSocket client connecting to a shard that holds a room of 1,000: everything the
/// shard does between accept and close, with logic's answer given in place (its part is
/// `conn_open_record`).
fn ws_connect() {
    let mut shard = Shard::new(0, 1, ShardLimits::default(), 0);
    for user in 0..1000 {
        live_ws(&mut shard, user, 7);
    }
    let auth = client_frame(
        true,
        1,
        br#"{"authToken":"0123456789abcdef0123456789abcdef0123456789abcdef","roomId":7}"#,
    );
    let (mut upgrade, mut frame) = (Vec::with_capacity(UPGRADE.len()), Vec::with_capacity(auth.len()));
    let mut dirty = Vec::new();
    gate_region(|| {
        let (key, conn_id) = shard.open(Transport::WebSocket, 0);
        upgrade.clear();
        upgrade.extend_from_slice(UPGRADE);
        shard.on_data(key, &mut upgrade, 0);
        frame.clear();
        frame.extend_from_slice(&auth);
        shard.on_data(key, &mut frame, 0);
        black_box(shard.take_effects().count());
        let user = AuthedUser { user_id: 5000, user_name: "newcomer".into(), ..AuthedUser::default() };
        shard.on_command(Command::AuthDone { key, conn_id, result: Ok(Box::new(user)) });
        write_dirty(&mut shard, &mut dirty);
        shard.remove(key);
        black_box(shard.take_effects().count());
    });
}

/// Control's state work for one socket's `ConnOpen` and its close, in the embedded default's
/// memory state: the token's session, the connection recorded in its user's routes and in a
/// room of 1,000 members, then forgotten.
fn conn_open_record() {
    let state = MemoryState::new(std::time::Duration::from_secs(3600));
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef".to_string();
    state.create_session(token.clone(), Session { user_id: 5000, user_name: "newcomer".into() });
    let member =
        |conn_id| NewConn { gateway: "gw-1", shard: 0, conn_id, room_id: 7, acks: false, max_user_conns: 0 };
    for user in 0..1000 {
        let session = Session { user_id: user, user_name: format!("u{user}") };
        let _ = state.conn_open(&member(user), &session);
    }
    let mut conn_id = 10_000;
    gate_region(|| {
        conn_id += 1;
        let session = state.session(black_box(&token)).expect("live session");
        black_box(state.conn_open(&member(conn_id), &session).is_ok());
        black_box(state.conn_close("gw-1", conn_id));
    });
}

fn history_append() {
    let history = MemoryHistory::new(HistoryLimits {
        size: 100,
        max_age: std::time::Duration::from_secs(600),
        max_bytes: 128 << 20,
    });
    for _ in 0..100 {
        history.append(7, BODY);
    }
    gate_region(|| {
        black_box(history.append(7, black_box(BODY)));
    });
}

fn inbox_keep_ack() {
    let inbox = MemoryKeptStore::new(KeptLimits {
        size: 1000,
        per_sender: 100,
        max_bytes: 128 << 20,
        max_age: std::time::Duration::from_secs(3600),
    });
    for id in 1..=50 {
        let _ = inbox.keep(9, id % 20, id, BODY);
    }
    let mut id = 1000;
    gate_region(|| {
        id += 1;
        let _ = black_box(inbox.keep(9, 3, id, black_box(BODY)));
        inbox.ack(9, &[id]);
    });
}

fn binary_transcode() {
    gate_region(|| {
        black_box(gochat_proto::binary::server_frame(black_box(BODY)));
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_workload_runs_and_names_are_unique() {
        for w in super::ALL {
            w.run();
            assert_eq!(super::ALL.iter().filter(|o| o.name == w.name).count(), 1, "{}", w.name);
        }
    }
}
