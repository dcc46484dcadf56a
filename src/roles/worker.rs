//! `gochat worker`: a queue-worker on a shared queue; and the handle of a running worker, which
//! `gochat control` (with the in-process queue) and `gochat up` run too.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use gochat_proto::config_format;
use gochat_queue::{Queue, QueueKind};
use gochat_queue_worker::Worker;
use gochat_runtime::metrics::Exporter;
use gochat_runtime::peers;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{shutdown_signal, until_stopped, Reloader, Say};
use crate::discovery::{self, DiscoveryKind, Registration, Role};
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
                let ready = gochat_runtime::metrics::ready(move || std::future::ready(readiness()));
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

/// A queue-worker that finds logic and the gateways the configured way: listed in `[worker]`,
/// or followed in etcd.
pub(super) async fn from_config(cfg: &Config, queue: Arc<dyn Queue>) -> anyhow::Result<Worker> {
    Ok(match cfg.discovery.kind {
        DiscoveryKind::Static => Worker::new(cfg.worker.clone(), queue)?,
        DiscoveryKind::Etcd => {
            let controls = discovery::watch(&cfg.discovery, Role::Control).await?;
            let gateways = discovery::watch(&cfg.discovery, Role::Gateway).await?;
            queue.share_with(&cfg.worker.id, discovery::watch(&cfg.discovery, Role::Worker).await?);
            Worker::with_peers(cfg.worker.clone(), queue, peers::balanced_channel(controls), gateways)?
        }
    })
}

/// `gochat worker`: reads the shared queue until Ctrl-C or SIGTERM.
pub async fn run(mut cfg: Config, mut reloader: Reloader, say: Say) -> anyhow::Result<()> {
    if cfg.queue.kind == QueueKind::Memory {
        anyhow::bail!(
            "a standalone worker needs a shared queue: set [queue] kind = \"redis\"; the in-process \
             queue is only reachable from `gochat up` and `gochat control`, which run their own worker"
        );
    }
    let queue = cfg.queue.open().await?;
    let worker =
        WorkerHandle::start(from_config(&cfg, queue.clone()).await?, cfg.worker.admin_listen).await?;
    // Workers take no calls: their entry says which process holds the id.
    let whoami = format!("pid:{}", std::process::id());
    let registration = Registration::start(&cfg.discovery, Role::Worker, &cfg.worker.id, &whoami).await?;
    say.line(format_args!(
        "worker reading {} stream(s) at {}",
        cfg.queue.redis.streams,
        config_format::redact_url(&cfg.queue.redis.url)
    ));
    // A worker takes nothing from a reload; what changed is named as needing a restart.
    until_stopped(shutdown_signal(), &mut reloader, &mut cfg, |_| std::future::ready(())).await;
    registration.shutdown().await;
    worker.shutdown().await;
    Ok(())
}
