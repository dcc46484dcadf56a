//! Room history: every room message gets the next number of its room (`seq`, within an
//! `epoch`), and the last ones are kept, bounded in count and age, so a client that reconnects
//! with the last position it saw gets what it missed, or is told it must reload.
//!
//! Two stores behind one interface, following the state store: [`MemoryHistory`] in this
//! process (the embedded default) and [`RedisHistory`] (a stream per room), shared by several
//! controls. A room's history that is lost or expires starts a new epoch, so a position of
//! the old one is never taken for the new one's.

mod memory;
mod redis;

use std::time::Duration;

use gochat_proto::logic::{Joined, RoomPosition};
use gochat_proto::wire::Position;
pub use memory::MemoryHistory;
pub use redis::RedisHistory;

use crate::state::StateError;

/// Most bytes of messages one recovery sends: a client that missed more reloads the room
/// (the gateway holds a connection's output to a quarter of a megabyte).
pub const RECOVER_MAX_BYTES: usize = 64 * 1024;

/// How much history each room keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages per room (0: no history).
    pub size: usize,
    /// Messages older than this are dropped; a room with no message for this long is forgotten.
    pub max_age: Duration,
    /// Bytes of messages kept over every room, in this process's memory (0: no bound; on
    /// Redis, its `maxmemory` is the bound): past it, the oldest messages go first, whatever
    /// their room.
    pub max_bytes: usize,
}

/// What a joining socket gets: where the room stands, and what it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub position: Position,
    /// Only when asked to recover: whether `bodies` are everything since the given position.
    pub recovered: Option<bool>,
    /// The missed messages, oldest first.
    pub bodies: Vec<Vec<u8>>,
}

impl From<Recovery> for Joined {
    fn from(r: Recovery) -> Self {
        Self { position: Some(RoomPosition::from(r.position)), recovered: r.recovered, bodies: r.bodies }
    }
}

pub enum History {
    Off,
    Memory(MemoryHistory),
    Redis(RedisHistory),
}

impl History {
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// Numbers `body` (a room message serialized without a position) as the room's next
    /// message and keeps it; returns its position and the body with it. With history off the
    /// body is returned as it is, with no position.
    pub async fn append(
        &self,
        room_id: u64,
        body: Vec<u8>,
    ) -> Result<(Option<Position>, Vec<u8>), StateError> {
        match self {
            Self::Off => Ok((None, body)),
            Self::Memory(h) => Ok(h.append(room_id, &body)).map(|(p, b)| (Some(p), b)),
            Self::Redis(h) => h.append(room_id, &body).await.map(|(p, b)| (Some(p), b)),
        }
    }

    /// Bytes of messages kept, over every room, when in this process.
    pub fn bytes(&self) -> Option<usize> {
        match self {
            Self::Memory(h) => Some(h.bytes()),
            _ => None,
        }
    }

    /// Where `room_id` stands for a socket joining it, with what it missed since `since`.
    pub async fn join(&self, room_id: u64, since: Option<&Position>) -> Result<Option<Recovery>, StateError> {
        match self {
            Self::Off => Ok(None),
            Self::Memory(h) => Ok(Some(h.join(room_id, since))),
            Self::Redis(h) => h.join(room_id, since).await.map(Some),
        }
    }

    /// The room's position and its last `limit` messages, oldest first (a client reloading).
    pub async fn latest(
        &self,
        room_id: u64,
        limit: usize,
    ) -> Result<Option<(Position, Vec<Vec<u8>>)>, StateError> {
        match self {
            Self::Off => Ok(None),
            Self::Memory(h) => Ok(Some(h.latest(room_id, limit))),
            Self::Redis(h) => h.latest(room_id, limit).await.map(Some),
        }
    }
}

/// A new epoch: 8 random hex digits.
fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The recovery for a client at `since` in a room at `position`, whose kept messages from
/// `oldest` on (none: no message kept) are `kept`, oldest first: every message after `since`,
/// or the verdict that the client must reload.
fn recover(
    position: &Position,
    since: Option<&Position>,
    oldest: Option<u64>,
    kept: impl Iterator<Item = (u64, Vec<u8>)>,
) -> (Option<bool>, Vec<Vec<u8>>) {
    let Some(since) = since else { return (None, Vec::new()) };
    if since.epoch != position.epoch || since.seq > position.seq {
        return (Some(false), Vec::new());
    }
    if since.seq == position.seq {
        return (Some(true), Vec::new());
    }
    // The first message missed must still be kept.
    if oldest.is_none_or(|oldest| oldest > since.seq + 1) {
        return (Some(false), Vec::new());
    }
    let (mut bodies, mut bytes) = (Vec::new(), 0);
    for (seq, body) in kept.filter(|(seq, _)| *seq > since.seq) {
        bytes += body.len();
        if bytes > RECOVER_MAX_BYTES {
            return (Some(false), Vec::new());
        }
        debug_assert!(seq > since.seq);
        bodies.push(body);
    }
    (Some(true), bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, seq: u64) -> Position {
        Position { epoch: epoch.into(), seq }
    }

    fn kept(seqs: std::ops::RangeInclusive<u64>) -> impl Iterator<Item = (u64, Vec<u8>)> {
        seqs.map(|s| (s, s.to_string().into_bytes()))
    }

    #[test]
    fn recovery_needs_the_same_epoch_and_the_first_missed_message() {
        let now = at("e", 10);
        assert_eq!(recover(&now, None, Some(5), kept(5..=10)), (None, vec![]), "not asked");
        assert_eq!(recover(&now, Some(&at("e", 10)), Some(5), kept(5..=10)), (Some(true), vec![]));
        let (ok, bodies) = recover(&now, Some(&at("e", 7)), Some(5), kept(5..=10));
        assert_eq!((ok, bodies), (Some(true), vec![b"8".to_vec(), b"9".to_vec(), b"10".to_vec()]));
        assert_eq!(recover(&now, Some(&at("e", 4)), Some(5), kept(5..=10)).0, Some(true), "5 is kept");
        assert_eq!(recover(&now, Some(&at("e", 3)), Some(5), kept(5..=10)).0, Some(false), "4 is gone");
        assert_eq!(recover(&now, Some(&at("other", 7)), Some(5), kept(5..=10)).0, Some(false));
        assert_eq!(recover(&now, Some(&at("e", 11)), Some(5), kept(5..=10)).0, Some(false), "ahead");
        assert_eq!(recover(&now, Some(&at("e", 7)), None, std::iter::empty()).0, Some(false), "all expired");
        let big = (1..=100u64).map(|s| (s, vec![b'x'; 1000]));
        assert_eq!(recover(&at("e", 100), Some(&at("e", 0)), Some(1), big).0, Some(false), "too much");
    }
}
