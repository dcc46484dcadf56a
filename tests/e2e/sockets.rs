//! WebSocket and TCP clients through the whole flow: REST push → queue → worker → gateway.
//! Every test here runs under the driver named by `GOCHAT_TEST_DRIVER`.

use crate::common;

use std::time::Duration;

use common::{eventually, End, Server, User};
use gochat_gateway::testkit::{client_frame, UPGRADE};
use gochat_proto::wire;
use gochat_test_services::{self as services, Service};
use serde_json::json;

#[tokio::test]
async fn room_push_reaches_every_member_as_op3() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut wa = s.ws(&a, 1).await;
    let mut wb = s.ws(&b, 1).await;
    let r = s.push_room(&a, 1, "hello room").await;
    assert_eq!(r, json!({"code": 0, "message": "ok", "data": ""}));
    for ws in [&mut wa, &mut wb] {
        let m = ws.recv_op(wire::OP_ROOM_SEND).await;
        assert_eq!(m["msg"], "hello room");
        assert_eq!(m["fromUserId"], a.id);
        assert_eq!(m["fromUserName"], a.name);
        assert_eq!(m["roomId"], 1);
        assert_eq!(m["code"], 0);
        let time = m["createTime"].as_str().unwrap();
        assert!(chrono_like(time), "{time}");
    }
    s.shutdown().await;
}

/// `YYYY-MM-DD HH:MM:SS`
fn chrono_like(t: &str) -> bool {
    t.len() == 19
        && t.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == ' ',
            13 | 16 => c == ':',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn rooms_are_separate() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut wa = s.ws(&a, 11).await;
    let mut wb = s.ws(&b, 12).await;
    s.push_room(&a, 11, "for 11").await;
    s.push_room(&b, 12, "for 12").await;
    assert_eq!(wa.recv_op(wire::OP_ROOM_SEND).await["msg"], "for 11");
    assert_eq!(wb.recv_op(wire::OP_ROOM_SEND).await["msg"], "for 12");
    // Had room 12's message gone to wa too, it would have been queued with wb's copy: before
    // a message wa sends now comes back.
    let late = wa.frames_before_marker(11).await;
    assert!(late.iter().all(|f| f["msg"] != "for 12"), "{late:?}");
    s.shutdown().await;
}

/// A check that nothing arrives cannot pass on a socket that is gone.
#[tokio::test]
#[should_panic(expected = "within the window")]
async fn a_socket_closed_within_a_window_fails_the_check_that_nothing_arrived() {
    let s = Server::start().await;
    let a = s.user("a").await;
    let mut ws = s.ws(&a, 1).await;
    // Logging out closes the session's sockets (op 8, then 1008).
    assert_eq!(s.api("/user/logout", json!({"authToken": a.token})).await["code"], 0);
    let got = ws.frames_within(common::WAIT).await;
    assert!(got.iter().all(|f| f["op"] != wire::OP_ROOM_SEND), "{got:?}");
}

