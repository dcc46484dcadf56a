//! Every scenario at a tiny size against `gochat up` started in this process, so the bench
//! cannot rot. Figures are checked for completeness (no loss), not for speed.

use std::time::Duration;

mod common;

use gochat::roles::Up;
use gochat_bench::fleets::ClientOpts;
use gochat_bench::floor::Floor;
use gochat_bench::scenario::{self, ConnectionsParams, FanoutParams, PrivateParams, Target};
use gochat_bench::server::ServerProcs;
use gochat_bench::targets::{side_by_side, NamedTarget, TargetOptions};

/// `gochat up` in this process on free ports; `echo` turns on the gateway's echo endpoint.
fn server(echo: bool) -> (tokio::runtime::Runtime, Up) {
    server_with(|cfg| cfg.gateway.ws_echo_path = echo.then(|| "/echo".into()))
}

/// `gochat up` in this process on free ports, its config changed by `change`.
fn server_with(change: impl FnOnce(&mut gochat::Config)) -> (tokio::runtime::Runtime, Up) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = common::bench_config("127.0.0.1:0".parse().unwrap());
    change(&mut cfg);
    let up = rt.block_on(Up::start(cfg)).unwrap();
    (rt, up)
}

fn target(up: &Up) -> Target {
    let me = Some(ServerProcs { pids: vec![std::process::id()], ..ServerProcs::default() });
    Target {
        api: format!("http://{}", up.control.api_addr),
        ws: up.gateway.ws_addr,
        path: "/ws".into(),
        gateways: me.clone(),
        servers: me,
        label: "smoke".into(),
        auth: None,
        gateway_grpc: vec![format!("http://{}", up.gateway.grpc_addr)],
    }
}

fn threads() -> ClientOpts {
    ClientOpts {
        procs: 0,
        exe: env!("CARGO_BIN_EXE_bench").into(),
        connect_concurrency: 16,
        kind: Default::default(),
        agents: Vec::new(),
        tls: None,
    }
}

fn processes() -> ClientOpts {
    ClientOpts { procs: 2, ..threads() }
}

fn figure(r: &gochat_bench::result::RunResult, k: &str) -> f64 {
    r.figures.get(k).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("no figure {k}: {:?}", r.figures))
}

#[test]
fn every_scenario_at_a_tiny_size() {
    let (rt, up) = server(false);
    let t = target(&up);

    let p = ConnectionsParams {
        connections: 60,
        rooms: 6,
        distribution: scenario::Distribution::Zipf,
        users: 12,
        hold: Duration::from_millis(300),
    };
    let r = scenario::connections(&t, &processes(), &p, true).unwrap();
    assert_eq!(figure(&r, "connected"), 60.0);
    assert_eq!(figure(&r, "broadcast_received"), 60.0);
    assert_eq!(figure(&r, "broadcast_loss"), 0.0);
    assert!(r.figures.contains_key("gateway_rss_bytes_per_conn"));
    assert!(r.figures.contains_key("server_rss_bytes_per_conn"));
    assert!(r.figures.contains_key("leave_server_cpu_ms") && r.figures.contains_key("leave_settled_secs"));
    assert_eq!(r.params["auth_signal"], "reply", "gochat-rs answers the auth frame");

    let p = FanoutParams {
        rooms: 3,
        members: 10,
        users: 12,
        messages: 30,
        rate: None,
        in_flight: 8,
        message_bytes: 0,
    };
    let r = scenario::fanout("fanout", &t, &threads(), &p, true).unwrap();
    assert_eq!(figure(&r, "deliveries"), 300.0);
    assert_eq!(figure(&r, "loss"), 0.0);
    // Every delivery went out in some write, and no write carried more than all of them.
    let sends = figure(&r, "sends");
    assert!((1.0..=300.0).contains(&sends), "sends {sends}");
    assert_eq!(figure(&r, "deliveries_per_send"), (300.0 / sends * 100.0).round() / 100.0);
    assert!(figure(&r, "latency_p99_ms") > 0.0);

    let p = FanoutParams {
        rooms: 2,
        members: 5,
        users: 12,
        messages: 20,
        rate: Some(100.0),
        in_flight: 8,
        message_bytes: 0,
    };
    let r = scenario::fanout("latency", &t, &threads(), &p, true).unwrap();
    assert_eq!(figure(&r, "loss"), 0.0);

    let p = PrivateParams { users: 6, messages: 24, rate: None, in_flight: 4, message_bytes: 0 };
    let r = scenario::private(&t, &threads(), &p, true).unwrap();
    assert_eq!(figure(&r, "delivered"), 24.0);
    assert_eq!(figure(&r, "loss"), 0.0);

    let dir = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    let md = gochat_bench::report::write(&[r], &dir).unwrap();
    assert!(md.contains("### private"));
    let _ = std::fs::remove_dir_all(dir);
    rt.block_on(up.shutdown());
}

