//! The scenarios. Each returns a [`RunResult`] with its parameters and figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gochat_proto::gateway::gateway_client::GatewayClient;
use gochat_proto::gateway::StatsRequest;
use indicatif::{ProgressBar, ProgressStyle};

use crate::api::{self, Api, User};
use crate::engine::{marked_message, padded, AuthSignal, ConnSpec};
use crate::fleets::{ClientOpts, Fleets, Totals};
use crate::result::RunResult;
use crate::server::{Sample, ServerProcs};

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub api: String,
    pub ws: SocketAddr,
    pub path: String,
    /// The gateway processes (memory and CPU per connection, deliveries per CPU-second).
    pub gateways: Option<ServerProcs>,
    /// Every server process (control and workers too), for total CPU.
    pub servers: Option<ServerProcs>,
    /// What to call this server setup in results (e.g. the gateway driver).
    pub label: String,
    /// How its connections know they are authenticated; `None`: found out with one connection
    /// before each run.
    pub auth: Option<AuthSignal>,
    /// gochat-rs gateways' gRPC URLs (spawned clusters): their counts of frames and writes.
    pub gateway_grpc: Vec<String>,
}

impl Target {
    fn sample(&self) -> (Sample, Sample) {
        let s = |p: &Option<ServerProcs>| p.as_ref().map(ServerProcs::sample).unwrap_or_default();
        (s(&self.gateways), s(&self.servers))
    }

    /// Writes to clients the gateways made so far (their `Stats`); `None` when unknown.
    fn gateway_sends(&self) -> Option<u64> {
        if self.gateway_grpc.is_empty() {
            return None;
        }
        runtime().block_on(async {
            let mut sends = 0;
            for url in &self.gateway_grpc {
                let mut client = GatewayClient::connect(url.clone()).await.ok()?;
                let stats = client.stats(StatsRequest {}).await.ok()?.into_inner();
                sends += stats.shards.iter().map(|s| s.sends).sum::<u64>();
            }
            Some(sends)
        })
    }
}

