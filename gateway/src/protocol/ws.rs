//! WebSocket framing (RFC 6455 §5) for the server side: parse client frames in place, encode
//! server frames with fastwebsockets' `Frame` header formatting.

use bytes::Bytes;
use fastwebsockets::{CloseCode, Frame, OpCode, Payload};

use super::close;
use super::deflate::Settings;

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (`permessage-deflate`).
    pub compressed: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    /// Header length including the masking key.
    pub header_len: usize,
    pub payload_len: usize,
}

/// Why a client's frame is refused, with the close code it earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl Violation {
    pub const fn protocol(reason: &'static str) -> Self {
        Self { code: close::PROTOCOL_ERROR, reason }
    }
    pub const fn too_big(reason: &'static str) -> Self {
        Self { code: close::TOO_BIG, reason }
    }
    pub const fn bad_data(reason: &'static str) -> Self {
        Self { code: close::INVALID_DATA, reason }
    }
}

/// Parses the header at the start of `buf`; `Ok(None)` when more bytes are needed. `deflate`:
/// `permessage-deflate` was agreed, so RSV1 may mark the first frame of a data message.
pub fn parse_header(buf: &[u8], max_frame: usize, deflate: bool) -> Result<Option<Header>, Violation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let opcode = OpCode::try_from(b0 & 0x0f).map_err(|_| Violation::protocol("unknown opcode"))?;
    // One test on the common path, a frame with no reserved bit.
    let compressed = b0 & 0x70 != 0;
    if compressed {
        if b0 & 0x30 != 0 || !deflate {
            return Err(Violation::protocol("reserved bits set without an extension"));
        }
        if !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(Violation::protocol("RSV1 set on a frame that does not start a message"));
        }
    }
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(Violation::protocol("client frames must be masked"));
    }
    let (len, ext) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(Violation::protocol("frame length has its top bit set"));
            }
            (len, 8)
        }
        n => (n as u64, 0),
    };
    if is_control(opcode) {
        if !fin {
            return Err(Violation::protocol("fragmented control frame"));
        }
        if len > 125 {
            return Err(Violation::protocol("control frame over 125 bytes"));
        }
    }
    if len > max_frame as u64 {
        return Err(Violation::too_big("frame over the size limit"));
    }
    let header_len = 2 + ext + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let mask = buf[2 + ext..header_len].try_into().expect("4 bytes");
    Ok(Some(Header { fin, compressed, opcode, mask, header_len, payload_len: len as usize }))
}

fn is_control(opcode: OpCode) -> bool {
    matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong)
}

/// Unmasks a client payload in place (SIMD where available).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    fastwebsockets::unmask(payload, mask);
}

