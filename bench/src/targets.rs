//! The servers a run is measured against, in turn (`--target NAME=SPEC`, repeatable), and the
//! side-by-side summary of their figures: medians over `--runs` with their range, and each
//! target's ratio to the first.
//!
//! A target is a running server (`API,WS`), a gochat-rs cluster the bench starts per run
//! (`spawn:DRIVER`), a peer started and stopped per run by a script (`peer:SCRIPT`, e.g.
//! gochat from bench/peers/gochat.sh), or the floor (`floor`, [`crate::floor`]).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::engine::AuthSignal;
use crate::floor::Floor;
use crate::result::RunResult;
use crate::scenario::Target;
use crate::server::{Cluster, ClusterSpec, ServerCert, ServerProcs};

/// How to reach (or start) one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// Already running: its REST API and WebSocket address.
    Running { api: String, ws: String },
    /// A gochat-rs cluster started for each run with `--spawn`'s binary and this driver.
    Spawn { driver: String },
    /// Started for each run by `SCRIPT start` (which prints `api=`, `ws=` and `pids=` lines and
    /// exits, leaving the server running) and stopped by `SCRIPT stop`.
    Peer { script: PathBuf },
    /// The one-send-per-delivery floor, in this process.
    Floor,
}

/// A target and what its results are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTarget {
    pub name: String,
    pub spec: TargetSpec,
}

impl std::str::FromStr for NamedTarget {
    type Err = anyhow::Error;

    /// `NAME=API,WS`, `NAME=spawn:DRIVER`, `NAME=peer:SCRIPT` or `NAME=floor`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let usage = "expected NAME=API,WS, NAME=spawn:DRIVER, NAME=peer:SCRIPT or NAME=floor";
        let Some((name, spec)) = s.split_once('=') else { bail!("--target {s:?}: {usage}") };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("--target {s:?}: the name must be letters, digits, '-', '_' or '.'");
        }
        let spec = if spec == "floor" {
            TargetSpec::Floor
        } else if let Some(driver) = spec.strip_prefix("spawn:") {
            TargetSpec::Spawn { driver: driver.to_string() }
        } else if let Some(script) = spec.strip_prefix("peer:") {
            TargetSpec::Peer { script: script.into() }
        } else if let Some((api, ws)) = spec.split_once(',') {
            if !api.starts_with("http://") && !api.starts_with("https://") {
                bail!("--target {s:?}: the API must be an http:// or https:// URL");
            }
            TargetSpec::Running { api: api.to_string(), ws: ws.to_string() }
        } else {
            bail!("--target {s:?}: {usage}")
        };
        Ok(Self { name: name.to_string(), spec })
    }
}

/// What every target shares: how spawned clusters are built, which processes count for a
/// running server, how authentication is seen.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// The `gochat` binary for `spawn:` targets.
    pub gochat: Option<PathBuf>,
    pub gateways: usize,
    pub queue: String,
    pub redis: String,
    pub batch_age_us: u64,
    pub batch_max: Option<usize>,
    pub control_settings: Vec<String>,
    pub gateway_settings: Vec<String>,
    pub path: String,
    /// For running servers: these processes and their children (default: the processes
    /// listening on the WebSocket port).
    pub server_pids: Vec<u32>,
    /// `None`: found out before each run.
    pub auth: Option<AuthSignal>,
    /// `spawn:` targets serve `wss://` with this certificate (the clients connect there).
    pub tls: Option<ServerCert>,
    /// `spawn:` targets offer `permessage-deflate`.
    pub compression: bool,
}

/// A target, up for one run; `stop` brings it down.
pub struct Started {
    pub target: Target,
    kind: Up,
}

enum Up {
    Running,
    Cluster(Cluster),
    Peer(PathBuf),
    Floor(Floor),
}

