//! Watching one role's members: a read of the prefix, then a watch from the next revision,
//! read again and watched again after any interruption, the last known members kept meanwhile.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};
use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tracing::{debug, info, warn};

use super::{call, connect, member_dir, member_id, read_members, Backoff, HEALTHY, RPC_TIMEOUT};
use crate::discovery::{DiscoveryConfig, Members, Role};

pub(in crate::discovery) async fn watch(cfg: &DiscoveryConfig, role: Role) -> anyhow::Result<Members> {
    cfg.validate()?;
    let dir = member_dir(&cfg.prefix, role);
    let endpoints = cfg.etcd_endpoints.clone();
    let first = async {
        let mut client = connect(&endpoints).await?;
        let (members, revision) = read_members(&mut client, &dir).await?;
        anyhow::Ok((client, members, revision))
    };
    let (client, members, revision) = first
        .await
        .with_context(|| format!("cannot read {role} members from etcd at {}", endpoints.join(", ")))?;
    info!(%role, members = members.len(), "discovery: watching members in etcd");
    for (id, addr) in &members {
        info!(%role, %id, %addr, "discovery: member present");
    }
    let (tx, rx) = watch::channel(members);
    tokio::spawn(Watcher { endpoints, role, dir }.run(client, revision, tx));
    Ok(rx)
}

struct Watcher {
    endpoints: Vec<String>,
    role: Role,
    dir: String,
}

impl Watcher {
    /// Follows the watch; on any interruption re-reads and watches again. Ends when every
    /// receiver is gone.
    async fn run(self, mut client: Client, mut revision: i64, tx: watch::Sender<BTreeMap<String, String>>) {
        let mut backoff = Backoff::new();
        loop {
            let since = Instant::now();
            let why = tokio::select! {
                _ = tx.closed() => return,
                why = self.follow(&mut client, revision, &tx) => why,
            };
            if since.elapsed() >= HEALTHY {
                backoff.reset();
            }
            warn!(
                role = %self.role,
                error = %why,
                "discovery: etcd watch interrupted; keeping the last known members and re-reading"
            );
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = sleep(backoff.next_delay()) => {}
                }
                let attempt = async {
                    let mut fresh = connect(&self.endpoints).await?;
                    let (members, revision) = read_members(&mut fresh, &self.dir).await?;
                    anyhow::Ok((fresh, members, revision))
                };
                let attempt = tokio::select! {
                    _ = tx.closed() => return,
                    attempt = attempt => attempt,
                };
                match attempt {
                    Ok((fresh, members, rev)) => {
                        client = fresh;
                        revision = rev;
                        tx.send_if_modified(|known| replace_members(known, self.role, members));
                        info!(role = %self.role, "discovery: members re-read from etcd");
                        break;
                    }
                    Err(e) => warn!(
                        role = %self.role,
                        error = %format!("{e:#}"),
                        "discovery: re-reading members from etcd failed; keeping the last known members"
                    ),
                }
            }
        }
    }

    /// Watches from `revision + 1`, applying events, until the watch fails; returns why.
    async fn follow(
        &self,
        client: &mut Client,
        revision: i64,
        tx: &watch::Sender<BTreeMap<String, String>>,
    ) -> anyhow::Error {
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream =
            match call("watch", RPC_TIMEOUT, client.watch(self.dir.as_str(), Some(options))).await {
                Ok(stream) => stream,
                Err(e) => return e,
            };
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return anyhow!("watch stream ended"),
                Err(e) => return anyhow!("watch stream: {e}"),
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return anyhow!(
                        "watch from revision {} canceled: compacted up to {}",
                        revision + 1,
                        resp.compact_revision()
                    );
                }
                return anyhow!("watch canceled by etcd: {}", resp.cancel_reason());
            }
            if resp.events().is_empty() {
                continue;
            }
            tx.send_if_modified(|members| {
                let mut changed = false;
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(id) = member_id(&self.dir, kv.key()) else { continue };
                    match event.event_type() {
                        EventType::Put => match std::str::from_utf8(kv.value()) {
                            Ok(addr) => changed |= put_member(members, self.role, id, addr),
                            Err(_) => {
                                debug!(%id, "discovery: skipping a member whose address is not UTF-8")
                            }
                        },
                        EventType::Delete => changed |= remove_member(members, self.role, id),
                    }
                }
                changed
            });
        }
    }
}

/// Applies a put of `id` = `addr`; returns whether the members changed.
fn put_member(members: &mut BTreeMap<String, String>, role: Role, id: &str, addr: &str) -> bool {
    match members.get(id) {
        Some(old) if old == addr => false,
        Some(old) => {
            info!(%role, %id, old_addr = %old, %addr, "discovery: member address changed");
            members.insert(id.to_owned(), addr.to_owned());
            true
        }
        None => {
            info!(%role, %id, %addr, "discovery: member added");
            members.insert(id.to_owned(), addr.to_owned());
            true
        }
    }
}

/// Applies a delete of `id`; returns whether the members changed.
fn remove_member(members: &mut BTreeMap<String, String>, role: Role, id: &str) -> bool {
    match members.remove(id) {
        Some(addr) => {
            info!(%role, %id, %addr, "discovery: member removed");
            true
        }
        None => false,
    }
}

/// Replaces `members` with a fresh read, logging the differences; returns whether they changed.
fn replace_members(
    members: &mut BTreeMap<String, String>,
    role: Role,
    fresh: BTreeMap<String, String>,
) -> bool {
    let gone: Vec<String> = members.keys().filter(|id| !fresh.contains_key(*id)).cloned().collect();
    let mut changed = false;
    for id in gone {
        changed |= remove_member(members, role, &id);
    }
    for (id, addr) in &fresh {
        changed |= put_member(members, role, id, addr);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_deletes_and_rereads_report_changes() {
        let mut m = BTreeMap::new();
        assert!(put_member(&mut m, Role::Gateway, "a", "http://a:1"));
        assert!(!put_member(&mut m, Role::Gateway, "a", "http://a:1"), "same address is no change");
        assert!(put_member(&mut m, Role::Gateway, "a", "http://a:2"));
        assert!(put_member(&mut m, Role::Gateway, "b", "http://b:1"));
        assert!(remove_member(&mut m, Role::Gateway, "b"));
        assert!(!remove_member(&mut m, Role::Gateway, "b"));
        let fresh: BTreeMap<String, String> =
            [("a".into(), "http://a:2".into()), ("c".into(), "http://c:1".into())].into();
        assert!(replace_members(&mut m, Role::Gateway, fresh.clone()));
        assert_eq!(m, fresh);
        assert!(!replace_members(&mut m, Role::Gateway, fresh.clone()));
        assert!(replace_members(&mut m, Role::Gateway, BTreeMap::new()));
        assert!(m.is_empty());
    }
}
