//! What control's store tests share: the stores they run against (in memory, on a real Redis,
//! on a real Redis Cluster), and keys of their own.
#![allow(dead_code)]

use gochat_control::state::{RedisState, State};
pub(crate) use gochat_test_services::redis_url;
use gochat_test_services::{self as services, Service};

/// A key prefix of a test's own on the Redis (or cluster) at `url`; its keys are deleted when
/// dropped.
pub(crate) struct RedisKeys {
    pub prefix: String,
    pub url: String,
}

impl RedisKeys {
    pub(crate) fn new(what: &str, url: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Self { prefix: format!("gochat-test-{what}-{}-{nanos}", std::process::id()), url: url.to_string() }
    }

    /// Another control's state on the same store and keys.
    pub(crate) async fn state(&self, session_ttl: std::time::Duration) -> RedisState {
        RedisState::open(&self.url, &self.prefix, session_ttl).await.expect("Redis reachable")
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        gochat_runtime::redis::delete_keys(&self.url, &self.prefix);
    }
}

/// The state stores a scenario runs against, each with its keys' guard: in memory; on Redis
/// (`REDIS_URL`); on a Redis Cluster (`REDIS_CLUSTER_URL`). `what` names the keys. A missing
/// Redis or cluster is said on stderr and skipped, outside CI.
pub(crate) async fn state_stores(
    what: &str,
    session_ttl: std::time::Duration,
) -> Vec<(State, Option<RedisKeys>)> {
    let mut stores = vec![(State::memory(session_ttl), None)];
    if services::present_for(" (its Redis half)", &[Service::Redis]) {
        let keys = RedisKeys::new(what, &redis_url());
        stores.push((State::Redis(keys.state(session_ttl).await), Some(keys)));
    }
    if services::present_for(" (its Redis Cluster half)", &[Service::RedisCluster]) {
        let keys = RedisKeys::new(what, &services::redis_cluster_url().expect("checked"));
        stores.push((State::Redis(keys.state(session_ttl).await), Some(keys)));
    }
    stores
}
