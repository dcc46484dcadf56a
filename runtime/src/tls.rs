//! Server certificates for the TLS listeners (the gateway's `wss://`, control's HTTPS): read
//! from PEM files at start-up and read again when the files change (polled) or on SIGHUP. A
//! handshake takes whatever certificate is current; connections already open keep theirs. A
//! replacement that does not load (missing, bad PEM, a key that does not match) is logged and
//! the current certificate stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// How often a watched certificate's files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {source}", key.display())]
    Key { key: PathBuf, source: rustls::Error },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// The crypto every TLS endpoint of gochat-rs uses (ring), chosen explicitly so that another
/// crate enabling a second provider cannot make the process default ambiguous.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// Reads a certificate chain and its private key from PEM files and checks that they belong
/// together.
pub fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source });
    let pem_err = |path: &Path, what: String| TlsError::Pem { path: path.into(), what };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => pem_err(key, "no private key in it".into()),
        e => pem_err(key, format!("bad PEM: {e}")),
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::Key { key: key.into(), source })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(TlsError::Mismatch { cert: cert.into(), key: key.into() })
        }
        Err(e) => Err(pem_err(cert, format!("unusable certificate: {e}"))),
    }
}

/// What identifies one version of a file: replacing it (rename) or rewriting it changes this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks, so a swapped link (as Kubernetes secrets do) counts as a change.
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// A server certificate that can be replaced while the server runs; the resolver of the
/// listener's [`ServerConfig`].
#[derive(Debug)]
pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last read, loaded or not, so a bad replacement is reported once.
    seen: Mutex<(Option<FileStamp>, Option<FileStamp>)>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl ServerCert {
    /// Reads the certificate and key; an error says which file is wrong and how.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let seen = (stamp(cert), stamp(key));
        let current = read_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert_path: cert.into(),
            key_path: key.into(),
            current: RwLock::new(Arc::new(current)),
            seen: Mutex::new(seen),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        }))
    }

    /// Replacements loaded since start-up.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Replacements that did not load (the certificate in use stayed).
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the files again when either changed since they were last read. `Ok(true)`: a new
    /// certificate is in use; an error leaves the current one in place.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return Ok(false);
            }
            // Stamped before reading: a write racing the read changes the stamp again, so the
            // next check reads once more.
            *seen = now;
        }
        self.swap().map(|()| true)
    }

    /// Reads the files again whether or not they look changed (SIGHUP); an error leaves the
    /// current certificate in place.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            (stamp(&self.cert_path), stamp(&self.key_path));
        self.swap()
    }

    fn swap(&self) -> Result<(), TlsError> {
        let fresh = match read_pair(&self.cert_path, &self.key_path) {
            Ok(fresh) => Arc::new(fresh),
            Err(e) => {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A server config (TLS 1.2 and 1.3, HTTP/1.1 by ALPN: both listeners speak HTTP/1.1 before
    /// anything else) whose handshakes take this certificate as it is at the time.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Stateless resumption tickets: a reconnecting client skips the certificate signature
        // (cheaper reconnect storms) and the server keeps nothing per client for it. The
        // default would keep resumable sessions in one small cache behind a lock shared by
        // every shard.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Arc::new(config))
    }

    /// Checks the files every `every` and on SIGHUP, on the current tokio runtime, until the
    /// returned guard is dropped. `what` names the listener in the log.
    pub fn watch(self: Arc<Self>, every: Duration, what: &'static str) -> Watch {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before returning, so a SIGHUP right after start-up reloads rather than
        // terminating the process (the default action).
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; {what} certificate reloads by polling only");
                None
            }
        };
        Watch(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    got = async {
                        match hangup.as_mut() {
                            Some(s) => s.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if got.is_none() {
                            hangup = None;
                            continue;
                        }
                        true
                    }
                };
                let result = if forced { self.reload().map(|()| true) } else { self.reload_if_changed() };
                match result {
                    Ok(true) => {
                        tracing::info!(cert = %self.cert_path.display(), "{what}: certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "{what}: certificate not reloaded; new handshakes keep the current one"
                    ),
                }
            }
        }))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A running certificate watch; dropping it stops the watch.
