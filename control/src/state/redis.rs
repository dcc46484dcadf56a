//! The state on Redis, shared by every control of a cluster: one Redis (a primary with its
//! replicas) or a Redis Cluster, with the same keys and scripts.
//!
//! Every key names the entity it belongs to in a hash tag (`{g:…}` a gateway, `{u:…}` a user,
//! `{r:…}` a room), so each script touches the keys of one entity, in one hash slot. Keys (under
//! `prefix`), each small and read without scanning:
//! - `session:{token}`: `user_id \t user_name`, expiring with the session;
//! - `{g:gateway}:conns`: hash connection id → `user,room,shard[,room…]`, what a gateway holds
//!   (its first room, 0 once left, and the rooms it joined after), with a leading `!` while it
//!   is being closed; `{g:gateway}:closed:{conn}`: a close that found no connection, for a
//!   minute, so an open that arrives after it (a timed-out auth undone by the gateway) is not
//!   recorded; `{g:gateway}:lease`: there while the gateway's lease runs;
//!   `{g:gateway}:sweep:{nonce}`: a connections hash moved aside to be closed, listed in
//!   `{g:gateway}:sweeps` until it is;
//! - `{u:id}:conns`: hash `gateway \t connection` → shard, the user's connections (their count
//!   is its length); `{u:id}:routes`: hash `gateway \t shard` → connections, for private
//!   messages; `{u:id}:acking`: the connections whose clients acknowledge private messages;
//! - `{r:id}:conns`: hash `gateway \t connection` → user, the connections in the room;
//!   `{r:id}:members`: user id → connections (the room's count is its length);
//!   `{r:id}:names`: user id → name, for member lists; `{r:id}:gws`: gateway → connections,
//!   so broadcasts go only where members are;
//! - `gateways`: the gateways that hold or held a lease, for sweeps to look at;
//! - `nodes`: hash `kind \t id` → `version \t connections \t unix ms`, what controls,
//!   gateways and workers last reported of themselves (for the server API's `info`).
//!
//! What spans entities is a sequence of per-entity steps, each idempotent (a connection is
//! added to a user or a room only once: the `conns` hashes guard the counts), ordered so that
//! a sequence cut short leaves what the next one (a retry, a close, a sweep) finishes:
//! - open: record the connection on its gateway, add it to its user (where the cap is
//!   checked; over it, the record is taken back) and to its room, then check the record is
//!   still live: a close that ran meanwhile may have missed the user and room steps, so the
//!   open undoes them itself;
//! - close: mark the records closing on their gateway, take the connections out of their users
//!   and rooms, then delete the records (a close cut short leaves them marked; the next close
//!   or sweep of them finishes it);
//! - join: add the room to the record, add the connection to the room, then check as an open
//!   does; leave: take the connection out of the room, then the room out of the record;
//! - sweep: a gateway whose lease key expired has its connections hash renamed aside and
//!   listed in the same script (so connections it opens after renewing land in a fresh hash
//!   the sweep never touches), then closed as above in chunks; it leaves `gateways` once
//!   nothing is left to close and no lease came back.
//!
//! Counts never drift between controls: only the step that adds a connection to an entity
//! counts it, and only the step that removes it uncounts it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::try_join_all;
use gochat_runtime::redis::{RedisConn, RedisTimeouts};
use redis::{AsyncCommands, Script, ToRedisArgs};

use super::{
    Arrival, Departures, NewConn, NoConnection, NodeKind, NodeReport, Reach, RoomChange, Routes, Session,
    StateError, TooManyConnections,
};

/// A script call's arguments, each encoded as Redis takes it.
macro_rules! args {
    ($($a:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut v: Vec<Vec<u8>> = Vec::new();
        $( v.extend(ToRedisArgs::to_redis_args(&$a)); )*
        v
    }};
}

/// Connections closed per round when a gateway is swept, so Redis is never blocked long.
const SWEEP_CHUNK: usize = 500;

/// A connection's record: `user,room,shard[,room…]` (`!` in front while it closes).
const RECORD_LIB: &str = r"
local function parse(v)
  local f = {}
  for x in string.gmatch(v, '[^,]+') do table.insert(f, x) end
  local rooms = {}
  if f[2] ~= '0' then table.insert(rooms, f[2]) end
  for i = 4, #f do table.insert(rooms, f[i]) end
  return f[1], f[3], rooms
end
local function record(user, shard, rooms)
  local rest = ''
  for i = 2, #rooms do rest = rest .. ',' .. rooms[i] end
  return user .. ',' .. (rooms[1] or '0') .. ',' .. shard .. rest
end
local function live(v)
  return v and string.sub(v, 1, 1) ~= '!'
end
";

