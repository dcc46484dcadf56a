//! The wss TLS session on arbitrary bytes: what a client sends before and during a handshake,
//! cut into reads of every size. It must never panic, stay failed once it failed, and hold no
//! more than it was given (a record a read cut short, in an allocation that may have doubled).
#![no_main]

use std::sync::{Arc, OnceLock};

use gochat_gateway::protocol::tls::TlsSession;
use libfuzzer_sys::fuzz_target;

/// A server config for a certificate made once (TLS 1.2 and 1.3, as the gateway's).
fn config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert =
                rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)
                .unwrap();
            config.enable_secret_extraction = true;
            Arc::new(config)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let mut session = TlsSession::new(config()).unwrap();
    let mut bytes = input.to_vec();
    let mut plain = Vec::new();
    let mut failed = false;
    for piece in bytes.chunks_mut(1 + cut as usize) {
        match session.receive(piece, &mut plain) {
            Ok(_) => assert!(!failed, "a failed session stays failed"),
            Err(_) => failed = true,
        }
        let bound = 2 * input.len().max(8);
        assert!(session.held_bytes() <= bound, "holds {} of {}", session.held_bytes(), input.len());
        session.take_output();
    }
    assert!(plain.is_empty(), "no handshake, no plaintext");
    session.seal(b"after");
    session.close();
    session.take_output();
});
