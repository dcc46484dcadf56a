use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use gochat::cluster::{ClusterSpec, Fault, LocalCluster};
use gochat::discovery::{self, DiscoveryKind, Registration, Role};
use gochat::logging::{self, LogFormat};
use gochat::roles::{Up, WorkerHandle};
use gochat::Config;
use gochat_control::Control;
use gochat_gateway::driver::DriverChoice;
use gochat_gateway::Gateway;
use gochat_proto::{config_format, peers};
use gochat_queue::{Queue, QueueKind};
use gochat_queue_worker::Worker;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// gochat-rs: a gochat-compatible IM system with a thread-per-core connection gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (sections [gateway], [control], [worker], [queue], [discovery]);
    /// defaults otherwise. Any key can also be set as GOCHAT_<SECTION>__<KEY>, over the file.
    #[arg(long, short, global = true, env = "GOCHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long, global = true)]
    check: bool,
    /// With --check: print the effective config (defaults, file, GOCHAT_<SECTION>__<KEY>
    /// variables, flags) as TOML, secrets redacted.
    #[arg(long, global = true, requires = "check")]
    print: bool,
    /// Log format on stderr: text, or json (one object per line).
    #[arg(long, global = true, env = "GOCHAT_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    /// Gateway driver: auto, epoll or io_uring.
    #[arg(long, global = true, env = "GOCHAT_DRIVER")]
    driver: Option<DriverChoice>,
    /// Gateway shards (0: one per CPU).
    #[arg(long, global = true, env = "GOCHAT_SHARDS")]
    shards: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Every role in one process: the embedded default (in-process queue, SQLite).
    Up,
    /// The connection gateway only.
    Gateway,
    /// Control (REST API, logic gRPC, page), with an in-process queue-worker.
    Control,
    /// A queue-worker only (needs a shared queue such as Redis Streams).
    Worker,
    /// A health check for containers and supervisors, exiting 0 only when healthy: with a path
    /// (http://127.0.0.1:9100/readyz), asks a role's admin listener over HTTP and needs a 200;
    /// without one, asks a gRPC port (control's or a gateway's) for its `grpc.health.v1` status
    /// and needs SERVING.
    Health {
        /// An admin listener's `/healthz` or `/readyz`, or a gRPC address, e.g.
        /// http://127.0.0.1:7100 for a gateway's.
        #[arg(default_value = "http://127.0.0.1:6900")]
        address: String,
    },
    /// A local cluster on loopback for demos: its own Redis and etcd, a database on the local
    /// PostgreSQL, and gateways, controls and workers as separate processes. Needs a build with
    /// `--features etcd`, and redis-server, etcd and psql on the PATH.
    Cluster {
        #[arg(long, default_value_t = 2)]
        gateways: usize,
        #[arg(long, default_value_t = 2)]
        controls: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Folder for configs, data and logs (removed at exit).
        #[arg(long, default_value = "gochat-cluster")]
        dir: PathBuf,
        /// Where the cluster may create its database.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres: String,
        /// Failures to inject, as SECONDS:FAULT after start, e.g.
        /// `20:kill-worker-1,35:restart-worker-1,50:restart-redis`. Faults: kill-ROLE-N,
        /// restart-ROLE-N (ROLE: gateway, control, worker), restart-redis, restart-etcd.
        #[arg(long, value_delimiter = ',', value_parser = parse_timed_fault)]
        faults: Vec<(f64, Fault)>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let log_format = cli.log_format;
    match start(cli) {
        // A JSON log keeps even the last words in a record.
        Err(e) if log_format == LogFormat::Json => {
            tracing::error!("{e:#}");
            std::process::exit(1);
        }
        done => done,
    }
}

