//! Checks the fuzz targets share: drive the gateway's sans-IO codec with arbitrary bytes, fed
//! whole and in pieces, and hold its outputs to what the codec promises.

use gochat_gateway::protocol::handshake::MAX_REQUEST_HEAD;
use gochat_gateway::protocol::{Codec, Limits, Output, Transport};
use gochat_gateway::testkit::UPGRADE;
use gochat_proto::wire;

/// The default limits, and small ones so the size limits are reachable within the inputs
/// libFuzzer makes (4 KiB by default), with the echo endpoint and an origin list switched on.
pub fn limit_sets() -> [Limits; 2] {
    let small = Limits {
        echo_path: Some("/echo".into()),
        max_frame: 200,
        max_message: 300,
        allowed_origins: vec!["https://chat.example".into()],
        ..Limits::default()
    };
    [Limits::default(), small]
}

/// What one run of the codec produced.
pub struct Run {
    pub outputs: Vec<Output>,
    pub codec: Codec,
    /// Most bytes the codec held between two reads.
    pub max_buffered: usize,
    /// Largest read fed.
    pub max_chunk: usize,
}

/// Feeds `stream` to a new codec in the chunks `cuts` gives (ascending offsets).
pub fn run(transport: Transport, stream: &[u8], cuts: &[usize], limits: &Limits) -> Run {
    let mut codec = Codec::new(transport);
    let mut outputs = Vec::new();
    let (mut max_buffered, mut max_chunk, mut from) = (0, 0, 0);
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        let mut chunk = stream[from..to].to_vec();
        max_chunk = max_chunk.max(chunk.len());
        codec.feed(&mut chunk, limits, &mut outputs);
        max_buffered = max_buffered.max(codec.buffered());
        from = to;
    }
    Run { outputs, codec, max_buffered, max_chunk }
}

/// The stream a WebSocket target feeds: input that starts like a request method (an upper-case
/// letter, which as a frame's first byte sets a reserved bit) goes to the handshake as is, so
/// the handshake is fuzzed too; anything else follows a valid upgrade. `true` for the former.
pub fn ws_stream(data: &[u8]) -> (Vec<u8>, bool) {
    if data.first().is_some_and(u8::is_ascii_uppercase) {
        (data.to_vec(), true)
    } else {
        ([UPGRADE, data].concat(), false)
    }
}

/// Cut points: every byte, and a few pseudo-random chunk sizes drawn from the input.
pub fn cut_sets(stream: &[u8]) -> Vec<Vec<usize>> {
    let every_byte = (1..stream.len()).collect();
    let mut seed = stream.iter().fold(0x9e37_79b9_u32, |h, &b| h.rotate_left(5) ^ b as u32).max(1);
    let mut random = Vec::new();
    let mut at = 0;
    loop {
        // xorshift: chunk sizes of 1..=64 bytes, then the rest.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        at += 1 + (seed % 64) as usize;
        if at >= stream.len() {
            break;
        }
        random.push(at);
    }
    vec![every_byte, random]
}

/// Runs `stream` whole and in pieces and checks every run, and that chunking changes nothing.
/// A raw request head is the exception: the codec parses a growing head only once it has its
/// blank line or its size limit, so a chunked run may still be waiting where the whole one has
/// answered, and a head refused for its size in pieces may be refused for its content whole.
pub fn check_stream(transport: Transport, stream: &[u8], raw_head: bool) {
    let refused = |run: &Run| match run.outputs.first() {
        Some(Output::Send(b)) => b.starts_with(b"HTTP/1.1 4"),
        _ => false,
    };
    for limits in limit_sets() {
        let mut whole = run(transport, stream, &[], &limits);
        check_run(transport, stream.len(), &mut whole, &limits, raw_head);
        for cuts in cut_sets(stream) {
            let mut pieces = run(transport, stream, &cuts, &limits);
            check_run(transport, stream.len(), &mut pieces, &limits, raw_head);
            if raw_head && (pieces.outputs.is_empty() || refused(&pieces) && refused(&whole)) {
                continue;
            }
            assert!(pieces.outputs == whole.outputs, "chunking changed the outputs");
        }
    }
}

