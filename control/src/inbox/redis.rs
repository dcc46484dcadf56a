//! Kept private messages on Redis: per user a sorted set of message ids (all scored 0, so they
//! sort as their zero-padded text, which is their order) and a hash id → body. Message ids
//! carry their time, so expiry drops the ids below the first id of the oldest time kept.

use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::Script;

use super::{take_chunk, Chunk, Full, Limits, CHUNK_MESSAGES};
use crate::ids;
use crate::state::StateError;

/// KEYS: ids, bodies. ARGV[1]: the first id still kept (older ones expire). Drops expired ones.
const EXPIRE: &str = r"
local old = redis.call('ZRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[1])
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
";

/// ARGV[2]: id, ARGV[3]: body, ARGV[4]: most kept, ARGV[5]: age limit in ms. 0 when full.
const KEEP: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], 0, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
";

/// ARGV[2]: the range start ('-', or '(' and an id), ARGV[3]: most ids. {count after the
/// start, {id, body, …}}.
const READ: &str = r"
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    table.insert(out, id)
    table.insert(out, body)
  end
end
return {redis.call('ZLEXCOUNT', KEYS[1], ARGV[2], '+'), out}
";

pub struct RedisInbox {
    conn: ConnectionManager,
    prefix: String,
    limits: Limits,
    keep: Script,
    read: Script,
}

/// An id as the member text that sorts as the id does.
fn member(id: u64) -> String {
    format!("{id:020}")
}

impl RedisInbox {
    /// Kept messages on the Redis `conn` already reaches, under `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str, limits: Limits) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            limits,
            keep: Script::new(&[EXPIRE, KEEP].concat()),
            read: Script::new(&[EXPIRE, READ].concat()),
        }
    }

    fn keys(&self, user_id: u64) -> (String, String) {
        let ids = format!("{}:user:{user_id}:inbox", self.prefix);
        (ids.clone(), format!("{ids}:bodies"))
    }

    /// The first id of a message young enough to keep.
    fn oldest_kept(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        member(ids::first_at(now.saturating_sub(self.limits.max_age.as_millis() as u64)))
    }

    pub async fn keep(&self, user_id: u64, id: u64, body: &[u8]) -> Result<Result<(), Full>, StateError> {
        let (ids, bodies) = self.keys(user_id);
        let kept: i64 = self
            .keep
            .key(ids)
            .key(bodies)
            .arg(self.oldest_kept())
            .arg(member(id))
            .arg(body)
            .arg(self.limits.size)
            .arg(self.limits.max_age.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok(if kept == 1 { Ok(()) } else { Err(Full) })
    }

    pub async fn chunk(&self, user_id: u64, after: u64, take: bool) -> Result<Chunk, StateError> {
        let (ids, bodies) = self.keys(user_id);
        let start = if after == 0 { "-".to_string() } else { format!("({}", member(after)) };
        let (count, flat): (u32, Vec<Vec<u8>>) = self
            .read
            .key(&ids)
            .key(&bodies)
            .arg(self.oldest_kept())
            .arg(start)
            .arg(CHUNK_MESSAGES)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        let read: Vec<(u64, &[u8])> = flat
            .chunks(2)
            .filter_map(|pair| {
                Some((std::str::from_utf8(&pair[0]).ok()?.parse().ok()?, pair.get(1)?.as_slice()))
            })
            .collect();
        let mut chunk = take_chunk(read.iter().copied(), after);
        chunk.more = count.saturating_sub(chunk.ids.len() as u32);
        if take && !chunk.ids.is_empty() {
            self.ack(user_id, &chunk.ids).await?;
        }
        Ok(chunk)
    }

    pub async fn ack(&self, user_id: u64, message_ids: &[u64]) -> Result<(), StateError> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let (ids, bodies) = self.keys(user_id);
        let members: Vec<String> = message_ids.iter().map(|id| member(*id)).collect();
        redis::pipe()
            .zrem(ids, &members)
            .ignore()
            .hdel(bodies, &members)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StateError::from)
    }
}
