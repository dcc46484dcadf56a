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
//! Failure handling (etcd kind):
//! - [`Registration::start`] and [`watch`] fail if etcd does not answer at start (~3 s).
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
        Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
        WatchOptions,
    };
    use tokio::sync::{oneshot, watch};
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
    use tracing::{debug, info, warn};

    use super::{DiscoveryConfig, Members, Role};

    /// Each etcd call, and so the start-up check that etcd answers.
    const RPC_TIMEOUT: Duration = Duration::from_secs(3);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// Revoking on shutdown: don't hold a shutdown up for long when etcd is away.
    const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);
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
        addr: String,
        key: String,
        ttl_secs: u64,
    }

    /// A registered member: its key is on `lease`, kept alive through `keeper`.
    struct Session {
        client: Client,
        lease: i64,
        keeper: LeaseKeeper,
        acks: LeaseKeepAliveStream,
    }

    impl Member {
        /// Grants a lease, puts the key on it and opens the keep-alive stream. `previous` is the
        /// lease this process held before (a key found on it is ours, not a duplicate).
        async fn register(&self, previous: Option<i64>) -> anyhow::Result<Session> {
            let mut client = connect(&self.endpoints).await?;
            let ttl = i64::try_from(self.ttl_secs).unwrap_or(i64::MAX);
            let lease = call("lease grant", RPC_TIMEOUT, client.lease_grant(ttl, None)).await?.id();
            let put = call(
                "put",
                RPC_TIMEOUT,
                client.put(
                    self.key.as_str(),
                    self.addr.as_str(),
                    Some(PutOptions::new().with_lease(lease).with_prev_key()),
                ),
            )
            .await?;
            if let Some(prev) = put.prev_key() {
                if Some(prev.lease()) != previous {
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
            let (keeper, acks) =
                call("lease keep-alive", RPC_TIMEOUT, client.lease_keep_alive(lease)).await?;
            Ok(Session { client, lease, keeper, acks })
        }

        /// Registers again until it works, backing off; tidies the previous lease away.
        async fn reregister(&self, previous: i64, backoff: &mut Backoff) -> Session {
            loop {
                sleep(backoff.next_delay()).await;
                match self.register(Some(previous)).await {
                    Ok(mut session) => {
                        // The key has moved to the new lease; the old one, if it survived,
                        // holds nothing now. Failing here is harmless: it expires.
                        if let Err(e) =
                            call("lease revoke", REVOKE_TIMEOUT, session.client.lease_revoke(previous)).await
                        {
                            debug!(error = %e, "discovery: old lease not revoked");
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

        /// Revokes the session's lease so the key disappears at once.
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

        /// The keep-alive task: refresh, and on loss re-register, until stopped. `stop` fired
        /// means shut down (revoke); `stop` dropped means abandon (the lease expires).
        async fn run(self, mut session: Session, mut stop: oneshot::Receiver<()>) {
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
                info!(
                    role = %self.role,
                    id = %self.id,
                    addr = %self.addr,
                    lease_ttl_secs = self.ttl_secs,
                    "discovery: re-registered in etcd"
                );
            }
        }
    }

    /// The running keep-alive task of a [`Registration`](super::Registration).
    #[derive(Debug)]
    pub(super) struct Keeper {
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
    }

    impl Keeper {
        pub(super) async fn start(
            cfg: &DiscoveryConfig,
            role: Role,
            id: &str,
            addr: &str,
        ) -> anyhow::Result<Self> {
            cfg.validate()?;
            if id.is_empty() || id.contains('/') {
                anyhow::bail!("discovery: member id {id:?} must be non-empty and without '/'");
            }
            if addr.is_empty() {
                anyhow::bail!("discovery: member {role}/{id} has an empty address");
            }
            let member = Member {
                endpoints: cfg.etcd_endpoints.clone(),
                role,
                id: id.to_owned(),
                addr: addr.to_owned(),
                key: format!("{}{id}", member_dir(&cfg.prefix, role)),
                ttl_secs: cfg.lease_ttl_secs,
            };
            let session = member.register(None).await.with_context(|| {
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
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(member.run(session, stopped));
            Ok(Self { stop: Some(stop), task: Some(task) })
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
    }

    #[test]
    fn role_key_segments() {
        assert_eq!(Role::Gateway.to_string(), "gateway");
        assert_eq!(Role::Control.as_str(), "control");
        assert_eq!(Role::Worker.as_str(), "worker");
    }
}
