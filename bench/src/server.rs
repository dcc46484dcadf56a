//! The server under test: its processes' memory and CPU (found by pid or listening port), the
//! kernel's slab, and a local gochat-rs cluster the bench can start itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use gochat_runtime::launch::{
    free_addr, ControlKeys, GatewayKey, GatewayKeys, NodeConfig, Process, QueueKeys, RedisQueueKeys,
    WorkerKeys,
};
use serde::{Deserialize, Serialize};

/// Resource use of the server processes at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sample {
    pub rss_bytes: u64,
    pub cpu_secs: f64,
    /// Kernel slab, machine-wide (socket buffers and TCP state live there).
    pub slab_bytes: u64,
}

/// The processes serving the benchmark.
#[derive(Debug, Clone, Default)]
pub struct ServerProcs {
    pub pids: Vec<u32>,
    /// Single threads (process id, thread id), CPU time only: the floor's sender.
    pub threads: Vec<(u32, u32)>,
}

impl ServerProcs {
    /// Every process holding a listening socket on `port`.
    pub fn by_port(port: u16) -> anyhow::Result<Self> {
        let inodes = listening_inodes(port)?;
        if inodes.is_empty() {
            bail!("nothing listens on port {port}");
        }
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
            let holds = fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| l.to_str().map(str::to_owned))
                    .is_some_and(|l| inodes.iter().any(|i| l == format!("socket:[{i}]")))
            });
            if holds && pid != std::process::id() {
                pids.push(pid);
            }
        }
        if pids.is_empty() {
            bail!("no process found holding port {port} (another user's process?)");
        }
        Ok(Self { pids, ..Self::default() })
    }

    /// `pids` and every process below them (a server started by a script, a supervisor and
    /// its children), as they are now.
    pub fn with_descendants(pids: &[u32]) -> Self {
        let mut parents = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some(ppid) = stat_fields(&stat).get(1).and_then(|p| p.parse::<u32>().ok()) {
                parents.push((pid, ppid));
            }
        }
        let mut all: Vec<u32> = pids.to_vec();
        let mut i = 0;
        while i < all.len() {
            let parent = all[i];
            let children: Vec<u32> =
                parents.iter().filter(|(p, pp)| *pp == parent && !all.contains(p)).map(|(p, _)| *p).collect();
            all.extend(children);
            i += 1;
        }
        Self { pids: all, ..Self::default() }
    }

    pub fn sample(&self) -> Sample {
        let ticks = gochat_runtime::os::clock_ticks();
        let mut s = Sample { slab_bytes: meminfo_kb("Slab:") * 1024, ..Sample::default() };
        for pid in &self.pids {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                s.rss_bytes += field_kb(&status, "VmRSS:") * 1024;
            }
            s.cpu_secs += cpu_secs(&format!("/proc/{pid}/stat"), ticks);
        }
        for (pid, tid) in &self.threads {
            s.cpu_secs += cpu_secs(&format!("/proc/{pid}/task/{tid}/stat"), ticks);
        }
        s
    }
}

/// The fields of a `/proc/…/stat` line after the command name (which may hold spaces and
/// parentheses): state is 0, the parent's pid 1, utime 11 and stime 12.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect()
}

/// `utime + stime` of a `/proc/…/stat` file, in seconds (0 when it is gone).
fn cpu_secs(stat: &str, ticks: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat) else { return 0.0 };
    let f = stat_fields(&stat);
    let parse = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (parse(11) + parse(12)) as f64 / ticks
}

fn field_kb(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn meminfo_kb(name: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo").map_or(0, |m| field_kb(&m, name))
}

/// Inodes of the sockets listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let Some(p) = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) else {
                continue;
            };
            if p == port && *state == "0A" {
                out.push(inode.to_string());
            }
        }
    }
    Ok(out)
}

/// `[control]` settings of a spawned cluster: every bench client comes from loopback (with
/// hundreds of REST calls in flight), users are made by the thousand and share sockets by the
/// hundred, and pushers need no socket in the rooms they push to.
fn bench_control() -> ControlKeys {
    ControlKeys {
        login_per_minute: Some(0),
        register_per_minute: Some(0),
        push_per_second: Some(0),
        http_max_connections_per_address: Some(0),
        max_connections_per_user: Some(0),
        open_rooms: Some(true),
        ..ControlKeys::default()
    }
}

/// `KEY=VALUE` settings (VALUE in TOML) given with `flag`, as one table.
fn settings(flag: &str, given: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for setting in given {
        if !setting.contains('=') {
            bail!("{flag} {setting:?}: expected KEY=VALUE");
        }
        table.extend(toml::from_str::<toml::Table>(setting).with_context(|| format!("{flag} {setting:?}"))?);
    }
    Ok(table)
}

