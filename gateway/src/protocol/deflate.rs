//! `permessage-deflate` (RFC 7692), shaped so that it costs nothing per connection:
//!
//! - Server to client, `server_no_context_takeover` always: every message is deflated on its
//!   own, so one room batch is deflated once and the same bytes go to every member that
//!   negotiated the extension, as plain frames go to the others.
//! - Client to server, `client_no_context_takeover` always (a server may ask it of any client,
//!   §7.1.1.2): every message inflates on its own, with the thread's one inflater. A
//!   connection holds no compression state, so its memory is the same with compression on.
//!
//! The compressor and the inflater are per thread (a shard's thread, or a runtime thread
//! framing a batch): zlib's state is hundreds of KiB, paid once per thread, not per connection.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::ws::Violation;

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";
/// What ends a sync-flushed deflate stream: taken off each message sent, put back on each
/// message read (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The LZ77 window the server uses unless a client asks for a smaller one.
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window zlib compresses with; an offer that asks for 8 is declined.
const MIN_WINDOW_BITS: u8 = 9;

/// Compressed client messages refused because they inflated past the size limit (decompression
/// bombs, or just too large), process-wide, for `/metrics`.
pub static INFLATED_TOO_LARGE: AtomicU64 = AtomicU64::new(0);

/// Whether and how compression is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages shorter than this go out uncompressed (deflate's header and the flush cost more
    /// than they save on a short message).
    pub min_bytes: usize,
    /// zlib's level, 1 (fastest) to 9 (smallest).
    pub level: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Self { min_bytes: 128, level: 1 }
    }
}

/// The extension as agreed with one client: the LZ77 window the server may use for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    pub server_window_bits: u8,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the server's answer.
    pub fn response(&self) -> String {
        let mut answer = format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if self.server_window_bits < MAX_WINDOW_BITS {
            answer.push_str(&format!("; server_max_window_bits={}", self.server_window_bits));
        }
        answer
    }
}

/// Chooses the first of the client's `permessage-deflate` offers the server can take, from the
/// values of its `Sec-WebSocket-Extensions` headers (in order). An offer with an unknown or
/// repeated parameter, or a bad value, is declined (RFC 7692 §7.1); so is one asking for a
/// window of 8 bits, which zlib does not make.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    for value in headers {
        let Ok(value) = std::str::from_utf8(value) else { continue };
        for offer in value.split(',') {
            let mut params = offer.split(';').map(str::trim);
            if !params.next().is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION)) {
                continue;
            }
            if let Some(agreed) = take_offer(params) {
                return Some(agreed);
            }
        }
    }
    None
}

fn take_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    let mut seen = Vec::with_capacity(4);
    let mut server_window_bits = MAX_WINDOW_BITS;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok()).filter(|b| (8..=15).contains(b));
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", v) => {
                server_window_bits = bits(v)?;
                if server_window_bits < MIN_WINDOW_BITS {
                    return None;
                }
            }
            // The client's window is its own business: the server inflates with the largest.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", v) => {
                bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(Agreed { server_window_bits })
}

/// A raw-deflate compressor and the level it was made for.
type Compressor = (u8, Box<Compress>);

thread_local! {
    /// One compressor per window size asked for (9 to 15 bits), made when first needed.
    static COMPRESSORS: RefCell<[Option<Compressor>; 7]> = const { RefCell::new([const { None }; 7]) };
    static INFLATER: RefCell<Option<Box<Decompress>>> = const { RefCell::new(None) };
}

