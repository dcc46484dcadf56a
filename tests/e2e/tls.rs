//! TLS end to end: `wss://` on the gateway beside plain WebSocket clients, HTTPS for the REST
//! API and the page, certificate reload, and bad certificates. Test certificates are made here
//! (rcgen); no key is committed. Runs under the driver named by `GOCHAT_TEST_DRIVER`.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use common::{eventually, Server, User, Ws, WAIT};
use gochat::roles::Up;
use gochat_proto::wire;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::MaybeTlsStream;

/// A test certificate authority.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A server certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("gochat test CA {name}"));
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

/// Where a server's certificate and key live, removed at the end.
struct CertFiles(PathBuf);

impl CertFiles {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique(&format!("gochat-tls-{}-", std::process::id())));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn cert(&self) -> PathBuf {
        self.0.join("fullchain.pem")
    }

    fn key(&self) -> PathBuf {
        self.0.join("privkey.pem")
    }

    /// Installs a certificate as deployment tools do: written aside, renamed over the old one.
    fn install(&self, ca: &Ca, leaf: &Leaf) {
        self.replace(&self.key(), &leaf.key_pem);
        self.replace(&self.cert(), &format!("{}{}", leaf.cert_pem, ca.pem()));
    }

    fn replace(&self, path: &std::path::Path, text: &str) {
        let aside = self.0.join("incoming.tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, path).unwrap();
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test config with wss on, and HTTPS for control when `https`.
fn tls_config(files: &CertFiles, https: bool) -> gochat::Config {
    let mut cfg = common::test_config();
    cfg.gateway.wss_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.gateway.tls_cert = Some(files.cert());
    cfg.gateway.tls_key = Some(files.key());
    if https {
        cfg.control.tls_cert = Some(files.cert());
        cfg.control.tls_key = Some(files.key());
    }
    cfg
}

fn client_config(trusted: &[&Ca]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in trusted {
        roots.add(ca.der()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(gochat_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr` for `localhost`, and the certificate the server presented.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<(TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp)).await??;
    let leaf = tls.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec();
    Ok((tls, leaf))
}

/// A `wss://` client authenticated as `user` in `room`, and the certificate it was shown.
async fn wss(addr: SocketAddr, config: Arc<ClientConfig>, user: &User, room: u64) -> (Ws, Vec<u8>) {
    let (tls, leaf) = tls_connect(addr, config).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (stream, _) =
        tokio_tungstenite::client_async(url, MaybeTlsStream::Rustls(tls)).await.expect("wss upgrade");
    let mut ws = Ws(stream);
    ws.send_json(json!({"authToken": user.token, "roomId": room})).await;
    assert_eq!(ws.recv_op(wire::OP_AUTH_OK).await["userId"], user.id);
    (ws, leaf)
}

/// An HTTPS client trusting `trusted` only.
fn https_client(trusted: &[&Ca]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    for ca in trusted {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let res =
        http.post(format!("{base}{path}")).body(body.to_string()).send().await.expect("HTTPS reachable");
    res.json().await.expect("envelope is JSON")
}

/// Registers a fresh user through the REST API at `base`.
async fn user_at(http: &reqwest::Client, base: &str, prefix: &str) -> User {
    let name = common::unique(prefix);
    let r = post(http, base, "/user/register", json!({"userName": name, "passWord": "secret-1"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let token = r["data"].as_str().unwrap().to_string();
    let auth = post(http, base, "/user/checkAuth", json!({"authToken": token})).await;
    User { token, id: auth["data"]["userId"].as_u64().unwrap(), name }
}

#[tokio::test]
async fn wss_and_ws_members_share_a_room() {
    let ca = Ca::new("share");
    let files = CertFiles::new();
    files.install(&ca, &ca.leaf());
    let mut cfg = tls_config(&files, false);
    cfg.control.max_message_bytes = 40_000;
    let s = Server::start_with(cfg).await;
    let wss_addr = s.up.gateway.wss_addr.expect("wss listening");
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut plain = s.ws(&a, 31).await;
    let (mut secure, _) = wss(wss_addr, client_config(&[&ca]), &b, 31).await;
    assert_eq!(s.push_room(&a, 31, "to both").await["code"], 0);
    for ws in [&mut plain, &mut secure] {
        assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "to both");
    }
    // Larger than a TLS record: several records, reassembled by the client.
    let big = "y".repeat(39_000);
    assert_eq!(s.push_room(&a, 31, &big).await["code"], 0);
    for ws in [&mut plain, &mut secure] {
        assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], big.as_str());
    }
    // The other way: a room send over wss reaches the plain member.
    secure.send_json(json!({"op": 3, "msg": "over tls", "roomId": 31})).await;
    let m = plain.recv_op(wire::OP_ROOM_SEND).await;
    assert_eq!((m["msg"].as_str(), m["fromUserId"].as_u64()), (Some("over tls"), Some(b.id)));
    assert_eq!(secure.recv_op(wire::OP_ROOM_SEND).await["msg"], "over tls");
    // A second connection of the same client resumes its session (no certificate signature).
    let config = client_config(&[&ca]);
    let (first, _) = wss(wss_addr, config.clone(), &b, 31).await;
    let (again, _) = tls_connect(wss_addr, config).await.unwrap();
    assert_eq!(again.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    drop(again);
    first.close().await;
    // A clean close over TLS: the close frame comes back and the gateway lets go.
    secure.close().await;
    eventually("the wss connection is gone", || async { s.up.gateway_conns() == 1 }).await;
    assert_eq!(s.up.gateway.tls_handshake_failures(), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_plain_client_on_the_wss_port_is_closed_and_counted_while_others_are_served() {
    let ca = Ca::new("garbage");
    let files = CertFiles::new();
    files.install(&ca, &ca.leaf());
    let s = Server::start_with(tls_config(&files, false)).await;
    let wss_addr = s.up.gateway.wss_addr.unwrap();
    let a = s.user("a").await;
    let (mut before, _) = wss(wss_addr, client_config(&[&ca]), &a, 32).await;

    // A plain WebSocket upgrade sent to the TLS port.
    let mut raw = TcpStream::connect(wss_addr).await.unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, raw.read_to_end(&mut got)).await.expect("closed in time");
    assert!(read.is_ok() || got.is_empty(), "{read:?}");
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"), "answered in plaintext: {got:?}");
    eventually("the failed handshake is counted", || async { s.up.gateway.tls_handshake_failures() == 1 })
        .await;

    // A TLS client that does not trust the certificate gives up during the handshake.
    let stranger = Ca::new("stranger");
    let refused = tls_connect(wss_addr, client_config(&[&stranger])).await;
    assert!(refused.is_err(), "a certificate from an untrusted CA was accepted");
    eventually("both failures counted, both sockets gone", || async {
        s.up.gateway.tls_handshake_failures() == 2 && s.up.gateway_conns() == 1
    })
    .await;

    // The gateway serves on: the connection from before and a new one get a broadcast.
    let b = s.user("b").await;
    let (mut after, _) = wss(wss_addr, client_config(&[&ca]), &b, 32).await;
    s.push_room(&b, 32, "still serving").await;
    for ws in [&mut before, &mut after] {
        assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "still serving");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn rest_and_page_over_https() {
    let ca = Ca::new("https");
    let files = CertFiles::new();
    files.install(&ca, &ca.leaf());
    let s = Server::start_with(tls_config(&files, true)).await;
    let api = format!("https://127.0.0.1:{}", s.up.control.api_addr.port());
    let http = https_client(&[&ca]);
    let login = post(&http, &api, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    assert_eq!(login["code"], 0, "{login}");
    let token = login["data"].as_str().unwrap().to_string();
    let auth = post(&http, &api, "/user/checkAuth", json!({"authToken": token})).await;
    let demo = User { token, id: auth["data"]["userId"].as_u64().unwrap(), name: "demo".into() };

    // The whole path under TLS: a push over HTTPS reaches a wss client.
    let wss_addr = s.up.gateway.wss_addr.unwrap();
    let (mut ws, _) = wss(wss_addr, client_config(&[&ca]), &demo, 33).await;
    let r =
        post(&http, &api, "/push/pushRoom", json!({"authToken": demo.token, "roomId": 33, "msg": "secure"}))
            .await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "secure");

    // The page is served over HTTPS and points the browser at the wss listener.
    let site = format!("https://127.0.0.1:{}", s.up.control.site_addr.unwrap().port());
    let config = http.get(format!("{site}/config.js")).send().await.unwrap().text().await.unwrap();
    assert!(config.contains(&format!("\"wsPort\":{}", wss_addr.port())), "{config}");
    let page = http.get(format!("{site}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);

    // Plain HTTP to the HTTPS port gets no answer; a client not trusting the CA gets none either.
    let plain =
        reqwest::Client::new().post(format!("http://127.0.0.1:{}/user/login", s.up.control.api_addr.port()));
    assert!(plain.body("{}").send().await.is_err(), "plain HTTP answered on the HTTPS port");
    let stranger = https_client(&[&Ca::new("stranger")]);
    assert!(stranger.post(format!("{api}/user/login")).body("{}").send().await.is_err());
    // And HTTPS is still served.
    let again = post(&http, &api, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    assert_eq!(again["code"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_while_old_ones_keep_going() {
    let (ca1, ca2) = (Ca::new("one"), Ca::new("two"));
    let (leaf1, leaf2) = (ca1.leaf(), ca2.leaf());
    let files = CertFiles::new();
    files.install(&ca1, &leaf1);
    let s = Server::start_with(tls_config(&files, true)).await;
    let wss_addr = s.up.gateway.wss_addr.unwrap();
    let api_addr = s.up.control.api_addr;
    let api = format!("https://127.0.0.1:{}", api_addr.port());
    let http = https_client(&[&ca1, &ca2]);
    let (a, b) = (user_at(&http, &api, "a").await, user_at(&http, &api, "b").await);
    let (mut old, shown) = wss(wss_addr, client_config(&[&ca1, &ca2]), &a, 34).await;
    assert_eq!(shown, leaf1.der);
    assert_eq!(tls_connect(api_addr, client_config(&[&ca1, &ca2])).await.unwrap().1, leaf1.der);

    files.install(&ca2, &leaf2);
    // A client of its own each time: one resuming an earlier session is shown no certificate.
    let both = [&ca1, &ca2];
    let shown_now = |addr| async move {
        tls_connect(addr, client_config(&both)).await.map(|(_, leaf)| leaf).unwrap_or_default()
    };
    eventually("new wss handshakes get the new certificate", || async {
        shown_now(wss_addr).await == leaf2.der
    })
    .await;
    eventually("new HTTPS handshakes get the new certificate", || async {
        shown_now(api_addr).await == leaf2.der
    })
    .await;
    let (mut new, shown) = wss(wss_addr, client_config(&[&ca1, &ca2]), &b, 34).await;
    assert_eq!(shown, leaf2.der);
    // The connection opened under the old certificate goes on, both ways.
    let r = post(&http, &api, "/push/pushRoom", json!({"authToken": b.token, "roomId": 34, "msg": "after"}))
        .await;
    assert_eq!(r["code"], 0, "{r}");
    for ws in [&mut old, &mut new] {
        assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "after");
    }
    old.send_json(json!({"op": 3, "msg": "from the old one", "roomId": 34})).await;
    for ws in [&mut old, &mut new] {
        assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "from the old one");
    }

    // A broken replacement is refused and the certificate in use stays.
    let gateway_cert = s.up.gateway.tls_cert.clone().unwrap();
    let control_cert = s.up.control.tls_cert.clone().unwrap();
    let failed = (gateway_cert.failed_reloads(), control_cert.failed_reloads());
    let reloads = (gateway_cert.reloads(), control_cert.reloads());
    files.replace(&files.cert(), "-----BEGIN CERTIFICATE-----\ntruncated\n");
    eventually("both roles tried the broken file", || async {
        gateway_cert.failed_reloads() > failed.0 && control_cert.failed_reloads() > failed.1
    })
    .await;
    assert_eq!((gateway_cert.reloads(), control_cert.reloads()), reloads, "nothing was swapped in");
    assert_eq!(shown_now(wss_addr).await, leaf2.der);
    assert_eq!(shown_now(api_addr).await, leaf2.der);
    let c = user_at(&http, &api, "c").await;
    let (mut third, shown) = wss(wss_addr, client_config(&[&ca1, &ca2]), &c, 34).await;
    assert_eq!(shown, leaf2.der);
    post(&http, &api, "/push/pushRoom", json!({"authToken": c.token, "roomId": 34, "msg": "still"})).await;
    for ws in [&mut old, &mut new, &mut third] {
        assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "still");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_files_are_startup_errors() {
    let ca = Ca::new("bad");
    let files = CertFiles::new();
    files.install(&ca, &ca.leaf());
    let start_err = |cfg: gochat::Config| async move {
        match Up::start(cfg).await {
            Ok(up) => {
                up.shutdown().await;
                panic!("started with a bad certificate")
            }
            Err(e) => format!("{e:#}"),
        }
    };
    let missing = files.0.join("missing.pem");
    let mut cfg = tls_config(&files, false);
    cfg.gateway.tls_cert = Some(missing.clone());
    let err = start_err(cfg).await;
    assert!(err.contains("cannot read") && err.contains("missing.pem"), "{err}");

    let not_pem = files.0.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let mut cfg = tls_config(&files, false);
    cfg.gateway.tls_cert = Some(not_pem);
    let err = start_err(cfg).await;
    assert!(err.contains("not.pem") && err.contains("no certificate"), "{err}");

    // The key of another certificate, for the gateway and for control.
    let other = files.0.join("other-key.pem");
    std::fs::write(&other, ca.leaf().key_pem).unwrap();
    let mut cfg = tls_config(&files, false);
    cfg.gateway.tls_key = Some(other.clone());
    let err = start_err(cfg).await;
    assert!(err.contains("does not match") && err.contains("wss"), "{err}");
    let mut cfg = tls_config(&files, true);
    cfg.control.tls_key = Some(other);
    let err = start_err(cfg).await;
    assert!(err.contains("does not match") && err.contains("HTTPS"), "{err}");
}

/// Gateway memory per idle authenticated connection, plain ws against wss, each counted in a
/// gochat process of its own (RSS before and after). A measurement, run by hand:
/// `cargo test --test e2e -- --ignored --nocapture tls::idle_memory` (`GOCHAT_IDLE_CONNS`, default
/// 2000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn idle_memory_per_connection() {
    gochat_runtime::os::raise_open_files_limit().unwrap();
    let n: usize = std::env::var("GOCHAT_IDLE_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let ca = Ca::new("memory");
    let files = CertFiles::new();
    files.install(&ca, &ca.leaf());
    for tls in [false, true] {
        let (before, after) = idle_rss(&files, &ca, tls, n).await;
        println!(
            "{}: {n} idle authenticated connections: gateway process RSS {before} -> {after} kB, {} B per connection",
            if tls { "wss" } else { "ws" },
            (after.saturating_sub(before)) * 1024 / n as u64
        );
    }
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn idle_rss(files: &CertFiles, ca: &Ca, tls: bool, n: usize) -> (u64, u64) {
    use futures_util::StreamExt;
    let [api, grpc, ws, wss_port, gw] = [(); 5].map(|_| common::free_port());
    let driver = std::env::var("GOCHAT_TEST_DRIVER").unwrap_or_else(|_| "epoll".into());
    let config = format!(
        "[gateway]\nws_listen = \"127.0.0.1:{ws}\"\ntcp_listen = \"off\"\nwss_listen = \"127.0.0.1:{wss_port}\"\n\
         tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ngrpc_listen = \"127.0.0.1:{gw}\"\nshards = 1\ndriver = \"{driver}\"\n\
         [control]\napi_listen = \"127.0.0.1:{api}\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\nsite_listen = \"off\"\n\
         database = \"sqlite://{db}\"\n",
        cert = files.cert().display(),
        key = files.key().display(),
        db = files.0.join(format!("users-{tls}.sqlite3")).display(),
    );
    let path = files.0.join("memory.toml");
    std::fs::write(&path, config).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gochat"))
        .args(["--config", path.to_str().unwrap(), "up"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let base = format!("http://127.0.0.1:{api}");
    let http = reqwest::Client::new();
    eventually("gochat up answers", || async {
        http.post(format!("{base}/user/login")).body("{}").send().await.is_ok()
    })
    .await;
    let login = common::post(&base, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    let token = login["data"].as_str().unwrap().to_string();
    let auth = common::post(&base, "/user/checkAuth", json!({"authToken": token})).await;
    let demo = User { token, id: auth["data"]["userId"].as_u64().unwrap(), name: "demo".into() };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = rss_kb(child.0.id());
    let config = client_config(&[ca]);
    let (demo, config) = (&demo, &config);
    let url = format!("ws://127.0.0.1:{ws}/ws");
    let conns: Vec<Ws> = futures_util::stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                match tls {
                    true => wss(([127, 0, 0, 1], wss_port).into(), config.clone(), demo, 1).await.0,
                    false => common::ws_at(&url, demo, 1).await,
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(conns.len(), n);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = rss_kb(child.0.id());
    drop(conns);
    (before, after)
}
