//! A local cluster of separate processes (2 controls, 2 gateways, 2 workers on their own Redis
//! and etcd, users in PostgreSQL), driven through its public ports while its members are killed
//! and restarted. Needs the `etcd` feature (the test command builds with it).
#![cfg(feature = "etcd")]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, post, unique, ws_at, End, User, Ws};
use gochat::cluster::{ClusterSpec, LocalCluster, Role};
use gochat_test_services::{require, Service};
use serde_json::{json, Value};

fn start_cluster(redis_cluster: bool) -> LocalCluster {
    let dir = std::env::temp_dir().join(unique(&format!("gochat-cluster-{}-", std::process::id())));
    let mut spec = ClusterSpec::new(env!("CARGO_BIN_EXE_gochat").into(), dir);
    spec.driver = common::driver();
    spec.postgres_admin_url = gochat_test_services::postgres_admin_url();
    spec.api_keys = vec![API_KEY.into()];
    spec.redis_cluster = redis_cluster;
    LocalCluster::start(spec).expect("the local cluster starts")
}

const API_KEY: &str = "cluster-key-0123456789abcdef012345";

/// A server API call on control `n` with the cluster's key; its answer, which must be a 200.
async fn server_api(c: &LocalCluster, n: usize, method: &str, body: Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{}/api/{method}", api(c, n)))
        .header("Authorization", format!("apikey {API_KEY}"))
        .body(body.to_string())
        .send()
        .await
        .expect("REST reachable");
    let status = res.status();
    let v: Value = res.json().await.expect("JSON");
    assert_eq!(status, 200, "{method}: {v}");
    v
}

fn api(c: &LocalCluster, n: usize) -> String {
    format!("http://{}", c.member(Role::Control, n).public.unwrap())
}

fn ws_url(c: &LocalCluster, n: usize) -> String {
    format!("ws://{}/ws", c.member(Role::Gateway, n).public.unwrap())
}

