//! The server under test: its processes' memory and CPU (found by pid or listening port), the
//! kernel's slab, and a local gochat-rs cluster the bench can start itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
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
#[derive(Debug, Clone)]
pub struct ServerProcs {
    pub pids: Vec<u32>,
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
        Ok(Self { pids })
    }

    pub fn sample(&self) -> Sample {
        let ticks = clock_ticks();
        let mut s = Sample { slab_bytes: meminfo_kb("Slab:") * 1024, ..Sample::default() };
        for pid in &self.pids {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                s.rss_bytes += field_kb(&status, "VmRSS:") * 1024;
            }
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // Fields after the command name (which may hold spaces): utime and stime are 12 and 13.
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                let f: Vec<&str> = rest.split_whitespace().collect();
                let parse = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                s.cpu_secs += (parse(11) + parse(12)) as f64 / ticks;
            }
        }
        s
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
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

/// A free loopback port, for a server started later to bind.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(gochat::cluster::free_addr()?.port())
}

/// `[control]` settings of a spawned cluster: every bench client comes from loopback (with
/// hundreds of REST calls in flight), users are made by the thousand and share sockets by the
/// hundred, and pushers need no socket in the rooms they push to.
const BENCH_CONTROL: &str = "login_per_minute = 0\nregister_per_minute = 0\npush_per_second = 0\n\
     http_max_connections_per_address = 0\nmax_connections_per_user = 0\nopen_rooms = true\n";

/// A local gochat-rs cluster: one control (with its queue-worker) and `gateways` gateway
/// processes sharing the WebSocket port with `SO_REUSEPORT`.
pub struct Cluster {
    children: Vec<Child>,
    dir: PathBuf,
    pub api: String,
    pub ws: SocketAddr,
    pub procs: ServerProcs,
    pub gateway_procs: ServerProcs,
    /// Key prefix of the Redis queue, deleted at stop.
    redis_prefix: Option<String>,
}

/// What a spawned cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterSpec<'a> {
    pub driver: &'a str,
    pub gateways: usize,
    pub max_conns_per_gateway: usize,
    /// `memory` (the worker inside control) or `redis`.
    pub queue: &'a str,
    pub batch_age_us: u64,
    /// Lines `KEY=VALUE` added to `[control]`, after the bench's own.
    pub control_settings: &'a [String],
}

impl Cluster {
    pub fn start(gochat: &Path, spec: &ClusterSpec<'_>) -> anyhow::Result<Self> {
        let ClusterSpec { driver, gateways, max_conns_per_gateway, queue, batch_age_us, control_settings } =
            spec.clone();
        for setting in control_settings {
            if !setting.contains('=') {
                bail!("--control-set {setting:?}: expected KEY=VALUE");
            }
        }
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
            (free_port()?, free_port()?, free_port()?, free_port()?, free_port()?);
        let gw_ports: Vec<u16> = (0..gateways).map(|_| free_port()).collect::<Result<_, _>>()?;
        let shards = if gateways == 1 { 0 } else { 1 };
        let redis_prefix = (queue == "redis")
            .then(|| format!("gochat-bench-{}-{}", std::process::id(), crate::engine::now_micros()));
        let queue_section = match &redis_prefix {
            Some(prefix) => format!("[queue]\nkind = \"redis\"\n[queue.redis]\nprefix = \"{prefix}\"\n"),
            None if queue == "memory" => "[queue]\ncapacity = 1000000\n".to_string(),
            None => bail!("unknown queue {queue:?}: expected memory or redis"),
        };
        let list: Vec<String> = gw_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{{ id = \"gateway-{}\", grpc = \"http://127.0.0.1:{p}\" }}", i + 1))
            .collect();
        let common = format!(
            "[control]\napi_listen = \"127.0.0.1:{api}\"\nsite_listen = \"127.0.0.1:{site}\"\n\
             grpc_listen = \"127.0.0.1:{grpc}\"\ndatabase = \"sqlite://{db}\"\n\
             session_ttl_secs = 864000\n{bench_control}{settings}\n{queue_section}\n[worker]\nlogic = \"http://127.0.0.1:{grpc}\"\nbatch_age_us = {batch_age_us}\ngateways = [{list}]\n",
            db = dir.join("users.sqlite3").display(),
            list = list.join(", "),
            bench_control = BENCH_CONTROL,
            settings = control_settings.iter().map(|s| format!("{s}\n")).collect::<String>(),
        );
        let mut children = Vec::new();
        let spawn = |path: &Path, role: &str, log: &str| -> anyhow::Result<Child> {
            let log = std::fs::File::create(dir.join(log))?;
            Command::new(gochat)
                .args(["--config", path.to_str().expect("utf-8 path"), role])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", gochat.display()))
        };
        let control_cfg = dir.join("control.toml");
        std::fs::write(&control_cfg, &common)?;
        children.push(spawn(&control_cfg, "control", "control.log")?);
        wait_port(api, Duration::from_secs(20))?;
        if redis_prefix.is_some() {
            // A shared queue: the worker runs as its own process.
            children.push(spawn(&control_cfg, "worker", "worker.log")?);
        }
        for (i, p) in gw_ports.iter().enumerate() {
            let cfg = format!(
                "{common}\n[gateway]\nid = \"gateway-{n}\"\nws_listen = \"127.0.0.1:{ws}\"\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
                 grpc_listen = \"127.0.0.1:{p}\"\nlogic = \"http://127.0.0.1:{grpc}\"\nshards = {shards}\n\
                 driver = \"{driver}\"\nmax_connections = {max_conns_per_gateway}\nws_echo_path = \"/echo\"\n\
                 drain_secs = 0\n",
                n = i + 1
            );
            let path = dir.join(format!("gateway-{}.toml", i + 1));
            std::fs::write(&path, cfg)?;
            children.push(spawn(&path, "gateway", &format!("gateway-{}.log", i + 1))?);
            wait_port(*p, Duration::from_secs(20))?;
        }
        wait_port(ws, Duration::from_secs(20))?;
        let pids: Vec<u32> = children.iter().map(Child::id).collect();
        Ok(Self {
            // control, then the worker (shared queue only), then the gateways
            gateway_procs: ServerProcs { pids: pids[children.len() - gateways..].to_vec() },
            procs: ServerProcs { pids },
            children,
            dir,
            api: format!("http://127.0.0.1:{api}"),
            ws: SocketAddr::from(([127, 0, 0, 1], ws)),
            redis_prefix,
        })
    }

    /// Stops every process with Ctrl-C (SIGINT) and waits for them.
    pub fn stop(mut self) {
        for c in self.children.iter().rev() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
        for c in self.children.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(prefix) = &self.redis_prefix {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("redis-cli --scan --pattern '{prefix}:*' | xargs -r redis-cli del >/dev/null"))
                .status();
        }
    }
}

fn wait_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listened on port {port} within {limit:?}")
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
        let me = ServerProcs { pids: vec![std::process::id()] };
        let s = me.sample();
        assert!(s.rss_bytes > 0 && s.slab_bytes > 0);
    }
}
