//! TLS for `wss://` connections, sans-IO, on rustls' unbuffered server connection. Only
//! connections accepted on the wss listener have a session; plain ones never touch this module.
//!
//! Nothing is buffered for the session while a connection is idle. Ciphertext the driver read is
//! decrypted where it lies (the driver's scratch) and appended to the codec's plaintext; only a
//! record a read cut short is copied into a buffer of the session's own, freed as soon as the
//! record is whole. Plaintext frames are encrypted straight into the buffer that becomes the
//! frame's `Bytes`.
//!
//! rustls runs the handshake. Once a TLS 1.3 handshake is over, the session takes the traffic
//! keys out of rustls (its kernel API, as kTLS does) and protects records itself with ring, the
//! provider rustls uses (RFC 8446 §5.2–5.4): rustls' connection state, about 3.5 KiB after a
//! handshake (its struct, two expanded AEAD keys, the state machine and its queues), gives way
//! to per direction a key, an IV, a sequence number and the traffic secret the next keys derive
//! from (KeyUpdate, §4.6.3), and the AEAD key is expanded for each read or frame instead of being
//! held. rustls hands out keys but no secret: the secrets come from the config's key log
//! ([`key_log`]), which keeps them for the session whose handshake step logged them, and are
//! checked against the keys. Without them (another key log) a KeyUpdate closes the connection
//! (close_notify), as does AES-GCM's record limit. TLS 1.2 sessions (and a config that does not
//! allow taking the keys out) stay on rustls' connection.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use ring::{aead, hkdf};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::{ConnectionTrafficSecrets, ServerConfig};

/// The peer broke TLS (for a handshake: a plain client, a scanner, a client that does not
/// trust the certificate). The alert owed, if any, is in [`TlsSession::take_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFailed {
    /// Whether it failed before the handshake completed.
    pub handshake: bool,
}

/// A TLS record's header: type, version, length.
const HEADER: usize = 5;
/// The most plaintext a record carries.
const MAX_FRAGMENT: usize = 1 << 14;
/// A TLS 1.3 record's overhead: the inner content type and the AEAD tag.
const TLS13_OVERHEAD: usize = 1 + 16;
/// Records a TLS 1.3 session encrypts under one key before it closes: below the lowest limit
/// of its AEADs (AES-GCM's, RFC 8446 §5.5; rustls updates keys at 2^24).
const TLS13_RECORD_LIMIT: u64 = (1 << 24) - (1 << 16);

/// [`TLS13_RECORD_LIMIT`], or what a test set for its thread.
fn record_limit() -> u64 {
    #[cfg(test)]
    if let Some(limit) = tests::RECORD_LIMIT.get() {
        return limit;
    }
    TLS13_RECORD_LIMIT
}

/// Content types (RFC 8446 §5.1) and the alerts the session sends (§6).
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const ILLEGAL_PARAMETER: u8 = 47;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const USER_CANCELED: u8 = 90;
/// The KeyUpdate handshake message's type (RFC 8446 §4).
const KEY_UPDATE: u8 = 24;

/// One connection's TLS state.
pub struct TlsSession {
    layer: Layer,
    /// Ciphertext not finished with: a record a read cut short (and, during a handshake, the
    /// records of a handshake message that spans several). Empty, without an allocation,
    /// between reads that end on a record boundary.
    held: Vec<u8>,
    /// Records owed to the peer (handshake messages, tickets, alerts) until
    /// [`TlsSession::take_output`] or the next [`TlsSession::seal`] takes them.
    owed: Vec<u8>,
    /// Broken: nothing more is read or sealed.
    failed: Option<TlsFailed>,
    /// The peer sent close_notify: nothing more is read.
    peer_closed: bool,
    /// We sent close_notify: nothing more is sealed.
    closed: bool,
    /// The config lets the keys be taken out of rustls after a TLS 1.3 handshake.
    extract: bool,
}

/// Who protects the records. The large variant is what an idle TLS 1.3 connection keeps: inline,
/// it costs no allocation of its own (the session itself is boxed in the shard's table).
#[allow(clippy::large_enum_variant)]
enum Layer {
    /// rustls: the handshake, and TLS 1.2 for good.
    Rustls(Box<Handshake>),
    /// A TLS 1.3 connection's traffic keys, after the handshake.
    Tls13(Traffic),
    /// For a moment, while the keys are taken out.
    Gone,
}

/// rustls' connection, and the traffic secrets its handshake logged.
struct Handshake {
    conn: UnbufferedServerConnection,
    logged: Logged,
}

/// TLS 1.3 record protection (RFC 8446 §5.2): per direction a key, a static IV, the record
/// sequence number and the traffic secret.
struct Traffic {
    aead: &'static aead::Algorithm,
    tx: Keys,
    rx: Keys,
}

struct Keys {
    /// The AEAD key (16 or 32 bytes used).
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
    /// The traffic secret the key and IV came from; empty when the key log gave none.
    secret: Secret,
}

/// A TLS 1.3 traffic secret (32 or 48 bytes: SHA-256's or SHA-384's length).
struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    const NONE: Self = Self { bytes: [0; 48], len: 0 };

    fn new(secret: &[u8]) -> Option<Self> {
        let mut s = Self::NONE;
        s.bytes.get_mut(..secret.len())?.copy_from_slice(secret);
        s.len = secret.len() as u8;
        Some(s)
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
        zeroize::Zeroize::zeroize(&mut self.iv);
    }
}

/// The application traffic secrets a handshake step logged (client's, server's).
#[derive(Default)]
struct Logged {
    client: Option<Secret>,
    server: Option<Secret>,
}

thread_local! {
    /// What [`TrafficSecretLog`] was given during the rustls call running on this thread: a
    /// session takes it as soon as the call returns, so it is that session's.
    static LOGGED: RefCell<Logged> = RefCell::default();
}

/// A key log that keeps the TLS 1.3 application traffic secrets for the session whose handshake
/// step logged them (and logs nothing anywhere). Set as the config's `key_log` (the shard does:
/// `Shard::set_tls`), it lets sessions follow key updates after they took the keys out of rustls.
#[derive(Debug)]
pub struct TrafficSecretLog;

const CLIENT_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl rustls::KeyLog for TrafficSecretLog {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_SECRET || label == SERVER_SECRET
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        LOGGED.with(|logged| {
            let mut logged = logged.borrow_mut();
            match label {
                CLIENT_SECRET => logged.client = Secret::new(secret),
                SERVER_SECRET => logged.server = Secret::new(secret),
                _ => {}
            }
        });
    }
}

