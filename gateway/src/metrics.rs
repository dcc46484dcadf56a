//! Prometheus metrics on the admin listener: each shard's counters, labelled by shard and
//! driver, read from the same atomics the gRPC `Stats` call reads.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::shard::ShardStats;

/// What `/metrics` reads.
#[derive(Clone)]
pub struct Metrics {
    pub gateway_id: Arc<str>,
    pub driver: &'static str,
    pub stats: Arc<[Arc<ShardStats>]>,
    pub draining: Arc<AtomicBool>,
}

impl Metrics {
    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        type Read = fn(&ShardStats) -> &AtomicU64;
        let families: [(&str, &str, &str, Read); 9] = [
            ("connections", "gauge", "Open client connections.", |s| &s.connections),
            ("rooms", "gauge", "Rooms with a member on the shard.", |s| &s.rooms),
            ("frames_out_total", "counter", "Frames queued to clients.", |s| &s.frames_out),
            ("slow_consumer_closes_total", "counter", "Clients dropped for not reading.", |s| {
                &s.slow_consumer_closes
            }),
            ("auth_failures_total", "counter", "Socket authentications refused.", |s| &s.auth_failures),
            ("protocol_closes_total", "counter", "Closes the protocol decided.", |s| &s.protocol_closes),
            ("frames_throttled_total", "counter", "Client frames dropped over the rate limit.", |s| {
                &s.frames_throttled
            }),
            ("flood_closes_total", "counter", "Clients closed for flooding.", |s| &s.flood_closes),
            ("tls_handshake_failures_total", "counter", "wss handshakes that failed.", |s| {
                &s.tls_handshake_failures
            }),
        ];
        let mut out = String::new();
        for (name, kind, help, read) in families {
            let _ = writeln!(out, "# HELP gochat_gateway_{name} {help}\n# TYPE gochat_gateway_{name} {kind}");
            for (shard, stats) in self.stats.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gochat_gateway_{name}{{gateway=\"{}\",shard=\"{shard}\",driver=\"{}\"}} {}",
                    self.gateway_id,
                    self.driver,
                    read(stats).load(Ordering::Relaxed)
                );
            }
        }
        let draining = self.draining.load(Ordering::Relaxed) as u8;
        let _ = writeln!(
            out,
            "# HELP gochat_gateway_draining 1 while the gateway drains.\n# TYPE gochat_gateway_draining gauge\n\
             gochat_gateway_draining{{gateway=\"{}\"}} {draining}",
            self.gateway_id
        );
        out
    }

    pub fn router(self) -> Router {
        Router::new().route(
            "/metrics",
            get(move || {
                let body = self.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response() }
            }),
        )
    }
}
