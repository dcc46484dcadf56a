//! Gateway configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::driver::DriverChoice;

/// Whether shard threads are pinned to CPUs (`[gateway] pin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    /// Pinned when the process has a shard for each CPU it may use.
    Auto,
    Off,
}
/// `permessage-deflate` for WebSocket clients that offer it (`[gateway] compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Off,
    On,
}

use crate::protocol::{deflate, Limits};
use crate::shard::ShardLimits;

/// `[gateway]` in the config file. Every field has a default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Unique id of this gateway in the cluster (routing and discovery key).
    pub id: String,
    /// WebSocket listener (gochat: `:7000`).
    pub ws_listen: SocketAddr,
    /// WebSocket path (gochat: `/ws`).
    pub ws_path: String,
    /// An echo endpoint on the WebSocket listener (no auth; every message comes back), for
    /// protocol benchmarks and conformance suites; off unless set, e.g. `/echo`.
    pub ws_echo_path: Option<String>,
    /// TCP `v1` listener (gochat: `:7001`); `"off"` to disable.
    #[serde(with = "gochat_proto::config_format::optional_listen")]
    pub tcp_listen: Option<SocketAddr>,
    /// WebSocket under TLS (`wss://`, same path) with `tls_cert` and `tls_key`; `"off"` (the
    /// default) to disable.
    #[serde(with = "gochat_proto::config_format::optional_listen")]
    pub wss_listen: Option<SocketAddr>,
    /// Prometheus metrics (`GET /metrics`) for operators; `"off"` (the default) to disable.
    /// Keep it off the public network.
    #[serde(with = "gochat_proto::config_format::optional_listen")]
    pub admin_listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) for `wss_listen`; read again when it changes.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// gRPC listener for pushes from queue-workers.
    pub grpc_listen: SocketAddr,
    /// Address queue-workers use to reach `grpc_listen` (defaults to it).
    pub grpc_advertise: Option<String>,
    /// Logic (control) gRPC endpoint.
    pub logic: String,
    /// Shards (threads, each with its own listeners and connections); 0 means one per CPU this
    /// process may use (its affinity: `taskset`, a cpuset, a container's CPUs).
    pub shards: usize,
    /// Whether shard threads are pinned to CPUs: `auto` pins shard i to the i-th CPU the
    /// process may use when it has a shard for each of them (it owns its CPUs); with fewer
    /// shards than CPUs (several gateways sharing a host) they are left to the scheduler, which
    /// spreads them instead of stacking every gateway's first shard on one CPU. `off` never pins.
    pub pin: Pin,
    /// `auto`, `epoll` or `io_uring`.
    pub driver: DriverChoice,
    /// Ping a silent WebSocket peer after this many seconds.
    pub ping_after_secs: u32,
    /// Drop a WebSocket peer silent for this many seconds.
    pub idle_timeout_secs: u32,
    /// Drop a connection not authenticated within this many seconds.
    pub auth_timeout_secs: u32,
    /// Largest WebSocket frame payload a client may send.
    pub max_frame_bytes: usize,
    /// Largest client message (assembled WebSocket message or TCP body).
    pub max_message_bytes: usize,
    /// Origins browsers may open a WebSocket from, e.g. `["https://chat.example.com"]`; empty
    /// (the default, as gochat): any. Clients that send no `Origin` are not affected.
    pub allowed_origins: Vec<String>,
    /// Pending output per connection before it is dropped as a slow consumer.
    pub max_outbound_bytes: usize,
    /// `permessage-deflate` (RFC 7692) for JSON WebSocket clients that offer it: `off` (the
    /// default) or `on`. A room batch is deflated once and shared by every member that
    /// compresses; a connection holds no compression state. Needs a restart.
    pub compression: Compression,
    /// Messages shorter than this go out uncompressed.
    pub compression_min_bytes: usize,
    /// zlib's level: 1 (fastest, the default) to 9 (smallest).
    pub compression_level: u8,
    /// Frames per second a client may send, on average (0: no limit). Over it, frames are
    /// dropped with a notice; a client that keeps going is closed as a flood.
    pub client_frames_per_sec: u32,
    /// Frames a client may send at once above the average.
    pub client_frame_burst: u32,
    /// Connections accepted per gateway process (spread over the shards).
    pub max_connections: usize,
    /// Rooms one connection may be in at once (joined with op 10).
    pub max_rooms_per_conn: usize,
    /// Commands a shard's inbox holds before senders wait.
    pub inbox_capacity: usize,
    /// Message ids remembered to drop a message delivered twice (0: no duplicate check).
    pub dedup_window: usize,
    /// How long shutdown waits for connections to close, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// `gochat gateway` on SIGTERM/Ctrl-C: leaves discovery, takes no new connections and
    /// closes the open ones spread over this many seconds (0: all at once).
    pub drain_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let shard = ShardLimits::default();
        let protocol = Limits::default();
        Self {
            id: "gateway-1".into(),
            ws_listen: "0.0.0.0:7000".parse().expect("literal"),
            ws_path: protocol.ws_path,
            ws_echo_path: None,
            tcp_listen: Some("0.0.0.0:7001".parse().expect("literal")),
            wss_listen: None,
            admin_listen: None,
            tls_cert: None,
            tls_key: None,
            grpc_listen: "127.0.0.1:7100".parse().expect("literal"),
            grpc_advertise: None,
            logic: "http://127.0.0.1:6900".into(),
            shards: 0,
            pin: Pin::Auto,
            driver: DriverChoice::Auto,
            ping_after_secs: shard.ping_after_secs,
            idle_timeout_secs: shard.idle_timeout_secs,
            auth_timeout_secs: shard.auth_timeout_secs,
            max_frame_bytes: protocol.max_frame,
            max_message_bytes: protocol.max_message,
            allowed_origins: protocol.allowed_origins,
            max_outbound_bytes: shard.max_outbound_bytes,
            compression: Compression::Off,
            compression_min_bytes: deflate::Settings::default().min_bytes,
            compression_level: deflate::Settings::default().level,
            client_frames_per_sec: shard.client_frames_per_sec,
            client_frame_burst: shard.client_frame_burst,
            max_connections: 1_000_000,
            max_rooms_per_conn: shard.max_rooms_per_conn,
            inbox_capacity: 4096,
            dedup_window: 65_536,
            shutdown_grace_ms: 2000,
            drain_secs: 10,
        }
    }
}

