//! Raw WebSocket echo throughput, for protocol-level comparisons: the client, and the baseline
//! server (fastwebsockets on a tokio multi-thread runtime) the gateway's echo endpoint is
//! measured against.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use sha1::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::result::RunResult;
use crate::wsclient;

#[derive(Debug, Clone)]
pub struct EchoParams {
    pub connections: usize,
    /// Messages each connection keeps in flight.
    pub window: usize,
    pub size: usize,
    pub duration: Duration,
}

/// Runs the echo client against `ws` + `path`; one client thread.
pub fn run(ws: SocketAddr, path: &str, label: &str, p: &EchoParams) -> anyhow::Result<RunResult> {
    let mut r = RunResult::new("echo", label);
    r.param("connections", p.connections);
    r.param("window", p.window);
    r.param("message_bytes", p.size);
    r.param("duration_secs", p.duration.as_secs_f64());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let echoed = Rc::new(AtomicU64::new(0));
    let errors = Rc::new(AtomicU64::new(0));
    let started = Instant::now();
    let cpu_before = gochat_runtime::os::thread_cpu_secs();
    local.block_on(&rt, async {
        let deadline = tokio::time::Instant::now() + p.duration;
        let mut tasks = Vec::new();
        for _ in 0..p.connections {
            let (echoed, errors, path, p) = (echoed.clone(), errors.clone(), path.to_string(), p.clone());
            tasks.push(tokio::task::spawn_local(async move {
                if let Err(e) = echo_client(ws, &path, &p, deadline, &echoed).await {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("echo connection failed: {e:#}");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let n = echoed.load(Ordering::Relaxed);
    r.figure("echoed", n);
    r.figure("failed_connections", errors.load(Ordering::Relaxed));
    r.figure("echo_msgs_per_s", (n as f64 / wall).round());
    // The client is this one thread (the baseline server may share the process).
    let client_cpu = (gochat_runtime::os::thread_cpu_secs() - cpu_before) / wall;
    r.figure("client_cpu_pct", (client_cpu * 100.0).round());
    if client_cpu > 0.9 {
        r.notes.push(format!("the client was the bottleneck: {:.0}% of a core", client_cpu * 100.0));
    }
    Ok(r)
}

async fn echo_client(
    ws: SocketAddr,
    path: &str,
    p: &EchoParams,
    deadline: tokio::time::Instant,
    echoed: &AtomicU64,
) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(ws).await?;
    s.set_nodelay(true)?;
    s.write_all(&wsclient::upgrade_request(&ws.to_string(), path, None, false)).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    let start = loop {
        let n = s.read(&mut buf[have..]).await?;
        anyhow::ensure!(n > 0, "closed during upgrade");
        have += n;
        if let Some(at) = wsclient::upgrade_response(&buf[..have])? {
            break at;
        }
    };
    buf.copy_within(start..have, 0);
    have -= start;
    let payload = vec![b'x'; p.size];
    let mut batch = Vec::new();
    for _ in 0..p.window {
        wsclient::masked_frame(0x1, &payload, &mut batch);
    }
    while tokio::time::Instant::now() < deadline {
        s.write_all(&batch).await?;
        let mut got = 0;
        while got < p.window {
            let mut at = 0;
            while let Some((f, len)) = wsclient::parse_frame(&buf[at..have])? {
                anyhow::ensure!(
                    f.opcode == 0x1 && f.payload.len() == p.size,
                    "unexpected frame {}",
                    f.opcode
                );
                at += len;
                got += 1;
            }
            buf.copy_within(at..have, 0);
            have -= at;
            if got < p.window {
                if have == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                let n = s.read(&mut buf[have..]).await?;
                anyhow::ensure!(n > 0, "server closed");
                have += n;
            }
        }
        echoed.fetch_add(got as u64, Ordering::Relaxed);
    }
    let mut close = Vec::new();
    wsclient::masked_frame(0x8, &1000u16.to_be_bytes(), &mut close);
    let _ = s.write_all(&close).await;
    Ok(())
}

/// The baseline: a fastwebsockets echo server on a tokio multi-thread runtime with `threads`
/// workers, on its own thread. Returns its address.
pub fn spawn_baseline(threads: usize) -> anyhow::Result<SocketAddr> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Err(e) = baseline_conn(stream).await {
                        tracing_free_log(&e);
                    }
                });
            }
        })
    });
    Ok(addr)
}

/// `bench echo-server`: the baseline in the foreground.
pub fn serve_baseline(listen: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        eprintln!("fastwebsockets echo server on ws://{listen}/ (any path)");
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                if let Err(e) = baseline_conn(stream).await {
                    tracing_free_log(&e);
                }
            });
        }
    })
}

fn tracing_free_log(e: &anyhow::Error) {
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!("baseline connection: {e:#}");
    }
}

async fn baseline_conn(mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    accept_upgrade(&mut stream).await?;
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(Frame::new(true, frame.opcode, None, frame.payload)).await?
            }
            OpCode::Close => return Ok(()),
            _ => {}
        }
    }
}

/// Reads a WebSocket upgrade request from `stream` and answers it with 101 (the server side of
/// the handshake, for the bench's own servers: the echo baseline and the floor).
pub(crate) async fn accept_upgrade(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed during upgrade");
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        anyhow::ensure!(head.len() < 8192, "request head too long");
    };
    anyhow::ensure!(end == head.len(), "client sent frames before the upgrade answer");
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v.trim())
        })
        .context("no Sec-WebSocket-Key")?;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    use base64::Engine as _;
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    stream
        .write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    Ok(())
}
