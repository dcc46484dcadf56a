//! The client side of gochat's WebSocket: the upgrade request, masked client frames, and a
//! parser for server frames. Small and allocation-free on the hot path, so the client is cheap
//! per connection and per message.

use std::io;

/// The `permessage-deflate` offer: the server deflates each message on its own, so the client
/// needs no window per connection (one inflater per client thread serves every connection).
pub const DEFLATE_OFFER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The upgrade request for `path` on `host`, offering `subprotocol` when given, and
/// `permessage-deflate` when `deflate`.
pub fn upgrade_request(host: &str, path: &str, subprotocol: Option<&str>, deflate: bool) -> Vec<u8> {
    let mut offer = subprotocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    if deflate {
        offer.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"));
    }
    // Any 16-byte nonce is valid; the server's answer is checked for the status only.
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: Z29jaGF0LWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// Whether the response head `head` agreed to `subprotocol`.
pub fn agreed(head: &[u8], subprotocol: &str) -> bool {
    String::from_utf8_lossy(head).lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-protocol") && value.trim() == subprotocol
        })
    })
}

/// Whether the response head `head` agreed to `permessage-deflate` with the server taking no
/// context from one message to the next (what [`inflate`] can read).
pub fn agreed_deflate(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            let mut params = value.split(';').map(str::trim);
            name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && params.next().is_some_and(|e| e.eq_ignore_ascii_case("permessage-deflate"))
                && params.any(|p| p.eq_ignore_ascii_case("server_no_context_takeover"))
        })
    })
}

/// Largest message the bench inflates.
const MAX_INFLATED: usize = 64 << 20;

/// Inflates a compressed server message (RSV1) that was deflated on its own.
pub fn inflate(payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() * 4 + 64);
    gochat_gateway::protocol::deflate::inflate(payload, MAX_INFLATED, &mut out)
        .map_err(|v| io::Error::new(io::ErrorKind::InvalidData, format!("inflate: {}", v.reason)))?;
    Ok(out)
}

/// Where the response head ends, once it is complete; an error when it is not a 101.
pub fn upgrade_response(buf: &[u8]) -> io::Result<Option<usize>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 8192 {
            Err(io::Error::new(io::ErrorKind::InvalidData, "upgrade response too long"))
        } else {
            Ok(None)
        };
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\r').unwrap_or(end)]);
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("upgrade refused: {line}")));
    }
    Ok(Some(end + 4))
}

/// Appends a masked client frame (text 0x1, pong 0xA, close 0x8).
pub fn masked_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mask: [u8; 4] = rand::random();
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    fastwebsockets::unmask(&mut out[start..], mask);
}

/// One server frame.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame<'a> {
    pub opcode: u8,
    /// RSV1: the payload is deflated (`permessage-deflate`).
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// Parses the server frame at the start of `buf`: `Ok(Some((frame, length)))`, or `Ok(None)`
/// when more bytes are needed.
pub fn parse_frame(buf: &[u8]) -> io::Result<Option<(ServerFrame<'_>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "server frames must not be masked"));
    }
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10),
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    let (opcode, compressed) = (buf[0] & 0x0f, buf[0] & 0x40 != 0);
    Ok(Some((ServerFrame { opcode, compressed, payload: &buf[head..head + len] }, head + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_and_partials() {
        let mut buf = b"\x81\x02hi\x89\x00".to_vec();
        let (f, n) = parse_frame(&buf).unwrap().unwrap();
        assert_eq!((f.opcode, f.compressed, f.payload, n), (1, false, &b"hi"[..], 4));
        // RFC 7692 §7.2.3.1: "Hello", compressed.
        let (f, _) = parse_frame(b"\xc1\x07\xf2\x48\xcd\xc9\xc9\x07\x00").unwrap().unwrap();
        assert!(f.compressed);
        assert_eq!(inflate(f.payload).unwrap(), b"Hello");
        assert!(inflate(b"\xff\xff").is_err());
        let (f, _) = parse_frame(&buf[4..]).unwrap().unwrap();
        assert_eq!(f.opcode, 9);
        buf.truncate(3);
        assert_eq!(parse_frame(&buf).unwrap(), None);
        let long = [&[0x81u8, 126, 1, 0][..], &[b'a'; 256]].concat();
        assert_eq!(parse_frame(&long).unwrap().unwrap().0.payload.len(), 256);
    }

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        let mut out = Vec::new();
        masked_frame(1, b"hello", &mut out);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        let mask = [out[2], out[3], out[4], out[5]];
        let mut payload = out[6..].to_vec();
        fastwebsockets::unmask(&mut payload, mask);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn subprotocols_are_offered_and_checked() {
        let req = String::from_utf8(upgrade_request("h", "/ws", Some("gochat-pb"), false)).unwrap();
        assert!(req.ends_with("Sec-WebSocket-Protocol: gochat-pb\r\n\r\n"), "{req}");
        assert!(!String::from_utf8(upgrade_request("h", "/ws", None, false)).unwrap().contains("Protocol"));
        let offer = String::from_utf8(upgrade_request("h", "/ws", None, true)).unwrap();
        assert!(
            offer.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"),
            "{offer}"
        );
        let answer = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
        assert!(agreed_deflate(answer));
        assert!(
            !agreed_deflate(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
            "context kept"
        );
        assert!(!agreed_deflate(b"HTTP/1.1 101 OK\r\n\r\n"));
        assert!(agreed(b"HTTP/1.1 101 OK\r\nsec-websocket-protocol:  gochat-pb\r\n\r\n", "gochat-pb"));
        assert!(!agreed(b"HTTP/1.1 101 OK\r\n\r\n", "gochat-pb"));
    }

    #[test]
    fn upgrade_answers() {
        assert_eq!(upgrade_response(b"HTTP/1.1 101 Switching").unwrap(), None);
        assert_eq!(upgrade_response(b"HTTP/1.1 101 OK\r\n\r\nrest").unwrap(), Some(19));
        assert!(upgrade_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }
}