/// Appends `payload` deflated on its own (no context carried to the next message) with a window
/// of `window_bits` at zlib's `level`, in the form a compressed WebSocket message carries: the
/// sync flush's empty block taken off.
pub fn deflate(payload: &[u8], window_bits: u8, level: u8, out: &mut Vec<u8>) {
    let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
    let level = level.clamp(1, 9);
    COMPRESSORS.with_borrow_mut(|compressors| {
        let slot = &mut compressors[(bits - MIN_WINDOW_BITS) as usize];
        if slot.as_ref().is_none_or(|(made_for, _)| *made_for != level) {
            let c = Compress::new_with_window_bits(Compression::new(level.into()), false, bits);
            *slot = Some((level, Box::new(c)));
        }
        let (_, c) = slot.as_mut().expect("made above");
        c.reset();
        let start = out.len();
        out.reserve(payload.len() / 2 + 64);
        let mut read = 0;
        loop {
            let before = c.total_in();
            let status = c
                .compress_vec(&payload[read..], out, FlushCompress::Sync)
                .expect("deflating from memory into memory cannot fail");
            read += (c.total_in() - before) as usize;
            // Done when every byte is in and the flush fit (room was left over).
            if read == payload.len() && out.len() < out.capacity() {
                break;
            }
            debug_assert!(matches!(status, Status::Ok | Status::BufError));
            out.reserve(out.capacity().max(64));
        }
        if out.len() >= start + TAIL.len() && out[out.len() - TAIL.len()..] == TAIL {
            out.truncate(out.len() - TAIL.len());
        }
    });
}

