//! The server API for application backends, over HTTP and gRPC, against `gochat up`: what a
//! backend with a key does (publish to a room, a user, users and everyone; disconnect and kick;
//! presence, info, history) and what socket clients see of it; and every refusal.

use std::time::Duration;

use crate::common;

use common::{eventually, test_config, End, Server};
use gochat_proto::api::server_api_client::ServerApiClient;
use gochat_proto::api::{BroadcastRequest, HistoryRequest, InfoRequest, PresenceRequest, PublishRequest};
use gochat_proto::wire;
use serde_json::{json, Value};
use tonic::Code;

const KEY: &str = "test-key-0123456789abcdef0123456789";
const READ_KEY: &str = "read-key-0123456789abcdef0123456789";

fn config() -> gochat::Config {
    let mut cfg = test_config();
    cfg.control.api_keys = vec![KEY.into()];
    cfg.control.api_read_keys = vec![READ_KEY.into()];
    // The page's API under `/api` too: gochat's routes answer there, and the server API's stay
    // its own.
    cfg.control.site_api_url = Some("/api".into());
    cfg
}

/// POSTs `body` to `/api/{method}` with `key` (none: no header); the status and the JSON.
async fn call(s: &Server, key: Option<&str>, method: &str, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(s.api_url(&format!("/api/{method}"))).body(body.to_string());
    if let Some(key) = key {
        req = req.header("Authorization", format!("apikey {key}"));
    }
    let res = req.send().await.expect("REST reachable");
    let status = res.status().as_u16();
    (status, res.json().await.expect("the server API answers JSON"))
}

async fn ok(s: &Server, method: &str, body: Value) -> Value {
    let (status, v) = call(s, Some(KEY), method, &body.to_string()).await;
    assert_eq!(status, 200, "{method} {body}: {v}");
    v
}

