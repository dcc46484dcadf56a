//! `[[control.webhooks]]`: where events go, signed with which secret, and how they are batched,
//! queued and retried.

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::Uri;
use serde::{Deserialize, Serialize};

/// The kinds of events a webhook can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// `user.online`, `user.offline`.
    User,
    /// `room.occupied`, `room.vacated`.
    Room,
    /// `message.room`, `message.user`: every message accepted, body included.
    Message,
}

impl EventKind {
    pub(crate) fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Shortest secret accepted, in bytes: 128 bits of a random hex or base64 string.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 1024;
/// The longest wait between two attempts at a batch, whatever `retry_base_ms` says.
pub const MAX_RETRY_WAIT_MS: u64 = 30_000;

/// One receiver of events. `url` and `secret` are required; the rest have defaults. Its
/// `Debug` shows neither the secret nor the URL's query and credentials.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// Shared secret the receiver checks each batch's signature with (at least 16 bytes).
    pub secret: String,
    /// Which events this receiver gets: `user`, `room`, `message`.
    #[serde(default = "default_events")]
    pub events: Vec<EventKind>,
    /// Most events in one POST.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest an event waits for others to fill its batch, in ms.
    #[serde(default = "default_batch_wait_ms")]
    pub batch_wait_ms: u64,
    /// Events waiting to be sent, at most; past it new events are dropped (and counted).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// One attempt (connect, send, answer) may take this long, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts at one batch before it is given up (1: no retry).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, in ms; doubled for each next one (up to 30 s), with jitter.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// PEM certificates of the authorities an `https://` receiver's certificate may chain to;
    /// default: the system's (`SSL_CERT_FILE`, or the usual bundle paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.label())
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("batch_size", &self.batch_size)
            .field("batch_wait_ms", &self.batch_wait_ms)
            .field("queue_size", &self.queue_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_ms", &self.retry_base_ms)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn default_events() -> Vec<EventKind> {
    vec![EventKind::User, EventKind::Room]
}
fn default_batch_size() -> usize {
    100
}
fn default_batch_wait_ms() -> u64 {
    1000
}
fn default_queue_size() -> usize {
    10_000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_max_attempts() -> u32 {
    5
}
fn default_retry_base_ms() -> u64 {
    500
}

/// Where a system keeps its bundle of trusted authorities (Debian and Ubuntu, Fedora and RHEL,
/// openSUSE, Alpine), after `SSL_CERT_FILE`.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

impl WebhookConfig {
    /// A hook to `url` with `secret` and every other setting at its default.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            events: default_events(),
            batch_size: default_batch_size(),
            batch_wait_ms: default_batch_wait_ms(),
            queue_size: default_queue_size(),
            timeout_ms: default_timeout_ms(),
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            ca_file: None,
        }
    }

    /// Checks every setting; the message names the hook by its URL (never its secret).
    pub fn validate(&self) -> Result<(), String> {
        let uri = self.uri()?;
        let name = self.label();
        let err = |m: String| Err(format!("webhook {name}: {m}"));
        if self.secret.len() < MIN_SECRET_BYTES || self.secret.len() > MAX_SECRET_BYTES {
            return err(format!(
                "secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (it is {})",
                self.secret.len()
            ));
        }
        if self.secret.trim() != self.secret {
            return err("secret starts or ends with white space (a copy-paste slip?)".into());
        }
        if self.events.is_empty() {
            return err("events must name at least one of \"user\", \"room\", \"message\"".into());
        }
        for (field, value, range) in [
            ("batch_size", self.batch_size as u64, 1..=10_000),
            ("batch_wait_ms", self.batch_wait_ms, 1..=60_000),
            ("queue_size", self.queue_size as u64, 1..=1_000_000),
            ("timeout_ms", self.timeout_ms, 100..=120_000),
            ("max_attempts", u64::from(self.max_attempts), 1..=20),
            ("retry_base_ms", self.retry_base_ms, 1..=MAX_RETRY_WAIT_MS),
        ] {
            if !range.contains(&value) {
                return err(format!("{field} must be {} to {} (it is {value})", range.start(), range.end()));
            }
        }
        if uri.scheme_str() == Some("https") {
            self.roots().map_err(|e| format!("webhook {name}: {e}"))?;
        } else if self.ca_file.is_some() {
            return err("ca_file is for https:// receivers".into());
        }
        Ok(())
    }

    /// The URL, parsed and checked: `http` or `https`, a host, no user or password in it.
    pub(crate) fn uri(&self) -> Result<Uri, String> {
        let bad = |m: &str| Err(format!("webhook url {:?}: {m}", self.label()));
        let Ok(uri) = self.url.parse::<Uri>() else {
            return bad("not a URL (expected http://host[:port]/path or https://…)");
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return bad("the scheme must be http or https");
        }
        let Some(authority) = uri.authority() else { return bad("no host") };
        if authority.as_str().contains('@') {
            return bad("user and password in the URL are not sent: receivers check the signature");
        }
        if authority.host().is_empty() {
            return bad("no host");
        }
        Ok(uri)
    }

