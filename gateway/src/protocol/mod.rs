//! The sans-IO protocol: WebSocket and TCP `v1` framing, gochat's client requests, and TLS for
//! `wss://`. Bytes in, messages and owed bytes out; the drivers, tests and fuzzers drive the
//! same code.

pub mod close;
pub mod codec;
pub mod deflate;
pub mod handshake;
pub mod session;
pub mod tls;
pub mod ws;

use bytes::Bytes;
use gochat_proto::wire;

pub use codec::{Codec, Output, Transport, Wire};

/// Size limits a peer's input is held to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// WebSocket endpoint path.
    pub ws_path: String,
    /// Path of the echo endpoint (no auth; every message comes back), for protocol benchmarks
    /// and conformance suites; none disables it.
    pub echo_path: Option<String>,
    /// Largest single WebSocket frame payload.
    pub max_frame: usize,
    /// Largest client message (assembled WebSocket message, TCP body).
    pub max_message: usize,
    /// Origins browsers may open the WebSocket from (e.g. `https://chat.example.com`); empty:
    /// any. Clients that send no `Origin` (not browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// `permessage-deflate` for clients that offer it (JSON WebSocket clients; not the binary
    /// protocol, not TCP); none: not offered.
    pub compression: Option<deflate::Settings>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ws_path: "/ws".into(),
            echo_path: None,
            max_frame: 64 * 1024,
            max_message: 64 * 1024,
            allowed_origins: Vec::new(),
            compression: None,
        }
    }
}

/// Frames a JSON body for `wire` (as protobuf for the binary protocol).
pub fn frame_body(wire: Wire, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + wire::TCP_HEADER_LEN + 6);
    append_frame(wire, body, &mut out);
    out.into()
}

/// Appends one framed JSON body to `out` (several messages written as one buffer).
pub fn append_frame(wire: Wire, body: &[u8], out: &mut Vec<u8>) {
    match wire {
        // A connection's own replies go plain; shared batches are deflated once (`Framed`).
        Wire::WsJson | Wire::WsDeflate => ws::encode(fastwebsockets::OpCode::Text, body, out),
        Wire::WsBinary => {
            ws::encode(fastwebsockets::OpCode::Binary, &gochat_proto::binary::server_frame(body), out)
        }
        Wire::Tcp => {
            if let Err(e) = wire::encode_tcp_frame(body, out) {
                tracing::warn!(len = body.len(), "message too large for a TCP frame; dropped");
                let refusal =
                    serde_json::to_vec(&refusal_body(&e.to_string())).expect("error reply serializes");
                let _ = wire::encode_tcp_frame(&refusal, out);
            }
        }
    }
}

fn refusal_body(message: &str) -> wire::ErrorReply {
    wire::ErrorReply { op: wire::OP_ERROR, code: 1, message: message.to_string() }
}

/// An op 8 error reply, framed for `wire`.
pub fn error_frame(wire: Wire, message: &str) -> Bytes {
    let body = serde_json::to_vec(&refusal_body(message)).expect("error reply serializes");
    frame_body(wire, &body)
}
