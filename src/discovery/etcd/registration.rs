//! Registering a member: its keys on a lease, kept alive by a task that re-registers when the
//! lease is lost and tells a control when its node id went to another meanwhile.

use std::time::Duration;

use anyhow::{anyhow, Context};
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use gochat_control::ids::node_of;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use super::node_ids::{claim_free_node_id, node_id_dir, reclaim_node_id};
use super::{call, connect, member_dir, Backoff, HEALTHY, RPC_TIMEOUT};
use crate::discovery::{DiscoveryConfig, Role};

/// Revoking on shutdown: don't hold a shutdown up for long when etcd is away.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Announcing an address: one put, after a re-registration in progress.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);

/// What this process registers.
struct Member {
    endpoints: Vec<String>,
    role: Role,
    id: String,
    /// The address put under `key`; `None` until announced.
    addr: Option<String>,
    key: String,
    ttl_secs: u64,
    /// `{prefix}/node-ids/{n}`, once this member has claimed node id `n`.
    node_id_key: Option<String>,
    /// Set when re-registering found the node id taken by another member.
    node_id_lost: watch::Sender<bool>,
}

/// A registered member: its keys are on `lease`, kept alive through `keeper`.
struct Session {
    client: Client,
    lease: i64,
    keeper: LeaseKeeper,
    acks: LeaseKeepAliveStream,
    /// Registering found the member's node id held by another member.
    node_id_taken: bool,
}

/// An address to announce, and where to say whether it was put.
type Announcement = (String, oneshot::Sender<anyhow::Result<()>>);

impl Member {
    /// Checks the identity; also returns the receiver of `node_id_lost`.
    fn new(
        cfg: &DiscoveryConfig,
        role: Role,
        id: &str,
        addr: Option<&str>,
    ) -> anyhow::Result<(Self, watch::Receiver<bool>)> {
        cfg.validate()?;
        if id.is_empty() || id.contains('/') {
            anyhow::bail!("discovery: member id {id:?} must be non-empty and without '/'");
        }
        if addr.is_some_and(str::is_empty) {
            anyhow::bail!("discovery: member {role}/{id} has an empty address");
        }
        let (node_id_lost, lost) = watch::channel(false);
        let member = Self {
            endpoints: cfg.etcd_endpoints.clone(),
            role,
            id: id.to_owned(),
            addr: addr.map(str::to_owned),
            key: format!("{}{id}", member_dir(&cfg.prefix, role)),
            ttl_secs: cfg.lease_ttl_secs,
            node_id_key: None,
            node_id_lost,
        };
        Ok((member, lost))
    }

    /// Grants a lease, opens its keep-alive stream and puts the keys on it. `ours` are the
    /// leases this process held before: a key found on one of them is its own, not a
    /// duplicate's, and its node id there is moved, not lost. A lease granted here that may
    /// still hold keys after a failure is added to `ours`.
    async fn register(&self, ours: &mut Vec<i64>) -> anyhow::Result<Session> {
        let mut client = connect(&self.endpoints).await?;
        let ttl = i64::try_from(self.ttl_secs).unwrap_or(i64::MAX);
        let lease = call("lease grant", RPC_TIMEOUT, client.lease_grant(ttl, None)).await?.id();
        // The stream first: once the keys are visible, the registration is complete.
        let (keeper, acks) = call("lease keep-alive", RPC_TIMEOUT, client.lease_keep_alive(lease)).await?;
        match self.put_keys(&mut client, lease, ours).await {
            Ok(node_id_taken) => Ok(Session { client, lease, keeper, acks, node_id_taken }),
            Err(e) => {
                // Keys already put go with the lease; if etcd is away for that too, the
                // next attempt must know they are this process's.
                if call("lease revoke", REVOKE_TIMEOUT, client.lease_revoke(lease)).await.is_err() {
                    ours.push(lease);
                }
                Err(e)
            }
        }
    }

