//! Starting roles. `up` runs control, a queue-worker and a gateway in one process with the
//! in-process queue, static discovery and SQLite; they still talk through gRPC as in a cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use gochat_control::{Control, ControlHandle};
use gochat_gateway::{Gateway, GatewayHandle};
use gochat_proto::metrics::Exporter;
use gochat_queue::Queue;
use gochat_queue_worker::gateways::GatewayAddr;
use gochat_queue_worker::Worker;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Config;

/// A running in-process queue-worker.
pub struct WorkerHandle {
    /// Where `/metrics` is served, when `admin_listen` is on.
    pub admin_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    admin: Option<Exporter>,
}

impl WorkerHandle {
    /// Runs `worker`, serving its metrics on `admin_listen` when set.
    pub async fn start(worker: Worker, admin_listen: Option<SocketAddr>) -> anyhow::Result<Self> {
        let admin = match admin_listen {
            Some(addr) => {
                let metrics = worker.metrics();
                let readiness = Arc::new(worker.readiness());
                let ready = gochat_proto::metrics::ready(move || std::future::ready(readiness()));
                let exporter = Exporter::start(addr, "worker", move || metrics.render(), ready).await;
                Some(exporter.with_context(|| format!("worker admin_listen {addr}"))?)
            }
            None => None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        Ok(Self { admin_addr: admin.as_ref().map(|a| a.addr), stop, task, admin })
    }

    pub async fn shutdown(self) {
        drop(self.admin);
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

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