/// The key log a gateway's TLS config carries (see [`TrafficSecretLog`]).
pub fn key_log() -> Arc<dyn rustls::KeyLog> {
    Arc::new(TrafficSecretLog)
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layer = match self.layer {
            Layer::Rustls(_) => "rustls",
            Layer::Tls13(_) => "tls13",
            Layer::Gone => "gone",
        };
        f.debug_struct("TlsSession")
            .field("layer", &layer)
            .field("handshaking", &self.is_handshaking())
            .field("held", &self.held.len())
            .field("owed", &self.owed.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// Where a pass over the input stopped.
enum Stop {
    /// More input is needed (or the connection is over for reading).
    Input,
    /// rustls refused the input; an alert may be owed.
    Failed(rustls::Error),
    /// Our TLS 1.3 layer refused the input: the alert to send, if any, and why.
    Refused(Option<u8>, &'static str),
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let extract = config.enable_secret_extraction;
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Self {
            layer: Layer::Rustls(Box::new(Handshake { conn, logged: Logged::default() })),
            held: Vec::new(),
            owed: Vec::new(),
            failed: None,
            peer_closed: false,
            closed: false,
            extract,
        })
    }

    /// Takes ciphertext the peer sent (decrypted in place: `input` is scratch) and appends what
    /// it decrypts to `plain`. `Ok(true)` when the peer closed TLS (close_notify). Records owed in
    /// reply (handshake messages, session tickets, alerts) wait in [`TlsSession::take_output`].
    pub fn receive(&mut self, mut input: &mut [u8], plain: &mut Vec<u8>) -> Result<bool, TlsFailed> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        // First the record an earlier read cut short: completed from this input a record at a
        // time, so that the rest of the input is decrypted where it lies.
        while !self.held.is_empty() && !input.is_empty() && !self.peer_closed {
            let take = match self.is_handshaking() {
                // A handshake message may span records that rustls keeps (already decrypted, and
                // moved) at the front: the front is no record header to measure by.
                true => input.len(),
                false => missing(&self.held).clamp(1, input.len()),
            };
            let (head, rest) = std::mem::take(&mut input).split_at_mut(take);
            input = rest;
            self.held.extend_from_slice(head);
            let mut held = std::mem::take(&mut self.held);
            let (done, stop) = self.pass(&mut held, Some(&mut *plain), None);
            held.drain(..done);
            self.held = held;
            if let Some(failed) = self.stopped(stop) {
                return Err(failed);
            }
        }
        if self.held.is_empty() {
            // Nothing held: no allocation kept for it.
            self.held = Vec::new();
            if !input.is_empty() && !self.peer_closed {
                let (done, stop) = self.pass(input, Some(&mut *plain), None);
                if let Some(failed) = self.stopped(stop) {
                    return Err(failed);
                }
                let rest = &input[done..];
                if !rest.is_empty() && !self.peer_closed {
                    // Room for the whole record, so completing it does not allocate again.
                    let whole = match self.is_handshaking() {
                        true => rest.len(),
                        false => rest.len() + missing(rest),
                    };
                    self.held = Vec::with_capacity(whole);
                    self.held.extend_from_slice(rest);
                }
            }
        }
        if self.peer_closed {
            // Nothing after close_notify is read.
            self.held = Vec::new();
        }
        self.take_keys();
        match self.failed {
            Some(failed) => Err(failed),
            None => Ok(self.peer_closed),
        }
    }

    /// Encrypts `plaintext` as application data: the records, with anything owed before them.
    /// Empty when nothing can be sent (before the handshake completes, after a failure or our
    /// close_notify).
    pub fn seal(&mut self, plaintext: &[u8]) -> Bytes {
        let mut out = std::mem::take(&mut self.owed);
        if self.failed.is_some() || self.closed || plaintext.is_empty() {
            return out.into();
        }
        if let Layer::Tls13(traffic) = &mut self.layer {
            let records = plaintext.len().div_ceil(MAX_FRAGMENT) as u64;
            if traffic.tx.seq + records > record_limit() && !traffic.update_tx(&mut out) {
                // As far as one key may go (about 16 million frames), with no secret to derive
                // the next one from: close.
                tracing::debug!("TLS record limit reached: closing");
                self.owed = out;
                self.close();
                return std::mem::take(&mut self.owed).into();
            }
            traffic.seal(APPLICATION_DATA, plaintext, &mut out);
            return out.into();
        }
        let mut held = std::mem::take(&mut self.held);
        let mut encrypt = |w: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
            write_with(out, |buf| w.encrypt(plaintext, buf))
        };
        let (done, _) = self.pass_into(&mut held, &mut out, None, Some(&mut encrypt));
        held.drain(..done);
        self.held = held;
        out.into()
    }

    /// Records owed to the peer that no [`TlsSession::seal`] carried yet.
    pub fn take_output(&mut self) -> Option<Bytes> {
        match self.owed.is_empty() {
            true => None,
            false => Some(std::mem::take(&mut self.owed).into()),
        }
    }

    /// Ends TLS (close_notify after what was sealed; nothing before the handshake completes or
    /// after an alert); the alert is in [`TlsSession::take_output`].
    pub fn close(&mut self) {
        if self.failed.is_some() || self.closed {
            return;
        }
        self.closed = true;
        if let Layer::Tls13(traffic) = &mut self.layer {
            traffic.seal(ALERT, &[1, CLOSE_NOTIFY], &mut self.owed);
            return;
        }
        let mut owed = std::mem::take(&mut self.owed);
        let mut held = std::mem::take(&mut self.held);
        let mut notify = |w: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
            write_with(out, |buf| w.queue_close_notify(buf))
        };
        let (done, _) = self.pass_into(&mut held, &mut owed, None, Some(&mut notify));
        held.drain(..done);
        self.held = held;
        self.owed = owed;
    }

    pub fn is_handshaking(&self) -> bool {
        match &self.layer {
            Layer::Rustls(handshake) => handshake.conn.is_handshaking(),
            Layer::Tls13(_) | Layer::Gone => false,
        }
    }

    /// Bytes of ciphertext the session holds between reads (a record a read cut short): 0 for
    /// an idle connection.
    pub fn held_bytes(&self) -> usize {
        self.held.capacity()
    }

    /// Whether the session protects records itself (TLS 1.3 after the handshake) rather than
    /// through rustls' connection.
    pub fn is_lean(&self) -> bool {
        matches!(self.layer, Layer::Tls13(_))
    }

    /// After a TLS 1.3 handshake, once rustls owes nothing: takes the traffic keys out of
    /// rustls and lets its connection go.
    fn take_keys(&mut self) {
        let Layer::Rustls(handshake) = &self.layer else { return };
        let conn = &handshake.conn;
        if !self.extract
            || self.failed.is_some()
            || self.peer_closed
            || self.closed
            || conn.is_handshaking()
            || conn.wants_write()
            || conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
        {
            return;
        }
        let Layer::Rustls(handshake) = std::mem::replace(&mut self.layer, Layer::Gone) else { return };
        let Handshake { conn, logged } = *handshake;
        match conn.dangerous_into_kernel_connection() {
            Ok((secrets, _kernel)) => match (Keys::new(secrets.tx), Keys::new(secrets.rx)) {
                (Some((aead, mut tx)), Some((_, mut rx))) => {
                    // The logged secrets, if they are the ones these keys came from.
                    tx.secret = logged.server.filter(|s| tx.derives_from(aead, s)).unwrap_or(Secret::NONE);
                    rx.secret = logged.client.filter(|s| rx.derives_from(aead, s)).unwrap_or(Secret::NONE);
                    self.layer = Layer::Tls13(Traffic { aead, tx, rx });
                }
                _ => self.broken("unknown traffic secrets"),
            },
            Err(error) => self.broken(&error.to_string()),
        }
    }

    /// The keys could not be taken out (rustls' connection is gone): the session is over, with
    /// nothing more to say.
    fn broken(&mut self, why: &str) {
        tracing::warn!(why, "TLS session lost its keys");
        self.failed = Some(TlsFailed { handshake: false });
        self.held = Vec::new();
    }

    /// What a pass's `stop` means for the session: the failure, if it failed.
    fn stopped(&mut self, stop: Stop) -> Option<TlsFailed> {
        match stop {
            Stop::Input => None,
            Stop::Failed(error) => Some(self.fail(&error, None)),
            Stop::Refused(alert, why) => Some(self.fail(&why, alert)),
        }
    }

    /// Marks the session broken and collects the alert owed for it: rustls' own, or `alert`.
    fn fail(&mut self, error: &dyn std::fmt::Display, alert: Option<u8>) -> TlsFailed {
        let failed = TlsFailed { handshake: self.is_handshaking() };
        tracing::debug!(%error, handshaking = failed.handshake, "TLS failed");
        self.failed = Some(failed);
        self.held = Vec::new();
        match &mut self.layer {
            Layer::Tls13(traffic) => {
                if let Some(alert) = alert {
                    // close_notify is a warning; every other alert sent is fatal.
                    let level = if alert == CLOSE_NOTIFY { 1 } else { 2 };
                    traffic.seal(ALERT, &[level, alert], &mut self.owed);
                }
            }
            // rustls hands out what it queued (the alert) before it looks at any input again:
            // asked only while it has something queued, it never reads the input it refused a
            // second time.
            Layer::Rustls(handshake) => {
                let conn = &mut handshake.conn;
                while conn.wants_write() {
                    let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
                    match state {
                        Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                            encode_into(&mut encode, &mut self.owed)
                        }
                        Ok(ConnectionState::ReadTraffic(mut records)) => {
                            while records.next_record().is_some() {}
                        }
                        _ => break,
                    }
                }
            }
            Layer::Gone => {}
        }
        failed
    }

    /// Runs the record layer over `buf` (the ciphertext not finished with, in order) until it
    /// needs more: decrypted data goes to `plain`, records owed to [`TlsSession::owed`].
    /// Returns how much of the front of `buf` is done with, and why it stopped.
    fn pass(
        &mut self,
        buf: &mut [u8],
        plain: Option<&mut Vec<u8>>,
        write: Option<&mut Writer<'_>>,
    ) -> (usize, Stop) {
        let mut owed = std::mem::take(&mut self.owed);
        let r = self.pass_into(buf, &mut owed, plain, write);
        self.owed = owed;
        r
    }

    /// [`TlsSession::pass`] with the owed records (and what `write` writes) going to `out`.
    fn pass_into(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        plain: Option<&mut Vec<u8>>,
        write: Option<&mut Writer<'_>>,
    ) -> (usize, Stop) {
        match &mut self.layer {
            Layer::Rustls(handshake) => {
                LOGGED.with(|l| std::mem::take(&mut *l.borrow_mut()));
                let r = drive(&mut handshake.conn, buf, plain, out, write, &mut self.peer_closed);
                // What the key log was given during this call is this session's.
                let logged = LOGGED.with(|l| std::mem::take(&mut *l.borrow_mut()));
                if logged.client.is_some() || logged.server.is_some() {
                    handshake.logged = logged;
                }
                r
            }
            Layer::Tls13(traffic) => match plain {
                Some(plain) => traffic.open(buf, plain, out, &mut self.peer_closed),
                None => (0, Stop::Input),
            },
            Layer::Gone => (0, Stop::Input),
        }
    }
}

