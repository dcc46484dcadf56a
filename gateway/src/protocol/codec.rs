//! Per-connection framing state: bytes in, complete client messages and owed bytes out.
//!
//! The codec holds no buffer while the peer is between frames; only a frame split across reads
//! (or a fragmented WebSocket message) is kept, and freed once complete.

use bytes::Bytes;
use fastwebsockets::OpCode;
use gochat_proto::wire;

use super::deflate;
use super::handshake::{self, Upgrade};
use super::ws::{self, Violation};
use super::Limits;

/// The transport a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Tcp,
}

/// How frames are written to a connection: gochat's JSON in WebSocket text frames or TCP `v1`
/// frames, or the binary protocol (protobuf in WebSocket binary frames) a client chose. JSON
/// frames may be deflated for a client that agreed to `permessage-deflate` with the full window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    WsJson,
    WsDeflate,
    WsBinary,
    Tcp,
}

/// What the codec produced from a read.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes owed to the peer: handshake answer, pong, close reply.
    Send(Bytes),
    /// A complete client message (a WebSocket text/binary message or a TCP frame body).
    Message(Vec<u8>),
    /// Close the connection once the owed bytes are written.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Frames,
    Closed,
}

/// Framing state of one connection.
#[derive(Debug)]
pub struct Codec {
    transport: Transport,
    phase: Phase,
    /// What is carried from one read to the next, boxed: most connections carry nothing, and
    /// hold one pointer instead of two empty buffers.
    carry: Option<Box<Carry>>,
    fragment_opcode: Option<OpCode>,
    /// An echo-endpoint connection: messages come straight back.
    echo: bool,
    /// How frames are written to it: set at the upgrade (the binary protocol, compression),
    /// read once per delivery.
    wire: Wire,
    /// The window the server deflates with for this client (`permessage-deflate`); 0: not agreed.
    deflate_bits: u8,
    /// The fragmented message being assembled is compressed.
    fragments_compressed: bool,
}

/// Bytes a codec keeps between reads.
#[derive(Debug, Default)]
struct Carry {
    /// Bytes of an incomplete frame (or request head).
    partial: Vec<u8>,
    /// A fragmented WebSocket message being assembled.
    fragments: Vec<u8>,
}

