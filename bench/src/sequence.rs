//! `sequence`: what a room's members get while nodes fail. One sender numbers every message and
//! pushes it at a fixed rate through the REST APIs (the next control when one fails); receivers
//! spread over the gateways (the next gateway when theirs goes away) record every number. The
//! result counts, per receiver, what was lost while it was connected (a broken guarantee), what
//! it missed while it was away (at-most-once to a client that is gone), duplicates and
//! messages out of order, and how long it took to come back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::Api;
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
    /// Numbers in arrival order, with when each arrived.
    got: Vec<(u64, Instant)>,
    /// (authenticated, lost) — `lost` is `None` while connected.
    connected: Vec<(Instant, Option<Instant>)>,
}

impl Record {
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

/// `accepted[i]` = when message `i` was accepted (`None`: refused by every control).
fn tally(accepted: &[Option<Instant>], record: &Record, grace: Duration, end: Instant) -> Tally {
    let mut t = Tally::default();
    let mut seen = vec![0u32; accepted.len()];
    let mut highest = None;
    for &(n, arrived) in &record.got {
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
        let (gateways, path, token) = (p.gateways.clone(), p.path.clone(), user.token.clone());
        tokio::spawn(receive(i, gateways, path, token, room, record.clone()))
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

    let tallies: Vec<Tally> =
        records.iter().map(|r| tally(&accepted, &r.lock().unwrap(), p.grace, end)).collect();
    let mut result = RunResult::new("sequence", "cluster");
    result.param("controls", p.apis.len());
    result.param("gateways", p.gateways.len());
    result.param("receivers", p.receivers);
    result.param("rate", p.rate);
    result.param("duration_secs", p.duration.as_secs_f64());
    result.param("grace_ms", p.grace.as_millis() as u64);
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
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
    let mut latencies: Vec<u64> = tallies.iter().flat_map(|t| t.latencies_us.iter().copied()).collect();
    latencies.sort_unstable();
    let quantile = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(i).map_or(0.0, |us| *us as f64 / 1000.0)
    };
    result.figure("latency_p50_ms", quantile(0.50));
    result.figure("latency_p99_ms", quantile(0.99));
    result.figure("latency_max_ms", quantile(1.0));
    if p.storm > 0 {
        let storm: Vec<Tally> = storm.iter().map(|r| tally(&[], &r.lock().unwrap(), p.grace, end)).collect();
        result.param("storm_clients", p.storm);
        result.figure("storm_reconnects", storm.iter().map(|t| t.reconnects).sum::<u64>());
        result.figure("storm_longest_away_ms", storm.iter().map(|t| t.longest_away_ms).max().unwrap_or(0));
    }
    result.figure("per_receiver", serde_json::to_value(&tallies)?);
    Ok(result)
}

/// One receiver: connected to a gateway, and to the next one whenever it loses it, until its
/// task is aborted.
async fn receive(
    index: usize,
    gateways: Vec<SocketAddr>,
    path: String,
    token: String,
    room: u64,
    record: Arc<Mutex<Record>>,
) {
    for attempt in 0.. {
        let gateway = gateways[(index + attempt) % gateways.len()];
        // However it ended, the gap in `connected` counts it.
        let _ = session(gateway, &path, &token, room, &record).await;
        if let Some(last) = record.lock().unwrap().connected.last_mut() {
            last.1.get_or_insert_with(Instant::now);
        }
        // Jittered, as a real client reconnects.
        let jitter = rand::random::<u64>() % 200;
        tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
    }
}

async fn session(
    gateway: SocketAddr,
    path: &str,
    token: &str,
    room: u64,
    record: &Mutex<Record>,
) -> anyhow::Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(gateway)).await??;
    s.write_all(&wsclient::upgrade_request(&gateway.to_string(), path, None)).await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut upgraded = false;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(70), s.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
        if !upgraded {
            let Some(head) = wsclient::upgrade_response(&buf)? else { continue };
            buf.drain(..head);
            upgraded = true;
            let mut auth = Vec::new();
            wsclient::masked_frame(
                1,
                json!({"authToken": token, "roomId": room}).to_string().as_bytes(),
                &mut auth,
            );
            s.write_all(&auth).await?;
        }
        let mut used = 0;
        let mut replies = Vec::new();
        while let Some((frame, len)) = wsclient::parse_frame(&buf[used..])? {
            match frame.opcode {
                8 => anyhow::bail!("closed by the server"),
                9 => wsclient::masked_frame(10, frame.payload, &mut replies),
                1 => {
                    let v: Value = serde_json::from_slice(frame.payload).unwrap_or_default();
                    let mut r = record.lock().unwrap();
                    match v["op"].as_i64() {
                        Some(7) => r.connected.push((Instant::now(), None)),
                        Some(3) => {
                            if let Some(n) = v["msg"].as_str().and_then(|m| m.strip_prefix("seq:")) {
                                r.got.extend(n.parse::<u64>().ok().map(|n| (n, Instant::now())));
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
            used += len;
        }
        buf.drain(..used);
        if !replies.is_empty() {
            s.write_all(&replies).await?;
        }
    }
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
            connected: vec![(at(0), Some(at(350))), (at(650), None)],
        };
        let t = tally(&accepted, &record, Duration::from_millis(200), at(2000));
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
    }
}