impl Keys {
    /// One direction's keys as rustls hands them out, with their AEAD.
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Option<(&'static aead::Algorithm, Self)> {
        let (aead, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return None,
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != aead.key_len() || iv.len() != 12 {
            return None;
        }
        let mut keys = Self { key: [0; 32], iv: [0; 12], seq, secret: Secret::NONE };
        keys.key[..key.len()].copy_from_slice(key);
        keys.iv.copy_from_slice(iv);
        Some((aead, keys))
    }

    /// Whether `secret` is the traffic secret this key and IV derive from (RFC 8446 §7.3).
    fn derives_from(&self, aead: &'static aead::Algorithm, secret: &Secret) -> bool {
        let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
        let n = aead.key_len();
        let derived = expand_label(aead, secret.get(), b"key", &mut key[..n])
            && expand_label(aead, secret.get(), b"iv", &mut iv);
        let same = derived && key[..n] == self.key[..n] && iv == self.iv;
        zeroize::Zeroize::zeroize(&mut key);
        same
    }

    /// Moves to the next traffic secret and its key and IV (KeyUpdate, RFC 8446 §7.2); false
    /// when there is no secret to derive from.
    fn update(&mut self, aead: &'static aead::Algorithm) -> bool {
        let mut next = Secret::NONE;
        next.len = self.secret.len;
        let len = next.len as usize;
        if len == 0 || !expand_label(aead, self.secret.get(), b"traffic upd", &mut next.bytes[..len]) {
            return false;
        }
        let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
        let n = aead.key_len();
        if !expand_label(aead, next.get(), b"key", &mut key[..n])
            || !expand_label(aead, next.get(), b"iv", &mut iv)
        {
            return false;
        }
        self.key = key;
        self.iv = iv;
        self.secret = next;
        self.seq = 0;
        zeroize::Zeroize::zeroize(&mut key);
        true
    }

    /// The AEAD key, expanded for one read or one frame.
    fn expand(&self, aead: &'static aead::Algorithm) -> aead::LessSafeKey {
        let key =
            aead::UnboundKey::new(aead, &self.key[..aead.key_len()]).expect("a key of the AEAD's length");
        aead::LessSafeKey::new(key)
    }

    /// The next record's nonce: the IV XOR the sequence number (RFC 8446 §5.3).
    fn nonce(&mut self) -> aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        aead::Nonce::assume_unique_for_key(nonce)
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) of TLS 1.3 (RFC 8446 §7.1), with the hash of
/// `aead`'s suites (SHA-384 for AES-256-GCM, SHA-256 for the others); false if it cannot be.
fn expand_label(aead: &'static aead::Algorithm, secret: &[u8], label: &[u8], out: &mut [u8]) -> bool {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let hash = if aead == &aead::AES_256_GCM { hkdf::HKDF_SHA384 } else { hkdf::HKDF_SHA256 };
    if secret.len() != hkdf::KeyType::len(&hash) {
        return false;
    }
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    let prk = hkdf::Prk::new_less_safe(hash, secret);
    prk.expand(&info, Len(out.len())).and_then(|okm| okm.fill(out)).is_ok()
}

impl Traffic {
    /// Sends a KeyUpdate (not asking the peer for one) under the current keys, then moves to the
    /// next ones; false, sending nothing, when there is no secret to derive them from.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> bool {
        if self.tx.secret.len == 0 {
            return false;
        }
        let at = out.len();
        self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out);
        if !self.tx.update(self.aead) {
            out.truncate(at);
            return false;
        }
        true
    }

    /// Appends `data` as records of content type `typ` to `out`, each straight into `out`:
    /// header, data, inner type, tag. An empty `out` ends up exactly as long as its allocation.
    fn seal(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) {
        let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
        out.reserve_exact(data.len() + records * (HEADER + TLS13_OVERHEAD));
        let key = self.tx.expand(self.aead);
        let mut chunks = data.chunks(MAX_FRAGMENT);
        for _ in 0..records {
            let chunk = chunks.next().unwrap_or_default();
            let len = (chunk.len() + TLS13_OVERHEAD) as u16;
            let [hi, lo] = len.to_be_bytes();
            let header = [APPLICATION_DATA, 3, 3, hi, lo];
            out.extend_from_slice(&header);
            let at = out.len();
            out.extend_from_slice(chunk);
            out.push(typ);
            let nonce = self.tx.nonce();
            let tag = key
                .seal_in_place_separate_tag(nonce, aead::Aad::from(header), &mut out[at..])
                .expect("a record within the AEAD's limits");
            out.extend_from_slice(tag.as_ref());
        }
    }

    /// Opens the whole records at the front of `buf` in place, appending application data to
    /// `plain`. Returns how much of `buf` it is done with, and why it stopped.
    fn open(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        peer_closed: &mut bool,
    ) -> (usize, Stop) {
        let mut done = 0;
        // The receive key, expanded once for the records of this read.
        let mut cached = None;
        while !*peer_closed {
            let Some(header) = buf.get(done..done + HEADER) else { break };
            let header: [u8; HEADER] = header.try_into().expect("a header's length");
            let len = u16::from_be_bytes([header[3], header[4]]) as usize;
            // After the handshake every TLS 1.3 record is application data on the outside
            // (RFC 8446 §5.2), of a 1.x legacy version.
            if header[0] != APPLICATION_DATA {
                return (done, Stop::Refused(Some(UNEXPECTED_MESSAGE), "a record that is not protected"));
            }
            if header[1] != 3 {
                return (done, Stop::Refused(Some(DECODE_ERROR), "not a TLS record"));
            }
            if len > MAX_FRAGMENT + 256 {
                return (done, Stop::Refused(Some(RECORD_OVERFLOW), "a record over 2^14 + 256 bytes"));
            }
            let Some(record) = buf.get_mut(done + HEADER..done + HEADER + len) else { break };
            let key = cached.get_or_insert_with(|| self.rx.expand(self.aead));
            let nonce = self.rx.nonce();
            let Ok(opened) = key.open_in_place(nonce, aead::Aad::from(header), record) else {
                return (done, Stop::Refused(Some(BAD_RECORD_MAC), "a record that does not decrypt"));
            };
            // The content, then its type, then zero padding (§5.4).
            let Some(end) = opened.iter().rposition(|&b| b != 0) else {
                return (done, Stop::Refused(Some(UNEXPECTED_MESSAGE), "a record of padding only"));
            };
            let (content, typ) = (&opened[..end], opened[end]);
            if content.len() > MAX_FRAGMENT {
                return (done, Stop::Refused(Some(RECORD_OVERFLOW), "a record over 2^14 bytes"));
            }
            match (typ, content) {
                (APPLICATION_DATA, _) => plain.extend_from_slice(content),
                (ALERT, [_, CLOSE_NOTIFY]) => *peer_closed = true,
                (ALERT, [_, USER_CANCELED]) => {}
                (ALERT, [_, _]) => {
                    return (done + HEADER + len, Stop::Refused(None, "the peer sent an alert"))
                }
                (ALERT, _) => return (done, Stop::Refused(Some(DECODE_ERROR), "a malformed alert")),
                // A KeyUpdate, the only handshake message a client may send now (§4.6.3),
                // alone in its record (a message split over records is not taken).
                (HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, request]) => {
                    if request > 1 {
                        return (done, Stop::Refused(Some(ILLEGAL_PARAMETER), "a malformed KeyUpdate"));
                    }
                    // Without the secret: close cleanly, and the client reconnects.
                    if !self.rx.update(self.aead) {
                        let why = "the peer updated its keys (no secret to follow)";
                        return (done + HEADER + len, Stop::Refused(Some(CLOSE_NOTIFY), why));
                    }
                    cached = None;
                    // Asked for ours too: sent before anything else under the new keys.
                    if request == 1 && !self.update_tx(out) {
                        let why = "the peer asked for a key update (no secret to make one)";
                        return (done + HEADER + len, Stop::Refused(Some(CLOSE_NOTIFY), why));
                    }
                }
                _ => return (done, Stop::Refused(Some(UNEXPECTED_MESSAGE), "an unexpected message")),
            }
            done += HEADER + len;
        }
        (done, Stop::Input)
    }
}

