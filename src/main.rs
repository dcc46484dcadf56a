use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use gochat::cluster::{ClusterSpec, LocalCluster};
use gochat::discovery::{self, DiscoveryKind, Registration, Role};
use gochat::roles::{Up, WorkerHandle};
use gochat::Config;
use gochat_control::Control;
use gochat_gateway::driver::DriverChoice;
use gochat_gateway::Gateway;
use gochat_proto::peers;
use gochat_queue_worker::{Queue, QueueKind, Worker};

/// gochat-rs: a gochat-compatible IM system with a thread-per-core connection gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (sections [gateway], [control], [worker]); defaults otherwise.
    #[arg(long, short, global = true, env = "GOCHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long, global = true)]
    check: bool,
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
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(driver) = cli.driver {
        cfg.gateway.driver = driver;
    }
    if let Some(shards) = cli.shards {
        cfg.gateway.shards = shards;
    }
    let command = cli.command.unwrap_or(Command::Up);
    cfg.validate()?;
    if cli.check {
        println!("config ok");
        return Ok(());
    }
    if let Command::Cluster { gateways, controls, workers, dir, postgres } = command {
        return run_cluster(ClusterSpec {
            gateways,
            controls,
            workers,
            postgres_admin_url: postgres,
            driver: cfg.gateway.driver,
            ..ClusterSpec::new(std::env::current_exe()?, dir)
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(command, cfg))
}

async fn run(command: Command, mut cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Up => {
            let database = cfg.control.database.clone();
            let up = Up::start(cfg).await?;
            let a = up.addresses();
            println!("gochat-rs is up (embedded: in-process queue, static discovery, {database})");
            let http = if a.https { "https" } else { "http" };
            if let Some(site) = a.site {
                println!("  page        {http}://{site}/");
            }
            println!("  REST API    {http}://{}", a.api);
            println!("  WebSocket   ws://{}{}", a.ws, a.ws_path);
            if let Some(wss) = a.wss {
                println!("  WebSocket   wss://{wss}{}", a.ws_path);
            }
            if let Some(tcp) = a.tcp {
                println!("  TCP         {tcp}");
            }
            println!("  gRPC        logic {}, gateway {}", a.logic_grpc, a.gateway_grpc);
            println!("  gateway     {} shards, {} driver", up.gateway.shards, up.gateway.driver.name());
            println!("  demo users  demo, test, admin (password 111111)");
            println!("Ctrl-C to stop.");
            shutdown_signal().await;
            println!("stopping…");
            up.shutdown().await;
        }
        Command::Gateway => {
            let gateway = match cfg.discovery.kind {
                DiscoveryKind::Static => Gateway::start(cfg.gateway.clone()).await?,
                DiscoveryKind::Etcd => {
                    let controls = discovery::watch(&cfg.discovery, Role::Control).await?;
                    let connect = move || peers::balanced_channel(controls.clone());
                    Gateway::start_with_logic(cfg.gateway.clone(), connect).await?
                }
            };
            let advertise = advertised(cfg.gateway.grpc_advertise.as_deref(), gateway.grpc_addr);
            let registration =
                Registration::start(&cfg.discovery, Role::Gateway, &gateway.id, &advertise).await?;
            println!(
                "gateway {} listening: ws://{} , tcp {:?}, wss {:?}, gRPC {}",
                gateway.id, gateway.ws_addr, gateway.tcp_addr, gateway.wss_addr, gateway.grpc_addr
            );
            shutdown_signal().await;
            registration.shutdown().await;
            gateway.shutdown().await;
        }
        Command::Control => {
            cfg.control.demo_users.get_or_insert(false);
            let queue = cfg.queue.open().await?;
            let control = Control::start(cfg.control.clone(), queue.clone()).await?;
            let advertise = advertised(cfg.control.grpc_advertise.as_deref(), control.grpc_addr);
            let registration =
                Registration::start(&cfg.discovery, Role::Control, &cfg.control.id, &advertise).await?;
            // The in-process queue is only reachable from this process: run its worker here.
            let worker = match cfg.queue.kind {
                QueueKind::Memory => Some(WorkerHandle::start(worker(&cfg, queue.clone()).await?)),
                QueueKind::Redis => None,
            };
            println!(
                "control listening: REST {}://{}, logic gRPC {}, page {:?}{}",
                if control.https() { "https" } else { "http" },
                control.api_addr,
                control.grpc_addr,
                control.site_addr,
                if worker.is_some() { " (with an in-process queue-worker)" } else { "" }
            );
            shutdown_signal().await;
            registration.shutdown().await;
            if let Some(worker) = worker {
                worker.shutdown().await;
            }
            queue.close();
            control.shutdown().await;
        }
        Command::Cluster { .. } => unreachable!("run without a runtime of its own"),
        Command::Worker => {
            if cfg.queue.kind == QueueKind::Memory {
                anyhow::bail!(
                    "a standalone worker needs a shared queue: set [queue] kind = \"redis\"; the in-process \
                     queue is only reachable from `gochat up` and `gochat control`, which run their own worker"
                );
            }
            let queue = cfg.queue.open().await?;
            let worker = WorkerHandle::start(worker(&cfg, queue.clone()).await?);
            // Workers take no calls: their entry says which process holds the id.
            let whoami = format!("pid:{}", std::process::id());
            let registration =
                Registration::start(&cfg.discovery, Role::Worker, &cfg.worker.id, &whoami).await?;
            println!("worker reading {} stream(s) at {}", cfg.queue.redis.streams, cfg.queue.redis.url);
            shutdown_signal().await;
            registration.shutdown().await;
            worker.shutdown().await;
        }
    }
    Ok(())
}

fn run_cluster(spec: ClusterSpec) -> anyhow::Result<()> {
    if !cfg!(feature = "etcd") {
        anyhow::bail!(
            "the local cluster uses etcd discovery: build with `cargo build --release --features etcd`"
        );
    }
    let cluster = LocalCluster::start(spec)?;
    println!("local cluster up (Redis {}, etcd {}):", cluster.redis_url(), cluster.etcd_url());
    for m in cluster.members() {
        let public = m.public.map(|a| a.to_string()).unwrap_or_default();
        println!("  {:<10} {:<18} {}", m.id, public, m.config.display());
    }
    println!("logs in {}; Ctrl-C to stop.", cluster.dir().display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(shutdown_signal());
    println!("stopping…");
    cluster.stop();
    Ok(())
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