/// Gateway step of an open. KEYS: the gateway's connections, the close tombstone. ARGV:
/// connection, record. -1: closed before it opened, or closing; 0: recorded already; 1:
/// recorded now.
const GW_OPEN: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  if live(v) then return 0 end
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Takes back a record an open made when the user had too many connections. KEYS: the
/// gateway's connections. ARGV: connection, record.
const GW_UNOPEN: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
";

/// Whether a connection's record is live (and, with ARGV[2], lists that room). KEYS: the
/// gateway's connections. ARGV: connection, room or ''. 1 or 0.
const GW_CHECK: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not live(v) then return 0 end
if ARGV[2] == '' then return 1 end
local _, _, rooms = parse(v)
for _, r in ipairs(rooms) do if r == ARGV[2] then return 1 end end
return 0
";

/// Gateway step of a join. KEYS: the gateway's connections. ARGV: connection, room. -1 without
/// a live connection, else its user (the room added to its record when it was not there).
const GW_JOIN: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not live(v) then return -1 end
local user, shard, rooms = parse(v)
for _, r in ipairs(rooms) do if r == ARGV[2] then return tonumber(user) end end
table.insert(rooms, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], record(user, shard, rooms))
return tonumber(user)
";

/// Whether a live connection is in a room: its user, or -1. KEYS: the gateway's connections.
/// ARGV: connection, room.
const GW_IN_ROOM: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not live(v) then return -1 end
local user, _, rooms = parse(v)
for _, r in ipairs(rooms) do if r == ARGV[2] then return tonumber(user) end end
return -1
";

/// Gateway step of a leave, after the room's: the room out of the record. KEYS: the gateway's
/// connections. ARGV: connection, room.
const GW_LEAVE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not live(v) then return 0 end
local user, shard, rooms = parse(v)
local kept = {}
for _, r in ipairs(rooms) do if r ~= ARGV[2] then table.insert(kept, r) end end
redis.call('HSET', KEYS[1], ARGV[1], record(user, shard, kept))
return 1
";

/// Gateway step of a close: marks the records closing. KEYS: a connections hash. ARGV: the
/// tombstone keys' prefix, tombstone seconds (0: none), connections. {connection, record, …}
/// of those found.
const GW_CLOSE: &str = r"
local tomb, out = tonumber(ARGV[2]), {}
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    if live(v) then redis.call('HSET', KEYS[1], ARGV[i], '!' .. v) else v = string.sub(v, 2) end
    table.insert(out, ARGV[i])
    table.insert(out, v)
  elseif tomb > 0 then
    redis.call('SET', ARGV[1] .. ARGV[i], 1, 'EX', tomb)
  end
end
return out
";

/// Last step of a close. KEYS: a connections hash. ARGV: connections.
const GW_FORGET: &str = r"
redis.call('HDEL', KEYS[1], unpack(ARGV))
";

/// Extends a lease. KEYS: the lease. ARGV: ms. 1 when the gateway had a live one.
const GW_LEASE: &str = r"
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return had
";

/// Claims a gateway whose lease ran out: its connections hash moves aside, listed in its
/// sweeps. KEYS: lease, connections, sweeps, the key to move them to. {1 when the lease is
/// live, the sweeps not finished}.
const GW_CLAIM: &str = r"
local alive = redis.call('EXISTS', KEYS[1])
if alive == 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[4])
  redis.call('SADD', KEYS[3], KEYS[4])
end
return {alive, redis.call('SMEMBERS', KEYS[3])}
";

/// Whether anything of a gateway is left: its lease, connections or unfinished sweeps. KEYS:
/// those three. 1 or 0.
const GW_HELD: &str = r"
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 or redis.call('SCARD', KEYS[3]) > 0 then return 1 end
return 0
";

/// Moves a gateway's connections hash aside for a reset. KEYS: connections, sweeps, the key
/// to move them to. 1 when there was one.
const GW_RESET: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[3])
redis.call('SADD', KEYS[2], KEYS[3])
return 1
";

/// User step of an open. KEYS: the user's connections, routes, acking connections. ARGV:
/// gateway, connection, shard, acks (0 or 1), the most connections the user may have (0: no
/// cap). -1 over the cap; 1 when this is its first connection (it came online); else 0.
const USER_OPEN: &str = r"
local conn = ARGV[1] .. '\t' .. ARGV[2]
if redis.call('HEXISTS', KEYS[1], conn) == 1 then return 0 end
local max = tonumber(ARGV[5])
local n = redis.call('HLEN', KEYS[1])
if max > 0 and n >= max then return -1 end
redis.call('HSET', KEYS[1], conn, ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[1] .. '\t' .. ARGV[3], 1)
if ARGV[4] == '1' then redis.call('HSET', KEYS[3], conn, 1) end
if n == 0 then return 1 end
return 0
";

