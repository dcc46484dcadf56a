//! The worker loop: read by size or age, route through logic, push to gateways.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gochat_proto::logic::logic_client::LogicClient;
use gochat_proto::logic::{NodeReport, RouteRequest};
use gochat_queue::{Delivery, Queue};
use gochat_runtime::peers::{self, Members};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::batch::Grouped;
use crate::gateways::{GatewayAddr, GatewayPool};
use crate::metrics::{Outcome, WorkerMetrics};
use crate::Error;

/// How long a batch may wait for its gateways' acknowledgements.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// `[worker]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Unique id of this worker in the cluster (discovery key).
    pub id: String,
    /// Logic (control) gRPC endpoint, for routing.
    pub logic: String,
    /// A batch is at most this many messages (and takes no more once its bodies reach 8 MiB):
    /// what was waiting when the worker was free…
    pub batch_max: usize,
    /// …and, above 0, what else arrives until its first message is this old (microseconds).
    /// 0 (the default) waits for nothing: batches grow by themselves under load, while the
    /// previous one is being pushed, and an idle system's message is not held back.
    pub batch_age_us: u64,
    /// Static discovery: the gateways to push to.
    pub gateways: Vec<GatewayAddr>,
    /// Prometheus metrics (`GET /metrics`) for operators; `"off"` (the default) to disable.
    /// Keep it off the public network.
    #[serde(with = "gochat_proto::config_format::optional_listen")]
    pub admin_listen: Option<SocketAddr>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: "worker-1".into(),
            logic: "http://127.0.0.1:6900".into(),
            batch_max: 4096,
            batch_age_us: 0,
            gateways: vec![GatewayAddr { id: "gateway-1".into(), grpc: "http://127.0.0.1:7100".into() }],
            admin_listen: None,
        }
    }
}

impl WorkerConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.batch_max == 0 {
            return Err(Error::Config("batch_max must be above 0".into()));
        }
        if self.batch_age_us > 1_000_000 {
            return Err(Error::Config("batch_age_us must be at most 1 s".into()));
        }
        let mut ids = std::collections::HashSet::new();
        for g in &self.gateways {
            if !ids.insert(&g.id) {
                return Err(Error::Config(format!("gateway id {:?} listed twice", g.id)));
            }
        }
        Ok(())
    }
}

pub struct Worker {
    queue: Arc<dyn Queue>,
    logic: LogicClient<Channel>,
    gateways: GatewayPool,
    cfg: WorkerConfig,
    next_batch: u64,
    metrics: Arc<WorkerMetrics>,
}

impl Worker {
    /// A worker with static discovery: logic at `cfg.logic`, the gateways of `cfg.gateways`.
    /// Must run inside a tokio runtime (gateway links are spawned).
    pub fn new(cfg: WorkerConfig, queue: Arc<dyn Queue>) -> Result<Self, Error> {
        cfg.validate()?;
        let logic = peers::channel(&cfg.logic)
            .map_err(|e| Error::Config(format!("logic address {:?}: {e}", cfg.logic)))?;
        let gateways = GatewayPool::fixed(&cfg.gateways)?;
        Ok(Self::assemble(cfg, queue, LogicClient::new(logic), gateways))
    }

    /// A worker that reaches logic through `logic` and follows the gateways in `gateways`
    /// (discovery); `cfg.logic` and `cfg.gateways` are not used.
    pub fn with_peers(
        cfg: WorkerConfig,
        queue: Arc<dyn Queue>,
        logic: Channel,
        gateways: Members,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        Ok(Self::assemble(cfg, queue, LogicClient::new(logic), GatewayPool::following(gateways)))
    }

    fn assemble(
        cfg: WorkerConfig,
        queue: Arc<dyn Queue>,
        logic: LogicClient<Channel>,
        gateways: GatewayPool,
    ) -> Self {
        let metrics = Arc::new(WorkerMetrics::new(&cfg.id));
        Self { queue, logic, gateways, cfg, next_batch: 0, metrics }
    }

