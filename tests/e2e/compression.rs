//! `permessage-deflate` through real sockets against `gochat up` (both gateway drivers:
//! GOCHAT_TEST_DRIVER), plain and under TLS: room messages come deflated to the clients that
//! agreed and plain to the others, compressed client frames are read, and a decompression bomb
//! is closed with 1009 and counted.

use crate::common;

use std::pin::Pin;
use std::sync::Arc;

use common::{Server, User, WAIT};
use gochat_gateway::protocol::deflate;
use gochat_gateway::testkit::client_frame;
use gochat_proto::wire;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A WebSocket client written here, so the test sees each frame's RSV1 bit.
struct Client {
    io: Pin<Box<dyn Io>>,
    buf: Vec<u8>,
    /// The server's answer to the upgrade.
    head: String,
}

/// One server frame: compressed or not, and its payload (inflated).
#[derive(Debug)]
struct Frame {
    compressed: bool,
    opcode: u8,
    payload: Vec<u8>,
}

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

impl Client {
    async fn connect(io: Pin<Box<dyn Io>>, offer: &str) -> Self {
        let mut c = Self { io, buf: Vec::new(), head: String::new() };
        let upgrade = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        c.io.write_all(upgrade.as_bytes()).await.unwrap();
        let end = loop {
            if let Some(p) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            c.fill().await;
        };
        c.head = String::from_utf8(c.buf.drain(..end).collect()).unwrap();
        assert!(c.head.starts_with("HTTP/1.1 101"), "{}", c.head);
        c
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.io.read(&mut chunk)).await.expect("bytes in time").unwrap();
        assert!(n > 0, "the server closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn agreed(&self) -> bool {
        self.head.to_ascii_lowercase().contains("sec-websocket-extensions: permessage-deflate")
    }

    /// Sends a text message, deflated when `compress`.
    async fn send(&mut self, text: &[u8], compress: bool) {
        let frame = if compress {
            let mut z = Vec::new();
            deflate::deflate(text, 15, 1, &mut z);
            let mut f = client_frame(true, 1, &z);
            f[0] |= 0x40;
            f
        } else {
            client_frame(true, 1, text)
        };
        self.io.write_all(&frame).await.unwrap();
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some((payload, len)) = gochat_gateway::protocol::ws::server_frame_payload(&self.buf) {
                let (compressed, opcode) = (self.buf[0] & 0x40 != 0, self.buf[0] & 0x0f);
                let payload = if compressed {
                    let mut out = Vec::new();
                    deflate::inflate(payload, 1 << 24, &mut out).expect("the server's deflate inflates");
                    out
                } else {
                    payload.to_vec()
                };
                self.buf.drain(..len);
                return Frame { compressed, opcode, payload };
            }
            self.fill().await;
        }
    }

    /// The next text frame with `op`, skipping others.
    async fn op(&mut self, op: i64) -> (Frame, Value) {
        loop {
            let f = self.frame().await;
            if f.opcode == 1 {
                let v: Value = serde_json::from_slice(&f.payload).unwrap();
                if v["op"] == op {
                    return (f, v);
                }
            }
        }
    }

    /// Authenticates as `user` in `room`, the auth frame deflated when `compress`.
    async fn auth(&mut self, user: &User, room: u64, compress: bool) {
        let auth = json!({"authToken": user.token, "roomId": room}).to_string();
        self.send(auth.as_bytes(), compress).await;
        let (_, ok) = self.op(wire::OP_AUTH_OK as i64).await;
        assert_eq!(ok["userId"], user.id);
    }

    /// The close the server sent: its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame().await;
            if f.opcode == 8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }
}

fn config(min_bytes: usize) -> gochat::Config {
    let mut cfg = common::test_config();
    cfg.gateway.compression = gochat_gateway::config::Compression::On;
    cfg.gateway.compression_min_bytes = min_bytes;
    cfg.gateway.max_message_bytes = 64 << 10;
    cfg.gateway.max_frame_bytes = 64 << 10;
    cfg
}

/// A client on its way to connecting.
type Connecting<'a> = Pin<Box<dyn std::future::Future<Output = Client> + 'a>>;

