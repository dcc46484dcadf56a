//! The floor: the least a server can do to deliver a room message, run beside the server under
//! test so that its figures can be read against the machine of the day.
//!
//! It speaks just enough of gochat's REST API (users, `/push/pushRoom`, `/push/count`) and
//! WebSocket (upgrade, auth frame answered with op 7) for every scenario's setup to run
//! unchanged, and then one thread — the sender — writes each pushed message's frame to every
//! member socket of its room: one blocking `write` per delivery, the frame built once per push.
//! The sender's CPU time is what the kernel charges for those sends (on loopback the receiver's
//! TCP work is charged to the sender too), so deliveries per sender CPU-second is the
//! one-send-per-delivery floor a gateway is compared with.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::ServerProcs;

/// What the sender thread is asked to do.
enum Send {
    /// A member socket, authenticated into a room.
    Join(u64, std::net::TcpStream),
    /// A frame (built once) for every member of a room; told when it is written, so that a push
    /// is answered once delivered to the kernel (a floor that queued without bound would take
    /// pushes faster than it sends them).
    Room(u64, Arc<[u8]>, tokio::sync::oneshot::Sender<()>),
}

/// A running floor server; stopped when dropped.
pub struct Floor {
    pub api: String,
    pub ws: SocketAddr,
    /// The sender thread (its CPU time is the floor's cost).
    pub sender: ServerProcs,
    runtime: Option<tokio::runtime::Runtime>,
    sender_thread: Option<std::thread::JoinHandle<()>>,
}

impl Floor {
    /// Starts the floor on free loopback ports. `answer_auth`: reply to the auth frame with
    /// op 7, as gochat-rs does; without, say nothing, as gochat does.
    pub fn start(answer_auth: bool) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-floor-io")
            .enable_all()
            .build()?;
        let (api_listener, ws_listener) = runtime.block_on(async {
            anyhow::Ok((TcpListener::bind("127.0.0.1:0").await?, TcpListener::bind("127.0.0.1:0").await?))
        })?;
        let (api, ws) = (api_listener.local_addr()?, ws_listener.local_addr()?);
        let (to_sender, rx) = mpsc::channel::<Send>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let sender_thread = std::thread::Builder::new().name("bench-floor-send".into()).spawn(move || {
            let _ = tid_tx.send(thread_id());
            send_loop(rx)
        })?;
        let (pid, tid) = tid_rx.recv().context("floor sender thread")??;
        let users = Arc::new(Mutex::new(Users::default()));
        // `mpsc::Sender` is Clone and Sync: every task holds a clone of its own.
        let sender = to_sender.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = api_listener.accept().await {
                let (users, sender) = (users.clone(), sender.clone());
                tokio::spawn(async move {
                    let _ = serve_http(stream, &users, &sender).await;
                });
            }
        });
        runtime.spawn(async move {
            while let Ok((stream, _)) = ws_listener.accept().await {
                let sender = to_sender.clone();
                tokio::spawn(async move {
                    if let Ok((room, stream)) = join(stream, answer_auth).await {
                        let _ = sender.send(Send::Join(room, stream));
                    }
                });
            }
        });
        Ok(Self {
            api: format!("http://{api}"),
            ws,
            sender: ServerProcs { pids: Vec::new(), threads: vec![(pid, tid)] },
            runtime: Some(runtime),
            sender_thread: Some(sender_thread),
        })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // The runtime holds the last senders of the channel: once it is gone, the sender
        // thread's `recv` ends and it closes every socket.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(t) = self.sender_thread.take() {
            let _ = t.join();
        }
    }
}

/// The calling thread's process and thread id, from `/proc/thread-self` (`PID/task/TID`).
fn thread_id() -> anyhow::Result<(u32, u32)> {
    let link = std::fs::read_link("/proc/thread-self")?;
    let text = link.to_string_lossy();
    let mut parts = text.split('/');
    let pid = parts.next().and_then(|p| p.parse().ok());
    let tid = parts.nth(1).and_then(|t| t.parse().ok());
    match (pid, tid) {
        (Some(pid), Some(tid)) => Ok((pid, tid)),
        _ => bail!("unexpected /proc/thread-self: {text}"),
    }
}

