//! Room history and recovery through real sockets against `gochat up` (both gateway drivers:
//! GOCHAT_TEST_DRIVER): a client that reconnects with the last position it saw gets what it
//! missed, once and in order, or is told to reload, and can.

use crate::common;

use std::time::Duration;

use common::{Server, Ws};
use gochat_proto::wire;
use serde_json::{json, Value};

/// The next room message (op 3), skipping counts, member lists and presence.
async fn next_message(ws: &mut Ws) -> Value {
    ws.recv_op(wire::OP_ROOM_SEND).await
}

/// A client's last position in a room, from a message or a join reply.
fn position(v: &Value) -> (String, u64) {
    (v["epoch"].as_str().expect("an epoch").to_string(), v["seq"].as_u64().expect("a seq"))
}

#[tokio::test]
async fn a_reconnecting_client_gets_what_it_missed_then_the_rest() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let _sender = s.ws(&b, 1).await;
    let (mut wa, ok) = s.ws_auth(json!({"authToken": a.token, "roomId": 1})).await;
    let (epoch, start) = position(&ok);
    assert!(ok.get("recovered").is_none(), "not asked to recover: {ok}");
    for i in 1..=3 {
        s.push_room(&b, 1, &format!("m{i}")).await;
    }
    let mut last = None;
    for i in 1..=3 {
        let m = next_message(&mut wa).await;
        assert_eq!(m["msg"], format!("m{i}"));
        assert_eq!(position(&m), (epoch.clone(), start + i), "numbered in the room: {m}");
        assert!(m["msgId"].is_string());
        last = Some(position(&m));
    }
    wa.close().await;
    for i in 4..=8 {
        s.push_room(&b, 1, &format!("m{i}")).await;
    }
    let (epoch, seq) = last.unwrap();
    let (mut wa, ok) =
        s.ws_auth(json!({"authToken": a.token, "roomId": 1, "epoch": epoch, "seq": seq})).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(ok["seq"], start + 8);
    s.push_room(&b, 1, "m9").await;
    for i in 4..=9 {
        let m = next_message(&mut wa).await;
        assert_eq!(m["msg"], format!("m{i}"), "once each, in order");
    }
    // None twice: a copy would have been queued before a message wa sends now comes back.
    let more = wa.frames_before_marker(1).await;
    assert!(more.iter().all(|f| f["op"] != wire::OP_ROOM_SEND), "{more:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_gap_older_than_the_history_says_reload_and_the_history_route_reloads() {
    let mut cfg = common::test_config();
    cfg.control.history_size = 3;
    let s = Server::start_with(cfg).await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut wb = s.ws(&b, 1).await;
    let (wa, ok) = s.ws_auth(json!({"authToken": a.token, "roomId": 1})).await;
    let (epoch, seq) = position(&ok);
    wa.close().await;
    for i in 1..=5 {
        s.push_room(&b, 1, &format!("m{i}")).await;
    }
    // Delivered everywhere, so none is still on its way when a comes back.
    while next_message(&mut wb).await["msg"] != "m5" {}
    let (mut wa, ok) =
        s.ws_auth(json!({"authToken": a.token, "roomId": 1, "epoch": epoch, "seq": seq})).await;
    assert_eq!(ok["recovered"], false, "5 missed, 3 kept: {ok}");
    s.push_room(&b, 1, "live").await;
    assert_eq!(next_message(&mut wa).await["msg"], "live", "nothing recovered, live ones follow");

    let r = s.api("/push/history", json!({"authToken": a.token, "roomId": 1})).await;
    assert_eq!(r["code"], 0, "{r}");
    let messages: Vec<&str> =
        r["data"]["messages"].as_array().unwrap().iter().map(|m| m["msg"].as_str().unwrap()).collect();
    assert_eq!(messages, ["m4", "m5", "live"]);
    assert_eq!(
        (r["data"]["epoch"].as_str(), r["data"]["seq"].as_u64()),
        (Some(epoch.as_str()), Some(seq + 6))
    );
    let r = s.api("/push/history", json!({"authToken": a.token, "roomId": 1, "limit": 1})).await;
    assert_eq!(r["data"]["messages"].as_array().unwrap().len(), 1);
    // A position of another epoch, or ahead of the room, is a reload too; bad ones are refused.
    for (epoch, seq) in [("other", 1), (epoch.as_str(), 999)] {
        let (_, ok) = s.ws_auth(json!({"authToken": a.token, "roomId": 1, "epoch": epoch, "seq": seq})).await;
        assert_eq!(ok["recovered"], false, "{epoch} {seq}: {ok}");
    }
    let mut bad = s.ws_raw().await;
    bad.send_json(json!({"authToken": a.token, "roomId": 1, "epoch": "e", "seq": "-1"})).await;
    assert!(bad.recv_op(wire::OP_ERROR).await["message"].as_str().unwrap().contains("not a valid id"));
    // History is for the room's members while rooms are closed.
    let c = s.user("c").await;
    let r = s.api("/push/history", json!({"authToken": c.token, "roomId": 1})).await;
    assert_eq!((r["code"].as_i64(), r["message"].as_str()), (Some(1), Some("join the room first")));
    s.shutdown().await;
}

