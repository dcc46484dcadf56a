//! Kept private messages on Redis: per user a sorted set of message ids (all scored 0, so they
//! sort as their zero-padded text, which is their order), a hash id → body, a hash id → sender
//! and a hash sender → how many it has kept. Message ids carry their time, so expiry drops the
//! ids below the first id of the oldest time kept. The four keys share the user's hash tag, so a
//! Redis Cluster runs each script on one node.

use gochat_runtime::redis::RedisConn;
use redis::Script;

use super::{take_chunk, Kept, Limits, NotKept, CHUNK_MESSAGES};
use crate::ids;
use crate::state::{numbered, user_key, StateError};

/// KEYS: ids, bodies, senders of ids, counts per sender. `forget` drops ids, and counts them
/// off their senders.
const LIB: &str = r"
local function forget(ids)
  for at = 1, #ids, 500 do
    local part = {unpack(ids, at, math.min(at + 499, #ids))}
    local from = redis.call('HMGET', KEYS[3], unpack(part))
    for _, s in ipairs(from) do
      if s and redis.call('HINCRBY', KEYS[4], s, -1) <= 0 then redis.call('HDEL', KEYS[4], s) end
    end
    redis.call('ZREM', KEYS[1], unpack(part))
    redis.call('HDEL', KEYS[2], unpack(part))
    redis.call('HDEL', KEYS[3], unpack(part))
  end
end
";

/// ARGV[1]: the first id still kept (older ones expire). Drops expired ones.
const EXPIRE: &str = r"
local old = redis.call('ZRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[1])
if #old > 0 then forget(old) end
";

/// ARGV[2]: id, ARGV[3]: body, ARGV[4]: most kept, ARGV[5]: age limit in ms, ARGV[6]: sender,
/// ARGV[7]: most kept from one sender (0: no share). 1 kept, 0 full, -1 the sender's share full.
const KEEP: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
local share = tonumber(ARGV[7])
if share > 0 and tonumber(redis.call('HGET', KEYS[4], ARGV[6]) or '0') >= share then return -1 end
redis.call('ZADD', KEYS[1], 0, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[6])
redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
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

/// ARGV: the ids acknowledged.
const ACK: &str = r"
forget(ARGV)
";

pub struct RedisKeptStore {
    conn: RedisConn,
    prefix: String,
    limits: Limits,
    keep: Script,
    read: Script,
    ack: Script,
}

/// An id as the member text that sorts as the id does.
fn member(id: u64) -> String {
    format!("{id:020}")
}

impl RedisKeptStore {
    /// Kept messages on the Redis `conn` already reaches, under `prefix`.
    pub fn new(conn: RedisConn, prefix: &str, limits: Limits) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            limits,
            keep: Script::new(&[LIB, EXPIRE, KEEP].concat()),
            read: Script::new(&[LIB, EXPIRE, READ].concat()),
            ack: Script::new(&[LIB, ACK].concat()),
        }
    }

    /// `script` on the user's ids, bodies, senders of ids and counts per sender (`LIB`'s KEYS).
    fn on_user<'a>(&self, script: &'a Script, user_id: u64) -> redis::ScriptInvocation<'a> {
        let ids = user_key(&self.prefix, user_id, "inbox");
        let mut call = script.prepare_invoke();
        call.key(&ids).key(format!("{ids}:bodies")).key(format!("{ids}:from")).key(format!("{ids}:senders"));
        call
    }

    /// The first id of a message young enough to keep.
    fn oldest_kept(&self) -> String {
        member(ids::first_at(ids::unix_ms().saturating_sub(self.limits.max_age.as_millis() as u64)))
    }

    pub async fn keep(
        &self,
        user_id: u64,
        from: u64,
        id: u64,
        body: &[u8],
    ) -> Result<Result<(), NotKept>, StateError> {
        let kept: i64 = self
            .on_user(&self.keep, user_id)
            .arg(self.oldest_kept())
            .arg(member(id))
            .arg(body)
            .arg(self.limits.size)
            .arg(self.limits.max_age.as_millis().max(1) as u64)
            .arg(from)
            .arg(self.limits.per_sender)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok(match kept {
            1 => Ok(()),
            -1 => Err(NotKept::SenderShare),
            _ => Err(NotKept::Full),
        })
    }

    pub async fn chunk(&self, user_id: u64, after: u64, take: bool) -> Result<Kept, StateError> {
        let start = if after == 0 { "-".to_string() } else { format!("({}", member(after)) };
        let (count, flat): (u32, Vec<Vec<u8>>) = self
            .on_user(&self.read, user_id)
            .arg(self.oldest_kept())
            .arg(start)
            .arg(CHUNK_MESSAGES)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        let mut chunk = take_chunk(numbered(&flat), after);
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
        // Each id once: `forget` counts every id it is given off its sender.
        let mut ids = message_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut call = self.on_user(&self.ack, user_id);
        for id in ids {
            call.arg(member(id));
        }
        call.invoke_async::<()>(&mut self.conn.clone()).await.map_err(StateError::from)
    }
}