    /// Puts this member's node id (if it holds one) and address (once announced) on `lease`;
    /// returns whether the node id was found held by another member.
    async fn put_keys(&self, client: &mut Client, lease: i64, ours: &[i64]) -> anyhow::Result<bool> {
        let mut node_id_taken = false;
        // A lost node id is not taken back from its new holder.
        if let Some(key) = self.node_id_key.as_deref().filter(|_| !*self.node_id_lost.borrow()) {
            if !reclaim_node_id(client, key, &self.id, lease, ours).await? {
                node_id_taken = true;
                let holder = call("get", RPC_TIMEOUT, client.get(key, None))
                    .await
                    .ok()
                    .and_then(|r| r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()));
                error!(
                    role = %self.role,
                    id = %self.id,
                    %key,
                    holder = holder.as_deref().unwrap_or("unknown"),
                    "discovery: this member's node id was taken by another while its lease was lost; \
                     message ids could repeat"
                );
            }
        }
        if let Some(addr) = &self.addr {
            self.put_addr(client, addr, lease, ours).await?;
        }
        Ok(node_id_taken)
    }

    /// Puts `key` = `addr` on `lease`, warning when it takes the key over from a lease not
    /// among `ours`.
    async fn put_addr(
        &self,
        client: &mut Client,
        addr: &str,
        lease: i64,
        ours: &[i64],
    ) -> anyhow::Result<()> {
        let put = call(
            "put",
            RPC_TIMEOUT,
            client.put(self.key.as_str(), addr, Some(PutOptions::new().with_lease(lease).with_prev_key())),
        )
        .await?;
        if let Some(prev) = put.prev_key() {
            if !ours.contains(&prev.lease()) {
                warn!(
                    role = %self.role,
                    id = %self.id,
                    existing_addr = %String::from_utf8_lossy(prev.value()),
                    existing_lease = %format_args!("{:x}", prev.lease()),
                    "discovery: member id already registered; overwriting (normal when a restarted \
                     process re-registers before its old lease expired, otherwise two processes \
                     share this id)"
                );
            }
        }
        Ok(())
    }

    /// Puts `addr` on the session's lease and keeps it for later re-registrations.
    async fn announce(&mut self, session: &mut Session, addr: String) -> anyhow::Result<()> {
        self.put_addr(&mut session.client, &addr, session.lease, &[session.lease]).await?;
        info!(
            role = %self.role,
            id = %self.id,
            %addr,
            lease_ttl_secs = self.ttl_secs,
            key = %self.key,
            "discovery: registered in etcd"
        );
        self.addr = Some(addr);
        Ok(())
    }

    /// Registers again until it works, backing off; tidies the previous leases away.
    async fn reregister(&self, previous: i64, backoff: &mut Backoff) -> Session {
        let mut ours = vec![previous];
        loop {
            sleep(backoff.next_delay()).await;
            match self.register(&mut ours).await {
                Ok(mut session) => {
                    // The keys have moved to the new lease; the old ones, if they survived,
                    // hold nothing now. Failing here is harmless: they expire.
                    for old in ours {
                        let revoked = session.client.lease_revoke(old);
                        if let Err(e) = call("lease revoke", REVOKE_TIMEOUT, revoked).await {
                            debug!(error = %e, "discovery: old lease not revoked");
                        }
                    }
                    return session;
                }
                Err(e) => warn!(
                    role = %self.role,
                    id = %self.id,
                    error = %format!("{e:#}"),
                    "discovery: re-registering in etcd failed; retrying"
                ),
            }
        }
    }

    /// Revokes the session's lease so the keys disappear at once.
    async fn revoke(&self, session: &mut Session) {
        match call("lease revoke", REVOKE_TIMEOUT, session.client.lease_revoke(session.lease)).await {
            Ok(_) => info!(role = %self.role, id = %self.id, "discovery: deregistered from etcd"),
            Err(e) => warn!(
                role = %self.role,
                id = %self.id,
                error = %format!("{e:#}"),
                "discovery: could not revoke the lease; the key expires within {} s",
                self.ttl_secs
            ),
        }
    }

    /// Keeps `session`'s lease alive (a request every TTL/3) until that fails; returns why.
    async fn keep_alive(&self, session: &mut Session) -> anyhow::Error {
        let ttl = Duration::from_secs(self.ttl_secs);
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate; opening the stream was the first keep-alive.
        tick.tick().await;
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if last_ack.elapsed() >= ttl {
                        return anyhow!("no keep-alive answer from etcd for {} s", self.ttl_secs);
                    }
                    if let Err(e) = session.keeper.keep_alive().await {
                        return anyhow!("keep-alive request: {e}");
                    }
                }
                ack = session.acks.message() => match ack {
                    Ok(Some(ack)) if ack.ttl() > 0 => last_ack = Instant::now(),
                    Ok(Some(_)) => return anyhow!("lease expired or revoked (etcd answered TTL 0)"),
                    Ok(None) => return anyhow!("keep-alive stream ended"),
                    Err(e) => return anyhow!("keep-alive stream: {e}"),
                },
            }
        }
    }

    /// The keep-alive task: refresh, and on loss re-register, until stopped; announces
    /// addresses as they come. `stop` fired means shut down (revoke); `stop` dropped means
    /// abandon (the lease expires).
    async fn run(
        mut self,
        mut session: Session,
        mut stop: oneshot::Receiver<()>,
        mut announcements: mpsc::Receiver<Announcement>,
    ) {
        let mut backoff = Backoff::new();
        loop {
            let since = Instant::now();
            let why = tokio::select! {
                stopped = &mut stop => {
                    if stopped.is_ok() {
                        self.revoke(&mut session).await;
                    }
                    return;
                }
                Some((addr, reply)) = announcements.recv() => {
                    let _ = reply.send(self.announce(&mut session, addr).await);
                    continue;
                }
                why = self.keep_alive(&mut session) => why,
            };
            if since.elapsed() >= HEALTHY {
                backoff.reset();
            }
            warn!(
                role = %self.role,
                id = %self.id,
                lease = %format_args!("{:x}", session.lease),
                error = %why,
                "discovery: etcd lease lost or unreachable; re-registering with a new lease"
            );
            session = tokio::select! {
                stopped = &mut stop => {
                    if stopped.is_ok() {
                        // The old lease may have survived an etcd restart.
                        self.revoke(&mut session).await;
                    }
                    return;
                }
                fresh = self.reregister(session.lease, &mut backoff) => fresh,
            };
            // Told only now that the new session is in place, so a shutdown it prompts
            // revokes the new lease rather than the lost one.
            if session.node_id_taken {
                self.node_id_lost.send_replace(true);
            }
            info!(
                role = %self.role,
                id = %self.id,
                addr = self.addr.as_deref().unwrap_or("not announced"),
                node_id_key = self.node_id_key.as_deref().unwrap_or("none"),
                lease_ttl_secs = self.ttl_secs,
                "discovery: re-registered in etcd"
            );
        }
    }
}