/// User step of a close. KEYS: as `USER_OPEN`. ARGV: gateway, connections. 1 when this took
/// away its last connection (it went offline).
const USER_CLOSE: &str = r"
local removed = false
for i = 2, #ARGV do
  local conn = ARGV[1] .. '\t' .. ARGV[i]
  local shard = redis.call('HGET', KEYS[1], conn)
  if shard then
    redis.call('HDEL', KEYS[1], conn)
    local route = ARGV[1] .. '\t' .. shard
    if redis.call('HINCRBY', KEYS[2], route, -1) <= 0 then redis.call('HDEL', KEYS[2], route) end
    removed = true
  end
  redis.call('HDEL', KEYS[3], conn)
end
if removed and redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
return 0
";

/// Room steps. KEYS: the room's connections, members, names, gateways. ENTER: ARGV gateway,
/// connection, user, name; 0: no change (the connection was in, or another of the user's),
/// 1: the user joined, 2: and the room was empty. LEAVE: ARGV gateway, connections;
/// {user, 1 or 2, …} for the users who left (2: the room is empty now).
const ROOM_ENTER: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1] .. '\t' .. ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) ~= 1 then return 0 end
if redis.call('HLEN', KEYS[2]) == 1 then return 2 end
return 1
";

const ROOM_LEAVE: &str = r"
local out = {}
for i = 2, #ARGV do
  local conn = ARGV[1] .. '\t' .. ARGV[i]
  local user = redis.call('HGET', KEYS[1], conn)
  if user then
    redis.call('HDEL', KEYS[1], conn)
    if redis.call('HINCRBY', KEYS[4], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[4], ARGV[1]) end
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('HDEL', KEYS[3], user)
      table.insert(out, user)
      if redis.call('EXISTS', KEYS[2]) == 0 then table.insert(out, 2) else table.insert(out, 1) end
    end
  end
end
return out
";

struct Scripts {
    gw_open: Script,
    gw_unopen: Script,
    gw_check: Script,
    gw_join: Script,
    gw_in_room: Script,
    gw_leave: Script,
    gw_close: Script,
    gw_forget: Script,
    gw_lease: Script,
    gw_claim: Script,
    gw_held: Script,
    gw_reset: Script,
    user_open: Script,
    user_close: Script,
    room_enter: Script,
    room_leave: Script,
}

/// The scripts, loaded into Redis by their first call.
static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(Scripts::new);

impl Scripts {
    fn new() -> Self {
        let gw = |body: &str| Script::new(&[RECORD_LIB, body].concat());
        Self {
            gw_open: gw(GW_OPEN),
            gw_unopen: Script::new(GW_UNOPEN),
            gw_check: gw(GW_CHECK),
            gw_join: gw(GW_JOIN),
            gw_in_room: gw(GW_IN_ROOM),
            gw_leave: gw(GW_LEAVE),
            gw_close: gw(GW_CLOSE),
            gw_forget: Script::new(GW_FORGET),
            gw_lease: Script::new(GW_LEASE),
            gw_claim: Script::new(GW_CLAIM),
            gw_held: Script::new(GW_HELD),
            gw_reset: Script::new(GW_RESET),
            user_open: Script::new(USER_OPEN),
            user_close: Script::new(USER_CLOSE),
            room_enter: Script::new(ROOM_ENTER),
            room_leave: Script::new(ROOM_LEAVE),
        }
    }
}

/// A connection's record as `GW_CLOSE` returns it: its user, shard and rooms.
struct Record {
    user: u64,
    rooms: Vec<u64>,
}

fn parse_record(v: &str) -> Option<Record> {
    let mut f = v.split(',');
    let user = f.next()?.parse().ok()?;
    let first: u64 = f.next()?.parse().ok()?;
    let _shard = f.next()?;
    let rooms = std::iter::once(first).filter(|r| *r != 0).chain(f.filter_map(|r| r.parse().ok())).collect();
    Some(Record { user, rooms })
}

pub struct RedisState {
    conn: RedisConn,
    prefix: String,
    session_ttl: Duration,
    scripts: &'static Scripts,
}

impl RedisState {
    /// Connects to `url` (one node, or a cluster: see [`gochat_runtime::redis::RedisUrl`]);
    /// fails when Redis cannot be reached now. Later outages are errors of single operations,
    /// retried by the connection's reconnects.
    pub async fn open(url: &str, prefix: &str, session_ttl: Duration) -> Result<Self, StateError> {
        if prefix.contains(['{', '}']) {
            return Err(StateError("the key prefix may not hold { or } (they make hash tags)".into()));
        }
        let timeouts = RedisTimeouts {
            connect: Duration::from_secs(2),
            response: Some(Duration::from_secs(2)),
            retries: 2,
        };
        let conn = RedisConn::open(url, timeouts).await.map_err(StateError::from)?;
        let state = Self { conn, prefix: prefix.to_string(), session_ttl, scripts: &SCRIPTS };
        if !state.conn.is_cluster() {
            state.upgrade_layout().await?;
        }
        Ok(state)
    }

