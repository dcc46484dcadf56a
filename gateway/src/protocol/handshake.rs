//! The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 §4.2), done by hand because the shard
//! owns its sockets and no HTTP server sits in front of it.

use base64::Engine;
use sha1::{Digest, Sha1};

use super::deflate::{self, Agreed};
use super::Limits;

/// Largest request head a client may send before the upgrade.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a (possibly partial) request head amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// More bytes are needed.
    Incomplete,
    /// A valid upgrade: send `response`; the request head took `consumed` bytes. `echo` when
    /// it was to the echo path; `binary` when the client chose the binary protocol; `deflate`
    /// when `permessage-deflate` was agreed.
    Accept { response: Vec<u8>, consumed: usize, echo: bool, binary: bool, deflate: Option<Agreed> },
    /// Not an upgrade we take: send `response` and close.
    Reject { response: Vec<u8> },
}

/// Where a request head ends in `buf` (after its blank line), looking from `from` on.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|p| start + p + 4)
}

/// Parses the request head in `buf` as a WebSocket upgrade to the limits' `ws_path` (or
/// `echo_path`). With `allowed_origins` set, a browser's upgrade (it always sends `Origin`) from
/// another origin is refused, so a page elsewhere cannot use a visitor's session; clients that
/// send no `Origin` (not browsers) are not affected.
pub fn parse_upgrade(buf: &[u8], limits: &Limits) -> Upgrade {
    let (path, echo_path, allowed_origins) =
        (&limits.ws_path, limits.echo_path.as_deref(), &limits.allowed_origins);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        // The limit holds however the head arrives: a head read whole is not let off.
        Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST_HEAD => {
            return reject("431 Request Header Fields Too Large", "request head too large")
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => return Upgrade::Incomplete,
        Ok(httparse::Status::Partial) => {
            return reject("431 Request Header Fields Too Large", "request head too large")
        }
        Err(httparse::Error::TooManyHeaders) => {
            return reject("431 Request Header Fields Too Large", "too many headers")
        }
        Err(_) => return reject("400 Bad Request", "malformed HTTP request"),
    };
    if req.method != Some("GET") {
        return reject("405 Method Not Allowed", "WebSocket upgrade needs GET");
    }
    let req_path = req.path.unwrap_or("");
    let req_path = req_path.split('?').next().unwrap_or("");
    let echo = echo_path == Some(req_path);
    if req_path != path.as_str() && !echo {
        return reject("404 Not Found", "no WebSocket endpoint at this path");
    }
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let has_token = |name: &str, token: &str| {
        header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return reject("426 Upgrade Required", "expected a WebSocket upgrade");
    }
    if let Some(origin) = header("origin") {
        if !allowed_origins.is_empty() && !allowed_origins.iter().any(|o| o.as_bytes() == origin) {
            return reject("403 Forbidden", "origin not allowed");
        }
    }
    if header("sec-websocket-version") != Some(b"13") {
        return Upgrade::Reject {
            response: b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        };
    }
    let Some(key) = header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return reject("400 Bad Request", "missing Sec-WebSocket-Key");
    };
    // The binary protocol when the client offers it (gochat's clients offer nothing: JSON).
    let binary = !echo && has_token("sec-websocket-protocol", gochat_proto::binary::SUBPROTOCOL);
    // Compression for JSON only: protobuf gains little from deflate and is kept lean.
    let deflate = limits.compression.filter(|_| !binary).and_then(|_| {
        let offers = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"));
        deflate::negotiate(offers.map(|h| h.value))
    });
    let mut response = Vec::with_capacity(192);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept_key(key).as_bytes());
    if binary {
        response.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        response.extend_from_slice(gochat_proto::binary::SUBPROTOCOL.as_bytes());
    }
    if let Some(agreed) = deflate {
        response.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        response.extend_from_slice(agreed.response().as_bytes());
    }
    response.extend_from_slice(b"\r\n\r\n");
    Upgrade::Accept { response, consumed, echo, binary, deflate }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn reject(status: &str, why: &str) -> Upgrade {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}\n",
        why.len() + 1
    );
    Upgrade::Reject { response: response.into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str) -> Limits {
        Limits { ws_path: path.into(), ..Limits::default() }
    }

    const GOOD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_example_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_upgrade_and_reports_consumed() {
        let mut buf = GOOD.to_vec();
        buf.extend_from_slice(b"\x81");
        match parse_upgrade(&buf, &at("/ws")) {
            Upgrade::Accept { response, consumed, echo, .. } => {
                assert!(!echo);
                assert_eq!(consumed, GOOD.len());
                let text = String::from_utf8(response).unwrap();
                assert!(text.starts_with("HTTP/1.1 101 "));
                assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_binary_protocol_is_chosen_by_offering_its_subprotocol() {
        let offering = |protocols: &str| {
            String::from_utf8_lossy(GOOD)
                .replace("Host: x\r\n", &format!("Host: x\r\nSec-WebSocket-Protocol: {protocols}\r\n"))
        };
        let answer = |buf: &[u8]| match parse_upgrade(buf, &at("/ws")) {
            Upgrade::Accept { response, binary, .. } => (binary, String::from_utf8(response).unwrap()),
            other => panic!("{other:?}"),
        };
        let (binary, text) = answer(offering("chat, gochat-pb").as_bytes());
        assert!(binary);
        assert!(text.contains("\r\nSec-WebSocket-Protocol: gochat-pb\r\n"), "{text}");
        for json in [GOOD.to_vec(), offering("chat").into_bytes()] {
            let (binary, text) = answer(&json);
            assert!(!binary && !text.contains("Sec-WebSocket-Protocol"), "JSON unless asked: {text}");
        }
    }

    #[test]
    fn echo_path_is_its_own_endpoint() {
        let echo = String::from_utf8_lossy(GOOD).replace("GET /ws ", "GET /echo ");
        assert!(matches!(
            parse_upgrade(echo.as_bytes(), &Limits { echo_path: Some("/echo".into()), ..at("/ws") }),
            Upgrade::Accept { echo: true, .. }
        ));
        assert!(matches!(parse_upgrade(echo.as_bytes(), &at("/ws")), Upgrade::Reject { .. }));
    }

    #[test]
    fn partial_then_rejections() {
        assert_eq!(parse_upgrade(&GOOD[..20], &at("/ws")), Upgrade::Incomplete);
        let status = |buf: &[u8], path: &str| match parse_upgrade(buf, &at(path)) {
            Upgrade::Reject { response } => String::from_utf8(response).unwrap()[9..12].to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(status(GOOD, "/other"), "404");
        assert_eq!(status(b"\x16\x03\x01garbage\r\n\r\n", "/ws"), "400");
        assert_eq!(status(b"POST /ws HTTP/1.1\r\n\r\n", "/ws"), "405");
        assert_eq!(status(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "/ws"), "426");
        let v8 = String::from_utf8_lossy(GOOD).replace("Version: 13", "Version: 8");
        assert_eq!(status(v8.as_bytes(), "/ws"), "426");
        let huge = [b"GET /ws HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_REQUEST_HEAD]].concat();
        assert_eq!(status(&huge, "/ws"), "431");
        let whole = String::from_utf8_lossy(GOOD)
            .replace("Host: x", &format!("Host: {}", "x".repeat(MAX_REQUEST_HEAD)));
        assert_eq!(status(whole.as_bytes(), "/ws"), "431", "a complete head over the limit, in one read");
    }

    #[test]
    fn allowed_origins_refuse_other_sites_but_not_clients_without_an_origin() {
        let from = |origin: &str| {
            String::from_utf8_lossy(GOOD).replace("Host: x\r\n", &format!("Host: x\r\nOrigin: {origin}\r\n"))
        };
        let allowed = ["https://chat.example.com".to_string()];
        let verdict = |buf: &[u8], allowed: &[String]| match parse_upgrade(
            buf,
            &Limits { allowed_origins: allowed.to_vec(), ..at("/ws") },
        ) {
            Upgrade::Accept { .. } => "accept".to_string(),
            Upgrade::Reject { response } => String::from_utf8(response).unwrap()[9..12].to_string(),
            Upgrade::Incomplete => "incomplete".to_string(),
        };
        assert_eq!(verdict(from("https://chat.example.com").as_bytes(), &allowed), "accept");
        assert_eq!(verdict(from("https://evil.example").as_bytes(), &allowed), "403");
        assert_eq!(verdict(GOOD, &allowed), "accept", "no Origin: not a browser");
        assert_eq!(verdict(from("https://evil.example").as_bytes(), &[]), "accept", "no list: any origin");
    }

    #[test]
    fn compression_is_agreed_for_json_clients_that_offer_it_when_it_is_on() {
        let offering = |extra: &str| {
            String::from_utf8_lossy(GOOD).replace("Host: x\r\n", &format!("Host: x\r\n{extra}"))
        };
        let on = Limits { compression: Some(deflate::Settings::default()), ..at("/ws") };
        let answer = |buf: &str, limits: &Limits| match parse_upgrade(buf.as_bytes(), limits) {
            Upgrade::Accept { response, deflate, .. } => (deflate, String::from_utf8(response).unwrap()),
            other => panic!("{other:?}"),
        };
        let offer = offering("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
        let (agreed, text) = answer(&offer, &on);
        assert_eq!(agreed, Some(Agreed { server_window_bits: 15 }));
        assert!(
            text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
            "{text}"
        );
        let (agreed, text) = answer(&offer, &at("/ws"));
        assert!(agreed.is_none() && !text.contains("Extensions"), "off by default: {text}");
        let (agreed, _) = answer(&offering(""), &on);
        assert!(agreed.is_none(), "not offered");
        let binary =
            offering("Sec-WebSocket-Protocol: gochat-pb\r\nSec-WebSocket-Extensions: permessage-deflate\r\n");
        let (agreed, text) = answer(&binary, &on);
        assert!(agreed.is_none() && !text.contains("Extensions"), "the binary protocol stays plain: {text}");
        let declined = offering("Sec-WebSocket-Extensions: permessage-deflate; bogus\r\n");
        let (agreed, text) = answer(&declined, &on);
        assert!(agreed.is_none() && !text.contains("Extensions"), "{text}");
    }
}