fn start(cli: Cli) -> anyhow::Result<()> {
    let say = Say(cli.log_format);
    let env = std::env::vars_os().filter(|(name, _)| name.to_str().is_some_and(gochat::config::is_key_var));
    let reloader = Reloader {
        path: cli.config.clone(),
        env: env.collect(),
        driver: cli.driver,
        shards: cli.shards,
        loaded: None,
    };
    let cfg = reloader.load()?;
    let command = cli.command.unwrap_or(Command::Up);
    if cli.check {
        if cli.print {
            println!("# The effective config: defaults < file < GOCHAT_<SECTION>__<KEY> < flags; secrets redacted.");
            print!("{}", cfg.redacted_toml()?);
        } else {
            println!("config ok");
        }
        return Ok(());
    }
    if let Command::Cluster { gateways, controls, workers, dir, postgres, faults } = command {
        let spec = ClusterSpec {
            gateways,
            controls,
            workers,
            postgres_admin_url: postgres,
            driver: cfg.gateway.driver,
            ..ClusterSpec::new(std::env::current_exe()?, dir)
        };
        return run_cluster(spec, faults);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let reloader = Reloader { loaded: Some(cfg.clone()), ..reloader };
    rt.block_on(run(command, cfg, reloader, say))
}

/// What a running role tells its operator (addresses, stopping): printed to stdout, or with
/// a JSON log an `INFO` record, so that every line of output is one.
#[derive(Clone, Copy)]
struct Say(LogFormat);

impl Say {
    fn line(self, line: impl std::fmt::Display) {
        match self.0 {
            LogFormat::Text => println!("{line}"),
            LogFormat::Json => tracing::info!(target: "gochat", "{}", line.to_string().trim()),
        }
    }
}

/// The config file read again on SIGHUP, with the same variables and command-line overrides.
struct Reloader {
    path: Option<PathBuf>,
    /// The `GOCHAT_<SECTION>__<KEY>` variables, as they were at start.
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    driver: Option<DriverChoice>,
    shards: Option<usize>,
    /// The file as it was last read.
    loaded: Option<Config>,
}

impl Reloader {
    /// The config file (or the defaults), the variables and the flags over it, validated.
    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::load_with_env(self.path.as_deref(), self.env.iter().cloned())?;
        if let Some(driver) = self.driver {
            cfg.gateway.driver = driver;
        }
        if let Some(shards) = self.shards {
            cfg.gateway.shards = shards;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the file again and copies what a running process can change into `running`;
    /// whether anything was. A file that does not load changes nothing.
    fn reload(&mut self, running: &mut Config) -> bool {
        if self.path.is_none() {
            tracing::warn!("SIGHUP: no config file to read again (start with --config)");
            return false;
        }
        let now = match self.load() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "config not reloaded; running on as before");
                return false;
            }
        };
        let before = self.loaded.replace(now.clone()).unwrap_or_default();
        match running.reload(&before, &now) {
            Ok(reload) => {
                for key in &reload.ignored {
                    tracing::warn!(setting = %key, "changed in the config file; takes effect at the next restart");
                }
                if !reload.applied.is_empty() {
                    tracing::info!(settings = ?reload.applied, "config reloaded");
                }
                !reload.applied.is_empty()
            }
            Err(e) => {
                tracing::warn!(error = %e, "config not reloaded");
                false
            }
        }
    }
}

/// Runs until `stop`; on each SIGHUP meanwhile reads the config file again, and hands the
/// running config to `apply` when it changed.
async fn until_stopped<T, F, Fut>(
    stop: impl std::future::Future<Output = T>,
    reloader: &mut Reloader,
    cfg: &mut Config,
    mut apply: F,
) -> T
where
    F: FnMut(Config) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::pin!(stop);
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hangup = async {
            match &mut hangups {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = &mut stop => return out,
            Some(()) = hangup => {
                if reloader.reload(cfg) {
                    apply(cfg.clone()).await;
                }
            }
        }
    }
}

