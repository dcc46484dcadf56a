//! A fleet of client connections on one thread: a tokio current-thread runtime where each
//! connection is a small task that reads only when its socket is readable, into one scratch
//! buffer per thread. Nothing per connection but the socket, the task and a leftover buffer
//! that is empty between frames.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use gochat_proto::binary::SUBPROTOCOL;
use gochat_proto::client::{self, client_frame, server_frame, ClientFrame, ServerFrame};
use prost::Message as _;

use crate::wsclient;

/// Prefix of a message the bench sent: `bench:<sequence>:<send time in µs since the epoch>`.
pub const MARK: &str = "bench:";

/// One connection to open: whose token, which room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnSpec {
    pub token: String,
    pub room: u64,
}

/// What one fleet (a thread, or a worker process) opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSpec {
    pub ws: SocketAddr,
    pub path: String,
    /// Source address to connect from (127.0.0.2, …), so no address pair runs out of ports.
    pub source_ip: Option<Ipv4Addr>,
    pub conns: Vec<ConnSpec>,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// What the connections speak and do.
    pub client: ClientKind,
    /// How a connection knows it is authenticated.
    #[serde(default)]
    pub auth: AuthSignal,
    /// Connect with TLS (`wss://`), trusting these certificates.
    #[serde(default)]
    pub tls: Option<TlsClient>,
}

/// What a `wss://` client trusts, and the name it checks the server's certificate for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsClient {
    /// PEM certificates to trust (a CA's, or the server's own self-signed one).
    pub ca_pem: String,
    /// The server name to verify (a DNS name or an IP address).
    pub name: String,
}

impl TlsClient {
    /// A client config trusting [`TlsClient::ca_pem`], and the name to connect to.
    pub fn connector(
        &self,
    ) -> anyhow::Result<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)> {
        use anyhow::Context;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.context("a PEM certificate to trust")?)?;
        }
        if roots.is_empty() {
            anyhow::bail!("no certificate to trust");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(self.name.clone()).context("a server name to verify")?;
        Ok((tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)), name))
    }
}

/// How a connection knows the server took its auth frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthSignal {
    /// The server answers the auth frame with op 7 (gochat-rs).
    #[default]
    Reply,
    /// The server answers nothing (gochat): the first message in the connection's room does.
    /// The coordinator sends those probes (`/push/count`, op 4) while connections open.
    Probe,
}

/// How the bench's connections talk to the server.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ClientKind {
    /// The binary protocol (`gochat-pb`) instead of gochat's JSON.
    pub binary: bool,
    /// Acknowledge private messages (op 12), so the server keeps them until then.
    pub acks: bool,
    /// Offer `permessage-deflate` and insist on it (JSON only).
    #[serde(default)]
    pub compression: bool,
}

/// What a fleet counts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Authenticated (op 7 received, or with [`AuthSignal::Probe`] the first room message).
    pub connected: u64,
    /// Gave up after every attempt failed before authentication.
    pub failed: u64,
    /// Attempts that failed before authentication and were tried again.
    pub retried: u64,
    /// Closed by the server after connecting.
    pub closed: u64,
    pub room_frames: u64,
    pub private_frames: u64,
    pub other_frames: u64,
    /// Op 2/3 frames carrying a bench mark.
    pub marked: u64,
    /// Bytes read from the server after the upgrade (TLS: decrypted), all frames.
    #[serde(default)]
    pub wire_bytes: u64,
    /// Of the frames, those that came compressed.
    #[serde(default)]
    pub compressed_frames: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.connected += other.connected;
        self.failed += other.failed;
        self.retried += other.retried;
        self.closed += other.closed;
        self.room_frames += other.room_frames;
        self.private_frames += other.private_frames;
        self.other_frames += other.other_frames;
        self.marked += other.marked;
        self.wire_bytes += other.wire_bytes;
        self.compressed_frames += other.compressed_frames;
    }

    pub fn frames(&self) -> u64 {
        self.room_frames + self.private_frames + self.other_frames
    }
}