/// How many deliveries a write to a client carried, from the gateways' counts before and after.
fn deliveries_per_send(r: &mut RunResult, delivered: u64, before: Option<u64>, after: Option<u64>) {
    if let (Some(before), Some(after)) = (before, after) {
        let sends = after.saturating_sub(before);
        r.figure("sends", sends);
        if sends > 0 {
            r.figure("deliveries_per_send", (delivered as f64 / sends as f64 * 100.0).round() / 100.0);
        }
    }
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>12} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} {{elapsed}}"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    b
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Logs in `n` bench users (registering them the first time).
fn users(api: &Api, n: usize, quiet: bool) -> anyhow::Result<Vec<User>> {
    let rt = runtime();
    let prefix = "bench-user-";
    let started = Instant::now();
    let users = rt.block_on(api.users(prefix, n, 16)).context("setting up bench users")?;
    if !quiet {
        eprintln!("{n} users logged in in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(users)
}

/// Whether the server answers an auth frame with op 7: one connection, given up to 3 s. A
/// server that keeps the connection open and says nothing (gochat) gets probes instead.
fn detect_auth(target: &Target, conn: &ConnSpec, client: &ClientOpts) -> anyhow::Result<AuthSignal> {
    // On a thread here, wherever the run's fleets go.
    let one = ClientOpts { procs: 0, agents: Vec::new(), ..client.clone() };
    let mut fleet = Fleets::start(target.ws, &target.path, vec![conn.clone()], &one, AuthSignal::Reply)?;
    let (t, _) = fleet.wait(
        Duration::from_secs(3),
        |t| t.counts.connected + t.counts.retried + t.counts.failed > 0,
        |_| {},
    )?;
    fleet.quit()?;
    if t.counts.connected > 0 {
        Ok(AuthSignal::Reply)
    } else if t.counts.retried + t.counts.failed > 0 {
        bail!("the server refused an authenticated connection: {}", t.errors.join("; "))
    } else {
        Ok(AuthSignal::Probe)
    }
}

/// Rounds of `/push/count` to every room, one after another with at least `gap` between
/// them, until dropped: what tells [`AuthSignal::Probe`] connections that they are in.
struct Probes {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probes {
    fn start(api: &str, token: String, rooms: Vec<u64>, gap: Duration) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (api, done) = (Api::new(api), stop.clone());
        let thread = std::thread::spawn(move || {
            let rooms = Arc::new(rooms);
            runtime().block_on(async move {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let (api, token, rooms2) = (api.clone(), token.clone(), rooms.clone());
                    api::pump(rooms.len() as u64, None, 32, move |i| {
                        let (api, token, rooms) = (api.clone(), token.clone(), rooms2.clone());
                        async move { api.count(&token, rooms[i as usize]).await }
                    })
                    .await;
                    tokio::time::sleep(gap).await;
                }
            })
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections opened and authenticated.
struct Connected {
    fleets: Fleets,
    totals: Totals,
    /// From the first connect to the last authentication.
    secs: f64,
}

/// Opens `conns` and waits until all are authenticated (or failed). Records how
/// authentication was seen (`auth_signal`) in `r`.
fn connect_all(
    r: &mut RunResult,
    target: &Target,
    conns: Vec<ConnSpec>,
    client: &ClientOpts,
    quiet: bool,
) -> anyhow::Result<Connected> {
    let n = conns.len() as u64;
    let Some(first) = conns.first().cloned() else { bail!("no connections to open") };
    let auth = match target.auth {
        Some(auth) => auth,
        None => detect_auth(target, &first, client)?,
    };
    r.param("auth_signal", auth);
    if auth == AuthSignal::Probe {
        r.notes.push(
            "the server sends no reply to the auth frame: a connection counts as authenticated at \
             the first probe (/push/count, op 4, rounds over every room at least 100 ms apart) in \
             its room, so connect times are upper bounds"
                .into(),
        );
    }
    let probes = (auth == AuthSignal::Probe).then(|| {
        let mut rooms: Vec<u64> = conns.iter().map(|c| c.room).collect();
        rooms.sort_unstable();
        rooms.dedup();
        Probes::start(&target.api, first.token.clone(), rooms, Duration::from_millis(100))
    });
    let progress = bar(n, "connecting", quiet);
    let started = Instant::now();
    let mut fleets = Fleets::start(target.ws, &target.path, conns, client, auth)?;
    let limit = Duration::from_secs(60 + n / 200);
    let (totals, _) = fleets.wait(
        limit,
        |t| t.counts.connected + t.counts.failed >= n,
        |t| progress.set_position(t.counts.connected + t.counts.failed),
    )?;
    let secs = started.elapsed().as_secs_f64();
    drop(probes);
    progress.finish_and_clear();
    if totals.counts.connected == 0 {
        let why = totals.errors.first().cloned().unwrap_or_else(|| "timed out".into());
        fleets.quit()?;
        bail!("no connection authenticated: {why}");
    }
    Ok(Connected { fleets, totals, secs })
}

fn client_notes(result: &mut RunResult, before: &Totals, after: &Totals, wall: f64) {
    let busiest = before
        .fleet_cpu
        .iter()
        .zip(&after.fleet_cpu)
        .map(|(b, a)| (a - b) / wall.max(1e-9))
        .fold(0.0, f64::max);
    result.figure("client_busiest_fleet_cpu_pct", (busiest * 100.0).round());
    if busiest > 0.9 {
        result.notes.push(format!(
            "the client was the bottleneck: its busiest fleet thread ran at {:.0}% CPU",
            busiest * 100.0
        ));
    }
}

fn failures(result: &mut RunResult, t: &Totals) {
    result.figure("connect_retries", t.counts.retried);
    if t.counts.failed > 0 {
        result.notes.push(format!("{} connections failed: {}", t.counts.failed, t.errors.join("; ")));
    }
}

fn percentiles(result: &mut RunResult, prefix: &str, h: &hdrhistogram::Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    result.figure(&format!("{prefix}_p50_ms"), ms(h.value_at_quantile(0.5)));
    result.figure(&format!("{prefix}_p90_ms"), ms(h.value_at_quantile(0.9)));
    result.figure(&format!("{prefix}_p99_ms"), ms(h.value_at_quantile(0.99)));
    result.figure(&format!("{prefix}_p999_ms"), ms(h.value_at_quantile(0.999)));
    result.figure(&format!("{prefix}_max_ms"), ms(h.max()));
}

#[derive(Debug, Clone)]
pub struct ConnectionsParams {
    pub connections: usize,
    pub rooms: usize,
    pub distribution: Distribution,
    pub users: usize,
    pub hold: Duration,
}

/// How connections are spread over rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Round-robin: every room gets N/R members.
    Uniform,
    /// Zipf (s = 1): room k gets a share proportional to 1/k, a few big rooms and a long tail.
    Zipf,
}

impl Distribution {
    /// The room (1-based) of each of `n` connections over `rooms` rooms; deterministic.
    pub fn assign(self, n: usize, rooms: usize) -> Vec<u64> {
        let rooms = rooms.max(1);
        match self {
            Self::Uniform => (0..n).map(|i| 1 + (i % rooms) as u64).collect(),
            Self::Zipf => {
                let mut cdf: Vec<f64> = (1..=rooms).map(|k| 1.0 / k as f64).collect();
                for i in 1..cdf.len() {
                    cdf[i] += cdf[i - 1];
                }
                let total = cdf[rooms - 1];
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                (0..n)
                    .map(|_| {
                        // xorshift: a fixed sequence, so runs are comparable.
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let u = (x >> 11) as f64 / (1u64 << 53) as f64 * total;
                        1 + cdf.partition_point(|&c| c < u).min(rooms - 1) as u64
                    })
                    .collect()
            }
        }
    }
}

/// N authenticated connections in R rooms, held idle, then one broadcast per room.
pub fn connections(
    target: &Target,
    client: &ClientOpts,
    p: &ConnectionsParams,
    quiet: bool,
) -> anyhow::Result<RunResult> {
    let mut r = RunResult::new("connections", &target.label);
    r.param("connections", p.connections);
    r.param("rooms", p.rooms);
    r.param("distribution", p.distribution);
    r.param("users", p.users);
    r.param("hold_secs", p.hold.as_secs_f64());
    r.param("client_procs", client.procs);
    let api = Api::new(&target.api);
    let users = users(&api, p.users.min(p.connections).max(1), quiet)?;
    let conns = p
        .distribution
        .assign(p.connections, p.rooms)
        .into_iter()
        .enumerate()
        .map(|(i, room)| ConnSpec { token: users[i % users.len()].token.clone(), room })
        .collect();
    let before = target.sample();
    let Connected { mut fleets, totals: connected, secs: connect_secs } =
        connect_all(&mut r, target, conns, client, quiet)?;
    let n = connected.counts.connected;
    r.figure("connected", n);
    r.figure("failed", connected.counts.failed);
    r.figure("connect_secs", (connect_secs * 100.0).round() / 100.0);
    r.figure("connect_rate_per_s", (n as f64 / connect_secs).round());
    percentiles(&mut r, "connect", &connected.connect);
    failures(&mut r, &connected);
    client.record_agents(&mut r, &connected);
    std::thread::sleep(Duration::from_millis(500));
    let loaded = target.sample();
    if target.gateways.is_some() {
        let rss = loaded.0.rss_bytes.saturating_sub(before.0.rss_bytes) as f64 / n as f64;
        // Client and server sockets share this kernel: the slab delta holds both ends.
        let slab = loaded.0.slab_bytes.saturating_sub(before.0.slab_bytes) as f64 / n as f64;
        r.figure("gateway_rss_bytes_per_conn", rss.round());
        r.figure("kernel_slab_bytes_per_conn_both_ends", slab.round());
        r.figure("all_in_bytes_per_conn", (rss + slab / 2.0).round());
        r.figure("gateway_rss_mib", loaded.0.rss_bytes / (1 << 20));
    }
    if target.servers.is_some() {
        // Every server process (control, workers, stores when given): the whole cost of holding.
        let rss = loaded.1.rss_bytes.saturating_sub(before.1.rss_bytes) as f64 / n as f64;
        r.figure("server_rss_bytes_per_conn", rss.round());
        r.figure("server_rss_mib", loaded.1.rss_bytes / (1 << 20));
    }
    if let Some(workers) = fleets.worker_procs() {
        // What the load generator itself holds per connection (its whole RSS, over N).
        r.figure("client_rss_bytes_per_conn", (workers.sample().rss_bytes as f64 / n as f64).round());
    }
    // Hold idle.
    let held_from = fleets.totals()?;
    let hold_started = Instant::now();
    let progress = bar(p.hold.as_secs(), "holding", quiet);
    while hold_started.elapsed() < p.hold {
        std::thread::sleep(Duration::from_millis(200).min(p.hold));
        progress.set_position(hold_started.elapsed().as_secs());
    }
    progress.finish_and_clear();
    let held = target.sample();
    let held_to = fleets.totals()?;
    let held_secs = hold_started.elapsed().as_secs_f64();
    let idle_cpu = |r: &mut RunResult, key: &str, cpu: f64| {
        let per_conn_us_per_s = cpu / held_secs / n as f64 * 1e6;
        r.figure(key, (per_conn_us_per_s * 1000.0).round() / 1000.0);
    };
    if target.gateways.is_some() {
        idle_cpu(&mut r, "idle_cpu_us_per_conn_per_s", held.0.cpu_secs - loaded.0.cpu_secs);
    }
    if target.servers.is_some() {
        idle_cpu(&mut r, "idle_server_cpu_us_per_conn_per_s", held.1.cpu_secs - loaded.1.cpu_secs);
    }
    r.figure("closed_during_hold", held_to.counts.closed - held_from.counts.closed);
    // One broadcast per room; every connected member must get it.
    let rooms = p.rooms.max(1) as u64;
    let token = users[0].token.clone();
    let pushed = runtime().block_on(api::pump(rooms, None, 32, move |seq| {
        let (api, token) = (api.clone(), token.clone());
        async move { api.push_room(&token, 1 + seq, &marked_message(seq)).await }
    }));
    let expected = held_to.counts.connected - held_to.counts.closed;
    // A broadcast to a million sockets on two shared cores takes a while: wait in proportion.
    let wait = Duration::from_secs(30 + expected / 10_000);
    let (got, _) = fleets.wait(wait, |t| t.counts.marked >= expected, |_| {})?;
    r.figure("broadcast_pushes_failed", pushed.failed);
    r.figure("broadcast_expected", expected);
    r.figure("broadcast_received", got.counts.marked);
    r.figure("broadcast_loss", expected.saturating_sub(got.counts.marked));
    percentiles(&mut r, "broadcast_latency", &got.latency);
    client_notes(&mut r, &connected, &fleets.totals()?, connect_secs);
    // Every client leaves at once: what the server spends on it, and until when.
    let before_leaving = target.sample();
    let left_at = Instant::now();
    fleets.quit()?;
    let settled = settle(target, Duration::from_secs(30));
    if target.servers.is_some() {
        let cpu = settled.1.cpu_secs - before_leaving.1.cpu_secs;
        r.figure("leave_server_cpu_ms", (cpu * 1e4).round() / 10.0);
        r.figure("leave_server_cpu_us_per_conn", (cpu * 1e6 / expected.max(1) as f64 * 10.0).round() / 10.0);
    }
    r.figure(
        "leave_settled_secs",
        (settled.2.saturating_duration_since(left_at).as_secs_f64() * 100.0).round() / 100.0,
    );
    Ok(r)
}

/// Waits until the server's CPU time stops growing (no tick in half a second) or `limit`; the
/// last samples and when the CPU time last grew.
fn settle(target: &Target, limit: Duration) -> (Sample, Sample, Instant) {
    let started = Instant::now();
    let mut last = target.sample();
    let mut grew_at = started;
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = target.sample();
        if now.1.cpu_secs > last.1.cpu_secs || now.0.cpu_secs > last.0.cpu_secs {
            grew_at = Instant::now();
        } else if grew_at.elapsed() >= Duration::from_millis(500) {
            return (now.0, now.1, grew_at);
        }
        last = now;
    }
    (last.0, last.1, grew_at)
}

#[derive(Debug, Clone)]
pub struct FanoutParams {
    pub rooms: usize,
    pub members: usize,
    pub users: usize,
    /// Messages to push; or `rate × duration` when a duration is given.
    pub messages: u64,
    pub rate: Option<f64>,
    pub in_flight: usize,
    /// Messages padded to this many bytes of text (0: the mark alone).
    pub message_bytes: usize,
}

/// R rooms × M members; room messages pushed through the REST API; deliveries, loss, latency.
pub fn fanout(
    name: &str,
    target: &Target,
    client: &ClientOpts,
    p: &FanoutParams,
    quiet: bool,
) -> anyhow::Result<RunResult> {
    let mut r = RunResult::new(name, &target.label);
    let n = p.rooms * p.members;
    r.param("rooms", p.rooms);
    r.param("members", p.members);
    r.param("connections", n);
    r.param("users", p.users);
    r.param("messages", p.messages);
    r.param("rate_per_s", p.rate);
    r.param("message_bytes", p.message_bytes);
    r.param("client_procs", client.procs);
    let api = Api::new(&target.api);
    let users = users(&api, p.users.min(n).max(1), quiet)?;
    let conns = (0..n)
        .map(|i| ConnSpec { token: users[i % users.len()].token.clone(), room: 1 + (i % p.rooms) as u64 })
        .collect();
    let Connected { mut fleets, totals: connected, .. } = connect_all(&mut r, target, conns, client, quiet)?;
    failures(&mut r, &connected);
    client.record_agents(&mut r, &connected);
    r.figure("connected", connected.counts.connected);
    let members_connected = connected.counts.connected as f64 / p.rooms as f64;
    let before = target.sample();
    let sends_before = target.gateway_sends();
    let start_totals = fleets.totals()?;
    let started = Instant::now();
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| u.token.clone()).collect());
    let (rooms, message_bytes) = (p.rooms as u64, p.message_bytes);
    let progress = bar(p.messages, "pushing", quiet);
    let pb = progress.clone();
    let pushed = runtime().block_on(api::pump(p.messages, p.rate, p.in_flight, move |seq| {
        let (api, tokens, pb) = (api.clone(), tokens.clone(), pb.clone());
        async move {
            let token = &tokens[seq as usize % tokens.len()];
            let res =
                api.push_room(token, 1 + seq % rooms, &padded(marked_message(seq), message_bytes)).await;
            pb.inc(1);
            res
        }
    }));
    progress.finish_and_clear();
    let expected = (pushed.sent as f64 * members_connected).round() as u64;
    let (got, _) = fleets.wait(Duration::from_secs(30), |t| t.counts.marked >= expected, |_| {})?;
    let wall = started.elapsed().as_secs_f64();
    let after = target.sample();
    let delivered = got.counts.marked - start_totals.counts.marked;
    deliveries_per_send(&mut r, delivered, sends_before, target.gateway_sends());
    r.figure("pushed", pushed.sent);
    r.figure("push_failed", pushed.failed);
    r.figure("push_rate_per_s", (pushed.sent as f64 / pushed.elapsed.as_secs_f64()).round());
    r.figure("deliveries_expected", expected);
    r.figure("deliveries", delivered);
    r.figure("loss", expected.saturating_sub(delivered));
    r.figure("deliveries_per_s", (delivered as f64 / wall).round());
    r.figure("frames_per_s", ((got.counts.frames() - start_totals.counts.frames()) as f64 / wall).round());
    // What the clients read while the pushes went out (every frame, over the deliveries).
    let wire_bytes = got.counts.wire_bytes - start_totals.counts.wire_bytes;
    r.figure("wire_bytes", wire_bytes);
    if delivered > 0 {
        r.figure("wire_bytes_per_delivery", (wire_bytes as f64 / delivered as f64 * 10.0).round() / 10.0);
    }
    r.figure("compressed_frames", got.counts.compressed_frames - start_totals.counts.compressed_frames);
    // CPU time comes in 10 ms ticks: under 0.1 s a ratio would be mostly rounding.
    let per_cpu = |r: &mut RunResult, what: &str, cpu: f64| {
        r.figure(&format!("{what}_cpu_secs"), (cpu * 100.0).round() / 100.0);
        if cpu >= 0.1 {
            r.figure(&format!("deliveries_per_{what}_cpu_s"), (delivered as f64 / cpu).round());
        } else {
            r.notes.push(format!("{what} CPU {cpu:.2} s: too little to divide by (push more messages)"));
        }
    };
    if target.gateways.is_some() {
        per_cpu(&mut r, "gateway", after.0.cpu_secs - before.0.cpu_secs);
    }
    if target.servers.is_some() {
        per_cpu(&mut r, "server", after.1.cpu_secs - before.1.cpu_secs);
    }
    percentiles(&mut r, "latency", &got.latency);
    client_notes(&mut r, &start_totals, &got, wall);
    fleets.quit()?;
    Ok(r)
}

#[derive(Debug, Clone)]
pub struct PrivateParams {
    pub users: usize,
    pub messages: u64,
    pub rate: Option<f64>,
    pub in_flight: usize,
    /// Messages padded to this many bytes of text (0: the mark alone).
    pub message_bytes: usize,
}

/// One connection per user; private messages from each user to the next; loss and latency.
pub fn private(
    target: &Target,
    client: &ClientOpts,
    p: &PrivateParams,
    quiet: bool,
) -> anyhow::Result<RunResult> {
    let mut r = RunResult::new("private", &target.label);
    r.param("connections", p.users);
    r.param("users", p.users);
    r.param("messages", p.messages);
    r.param("rate_per_s", p.rate);
    r.param("message_bytes", p.message_bytes);
    let api = Api::new(&target.api);
    let users = users(&api, p.users.max(2), quiet)?;
    let conns = users.iter().map(|u| ConnSpec { token: u.token.clone(), room: 1 }).collect();
    let Connected { mut fleets, totals: connected, .. } = connect_all(&mut r, target, conns, client, quiet)?;
    failures(&mut r, &connected);
    client.record_agents(&mut r, &connected);
    let start_totals = fleets.totals()?;
    let started = Instant::now();
    let (users, message_bytes) = (Arc::new(users), p.message_bytes);
    let pushed = runtime().block_on(api::pump(p.messages, p.rate, p.in_flight, move |seq| {
        let (api, users) = (api.clone(), users.clone());
        async move {
            let from = &users[seq as usize % users.len()];
            let to = &users[(seq as usize + 1) % users.len()];
            api.push_user(&from.token, to.id, &padded(marked_message(seq), message_bytes)).await
        }
    }));
    let expected = pushed.sent;
    let (got, _) = fleets.wait(
        Duration::from_secs(30),
        |t| t.counts.marked - start_totals.counts.marked >= expected,
        |_| {},
    )?;
    let delivered = got.counts.marked - start_totals.counts.marked;
    r.figure("pushed", pushed.sent);
    r.figure("push_failed", pushed.failed);
    r.figure("delivered", delivered);
    r.figure("loss", expected.saturating_sub(delivered));
    r.figure("deliveries_per_s", (delivered as f64 / started.elapsed().as_secs_f64()).round());
    percentiles(&mut r, "latency", &got.latency);
    fleets.quit()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::Distribution;

    #[test]
    fn distributions_cover_the_rooms() {
        let u = Distribution::Uniform.assign(1000, 10);
        assert!((1..=10).all(|r| u.iter().filter(|&&x| x == r).count() == 100));
        let z = Distribution::Zipf.assign(10_000, 100);
        assert!(z.iter().all(|&r| (1..=100).contains(&r)));
        let count = |r| z.iter().filter(|&&x| x == r).count();
        assert!(count(1) > 5 * count(10), "room 1 {} vs room 10 {}", count(1), count(10));
        assert_eq!(z, Distribution::Zipf.assign(10_000, 100), "deterministic");
    }
}