/// Appends one unmasked server frame to `out`.
pub fn encode(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    let mut head = [0u8; 14];
    let n = frame.fmt_head(&mut head);
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// Appends `payload` as one server message: deflated (RSV1 set) with a window of `window_bits`
/// when the connection agreed to `permessage-deflate` (`window_bits` > 0) and the message is
/// at least the settings' `min_bytes` long; plain otherwise.
pub fn encode_for(
    opcode: OpCode,
    payload: &[u8],
    window_bits: u8,
    settings: Option<Settings>,
    out: &mut Vec<u8>,
) {
    match settings {
        Some(s) if window_bits > 0 && payload.len() >= s.min_bytes => {
            let mut deflated = Vec::with_capacity(payload.len() / 2 + 64);
            super::deflate::deflate(payload, window_bits, s.level, &mut deflated);
            let start = out.len();
            encode(opcode, &deflated, out);
            out[start] |= 0x40;
        }
        _ => encode(opcode, payload, out),
    }
}

/// The payload of the (unmasked, whole) server frame at the start of `buf`, and the frame's
/// length; None when `buf` does not start with one.
pub fn server_frame_payload(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (len, head): (usize, usize) = match *buf.get(1)? & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    Some((buf.get(head..head.checked_add(len)?)?, head + len))
}

/// A close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // A close payload is at most 125 bytes; cut the reason on a character boundary.
    let mut end = reason.len().min(gochat_proto::wire::MAX_CLOSE_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    let mut out = Vec::with_capacity(payload.len() + 2);
    encode(OpCode::Close, &payload, &mut out);
    out.into()
}

/// The keep-alive ping the server sends to a silent peer.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

/// Validates a close frame's payload; returns the code to echo back.
pub fn close_reply_code(payload: &[u8]) -> Result<u16, Violation> {
    match payload.len() {
        0 => Ok(close::NORMAL),
        1 => Err(Violation::protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() {
                return Err(Violation::protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(Violation::bad_data("close reason is not UTF-8"));
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testkit::client_frame;

    #[test]
    fn parses_all_length_forms() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = client_frame(true, 1, &vec![b'x'; len]);
            let h = parse_header(&frame, 1 << 20, false).unwrap().unwrap();
            assert_eq!((h.payload_len, h.header_len + len), (len, frame.len()));
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&frame[..cut], 1 << 20, false), Ok(None), "len {len} cut {cut}");
            }
            let mut payload = frame[h.header_len..].to_vec();
            unmask(&mut payload, h.mask);
            assert!(payload.iter().all(|&b| b == b'x'));
        }
    }

    #[test]
    fn refuses_bad_frames() {
        let code = |buf: &[u8]| parse_header(buf, 1024, false).unwrap_err().code;
        assert_eq!(code(&[0x81, 0x05]), 1002, "unmasked");
        assert_eq!(code(&[0xc1, 0x80]), 1002, "rsv1");
        assert_eq!(code(&[0x83, 0x80]), 1002, "opcode 3");
        assert_eq!(code(&[0x09, 0x80]), 1002, "fragmented ping");
        assert_eq!(code(&client_frame(true, 9, &[0; 126])), 1002, "long ping");
        assert_eq!(code(&client_frame(true, 1, &[0; 2000])), 1009, "too big");
        assert_eq!(code(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]), 1002, "top bit");
        // With permessage-deflate, RSV1 may start a data message, and only that.
        let deflate = |buf: &[u8]| parse_header(buf, 1024, true);
        assert!(deflate(&[0xc1, 0x80, 0, 0, 0, 0]).unwrap().unwrap().compressed);
        assert!(deflate(&[0x42, 0x80, 0, 0, 0, 0]).unwrap().unwrap().compressed, "binary, first fragment");
        for bad in [[0xc0, 0x80], [0xc9, 0x80], [0xa1, 0x80], [0x91, 0x80]] {
            assert_eq!(deflate(&bad).unwrap_err().code, 1002, "{bad:x?}");
        }
    }

    #[test]
    fn encodes_server_frames() {
        let text = |body: &[u8]| {
            let mut out = Vec::new();
            encode(OpCode::Text, body, &mut out);
            out
        };
        assert_eq!(text(b"hi"), b"\x81\x02hi");
        let long = text(&[b'a'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(server_frame_payload(&long), Some((&long[4..], 304)));
        assert_eq!(server_frame_payload(&long[..100]), None, "a part");
        assert_eq!(server_frame_payload(b"\x81\x02hi\x89"), Some((&b"hi"[..], 4)));
        assert_eq!(&close_frame(1008, "no")[..], b"\x88\x04\x03\xf0no");
        let long = close_frame(1008, &"é".repeat(100));
        assert!(long.len() <= 127);
        assert!(std::str::from_utf8(&long[4..]).is_ok(), "cut on a character boundary");
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_reply_code(&[]), Ok(1000));
        assert_eq!(close_reply_code(&[0x03, 0xe8]), Ok(1000));
        assert_eq!(close_reply_code(&[0x03]).unwrap_err().code, 1002);
        assert_eq!(close_reply_code(&[0x03, 0xed]).unwrap_err().code, 1002, "1005 is reserved");
        assert_eq!(close_reply_code(&[0x03, 0xe8, 0xff]).unwrap_err().code, 1007);
    }
}
