//! A shard's connection timing and bounds.

use crate::protocol::Limits;

/// Connection timing and bounds.
#[derive(Debug, Clone)]
pub struct ShardLimits {
    pub protocol: Limits,
    /// Ping a WebSocket peer silent for this long.
    pub ping_after_secs: u32,
    /// Drop a WebSocket peer silent for this long.
    pub idle_timeout_secs: u32,
    /// Drop a connection that has not authenticated within this long.
    pub auth_timeout_secs: u32,
    /// Pending output per connection; a peer over it is a slow consumer and is dropped.
    pub max_outbound_bytes: usize,
    /// Frames a client may send per second on average (0: no limit) ...
    pub client_frames_per_sec: u32,
    /// ... and at once above it. Frames over the limit are dropped; a client that sends as many
    /// again without slowing down is closed.
    pub client_frame_burst: u32,
    /// Connections this shard accepts.
    pub max_connections: usize,
    /// How long a closing connection may take to write its last bytes before it is dropped.
    pub close_grace_secs: u32,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_conn: usize,
}

impl Default for ShardLimits {
    fn default() -> Self {
        Self {
            protocol: Limits::default(),
            ping_after_secs: 54,
            idle_timeout_secs: 60,
            auth_timeout_secs: 10,
            max_outbound_bytes: 256 * 1024,
            client_frames_per_sec: 20,
            client_frame_burst: 60,
            max_connections: 1_000_000,
            close_grace_secs: 5,
            max_rooms_per_conn: 32,
        }
    }
}
