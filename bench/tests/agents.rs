//! Load from several machines, on one: `bench agent` in two network namespaces of the test's
//! own, each joined to the test's namespace by a veth pair, and a coordinator (the library, as
//! `bench --agents` uses it) spreading its fleets over them against `gochat up` in this process.
//! That one needs root and `ip` (it skips without, and fails under CI); the other test, an
//! agent on loopback fed bad input and abandoned by its coordinators, needs neither.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use gochat::roles::Up;
use gochat_bench::agent::Refusal;
use gochat_bench::engine::{ClientKind, ConnSpec, FleetSpec, Snapshot};
use gochat_bench::fleets::ClientOpts;
use gochat_bench::result::RunResult;
use gochat_bench::scenario::{self, FanoutParams, Target};
use gochat_runtime::launch::{free_addr, Process};
use gochat_test_services::{require, Service};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");
/// Where the agents listen, each in its own namespace.
const AGENT_PORT: u16 = 7100;

/// `ip ARGS`, failing with what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The test's network, taken down on drop, the test passing or not: agents stopped, veth pairs
/// and namespaces deleted (a namespace's deletion would take its veth pair too, but later, in
/// the kernel's own time), the server's address taken off `lo`. The agents' logs are kept when
/// the test failed.
struct Net {
    agents: Vec<Process>,
    veths: Vec<String>,
    namespaces: Vec<String>,
    on_lo: Option<String>,
    dir: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            agent.stop(Duration::from_secs(5));
        }
        for veth in &self.veths {
            if let Err(e) = ip(&["link", "del", veth]) {
                eprintln!("{e}");
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("{e}");
            }
        }
        if let Some(addr) = &self.on_lo {
            if let Err(e) = ip(&["addr", "del", addr, "dev", "lo"]) {
                eprintln!("{e}");
            }
        }
        if std::thread::panicking() {
            eprintln!("the agents' logs: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `gochat up` in this process: the gateway's WebSocket listener on `ws_ip`, the rest (REST
/// API, gRPC) on loopback, for this process only.
fn server(rt: &tokio::runtime::Runtime, ws_ip: Ipv4Addr) -> Up {
    let cfg = common::bench_config(SocketAddr::from((ws_ip, 0)));
    rt.block_on(Up::start(cfg)).unwrap()
}

fn figure<'a>(r: &'a RunResult, k: &str) -> &'a serde_json::Value {
    r.figures.get(k).unwrap_or_else(|| panic!("no figure {k}: {:?}", r.figures))
}

fn log_lines(log: &Path, holding: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(holding)).count()
}

