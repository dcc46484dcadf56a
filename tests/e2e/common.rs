//! Shared helpers: start `gochat up` in-process on free ports and drive it with real clients.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gochat::roles::Up;
use gochat::Config;
use gochat_proto::wire;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// The gateway driver under test: `GOCHAT_TEST_DRIVER` (epoll by default).
pub fn driver() -> gochat_gateway::driver::DriverChoice {
    std::env::var("GOCHAT_TEST_DRIVER")
        .ok()
        .map_or(gochat_gateway::driver::DriverChoice::Epoll, |d| d.parse().expect("GOCHAT_TEST_DRIVER"))
}

/// Held for the whole test by a test that loads this machine (floods of messages, connections
/// or logins; a cluster of processes) or that a loaded machine can fail (a reader that must keep
/// up): two of them never run at once. Each test file was a process of its own before they were
/// one binary; now a test that takes this runs beside light tests only.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A config with every listener on a free loopback port, an in-memory database and no rate
/// limits.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    let any = "127.0.0.1:0".parse().unwrap();
    cfg.control.api_listen = any;
    cfg.control.site_listen = Some(any);
    cfg.control.grpc_listen = any;
    cfg.control.database = "sqlite::memory:".into();
    cfg.gateway.ws_listen = any;
    cfg.gateway.tcp_listen = Some(any);
    cfg.gateway.grpc_listen = any;
    cfg.gateway.shards = 2;
    cfg.gateway.driver = driver();
    // Every test client comes from 127.0.0.1 and pushes faster than a person; the limits have
    // tests of their own.
    cfg.control = cfg.control.without_rate_limits();
    cfg
}

pub struct Server {
    pub up: Up,
    http: reqwest::Client,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(cfg: Config) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
        let up = Up::start(cfg).await.expect("gochat up starts");
        Self { up, http: reqwest::Client::new() }
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.up.control.api_addr, path)
    }

    /// POSTs `body` to a REST route and returns the envelope.
    pub async fn api(&self, path: &str, body: Value) -> Value {
        self.api_raw(path, body.to_string()).await
    }

    pub async fn api_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Value {
        let res = self.http.post(self.api_url(path)).body(body).send().await.expect("REST reachable");
        assert_eq!(res.status(), 200, "gochat answers 200 always");
        res.json().await.expect("envelope is JSON")
    }

    /// Registers a fresh user; returns (token, user id, name).
    pub async fn user(&self, prefix: &str) -> User {
        let name = unique(prefix);
        let r = self.api("/user/register", json!({"userName": name, "passWord": "secret-1"})).await;
        assert_eq!(r["code"], 0, "{r}");
        let token = r["data"].as_str().unwrap().to_string();
        let auth = self.api("/user/checkAuth", json!({"authToken": token})).await;
        User { token, id: auth["data"]["userId"].as_u64().unwrap(), name }
    }

    pub async fn push_room(&self, user: &User, room: u64, msg: &str) -> Value {
        self.api("/push/pushRoom", json!({"authToken": user.token, "roomId": room, "msg": msg})).await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.up.gateway.ws_addr)
    }

    /// A WebSocket connected, authenticated and in `room` (op 7 received).
    pub async fn ws(&self, user: &User, room: u64) -> Ws {
        ws_at(&self.ws_url(), user, room).await
    }

    /// A WebSocket that sent `auth` as its auth frame; returns it with the auth reply (op 7).
    pub async fn ws_auth(&self, auth: Value) -> (Ws, Value) {
        let mut ws = self.ws_raw().await;
        ws.send_json(auth).await;
        let ok = ws.recv_op(wire::OP_AUTH_OK).await;
        (ws, ok)
    }

    pub async fn ws_raw(&self) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(self.ws_url()).await.expect("ws connects");
        Ws(stream)
    }

    /// A TCP `v1` client, authenticated (op 6) and in `room`.
    pub async fn tcp(&self, user: &User, room: u64) -> Tcp {
        let mut tcp = Tcp(TcpStream::connect(self.up.gateway.tcp_addr.unwrap()).await.unwrap());
        tcp.send_json(json!({"authToken": user.token, "roomId": room, "op": 6})).await;
        let ok = tcp.recv_op(wire::OP_AUTH_OK).await;
        assert_eq!(ok["userId"], user.id);
        tcp
    }

    /// The gateway's counters, summed over its shards.
    pub async fn gateway_stats(&self) -> gochat_proto::gateway::ShardStats {
        use gochat_proto::gateway::{gateway_client::GatewayClient, StatsRequest};
        let url = format!("http://{}", self.up.gateway.grpc_addr);
        let mut client = GatewayClient::connect(url).await.expect("gateway gRPC reachable");
        let reply = client.stats(StatsRequest {}).await.expect("gateway stats").into_inner();
        reply.shards.iter().fold(Default::default(), |mut sum, s| {
            sum.connections += s.connections;
            sum.slow_consumer_closes += s.slow_consumer_closes;
            sum.frames_throttled += s.frames_throttled;
            sum.flood_closes += s.flood_closes;
            sum
        })
    }

    pub async fn shutdown(self) {
        self.up.shutdown().await;
    }
}

