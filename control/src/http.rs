//! Serving the REST API and the page over HTTP (or HTTPS), with every connection bounded:
//! in number (in all, and per client address) and in time (its TLS handshake and each
//! request's head within `http_header_timeout_ms`, which is also how long a kept-alive
//! connection may sit idle, and each body within `http_body_timeout_ms`). HTTP/1.1 only,
//! unless `http2` is on.
//!
//! The listeners share their process's descriptors with whatever else runs in it (under
//! `gochat up`, the gateway's sockets): the cap is held to a quarter of the open-file limit,
//! so connections held open on purpose can never take what the rest needs.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::Request;
use gochat_runtime::metrics::Counter;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::limits::{client_key, TrustedProxies};
use crate::ControlConfig;

/// What a refused connection is told before it is closed.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n\
Connection: close\r\nContent-Length: 38\r\n\r\ntoo many connections, try again later\n";

/// The most a request's head may take in a connection's buffer (hyper's default is ~400 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How connections are bounded (from [`ControlConfig`]).
#[derive(Debug, Clone)]
pub(crate) struct HttpLimits {
    /// Connections open at once, over every HTTP listener of this control.
    pub(crate) max_connections: usize,
    /// Of those, from one client address (0: no such cap); trusted proxies are not capped.
    pub(crate) max_per_address: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) http2: bool,
}

impl HttpLimits {
    pub(crate) fn new(cfg: &ControlConfig) -> Self {
        Self {
            max_connections: cfg.http_max_connections,
            max_per_address: cfg.http_max_connections_per_address,
            header_timeout: Duration::from_millis(cfg.http_header_timeout_ms),
            body_timeout: Duration::from_millis(cfg.http_body_timeout_ms),
            http2: cfg.http2,
        }
    }
}

/// At most a quarter of the open-file limit `nofile`: what held HTTP connections may take.
pub(crate) fn connection_cap(configured: usize, nofile: u64) -> usize {
    configured.min(usize::try_from(nofile / 4).unwrap_or(usize::MAX)).max(1)
}

/// This process's soft open-file limit.
#[allow(unsafe_code)]
fn nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => u64::MAX,
    }
}

/// The open HTTP connections of one control, shared by its listeners, and what they came to.
pub struct Connections {
    limits: HttpLimits,
    cap: usize,
    proxies: TrustedProxies,
    open: Mutex<(usize, HashMap<u128, usize>)>,
    /// Refused because every connection was taken.
    pub refused_full: Counter,
    /// Refused because the client's address had its share.
    pub refused_per_address: Counter,
    /// Closed for a head (or TLS handshake) not in within the header timeout, idle ones too.
    pub header_timeouts: Counter,
    /// Requests whose body was not in within the body timeout.
    pub body_timeouts: Counter,
    /// Closed for an answer the client did not read for the header timeout.
    pub write_timeouts: Counter,
    opened: AtomicU64,
}

impl Connections {
    pub(crate) fn new(cfg: &ControlConfig) -> Self {
        let limits = HttpLimits::new(cfg);
        let nofile = nofile();
        let cap = connection_cap(limits.max_connections, nofile);
        if cap < limits.max_connections {
            tracing::warn!(
                http_max_connections = limits.max_connections,
                cap,
                nofile,
                "http_max_connections lowered to a quarter of the open-file limit; the rest is kept for the gateway and the stores"
            );
        }
        Self {
            limits,
            cap,
            proxies: TrustedProxies::new(&cfg.trusted_proxies).expect("validated with the config"),
            open: Mutex::new((0, HashMap::new())),
            refused_full: Counter::default(),
            refused_per_address: Counter::default(),
            header_timeouts: Counter::default(),
            body_timeouts: Counter::default(),
            write_timeouts: Counter::default(),
            opened: AtomicU64::new(0),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Connections taken since start.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The most connections held at once.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// A place for a connection from `peer`, or none (counted).
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        let key = (self.limits.max_per_address > 0 && !self.proxies.trusts(peer.ip()))
            .then(|| client_key(peer.ip()));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.cap {
            self.refused_full.inc();
            return None;
        }
        if let Some(key) = key {
            let n = open.1.entry(key).or_default();
            if *n >= self.limits.max_per_address {
                self.refused_per_address.inc();
                return None;
            }
            *n += 1;
        }
        open.0 += 1;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Some(Slot { connections: self.clone(), key })
    }
}

/// A connection's place; given back when it closes.
struct Slot {
    connections: Arc<Connections>,
    key: Option<u128>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(key) = self.key {
            if let Some(n) = open.1.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.1.remove(&key);
                }
            }
        }
    }
}

/// Serves `app` on `listener` (under TLS when `tls` is set) until `stopped`, each connection
/// taking a place in `connections`.
pub(crate) fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    connections: Arc<Connections>,
    mut stopped: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()> {
    let tls = tls.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = match connections.limits.http2 {
            true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = until_stopped(&mut stopped) => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, above all: retrying at once would spin a core.
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "{what}: accept paused");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            pause = Duration::from_millis(10);
            while conns.try_join_next().is_some() {}
            let Some(slot) = connections.admit(peer) else {
                // One write into an empty send buffer: never waits, holds nothing. Under TLS
                // there is no handshake to answer in: the connection is only closed.
                if tls.is_none() {
                    let _ = stream.try_write(FULL);
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn { peer, app: app.clone(), connections: connections.clone(), _slot: slot };
            conns.spawn(conn.run(stream, tls.clone(), stopped.clone()));
        }
        // Requests in flight finish (the caller bounds how long it waits).
        while conns.join_next().await.is_some() {}
        tracing::debug!("{what} stopped");
    })
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    app: axum::Router,
    connections: Arc<Connections>,
    _slot: Slot,
}