impl GatewayConfig {
    /// The settings a running gateway takes from its config file again (SIGHUP): the shards'
    /// limits and timers, for connections open and new; changes to the others need a restart.
    pub const RELOADABLE: &'static [&'static str] = &[
        "ws_path",
        "ws_echo_path",
        "ping_after_secs",
        "idle_timeout_secs",
        "auth_timeout_secs",
        "max_frame_bytes",
        "max_message_bytes",
        "allowed_origins",
        "max_outbound_bytes",
        "client_frames_per_sec",
        "client_frame_burst",
        "max_connections",
        "max_rooms_per_conn",
        "drain_secs",
    ];

    pub fn validate(&self) -> Result<(), crate::Error> {
        let err = |m: &str| Err(crate::Error::Config(m.to_string()));
        if self.id.is_empty() {
            return err("id must not be empty");
        }
        if !self.ws_path.starts_with('/') {
            return err("ws_path must start with '/'");
        }
        if let Some(echo) = &self.ws_echo_path {
            if !echo.starts_with('/') || *echo == self.ws_path {
                return err("ws_echo_path must start with '/' and differ from ws_path");
            }
        }
        if self.ping_after_secs == 0 || self.ping_after_secs >= self.idle_timeout_secs {
            return err("ping_after_secs must be above 0 and below idle_timeout_secs");
        }
        if self.auth_timeout_secs == 0 {
            return err("auth_timeout_secs must be above 0");
        }
        if self.max_frame_bytes == 0 || self.max_message_bytes < self.max_frame_bytes {
            return err("max_message_bytes must be at least max_frame_bytes, and both above 0");
        }
        if !(1..=9).contains(&self.compression_level) {
            return err("compression_level must be 1 (fastest) to 9 (smallest)");
        }
        if self.max_outbound_bytes < 4096 {
            return err("max_outbound_bytes must be at least 4096");
        }
        if self.client_frames_per_sec > 0 && !(1..=u16::MAX as u32).contains(&self.client_frame_burst) {
            return err("client_frame_burst must be 1 to 65535 when client_frames_per_sec is set");
        }
        if self.inbox_capacity == 0 || self.max_connections == 0 || self.max_rooms_per_conn == 0 {
            return err("inbox_capacity, max_connections and max_rooms_per_conn must be above 0");
        }
        crate::driver::Driver::resolve(self.driver)?;
        self.tls_files()?;
        Ok(())
    }

    /// The certificate and key files `wss_listen` serves with (none when it is off), checked
    /// to load.
    pub fn tls_files(&self) -> Result<Option<(PathBuf, PathBuf)>, crate::Error> {
        let err = |m: &str| Err(crate::Error::Config(m.to_string()));
        match (self.wss_listen, &self.tls_cert, &self.tls_key) {
            (None, None, None) => Ok(None),
            (Some(_), Some(cert), Some(key)) => {
                gochat_runtime::tls::read_pair(cert, key)?;
                Ok(Some((cert.clone(), key.clone())))
            }
            (Some(_), _, _) => err("wss_listen needs tls_cert and tls_key"),
            (None, _, _) => err("tls_cert and tls_key are set but wss_listen is off"),
        }
    }

    /// Shards to run: the configured count, or one per CPU the process may use.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => crate::sys::allowed_cpus().len(),
            n => n,
        }
    }

    /// The CPU each shard is pinned to (none: left to the scheduler), given the CPUs the
    /// process may use.
    pub fn placement(&self, allowed: &[usize]) -> Vec<Option<usize>> {
        let shards = self.shard_count();
        let pin = self.pin == Pin::Auto && !allowed.is_empty() && shards >= allowed.len();
        (0..shards).map(|i| pin.then(|| allowed[i % allowed.len()])).collect()
    }

    /// The compression settings, none when it is off.
    pub fn compression(&self) -> Option<deflate::Settings> {
        let settings =
            deflate::Settings { min_bytes: self.compression_min_bytes, level: self.compression_level };
        (self.compression == Compression::On).then_some(settings)
    }

    pub fn shard_limits(&self) -> ShardLimits {
        let shards = self.shard_count();
        ShardLimits {
            protocol: Limits {
                ws_path: self.ws_path.clone(),
                echo_path: self.ws_echo_path.clone(),
                max_frame: self.max_frame_bytes,
                max_message: self.max_message_bytes,
                allowed_origins: self.allowed_origins.clone(),
                compression: self.compression(),
            },
            ping_after_secs: self.ping_after_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            auth_timeout_secs: self.auth_timeout_secs,
            max_outbound_bytes: self.max_outbound_bytes,
            client_frames_per_sec: self.client_frames_per_sec,
            client_frame_burst: self.client_frame_burst,
            max_connections: self.max_connections.div_ceil(shards),
            close_grace_secs: ShardLimits::default().close_grace_secs,
            max_rooms_per_conn: self.max_rooms_per_conn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_pinned_within_the_allowed_cpus_only_when_they_take_them_all() {
        let with = |shards, pin| GatewayConfig { shards, pin, ..GatewayConfig::default() };
        // A gateway with a shard for each allowed CPU takes them, in order: not CPUs 0 and 1.
        assert_eq!(with(2, Pin::Auto).placement(&[4, 6]), [Some(4), Some(6)]);
        // More shards than CPUs wrap around within them (`taskset -c 1` with 2 shards).
        assert_eq!(with(2, Pin::Auto).placement(&[1]), [Some(1), Some(1)]);
        // Fewer shards than CPUs (gateways sharing a host): none pinned, so they spread.
        assert_eq!(with(1, Pin::Auto).placement(&[0, 1]), [None]);
        assert_eq!(with(2, Pin::Off).placement(&[0, 1]), [None, None]);
    }
}
