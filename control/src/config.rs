//! Control configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[control]` in the config file. Every field has a default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// gochat's REST API (gochat: `:7070`).
    pub api_listen: SocketAddr,
    /// The web page (gochat: `:8080`); none to disable.
    pub site_listen: Option<SocketAddr>,
    /// Serve the page from this folder instead of the copy built into the binary.
    pub site_dir: Option<PathBuf>,
    /// The WebSocket port and path the page connects to (the gateway's).
    pub site_ws_port: u16,
    pub site_ws_path: String,
    /// The logic gRPC service, for gateways and queue-workers.
    pub grpc_listen: SocketAddr,
    /// sqlx database URL for users: `sqlite://gochat.sqlite3`, `sqlite::memory:`, or
    /// `postgres://user@host/db`.
    pub database: String,
    /// Seed gochat's demo users (`demo`, `test`, `admin` / `111111`). Unset: yes for
    /// `gochat up` (the embedded demo), no otherwise.
    pub demo_users: Option<bool>,
    /// How long a session token lives, in seconds.
    pub session_ttl_secs: u64,
    /// Largest chat message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest REST request body, in bytes.
    pub max_body_bytes: usize,
    /// How often rooms whose members changed get their count and member list, in ms.
    pub room_update_interval_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            api_listen: "127.0.0.1:7070".parse().expect("literal"),
            site_listen: Some("127.0.0.1:8080".parse().expect("literal")),
            site_dir: None,
            site_ws_port: 7000,
            site_ws_path: "/ws".into(),
            grpc_listen: "127.0.0.1:6900".parse().expect("literal"),
            database: "sqlite://gochat.sqlite3".into(),
            demo_users: None,
            session_ttl_secs: 86_400,
            max_message_bytes: 10 * 1024,
            max_body_bytes: 64 * 1024,
            room_update_interval_ms: 500,
        }
    }
}

impl ControlConfig {
    pub fn validate(&self) -> Result<(), crate::Error> {
        let err = |m: String| Err(crate::Error::Config(m));
        if !["sqlite:", "postgres:", "postgresql:"].iter().any(|p| self.database.starts_with(p)) {
            return err(format!("database {:?}: expected a sqlite: or postgres:// URL", self.database));
        }
        if self.session_ttl_secs == 0 {
            return err("session_ttl_secs must be above 0".into());
        }
        if self.max_message_bytes == 0 || self.max_message_bytes + 1024 > self.max_body_bytes {
            return err("max_message_bytes must be above 0 and at least 1 KiB below max_body_bytes".into());
        }
        if !self.site_ws_path.starts_with('/') {
            return err("site_ws_path must start with '/'".into());
        }
        if let Some(dir) = &self.site_dir {
            if !dir.join("index.html").is_file() {
                return err(format!("site_dir {}: no index.html there", dir.display()));
            }
        }
        if self.room_update_interval_ms == 0 {
            return err("room_update_interval_ms must be above 0".into());
        }
        Ok(())
    }
}