/// The running keep-alive task of a [`Registration`](crate::discovery::Registration).
#[derive(Debug)]
pub(in crate::discovery) struct Keeper {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    announcements: mpsc::Sender<Announcement>,
    node_id_lost: watch::Receiver<bool>,
}

impl Keeper {
    pub(in crate::discovery) async fn start(
        cfg: &DiscoveryConfig,
        role: Role,
        id: &str,
        addr: &str,
    ) -> anyhow::Result<Self> {
        let (member, lost) = Member::new(cfg, role, id, Some(addr))?;
        let session = member.register(&mut Vec::new()).await.with_context(|| {
            format!("cannot register {role} {id:?} in etcd at {}", cfg.etcd_endpoints.join(", "))
        })?;
        info!(
            %role,
            %id,
            %addr,
            lease_ttl_secs = cfg.lease_ttl_secs,
            key = %member.key,
            "discovery: registered in etcd"
        );
        Ok(Self::spawn(member, session, lost))
    }

    /// A control's lease with a node id claimed on it, and the number.
    pub(in crate::discovery) async fn claim_node_id(
        cfg: &DiscoveryConfig,
        id: &str,
    ) -> anyhow::Result<(Self, u16)> {
        let (mut member, lost) = Member::new(cfg, Role::Control, id, None)?;
        let endpoints = cfg.etcd_endpoints.join(", ");
        let mut session = member
            .register(&mut Vec::new())
            .await
            .with_context(|| format!("cannot register control {id:?} in etcd at {endpoints}"))?;
        let dir = node_id_dir(&cfg.prefix);
        let claimed = claim_free_node_id(&mut session.client, &dir, id, session.lease, node_of(id)).await;
        let node_id = match claimed {
            Ok(n) => n,
            Err(e) => {
                member.revoke(&mut session).await;
                return Err(
                    e.context(format!("cannot claim a node id for control {id:?} in etcd at {endpoints}"))
                );
            }
        };
        let key = format!("{dir}{node_id}");
        info!(%id, node_id, %key, preferred = node_of(id), "discovery: node id claimed in etcd");
        member.node_id_key = Some(key);
        Ok((Self::spawn(member, session, lost), node_id))
    }

    fn spawn(member: Member, session: Session, node_id_lost: watch::Receiver<bool>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let (announcements, to_announce) = mpsc::channel(1);
        let task = tokio::spawn(member.run(session, stopped, to_announce));
        Self { stop: Some(stop), task: Some(task), announcements, node_id_lost }
    }

    pub(in crate::discovery) async fn announce(&self, addr: &str) -> anyhow::Result<()> {
        if addr.is_empty() {
            anyhow::bail!("discovery: cannot announce an empty address");
        }
        let (reply, answer) = oneshot::channel();
        let ended = || anyhow!("discovery: the keep-alive task has ended");
        self.announcements.send((addr.to_owned(), reply)).await.map_err(|_| ended())?;
        // Waits out a re-registration in progress, but not an etcd that stays away.
        match timeout(ANNOUNCE_TIMEOUT, answer).await {
            Ok(Ok(put)) => put.with_context(|| format!("cannot announce {addr} in etcd")),
            Ok(Err(_)) => Err(ended()),
            Err(_) => Err(anyhow!(
                "cannot announce {addr} in etcd: not registered within {} s",
                ANNOUNCE_TIMEOUT.as_secs()
            )),
        }
    }

    pub(in crate::discovery) async fn node_id_lost(&self) {
        let mut lost = self.node_id_lost.clone();
        if lost.wait_for(|lost| *lost).await.is_err() {
            // The task ended (shut down) with the node id still held.
            std::future::pending::<()>().await;
        }
    }

    pub(in crate::discovery) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!(error = %e, "discovery: keep-alive task failed");
            }
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Not shut down: stop refreshing without revoking, as a crash would.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
