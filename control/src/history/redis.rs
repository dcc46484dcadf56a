//! Room history on Redis: a stream per room holding its last messages (`{r:id}:history`,
//! entries `s` = seq, `b` = body) and a hash with its epoch and last seq
//! (`{r:id}:history:meta`), in the room's hash slot (the tag its state keys have). Appending is one script, so controls sharing a room number its
//! messages in turn and the stream is in seq order; both keys expire when the room has been
//! quiet for the age limit, and the next message starts a new epoch.

use gochat_proto::wire::Position;
use gochat_runtime::redis::RedisConn;
use redis::Script;

use super::{new_epoch, recover, Limits, Recovery};
use crate::state::{numbered, room_key, StateError};

/// What both scripts do first: the room's epoch and top, a new epoch when there is none.
/// KEYS: meta, stream. ARGV[1]: an epoch to start, ARGV[2]: the age limit in ms.
const META: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', now - tonumber(ARGV[2]))
";

/// ARGV[3]: the body without its closing brace, ARGV[4]: messages kept. {seq, epoch, body}.
const APPEND: &str = r#"
local seq = redis.call('HINCRBY', KEYS[1], 'top', 1)
local body = ARGV[3] .. ',"seq":' .. seq .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 's', seq, 'b', body)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {seq, epoch, body}
"#;

/// ARGV[3]: an epoch ('' for any), ARGV[4]: a seq, ARGV[5]: most messages. The newest
/// messages after that seq when the epoch is the room's: {epoch, top, {seq, body, …}},
/// oldest first.
const READ: &str = r"
local top = tonumber(redis.call('HGET', KEYS[1], 'top'))
local count = 0
if ARGV[3] == '' or ARGV[3] == epoch then
  count = math.min(top - tonumber(ARGV[4]), tonumber(ARGV[5]))
end
local out = {}
if count > 0 then
  local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', count)
  for i = #entries, 1, -1 do
    local f = entries[i][2]
    table.insert(out, f[2])
    table.insert(out, f[4])
  end
end
return {epoch, top, out}
";

pub struct RedisHistory {
    conn: RedisConn,
    prefix: String,
    limits: Limits,
    append: Script,
    read: Script,
}

impl RedisHistory {
    /// History on the Redis `conn` already reaches, under `prefix`.
    pub fn new(conn: RedisConn, prefix: &str, limits: Limits) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            limits,
            append: Script::new(&[META, APPEND].concat()),
            read: Script::new(&[META, READ].concat()),
        }
    }

    /// `script` on the room's meta and stream keys, with an epoch to start and the age limit
    /// (`META`'s KEYS and ARGV).
    fn on_room<'a>(&self, script: &'a Script, room_id: u64) -> redis::ScriptInvocation<'a> {
        let stream = room_key(&self.prefix, room_id, "history");
        let mut call = script.prepare_invoke();
        call.key(format!("{stream}:meta")).key(stream).arg(new_epoch()).arg(self.age_ms());
        call
    }

    fn age_ms(&self) -> u64 {
        self.limits.max_age.as_millis().max(1) as u64
    }

    pub async fn append(&self, room_id: u64, body: &[u8]) -> Result<(Position, Vec<u8>), StateError> {
        let open = body.strip_suffix(b"}").unwrap_or(body);
        let (seq, epoch, body): (u64, String, Vec<u8>) = self
            .on_room(&self.append, room_id)
            .arg(open)
            .arg(self.limits.size)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok((Position { epoch, seq }, body))
    }

    /// The room's position and up to `max` of its newest messages after `after` (in `epoch`,
    /// or any when None), oldest first.
    async fn read(
        &self,
        room_id: u64,
        epoch: Option<&str>,
        after: u64,
        max: usize,
    ) -> Result<(Position, Vec<(u64, Vec<u8>)>), StateError> {
        let (epoch, top, flat): (String, u64, Vec<Vec<u8>>) = self
            .on_room(&self.read, room_id)
            .arg(epoch.unwrap_or(""))
            .arg(after)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        let messages = numbered(&flat).map(|(seq, body)| (seq, body.to_vec())).collect();
        Ok((Position { epoch, seq: top }, messages))
    }

    pub async fn join(&self, room_id: u64, since: Option<&Position>) -> Result<Recovery, StateError> {
        let Some(since) = since else {
            let (position, _) = self.read(room_id, Some(""), 0, 0).await?;
            return Ok(Recovery { position, recovered: None, bodies: Vec::new() });
        };
        // The ones after `since`, if they are all still kept: one more than the store keeps
        // means some are gone.
        let (position, messages) =
            self.read(room_id, Some(&since.epoch), since.seq, self.limits.size + 1).await?;
        let oldest = messages.first().map(|(seq, _)| *seq);
        let (recovered, bodies) = recover(&position, Some(since), oldest, messages.into_iter());
        Ok(Recovery { position, recovered, bodies })
    }

    pub async fn latest(&self, room_id: u64, limit: usize) -> Result<(Position, Vec<Vec<u8>>), StateError> {
        let (position, messages) = self.read(room_id, None, 0, limit).await?;
        Ok((position, messages.into_iter().map(|(_, body)| body).collect()))
    }
}
