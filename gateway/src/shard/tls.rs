//! wss connections in a shard: a [`TlsSession`] between the driver's bytes and the codec.
//! Output is encrypted as it is queued (`Outgoing::queue`), so the drivers write a TLS
//! connection's queue exactly as they write a plain one's, and the outbound bound counts what
//! the socket still has to take. Sessions live in a table of their own, so a plain connection
//! carries nothing for TLS but a flag.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::Shard;
use crate::protocol::tls::TlsSession;
use crate::protocol::Transport;

/// Plaintext buffer capacity kept between reads (one per shard).
const PLAIN_KEEP: usize = 64 * 1024;

/// A shard's TLS state: the config new wss connections get, and their sessions by key.
#[derive(Default)]
pub(super) struct TlsConns {
    config: Option<Arc<rustls::ServerConfig>>,
    sessions: HashMap<u32, Box<TlsSession>>,
    /// Plaintext decrypted from one read, before the codec takes it.
    plain: Vec<u8>,
}

impl TlsConns {
    /// Encrypts a frame for the connection at `key` (which has a session). Out of line, so the
    /// plain connections' path through `Outgoing::queue` stays as it was.
    #[cold]
    #[inline(never)]
    pub(super) fn seal(&mut self, key: u32, frame: &[u8]) -> Bytes {
        match self.sessions.get_mut(&key) {
            Some(session) => session.seal(frame),
            None => unreachable!("a TLS connection without a session"),
        }
    }

    pub(super) fn forget(&mut self, key: u32) {
        self.sessions.remove(&key);
    }
}

impl Shard {
    /// Serves `wss://`: connections opened with [`Shard::open_tls`] use `config`.
    /// The config is made to let sessions take the traffic keys out of rustls after a TLS 1.3
    /// handshake, and to give them the traffic secrets key updates derive from (see
    /// `protocol::tls`).
    pub fn set_tls(&mut self, mut config: Arc<rustls::ServerConfig>) {
        let c = Arc::make_mut(&mut config);
        c.enable_secret_extraction = true;
        c.key_log = crate::protocol::tls::key_log();
        self.tls.config = Some(config);
    }

