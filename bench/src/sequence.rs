//! `sequence`: what a room's members get while nodes fail. One sender numbers every message and
//! pushes it at a fixed rate through the REST APIs (the next control when one fails); receivers
//! spread over the gateways (the next gateway when theirs goes away) record every number. The
//! result counts, per receiver, what was lost while it was connected (a broken guarantee), what
//! it missed while it was away (at-most-once to a client that is gone), duplicates and
//! messages out of order, and how long it took to come back.
//!
//! Receivers resume as a client that recovers does: each reconnects from the last position it
//! handed on, and [`ordering`] gives its application a room's messages in seq order, each once
//! (gaps held, then fetched from `/push/history`; what cannot be had is a counted reload). The
//! result has both: what the wire delivered, and what the application saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use gochat_proto::wire::Position;
use tokio::sync::mpsc;

use crate::api::Api;
use crate::ordering::{self, Event, Room};
use crate::result::RunResult;
use crate::wsclient;

#[derive(Debug, Clone)]
pub struct SequenceParams {
    /// Every control's REST API; pushes go round-robin and move on when one fails.
    pub apis: Vec<String>,
    /// Every gateway's WebSocket address; receivers start spread over them.
    pub gateways: Vec<SocketAddr>,
    pub path: String,
    pub receivers: usize,
    pub rate: f64,
    pub duration: Duration,
    pub room: u64,
    /// How long after its acceptance a message may take to arrive before it counts as lost.
    pub grace: Duration,
    /// Idle clients besides the receivers, spread over the gateways and reconnecting the same
    /// way: when a gateway dies, its share storms the others.
    pub storm: usize,
}

/// One receiver's record: numbers in arrival order, and when it was connected.
#[derive(Default)]
struct Record {
    /// Numbers as they came off the wire, with when each arrived.
    got: Vec<(u64, Instant)>,
    /// Numbers as the ordering layer handed them to the application, with when.
    delivered: Vec<(u64, Instant)>,
    /// (authenticated, lost) — `lost` is `None` while connected.
    connected: Vec<(Instant, Option<Instant>)>,
    /// The room's order for the application; its position is what a reconnect resumes from.
    order: Room<u64>,
    /// Joins from a position answered `recovered: true`, and `false`.
    joins_recovered: u64,
    joins_not_recovered: u64,
}

impl Record {
    /// Hands the layer's events to the application: messages are recorded, reloads and new
    /// epochs are counted by the layer and said here.
    fn apply(&mut self, events: Vec<Event<u64>>, now: Instant) {
        for e in events {
            match e {
                Event::Message(n) => self.delivered.push((n, now)),
                Event::Reload { after, why } => {
                    eprintln!("a receiver reloads after {}/{} ({why:?})", after.epoch, after.seq)
                }
                Event::NewEpoch { epoch } => eprintln!("a receiver sees a new epoch {epoch}"),
            }
        }
    }

    fn connected_through(&self, from: Instant, to: Instant) -> bool {
        self.connected.iter().any(|&(a, l)| a <= from && l.is_none_or(|l| l >= to))
    }
}

/// Per receiver, what the run showed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub received: u64,
    /// Accepted while it was connected (and it stayed so for the grace), never received.
    pub lost_while_connected: u64,
    /// Accepted while it was away or reconnecting.
    pub missed_while_away: u64,
    pub duplicates: u64,
    /// Arrived after a higher number.
    pub out_of_order: u64,
    pub reconnects: u64,
    /// Longest time from losing its gateway to being authenticated again.
    pub longest_away_ms: u64,
    /// Acceptance → arrival of each message's first copy, in microseconds.
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

/// Per receiver: what the wire delivered, what the application saw after the ordering layer,
/// and what the layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Receiver {
    #[serde(flatten)]
    pub wire: Tally,
    pub app: Seen,
    pub ordering: ordering::Stats,
    pub joins_recovered: u64,
    pub joins_not_recovered: u64,
}

/// What an application got.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Seen {
    pub received: u64,
    /// Accepted and never handed on, connected or not.
    pub missed: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Acceptance → hand-over, in microseconds (holding included).
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