#[test]
fn fleets_spread_over_agents_in_two_namespaces() {
    require!(Service::NetworkNamespaces);
    let pid = std::process::id();
    // This run's addresses: a /28 of 198.18.0.0/15 (set aside for benchmarks; routed nowhere
    // here) chosen by the pid, so runs at the same time do not clash:
    //   +1/30 (this namespace) ↔ +2/30 (namespace a), +5/30 ↔ +6/30 (namespace b),
    //   +9/32 the server, +10/32 and +11/32 more addresses in namespace a for its agent's
    //   --source. Namespace a may not reach the server from +2, its veth address: its fleets
    //   connect only if the agent bound them to its --source addresses.
    // The server's address sits on this namespace's `lo`, and each agent's namespace routes it
    // via its veth peer: one --ws address that both reach, as on a real benchmark network,
    // rather than the server on one veth's address reached from the other namespace.
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + pid % 4096 * 16;
    let at = |n: u32| Ipv4Addr::from(base + n);
    let (server_ip, sources_a) = (at(9), [at(10), at(11)]);
    let dir = std::env::temp_dir().join(format!("bench-agents-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut net =
        Net { agents: Vec::new(), veths: Vec::new(), namespaces: Vec::new(), on_lo: None, dir: dir.clone() };

    let on_lo = format!("{server_ip}/32");
    ip(&["addr", "add", &on_lo, "dev", "lo"]).unwrap();
    net.on_lo = Some(on_lo);
    let mut listens = Vec::new();
    for (name, here, there) in [("a", at(1), at(2)), ("b", at(5), at(6))] {
        let ns = format!("gochat-bench-{pid}-{name}");
        ip(&["netns", "add", &ns]).unwrap();
        net.namespaces.push(ns.clone());
        let veth = format!("gb{pid}{name}");
        let (here, there) = (here.to_string(), there.to_string());
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]).unwrap();
        net.veths.push(veth.clone());
        for args in [
            vec!["addr", "add", &format!("{here}/30"), "dev", &veth],
            vec!["link", "set", &veth, "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec!["-n", &ns, "addr", "add", &format!("{there}/30"), "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
            vec!["-n", &ns, "route", "add", &format!("{server_ip}/32"), "via", &here],
        ] {
            ip(&args).unwrap();
        }
        let listen = SocketAddr::from((there.parse::<Ipv4Addr>().unwrap(), AGENT_PORT));
        let mut args = vec!["netns", "exec", &ns, BENCH, "agent", "--listen"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.push(listen.to_string());
        if name == "a" {
            for source in sources_a.map(|s| format!("{s}/32")) {
                ip(&["-n", &ns, "addr", "add", &source, "dev", "eth0"]).unwrap();
                ip(&["route", "add", &source, "via", &there]).unwrap();
            }
            let (to, from) = (server_ip.to_string(), there.clone());
            ip(&["-n", &ns, "rule", "add", "from", &from, "to", &to, "prohibit"]).unwrap();
            args.extend(["--source".into(), format!("{},{}", sources_a[0], sources_a[1])]);
        }
        let log = dir.join(format!("agent-{name}.log"));
        let mut agent = Process::new(format!("agent {name}"), "ip", args, log).ready_at(listen);
        agent.spawn().unwrap();
        net.agents.push(agent);
        net.agents.last_mut().unwrap().wait_ready(Duration::from_secs(10)).unwrap();
        listens.push(listen.to_string());
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = server(&rt, server_ip);
    let target = Target {
        api: format!("http://{}", up.control.api_addr),
        ws: up.gateway.ws_addr,
        path: "/ws".into(),
        gateways: None,
        servers: None,
        label: "agents".into(),
        auth: None,
        gateway_grpc: Vec::new(),
    };
    let client = ClientOpts {
        procs: 4,
        exe: BENCH.into(),
        connect_concurrency: 16,
        kind: ClientKind::default(),
        agents: listens.clone(),
        tls: None,
    };

    // Four fleets over two agents: two each, agent a's from its two --source addresses in turn.
    let p = FanoutParams {
        rooms: 4,
        members: 15,
        users: 12,
        messages: 20,
        rate: None,
        in_flight: 8,
        message_bytes: 0,
    };
    let r = scenario::fanout("fanout", &target, &client, &p, true).unwrap();
    assert_eq!(figure(&r, "connected").as_u64(), Some(60), "{:?}", r.figures);
    assert_eq!(figure(&r, "deliveries").as_u64(), Some(20 * 15));
    assert_eq!(figure(&r, "loss").as_u64(), Some(0));
    assert_eq!(figure(&r, "agents_connected"), &serde_json::json!([30, 30]));
    assert_eq!(r.params["agents"], serde_json::json!(listens));
    let log_a = dir.join("agent-a.log");
    for source in sources_a {
        assert_eq!(log_lines(&log_a, &format!("from {source},")), 1, "a fleet from {source}");
    }

    // An agent where nothing listens: the run fails, naming it.
    let nobody = SocketAddr::from((at(2), AGENT_PORT + 1)).to_string();
    let wrong = ClientOpts { agents: vec![listens[0].clone(), nobody.clone()], ..client.clone() };
    let p = FanoutParams {
        rooms: 2,
        members: 5,
        users: 12,
        messages: 10,
        rate: None,
        in_flight: 8,
        message_bytes: 0,
    };
    let e = scenario::fanout("fanout", &target, &wrong, &p, true).unwrap_err();
    assert!(format!("{e:#}").contains(&nobody), "{e:#}");

    // The same agents serve the next coordinator: one fleet each at least, even with --procs 0.
    let again = ClientOpts { procs: 0, ..client };
    let r = scenario::fanout("fanout", &target, &again, &p, true).unwrap();
    assert_eq!(figure(&r, "connected").as_u64(), Some(10));
    assert_eq!(figure(&r, "loss").as_u64(), Some(0));
    assert_eq!(figure(&r, "agents_connected"), &serde_json::json!([5, 5]));

    rt.block_on(up.shutdown());
    drop(net);
}

/// An agent on loopback, stopped on drop.
struct Agent {
    process: Process,
    listen: SocketAddr,
    log: PathBuf,
}

impl Agent {
    fn start() -> Self {
        let listen = free_addr().unwrap();
        let log = std::env::temp_dir().join(format!("bench-agent-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let args = ["agent", "--listen", &listen.to_string()].map(String::from).to_vec();
        let mut process = Process::new("agent", BENCH, args, log.clone()).ready_at(listen);
        process.spawn().unwrap();
        process.wait_ready(Duration::from_secs(10)).unwrap();
        Self { process, listen, log }
    }

    /// A coordinator's connection: what it sends first, and a reader of the answers.
    fn connect(&self, first: &str) -> (TcpStream, BufReader<TcpStream>) {
        let mut s = TcpStream::connect(self.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(s, "{first}").unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    /// Waits until the log has `n` lines holding `what` (a worker is reaped after its
    /// coordinator left, not at once).
    fn wait_log(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while log_lines(&self.log, what) < n {
            assert!(
                Instant::now() < deadline,
                "no {n} lines with {what:?} in the agent's log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn answer(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    match r.read_line(&mut line) {
        // A reset after the agent's last line is a close too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        read => drop(read.unwrap()),
    }
    line
}

fn refusal(r: &mut BufReader<TcpStream>) -> String {
    let line = answer(r);
    let Refusal { error } =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a refusal {line:?}: {e}"));
    assert_eq!(answer(r), "", "the connection closes after a refusal");
    error
}

#[test]
fn an_agent_refuses_bad_input_and_outlives_its_coordinators() {
    let agent = Agent::start();
    let (_s, mut r) = agent.connect("hello");
    assert!(refusal(&mut r).contains("not JSON"));
    let (_s, mut r) = agent.connect(r#"{"ws": 1}"#);
    assert!(refusal(&mut r).contains("not a fleet spec"));

    // A fleet whose one connection goes where nothing listens (it retries meanwhile).
    let spec = FleetSpec {
        ws: free_addr().unwrap(),
        path: "/ws".into(),
        source_ip: None,
        conns: vec![ConnSpec { token: "t".into(), room: 1 }],
        connect_concurrency: 1,
        client: ClientKind::default(),
        auth: Default::default(),
        tls: None,
    };
    let spec = serde_json::to_string(&spec).unwrap();
    let snapshot = |s: &mut TcpStream, r: &mut BufReader<TcpStream>, cmd: &str| {
        writeln!(s, "{cmd}").unwrap();
        let line = answer(r);
        serde_json::from_str::<Snapshot>(&line).unwrap_or_else(|e| panic!("not a snapshot {line:?}: {e}"))
    };
    let (mut s, mut r) = agent.connect(&spec);
    assert_eq!(snapshot(&mut s, &mut r, r#""Snapshot""#).counts.connected, 0);
    writeln!(s, "nonsense").unwrap();
    assert!(refusal(&mut r).contains("not a command"));
    agent.wait_log("ended: refused", 1);

    // A coordinator that goes away mid-run: its worker is ended and reaped.
    let (mut s, mut r) = agent.connect(&spec);
    snapshot(&mut s, &mut r, r#""Snapshot""#);
    drop((s, r));
    agent.wait_log("ended: the coordinator closed the connection", 1);

    // And the agent still serves the next, to the end.
    let (mut s, mut r) = agent.connect(&spec);
    snapshot(&mut s, &mut r, r#""Snapshot""#);
    snapshot(&mut s, &mut r, r#""Quit""#);
    drop((s, r));
    agent.wait_log("ended: the coordinator quit", 1);
    assert_eq!(log_lines(&agent.log, " started: "), 3);
    assert_eq!(log_lines(&agent.log, " ended: "), 3);
}

#[test]
fn the_agent_is_documented() {
    let help = |args: &[&str]| {
        let out = Command::new(BENCH).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    for want in ["agent", "--agents"] {
        assert!(top.contains(want), "{want} missing from --help:\n{top}");
    }
    let agent = help(&["agent", "--help"]);
    for want in ["--listen", "--source", "private benchmark network"] {
        assert!(agent.contains(want), "{want} missing from agent --help:\n{agent}");
    }
}
