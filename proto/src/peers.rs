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

/// An endpoint with the timeouts every role-to-role call uses; connects on first use.
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(address.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5)))
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
