//! One webhook's sender, a background task: takes events from the hook's queue in batches (up
//! to `batch_size`, waiting at most `batch_wait_ms` after the first), POSTs each batch as a JSON
//! array signed with the hook's secret, and retries a batch with exponential backoff and jitter,
//! `max_attempts` in all, each attempt within `timeout_ms`. One batch is in flight at a time, so
//! a receiver sees its events in order; while it is slow or down, the queue fills and new
//! events are dropped (counted) instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ring::hmac;
use tokio::sync::mpsc;

use super::config::{WebhookConfig, MAX_RETRY_WAIT_MS};
use super::{Event, HookCounts};

/// The header carrying a batch's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-gochat-signature";
/// Most bytes of a receiver's answer read (and thrown away) so its connection can be reused.
const MAX_ANSWER_BYTES: usize = 64 << 10;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The `X-Gochat-Signature` value of `body` sent at Unix second `timestamp`: HMAC-SHA256 with
/// `secret` as the key over the timestamp in decimal, a dot, and the body's bytes, in lowercase
/// hex.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    sign(&key, timestamp, body)
}

fn sign(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let mut out = format!("t={timestamp},v1=");
    for b in ctx.sign().as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Why an attempt failed, and whether another may succeed.
enum Failure {
    /// No answer, a timeout, 5xx, 408 or 429: worth another attempt.
    Retry(String),
    /// Any other answer (3xx, 4xx): the receiver refused the batch; another attempt would be too.
    Refused(String),
}

pub(super) struct Sender {
    label: String,
    uri: Uri,
    key: hmac::Key,
    client: HttpClient,
    batch_size: usize,
    batch_wait: Duration,
    timeout: Duration,
    max_attempts: u32,
    retry_base_ms: u64,
    counts: Arc<HookCounts>,
}

impl Sender {
    pub(super) fn new(cfg: &WebhookConfig, counts: Arc<HookCounts>) -> Result<Self, String> {
        let uri = cfg.uri()?;
        let roots = match uri.scheme_str() {
            Some("https") => cfg.roots().map_err(|e| format!("webhook {}: {e}", cfg.label()))?,
            _ => Arc::new(rustls::RootCertStore::empty()),
        };
        let tls = rustls::ClientConfig::builder_with_provider(gochat_runtime::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("webhook {}: TLS setup: {e}", cfg.label()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Self {
            label: cfg.label(),
            uri,
            key: hmac::Key::new(hmac::HMAC_SHA256, cfg.secret.as_bytes()),
            client,
            batch_size: cfg.batch_size,
            batch_wait: Duration::from_millis(cfg.batch_wait_ms),
            timeout: Duration::from_millis(cfg.timeout_ms),
            max_attempts: cfg.max_attempts,
            retry_base_ms: cfg.retry_base_ms,
            counts,
        })
    }

    /// Sends what comes in `queue` until it is closed and empty.
    pub(super) async fn run(self, mut queue: mpsc::Receiver<Arc<Event>>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            if queue.recv_many(&mut batch, self.batch_size).await == 0 {
                return;
            }
            let deadline = tokio::time::Instant::now() + self.batch_wait;
            while batch.len() < self.batch_size {
                let room = self.batch_size - batch.len();
                let more = queue.recv_many(&mut batch, room);
                match tokio::time::timeout_at(deadline, more).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            self.counts.taken.add(batch.len() as u64);
            self.deliver(&batch).await;
            batch.clear();
        }
    }

    /// POSTs one batch until it is accepted, refused, or out of attempts.
    async fn deliver(&self, batch: &[Arc<Event>]) {
        let body = Bytes::from(json_array(batch));
        let started = tokio::time::Instant::now();
        let n = batch.len() as u64;
        let mut attempt = 1;
        let why = loop {
            match self.attempt(&body).await {
                Ok(()) => {
                    self.counts.sent.add(n);
                    self.counts.batches_sent.inc();
                    self.counts.batch_seconds.observe(started.elapsed());
                    return;
                }
                Err(Failure::Retry(why)) if attempt < self.max_attempts => {
                    self.counts.retries.inc();
                    let wait = backoff(self.retry_base_ms, attempt);
                    tracing::debug!(url = %self.label, attempt, ?wait, %why, "webhook batch not delivered; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(Failure::Retry(why) | Failure::Refused(why)) => break why,
            }
        };
        self.counts.failed.add(n);
        self.counts.batches_failed.inc();
        if self.counts.fail_log.due() {
            tracing::warn!(
                url = %self.label,
                events = n,
                attempts = attempt,
                %why,
                failed_batches = self.counts.batches_failed.get(),
                "webhook batch given up"
            );
        }
    }

    async fn attempt(&self, body: &Bytes) -> Result<(), Failure> {
        let timestamp = crate::ids::unix_ms() / 1000;
        let request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("gochat-rs/", env!("CARGO_PKG_VERSION")))
            .header(SIGNATURE_HEADER, sign(&self.key, timestamp, body))
            .body(Full::new(body.clone()))
            .map_err(|e| Failure::Refused(format!("request: {e}")))?;
        let exchange = async {
            let answer = self.client.request(request).await.map_err(|e| Failure::Retry(chain(&e)))?;
            let status = answer.status();
            let _ = Limited::new(answer.into_body(), MAX_ANSWER_BYTES).collect().await;
            Ok(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(Failure::Retry(format!("no answer within {} ms", self.timeout.as_millis()))),
            Ok(Err(failure)) => Err(failure),
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status))
                if status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Err(Failure::Retry(format!("answered {status}")))
            }
            Ok(Ok(status)) => Err(Failure::Refused(format!("answered {status}"))),
        }
    }
}

/// `[event,event,…]`.
fn json_array(batch: &[Arc<Event>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.len() * 128);
    body.push(b'[');
    for (i, event) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &**event).expect("events serialize");
    }
    body.push(b']');
    body
}

