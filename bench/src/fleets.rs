//! The client side of a run: connections split over fleets (threads, worker processes, or
//! worker processes on agents on other machines), each with its own source address, and their
//! counters summed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::engine::{new_hist, AuthSignal, ClientKind, ConnSpec, Counts, FleetSpec, Snapshot, TlsClient};
use crate::result::RunResult;
use crate::worker::Fleet;

/// Where fleets run.
#[derive(Debug, Clone)]
pub struct ClientOpts {
    /// Worker processes (at least one per 15,000 connections); 0 runs one fleet on a thread of
    /// this process instead.
    pub procs: usize,
    /// The `bench` executable for worker processes.
    pub exe: PathBuf,
    pub connect_concurrency: usize,
    /// What the connections speak and do.
    pub kind: ClientKind,
    /// Agents (`bench agent`, `host:port`) to run the fleets on instead of this machine, spread
    /// over them round-robin, at least one each.
    pub agents: Vec<String>,
    /// Connect with TLS (`wss://`), trusting these certificates.
    pub tls: Option<TlsClient>,
}

impl ClientOpts {
    /// With agents: which they were (a parameter), and the connections each had authenticated
    /// when `t` was taken (`agents_connected`, in the same order).
    pub fn record_agents(&self, r: &mut RunResult, t: &Totals) {
        if !self.agents.is_empty() {
            r.param("agents", &self.agents);
            r.figure("agents_connected", &t.agents_connected);
        }
    }
}

/// Connections one worker process takes at most: the open-file limit is 20,000 a process.
pub const CONNS_PER_PROC: usize = 15_000;

/// All counters of all fleets.
#[derive(Debug, Clone)]
pub struct Totals {
    pub counts: Counts,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    /// CPU seconds of each fleet's thread.
    pub fleet_cpu: Vec<f64>,
    pub errors: Vec<String>,
    /// Connections authenticated on each agent, in the order of [`ClientOpts::agents`] (empty
    /// without agents).
    pub agents_connected: Vec<u64>,
}

impl Totals {
    /// Sums the fleets' snapshots; fleet `i` ran on agent `i % agents`.
    fn sum(snaps: &[Snapshot], agents: usize) -> Self {
        let mut t = Totals {
            counts: Counts::default(),
            latency: new_hist(),
            connect: new_hist(),
            fleet_cpu: Vec::new(),
            errors: Vec::new(),
            agents_connected: vec![0; agents],
        };
        for (i, s) in snaps.iter().enumerate() {
            if agents > 0 {
                t.agents_connected[i % agents] += s.counts.connected;
            }
            t.counts.add(&s.counts);
            let _ = t.latency.add(s.latency_hist());
            let _ = t.connect.add(s.connect_hist());
            t.fleet_cpu.push(s.cpu_secs);
            for e in &s.errors {
                if t.errors.len() < 5 && !t.errors.contains(e) {
                    t.errors.push(e.clone());
                }
            }
        }
        t
    }
}

pub struct Fleets {
    fleets: Vec<Fleet>,
    /// Agents the fleets run on (0: this machine).
    agents: usize,
    pub total: usize,
}

impl Fleets {
    /// Opens `conns` to `ws`, spread over fleets.
    pub fn start(
        ws: SocketAddr,
        path: &str,
        conns: Vec<ConnSpec>,
        opts: &ClientOpts,
        auth: AuthSignal,
    ) -> anyhow::Result<Self> {
        let total = conns.len();
        let agents = opts.agents.len();
        // On agents every fleet is a process there, and each agent gets one at least.
        let procs = if agents > 0 { opts.procs.max(agents) } else { opts.procs };
        let procs = if procs == 0 { 0 } else { procs.max(total.div_ceil(CONNS_PER_PROC)) };
        let parts = procs.max(1);
        let mut chunks: Vec<Vec<ConnSpec>> = (0..parts).map(|_| Vec::new()).collect();
        for (i, c) in conns.into_iter().enumerate() {
            chunks[i % parts].push(c);
        }
        let mut fleets = Vec::new();
        for (i, conns) in chunks.into_iter().enumerate() {
            if agents == 0 && i > 250 {
                bail!("too many worker processes for the 127.0.0.x source range");
            }
            let spec = FleetSpec {
                ws,
                path: path.to_string(),
                // An agent picks its own (`bench agent --source`).
                source_ip: if agents == 0 && ws.ip().is_loopback() {
                    Some(Ipv4Addr::new(127, 0, 0, 2 + i as u8))
                } else {
                    None
                },
                conns,
                connect_concurrency: opts.connect_concurrency,
                client: opts.kind,
                auth,
                tls: opts.tls.clone(),
            };
            fleets.push(if agents > 0 {
                Fleet::remote(&opts.agents[i % agents], &spec)?
            } else if procs == 0 {
                Fleet::thread(spec)
            } else {
                Fleet::process(&opts.exe, &spec)?
            });
        }
        Ok(Self { fleets, agents, total })
    }

    /// The worker processes on this machine (none when fleets run on threads or agents).
    pub fn worker_procs(&self) -> Option<crate::server::ServerProcs> {
        let pids: Vec<u32> = self.fleets.iter().filter_map(Fleet::pid).collect();
        (!pids.is_empty()).then_some(crate::server::ServerProcs { pids, ..Default::default() })
    }

    pub fn totals(&mut self) -> anyhow::Result<Totals> {
        let snaps = self.fleets.iter_mut().map(Fleet::snapshot).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Totals::sum(&snaps, self.agents))
    }

    /// Polls until `done(totals)` or `limit`; `tick` sees each poll (progress bars).
    pub fn wait(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Totals) -> bool,
        mut tick: impl FnMut(&Totals),
    ) -> anyhow::Result<(Totals, bool)> {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.totals()?;
            tick(&t);
            if done(&t) {
                return Ok((t, true));
            }
            if Instant::now() >= deadline {
                return Ok((t, false));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn quit(self) -> anyhow::Result<Totals> {
        let snaps = self.fleets.into_iter().map(Fleet::quit).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Totals::sum(&snaps, self.agents))
    }
}
