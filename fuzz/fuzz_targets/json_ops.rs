//! gochat's JSON client requests: interpreted in every connection phase, and carried through a
//! whole shard (WebSocket and TCP, before and after auth) to its effects, replies and cleanup.
#![no_main]

use std::collections::HashMap;

use gochat_gateway::protocol::session::{self, Phase, Request};
use gochat_gateway::protocol::Transport;
use gochat_gateway::shard::{AuthRefused, AuthedUser, Command, Effect, Framed, Shard, ShardLimits};
use gochat_gateway::testkit::{client_frame, live_ws, written, UPGRADE};
use gochat_proto::wire::{self, MAX_REFUSAL};
use libfuzzer_sys::fuzz_target;

const PHASES: [Phase; 4] = [Phase::AwaitAuth, Phase::Authenticating, Phase::Live { user_id: 1 }, Phase::Echo];

fuzz_target!(|data: &[u8]| {
    interpret_in_every_phase(data);
    binary_protocol(data);
    through_a_shard(data);
});

/// The binary protocol on the same bytes: a client frame is read as the JSON request it stands
/// for, or refused briefly; any server body turns into a frame that decodes.
fn binary_protocol(data: &[u8]) {
    use prost::Message as _;
    for phase in PHASES {
        if let Request::Refuse { message, fatal } = session::interpret_binary(phase, data) {
            assert!(!message.is_empty() && message.len() <= MAX_REFUSAL, "{} bytes", message.len());
            assert_eq!(fatal, phase == Phase::AwaitAuth, "only an unauthenticated request is fatal");
        }
    }
    let frame = gochat_proto::binary::server_frame(data);
    let decoded = gochat_proto::client::ServerFrame::decode(&frame[..]).expect("a frame that decodes");
    assert!(decoded.body.is_some(), "every body has a frame");
}

fn interpret_in_every_phase(data: &[u8]) {
    let parsed = serde_json::from_slice::<wire::ClientRequest>(data).ok();
    for phase in PHASES {
        let request = session::interpret(phase, data);
        let live = matches!(phase, Phase::Live { .. });
        match &request {
            Request::Auth { token, room_id, since, acks } => {
                assert_eq!(phase, Phase::AwaitAuth);
                let req = parsed.as_ref().expect("auth from a request that parses");
                assert!(!token.is_empty() && *token == req.auth_token && *room_id == req.room_id);
                assert_eq!((since, *acks), (&req.since(), req.acks));
                assert!(matches!(req.op, None | Some(wire::OP_BUILD_TCP_CONN)));
            }
            Request::Reauth { room_id } => {
                let req = parsed.as_ref().expect("a request that parses");
                assert!(live && *room_id == req.room_id && !req.auth_token.is_empty());
            }
            Request::Join { room_id, since } => {
                let req = parsed.as_ref().expect("a request that parses");
                assert!(live && *room_id != 0 && req.op == Some(wire::OP_JOIN));
                assert_eq!((*room_id, since), (req.room_id, &req.since()));
            }
            Request::Leave { room_id } => {
                let req = parsed.as_ref().expect("a request that parses");
                assert!(live && *room_id != 0 && (req.op, req.room_id) == (Some(wire::OP_LEAVE), *room_id));
            }
            Request::RoomSend { room_id, msg } => {
                let req = parsed.as_ref().expect("a request that parses");
                assert!(live && *room_id == req.room_id);
                assert_eq!((req.op, req.msg.as_ref()), (Some(wire::OP_ROOM_SEND), Some(msg)));
            }
            Request::Ack { ids } => {
                let req = parsed.as_ref().expect("a request that parses");
                assert!(live && req.op == Some(wire::OP_ACK) && *ids == req.msg_ids);
                assert!(!ids.is_empty() && ids.len() <= wire::MAX_ACK_IDS);
            }
            Request::Refuse { message, fatal } => {
                assert!(!message.is_empty());
                assert!(message.len() <= MAX_REFUSAL, "a refusal of {} bytes", message.len());
                assert_eq!(*fatal, phase == Phase::AwaitAuth, "only an unauthenticated request is fatal");
            }
        }
    }
}

