//! Gateways a worker pushes to: where they are (static discovery for now) and one long-lived
//! `Push` stream each.

use std::collections::HashMap;
use std::time::Duration;

use gochat_proto::gateway::gateway_client::GatewayClient;
use gochat_proto::gateway::PushBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
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

/// A batch on its way, and who waits for the gateway's acknowledgement.
type Outgoing = (PushBatch, oneshot::Sender<()>);

/// One push stream per known gateway.
pub struct GatewayPool {
    links: HashMap<String, mpsc::Sender<Outgoing>>,
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

    /// Queues `batch` on the stream to `gateway`. The receiver completes when the gateway
    /// acknowledged the batch, and fails when it will not (the stream broke first). `None`
    /// when the gateway is unknown.
    pub async fn send(&self, gateway: &str, batch: PushBatch) -> Option<oneshot::Receiver<()>> {
        let tx = self.links.get(gateway)?;
        let (done, acked) = oneshot::channel();
        tx.send((batch, done)).await.ok()?;
        Some(acked)
    }
}

/// Keeps a `Push` stream open to one gateway, reconnecting with backoff. A batch that could not
/// go out is retried on the next stream; batches sent but not acknowledged when a stream breaks
/// are reported as not acknowledged, and the queue delivers them again.
async fn link(id: String, endpoint: Endpoint, mut batches: mpsc::Receiver<Outgoing>) {
    let mut pending: Option<Outgoing> = None;
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
        backoff = Duration::from_millis(50);
        let mut inflight: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
        let mut next = pending.take();
        loop {
            if let Some((batch, done)) = next.take() {
                let batch_id = batch.batch_id;
                match tx.send(batch).await {
                    Ok(()) => {
                        inflight.insert(batch_id, done);
                    }
                    Err(e) => {
                        // Only an accepted stream takes the batch that waited for it.
                        pending = Some((e.0, done));
                        break;
                    }
                }
            }
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(b) => next = Some(b),
                    None => return,
                },
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        if let Some(done) = inflight.remove(&ack.batch_id) {
                            let _ = done.send(());
                        }
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(gateway = %id, unacknowledged = inflight.len(), "push stream closed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}