/// A local gochat-rs cluster: one control (with its queue-worker) and `gateways` gateway
/// processes sharing the WebSocket port with `SO_REUSEPORT`.
pub struct Cluster {
    /// Control, then the worker (shared queue only), then the gateways.
    processes: Vec<Process>,
    dir: PathBuf,
    pub api: String,
    pub ws: SocketAddr,
    pub procs: ServerProcs,
    pub gateway_procs: ServerProcs,
    /// The gateways' gRPC URLs.
    pub gateway_grpc: Vec<String>,
    /// Key prefix of the Redis queue, deleted at stop.
    /// With a Redis queue: its URL, and the prefix of the run's keys.
    redis_prefix: Option<(String, String)>,
}

/// What a spawned cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterSpec<'a> {
    pub driver: &'a str,
    pub gateways: usize,
    pub max_conns_per_gateway: usize,
    /// `memory` (the worker inside control) or `redis`.
    pub queue: &'a str,
    /// With `redis`: its URL (one node or a cluster), for the queue and control's state.
    pub redis: &'a str,
    pub batch_age_us: u64,
    pub batch_max: Option<usize>,
    /// `KEY=VALUE` settings for `[control]` (VALUE in TOML), over the bench's own.
    pub control_settings: &'a [String],
    /// `KEY=VALUE` settings for every gateway's `[gateway]`, over the bench's own.
    pub gateway_settings: &'a [String],
    /// Serve `wss://` with this certificate and key: clients then connect to the wss listener.
    pub tls: Option<&'a ServerCert>,
    /// Offer `permessage-deflate` to clients.
    pub compression: bool,
}

/// A certificate and its key, as PEM files, for a spawned cluster's wss listener.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate, to trust.
    pub cert_pem: String,
}

impl ServerCert {
    /// A self-signed certificate for `localhost` and 127.0.0.1 with a new key, written to `dir`.
    pub fn self_signed(dir: &Path) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let cert = params.self_signed(&key)?;
        std::fs::create_dir_all(dir)?;
        let (cert_path, key_path) = (dir.join("wss-cert.pem"), dir.join("wss-key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(Self { cert: cert_path, key: key_path, cert_pem: cert.pem() })
    }
}

impl Cluster {
    pub fn start(gochat: &Path, spec: &ClusterSpec<'_>) -> anyhow::Result<Self> {
        let ClusterSpec {
            driver,
            gateways,
            max_conns_per_gateway,
            queue,
            redis,
            batch_age_us,
            batch_max,
            control_settings,
            gateway_settings,
            tls,
            compression,
        } = spec.clone();
        let mut control = bench_control();
        control.more = settings("--control-set", control_settings)?;
        let gateway_more = settings("--gateway-set", gateway_settings)?;
        if !gochat.is_file() {
            bail!("no gochat binary at {} (build it: cargo build --release)", gochat.display());
        }
        let dir = std::env::temp_dir().join(format!(
            "gochat-bench-{}-{}",
            std::process::id(),
            crate::engine::now_micros()
        ));
        std::fs::create_dir_all(&dir)?;
        let (api, grpc, ws, tcp, site) =
            (free_addr()?, free_addr()?, free_addr()?, free_addr()?, free_addr()?);
        let wss = tls.map(|_| free_addr()).transpose()?;
        let gw_grpc: Vec<SocketAddr> = (0..gateways).map(|_| free_addr()).collect::<Result<_, _>>()?;
        let redis_prefix = (queue == "redis")
            .then(|| format!("gochat-bench-{}-{}", std::process::id(), crate::engine::now_micros()));
        let queue_keys = match &redis_prefix {
            Some(prefix) => {
                // Control's state on the same Redis and prefix, when it is set to Redis.
                for (key, value) in [("redis_url", redis), ("redis_prefix", prefix.as_str())] {
                    control.more.entry(key).or_insert_with(|| value.into());
                }
                QueueKeys {
                    kind: Some("redis".into()),
                    redis: Some(RedisQueueKeys { url: Some(redis.into()), prefix: Some(prefix.clone()) }),
                    ..QueueKeys::default()
                }
            }
            None if queue == "memory" => QueueKeys { capacity: Some(1_000_000), ..QueueKeys::default() },
            None => bail!("unknown queue {queue:?}: expected memory or redis"),
        };
        let logic = format!("http://{grpc}");
        let gateway_id = |i: usize| format!("gateway-{}", i + 1);
        let common = NodeConfig {
            control: Some(ControlKeys {
                api_listen: Some(api),
                site_listen: Some(site),
                grpc_listen: Some(grpc),
                database: Some(format!("sqlite://{}", dir.join("users.sqlite3").display())),
                session_ttl_secs: Some(864_000),
                ..control
            }),
            queue: Some(queue_keys),
            worker: Some(WorkerKeys {
                logic: Some(logic.clone()),
                batch_age_us: Some(batch_age_us),
                batch_max,
                gateways: (gw_grpc.iter().enumerate())
                    .map(|(i, g)| GatewayKey { id: gateway_id(i), grpc: format!("http://{g}") })
                    .collect(),
            }),
            gateway: None,
        };
        let process = |config: &NodeConfig, name: &str, role: &str| -> anyhow::Result<Process> {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, config.to_toml()?)?;
            let args = vec!["--config".into(), path.to_str().context("utf-8 path")?.into(), role.into()];
            let mut p = Process::new(name, gochat, args, dir.join(format!("{name}.log")));
            p.env = vec![("RUST_LOG".into(), Some("warn".into()))];
            Ok(p)
        };
        let mut cluster = Self {
            processes: Vec::new(),
            dir: dir.clone(),
            api: format!("http://{api}"),
            // The clients' way in: the wss listener when there is one.
            ws: wss.unwrap_or(ws),
            procs: ServerProcs::default(),
            gateway_procs: ServerProcs::default(),
            gateway_grpc: gw_grpc.iter().map(|g| format!("http://{g}")).collect(),
            redis_prefix: redis_prefix.clone().map(|p| (redis.to_string(), p)),
        };
        let wait = Duration::from_secs(20);
        cluster.start_one(process(&common, "control", "control")?.ready_at(api), wait)?;
        if redis_prefix.is_some() {
            // A shared queue: the worker runs as its own process.
            cluster.start_one(process(&common, "worker", "worker")?, wait)?;
        }
        for (i, g) in gw_grpc.iter().enumerate() {
            let config = NodeConfig {
                gateway: Some(GatewayKeys {
                    id: Some(gateway_id(i)),
                    ws_listen: Some(ws),
                    tcp_listen: Some(tcp),
                    grpc_listen: Some(*g),
                    logic: Some(logic.clone()),
                    shards: Some(if gateways == 1 { 0 } else { 1 }),
                    driver: Some(driver.into()),
                    max_connections: Some(max_conns_per_gateway),
                    ws_echo_path: Some("/echo".into()),
                    drain_secs: Some(0),
                    wss_listen: wss,
                    tls_cert: tls.map(|t| t.cert.clone()),
                    tls_key: tls.map(|t| t.key.clone()),
                    compression: compression.then(|| "on".into()),
                    more: gateway_more.clone(),
                }),
                ..common.clone()
            };
            cluster.start_one(process(&config, &gateway_id(i), "gateway")?.ready_at(*g), wait)?;
        }
        if let Some(last) = cluster.processes.last_mut() {
            last.wait_listening(cluster.ws, wait)?;
        }
        let pids: Vec<u32> = cluster.processes.iter().filter_map(Process::pid).collect();
        cluster.gateway_procs =
            ServerProcs { pids: pids[pids.len() - gateways..].to_vec(), ..ServerProcs::default() };
        cluster.procs = ServerProcs { pids, ..ServerProcs::default() };
        Ok(cluster)
    }