/// Counters and histograms of a fleet, as reported to the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub counts: Counts,
    /// End-to-end latency of marked messages, µs (V2-serialized, base64).
    pub latency: String,
    /// Time from connect to auth reply, µs (V2-serialized, base64).
    pub connect: String,
    /// CPU time the fleet's thread used, seconds.
    pub cpu_secs: f64,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

impl Snapshot {
    pub fn latency_hist(&self) -> Histogram<u64> {
        decode_hist(&self.latency)
    }
    pub fn connect_hist(&self) -> Histogram<u64> {
        decode_hist(&self.connect)
    }
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn encode_hist(h: &Histogram<u64>) -> String {
    let mut out = Vec::new();
    V2Serializer::new().serialize(h, &mut out).expect("histogram serializes");
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn decode_hist(s: &str) -> Histogram<u64> {
    if s.is_empty() {
        return new_hist();
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default();
    Deserializer::new().deserialize(&mut bytes.as_slice()).unwrap_or_else(|_| new_hist())
}

/// What the coordinator asks of a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    Snapshot,
    Quit,
}

struct Stats {
    snap: Snapshot,
    latency: Histogram<u64>,
    connect: Histogram<u64>,
}

struct Shared {
    scratch: RefCell<Box<[u8]>>,
    stats: RefCell<Stats>,
}

/// Tries per connection before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 4;

/// Runs a fleet on the current thread until `Cmd::Quit`; answers every `Cmd::Snapshot`.
pub fn run(spec: FleetSpec, mut cmds: mpsc::UnboundedReceiver<Cmd>, mut reply: impl FnMut(Snapshot)) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let shared = Rc::new(Shared {
            scratch: RefCell::new(vec![0; 64 * 1024].into_boxed_slice()),
            stats: RefCell::new(Stats {
                snap: Snapshot::default(),
                latency: new_hist(),
                connect: new_hist(),
            }),
        });
        let gate = Rc::new(Semaphore::new(spec.connect_concurrency.max(1)));
        let host = spec.ws.to_string();
        let tls = match spec.tls.as_ref().map(TlsClient::connector).transpose() {
            Ok(tls) => tls.map(Rc::new),
            Err(e) => {
                // Every connection fails with the reason, for the report.
                {
                    let mut stats = shared.stats.borrow_mut();
                    stats.snap.errors.push(format!("TLS client: {e:#}"));
                    stats.snap.counts.failed = spec.conns.len() as u64;
                }
                while let Some(cmd) = cmds.recv().await {
                    let mut snap = shared.stats.borrow().snap.clone();
                    snap.cpu_secs = gochat_runtime::os::thread_cpu_secs();
                    reply(snap);
                    if cmd == Cmd::Quit {
                        return;
                    }
                }
                return;
            }
        };
        let kind = spec.client;
        let auth = spec.auth;
        for conn in spec.conns {
            let (shared, gate, host, path) = (shared.clone(), gate.clone(), host.clone(), spec.path.clone());
            let tls = tls.clone();
            let (addr, source) = (spec.ws, spec.source_ip);
            tokio::task::spawn_local(async move {
                // As a real client does ("try again" closes, timeouts): reconnect with a
                // jittered, growing backoff, a few times.
                let mut backoff = Duration::from_millis(500);
                for attempt in 1..=CONNECT_ATTEMPTS {
                    let permit = gate.acquire().await.expect("semaphore open");
                    let at =
                        Endpoint { addr, source, host: &host, path: &path, kind, auth, tls: tls.as_deref() };
                    let result = connection(&shared, &at, &conn, Some(permit)).await;
                    let retry = {
                        let mut stats = shared.stats.borrow_mut();
                        let failed = result.is_err();
                        match result {
                            Ok(true) => stats.snap.counts.closed += 1,
                            Ok(false) => {}
                            Err(e) => {
                                let e = e.to_string();
                                if stats.snap.errors.len() < 5 && !stats.snap.errors.contains(&e) {
                                    stats.snap.errors.push(e);
                                }
                                if attempt < CONNECT_ATTEMPTS {
                                    stats.snap.counts.retried += 1;
                                } else {
                                    stats.snap.counts.failed += 1;
                                }
                            }
                        }
                        failed && attempt < CONNECT_ATTEMPTS
                    };
                    if !retry {
                        return;
                    }
                    let jitter = rand::random::<f64>() + 0.5;
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff *= 2;
                }
            });
        }
        while let Some(cmd) = cmds.recv().await {
            let stats = shared.stats.borrow();
            let mut snap = stats.snap.clone();
            snap.latency = encode_hist(&stats.latency);
            snap.connect = encode_hist(&stats.connect);
            snap.cpu_secs = gochat_runtime::os::thread_cpu_secs();
            reply(snap);
            if cmd == Cmd::Quit {
                return;
            }
        }
    });
}

