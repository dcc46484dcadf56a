//! A shard's counters, read from other threads: the gRPC `Stats` call and `/metrics`.

use std::sync::atomic::AtomicU64;

use crate::protocol::Wire;

/// Counters readable from other threads (stats, metrics).
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: AtomicU64,
    pub rooms: AtomicU64,
    pub frames_out: AtomicU64,
    /// Writes that took bytes: frames_out over sends is how many frames a write carried.
    pub sends: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Closes the protocol decided: a client close, a violation, a refused handshake.
    pub protocol_closes: AtomicU64,
    /// Client frames dropped over the rate limit.
    pub frames_throttled: AtomicU64,
    /// Clients closed for flooding (they went on sending far over the limit).
    pub flood_closes: AtomicU64,
    /// wss connections whose TLS handshake failed (plain clients, scanners, untrusting clients).
    pub tls_handshake_failures: AtomicU64,
    /// Open connections that chose the binary protocol: batches are framed in it too while any are.
    pub binary_connections: AtomicU64,
    /// Open connections that agreed to `permessage-deflate` with the full window: batches are
    /// deflated too while any are.
    pub deflate_connections: AtomicU64,
}

impl ShardStats {
    /// The count of open connections on `wire`, for the wires batches are made in only when
    /// some connection uses them.
    pub fn of_wire(&self, wire: Wire) -> Option<&AtomicU64> {
        match wire {
            Wire::WsBinary => Some(&self.binary_connections),
            Wire::WsDeflate => Some(&self.deflate_connections),
            Wire::WsJson | Wire::Tcp => None,
        }
    }
}