    /// Moves what the layout before hash tags kept (on one Redis; it never ran on a cluster)
    /// to its keys now: room histories and kept messages are renamed; the routing state of
    /// then is deleted, as gateways register theirs again (a gateway whose lease this layout
    /// does not know closes its sockets, and their clients reconnect). Done once per store,
    /// marked by `layout`; controls of both layouts must not share a store.
    async fn upgrade_layout(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let marker = self.key("layout");
        if conn.exists(&marker).await? {
            return Ok(());
        }
        let old: Vec<String> = {
            let mut keys = Vec::new();
            for pattern in ["room:*", "user:*", "gw:*"] {
                let mut cursor = 0u64;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(self.key(pattern))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await?;
                    keys.extend(batch);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            keys
        };
        let (mut moved, mut dropped) = (0, 0);
        for key in old {
            let rest = &key[self.prefix.len() + 1..];
            let mut parts = rest.splitn(3, ':');
            let (kind, id, what) =
                (parts.next(), parts.next().and_then(|i| i.parse::<u64>().ok()), parts.next());
            let to = match (kind, id, what) {
                (Some("room"), Some(room), Some(w)) if w.starts_with("history") => {
                    Some(room_key(&self.prefix, room, w))
                }
                (Some("user"), Some(user), Some(w)) if w.starts_with("inbox") => {
                    Some(user_key(&self.prefix, user, w))
                }
                _ => None,
            };
            match to {
                Some(to) => {
                    let renamed: redis::RedisResult<bool> =
                        redis::cmd("RENAMENX").arg(&key).arg(&to).query_async(&mut conn).await;
                    match renamed {
                        Ok(true) => moved += 1,
                        // Written under the new key already: the old one is stale.
                        Ok(false) => {
                            let _: i64 = conn.del(&key).await?;
                            dropped += 1;
                        }
                        // Expired since the scan, or moved by another control starting now.
                        Err(e) if e.to_string().contains("no such key") => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let _: i64 = conn.del(&key).await?;
                    dropped += 1;
                }
            }
        }
        let index = self.key("gateways");
        let kind: String = redis::cmd("TYPE").arg(&index).query_async(&mut conn).await?;
        if kind == "zset" {
            let _: i64 = conn.del(&[index, self.key("sweeps")]).await?;
        }
        let _: () = conn.set(&marker, 2).await?;
        if moved + dropped > 0 {
            tracing::info!(
                moved,
                dropped,
                "moved history and kept messages to the hash-tagged layout; dropped the old routing state"
            );
        }
        Ok(())
    }

    /// The connection to this Redis, for the stores that live beside the state.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    fn gw_key(&self, gateway: &str, rest: &str) -> String {
        format!("{}:{{g:{gateway}}}:{rest}", self.prefix)
    }

    fn user_key(&self, user: u64, rest: &str) -> String {
        user_key(&self.prefix, user, rest)
    }

    fn room_key(&self, room: u64, rest: &str) -> String {
        room_key(&self.prefix, room, rest)
    }

    /// `script` invoked with `keys` and `args`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, StateError> {
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(k);
        }
        for a in args {
            call.arg(a.as_slice());
        }
        call.invoke_async(&mut self.conn.clone()).await.map_err(StateError::from)
    }

    fn user_keys(&self, user: u64) -> [String; 3] {
        [self.user_key(user, "conns"), self.user_key(user, "routes"), self.user_key(user, "acking")]
    }

    fn room_keys(&self, room: u64) -> [String; 4] {
        ["conns", "members", "names", "gws"].map(|k| self.room_key(room, k))
    }

    pub async fn create_session(&self, token: &str, session: &Session) -> Result<(), StateError> {
        let value = format!("{}\t{}", session.user_id, session.user_name);
        let key = self.key(&format!("session:{token}"));
        self.conn
            .clone()
            .set_ex::<_, _, ()>(key, value, self.session_ttl.as_secs())
            .await
            .map_err(StateError::from)
    }

    pub async fn session(&self, token: &str) -> Result<Option<Session>, StateError> {
        let value: Option<String> =
            self.conn.clone().get(self.key(&format!("session:{token}"))).await.map_err(StateError::from)?;
        Ok(value.as_deref().and_then(parse_session))
    }

    pub async fn remove_session(&self, token: &str) -> Result<Option<Session>, StateError> {
        let value: Option<String> = self
            .conn
            .clone()
            .get_del(self.key(&format!("session:{token}")))
            .await
            .map_err(StateError::from)?;
        Ok(value.as_deref().and_then(parse_session))
    }

    pub async fn conn_open(
        &self,
        conn: &NewConn<'_>,
        session: &Session,
    ) -> Result<Result<Arrival, TooManyConnections>, StateError> {
        let NewConn { gateway, shard, conn_id, room_id, acks, max_user_conns } = *conn;
        let user = session.user_id;
        let conns = self.gw_key(gateway, "conns");
        let record = format!("{user},{room_id},{shard}");
        let recorded: i64 = self
            .run(
                &self.scripts.gw_open,
                &[conns.clone(), self.gw_key(gateway, &format!("closed:{conn_id}"))],
                &args![conn_id, record],
            )
            .await?;
        if recorded == -1 {
            return Ok(Ok(Arrival::default()));
        }
        let online: i64 = self
            .run(
                &self.scripts.user_open,
                &self.user_keys(user),
                &args![gateway, conn_id, shard, u8::from(acks), max_user_conns],
            )
            .await?;
        if online == -1 {
            self.run::<()>(&self.scripts.gw_unopen, &[conns], &args![conn_id, record]).await?;
            return Ok(Err(TooManyConnections));
        }
        let mut joined = None;
        if room_id != 0 {
            joined = self.enter_room(gateway, conn_id, user, session, room_id).await?;
        }
        let arrival = Arrival { joined, online: online == 1 };
        if self.still_live(gateway, conn_id, None).await? {
            return Ok(Ok(arrival));
        }
        // Closed while it opened: the close may have missed the steps above.
        self.run::<i64>(&self.scripts.user_close, &self.user_keys(user), &args![gateway, conn_id]).await?;
        if room_id != 0 {
            self.run::<Vec<u64>>(
                &self.scripts.room_leave,
                &self.room_keys(room_id),
                &args![gateway, conn_id],
            )
            .await?;
        }
        Ok(Ok(Arrival::default()))
    }

    /// The room's step of an open or a join: the change when `user` newly joined the room.
    async fn enter_room(
        &self,
        gateway: &str,
        conn_id: u64,
        user: u64,
        session: &Session,
        room_id: u64,
    ) -> Result<Option<RoomChange>, StateError> {
        let how: i64 = self
            .run(
                &self.scripts.room_enter,
                &self.room_keys(room_id),
                &args![gateway, conn_id, user, session.user_name],
            )
            .await?;
        Ok(entered(how, room_id, session))
    }

    /// Whether the connection's record is still live (and lists `room`).
    async fn still_live(&self, gateway: &str, conn_id: u64, room: Option<u64>) -> Result<bool, StateError> {
        let room = room.map_or(String::new(), |r| r.to_string());
        let live: i64 =
            self.run(&self.scripts.gw_check, &[self.gw_key(gateway, "conns")], &args![conn_id, room]).await?;
        Ok(live == 1)
    }

    pub async fn conn_join(
        &self,
        gateway: &str,
        conn_id: u64,
        session: &Session,
        room_id: u64,
    ) -> Result<Result<Option<RoomChange>, NoConnection>, StateError> {
        let user: i64 = self
            .run(&self.scripts.gw_join, &[self.gw_key(gateway, "conns")], &args![conn_id, room_id])
            .await?;
        if user < 0 {
            return Ok(Err(NoConnection));
        }
        let joined = self.enter_room(gateway, conn_id, user as u64, session, room_id).await?;
        if self.still_live(gateway, conn_id, Some(room_id)).await? {
            return Ok(Ok(joined));
        }
        // Closed (or left the room) meanwhile: that may have missed the room step.
        self.run::<Vec<u64>>(&self.scripts.room_leave, &self.room_keys(room_id), &args![gateway, conn_id])
            .await?;
        Ok(Ok(None))
    }

    pub async fn conn_leave(
        &self,
        gateway: &str,
        conn_id: u64,
        room_id: u64,
    ) -> Result<Option<RoomChange>, StateError> {
        let conns = self.gw_key(gateway, "conns");
        let user: i64 = self
            .run(&self.scripts.gw_in_room, std::slice::from_ref(&conns), &args![conn_id, room_id])
            .await?;
        if user < 0 {
            return Ok(None);
        }
        let left: Vec<u64> =
            self.run(&self.scripts.room_leave, &self.room_keys(room_id), &args![gateway, conn_id]).await?;
        self.run::<i64>(&self.scripts.gw_leave, &[conns], &args![conn_id, room_id]).await?;
        Ok(match left[..] {
            [user, how] => Some(RoomChange::left(room_id, user, how == 2)),
            _ => None,
        })
    }

    /// Forgets connections of `gateway`; returns the changes: rooms users left, users who went
    /// offline.
    pub async fn conn_close(&self, gateway: &str, conn_ids: &[u64]) -> Result<Departures, StateError> {
        let conns = self.gw_key(gateway, "conns");
        self.close_from(gateway, &conns, conn_ids, super::CLOSED_TOMBSTONE.as_secs()).await
    }

    /// Forgets connections of `gateway` listed in the hash `conns` (its own, or one moved
    /// aside for a sweep); those not there get a tombstone for `tombstone_secs` (0: none).
    async fn close_from(
        &self,
        gateway: &str,
        conns: &str,
        conn_ids: &[u64],
        tombstone_secs: u64,
    ) -> Result<Departures, StateError> {
        let tombstones = self.gw_key(gateway, "closed:");
        let mut args = args![tombstones, tombstone_secs];
        args.extend(conn_ids.iter().flat_map(ToRedisArgs::to_redis_args));
        let found: Vec<String> = self.run(&self.scripts.gw_close, &[conns.to_string()], &args).await?;
        let (mut by_user, mut by_room) = (BTreeMap::<u64, Vec<u64>>::new(), BTreeMap::<u64, Vec<u64>>::new());
        let mut closed = Vec::new();
        for pair in found.chunks_exact(2) {
            let Ok(conn) = pair[0].parse::<u64>() else { continue };
            // Forgotten even when unreadable: a sweep reads the hash until it is empty.
            closed.push(conn);
            let Some(record) = parse_record(&pair[1]) else {
                tracing::warn!(%gateway, conn, record = %pair[1], "unreadable connection record; forgotten");
                continue;
            };
            by_user.entry(record.user).or_default().push(conn);
            for room in record.rooms {
                by_room.entry(room).or_default().push(conn);
            }
        }
        if closed.is_empty() {
            return Ok(Departures::default());
        }
        let users = by_user.iter().map(|(user, conns)| async move {
            let mut args = args![gateway];
            args.extend(conns.iter().flat_map(ToRedisArgs::to_redis_args));
            let offline: i64 = self.run(&self.scripts.user_close, &self.user_keys(*user), &args).await?;
            Ok::<_, StateError>((offline == 1).then_some(*user))
        });
        let rooms = by_room.iter().map(|(room, conns)| async move {
            let mut args = args![gateway];
            args.extend(conns.iter().flat_map(ToRedisArgs::to_redis_args));
            let left: Vec<u64> = self.run(&self.scripts.room_leave, &self.room_keys(*room), &args).await?;
            Ok::<_, StateError>(
                left.chunks_exact(2).map(|p| RoomChange::left(*room, p[0], p[1] == 2)).collect::<Vec<_>>(),
            )
        });
        let (offline, left) =
            futures_util::future::try_join(try_join_all(users), try_join_all(rooms)).await?;
        let args: Vec<Vec<u8>> = closed.iter().flat_map(ToRedisArgs::to_redis_args).collect();
        self.run::<()>(&self.scripts.gw_forget, &[conns.to_string()], &args).await?;
        Ok(Departures {
            left: left.into_iter().flatten().collect(),
            offline: offline.into_iter().flatten().collect(),
        })
    }

    pub async fn gateway_reset(&self, gateway: &str) -> Result<Departures, StateError> {
        let moved = self.gw_key(gateway, &format!("sweep:{}", nonce()));
        let keys = [self.gw_key(gateway, "conns"), self.gw_key(gateway, "sweeps"), moved.clone()];
        let claimed: i64 = self.run(&self.scripts.gw_reset, &keys, &[]).await?;
        if claimed == 0 {
            return Ok(Departures::default());
        }
        self.sweep(gateway, &moved).await
    }

    /// Closes every connection of a sweep (`moved`: a gateway's hash moved aside), then takes
    /// the sweep off the gateway's unfinished ones.
    async fn sweep(&self, gateway: &str, moved: &str) -> Result<Departures, StateError> {
        let changes = self.close_all(gateway, moved).await?;
        let sweeps = self.gw_key(gateway, "sweeps");
        let _: i64 = self.conn.clone().srem(sweeps, moved).await.map_err(StateError::from)?;
        Ok(changes)
    }

    /// Closes every connection listed in `conns` (a gateway's hash, or one moved aside for a
    /// sweep); returns the changes: rooms that lost members, users who went offline.
    async fn close_all(&self, gateway: &str, conns: &str) -> Result<Departures, StateError> {
        let mut changes = Departures::default();
        loop {
            // Each pass closes what it read; the hash is empty when a read finds nothing.
            let ids = self.conn_ids(conns).await?;
            if ids.is_empty() {
                break;
            }
            let closed = self.close_from(gateway, conns, &ids, 0).await?;
            changes.left.extend(closed.left);
            changes.offline.extend(closed.offline);
        }
        Ok(changes)
    }

    /// Up to a chunk of the connection ids in a gateway's hash; none only when it is empty.
    /// (`HRANDFIELD`, not `HSCAN` from cursor 0: a scan may return nothing while fields remain.)
    async fn conn_ids(&self, key: &str) -> Result<Vec<u64>, StateError> {
        let fields: Vec<String> = redis::cmd("HRANDFIELD")
            .arg(key)
            .arg(SWEEP_CHUNK)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok(fields.iter().filter_map(|f| f.parse().ok()).collect())
    }

    pub async fn gateway_lease(&self, gateway: &str, ttl: Duration) -> Result<bool, StateError> {
        let ms = (ttl.as_millis() as u64).max(1);
        let had: i64 = self.run(&self.scripts.gw_lease, &[self.gw_key(gateway, "lease")], &args![ms]).await?;
        // Listed after the lease is set, so a sweep that takes it off the list sees the lease.
        let _: i64 = self.conn.clone().sadd(self.key("gateways"), gateway).await.map_err(StateError::from)?;
        Ok(had == 1)
    }

    pub async fn sweep_expired(&self) -> Result<Vec<(String, Departures)>, StateError> {
        // Per gateway: what its sweeps changed (None: nothing swept), and whether one failed.
        let mut by_gateway: BTreeMap<String, (Option<Departures>, bool)> = BTreeMap::new();
        for (moved, gateway) in self.claim_expired().await? {
            let (swept, failed) = by_gateway.entry(gateway.clone()).or_default();
            // One gateway's failure must not hold the others back; it is resumed next time.
            match self.sweep(&gateway, &moved).await {
                Ok(changes) => {
                    let all = swept.get_or_insert_with(Departures::default);
                    all.left.extend(changes.left);
                    all.offline.extend(changes.offline);
                }
                Err(e) => {
                    *failed = true;
                    tracing::warn!(%gateway, error = %e, "sweeping a gateway failed; resumed next round")
                }
            }
        }
        let mut swept = Vec::new();
        for (gateway, (changes, failed)) in by_gateway {
            let Some(changes) = changes else { continue };
            // Swept: off the list, unless something of it is left (see `unlist`).
            if !failed {
                if let Err(e) = self.unlist(&gateway).await {
                    tracing::warn!(%gateway, error = %e, "taking a swept gateway off the list failed; next round");
                }
            }
            swept.push((gateway, changes));
        }
        Ok(swept)
    }

    /// The first half of a sweep: claims the gateways whose lease ran out (see `GW_CLAIM`), and
    /// takes off the list those with nothing left to close; returns every sweep to do,
    /// (moved connections key, gateway), including unfinished earlier ones. A gateway taken
    /// off the list with nothing to close is one sweep of an empty key, so it is told once.
    #[doc(hidden)]
    pub async fn claim_expired(&self) -> Result<Vec<(String, String)>, StateError> {
        let gateways: BTreeSet<String> =
            self.conn.clone().smembers(self.key("gateways")).await.map_err(StateError::from)?;
        let claims = gateways.into_iter().map(|gateway| async move {
            let keys = [
                self.gw_key(&gateway, "lease"),
                self.gw_key(&gateway, "conns"),
                self.gw_key(&gateway, "sweeps"),
                self.gw_key(&gateway, &format!("sweep:{}", nonce())),
            ];
            let (alive, mut pending): (i64, Vec<String>) =
                self.run(&self.scripts.gw_claim, &keys, &[]).await?;
            if alive == 0 && pending.is_empty() && self.unlist(&gateway).await? {
                // Expired with nothing held: told once, as an empty sweep.
                pending.push(keys[3].clone());
            }
            Ok::<_, StateError>(pending.into_iter().map(|moved| (moved, gateway.clone())).collect::<Vec<_>>())
        });
        Ok(try_join_all(claims).await?.into_iter().flatten().collect())
    }

    /// Takes an expired gateway off the list; true when this did. It goes back on when
    /// anything of it is there after: a lease renewed meanwhile (a renewal lists the gateway
    /// after setting its lease, so one of the two sees the other), a sweep not finished, or
    /// connections recorded since (an open that was on its way when the gateway died).
    async fn unlist(&self, gateway: &str) -> Result<bool, StateError> {
        let removed: i64 =
            self.conn.clone().srem(self.key("gateways"), gateway).await.map_err(StateError::from)?;
        let keys =
            [self.gw_key(gateway, "lease"), self.gw_key(gateway, "conns"), self.gw_key(gateway, "sweeps")];
        let held: i64 = self.run(&self.scripts.gw_held, &keys, &[]).await?;
        if held == 1 {
            let _: i64 =
                self.conn.clone().sadd(self.key("gateways"), gateway).await.map_err(StateError::from)?;
        }
        Ok(removed == 1 && held == 0)
    }

    pub async fn ping(&self) -> Result<(), StateError> {
        redis::cmd("PING").query_async::<()>(&mut self.conn.clone()).await.map_err(StateError::from)
    }

    pub async fn room_count(&self, room_id: u64) -> Result<u64, StateError> {
        self.conn.clone().hlen(self.room_key(room_id, "members")).await.map_err(StateError::from)
    }

    pub async fn room_members(&self, room_id: u64) -> Result<BTreeMap<String, String>, StateError> {
        self.conn.clone().hgetall(self.room_key(room_id, "names")).await.map_err(StateError::from)
    }

    pub async fn is_member(&self, room_id: u64, user_id: u64) -> Result<bool, StateError> {
        self.conn.clone().hexists(self.room_key(room_id, "members"), user_id).await.map_err(StateError::from)
    }

    pub async fn user_connections(&self, user_id: u64) -> Result<u64, StateError> {
        self.conn.clone().hlen(self.user_key(user_id, "conns")).await.map_err(StateError::from)
    }

    pub async fn node_report(&self, r: &NodeReport) -> Result<(), StateError> {
        let field = format!("{}\t{}", r.kind.name(), r.id);
        let value = format!("{}\t{}\t{}", r.version, r.connections, r.at_ms);
        self.conn.clone().hset::<_, _, _, ()>(self.key("nodes"), field, value).await.map_err(StateError::from)
    }

    /// The nodes that reported since `since_ms`; older reports (and unreadable ones) are removed.
    pub async fn nodes(&self, since_ms: u64) -> Result<Vec<NodeReport>, StateError> {
        let all: BTreeMap<String, String> =
            self.conn.clone().hgetall(self.key("nodes")).await.map_err(StateError::from)?;
        let (mut nodes, mut stale) = (Vec::new(), Vec::new());
        for (field, value) in all {
            match parse_node(&field, &value).filter(|r| r.at_ms >= since_ms) {
                Some(report) => nodes.push(report),
                None => stale.push(field),
            }
        }
        if !stale.is_empty() {
            self.conn.clone().hdel::<_, _, ()>(self.key("nodes"), stale).await.map_err(StateError::from)?;
        }
        Ok(nodes)
    }

    pub async fn reach(&self, user_id: u64) -> Result<Reach, StateError> {
        // One user's keys, one slot: a pipeline.
        let (online, acking): (bool, bool) = redis::pipe()
            .exists(self.user_key(user_id, "conns"))
            .exists(self.user_key(user_id, "acking"))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(Reach { online, acking })
    }

    /// Each room's and user's routes is a command of its own (their keys are in different
    /// slots); sent together, one node's connection pipelines them.
    pub async fn routes(&self, room_ids: &[u64], user_ids: &[u64]) -> Result<Routes, StateError> {
        let hkeys = |key: String| {
            let mut conn = self.conn.clone();
            async move { conn.hkeys::<_, Vec<String>>(key).await.map_err(StateError::from) }
        };
        let rooms = try_join_all(room_ids.iter().map(|r| hkeys(self.room_key(*r, "gws"))));
        let users = try_join_all(user_ids.iter().map(|u| hkeys(self.user_key(*u, "routes"))));
        let (rooms, users) = futures_util::future::try_join(rooms, users).await?;
        Ok(Routes {
            rooms,
            users: users
                .into_iter()
                .map(|routes| {
                    routes
                        .into_iter()
                        .filter_map(|r| {
                            let (gateway, shard) = r.split_once('\t')?;
                            Some((gateway.to_string(), shard.parse().ok()?))
                        })
                        .collect()
                })
                .collect(),
        })
    }
}

