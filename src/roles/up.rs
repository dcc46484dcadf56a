//! `gochat up`: control, a queue-worker and a gateway in one process with the in-process
//! queue, static discovery and SQLite; they still talk through gRPC as in a cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use gochat_control::{Control, ControlHandle};
use gochat_gateway::{Gateway, GatewayHandle};
use gochat_proto::config_format;
use gochat_queue::Queue;
use gochat_queue_worker::gateways::GatewayAddr;
use gochat_queue_worker::Worker;

use super::{shutdown_signal, until_stopped, Reloader, Say, WorkerHandle};
use crate::Config;

/// Everything `gochat up` runs.
pub struct Up {
    pub control: ControlHandle,
    pub gateway: GatewayHandle,
    pub worker: WorkerHandle,
    queue: Arc<dyn Queue>,
    ws_path: String,
}

/// Where a running `up` listens.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub site: Option<SocketAddr>,
    pub api: SocketAddr,
    pub ws: SocketAddr,
    pub ws_path: String,
    pub tcp: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    /// Whether the REST API and the page serve HTTPS.
    pub https: bool,
    pub logic_grpc: SocketAddr,
    pub gateway_grpc: SocketAddr,
}

fn grpc_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

impl Up {
    /// Starts control, then the gateway and worker pointed at it. Ports may be 0.
    pub async fn start(mut cfg: Config) -> anyhow::Result<Self> {
        cfg.control.demo_users.get_or_insert(true);
        cfg.validate()?;
        let queue = cfg.queue.open().await?;
        let control = Control::start(cfg.control.clone(), queue.clone()).await?;
        cfg.gateway.logic = grpc_url(control.grpc_addr);
        let gateway = match Gateway::start(cfg.gateway.clone()).await {
            Ok(g) => g,
            Err(e) => {
                control.shutdown().await;
                return Err(e.into());
            }
        };
        // A page loaded over HTTPS may only open wss://.
        let page_ws = match (control.https(), gateway.wss_addr) {
            (true, Some(wss)) => wss,
            (true, None) => {
                tracing::warn!(
                    "the page is served over HTTPS but the gateway has no wss_listen: browsers will refuse \
                     its plain WebSocket"
                );
                gateway.ws_addr
            }
            (false, _) => gateway.ws_addr,
        };
        control.set_site_ws_port(page_ws.port());
        cfg.worker.logic = grpc_url(control.grpc_addr);
        cfg.worker.gateways =
            vec![GatewayAddr { id: gateway.id.to_string(), grpc: grpc_url(gateway.grpc_addr) }];
        let worker = match Worker::new(cfg.worker.clone(), queue.clone()) {
            Ok(w) => WorkerHandle::start(w, cfg.worker.admin_listen).await,
            Err(e) => Err(e.into()),
        };
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                gateway.shutdown().await;
                control.shutdown().await;
                return Err(e);
            }
        };
        Ok(Self { control, gateway, worker, queue, ws_path: cfg.gateway.ws_path })
    }

    pub fn addresses(&self) -> Addresses {
        Addresses {
            site: self.control.site_addr,
            api: self.control.api_addr,
            ws: self.gateway.ws_addr,
            ws_path: self.ws_path.clone(),
            tcp: self.gateway.tcp_addr,
            wss: self.gateway.wss_addr,
            https: self.control.https(),
            logic_grpc: self.control.grpc_addr,
            gateway_grpc: self.gateway.grpc_addr,
        }
    }

    /// Live connections on the gateway's shards.
    pub fn gateway_conns(&self) -> u64 {
        self.gateway.connections()
    }

    /// Closes client connections, drains the worker, stops control.
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.worker.shutdown().await;
        self.queue.close();
        self.control.shutdown().await;
    }
}

/// `gochat up`: every role until Ctrl-C or SIGTERM.
pub async fn run(mut cfg: Config, mut reloader: Reloader, say: Say) -> anyhow::Result<()> {
    let database = config_format::redact_url(&cfg.control.database);
    let up = Up::start(cfg.clone()).await?;
    say.line(format_args!("gochat-rs is up (embedded: in-process queue, static discovery, {database})"));
    say_addresses(&up, say);
    say.line(format_args!("Ctrl-C to stop."));
    until_stopped(shutdown_signal(), &mut reloader, &mut cfg, |c| {
        up.control.reconfigure(&c.control);
        let gateway = &up.gateway;
        async move { gateway.reconfigure(&c.gateway).await }
    })
    .await;
    say.line(format_args!("stopping…"));
    up.shutdown().await;
    Ok(())
}

/// The banner's lines after the first: where each role listens, and the demo users.
fn say_addresses(up: &Up, say: Say) {
    let a = up.addresses();
    let http = if a.https { "https" } else { "http" };
    if let Some(site) = a.site {
        say.line(format_args!("  page        {http}://{site}/"));
    }
    say.line(format_args!("  REST API    {http}://{}", a.api));
    say.line(format_args!("  WebSocket   ws://{}{}", a.ws, a.ws_path));
    if let Some(wss) = a.wss {
        say.line(format_args!("  WebSocket   wss://{wss}{}", a.ws_path));
    }
    if let Some(tcp) = a.tcp {
        say.line(format_args!("  TCP         {tcp}"));
    }
    say.line(format_args!("  gRPC        logic {}, gateway {}", a.logic_grpc, a.gateway_grpc));
    say.line(format_args!("  gateway     {} shards, {} driver", up.gateway.shards, up.gateway.driver.name()));
    let admin = [
        ("gateway", up.gateway.admin_addr),
        ("control", up.control.admin_addr),
        ("worker", up.worker.admin_addr),
    ];
    for (role, addr) in admin {
        if let Some(addr) = addr {
            say.line(format_args!("  metrics     {role} http://{addr}/metrics"));
        }
    }
    say.line(format_args!("  demo users  demo, test, admin (password 111111)"));
}