fn send_loop(rx: mpsc::Receiver<Send>) {
    let mut rooms: HashMap<u64, Vec<std::net::TcpStream>> = HashMap::new();
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Send::Join(room, stream) => rooms.entry(room).or_default().push(stream),
            Send::Room(room, frame, written) => {
                if let Some(members) = rooms.get_mut(&room) {
                    // One write per delivery; a member that is gone is dropped.
                    members.retain_mut(|s| s.write_all(&frame).is_ok());
                }
                let _ = written.send(());
            }
        }
    }
}

/// Upgrade, read the auth frame, answer op 7 (when `answer_auth`); the socket, blocking, for
/// the sender.
async fn join(mut stream: TcpStream, answer_auth: bool) -> anyhow::Result<(u64, std::net::TcpStream)> {
    stream.set_nodelay(true)?;
    crate::echo::accept_upgrade(&mut stream).await?;
    let mut buf = Vec::with_capacity(256);
    let payload = loop {
        if let Some(payload) = client_frame(&buf)? {
            break payload;
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the auth frame");
        buf.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(buf.len() < 64 * 1024, "auth frame too long");
    };
    let auth: Value = serde_json::from_slice(&payload).context("auth frame is not JSON")?;
    let room = auth["roomId"].as_u64().context("auth frame without roomId")?;
    let user = user_of(auth["authToken"].as_str().unwrap_or_default()).context("bad authToken")?;
    if answer_auth {
        stream.write_all(&text_frame(&json!({"op": 7, "userId": user, "roomId": room}).to_string())).await?;
    }
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok((room, stream))
}

/// The payload of the masked client frame at the start of `buf`, once it is all there.
fn client_frame(buf: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    anyhow::ensure!(buf[1] & 0x80 != 0, "client frames must be masked");
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 => bail!("auth frame too long"),
        n => (n as usize, 2),
    };
    if buf.len() < head + 4 + len {
        return Ok(None);
    }
    let mask = [buf[head], buf[head + 1], buf[head + 2], buf[head + 3]];
    let mut payload = buf[head + 4..head + 4 + len].to_vec();
    fastwebsockets::unmask(&mut payload, mask);
    Ok(Some(payload))
}

/// An unmasked server text frame.
fn text_frame(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n < 65536 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload.as_bytes());
    out
}

/// Bench users by name; a token is `floor:ID`.
#[derive(Default)]
struct Users {
    ids: HashMap<String, u64>,
    names: Vec<String>,
}

fn user_of(token: &str) -> Option<u64> {
    token.strip_prefix("floor:")?.parse().ok()
}

/// One HTTP/1.1 connection: requests answered in order, kept alive.
async fn serve_http(
    mut stream: TcpStream,
    users: &Mutex<Users>,
    sender: &mpsc::Sender<Send>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (path, body, used) = loop {
            if let Some(request) = http_request(&buf)? {
                break request;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let (answer, written) = route(&path, &body, users, sender);
        if let Some(written) = written {
            let _ = written.await;
        }
        buf.drain(..used);
        let body = answer.to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(&[head.as_bytes(), body.as_bytes()].concat()).await?;
    }
}

/// The path, body and length of the request at the start of `buf`, once it is all there.
fn http_request(buf: &[u8]) -> anyhow::Result<Option<(String, Vec<u8>, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        anyhow::ensure!(buf.len() < 16 * 1024, "request head too long");
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let path = head.split_whitespace().nth(1).context("no request path")?.to_string();
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .map_or(Ok(0), |(_, v)| v.trim().parse::<usize>())?;
    let total = end + 4 + length;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((path, buf[end + 4..total].to_vec(), total)))
}

/// A push's frame written to every member, awaited before the push is answered.
type Written = tokio::sync::oneshot::Receiver<()>;