    /// The URL as logs and metrics show it: without its query (which may hold a token) and
    /// without any user or password.
    pub fn label(&self) -> String {
        let url = self.url.split(['?', '#']).next().unwrap_or_default();
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
                format!("{scheme}://{host}{path}")
            }
            None => url.to_string(),
        }
    }

    /// The authorities an `https://` receiver's certificate may chain to.
    pub(crate) fn roots(&self) -> Result<Arc<rustls::RootCertStore>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
        let path = match (&self.ca_file, from_env) {
            (Some(path), _) => path.clone(),
            (None, Some(path)) => path,
            (None, None) => SYSTEM_CA_FILES.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(|| {
                "no bundle of trusted authorities on this system (none of SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt, …): set ca_file"
                    .to_string()
            })?,
        };
        let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
            // A bundle may hold certificates this verifier cannot use; the others still count.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(format!(
                "{}: no usable certificate (-----BEGIN CERTIFICATE-----) in it",
                path.display()
            ));
        }
        Ok(Arc::new(roots))
    }
}

/// Checks a list of hooks: each valid, no URL twice.
pub(crate) fn validate_all(hooks: &[WebhookConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for hook in hooks {
        hook.validate()?;
        if !seen.insert(hook.label()) {
            return Err(format!("webhook {}: listed twice", hook.label()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> WebhookConfig {
        WebhookConfig::new(url, "0123456789abcdef")
    }

    #[test]
    fn good_hooks_validate() {
        hook("http://127.0.0.1:9000/hooks").validate().unwrap();
        hook("http://[::1]:9000/").validate().unwrap();
        hook("http://hooks.example.com/in?token=abc").validate().unwrap();
        let toml = r#"url = "http://h/x"
secret = "0123456789abcdef"
events = ["message", "user"]
batch_size = 10"#;
        let parsed: WebhookConfig = toml::from_str(toml).unwrap();
        assert_eq!(parsed.events, [EventKind::Message, EventKind::User]);
        assert_eq!((parsed.batch_size, parsed.queue_size), (10, default_queue_size()));
        parsed.validate().unwrap();
    }

    #[test]
    fn bad_urls_are_errors_that_say_why() {
        for (url, why) in [
            ("", "not a URL"),
            ("not a url", "not a URL"),
            ("/hooks", "scheme"),
            ("ftp://h/x", "scheme"),
            ("ws://h/x", "scheme"),
            ("http://user:pw@h/x", "user and password"),
        ] {
            let err = hook(url).validate().unwrap_err();
            assert!(err.contains(why), "{url:?}: {err}");
            assert!(!err.contains("pw@"), "the password is not repeated: {err}");
        }
    }

    #[test]
    fn bad_secrets_and_limits_are_errors_that_never_show_the_secret() {
        let mut h = hook("http://h/x");
        h.secret = "short".into();
        let err = h.validate().unwrap_err();
        assert!(err.contains("16") && !err.contains("short"), "{err}");
        h.secret = format!(" {}", "x".repeat(20));
        assert!(h.validate().unwrap_err().contains("white space"));
        h.secret = "y".repeat(MAX_SECRET_BYTES + 1);
        assert!(h.validate().unwrap_err().contains("1024"));
        let mut h = hook("http://h/x");
        h.events.clear();
        assert!(h.validate().unwrap_err().contains("events"));
        for set in [
            |h: &mut WebhookConfig| h.batch_size = 0,
            |h: &mut WebhookConfig| h.queue_size = 0,
            |h: &mut WebhookConfig| h.max_attempts = 0,
            |h: &mut WebhookConfig| h.timeout_ms = 5,
            |h: &mut WebhookConfig| h.retry_base_ms = 0,
            |h: &mut WebhookConfig| h.batch_wait_ms = 0,
        ] {
            let mut h = hook("http://h/x");
            set(&mut h);
            assert!(h.validate().unwrap_err().contains("must be"), "{h:?}");
        }
        let err = toml::from_str::<WebhookConfig>(
            "url = \"http://h/\"\nsecret = \"0123456789abcdef\"\nevents = [\"users\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("users") && err.contains("message"), "{err}");
        let err = toml::from_str::<WebhookConfig>("url = \"http://h/\"").unwrap_err().to_string();
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn https_needs_readable_authorities() {
        let mut h = hook("https://h/x");
        h.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(h.validate().unwrap_err().contains("/nonexistent/ca.pem"));
        let empty = std::env::temp_dir().join(format!("gochat-hook-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        h.ca_file = Some(empty.clone());
        let err = h.validate().unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(err.contains("no usable certificate"), "{err}");
        let mut h = hook("http://h/x");
        h.ca_file = Some("/etc/ssl/certs/ca-certificates.crt".into());
        assert!(h.validate().unwrap_err().contains("https://"));
    }

    #[test]
    fn labels_leave_out_queries_and_credentials() {
        let shown = format!("{:?}", hook("https://h:8443/in?token=abc"));
        assert!(!shown.contains("0123456789abcdef") && !shown.contains("token=abc"), "{shown}");
        assert!(shown.contains("https://h:8443/in"), "{shown}");
        assert_eq!(hook("https://h:8443/in?token=abc").label(), "https://h:8443/in");
        assert_eq!(hook("http://u:p@h/in#x").label(), "http://h/in");
        assert_eq!(hook("http://h").label(), "http://h");
    }

    #[test]
    fn the_same_url_twice_is_an_error() {
        let err =
            validate_all(&[hook("http://h/a"), hook("http://h/b"), hook("http://h/a?x=1")]).unwrap_err();
        assert!(err.contains("twice") && err.contains("http://h/a"), "{err}");
    }
}
