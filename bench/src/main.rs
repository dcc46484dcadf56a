#![forbid(unsafe_code)]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use gochat_bench::echo::{self, EchoParams};
use gochat_bench::engine::{AuthSignal, ClientKind, TlsClient};
use gochat_bench::fleets::ClientOpts;
use gochat_bench::result::RunResult;
use gochat_bench::scenario::{self, ConnectionsParams, FanoutParams, PrivateParams, Target};
use gochat_bench::targets::{self, NamedTarget, TargetOptions, TargetSpec};
use gochat_bench::{report, sequence, worker};

/// Load generator for gochat-compatible servers (gochat-rs, gochat, anything speaking its
/// REST API and WebSocket protocol).
///
/// Either point it at a running server (--api, --ws; memory and CPU are measured on the
/// processes found by --server-pid or listening on the WebSocket port), or let it start a local
/// gochat-rs cluster per driver (--spawn PATH/TO/gochat --drivers epoll,io_uring), one control
/// and as many gateway processes as the connection count needs (20,000 descriptors a process).
/// With --target (repeatable) one scenario runs against several servers in turn — running ones,
/// spawned clusters, a peer started by a script (gochat: bench/peers/gochat.sh), the floor — and
/// --runs N repeats the round, then prints each figure side by side: medians, ranges, ratios.
///
/// Load from several machines: run `bench agent --listen ADDR` on each load host and give the
/// coordinator --agents ADDR,ADDR…; the WebSocket clients then run there, the REST calls here.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// REST API of a running server.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7070")]
    api: String,
    /// WebSocket address (host:port) of a running server.
    #[arg(long, global = true, default_value = "127.0.0.1:7000")]
    ws: String,
    /// WebSocket path.
    #[arg(long, global = true, default_value = "/ws")]
    path: String,
    /// Every server process, for total CPU and memory; each counts with every process below
    /// it (default: the gateways, found as the processes listening on the WebSocket port).
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// A server to run the scenario against, in turn with the others (repeatable):
    /// `NAME=API,WS` (running), `NAME=spawn:DRIVER` (a gochat-rs cluster from --spawn's binary,
    /// fresh per run), `NAME=peer:SCRIPT` (`SCRIPT start` prints `api=`, `ws=`, `pids=` and
    /// leaves the server running; `SCRIPT stop` ends it; fresh per run) or `NAME=floor` (one
    /// write per delivery from one thread of this process: the kernel's cost per send).
    #[arg(long = "target", global = true, value_name = "NAME=SPEC")]
    targets: Vec<NamedTarget>,
    /// Rounds over the targets (interleaved: A B A B …); figures are printed as medians with
    /// their range.
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    /// How connections know they are authenticated: the server's op 7 (`reply`), the first
    /// message in their room, sent as probes (`probe`, for servers that answer nothing, such
    /// as gochat), or `auto`: one connection finds out before each run.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    auth: AuthChoice,
    /// Start a local gochat-rs cluster with this `gochat` binary instead.
    #[arg(long, global = true)]
    spawn: Option<PathBuf>,
    /// With --spawn: the gateway drivers to run the scenario against, in turn.
    #[arg(long, global = true, value_delimiter = ',', default_value = "epoll")]
    drivers: Vec<String>,
    /// With --spawn: the queue between control and the worker — `memory` (the worker runs inside
    /// control) or `redis` (Redis Streams on --redis, the worker its own process).
    #[arg(long, global = true, default_value = "memory")]
    queue: String,
    /// With --spawn and `--queue redis`: the Redis the queue (and control's state, with
    /// `--control-set 'state="redis"'`) lives on, one node or a Redis Cluster
    /// (`redis+cluster://host:port,host:port,…`). Keys under a prefix of the run's own, deleted
    /// after it.
    #[arg(long, global = true, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// With --spawn: gateway processes (default: one per 15,000 connections).
    #[arg(long, global = true)]
    gateways: Option<usize>,
    /// With --spawn: the worker's batch age (`[worker] batch_age_us`): above 0, a batch waits
    /// that long for more messages (fewer pushes per message at the price of latency).
    #[arg(long, global = true, default_value_t = 0)]
    batch_age_us: u64,
    /// With --spawn: the most messages a worker batch holds (`[worker] batch_max`; default: the
    /// worker's own).
    #[arg(long, global = true)]
    batch_max: Option<usize>,
    /// Client worker processes (0: one thread in this process); raised to one per 15,000
    /// connections.
    #[arg(long, global = true, default_value_t = 1)]
    procs: usize,
    /// Run the WebSocket clients on these agents (`bench agent` on other machines, host:port)
    /// instead of here: the client processes are spread over them round-robin, one each at
    /// least. --ws must be reachable from them; users and pushes still go from here.
    #[arg(long, global = true, value_delimiter = ',', value_name = "ADDR")]
    agents: Vec<String>,
    /// Handshakes in flight per client process.
    #[arg(long, global = true, default_value_t = 256)]
    connect_concurrency: usize,
    /// What the client connections speak: gochat's `json`, or the `binary` protocol
    /// (protobuf, the `gochat-pb` subprotocol).
    #[arg(long, global = true, value_enum, default_value = "json")]
    protocol: Protocol,
    /// The client connections acknowledge private messages (op 12), so the server keeps them
    /// until they do (without, messages to an online user are sent and not kept).
    #[arg(long, global = true)]
    acks: bool,
    /// The client connections offer `permessage-deflate` (server_no_context_takeover) and
    /// refuse a server that does not agree; `spawn:` clusters turn it on (`[gateway]
    /// compression = "on"`). JSON only.
    #[arg(long, global = true)]
    compression: bool,
    /// With --spawn: a `[control]` setting for the cluster, as KEY=VALUE in TOML (e.g.
    /// `history_size=0`); repeatable.
    #[arg(long = "control-set", global = true, value_name = "KEY=VALUE")]
    control_set: Vec<String>,
    /// With --spawn: a `[gateway]` setting for every gateway of the cluster, as KEY=VALUE in
    /// TOML (e.g. `idle_timeout_secs=300`); repeatable.
    #[arg(long = "gateway-set", global = true, value_name = "KEY=VALUE")]
    gateway_set: Vec<String>,
    /// The client connections speak `wss://` (TLS 1.3 or 1.2, whatever the server picks). A
    /// `spawn:` cluster then serves wss with a self-signed certificate the bench makes (for
    /// localhost and 127.0.0.1) and trusts; a running server's --ws is its wss address, and
    /// --tls-ca names what to trust.
    #[arg(long, global = true)]
    tls: bool,
    /// With --tls: PEM certificates to trust (a CA's, or the server's own).
    #[arg(long, global = true, value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    /// With --tls: the name to verify the server's certificate for (a DNS name or an IP).
    #[arg(long, global = true, default_value = "localhost")]
    tls_name: String,
    /// Append each run's result (JSON) to this directory.
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthChoice {
    Auto,
    Reply,
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Json,
    Binary,
}

