//! The layout of message ids (snowflakes): 41 bits of milliseconds since 2025-01-01, 10 bits
//! of node, 12 bits of sequence. Control stamps them; workers and gateways read the time back
//! to measure how long a message took to get to them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2025-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_735_689_600_000;
pub const NODE_BITS: u32 = 10;
pub const SEQ_BITS: u32 = 12;
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// When the message with this id was created, in Unix milliseconds; 0 for id 0 (no id).
pub fn unix_ms(id: u64) -> u64 {
    match id {
        0 => 0,
        id => (id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS,
    }
}

/// How old the message with this id is at `now`; `None` for id 0. Ids carry whole
/// milliseconds, so an age is up to 1 ms long; a clock behind the stamping control's gives 0.
pub fn age(id: u64, now: SystemTime) -> Option<Duration> {
    if id == 0 {
        return None;
    }
    let created = UNIX_EPOCH + Duration::from_millis(unix_ms(id));
    Some(now.duration_since(created).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_carries_its_creation_time() {
        let ms = 1_760_000_000_123;
        let id = ((ms - EPOCH_MS) << (NODE_BITS + SEQ_BITS)) | (7 << SEQ_BITS) | 42;
        assert_eq!(unix_ms(id), ms);
        assert_eq!(unix_ms(0), 0, "no id, no time");
        let created = UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(age(id, created + Duration::from_millis(250)), Some(Duration::from_millis(250)));
        assert_eq!(age(id, created - Duration::from_secs(1)), Some(Duration::ZERO), "a clock behind");
        assert_eq!(age(0, created), None);
    }
}