impl Codec {
    pub fn new(transport: Transport) -> Self {
        let phase = match transport {
            Transport::WebSocket => Phase::Handshake,
            Transport::Tcp => Phase::Frames,
        };
        let wire = match transport {
            Transport::WebSocket => Wire::WsJson,
            Transport::Tcp => Wire::Tcp,
        };
        Self {
            transport,
            phase,
            carry: None,
            fragment_opcode: None,
            echo: false,
            wire,
            deflate_bits: 0,
            fragments_compressed: false,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// How frames for this connection are written.
    #[inline]
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// Whether this connection came in on the echo endpoint.
    pub fn is_echo(&self) -> bool {
        self.echo
    }

    /// Whether the WebSocket upgrade is done (always true for TCP).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Frames
    }

    /// Bytes this codec holds between reads.
    pub fn buffered(&self) -> usize {
        self.carry.as_ref().map_or(0, |c| size_of::<Carry>() + c.partial.capacity() + c.fragments.capacity())
    }

    fn carry(&mut self) -> &mut Carry {
        self.carry.get_or_insert_with(Box::default)
    }

    /// Feeds bytes read from the peer. `input` is scratch: it is unmasked in place.
    pub fn feed(&mut self, input: &mut [u8], limits: &Limits, out: &mut Vec<Output>) {
        if self.phase == Phase::Closed {
            return;
        }
        let partial = self.carry.as_mut().map(|c| std::mem::take(&mut c.partial)).unwrap_or_default();
        if partial.is_empty() {
            let used = self.process(input, 0, limits, out);
            if self.phase != Phase::Closed && used < input.len() {
                self.carry().partial.extend_from_slice(&input[used..]);
            }
        } else {
            let mut buf = partial;
            let scanned = buf.len();
            buf.extend_from_slice(input);
            let used = self.process(&mut buf, scanned, limits, out);
            if self.phase != Phase::Closed && used < buf.len() {
                buf.drain(..used);
                self.carry().partial = buf;
            }
        }
        if self.carry.as_ref().is_some_and(|c| c.partial.is_empty() && c.fragments.is_empty()) {
            self.carry = None;
        }
    }

    /// Processes whole units at the start of `buf`; returns the bytes consumed. The first
    /// `scanned` bytes were already looked at by an earlier read.
    fn process(&mut self, buf: &mut [u8], scanned: usize, limits: &Limits, out: &mut Vec<Output>) -> usize {
        let mut at = 0;
        while at < buf.len() && self.phase != Phase::Closed {
            let step = match (self.phase, self.transport) {
                (Phase::Handshake, _) => self.handshake(&buf[at..], scanned, limits, out),
                (Phase::Frames, Transport::WebSocket) => self.ws_frame(&mut buf[at..], limits, out),
                (Phase::Frames, Transport::Tcp) => self.tcp_frame(&buf[at..], limits, out),
                (Phase::Closed, _) => unreachable!(),
            };
            match step {
                0 => break,
                n => at += n,
            }
        }
        at
    }

    fn handshake(&mut self, buf: &[u8], scanned: usize, limits: &Limits, out: &mut Vec<Output>) -> usize {
        // Parse a growing head only once it is complete (or too long, or on its first read, to
        // refuse garbage at once), so a head sent a byte at a time costs linear work.
        let complete = handshake::head_end(buf, scanned).is_some();
        if !complete && scanned > 0 && buf.len() < handshake::MAX_REQUEST_HEAD {
            return 0;
        }
        match handshake::parse_upgrade(buf, limits) {
            Upgrade::Incomplete => 0,
            Upgrade::Accept { response, consumed, echo, binary, deflate } => {
                out.push(Output::Send(response.into()));
                self.phase = Phase::Frames;
                self.echo = echo;
                self.deflate_bits = deflate.map_or(0, |d| d.server_window_bits);
                self.wire = match (binary, self.deflate_bits) {
                    (true, _) => Wire::WsBinary,
                    // Shared frames are deflated with the full window; a client that asked for
                    // a smaller one gets them plain (an uncompressed message is always allowed).
                    (false, deflate::MAX_WINDOW_BITS) => Wire::WsDeflate,
                    (false, _) => Wire::WsJson,
                };
                consumed
            }
            Upgrade::Reject { response } => {
                out.push(Output::Send(response.into()));
                self.close(out);
                buf.len()
            }
        }
    }

    fn ws_frame(&mut self, buf: &mut [u8], limits: &Limits, out: &mut Vec<Output>) -> usize {
        let header = match ws::parse_header(buf, limits.max_frame, self.deflate_bits > 0) {
            Ok(Some(h)) => h,
            Ok(None) => return 0,
            Err(v) => return self.violation(v, out, buf.len()),
        };
        let total = header.header_len + header.payload_len;
        if buf.len() < total {
            return 0;
        }
        let payload = &mut buf[header.header_len..total];
        ws::unmask(payload, header.mask);
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.fragment_opcode.is_some() {
                    return self.violation(
                        Violation::protocol("new message before the last one ended"),
                        out,
                        total,
                    );
                }
                if header.fin && header.compressed {
                    let mut message = Vec::new();
                    if let Err(v) = deflate::inflate(payload, limits.max_message, &mut message) {
                        return self.violation(v, out, total);
                    }
                    self.message(header.opcode, message, limits, out);
                } else if header.fin {
                    self.message(header.opcode, payload.to_vec(), limits, out);
                } else {
                    if payload.len() > limits.max_message {
                        return self.violation(Violation::too_big("message over the size limit"), out, total);
                    }
                    self.fragment_opcode = Some(header.opcode);
                    self.fragments_compressed = header.compressed;
                    self.carry().fragments.extend_from_slice(payload);
                }
            }
            OpCode::Continuation => {
                let Some(opcode) = self.fragment_opcode else {
                    return self.violation(Violation::protocol("continuation with no message"), out, total);
                };
                let fragments = &mut self.carry().fragments;
                if fragments.len() + payload.len() > limits.max_message {
                    return self.violation(Violation::too_big("message over the size limit"), out, total);
                }
                fragments.extend_from_slice(payload);
                if header.fin {
                    self.fragment_opcode = None;
                    let mut message = std::mem::take(&mut self.carry().fragments);
                    if std::mem::take(&mut self.fragments_compressed) {
                        let mut inflated = Vec::new();
                        if let Err(v) = deflate::inflate(&message, limits.max_message, &mut inflated) {
                            return self.violation(v, out, total);
                        }
                        message = inflated;
                    }
                    self.message(opcode, message, limits, out);
                }
            }
            OpCode::Ping => {
                let mut pong = Vec::with_capacity(payload.len() + 2);
                ws::encode(OpCode::Pong, payload, &mut pong);
                out.push(Output::Send(pong.into()));
            }
            OpCode::Pong => {}
            OpCode::Close => {
                match ws::close_reply_code(payload) {
                    Ok(code) => out.push(Output::Send(ws::close_frame(code, ""))),
                    Err(v) => return self.violation(v, out, total),
                }
                self.close(out);
            }
        }
        total
    }

    fn message(&mut self, opcode: OpCode, payload: Vec<u8>, limits: &Limits, out: &mut Vec<Output>) {
        if opcode == OpCode::Text && simdutf8::basic::from_utf8(&payload).is_err() {
            self.violation(Violation::bad_data("text message is not UTF-8"), out, 0);
            return;
        }
        if self.echo {
            let mut frame = Vec::with_capacity(payload.len() + 10);
            ws::encode_for(opcode, &payload, self.deflate_bits, limits.compression, &mut frame);
            out.push(Output::Send(frame.into()));
            return;
        }
        out.push(Output::Message(payload));
    }

    fn tcp_frame(&mut self, buf: &[u8], limits: &Limits, out: &mut Vec<Output>) -> usize {
        match wire::decode_tcp_frame(buf, limits.max_message) {
            Ok(None) => 0,
            Ok(Some((body, len))) => {
                out.push(Output::Message(buf[body].to_vec()));
                len
            }
            Err(e) => {
                out.push(Output::Send(super::error_frame(Wire::Tcp, &e.to_string())));
                self.close(out);
                buf.len()
            }
        }
    }

    /// Refuses the peer's input: owe a close frame with the violation's code, then close.
    fn violation(&mut self, v: Violation, out: &mut Vec<Output>, consumed: usize) -> usize {
        out.push(Output::Send(ws::close_frame(v.code, v.reason)));
        self.close(out);
        consumed
    }

    fn close(&mut self, out: &mut Vec<Output>) {
        self.phase = Phase::Closed;
        self.carry = None;
        self.fragment_opcode = None;
        self.fragments_compressed = false;
        out.push(Output::Close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{client_frame, UPGRADE};

    fn limits() -> Limits {
        Limits { max_frame: 1024, max_message: 2048, ..Limits::default() }
    }

    fn open_ws() -> Codec {
        let mut c = Codec::new(Transport::WebSocket);
        let mut out = Vec::new();
        c.feed(&mut UPGRADE.to_vec(), &limits(), &mut out);
        assert!(matches!(&out[..], [Output::Send(_)]), "{out:?}");
        assert!(c.is_open());
        c
    }

    fn feed(c: &mut Codec, bytes: &[u8]) -> Vec<Output> {
        let mut out = Vec::new();
        c.feed(&mut bytes.to_vec(), &limits(), &mut out);
        out
    }

    fn close_code(out: &[Output]) -> u16 {
        match out {
            [Output::Send(frame), Output::Close] if frame[0] == 0x88 => {
                u16::from_be_bytes([frame[2], frame[3]])
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn handshake_and_frames_byte_by_byte() {
        let mut c = Codec::new(Transport::WebSocket);
        let mut stream = UPGRADE.to_vec();
        stream.extend(client_frame(true, 1, br#"{"authToken":"t","roomId":1}"#));
        stream.extend(client_frame(true, 9, b"p"));
        let mut out = Vec::new();
        for b in stream {
            c.feed(&mut [b], &limits(), &mut out);
        }
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[1], Output::Message(br#"{"authToken":"t","roomId":1}"#.to_vec()));
        assert_eq!(out[2], Output::Send(Bytes::from_static(b"\x8a\x01p")));
        assert_eq!(c.buffered(), 0, "nothing held between frames");
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut c = open_ws();
        let mut bytes = client_frame(true, 1, b"a");
        bytes.extend(client_frame(true, 1, b"b"));
        bytes.extend(&client_frame(true, 1, b"c")[..3]);
        let out = feed(&mut c, &bytes);
        assert_eq!(out, vec![Output::Message(b"a".to_vec()), Output::Message(b"b".to_vec())]);
        assert!(c.buffered() > 0);
        let out = feed(&mut c, &client_frame(true, 1, b"c")[3..]);
        assert_eq!(out, vec![Output::Message(b"c".to_vec())]);
    }

    #[test]
    fn fragmented_message() {
        let mut c = open_ws();
        assert!(feed(&mut c, &client_frame(false, 1, b"he")).is_empty());
        assert_eq!(feed(&mut c, &client_frame(true, 9, b"")).len(), 1, "ping between fragments");
        assert_eq!(feed(&mut c, &client_frame(true, 0, b"llo")), vec![Output::Message(b"hello".to_vec())]);
        assert_eq!(c.buffered(), 0);
    }

    #[test]
    fn violations_close_with_codes() {
        assert_eq!(close_code(&feed(&mut open_ws(), &client_frame(true, 0, b"x"))), 1002);
        assert_eq!(close_code(&feed(&mut open_ws(), &client_frame(true, 1, &[0xff, 0xfe]))), 1007);
        assert_eq!(close_code(&feed(&mut open_ws(), &client_frame(true, 1, &[b'a'; 1025]))), 1009);
        let mut c = open_ws();
        assert!(feed(&mut c, &client_frame(false, 1, &[b'a'; 1000])).is_empty());
        assert!(feed(&mut c, &client_frame(false, 0, &[b'a'; 1000])).is_empty());
        assert_eq!(close_code(&feed(&mut c, &client_frame(true, 0, &[b'a'; 100]))), 1009);
        let mut c = open_ws();
        assert_eq!(close_code(&feed(&mut c, &client_frame(true, 8, &[0x03, 0xe8]))), 1000);
        assert!(feed(&mut c, &client_frame(true, 1, b"after close")).is_empty());
    }

    #[test]
    fn echo_connections_get_their_messages_back_with_the_opcode() {
        let limits = Limits { echo_path: Some("/echo".into()), ..limits() };
        let mut c = Codec::new(Transport::WebSocket);
        let upgrade = String::from_utf8_lossy(UPGRADE).replace("GET /ws ", "GET /echo ");
        let mut out = Vec::new();
        c.feed(&mut upgrade.into_bytes(), &limits, &mut out);
        assert!(c.is_echo());
        out.clear();
        c.feed(&mut client_frame(true, 2, &[0, 1, 2]), &limits, &mut out);
        c.feed(&mut client_frame(false, 1, b"he"), &limits, &mut out);
        c.feed(&mut client_frame(true, 0, b"llo"), &limits, &mut out);
        assert_eq!(
            out,
            vec![
                Output::Send(Bytes::from_static(b"\x82\x03\x00\x01\x02")),
                Output::Send(Bytes::from_static(b"\x81\x05hello"))
            ]
        );
    }

    #[test]
    fn tcp_frames_and_garbage() {
        let mut c = Codec::new(Transport::Tcp);
        let mut bytes = Vec::new();
        wire::encode_tcp_frame(br#"{"op":6}"#, &mut bytes).unwrap();
        wire::encode_tcp_frame(b"{}", &mut bytes).unwrap();
        assert_eq!(
            feed(&mut c, &bytes),
            vec![Output::Message(br#"{"op":6}"#.to_vec()), Output::Message(b"{}".to_vec())]
        );
        let out = feed(&mut c, b"GET / HTTP/1.1\r\n");
        assert!(matches!(&out[..], [Output::Send(_), Output::Close]), "{out:?}");
    }

    /// A WebSocket that agreed to `permessage-deflate`, on `limits`.
    fn open_deflate(limits: &Limits) -> Codec {
        let mut c = Codec::new(Transport::WebSocket);
        let offer = String::from_utf8_lossy(UPGRADE)
            .replace("Host: x\r\n", "Host: x\r\nSec-WebSocket-Extensions: permessage-deflate\r\n");
        let mut out = Vec::new();
        c.feed(&mut offer.into_bytes(), limits, &mut out);
        assert_eq!(c.wire(), Wire::WsDeflate, "{out:?}");
        c
    }

    /// A compressed client message: RSV1 on its first frame, cut into frames of `frame` bytes.
    fn deflated_frames(opcode: u8, message: &[u8], frame: usize) -> Vec<u8> {
        let mut z = Vec::new();
        deflate::deflate(message, 15, 9, &mut z);
        let chunks: Vec<&[u8]> = z.chunks(frame.max(1)).collect();
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut f = client_frame(i + 1 == chunks.len(), if i == 0 { opcode } else { 0 }, chunk);
            if i == 0 {
                f[0] |= 0x40;
            }
            out.extend(f);
        }
        out
    }

    #[test]
    fn compression_adds_nothing_to_a_connection() {
        // Two bytes of flags in what was padding: no window, no compressor, no buffer.
        assert_eq!(size_of::<Codec>(), 16);
    }

    #[test]
    fn compressed_messages_inflate_whole_or_in_fragments() {
        let on = Limits { compression: Some(deflate::Settings::default()), ..limits() };
        let message = br#"{"op":3,"msg":"hello hello hello hello hello hello hello"}"#;
        for frame in [1000, 7, 1] {
            let mut c = open_deflate(&on);
            let mut out = Vec::new();
            c.feed(&mut deflated_frames(1, message, frame), &on, &mut out);
            assert_eq!(out, vec![Output::Message(message.to_vec())], "frames of {frame}");
            assert_eq!(c.buffered(), 0);
        }
        // Plain messages still pass on a compressing connection.
        let mut c = open_deflate(&on);
        let mut out = Vec::new();
        c.feed(&mut client_frame(true, 1, b"plain"), &on, &mut out);
        assert_eq!(out, vec![Output::Message(b"plain".to_vec())]);
    }

    #[test]
    fn compression_refusals() {
        let on = Limits { compression: Some(deflate::Settings::default()), ..limits() };
        let code = |c: &mut Codec, bytes: Vec<u8>| {
            let mut out = Vec::new();
            c.feed(&mut bytes.clone(), &on, &mut out);
            close_code(&out)
        };
        // A bomb: 1 MiB of zeros in a few hundred bytes, against a 2 KiB message limit.
        let bomb = deflated_frames(1, &vec![0; 1 << 20], 1000);
        assert!(bomb.len() < 2000);
        assert_eq!(code(&mut open_deflate(&on), bomb.clone()), 1009);
        assert_eq!(
            code(&mut open_deflate(&on), deflated_frames(1, &vec![0; 1 << 20], 100)),
            1009,
            "in fragments"
        );
        // RSV1 without the extension agreed, garbage, and invalid UTF-8 once inflated.
        assert_eq!(code(&mut open_ws(), bomb), 1002);
        let mut garbage = client_frame(true, 1, &[0xff, 0xff, 0xff]);
        garbage[0] |= 0x40;
        assert_eq!(code(&mut open_deflate(&on), garbage), 1007);
        assert_eq!(code(&mut open_deflate(&on), deflated_frames(1, &[0xff, 0xfe, 0xfd], 100)), 1007);
        // RSV1 on a continuation frame.
        let mut c = open_deflate(&on);
        let mut out = Vec::new();
        c.feed(&mut client_frame(false, 1, b"a"), &on, &mut out);
        let mut cont = client_frame(true, 0, b"b");
        cont[0] |= 0x40;
        assert_eq!(code(&mut c, cont), 1002);
    }

    #[test]
    fn echo_compresses_what_is_over_the_threshold() {
        let on = Limits {
            echo_path: Some("/ws".into()),
            ws_path: "/chat".into(),
            compression: Some(deflate::Settings { min_bytes: 20, level: 1 }),
            ..limits()
        };
        let mut c = open_deflate(&on);
        let mut out = Vec::new();
        let long = [b'z'; 300];
        c.feed(&mut deflated_frames(2, &long, 1000), &on, &mut out);
        c.feed(&mut client_frame(true, 1, b"short"), &on, &mut out);
        let [Output::Send(compressed), Output::Send(short)] = &out[..] else { panic!("{out:?}") };
        assert_eq!(compressed[0], 0xc2, "binary, RSV1");
        let (payload, _) = ws::server_frame_payload(compressed).unwrap();
        let mut back = Vec::new();
        deflate::inflate(payload, 1000, &mut back).unwrap();
        assert_eq!(back, long);
        assert_eq!(&short[..], b"\x81\x05short");
    }
}
