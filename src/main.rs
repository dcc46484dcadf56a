//! The `gochat` command line: parses it, loads the config, and runs the role it names (see the
//! library's `roles`), or the `health` check or the local `cluster`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gochat::cluster::{self, ClusterSpec, Fault};
use gochat::health;
use gochat::logging::{self, LogFormat};
use gochat::roles::{self, Reloader, Say};
use gochat::Config;
use gochat_gateway::driver::DriverChoice;

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
        /// State and queue on a Redis Cluster of three primaries and three replicas (six
        /// redis-server processes), not one Redis.
        #[arg(long)]
        redis_cluster: bool,
        /// Failures to inject, as SECONDS:FAULT after start, e.g.
        /// `20:kill-worker-1,35:restart-worker-1,50:restart-redis`. Faults: kill-ROLE-N,
        /// restart-ROLE-N (ROLE: gateway, control, worker), restart-redis, restart-etcd, and
        /// with --redis-cluster kill-redis-primary-N (the primary of the Nth third of the slots,
        /// N: 1 to 3).
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
    let reloader = Reloader::new(cli.config.clone(), cli.driver, cli.shards);
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
    if let Command::Cluster { gateways, controls, workers, dir, postgres, redis_cluster, faults } = command {
        let spec = ClusterSpec {
            gateways,
            controls,
            workers,
            redis_cluster,
            postgres_admin_url: postgres,
            driver: cfg.gateway.driver,
            ..ClusterSpec::new(std::env::current_exe()?, dir)
        };
        return cluster::run(spec, faults);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let reloader = reloader.loaded(cfg.clone());
    rt.block_on(run(command, cfg, reloader, say))
}

async fn run(command: Command, cfg: Config, reloader: Reloader, say: Say) -> anyhow::Result<()> {
    match command {
        Command::Up => roles::up::run(cfg, reloader, say).await,
        Command::Gateway => roles::gateway::run(cfg, reloader, say).await,
        Command::Control => roles::control::run(cfg, reloader, say).await,
        Command::Worker => roles::worker::run(cfg, reloader, say).await,
        Command::Health { address } => health::check(&address).await,
        Command::Cluster { .. } => unreachable!("run without a runtime of its own"),
    }
}

/// `SECONDS:FAULT`, for `gochat cluster --faults`.
fn parse_timed_fault(s: &str) -> anyhow::Result<(f64, Fault)> {
    let (at, fault) = s.split_once(':').context("a fault is SECONDS:FAULT")?;
    let at: f64 = at.trim().parse().ok().filter(|t: &f64| *t >= 0.0).context("SECONDS must be a number")?;
    Ok((at, fault.trim().parse()?))
}
