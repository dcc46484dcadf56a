//! The queue on Redis Streams, for running control and workers as separate processes.
//!
//! Messages are spread over `streams` stream keys by target (room or user) hash, so one key is
//! not the ceiling and a room's messages stay in order in one stream. Workers read through a
//! consumer group and acknowledge an entry only after every gateway accepted its batch; entries
//! a dead worker left pending are claimed (`XAUTOCLAIM`) once idle for `claim_idle_ms`, so a
//! worker killed mid-batch loses nothing (delivery is at-least-once). A worker given a stream
//! another one read (etcd discovery shares the streams out) first takes over what that one left
//! pending on it, at once, and reads newer entries only after: otherwise a failover handed a
//! room's newer messages out before older ones that a client can no longer wait for (they come
//! `claim_idle_ms` later) nor fetch (the room's history keeps only its last messages).
//!
//! Each stream is one key, so on a Redis Cluster the streams spread over the slots. Each stream
//! this worker owns has a reader task of its own, with a connection of its own for its
//! blocking `XREADGROUP` (one read cannot block on keys of several nodes), handing batches to
//! `read` through a bounded channel; a stream's reader first takes over what others left
//! pending on it when it was just given to this worker.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::QueueMessage;
use gochat_runtime::peers::Members;
use gochat_runtime::redis::{RedisConn, RedisTimeouts, RedisUrl};
use prost::Message as _;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use crate::{Delivery, Error, Queue};

/// `[queue]` with `kind = "redis"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisQueueConfig {
    /// e.g. `redis://127.0.0.1:6379`, or a cluster: `redis+cluster://h1:7000,h2:7001`
    pub url: String,
    /// Prefix of every key this queue uses.
    pub prefix: String,
    /// Stream keys messages are spread over.
    pub streams: u16,
    /// The consumer group all workers share.
    pub group: String,
    /// This worker's name in the group (default: host and process id).
    pub consumer: Option<String>,
    /// Claim another consumer's pending entries once they are this old, in ms.
    pub claim_idle_ms: u64,
    /// Approximate length each stream is trimmed to.
    pub max_len: usize,
}

impl Default for RedisQueueConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "gochat".into(),
            streams: 4,
            group: "workers".into(),
            consumer: None,
            claim_idle_ms: 30_000,
            max_len: 1_000_000,
        }
    }
}

impl RedisQueueConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.streams == 0 || self.max_len == 0 || self.claim_idle_ms == 0 {
            return Err(Error::Config("queue: streams, max_len and claim_idle_ms must be above 0".into()));
        }
        RedisUrl::parse(&self.url).map_err(|e| {
            Error::Config(format!("queue url {:?}: {e}", gochat_proto::config_format::redact_url(&self.url)))
        })?;
        Ok(())
    }

    fn key(&self, stream: u16) -> String {
        format!("{}:queue:{stream}", self.prefix)
    }
}

pub struct RedisQueue {
    cfg: RedisQueueConfig,
    consumer: String,
    /// Appends, acks and claims.
    conn: RedisConn,
    last_claim: Mutex<Instant>,
    /// The streams this worker reads and claims from: all of them, or its share of them.
    owned: Arc<RwLock<Vec<u16>>>,
    /// Streams just added to its share: their reader takes over what others left pending on
    /// them before it reads newer entries.
    taking_over: Arc<std::sync::Mutex<BTreeSet<u16>>>,
    /// The running stream readers: the flag that stops each, and its task.
    readers: std::sync::Mutex<BTreeMap<u16, Reader>>,
    /// Readers told to stop, until they end: a reader started for the same stream waits for
    /// its predecessor, so two never read one stream for this worker at once.
    stopping: std::sync::Mutex<BTreeMap<u16, JoinHandle<()>>>,
    /// What the readers read; and what `read` took from them but did not hand out yet.
    batches_tx: mpsc::Sender<Batch>,
    batches: Mutex<(mpsc::Receiver<Batch>, VecDeque<Delivery>)>,
    /// How many entries a reader asks for at a time: the last `read`'s `max`.
    count: Arc<AtomicUsize>,
}

/// A running stream reader: the flag that stops it, and its task.
type Reader = (Arc<AtomicBool>, JoinHandle<()>);

/// What a stream reader hands `read`: entries it read, or a failure it retries after.
type Batch = Result<Vec<Delivery>, Error>;

/// How long a stream reader's `XREADGROUP` blocks, so that it sees a stop soon.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Batches read ahead of `read`, over all streams.
const READ_AHEAD: usize = 8;