impl NamedTarget {
    pub fn start(&self, o: &TargetOptions) -> anyhow::Result<Started> {
        let target = |api: String,
                      ws: SocketAddr,
                      gateways: Option<ServerProcs>,
                      servers: Option<ServerProcs>| Target {
            api,
            ws,
            path: o.path.clone(),
            gateways,
            servers,
            label: self.name.clone(),
            auth: o.auth,
            gateway_grpc: Vec::new(),
        };
        match &self.spec {
            TargetSpec::Running { api, ws } => {
                let ws = resolve(ws)?;
                let listening = ServerProcs::by_port(ws.port())
                    .map_err(|e| eprintln!("{}: not measuring the gateway: {e}", self.name))
                    .ok();
                let servers = if o.server_pids.is_empty() {
                    listening.clone()
                } else {
                    Some(ServerProcs::with_descendants(&o.server_pids))
                };
                Ok(Started { target: target(api.clone(), ws, listening, servers), kind: Up::Running })
            }
            TargetSpec::Spawn { driver } => {
                let gochat = o.gochat.as_deref().context("spawn: targets need --spawn PATH/TO/gochat")?;
                let spec = ClusterSpec {
                    driver,
                    gateways: o.gateways,
                    max_conns_per_gateway: 19_000,
                    queue: &o.queue,
                    redis: &o.redis,
                    batch_age_us: o.batch_age_us,
                    batch_max: o.batch_max,
                    control_settings: &o.control_settings,
                    gateway_settings: &o.gateway_settings,
                    tls: o.tls.as_ref(),
                    compression: o.compression,
                };
                let cluster = Cluster::start(gochat, &spec)?;
                let mut t = target(
                    cluster.api.clone(),
                    cluster.ws,
                    Some(cluster.gateway_procs.clone()),
                    Some(cluster.procs.clone()),
                );
                t.path = "/ws".into();
                t.gateway_grpc = cluster.gateway_grpc.clone();
                Ok(Started { target: t, kind: Up::Cluster(cluster) })
            }
            TargetSpec::Peer { script } => {
                let peer = start_peer(script)?;
                let servers = Some(ServerProcs::with_descendants(&peer.pids));
                let gateways = if peer.gateway_pids.is_empty() {
                    None
                } else {
                    Some(ServerProcs::with_descendants(&peer.gateway_pids))
                };
                let started = Started {
                    target: target(peer.api, peer.ws, gateways, servers),
                    kind: Up::Peer(script.clone()),
                };
                Ok(started)
            }
            TargetSpec::Floor => {
                let floor = Floor::start(true)?;
                let sender = Some(floor.sender.clone());
                let mut t = target(floor.api.clone(), floor.ws, sender.clone(), sender);
                t.auth = Some(AuthSignal::Reply);
                Ok(Started { target: t, kind: Up::Floor(floor) })
            }
        }
    }
}

impl Started {
    pub fn stop(self) {
        match self.kind {
            Up::Running => {}
            Up::Floor(floor) => drop(floor),
            Up::Cluster(cluster) => cluster.stop(),
            Up::Peer(script) => {
                if let Err(e) = run_script(&script, "stop") {
                    eprintln!("{}: {e:#}", script.display());
                }
            }
        }
    }
}

/// What a peer script's `start` printed.
#[derive(Debug, PartialEq, Eq)]
struct Peer {
    api: String,
    ws: SocketAddr,
    pids: Vec<u32>,
    /// The processes holding the connections (optional: `gateway_pids=`).
    gateway_pids: Vec<u32>,
}

fn start_peer(script: &Path) -> anyhow::Result<Peer> {
    let out = run_script(script, "start")?;
    parse_peer(&out).with_context(|| format!("{} start printed:\n{out}", script.display()))
}

fn parse_peer(out: &str) -> anyhow::Result<Peer> {
    let mut lines: BTreeMap<&str, &str> = BTreeMap::new();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            lines.insert(k.trim(), v.trim());
        }
    }
    let pids = |k: &str| -> anyhow::Result<Vec<u32>> {
        let Some(list) = lines.get(k) else { return Ok(Vec::new()) };
        list.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().with_context(|| format!("{k}: {p:?}")))
            .collect()
    };
    let peer = Peer {
        api: lines.get("api").context("no api= line")?.to_string(),
        ws: resolve(lines.get("ws").context("no ws= line")?)?,
        pids: pids("pids")?,
        gateway_pids: pids("gateway_pids")?,
    };
    if peer.pids.is_empty() {
        bail!("no pids= line: the server's processes are what is measured");
    }
    Ok(peer)
}