#[derive(Debug)]
pub struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("gochat-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }
        /// Writes a fresh self-signed certificate and its key; returns the certificate's DER.
        fn write_pair(&self) -> Vec<u8> {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert =
                rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
            std::fs::write(self.path("cert.pem"), cert.pem()).unwrap();
            std::fs::write(self.path("key.pem"), key.serialize_pem()).unwrap();
            cert.der().to_vec()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn err(files: &Files) -> String {
        ServerCert::load(&files.path("cert.pem"), &files.path("key.pem")).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let f = Files::new("bad");
        assert!(err(&f).contains("cannot read") && err(&f).contains("cert.pem"), "{}", err(&f));
        f.write_pair();
        std::fs::write(f.path("cert.pem"), "not a certificate\n").unwrap();
        assert!(err(&f).contains("no certificate"), "{}", err(&f));
        f.write_pair();
        std::fs::write(f.path("key.pem"), "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n")
            .unwrap();
        assert!(err(&f).contains("key.pem") && err(&f).contains("bad PEM"), "{}", err(&f));
        f.write_pair();
        std::fs::write(f.path("key.pem"), "").unwrap();
        assert!(err(&f).contains("no private key"), "{}", err(&f));
        // A key of another certificate.
        f.write_pair();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(f.path("key.pem"), other.serialize_pem()).unwrap();
        assert!(err(&f).contains("does not match"), "{}", err(&f));
        f.write_pair();
        ServerCert::load(&f.path("cert.pem"), &f.path("key.pem")).expect("a matching pair loads");
    }

    #[test]
    fn changed_files_are_reloaded_and_bad_ones_keep_the_current_cert() {
        let f = Files::new("reload");
        let first = f.write_pair();
        let cert = ServerCert::load(&f.path("cert.pem"), &f.path("key.pem")).unwrap();
        assert_eq!(cert.current().cert[0].as_ref(), &first[..]);
        assert!(!cert.reload_if_changed().unwrap(), "nothing changed");
        let second = f.write_pair();
        assert!(cert.reload_if_changed().unwrap());
        assert_eq!(cert.current().cert[0].as_ref(), &second[..]);
        // A broken replacement: reported once, the current certificate stays.
        std::fs::write(f.path("cert.pem"), "garbage").unwrap();
        assert!(cert.reload_if_changed().is_err());
        assert!(!cert.reload_if_changed().unwrap(), "reported once");
        assert_eq!((cert.reloads(), cert.failed_reloads()), (1, 1));
        assert_eq!(cert.current().cert[0].as_ref(), &second[..]);
        assert!(cert.reload().is_err(), "a forced reload reads it again");
        let third = f.write_pair();
        assert!(cert.reload_if_changed().unwrap());
        assert_eq!(cert.current().cert[0].as_ref(), &third[..]);
    }

    #[tokio::test]
    async fn sighup_reloads_at_once() {
        let f = Files::new("hup");
        let first = f.write_pair();
        let cert = ServerCert::load(&f.path("cert.pem"), &f.path("key.pem")).unwrap();
        // Polling would take an hour: only the signal can reload it in time.
        let _watch = cert.clone().watch(Duration::from_secs(3600), "test");
        let next = f.write_pair();
        assert_ne!(first, next);
        // SAFETY: kill(2) on this process; the watch's handler is installed.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cert.current().cert[0].as_ref() != &next[..] {
            assert!(std::time::Instant::now() < deadline, "not reloaded on SIGHUP");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cert.reloads(), 1);
    }

    #[tokio::test]
    async fn a_watch_picks_up_a_new_cert() {
        let f = Files::new("watch");
        f.write_pair();
        let cert = ServerCert::load(&f.path("cert.pem"), &f.path("key.pem")).unwrap();
        let _watch = cert.clone().watch(Duration::from_millis(20), "test");
        let next = f.write_pair();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cert.current().cert[0].as_ref() != &next[..] {
            assert!(std::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