async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        // Ports picked per destination at connect time; where refused, at bind time (fewer
        // connections per source address).
        let _ = gochat_runtime::os::bind_address_no_port(std::os::fd::AsRawFd::as_raw_fd(&socket));
        socket.bind(SocketAddr::from((ip, 0)))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Where a connection goes, and how it talks.
struct Endpoint<'a> {
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    host: &'a str,
    path: &'a str,
    kind: ClientKind,
    auth: AuthSignal,
    /// `wss://`: the TLS client and the name it verifies.
    tls: Option<&'a (tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

/// A connection's socket, plain or under TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(bytes).await,
            Self::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Tls(s) => s.read(buf).await,
        }
    }
}

/// One connection's life. `Ok(true)` when the server closed it after auth.
async fn connection(
    shared: &Shared,
    at: &Endpoint<'_>,
    spec: &ConnSpec,
    mut permit: Option<tokio::sync::SemaphorePermit<'_>>,
) -> io::Result<bool> {
    let started = Instant::now();
    let tcp = tokio::time::timeout(Duration::from_secs(30), connect(at.addr, at.source))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut stream = match at.tls {
        None => Stream::Plain(tcp),
        Some((connector, name)) => {
            let tls = tokio::time::timeout(Duration::from_secs(30), connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Stream::Tls(Box::new(tls))
        }
    };
    // Under TLS a read goes through rustls, which needs a buffer of the connection's own.
    let mut tls_buf = match stream {
        Stream::Plain(_) => Vec::new(),
        Stream::Tls(_) => vec![0; 4096],
    };
    let offer = at.kind.binary.then_some(SUBPROTOCOL);
    stream.write_all(&wsclient::upgrade_request(at.host, at.path, offer, at.kind.compression)).await?;
    let mut head = Vec::with_capacity(256);
    let body_at = loop {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upgrade timed out"))??;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during upgrade"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = wsclient::upgrade_response(&head)? {
            break end;
        }
    };
    if at.kind.binary && !wsclient::agreed(&head[..body_at], SUBPROTOCOL) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the server did not take the binary protocol",
        ));
    }
    if at.kind.compression && !wsclient::agreed_deflate(&head[..body_at]) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the server did not agree to permessage-deflate without context takeover",
        ));
    }
    let mut auth = Vec::with_capacity(128);
    if at.kind.binary {
        let a = client::Auth {
            auth_token: spec.token.clone(),
            room_id: spec.room,
            since: None,
            acks: at.kind.acks,
        };
        let frame = ClientFrame { kind: Some(client_frame::Kind::Auth(a)) }.encode_to_vec();
        wsclient::masked_frame(0x2, &frame, &mut auth);
    } else {
        let body = serde_json::json!({"authToken": spec.token, "roomId": spec.room, "acks": at.kind.acks});
        wsclient::masked_frame(0x1, body.to_string().as_bytes(), &mut auth);
    }
    stream.write_all(&auth).await?;
    if at.auth == AuthSignal::Probe {
        // No reply will come: the handshake is over for the server, let the next one start.
        permit.take();
    }

    let mut pending: Vec<u8> = head.split_off(body_at);
    let mut owed = Vec::new();
    let mut authed = false;
    loop {
        if !pending.is_empty() {
            let (used, event) = process(shared, &pending, &mut owed, started, &mut authed, at);
            pending.drain(..used);
            if let Event::Closed(why) = event {
                return if authed { Ok(true) } else { Err(closed_before_auth(&why)) };
            }
        }
        if authed {
            // Connected: let the next handshake start.
            permit.take();
        }
        if !owed.is_empty() {
            stream.write_all(&owed).await?;
            owed.clear();
        }
        let read = match &mut stream {
            Stream::Plain(s) => {
                s.readable().await?;
                let mut scratch = shared.scratch.borrow_mut();
                s.try_read(&mut scratch)
            }
            Stream::Tls(s) => {
                let read = s.read(&mut tls_buf).await;
                // Into the scratch buffer, as a plain read goes (nothing awaits in between).
                if let Ok(n) = read {
                    shared.scratch.borrow_mut()[..n].copy_from_slice(&tls_buf[..n]);
                }
                read
            }
        };
        let n = match read {
            Ok(0) => return if authed { Ok(true) } else { Err(closed_before_auth("end of stream")) },
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return if authed { Ok(true) } else { Err(e) },
        };
        shared.stats.borrow_mut().snap.counts.wire_bytes += n as u64;
        let scratch = shared.scratch.borrow();
        if pending.is_empty() {
            let (used, event) = process(shared, &scratch[..n], &mut owed, started, &mut authed, at);
            pending.extend_from_slice(&scratch[used..n]);
            if let Event::Closed(why) = event {
                return if authed { Ok(true) } else { Err(closed_before_auth(&why)) };
            }
        } else {
            pending.extend_from_slice(&scratch[..n]);
        }
        if pending.is_empty() && pending.capacity() > 0 {
            pending = Vec::new();
        }
    }
}