/// What may be written once the connection can send application data: encrypted data, or
/// close_notify, appended to the buffer given.
type Writer<'a> = dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) + 'a;

/// Drives rustls' state machine over `buf` until it needs more input, has finished, or
/// failed, handing each state what it asks for. At `WriteTraffic` (the connection can send and
/// has nothing owed) `write`, if any, runs once. Returns how much of the front of `buf` rustls
/// is done with.
fn drive(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    mut plain: Option<&mut Vec<u8>>,
    owed: &mut Vec<u8>,
    mut write: Option<&mut Writer<'_>>,
    peer_closed: &mut bool,
) -> (usize, Stop) {
    let mut done = 0;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut buf[done..]);
        let state = match state {
            Ok(state) => state,
            Err(error) => return (done + discard, Stop::Failed(error)),
        };
        let more = match state {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            if let Some(plain) = plain.as_deref_mut() {
                                plain.extend_from_slice(record.payload);
                            }
                        }
                        Err(error) => return (done + discard, Stop::Failed(error)),
                    }
                }
                true
            }
            ConnectionState::ReadEarlyData(mut records) => {
                // The config accepts no early data; none is read if a client sends some.
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => discard += record.discard,
                        Err(error) => return (done + discard, Stop::Failed(error)),
                    }
                }
                true
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, owed);
                true
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // What was encoded is in `owed`, which the shard queues before anything else.
                transmit.done();
                true
            }
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                true
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                if let Some(write) = write.take() {
                    write(&mut traffic, owed);
                }
                false
            }
            // BlockedHandshake (more input needed), Closed, and states rustls may add.
            _ => false,
        };
        done += discard;
        if !more {
            return (done, Stop::Input);
        }
    }
}

