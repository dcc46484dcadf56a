//! Password hashes: argon2id (PHC strings), computed off the async threads.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes at once: each takes ~19 MiB and a core, so a login storm must queue, not fan out.
fn hashing() -> &'static tokio::sync::Semaphore {
    static GATE: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    GATE.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Hashes `password` with argon2id and a random salt.
pub async fn hash(password: String) -> String {
    let _turn = hashing().acquire().await.expect("never closed");
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2 with default parameters hashes any input")
            .to_string()
    })
    .await
    .expect("hash task")
}

/// Whether `password` matches the PHC string `stored`. `None` (no such user) still spends the
/// same work, so timing does not tell which names exist.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    let _turn = hashing().acquire().await.expect("never closed");
    tokio::task::spawn_blocking(move || {
        let dummy;
        let phc = match &stored {
            Some(s) => s.as_str(),
            None => {
                dummy = dummy_hash();
                dummy.as_str()
            }
        };
        let ok = PasswordHash::new(phc)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        ok && stored.is_some()
    })
    .await
    .expect("verify task")
}

fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default().hash_password(b"no such user", &salt).expect("hash").to_string()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn round_trip() {
        let h = super::hash("111111".into()).await;
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("111111".into(), Some(h.clone())).await);
        assert!(!super::verify("111112".into(), Some(h)).await);
        assert!(!super::verify("111111".into(), None).await);
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