#[test]
fn compression_deflates_what_the_clients_read() {
    let (rt, up) = server_with(|cfg| cfg.gateway.compression = gochat_gateway::config::Compression::On);
    let t = target(&up);
    let p = FanoutParams {
        rooms: 2,
        members: 10,
        users: 4,
        messages: 20,
        rate: None,
        in_flight: 8,
        message_bytes: 600,
    };
    let mut per_delivery = Vec::new();
    for compression in [false, true] {
        let mut opts = threads();
        opts.kind.compression = compression;
        let r = scenario::fanout("fanout", &t, &opts, &p, true).unwrap();
        assert_eq!((figure(&r, "deliveries"), figure(&r, "loss")), (200.0, 0.0));
        let compressed = figure(&r, "compressed_frames");
        assert_eq!(
            compressed,
            if compression { 200.0 } else { 0.0 },
            "every room message over 128 B, deflated"
        );
        per_delivery.push(figure(&r, "wire_bytes_per_delivery"));
    }
    assert!(
        per_delivery[1] < per_delivery[0] * 0.8,
        "bytes per delivery, plain then deflated: {per_delivery:?}"
    );
    rt.block_on(up.shutdown());
}

#[test]
fn a_server_that_answers_no_auth_frame_is_probed() {
    // gochat says nothing after the auth frame; the floor can be told to do the same.
    let floor = Floor::start(false).unwrap();
    let t = Target {
        api: floor.api.clone(),
        ws: floor.ws,
        path: "/ws".into(),
        gateways: Some(floor.sender.clone()),
        servers: Some(floor.sender.clone()),
        label: "silent".into(),
        auth: None,
        gateway_grpc: Vec::new(),
    };
    let p = FanoutParams {
        rooms: 3,
        members: 10,
        users: 5,
        messages: 30,
        rate: None,
        in_flight: 8,
        message_bytes: 0,
    };
    let r = scenario::fanout("fanout", &t, &processes(), &p, true).unwrap();
    assert_eq!(r.params["auth_signal"], "probe");
    assert_eq!(figure(&r, "connected"), 30.0);
    assert_eq!((figure(&r, "deliveries"), figure(&r, "loss")), (300.0, 0.0));
}

