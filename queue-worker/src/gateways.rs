//! Gateways a worker pushes to: where they are (static, or followed in discovery) and one
//! long-lived `Push` stream each.

use std::collections::HashMap;
use std::time::Duration;

use gochat_proto::gateway::gateway_client::GatewayClient;
use gochat_proto::gateway::PushBatch;
use gochat_runtime::peers::{self, Members};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
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

/// One push stream per gateway discovery knows; links follow the member set.
pub struct GatewayPool {
    members: Members,
    /// gateway id → (its address, the link's queue).
    links: HashMap<String, (String, mpsc::Sender<Outgoing>)>,
}

impl GatewayPool {
    /// A pool over a fixed list (static discovery).
    pub fn fixed(gateways: &[GatewayAddr]) -> Result<Self, crate::Error> {
        for g in gateways {
            peers::endpoint(&g.grpc)
                .map_err(|e| crate::Error::Config(format!("gateway {} address {:?}: {e}", g.id, g.grpc)))?;
        }
        let set = gateways.iter().map(|g| (g.id.clone(), g.grpc.clone())).collect();
        let (keep, members) = watch::channel(set);
        // A fixed set never changes; the sender lives as long as the runtime.
        tokio::spawn(async move { keep.closed().await });
        Ok(Self::following(members))
    }

    /// A pool that follows `members` as gateways come and go.
    pub fn following(members: Members) -> Self {
        Self { members, links: HashMap::new() }
    }

    /// The gateways discovery knows, as they change.
    pub fn members(&self) -> Members {
        self.members.clone()
    }

    /// Brings the links in line with the member set: new gateways get a link, gone ones lose it
    /// (their link ends once its queue is drained).
    fn sync(&mut self) {
        let members = self.members.borrow_and_update();
        self.links.retain(|id, (address, _)| {
            let keep = members.get(id) == Some(address);
            if !keep {
                tracing::info!(gateway = %id, "gateway left discovery; its push stream ends");
            }
            keep
        });
        for (id, address) in members.iter() {
            if self.links.contains_key(id) {
                continue;
            }
            match peers::endpoint(address) {
                Ok(endpoint) => {
                    let (tx, rx) = mpsc::channel(256);
                    tokio::spawn(link(id.clone(), endpoint, rx));
                    self.links.insert(id.clone(), (address.clone(), tx));
                }
                Err(e) => {
                    tracing::warn!(gateway = %id, %address, error = %e, "gateway has an unusable address")
                }
            }
        }
    }

    /// Queues `batch` on the stream to `gateway`. The receiver completes when the gateway
    /// acknowledged the batch, and fails when it will not (the stream broke first, or the gateway
    /// cannot be reached). `None` when discovery does not know the gateway.
    pub async fn send(&mut self, gateway: &str, batch: PushBatch) -> Option<oneshot::Receiver<()>> {
        if self.members.has_changed().unwrap_or(false) || self.links.is_empty() {
            self.sync();
        }
        let (_, tx) = self.links.get(gateway)?;
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
                // Fail what waits now rather than hold the worker: the queue delivers it again,
                // routed afresh (the gateway may be gone, its users elsewhere).
                let mut failed = usize::from(pending.take().is_some());
                while batches.try_recv().is_ok() {
                    failed += 1;
                }
                tracing::warn!(gateway = %id, error = %e, failed, "gateway unreachable; retrying");
                // Batches that come while it is down fail at once (the queue delivers them
                // again): a worker waiting on a dead gateway would hold up every other one.
                let retry = tokio::time::sleep(backoff);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        () = &mut retry => break,
                        batch = batches.recv() => match batch {
                            Some(_failed) => {}
                            None => return,
                        },
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_for_a_dead_gateway_fail_at_once_while_it_backs_off() {
        // A port nothing listens on: connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dead = GatewayAddr { id: "g1".into(), grpc: format!("http://127.0.0.1:{port}") };
        let mut pool = GatewayPool::fixed(&[dead]).unwrap();
        let started = std::time::Instant::now();
        // Without failing early, these would wait out backoffs of 50 ms doubling to 2 s (5 s).
        for _ in 0..8 {
            let acked = pool.send("g1", PushBatch::default()).await.expect("g1 is known");
            assert!(acked.await.is_err(), "a batch for a dead gateway was acknowledged");
        }
        assert!(started.elapsed() < Duration::from_secs(2), "batches waited {:?}", started.elapsed());
    }
}