fn closed_before_auth(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, format!("closed before authentication: {why}"))
}

#[derive(PartialEq, Eq)]
enum Event {
    More,
    /// The server closed, with its close code and reason.
    Closed(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerJson<'a> {
    op: i32,
    #[serde(borrow, default)]
    msg: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    msg_id: Option<&'a str>,
}

/// What the bench reads of a server message, in either protocol: its op, text and id.
fn read_message(opcode: u8, payload: &[u8]) -> Option<(i32, Option<String>, u64)> {
    match opcode {
        0x1 => {
            let j = serde_json::from_slice::<ServerJson>(payload).ok()?;
            Some((j.op, j.msg.map(|m| m.into_owned()), j.msg_id.and_then(|id| id.parse().ok()).unwrap_or(0)))
        }
        0x2 => {
            let f = ServerFrame::decode(payload).ok()?;
            match f.body {
                Some(server_frame::Body::Message(m)) => Some((f.op, Some(m.msg), m.msg_id)),
                _ => Some((f.op, None, 0)),
            }
        }
        _ => None,
    }
}

/// An acknowledgement of private message `id`, masked, onto `out`.
fn ack(id: u64, kind: ClientKind, out: &mut Vec<u8>) {
    if kind.binary {
        let frame = ClientFrame { kind: Some(client_frame::Kind::Ack(client::Ack { msg_ids: vec![id] })) };
        wsclient::masked_frame(0x2, &frame.encode_to_vec(), out);
    } else {
        let body = format!(r#"{{"op":12,"msgIds":["{id}"]}}"#);
        wsclient::masked_frame(0x1, body.as_bytes(), out);
    }
}

/// Handles the whole frames at the start of `buf`; returns the bytes used.
fn process(
    shared: &Shared,
    buf: &[u8],
    owed: &mut Vec<u8>,
    started: Instant,
    authed: &mut bool,
    endpoint: &Endpoint<'_>,
) -> (usize, Event) {
    let kind = endpoint.kind;
    let mut at = 0;
    let mut stats = shared.stats.borrow_mut();
    while let Ok(Some((frame, len))) = wsclient::parse_frame(&buf[at..]) {
        at += len;
        let inflated;
        let payload = if frame.compressed {
            stats.snap.counts.compressed_frames += 1;
            match wsclient::inflate(frame.payload) {
                Ok(p) => {
                    inflated = p;
                    &inflated[..]
                }
                Err(e) => return (at, Event::Closed(e.to_string())),
            }
        } else {
            frame.payload
        };
        match frame.opcode {
            0x1 | 0x2 => match read_message(frame.opcode, payload) {
                Some((op, _, _)) if !*authed && (op == 7 || endpoint.auth == AuthSignal::Probe) => {
                    *authed = true;
                    stats.snap.counts.connected += 1;
                    let _ = stats.connect.record(started.elapsed().as_micros().max(1) as u64);
                    if op != 7 {
                        stats.snap.counts.other_frames += 1;
                    }
                }
                Some((op @ (2 | 3), msg, id)) => {
                    if op == 3 {
                        stats.snap.counts.room_frames += 1;
                    } else {
                        stats.snap.counts.private_frames += 1;
                        if kind.acks && id != 0 {
                            ack(id, kind, owed);
                        }
                    }
                    if let Some(sent) = msg.as_deref().and_then(sent_micros) {
                        stats.snap.counts.marked += 1;
                        let _ = stats.latency.record(now_micros().saturating_sub(sent).max(1));
                    }
                }
                _ => stats.snap.counts.other_frames += 1,
            },
            0x9 => wsclient::masked_frame(0xA, frame.payload, owed),
            0x8 => {
                let code = frame.payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default());
                return (at, Event::Closed(format!("close {code} {reason}")));
            }
            _ => {}
        }
    }
    (at, Event::More)
}

/// The send time in a bench message.
fn sent_micros(msg: &str) -> Option<u64> {
    msg.strip_prefix(MARK)?.split(':').nth(1)?.parse().ok()
}

/// A bench message: mark, sequence, send time.
pub fn marked_message(seq: u64) -> String {
    format!("{MARK}{seq}:{}", now_micros())
}

/// `mark` followed by chat-like words up to `bytes` in all (the mark stays readable: the words
/// come after a `:`); deterministic per mark, varied between marks.
pub fn padded(mut mark: String, bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "meeting", "moved", "to", "three", "o'clock", "can", "you", "send", "me", "latest", "draft",
        "before", "lunch", "thanks", "sounds", "good", "I'll", "check", "with", "team", "and", "get", "back",
        "later", "today", "is", "build", "green", "again", "deploy", "finished", "without", "errors", "who",
        "has", "review", "for", "pull", "request", "on", "release", "branch", "let's", "sync", "tomorrow",
        "morning", "great", "work", "everyone", "coffee", "anyone", "customer", "asked", "about", "invoice",
        "numbers", "look", "fine", "now",
    ];
    if mark.len() >= bytes {
        return mark;
    }
    mark.push(':');
    let mut x =
        mark.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    while mark.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        mark.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        mark.push(' ');
    }
    mark.truncate(bytes);
    mark
}

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        let m = marked_message(42);
        let p = padded(m.clone(), 4096);
        assert_eq!((p.len(), sent_micros(&p)), (4096, sent_micros(&m)), "{p}");
        assert_eq!(padded(m.clone(), 3), m);
        let sent = sent_micros(&m).unwrap();
        assert!(now_micros() >= sent);
        assert_eq!(sent_micros("hello"), None);
        assert_eq!(sent_micros("bench:1:x"), None);
    }

    #[test]
    fn messages_read_alike_in_both_protocols() {
        let json = br#"{"code":0,"msg":"bench:1:2","op":2,"msgId":"77","fromUserId":1}"#;
        let binary = gochat_proto::binary::server_frame(json);
        let want = Some((2, Some("bench:1:2".to_string()), 77));
        assert_eq!(read_message(0x1, json), want);
        assert_eq!(read_message(0x2, &binary), want);
        let mut acks = (Vec::new(), Vec::new());
        ack(77, ClientKind { binary: false, acks: true, compression: false }, &mut acks.0);
        ack(77, ClientKind { binary: true, acks: true, compression: false }, &mut acks.1);
        assert_eq!((acks.0[0], acks.1[0]), (0x81, 0x82));
    }

    #[test]
    fn histograms_survive_the_wire() {
        let mut h = new_hist();
        h.record(1500).unwrap();
        h.record(90).unwrap();
        let back = decode_hist(&encode_hist(&h));
        assert_eq!(back.len(), 2);
        assert_eq!(back.max(), h.max());
    }
}
