//! The WebSocket codec (handshake, frames, fragments, control frames) on arbitrary bytes.
#![no_main]

use gochat_fuzz::{check_stream, ws_stream};
use gochat_gateway::protocol::Transport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (stream, raw_head) = ws_stream(data);
    check_stream(Transport::WebSocket, &stream, raw_head);
});