/// What every run must satisfy, whatever the input.
pub fn check_run(transport: Transport, input_len: usize, run: &mut Run, limits: &Limits, raw_head: bool) {
    let (mut message_bytes, mut send_bytes) = (0, 0);
    let largest_message = limits.max_frame.max(limits.max_message);
    for (i, output) in run.outputs.iter().enumerate() {
        match output {
            Output::Message(m) => {
                assert!(m.len() <= largest_message, "a message of {} bytes passed the limits", m.len());
                message_bytes += m.len();
            }
            Output::Send(b) => send_bytes += b.len(),
            Output::Close => {
                assert_eq!(i, run.outputs.len() - 1, "output after Close");
                let owed = match i.checked_sub(1).map(|j| &run.outputs[j]) {
                    Some(Output::Send(b)) => b,
                    other => panic!("Close without the bytes that say why, after {other:?}"),
                };
                check_refusal(transport, owed);
            }
        }
    }
    // The codec copies no more than it was given, and owes at most a handshake answer and a
    // close beyond what the peer's pings and messages cost it.
    assert!(message_bytes <= input_len, "{message_bytes} message bytes out of {input_len} in");
    assert!(send_bytes <= input_len + 512, "{send_bytes} bytes owed for {input_len} in");

    let closed = matches!(run.outputs.last(), Some(Output::Close));
    if closed {
        assert_eq!(run.codec.buffered(), 0, "a closed codec holds no buffer");
        assert!(!run.codec.is_open());
    }
    // What it holds is bounded by its limits and the largest read, never by the stream.
    let unit = MAX_REQUEST_HEAD.max(14 + limits.max_frame).max(wire::TCP_HEADER_LEN + limits.max_message);
    let bound = 2 * (unit + run.max_chunk) + 2 * limits.max_message + 16;
    assert!(run.max_buffered <= bound, "held {} bytes (bound {bound})", run.max_buffered);
    if transport == Transport::WebSocket && !raw_head && !closed {
        assert!(run.codec.is_open(), "a valid upgrade opens the connection");
    }

    // A closed codec takes nothing more.
    if closed {
        let mut after = Vec::new();
        run.codec.feed(&mut [0x81, 0x80, 0, 0, 0, 0, b'v', b'1', 0, 4], limits, &mut after);
        assert!(after.is_empty(), "output after Close: {after:?}");
    }
}

/// The bytes owed before a close must say why, in the transport's own terms.
fn check_refusal(transport: Transport, owed: &[u8]) {
    match transport {
        Transport::Tcp => {
            let (body, len) = wire::decode_tcp_frame(owed, usize::MAX)
                .expect("a valid TCP frame")
                .expect("a whole TCP frame");
            assert_eq!(len, owed.len());
            let reply: wire::ErrorReply = serde_json::from_slice(&owed[body]).expect("an op 8 reply");
            assert_eq!((reply.op, reply.code), (wire::OP_ERROR, 1));
            assert!(!reply.message.is_empty());
        }
        Transport::WebSocket if owed.starts_with(b"HTTP/1.1 ") => {
            let status = &owed[9..12];
            assert!(
                status[0] == b'4',
                "a refused upgrade gets a 4xx, not {:?}",
                String::from_utf8_lossy(status)
            );
            assert!(owed.ends_with(b"\n"), "a whole HTTP response");
        }
        Transport::WebSocket => {
            assert_eq!(owed[0], 0x88, "a close frame");
            let len = owed[1] as usize;
            assert!((2..=125).contains(&len) && owed.len() == 2 + len, "a close frame with a code");
            let code = u16::from_be_bytes([owed[2], owed[3]]);
            // The codes a close frame may carry (RFC 6455 §7.4, IANA's registry): the peer's
            // own code comes back when it closes.
            assert!(
                matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                "close code {code} is not one a close frame may carry"
            );
            assert!(std::str::from_utf8(&owed[4..]).is_ok(), "close reason is UTF-8");
        }
    }
}
