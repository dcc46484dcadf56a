//! A webhook receiver on loopback: a real HTTP/1.1 server (hyper, plain or TLS) that records
//! every POST with whether its signature checks out, and answers as the test says. Shared by
//! control's tests and the end-to-end tests (tests/e2e/webhooks.rs), which each use part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the receiver answers each POST.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// At once, with this status.
    Status(u16),
    /// 200, after this long.
    After(Duration),
}

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Post {
    pub events: Vec<Value>,
    /// The `X-Gochat-Signature` header verified with the secret, its timestamp within 5 minutes.
    pub signed: bool,
    pub content_type: String,
}

struct Shared {
    secret: Vec<u8>,
    answer: Mutex<Answer>,
    posts: Mutex<Vec<Post>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// A plain HTTP receiver on a free loopback port.
    pub async fn start(secret: &str, answer: Answer) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), secret, answer, None).await
    }

    /// A receiver on `addr`; over TLS with `tls`.
    pub async fn start_at(addr: SocketAddr, secret: &str, answer: Answer, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("receiver binds");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            secret: secret.as_bytes().to_vec(),
            answer: Mutex::new(answer),
            posts: Mutex::default(),
        });
        let task = tokio::spawn(serve(listener, tls, shared.clone()));
        Self { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    pub fn posts(&self) -> Vec<Post> {
        self.shared.posts.lock().unwrap().clone()
    }

    /// Every event received, in order of arrival.
    pub fn events(&self) -> Vec<Value> {
        self.posts().into_iter().flat_map(|p| p.events).collect()
    }
}

async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (tls, shared) = (tls.clone(), shared.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(shared.clone(), req));
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header =
        |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (signature, content_type) = (header("x-gochat-signature"), header("content-type"));
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let events = serde_json::from_slice::<Vec<Value>>(&body).expect("a batch is a JSON array");
    let signed = verify(&shared.secret, &signature, &body);
    shared.posts.lock().unwrap().push(Post { events, signed, content_type });
    let answer = *shared.answer.lock().unwrap();
    let status = match answer {
        Answer::Status(status) => status,
        Answer::After(wait) => {
            tokio::time::sleep(wait).await;
            200
        }
    };
    let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(res)
}

/// What a receiver does with `X-Gochat-Signature: t=<secs>,v1=<hex>`, written from the docs:
/// HMAC-SHA256 over `<t>.<body>` with the secret, compared in constant time, and `t` near now.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = decode_hex(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signed = [format!("{t}.").as_bytes(), body].concat();
    ring::hmac::verify(&key, &signed, &v1).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}
