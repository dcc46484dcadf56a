//! A local cluster on loopback, for tests and demos: its own Redis (append-only, so a restart
//! keeps the queue and the state) or Redis Cluster (three primaries, three replicas) and etcd, a database of its own on the machine's PostgreSQL,
//! and gateways, controls and workers as separate `gochat` processes, each with its own config
//! file under the cluster's folder. Every member can be killed and restarted, to test failures.
//!
//! Needs `redis-server` and `etcd` on the PATH (Debian: `redis-server`, `etcd-server`), `psql`,
//! a PostgreSQL server, and a `gochat` binary built with the `etcd` feature.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use gochat_gateway::driver::DriverChoice;
use gochat_runtime::launch::{free_addr, Process};

pub use crate::discovery::Role;
use crate::discovery::{DiscoveryConfig, DiscoveryKind};
use crate::Config;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub gateways: usize,
    pub controls: usize,
    pub workers: usize,
    /// The `gochat` binary (built with `--features etcd`).
    pub binary: PathBuf,
    /// Folder for configs, data and logs; made if missing, removed by [`LocalCluster::stop`].
    pub dir: PathBuf,
    /// A database the cluster may create its own database from.
    pub postgres_admin_url: String,
    pub driver: DriverChoice,
    /// Shards per gateway.
    pub shards: usize,
    /// The controls' server API keys (none: the server API is off).
    pub api_keys: Vec<String>,
    /// State and queue on a Redis Cluster of three primaries and three replicas, not one Redis.
    pub redis_cluster: bool,
}

impl ClusterSpec {
    pub fn new(binary: PathBuf, dir: PathBuf) -> Self {
        Self {
            gateways: 2,
            controls: 2,
            workers: 2,
            binary,
            dir,
            postgres_admin_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            driver: DriverChoice::Auto,
            shards: 1,
            api_keys: Vec::new(),
            redis_cluster: false,
        }
    }
}

/// A failure to inject into a running cluster, as `gochat cluster --faults` names it:
/// `kill-worker-1`, `restart-gateway-2`, `kill-control-1`, `restart-redis`, `restart-etcd`,
/// and on a Redis Cluster `kill-redis-primary-N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill(Role, usize),
    Restart(Role, usize),
    /// Every Redis node stopped (SIGTERM) and started again, in turn; a killed one started.
    RestartRedis,
    RestartEtcd,
    /// SIGKILL to the Redis Cluster primary that serves the `n`th third of the slots (from 1):
    /// its replica takes over.
    KillRedisPrimary(usize),
}

impl std::str::FromStr for Fault {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "restart-redis" => return Ok(Fault::RestartRedis),
            "restart-etcd" => return Ok(Fault::RestartEtcd),
            _ => {}
        }
        let bad = || {
            anyhow::anyhow!(
                "unknown fault {s:?}: kill-ROLE-N, restart-ROLE-N, restart-redis, restart-etcd or \
                 kill-redis-primary-N (N: 1 to 3)"
            )
        };
        if let Some(n) = s.strip_prefix("kill-redis-primary-") {
            let n: usize = n.parse().ok().filter(|n| (1..=3).contains(n)).ok_or_else(bad)?;
            return Ok(Fault::KillRedisPrimary(n));
        }
        let (action, member) = s.split_once('-').ok_or_else(bad)?;
        let (role, n) = member.rsplit_once('-').ok_or_else(bad)?;
        let role = [Role::Gateway, Role::Control, Role::Worker]
            .into_iter()
            .find(|r| r.as_str() == role)
            .ok_or_else(bad)?;
        let n: usize = n.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
        match action {
            "kill" => Ok(Fault::Kill(role, n)),
            "restart" => Ok(Fault::Restart(role, n)),
            _ => Err(bad()),
        }
    }
}

/// Where a member listens.
#[derive(Debug, Clone)]
pub struct Member {
    pub role: Role,
    pub id: String,
    /// Gateway: WebSocket. Control: REST API. Worker: none.
    pub public: Option<SocketAddr>,
    /// gRPC (gateway and control).
    pub grpc: Option<SocketAddr>,
    pub config: PathBuf,
}

