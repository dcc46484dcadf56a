//! Password hashes: argon2id (PHC strings), computed off the async threads, in a fixed pool of
//! memory.
//!
//! Each hash fills ~19 MiB. Allocated per hash, that memory stayed with the allocator (glibc
//! keeps a freed block of that size in the arena of the thread that freed it, and hashes run
//! on many blocking threads): a few hundred failed logins took a process to ~1 GB for good.
//! Here at most [`HASHING`] hashes run at once, each in one of as many buffers allocated once
//! and reused: hashing costs a fixed amount of memory whatever the load.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Most hashes at once (and buffers kept): the CPUs, up to 4. Each takes a core for tens of
/// milliseconds, so a login storm queues rather than fans out.
pub(crate) fn hashing() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
}

/// The buffers hashes run in, and the turns to use them.
struct Pool {
    turns: tokio::sync::Semaphore,
    buffers: Mutex<Vec<Vec<Block>>>,
    /// Hashes running now, and the most there were at once.
    running: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        turns: tokio::sync::Semaphore::new(hashing()),
        buffers: Mutex::default(),
        running: Default::default(),
        peak: Default::default(),
    })
}

/// Runs `f` with a buffer of the pool, on a blocking thread, when a turn is free. The turn and
/// the buffer go with the blocking task, not with the caller: a request dropped half way (its
/// client hung up) leaves the hash to finish in its turn, and its buffer to return to the pool.
async fn with_buffer<T: Send + 'static>(f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static) -> T {
    let pool = pool();
    let turn = pool.turns.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(move || {
        // A turn guarantees a buffer: there are never more buffers than turns.
        let mut buffer = pool.buffers.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        let running = pool.running.fetch_add(1, Ordering::Relaxed) + 1;
        pool.peak.fetch_max(running, Ordering::Relaxed);
        let out = f(&mut buffer);
        pool.running.fetch_sub(1, Ordering::Relaxed);
        pool.buffers.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
        drop(turn);
        out
    })
    .await
    .expect("hash task")
}

/// argon2 with `params` into `out`, in `buffer` (grown once if `params` need more).
fn compute(params: Params, password: &[u8], salt: &[u8], out: &mut [u8], buffer: &mut Vec<Block>) -> bool {
    let need = params.block_count();
    if buffer.len() < need {
        buffer.resize(need, Block::default());
    }
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    argon.hash_password_into_with_memory(password, salt, out, &mut buffer[..need]).is_ok()
}

/// Hashes `password` with argon2id (OWASP's parameters: 19 MiB, 2 passes) and a random salt.
pub(crate) async fn hash(password: String) -> String {
    with_buffer(move |buffer| {
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes).expect("a generated salt decodes");
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        assert!(compute(Params::DEFAULT, password.as_bytes(), salt_bytes, &mut out, buffer), "argon2 hashes");
        PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&Params::DEFAULT).expect("default params"),
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).expect("32 bytes")),
        }
        .to_string()
    })
    .await
}

/// Whether `password` matches the PHC string `stored`. `None` (no such user) still spends the
/// same work, so timing does not tell which names exist.
pub(crate) async fn verify(password: String, stored: Option<String>) -> bool {
    let dummy = dummy_hash().await;
    with_buffer(move |buffer| {
        let phc = stored.as_deref().unwrap_or(&dummy);
        let ok = matches(password.as_bytes(), phc, buffer);
        ok && stored.is_some()
    })
    .await
}

/// Whether `password` hashes to the argon2id PHC string `phc`.
fn matches(password: &[u8], phc: &str, buffer: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let argon2id = Algorithm::try_from(hash.algorithm) == Ok(Algorithm::Argon2id);
    let version = hash.version.map_or(Ok(Version::V0x13), Version::try_from) == Ok(Version::V0x13);
    let Ok(params) = Params::try_from(&hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut out = vec![0u8; expected.len()];
    if !(argon2id && version && compute(params, password, salt, &mut out, buffer)) {
        return false;
    }
    // `Output`'s comparison takes constant time.
    Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A hash of nothing anyone's password is, to spend a failed lookup's time on.
async fn dummy_hash() -> String {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY.get_or_init(|| hash("no such user".into())).await.clone()
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    #[tokio::test]
    async fn round_trip() {
        let h = super::hash("111111".into()).await;
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(super::verify("111111".into(), Some(h.clone())).await);
        assert!(!super::verify("111112".into(), Some(h.clone())).await);
        assert!(!super::verify("111111".into(), None).await);
        assert!(!super::verify("111111".into(), Some("not a hash".into())).await);
        // The hash is the argon2 crate's own: hashes stored before verify, and others verify ours.
        let parsed = argon2::PasswordHash::new(&h).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"111111", &parsed).is_ok());
        let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let theirs = argon2::Argon2::default().hash_password(b"older", &salt).unwrap().to_string();
        assert!(super::verify("older".into(), Some(theirs)).await);
    }

    #[tokio::test]
    async fn hashes_of_other_costs_verify_in_the_pool() {
        let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let params = argon2::Params::new(32 * 1024, 3, 1, None).unwrap();
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let costlier = argon.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(super::verify("pw".into(), Some(costlier.clone())).await);
        assert!(!super::verify("px".into(), Some(costlier)).await);
        let argon2i =
            argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, Default::default());
        let other_kind = argon2i.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(!super::verify("pw".into(), Some(other_kind)).await, "only argon2id is taken");
    }

    #[tokio::test]
    async fn buffers_are_never_more_than_turns() {
        let hashes: Vec<_> = (0..12).map(|i| tokio::spawn(super::hash(format!("p{i}")))).collect();
        for h in hashes {
            h.await.unwrap();
        }
        let kept = super::pool().buffers.lock().unwrap().len();
        assert!(kept >= 1 && kept <= super::hashing(), "{kept} buffers for {} turns", super::hashing());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_whose_caller_went_away_keeps_its_turn_and_its_buffer() {
        // Callers dropped mid-hash (clients hanging up): their hashes still take turns.
        let pool = super::pool();
        for i in 0..3 * super::hashing() {
            let verify = tokio::spawn(super::verify(format!("p{i}"), None));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            verify.abort();
        }
        let all = pool.turns.acquire_many(super::hashing() as u32).await.unwrap();
        let buffers = pool.buffers.lock().unwrap().len();
        assert!(buffers <= super::hashing(), "{buffers} buffers for {} turns", super::hashing());
        let peak = pool.peak.load(std::sync::atomic::Ordering::Relaxed);
        assert!(peak <= super::hashing(), "{peak} hashes at once for {} turns", super::hashing());
        drop(all);
    }

    #[tokio::test]
    async fn cost_is_at_least_owasps_minimum() {
        // OWASP's argon2id floor: 19 MiB of memory, 2 passes.
        let h = super::hash("x".into()).await;
        let parsed = argon2::password_hash::PasswordHash::new(&h).unwrap();
        let param = |name: &str| parsed.params.get_decimal(name).unwrap();
        assert!(param("m") >= 19 * 1024 && param("t") >= 2 && param("p") >= 1, "{h}");
    }
}
