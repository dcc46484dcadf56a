//! Private messages kept until acknowledged, through real sockets against `gochat up` (both
//! gateway drivers: GOCHAT_TEST_DRIVER): delivered when their user comes back, again to a
//! client that acknowledges until it does, once to a client that does not (gochat's).

use crate::common;

use common::{Server, User, Ws};
use gochat_proto::wire;
use serde_json::{json, Value};

async fn push(s: &Server, from: &User, to: &User, msg: &str) -> Value {
    s.api(
        "/push/push",
        json!({"authToken": from.token, "msg": msg, "toUserId": to.id.to_string(), "roomId": 1}),
    )
    .await
}

/// The private messages (op 2) the gateway had queued for a socket in room 1: those before a
/// room message it sends now comes back. Kept messages come right after the auth reply, so
/// after `ws_auth` this is every kept one that came, and nothing more can come later.
async fn queued_privates(ws: &mut Ws) -> Vec<Value> {
    ws.frames_before_marker(1).await.into_iter().filter(|f| f["op"] == wire::OP_SINGLE_SEND).collect()
}

/// The next `n` private messages (op 2).
async fn next_privates(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(ws.recv_op(wire::OP_SINGLE_SEND).await);
    }
    got
}

fn texts(messages: &[Value]) -> Vec<&str> {
    messages.iter().map(|m| m["msg"].as_str().unwrap()).collect()
}

/// Reconnects `who` as a client that acknowledges until the kept messages it gets are `want`,
/// while an acknowledgement is on its way to logic: before it arrives, each reconnect gets
/// `before`. Returns what the last one got.
async fn kept_once_acked(s: &Server, who: &User, before: &[&str], want: &[&str]) -> Vec<Value> {
    common::eventually_some("the acknowledgement has reached logic", || async {
        let (mut ws, _) = s.ws_auth(json!({"authToken": who.token, "roomId": 1, "acks": true})).await;
        let got = queued_privates(&mut ws).await;
        let t = texts(&got);
        assert!(t == want || t == before, "kept: {t:?}");
        (t == want).then_some(got)
    })
    .await
}

#[tokio::test]
async fn messages_to_an_offline_user_wait_for_them() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    for i in 1..=3 {
        let r = push(&s, &a, &b, &format!("while away {i}")).await;
        assert_eq!(r["code"], 0, "kept for later: {r}");
    }
    // gochat's client: the messages come right after the auth reply, and count as delivered.
    let (mut wb, ok) = s.ws_auth(json!({"authToken": b.token, "roomId": 1})).await;
    assert!(ok.get("pending").is_none(), "{ok}");
    let got = queued_privates(&mut wb).await;
    assert_eq!(texts(&got), ["while away 1", "while away 2", "while away 3"]);
    assert!(got.iter().all(|m| m["fromUserId"] == a.id && m["msgId"].is_string()));
    wb.close().await;
    let (mut wb, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1})).await;
    assert_eq!(queued_privates(&mut wb).await, Vec::<Value>::new(), "not again");
    // Live ones reach it as before, and are not kept: they do not come back either.
    assert_eq!(push(&s, &a, &b, "live").await["code"], 0);
    assert_eq!(texts(&next_privates(&mut wb, 1).await), ["live"]);
    wb.close().await;
    let (mut wb, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1})).await;
    assert_eq!(queued_privates(&mut wb).await, Vec::<Value>::new(), "not kept");
    s.shutdown().await;
}

