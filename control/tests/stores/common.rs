//! What control's store tests share: the Redis they run against, and keys of their own.
#![allow(dead_code)]

pub(crate) use gochat_test_services::redis_url;

/// A key prefix of a test's own; its keys are deleted when dropped.
pub(crate) struct RedisKeys(pub String);

impl RedisKeys {
    pub(crate) fn new(what: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Self(format!("gochat-test-{what}-{}-{nanos}", std::process::id()))
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", self.0)).query(&mut conn).unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
        }
    }
}
