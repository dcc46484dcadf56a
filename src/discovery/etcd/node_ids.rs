//! Node ids for message ids: `{prefix}/node-ids/{n}` = the control's id, created on its lease
//! only where no key exists (see the module doc of `discovery`).

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use gochat_control::ids::MAX_NODE;

use super::{call, read_members, RPC_TIMEOUT};

/// `{prefix}/node-ids/`: where node ids are claimed.
pub(super) fn node_id_dir(prefix: &str) -> String {
    format!("{}/node-ids/", prefix.trim_end_matches('/'))
}

/// The numbers to try for a node id, in order: `preferred`, then up, wrapping at 1024.
fn node_id_candidates(preferred: u16) -> impl Iterator<Item = u16> {
    (0..=MAX_NODE).map(move |k| (preferred + k) % (MAX_NODE + 1))
}

/// Puts `key` = `value` on `lease` if `key` does not exist; returns whether it did.
async fn create_on_lease(client: &mut Client, key: &str, value: &str, lease: i64) -> anyhow::Result<bool> {
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        value,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    Ok(call("txn", RPC_TIMEOUT, client.txn(txn)).await?.succeeded())
}

/// Claims, for `id` on `lease`, the first number from `preferred` on that has no key in
/// `dir`. Numbers seen taken are skipped; one taken between the read and the claim moves
/// on to the next.
pub(super) async fn claim_free_node_id(
    client: &mut Client,
    dir: &str,
    id: &str,
    lease: i64,
    preferred: u16,
) -> anyhow::Result<u16> {
    let (taken, _) = read_members(client, dir).await?;
    for n in node_id_candidates(preferred) {
        let number = n.to_string();
        if !taken.contains_key(&number)
            && create_on_lease(client, &format!("{dir}{number}"), id, lease).await?
        {
            return Ok(n);
        }
    }
    anyhow::bail!("every node id (0-{MAX_NODE}) is taken under {dir}")
}

/// Puts the node id `key` = `id` on `lease` if the number is free, or still on one of `ours`
/// (this member's leases before); false if another member holds it now.
pub(super) async fn reclaim_node_id(
    client: &mut Client,
    key: &str,
    id: &str,
    lease: i64,
    ours: &[i64],
) -> anyhow::Result<bool> {
    if create_on_lease(client, key, id, lease).await? {
        return Ok(true);
    }
    for &old in ours {
        let txn = Txn::new().when([Compare::lease(key, CompareOp::Equal, old)]).and_then([TxnOp::put(
            key,
            id,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        if call("txn", RPC_TIMEOUT, client.txn(txn)).await?.succeeded() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_tried_from_the_preferred_one_round_the_ring() {
        assert_eq!(node_id_dir("/gochat/"), "/gochat/node-ids/");
        let order: Vec<u16> = node_id_candidates(1022).collect();
        assert_eq!(order.len(), 1024);
        assert_eq!(order[..4], [1022, 1023, 0, 1]);
        assert_eq!(order[1023], 1021);
        let mut all = order.clone();
        all.sort_unstable();
        assert!(all.iter().copied().eq(0..=MAX_NODE), "each number once");
    }
}