impl Receiver {
    fn of(accepted: &[Option<Instant>], record: &Record, grace: Duration, end: Instant) -> Self {
        let app = tally(accepted, &record.delivered, record, grace, end);
        Self {
            wire: tally(accepted, &record.got, record, grace, end),
            app: Seen {
                received: app.received,
                missed: app.lost_while_connected + app.missed_while_away,
                duplicates: app.duplicates,
                out_of_order: app.out_of_order,
                latencies_us: app.latencies_us,
            },
            ordering: record.order.stats(),
            joins_recovered: record.joins_recovered,
            joins_not_recovered: record.joins_not_recovered,
        }
    }
}

/// `accepted[i]` = when message `i` was accepted (`None`: refused by every control); `got`:
/// the numbers `record`'s receiver got, in order, off the wire or from its ordering layer.
fn tally(
    accepted: &[Option<Instant>],
    got: &[(u64, Instant)],
    record: &Record,
    grace: Duration,
    end: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut seen = vec![0u32; accepted.len()];
    let mut highest = None;
    for &(n, arrived) in got {
        let Some(slot) = seen.get_mut(n as usize) else { continue };
        *slot += 1;
        if *slot > 1 {
            t.duplicates += 1;
            continue;
        }
        t.received += 1;
        if let Some(at) = accepted[n as usize] {
            t.latencies_us.push(arrived.saturating_duration_since(at).as_micros() as u64);
        }
        if highest.is_some_and(|h| n < h) {
            t.out_of_order += 1;
        }
        highest = highest.max(Some(n));
    }
    for (n, at) in accepted.iter().enumerate() {
        let Some(at) = *at else { continue };
        if seen[n] > 0 {
            continue;
        }
        if record.connected_through(at, (at + grace).min(end)) {
            t.lost_while_connected += 1;
        } else {
            t.missed_while_away += 1;
        }
    }
    t.reconnects = record.connected.len().saturating_sub(1) as u64;
    t.longest_away_ms = record
        .connected
        .windows(2)
        .filter_map(|w| Some(w[1].0.duration_since(w[0].1?).as_millis() as u64))
        .max()
        .unwrap_or(0);
    t
}