async fn run(command: Command, mut cfg: Config, mut reloader: Reloader, say: Say) -> anyhow::Result<()> {
    match command {
        Command::Up => {
            let database = config_format::redact_url(&cfg.control.database);
            let up = Up::start(cfg.clone()).await?;
            let a = up.addresses();
            say.line(format_args!(
                "gochat-rs is up (embedded: in-process queue, static discovery, {database})"
            ));
            let http = if a.https { "https" } else { "http" };
            if let Some(site) = a.site {
                say.line(format_args!("  page        {http}://{site}/"));
            }
            say.line(format_args!("  REST API    {http}://{}", a.api));
            say.line(format_args!("  WebSocket   ws://{}{}", a.ws, a.ws_path));
            if let Some(wss) = a.wss {
                say.line(format_args!("  WebSocket   wss://{wss}{}", a.ws_path));
            }
            if let Some(tcp) = a.tcp {
                say.line(format_args!("  TCP         {tcp}"));
            }
            say.line(format_args!("  gRPC        logic {}, gateway {}", a.logic_grpc, a.gateway_grpc));
            say.line(format_args!(
                "  gateway     {} shards, {} driver",
                up.gateway.shards,
                up.gateway.driver.name()
            ));
            let admin = [
                ("gateway", up.gateway.admin_addr),
                ("control", up.control.admin_addr),
                ("worker", up.worker.admin_addr),
            ];
            for (role, addr) in admin {
                if let Some(addr) = addr {
                    say.line(format_args!("  metrics     {role} http://{addr}/metrics"));
                }
            }
            say.line(format_args!("  demo users  demo, test, admin (password 111111)"));
            say.line(format_args!("Ctrl-C to stop."));
            until_stopped(shutdown_signal(), &mut reloader, &mut cfg, |c| {
                up.control.reconfigure(&c.control);
                let gateway = &up.gateway;
                async move { gateway.reconfigure(&c.gateway).await }
            })
            .await;
            say.line(format_args!("stopping…"));
            up.shutdown().await;
        }
        Command::Gateway => {
            let (gateway, registration) = match cfg.discovery.kind {
                DiscoveryKind::Static => {
                    let gateway = Gateway::start(cfg.gateway.clone()).await?;
                    let advertise = advertised(cfg.gateway.grpc_advertise.as_deref(), gateway.grpc_addr);
                    let registration =
                        Registration::start(&cfg.discovery, Role::Gateway, &gateway.id, &advertise).await?;
                    (gateway, registration)
                }
                DiscoveryKind::Etcd => {
                    // Announced before any client is accepted: workers drop what they would push
                    // to a gateway they do not know.
                    let grpc = Gateway::bind_grpc(&cfg.gateway).await?;
                    let advertise = advertised(cfg.gateway.grpc_advertise.as_deref(), grpc.local_addr()?);
                    let registration =
                        Registration::start(&cfg.discovery, Role::Gateway, &cfg.gateway.id, &advertise)
                            .await?;
                    let controls = discovery::watch(&cfg.discovery, Role::Control).await?;
                    let connect = move || peers::balanced_channel(controls.clone());
                    (Gateway::start_with_logic(cfg.gateway.clone(), grpc, connect).await?, registration)
                }
            };
            say.line(format_args!(
                "gateway {} listening: ws://{} , tcp {:?}, wss {:?}, gRPC {}",
                gateway.id, gateway.ws_addr, gateway.tcp_addr, gateway.wss_addr, gateway.grpc_addr
            ));
            until_stopped(shutdown_signal(), &mut reloader, &mut cfg, |c| {
                let gateway = &gateway;
                async move { gateway.reconfigure(&c.gateway).await }
            })
            .await;
            registration.shutdown().await;
            if cfg.gateway.drain_secs > 0 {
                say.line(format_args!(
                    "draining: closing {} connections over {} s",
                    gateway.connections(),
                    cfg.gateway.drain_secs
                ));
                gateway.drain(Duration::from_secs(cfg.gateway.drain_secs)).await;
            }
            gateway.shutdown().await;
        }
        Command::Control => {
            cfg.control.demo_users.get_or_insert(false);
            let queue = cfg.queue.open().await?;
            // Without a configured node id, claim one in etcd under the lease this control then
            // registers with: its message ids carry the number from the first one.
            let claimed = match (cfg.discovery.kind, cfg.control.node_id) {
                (DiscoveryKind::Etcd, None) => {
                    let (registration, node_id) =
                        Registration::claim_node_id(&cfg.discovery, &cfg.control.id).await?;
                    say.line(format_args!("control {} claimed node id {node_id} in etcd", cfg.control.id));
                    cfg.control.node_id = Some(node_id);
                    Some(registration)
                }
                _ => None,
            };
            let control = match Control::start(cfg.control.clone(), queue.clone()).await {
                Ok(control) => control,
                Err(e) => {
                    // Free the claimed number now rather than when the lease runs out.
                    if let Some(registration) = claimed {
                        registration.shutdown().await;
                    }
                    return Err(e.into());
                }
            };
            let advertise = advertised(cfg.control.grpc_advertise.as_deref(), control.grpc_addr);
            let registration = match claimed {
                Some(registration) => {
                    registration.announce(&advertise).await?;
                    registration
                }
                None => {
                    Registration::start(&cfg.discovery, Role::Control, &cfg.control.id, &advertise).await?
                }
            };
            // The in-process queue is only reachable from this process: run its worker here.
            let worker = match cfg.queue.kind {
                QueueKind::Memory => Some(
                    WorkerHandle::start(worker(&cfg, queue.clone()).await?, cfg.worker.admin_listen).await?,
                ),
                QueueKind::Redis => None,
            };
            say.line(format_args!(
                "control listening: REST {}://{}, logic gRPC {}, page {:?}{}",
                if control.https() { "https" } else { "http" },
                control.api_addr,
                control.grpc_addr,
                control.site_addr,
                if worker.is_some() { " (with an in-process queue-worker)" } else { "" }
            ));
            let stop = async {
                tokio::select! {
                    _ = shutdown_signal() => false,
                    _ = registration.node_id_lost() => true,
                }
            };
            let node_id_lost = until_stopped(stop, &mut reloader, &mut cfg, |c| {
                control.reconfigure(&c.control);
                std::future::ready(())
            })
            .await;
            registration.shutdown().await;
            if let Some(worker) = worker {
                worker.shutdown().await;
            }
            queue.close();
            control.shutdown().await;
            if node_id_lost {
                // Going on would stamp ids another control stamps too; a restart claims afresh.
                anyhow::bail!(
                    "node id {} was taken by another control while this one was cut off from etcd; \
                     stopped so that a restart claims a free one",
                    cfg.control.node_id.unwrap_or_default()
                );
            }
        }
        Command::Cluster { .. } => unreachable!("run without a runtime of its own"),
        Command::Health { address } if http_path(&address).is_some() => {
            let (status, body) =
                http_get(&address).await.with_context(|| format!("health check of {address}"))?;
            if status != 200 {
                anyhow::bail!("{address}: {status} {body}");
            }
            println!("{address}: {status} {body}");
        }
        Command::Health { address } => {
            let channel = peers::endpoint(&address)
                .with_context(|| format!("{address:?} is not a gRPC address"))?
                .connect()
                .await
                .with_context(|| format!("cannot reach {address}"))?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .with_context(|| format!("health check of {address}"))?;
            let status = reply.into_inner().status();
            if status != ServingStatus::Serving {
                anyhow::bail!("{address}: {}", status.as_str_name());
            }
            println!("{address}: {}", status.as_str_name());
        }
        Command::Worker => {
            if cfg.queue.kind == QueueKind::Memory {
                anyhow::bail!(
                    "a standalone worker needs a shared queue: set [queue] kind = \"redis\"; the in-process \
                     queue is only reachable from `gochat up` and `gochat control`, which run their own worker"
                );
            }
            let queue = cfg.queue.open().await?;
            let worker =
                WorkerHandle::start(worker(&cfg, queue.clone()).await?, cfg.worker.admin_listen).await?;
            // Workers take no calls: their entry says which process holds the id.
            let whoami = format!("pid:{}", std::process::id());
            let registration =
                Registration::start(&cfg.discovery, Role::Worker, &cfg.worker.id, &whoami).await?;
            say.line(format_args!(
                "worker reading {} stream(s) at {}",
                cfg.queue.redis.streams,
                config_format::redact_url(&cfg.queue.redis.url)
            ));
            // A worker takes nothing from a reload; what changed is named as needing a restart.
            until_stopped(shutdown_signal(), &mut reloader, &mut cfg, |_| std::future::ready(())).await;
            registration.shutdown().await;
            worker.shutdown().await;
        }
    }
    Ok(())
}