/// What the grpc.health.v1 service at `addr` says of the whole server.
pub async fn grpc_health(
    addr: std::net::SocketAddr,
) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = gochat_runtime::peers::channel(&format!("http://{addr}")).expect("a gRPC address");
    let mut client = HealthClient::new(channel);
    let reply = client.check(HealthCheckRequest { service: String::new() }).await.expect("health check");
    reply.into_inner().status()
}

/// A child process killed however the test ends, so a failed assertion leaves none behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct User {
    pub token: String,
    pub id: u64,
    pub name: String,
}

/// A WebSocket to `url`, authenticated as `user` and in `room` (op 7 received).
pub async fn ws_at(url: &str, user: &User, room: u64) -> Ws {
    let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("ws connects");
    let mut ws = Ws(stream);
    ws.send_json(json!({"authToken": user.token, "roomId": room})).await;
    let ok = ws.recv_op(wire::OP_AUTH_OK).await;
    assert_eq!(ok["userId"], user.id);
    ws
}

/// A WebSocket opened by hand (so the test controls reads, writes and resets), authenticated:
/// the auth reply (op 7) has arrived.
pub async fn raw_ws(addr: std::net::SocketAddr, token: &str, room: u64) -> TcpStream {
    use gochat_gateway::testkit::{client_frame, UPGRADE};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(UPGRADE).await.unwrap();
    let auth = json!({"authToken": token, "roomId": room}).to_string();
    s.write_all(&client_frame(true, 1, auth.as_bytes())).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"op\":7") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before auth");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// POSTs `body` to `base` + `path` (a REST API not started by this process) and returns the
/// envelope.
pub async fn post(base: &str, path: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .body(body.to_string())
        .send()
        .await
        .expect("REST reachable")
        .json()
        .await
        .expect("envelope is JSON")
}