pub async fn run(p: SequenceParams) -> anyhow::Result<RunResult> {
    anyhow::ensure!(!p.apis.is_empty() && !p.gateways.is_empty(), "need a REST API and a gateway");
    let apis: Vec<Api> = p.apis.iter().map(|a| Api::new(a)).collect();
    // One user for the sender and every receiver: it stays a member of the room while any of
    // its sockets is connected, so pushes are accepted whichever gateway is down.
    let user = apis[0].users("bench-seq-", 1, 1).await.context("bench user")?.remove(0);
    let records: Vec<Arc<Mutex<Record>>> = (0..p.receivers).map(|_| Arc::default()).collect();
    let storm: Vec<Arc<Mutex<Record>>> = (0..p.storm).map(|_| Arc::default()).collect();
    let client = |i: usize, room: u64, record: &Arc<Mutex<Record>>| {
        let (gateways, path) = (p.gateways.clone(), p.path.clone());
        let history = History::new(apis.clone(), user.token.clone(), room);
        tokio::spawn(receive(i, gateways, path, history, record.clone()))
    };
    let mut tasks: Vec<_> = records.iter().enumerate().map(|(i, r)| client(i, p.room, r)).collect();
    // The storm's clients in a room of their own: they are load, not receivers.
    tasks.extend(storm.iter().enumerate().map(|(i, r)| client(i, p.room + 1, r)));
    // Every receiver (and idle client) in before the first message.
    let deadline = Instant::now() + Duration::from_secs(20);
    while records.iter().chain(&storm).any(|r| r.lock().unwrap().connected.is_empty()) {
        anyhow::ensure!(Instant::now() < deadline, "receivers did not connect within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let total = (p.rate * p.duration.as_secs_f64()).ceil() as u64;
    let started = Instant::now();
    let mut accepted: Vec<Option<Instant>> = Vec::with_capacity(total as usize);
    let (mut refused, mut failovers) = (0u64, 0u64);
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / p.rate);
        tokio::time::sleep_until(due.into()).await;
        let mut ok = None;
        for attempt in 0..apis.len() * 2 {
            let api = &apis[(n as usize + attempt) % apis.len()];
            match api.push_room(&user.token, p.room, &format!("seq:{n}")).await {
                Ok(()) => {
                    ok = Some(Instant::now());
                    break;
                }
                Err(_) => failovers += 1,
            }
        }
        refused += ok.is_none() as u64;
        accepted.push(ok);
    }
    tokio::time::sleep(p.grace).await;
    let end = Instant::now();
    for t in tasks {
        t.abort();
    }

    let receivers: Vec<Receiver> =
        records.iter().map(|r| Receiver::of(&accepted, &r.lock().unwrap(), p.grace, end)).collect();
    let tallies: Vec<&Tally> = receivers.iter().map(|r| &r.wire).collect();
    let mut result = RunResult::new("sequence", "cluster");
    result.param("controls", p.apis.len());
    result.param("gateways", p.gateways.len());
    result.param("receivers", p.receivers);
    result.param("rate", p.rate);
    result.param("duration_secs", p.duration.as_secs_f64());
    result.param("grace_ms", p.grace.as_millis() as u64);
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(|t| f(t)).sum::<u64>();
    result.figure("sent", total);
    result.figure("accepted", total - refused);
    result.figure("refused_by_every_control", refused);
    result.figure("push_failovers", failovers);
    result.figure("received", sum(|t| t.received));
    result.figure("lost_while_connected", sum(|t| t.lost_while_connected));
    result.figure("missed_while_away", sum(|t| t.missed_while_away));
    result.figure("duplicates", sum(|t| t.duplicates));
    result.figure("out_of_order", sum(|t| t.out_of_order));
    result.figure("reconnects", sum(|t| t.reconnects));
    result.figure("longest_away_ms", tallies.iter().map(|t| t.longest_away_ms).max().unwrap_or(0));
    let quantiles = |of: &dyn Fn(&Receiver) -> &[u64]| {
        let mut all: Vec<u64> = receivers.iter().flat_map(|r| of(r).iter().copied()).collect();
        all.sort_unstable();
        [0.50, 0.99, 1.0].map(|q| {
            let i = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len().max(1)) - 1;
            all.get(i).map_or(0.0, |us| *us as f64 / 1000.0)
        })
    };
    let [p50, p99, max] = quantiles(&|r| &r.wire.latencies_us);
    result.figure("latency_p50_ms", p50);
    result.figure("latency_p99_ms", p99);
    result.figure("latency_max_ms", max);
    // What the applications saw after the ordering layer.
    let app = |f: fn(&Seen) -> u64| receivers.iter().map(|r| f(&r.app)).sum::<u64>();
    result.figure("app_received", app(|s| s.received));
    result.figure("app_missed", app(|s| s.missed));
    result.figure("app_duplicates", app(|s| s.duplicates));
    result.figure("app_out_of_order", app(|s| s.out_of_order));
    let [p50, p99, max] = quantiles(&|r| &r.app.latencies_us);
    result.figure("app_latency_p50_ms", p50);
    result.figure("app_latency_p99_ms", p99);
    result.figure("app_latency_max_ms", max);
    let layer = |f: fn(&ordering::Stats) -> u64| receivers.iter().map(|r| f(&r.ordering)).sum::<u64>();
    result.figure("reloads", layer(|s| s.reloads));
    result.figure("new_epochs", layer(|s| s.new_epochs));
    result.figure("held", layer(|s| s.held));
    result.figure("held_max", receivers.iter().map(|r| r.ordering.held_max).max().unwrap_or(0));
    result.figure("gap_fetches", layer(|s| s.fetches));
    result.figure("fetched_used", layer(|s| s.fetched_used));
    result.figure("repeats_dropped", layer(|s| s.repeats_dropped));
    result.figure("joins_recovered", receivers.iter().map(|r| r.joins_recovered).sum::<u64>());
    result.figure("joins_not_recovered", receivers.iter().map(|r| r.joins_not_recovered).sum::<u64>());
    if p.storm > 0 {
        let storm: Vec<Tally> =
            storm.iter().map(|r| r.lock().unwrap()).map(|r| tally(&[], &r.got, &r, p.grace, end)).collect();
        result.param("storm_clients", p.storm);
        result.figure("storm_reconnects", storm.iter().map(|t| t.reconnects).sum::<u64>());
        result.figure("storm_longest_away_ms", storm.iter().map(|t| t.longest_away_ms).max().unwrap_or(0));
    }
    result.figure("per_receiver", serde_json::to_value(&receivers)?);
    Ok(result)
}

