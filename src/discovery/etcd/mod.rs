//! The etcd side of discovery (cargo feature `etcd`): a member's lease, its keys and their
//! keep-alive (`registration`), node-id claims (`node_ids`), and the watch of one role's
//! members (`watcher`). Here: what they share — the key layout, the client, each call's time
//! limit, and the retry backoff.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio::time::timeout;
use tracing::debug;

use super::Role;

mod node_ids;
mod registration;
mod watcher;

pub(super) use registration::Keeper;
pub(super) use watcher::watch;

/// Each etcd call, and so the start-up check that etcd answers.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on the connection, so a silently dead etcd fails the watch stream. etcd
/// answers pings more frequent than every 5 s with GOAWAY.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A lease session or watch that lasted this long resets the backoff; one that fails sooner
/// keeps it growing, so a flapping etcd is not hammered.
const HEALTHY: Duration = BACKOFF_CAP;

/// Exponential retry delay: 100 ms, doubling, capped at 5 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_FIRST }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        d
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// `{prefix}/{role}/`: the directory of one role's members.
fn member_dir(prefix: &str, role: Role) -> String {
    format!("{}/{role}/", prefix.trim_end_matches('/'))
}

/// The member id of `key` in `dir`, if it is one.
fn member_id<'k>(dir: &str, key: &'k [u8]) -> Option<&'k str> {
    let id = key.strip_prefix(dir.as_bytes())?;
    let id = std::str::from_utf8(id).ok()?;
    (!id.is_empty()).then_some(id)
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(H2_PING_INTERVAL, H2_PING_TIMEOUT)
        // Fail requests and watches on a member cut off from the leader instead of hanging.
        .with_require_leader(true)
}

/// A client for `endpoints` (connecting is lazy: the first call shows whether etcd answers).
async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    Client::connect(endpoints, Some(connect_options())).await.map_err(|e| anyhow!("etcd client: {e}"))
}

/// One etcd call under a time limit (while no endpoint is reachable, calls may wait rather
/// than fail).
async fn call<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow!("{what}: no answer from etcd within {} s", limit.as_secs())),
    }
}

/// Reads every member in `dir`; returns them and the store revision of the read.
async fn read_members(client: &mut Client, dir: &str) -> anyhow::Result<(BTreeMap<String, String>, i64)> {
    let resp = call("get", RPC_TIMEOUT, client.get(dir, Some(GetOptions::new().with_prefix()))).await?;
    let revision = resp.header().map(|h| h.revision()).ok_or_else(|| anyhow!("get: answer has no header"))?;
    let mut members = BTreeMap::new();
    for kv in resp.kvs() {
        match (member_id(dir, kv.key()), std::str::from_utf8(kv.value())) {
            (Some(id), Ok(addr)) => {
                members.insert(id.to_owned(), addr.to_owned());
            }
            _ => {
                debug!(key = %String::from_utf8_lossy(kv.key()), "discovery: skipping a key that is not a member")
            }
        }
    }
    Ok((members, revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let ms: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn keys_and_ids() {
        assert_eq!(member_dir("/gochat", Role::Gateway), "/gochat/gateway/");
        assert_eq!(member_dir("/gochat/", Role::Worker), "/gochat/worker/");
        let dir = member_dir("/gochat", Role::Control);
        assert_eq!(member_id(&dir, b"/gochat/control/c-1"), Some("c-1"));
        assert_eq!(member_id(&dir, b"/gochat/control/"), None);
        assert_eq!(member_id(&dir, b"/gochat/gateway/g-1"), None);
        assert_eq!(member_id(&dir, b"/gochat/control/\xff"), None);
    }
}
