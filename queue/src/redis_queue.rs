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

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::QueueMessage;
use gochat_runtime::peers::Members;
use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{Delivery, Error, Queue};

/// `[queue]` with `kind = "redis"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisQueueConfig {
    /// e.g. `redis://127.0.0.1:6379`
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
        redis::Client::open(self.url.as_str()).map_err(|e| {
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
    client: redis::Client,
    /// Appends, acks and claims.
    conn: ConnectionManager,
    /// Blocking reads get a connection of their own, with no response timeout: a blocked
    /// `XREADGROUP` must not stall or time out the other commands.
    reader: Mutex<Option<MultiplexedConnection>>,
    last_claim: Mutex<Instant>,
    /// The streams this worker reads and claims from: all of them, or its share of them.
    owned: Arc<RwLock<Vec<u16>>>,
    /// Streams just added to its share, with how far their pending entries were taken over
    /// (an `XAUTOCLAIM` cursor): none of their newer entries is read before that is done.
    taking_over: Arc<std::sync::Mutex<Vec<(u16, String)>>>,
}

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
        let client = redis::Client::open(cfg.url.as_str()).map_err(redis_err)?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(3);
        let mut conn =
            ConnectionManager::new_with_config(client.clone(), manager_cfg).await.map_err(redis_err)?;
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
        Ok(Self {
            consumer,
            client,
            conn,
            reader: Mutex::new(None),
            last_claim: Mutex::new(Instant::now()),
            owned: Arc::new(RwLock::new((0..cfg.streams).collect())),
            taking_over: Arc::default(),
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

    fn deliveries(
        &self,
        stream: u16,
        entries: Vec<redis::streams::StreamId>,
        out: &mut Vec<Delivery>,
        bad: &mut Vec<String>,
    ) {
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

    fn owned(&self) -> Vec<u16> {
        self.owned.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Moves to this consumer up to `max` of `stream`'s entries pending with others for at
    /// least `min_idle_ms`, from `cursor` on (`XAUTOCLAIM`).
    async fn auto_claim(
        &self,
        stream: u16,
        min_idle_ms: u64,
        cursor: &str,
        max: usize,
    ) -> Result<StreamAutoClaimReply, Error> {
        redis::cmd("XAUTOCLAIM")
            .arg(self.cfg.key(stream))
            .arg(&self.cfg.group)
            .arg(&self.consumer)
            .arg(min_idle_ms)
            .arg(cursor)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    /// Takes over entries other consumers left pending for too long.
    async fn claim(&self, max: usize) -> Result<Vec<Delivery>, Error> {
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for stream in self.owned() {
            let reply = self.auto_claim(stream, self.cfg.claim_idle_ms, "0-0", max).await?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    stream,
                    claimed = reply.claimed.len(),
                    "took over entries a worker left pending"
                );
            }
            self.deliveries(stream, reply.claimed, &mut out, &mut bad);
        }
        if !bad.is_empty() {
            self.ack(&bad).await?;
        }
        Ok(out)
    }

    /// Takes over, however recent, what other consumers left pending on the streams just added
    /// to this worker's share (up to `max` at a time), so that they go out before the newer
    /// entries. A live worker that had the stream may still be pushing some of them: the
    /// gateways drop the second copy by message id.
    async fn take_over(&self, max: usize) -> Result<Vec<Delivery>, Error> {
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        loop {
            let next = self.taking_over.lock().unwrap_or_else(|p| p.into_inner()).first().cloned();
            let Some((stream, cursor)) = next else { break };
            let reply = self.auto_claim(stream, 0, &cursor, max).await?;
            {
                let mut taking = self.taking_over.lock().unwrap_or_else(|p| p.into_inner());
                let done = reply.next_stream_id == "0-0";
                taking.retain_mut(|(s, c)| match *s == stream {
                    true if done => false,
                    true => {
                        c.clone_from(&reply.next_stream_id);
                        true
                    }
                    false => true,
                });
            }
            if !reply.claimed.is_empty() {
                tracing::info!(
                    stream,
                    taken = reply.claimed.len(),
                    "took over entries left pending on a stream given to this worker"
                );
            }
            self.deliveries(stream, reply.claimed, &mut out, &mut bad);
            if !out.is_empty() || !bad.is_empty() {
                break;
            }
        }
        if !bad.is_empty() {
            self.ack(&bad).await?;
        }
        Ok(out)
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
        let taken = self.take_over(max).await?;
        if !taken.is_empty() {
            return Ok(taken);
        }
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
        let owned = self.owned();
        if owned.is_empty() {
            // No share yet (this worker is not in discovery yet) or none at all (more workers
            // than streams): stand by.
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let mut reader = self.reader.lock().await;
        if reader.is_none() {
            let cfg = AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(2));
            *reader = Some(
                self.client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(redis_err)?,
            );
        }
        let conn = reader.as_mut().expect("just set");
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.cfg.group).arg(&self.consumer).arg("COUNT").arg(max);
        if !wait.is_zero() {
            // Without BLOCK the read returns at once with what is there.
            cmd.arg("BLOCK").arg(wait.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS");
        for stream in &owned {
            cmd.arg(self.cfg.key(*stream));
        }
        for _ in &owned {
            cmd.arg(">");
        }
        let reply: Option<StreamReadReply> = match cmd.query_async(conn).await {
            Ok(r) => r,
            Err(e) => {
                // A broken connection is rebuilt on the next read.
                *reader = None;
                return Err(redis_err(e));
            }
        };
        drop(reader);
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            let stream = key.key.rsplit(':').next().and_then(|s| s.parse().ok()).unwrap_or(0);
            self.deliveries(stream, key.ids, &mut out, &mut bad);
        }
        if !bad.is_empty() {
            self.ack(&bad).await?;
        }
        Ok(out)
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
                        taking.retain(|(s, _)| mine.contains(s));
                        for s in mine.iter().filter(|s| !current.contains(s)) {
                            taking.push((*s, "0-0".to_string()));
                        }
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
        let mut by_stream: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for id in ids {
            let Some((stream, entry)) = id.split_once('/') else { continue };
            by_stream.entry(stream).or_default().push(entry);
        }
        let mut pipe = redis::pipe();
        for (stream, entries) in by_stream {
            let stream: u16 = stream.parse().unwrap_or(0);
            pipe.cmd("XACK").arg(self.cfg.key(stream)).arg(&self.cfg.group).arg(entries).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(redis_err)
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