/// Fetches of a receiver's gaps from `/push/history`, through the controls in turn, answered on
/// a channel so that the socket is read meanwhile.
struct History {
    apis: Vec<Api>,
    token: String,
    room: u64,
    tx: mpsc::UnboundedSender<Option<Vec<(Position, u64)>>>,
    rx: mpsc::UnboundedReceiver<Option<Vec<(Position, u64)>>>,
}

impl History {
    fn new(apis: Vec<Api>, token: String, room: u64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { apis, token, room, tx, rx }
    }

    /// Starts a fetch of the room's kept messages (all of them: the route gives the last ones,
    /// and the layer drops what it had).
    fn fetch(&self) {
        let (apis, token, room, tx) = (self.apis.clone(), self.token.clone(), self.room, self.tx.clone());
        tokio::spawn(async move {
            let body = json!({"authToken": token, "roomId": room});
            for api in apis.iter().cycle().skip(rand::random::<usize>() % apis.len()).take(apis.len()) {
                let answer =
                    tokio::time::timeout(Duration::from_secs(2), api.call("/push/history", body.clone()));
                if let Ok(Ok(data)) = answer.await {
                    let messages = data["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
                    let _ = tx.send(Some(messages.iter().filter_map(numbered).collect()));
                    return;
                }
            }
            let _ = tx.send(None);
        });
    }
}

/// A room message's position and bench number (`seq:N`), when it has both.
fn numbered(v: &Value) -> Option<(Position, u64)> {
    let n = v["msg"].as_str()?.strip_prefix("seq:")?.parse().ok()?;
    let position = Position { epoch: v["epoch"].as_str()?.to_string(), seq: v["seq"].as_u64()? };
    Some((position, n))
}

/// One receiver: connected to a gateway, and to the next one whenever it loses it, until its
/// task is aborted.
async fn receive(
    index: usize,
    gateways: Vec<SocketAddr>,
    path: String,
    mut history: History,
    record: Arc<Mutex<Record>>,
) {
    for attempt in 0.. {
        let gateway = gateways[(index + attempt) % gateways.len()];
        // However it ended, the gap in `connected` counts it.
        let _ = session(gateway, &path, &mut history, &record).await;
        if let Some(last) = record.lock().unwrap().connected.last_mut() {
            last.1.get_or_insert_with(Instant::now);
        }
        // Jittered, as a real client reconnects.
        let jitter = rand::random::<u64>() % 200;
        tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
    }
}

/// One connection: authenticates from the position the application is at (none the first
/// time), then reads the room while answering the ordering layer's fetches and timers.
async fn session(
    gateway: SocketAddr,
    path: &str,
    history: &mut History,
    record: &Mutex<Record>,
) -> anyhow::Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(gateway)).await??;
    s.write_all(&wsclient::upgrade_request(&gateway.to_string(), path, None, false)).await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut upgraded = false;
    loop {
        let wake = record.lock().unwrap().order.next_poll();
        let wake = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut replies = Vec::new();
        tokio::select! {
            n = tokio::time::timeout(Duration::from_secs(70), s.read(&mut chunk)) => {
                let n = n??;
                anyhow::ensure!(n > 0, "closed");
                buf.extend_from_slice(&chunk[..n]);
                if !upgraded {
                    let Some(head) = wsclient::upgrade_response(&buf)? else { continue };
                    buf.drain(..head);
                    upgraded = true;
                    let mut auth = json!({"authToken": history.token, "roomId": history.room});
                    if let Some(at) = record.lock().unwrap().order.position() {
                        auth["epoch"] = json!(at.epoch);
                        auth["seq"] = json!(at.seq);
                    }
                    let mut frame = Vec::new();
                    wsclient::masked_frame(1, auth.to_string().as_bytes(), &mut frame);
                    s.write_all(&frame).await?;
                }
                let used = on_frames(&buf, record, &mut replies)?;
                buf.drain(..used);
            }
            Some(answer) = history.rx.recv() => {
                let (mut r, mut events) = (record.lock().unwrap(), Vec::new());
                r.order.fetched(answer, Instant::now(), &mut events);
                r.apply(events, Instant::now());
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let fetch = {
            let (mut r, mut events) = (record.lock().unwrap(), Vec::new());
            let fetch = r.order.poll(Instant::now(), &mut events);
            r.apply(events, Instant::now());
            fetch
        };
        if fetch.is_some() {
            history.fetch();
        }
        if !replies.is_empty() {
            s.write_all(&replies).await?;
        }
    }
}

/// Reads the whole server frames at the start of `buf` into `record` (pongs owed into
/// `replies`); returns the bytes used.
fn on_frames(buf: &[u8], record: &Mutex<Record>, replies: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut used = 0;
    while let Some((frame, len)) = wsclient::parse_frame(&buf[used..])? {
        match frame.opcode {
            8 => anyhow::bail!("closed by the server"),
            9 => wsclient::masked_frame(10, frame.payload, replies),
            1 => {
                let v: Value = serde_json::from_slice(frame.payload).unwrap_or_default();
                let (mut r, now, mut events) = (record.lock().unwrap(), Instant::now(), Vec::new());
                match v["op"].as_i64() {
                    Some(7) => {
                        r.connected.push((now, None));
                        let recovered = v["recovered"].as_bool();
                        r.joins_recovered += u64::from(recovered == Some(true));
                        r.joins_not_recovered += u64::from(recovered == Some(false));
                        if let (Some(epoch), Some(seq)) = (v["epoch"].as_str(), v["seq"].as_u64()) {
                            r.order.joined(
                                Position { epoch: epoch.to_string(), seq },
                                recovered,
                                &mut events,
                            );
                        }
                    }
                    Some(3) => match numbered(&v) {
                        Some((position, n)) => {
                            r.got.push((n, now));
                            r.order.message(position, n, now, &mut events);
                        }
                        // A server that numbers nothing: handed on as it came.
                        None => {
                            if let Some(n) = v["msg"].as_str().and_then(|m| m.strip_prefix("seq:")) {
                                if let Ok(n) = n.parse::<u64>() {
                                    r.got.push((n, now));
                                    r.delivered.push((n, now));
                                }
                            }
                        }
                    },
                    _ => {}
                }
                r.apply(events, now);
            }
            _ => {}
        }
        used += len;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_tells_losses_from_absences() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Messages accepted at 0, 100, …, 900 ms; number 3 refused.
        let mut accepted: Vec<Option<Instant>> = (0..10).map(|i| Some(at(i * 100))).collect();
        accepted[3] = None;
        let record = Record {
            // Away from 350 to 650 ms; 1 lost while connected, 6 twice, 8 before 7.
            got: [0, 2, 6, 6, 8, 7, 9].map(|n| (n, at(n * 100 + 30))).to_vec(),
            // The application's view: 6 once, 7 held until 8 came.
            delivered: [0, 2, 6, 7, 8, 9].map(|n| (n, at(n * 100 + 30))).to_vec(),
            connected: vec![(at(0), Some(at(350))), (at(650), None)],
            ..Record::default()
        };
        let grace = Duration::from_millis(200);
        let t = tally(&accepted, &record.got, &record, grace, at(2000));
        assert_eq!(
            t,
            Tally {
                received: 6,
                lost_while_connected: 1,
                missed_while_away: 2,
                duplicates: 1,
                out_of_order: 1,
                reconnects: 1,
                longest_away_ms: 300,
                latencies_us: vec![30_000; 6],
            }
        );
        let r = Receiver::of(&accepted, &record, grace, at(2000));
        assert_eq!(r.wire, t, "the wire's counts are kept beside the application's");
        assert_eq!(
            r.app,
            Seen { received: 6, missed: 3, duplicates: 0, out_of_order: 0, latencies_us: vec![30_000; 6] }
        );
    }
}
