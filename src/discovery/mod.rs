//! Service discovery: how the roles of a cluster find each other.
//!
//! Every role (gateway, control, worker) registers itself under an etcd lease as
//! `{prefix}/{role}/{id}` with its gRPC address as the value, and keeps the lease alive; roles
//! watch the members of the other roles. A member that stops refreshing its lease disappears
//! within the lease TTL; one that shuts down revokes its lease and disappears at once.
//!
//! Static discovery (addresses from the role sections of the config) is the embedded default and
//! needs neither etcd nor protoc. Everything etcd-specific is behind the cargo feature `etcd`.
//!
//! Node ids: a control without `[control] node_id` claims one with
//! [`Registration::claim_node_id`]: `{prefix}/node-ids/{n}` = its id, created under its lease
//! only where no key exists, for the first free `n` from `node_of(id)` on (modulo 1024). The
//! claim lives and dies with the lease. When the lease is lost, re-registering puts the same
//! number on the new lease if it is free or still on the old lease; if another control took it
//! meanwhile (this one was cut off for longer than the lease TTL), the claim is not taken back
//! and [`Registration::node_id_lost`] resolves: the id generator cannot change its node under
//! running traffic, so `gochat control` stops with an error and its supervisor restarts it with
//! a fresh claim.
//!
//! Failure handling (etcd kind):
//! - [`Registration::start`], [`Registration::claim_node_id`] and [`watch`] fail if etcd does
//!   not answer at start (~3 s).
//! - After that nothing here ever ends the process: when the lease is lost (etcd restarted or
//!   unreachable, keep-alive errors, TTL 0) the keep-alive task warns and re-registers with a
//!   new lease, backing off from 100 ms to 5 s; a watcher that loses its watch (error, stream
//!   end, compaction) warns, backs off, re-reads the whole prefix and watches again, keeping the
//!   last known members published meanwhile.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The shortest lease etcd grants with its default election timeout (it raises shorter ones).
pub const MIN_LEASE_TTL_SECS: u64 = 2;
/// The longest lease TTL accepted: beyond a minute a crashed member lingers too long.
pub const MAX_LEASE_TTL_SECS: u64 = 60;

const NO_ETCD: &str = "this build has no etcd support; build with --features etcd";

/// Where member addresses come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryKind {
    /// Addresses from the role sections of the config (the embedded default).
    #[default]
    Static,
    /// Members register in etcd under a lease and watch each other there.
    Etcd,
}

/// `[discovery]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// `static` (addresses from the role sections; the embedded default) or `etcd`.
    pub kind: DiscoveryKind,
    /// etcd client endpoints, e.g. ["http://127.0.0.1:2379"]. Default: that one.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix; members live at `{prefix}/{role}/{id}` with the gRPC address as the value.
    /// Default `/gochat`.
    pub prefix: String,
    /// Lease TTL in seconds: a member that stops refreshing disappears within this. Default 5,
    /// 2..=60 (etcd raises shorter leases to 2 s with its default election timeout).
    pub lease_ttl_secs: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            kind: DiscoveryKind::Static,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/gochat".into(),
            lease_ttl_secs: 5,
        }
    }
}

impl DiscoveryConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&self.lease_ttl_secs) {
            anyhow::bail!(
                "discovery.lease_ttl_secs must be {MIN_LEASE_TTL_SECS}..={MAX_LEASE_TTL_SECS} (etcd raises \
                 shorter leases to its minimum), got {}",
                self.lease_ttl_secs
            );
        }
        if self.prefix.trim_end_matches('/').is_empty() {
            anyhow::bail!("discovery.prefix must not be empty or only '/', got {:?}", self.prefix);
        }
        if self.kind == DiscoveryKind::Etcd {
            if !cfg!(feature = "etcd") {
                anyhow::bail!("discovery.kind = \"etcd\": {NO_ETCD}");
            }
            if self.etcd_endpoints.is_empty() {
                anyhow::bail!("discovery.etcd_endpoints must list at least one endpoint for kind = \"etcd\"");
            }
            for e in &self.etcd_endpoints {
                if e.is_empty() || e.contains(char::is_whitespace) {
                    anyhow::bail!("discovery.etcd_endpoints: {e:?} is not an endpoint");
                }
                if e.starts_with("https://") {
                    anyhow::bail!(
                        "discovery.etcd_endpoints: {e:?}: TLS to etcd is not supported by this build; use http://"
                    );
                }
                if e.contains("://") && !e.starts_with("http://") {
                    anyhow::bail!("discovery.etcd_endpoints: {e:?}: only http:// endpoints are supported");
                }
            }
        }
        Ok(())
    }
}

