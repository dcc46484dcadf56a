//! Control configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use gochat_proto::config_format::redact_url;
use serde::{Deserialize, Serialize};

/// Where sessions, connections, rooms and routes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// In this process: the embedded default, or one control.
    Memory,
    /// In Redis, shared by several controls.
    Redis,
}

/// `[control]` in the config file. Every field has a default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unique id of this control in the cluster (discovery key).
    pub id: String,
    /// gochat's REST API (gochat: `:7070`).
    pub api_listen: SocketAddr,
    /// The web page (gochat: `:8080`); `"off"` to disable.
    #[serde(with = "gochat_proto::config_format::optional_listen")]
    pub site_listen: Option<SocketAddr>,
    /// Prometheus metrics (`GET /metrics`) for operators; `"off"` (the default) to disable.
    /// Keep it off the public network.
    #[serde(with = "gochat_proto::config_format::optional_listen")]
    pub admin_listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first): with `tls_key`, the REST API and the page serve
    /// HTTPS (logic gRPC stays plain). Read again when it changes.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Serve the page from this folder instead of the copy built into the binary.
    pub site_dir: Option<PathBuf>,
    /// The WebSocket port and path the page connects to (the gateway's), on the host it was
    /// loaded from.
    pub site_ws_port: u16,
    pub site_ws_path: String,
    /// Where the page finds the REST API, instead of `api_listen`'s port on its host: a path on
    /// the page's own origin (`/api`), for one origin behind a proxy that sends it to the REST
    /// API, or a full URL (`https://api.example.com`). The REST API answers under that path
    /// too (`/api/user/login` as `/user/login`), so the proxy need not rewrite it.
    pub site_api_url: Option<String>,
    /// Where the page opens its socket, instead of `site_ws_port` and `site_ws_path` on its
    /// host: a path on the page's own origin (`/ws`: `wss://` under an HTTPS page), or a full
    /// URL (`wss://chat.example.com/ws`; `http(s)://` is taken as `ws(s)://`).
    pub site_ws_url: Option<String>,
    /// The page's `Content-Security-Policy`, replacing the one computed per request (which lets
    /// the page reach the REST API and the socket on the host it was loaded from). For a proxy
    /// that rewrites `Host`, or a page meant to be framed somewhere.
    pub site_csp: Option<String>,
    /// The logic gRPC service, for gateways and queue-workers.
    pub grpc_listen: SocketAddr,
    /// This control's node number in message ids (0–1023), unique in the cluster; unset: claimed
    /// in etcd with etcd discovery (`gochat control`), otherwise derived from `id`.
    pub node_id: Option<u16>,
    /// Address gateways and workers use to reach `grpc_listen` (defaults to it).
    pub grpc_advertise: Option<String>,
    /// sqlx database URL for users: `sqlite://gochat.sqlite3`, `sqlite::memory:`, or
    /// `postgres://user@host/db`.
    pub database: String,
    /// Seed gochat's demo users (`demo`, `test`, `admin` / `111111`). Unset: yes for
    /// `gochat up` (the embedded demo), no otherwise.
    pub demo_users: Option<bool>,
    /// Where sessions, connections and rooms live: `memory` or `redis`.
    pub state: StateKind,
    /// With `state = "redis"`: the Redis holding them, one node (`redis://host:port`) or a
    /// Redis Cluster (`redis+cluster://host:port,host:port,…`).
    pub redis_url: String,
    /// Prefix of this cluster's keys in Redis.
    pub redis_prefix: String,
    /// A gateway that has not renewed its lease for this many seconds is gone: its connections
    /// are forgotten and its users' messages go elsewhere.
    pub gateway_lease_secs: u64,
    /// How long a session token lives, in seconds.
    pub session_ttl_secs: u64,
    /// Largest chat message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest REST request body, in bytes.
    pub max_body_bytes: usize,
    /// HTTP connections (REST API and page together) open at once; at most a quarter of the
    /// process's open-file limit is used, whatever is set. Past it, a connection is answered
    /// 503 and closed.
    pub http_max_connections: usize,
    /// Of those, from one client address (IPv6: one /64); 0: no such cap. Trusted proxies are
    /// not capped.
    pub http_max_connections_per_address: usize,
    /// A request's head (and an HTTPS connection's handshake) must be in within this many ms
    /// of the connection or of the previous response: also how long an idle connection stays.
    pub http_header_timeout_ms: u64,
    /// A request's body must be in within this many ms of its head.
    pub http_body_timeout_ms: u64,
    /// Serve HTTP/2 as well (cleartext with prior knowledge, or `h2` over TLS); HTTP/1.1 only
    /// when off. The header timeout does not apply to HTTP/2 connections.
    pub http2: bool,
    /// How often rooms whose members changed get their count and member list, in ms.
    pub room_update_interval_ms: u64,
    /// Login attempts per client address and minute (0: no limit), and the burst allowed.
    pub login_per_minute: u32,
    pub login_burst: u32,
    /// Failed logins per account name and minute, from any address (0: no limit), and the
    /// burst allowed: a password cannot be guessed from many addresses at once. A name over it
    /// is refused until a token comes back, to its owner too; sessions already open stay.
    pub login_failures_per_account_per_minute: u32,
    pub login_failures_per_account_burst: u32,
    /// Registrations per client address and minute (0: no limit), and the burst allowed.
    pub register_per_minute: u32,
    pub register_burst: u32,
    /// Pushes (`push`, `pushRoom`, `count`, `getRoomInfo`, and room messages sent on any of the
    /// user's sockets) per user and second (0: no limit), and the burst allowed.
    pub push_per_second: u32,
    pub push_burst: u32,
    /// Clients (addresses, users) each rate limit remembers; past it the least recently seen
    /// are forgotten.
    pub rate_limit_entries: usize,
    /// Peers (addresses or networks, `10.0.0.0/8`) whose `X-Forwarded-For` names the client,
    /// for the per-address limits; others are the client themselves.
    pub trusted_proxies: Vec<String>,
    /// Sockets one user may have open at once, over every gateway (0: no cap); one more is
    /// refused (close 1008) so one account cannot take a gateway's connections or memory.
    pub max_connections_per_user: u32,
    /// Whether users may push to rooms they have no socket in (gochat: yes).
    pub open_rooms: bool,
    /// Room messages each room keeps for clients that reconnect (0: no history; messages then
    /// carry no `seq`), in the state store.
    pub history_size: usize,
    /// Room messages older than this many seconds are no longer kept; a room quiet this long
    /// starts a new epoch.
    pub history_ttl_secs: u64,
    /// Private messages kept per user until a client acknowledges them (0: none; a message to
    /// an offline user is then refused, as gochat did).
    pub inbox_size: usize,
    /// Kept private messages older than this many seconds are dropped.
    pub inbox_ttl_secs: u64,
    /// Of a user's kept private messages, how many may come from one sender (0: no share): past
    /// it, that sender is refused until the user reads some, and others still reach the user.
    pub inbox_per_sender: usize,
    /// Bytes of kept private messages in this process's memory (`state = "memory"`), over every
    /// user; past it, messages for offline users are refused (0: no bound). On Redis, its
    /// `maxmemory` bounds them.
    pub inbox_max_bytes: usize,
    /// Bytes of room history in this process's memory (`state = "memory"`), over every room;
    /// past it, the rooms quiet longest lose theirs first (their clients reload). 0: no bound.
    pub history_max_bytes: usize,
    /// Rooms with more online users than this get no member list (op 5) when members change,
    /// and `/push/getRoomInfo` is refused for them: a list sent to every member on every join
    /// would grow with the square of the room. Their members get op 4 and op 9 as others do.
    pub room_info_max_members: u64,
    /// Keys of the server API for application backends (`POST /api/<method>` on the REST port,
    /// and the `ServerApi` gRPC service on `grpc_listen`), sent as `Authorization: apikey KEY`.
    /// None (the default): the server API is off.
    pub api_keys: Vec<String>,
    /// Keys that may only read (`presence`, `info`, `history`): for dashboards and monitors.
    pub api_read_keys: Vec<String>,
    /// Server API requests per key and second (0: no limit), and the burst allowed.
    pub api_requests_per_second: u32,
    pub api_request_burst: u32,
    /// The sender name of messages published through the server API, unless a request names
    /// one (`fromUserName`); their sender id is 0.
    pub api_sender_name: String,
    /// Where user, room and message events are POSTed (`[[control.webhooks]]`); none by
    /// default. Last: TOML writes tables after plain keys.
    pub webhooks: Vec<crate::webhooks::WebhookConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            id: "control-1".into(),
            api_listen: "127.0.0.1:7070".parse().expect("literal"),
            site_listen: Some("127.0.0.1:8080".parse().expect("literal")),
            admin_listen: None,
            tls_cert: None,
            tls_key: None,
            site_dir: None,
            site_ws_port: 7000,
            site_ws_path: "/ws".into(),
            site_api_url: None,
            site_ws_url: None,
            site_csp: None,
            grpc_listen: "127.0.0.1:6900".parse().expect("literal"),
            grpc_advertise: None,
            node_id: None,
            database: "sqlite://gochat.sqlite3".into(),
            demo_users: None,
            state: StateKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "gochat".into(),
            gateway_lease_secs: 20,
            session_ttl_secs: 86_400,
            max_message_bytes: 10 * 1024,
            max_body_bytes: 64 * 1024,
            http_max_connections: 1024,
            http_max_connections_per_address: 64,
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 10_000,
            http2: false,
            room_update_interval_ms: 500,
            login_per_minute: 10,
            login_burst: 20,
            login_failures_per_account_per_minute: 5,
            login_failures_per_account_burst: 10,
            register_per_minute: 5,
            register_burst: 10,
            push_per_second: 50,
            push_burst: 100,
            rate_limit_entries: 100_000,
            trusted_proxies: Vec::new(),
            max_connections_per_user: 32,
            open_rooms: false,
            history_size: 100,
            history_ttl_secs: 600,
            inbox_size: 1000,
            inbox_ttl_secs: 7 * 86_400,
            inbox_per_sender: 100,
            inbox_max_bytes: 128 << 20,
            history_max_bytes: 128 << 20,
            room_info_max_members: 1000,
            api_keys: Vec::new(),
            api_read_keys: Vec::new(),
            api_requests_per_second: 1000,
            api_request_burst: 2000,
            api_sender_name: "system".into(),
            webhooks: Vec::new(),
        }
    }
}

