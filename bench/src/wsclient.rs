//! The client side of gochat's WebSocket: the upgrade request, masked client frames, and a
//! parser for server frames. Small and allocation-free on the hot path, so the client is cheap
//! per connection and per message.

use std::io;

/// The upgrade request for `path` on `host`, offering `subprotocol` when given.
pub fn upgrade_request(host: &str, path: &str, subprotocol: Option<&str>) -> Vec<u8> {
    let offer = subprotocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
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
    Ok(Some((ServerFrame { opcode: buf[0] & 0x0f, payload: &buf[head..head + len] }, head + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_and_partials() {
        let mut buf = b"\x81\x02hi\x89\x00".to_vec();
        let (f, n) = parse_frame(&buf).unwrap().unwrap();
        assert_eq!((f.opcode, f.payload, n), (1, &b"hi"[..], 4));
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
        let req = String::from_utf8(upgrade_request("h", "/ws", Some("gochat-pb"))).unwrap();
        assert!(req.ends_with("Sec-WebSocket-Protocol: gochat-pb\r\n\r\n"), "{req}");
        assert!(!String::from_utf8(upgrade_request("h", "/ws", None)).unwrap().contains("Protocol"));
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