async fn plain(s: &Server, offer: &str) -> Client {
    let tcp = TcpStream::connect(s.up.gateway.ws_addr).await.unwrap();
    Client::connect(Box::pin(tcp), offer).await
}

/// Room messages over the threshold come deflated to the clients that agreed, in the same
/// bytes for each, and plain to the others; shorter ones come plain to all.
async fn rooms_through<'a>(s: &'a Server, connect: impl Fn() -> Connecting<'a>) {
    let (ua, ub, uc) = (s.user("za").await, s.user("zb").await, s.user("zc").await);
    let mut a = connect().await;
    assert!(a.agreed(), "{}", a.head);
    assert!(a.head.contains("server_no_context_takeover; client_no_context_takeover"), "{}", a.head);
    a.auth(&ua, 31, true).await;
    let mut b = connect().await;
    b.auth(&ub, 31, false).await;
    let mut c = plain(s, "").await;
    assert!(!c.agreed());
    c.auth(&uc, 31, false).await;
    let long = "deploy finished on every node without errors, ".repeat(40);
    s.push_room(&ua, 31, &long).await;
    s.push_room(&ua, 31, "hi").await;
    let (fa, ma) = a.op(wire::OP_ROOM_SEND as i64).await;
    let (fb, mb) = b.op(wire::OP_ROOM_SEND as i64).await;
    let (fc, mc) = c.op(wire::OP_ROOM_SEND as i64).await;
    assert!(fa.compressed && fb.compressed && !fc.compressed);
    assert_eq!((&ma["msg"], &mb["msg"], &mc["msg"]), (&json!(long), &json!(long), &json!(long)));
    assert_eq!(ma, mc, "the same message, compressed or not");
    let (short, m) = a.op(wire::OP_ROOM_SEND as i64).await;
    assert!(!short.compressed, "under the threshold: plain");
    assert_eq!(m["msg"], "hi");
    let stats = s.gateway_stats().await;
    assert!(stats.connections >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_rooms_and_frames_over_real_sockets() {
    let s = Server::start_with(config(512)).await;
    rooms_through(&s, || Box::pin(plain(&s, OFFER))).await;
    // Off: the offer is declined, and a compressed frame is a protocol error.
    let off = Server::start().await;
    let u = off.user("zoff").await;
    let mut c = plain(&off, OFFER).await;
    assert!(!c.agreed(), "{}", c.head);
    let auth = json!({"authToken": u.token, "roomId": 1}).to_string();
    c.send(auth.as_bytes(), true).await;
    assert_eq!(c.close_code().await, 1002);
    off.shutdown().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_closed_with_1009_and_others_carry_on() {
    let s = Server::start_with(config(128)).await;
    let (bomber, bystander) = (s.user("bomb").await, s.user("calm").await);
    let mut calm = plain(&s, OFFER).await;
    calm.auth(&bystander, 9, true).await;
    let mut c = plain(&s, OFFER).await;
    c.auth(&bomber, 9, false).await;
    // 4 MiB of spaces: ~4 KiB deflated, far past the 64 KiB message limit once inflated.
    let bomb = format!(r#"{{"op":3,"roomId":9,"msg":"{}"}}"#, " ".repeat(4 << 20));
    c.send(bomb.as_bytes(), true).await;
    assert_eq!(c.close_code().await, 1009);
    assert!(deflate::INFLATED_TOO_LARGE.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let long = "still here, still reading, ".repeat(20);
    s.push_room(&bystander, 9, &long).await;
    let (f, m) = calm.op(wire::OP_ROOM_SEND as i64).await;
    assert!(f.compressed);
    assert_eq!(m["msg"], json!(long));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_under_tls() {
    let dir =
        std::env::temp_dir().join(common::unique(&format!("gochat-deflate-tls-{}-", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut cfg = config(256);
    cfg.gateway.wss_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.gateway.tls_cert = Some(cert_path);
    cfg.gateway.tls_key = Some(key_path);
    let s = Server::start_with(cfg).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let tls = Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
    let wss = s.up.gateway.wss_addr.expect("wss listening");
    let connect = || {
        let tls = tls.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(wss).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
            Client::connect(Box::pin(stream), OFFER).await
        }) as Connecting<'static>
    };
    rooms_through(&s, connect).await;
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