/// The streams worker `index` of `workers` owns: every `workers`-th one from `index`.
fn share(streams: u16, index: usize, workers: usize) -> Vec<u16> {
    (0..streams).filter(|s| usize::from(*s) % workers == index).collect()
}

fn redis_err(e: redis::RedisError) -> Error {
    Error::Queue(e.to_string())
}

impl RedisQueue {
    /// Connects and makes sure every stream and the consumer group exist.
    pub async fn open(cfg: RedisQueueConfig) -> Result<Self, Error> {
        cfg.validate()?;
        let timeouts = RedisTimeouts {
            connect: Duration::from_secs(2),
            response: Some(Duration::from_secs(5)),
            retries: 3,
        };
        let mut conn = RedisConn::open(&cfg.url, timeouts).await.map_err(redis_err)?;
        for stream in 0..cfg.streams {
            let created: Result<(), _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(cfg.key(stream))
                .arg(&cfg.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(redis_err(e)),
            }
        }
        let consumer = cfg.consumer.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let (batches_tx, rx) = mpsc::channel(READ_AHEAD);
        Ok(Self {
            consumer,
            conn,
            last_claim: Mutex::new(Instant::now()),
            owned: Arc::new(RwLock::new((0..cfg.streams).collect())),
            taking_over: Arc::default(),
            readers: std::sync::Mutex::default(),
            stopping: std::sync::Mutex::default(),
            batches_tx,
            batches: Mutex::new((rx, VecDeque::new())),
            count: Arc::new(AtomicUsize::new(1)),
            cfg,
        })
    }

    /// The stream a message goes to: a room's (or user's) messages share one, so they keep
    /// their order.
    fn stream_of(&self, message: &QueueMessage) -> u16 {
        let id = match message.target {
            Some(Target::RoomId(r)) => r.wrapping_mul(2),
            Some(Target::UserId(u)) => u.wrapping_mul(2) + 1,
            // Behind the user's own messages.
            Some(Target::SessionEnd(ref end)) => end.user_id.wrapping_mul(2) + 1,
            Some(Target::Disconnect(ref d)) => d.user_id.wrapping_mul(2) + 1,
            Some(Target::Kick(ref k)) => k.user_id.wrapping_mul(2) + 1,
            Some(Target::Everyone(_)) | None => 0,
        };
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u16 % self.cfg.streams
    }