impl ControlConfig {
    /// The settings a running control takes from its config file again (SIGHUP); changes to
    /// the others need a restart.
    pub const RELOADABLE: &'static [&'static str] = &[
        "login_per_minute",
        "login_burst",
        "login_failures_per_account_per_minute",
        "login_failures_per_account_burst",
        "register_per_minute",
        "register_burst",
        "push_per_second",
        "push_burst",
        "open_rooms",
        "max_connections_per_user",
        "max_message_bytes",
        "room_info_max_members",
        "api_keys",
        "api_read_keys",
        "api_requests_per_second",
        "api_request_burst",
        "api_sender_name",
        "webhooks",
    ];

    pub fn validate(&self) -> Result<(), crate::Error> {
        let err = |m: String| Err(crate::Error::Config(m));
        if !["sqlite:", "postgres:", "postgresql:"].iter().any(|p| self.database.starts_with(p)) {
            return err(format!(
                "database {:?}: expected a sqlite: or postgres:// URL",
                redact_url(&self.database)
            ));
        }
        if self.id.is_empty() {
            return err("id must not be empty".into());
        }
        if self.state == StateKind::Redis && self.node_id.is_none() {
            return err(
                "node_id is required with state = \"redis\" (unless discovery is etcd, where `gochat \
                 control` claims a free one): several controls stamp message ids, and each needs a node \
                 number of its own (0-1023)"
                    .into(),
            );
        }
        if self.node_id.is_some_and(|n| n > crate::ids::MAX_NODE) {
            return err(format!("node_id must be 0 to {}", crate::ids::MAX_NODE));
        }
        if self.state == StateKind::Redis {
            if let Err(why) = gochat_runtime::redis::RedisUrl::parse(&self.redis_url) {
                return err(format!(
                    "redis_url {:?}: {why} (expected redis://host:port, or a cluster: \
                     redis+cluster://host:port,host:port,…)",
                    redact_url(&self.redis_url)
                ));
            }
        }
        if !(2..=300).contains(&self.gateway_lease_secs) {
            return err("gateway_lease_secs must be 2 to 300".into());
        }
        if self.session_ttl_secs == 0 {
            return err("session_ttl_secs must be above 0".into());
        }
        if self.max_message_bytes == 0 || self.max_message_bytes + 1024 > self.max_body_bytes {
            return err("max_message_bytes must be above 0 and at least 1 KiB below max_body_bytes".into());
        }
        if self.http_max_connections == 0 {
            return err("http_max_connections must be above 0".into());
        }
        if self.http_header_timeout_ms == 0 || self.http_body_timeout_ms == 0 {
            return err("http_header_timeout_ms and http_body_timeout_ms must be above 0".into());
        }
        if !self.site_ws_path.starts_with('/') {
            return err("site_ws_path must start with '/'".into());
        }
        for (name, url, schemes) in [
            ("site_api_url", &self.site_api_url, &["http", "https"][..]),
            ("site_ws_url", &self.site_ws_url, &["ws", "wss", "http", "https"][..]),
        ] {
            if let Some(url) = url {
                crate::site::SiteUrl::parse(url, schemes)
                    .map_err(|e| crate::Error::Config(format!("{name} {url:?}: {e}")))?;
            }
        }
        if let Some(policy) = &self.site_csp {
            if policy.trim().is_empty() || axum::http::HeaderValue::from_str(policy).is_err() {
                return err("site_csp must be a policy on one line (visible ASCII)".into());
            }
        }
        if let Some(dir) = &self.site_dir {
            if !dir.join("index.html").is_file() {
                return err(format!("site_dir {}: no index.html there", dir.display()));
            }
        }
        if self.room_update_interval_ms == 0 {
            return err("room_update_interval_ms must be above 0".into());
        }
        for (name, rate, burst) in [
            ("login", self.login_per_minute, self.login_burst),
            (
                "login_failures_per_account",
                self.login_failures_per_account_per_minute,
                self.login_failures_per_account_burst,
            ),
            ("register", self.register_per_minute, self.register_burst),
            ("push", self.push_per_second, self.push_burst),
            ("api_request", self.api_requests_per_second, self.api_request_burst),
        ] {
            if rate > 0 && burst == 0 {
                return err(format!("{name}_burst must be at least 1 while {name} is limited"));
            }
        }
        if self.history_size > 10_000 {
            return err("history_size must be at most 10000".into());
        }
        if self.inbox_size > 100_000 {
            return err("inbox_size must be at most 100000".into());
        }
        if (self.history_size > 0 && self.history_ttl_secs == 0)
            || (self.inbox_size > 0 && self.inbox_ttl_secs == 0)
        {
            return err("history_ttl_secs and inbox_ttl_secs must be above 0 while their store is on".into());
        }
        crate::server_api::ApiKeys::check(&self.api_keys, &self.api_read_keys)
            .map_err(crate::Error::Config)?;
        if self.api_sender_name.is_empty() || self.api_sender_name.chars().count() > 32 {
            return err("api_sender_name must be 1 to 32 characters".into());
        }
        if self.rate_limit_entries < 100 {
            return err("rate_limit_entries must be at least 100".into());
        }
        if let Err(e) = crate::limits::TrustedProxies::new(&self.trusted_proxies) {
            return err(format!("trusted_proxies: {e}"));
        }
        crate::webhooks::validate_all(&self.webhooks).map_err(crate::Error::Config)?;
        self.tls_files()?;
        Ok(())
    }

    /// Turns the REST rate limits and the connection caps per address and per user off: for
    /// load generators and tests that register, connect and push from one address far faster
    /// than people do.
    pub fn without_rate_limits(mut self) -> Self {
        (self.login_per_minute, self.register_per_minute, self.push_per_second) = (0, 0, 0);
        self.login_failures_per_account_per_minute = 0;
        self.http_max_connections_per_address = 0;
        self.max_connections_per_user = 0;
        self
    }

    /// The path the REST API also answers under: `site_api_url`'s, without its last `/`
    /// (none for a URL with no path, or `/`).
    pub(crate) fn api_path_prefix(&self) -> Option<String> {
        let url = crate::site::SiteUrl::parse(self.site_api_url.as_deref()?, &["http", "https"]).ok()?;
        let path = url.path().trim_end_matches('/');
        (!path.is_empty()).then(|| path.to_owned())
    }

    pub(crate) fn history_limits(&self) -> crate::history::Limits {
        let max_age = std::time::Duration::from_secs(self.history_ttl_secs);
        crate::history::Limits { size: self.history_size, max_age, max_bytes: self.history_max_bytes }
    }

    pub fn kept_limits(&self) -> crate::kept::Limits {
        crate::kept::Limits {
            size: self.inbox_size,
            per_sender: self.inbox_per_sender,
            max_bytes: self.inbox_max_bytes,
            max_age: std::time::Duration::from_secs(self.inbox_ttl_secs),
        }
    }

    /// The certificate and key HTTPS serves with (none: plain HTTP), checked to load.
    pub fn tls_files(&self) -> Result<Option<(PathBuf, PathBuf)>, crate::Error> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                gochat_runtime::tls::read_pair(cert, key)?;
                Ok(Some((cert.clone(), key.clone())))
            }
            _ => Err(crate::Error::Config("tls_cert and tls_key go together".into())),
        }
    }
}
