//! Message ids: 64 bits, unique across controls and roughly time-ordered (the snowflake
//! layout of [`gochat_proto::ids`]): 41 bits of milliseconds since 2025-01-01, 10 bits of node,
//! 12 bits of sequence.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub use gochat_proto::ids::MAX_NODE;
use gochat_proto::ids::{EPOCH_MS, NODE_BITS, SEQ_BITS};

/// Now, in milliseconds since the Unix epoch (0 for a clock set before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) struct MessageIds {
    node: u64,
    /// (millisecond, sequence) of the last id handed out.
    last: Mutex<(u64, u64)>,
}

impl MessageIds {
    /// `node` must differ between the controls of a cluster; at most [`MAX_NODE`].
    pub(crate) fn new(node: u16) -> Self {
        assert!(node <= MAX_NODE, "node {node} above {MAX_NODE}");
        Self { node: u64::from(node), last: Mutex::new((0, 0)) }
    }

    pub(crate) fn next(&self) -> u64 {
        let now = unix_ms().saturating_sub(EPOCH_MS);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if now > last.0 {
            *last = (now, 0);
        } else {
            // Same millisecond, or the clock stepped back: count on from the last id, borrowing
            // the next millisecond when the sequence is used up, so ids never repeat.
            last.1 += 1;
            if last.1 == 1 << SEQ_BITS {
                *last = (last.0 + 1, 0);
            }
        }
        (last.0 << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | last.1
    }
}

/// The smallest id of a message made at Unix millisecond `unix_ms` or later: ids below it are
/// of earlier messages.
pub fn first_at(unix_ms: u64) -> u64 {
    unix_ms.saturating_sub(EPOCH_MS) << (NODE_BITS + SEQ_BITS)
}

/// A node number from a control's id, for configs that do not set one.
pub fn node_of(id: &str) -> u16 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash =
        id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % (u64::from(MAX_NODE) + 1)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_the_node() {
        let ids = MessageIds::new(5);
        let mut prev = 0;
        for _ in 0..10_000 {
            let id = ids.next();
            assert!(id > prev, "{id} after {prev}");
            assert_eq!((id >> SEQ_BITS) & u64::from(MAX_NODE), 5);
            prev = id;
        }
        assert_ne!(MessageIds::new(6).next() & !0xfff, ids.next() & !0xfff, "nodes differ");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let stamped = gochat_proto::ids::unix_ms(ids.next());
        assert!(stamped.abs_diff(now) < 1000, "an id tells when it was made: {stamped} vs {now}");
    }

    #[test]
    fn ids_sort_after_the_first_id_of_their_time() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let id = MessageIds::new(MAX_NODE).next();
        assert!(id >= first_at(before));
        assert!(id < first_at(before + 60_000));
        assert_eq!(first_at(0), 0);
    }

    #[test]
    fn node_of_is_stable_and_spreads() {
        assert_eq!(node_of("control-1"), node_of("control-1"));
        assert_ne!(node_of("control-1"), node_of("control-2"));
    }
}