/// Appends a handshake record (or alert) rustls has ready to `out`.
fn encode_into(encode: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    let at = out.len();
    let need = match encode.encode(&mut []) {
        Err(EncodeError::InsufficientSize(e)) => e.required_size,
        Ok(_) | Err(_) => return,
    };
    out.resize(at + need, 0);
    match encode.encode(&mut out[at..]) {
        Ok(n) => out.truncate(at + n),
        Err(_) => out.truncate(at),
    }
}

/// Appends what `write` writes to `out`, after asking it with no room how much it needs: so an
/// empty `out` ends up exactly as long as its allocation (and its `Bytes` needs no second one).
fn write_with(out: &mut Vec<u8>, mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>) {
    let need = match write(&mut []) {
        Err(EncryptError::InsufficientSize(e)) => e.required_size,
        Ok(_) | Err(_) => return,
    };
    let at = out.len();
    out.reserve_exact(need);
    out.resize(at + need, 0);
    match write(&mut out[at..]) {
        Ok(n) => out.truncate(at + n),
        Err(_) => out.truncate(at),
    }
}

/// Bytes still missing from the record at the front of `buf` (at least 1 when only part of a
/// header is there).
fn missing(buf: &[u8]) -> usize {
    match buf.get(3..HEADER) {
        Some(len) => (HEADER + u16::from_be_bytes([len[0], len[1]]) as usize).saturating_sub(buf.len()),
        None => HEADER - buf.len(),
    }
}

