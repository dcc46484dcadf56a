//! Starting gochat-rs processes on this machine, as `gochat cluster` and the bench's `--spawn`
//! do: loopback ports for them to bind ([`free_addr`]), a config file written from typed keys
//! ([`NodeConfig`]), and the processes themselves ([`Process`]): started with their output in a
//! log, waited for until they listen, signalled, stopped.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

/// A loopback address nothing listens on now, for a process started later to bind. A port
/// the kernel picks (bind to port 0) comes from its ephemeral range, where an outgoing
/// connection or the next such pick may take it before the process binds; these come from
/// below that range, in turn from a per-process start, so neither happens.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    const LOW: u32 = 10_000;
    let high = u32::from(ephemeral_low()).max(LOW + 1_000);
    let span = high - LOW;
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % span
    });
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener.local_addr();
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("no free loopback port in {LOW}..{high}")))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// One process of a local cluster: what to run, and, once started, the child.
#[derive(Debug)]
pub struct Process {
    /// What it is called in errors: `control-1`, `redis`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Variables set for it (`Some`) or taken away from it (`None`), over this process's own.
    pub env: Vec<(OsString, Option<OsString>)>,
    /// Its stdout and stderr, appended.
    pub log: PathBuf,
    /// Accepts TCP here once ready (none: ready once started).
    pub ready: Option<SocketAddr>,
    child: Option<Child>,
}

impl Process {
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        log: PathBuf,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args,
            env: Vec::new(),
            log,
            ready: None,
            child: None,
        }
    }

    /// Ready once it accepts TCP at `addr`.
    pub fn ready_at(mut self, addr: SocketAddr) -> Self {
        self.ready = Some(addr);
        self
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it was started and not stopped or killed since.
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(&self.program);
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let child = command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until it is ready (see [`Process::ready`]).
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        match self.ready {
            Some(addr) => self.wait_listening(addr, within),
            None => Ok(()),
        }
    }

    /// Waits until `addr` accepts TCP (a port it may share with others), failing as soon as the
    /// process has exited.
    pub fn wait_listening(&mut self, addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{} exited ({status}) before it was ready; log: {}", self.name, self.log.display());
            }
            if Instant::now() > deadline {
                bail!("{} not ready at {addr} within {within:?}; log: {}", self.name, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&mut self, signal: i32) {
        if let Some(child) = self.child.as_mut() {
            // Still our child's pid: it is not reaped before `stop` or `kill` waits for it.
            let _ = crate::os::signal(child.id(), signal);
        }
    }

    /// SIGKILL: no chance to clean up, as when a machine dies.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
            // An io_uring gateway's listeners outlive the process until the kernel has torn its
            // rings down; a successor sharing the port (SO_REUSEPORT) would see connections
            // land on them and be reset. Wait until nothing answers there.
            if let Some(port) = self.ready {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline
                    && TcpStream::connect_timeout(&port, Duration::from_millis(100)).is_ok()
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        self.reap(grace);
    }

    /// Waits up to `grace` for it to exit (after a signal), then SIGKILLs it.
    pub fn reap(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A config file as a launcher writes it: the keys it sets (TOML leaves out a `None`), every
/// other key left to its default. The whole config is the `gochat` crate's `Config`; this subset lets a launcher that does not
/// build the roles (the bench) write one, and `gochat`'s tests check that it reads as a `Config`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeConfig {
    pub control: Option<ControlKeys>,
    pub queue: Option<QueueKeys>,
    pub worker: Option<WorkerKeys>,
    pub gateway: Option<GatewayKeys>,
}

impl NodeConfig {
    /// The file's text. A key of [`ControlKeys::more`] wins over the field of the same name.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        // Through a table: a flattened key and a field of the same name become one key.
        toml::to_string(&toml::Table::try_from(self)?)
    }
}

/// `[control]`
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlKeys {
    pub api_listen: Option<SocketAddr>,
    pub site_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub database: Option<String>,
    pub session_ttl_secs: Option<u64>,
    pub login_per_minute: Option<u32>,
    pub register_per_minute: Option<u32>,
    pub push_per_second: Option<u32>,
    pub http_max_connections_per_address: Option<usize>,
    pub max_connections_per_user: Option<usize>,
    pub open_rooms: Option<bool>,
    /// Any other keys, as TOML values (e.g. the bench's `--control-set`).
    #[serde(flatten)]
    pub more: toml::Table,
}

/// `[queue]`
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueKeys {
    /// `memory` or `redis`.
    pub kind: Option<String>,
    /// Messages the in-process queue holds.
    pub capacity: Option<usize>,
    pub redis: Option<RedisQueueKeys>,
}

/// `[queue.redis]`
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisQueueKeys {
    /// The Redis (or Redis Cluster) URL.
    pub url: Option<String>,
    /// Prefix of the queue's Redis keys.
    pub prefix: Option<String>,
}

/// `[worker]`
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerKeys {
    /// Control's gRPC URL.
    pub logic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<usize>,
    pub batch_age_us: Option<u64>,
    /// The gateways it pushes to, when there is no discovery.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayKey>,
}

/// One of `[worker] gateways`: a gateway's id and gRPC URL.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayKey {
    pub id: String,
    pub grpc: String,
}

/// `[gateway]`
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayKeys {
    pub id: Option<String>,
    pub ws_listen: Option<SocketAddr>,
    pub tcp_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    /// Control's gRPC URL.
    pub logic: Option<String>,
    /// Shard threads (0: one per core).
    pub shards: Option<usize>,
    /// `auto`, `epoll` or `io_uring`.
    pub driver: Option<String>,
    pub max_connections: Option<usize>,
    pub ws_echo_path: Option<String>,
    pub drain_secs: Option<u64>,
    /// `wss://` (with `tls_cert` and `tls_key`).
    pub wss_listen: Option<SocketAddr>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// `permessage-deflate`: `off` or `on`.
    pub compression: Option<String>,
    /// Any other keys, as TOML values (e.g. the bench's `--gateway-set`).
    #[serde(flatten)]
    pub more: toml::Table,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ephemeral = ephemeral_low();
        // Held, as the processes they are for would hold them.
        let held: Vec<_> = (0..200)
            .map(|_| std::net::TcpListener::bind(free_addr().unwrap()).expect("free and bindable"))
            .collect();
        let mut ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert!(ports.iter().all(|&p| (10_000..ephemeral).contains(&p)), "{ports:?}");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 200, "each handed out once");
    }

    #[test]
    fn a_node_config_writes_only_its_keys_and_more_keys_win() {
        let mut more: toml::Table = toml::from_str("history_size = 0\nopen_rooms = false").unwrap();
        more.insert("state".into(), "redis".into());
        let cfg = NodeConfig {
            control: Some(ControlKeys {
                api_listen: Some("127.0.0.1:7070".parse().unwrap()),
                open_rooms: Some(true),
                more,
                ..ControlKeys::default()
            }),
            queue: Some(QueueKeys {
                kind: Some("redis".into()),
                redis: Some(RedisQueueKeys { url: None, prefix: Some("p".into()) }),
                ..QueueKeys::default()
            }),
            ..NodeConfig::default()
        };
        let text = cfg.to_toml().unwrap();
        let back: toml::Table = toml::from_str(&text).unwrap();
        let want: toml::Table = toml::from_str(
            "[control]\napi_listen = \"127.0.0.1:7070\"\nopen_rooms = false\nhistory_size = 0\nstate = \"redis\"\n\
             [queue]\nkind = \"redis\"\n[queue.redis]\nprefix = \"p\"\n",
        )
        .unwrap();
        assert_eq!(back, want, "{text}");
    }
}