/// A role of the cluster; its name is the key segment under the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Control,
    Worker,
}

impl Role {
    /// The key segment: `gateway`, `control` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Control => "control",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Members of one role (see [`gochat_proto::peers::Members`]); a watch keeps the last known set
/// while etcd is unreachable.
pub use gochat_proto::peers::Members;

/// Registers this process under a lease and keeps it alive until [`shutdown`](Self::shutdown).
///
/// Dropping it without `shutdown` stops the keep-alive without revoking the lease, as a crash
/// would: the member then disappears within the lease TTL.
#[must_use = "dropping a Registration stops its keep-alive; call shutdown() to deregister"]
#[derive(Debug)]
pub struct Registration {
    #[cfg(feature = "etcd")]
    keeper: Option<etcd::Keeper>,
}

impl Registration {
    /// With `kind = static` a no-op handle. With `kind = etcd`: puts `{prefix}/{role}/{id}` =
    /// `addr` under a fresh lease (overwriting, with a warning, a member that already holds the
    /// id) and starts the keep-alive task; fails if etcd does not answer within ~3 s.
    pub async fn start(cfg: &DiscoveryConfig, role: Role, id: &str, addr: &str) -> anyhow::Result<Self> {
        match cfg.kind {
            DiscoveryKind::Static => {
                let _ = (role, id, addr);
                Ok(Self {
                    #[cfg(feature = "etcd")]
                    keeper: None,
                })
            }
            #[cfg(feature = "etcd")]
            DiscoveryKind::Etcd => Ok(Self { keeper: Some(etcd::Keeper::start(cfg, role, id, addr).await?) }),
            #[cfg(not(feature = "etcd"))]
            DiscoveryKind::Etcd => anyhow::bail!("discovery.kind = \"etcd\": {NO_ETCD}"),
        }
    }

    /// With `kind = etcd`: grants a lease and claims a node number for message ids under it (see
    /// the module doc), announcing no address until [`announce`](Self::announce), so a control
    /// can stamp its ids with the number before it serves. Static discovery has nowhere to claim
    /// from: an error (set `[control] node_id` instead).
    pub async fn claim_node_id(cfg: &DiscoveryConfig, id: &str) -> anyhow::Result<(Self, u16)> {
        match cfg.kind {
            DiscoveryKind::Static => anyhow::bail!(
                "static discovery cannot claim a node id for control {id:?}: set [control] node_id"
            ),
            #[cfg(feature = "etcd")]
            DiscoveryKind::Etcd => {
                let (keeper, node_id) = etcd::Keeper::claim_node_id(cfg, id).await?;
                Ok((Self { keeper: Some(keeper) }, node_id))
            }
            #[cfg(not(feature = "etcd"))]
            DiscoveryKind::Etcd => anyhow::bail!("discovery.kind = \"etcd\": {NO_ETCD}"),
        }
    }

    /// Puts `{prefix}/{role}/{id}` = `addr` under the lease (replacing an address announced
    /// before), and keeps it there across re-registrations. Fails if etcd does not answer within
    /// a few seconds. A no-op with static discovery.
    pub async fn announce(&self, addr: &str) -> anyhow::Result<()> {
        #[cfg(feature = "etcd")]
        if let Some(keeper) = &self.keeper {
            return keeper.announce(addr).await;
        }
        let _ = addr;
        Ok(())
    }

    /// Resolves once the node id this registration claimed was taken by another control while
    /// the lease was lost; never, for a registration that claimed none.
    pub async fn node_id_lost(&self) {
        #[cfg(feature = "etcd")]
        if let Some(keeper) = &self.keeper {
            return keeper.node_id_lost().await;
        }
        std::future::pending().await
    }