pub struct LocalCluster {
    spec: ClusterSpec,
    /// One Redis, or the Redis Cluster's six nodes.
    redis: Vec<Process>,
    etcd: Process,
    database: String,
    members: Vec<(Member, Process)>,
    redis_url: String,
    etcd_url: String,
    /// The folder did not exist before: it is the cluster's to remove.
    made_dir: bool,
}

/// Each member has a config of its own: none of this process's settings (a config key's
/// variable would set the same listener in every member).
fn own_settings_removed() -> Vec<(OsString, Option<OsString>)> {
    std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            crate::config::is_key_var(&name)
                || ["GOCHAT_CONFIG", "GOCHAT_DRIVER", "GOCHAT_SHARDS"].contains(&&*name)
        })
        .map(|(name, _)| (name, None))
        .collect()
}

fn psql(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([admin_url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl LocalCluster {
    /// Starts Redis, etcd, the database, then controls, gateways and workers, each once ready.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<Self> {
        let made_dir = !spec.dir.exists();
        std::fs::create_dir_all(&spec.dir)?;
        let dir = spec.dir.canonicalize()?;
        let path = |name: &str| dir.join(name);

        let nodes = if spec.redis_cluster { 6 } else { 1 };
        let mut redis = Vec::new();
        let mut redis_addrs = Vec::new();
        for i in 1..=nodes {
            let addr = if spec.redis_cluster { free_cluster_node_addr()? } else { free_addr()? };
            let name = if nodes == 1 { "redis".to_string() } else { format!("redis-{i}") };
            std::fs::create_dir_all(path(&name))?;
            let mut args = [
                "--bind",
                "127.0.0.1",
                "--port",
                &addr.port().to_string(),
                "--dir",
                path(&name).to_str().context("utf-8 path")?,
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ]
            .map(String::from)
            .to_vec();
            if spec.redis_cluster {
                // A primary silent for 2 s is failed over to its replica; replicas sync at once
                // (no wait for more replicas to share a transfer).
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--repl-diskless-sync-delay",
                        "0",
                    ]
                    .map(String::from),
                );
            }
            redis.push(
                Process::new(name.clone(), "redis-server", args, path(&format!("{name}.log"))).ready_at(addr),
            );
            redis_addrs.push(addr);
        }
        let redis_url = match spec.redis_cluster {
            true => format!(
                "redis+cluster://{}",
                redis_addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            ),
            false => format!("redis://{}", redis_addrs[0]),
        };
        let (etcd_addr, peer_addr) = (free_addr()?, free_addr()?);
        let etcd_url = format!("http://{etcd_addr}");
        let etcd = Process::new(
            "etcd",
            "etcd",
            vec![
                "--name".into(),
                "gochat-local".into(),
                "--data-dir".into(),
                path("etcd").to_str().context("utf-8 path")?.into(),
                "--listen-client-urls".into(),
                etcd_url.clone(),
                "--advertise-client-urls".into(),
                etcd_url.clone(),
                "--listen-peer-urls".into(),
                format!("http://{peer_addr}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://{peer_addr}"),
                "--initial-cluster".into(),
                format!("gochat-local=http://{peer_addr}"),
            ],
            path("etcd.log"),
        )
        .ready_at(etcd_addr);
        let database = format!("gochat_cluster_{}_{}", std::process::id(), etcd_addr.port());
        let mut cluster =
            Self { redis_url, etcd_url, spec, redis, etcd, database, members: Vec::new(), made_dir };
        for node in &mut cluster.redis {
            node.spawn()?;
        }
        cluster.etcd.spawn()?;
        for node in &mut cluster.redis {
            node.wait_ready(Duration::from_secs(10))?;
        }
        if cluster.spec.redis_cluster {
            create_redis_cluster(&redis_addrs, &cluster.spec.dir)?;
        }
        cluster.etcd.wait_ready(Duration::from_secs(20))?;
        psql(&cluster.spec.postgres_admin_url, &format!("CREATE DATABASE {}", cluster.database))?;

        for (role, n) in [
            (Role::Control, cluster.spec.controls),
            (Role::Gateway, cluster.spec.gateways),
            (Role::Worker, cluster.spec.workers),
        ] {
            for i in 1..=n {
                cluster.add(role, i)?;
            }
        }
        for (_, proc) in &mut cluster.members {
            proc.wait_ready(Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    /// The config file of one member: every role shares Redis, etcd and the database.
    fn config(
        &self,
        role: Role,
        id: &str,
    ) -> anyhow::Result<(Config, Option<SocketAddr>, Option<SocketAddr>)> {
        let mut cfg = Config {
            discovery: DiscoveryConfig {
                kind: DiscoveryKind::Etcd,
                etcd_endpoints: vec![self.etcd_url.clone()],
                lease_ttl_secs: 3,
                ..DiscoveryConfig::default()
            },
            ..Config::default()
        };
        cfg.queue.kind = gochat_queue::QueueKind::Redis;
        cfg.queue.redis.url = self.redis_url.clone();
        cfg.queue.redis.claim_idle_ms = 2000;
        cfg.queue.redis.consumer = Some(id.to_string());
        let (mut public, mut grpc) = (None, None);
        match role {
            Role::Control => {
                let (api, g) = (free_addr()?, free_addr()?);
                cfg.control.id = id.into();
                // No node_id: each control claims a free one in etcd, as in production.
                cfg.control.api_listen = api;
                cfg.control.grpc_listen = g;
                cfg.control.site_listen = Some(free_addr()?);
                cfg.control.database = format!(
                    "{}/{}",
                    self.spec.postgres_admin_url.rsplit_once('/').map_or("", |(base, _)| base),
                    self.database
                );
                cfg.control.state = gochat_control::config::StateKind::Redis;
                cfg.control.redis_url = self.redis_url.clone();
                // A lease outlasts a Redis Cluster failover (2 s of node timeout, then the
                // election), or every gateway whose lease key is on the failed primary would be
                // taken for dead and close its sockets.
                cfg.control.gateway_lease_secs = if self.spec.redis_cluster { 10 } else { 3 };
                cfg.control.demo_users = Some(false);
                cfg.control.api_keys.clone_from(&self.spec.api_keys);
                // Every client of a local cluster comes from loopback, and tests push faster
                // than a person.
                cfg.control = cfg.control.without_rate_limits();
                (public, grpc) = (Some(api), Some(g));
            }
            Role::Gateway => {
                let (ws, g) = (free_addr()?, free_addr()?);
                cfg.gateway.id = id.into();
                cfg.gateway.ws_listen = ws;
                cfg.gateway.tcp_listen = Some(free_addr()?);
                cfg.gateway.grpc_listen = g;
                cfg.gateway.shards = self.spec.shards;
                cfg.gateway.driver = self.spec.driver;
                // Inside `stop`'s grace: a drain closes its clients spread over this.
                cfg.gateway.drain_secs = 2;
                (public, grpc) = (Some(ws), Some(g));
            }
            Role::Worker => cfg.worker.id = id.into(),
        }
        Ok((cfg, public, grpc))
    }

    fn add(&mut self, role: Role, i: usize) -> anyhow::Result<()> {
        let id = format!("{}-{i}", role.as_str());
        let (cfg, public, grpc) = self.config(role, &id)?;
        let config = self.spec.dir.canonicalize()?.join(format!("{id}.toml"));
        std::fs::write(&config, toml::to_string(&cfg)?)?;
        let mut proc = Process::new(
            id.clone(),
            self.spec.binary.clone(),
            vec!["--config".into(), config.to_str().context("utf-8 path")?.into(), role.as_str().into()],
            self.spec.dir.canonicalize()?.join(format!("{id}.log")),
        );
        // Clients' port: a gateway announces itself (gRPC) before it takes clients.
        proc.ready = public.or(grpc);
        proc.env = own_settings_removed();
        proc.spawn()?;
        self.members.push((Member { role, id, public, grpc, config }, proc));
        Ok(())
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().map(|(m, _)| m)
    }

    /// The `n`th (from 1) member of a role.
    pub fn member(&self, role: Role, n: usize) -> &Member {
        self.members.iter().map(|(m, _)| m).filter(|m| m.role == role).nth(n - 1).expect("such a member")
    }

    fn proc(&mut self, role: Role, n: usize) -> &mut Process {
        self.members
            .iter_mut()
            .filter(|(m, _)| m.role == role)
            .nth(n - 1)
            .map(|(_, p)| p)
            .expect("such a member")
    }

    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// SIGKILLs the `n`th member of `role`.
    pub fn kill(&mut self, role: Role, n: usize) {
        self.proc(role, n).kill();
    }

    /// Starts the `n`th member of `role` again (after [`LocalCluster::kill`]) and waits until it is
    /// ready.
    pub fn restart(&mut self, role: Role, n: usize) -> anyhow::Result<()> {
        let proc = self.proc(role, n);
        proc.kill();
        proc.spawn()?;
        proc.wait_ready(Duration::from_secs(30))
    }

    /// Stops Redis (SIGTERM: it writes its append-only file) and starts it again; each node
    /// of a Redis Cluster in turn (a killed one is started).
    pub fn restart_redis(&mut self) -> anyhow::Result<()> {
        for node in &mut self.redis {
            node.stop(Duration::from_secs(10));
            node.spawn()?;
            node.wait_ready(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// SIGKILLs the Redis Cluster primary serving the `n`th third of the slots (see
    /// [`Fault::KillRedisPrimary`]); returns its address.
    pub fn kill_redis_primary(&mut self, n: usize) -> anyhow::Result<SocketAddr> {
        anyhow::ensure!(self.spec.redis_cluster, "not a Redis Cluster (gochat cluster --redis-cluster)");
        let slot = (n.clamp(1, 3) - 1) * 16384 / 3;
        let live = self.redis.iter().filter(|p| p.is_started()).filter_map(|p| p.ready).collect::<Vec<_>>();
        let primary = redis_primary_of(&live, slot)?;
        let node = self.redis.iter_mut().find(|p| p.ready == Some(primary)).context("no such node")?;
        node.kill();
        Ok(primary)
    }

    /// Kills etcd (SIGKILL) and starts it again on its data.
    pub fn restart_etcd(&mut self) -> anyhow::Result<()> {
        self.etcd.kill();
        self.etcd.spawn()?;
        self.etcd.wait_ready(Duration::from_secs(20))
    }

    /// Injects `fault`; a restart returns once the process is ready again.
    pub fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill(role, n) => {
                anyhow::ensure!(self.members().filter(|m| m.role == role).count() >= n, "no {role} {n}");
                self.kill(role, n);
                Ok(())
            }
            Fault::Restart(role, n) => {
                anyhow::ensure!(self.members().filter(|m| m.role == role).count() >= n, "no {role} {n}");
                self.restart(role, n)
            }
            Fault::RestartRedis => self.restart_redis(),
            Fault::RestartEtcd => self.restart_etcd(),
            Fault::KillRedisPrimary(n) => self.kill_redis_primary(n).map(drop),
        }
    }

    /// Where the logs are.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Stops every process, drops the database and removes the folder if the cluster made it.
    pub fn stop(mut self) {
        self.shutdown();
        if self.made_dir {
            let _ = std::fs::remove_dir_all(&self.spec.dir);
        }
    }

    fn shutdown(&mut self) {
        for (_, proc) in self.members.iter_mut().rev() {
            proc.stop(Duration::from_secs(5));
        }
        for node in &mut self.redis {
            node.stop(Duration::from_secs(5));
        }
        self.etcd.stop(Duration::from_secs(5));
        if let Err(e) =
            psql(&self.spec.postgres_admin_url, &format!("DROP DATABASE IF EXISTS {}", self.database))
        {
            tracing::warn!(error = %e, "could not drop the cluster's database");
        }
    }
}

impl Drop for LocalCluster {
    /// A cluster dropped without [`LocalCluster::stop`] (a failed test) still stops its processes
    /// and drops its database, but keeps its folder with the logs.
    fn drop(&mut self) {
        if self.members.iter().any(|(_, p)| p.is_started()) || self.redis.iter().any(Process::is_started) {
            self.shutdown();
        }
    }
}

/// A free address for a Redis Cluster node whose cluster bus port (its port + 10000) is free
/// too, and below 32768, where the kernel's ephemeral range starts by default (an outgoing
/// connection could take a port there).
fn free_cluster_node_addr() -> anyhow::Result<SocketAddr> {
    for _ in 0..10_000 {
        let addr = free_addr()?;
        let bus = u32::from(addr.port()) + 10_000;
        if bus < 32_768 && std::net::TcpListener::bind(("127.0.0.1", bus as u16)).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no free loopback port whose Redis Cluster bus port (port + 10000) is free")
}

/// Makes a Redis Cluster of the nodes at `addrs` (three primaries, each with a replica), with
/// `redis-cli --cluster create`, and waits until every node reports it ready and every replica
/// is in sync with its primary (a replica that never synced cannot take over).
fn create_redis_cluster(addrs: &[SocketAddr], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(addrs.iter().map(ToString::to_string))
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .context("running redis-cli --cluster create")?;
    std::fs::write(dir.join("redis-cluster-create.log"), &out.stdout)?;
    if !out.status.success() {
        bail!("redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in addrs {
        loop {
            let info = redis::Client::open(format!("redis://{addr}"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
            let replication = redis::Client::open(format!("redis://{addr}"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query::<String>(&mut c));
            let synced =
                replication.is_ok_and(|r| r.contains("role:master") || r.contains("master_link_status:up"));
            if synced && info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "Redis Cluster node {addr} never reported cluster_state:ok and, a replica, its link up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The primary serving `slot`, as the first of the `live` nodes that answers sees it.
fn redis_primary_of(live: &[SocketAddr], slot: usize) -> anyhow::Result<SocketAddr> {
    for addr in live {
        let Ok(mut conn) = redis::Client::open(format!("redis://{addr}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        else {
            continue;
        };
        let Ok(slots) = redis::cmd("CLUSTER").arg("SLOTS").query::<redis::Value>(&mut conn) else { continue };
        let redis::Value::Array(ranges) = slots else { continue };
        for range in ranges {
            let redis::Value::Array(r) = range else { continue };
            let (
                Some(redis::Value::Int(from)),
                Some(redis::Value::Int(to)),
                Some(redis::Value::Array(primary)),
            ) = (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            if !(*from as usize..=*to as usize).contains(&slot) {
                continue;
            }
            if let (Some(redis::Value::BulkString(host)), Some(redis::Value::Int(port))) =
                (primary.first(), primary.get(1))
            {
                return Ok(SocketAddr::new(String::from_utf8_lossy(host).parse()?, *port as u16));
            }
        }
    }
    bail!("no Redis Cluster node answered CLUSTER SLOTS for slot {slot}")
}

/// `gochat cluster`: starts the cluster and lists its members, injects `faults` (seconds after
/// start, fault) at their times, and stops it all at Ctrl-C or SIGTERM.
pub fn run(spec: ClusterSpec, mut faults: Vec<(f64, Fault)>) -> anyhow::Result<()> {
    if !cfg!(feature = "etcd") {
        anyhow::bail!(
            "the local cluster uses etcd discovery: build with `cargo build --release --features etcd`"
        );
    }
    let mut cluster = LocalCluster::start(spec)?;
    let started = Instant::now();
    println!("local cluster up (Redis {}, etcd {}):", cluster.redis_url(), cluster.etcd_url());
    for m in cluster.members() {
        let public = m.public.map(|a| a.to_string()).unwrap_or_default();
        println!("  {:<10} {:<18} {}", m.id, public, m.config.display());
    }
    println!("logs in {}; Ctrl-C to stop.", cluster.dir().display());
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(crate::roles::shutdown_signal());
        }
        let _ = stop_tx.send(());
    });
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut stopped = false;
    for (at, fault) in faults {
        let wait = Duration::from_secs_f64(at).saturating_sub(started.elapsed());
        if stop_rx.recv_timeout(wait).is_ok() {
            stopped = true;
            break;
        }
        match cluster.inject(fault) {
            Ok(()) => println!("{:>7.1} s  {fault:?}", started.elapsed().as_secs_f64()),
            Err(e) => println!("{:>7.1} s  {fault:?} failed: {e:#}", started.elapsed().as_secs_f64()),
        }
    }
    if !stopped {
        let _ = stop_rx.recv();
    }
    println!("stopping…");
    cluster.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_bad_ones_are_named() {
        assert_eq!("kill-worker-1".parse::<Fault>().unwrap(), Fault::Kill(Role::Worker, 1));
        assert_eq!("restart-gateway-2".parse::<Fault>().unwrap(), Fault::Restart(Role::Gateway, 2));
        assert_eq!("restart-redis".parse::<Fault>().unwrap(), Fault::RestartRedis);
        assert_eq!("restart-etcd".parse::<Fault>().unwrap(), Fault::RestartEtcd);
        assert_eq!("kill-redis-primary-3".parse::<Fault>().unwrap(), Fault::KillRedisPrimary(3));
        for bad in [
            "kill-worker-0",
            "kill-queue-1",
            "stop-worker-1",
            "kill-worker",
            "restart-redis-1",
            "kill-redis-primary-4",
            "kill-redis-primary-0",
            "kill-redis-1",
        ] {
            let e = bad.parse::<Fault>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// What a launcher that does not build the roles writes (the bench's clusters) is a config
    /// `gochat` reads, each key with the value written.
    #[test]
    fn a_node_config_reads_as_a_config_with_every_key_it_sets() {
        use gochat_runtime::launch::{
            ControlKeys, GatewayKey, GatewayKeys, NodeConfig, QueueKeys, RedisQueueKeys, WorkerKeys,
        };
        let addr = |port: u16| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        let grpc = Some("http://127.0.0.1:3".to_string());
        let node = NodeConfig {
            control: Some(ControlKeys {
                api_listen: addr(1),
                site_listen: addr(2),
                grpc_listen: addr(3),
                database: Some("sqlite:///tmp/users.sqlite3".into()),
                session_ttl_secs: Some(864_000),
                login_per_minute: Some(0),
                register_per_minute: Some(0),
                push_per_second: Some(0),
                http_max_connections_per_address: Some(0),
                max_connections_per_user: Some(0),
                open_rooms: Some(true),
                more: toml::from_str("history_size = 0").unwrap(),
            }),
            queue: Some(QueueKeys {
                kind: Some("redis".into()),
                capacity: Some(1_000_000),
                redis: Some(RedisQueueKeys {
                    url: Some("redis+cluster://10.0.0.1:7000,10.0.0.2:7000".into()),
                    prefix: Some("gochat-bench".into()),
                }),
            }),
            worker: Some(WorkerKeys {
                logic: grpc.clone(),
                batch_age_us: None,
                batch_max: None,
                gateways: vec![GatewayKey { id: "gateway-1".into(), grpc: "http://127.0.0.1:4".into() }],
            }),
            gateway: Some(GatewayKeys {
                id: Some("gateway-1".into()),
                ws_listen: addr(5),
                tcp_listen: addr(6),
                grpc_listen: addr(4),
                logic: grpc,
                shards: Some(1),
                driver: Some("epoll".into()),
                max_connections: Some(19_000),
                ws_echo_path: Some("/echo".into()),
                drain_secs: Some(0),
                wss_listen: addr(7),
                tls_cert: Some("/etc/gochat/tls/fullchain.pem".into()),
                tls_key: Some("/etc/gochat/tls/privkey.pem".into()),
                compression: Some("on".into()),
                more: toml::Table::from_iter([("idle_timeout_secs".to_string(), toml::Value::Integer(300))]),
            }),
        };
        let written: toml::Table = toml::from_str(&node.to_toml().unwrap()).unwrap();
        let read = toml::Table::try_from(Config::parse(&node.to_toml().unwrap()).unwrap()).unwrap();
        fn check(written: &toml::Table, read: &toml::Table, at: &str) {
            for (key, value) in written {
                let name = format!("{at}.{key}");
                match (value, read.get(key)) {
                    (toml::Value::Table(w), Some(toml::Value::Table(r))) => check(w, r, &name),
                    (w, r) => assert_eq!(Some(w), r, "{name}"),
                }
            }
        }
        check(&written, &read, "");
    }
}
