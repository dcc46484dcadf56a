//! Where the other roles are: a member set that discovery keeps current (id → gRPC address),
//! and gRPC channels that follow it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// Members of one role: id → gRPC address (e.g. `http://127.0.0.1:7100`), updated as members
/// come and go.
pub type Members = watch::Receiver<BTreeMap<String, String>>;

/// An endpoint with the timeouts every role-to-role call uses, and no Nagle delay (a small
/// call written behind another would wait for the peer's delayed acknowledgement, ~40 ms);
/// connects on first use.
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(address.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

/// One channel to a single address, connecting lazily (the caller starts, and keeps serving,
/// while the peer is away).
pub fn channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(address)?.connect_lazy())
}

/// One channel balanced over every member, following the set as it changes. Calls wait while
/// the set is empty.
pub fn balanced_channel(mut members: Members) -> Channel {
    let (channel, changes) = Channel::balance_channel::<String>(16);
    tokio::spawn(async move {
        let mut current: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let next = members.borrow_and_update().clone();
            for (id, address) in &current {
                if next.get(id) != Some(address) && changes.send(Change::Remove(id.clone())).await.is_err() {
                    return;
                }
            }
            for (id, address) in &next {
                if current.get(id) == Some(address) {
                    continue;
                }
                match endpoint(address) {
                    Ok(e) => {
                        if changes.send(Change::Insert(id.clone(), e)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(%id, %address, error = %e, "member has an unusable address"),
                }
            }
            current = next;
            if members.changed().await.is_err() {
                return;
            }
        }
    });
    channel
}

/// Connections accepted on `listener`, for a gRPC server, with no Nagle delay (tonic sets it
/// only on listeners it binds itself): a reply written behind another waited for the caller's
/// delayed acknowledgement, ~40 ms. An accept error (out of descriptors, above all) pauses
/// accepting for a while instead of being retried at once, which would spin a core for as long
/// as the condition lasts.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let mut pause = Duration::from_millis(10);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((Ok(stream), listener));
                }
                Err(e) => {
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "gRPC accept paused");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    })
}
