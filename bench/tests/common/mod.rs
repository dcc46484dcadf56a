//! What the bench's test binaries share.

use std::net::SocketAddr;

/// A `gochat up` config for the bench on free loopback ports, the WebSocket listener on
/// `ws_listen`: no rate limits (bench users come from one address) and open rooms (pushers post
/// to rooms over REST only).
pub fn bench_config(ws_listen: SocketAddr) -> gochat::Config {
    let mut cfg = gochat::Config::default();
    let any = "127.0.0.1:0".parse().unwrap();
    cfg.control.api_listen = any;
    cfg.control.site_listen = None;
    cfg.control.grpc_listen = any;
    cfg.control.database = "sqlite::memory:".into();
    cfg.control = cfg.control.without_rate_limits();
    cfg.control.open_rooms = true;
    cfg.gateway.ws_listen = ws_listen;
    cfg.gateway.tcp_listen = None;
    cfg.gateway.grpc_listen = any;
    cfg.gateway.shards = 2;
    cfg
}
