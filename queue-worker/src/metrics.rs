//! What a worker counts, for its admin listener: messages read and acknowledged, batches pushed
//! and failed per gateway, routing failures, queue lag and push latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use gochat_queue::Delivery;
use gochat_runtime::metrics::{Counter, Histogram, Kind, Text, LATENCY_SECONDS};

/// How one gateway's part of a batch ended (and its slot in [`GatewayCounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked = 0,
    /// Discovery does not know the gateway: its part is dropped.
    NotInDiscovery = 1,
    /// The push stream broke, or the gateway could not be reached.
    LinkDown = 2,
    /// No acknowledgement within the wait.
    AckTimeout = 3,
}

/// The failure reasons, as labelled.
const FAILURES: [(Outcome, &str); 3] = [
    (Outcome::NotInDiscovery, "not_in_discovery"),
    (Outcome::LinkDown, "link_down"),
    (Outcome::AckTimeout, "ack_timeout"),
];

/// Per gateway, batches by [`Outcome`].
type GatewayCounts = [u64; 4];

#[derive(Debug)]
pub struct WorkerMetrics {
    worker_id: String,
    read: Counter,
    pub acked: Counter,
    pub ack_failures: Counter,
    pub routing_failures: Counter,
    /// Messages of the batch in hand: read, not yet acknowledged or left for redelivery.
    pub pending: AtomicU64,
    /// Gateways come and go with discovery; one lock per gateway and batch.
    gateways: Mutex<BTreeMap<String, GatewayCounts>>,
    queue_lag: Histogram,
    /// From a batch's send to the last gateway's acknowledgement.
    pub push: Histogram,
    /// Whether the last read of the queue went through.
    pub queue_ok: std::sync::atomic::AtomicBool,
}

impl WorkerMetrics {
    pub fn new(worker_id: &str) -> Self {
        Self {
            worker_id: worker_id.to_string(),
            read: Counter::default(),
            acked: Counter::default(),
            ack_failures: Counter::default(),
            routing_failures: Counter::default(),
            pending: AtomicU64::new(0),
            gateways: Mutex::default(),
            queue_lag: Histogram::new(LATENCY_SECONDS),
            queue_ok: std::sync::atomic::AtomicBool::new(true),
            push: Histogram::new(LATENCY_SECONDS),
        }
    }

    /// Messages just read from the queue: counted, and their queue lag observed.
    pub fn read(&self, deliveries: &[Delivery]) {
        self.read.add(deliveries.len() as u64);
        let now = SystemTime::now();
        for lag in deliveries.iter().filter_map(|d| gochat_proto::ids::age(d.message.id, now)) {
            self.queue_lag.observe(lag);
        }
    }

    pub fn pushed(&self, gateway: &str, outcome: Outcome) {
        let mut gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let counts = match gateways.get_mut(gateway) {
            Some(counts) => counts,
            None => gateways.entry(gateway.to_string()).or_default(),
        };
        counts[outcome as usize] += 1;
    }

    pub fn render(&self) -> String {
        let mut text = Text::default();
        let worker = ("worker", self.worker_id.as_str());
        let counters = [
            ("gochat_worker_messages_read_total", "Messages read from the queue.", &self.read),
            ("gochat_worker_messages_acked_total", "Messages acknowledged to the queue.", &self.acked),
            (
                "gochat_worker_ack_failures_total",
                "Queue acknowledgements that failed (their batch is delivered again).",
                &self.ack_failures,
            ),
            (
                "gochat_worker_routing_failures_total",
                "Batches logic could not route (left for redelivery).",
                &self.routing_failures,
            ),
        ];
        for (name, help, counter) in counters {
            text.family(name, Kind::Counter, help).sample(name, &[worker], counter.get());
        }
        let pending = "gochat_worker_pending_messages";
        text.family(pending, Kind::Gauge, "Messages read and not yet acknowledged or left for redelivery.")
            .sample(pending, &[worker], self.pending.load(Ordering::Relaxed));
        let gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let batches = "gochat_worker_batches_total";
        text.family(batches, Kind::Counter, "Batches a gateway acknowledged.");
        for (gateway, counts) in &gateways {
            text.sample(batches, &[worker, ("gateway", gateway)], counts[Outcome::Acked as usize]);
        }
        let failures = "gochat_worker_push_failures_total";
        text.family(failures, Kind::Counter, "Batches not acknowledged by a gateway, by reason.");
        for (gateway, counts) in &gateways {
            for (outcome, reason) in FAILURES {
                text.sample(
                    failures,
                    &[worker, ("gateway", gateway), ("reason", reason)],
                    counts[outcome as usize],
                );
            }
        }
        let lag = "gochat_worker_queue_lag_seconds";
        text.family(lag, Kind::Histogram, "From a message's id time to its read from the queue.").histogram(
            lag,
            &[worker],
            &self.queue_lag,
        );
        let push = "gochat_worker_push_seconds";
        text.family(push, Kind::Histogram, "From a batch's send to the last gateway's acknowledgement.")
            .histogram(push, &[worker], &self.push);
        text.finish()
    }
}