#[tokio::test]
async fn a_backend_publishes_reads_and_disconnects_over_http() {
    let s = Server::start_with(config()).await;
    let (a, b) = (s.user("api-a").await, s.user("api-b").await);
    let mut ws_a = s.ws(&a, 7).await;
    let mut ws_b = s.ws(&b, 8).await;

    // To a room: numbered in its history, from the system (id 0) under the configured name.
    let r = ok(&s, "publish", json!({"roomId": 7, "msg": "hello room"})).await;
    let m = ws_a.recv_op(wire::OP_ROOM_SEND).await;
    assert_eq!(
        (m["msg"].as_str(), m["fromUserId"].as_u64(), m["fromUserName"].as_str()),
        (Some("hello room"), Some(0), Some("system"))
    );
    assert_eq!((m["msgId"].as_str(), m["seq"].as_u64()), (r["msgId"].as_str(), r["seq"].as_u64()));
    assert!(r["seq"].as_u64().unwrap() >= 1, "{r}");

    // To a user, under a name of the request's.
    let r = ok(&s, "publish", json!({"toUserId": b.id, "msg": "psst", "fromUserName": "billing"})).await;
    let m = ws_b.recv_op(wire::OP_SINGLE_SEND).await;
    assert_eq!((m["msg"].as_str(), m["fromUserName"].as_str()), (Some("psst"), Some("billing")));
    assert_eq!(r["users"][0]["msgId"], m["msgId"]);

    // To several: each user's own result.
    let r =
        ok(&s, "publish", json!({"toUserIds": [a.id, b.id.to_string(), 999_999_999], "msg": "to all three"}))
            .await;
    let users = r["users"].as_array().unwrap();
    assert!(users[0]["msgId"].is_string() && users[1]["msgId"].is_string(), "{r}");
    assert_eq!(users[2]["error"], "not_found", "{r}");
    assert_eq!(ws_a.recv_op(wire::OP_SINGLE_SEND).await["msg"], "to all three");
    assert_eq!(ws_b.recv_op(wire::OP_SINGLE_SEND).await["msg"], "to all three");

    // To everyone: room 0, whatever room a socket is in.
    let r = ok(&s, "broadcast", json!({"msg": "maintenance at noon"})).await;
    for ws in [&mut ws_a, &mut ws_b] {
        let m = ws.recv_op(wire::OP_ROOM_SEND).await;
        assert_eq!((m["msg"].as_str(), m["roomId"].as_u64()), (Some("maintenance at noon"), Some(0)));
        assert_eq!(m["msgId"], r["msgId"]);
    }

    // Presence, with the read-only key as well.
    let (status, room) = call(&s, Some(READ_KEY), "presence", r#"{"roomId":7}"#).await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["count"], 1);
    assert_eq!(room["members"][a.id.to_string()], a.name);
    let user = ok(&s, "presence", json!({"userId": b.id})).await;
    assert_eq!((user["online"].as_bool(), user["connections"].as_u64()), (Some(true), Some(1)));

    // History: what the room's clients were sent.
    let h = ok(&s, "history", json!({"roomId": 7, "limit": 10})).await;
    let msgs: Vec<&str> =
        h["messages"].as_array().unwrap().iter().filter_map(|m| m["msg"].as_str()).collect();
    assert_eq!(msgs, ["hello room"]);

    // Info: this process's control, gateway and worker, with their versions.
    let nodes = common::eventually_some("every role reported", || async {
        let info = ok(&s, "info", json!({})).await;
        let nodes = info["nodes"].as_array().unwrap().clone();
        let kinds: Vec<&str> = nodes.iter().filter_map(|n| n["kind"].as_str()).collect();
        (kinds.contains(&"control") && kinds.contains(&"gateway") && kinds.contains(&"worker"))
            .then_some(nodes)
    })
    .await;
    let gateway = nodes.iter().find(|n| n["kind"] == "gateway").unwrap();
    assert_eq!(gateway["version"], env!("CARGO_PKG_VERSION"));

    // Kick: a's socket leaves room 7 (op 11), the room is told, its messages stop.
    assert_eq!(ok(&s, "kick", json!({"userId": a.id, "roomId": 7})).await["wasMember"], true);
    assert_eq!(ws_a.recv_op(wire::OP_LEAVE).await["roomId"], 7);
    eventually("the room lost its member", || async {
        ok(&s, "presence", json!({"roomId": 7})).await["count"] == 0
    })
    .await;
    ok(&s, "publish", json!({"roomId": 7, "msg": "after the kick"})).await;
    let frames = ws_a.frames_within(Duration::from_millis(500)).await;
    assert!(!frames.iter().any(|f| f["msg"] == "after the kick"), "{frames:?}");

    // Disconnect: every socket of b closes with the code and reason given.
    let r = ok(&s, "disconnect", json!({"userId": b.id, "code": 4001, "reason": "account suspended"})).await;
    assert_eq!(r["connections"], 1);
    assert_eq!(ws_b.recv_end().await, End::Close(4001, "account suspended".into()));
    eventually("b is offline", || async {
        ok(&s, "presence", json!({"userId": b.id})).await["online"] == false
    })
    .await;

    // gochat's routes still answer under the page's API path.
    let login = s.api("/api/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    assert_eq!(login["code"], 0, "{login}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_server_api_refuses_with_a_status_and_a_reason() {
    let s = Server::start_with(config()).await;
    let user = s.user("api-refused").await;
    let refused = |status: u16, error: &'static str| {
        move |(got, v): (u16, Value)| {
            assert_eq!((got, v["error"].as_str()), (status, Some(error)), "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
    };
    let room = r#"{"roomId":7,"msg":"x"}"#;
    refused(401, "unauthorized")(call(&s, None, "publish", room).await);
    refused(401, "unauthorized")(
        call(&s, Some("not-a-key-0123456789abcdef0123456789"), "publish", room).await,
    );
    refused(403, "forbidden")(call(&s, Some(READ_KEY), "publish", room).await);
    refused(403, "forbidden")(
        call(&s, Some(READ_KEY), "disconnect", &format!(r#"{{"userId":{}}}"#, user.id)).await,
    );
    refused(404, "not_found")(call(&s, Some(KEY), "publsh", room).await);
    refused(400, "bad_request")(call(&s, Some(KEY), "publish", "not json").await);
    refused(400, "bad_request")(call(&s, Some(KEY), "publish", r#"{"roomID":7,"msg":"x"}"#).await);
    refused(400, "bad_request")(call(&s, Some(KEY), "publish", r#"{"msg":"to nobody"}"#).await);
    refused(400, "bad_request")(
        call(&s, Some(KEY), "publish", r#"{"roomId":7,"toUserId":1,"msg":"x"}"#).await,
    );
    refused(400, "bad_request")(call(&s, Some(KEY), "publish", r#"{"roomId":7,"msg":""}"#).await);
    refused(400, "bad_request")(call(&s, Some(KEY), "presence", r#"{}"#).await);
    refused(400, "bad_request")(
        call(&s, Some(KEY), "disconnect", &format!(r#"{{"userId":{},"code":1001}}"#, user.id)).await,
    );
    refused(404, "not_found")(call(&s, Some(KEY), "publish", r#"{"toUserId":999999999,"msg":"x"}"#).await);
    refused(404, "not_found")(call(&s, Some(KEY), "disconnect", r#"{"userId":999999999}"#).await);
    let long = json!({"roomId": 7, "msg": "x".repeat(10 * 1024 + 1)}).to_string();
    refused(413, "too_large")(call(&s, Some(KEY), "publish", &long).await);
    let huge = json!({"roomId": 7, "msg": "x".repeat(100 * 1024)}).to_string();
    refused(413, "too_large")(call(&s, Some(KEY), "publish", &huge).await);
    let get = reqwest::Client::new()
        .get(s.api_url("/api/info"))
        .header("Authorization", format!("apikey {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!((get.status().as_u16(), get.headers()["allow"].to_str().unwrap()), (405, "POST"));
    // A user offline with no inbox space left would be refused; offline with kept messages on,
    // it is kept: accepted.
    let offline = s.user("api-offline").await;
    let r = call(&s, Some(KEY), "publish", &format!(r#"{{"toUserId":{},"msg":"later"}}"#, offline.id)).await;
    assert_eq!(r.0, 200, "{}", r.1);
    let calls =
        s.up.control.server_api.counts.calls(0, gochat_control::server_api::Method::Publish, "unauthorized");
    assert_eq!(calls, 2, "refusals are counted");
    s.shutdown().await;
}

#[tokio::test]
async fn a_key_is_rate_limited_and_without_keys_the_api_is_off() {
    let mut cfg = config();
    (cfg.control.api_requests_per_second, cfg.control.api_request_burst) = (1, 2);
    let s = Server::start_with(cfg).await;
    for _ in 0..2 {
        assert_eq!(call(&s, Some(KEY), "info", "{}").await.0, 200);
    }
    let res = reqwest::Client::new()
        .post(s.api_url("/api/info"))
        .header("Authorization", format!("apikey {KEY}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // Another key has a bucket of its own.
    assert_eq!(call(&s, Some(READ_KEY), "info", "{}").await.0, 200);
    s.shutdown().await;

    let s = Server::start().await;
    let (status, v) = call(&s, Some(KEY), "info", "{}").await;
    assert_eq!((status, v["error"].as_str()), (404, Some("off")), "{v}");
    s.shutdown().await;
}

/// A gRPC client of the server API with `key` in every call's metadata.
async fn grpc_client(
    s: &Server,
    key: &'static str,
) -> ServerApiClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone,
    >,
> {
    let channel = gochat_runtime::peers::channel(&format!("http://{}", s.up.control.grpc_addr)).unwrap();
    ServerApiClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", format!("apikey {key}").parse().unwrap());
        Ok(req)
    })
}

#[tokio::test]
async fn a_backend_publishes_and_reads_over_grpc() {
    let s = Server::start_with(config()).await;
    let a = s.user("grpc-a").await;
    let mut ws = s.ws(&a, 9).await;
    let mut api = grpc_client(&s, KEY).await;

    let r = api
        .publish(PublishRequest {
            room_id: 9,
            msg: "over grpc".into(),
            from_user_name: "bot".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let m = ws.recv_op(wire::OP_ROOM_SEND).await;
    assert_eq!((m["msg"].as_str(), m["fromUserName"].as_str()), (Some("over grpc"), Some("bot")));
    assert_eq!(m["msgId"].as_str(), Some(r.msg_id.as_str()));
    let r = api.publish(PublishRequest {
        to_user_ids: vec![a.id, 999_999_999],
        msg: "dm".into(),
        ..Default::default()
    });
    let users = r.await.unwrap().into_inner().users;
    assert!(
        !users[0].msg_id.is_empty() && users[1].msg_id.is_empty() && !users[1].error.is_empty(),
        "{users:?}"
    );
    assert_eq!(ws.recv_op(wire::OP_SINGLE_SEND).await["msg"], "dm");
    api.broadcast(BroadcastRequest { msg: "all".into(), ..Default::default() }).await.unwrap();
    assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["roomId"], 0);

    let room = api.presence(PresenceRequest { room_id: 9, user_id: 0 }).await.unwrap().into_inner();
    assert_eq!((room.count, room.members.get(&a.id)), (1, Some(&a.name)));
    let h = api.history(HistoryRequest { room_id: 9, limit: 0 }).await.unwrap().into_inner();
    assert_eq!(h.messages.len(), 1);
    assert!(h.messages[0].contains("over grpc"));
    eventually("the gateway is listed", || {
        let mut api = api.clone();
        async move {
            let nodes = api.info(InfoRequest {}).await.unwrap().into_inner().nodes;
            nodes.iter().any(|n| n.kind == "gateway" && n.version == env!("CARGO_PKG_VERSION"))
        }
    })
    .await;

    let e = api.presence(PresenceRequest { room_id: 9, user_id: a.id }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut reader = grpc_client(&s, READ_KEY).await;
    assert!(reader.presence(PresenceRequest { room_id: 9, user_id: 0 }).await.is_ok());
    let e = reader.broadcast(BroadcastRequest { msg: "no".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut stranger = grpc_client(&s, "stranger-0123456789abcdef0123456789").await;
    assert_eq!(stranger.info(InfoRequest {}).await.unwrap_err().code(), Code::Unauthenticated);
    s.shutdown().await;
}