#[tokio::test]
async fn with_both_kinds_of_client_online_messages_are_kept_for_the_one_that_acknowledges() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    // Only gochat's client online: sent as gochat sent it, and not kept.
    let (mut old, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1})).await;
    assert_eq!(push(&s, &a, &b, "to gochat's").await["code"], 0);
    assert_eq!(texts(&next_privates(&mut old, 1).await), ["to gochat's"]);
    let (mut acking, ok) = s.ws_auth(json!({"authToken": b.token, "roomId": 1, "acks": true})).await;
    assert!(ok.get("pending").is_none(), "{ok}");
    assert_eq!(queued_privates(&mut acking).await, Vec::<Value>::new(), "nothing kept");
    // With one that acknowledges online too, both get it and it is kept until acknowledged.
    assert_eq!(push(&s, &a, &b, "to both").await["code"], 0);
    assert_eq!(texts(&next_privates(&mut old, 1).await), ["to both"]);
    assert_eq!(texts(&next_privates(&mut acking, 1).await), ["to both"]);
    // gochat's client reconnecting does not take it from the one that acknowledges...
    old.close().await;
    let (mut old, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1})).await;
    assert_eq!(queued_privates(&mut old).await, Vec::<Value>::new(), "not twice");
    // ...which gets it again until it acknowledges it.
    acking.close().await;
    let (mut acking, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1, "acks": true})).await;
    let again = queued_privates(&mut acking).await;
    assert_eq!(texts(&again), ["to both"]);
    acking.send_json(json!({"op": wire::OP_ACK, "msgIds": [again[0]["msgId"]]})).await;
    old.close().await;
    kept_once_acked(&s, &b, &["to both"], &[]).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_acknowledges_gets_what_it_did_not_acknowledge_again() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let (mut wb, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1, "acks": true})).await;
    push(&s, &a, &b, "one").await;
    push(&s, &a, &b, "two").await;
    let got = next_privates(&mut wb, 2).await;
    assert_eq!(texts(&got), ["one", "two"]);
    wb.send_json(json!({"op": wire::OP_ACK, "msgIds": [got[0]["msgId"]]})).await;
    wb.close().await;
    // At least once: "two" again, with the same id.
    let again = kept_once_acked(&s, &b, &["one", "two"], &["two"]).await;
    assert_eq!(again[0]["msgId"], got[1]["msgId"]);
    let (mut wb, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1, "acks": true})).await;
    assert_eq!(texts(&queued_privates(&mut wb).await), ["two"]);
    wb.send_json(json!({"op": wire::OP_ACK, "msgIds": [again[0]["msgId"]]})).await;
    wb.close().await;
    kept_once_acked(&s, &b, &["two"], &[]).await;
    // Bad acknowledgements are answered; the socket stays.
    let (mut wb, _) = s.ws_auth(json!({"authToken": b.token, "roomId": 1, "acks": true})).await;
    for (bad, says) in [
        (json!({"op": 12}), "op 12 needs msgIds"),
        (json!({"op": 12, "msgIds": ["x"]}), r#"bad JSON: "x" is not a valid id at line 1 column 15"#),
        (
            json!({"op": 12, "msgIds": 5}),
            "bad JSON: invalid type: integer `5`, expected a sequence at line 1 column 11",
        ),
    ] {
        wb.send_json(bad.clone()).await;
        let err = wb.recv_op(wire::OP_ERROR).await;
        assert_eq!(err["message"], says, "{bad} got {err}");
    }
    assert_eq!(wb.frames_before_marker(1).await, Vec::<Value>::new(), "still served, and nothing else");
    s.shutdown().await;
}

#[tokio::test]
async fn many_kept_messages_come_a_chunk_per_acknowledgement() {
    // One sender's 130 messages: past the default share of one sender (100).
    let mut cfg = common::test_config();
    cfg.control.inbox_per_sender = 0;
    let s = Server::start_with(cfg).await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    for i in 0..130 {
        assert_eq!(push(&s, &a, &b, &format!("k{i}")).await["code"], 0);
    }
    let (mut wb, ok) = s.ws_auth(json!({"authToken": b.token, "roomId": 1, "acks": true})).await;
    assert_eq!(ok["pending"], 30, "{ok}");
    let first = queued_privates(&mut wb).await;
    assert_eq!(first.len(), 100, "the first chunk, and only it before an acknowledgement");
    let ids: Vec<Value> = first.iter().map(|m| m["msgId"].clone()).collect();
    wb.send_json(json!({"op": wire::OP_ACK, "msgIds": ids})).await;
    let rest = next_privates(&mut wb, 30).await;
    let all: Vec<&str> = texts(&first).into_iter().chain(texts(&rest)).collect();
    assert_eq!(all, (0..130).map(|i| format!("k{i}")).collect::<Vec<_>>(), "every one, in order");
    assert_eq!(queued_privates(&mut wb).await, Vec::<Value>::new(), "no more until acknowledged");
    s.shutdown().await;
}
#[tokio::test]
async fn a_full_inbox_refuses_more_and_says_so() {
    let mut cfg = common::test_config();
    cfg.control.inbox_size = 2;
    let s = Server::start_with(cfg).await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    assert_eq!(push(&s, &a, &b, "1").await["code"], 0);
    assert_eq!(push(&s, &a, &b, "2").await["code"], 0);
    let r = push(&s, &a, &b, "3").await;
    assert_eq!(r["code"], 1);
    assert_eq!(r["message"], format!("{} has too many unread messages; try again later", b.name));
    let r = s.api("/push/push", json!({"authToken": a.token, "msg": "x", "toUserId": "999999"})).await;
    assert_eq!(r["message"], "no user with id 999999");
    s.shutdown().await;
}
