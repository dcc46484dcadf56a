//! Service discovery: how the roles of a cluster find each other.
//!
//! Every role (gateway, control, worker) registers itself under an etcd lease as
//! `{prefix}/{role}/{id}` with its gRPC address as the value, and keeps the lease alive; roles
//! watch the members of the other roles. A member that stops refreshing its lease disappears
//! within the lease TTL; one that shuts down revokes its lease and disappears at once.
//!
//! Static discovery (addresses from the role sections of the config) is the embedded default and
//! needs neither etcd nor protoc. Everything etcd-specific is behind the cargo feature `etcd`, in
//! the `etcd` submodule.
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

/// Members of one role (see [`gochat_runtime::peers::Members`]); a watch keeps the last known set
/// while etcd is unreachable.
pub use gochat_runtime::peers::Members;

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
mod etcd;

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