    fn owned(&self) -> Vec<u16> {
        self.owned.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes over entries other consumers left pending for too long.
    async fn claim(&self, max: usize) -> Result<Vec<Delivery>, Error> {
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for stream in self.owned() {
            let reply = auto_claim(
                &mut self.conn.clone(),
                &self.cfg,
                &self.consumer,
                stream,
                self.cfg.claim_idle_ms,
                "0-0",
                max,
            )
            .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    stream,
                    claimed = reply.claimed.len(),
                    "took over entries a worker left pending"
                );
            }
            deliveries(stream, reply.claimed, &mut out, &mut bad);
        }
        if !bad.is_empty() {
            self.ack(&bad).await?;
        }
        Ok(out)
    }

    /// Starts a reader for each owned stream without one, and stops those of streams no
    /// longer owned (what they read meanwhile still goes out: the gateways drop a second copy
    /// by message id). A stream given to this worker again (another may have left entries
    /// pending on it meanwhile) gets a new reader that takes those over first.
    fn sync_readers(&self) {
        let owned = self.owned();
        let take_over: BTreeSet<u16> = {
            let mut taking = self.taking_over.lock().unwrap_or_else(|p| p.into_inner());
            owned.iter().copied().filter(|s| taking.remove(s)).collect()
        };
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let mut stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
        stopping.retain(|_, task| !task.is_finished());
        let stop: Vec<u16> =
            readers.keys().copied().filter(|s| !owned.contains(s) || take_over.contains(s)).collect();
        for stream in stop {
            if let Some((flag, task)) = readers.remove(&stream) {
                flag.store(true, Ordering::Relaxed);
                stopping.insert(stream, task);
            }
        }
        for stream in owned {
            if readers.contains_key(&stream) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let reader = StreamReader {
                cfg: self.cfg.clone(),
                consumer: self.consumer.clone(),
                stream,
                stop: stop.clone(),
                count: self.count.clone(),
                tx: self.batches_tx.clone(),
            };
            let task = tokio::spawn(reader.run(take_over.contains(&stream), stopping.remove(&stream)));
            readers.insert(stream, (stop, task));
        }
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        for (stop, _) in self.readers.lock().unwrap_or_else(|p| p.into_inner()).values() {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// One owned stream's reader: reads it through the group and hands the batches on.
struct StreamReader {
    cfg: RedisQueueConfig,
    consumer: String,
    stream: u16,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    tx: mpsc::Sender<Batch>,
}

impl StreamReader {
    /// Reads once `predecessor` (the stream's previous reader in this worker) has ended.
    /// `take_over`: first take over, however recent, what other consumers left pending on the
    /// stream, so that it goes out before the newer entries (a live worker that had the stream
    /// may still be pushing some of them: the gateways drop the second copy by message id).
    async fn run(self, take_over: bool, predecessor: Option<JoinHandle<()>>) {
        if let Some(predecessor) = predecessor {
            let _ = predecessor.await;
        }
        // A connection of its own, without a response timeout: it blocks in `XREADGROUP`.
        let timeouts = RedisTimeouts { connect: Duration::from_secs(2), response: None, retries: 1 };
        let mut conn: Option<RedisConn> = None;
        let mut cursor = take_over.then(|| "0-0".to_string());
        while !self.stop.load(Ordering::Relaxed) && !self.tx.is_closed() {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match RedisConn::open(&self.cfg.url, timeouts).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        self.failed(redis_err(e)).await;
                        continue;
                    }
                },
            };
            let max = self.count.load(Ordering::Relaxed).max(1);
            let entries = match cursor.take() {
                Some(from) => {
                    match auto_claim(c, &self.cfg, &self.consumer, self.stream, 0, &from, max).await {
                        Ok(reply) => {
                            if reply.next_stream_id != "0-0" {
                                cursor = Some(reply.next_stream_id);
                            }
                            if !reply.claimed.is_empty() {
                                tracing::info!(
                                    stream = self.stream,
                                    taken = reply.claimed.len(),
                                    "took over entries left pending on a stream given to this worker"
                                );
                            }
                            Ok(reply.claimed)
                        }
                        Err(e) => {
                            cursor = Some(from);
                            Err(e)
                        }
                    }
                }
                None => self.read_new(c, max).await,
            };
            match entries {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => {
                    let (mut out, mut bad) = (Vec::new(), Vec::new());
                    deliveries(self.stream, entries, &mut out, &mut bad);
                    if !bad.is_empty() {
                        let ids: Vec<&str> =
                            bad.iter().filter_map(|id| id.split_once('/').map(|(_, e)| e)).collect();
                        if let Err(e) = xack(c, &self.cfg, self.stream, &ids).await {
                            tracing::warn!(stream = self.stream, error = %e, "acknowledging undecodable entries failed");
                        }
                    }
                    if !out.is_empty() && self.tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // A broken connection is rebuilt.
                    conn = None;
                    self.failed(e).await;
                }
            }
        }
    }

    /// New entries, waiting up to `READ_BLOCK` for the first.
    async fn read_new(&self, conn: &mut RedisConn, max: usize) -> Result<Vec<StreamId>, Error> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.cfg.key(self.stream))
            .arg(">")
            .query_async(conn)
            .await
            .map_err(redis_err)?;
        Ok(reply.map(|r| r.keys).unwrap_or_default().into_iter().flat_map(|k| k.ids).collect())
    }

    /// Tells `read` of a failure, then waits a little before trying again.
    async fn failed(&self, e: Error) {
        let _ = self.tx.try_send(Err(e));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Moves to `consumer` up to `max` of `stream`'s entries pending with others for at least
/// `min_idle_ms`, from `cursor` on (`XAUTOCLAIM`).
async fn auto_claim(
    conn: &mut RedisConn,
    cfg: &RedisQueueConfig,
    consumer: &str,
    stream: u16,
    min_idle_ms: u64,
    cursor: &str,
    max: usize,
) -> Result<StreamAutoClaimReply, Error> {
    redis::cmd("XAUTOCLAIM")
        .arg(cfg.key(stream))
        .arg(&cfg.group)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(max)
        .query_async(conn)
        .await
        .map_err(redis_err)
}

/// Acknowledges `entries` of `stream` in the group (`XACK`).
async fn xack(
    conn: &mut RedisConn,
    cfg: &RedisQueueConfig,
    stream: u16,
    entries: &[&str],
) -> Result<(), Error> {
    redis::cmd("XACK")
        .arg(cfg.key(stream))
        .arg(&cfg.group)
        .arg(entries)
        .query_async(conn)
        .await
        .map_err(redis_err)
}

/// `stream`'s entries as deliveries (ids `stream/entry`); the ids of those that hold no
/// message go to `bad`, to be acknowledged and so dropped.
fn deliveries(stream: u16, entries: Vec<StreamId>, out: &mut Vec<Delivery>, bad: &mut Vec<String>) {
    for entry in entries {
        let id = format!("{stream}/{}", entry.id);
        match entry.map.get("m") {
            Some(Value::BulkString(bytes)) => match QueueMessage::decode(bytes.as_slice()) {
                Ok(message) => out.push(Delivery { id, message }),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "undecodable queue entry; dropped");
                    bad.push(id);
                }
            },
            _ => {
                tracing::warn!(%id, "queue entry without a message; dropped");
                bad.push(id);
            }
        }
    }
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    async fn publish(&self, message: QueueMessage) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let key = self.cfg.key(self.stream_of(&message));
        redis::cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.cfg.max_len)
            .arg("*")
            .arg("m")
            .arg(message.encode_to_vec())
            .query_async::<Value>(&mut conn)
            .await
            .map(drop)
            .map_err(redis_err)
    }

    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, Error> {
        self.count.store(max.max(1), Ordering::Relaxed);
        {
            let mut last = self.last_claim.lock().await;
            if last.elapsed() >= Duration::from_millis(self.cfg.claim_idle_ms / 2) {
                *last = Instant::now();
                drop(last);
                let claimed = self.claim(max).await?;
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
            }
        }
        // No share yet (this worker is not in discovery yet) or none at all (more workers than
        // streams): no reader runs, and this stands by for `wait`.
        self.sync_readers();
        let mut guard = self.batches.lock().await;
        let (rx, held) = &mut *guard;
        if held.is_empty() {
            let first = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
            };
            match first {
                Some(batch) => held.extend(batch?),
                None => return Ok(Vec::new()),
            }
        }
        while held.len() < max {
            match rx.try_recv() {
                Ok(Ok(batch)) => held.extend(batch),
                Ok(Err(e)) => tracing::warn!(error = %e, "reading a queue stream failed; retrying"),
                Err(_) => break,
            }
        }
        Ok(held.drain(..max.min(held.len())).collect())
    }

    fn share_with(&self, me: &str, mut workers: Members) {
        let (owned, streams, me) = (self.owned.clone(), self.cfg.streams, me.to_string());
        let taking_over = self.taking_over.clone();
        *owned.write().unwrap_or_else(|p| p.into_inner()) = Vec::new();
        tokio::spawn(async move {
            loop {
                let ids: Vec<String> = workers.borrow_and_update().keys().cloned().collect();
                // Absent from the set (not registered yet, or etcd lost us for a moment): keep
                // the share we had rather than read what another worker owns.
                if let Some(index) = ids.iter().position(|id| *id == me) {
                    let mine = share(streams, index, ids.len());
                    let mut current = owned.write().unwrap_or_else(|p| p.into_inner());
                    if *current != mine {
                        tracing::info!(worker = %me, workers = ids.len(), streams = ?mine, "queue streams assigned");
                        let mut taking = taking_over.lock().unwrap_or_else(|p| p.into_inner());
                        taking.retain(|s| mine.contains(s));
                        taking.extend(mine.iter().filter(|s| !current.contains(s)));
                        *current = mine;
                    }
                }
                if workers.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    async fn ack(&self, ids: &[String]) -> Result<(), Error> {
        let mut by_stream: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for id in ids {
            let Some((stream, entry)) = id.split_once('/') else { continue };
            by_stream.entry(stream).or_default().push(entry);
        }
        // A command per stream: on a cluster they are keys of different slots.
        let acks = by_stream.into_iter().map(|(stream, entries)| {
            let mut conn = self.conn.clone();
            async move { xack(&mut conn, &self.cfg, stream.parse().unwrap_or(0), &entries).await }
        });
        futures_util::future::try_join_all(acks).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_every_stream_once() {
        for workers in 1..6 {
            let mut all: Vec<u16> = (0..workers).flat_map(|i| share(8, i, workers)).collect();
            all.sort_unstable();
            assert_eq!(all, (0..8).collect::<Vec<_>>(), "{workers} workers");
        }
        assert!(share(2, 2, 3).is_empty(), "more workers than streams: the extra one stands by");
    }
}
