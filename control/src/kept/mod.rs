//! Private messages kept for their user until a client of theirs acknowledges them (op 12),
//! bounded per user, per sender of each user's, in age, and (in memory) in all: delivered live
//! when the user is online, and again when a client connects, so a client that acknowledges
//! gets every message at least once. A client that does not acknowledge (gochat's)
//! acknowledges by receiving: the gateway says so when it writes a message to one, and messages
//! handed to one at connect are dropped at once.
//!
//! Two stores behind one interface ([`KeptStore`]), following the state store:
//! [`MemoryKeptStore`] in this process (the embedded default) and [`RedisKeptStore`], shared by
//! several controls. The config keys that bound them are `inbox_size`, `inbox_per_sender`,
//! `inbox_max_bytes` and `inbox_ttl_secs`, and the Redis keys end in `:inbox`: names of
//! existing files and stores, kept as they are.

mod memory;
mod redis;

use std::time::Duration;

use gochat_proto::logic::Pending;
pub use memory::MemoryKeptStore;
pub use redis::RedisKeptStore;

use crate::state::StateError;

/// Most messages, and bytes of them, handed to a client at once (at connect, or after an
/// acknowledgement): the rest follow as it acknowledges.
pub const CHUNK_MESSAGES: usize = 100;
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// How many private messages are kept, per user and in all.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages per user (0: none kept; a message to an offline user is refused).
    pub size: usize,
    /// Of those, from one sender (0: no share), so one sender cannot fill what a user is kept.
    pub per_sender: usize,
    /// Bytes of messages kept over every user, in this process's memory (0: no bound; on
    /// Redis, its `maxmemory` is the bound).
    pub max_bytes: usize,
    /// Messages older than this are dropped.
    pub max_age: Duration,
}

/// Kept messages handed to a client, oldest first, and how many more are kept.
///
/// One concept under three names: `Kept` here and in the gateway (`gochat_gateway::shard::Kept`,
/// the bodies and `more`), and `Pending` on the wire (`logic.proto`), a name the gRPC contract
/// and its previous release keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub bodies: Vec<Vec<u8>>,
    pub ids: Vec<u64>,
    pub more: u32,
}

impl From<Kept> for Pending {
    fn from(k: Kept) -> Self {
        Self { bodies: k.bodies, ids: k.ids, more: k.more }
    }
}

/// Why a message was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    /// The user has `size` messages kept.
    Full,
    /// The user has `per_sender` messages kept from this sender.
    SenderShare,
    /// The sender's messages kept for every user take its share of the store's `max_bytes`.
    SenderTotal,
    /// The store holds `max_bytes` of messages.
    StoreFull,
}

/// Where kept messages are: nowhere (`inbox_size = 0`), in memory, or on Redis.
pub enum KeptStore {
    Off,
    Memory(MemoryKeptStore),
    Redis(RedisKeptStore),
}

impl KeptStore {
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// Bytes of messages kept, over every user, when in this process.
    pub fn bytes(&self) -> Option<usize> {
        match self {
            Self::Memory(i) => Some(i.bytes()),
            _ => None,
        }
    }

    /// Keeps message `id` from user `from` for `user_id` until acknowledged.
    pub async fn keep(
        &self,
        user_id: u64,
        from: u64,
        id: u64,
        body: &[u8],
    ) -> Result<Result<(), NotKept>, StateError> {
        match self {
            Self::Off => Ok(Err(NotKept::Full)),
            Self::Memory(i) => Ok(i.keep(user_id, from, id, body)),
            Self::Redis(i) => i.keep(user_id, from, id, body).await,
        }
    }

    /// The oldest kept messages after `after` (an id; 0: from the start), a chunk of them;
    /// `take`: they are handed to a client that does not acknowledge, so dropped at once.
    pub async fn chunk(&self, user_id: u64, after: u64, take: bool) -> Result<Kept, StateError> {
        match self {
            Self::Off => Ok(Kept::default()),
            Self::Memory(i) => Ok(i.chunk(user_id, after, take)),
            Self::Redis(i) => i.chunk(user_id, after, take).await,
        }
    }

    /// A client of the user has these messages: they are kept no more.
    pub async fn ack(&self, user_id: u64, ids: &[u64]) -> Result<(), StateError> {
        match self {
            Self::Off => Ok(()),
            Self::Memory(i) => {
                i.ack(user_id, ids);
                Ok(())
            }
            Self::Redis(i) => i.ack(user_id, ids).await,
        }
    }
}

/// The first kept messages of `kept` (ids ascending) after `after`, up to a chunk, and how
/// many more there are.
fn take_chunk<'a>(kept: impl Iterator<Item = (u64, &'a [u8])>, after: u64) -> Kept {
    let mut chunk = Kept::default();
    let mut bytes = 0;
    for (id, body) in kept.filter(|(id, _)| *id > after) {
        let full =
            chunk.ids.len() == CHUNK_MESSAGES || (bytes + body.len() > CHUNK_BYTES && !chunk.ids.is_empty());
        if full {
            chunk.more += 1;
            continue;
        }
        bytes += body.len();
        chunk.ids.push(id);
        chunk.bodies.push(body.to_vec());
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_in_count_and_bytes() {
        let small: Vec<(u64, Vec<u8>)> = (1..=150).map(|id| (id, vec![b'x'; 10])).collect();
        let c = take_chunk(small.iter().map(|(id, b)| (*id, b.as_slice())), 0);
        assert_eq!((c.ids.len(), c.ids[0], c.more), (CHUNK_MESSAGES, 1, 50));
        let c = take_chunk(small.iter().map(|(id, b)| (*id, b.as_slice())), 120);
        assert_eq!((c.ids.len(), c.ids[0], c.more), (30, 121, 0));
        let big: Vec<(u64, Vec<u8>)> = (1..=3).map(|id| (id, vec![b'x'; 40_000])).collect();
        let c = take_chunk(big.iter().map(|(id, b)| (*id, b.as_slice())), 0);
        assert_eq!((c.ids, c.more), (vec![1], 2), "one at least, however big");
    }
}