fn through_a_shard(data: &[u8]) {
    let limits = ShardLimits::default();
    let max_outbound = limits.max_outbound_bytes;
    let mut s = Shard::new(0, 1, limits, 0);
    let (ws_live, ws_live_id) = live_ws(&mut s, 1, 1);
    let (ws_peer, ws_peer_id) = live_ws(&mut s, 2, 1);
    let (tcp_live, tcp_live_id) = live_tcp(&mut s, 3, 1);
    let (ws_new, ws_new_id) = s.open(Transport::WebSocket, 0);
    s.on_data(ws_new, &mut UPGRADE.to_vec(), 0);
    assert!(written(&mut s, ws_new).starts_with(b"HTTP/1.1 101"));
    let (tcp_new, tcp_new_id) = s.open(Transport::Tcp, 0);
    let keys = [ws_live, ws_peer, tcp_live, ws_new, tcp_new];

    // The input as one client message on each kind of connection.
    let opcode = if std::str::from_utf8(data).is_ok() { 1 } else { 2 };
    let frame = client_frame(true, opcode, data);
    for key in [ws_live, ws_new] {
        s.on_data(key, &mut frame.clone(), 1);
    }
    let mut tcp = Vec::new();
    if wire::encode_tcp_frame(data, &mut tcp).is_ok() {
        for key in [tcp_live, tcp_new] {
            s.on_data(key, &mut tcp.clone(), 1);
        }
    }
    let mut auths = Vec::new();
    for effect in s.take_effects() {
        match effect {
            Effect::Auth { key, conn_id, token, room_id, .. } => {
                assert!((key, conn_id) == (ws_new, ws_new_id) || (key, conn_id) == (tcp_new, tcp_new_id));
                assert!(!token.is_empty());
                auths.push((key, conn_id, room_id));
            }
            Effect::RoomSend { key, conn_id, user_id, room_id, msg } => {
                assert!(
                    (key, conn_id, user_id) == (ws_live, ws_live_id, 1)
                        || (key, conn_id, user_id) == (tcp_live, tcp_live_id, 3),
                    "a room send from a connection that is not live"
                );
                assert_eq!(room_id, 1, "the connection's own room");
                assert!(msg.len() <= data.len());
            }
            Effect::Join { key, conn_id, user_id, .. } | Effect::Ack { key, conn_id, user_id, .. } => {
                assert!(
                    (key, conn_id, user_id) == (ws_live, ws_live_id, 1)
                        || (key, conn_id, user_id) == (tcp_live, tcp_live_id, 3),
                    "a join or ack from a connection that is not live"
                );
            }
            Effect::Leave { conn_id, room_id } => {
                assert!(conn_id == ws_live_id || conn_id == tcp_live_id);
                assert_eq!(room_id, 1, "left only what it was in");
            }
            Effect::Closed { .. } => panic!("a closed effect with no connection gone"),
        }
    }
    // One message earns at most a short reply (and a close), never an echo of its size.
    for key in keys {
        let reply = written(&mut s, key);
        assert!(reply.len() <= 4 * MAX_REFUSAL, "{} bytes in reply to one message", reply.len());
    }

    // The input as raw bytes on the live connections: any frames, any number of them.
    for key in [ws_live, tcp_live] {
        s.on_data(key, &mut data.to_vec(), 2);
        let pending = s.out_mut(key).map_or(0, |o| o.bytes());
        assert!(pending <= max_outbound + 64 * 1024, "{pending} bytes pending");
    }
    s.take_effects().for_each(|e| assert!(!matches!(e, Effect::Auth { .. } | Effect::Closed { .. })));

    // Logic answers (one yes, one no), a push reaches the room, then time runs out for all.
    let mut live: HashMap<u64, u32> = [(ws_live_id, 0), (ws_peer_id, 0), (tcp_live_id, 0)].into();
    let mut rooms = vec![1];
    for (i, (key, conn_id, room_id)) in auths.into_iter().enumerate() {
        let result = if i == 0 {
            live.insert(conn_id, 0);
            rooms.push(room_id);
            Ok(Box::new(AuthedUser { user_id: 10, user_name: "new".into(), ..AuthedUser::default() }))
        } else {
            Err(AuthRefused { close_code: 1008, message: "bad token".into() })
        };
        s.on_command(Command::AuthDone { key, conn_id, result });
    }
    s.on_command(Command::Room { room_id: 1, frames: Framed::encode(&[data]) });
    s.on_command(Command::User { user_id: 1, frames: Framed::encode(&[data]) });
    s.on_tick(1000);
    let mut dirty = Vec::new();
    s.take_dirty(&mut dirty);
    for key in dirty {
        if s.is_closing(key) {
            s.remove(key);
        }
    }
    for key in keys {
        s.remove(key);
    }

    // Nothing is left behind, and logic hears of each connection it knew about exactly once.
    assert!(s.is_empty());
    for room in rooms {
        assert_eq!(s.room_members(room), 0);
    }
    for effect in s.take_effects() {
        match effect {
            Effect::Closed { conn_id } => {
                *live.get_mut(&conn_id).expect("a closed effect for a connection logic knew") += 1
            }
            // A join logic never answered is undone when its time is up.
            Effect::Leave { conn_id, .. } => assert!(live.contains_key(&conn_id), "a leave for a stranger"),
            other => panic!("{other:?} after the connections closed"),
        }
    }
    assert!(live.values().all(|&n| n == 1), "closed effects per connection: {live:?}");
}

/// Opens a TCP connection and authenticates it as `user` in `room` (op 6), reply written.
fn live_tcp(s: &mut Shard, user: u64, room: u64) -> (u32, u64) {
    let (key, id) = s.open(Transport::Tcp, 0);
    let mut frame = Vec::new();
    let auth = format!(r#"{{"op":6,"authToken":"t{user}","roomId":{room}}}"#);
    wire::encode_tcp_frame(auth.as_bytes(), &mut frame).expect("a small frame");
    s.on_data(key, &mut frame, 0);
    assert!(matches!(s.take_effects().next(), Some(Effect::Auth { .. })));
    let ok = AuthedUser { user_id: user, user_name: format!("u{user}"), ..AuthedUser::default() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(ok)) });
    assert!(!written(s, key).is_empty());
    (key, id)
}