#[derive(Subcommand)]
enum Command {
    /// Open N authenticated WebSockets in R rooms, hold them idle, broadcast once per room:
    /// connect rate, server memory and kernel memory per connection, idle CPU per connection,
    /// and that every connection got its room's broadcast.
    Connections {
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// How connections are spread over the rooms.
        #[arg(long, value_enum, default_value = "uniform")]
        distribution: scenario::Distribution,
        /// Distinct users (connections share them round-robin; each needs a password hash).
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Seconds to hold the connections idle.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
    /// R rooms × M members; room messages pushed through the REST API at a rate (or as fast
    /// as possible): deliveries/s, frames/s, deliveries per server CPU-second, loss, latency.
    Fanout {
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[command(flatten)]
        push: PushArgs,
    },
    /// End-to-end latency REST push → client at a fixed rate: p50/p90/p99/p99.9/max.
    Latency {
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// One connection per user, private messages user → next user: loss and latency (across
    /// gateways when several run).
    Private {
        #[command(flatten)]
        push: PushArgs,
    },
    /// Raw WebSocket echo throughput against an echo endpoint (the gateway's `ws_echo_path`),
    /// and with --baseline against a fastwebsockets-on-tokio echo server in this process.
    Echo {
        #[arg(long, short = 'n', default_value_t = 32)]
        connections: usize,
        /// Messages each connection keeps in flight.
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Echo path on the server (gochat-rs: the gateway's `ws_echo_path`).
        #[arg(long, default_value = "/echo")]
        echo_path: String,
        /// Also measure the baseline server (with as many threads as the machine has cores).
        #[arg(long)]
        baseline: bool,
    },
    /// Run the baseline echo server (fastwebsockets on tokio) in the foreground.
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Turn result files into a markdown table and SVG charts.
    Report {
        /// Result files (JSON) or directories of them.
        inputs: Vec<PathBuf>,
        /// Where report.md and the charts go.
        #[arg(long, default_value = "bench-report")]
        to: PathBuf,
        /// Print the results side by side instead (as `--target … --runs N` does: medians,
        /// ranges, ratios to the first label and to the floor), labels in order of appearance.
        #[arg(long)]
        side_by_side: bool,
    },
    /// A numbered message stream into one room while nodes fail (kill them meanwhile, e.g. with
    /// `gochat cluster --faults`): per receiver, messages lost while connected, missed while
    /// away, duplicates, out of order, and time to come back, as the wire delivered them and as
    /// the application saw them (receivers resume from their position and order by seq). Fails
    /// when any was lost while connected or arrived twice, or when an application missed one or
    /// saw one twice or out of order.
    Sequence {
        /// Every control's REST API (default: --api); pushes move to the next on failure.
        #[arg(long, value_delimiter = ',')]
        control_apis: Vec<String>,
        /// Every gateway's WebSocket address (default: --ws); receivers move to the next one
        /// when theirs goes away.
        #[arg(long, value_delimiter = ',')]
        gateway_ws: Vec<String>,
        #[arg(long, default_value_t = 4)]
        receivers: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds to send.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        #[arg(long, default_value_t = 4242)]
        room: u64,
        /// How long an accepted message may take to arrive, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        grace_ms: u64,
        /// Idle clients besides the receivers, reconnecting the same way (a connect storm when
        /// a gateway dies).
        #[arg(long, default_value_t = 0)]
        storm: usize,
    },
    /// Serve client processes to coordinators on other machines (`bench --agents`), for load
    /// from several machines: each coordinator connection runs one `bench worker` process here.
    /// No authentication: listen only on a private benchmark network.
    Agent {
        /// Address to take coordinators on, e.g. 10.0.0.5:7100 (a private network's).
        #[arg(long)]
        listen: SocketAddr,
        /// Source addresses for the clients' connections, one per client process in turn when
        /// the coordinator names none: each address reaches ~28k connections to one server
        /// address (the ephemeral ports), so more need several.
        #[arg(long, value_delimiter = ',', value_name = "IP[,IP…]")]
        source: Vec<std::net::Ipv4Addr>,
    },
    /// (internal) A client worker process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

/// The users and the messages pushed over REST, of `fanout` and `private`.
#[derive(Args, Clone, Copy)]
struct PushArgs {
    #[arg(long, default_value_t = 200)]
    users: usize,
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Messages per second (default: as fast as the API takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// REST calls in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Pad each message's text with chat-like words to this many bytes (0: the bench's mark
    /// alone, ~25 bytes).
    #[arg(long, default_value_t = 0)]
    message_bytes: usize,
}

fn main() -> anyhow::Result<()> {
    // Sockets are files: take the hard limit (the result records what it came to).
    let _ = gochat_runtime::os::raise_open_files_limit();
    let cli = Cli::parse();
    if !cli.server.agents.is_empty() && matches!(cli.command, Command::Echo { .. } | Command::Sequence { .. })
    {
        bail!("--agents: echo and sequence run their clients in this process only");
    }
    match cli.command {
        Command::Worker => worker::worker_main(),
        Command::Agent { listen, source } => gochat_bench::agent::serve(listen, source),
        Command::EchoServer { listen, threads } => echo::serve_baseline(listen, cores(threads)),
        Command::Report { inputs, side_by_side: true, .. } => {
            let mut results = load_results(&inputs)?;
            results.sort_by(|a, b| a.started_at.cmp(&b.started_at));
            let mut names: Vec<String> = Vec::new();
            for r in &results {
                if !names.contains(&r.label) {
                    names.push(r.label.clone());
                }
            }
            if results.iter().any(|r| r.scenario != results[0].scenario) {
                bail!("--side-by-side takes the runs of one scenario");
            }
            println!("{}", targets::side_by_side(&names, &results));
            Ok(())
        }
        Command::Report { inputs, to, .. } => {
            let results = load_results(&inputs)?;
            let md = report::write(&results, &to)?;
            println!("{md}");
            eprintln!("written to {}", to.join("report.md").display());
            Ok(())
        }
        Command::Sequence { control_apis, gateway_ws, receivers, rate, duration, room, grace_ms, storm } => {
            let or =
                |list: Vec<String>, one: &str| if list.is_empty() { vec![one.to_string()] } else { list };
            let params = sequence::SequenceParams {
                apis: or(control_apis, &cli.server.api),
                gateways: or(gateway_ws, &cli.server.ws)
                    .iter()
                    .map(|g| targets::resolve(g))
                    .collect::<Result<_, _>>()?,
                path: cli.server.path.clone(),
                receivers,
                rate,
                duration: Duration::from_secs_f64(duration),
                room,
                grace: Duration::from_millis(grace_ms),
                storm,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let result = rt.block_on(sequence::run(params))?;
            save(&result, &cli.server.out, "sequence")?;
            let broken =
                ["lost_while_connected", "duplicates", "app_missed", "app_duplicates", "app_out_of_order"]
                    .into_iter()
                    .filter(|k| result.figures[*k].as_u64() != Some(0))
                    .collect::<Vec<_>>();
            if !broken.is_empty() {
                bail!("guarantee broken: {}", broken.join(", "));
            }
            Ok(())
        }
        command => run(&cli.server, &command),
    }
}

fn run(args: &ServerArgs, command: &Command) -> anyhow::Result<()> {
    let cert_dir = std::env::temp_dir().join(format!("gochat-bench-tls-{}", std::process::id()));
    let result = run_in(args, command, &cert_dir);
    let _ = std::fs::remove_dir_all(&cert_dir);
    result
}

/// What `--tls` trusts and, when clusters are spawned, the certificate they serve (made in
/// `cert_dir`).
fn tls_setup(
    args: &ServerArgs,
    spawns: bool,
    cert_dir: &std::path::Path,
) -> anyhow::Result<(Option<TlsClient>, Option<gochat_bench::server::ServerCert>)> {
    if !args.tls {
        if args.tls_ca.is_some() {
            bail!("--tls-ca needs --tls");
        }
        return Ok((None, None));
    }
    let mut ca_pem = match &args.tls_ca {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("--tls-ca {}", path.display()))?
        }
        None => String::new(),
    };
    let cert = if spawns { Some(gochat_bench::server::ServerCert::self_signed(cert_dir)?) } else { None };
    if let Some(cert) = &cert {
        ca_pem.push_str(&cert.cert_pem);
    }
    if ca_pem.is_empty() {
        bail!("--tls against a running server needs --tls-ca: what to trust");
    }
    Ok((Some(TlsClient { ca_pem, name: args.tls_name.clone() }), cert))
}

fn run_in(args: &ServerArgs, command: &Command, cert_dir: &std::path::Path) -> anyhow::Result<()> {
    let spawns = args.spawn.is_some()
        && (args.targets.is_empty()
            || args.targets.iter().any(|t| matches!(t.spec, TargetSpec::Spawn { .. })));
    if args.compression && args.protocol == Protocol::Binary {
        bail!("--compression is for JSON clients: the binary protocol is not compressed");
    }
    let (tls, server_cert) = tls_setup(args, spawns, cert_dir)?;
    let client = ClientOpts {
        procs: args.procs,
        exe: std::env::current_exe().context("own executable")?,
        connect_concurrency: args.connect_concurrency,
        kind: ClientKind {
            binary: args.protocol == Protocol::Binary,
            acks: args.acks,
            compression: args.compression,
        },
        agents: args.agents.clone(),
        tls,
    };
    let connections = match command {
        Command::Connections { connections, .. } | Command::Latency { connections, .. } => *connections,
        Command::Fanout { rooms, members, .. } => rooms * members,
        Command::Private { push } => push.users,
        Command::Echo { connections, .. } => *connections,
        _ => 0,
    };
    let targets: Vec<NamedTarget> = if !args.targets.is_empty() {
        args.targets.clone()
    } else if args.spawn.is_some() {
        let spawn =
            |d: &String| NamedTarget { name: d.clone(), spec: TargetSpec::Spawn { driver: d.clone() } };
        args.drivers.iter().map(spawn).collect()
    } else {
        let spec = TargetSpec::Running { api: args.api.clone(), ws: args.ws.clone() };
        vec![NamedTarget { name: "server".into(), spec }]
    };
    let mut names: Vec<String> = Vec::new();
    for t in &targets {
        if names.contains(&t.name) {
            bail!("two targets are called {:?}", t.name);
        }
        names.push(t.name.clone());
    }
    let options = TargetOptions {
        gochat: args.spawn.clone(),
        gateways: args.gateways.unwrap_or(connections.div_ceil(15_000).max(1)),
        queue: args.queue.clone(),
        redis: args.redis.clone(),
        batch_age_us: args.batch_age_us,
        batch_max: args.batch_max,
        control_settings: args.control_set.clone(),
        gateway_settings: args.gateway_set.clone(),
        path: args.path.clone(),
        server_pids: args.server_pid.clone(),
        auth: match args.auth {
            AuthChoice::Auto => None,
            AuthChoice::Reply => Some(AuthSignal::Reply),
            AuthChoice::Probe => Some(AuthSignal::Probe),
        },
        tls: server_cert,
        compression: args.compression,
    };
    let mut results = Vec::new();
    let mut baseline = None;
    for round in 1..=args.runs.max(1) {
        for t in &targets {
            if args.runs > 1 {
                eprintln!("run {round} of {}: {}", args.runs, t.name);
            }
            let started = match t.start(&options) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{}: did not start ({e:#}); skipped", t.name);
                    continue;
                }
            };
            let result = scenario_run(&started.target, &client, command, args.quiet);
            started.stop();
            let mut result = result.with_context(|| format!("target {}", t.name))?;
            if let TargetSpec::Spawn { .. } = t.spec {
                result.param("gateway_processes", options.gateways);
                result.param("queue", &args.queue);
                result.param("control_settings", &args.control_set);
                result.param("gateway_settings", &args.gateway_set);
            }
            result.param("target", format!("{:?}", t.spec));
            result.param("round", round);
            results.push(finish(result, args, connections)?);
        }
        if let Command::Echo { baseline: true, .. } = command {
            // The baseline server lives in this process from its first round on.
            let ws = match baseline {
                Some(addr) => addr,
                None => *baseline.insert(echo::spawn_baseline(cores(0))?),
            };
            let target = Target {
                api: String::new(),
                ws,
                path: String::new(),
                gateways: None,
                servers: None,
                label: BASELINE.into(),
                auth: None,
                gateway_grpc: Vec::new(),
            };
            let mut result = scenario_run(&target, &client, command, args.quiet)?;
            result.param("round", round);
            results.push(finish(result, args, connections)?);
        }
    }
    if baseline.is_some() {
        names.push(BASELINE.into());
    }
    if results.is_empty() {
        bail!("no run completed");
    }
    if names.len() > 1 || args.runs > 1 {
        let names: Vec<String> =
            names.into_iter().filter(|n| results.iter().any(|r| &r.label == n)).collect();
        let table = targets::side_by_side(&names, &results);
        println!("\n{table}");
        let file = args.out.join(format!(
            "compare-{}-{}.md",
            results[0].scenario,
            results[0].started_at.replace(':', "")
        ));
        std::fs::write(&file, &table)?;
        eprintln!("side by side: {}", file.display());
    }
    Ok(())
}

/// What the echo baseline's results are called.
const BASELINE: &str = "fastwebsockets-tokio";

/// Stamps a run's client settings, prints it and saves it.
fn finish(mut r: RunResult, args: &ServerArgs, connections: usize) -> anyhow::Result<RunResult> {
    r.param("protocol", format!("{:?}", args.protocol).to_lowercase());
    r.param("acks", args.acks);
    r.param("compression", args.compression);
    r.param("tls", args.tls);
    save(&r, &args.out, &format!("{}-{}-{}", r.scenario, r.label, connections))?;
    Ok(r)
}

/// Prints a run's result and writes it to `out` as `{stem}-{start time}.json`.
fn save(r: &RunResult, out: &std::path::Path, stem: &str) -> anyhow::Result<()> {
    r.print();
    std::fs::create_dir_all(out)?;
    let file = out.join(format!("{stem}-{}.json", r.started_at.replace(':', "")));
    std::fs::write(&file, serde_json::to_string_pretty(r)?)?;
    eprintln!("result: {}", file.display());
    Ok(())
}

fn scenario_run(
    target: &Target,
    client: &ClientOpts,
    command: &Command,
    quiet: bool,
) -> anyhow::Result<RunResult> {
    match command {
        Command::Connections { connections, rooms, distribution, users, hold } => scenario::connections(
            target,
            client,
            &ConnectionsParams {
                connections: *connections,
                rooms: *rooms,
                distribution: *distribution,
                users: *users,
                hold: Duration::from_secs_f64(*hold),
            },
            quiet,
        ),
        Command::Fanout { rooms, members, push } => scenario::fanout(
            "fanout",
            target,
            client,
            &FanoutParams {
                rooms: *rooms,
                members: *members,
                users: push.users,
                messages: push.messages,
                rate: push.rate,
                in_flight: push.in_flight,
                message_bytes: push.message_bytes,
            },
            quiet,
        ),
        Command::Latency { connections, rooms, users, rate, duration } => {
            let rooms = (*rooms).max(1);
            scenario::fanout(
                "latency",
                target,
                client,
                &FanoutParams {
                    rooms,
                    members: connections.div_ceil(rooms),
                    users: *users,
                    messages: (rate * duration).round() as u64,
                    rate: Some(*rate),
                    in_flight: 256,
                    message_bytes: 0,
                },
                quiet,
            )
        }
        Command::Private { push } => scenario::private(
            target,
            client,
            &PrivateParams {
                users: push.users,
                messages: push.messages,
                rate: push.rate,
                in_flight: push.in_flight,
                message_bytes: push.message_bytes,
            },
            quiet,
        ),
        Command::Echo { connections, window, size, duration, echo_path, .. } => {
            let path = if target.path.is_empty() { "/" } else { echo_path.as_str() };
            let p = EchoParams {
                connections: *connections,
                window: *window,
                size: *size,
                duration: Duration::from_secs_f64(*duration),
            };
            echo::run(target.ws, path, &target.label, &p)
        }
        Command::Report { .. }
        | Command::Worker
        | Command::Agent { .. }
        | Command::EchoServer { .. }
        | Command::Sequence { .. } => {
            unreachable!("handled in main")
        }
    }
}

fn load_results(inputs: &[PathBuf]) -> anyhow::Result<Vec<RunResult>> {
    let mut files = Vec::new();
    for i in inputs {
        if i.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(i)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(i.clone());
        }
    }
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))
        })
        .collect()
}

fn cores(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        // Global and scenario options must not share a name (clap fails only when parsing).
        let cli =
            super::Cli::try_parse_from(["bench", "--gateways", "2", "sequence", "--gateway-ws", "a:1,b:2"]);
        let Ok(super::Cli { command: super::Command::Sequence { gateway_ws, .. }, server }) = cli else {
            panic!("sequence options do not parse")
        };
        assert_eq!((gateway_ws.len(), server.gateways), (2, Some(2)));
        let cli = super::Cli::try_parse_from([
            "bench",
            "--target",
            "f=floor",
            "--target",
            "rs=spawn:epoll",
            "--runs",
            "3",
            "fanout",
        ])
        .unwrap();
        assert_eq!((cli.server.targets.len(), cli.server.runs), (2, 3));
        let bad = super::Cli::try_parse_from(["bench", "--target", "nonsense", "fanout"]);
        assert!(bad.is_err_and(|e| e.to_string().contains("NAME=API,WS")));
    }
}
