//! Prometheus metrics on the admin listener: each shard's counters, labelled by shard and
//! driver, read from the same atomics the gRPC `Stats` call reads; and what the ingress counts
//! of the batches it hands to the shards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use gochat_runtime::metrics::{Counter, Histogram, Kind, Text, LATENCY_SECONDS};

use crate::shard::ShardStats;

/// The ingress' counts: batches in, messages handed to the shards, repeats dropped, and how old
/// each message was when it was handed over.
#[derive(Debug)]
pub struct Delivery {
    pub batches: Counter,
    pub messages: Counter,
    pub duplicates: Counter,
    latency: Histogram,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            batches: Counter::default(),
            messages: Counter::default(),
            duplicates: Counter::default(),
            latency: Histogram::new(LATENCY_SECONDS),
        }
    }
}

impl Delivery {
    /// `messages` went to the shards just now, with these ids (one observation each, nothing
    /// per member).
    pub fn handed_off(&self, messages: usize, ids: &[u64]) {
        self.messages.add(messages as u64);
        let now = SystemTime::now();
        for age in ids.iter().filter_map(|id| gochat_proto::ids::age(*id, now)) {
            self.latency.observe(age);
        }
    }
}

/// What `/metrics` reads.
#[derive(Clone)]
pub struct Metrics {
    pub gateway_id: Arc<str>,
    pub driver: &'static str,
    pub stats: Arc<[Arc<ShardStats>]>,
    pub draining: Arc<AtomicBool>,
    pub delivery: Arc<Delivery>,
}

impl Metrics {
    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        type Read = fn(&ShardStats) -> &AtomicU64;
        let families: [(&str, Kind, &str, Read); 12] = [
            ("connections", Kind::Gauge, "Open client connections.", |s| &s.connections),
            ("rooms", Kind::Gauge, "Rooms with a member on the shard.", |s| &s.rooms),
            ("frames_out_total", Kind::Counter, "Frames queued to clients.", |s| &s.frames_out),
            ("sends_total", Kind::Counter, "Writes to clients (a write carries every frame queued).", |s| {
                &s.sends
            }),
            ("slow_consumer_closes_total", Kind::Counter, "Clients dropped for not reading.", |s| {
                &s.slow_consumer_closes
            }),
            ("auth_failures_total", Kind::Counter, "Socket authentications refused.", |s| &s.auth_failures),
            ("protocol_closes_total", Kind::Counter, "Closes the protocol decided.", |s| &s.protocol_closes),
            ("frames_throttled_total", Kind::Counter, "Client frames dropped over the rate limit.", |s| {
                &s.frames_throttled
            }),
            ("flood_closes_total", Kind::Counter, "Clients closed for flooding.", |s| &s.flood_closes),
            ("tls_handshake_failures_total", Kind::Counter, "wss handshakes that failed.", |s| {
                &s.tls_handshake_failures
            }),
            ("binary_connections", Kind::Gauge, "Open connections on the binary protocol.", |s| {
                &s.binary_connections
            }),
            (
                "deflate_connections",
                Kind::Gauge,
                "Open connections that agreed to permessage-deflate.",
                |s| &s.deflate_connections,
            ),
        ];
        let mut text = Text::default();
        let gateway = ("gateway", &*self.gateway_id);
        for (name, kind, help, read) in families {
            let name = format!("gochat_gateway_{name}");
            text.family(&name, kind, help);
            for (shard, stats) in self.stats.iter().enumerate() {
                let shard = shard.to_string();
                let labels = [gateway, ("shard", &shard), ("driver", self.driver)];
                text.sample(&name, &labels, read(stats).load(Ordering::Relaxed));
            }
        }
        let draining = self.draining.load(Ordering::Relaxed) as u8;
        text.family("gochat_gateway_draining", Kind::Gauge, "1 while the gateway drains.").sample(
            "gochat_gateway_draining",
            &[gateway],
            draining,
        );
        let d = &self.delivery;
        let counters = [
            ("gochat_gateway_batches_total", "Batches received from queue-workers.", &d.batches),
            ("gochat_gateway_messages_total", "Messages handed to the shards.", &d.messages),
            (
                "gochat_gateway_duplicates_dropped_total",
                "Messages dropped as delivered before (a queue redelivery).",
                &d.duplicates,
            ),
        ];
        for (name, help, counter) in counters {
            text.family(name, Kind::Counter, help).sample(name, &[gateway], counter.get());
        }
        let bombs = "gochat_gateway_inflated_too_large_total";
        text.family(
            bombs,
            Kind::Counter,
            "Compressed client messages closed with 1009: they inflated past the size limit.",
        )
        .sample(
            bombs,
            &[gateway],
            crate::protocol::deflate::INFLATED_TOO_LARGE.load(Ordering::Relaxed),
        );
        let latency = "gochat_gateway_delivery_latency_seconds";
        text.family(latency, Kind::Histogram, "From a message's id time to its hand-off to the shards.")
            .histogram(latency, &[gateway], &d.latency);
        text.finish()
    }
}