fn run_script(script: &Path, verb: &str) -> anyhow::Result<String> {
    let out = Command::new(script)
        .arg(verb)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {verb}", script.display()))?;
    if !out.status.success() {
        bail!("{} {verb} failed ({})", script.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("cannot resolve {addr}"))
}

/// The median and range of some runs' values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Self { median, min: v[0], max: v[n - 1], runs: n })
    }
}

/// Figures every target's runs share, each as median (min–max) per target and the ratio of
/// medians to the first target: a markdown table.
pub fn side_by_side(names: &[String], results: &[RunResult]) -> String {
    let runs_of = |name: &str| results.iter().filter(|r| r.label == name).collect::<Vec<_>>();
    let mut keys: Vec<&String> = Vec::new();
    for r in results {
        for (k, v) in &r.figures {
            if v.is_number() && !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let cpu = results.first().map(|r| r.machine.cpu.clone()).unwrap_or_default();
    let scenario = results.first().map(|r| r.scenario.clone()).unwrap_or_default();
    let mut md = format!("{scenario}: medians (min–max) of each target's runs, {cpu}\n\n| figure |");
    for n in names {
        md += &format!(" {n} |");
    }
    for n in &names[1..] {
        md += &format!(" {n} / {} |", names[0]);
    }
    md += "\n|---|";
    md += &"---:|".repeat(names.len() * 2 - 1);
    md += "\n";
    for k in keys {
        let spreads: Vec<Option<Spread>> = names
            .iter()
            .map(|n| {
                let v: Vec<f64> = runs_of(n).iter().filter_map(|r| r.figures.get(k)?.as_f64()).collect();
                Spread::of(&v)
            })
            .collect();
        md += &format!("| {k} |");
        for s in &spreads {
            md += &match s {
                Some(s) if s.runs > 1 => format!(" {} ({}–{}) |", num(s.median), num(s.min), num(s.max)),
                Some(s) => format!(" {} |", num(s.median)),
                None => " — |".into(),
            };
        }
        for s in &spreads[1..] {
            md += &match (s, &spreads[0]) {
                (Some(s), Some(base)) if base.median != 0.0 => format!(" {:.2}× |", s.median / base.median),
                _ => " — |".into(),
            };
        }
        md += "\n";
    }
    md + &against_the_floor(names, results)
}

/// Each target's deliveries per CPU-second over the floor's of the same round, as median (min–max)
/// of the rounds: what a machine of another day keeps. Empty without a floor among `results`.
fn against_the_floor(names: &[String], results: &[RunResult]) -> String {
    let is_floor = |r: &RunResult| r.params.get("target").and_then(|t| t.as_str()) == Some("Floor");
    let Some(floor) = results.iter().find(|r| is_floor(r)).map(|r| r.label.clone()) else {
        return String::new();
    };
    let round = |r: &RunResult| r.params.get("round").and_then(|v| v.as_u64());
    let mut md =
        format!("\nEach round's figure over the floor's (`{floor}`) in the same round:\n\n| figure |");
    let others: Vec<&String> = names.iter().filter(|n| **n != floor).collect();
    for n in &others {
        md += &format!(" {n} / {floor} |");
    }
    md += "\n|---|";
    md += &"---:|".repeat(others.len());
    md += "\n";
    let mut rows = 0;
    for key in ["deliveries_per_gateway_cpu_s", "deliveries_per_server_cpu_s"] {
        let value = |label: &str, at: Option<u64>| {
            results.iter().find(|r| r.label == label && round(r) == at)?.figures.get(key)?.as_f64()
        };
        let cells: Vec<Option<Spread>> = others
            .iter()
            .map(|n| {
                let ratios: Vec<f64> = results
                    .iter()
                    .filter(|r| &&r.label == n)
                    .filter_map(|r| Some(r.figures.get(key)?.as_f64()? / value(&floor, round(r))?))
                    .collect();
                Spread::of(&ratios)
            })
            .collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        rows += 1;
        md += &format!("| {key} |");
        for c in cells {
            md += &match c {
                Some(s) if s.runs > 1 => format!(" {:.2}× ({:.2}–{:.2}) |", s.median, s.min, s.max),
                Some(s) => format!(" {:.2}× |", s.median),
                None => " — |".into(),
            };
        }
        md += "\n";
    }
    if rows == 0 {
        return String::new();
    }
    md
}

/// A figure as people read it: thousands separated, at most three decimals under 100.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        let r = v.round() as i64;
        let s = r.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if r < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else {
        format!("{:.3}", v).trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs_parse_and_bad_ones_say_why() {
        let t: NamedTarget = "rs=spawn:io_uring".parse().unwrap();
        assert_eq!(t.spec, TargetSpec::Spawn { driver: "io_uring".into() });
        let t: NamedTarget = "go=http://127.0.0.1:7070,127.0.0.1:7000".parse().unwrap();
        assert_eq!(
            t.spec,
            TargetSpec::Running { api: "http://127.0.0.1:7070".into(), ws: "127.0.0.1:7000".into() }
        );
        assert_eq!("f=floor".parse::<NamedTarget>().unwrap().spec, TargetSpec::Floor);
        assert_eq!(
            "gochat=peer:bench/peers/gochat.sh".parse::<NamedTarget>().unwrap().spec,
            TargetSpec::Peer { script: "bench/peers/gochat.sh".into() }
        );
        for bad in ["nothing", "=floor", "a b=floor", "x=127.0.0.1:7070,127.0.0.1:7000", "x=what"] {
            let e = bad.parse::<NamedTarget>().unwrap_err().to_string();
            assert!(e.contains("--target"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_peer_script_says_where_the_server_is() {
        let p = parse_peer("starting\napi=http://127.0.0.1:7070\nws=127.0.0.1:7000\npids=10,11\n").unwrap();
        assert_eq!(
            (p.api.as_str(), p.ws.port(), p.pids, p.gateway_pids),
            ("http://127.0.0.1:7070", 7000, vec![10, 11], vec![])
        );
        assert!(parse_peer("api=http://x\nws=127.0.0.1:1\n").unwrap_err().to_string().contains("pids"));
        assert!(parse_peer("ws=127.0.0.1:1\npids=1").is_err());
        assert!(parse_peer("api=http://x\nws=127.0.0.1:1\npids=1,x").is_err());
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0, runs: 3 }));
        assert_eq!(Spread::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            (num(1234567.4), num(0.5), num(12.3456), num(-1500.0)),
            ("1,234,567".into(), "0.5".into(), "12.346".into(), "-1,500".into())
        );
    }

    #[test]
    fn the_summary_puts_targets_side_by_side() {
        let run = |label: &str, v: f64| {
            let mut r = RunResult::new("fanout", label);
            r.figure("deliveries_per_s", v);
            r
        };
        let results = [
            run("a", 100.0),
            run("b", 50.0),
            run("a", 300.0),
            run("b", 70.0),
            run("a", 200.0),
            run("b", 60.0),
        ];
        let md = side_by_side(&["a".into(), "b".into()], &results);
        assert!(md.contains("| deliveries_per_s | 200 (100–300) | 60 (50–70) | 0.30× |"), "{md}");
        assert!(!md.contains("over the floor"), "no floor, no ratios to it: {md}");
    }

    #[test]
    fn figures_over_the_floor_are_taken_round_by_round() {
        let run = |label: &str, round: u64, v: f64| {
            let mut r = RunResult::new("fanout", label);
            r.param("round", round);
            r.param("target", if label == "f" { "Floor" } else { "Spawn" });
            r.figure("deliveries_per_gateway_cpu_s", v);
            r
        };
        // The machine halves its speed in round 2: every figure with it, the ratios not.
        let results = [
            run("a", 1, 400.0),
            run("f", 1, 100.0),
            run("a", 2, 200.0),
            run("f", 2, 50.0),
            run("a", 3, 330.0),
            run("f", 3, 100.0),
        ];
        let md = side_by_side(&["a".into(), "f".into()], &results);
        assert!(md.contains("| deliveries_per_gateway_cpu_s | 4.00× (3.30–4.00) |"), "{md}");
    }
}