#[tokio::test]
async fn a_join_over_the_socket_recovers_too() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let _sender = s.ws(&b, 2).await;
    let mut wa = s.ws(&a, 1).await;
    wa.send_json(json!({"op": 10, "roomId": 2})).await;
    let joined = wa.recv_op(wire::OP_JOIN).await;
    let (epoch, seq) = position(&joined);
    wa.send_json(json!({"op": 11, "roomId": 2})).await;
    wa.recv_op(wire::OP_LEAVE).await;
    s.push_room(&b, 2, "while out").await;
    wa.send_json(json!({"op": 10, "roomId": 2, "epoch": epoch, "seq": seq})).await;
    let joined = wa.recv_op(wire::OP_JOIN).await;
    assert_eq!(
        (joined["recovered"].as_bool(), joined["seq"].as_u64()),
        (Some(true), Some(seq + 1)),
        "{joined}"
    );
    assert_eq!(next_message(&mut wa).await["msg"], "while out");
    s.shutdown().await;
}

/// A client that drops and comes back again and again while a room is busy gets every message
/// exactly once, in order: those sent while it was away from the history, those sent while it
/// was joining held by the gateway, nothing twice where the two meet.
#[tokio::test]
async fn reconnects_during_a_busy_room_lose_nothing_and_repeat_nothing() {
    let _heavy = common::heavy().await;
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let _sender = s.ws(&b, 1).await;
    let total = 150u64;
    let api = s.api_url("/push/pushRoom");
    let token = b.token.clone();
    let pusher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 1..=total {
            let body = json!({"authToken": token, "roomId": 1, "msg": format!("n{i}")}).to_string();
            let r: Value = http.post(&api).body(body).send().await.unwrap().json().await.unwrap();
            assert_eq!(r["code"], 0, "{r}");
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    });
    let (mut ws, _) = s.ws_auth(json!({"authToken": a.token, "roomId": 1})).await;
    let mut got: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    while got.last().copied() != Some(total) {
        let m = next_message(&mut ws).await;
        let n: u64 = m["msg"].as_str().unwrap()[1..].parse().unwrap();
        got.push(n);
        let at = position(&m);
        // Every 20 messages: drop at once, come back after a moment, recover.
        if n % 20 == 0 && n < total {
            drop(ws);
            reconnects += 1;
            tokio::time::sleep(Duration::from_millis(30 * (reconnects % 3))).await;
            let (next, ok) =
                s.ws_auth(json!({"authToken": a.token, "roomId": 1, "epoch": at.0, "seq": at.1})).await;
            assert_eq!(ok["recovered"], true, "{ok}");
            ws = next;
        }
    }
    pusher.await.unwrap();
    let first = got[0];
    assert_eq!(got, (first..=total).collect::<Vec<_>>(), "after {reconnects} reconnects");
    assert!(reconnects >= 6);
    s.shutdown().await;
}