    /// What this worker counts, for its admin listener.
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }

    /// Whether it is ready for traffic: its last read of the queue went through, and discovery
    /// knows a gateway to push to.
    pub fn readiness(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let (metrics, gateways) = (self.metrics.clone(), self.gateways.members());
        move || {
            if !metrics.queue_ok.load(Ordering::Relaxed) {
                return Err("the queue does not answer".into());
            }
            if gateways.borrow().is_empty() {
                return Err("no gateway known to push to".into());
            }
            Ok(())
        }
    }

    /// Runs until `shutdown` completes or the queue closes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let reports = tokio::spawn(report(self.logic.clone(), self.cfg.id.clone(), self.gateways.members()));
        let _stop_reports = AbortOnDrop(reports);
        loop {
            let grouped = tokio::select! {
                g = self.collect() => g,
                _ = &mut shutdown => return,
            };
            match grouped {
                Ok(g) if g.is_empty() => {}
                Ok(g) => {
                    self.metrics.pending.store(g.ids.len() as u64, Ordering::Relaxed);
                    self.push(g).await;
                    self.metrics.pending.store(0, Ordering::Relaxed);
                }
                Err(Error::Queue(gochat_queue::Error::Closed)) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "queue read failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Waits for a first message, takes what else is waiting, then (with a batch age) gathers
    /// more until the batch is full or old enough. Reads take `READ_CHUNK` messages at most and
    /// a batch stops growing past `BATCH_BYTES`, so that however large its messages a batch's
    /// pushes stay within what a gateway takes.
    async fn collect(&self) -> Result<Grouped, Error> {
        let mut batch = Batch { grouped: Grouped::default(), bytes: 0, max: self.cfg.batch_max };
        let first = self.read(batch.chunk(), Duration::from_millis(500)).await?;
        if first.is_empty() {
            return Ok(batch.grouped);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_micros(self.cfg.batch_age_us);
        let mut waiting = batch.add(first);
        while waiting && batch.open() {
            let more = self.read(batch.chunk(), Duration::ZERO).await?;
            waiting = batch.add(more);
        }
        while batch.open() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let more = self.read(batch.chunk(), left).await?;
            if more.is_empty() {
                break;
            }
            batch.add(more);
        }
        Ok(batch.grouped)
    }

    async fn read(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, Error> {
        let read = self.queue.read(max, wait).await;
        self.metrics.queue_ok.store(read.is_ok(), Ordering::Relaxed);
        let read = read?;
        self.metrics.read(&read);
        Ok(read)
    }

    /// Routes a batch through logic and pushes one `PushBatch` per gateway.
    async fn push(&mut self, grouped: Grouped) {
        let req =
            RouteRequest { room_ids: grouped.rooms.keys().copied().collect(), user_ids: grouped.user_ids() };
        let route = match self.route(req).await {
            Ok(r) => r,
            Err(status) => {
                self.metrics.routing_failures.inc();
                tracing::error!(%status, messages = grouped.ids.len(), "routing failed; batch dropped");
                return;
            }
        };
        let gateways = self.gateways.members();
        let (per_gateway, ids) = grouped.split(route, gateways.borrow().keys());
        let sent = tokio::time::Instant::now();
        let mut acks = Vec::with_capacity(per_gateway.len());
        for (gateway, mut batch) in per_gateway {
            self.next_batch += 1;
            batch.batch_id = self.next_batch;
            match self.gateways.send(&gateway, batch).await {
                Some(acked) => acks.push((gateway, acked)),
                // Not in discovery: gone (its routes are swept once its lease runs out) or not
                // registered yet. Asking the queue again would not reach it either.
                None => {
                    self.metrics.pushed(&gateway, Outcome::NotInDiscovery);
                    tracing::warn!(%gateway, "gateway not in discovery; its part of the batch is dropped")
                }
            }
        }
        // Acknowledge the queue only once every gateway took its part: otherwise the entries
        // stay pending and are delivered again (at-least-once).
        let deadline = sent + ACK_WAIT;
        let waits = acks.into_iter().map(|(gateway, acked)| async move {
            let outcome = match tokio::time::timeout_at(deadline, acked).await {
                Ok(Ok(())) => Outcome::Acked,
                Ok(Err(_)) => Outcome::LinkDown,
                Err(_) => Outcome::AckTimeout,
            };
            (gateway, outcome)
        });
        let outcomes = futures_util::future::join_all(waits).await;
        outcomes.iter().for_each(|(gateway, outcome)| self.metrics.pushed(gateway, *outcome));
        if !outcomes.iter().all(|(_, outcome)| *outcome == Outcome::Acked) {
            tracing::warn!(
                messages = ids.len(),
                "not every gateway acknowledged the batch; left for redelivery"
            );
            return;
        }
        if !outcomes.is_empty() {
            self.metrics.push.observe(sent.elapsed());
        }
        match self.queue.ack(&ids).await {
            Ok(()) => self.metrics.acked.add(ids.len() as u64),
            Err(e) => {
                self.metrics.ack_failures.inc();
                tracing::warn!(error = %e, "queue ack failed; the batch will be delivered again");
            }
        }
    }

    /// Asks logic where the batch's rooms and users are, retrying briefly while it is away.
    async fn route(&mut self, req: RouteRequest) -> Result<gochat_proto::logic::RouteReply, tonic::Status> {
        let mut delay = Duration::from_millis(20);
        for attempt in 0.. {
            match self.logic.route(req.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) if attempt < 5 && status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(status) => return Err(status),
            }
        }
        unreachable!("the loop returns")
    }
}

/// How often a worker tells logic it is alive, for the server API's `info`.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Tells logic every [`REPORT_EVERY`] that this worker runs, its version and how many gateways
/// it pushes to. Best effort: a control that does not answer (or does not know the call yet,
/// during an upgrade) only leaves the worker out of `info`.
async fn report(mut logic: LogicClient<Channel>, id: String, gateways: Members) {
    loop {
        let connections = gateways.borrow().len() as u64;
        let report = NodeReport { id: id.clone(), version: env!("CARGO_PKG_VERSION").into(), connections };
        if let Err(status) = logic.worker_report(report).await {
            tracing::debug!(%status, "worker report not taken");
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

/// Ends a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The most messages one read of the queue takes.
pub const READ_CHUNK: usize = 512;
/// A batch takes no further read once its bodies reach this size: with a read of the largest
/// messages on top, a batch stays well within a gateway's `PUSH_MAX_BYTES`.
pub const BATCH_BYTES: usize = 8 << 20;

/// A batch being gathered.
struct Batch {
    grouped: Grouped,
    bytes: usize,
    max: usize,
}

impl Batch {
    /// Messages in it.
    fn count(&self) -> usize {
        self.grouped.ids.len()
    }

    /// How many the next read may take.
    fn chunk(&self) -> usize {
        (self.max - self.count()).min(READ_CHUNK)
    }

    /// Whether another read may add to it.
    fn open(&self) -> bool {
        self.count() < self.max && self.bytes < BATCH_BYTES
    }

    /// Adds a read; returns whether it was full (more may be waiting).
    fn add(&mut self, read: Vec<Delivery>) -> bool {
        let full = !read.is_empty() && read.len() == self.chunk();
        self.bytes += read.iter().map(|d| d.message.body.len()).sum::<usize>();
        read.into_iter().for_each(|d| self.grouped.add(d));
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_proto::queue::queue_message::Target;
    use gochat_proto::queue::QueueMessage;
    use gochat_queue::MemoryQueue;

    fn msg(room: u64) -> QueueMessage {
        QueueMessage { target: Some(Target::RoomId(room)), body: b"{}".to_vec(), ..Default::default() }
    }

    async fn worker(batch_max: usize, batch_age_us: u64) -> (Worker, Arc<MemoryQueue>) {
        let queue = Arc::new(MemoryQueue::new(10_000));
        let cfg = WorkerConfig { batch_max, batch_age_us, ..WorkerConfig::default() };
        (Worker::new(cfg, queue.clone()).unwrap(), queue)
    }

    /// A message published `after` the worker started collecting.
    fn publish_later(queue: &Arc<MemoryQueue>, after: Duration, room: u64) {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            queue.publish(msg(room)).await.unwrap();
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_what_waited_and_without_an_age_nothing_more() {
        let (w, queue) = worker(3, 0).await;
        for room in 1..=5 {
            queue.publish(msg(room)).await.unwrap();
        }
        assert_eq!(w.collect().await.unwrap().ids.len(), 3, "at most batch_max");
        assert_eq!(w.collect().await.unwrap().ids.len(), 2, "then the rest");
        // Alone on an idle queue, a message goes at once: one arriving right after it is not
        // waited for.
        publish_later(&queue, Duration::from_millis(10), 6);
        publish_later(&queue, Duration::from_millis(12), 7);
        let first = w.collect().await.unwrap();
        assert_eq!(first.rooms.keys().copied().collect::<Vec<_>>(), [6]);
        assert_eq!(w.collect().await.unwrap().rooms.keys().copied().collect::<Vec<_>>(), [7]);
    }

    #[tokio::test]
    async fn a_batch_takes_what_waited_read_by_read_up_to_its_bytes() {
        let (w, queue) = worker(4096, 0).await;
        let publish = |n: usize, body: Vec<u8>| {
            let queue = queue.clone();
            async move {
                for _ in 0..n {
                    let m = QueueMessage { body: body.clone(), ..msg(1) };
                    queue.publish(m).await.unwrap();
                }
            }
        };
        publish(1200, b"{}".to_vec()).await;
        assert_eq!(w.collect().await.unwrap().ids.len(), 1200, "three reads: 512, 512, 176");
        // 512 of 20 KB are past the bytes a batch grows to: the next read waits for the next batch.
        publish(1100, vec![b'x'; 20_000]).await;
        assert_eq!(w.collect().await.unwrap().ids.len(), READ_CHUNK);
        assert_eq!(w.collect().await.unwrap().ids.len(), READ_CHUNK);
        assert_eq!(w.collect().await.unwrap().ids.len(), 1100 - 2 * READ_CHUNK);
    }

    #[tokio::test(start_paused = true)]
    async fn with_an_age_a_batch_waits_for_more() {
        let (w, queue) = worker(10, 5000).await;
        publish_later(&queue, Duration::from_millis(10), 6);
        publish_later(&queue, Duration::from_millis(12), 7);
        publish_later(&queue, Duration::from_millis(20), 8);
        let batch = w.collect().await.unwrap();
        assert_eq!(batch.rooms.keys().copied().collect::<Vec<_>>(), [6, 7], "8 came after the age");
        assert_eq!(w.collect().await.unwrap().rooms.keys().copied().collect::<Vec<_>>(), [8]);
    }
}
