//! The shard driven without sockets: bytes in, output and effects out.

use gochat_proto::wire::{self, Position};

use super::*;
use crate::protocol::{deflate, ws, Limits};
use crate::testkit::{client_frame, live_ws, live_ws_upgraded, live_ws_with_token, written, UPGRADE};

fn shard() -> Shard {
    Shard::new(3, 7, ShardLimits { max_outbound_bytes: 1000, ..ShardLimits::default() }, 0)
}

#[test]
fn ids_carry_the_shard_index() {
    let mut s = shard();
    let (_, id) = s.open(Transport::Tcp, 0);
    assert_eq!(id >> 56, 3);
    assert_eq!((id >> 40) & 0xffff, 7, "the process epoch");
}

#[test]
fn room_broadcast_shares_one_buffer() {
    let mut s = shard();
    let (a, _) = live_ws(&mut s, 1, 7);
    let (b, _) = live_ws(&mut s, 2, 7);
    let (c, _) = live_ws(&mut s, 3, 8);
    let frames = Framed::encode(&[br#"{"op":3,"msg":"hi"}"#.as_slice()]);
    s.on_command(Command::Room { room_id: 7, frames: frames.clone() });
    let mut dirty = Vec::new();
    s.take_dirty(&mut dirty);
    dirty.sort();
    assert_eq!(dirty, vec![a, b]);
    for key in [a, b] {
        let out = s.out_mut(key).unwrap();
        let mut iov = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(out.io_slices(&mut iov), 1);
        assert_eq!(iov[0].as_ptr(), frames.ws().as_ptr(), "a reference to the shared frame, not a copy");
    }
    assert!(!s.has_output(c));
}

#[test]
fn compressing_members_share_one_deflated_buffer_beside_the_plain_one() {
    let settings = deflate::Settings { min_bytes: 16, level: 1 };
    let protocol = Limits { compression: Some(settings), ..Limits::default() };
    let mut s = Shard::new(3, 7, ShardLimits { protocol, ..ShardLimits::default() }, 0);
    let offer = String::from_utf8_lossy(UPGRADE)
        .replace("Host: x\r\n", "Host: x\r\nSec-WebSocket-Extensions: permessage-deflate\r\n");
    let (a, _) = live_ws_upgraded(&mut s, 1, 7, "t1", offer.as_bytes());
    let (b, _) = live_ws_upgraded(&mut s, 2, 7, "t2", offer.as_bytes());
    let (c, _) = live_ws(&mut s, 3, 7);
    let deflating = |s: &Shard| s.stats().deflate_connections.load(Ordering::Relaxed);
    assert_eq!(deflating(&s), 2);
    let body = format!(r#"{{"op":3,"roomId":7,"msg":"{}"}}"#, "compressible words ".repeat(30));
    let frames = Framed::encode_numbered(&[&body], &[], Framings { binary: false, deflate: Some(settings) });
    s.on_command(Command::Room { room_id: 7, frames: frames.clone() });
    let first = |s: &mut Shard, key: u32| {
        let mut iov = [std::io::IoSlice::new(&[]); 4];
        let out = s.out_mut(key).unwrap();
        assert_eq!(out.io_slices(&mut iov), 1);
        (iov[0].as_ptr(), iov[0].to_vec())
    };
    let deflated = frames.for_wire(Wire::WsDeflate);
    for key in [a, b] {
        let (at, bytes) = first(&mut s, key);
        assert_eq!(at, deflated.as_ptr(), "one deflated buffer, shared");
        assert_eq!(bytes[0], 0xc1, "compressed text");
        let mut back = Vec::new();
        deflate::inflate(ws::server_frame_payload(&bytes).unwrap().0, 1 << 20, &mut back).unwrap();
        assert_eq!(back, body.as_bytes());
    }
    assert_eq!(first(&mut s, c).0, frames.ws().as_ptr(), "the plain member gets the plain buffer");
    s.remove(a);
    assert_eq!(deflating(&s), 1);
}

#[test]
fn frames_queued_in_one_turn_go_out_in_one_write() {
    let mut s = shard();
    let (a, _) = live_ws(&mut s, 1, 7);
    written(&mut s, a);
    let counts = |s: &Shard| {
        let stats = s.stats();
        (stats.frames_out.load(Ordering::Relaxed), stats.sends.load(Ordering::Relaxed))
    };
    let before = counts(&s);
    for msg in ["a", "b", "c"] {
        let body = format!(r#"{{"op":3,"msg":"{msg}"}}"#);
        s.on_command(Command::Room { room_id: 7, frames: Framed::encode(&[body]) });
    }
    let out = written(&mut s, a);
    assert_eq!(out.windows(5).filter(|w| w.starts_with(b"\"msg")).count(), 3);
    let after = counts(&s);
    assert_eq!((after.0 - before.0, after.1 - before.1), (3, 1), "three frames, one write");
}

#[test]
fn user_push_reaches_every_connection_of_the_user() {
    let mut s = shard();
    let (a1, _) = live_ws(&mut s, 1, 7);
    let (a2, _) = live_ws(&mut s, 1, 9);
    let (b, _) = live_ws(&mut s, 2, 7);
    s.on_command(Command::User { user_id: 1, frames: Framed::encode(&[b"{}"]) });
    assert!(s.has_output(a1) && s.has_output(a2) && !s.has_output(b));
}

#[test]
fn an_ended_session_closes_only_its_own_sockets() {
    let mut s = shard();
    let (a1, _) = live_ws_with_token(&mut s, 1, 7, "phone");
    let (a2, _) = live_ws_with_token(&mut s, 1, 9, "phone");
    let (a3, _) = live_ws_with_token(&mut s, 1, 7, "laptop");
    let (b, _) = live_ws_with_token(&mut s, 2, 7, "phone");
    let phone = wire::session_fingerprint("phone");
    s.on_command(Command::EndSessions { user_id: 1, sessions: vec![phone] });
    for key in [a1, a2] {
        assert!(s.is_closing(key), "a socket of the ended session stays open");
        let out = written(&mut s, key);
        assert!(out.windows(10).any(|w| w == b"logged out"), "no reason given to the client");
        assert_eq!(out[out.len() - 14..][..4], [0x88, 12, 0x03, 0xf0], "close 1008 'logged out'");
    }
    assert!(!s.is_closing(a3), "the user's other session was closed");
    assert!(!s.is_closing(b), "another user with the same token text was closed");
}

#[test]
fn a_message_for_everyone_reaches_every_authenticated_connection_once() {
    let mut s = shard();
    let (a1, _) = live_ws(&mut s, 1, 7);
    let (a2, _) = live_ws(&mut s, 1, 9);
    let (b, _) = live_ws(&mut s, 2, 8);
    let (waiting, _) = s.open(Transport::WebSocket, 0);
    s.on_data(waiting, &mut UPGRADE.to_vec(), 0);
    written(&mut s, waiting);
    s.on_command(Command::Everyone { frames: Framed::encode(&[br#"{"op":3,"msg":"all"}"#]) });
    for key in [a1, a2, b] {
        assert_eq!(written(&mut s, key).windows(5).filter(|w| w == b"\"all\"").count(), 1, "{key}");
    }
    assert!(!s.has_output(waiting), "a connection that has not authenticated got it");
}

#[test]
fn a_disconnect_closes_every_socket_of_the_user_with_its_code_and_reason() {
    let mut s = shard();
    let (a1, _) = live_ws(&mut s, 1, 7);
    let (a2, _) = live_ws(&mut s, 1, 9);
    let (b, _) = live_ws(&mut s, 2, 7);
    s.on_command(Command::Disconnect { user_id: 1, code: 4001, reason: "suspended".into() });
    for key in [a1, a2] {
        assert!(s.is_closing(key));
        let out = written(&mut s, key);
        assert_eq!(out[out.len() - 13..], [&[0x88, 11, 0x0f, 0xa1][..], b"suspended"].concat(), "close 4001");
    }
    assert!(!s.is_closing(b));
}

#[test]
fn a_kick_takes_the_users_sockets_out_of_the_room_and_tells_logic() {
    let mut s = shard();
    let (a1, a1_id) = live_ws(&mut s, 1, 7);
    let (a2, _) = live_ws(&mut s, 1, 9);
    let (b, _) = live_ws(&mut s, 2, 7);
    s.take_effects().for_each(drop);
    s.on_command(Command::Kick { user_id: 1, room_id: 7 });
    assert_eq!(s.take_effects().collect::<Vec<_>>(), [Effect::Leave { conn_id: a1_id, room_id: 7 }]);
    assert_eq!(bodies(&mut s, a1), [serde_json::json!({"op": 11, "roomId": 7})]);
    assert!(!s.has_output(a2), "a socket not in the room was told");
    s.on_command(Command::Room { room_id: 7, frames: Framed::encode(&[br#"{"op":3,"msg":"after"}"#]) });
    assert!(!s.has_output(a1), "the kicked socket still gets the room");
    assert!(s.has_output(b));
    assert!(!s.is_closing(a1), "a kick is not a disconnect");
}

/// Room sends (effects) a client's frames produce.
fn room_sends(s: &mut Shard) -> usize {
    s.take_effects().filter(|e| matches!(e, Effect::RoomSend { .. })).count()
}

#[test]
fn a_client_over_its_frame_rate_is_throttled_then_closed() {
    let limits = ShardLimits { client_frames_per_sec: 10, client_frame_burst: 20, ..ShardLimits::default() };
    let mut s = Shard::new(0, 1, limits, 0);
    // The upgrade's reply and the auth frame took 2 of the burst of 20.
    let (a, _) = live_ws(&mut s, 1, 7);
    let send = |s: &mut Shard, n: usize, now: u32| {
        for _ in 0..n {
            s.on_data(a, &mut client_frame(true, 1, br#"{"op":3,"msg":"x"}"#), now);
        }
    };
    send(&mut s, 18, 0);
    assert_eq!(room_sends(&mut s), 18, "the burst passes");
    send(&mut s, 5, 0);
    assert_eq!(room_sends(&mut s), 0, "over the burst, frames are dropped");
    let out = written(&mut s, a);
    assert_eq!(out.windows(9).filter(|w| w == b"slow down").count(), 1, "told once");
    // A second later it has earned 10 more, and the drops start over.
    send(&mut s, 12, 1);
    assert_eq!(room_sends(&mut s), 10);
    assert!(!s.is_closing(a), "a client a little over the rate is throttled, not closed");
    assert_eq!(s.stats().frames_throttled.load(Ordering::Relaxed), 7);
    // A flood: more than the burst again without slowing down.
    send(&mut s, 30, 1);
    assert_eq!(room_sends(&mut s), 0);
    assert!(s.is_closing(a), "a flooding client is closed");
    let out = written(&mut s, a);
    assert!(out.windows(17).any(|w| w == b"too many messages"), "and told why");
    assert_eq!(s.stats().flood_closes.load(Ordering::Relaxed), 1);
}

#[test]
fn no_frame_limit_when_it_is_zero() {
    let limits = ShardLimits { client_frames_per_sec: 0, client_frame_burst: 1, ..ShardLimits::default() };
    let mut s = Shard::new(0, 1, limits, 0);
    let (a, _) = live_ws(&mut s, 1, 7);
    for _ in 0..1000 {
        s.on_data(a, &mut client_frame(true, 1, br#"{"op":3,"msg":"x"}"#), 0);
    }
    assert_eq!(room_sends(&mut s), 1000);
}

#[test]
fn a_drain_refuses_new_connections_and_spreads_the_closes_until_its_deadline() {
    let mut s = shard();
    let keys: Vec<u32> = (0..10).map(|u| live_ws(&mut s, u, 7).0).collect();
    assert!(s.has_room());
    s.on_command(Command::Drain { within_secs: 5 });
    assert!(!s.has_room(), "a draining shard takes no new connections");
    let closing = |s: &Shard| keys.iter().filter(|&&k| s.is_closing(k)).count();
    let mut per_tick = Vec::new();
    for now in 1..=5 {
        let before = closing(&s);
        s.on_tick(now);
        per_tick.push(closing(&s) - before);
    }
    assert_eq!(per_tick, [2, 2, 2, 2, 2], "spread over the ticks, all closed by the deadline");
    let out = written(&mut s, keys[0]);
    assert_eq!(out[..4], [0x88, 31, 0x03, 0xf4], "close 1012 'service restarting, reconnect'");
}

#[test]
fn removal_keeps_the_other_members_and_tells_logic() {
    let mut s = shard();
    let (a, a_id) = live_ws(&mut s, 1, 7);
    let (b, _) = live_ws(&mut s, 2, 7);
    let (c, _) = live_ws(&mut s, 3, 7);
    s.remove(a);
    assert_eq!(s.take_effects().collect::<Vec<_>>(), vec![Effect::Closed { conn_id: a_id }]);
    assert_eq!(s.room_members(7), 2);
    s.on_command(Command::Room { room_id: 7, frames: Framed::encode(&[b"{}"]) });
    assert!(s.has_output(b) && s.has_output(c));
    s.remove(c);
    s.remove(b);
    assert_eq!(s.room_members(7), 0);
}

#[test]
fn auth_answer_for_a_closed_connection_is_undone() {
    let mut s = shard();
    let (key, id) = s.open(Transport::Tcp, 0);
    let mut frame = Vec::new();
    wire::encode_tcp_frame(br#"{"op":6,"authToken":"t","roomId":1}"#, &mut frame).unwrap();
    s.on_data(key, &mut frame, 0);
    assert_eq!(s.take_effects().count(), 1);
    s.remove(key);
    assert_eq!(s.take_effects().count(), 0, "logic never heard of it");
    let ok = AuthedUser { user_id: 1, user_name: "u".into(), ..AuthedUser::default() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(ok)) });
    assert_eq!(s.take_effects().collect::<Vec<_>>(), vec![Effect::Closed { conn_id: id }]);
}

#[test]
fn refused_auth_closes_with_the_code() {
    let mut s = shard();
    let (key, id) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    s.on_data(key, &mut client_frame(true, 1, br#"{"authToken":"bad","roomId":1}"#), 0);
    let refused = AuthRefused { close_code: 1008, message: "invalid token".into() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Err(refused) });
    assert!(s.is_closing(key));
    let out = written(&mut s, key);
    assert!(out.ends_with(b"\x88\x0f\x03\xf0invalid token"), "{out:?}");
}

#[test]
fn an_oversized_token_is_refused_and_counted_without_asking_logic() {
    let mut s = shard();
    let (key, _) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    let auth =
        format!(r#"{{"authToken":"{}","roomId":1}}"#, "t".repeat(gochat_proto::wire::MAX_TOKEN_BYTES + 1));
    s.on_data(key, &mut client_frame(true, 1, auth.as_bytes()), 0);
    assert!(s.is_closing(key));
    assert!(s.take_effects().all(|e| !matches!(e, Effect::Auth { .. })), "logic is not asked");
    assert_eq!(s.stats().auth_failures.load(Ordering::Relaxed), 1);
    let out = written(&mut s, key);
    assert!(String::from_utf8_lossy(&out).contains("authToken is too long"), "{out:?}");
}

#[test]
fn slow_consumer_is_dropped_without_touching_others() {
    let mut s = shard();
    let (slow, _) = live_ws(&mut s, 1, 7);
    let (ok, _) = live_ws(&mut s, 2, 7);
    let big = Framed::encode(&[vec![b'y'; 5000]]);
    s.on_command(Command::Room { room_id: 7, frames: big });
    assert!(!s.is_closing(slow) && !s.is_closing(ok), "an empty queue takes any frame");
    let _ = written(&mut s, slow);
    let _ = written(&mut s, ok);
    let frames = Framed::encode(&[vec![b'x'; 400]]);
    for _ in 0..2 {
        s.on_command(Command::Room { room_id: 7, frames: frames.clone() });
        let _ = written(&mut s, ok);
    }
    s.on_command(Command::Room { room_id: 7, frames: frames.clone() });
    assert!(s.is_closing(slow), "over 1000 pending bytes");
    assert!(!s.has_output(slow), "its queue is freed");
    assert!(!s.is_closing(ok));
    assert_eq!(s.stats().slow_consumer_closes.load(Ordering::Relaxed), 1);
}

#[test]
fn pings_a_silent_peer_then_drops_it() {
    let mut s = shard();
    let (key, _) = live_ws(&mut s, 1, 7);
    s.on_tick(53);
    assert!(!s.has_output(key));
    s.on_tick(54);
    assert_eq!(written(&mut s, key), b"\x89\x00");
    s.on_tick(59);
    assert!(!s.is_closing(key));
    s.on_tick(60);
    assert!(s.is_closing(key));
}

#[test]
fn activity_postpones_the_ping() {
    let mut s = shard();
    let (key, _) = live_ws(&mut s, 1, 7);
    s.on_data(key, &mut client_frame(true, 10, b""), 30);
    s.on_tick(54);
    assert!(!s.has_output(key));
    s.on_tick(84);
    assert_eq!(written(&mut s, key), b"\x89\x00");
    s.on_data(key, &mut client_frame(true, 10, b""), 85);
    s.on_tick(120);
    assert!(!s.is_closing(key), "the pong reset the idle clock");
}

#[test]
fn unauthenticated_connections_time_out() {
    let mut s = shard();
    let (key, _) = s.open(Transport::WebSocket, 0);
    s.on_tick(9);
    assert!(!s.is_closing(key));
    s.on_tick(10);
    assert!(s.is_closing(key));
}

#[test]
fn shutdown_closes_everyone_with_going_away() {
    let mut s = shard();
    let (a, _) = live_ws(&mut s, 1, 7);
    s.on_command(Command::Shutdown);
    assert!(s.is_shutting_down() && !s.has_room());
    assert!(s.is_closing(a));
    assert!(written(&mut s, a).starts_with(b"\x88"));
}

#[test]
fn close_all_asks_everyone_to_reconnect_and_keeps_serving() {
    let mut s = shard();
    let (a, _) = live_ws(&mut s, 1, 7);
    let (b, _) = live_ws(&mut s, 2, 8);
    written(&mut s, a);
    written(&mut s, b);
    s.on_command(Command::CloseAll);
    assert!(!s.is_shutting_down(), "the shard goes on accepting");
    for key in [a, b] {
        assert!(s.is_closing(key));
        let out = written(&mut s, key);
        assert!(out.starts_with(b"\x88") && out[2..4] == 1012u16.to_be_bytes(), "{out:?}");
    }
    let (c, _) = live_ws(&mut s, 3, 7);
    assert!(!s.is_closing(c), "a new connection lives");
}

#[test]
fn a_closing_peer_that_never_reads_is_dropped_after_its_grace() {
    let mut s = shard();
    let (key, _) = live_ws(&mut s, 1, 7);
    s.on_command(Command::Room { room_id: 7, frames: Framed::encode(&[b"{}"]) });
    s.on_tick(1);
    s.begin_close(key, Some((1001, "idle timeout")));
    let mut dirty = Vec::new();
    s.take_dirty(&mut dirty);
    assert!(s.has_output(key), "the close frame waits for a peer that does not read");
    s.on_tick(5);
    assert!(s.has_output(key));
    s.on_tick(6);
    s.take_dirty(&mut dirty);
    assert_eq!(dirty, vec![key], "handed back to the driver to finish");
    assert!(s.is_closing(key) && !s.has_output(key));
}

#[test]
fn notices_reach_only_their_connection() {
    let mut s = shard();
    let (a, a_id) = live_ws(&mut s, 1, 7);
    let (b, _) = live_ws(&mut s, 2, 7);
    s.on_command(Command::Notice { key: a, conn_id: a_id, message: "too fast".into() });
    s.on_command(Command::Notice { key: b, conn_id: a_id, message: "stale".into() });
    assert!(String::from_utf8_lossy(&written(&mut s, a)).contains("too fast"));
    assert!(!s.has_output(b));
}

/// Sends a client JSON frame on a live WebSocket.
fn say(s: &mut Shard, key: u32, json: &str) {
    s.on_data(key, &mut client_frame(true, 1, json.as_bytes()), 0);
}

/// The JSON bodies of the server text frames queued for `key` (short frames only).
fn bodies(s: &mut Shard, key: u32) -> Vec<serde_json::Value> {
    let out = written(s, key);
    let mut at = 0;
    let mut got = Vec::new();
    while at + 2 <= out.len() {
        let (op, len) = (out[at] & 0x0f, out[at + 1] as usize);
        let (len, head) = match len {
            126 => (u16::from_be_bytes([out[at + 2], out[at + 3]]) as usize, 4),
            n => (n, 2),
        };
        if op == 1 {
            got.push(serde_json::from_slice(&out[at + head..at + head + len]).expect("a JSON body"));
        }
        at += head + len;
    }
    got
}

fn numbered(room: u64, seqs: &[u64]) -> Framed {
    let bodies: Vec<String> = seqs
        .iter()
        .map(|s| format!(r#"{{"op":3,"roomId":{room},"msg":"m{s}","seq":{s},"epoch":"e"}}"#))
        .collect();
    Framed::encode_numbered(&bodies, seqs, Framings::default())
}

fn msgs(bodies: &[serde_json::Value]) -> Vec<String> {
    bodies.iter().filter(|b| b["op"] == 3).map(|b| b["msg"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_connection_joins_and_leaves_rooms_over_the_socket() {
    let mut s = shard();
    let (a, a_id) = live_ws(&mut s, 1, 7);
    let (b, _) = live_ws(&mut s, 2, 8);
    say(&mut s, a, r#"{"op":10,"roomId":8}"#);
    let effects: Vec<_> = s.take_effects().collect();
    assert_eq!(effects, [Effect::Join { key: a, conn_id: a_id, user_id: 1, room_id: 8, since: None }]);
    s.on_command(Command::Room { room_id: 8, frames: numbered(8, &[1]) });
    assert!(!s.has_output(a), "held until logic answers");
    let position = Some(Position { epoch: "e".into(), seq: 0 });
    let answer = JoinAnswer { position, ..JoinAnswer::default() };
    s.on_command(Command::JoinDone { key: a, conn_id: a_id, room_id: 8, result: Ok(Box::new(answer)) });
    let got = bodies(&mut s, a);
    assert_eq!(got[0], serde_json::json!({"op": 10, "roomId": 8, "epoch": "e", "seq": 0}));
    assert_eq!(msgs(&got), ["m1"], "what arrived meanwhile follows the answer");
    // Now in both rooms: each room's messages, and sends to either.
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[5]) });
    s.on_command(Command::Room { room_id: 8, frames: numbered(8, &[2]) });
    assert_eq!(msgs(&bodies(&mut s, a)), ["m5", "m2"]);
    assert_eq!(msgs(&bodies(&mut s, b)), ["m1", "m2"]);
    say(&mut s, a, r#"{"op":3,"roomId":8,"msg":"to 8"}"#);
    say(&mut s, a, r#"{"op":3,"msg":"to the first"}"#);
    let sends: Vec<u64> = s
        .take_effects()
        .filter_map(|e| match e {
            Effect::RoomSend { room_id, .. } => Some(room_id),
            _ => None,
        })
        .collect();
    assert_eq!(sends, [8, 7]);
    say(&mut s, a, r#"{"op":3,"roomId":9,"msg":"x"}"#);
    assert_eq!(s.take_effects().count(), 0);
    assert!(bodies(&mut s, a)[0]["message"].as_str().unwrap().contains("not in room 9"));
    // Leaving the first room keeps the other.
    say(&mut s, a, r#"{"op":11,"roomId":7}"#);
    assert_eq!(s.take_effects().collect::<Vec<_>>(), [Effect::Leave { conn_id: a_id, room_id: 7 }]);
    assert_eq!(bodies(&mut s, a), [serde_json::json!({"op": 11, "roomId": 7})]);
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[6]) });
    s.on_command(Command::Room { room_id: 8, frames: numbered(8, &[3]) });
    assert_eq!(msgs(&bodies(&mut s, a)), ["m3"]);
    say(&mut s, a, r#"{"op":3,"msg":"first room gone"}"#);
    assert!(bodies(&mut s, a)[0]["message"].as_str().unwrap().contains("in no room"));
    // Closing takes it out of every room, and logic hears of it once.
    s.remove(a);
    assert_eq!(s.take_effects().collect::<Vec<_>>(), [Effect::Closed { conn_id: a_id }]);
    assert_eq!((s.room_members(7), s.room_members(8)), (0, 1));
}

#[test]
fn joins_are_idempotent_bounded_and_undone_when_left_before_the_answer() {
    let limits = ShardLimits { max_rooms_per_conn: 2, ..ShardLimits::default() };
    let mut s = Shard::new(0, 1, limits, 0);
    let (a, a_id) = live_ws(&mut s, 1, 7);
    say(&mut s, a, r#"{"op":10,"roomId":7}"#);
    assert_eq!(s.take_effects().count(), 0, "already in it");
    assert_eq!(bodies(&mut s, a), [serde_json::json!({"op": 10, "roomId": 7})]);
    say(&mut s, a, r#"{"op":10,"roomId":8}"#);
    say(&mut s, a, r#"{"op":10,"roomId":8}"#);
    assert_eq!(s.take_effects().count(), 1, "one join in progress");
    assert!(bodies(&mut s, a).is_empty(), "the answer comes from logic");
    say(&mut s, a, r#"{"op":10,"roomId":9}"#);
    assert!(bodies(&mut s, a)[0]["message"].as_str().unwrap().contains("at most 2 rooms"));
    say(&mut s, a, r#"{"op":3,"roomId":8,"msg":"too early"}"#);
    assert!(bodies(&mut s, a)[0]["message"].as_str().unwrap().contains("not in room 8"));
    say(&mut s, a, r#"{"op":11,"roomId":8}"#);
    assert_eq!(s.take_effects().collect::<Vec<_>>(), [Effect::Leave { conn_id: a_id, room_id: 8 }]);
    let _ = bodies(&mut s, a);
    let answer = Ok(Box::default());
    s.on_command(Command::JoinDone { key: a, conn_id: a_id, room_id: 8, result: answer });
    assert_eq!(
        s.take_effects().collect::<Vec<_>>(),
        [Effect::Leave { conn_id: a_id, room_id: 8 }],
        "a join logic recorded after the leave is undone"
    );
    assert!(bodies(&mut s, a).is_empty());
    assert_eq!(s.room_members(8), 0);
    // A refused join leaves it out, and says why.
    say(&mut s, a, r#"{"op":10,"roomId":9}"#);
    let _ = s.take_effects().count();
    s.on_command(Command::JoinDone { key: a, conn_id: a_id, room_id: 9, result: Err("no".into()) });
    assert_eq!(bodies(&mut s, a)[0]["message"], "no");
    assert_eq!(s.room_members(9), 0);
    // A join logic never answers is given up.
    say(&mut s, a, r#"{"op":10,"roomId":9}"#);
    let _ = s.take_effects().count();
    s.on_tick(joins::ANSWER_SECS);
    assert_eq!(s.take_effects().collect::<Vec<_>>(), [Effect::Leave { conn_id: a_id, room_id: 9 }]);
    assert!(bodies(&mut s, a)[0]["message"].as_str().unwrap().contains("timed out"));
    assert_eq!(s.room_members(9), 0);
}

#[test]
fn a_reconnecting_client_gets_what_it_missed_once_and_in_order() {
    let mut s = shard();
    let (key, id) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    let _ = written(&mut s, key);
    say(&mut s, key, r#"{"authToken":"t","roomId":7,"epoch":"e","seq":3}"#);
    let since = Some(Position { epoch: "e".into(), seq: 3 });
    assert_eq!(
        s.take_effects().collect::<Vec<_>>(),
        [Effect::Auth { key, conn_id: id, token: "t".into(), room_id: 7, since, acks: false }]
    );
    // While logic looks: 6 and 7 arrive live (6 is also in the history logic reads).
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[6, 7]) });
    assert!(!s.has_output(key), "nothing before the auth answer");
    let joined = JoinAnswer {
        position: Some(Position { epoch: "e".into(), seq: 6 }),
        recovered: Some(true),
        bodies: [4, 5, 6]
            .iter()
            .map(|s| format!(r#"{{"op":3,"msg":"m{s}","seq":{s}}}"#).into_bytes())
            .collect(),
    };
    let user = AuthedUser { user_id: 1, user_name: "u1".into(), joined, kept: Kept::default() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(user)) });
    let got = bodies(&mut s, key);
    assert_eq!(
        got[0],
        serde_json::json!({"op": 7, "userId": 1, "userName": "u1", "roomId": 7, "epoch": "e", "seq": 6, "recovered": true})
    );
    assert_eq!(msgs(&got), ["m4", "m5", "m6", "m7"]);
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[8]) });
    assert_eq!(msgs(&bodies(&mut s, key)), ["m8"]);
}

#[test]
fn late_live_copies_of_recovered_messages_are_dropped() {
    let mut s = shard();
    let (key, id) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    let _ = written(&mut s, key);
    say(&mut s, key, r#"{"authToken":"t","roomId":7,"epoch":"e","seq":1}"#);
    let _ = s.take_effects().count();
    let joined = JoinAnswer {
        position: Some(Position { epoch: "e".into(), seq: 3 }),
        recovered: Some(true),
        bodies: vec![br#"{"op":3,"msg":"m2"}"#.to_vec(), br#"{"op":3,"msg":"m3"}"#.to_vec()],
    };
    let user = AuthedUser { user_id: 1, user_name: "u1".into(), joined, kept: Kept::default() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(user)) });
    assert_eq!(msgs(&bodies(&mut s, key)), ["m2", "m3"]);
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[2, 3]) });
    s.on_command(Command::Room { room_id: 7, frames: Framed::encode(&[br#"{"op":4,"count":1}"#]) });
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[3, 4]) });
    let got = bodies(&mut s, key);
    assert_eq!(msgs(&got), ["m4"]);
    assert_eq!(got.iter().filter(|b| b["op"] == 4).count(), 1, "unnumbered frames pass");
}

#[test]
fn a_join_that_held_too_much_tells_the_client_to_reload() {
    let mut s = shard();
    let (key, id) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    say(&mut s, key, r#"{"authToken":"t","roomId":7}"#);
    let _ = s.take_effects().count();
    let _ = written(&mut s, key);
    for n in 0..5 {
        let body = format!(r#"{{"op":3,"msg":"{}"}}"#, "x".repeat(90 + n));
        s.on_command(Command::Room {
            room_id: 7,
            frames: Framed::encode_numbered(&[body], &[n as u64 + 1], Framings::default()),
        });
    }
    let position = Some(Position { epoch: "e".into(), seq: 0 });
    let user = AuthedUser {
        user_id: 1,
        user_name: "u1".into(),
        joined: JoinAnswer { position, ..JoinAnswer::default() },
        kept: Kept::default(),
    };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(user)) });
    let got = bodies(&mut s, key);
    assert_eq!(got[0]["recovered"], false, "it missed some while joining: {}", got[0]);
    assert_eq!(msgs(&got).len(), 2, "what fit in its bound (a quarter of 1000 bytes) is sent");
}

#[test]
fn kept_private_messages_come_right_after_the_auth_reply() {
    let mut s = shard();
    let (key, id) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    say(&mut s, key, r#"{"authToken":"t","roomId":7,"acks":true}"#);
    assert!(matches!(s.take_effects().next(), Some(Effect::Auth { acks: true, .. })));
    let _ = written(&mut s, key);
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[1]) });
    let kept = Kept { bodies: vec![br#"{"op":2,"msg":"while away","msgId":"9"}"#.to_vec()], more: 4 };
    let user = AuthedUser { user_id: 1, user_name: "u1".into(), joined: JoinAnswer::default(), kept };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(user)) });
    let got = bodies(&mut s, key);
    let ops: Vec<_> = got.iter().map(|b| b["op"].as_i64().unwrap()).collect();
    assert_eq!(ops, [7, 2, 3]);
    assert_eq!(got[0]["pending"], 4);
    // Its ack asks for the next ones, and they come when logic answers.
    say(&mut s, key, r#"{"op":12,"msgIds":["9"]}"#);
    let ack = Effect::Ack { key, conn_id: id, user_id: 1, ids: vec![9], more: true };
    assert_eq!(s.take_effects().collect::<Vec<_>>(), [ack]);
    say(&mut s, key, r#"{"op":12,"msgIds":["10"]}"#);
    assert!(matches!(s.take_effects().next(), Some(Effect::Ack { more: false, .. })), "asked once");
    let next = Kept { bodies: vec![br#"{"op":2,"msg":"next","msgId":"10"}"#.to_vec()], more: 0 };
    s.on_command(Command::Kept { key, conn_id: id, kept: next });
    assert_eq!(bodies(&mut s, key)[0]["msg"], "next");
}

#[test]
fn a_repeated_auth_frame_for_another_room_points_at_op_10() {
    let mut s = shard();
    let (a, _) = live_ws(&mut s, 1, 7);
    say(&mut s, a, r#"{"authToken":"t1","roomId":7}"#);
    assert_eq!(bodies(&mut s, a), [serde_json::json!({"op": 7, "userId": 1, "roomId": 7})]);
    say(&mut s, a, r#"{"authToken":"t1","roomId":8}"#);
    assert!(bodies(&mut s, a)[0]["message"].as_str().unwrap().contains("op 10"));
    assert_eq!(s.take_effects().count(), 0);
}

#[test]
fn an_auth_that_waits_long_keeps_its_room_held_not_open() {
    let limits = ShardLimits { auth_timeout_secs: 120, ..ShardLimits::default() };
    let mut s = Shard::new(0, 1, limits, 0);
    let (key, _) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    let _ = written(&mut s, key);
    say(&mut s, key, r#"{"authToken":"slow","roomId":7}"#);
    let _ = s.take_effects().count();
    s.on_tick(joins::ANSWER_SECS + 1);
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[1]) });
    assert!(!s.has_output(key), "an unauthenticated socket gets nothing of the room, however long it waits");
}

#[test]
fn a_refused_auth_leaves_the_room_it_was_listed_in() {
    let mut s = shard();
    let (key, id) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut UPGRADE.to_vec(), 0);
    say(&mut s, key, r#"{"authToken":"bad","roomId":7}"#);
    assert_eq!(s.room_members(7), 1, "listed while logic looks");
    let refused = AuthRefused { close_code: 1008, message: "invalid token".into() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Err(refused) });
    assert_eq!(s.room_members(7), 0);
    s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[1]) });
    assert!(!written(&mut s, key).windows(2).any(|w| w == b"m1"), "nothing of the room reaches it");
}

#[test]
fn binary_clients_get_the_same_messages_in_protobuf() {
    use gochat_proto::client::{client_frame, server_frame, Auth, ClientFrame, ServerFrame};
    use prost::Message as _;
    let mut s = shard();
    let (json, _) = live_ws(&mut s, 1, 7);
    let (key, id) = s.open(Transport::WebSocket, 0);
    let upgrade =
        String::from_utf8_lossy(UPGRADE).replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: gochat-pb\r\n\r\n");
    s.on_data(key, &mut upgrade.into_bytes(), 0);
    assert!(String::from_utf8_lossy(&written(&mut s, key)).contains("Sec-WebSocket-Protocol: gochat-pb"));
    assert_eq!(s.stats().binary_connections.load(Ordering::Relaxed), 1);
    let auth = Auth { auth_token: "t2".into(), room_id: 7, ..Auth::default() };
    let frame = ClientFrame { kind: Some(client_frame::Kind::Auth(auth)) }.encode_to_vec();
    s.on_data(key, &mut client_frame(true, 2, &frame), 0);
    assert!(matches!(s.take_effects().next(), Some(Effect::Auth { room_id: 7, .. })));
    let user = AuthedUser { user_id: 2, user_name: "u2".into(), ..AuthedUser::default() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(user)) });
    let binary_frames = |s: &mut Shard| {
        let out = written(s, key);
        let mut at = 0;
        let mut frames = Vec::new();
        while let Some((payload, len)) = ws::server_frame_payload(&out[at..]) {
            assert_eq!(out[at], 0x82, "binary frames only");
            frames.push(ServerFrame::decode(payload).unwrap());
            at += len;
        }
        frames
    };
    let ok = binary_frames(&mut s);
    assert!(
        matches!(&ok[..], [ServerFrame { op: 7, body: Some(server_frame::Body::AuthOk(a)) }] if a.user_id == 2)
    );
    // A batch framed before and after the gateway knew of binary clients: the same to both.
    for binary in [false, true] {
        s.on_command(Command::Room { room_id: 7, frames: numbered(7, &[1]).clone() });
        let framings = Framings { binary, ..Framings::default() };
        let framed = Framed::encode_numbered(&[br#"{"op":3,"roomId":7,"msg":"m2","seq":2}"#], &[2], framings);
        s.on_command(Command::Room { room_id: 7, frames: framed });
        let got = binary_frames(&mut s);
        let texts: Vec<&str> = got
            .iter()
            .map(|f| match &f.body {
                Some(server_frame::Body::Message(m)) => m.msg.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["m1", "m2"]);
        assert_eq!(msgs(&bodies(&mut s, json)), ["m1", "m2"], "the JSON member is unchanged");
    }
    // Its requests are read as JSON ones are, and bad frames are answered.
    let send = ClientFrame {
        kind: Some(client_frame::Kind::Send(gochat_proto::client::Send { room_id: 7, msg: "hi".into() })),
    };
    s.on_data(key, &mut client_frame(true, 2, &send.encode_to_vec()), 0);
    assert!(matches!(s.take_effects().next(), Some(Effect::RoomSend { room_id: 7, user_id: 2, .. })));
    s.on_data(key, &mut client_frame(true, 2, b"\xff\xff"), 0);
    let refused = binary_frames(&mut s);
    assert!(
        matches!(&refused[..], [ServerFrame { op: 8, body: Some(server_frame::Body::Error(e)) }] if e.message.starts_with("bad frame"))
    );
    assert!(!s.is_closing(key));
    s.remove(key);
    assert_eq!(s.stats().binary_connections.load(Ordering::Relaxed), 0);
}

#[test]
fn new_limits_apply_to_the_connections_already_open() {
    let mut s = shard();
    let (a, _) = live_ws(&mut s, 1, 7);
    say(&mut s, a, r#"{"op":10,"roomId":8}"#);
    assert_eq!(s.take_effects().count(), 1);
    s.on_command(Command::Limits(Box::new(ShardLimits { max_rooms_per_conn: 2, ..ShardLimits::default() })));
    say(&mut s, a, r#"{"op":10,"roomId":9}"#);
    assert_eq!(s.take_effects().count(), 0);
    assert!(bodies(&mut s, a)[0]["message"].as_str().unwrap().contains("at most 2 rooms"));
}
