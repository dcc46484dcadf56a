//! Gateways a worker pushes to: where they are (static discovery for now) and one long-lived
//! `Push` stream each.

use std::collections::HashMap;
use std::time::Duration;

use gochat_proto::gateway::gateway_client::GatewayClient;
use gochat_proto::gateway::PushBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// A gateway's id and gRPC endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAddr {
    pub id: String,
    /// e.g. `http://127.0.0.1:7100`
    pub grpc: String,
}

/// One push stream per known gateway.
pub struct GatewayPool {
    links: HashMap<String, mpsc::Sender<PushBatch>>,
}

impl GatewayPool {
    pub fn new(gateways: &[GatewayAddr]) -> Result<Self, crate::Error> {
        let mut links = HashMap::new();
        for g in gateways {
            let endpoint = Endpoint::from_shared(g.grpc.clone())
                .map_err(|e| crate::Error::Config(format!("gateway {} address {:?}: {e}", g.id, g.grpc)))?
                .connect_timeout(Duration::from_secs(2));
            let (tx, rx) = mpsc::channel(256);
            tokio::spawn(link(g.id.clone(), endpoint, rx));
            links.insert(g.id.clone(), tx);
        }
        Ok(Self { links })
    }

    /// Queues `batch` on the stream to `gateway`; false when the gateway is unknown.
    pub async fn send(&self, gateway: &str, batch: PushBatch) -> bool {
        match self.links.get(gateway) {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        }
    }
}

/// Keeps a `Push` stream open to one gateway, reconnecting with backoff. A batch that fails to
/// go out is retried on the next stream.
async fn link(id: String, endpoint: Endpoint, mut batches: mpsc::Receiver<PushBatch>) {
    let mut pending: Option<PushBatch> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        if pending.is_none() {
            match batches.recv().await {
                Some(b) => pending = Some(b),
                None => return,
            }
        }
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(gateway = %id, error = %e, "gateway unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<PushBatch>(64);
        let mut client = GatewayClient::new(channel);
        let mut acks = match client.push(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(gateway = %id, %status, "push stream refused; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        // Only an accepted stream takes the batch that waited for it.
        if let Some(b) = pending.take() {
            if let Err(e) = tx.send(b).await {
                pending = Some(e.0);
                continue;
            }
        }
        backoff = Duration::from_millis(50);
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(b) => {
                        if let Err(e) = tx.send(b).await {
                            pending = Some(e.0);
                            break;
                        }
                    }
                    None => return,
                },
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => tracing::trace!(gateway = %id, batch = ack.batch_id, "batch acknowledged"),
                    Ok(None) | Err(_) => {
                        tracing::warn!(gateway = %id, "push stream closed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}