fn run_cluster(spec: ClusterSpec, mut faults: Vec<(f64, Fault)>) -> anyhow::Result<()> {
    if !cfg!(feature = "etcd") {
        anyhow::bail!(
            "the local cluster uses etcd discovery: build with `cargo build --release --features etcd`"
        );
    }
    let mut cluster = LocalCluster::start(spec)?;
    let started = std::time::Instant::now();
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
            rt.block_on(shutdown_signal());
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

/// `SECONDS:FAULT`, for `gochat cluster --faults`.
fn parse_timed_fault(s: &str) -> anyhow::Result<(f64, Fault)> {
    let (at, fault) = s.split_once(':').context("a fault is SECONDS:FAULT")?;
    let at: f64 = at.trim().parse().ok().filter(|t: &f64| *t >= 0.0).context("SECONDS must be a number")?;
    Ok((at, fault.trim().parse()?))
}

/// A queue-worker that finds logic and the gateways the configured way: listed in `[worker]`,
/// or followed in etcd.
async fn worker(cfg: &Config, queue: Arc<dyn Queue>) -> anyhow::Result<Worker> {
    Ok(match cfg.discovery.kind {
        DiscoveryKind::Static => Worker::new(cfg.worker.clone(), queue)?,
        DiscoveryKind::Etcd => {
            let controls = discovery::watch(&cfg.discovery, Role::Control).await?;
            let gateways = discovery::watch(&cfg.discovery, Role::Gateway).await?;
            queue.share_with(&cfg.worker.id, discovery::watch(&cfg.discovery, Role::Worker).await?);
            Worker::with_peers(cfg.worker.clone(), queue, peers::balanced_channel(controls), gateways)?
        }
    })
}

/// The address other roles use for a gRPC listener: the configured one, or the bound one.
fn advertised(configured: Option<&str>, bound: std::net::SocketAddr) -> String {
    configured.map_or_else(|| format!("http://{bound}"), str::to_string)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.context("ctrl-c handler").ok();
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The path of an `http://host:port/path` address, when it has one besides `/`.
fn http_path(address: &str) -> Option<&str> {
    let rest = address.strip_prefix("http://")?;
    let path = &rest[rest.find('/')?..];
    (path != "/").then_some(path)
}

/// `GET` of an `http://` address with a path: the status code and the body. A plain request
/// over TCP: admin listeners speak HTTP/1.1 without TLS.
async fn http_get(address: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = address.strip_prefix("http://").context("not an http:// address")?;
    let (host, path) = rest.split_at(rest.find('/').context("no path")?);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .context("no answer within 5 s")?
        .with_context(|| format!("cannot reach {host}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", answer.lines().next().unwrap_or("")))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim().to_string();
    Ok((status, body))
}