#[test]
fn targets_in_turn_and_their_figures_side_by_side() {
    let (rt, up) = server(false);
    let rs: NamedTarget =
        format!("rs=http://{},{}", up.control.api_addr, up.gateway.ws_addr).parse().unwrap();
    let floor: NamedTarget = "floor=floor".parse().unwrap();
    let options =
        TargetOptions { path: "/ws".into(), server_pids: vec![std::process::id()], ..Default::default() };
    let p = FanoutParams {
        rooms: 2,
        members: 10,
        users: 4,
        messages: 20,
        rate: None,
        in_flight: 8,
        message_bytes: 0,
    };
    let mut results = Vec::new();
    for _round in 0..2 {
        for t in [&rs, &floor] {
            let started = t.start(&options).unwrap();
            let r = scenario::fanout("fanout", &started.target, &threads(), &p, true);
            started.stop();
            results.push(r.unwrap());
        }
    }
    for r in &results {
        assert_eq!(r.params["auth_signal"], "reply");
        assert_eq!((figure(r, "deliveries"), figure(r, "loss")), (200.0, 0.0), "{}", r.label);
        assert!(figure(r, "server_cpu_secs") >= 0.0);
    }
    // The floor's sender thread is measured (too briefly here for a per-CPU figure).
    assert!(results
        .iter()
        .filter(|r| r.label == "floor")
        .all(|r| r.figures.contains_key("gateway_cpu_secs")));
    let md = side_by_side(&["rs".into(), "floor".into()], &results);
    assert!(md.contains("| deliveries | 200 (200–200) | 200 (200–200) | 1.00× |"), "{md}");
    rt.block_on(up.shutdown());
}

/// `--tls`: a tiny connections run over `wss://`, through the command line, against `gochat up`
/// serving wss with a certificate made here.
#[test]
fn connections_over_tls_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("bench-smoke-tls-{}", std::process::id()));
    let cert = gochat_bench::server::ServerCert::self_signed(&dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = common::bench_config("127.0.0.1:0".parse().unwrap());
    cfg.gateway.wss_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.gateway.tls_cert = Some(cert.cert.clone());
    cfg.gateway.tls_key = Some(cert.key.clone());
    let up = rt.block_on(Up::start(cfg)).unwrap();
    let out = dir.join("results");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quiet", "--procs", "0", "--tls", "--tls-ca"])
        .arg(&cert.cert)
        .args(["--api", &format!("http://{}", up.control.api_addr)])
        .args(["--ws", &up.gateway.wss_addr.unwrap().to_string()])
        .args(["--server-pid", &std::process::id().to_string(), "--out"])
        .arg(&out)
        .args(["connections", "-n", "20", "--rooms", "2", "--users", "4", "--hold", "0.3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let file = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"));
    let text = std::fs::read_to_string(file.expect("a result file").path()).unwrap();
    let r: gochat_bench::result::RunResult = serde_json::from_str(&text).unwrap();
    assert_eq!(r.params["tls"], true);
    assert_eq!(figure(&r, "connected"), 20.0, "{stderr}");
    assert_eq!(figure(&r, "broadcast_received"), 20.0);
    assert_eq!(figure(&r, "broadcast_loss"), 0.0);
    assert!(r.figures.contains_key("server_rss_bytes_per_conn"));
    // Without --tls the same port refuses the clients: they did speak TLS above.
    let plain = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quiet", "--procs", "0", "--api", &format!("http://{}", up.control.api_addr)])
        .args(["--ws", &up.gateway.wss_addr.unwrap().to_string(), "--out"])
        .arg(&out)
        .args(["connections", "-n", "2", "--rooms", "1", "--users", "1", "--hold", "0"])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "a plain client on the wss port");
    rt.block_on(up.shutdown());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_documents_every_scenario() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for s in ["connections", "fanout", "latency", "private", "echo", "report"] {
        assert!(help.contains(s), "{s} missing from --help:\n{help}");
    }
}

#[test]
fn echo_against_the_gateway_and_the_baseline() {
    let (rt, up) = server(true);
    let p = gochat_bench::echo::EchoParams {
        connections: 4,
        window: 4,
        size: 32,
        duration: Duration::from_millis(300),
    };
    let r = gochat_bench::echo::run(up.gateway.ws_addr, "/echo", "gateway", &p).unwrap();
    assert!(figure(&r, "echoed") > 0.0);
    assert_eq!(figure(&r, "failed_connections"), 0.0);
    let base = gochat_bench::echo::spawn_baseline(1).unwrap();
    let r = gochat_bench::echo::run(base, "/", "baseline", &p).unwrap();
    assert!(figure(&r, "echoed") > 0.0);
    assert_eq!(figure(&r, "failed_connections"), 0.0);
    rt.block_on(up.shutdown());
}