    /// Registers a connection accepted on the wss listener (a WebSocket under TLS); `None`
    /// when this shard serves no TLS or the session cannot be made (the driver drops the socket).
    pub fn open_tls(&mut self, now: u32) -> Option<(u32, u64)> {
        let session = match TlsSession::new(self.tls.config.clone()?) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "wss connection refused: no TLS session");
                return None;
            }
        };
        let (key, id) = self.open(Transport::WebSocket, now);
        self.conns[key as usize].tls = true;
        self.tls.sessions.insert(key, Box::new(session));
        Some((key, id))
    }

    /// Ciphertext from the peer: decrypt, send owed records, feed the plaintext to the codec.
    pub(super) fn on_tls_data(&mut self, key: u32, input: &mut [u8], now: u32) {
        let mut plain = std::mem::take(&mut self.tls.plain);
        let Some(session) = self.tls.sessions.get_mut(&key) else { return };
        let received = session.receive(input, &mut plain);
        // Handshake messages first: whatever the codec answers is sealed after them.
        let owed = session.take_output();
        self.push_records(key, owed);
        match received {
            Ok(peer_closed) => {
                if !plain.is_empty() {
                    self.feed(key, &mut plain, now);
                }
                if peer_closed {
                    self.begin_close(key, None);
                }
            }
            Err(failed) => {
                let counter = match failed.handshake {
                    true => &self.stats.tls_handshake_failures,
                    false => &self.stats.protocol_closes,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // The alert is queued; nothing else is said on a broken session.
                self.begin_close(key, None);
            }
        }
        plain.clear();
        if plain.capacity() > PLAIN_KEEP {
            plain = Vec::new();
        }
        self.tls.plain = plain;
    }

    /// Owes the peer a close_notify after what is queued (a TLS connection being closed).
    pub(super) fn close_tls(&mut self, key: u32) {
        let Some(session) = self.tls.sessions.get_mut(&key) else { return };
        session.close();
        let owed = session.take_output();
        self.push_records(key, owed);
    }

    /// Queues records as they are (already encrypted, or alerts).
    fn push_records(&mut self, key: u32, records: Option<Bytes>) {
        let (Some(records), Some(conn)) = (records, self.conns.get_mut(key as usize)) else { return };
        if conn.closing {
            return;
        }
        conn.out.push(records);
        conn.mark_dirty(key, &mut self.dirty);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::Ordering;

    use rustls::ClientConnection;

    use crate::protocol::tls::testing::{client_input, client_output, configs};
    use crate::shard::{Command, Framed, Shard, ShardLimits};
    use crate::testkit::{client_frame, written, UPGRADE};

    fn shard() -> (Shard, std::sync::Arc<rustls::ClientConfig>) {
        let (server, client) = configs();
        let mut s = Shard::new(0, 0, ShardLimits::default(), 0);
        s.set_tls(server);
        (s, client)
    }

    fn live(
        s: &mut Shard,
        config: &std::sync::Arc<rustls::ClientConfig>,
        user: u64,
        room: u64,
    ) -> (u32, ClientConnection) {
        crate::testkit::tls::live_wss(s, config, user, room)
    }

    #[test]
    fn a_broadcast_reaches_plain_and_tls_members_each_framed_the_same() {
        let (mut s, config) = shard();
        let (plain_key, _) = crate::testkit::live_ws(&mut s, 1, 9);
        let (tls_key, mut c) = live(&mut s, &config, 2, 9);
        let frames = Framed::encode(&[br#"{"op":3,"msg":"hi"}"#]);
        s.on_command(Command::Room { room_id: 9, frames: frames.clone() });
        let mut dirty = Vec::new();
        s.take_dirty(&mut dirty);
        // The plain member shares the broadcast buffer; the TLS member has its own records.
        let (mut plain_out, mut tls_out) = (Vec::new(), Vec::new());
        s.out_mut(plain_key).unwrap().pending_frames(8, &mut plain_out);
        assert_eq!(plain_out[0].as_ptr(), frames.ws().as_ptr(), "shared, not copied");
        s.out_mut(tls_key).unwrap().pending_frames(8, &mut tls_out);
        assert_ne!(&tls_out[0][..], &frames.ws()[..], "encrypted");
        let got = client_input(&mut c, &written(&mut s, tls_key));
        assert_eq!(got, &frames.ws()[..]);
        assert_eq!(written(&mut s, plain_key), &frames.ws()[..]);
    }

    #[test]
    fn a_plain_client_on_the_wss_port_is_closed_and_counted() {
        let (mut s, _) = shard();
        let (key, _) = s.open_tls(0).unwrap();
        s.on_data(key, &mut UPGRADE.to_vec(), 0);
        assert!(s.is_closing(key));
        assert_eq!(s.stats().tls_handshake_failures.load(Ordering::Relaxed), 1);
        let out = written(&mut s, key);
        assert_eq!(out[0], 0x15, "only an alert is sent");
        assert!(!String::from_utf8_lossy(&out).contains("HTTP"));
        assert!(s.take_effects().next().is_none());
    }

    #[test]
    fn closing_a_tls_connection_sends_the_close_frame_then_close_notify() {
        let (mut s, config) = shard();
        let (key, mut c) = live(&mut s, &config, 1, 1);
        s.begin_close(key, Some((1001, "bye")));
        let plain = client_input(&mut c, &written(&mut s, key));
        assert_eq!(&plain[..2], &[0x88, 5], "the close frame");
        assert_eq!(u16::from_be_bytes([plain[2], plain[3]]), 1001);
        let mut rest = Vec::new();
        assert_eq!(std::io::Read::read_to_end(&mut c.reader(), &mut rest).unwrap(), 0, "close_notify");
    }

    #[test]
    fn a_slow_tls_consumer_is_dropped_at_the_outbound_bound() {
        let (mut s, config) = shard();
        let (key, _c) = live(&mut s, &config, 1, 1);
        let body = vec![b'x'; 60 * 1024];
        let frames = Framed::encode(&[body]);
        for _ in 0..4 {
            s.on_command(Command::Room { room_id: 1, frames: frames.clone() });
        }
        assert!(s.out_mut(key).unwrap().bytes() <= ShardLimits::default().max_outbound_bytes + 200);
        s.on_command(Command::Room { room_id: 1, frames: frames.clone() });
        assert_eq!(s.stats().slow_consumer_closes.load(Ordering::Relaxed), 1);
        assert!(s.is_closing(key) && !s.has_output(key));
    }

    #[test]
    fn open_tls_needs_a_config() {
        let mut s = Shard::new(0, 0, ShardLimits::default(), 0);
        assert!(s.open_tls(0).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn sessions_go_with_their_connections() {
        let (mut s, config) = shard();
        let (key, _c) = live(&mut s, &config, 1, 1);
        let (plain, _) = crate::testkit::live_ws(&mut s, 2, 1);
        assert_eq!(s.tls.sessions.len(), 1);
        s.remove(plain);
        assert_eq!(s.tls.sessions.len(), 1);
        s.remove(key);
        assert!(s.tls.sessions.is_empty());
        s.take_effects().for_each(drop);
        // A plain connection reusing the key is plain.
        let (reused, _) = crate::testkit::live_ws(&mut s, 3, 1);
        assert_eq!(reused, key);
        let frames = Framed::encode(&[b"{}"]);
        s.on_command(Command::Room { room_id: 1, frames: frames.clone() });
        assert_eq!(written(&mut s, reused), &frames.ws()[..]);
    }

    #[test]
    fn an_idle_tls_connection_holds_no_buffer_after_a_read_cut_mid_record() {
        let (mut s, config) = shard();
        let (key, mut c) = live(&mut s, &config, 1, 1);
        c.writer().write_all(&client_frame(true, 9, b"are you there")).unwrap();
        let mut bytes = client_output(&mut c);
        let (head, tail) = bytes.split_at_mut(7);
        s.on_data(key, head, 0);
        assert!(s.tls.sessions[&key].held_bytes() > 0, "the cut record is held");
        assert!(written(&mut s, key).is_empty());
        s.on_data(key, tail, 0);
        assert_eq!(s.tls.sessions[&key].held_bytes(), 0, "and let go once whole");
        let pong = client_input(&mut c, &written(&mut s, key));
        assert_eq!(&pong[..2], &[0x8a, 13], "the pong");
        assert!(s.tls.plain.is_empty());
    }
}