#[tokio::test]
async fn private_message_reaches_only_its_target() {
    let s = Server::start().await;
    let (a, b, c) = (s.user("a").await, s.user("b").await, s.user("c").await);
    let mut wa = s.ws(&a, 1).await;
    let mut wb = s.ws(&b, 1).await;
    let mut wc = s.ws(&c, 1).await;
    let r = s
        .api(
            "/push/push",
            json!({"authToken": a.token, "msg": "psst", "toUserId": b.id.to_string(), "roomId": 1}),
        )
        .await;
    assert_eq!(r, json!({"code": 0, "message": "ok", "data": null}));
    let m = wb.recv_op(wire::OP_SINGLE_SEND).await;
    assert_eq!(m["msg"], "psst");
    assert_eq!((m["fromUserId"].as_u64(), m["toUserId"].as_u64()), (Some(a.id), Some(b.id)));
    assert_eq!((m["fromUserName"].as_str(), m["toUserName"].as_str()), (Some(&*a.name), Some(&*b.name)));
    // A room message sent after the private one arrives after it everywhere, so anyone who was
    // going to get the private message has it by then.
    s.push_room(&a, 1, "marker").await;
    for ws in [&mut wa, &mut wc] {
        loop {
            let f = ws.next_json().await.unwrap();
            assert_ne!(f["op"], wire::OP_SINGLE_SEND, "a private message leaked: {f}");
            if f["msg"] == "marker" {
                break;
            }
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn private_message_to_offline_or_unknown_user_is_a_clean_error() {
    // Without an inbox, a message to an offline user is refused, as gochat did.
    let mut cfg = common::test_config();
    cfg.control.inbox_size = 0;
    let s = Server::start_with(cfg).await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let r = s
        .api(
            "/push/push",
            json!({"authToken": a.token, "msg": "x", "toUserId": b.id.to_string(), "roomId": 1}),
        )
        .await;
    assert_eq!(r["code"], 1);
    assert_eq!(r["message"], format!("user {} is not online", b.name));
    let r = s
        .api("/push/push", json!({"authToken": a.token, "msg": "x", "toUserId": "999999", "roomId": 1}))
        .await;
    assert_eq!((r["code"].as_i64(), r["message"].as_str()), (Some(1), Some("no user with id 999999")));
    let r =
        s.api("/push/push", json!({"authToken": a.token, "msg": "x", "toUserId": "abc", "roomId": 1})).await;
    assert_eq!(r["code"], 1);
    // Still serving.
    let mut wb = s.ws(&b, 1).await;
    let _wa = s.ws(&a, 1).await;
    s.push_room(&a, 1, "still here").await;
    assert_eq!(wb.recv_op(wire::OP_ROOM_SEND).await["msg"], "still here");
    s.shutdown().await;
}

#[tokio::test]
async fn count_and_room_info() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut wa = s.ws(&a, 3).await;
    let _wb = s.ws(&b, 3).await;
    let r = s.api("/push/count", json!({"authToken": a.token, "roomId": 3})).await;
    assert_eq!(r, json!({"code": 0, "message": "ok", "data": ""}));
    wait_count(&mut wa, 2).await;
    let r = s.api("/push/getRoomInfo", json!({"authToken": a.token, "roomId": 3})).await;
    assert_eq!(r["code"], 0);
    let info = loop {
        let info = wa.recv_op(wire::OP_ROOM_INFO).await;
        if info["count"] == 2 {
            break info;
        }
    };
    assert_eq!(info["roomId"], 3);
    assert_eq!(info["roomUserInfo"], json!({a.id.to_string(): a.name, b.id.to_string(): b.name}));
    s.shutdown().await;
}

/// Reads op 4 frames until one says `n`.
async fn wait_count(ws: &mut common::Ws, n: u64) {
    loop {
        if ws.recv_op(wire::OP_ROOM_COUNT).await["count"] == n {
            return;
        }
    }
}

#[tokio::test]
async fn several_connections_of_one_user_count_once_and_leave_cleanly() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let a1 = s.ws(&a, 4).await;
    let a2 = s.ws(&a, 4).await;
    let mut wb = s.ws(&b, 4).await;
    let logic = s.up.control.logic.clone();
    assert_eq!(logic.state().room_count(4).await.unwrap(), 2);
    a1.close().await;
    // The first close of a's must not remove a (or b) from the room.
    s.api("/push/count", json!({"authToken": b.token, "roomId": 4})).await;
    wait_count(&mut wb, 2).await;
    eventually("gateway reported the close", || async { s.up.gateway_conns() == 2 }).await;
    assert_eq!(logic.state().room_count(4).await.unwrap(), 2);
    a2.close().await;
    // a's last connection gone: the room is told (op 4 and op 5, not an empty frame).
    wait_count(&mut wb, 1).await;
    let info = wb.recv_op(wire::OP_ROOM_INFO).await;
    assert_eq!(info["roomUserInfo"], json!({b.id.to_string(): b.name}));
    assert_eq!(logic.state().room_count(4).await.unwrap(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn tcp_and_websocket_clients_share_a_room() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut ws = s.ws(&a, 5).await;
    let mut tcp = s.tcp(&b, 5).await;
    // A TCP room send; the frame claims another sender, which is ignored.
    tcp.send_json(json!({"op": 3, "msg": "from tcp", "roomId": 5, "authToken": b.token, "fromUserId": a.id, "fromUserName": "spoof"})).await;
    let m = ws.recv_op(wire::OP_ROOM_SEND).await;
    assert_eq!((m["msg"].as_str(), m["fromUserId"].as_u64()), (Some("from tcp"), Some(b.id)));
    assert_eq!(m["fromUserName"], b.name);
    assert_eq!(tcp.recv_op(wire::OP_ROOM_SEND).await["msg"], "from tcp");
    s.push_room(&a, 5, "from rest").await;
    let m = tcp.recv_op(wire::OP_ROOM_SEND).await;
    assert_eq!((m["msg"].as_str(), m["fromUserId"].as_u64()), (Some("from rest"), Some(a.id)));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_and_logged_out_tokens_are_refused() {
    let s = Server::start().await;
    let a = s.user("a").await;
    let mut ws = s.ws_raw().await;
    ws.send_json(json!({"authToken": "forged", "roomId": 1})).await;
    assert!(matches!(ws.recv_end().await, End::Close(1008, _)));

    s.api("/user/logout", json!({"authToken": a.token})).await;
    let mut ws = s.ws_raw().await;
    ws.send_json(json!({"authToken": a.token, "roomId": 1})).await;
    assert!(matches!(ws.recv_end().await, End::Close(1008, _)));

    let mut tcp = common::Tcp(tokio::net::TcpStream::connect(s.up.gateway.tcp_addr.unwrap()).await.unwrap());
    tcp.send_json(json!({"authToken": "forged", "roomId": 1, "op": 6})).await;
    let err = tcp.next_json().await.expect("an error frame before the close");
    assert_eq!(err["op"], wire::OP_ERROR);
    assert_eq!(tcp.next_json().await, None, "then closed");
    s.shutdown().await;
}

#[tokio::test]
async fn logout_closes_the_sockets_of_that_session_only() {
    let s = Server::start().await;
    let a = s.user("a").await;
    let second = s.api("/user/login", json!({"userName": a.name, "passWord": "secret-1"})).await;
    let a2 = User { token: second["data"].as_str().unwrap().to_string(), id: a.id, name: a.name.clone() };
    let mut ws = s.ws(&a, 1).await;
    let mut ws_other_room = s.ws(&a, 2).await;
    let mut tcp = s.tcp(&a, 1).await;
    let mut other_session = s.ws(&a2, 1).await;

    let r = s.api("/user/logout", json!({"authToken": a.token})).await;
    assert_eq!(r["code"], 0, "{r}");
    for ws in [&mut ws, &mut ws_other_room] {
        let notice = ws.recv_op(wire::OP_ERROR).await;
        assert_eq!(notice["message"], "logged out");
        assert_eq!(ws.recv_end().await, End::Close(1008, "logged out".into()));
    }
    // After whatever room updates came first.
    let err = tcp.recv_op(wire::OP_ERROR).await;
    assert_eq!(err["message"], "logged out");
    assert_eq!(tcp.next_json().await, None, "then closed");

    // The user's other session is untouched and still gets its room's messages.
    assert_eq!(s.push_room(&a2, 1, "still here").await["code"], 0);
    assert_eq!(other_session.recv_op(wire::OP_ROOM_SEND).await["msg"], "still here");
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_server_keeps_serving() {
    let s = Server::start().await;
    let a = s.user("a").await;

    // Not HTTP at all on the WebSocket port.
    let mut raw = tokio::net::TcpStream::connect(s.up.gateway.ws_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"\x16\x03\x01\x00garbage\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut raw, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    // Bad JSON as the auth frame: an error, then a policy close.
    let mut ws = s.ws_raw().await;
    ws.send_text("{not json").await;
    let err = ws.next_json().await.unwrap();
    assert_eq!(err["op"], wire::OP_ERROR);
    assert!(matches!(ws.recv_end().await, End::Close(1008, _)));

    // Invalid UTF-8 in a text frame: close 1007.
    let mut ws = s.ws_raw().await;
    use futures_util::SinkExt;
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![0xff, 0xfe],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    ws.0.send(tokio_tungstenite::tungstenite::Message::Frame(frame)).await.unwrap();
    assert!(matches!(ws.recv_end().await, End::Close(1007, _)));

    // Once live: bad frames get op 8 and the connection stays.
    let mut ws = s.ws(&a, 6).await;
    ws.send_text("garbage").await;
    assert_eq!(ws.recv_op(wire::OP_ERROR).await["message"], "bad JSON: expected value at line 1 column 1");
    ws.send_json(json!({"op": 99})).await;
    assert_eq!(ws.recv_op(wire::OP_ERROR).await["message"], "unknown request");
    ws.send_json(json!({"authToken": a.token, "roomId": 6})).await;
    assert_eq!(ws.recv_op(wire::OP_AUTH_OK).await["roomId"], 6, "repeating the auth frame is harmless");
    ws.send_json(json!({"authToken": a.token, "roomId": 7})).await;
    assert_eq!(
        ws.recv_op(wire::OP_ERROR).await["message"],
        "this connection is not in room 7; join it with op 10",
        "no silent room switch"
    );
    s.push_room(&a, 6, "still live").await;
    assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "still live");
    assert_eq!(
        s.up.control.logic.state().room_count(6).await.unwrap(),
        1,
        "the repeated auth did not double-join"
    );

    // TCP garbage: an error frame, then closed; others unaffected.
    let mut tcp = common::Tcp(tokio::net::TcpStream::connect(s.up.gateway.tcp_addr.unwrap()).await.unwrap());
    tokio::io::AsyncWriteExt::write_all(&mut tcp.0, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(tcp.next_json().await.unwrap()["op"], wire::OP_ERROR);
    assert_eq!(tcp.next_json().await, None);
    s.push_room(&a, 6, "after garbage").await;
    assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "after garbage");
    s.shutdown().await;
}

#[tokio::test]
async fn silent_peers_are_pinged_then_dropped() {
    let mut cfg = common::test_config();
    cfg.gateway.ping_after_secs = 1;
    cfg.gateway.idle_timeout_secs = 2;
    let s = Server::start_with(cfg).await;
    let a = s.user("a").await;
    // A raw client that authenticates, then never answers pings.
    let mut raw = tokio::net::TcpStream::connect(s.up.gateway.ws_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(UPGRADE).await.unwrap();
    let auth = json!({"authToken": a.token, "roomId": 8}).to_string();
    raw.write_all(&client_frame(true, 1, auth.as_bytes())).await.unwrap();
    // And a well-behaved client (tungstenite answers pings while reading).
    let mut good = s.ws(&a, 8).await;
    let silent = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let started = std::time::Instant::now();
        loop {
            let n = tokio::time::timeout(common::WAIT, raw.read(&mut buf))
                .await
                .expect("dropped in time")
                .unwrap();
            if n == 0 {
                return (seen, started.elapsed());
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    // The good client keeps reading (so it answers pings) well past the idle timeout.
    let ((seen, lasted), frames) = tokio::join!(silent, good.frames_within(Duration::from_millis(4000)));
    assert!(lasted >= Duration::from_millis(1500), "not dropped before the idle timeout");
    assert!(seen.windows(2).any(|w| w == [0x89, 0x00]), "a ping came first");
    assert!(frames.iter().all(|f| f["op"] != wire::OP_ERROR));
    s.push_room(&a, 8, "alive").await;
    assert_eq!(good.recv_op(wire::OP_ROOM_SEND).await["msg"], "alive");
    s.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_connections_time_out() {
    let mut cfg = common::test_config();
    cfg.gateway.auth_timeout_secs = 1;
    let s = Server::start_with(cfg).await;
    let mut ws = s.ws_raw().await;
    assert!(matches!(ws.recv_end().await, End::Close(1008, r) if r == "authentication timeout"));
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let s = Server::start().await;
    let a = s.user("a").await;
    let mut ws = s.ws(&a, 9).await;
    let stop = tokio::spawn(s.up.shutdown());
    assert!(matches!(ws.recv_end().await, End::Close(1001, _)));
    stop.await.unwrap();
}

#[tokio::test]
async fn a_drain_closes_sockets_a_few_at_a_time_and_takes_no_new_ones() {
    let s = Server::start().await;
    let a = s.user("a").await;
    let mut sockets = Vec::new();
    for _ in 0..12 {
        sockets.push(s.ws(&a, 40).await);
    }
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(common::grpc_health(s.up.gateway.grpc_addr).await, ServingStatus::Serving);
    assert_eq!(common::grpc_health(s.up.control.grpc_addr).await, ServingStatus::Serving);
    let started = std::time::Instant::now();
    let drain = s.up.gateway.drain(Duration::from_secs(3));
    let watch = async {
        // When each socket is closed, and how.
        let mut ends = Vec::new();
        for ws in &mut sockets {
            let end = ws.recv_end().await;
            ends.push((end, started.elapsed()));
        }
        // A new client during the drain is not taken.
        let refused = tokio_tungstenite::connect_async(s.ws_url()).await.is_err();
        (ends, refused)
    };
    let ((), (ends, refused)) = tokio::join!(drain, watch);
    assert!(refused, "a draining gateway took a new connection");
    let health = common::grpc_health(s.up.gateway.grpc_addr).await;
    assert_eq!(health, ServingStatus::NotServing, "a draining gateway still says it serves");
    for (end, _) in &ends {
        assert_eq!(*end, End::Close(1012, "service restarting, reconnect".into()));
    }
    let last = ends.iter().map(|(_, at)| *at).max().unwrap();
    let first = ends.iter().map(|(_, at)| *at).min().unwrap();
    assert!(last - first >= Duration::from_millis(1500), "not spread: all closed within {:?}", last - first);
    assert!(last <= Duration::from_secs(5), "the last close came after {last:?}");
    assert_eq!(s.up.gateway_conns(), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn the_gateway_serves_prometheus_metrics_on_its_admin_listener() {
    let mut cfg = common::test_config();
    cfg.gateway.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = Server::start_with(cfg).await;
    let a = s.user("a").await;
    let mut ws = s.ws(&a, 41).await;
    s.push_room(&a, 41, "counted").await;
    ws.recv_op(wire::OP_ROOM_SEND).await;
    let url = format!("http://{}/metrics", s.up.gateway.admin_addr.expect("admin listener on"));
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/plain; version=0.0.4");
    let text = res.text().await.unwrap();
    // Summed over the shards, each line labelled with its shard and driver.
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("gochat_gateway_{name}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("connections"), 1, "{text}");
    assert!(sum("frames_out_total") >= 2, "the auth reply and the message: {text}");
    // The auth reply and the message went out in writes of their own (the message was pushed
    // once the reply had arrived), and no write went out without a queued frame.
    let sends = sum("sends_total");
    assert!((2..=sum("frames_out_total")).contains(&sends), "{text}");
    assert_eq!(sum("draining"), 0);
    let driver = s.up.gateway.driver.name();
    assert!(text.contains(&format!("shard=\"1\",driver=\"{driver}\"")), "{text}");
    assert!(text.contains("# TYPE gochat_gateway_frames_out_total counter"));
    s.shutdown().await;
}

#[tokio::test]
async fn gateway_stats_count_connections_per_shard() {
    use gochat_proto::gateway::gateway_client::GatewayClient;
    use gochat_proto::gateway::StatsRequest;
    let s = Server::start().await;
    let a = s.user("a").await;
    let _w1 = s.ws(&a, 1).await;
    let _w2 = s.ws(&a, 1).await;
    let mut client = GatewayClient::connect(format!("http://{}", s.up.gateway.grpc_addr)).await.unwrap();
    let stats = client.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.gateway_id, "gateway-1");
    assert_eq!(stats.shards.len(), 2);
    assert_eq!(stats.shards.iter().map(|s| s.connections).sum::<u64>(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn a_full_batch_of_the_largest_messages_is_taken_by_a_gateway() {
    use gochat_proto::gateway::gateway_client::GatewayClient;
    use gochat_proto::gateway::{PushBatch, RoomPush};
    let s = Server::start().await;
    let a = s.user("a").await;
    let mut ws = s.ws(&a, 5).await;
    // As large as a worker's batch gets, far over tonic's default limit of 4 MiB: messages of the
    // longest text escaped as JSON (`\u0001` for every byte) up to the bytes at which a batch
    // stops growing, and one more read of them.
    use gochat_queue_worker::worker::{BATCH_BYTES, READ_CHUNK};
    let msg = "\u{1}".repeat(10 * 1024);
    let body = serde_json::to_vec(&json!({"op": 3, "msg": msg, "roomId": 6})).unwrap();
    let bodies = vec![body.clone(); BATCH_BYTES / body.len() + READ_CHUNK];
    assert!(body.len() > 60_000);
    let last = br#"{"op":3,"msg":"after the batch","roomId":5}"#.to_vec();
    let rooms = vec![
        RoomPush { room_id: 6, bodies, ids: vec![], seqs: vec![] },
        RoomPush { room_id: 5, bodies: vec![last], ids: vec![], seqs: vec![] },
    ];
    let mut client = GatewayClient::connect(format!("http://{}", s.up.gateway.grpc_addr)).await.unwrap();
    let batch = PushBatch { batch_id: 77, rooms, ..Default::default() };
    let mut acks = client.push(tokio_stream::iter([batch])).await.unwrap().into_inner();
    assert_eq!(acks.message().await.unwrap().unwrap().batch_id, 77);
    assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "after the batch");
    s.shutdown().await;
}

#[tokio::test]
async fn a_refused_socket_room_send_is_answered_and_the_connection_stays() {
    let s = Server::start().await;
    let a = s.user("a").await;
    let mut tcp = s.tcp(&a, 10).await;
    tcp.send_json(json!({"op": 3, "msg": "x".repeat(11_000), "roomId": 10})).await;
    let err = tcp.recv_op(wire::OP_ERROR).await;
    assert_eq!(err["message"], "msg is too long (max 10240 bytes)");
    tcp.send_json(json!({"op": 3, "msg": "", "roomId": 10})).await;
    assert_eq!(tcp.recv_op(wire::OP_ERROR).await["message"], "msg must not be empty");
    tcp.send_json(json!({"op": 3, "msg": "fine", "roomId": 10})).await;
    assert_eq!(tcp.recv_op(wire::OP_ROOM_SEND).await["msg"], "fine");
    s.shutdown().await;
}

#[tokio::test]
async fn the_echo_endpoint_needs_no_auth_and_keeps_opcodes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut cfg = common::test_config();
    cfg.gateway.ws_echo_path = Some("/echo".into());
    let s = Server::start_with(cfg).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/echo", s.up.gateway.ws_addr)).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    ws.send(Message::binary(vec![0u8, 159, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 159, 255]));
    // Without the setting there is no such endpoint.
    let plain = Server::start().await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/echo", plain.up.gateway.ws_addr)).await;
    assert!(refused.is_err());
    s.shutdown().await;
    plain.shutdown().await;
}

#[tokio::test]
async fn a_join_storm_costs_one_room_update_per_interval() {
    let s = Server::start().await;
    let watcher = s.user("w").await;
    let mut ws = s.ws(&watcher, 12).await;
    let mut users = Vec::new();
    for _ in 0..20 {
        users.push(s.user("j").await);
    }
    let mut joined = Vec::new();
    for u in &users {
        joined.push(s.ws(u, 12).await);
    }
    // All 21 members show up in a member list, sent a handful of times, not once per join.
    let mut lists = 0;
    loop {
        let info = ws.recv_op(wire::OP_ROOM_INFO).await;
        lists += 1;
        if info["count"] == 21 {
            break;
        }
    }
    // Nothing has changed since, so no list is to come: any already queued comes before a
    // message the socket sends now.
    let later = ws.frames_before_marker(12).await;
    lists += later.iter().filter(|f| f["op"] == wire::OP_ROOM_INFO).count();
    assert!(lists <= 4, "{lists} member lists for 20 joins");
    s.shutdown().await;
}

#[tokio::test]
async fn browsers_from_origins_not_allowed_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut cfg = common::test_config();
    cfg.gateway.allowed_origins = vec!["http://chat.example".into()];
    let s = Server::start_with(cfg).await;
    let connect = |origin: &'static str| {
        let mut req = s.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    match connect("http://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| "a socket")),
    }
    assert!(connect("http://chat.example").await.is_ok(), "the allowed origin connects");
    let a = s.user("a").await;
    s.ws(&a, 1).await; // no Origin (not a browser): unaffected
    s.shutdown().await;
}

/// The process's TCP sockets that are not listening: (local, peer, TCP_NODELAY).
#[allow(unsafe_code)]
fn connected_tcp_sockets() -> Vec<(std::net::SocketAddr, std::net::SocketAddr, bool)> {
    use std::os::fd::BorrowedFd;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_socket =
            std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is open (listed just now) and only borrowed for these calls;
        // a descriptor closed meanwhile makes them fail, and is skipped.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else { continue };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else { continue };
        if sock.r#type().ok() != Some(socket2::Type::STREAM) {
            continue;
        }
        out.push((local, peer, sock.tcp_nodelay().unwrap_or(false)));
    }
    out
}

/// Every socket the roles accept or open has no Nagle delay: a small message written behind
/// another would otherwise wait for the peer's delayed acknowledgement (~40 ms), which put
/// private messages at p50 61–67 ms above 300 a second.
async fn roles_sockets_have_no_nagle_delay(s: &Server, stores: &[u16]) {
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut wb = s.ws(&b, 1).await;
    let r =
        s.api("/push/push", json!({"authToken": a.token, "toUserId": b.id, "roomId": 1, "msg": "hi"})).await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(wb.recv_op(wire::OP_SINGLE_SEND).await["msg"], "hi");
    let _ = reqwest::get(format!("http://{}/", s.up.control.site_addr.unwrap())).await.unwrap();
    let control = &s.up.control;
    let accepting = [
        control.api_addr.port(),
        control.site_addr.unwrap().port(),
        control.grpc_addr.port(),
        s.up.gateway.grpc_addr.port(),
    ];
    let roles_call = [control.grpc_addr.port(), s.up.gateway.grpc_addr.port()];
    let sockets = connected_tcp_sockets();
    let accepted: Vec<_> = sockets.iter().filter(|(local, _, _)| accepting.contains(&local.port())).collect();
    let opened: Vec<_> = sockets
        .iter()
        .filter(|(local, peer, _)| {
            !accepting.contains(&local.port())
                && (roles_call.contains(&peer.port()) || stores.contains(&peer.port()))
        })
        .collect();
    // Accepted: REST, page, logic's gRPC (from the gateway and the worker), the gateway's gRPC
    // (from the worker); opened: their other ends, and the stores'.
    assert!(accepted.len() >= 5 && opened.len() >= 3 + stores.len(), "{sockets:?}");
    for (local, peer, nodelay) in accepted.iter().chain(&opened) {
        assert!(nodelay, "{local} -> {peer} has Nagle's delay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_the_roles_accept_or_open_has_no_nagle_delay() {
    let s = Server::start().await;
    roles_sockets_have_no_nagle_delay(&s, &[]).await;
    s.shutdown().await;
    // With the production stores: Redis for the state, PostgreSQL for users.
    if !services::present_for(" (its part on Redis and PostgreSQL)", &[Service::Redis, Service::Postgres]) {
        return;
    }
    let (redis, pg) = (common::RedisPrefix::new("nodelay"), common::PgDatabase::create("nodelay"));
    let mut cfg = common::test_config();
    cfg.control.state = gochat_control::config::StateKind::Redis;
    (cfg.control.redis_url, cfg.control.redis_prefix) = (redis.url.clone(), redis.prefix.clone());
    cfg.control.node_id = Some(7);
    cfg.control.database = pg.url.clone();
    let s = Server::start_with(cfg).await;
    roles_sockets_have_no_nagle_delay(&s, &[6379, 5432]).await;
    s.shutdown().await;
}
