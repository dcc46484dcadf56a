//! `gochat control`: the REST API, the logic gRPC service and the page, registered in discovery,
//! with an in-process queue-worker when the queue is the in-process one.

use std::sync::Arc;

use gochat_control::{Control, ControlHandle};
use gochat_queue::{Queue, QueueKind};

use super::worker::{self, WorkerHandle};
use super::{advertised, shutdown_signal, until_stopped, Reloader, Say};
use crate::discovery::{DiscoveryKind, Registration, Role};
use crate::Config;

/// `gochat control`: serves until Ctrl-C or SIGTERM, or until the node id it claimed in etcd
/// is taken by another control (an error, so that a supervisor restarts it).
pub async fn run(mut cfg: Config, mut reloader: Reloader, say: Say) -> anyhow::Result<()> {
    cfg.control.demo_users.get_or_insert(false);
    let queue = cfg.queue.open().await?;
    let (control, registration) = start(&mut cfg, queue.clone(), say).await?;
    // The in-process queue is only reachable from this process: run its worker here.
    let worker = match cfg.queue.kind {
        QueueKind::Memory => Some(
            WorkerHandle::start(worker::from_config(&cfg, queue.clone()).await?, cfg.worker.admin_listen)
                .await?,
        ),
        QueueKind::Redis => None,
    };
    say.line(format_args!(
        "control listening: REST {}://{}, logic gRPC {}, page {:?}{}",
        if control.https() { "https" } else { "http" },
        control.api_addr,
        control.grpc_addr,
        control.site_addr,
        if worker.is_some() { " (with an in-process queue-worker)" } else { "" }
    ));
    let stop = async {
        tokio::select! {
            _ = shutdown_signal() => false,
            _ = registration.node_id_lost() => true,
        }
    };
    let node_id_lost = until_stopped(stop, &mut reloader, &mut cfg, |c| {
        control.reconfigure(&c.control);
        std::future::ready(())
    })
    .await;
    registration.shutdown().await;
    if let Some(worker) = worker {
        worker.shutdown().await;
    }
    queue.close();
    control.shutdown().await;
    if node_id_lost {
        // Going on would stamp ids another control stamps too; a restart claims afresh.
        anyhow::bail!(
            "node id {} was taken by another control while this one was cut off from etcd; \
             stopped so that a restart claims a free one",
            cfg.control.node_id.unwrap_or_default()
        );
    }
    Ok(())
}

/// Starts control and registers its gRPC address, under the lease its node id was claimed on
/// when it claimed one.
async fn start(
    cfg: &mut Config,
    queue: Arc<dyn Queue>,
    say: Say,
) -> anyhow::Result<(ControlHandle, Registration)> {
    let claimed = claim_node_id(cfg, say).await?;
    let control = match Control::start(cfg.control.clone(), queue).await {
        Ok(control) => control,
        Err(e) => {
            // Free the claimed number now rather than when the lease runs out.
            if let Some(registration) = claimed {
                registration.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let advertise = advertised(cfg.control.grpc_advertise.as_deref(), control.grpc_addr);
    let registration = match claimed {
        Some(registration) => {
            registration.announce(&advertise).await?;
            registration
        }
        None => Registration::start(&cfg.discovery, Role::Control, &cfg.control.id, &advertise).await?,
    };
    Ok((control, registration))
}

/// Without a configured node id, claims one in etcd under the lease this control then
/// registers with (its message ids carry the number from the first one), and sets it in `cfg`.
async fn claim_node_id(cfg: &mut Config, say: Say) -> anyhow::Result<Option<Registration>> {
    match (cfg.discovery.kind, cfg.control.node_id) {
        (DiscoveryKind::Etcd, None) => {
            let (registration, node_id) =
                Registration::claim_node_id(&cfg.discovery, &cfg.control.id).await?;
            say.line(format_args!("control {} claimed node id {node_id} in etcd", cfg.control.id));
            cfg.control.node_id = Some(node_id);
            Ok(Some(registration))
        }
        _ => Ok(None),
    }
}
