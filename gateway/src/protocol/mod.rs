//! The sans-IO protocol: WebSocket and TCP `v1` framing, gochat's client requests, and TLS for
//! `wss://`. Bytes in, messages and owed bytes out; the drivers, tests and fuzzers drive the
//! same code.

pub mod codec;
pub mod handshake;
pub mod session;
pub mod tls;
pub mod ws;

use bytes::Bytes;
use gochat_proto::wire;

pub use codec::{Codec, Output, Transport};

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ws_path: "/ws".into(),
            echo_path: None,
            max_frame: 64 * 1024,
            max_message: 64 * 1024,
            allowed_origins: Vec::new(),
        }
    }
}

/// Frames a JSON body for `transport`.
pub fn frame_body(transport: Transport, body: &[u8]) -> Bytes {
    match transport {
        Transport::WebSocket => ws::text_frame(body),
        Transport::Tcp => {
            let mut out = Vec::with_capacity(body.len() + wire::TCP_HEADER_LEN);
            match wire::encode_tcp_frame(body, &mut out) {
                Ok(()) => out.into(),
                Err(e) => error_frame(Transport::Tcp, &e.to_string()),
            }
        }
    }
}

/// Appends one framed body to `out` (several messages written as one buffer).
pub fn append_frame(transport: Transport, body: &[u8], out: &mut Vec<u8>) {
    match transport {
        Transport::WebSocket => ws::encode(fastwebsockets::OpCode::Text, body, out),
        Transport::Tcp => {
            if wire::encode_tcp_frame(body, out).is_err() {
                tracing::warn!(len = body.len(), "message too large for a TCP frame; dropped");
            }
        }
    }
}

/// An op 8 error reply, framed for `transport`.
pub fn error_frame(transport: Transport, message: &str) -> Bytes {
    let body =
        serde_json::to_vec(&wire::ErrorReply { op: wire::OP_ERROR, code: 1, message: message.to_string() })
            .expect("error reply serializes");
    frame_body(transport, &body)
}