    /// Revokes the lease (the key disappears at once) and stops the keep-alive task. If etcd is
    /// unreachable the revoke gives up after ~2 s and the key expires within the lease TTL.
    pub async fn shutdown(self) {
        #[cfg(feature = "etcd")]
        if let Some(keeper) = self.keeper {
            keeper.shutdown().await;
        }
        #[cfg(not(feature = "etcd"))]
        let Self {} = self;
    }
}

/// Watches one role's members: an initial read of the prefix, then a watch from the next
/// revision. Fails if etcd does not answer within ~3 s; after that the returned receiver keeps
/// the last known members while etcd is away. The watch task ends when every receiver is
/// dropped. Static discovery has no watch (its addresses are in the config) and returns an
/// error.
pub async fn watch(cfg: &DiscoveryConfig, role: Role) -> anyhow::Result<Members> {
    match cfg.kind {
        DiscoveryKind::Static => anyhow::bail!(
            "static discovery has no watch: {role} addresses come from the config's role sections"
        ),
        #[cfg(feature = "etcd")]
        DiscoveryKind::Etcd => etcd::watch(cfg, role).await,
        #[cfg(not(feature = "etcd"))]
        DiscoveryKind::Etcd => anyhow::bail!("discovery.kind = \"etcd\": {NO_ETCD}"),
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::time::Duration;

    use anyhow::{anyhow, Context};
    use etcd_client::{
        Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
        PutOptions, Txn, TxnOp, WatchOptions,
    };
    use gochat_control::ids::{node_of, MAX_NODE};
    use tokio::sync::{mpsc, oneshot, watch};
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
    use tracing::{debug, error, info, warn};

    use super::{DiscoveryConfig, Members, Role};

    /// Each etcd call, and so the start-up check that etcd answers.
    const RPC_TIMEOUT: Duration = Duration::from_secs(3);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// Revoking on shutdown: don't hold a shutdown up for long when etcd is away.
    const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Announcing an address: one put, after a re-registration in progress.
    const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);
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
    pub(super) struct Backoff {
        next: Duration,
    }

    impl Backoff {
        pub(super) fn new() -> Self {
            Self { next: BACKOFF_FIRST }
        }

        pub(super) fn next_delay(&mut self) -> Duration {
            let d = self.next;
            self.next = (self.next * 2).min(BACKOFF_CAP);
            d
        }

        pub(super) fn reset(&mut self) {
            self.next = BACKOFF_FIRST;
        }
    }

    /// `{prefix}/{role}/`: the directory of one role's members.
    pub(super) fn member_dir(prefix: &str, role: Role) -> String {
        format!("{}/{role}/", prefix.trim_end_matches('/'))
    }

    /// The member id of `key` in `dir`, if it is one.
    pub(super) fn member_id<'k>(dir: &str, key: &'k [u8]) -> Option<&'k str> {
        let id = key.strip_prefix(dir.as_bytes())?;
        let id = std::str::from_utf8(id).ok()?;
        (!id.is_empty()).then_some(id)
    }

    /// Applies a put of `id` = `addr`; returns whether the members changed.
    pub(super) fn put_member(
        members: &mut BTreeMap<String, String>,
        role: Role,
        id: &str,
        addr: &str,
    ) -> bool {
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
    pub(super) fn remove_member(members: &mut BTreeMap<String, String>, role: Role, id: &str) -> bool {
        match members.remove(id) {
            Some(addr) => {
                info!(%role, %id, %addr, "discovery: member removed");
                true
            }
            None => false,
        }
    }

    /// Replaces `members` with a fresh read, logging the differences; returns whether they changed.
    pub(super) fn replace_members(
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
            let (keeper, acks) =
                call("lease keep-alive", RPC_TIMEOUT, client.lease_keep_alive(lease)).await?;
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
                    let holder = call("get", RPC_TIMEOUT, client.get(key, None)).await.ok().and_then(|r| {
                        r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    });
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
                client.put(
                    self.key.as_str(),
                    addr,
                    Some(PutOptions::new().with_lease(lease).with_prev_key()),
                ),
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

    /// `{prefix}/node-ids/`: where node ids are claimed.
    pub(super) fn node_id_dir(prefix: &str) -> String {
        format!("{}/node-ids/", prefix.trim_end_matches('/'))
    }

    /// The numbers to try for a node id, in order: `preferred`, then up, wrapping at 1024.
    pub(super) fn node_id_candidates(preferred: u16) -> impl Iterator<Item = u16> {
        (0..=MAX_NODE).map(move |k| (preferred + k) % (MAX_NODE + 1))
    }

    /// Puts `key` = `value` on `lease` if `key` does not exist; returns whether it did.
    async fn create_on_lease(
        client: &mut Client,
        key: &str,
        value: &str,
        lease: i64,
    ) -> anyhow::Result<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))]);
        Ok(call("txn", RPC_TIMEOUT, client.txn(txn)).await?.succeeded())
    }

    /// Claims, for `id` on `lease`, the first number from `preferred` on that has no key in
    /// `dir`. Numbers seen taken are skipped; one taken between the read and the claim moves
    /// on to the next.
    async fn claim_free_node_id(
        client: &mut Client,
        dir: &str,
        id: &str,
        lease: i64,
        preferred: u16,
    ) -> anyhow::Result<u16> {
        let (taken, _) = read_members(client, dir).await?;
        for n in node_id_candidates(preferred) {
            let number = n.to_string();
            if !taken.contains_key(&number)
                && create_on_lease(client, &format!("{dir}{number}"), id, lease).await?
            {
                return Ok(n);
            }
        }
        anyhow::bail!("every node id (0-{MAX_NODE}) is taken under {dir}")
    }

    /// Puts the node id `key` = `id` on `lease` if the number is free, or still on one of `ours`
    /// (this member's leases before); false if another member holds it now.
    async fn reclaim_node_id(
        client: &mut Client,
        key: &str,
        id: &str,
        lease: i64,
        ours: &[i64],
    ) -> anyhow::Result<bool> {
        if create_on_lease(client, key, id, lease).await? {
            return Ok(true);
        }
        for &old in ours {
            let txn = Txn::new().when([Compare::lease(key, CompareOp::Equal, old)]).and_then([TxnOp::put(
                key,
                id,
                Some(PutOptions::new().with_lease(lease)),
            )]);
            if call("txn", RPC_TIMEOUT, client.txn(txn)).await?.succeeded() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The running keep-alive task of a [`Registration`](super::Registration).
    #[derive(Debug)]
    pub(super) struct Keeper {
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
        announcements: mpsc::Sender<Announcement>,
        node_id_lost: watch::Receiver<bool>,
    }

    impl Keeper {
        pub(super) async fn start(
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
        pub(super) async fn claim_node_id(cfg: &DiscoveryConfig, id: &str) -> anyhow::Result<(Self, u16)> {
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
                    return Err(e.context(format!(
                        "cannot claim a node id for control {id:?} in etcd at {endpoints}"
                    )));
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

        pub(super) async fn announce(&self, addr: &str) -> anyhow::Result<()> {
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

        pub(super) async fn node_id_lost(&self) {
            let mut lost = self.node_id_lost.clone();
            if lost.wait_for(|lost| *lost).await.is_err() {
                // The task ended (shut down) with the node id still held.
                std::future::pending::<()>().await;
            }
        }

        pub(super) async fn shutdown(mut self) {
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

    /// Reads every member in `dir`; returns them and the store revision of the read.
    async fn read_members(client: &mut Client, dir: &str) -> anyhow::Result<(BTreeMap<String, String>, i64)> {
        let resp = call("get", RPC_TIMEOUT, client.get(dir, Some(GetOptions::new().with_prefix()))).await?;
        let revision =
            resp.header().map(|h| h.revision()).ok_or_else(|| anyhow!("get: answer has no header"))?;
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

    pub(super) async fn watch(cfg: &DiscoveryConfig, role: Role) -> anyhow::Result<Members> {
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
        async fn run(
            self,
            mut client: Client,
            mut revision: i64,
            tx: watch::Sender<BTreeMap<String, String>>,
        ) {
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

        #[test]
        fn node_ids_are_tried_from_the_preferred_one_round_the_ring() {
            assert_eq!(node_id_dir("/gochat/"), "/gochat/node-ids/");
            let order: Vec<u16> = node_id_candidates(1022).collect();
            assert_eq!(order.len(), 1024);
            assert_eq!(order[..4], [1022, 1023, 0, 1]);
            assert_eq!(order[1023], 1021);
            let mut all = order.clone();
            all.sort_unstable();
            assert!(all.iter().copied().eq(0..=MAX_NODE), "each number once");
        }

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_static_and_valid() {
        let cfg = DiscoveryConfig::default();
        assert_eq!(cfg.kind, DiscoveryKind::Static);
        assert_eq!(cfg.prefix, "/gochat");
        assert_eq!(cfg.lease_ttl_secs, 5);
        cfg.validate().unwrap();
    }

    #[test]
    fn parses_and_rejects_unknown_fields() {
        let cfg: DiscoveryConfig = toml::from_str(
            "kind = \"etcd\"\netcd_endpoints = [\"http://10.0.0.1:2379\"]\nlease_ttl_secs = 3\n",
        )
        .unwrap();
        assert_eq!(cfg.kind, DiscoveryKind::Etcd);
        assert_eq!(cfg.etcd_endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(cfg.prefix, "/gochat");
        assert!(toml::from_str::<DiscoveryConfig>("kind = \"consul\"\n").is_err());
        assert!(toml::from_str::<DiscoveryConfig>("ttl = 3\n").is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        let with = |f: fn(&mut DiscoveryConfig)| {
            let mut cfg = DiscoveryConfig::default();
            f(&mut cfg);
            cfg.validate().map_err(|e| e.to_string())
        };
        assert!(with(|c| c.lease_ttl_secs = 1).unwrap_err().contains("lease_ttl_secs"));
        assert!(with(|c| c.lease_ttl_secs = 61).unwrap_err().contains("lease_ttl_secs"));
        with(|c| c.lease_ttl_secs = 2).unwrap();
        assert!(with(|c| c.prefix = "/".into()).unwrap_err().contains("prefix"));
        // Endpoints only matter for etcd.
        with(|c| c.etcd_endpoints.clear()).unwrap();
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_needs_the_feature() {
        let cfg = DiscoveryConfig { kind: DiscoveryKind::Etcd, ..Default::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("this build has no etcd support; build with --features etcd"), "{err}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_endpoints_are_checked() {
        let with = |endpoints: &[&str]| {
            let cfg = DiscoveryConfig {
                kind: DiscoveryKind::Etcd,
                etcd_endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                ..Default::default()
            };
            cfg.validate().map_err(|e| e.to_string())
        };
        with(&["http://127.0.0.1:2379", "10.0.0.2:2379"]).unwrap();
        assert!(with(&[]).unwrap_err().contains("at least one"));
        assert!(with(&[""]).is_err());
        assert!(with(&["https://etcd:2379"]).unwrap_err().contains("TLS"));
        assert!(with(&["grpc://etcd:2379"]).is_err());
    }

    #[tokio::test]
    async fn static_registration_is_a_no_op_and_has_no_watch() {
        let cfg = DiscoveryConfig::default();
        let reg = Registration::start(&cfg, Role::Gateway, "g-1", "http://127.0.0.1:7100").await.unwrap();
        reg.shutdown().await;
        let err = watch(&cfg, Role::Gateway).await.unwrap_err().to_string();
        assert!(err.contains("static discovery has no watch"), "{err}");
        let err = Registration::claim_node_id(&cfg, "c-1").await.unwrap_err().to_string();
        assert!(err.contains("set [control] node_id"), "{err}");
    }

    #[test]
    fn role_key_segments() {
        assert_eq!(Role::Gateway.to_string(), "gateway");
        assert_eq!(Role::Control.as_str(), "control");
        assert_eq!(Role::Worker.as_str(), "worker");
    }
}