/// The wait before retry `n` (1: the first): `base × 2^(n-1)`, at most 30 s, of which a random
/// part up to half, so receivers coming back are not hit by every control at once.
fn backoff(base_ms: u64, n: u32) -> Duration {
    let full = base_ms.saturating_mul(1 << (n - 1).min(20)).min(MAX_RETRY_WAIT_MS);
    let jitter = rand::random::<u64>() % (full / 2 + 1);
    Duration::from_millis(full - jitter)
}

/// An error with its causes, `a: b: c` (hyper's own says only "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // From another implementation: Python's
        // hmac.new(b"0123456789abcdef", b"1700000000.[]", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"0123456789abcdef", 1_700_000_000, b"[]"),
            "t=1700000000,v1=c91545d09b999c13267144ab89f40da36c784c2397a9684263e82122a502a910"
        );
        assert_ne!(
            signature(b"0123456789abcdef", 1_700_000_001, b"[]"),
            signature(b"0123456789abcdef", 1_700_000_000, b"[]")
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_at_most_half_of_it_random() {
        for _ in 0..100 {
            let first = backoff(100, 1).as_millis() as u64;
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff(100, 3).as_millis() as u64;
            assert!((200..=400).contains(&third), "{third}");
            let late = backoff(1000, 30).as_millis() as u64;
            assert!((15_000..=30_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn a_batch_is_a_json_array_of_its_events() {
        use super::super::What;
        let e = |id| Arc::new(Event { id, time: 5, what: What::UserOffline { user_id: 1 } });
        let body: serde_json::Value = serde_json::from_slice(&json_array(&[e(1), e(2)])).unwrap();
        assert_eq!(body.as_array().unwrap().len(), 2);
        assert_eq!(body[1]["id"], "2");
        assert_eq!(json_array(&[]), b"[]");
    }
}
