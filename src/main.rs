use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gochat::roles::{Up, WorkerHandle};
use gochat::Config;
use gochat_control::Control;
use gochat_gateway::driver::DriverChoice;
use gochat_gateway::Gateway;
use gochat_queue_worker::{QueueKind, Worker};

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
            if let Some(site) = a.site {
                println!("  page        http://{site}/");
            }
            println!("  REST API    http://{}", a.api);
            println!("  WebSocket   ws://{}{}", a.ws, a.ws_path);
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
            let gateway = Gateway::start(cfg.gateway).await?;
            println!(
                "gateway {} listening: ws://{} , tcp {:?}, gRPC {}",
                gateway.id, gateway.ws_addr, gateway.tcp_addr, gateway.grpc_addr
            );
            shutdown_signal().await;
            gateway.shutdown().await;
        }
        Command::Control => {
            cfg.control.demo_users.get_or_insert(false);
            let queue = cfg.queue.open().await?;
            let control = Control::start(cfg.control, queue.clone()).await?;
            // The in-process queue is only reachable from this process: run its worker here.
            let worker = (cfg.queue.kind == QueueKind::Memory)
                .then(|| Worker::new(cfg.worker, queue.clone()).map(WorkerHandle::start))
                .transpose()?;
            println!(
                "control listening: REST http://{}, logic gRPC {}, page {:?}{}",
                control.api_addr,
                control.grpc_addr,
                control.site_addr,
                if worker.is_some() { " (with an in-process queue-worker)" } else { "" }
            );
            shutdown_signal().await;
            if let Some(worker) = worker {
                worker.shutdown().await;
            }
            queue.close();
            control.shutdown().await;
        }
        Command::Worker => {
            if cfg.queue.kind == QueueKind::Memory {
                anyhow::bail!(
                    "a standalone worker needs a shared queue: set [queue] kind = \"redis\"; the in-process \
                     queue is only reachable from `gochat up` and `gochat control`, which run their own worker"
                );
            }
            let queue = cfg.queue.open().await?;
            let worker = WorkerHandle::start(Worker::new(cfg.worker, queue.clone())?);
            println!("worker reading {} stream(s) at {}", cfg.queue.redis.streams, cfg.queue.redis.url);
            shutdown_signal().await;
            worker.shutdown().await;
        }
    }
    Ok(())
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