    /// Starts `process`, counts it as the cluster's, and waits until it is ready.
    fn start_one(&mut self, mut process: Process, within: Duration) -> anyhow::Result<()> {
        process.spawn()?;
        self.processes.push(process);
        self.processes.last_mut().expect("just pushed").wait_ready(within)
    }

    /// Stops every process with Ctrl-C (SIGINT) and waits for them, then removes the cluster's
    /// folder and Redis keys.
    pub fn stop(mut self) {
        self.stop_processes();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((url, prefix)) = &self.redis_prefix {
            gochat_runtime::redis::delete_keys(url, prefix);
        }
    }

    fn stop_processes(&mut self) {
        let mut processes = std::mem::take(&mut self.processes);
        for p in processes.iter_mut().rev() {
            p.signal(libc::SIGINT);
        }
        for p in &mut processes {
            p.reap(Duration::from_secs(10));
        }
    }
}

/// A cluster that failed to start (or a run that failed) still stops what it started; its
/// folder stays, with the logs its error names.
impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_processes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_listener_by_port_and_samples_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // The bench never counts itself; a child holding the socket would be found. (Another
        // test forking a child holds a copy of every descriptor until its exec: ask again.)
        let never_self = (0..50).any(|_| {
            let found = ServerProcs::by_port(port);
            std::thread::sleep(std::time::Duration::from_millis(10));
            found.is_err()
        });
        assert!(never_self, "found a holder of our own listener");
        let me = ServerProcs { pids: vec![std::process::id()], ..ServerProcs::default() };
        let s = me.sample();
        assert!(s.rss_bytes > 0 && s.slab_bytes > 0);
    }

    #[test]
    fn a_server_pid_covers_its_children() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let all = ServerProcs::with_descendants(&[std::process::id()]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(all.pids[0], std::process::id());
        assert!(all.pids.contains(&child.id()), "{:?} lacks the child {}", all.pids, child.id());
    }
}