impl Conn {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>, stopped: watch::Receiver<bool>) {
        let header_timeout = self.connections.limits.header_timeout;
        match tls {
            None => {
                let io = Timed::new(stream, header_timeout, self.connections.clone());
                self.serve(TokioIo::new(io), stopped).await
            }
            Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let io = Timed::new(tls, header_timeout, self.connections.clone());
                    self.serve(TokioIo::new(io), stopped).await
                }
                Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    self.connections.header_timeouts.inc();
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                }
            },
        }
    }

    async fn serve<I>(self, io: TokioIo<I>, mut stopped: watch::Receiver<bool>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.connections.limits.clone();
        let (peer, app, connections) = (self.peer, self.app.clone(), self.connections.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (mut parts, body) = req.into_parts();
            // The client's address, for the per-address rate limits.
            parts.extensions.insert(ConnectInfo(peer));
            let body = Deadline::new(body, limits.body_timeout, connections.clone());
            let mut app = app.clone();
            tower_service::Service::call(&mut app, Request::from_parts(parts, axum::body::Body::new(body)))
        });
        let limits = &self.connections.limits;
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if !limits.http2 {
            builder = builder.http1_only();
        }
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(64);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let served = tokio::select! {
            done = conn.as_mut() => done,
            _ = until_stopped(&mut stopped) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = served {
            let timed_out = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
            if timed_out {
                self.connections.header_timeouts.inc();
            }
            tracing::debug!(peer = %self.peer, error = %e, timed_out, "HTTP connection ended");
        }
    }
}

/// A connection's I/O with the deadlines hyper does not keep: a write that makes no progress
/// for `stall` (a client that sends requests and never reads the answers), and a first byte
/// within `stall` (before hyper's own header timer runs, as when it looks for HTTP/2's
/// preface).
struct Timed<I> {
    io: I,
    stall: Duration,
    write_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    connections: Arc<Connections>,
}

impl<I> Timed<I> {
    fn new(io: I, stall: Duration, connections: Arc<Connections>) -> Self {
        let first_byte = Some(Box::pin(tokio::time::sleep(stall)));
        Self { io, stall, write_timer: None, first_byte, connections }
    }

    /// A write (or flush) as polled: one that went on stops the write timer; one that could not
    /// go on fails once it has waited `stall`.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.write_timer = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self.write_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.connections.write_timeouts.inc();
                Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Timed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(read) => {
                if buf.filled().len() > before {
                    self.first_byte = None;
                }
                Poll::Ready(read)
            }
            Poll::Pending => match self.first_byte.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    self.connections.header_timeouts.inc();
                    Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
                }
                _ => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Timed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, data);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that fails once its time is up, so a client that stops half way through
/// frees its connection.
struct Deadline {
    body: Incoming,
    timer: Pin<Box<tokio::time::Sleep>>,
    after: Duration,
    connections: Arc<Connections>,
}

impl Deadline {
    fn new(body: Incoming, after: Duration, connections: Arc<Connections>) -> Self {
        Self { body, timer: Box::pin(tokio::time::sleep(after)), after, connections }
    }
}

/// Why a body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
struct BodyTimeout(Duration);

impl Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.connections.body_timeouts.inc();
                    Poll::Ready(Some(Err(BodyTimeout(self.after).into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_connections_take_at_most_a_quarter_of_the_descriptors() {
        assert_eq!(connection_cap(1024, 20_000), 1024);
        assert_eq!(connection_cap(10_000, 20_000), 5_000);
        assert_eq!(connection_cap(1024, 1024), 256);
        assert_eq!(connection_cap(1024, 0), 1, "never none");
    }

    #[test]
    fn places_are_bounded_in_all_and_per_address_and_given_back() {
        let mut cfg = ControlConfig::default();
        (cfg.http_max_connections, cfg.http_max_connections_per_address) = (4, 2);
        cfg.trusted_proxies = vec!["10.0.0.1".into()];
        let c = Arc::new(Connections::new(&cfg));
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 1);
        let a1 = c.admit(at("192.0.2.1")).unwrap();
        let _a2 = c.admit(at("192.0.2.1")).unwrap();
        assert!(c.admit(at("192.0.2.1")).is_none(), "a third from one address");
        assert_eq!(c.refused_per_address.get(), 1);
        let _p1 = c.admit(at("10.0.0.1")).unwrap();
        let _p2 = c.admit(at("10.0.0.1")).unwrap();
        assert!(c.admit(at("192.0.2.2")).is_none(), "all four places taken");
        assert_eq!(c.refused_full.get(), 1);
        drop(a1);
        assert_eq!(c.open(), 3);
        assert!(c.admit(at("192.0.2.1")).is_some(), "a place given back is taken again");
    }
}