/// Test certificates and a client to talk to a [`TlsSession`] in memory.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    pub use crate::testkit::tls::{client, client_input, client_output};

    /// A server config for `localhost` and a client config trusting it.
    pub fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        configs_for(rustls::DEFAULT_VERSIONS)
    }

    /// [`configs`] with a client that speaks only `versions`.
    pub fn configs_for(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        configs_with(versions, None)
    }

    /// [`configs`] with a client that speaks only `versions` and, if given, `suite`. The server
    /// resumes sessions by stateless tickets and lets its keys be taken out, as the gateway's
    /// does.
    pub fn configs_with(
        versions: &[&'static rustls::SupportedProtocolVersion],
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let provider = gochat_runtime::tls::provider();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
        server.enable_secret_extraction = true;
        server.key_log = super::key_log();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
        let mut client_provider = (*provider).clone();
        if let Some(suite) = suite {
            client_provider.cipher_suites = vec![suite];
        }
        let client = ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::{Read, Write};

    thread_local! {
        /// A record limit for this test's thread (see `record_limit`).
        pub(super) static RECORD_LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
    }

    use rustls::{AlertDescription, ClientConnection, HandshakeKind};

    use super::testing::*;
    use super::*;

    /// Runs a handshake in whole reads; returns the session and its client.
    fn established(
        server: &Arc<ServerConfig>,
        client_config: &Arc<ClientConfig>,
    ) -> (TlsSession, ClientConnection) {
        established_in(server, client_config, usize::MAX)
    }

    /// Runs a handshake in reads of at most `piece` bytes, so that records split across reads
    /// are reassembled; returns the session and its client.
    fn established_in(
        server: &Arc<ServerConfig>,
        client_config: &Arc<ClientConfig>,
        piece: usize,
    ) -> (TlsSession, ClientConnection) {
        let mut s = TlsSession::new(server.clone()).unwrap();
        let mut c = client(client_config);
        let mut plain = Vec::new();
        while c.is_handshaking() || s.is_handshaking() || c.wants_write() {
            for read in client_output(&mut c).chunks_mut(piece) {
                assert_eq!(s.receive(read, &mut plain), Ok(false));
            }
            if let Some(out) = s.take_output() {
                client_input(&mut c, &out);
            }
        }
        assert!(plain.is_empty());
        assert_eq!(s.held_bytes(), 0);
        (s, c)
    }

    /// The records the client sends for `plain`, written in one piece.
    fn records(c: &mut ClientConnection, plain: &[u8]) -> Vec<u8> {
        c.writer().write_all(plain).unwrap();
        client_output(c)
    }

    use rustls::ClientConfig;

    #[test]
    fn handshake_then_data_both_ways() {
        let (server, client_config) = configs();
        // Byte-sized pieces: records split across reads are reassembled; nothing is held once
        // the handshake is over.
        let (mut s, mut c) = established_in(&server, &client_config, 1);
        let mut plain = Vec::new();
        c.writer().write_all(b"GET /ws HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(s.receive(&mut client_output(&mut c), &mut plain), Ok(false));
        assert_eq!(plain, b"GET /ws HTTP/1.1\r\n\r\n");
        let big = vec![b'x'; 100_000];
        let sealed = s.seal(&big);
        // TLS 1.3: 5 bytes of header, 1 of content type and 16 of tag per 16 KiB record.
        assert_eq!(sealed.len(), big.len() + big.len().div_ceil(16384) * 22);
        let got = client_input(&mut c, &sealed);
        assert_eq!(got.len(), big.len());
        // close_notify from the peer.
        c.send_close_notify();
        plain.clear();
        assert_eq!(s.receive(&mut client_output(&mut c), &mut plain), Ok(true));
        assert_eq!(s.receive(&mut records(&mut c, b"late"), &mut plain), Ok(true), "nothing read after it");
        assert!(plain.is_empty());
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn a_plain_client_fails_the_handshake_with_an_alert() {
        let (server, _) = configs();
        let mut s = TlsSession::new(server).unwrap();
        let mut plain = Vec::new();
        let r = s.receive(&mut b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &mut plain);
        assert_eq!(r, Err(TlsFailed { handshake: true }));
        assert!(plain.is_empty());
        let alert = s.take_output().expect("an alert is owed");
        assert_eq!(
            &alert[..],
            &[0x15, 3, 3, 0, 2, 2, AlertDescription::DecodeError.into()],
            "one fatal alert"
        );
        assert!(s.take_output().is_none());
        assert_eq!(s.receive(&mut b"more".to_vec(), &mut plain), Err(TlsFailed { handshake: true }));
        assert!(s.seal(b"x").is_empty(), "nothing is sent on a broken session");
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn a_record_split_at_every_byte_boundary_is_reassembled() {
        let (server, client_config) = configs();
        let (mut s, mut c) = established(&server, &client_config);
        let message = b"{\"op\":3,\"msg\":\"split me anywhere\"}";
        let mut plain = Vec::new();
        // One record, then two back to back, cut at every byte.
        for count in [1, 2] {
            let mut whole = Vec::new();
            for _ in 0..count {
                whole.extend(records(&mut c, message));
            }
            plain.clear();
            assert_eq!(s.receive(&mut whole, &mut plain), Ok(false));
            assert_eq!(plain, message.repeat(count));
            let (len, record) = (whole.len(), whole.len() / count);
            for cut in 1..len {
                let mut bytes = Vec::new();
                for _ in 0..count {
                    bytes.extend(records(&mut c, message));
                }
                let (head, tail) = bytes.split_at_mut(cut);
                plain.clear();
                assert_eq!(s.receive(head, &mut plain), Ok(false));
                if cut % record != 0 {
                    assert!(s.held_bytes() > 0, "the cut record is held");
                }
                assert_eq!(s.receive(tail, &mut plain), Ok(false));
                assert_eq!(plain, message.repeat(count), "{count} records cut at {cut}");
                assert_eq!(s.held_bytes(), 0, "and let go once whole");
            }
        }
    }

    #[test]
    fn several_records_in_one_read() {
        let (server, client_config) = configs();
        let (mut s, mut c) = established(&server, &client_config);
        let mut bytes = Vec::new();
        for part in [&b"one"[..], b"two", b"three"] {
            bytes.extend(records(&mut c, part));
        }
        let mut plain = Vec::new();
        assert_eq!(s.receive(&mut bytes, &mut plain), Ok(false));
        assert_eq!(plain, b"onetwothree");
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn messages_bigger_than_a_record_both_ways() {
        let (server, client_config) = configs();
        let (mut s, mut c) = established(&server, &client_config);
        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        // Three records in one read, then in reads that end mid-record.
        let mut plain = Vec::new();
        assert_eq!(s.receive(&mut records(&mut c, &big), &mut plain), Ok(false));
        assert_eq!(plain, big);
        let mut bytes = records(&mut c, &big);
        plain.clear();
        for piece in bytes.chunks_mut(1000) {
            assert_eq!(s.receive(piece, &mut plain), Ok(false));
            assert!(s.held_bytes() <= 16384 + 22, "at most one record held: {}", s.held_bytes());
        }
        assert_eq!(plain, big);
        assert_eq!(s.held_bytes(), 0);
        // A read that ends mid-record holds exactly that record, until it is whole.
        let mut bytes = records(&mut c, b"hello");
        let (head, tail) = bytes.split_at_mut(8);
        plain.clear();
        assert_eq!(s.receive(head, &mut plain), Ok(false));
        assert_eq!(s.held_bytes(), 5 + 5 + 1 + 16, "room for the whole record");
        assert!(plain.is_empty());
        assert_eq!(s.receive(tail, &mut plain), Ok(false));
        assert_eq!((&plain[..], s.held_bytes()), (&b"hello"[..], 0));
        // Server to client: one frame, several records, one buffer.
        let sealed = s.seal(&big);
        assert_eq!(client_input(&mut c, &sealed), big);
    }

    #[test]
    fn a_malformed_record_gets_an_alert_and_a_failure_not_a_panic() {
        let (server, client_config) = configs();
        let corrupt: [fn(&mut Vec<u8>); 4] = [
            |r| *r.last_mut().unwrap() ^= 1,                      // a bad tag
            |r| r[0] = 0x42,                                      // no such content type
            |r| r[3..5].copy_from_slice(&u16::MAX.to_be_bytes()), // longer than a record may be
            |r| r[1] = 0x07,                                      // no such version
        ];
        for (i, corrupt) in corrupt.iter().enumerate() {
            let (mut s, mut c) = established(&server, &client_config);
            let mut bytes = records(&mut c, b"hello");
            corrupt(&mut bytes);
            let mut plain = Vec::new();
            assert_eq!(s.receive(&mut bytes, &mut plain), Err(TlsFailed { handshake: false }), "case {i}");
            assert!(plain.is_empty());
            let alert = s.take_output().expect("an alert is owed");
            assert_eq!(alert[0], 0x17, "an encrypted record (TLS 1.3 hides the alert)");
            c.read_tls(&mut &alert[..]).unwrap();
            assert!(
                matches!(c.process_new_packets(), Err(rustls::Error::AlertReceived(_))),
                "case {i}: the client reads a fatal alert"
            );
            let mut more = [0x17, 3, 3, 0, 1, b'x'];
            assert_eq!(s.receive(&mut more, &mut plain), Err(TlsFailed { handshake: false }));
            assert!(s.seal(b"x").is_empty() && s.take_output().is_none());
            s.close();
            assert!(s.take_output().is_none(), "no close_notify after an alert");
        }
    }

    #[test]
    fn garbage_anywhere_never_panics() {
        let (server, client_config) = configs();
        let mut x: u32 = 0x9e37_79b9;
        let mut random = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for round in 0..200 {
            let (mut s, mut c) = match round % 2 {
                0 => (TlsSession::new(server.clone()).unwrap(), client(&client_config)),
                _ => established(&server, &client_config),
            };
            // A real start, then bytes of noise (and, sometimes, a plausible header), in pieces.
            let mut bytes = match round % 2 {
                0 => client_output(&mut c),
                _ => records(&mut c, b"hello"),
            };
            let keep = random() as usize % (bytes.len() + 1);
            bytes.truncate(keep);
            for _ in 0..random() % 64 {
                bytes.push(random() as u8);
            }
            if round % 3 == 0 {
                bytes.extend_from_slice(&[0x17, 3, 3, (random() % 0x48) as u8, random() as u8]);
            }
            let mut plain = Vec::new();
            let mut failed = false;
            for piece in bytes.chunks_mut(1 + random() as usize % 17) {
                match s.receive(piece, &mut plain) {
                    Ok(_) => assert!(!failed, "a broken session stays broken"),
                    Err(_) => failed = true,
                }
                s.take_output();
            }
            s.seal(b"after");
            s.close();
            s.take_output();
        }
    }

    #[test]
    fn tls12_handshake_split_byte_by_byte_data_and_close_notify() {
        let (server, client_config) = configs_for(&[&rustls::version::TLS12]);
        let (mut s, mut c) = established_in(&server, &client_config, 1);
        let mut plain = Vec::new();
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(s.receive(&mut records(&mut c, b"ping"), &mut plain), Ok(false));
        assert_eq!(plain, b"ping");
        let big = vec![7u8; 50_000];
        assert_eq!(client_input(&mut c, &s.seal(&big)), big);
        s.close();
        let notify = s.take_output().expect("close_notify");
        assert!(client_input(&mut c, &notify).is_empty());
        let mut rest = Vec::new();
        assert_eq!(c.reader().read_to_end(&mut rest).unwrap(), 0, "the client saw close_notify");
        assert!(s.seal(b"after").is_empty(), "nothing sealed after close_notify");
        c.send_close_notify();
        assert_eq!(s.receive(&mut client_output(&mut c), &mut plain), Ok(true));
    }

    #[test]
    fn session_tickets_reach_the_client_and_let_it_resume() {
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
            let (server, client_config) = configs_for(versions);
            let (_s, c) = established(&server, &client_config);
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
            let (_s, c) = established(&server, &client_config);
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed), "{versions:?}");
        }
    }

    #[test]
    fn close_notify_both_ways() {
        let (server, client_config) = configs();
        let (mut s, mut c) = established(&server, &client_config);
        let frame = s.seal(b"bye");
        s.close();
        let notify = s.take_output().expect("close_notify");
        assert_eq!(client_input(&mut c, &[&frame[..], &notify[..]].concat()), b"bye");
        let mut rest = Vec::new();
        assert_eq!(c.reader().read_to_end(&mut rest).unwrap(), 0, "the client saw close_notify");
        s.close();
        assert!(s.take_output().is_none(), "one close_notify");
        c.send_close_notify();
        let mut plain = Vec::new();
        assert_eq!(s.receive(&mut client_output(&mut c), &mut plain), Ok(true));
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn every_tls13_suite_after_the_handshake_on_the_lean_layer() {
        use rustls::crypto::ring::cipher_suite::*;
        for suite in [TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256] {
            let (server, client_config) = configs_with(&[&rustls::version::TLS13], Some(suite));
            let (mut s, mut c) = established(&server, &client_config);
            assert_eq!(c.negotiated_cipher_suite(), Some(suite));
            assert!(s.is_lean(), "{suite:?}: rustls' connection let go");
            let mut plain = Vec::new();
            // Client to server: whole, several records, cut at every byte of two records.
            let big: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
            assert_eq!(s.receive(&mut records(&mut c, &big), &mut plain), Ok(false));
            assert_eq!(plain, big);
            // (Two records of 5 + 5 + 17 and 5 + 6 + 17 bytes.)
            for cut in 1..55 {
                let mut bytes = [records(&mut c, b"first"), records(&mut c, b"second")].concat();
                assert_eq!(bytes.len(), 55);
                let (head, tail) = bytes.split_at_mut(cut);
                plain.clear();
                assert_eq!(s.receive(head, &mut plain), Ok(false));
                assert_eq!(s.receive(tail, &mut plain), Ok(false));
                assert_eq!((&plain[..], s.held_bytes()), (&b"firstsecond"[..], 0), "{suite:?} cut at {cut}");
            }
            // Server to client: small and big frames, then close_notify both ways.
            for size in [0, 1, 200, 16384, 16385, 100_000] {
                let frame = vec![size as u8; size];
                let sealed = s.seal(&frame);
                assert_eq!(sealed.len(), size + size.div_ceil(16384) * 22, "{suite:?} {size}");
                assert_eq!(client_input(&mut c, &sealed), frame);
            }
            s.close();
            assert!(client_input(&mut c, &s.take_output().unwrap()).is_empty());
            let mut rest = Vec::new();
            assert_eq!(c.reader().read_to_end(&mut rest).unwrap(), 0, "the client saw close_notify");
            c.send_close_notify();
            assert_eq!(s.receive(&mut client_output(&mut c), &mut plain), Ok(true));
        }
    }

    #[test]
    fn a_config_that_keeps_the_keys_in_rustls_works_alike() {
        let (server, client_config) = configs();
        let mut server = (*server).clone();
        server.enable_secret_extraction = false;
        let (mut s, mut c) = established(&Arc::new(server), &client_config);
        assert!(!s.is_lean());
        let mut plain = Vec::new();
        assert_eq!(s.receive(&mut records(&mut c, b"hi"), &mut plain), Ok(false));
        assert_eq!(plain, b"hi");
        assert_eq!(client_input(&mut c, &s.seal(b"there")), b"there");
    }

    #[test]
    fn key_updates_are_followed_both_ways_on_every_suite() {
        use rustls::crypto::ring::cipher_suite::*;
        for suite in [TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256] {
            let (server, client_config) = configs_with(&[&rustls::version::TLS13], Some(suite));
            let (mut s, mut c) = established(&server, &client_config);
            assert!(s.is_lean());
            let mut plain = Vec::new();
            for round in 0..3 {
                // The client updates its keys and asks for ours (rustls always asks).
                c.refresh_traffic_keys().unwrap();
                let mut bytes = [client_output(&mut c), records(&mut c, b"after")].concat();
                plain.clear();
                assert_eq!(s.receive(&mut bytes, &mut plain), Ok(false), "{suite:?} round {round}");
                assert_eq!(plain, b"after");
                // Our KeyUpdate comes first, then records under the new keys.
                let sealed = s.seal(b"and back");
                assert_eq!(client_input(&mut c, &sealed), b"and back", "{suite:?} round {round}");
            }
            // Our own, at the record limit (made small).
            let seq = |s: &TlsSession| match &s.layer {
                Layer::Tls13(t) => t.tx.seq,
                _ => unreachable!(),
            };
            RECORD_LIMIT.set(Some(seq(&s) + 2));
            for frame in [&b"one"[..], b"two", b"three"] {
                assert_eq!(client_input(&mut c, &s.seal(frame)), frame, "{suite:?}");
            }
            assert_eq!(seq(&s), 1, "a KeyUpdate under the old key, then one record under the new");
            RECORD_LIMIT.set(None);
        }
    }

    #[test]
    fn without_the_secrets_a_key_update_closes_cleanly() {
        let (server, client_config) = configs();
        let mut server = (*server).clone();
        server.key_log = Arc::new(rustls::NoKeyLog);
        let (mut s, mut c) = established(&Arc::new(server.clone()), &client_config);
        assert!(s.is_lean());
        c.refresh_traffic_keys().unwrap();
        let mut plain = Vec::new();
        let mut bytes = [client_output(&mut c), records(&mut c, b"after")].concat();
        assert_eq!(s.receive(&mut bytes, &mut plain), Err(TlsFailed { handshake: false }));
        assert!(plain.is_empty());
        assert!(client_input(&mut c, &s.take_output().expect("close_notify")).is_empty());
        let mut rest = Vec::new();
        assert_eq!(c.reader().read_to_end(&mut rest).unwrap(), 0, "the client saw close_notify");
        // And at the record limit (made small).
        let (mut s, mut c) = established(&Arc::new(server), &client_config);
        let Layer::Tls13(traffic) = &s.layer else { panic!("lean") };
        RECORD_LIMIT.set(Some(traffic.tx.seq + 1));
        assert_eq!(client_input(&mut c, &s.seal(b"last")), b"last");
        assert!(client_input(&mut c, &s.seal(b"over")).is_empty(), "close_notify instead");
        assert_eq!(c.reader().read_to_end(&mut rest).unwrap(), 0, "the client saw close_notify");
        RECORD_LIMIT.set(None);
    }

    #[test]
    fn a_malformed_key_update_is_refused() {
        let (server, client_config) = configs();
        let (mut s, _c) = established(&server, &client_config);
        let Layer::Tls13(traffic) = &mut s.layer else { panic!("lean") };
        // A record the client could have sent: sealed with the client's keys (our receive keys).
        let mut peer = Traffic {
            aead: traffic.aead,
            tx: Keys { key: traffic.rx.key, iv: traffic.rx.iv, seq: traffic.rx.seq, secret: Secret::NONE },
            rx: Keys { key: [0; 32], iv: [0; 12], seq: 0, secret: Secret::NONE },
        };
        let mut bytes = Vec::new();
        peer.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 7], &mut bytes);
        let mut plain = Vec::new();
        assert_eq!(s.receive(&mut bytes, &mut plain), Err(TlsFailed { handshake: false }));
        assert!(s.take_output().is_some(), "illegal_parameter");
    }

    #[test]
    fn a_fatal_alert_from_the_peer_ends_the_session_without_a_reply() {
        let (server, client_config) = configs();
        let (mut s, mut c) = established(&server, &client_config);
        // A record the client cannot decrypt: it answers with a fatal alert.
        let mut sealed = s.seal(b"hello").to_vec();
        *sealed.last_mut().unwrap() ^= 1;
        c.read_tls(&mut &sealed[..]).unwrap();
        assert!(c.process_new_packets().is_err());
        let mut plain = Vec::new();
        assert_eq!(s.receive(&mut client_output(&mut c), &mut plain), Err(TlsFailed { handshake: false }));
        assert!(s.take_output().is_none(), "no alert answers an alert");
    }

    #[test]
    fn a_record_cut_as_the_handshake_ends_is_read_on_the_lean_layer() {
        let (server, client_config) = configs();
        let mut s = TlsSession::new(server).unwrap();
        let mut c = client(&client_config);
        let mut plain = Vec::new();
        while c.is_handshaking() {
            assert_eq!(s.receive(&mut client_output(&mut c), &mut plain), Ok(false));
            client_input(&mut c, &s.take_output().unwrap());
        }
        // The client's Finished and its first record in one write, cut 3 bytes before the end.
        c.writer().write_all(b"first words").unwrap();
        let mut bytes = client_output(&mut c);
        let cut = bytes.len() - 3;
        let (head, tail) = bytes.split_at_mut(cut);
        assert_eq!(s.receive(head, &mut plain), Ok(false));
        assert!(s.is_lean() && s.held_bytes() > 0, "{s:?}");
        client_input(&mut c, &s.take_output().expect("session tickets"));
        assert_eq!(s.receive(tail, &mut plain), Ok(false));
        assert_eq!((&plain[..], s.held_bytes()), (&b"first words"[..], 0));
        assert_eq!(client_input(&mut c, &s.seal(b"welcome")), b"welcome");
    }
}