/// A free loopback port, for a server started later to bind.
pub fn free_port() -> u16 {
    gochat_runtime::launch::free_addr().expect("a free loopback port").port()
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

pub struct Ws(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub enum End {
    Close(u16, String),
    Eof,
}

impl Ws {
    pub async fn send_json(&mut self, v: Value) {
        self.0.send(Message::text(v.to_string())).await.expect("ws send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.0.send(Message::text(s.to_string())).await.expect("ws send");
    }

    /// The next JSON text frame, or `None` when the socket ended.
    pub async fn next_json(&mut self) -> Result<Value, End> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.0.next()).await.expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(&t).expect("server frames are JSON"))
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    return Err(End::Close(f.code.into(), f.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Err(End::Eof),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Skips frames until one with `op`.
    pub async fn recv_op(&mut self, op: i32) -> Value {
        loop {
            let v =
                self.next_json().await.unwrap_or_else(|e| panic!("socket ended ({e:?}) waiting for op {op}"));
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Skips frames until the socket ends; returns how.
    pub async fn recv_end(&mut self) -> End {
        loop {
            if let Err(end) = self.next_json().await {
                return end;
            }
        }
    }

    /// The JSON text frames that arrive within `d`. Panics if the socket ends meanwhile: a
    /// dead socket receives nothing, so a check that nothing arrived would pass on it.
    pub async fn frames_within(&mut self, d: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.0.next()).await {
                Err(_) => return got,
                Ok(msg) => msg,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    got.push(serde_json::from_str(&t).expect("server frames are JSON"))
                }
                Some(Ok(Message::Close(f))) => {
                    panic!("the socket was closed ({f:?}) within the window, after {got:?}")
                }
                None => panic!("the socket ended within the window, after {got:?}"),
                Some(Err(e)) => panic!("the socket failed ({e}) within the window, after {got:?}"),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends a room message of its own to `room` (which the socket is in) and returns the
    /// frames that arrive before it comes back, without it. A positive end to a check that
    /// something does not arrive: whatever the gateway had already queued for this socket comes
    /// first, so it is in what this returns; and the socket is alive.
    pub async fn frames_before_marker(&mut self, room: u64) -> Vec<Value> {
        let marker = unique("marker ");
        self.send_json(json!({"op": wire::OP_ROOM_SEND, "roomId": room, "msg": marker})).await;
        let mut got = Vec::new();
        loop {
            let v = self
                .next_json()
                .await
                .unwrap_or_else(|e| panic!("socket ended ({e:?}) waiting for {marker:?}, after {got:?}"));
            if v["op"] == wire::OP_ROOM_SEND && v["msg"] == marker.as_str() {
                return got;
            }
            got.push(v);
        }
    }

    pub async fn close(mut self) {
        let _ = self.0.close(None).await;
        // Read until the server's close reply so the gateway has seen the close.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.0.next()).await {}
    }
}

pub struct Tcp(pub TcpStream);

impl Tcp {
    pub async fn send_json(&mut self, v: Value) {
        let mut frame = Vec::new();
        wire::encode_tcp_frame(v.to_string().as_bytes(), &mut frame).unwrap();
        self.0.write_all(&frame).await.unwrap();
    }

    /// The next frame's JSON body, or `None` at EOF.
    pub async fn next_json(&mut self) -> Option<Value> {
        let mut head = [0u8; 4];
        let read = tokio::time::timeout(WAIT, self.0.read_exact(&mut head)).await.expect("a frame in time");
        if read.is_err() {
            return None;
        }
        assert_eq!(&head[..2], b"v1");
        let len = u16::from_be_bytes([head[2], head[3]]) as usize - 4;
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).await.unwrap();
        Some(serde_json::from_slice(&body).expect("server frames are JSON"))
    }

    pub async fn recv_op(&mut self, op: i32) -> Value {
        loop {
            let v = self.next_json().await.unwrap_or_else(|| panic!("EOF waiting for op {op}"));
            if v["op"] == op {
                return v;
            }
        }
    }
}

/// Retries `check` until it returns true or the wait is over.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Retries `check` until it returns something or the wait is over; returns what it returned.
pub async fn eventually_some<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not true in time: {what}");
}

/// A PostgreSQL database of its own on the machine's server (`POSTGRES_ADMIN_URL`, default
/// postgres@127.0.0.1:5432), made with `psql` and dropped when this is.
pub struct PgDatabase {
    admin: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create(what: &str) -> Self {
        let admin = gochat_test_services::postgres_admin_url();
        let name = unique(&format!("gochat_test_{what}_{}_", std::process::id()));
        psql(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let url = format!("{}/{name}", admin.rsplit_once('/').expect("a database URL").0);
        Self { admin, name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        psql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Redis keys under a prefix of their own (`REDIS_URL`, default 127.0.0.1:6379), deleted when
/// this is dropped.
pub struct RedisPrefix {
    pub url: String,
    pub prefix: String,
}

impl RedisPrefix {
    pub fn new(what: &str) -> Self {
        let url = gochat_test_services::redis_url();
        Self { url, prefix: unique(&format!("gochat-test-{what}-{}-", std::process::id())) }
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        gochat_runtime::redis::delete_keys(&self.url, &self.prefix);
    }
}