/// A key of `user`'s, in its hash slot (state, kept messages).
pub(crate) fn user_key(prefix: &str, user: u64, rest: &str) -> String {
    format!("{prefix}:{{u:{user}}}:{rest}")
}

/// A key of `room`'s, in its hash slot (state, history).
pub(crate) fn room_key(prefix: &str, room: u64, rest: &str) -> String {
    format!("{prefix}:{{r:{room}}}:{rest}")
}

/// The change a script's `enter` reports (0: none, 1: joined, 2: joined an empty room).
fn entered(how: i64, room_id: u64, session: &Session) -> Option<RoomChange> {
    (how > 0).then(|| RoomChange::joined(room_id, session, how == 2))
}

/// A session as `create_session` stores it: `user_id \t user_name`.
fn parse_session(value: &str) -> Option<Session> {
    let (id, name) = value.split_once('\t')?;
    Some(Session { user_id: id.parse().ok()?, user_name: name.to_string() })
}

/// A name for a sweep key no other sweep uses.
fn nonce() -> String {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{at:x}{:04x}", rand::random::<u16>())
}

/// A script's flat reply `{number, body, number, body, …}` (message ids or room seqs, as
/// text) as pairs; a pair whose number does not parse, or that lacks its body, is passed over.
pub(crate) fn numbered(flat: &[Vec<u8>]) -> impl Iterator<Item = (u64, &[u8])> {
    flat.chunks(2)
        .filter_map(|pair| Some((std::str::from_utf8(&pair[0]).ok()?.parse().ok()?, pair.get(1)?.as_slice())))
}

/// A node's report from its `nodes` field and value.
fn parse_node(field: &str, value: &str) -> Option<NodeReport> {
    let (kind, id) = field.split_once('\t')?;
    let mut v = value.split('\t');
    let (version, connections, at_ms) = (v.next()?, v.next()?.parse().ok()?, v.next()?.parse().ok()?);
    Some(NodeReport {
        kind: NodeKind::parse(kind)?,
        id: id.into(),
        version: version.into(),
        connections,
        at_ms,
    })
}