/// gochat's envelope for `path`, and for a push what to wait for before answering.
fn route(
    path: &str,
    body: &[u8],
    users: &Mutex<Users>,
    sender: &mpsc::Sender<Send>,
) -> (Value, Option<Written>) {
    let ok = |data: Value| json!({"code": 0, "message": "", "data": data});
    let fail = |message: &str| json!({"code": 1, "message": message, "data": null});
    let Ok(body) = serde_json::from_slice::<Value>(body) else { return (fail("body is not JSON"), None) };
    let push = |room: u64, frame: Vec<u8>| {
        let (done, written) = tokio::sync::oneshot::channel();
        let _ = sender.send(Send::Room(room, frame.into(), done));
        (ok(json!("")), Some(written))
    };
    let token_user = user_of(body["authToken"].as_str().unwrap_or_default());
    let room = body["roomId"].as_u64();
    match (path, token_user, room) {
        ("/user/register" | "/user/login", _, _) => {
            let Some(name) = body["userName"].as_str() else { return (fail("no userName"), None) };
            let mut users = users.lock().expect("users lock");
            let next = users.names.len() as u64 + 1;
            let id = *users.ids.entry(name.to_string()).or_insert(next);
            if id == next {
                users.names.push(name.to_string());
            }
            (ok(json!(format!("floor:{id}"))), None)
        }
        ("/user/checkAuth", Some(id), _) => {
            let users = users.lock().expect("users lock");
            match (id as usize).checked_sub(1).and_then(|i| users.names.get(i)) {
                Some(name) => (ok(json!({"userId": id, "userName": name})), None),
                None => (session_error(), None),
            }
        }
        ("/push/pushRoom", Some(from), Some(room)) => {
            // The same fields, and so about the same size, as a gochat-rs room message.
            let message = json!({
                "code": 0, "msg": body["msg"], "fromUserId": from, "fromUserName": format!("bench-user-{from}"),
                "toUserId": 0, "toUserName": "", "roomId": room, "op": 3,
                "createTime": "2026-01-01 00:00:00", "msgId": "1000000000000", "seq": 1, "epoch": "0123456789abcdef",
            });
            push(room, text_frame(&message.to_string()))
        }
        ("/push/count", Some(_), Some(room)) => {
            push(room, text_frame(&json!({"count": 0, "op": 4}).to_string()))
        }
        ("/push/pushRoom" | "/push/count" | "/user/checkAuth", None, _) => (session_error(), None),
        _ => (fail("the floor serves users, /push/pushRoom and /push/count only"), None),
    }
}

fn session_error() -> Value {
    json!({"code": 40000, "message": "Session error", "data": null})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_whole() {
        let req = b"POST /push/count HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}POST";
        assert_eq!(http_request(&req[..20]).unwrap(), None);
        let (path, body, used) = http_request(req).unwrap().unwrap();
        assert_eq!((path.as_str(), body.as_slice(), used), ("/push/count", &b"{}"[..], req.len() - 4));
        assert!(http_request(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn the_auth_frame_is_unmasked() {
        let mut frame = Vec::new();
        crate::wsclient::masked_frame(1, br#"{"authToken":"floor:1","roomId":3}"#, &mut frame);
        assert_eq!(client_frame(&frame[..5]).unwrap(), None);
        assert_eq!(client_frame(&frame).unwrap().unwrap(), br#"{"authToken":"floor:1","roomId":3}"#);
        let hi = text_frame("hi");
        let (f, n) = crate::wsclient::parse_frame(&hi).unwrap().unwrap();
        assert_eq!((f.opcode, f.payload, n), (1, &b"hi"[..], 4));
    }

    #[test]
    fn users_get_tokens_and_bad_calls_a_clear_error() {
        let (users, (sender, rx)) = (Mutex::new(Users::default()), mpsc::channel());
        let call = |path: &str, body: &[u8]| route(path, body, &users, &sender).0;
        assert_eq!(call("/user/register", br#"{"userName":"a","passWord":"p"}"#)["data"], "floor:1");
        assert_eq!(call("/user/login", br#"{"userName":"a","passWord":"p"}"#)["data"], "floor:1");
        assert_eq!(call("/user/checkAuth", br#"{"authToken":"floor:1"}"#)["data"]["userId"], 1);
        assert_eq!(call("/user/checkAuth", br#"{"authToken":"floor:0"}"#)["code"], 40000);
        assert_eq!(call("/push/pushRoom", br#"{"roomId":1}"#)["code"], 40000);
        assert_eq!(call("/user/login", b"not json")["code"], 1);
        // A push is answered once the sender has written it.
        let (answer, written) =
            route("/push/pushRoom", br#"{"authToken":"floor:1","roomId":1,"msg":"m"}"#, &users, &sender);
        assert_eq!(answer["code"], 0);
        let Ok(Send::Room(1, frame, done)) = rx.try_recv() else { panic!("no frame for the sender") };
        assert!(String::from_utf8_lossy(&frame).contains(r#""op":3"#));
        let mut written = written.expect("a push waits for its write");
        assert!(written.try_recv().is_err(), "answered before it was written");
        done.send(()).unwrap();
        assert!(written.try_recv().is_ok());
    }
}