/// Registers on control 1 and logs in on control 2: sessions are shared.
async fn user(c: &LocalCluster, prefix: &str) -> User {
    let name = unique(&format!("{prefix}{}-", std::process::id()));
    let r = post(&api(c, 1), "/user/register", json!({"userName": name, "passWord": "pw-123456"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let r = post(&api(c, 2), "/user/login", json!({"userName": name, "passWord": "pw-123456"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let token = r["data"].as_str().unwrap().to_string();
    let auth = post(&api(c, 1), "/user/checkAuth", json!({"authToken": token})).await;
    User { token, id: auth["data"]["userId"].as_u64().unwrap(), name }
}

/// A socket read in the background: every chat frame (op 2 and 3) it gets, and how it ended.
struct Inbox {
    frames: Arc<Mutex<Vec<Value>>>,
    ended: Arc<Mutex<Option<End>>>,
}

impl Inbox {
    fn spawn(mut ws: Ws) -> Self {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (f, e) = (frames.clone(), ended.clone());
        tokio::spawn(async move {
            loop {
                let next = tokio::time::timeout(Duration::from_secs(600), ws.0.next_json_raw()).await;
                match next {
                    Ok(Ok(v)) if v["op"] == 2 || v["op"] == 3 => f.lock().unwrap().push(v),
                    Ok(Ok(_)) => {}
                    Ok(Err(end)) => {
                        *e.lock().unwrap() = Some(end);
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Self { frames, ended }
    }

    fn msgs(&self, op: i32) -> Vec<String> {
        let frames = self.frames.lock().unwrap();
        frames.iter().filter(|v| v["op"] == op).map(|v| v["msg"].as_str().unwrap().to_string()).collect()
    }

    fn ended(&self) -> bool {
        self.ended.lock().unwrap().is_some()
    }
}

/// Reads frames without the per-frame deadline of [`Ws::next_json`].
trait RawNext {
    async fn next_json_raw(&mut self) -> Result<Value, End>;
}

impl RawNext
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn next_json_raw(&mut self) -> Result<Value, End> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("JSON frames")),
                Some(Ok(Message::Close(Some(f)))) => {
                    return Err(End::Close(f.code.into(), f.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Err(End::Eof),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Pushes until the cluster accepts (code 0); a member being away is retried, not counted.
async fn push_accepted(base: &str, path: &str, body: Value) {
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .body(body.to_string())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = r {
            if let Ok(v) = r.json::<Value>().await {
                if v["code"] == 0 {
                    return;
                }
                assert_ne!(v["code"], 1, "refused: {v}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never accepted: {body}");
}

async fn push_room(c: &LocalCluster, control: usize, from: &User, room: u64, msg: &str) {
    push_accepted(
        &api(c, control),
        "/push/pushRoom",
        json!({"authToken": from.token, "roomId": room, "msg": msg}),
    )
    .await;
}

async fn push_user(c: &LocalCluster, control: usize, from: &User, to: &User, msg: &str) {
    let body = json!({"authToken": from.token, "toUserId": to.id.to_string(), "roomId": 1, "msg": msg});
    push_accepted(&api(c, control), "/push/push", body).await;
}

/// Waits until every inbox has all of `sent` (op 3), and checks nothing was lost or doubled.
async fn all_delivered(what: &str, inboxes: &[&Inbox], sent: &[String], in_order: bool) {
    for inbox in inboxes {
        eventually(what, || async { sent.iter().all(|m| inbox.msgs(3).contains(m)) }).await;
        let got: Vec<String> = inbox.msgs(3).into_iter().filter(|m| sent.contains(m)).collect();
        assert_eq!(got.len(), sent.len(), "{what}: each message once, got {got:?}");
        if in_order {
            assert_eq!(&got, sent, "{what}: in order");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_across_gateways_and_survives_its_members_failing() {
    require!(Service::Etcd, Service::RedisServer, Service::Postgres);
    delivers_across_gateways_and_survives_its_members_failing(false).await;
}

/// The same on a Redis Cluster (three primaries, three replicas), where a primary is also
/// killed mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_a_redis_cluster_delivers_and_survives_a_primary_failing() {
    require!(Service::Etcd, Service::RedisServer, Service::Postgres);
    delivers_across_gateways_and_survives_its_members_failing(true).await;
}

async fn delivers_across_gateways_and_survives_its_members_failing(redis_cluster: bool) {
    let _heavy = common::heavy().await;
    let mut c = start_cluster(redis_cluster);
    let (alice, bob, carol) = (user(&c, "alice").await, user(&c, "bob").await, user(&c, "carol").await);
    let dave = user(&c, "dave").await;
    let a = Inbox::spawn(ws_at(&ws_url(&c, 1), &alice, 1).await);
    let b = Inbox::spawn(ws_at(&ws_url(&c, 2), &bob, 1).await);
    let cc = Inbox::spawn(ws_at(&ws_url(&c, 2), &carol, 1).await);

    // A private message from a user on gateway 1 reaches a user on gateway 2.
    push_user(&c, 2, &alice, &bob, "hello bob").await;
    eventually("bob got alice's private message", || async { b.msgs(2) == ["hello bob"] }).await;
    let frame = b.frames.lock().unwrap()[0].clone();
    assert_eq!(frame["fromUserName"], alice.name.as_str());
    assert!(frame["msgId"].as_str().is_some_and(|id| id.parse::<u64>().is_ok()), "{frame}");

    // A room with members on both gateways: each message once per member, in order.
    let sent: Vec<String> = (0..40).map(|i| format!("room {i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        push_room(&c, 1 + i % 2, &alice, 1, m).await;
    }
    all_delivered("room messages across gateways", &[&a, &b, &cc], &sent, true).await;

    // The server API: a broadcast reaches every gateway's sockets, info lists every member,
    // presence counts a user's sockets over both gateways.
    server_api(&c, 2, "broadcast", json!({"msg": "to everyone"})).await;
    eventually("the broadcast reached both gateways", || async {
        [&a, &b, &cc].iter().all(|inbox| inbox.msgs(3).contains(&"to everyone".to_string()))
    })
    .await;
    eventually("info lists every control, gateway and worker", || async {
        let info = server_api(&c, 1, "info", json!({})).await;
        let nodes = info["nodes"].as_array().unwrap();
        let count = |kind: &str| nodes.iter().filter(|n| n["kind"] == kind).count();
        (count("control"), count("gateway"), count("worker")) == (2, 2, 2)
    })
    .await;
    let second = Inbox::spawn(ws_at(&ws_url(&c, 2), &alice, 2).await);
    let presence = server_api(&c, 1, "presence", json!({"userId": alice.id})).await;
    assert_eq!(presence["connections"], 2, "{presence}");
    // A disconnect closes the user's sockets on both gateways.
    server_api(&c, 1, "disconnect", json!({"userId": alice.id, "code": 4002, "reason": "bye"})).await;
    eventually("alice's sockets on both gateways closed", || async { a.ended() && second.ended() }).await;
    assert_eq!(*a.ended.lock().unwrap(), Some(End::Close(4002, "bye".into())));
    let a = Inbox::spawn(ws_at(&ws_url(&c, 1), &alice, 1).await);

    // kill -9 a worker mid-stream: every accepted message is still delivered.
    let sent: Vec<String> = (0..200).map(|i| format!("during worker loss {i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        if i == 60 {
            c.kill(Role::Worker, 1);
        }
        push_room(&c, 1 + i % 2, &bob, 1, m).await;
    }
    all_delivered("messages around a killed worker", &[&a, &b, &cc], &sent, false).await;
    c.restart(Role::Worker, 1).unwrap();

    // kill -9 a control mid-stream: the other one takes every push and new sockets' auth;
    // sockets already open stay, and every accepted message arrives once, in order.
    let sent: Vec<String> = (0..60).map(|i| format!("during control loss {i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        if i == 20 {
            c.kill(Role::Control, 1);
        }
        push_room(&c, 2, &carol, 1, m).await;
    }
    all_delivered("messages around a killed control", &[&a, &b, &cc], &sent, true).await;
    let late = Inbox::spawn(ws_at(&ws_url(&c, 1), &dave, 1).await);
    push_user(&c, 2, &bob, &dave, "auth without control 1").await;
    eventually("a socket opened after control 1 died gets messages", || async {
        late.msgs(2) == ["auth without control 1"]
    })
    .await;
    assert!(!a.ended() && !b.ended() && !cc.ended(), "a socket dropped by a control's death");
    c.restart(Role::Control, 1).unwrap();

    // kill -9 gateway 2: its users reconnect to gateway 1 and get later private messages.
    c.kill(Role::Gateway, 2);
    eventually("gateway 2's sockets ended", || async { b.ended() && cc.ended() }).await;
    let b = Inbox::spawn(ws_at(&ws_url(&c, 1), &bob, 1).await);
    push_user(&c, 1, &alice, &bob, "after the gateway died").await;
    eventually("bob, moved to gateway 1, got the message", || async {
        b.msgs(2) == ["after the gateway died"]
    })
    .await;
    c.restart(Role::Gateway, 2).unwrap();
    let cc = Inbox::spawn(ws_at(&ws_url(&c, 2), &carol, 1).await);

    if redis_cluster {
        // kill -9 the primary of the first third of the slots mid-stream: its replica takes
        // over; sockets stay, and every accepted message arrives once.
        let sent: Vec<String> = (0..60).map(|i| format!("during a primary's loss {i}")).collect();
        for (i, m) in sent.iter().enumerate() {
            if i == 20 {
                c.kill_redis_primary(1).unwrap();
            }
            push_room(&c, 1 + i % 2, &carol, 1, m).await;
        }
        all_delivered("room messages around a killed Redis primary", &[&a, &b, &cc], &sent, false).await;
        assert!(!a.ended() && !b.ended() && !cc.ended(), "no socket dropped by a Redis failover");
    }

    // Redis restarts (each node in turn, on a cluster; the killed primary comes back as a
    // replica): sessions, sockets and the queue survive.
    c.restart_redis().unwrap();
    let sent: Vec<String> = (0..20).map(|i| format!("after redis restart {i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        push_room(&c, 1 + i % 2, &carol, 1, m).await;
    }
    all_delivered("room messages after a Redis restart", &[&a, &b, &cc], &sent, false).await;
    assert!(!a.ended() && !b.ended() && !cc.ended(), "no socket dropped by a Redis restart");

    // etcd restarts: members register again and messages keep flowing.
    c.restart_etcd().unwrap();
    let sent: Vec<String> = (0..20).map(|i| format!("after etcd restart {i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        push_room(&c, 1 + i % 2, &alice, 1, m).await;
    }
    all_delivered("room messages after an etcd restart", &[&a, &b, &cc], &sent, false).await;
    push_user(&c, 2, &carol, &alice, "still here").await;
    eventually("a private message after the etcd restart", || async { a.msgs(2) == ["still here"] }).await;
    // A gateway started after the etcd restart is found by the workers.
    c.restart(Role::Gateway, 1).unwrap();
    let a = Inbox::spawn(ws_at(&ws_url(&c, 1), &alice, 1).await);
    push_user(&c, 1, &carol, &alice, "on the restarted gateway").await;
    eventually("a private message on a gateway registered after the etcd restart", || async {
        a.msgs(2) == ["on the restarted gateway"]
    })
    .await;
    c.stop();
}
