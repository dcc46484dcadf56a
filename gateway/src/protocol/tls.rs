//! TLS for `wss://` connections, sans-IO: rustls' server connection sits between the bytes the
//! driver reads and writes and the connection's codec. Ciphertext in, plaintext out for the
//! codec; plaintext frames in, records out for the connection's output queue. Only connections
//! accepted on the wss listener have a session; plain ones never touch this module.

use std::io::{BufRead, Write};
use std::sync::Arc;

use bytes::Bytes;
use rustls::{ServerConfig, ServerConnection};

/// The peer broke TLS (for a handshake: a plain client, a scanner, a client that does not
/// trust the certificate). The alert owed, if any, is in [`TlsSession::take_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFailed {
    /// Whether it failed before the handshake completed.
    pub handshake: bool,
}

/// One connection's TLS state.
pub struct TlsSession(ServerConnection);

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession").field("handshaking", &self.0.is_handshaking()).finish()
    }
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        // The shard bounds each connection's output itself and drains rustls after every write,
        // so rustls never holds output between calls: its own limit would only split frames.
        conn.set_buffer_limit(None);
        Ok(Self(conn))
    }

    /// Takes ciphertext the peer sent and appends what it decrypts to `plain`. `Ok(true)` when
    /// the peer closed TLS (close_notify). Records owed in reply (handshake messages, session
    /// tickets, alerts) wait in [`TlsSession::take_output`].
    pub fn receive(&mut self, mut input: &[u8], plain: &mut Vec<u8>) -> Result<bool, TlsFailed> {
        let failed = |conn: &ServerConnection, error: &dyn std::fmt::Display| {
            tracing::debug!(%error, handshaking = conn.is_handshaking(), "TLS failed");
            TlsFailed { handshake: conn.is_handshaking() }
        };
        while !input.is_empty() {
            // rustls buffers up to a record's worth per call: take the input in steps.
            match self.0.read_tls(&mut input) {
                Ok(0) => break, // close_notify came earlier; nothing more is read
                Ok(_) => {}
                Err(e) => return Err(failed(&self.0, &e)),
            }
            if let Err(e) = self.0.process_new_packets() {
                return Err(failed(&self.0, &e));
            }
            let mut reader = self.0.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => return Ok(true),
                    Ok(chunk) => {
                        let n = chunk.len();
                        plain.extend_from_slice(chunk);
                        reader.consume(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(failed(&self.0, &e)),
                }
            }
        }
        Ok(false)
    }

    /// Encrypts `plaintext` as application data; the records, with anything owed before them.
    pub fn seal(&mut self, plaintext: &[u8]) -> Bytes {
        // With no buffer limit rustls takes all of it; a write cannot fail.
        let _ = self.0.writer().write_all(plaintext);
        let mut out = Vec::with_capacity(plaintext.len() + 22 * (1 + plaintext.len() / 16384));
        self.drain(&mut out);
        out.into()
    }

    /// Records owed to the peer that no [`TlsSession::seal`] carried yet.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if !self.0.wants_write() {
            return None;
        }
        let mut out = Vec::new();
        self.drain(&mut out);
        Some(out.into())
    }

    /// Ends TLS (close_notify); the alert is in [`TlsSession::take_output`].
    pub fn close(&mut self) {
        self.0.send_close_notify();
    }

    pub fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        while self.0.wants_write() {
            // Writing into a Vec cannot fail.
            if self.0.write_tls(out).is_err() {
                break;
            }
        }
    }
}

/// Test certificates and a client to talk to a [`TlsSession`] in memory.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

    /// A server config for `localhost` and a client config trusting it.
    pub fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let provider = gochat_runtime::tls::provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    pub fn client(config: &Arc<ClientConfig>) -> ClientConnection {
        ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// What the client has to send.
    pub fn client_output(c: &mut ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Feeds server bytes to the client; returns the plaintext it got.
    pub fn client_input(c: &mut ClientConnection, mut bytes: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut plain = Vec::new();
        while !bytes.is_empty() {
            c.read_tls(&mut bytes).unwrap();
            c.process_new_packets().unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = c.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                plain.extend_from_slice(&buf[..n]);
            }
        }
        plain
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::testing::*;
    use super::*;

    #[test]
    fn handshake_then_data_both_ways() {
        let (server, client_config) = configs();
        let mut s = TlsSession::new(server).unwrap();
        let mut c = client(&client_config);
        let mut plain = Vec::new();
        // Byte-sized pieces: records split across reads are reassembled.
        while c.is_handshaking() || s.is_handshaking() {
            for b in client_output(&mut c) {
                assert_eq!(s.receive(&[b], &mut plain), Ok(false));
            }
            if let Some(out) = s.take_output() {
                client_input(&mut c, &out);
            }
        }
        assert!(plain.is_empty());
        c.writer().write_all(b"GET /ws HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(s.receive(&client_output(&mut c), &mut plain), Ok(false));
        assert_eq!(plain, b"GET /ws HTTP/1.1\r\n\r\n");
        let big = vec![b'x'; 100_000];
        let sealed = s.seal(&big);
        assert!(sealed.len() > big.len() && sealed.len() < big.len() + 200, "{}", sealed.len());
        let got = client_input(&mut c, &sealed);
        assert_eq!(got.len(), big.len());
        // close_notify from the peer.
        c.send_close_notify();
        plain.clear();
        assert_eq!(s.receive(&client_output(&mut c), &mut plain), Ok(true));
    }

    #[test]
    fn a_plain_client_fails_the_handshake_with_an_alert() {
        let (server, _) = configs();
        let mut s = TlsSession::new(server).unwrap();
        let mut plain = Vec::new();
        let r = s.receive(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain);
        assert_eq!(r, Err(TlsFailed { handshake: true }));
        assert!(plain.is_empty());
        let alert = s.take_output().expect("an alert is owed");
        assert_eq!(alert[0], 0x15, "a TLS alert record");
    }
}