/// Inflates one compressed client message into `out`, refusing it (1009) as soon as it would
/// pass `max` bytes: however far the input would inflate, no more than `max` is ever held.
/// Input that is not a deflate stream, or that refers back past the message's own start (a
/// client keeping its context after agreeing not to), is refused with 1007.
pub fn inflate(compressed: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), Violation> {
    INFLATER.with_borrow_mut(|inflater| {
        let d = inflater
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, MAX_WINDOW_BITS)));
        d.reset(false);
        let start = out.len();
        let mut chunk = [0u8; 16 * 1024];
        // The message, then the tail put back, without copying the message.
        let (mut message, mut tail) = (compressed, TAIL.as_slice());
        loop {
            let input = if message.is_empty() { tail } else { message };
            let (before_in, before_out) = (d.total_in(), d.total_out());
            let status = d.decompress(input, &mut chunk, FlushDecompress::Sync);
            let used = (d.total_in() - before_in) as usize;
            let produced = (d.total_out() - before_out) as usize;
            if message.is_empty() {
                tail = &tail[used..];
            } else {
                message = &message[used..];
            }
            if out.len() - start + produced > max {
                out.truncate(start);
                INFLATED_TOO_LARGE.fetch_add(1, Ordering::Relaxed);
                return Err(Violation::too_big("message inflates over the size limit"));
            }
            out.extend_from_slice(&chunk[..produced]);
            match status {
                Err(_) => {
                    out.truncate(start);
                    return Err(Violation::bad_data("compressed message is not a valid deflate stream"));
                }
                // A final block ends the message: what follows it is the tail, or nothing.
                Ok(Status::StreamEnd) => return Ok(()),
                // All in, and the output was not cut off by the chunk's end: all out.
                Ok(_) if message.is_empty() && tail.is_empty() && produced < chunk.len() => return Ok(()),
                Ok(_) if used == 0 && produced == 0 => {
                    out.truncate(start);
                    return Err(Violation::bad_data("compressed message makes no progress"));
                }
                Ok(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(payload: &[u8], bits: u8, level: u8) -> Vec<u8> {
        let mut z = Vec::new();
        deflate(payload, bits, level, &mut z);
        let mut back = Vec::new();
        inflate(&z, payload.len(), &mut back).expect("inflates");
        back
    }

    #[test]
    fn messages_survive_the_round_trip_at_every_window() {
        let chat = br#"{"op":3,"roomId":7,"fromUserId":12,"fromUserName":"alice","msg":"see you at the standup","createTime":"2026-12-05 10:00:00"}"#;
        let big: Vec<u8> = chat.iter().cycle().take(200_000).copied().collect();
        let noise: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for (bits, level) in (9..=15).flat_map(|b| [(b, 1), (b, 6), (b, 9)]) {
            for payload in [&b""[..], b"x", chat, &big, &noise] {
                let back = round_trip(payload, bits, level);
                assert_eq!(back, payload, "{bits} bits, level {level}, {} bytes", payload.len());
            }
        }
        let mut z = Vec::new();
        deflate(&big, 15, 6, &mut z);
        assert!(z.len() < big.len() / 20, "repetitive text compresses: {} of {}", z.len(), big.len());
    }

    #[test]
    fn each_message_stands_alone() {
        // No context taken over: the same message deflates to the same bytes every time.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        deflate(b"hello hello hello hello", 15, 6, &mut a);
        deflate(b"hello hello hello hello", 15, 6, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn rfc_7692_example() {
        // §7.2.3.1: "Hello" compressed, no context takeover.
        let mut out = Vec::new();
        inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out).unwrap();
        assert_eq!(out, b"Hello");
        out.clear();
        // §7.2.3.3: "Hello" in a stored (uncompressed) block.
        inflate(&[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00], 100, &mut out).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_inflating_it() {
        let bomb = vec![0u8; 8 << 20];
        let mut z = Vec::new();
        deflate(&bomb, 15, 6, &mut z);
        assert!(z.len() < 16 << 10, "8 MiB of zeros is {} bytes deflated", z.len());
        let counted = INFLATED_TOO_LARGE.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let err = inflate(&z, 64 << 10, &mut out).unwrap_err();
        assert_eq!(err.code, 1009);
        assert!(out.is_empty());
        assert!(out.capacity() <= 200 << 10, "held {} bytes", out.capacity());
        assert!(INFLATED_TOO_LARGE.load(Ordering::Relaxed) > counted);
        // Exactly at the limit is fine; a byte over is not.
        let mut z = Vec::new();
        deflate(&[b'a'; 1000], 15, 1, &mut z);
        assert!(inflate(&z, 1000, &mut Vec::new()).is_ok());
        assert_eq!(inflate(&z, 999, &mut Vec::new()).unwrap_err().code, 1009);
    }

    #[test]
    fn garbage_and_a_kept_context_are_refused() {
        for bad in [&[0xff, 0xff, 0xff][..], &[0x07]] {
            assert_eq!(inflate(bad, 1 << 20, &mut Vec::new()).unwrap_err().code, 1007, "{bad:?}");
        }
        // A client that keeps its context (after agreeing not to) refers back into the last
        // message, which the server no longer has.
        let mut kept = Compress::new(Compression::default(), false);
        let (mut first, mut second) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
        let text = b"the same sentence, twice over: the same sentence";
        kept.compress_vec(text, &mut first, FlushCompress::Sync).unwrap();
        kept.compress_vec(text, &mut second, FlushCompress::Sync).unwrap();
        assert_eq!(inflate(&first[..first.len() - 4], 1 << 20, &mut Vec::new()), Ok(()));
        assert_eq!(inflate(&second[..second.len() - 4], 1 << 20, &mut Vec::new()).unwrap_err().code, 1007);
    }

    #[test]
    fn offers() {
        let agree = |v: &str| negotiate([v.as_bytes()]);
        let bits = |n| Some(Agreed { server_window_bits: n });
        assert_eq!(agree("permessage-deflate"), bits(15));
        assert_eq!(agree("permessage-deflate; client_max_window_bits"), bits(15));
        assert_eq!(
            agree("permessage-deflate; server_max_window_bits=10; client_no_context_takeover"),
            bits(10)
        );
        assert_eq!(agree("permessage-deflate; server_max_window_bits=\"12\""), bits(12));
        assert_eq!(
            agree("permessage-deflate; server_no_context_takeover; client_max_window_bits=9"),
            bits(15)
        );
        // Declined: unknown, repeated, out of range, or a window zlib does not make.
        for v in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=7",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agree(v), None, "{v}");
        }
        // The first offer that can be taken, across offers and headers.
        assert_eq!(
            agree(
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9"
            ),
            bits(9)
        );
        assert_eq!(negotiate([&b"foo"[..], b"permessage-deflate; server_max_window_bits=11"]), bits(11));
        assert_eq!(
            bits(9).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
        );
    }
}
