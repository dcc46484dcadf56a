//! The state on Redis, shared by every control of a cluster.
//!
//! Keys (under `prefix`), each small and read without scanning:
//! - `session:{token}`: `user_id \t user_name`, expiring with the session;
//! - `gw:{gateway}:conns`: hash connection id → `user,room,shard[,room…]`, what a gateway
//!   holds (its first room, 0 once left, and the rooms it joined after);
//! - `user:{id}:routes`: hash `gateway \t shard` → connections, for private messages, and
//!   `user:{id}:acking`: the user's connections (`gateway \t connection`) whose clients
//!   acknowledge private messages;
//! - `room:{id}:members`: hash user id → connections (the count is its length) and
//!   `room:{id}:names`: user id → name, for member lists;
//! - `room:{id}:gws`: hash gateway → connections, so broadcasts go only where members are;
//! - `gateways`: sorted set gateway → lease expiry (ms, Redis clock);
//! - `gw:{gateway}:closed:{conn}`: a close that found no connection, for a minute, so an open
//!   that arrives after it (a timed-out auth undone by the gateway) is not recorded;
//! - `nodes`: hash `kind \t id` → `version \t connections \t unix ms`, what controls,
//!   gateways and workers last reported of themselves (for the server API's `info`);
//! - `sweeps`: hash of the connection hashes of expired gateways, moved aside
//!   (`gw:{gateway}:sweep:{nonce}`) and not yet closed → their gateway.
//!
//! Opening and closing connections are Lua scripts, so counts never drift between controls.
//! The close script derives keys from the stored connection, so this needs one Redis (or a
//! primary with replicas), not Redis Cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{
    Arrival, Departures, NewConn, NoConnection, NodeKind, NodeReport, Reach, RoomChange, Routes, Session,
    StateError, TooManyConnections,
};

/// Connections closed per script call when a gateway is swept, so Redis is never blocked long.
const SWEEP_CHUNK: usize = 500;

/// What the connection scripts share: a connection's record, and a user's entering and
/// leaving a room (0: it had another connection there; 1: its first or last; 2: and the room's
/// first or last member too, the room was empty or is now).
const CONN_LIB: &str = r"
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
local function dec(key, field)
  if redis.call('HINCRBY', key, field, -1) <= 0 then redis.call('HDEL', key, field) return true end
  return false
end
local function enter(p, gw, room, user, name)
  local members = p .. ':room:' .. room .. ':members'
  redis.call('HINCRBY', p .. ':room:' .. room .. ':gws', gw, 1)
  redis.call('HSET', p .. ':room:' .. room .. ':names', user, name)
  if redis.call('HINCRBY', members, user, 1) ~= 1 then return 0 end
  if redis.call('HLEN', members) == 1 then return 2 end
  return 1
end
local function leave(p, gw, room, user)
  local members = p .. ':room:' .. room .. ':members'
  dec(p .. ':room:' .. room .. ':gws', gw)
  if not dec(members, user) then return 0 end
  redis.call('HDEL', p .. ':room:' .. room .. ':names', user)
  if redis.call('EXISTS', members) == 0 then return 2 end
  return 1
end
";

/// KEYS: the gateway's connections, the user's routes, the close tombstone, the user's acking
/// connections. ARGV: prefix, gateway, connection, user, shard, room (0: none), name, acks (0
/// or 1), the most connections the user may have (0: no cap). -1 when the user had as many
/// connections as it may; else what `enter` says of the room (0 without one), plus 4 when this
/// is the user's first connection (it came online).
const OPEN: &str = r"
local p, gw, conn, user, shard, room, name = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], conn) == 1 then return 0 end
local max = tonumber(ARGV[9])
if max > 0 then
  local n = 0
  for _, c in ipairs(redis.call('HVALS', KEYS[2])) do n = n + tonumber(c) end
  if n >= max then return -1 end
end
local online = 0
if redis.call('EXISTS', KEYS[2]) == 0 then online = 4 end
redis.call('HSET', KEYS[1], conn, user .. ',' .. room .. ',' .. shard)
redis.call('HINCRBY', KEYS[2], gw .. '\t' .. shard, 1)
if ARGV[8] == '1' then redis.call('HSET', KEYS[4], gw .. '\t' .. conn, 1) end
if room ~= '0' then return online + enter(p, gw, room, user, name) end
return online
";

/// KEYS: the gateway's connections. ARGV: prefix, gateway, connection, room, name. -1 without
/// such a connection, else what `enter` says (0 when the connection was in the room already).
const JOIN: &str = r"
local p, gw, conn, room, name = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local v = redis.call('HGET', KEYS[1], conn)
if not v then return -1 end
local user, shard, rooms = parse(v)
for _, r in ipairs(rooms) do if r == room then return 0 end end
table.insert(rooms, room)
redis.call('HSET', KEYS[1], conn, record(user, shard, rooms))
return enter(p, gw, room, user, name)
";

/// KEYS: the gateway's connections. ARGV: prefix, gateway, connection, room. The user's id
/// and what `leave` says, when the connection was in the room; else nothing.
const LEAVE: &str = r"
local p, gw, conn, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local v = redis.call('HGET', KEYS[1], conn)
if not v then return {} end
local user, shard, rooms = parse(v)
local kept, found = {}, false
for _, r in ipairs(rooms) do if r == room then found = true else table.insert(kept, r) end end
if not found then return {} end
redis.call('HSET', KEYS[1], conn, record(user, shard, kept))
return {user, leave(p, gw, room, user)}
";

/// KEYS: a connections hash. ARGV: prefix, gateway, tombstone seconds (0: none), connections.
/// Two lists: the (room, user, 1 or 2 as `leave` says) triples of the rooms users left, flat;
/// the users whose last connection this closed (they went offline).
const CLOSE: &str = r"
local p, gw, tomb, left, offline = ARGV[1], ARGV[2], tonumber(ARGV[3]), {}, {}
for i = 4, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if not v and tomb > 0 then
    redis.call('SET', p .. ':gw:' .. gw .. ':closed:' .. ARGV[i], 1, 'EX', tomb)
  end
  if v then
    redis.call('HDEL', KEYS[1], ARGV[i])
    local user, shard, rooms = parse(v)
    local routes = p .. ':user:' .. user .. ':routes'
    dec(routes, gw .. '\t' .. shard)
    if redis.call('EXISTS', routes) == 0 then table.insert(offline, user) end
    redis.call('HDEL', p .. ':user:' .. user .. ':acking', gw .. '\t' .. ARGV[i])
    for _, room in ipairs(rooms) do
      local how = leave(p, gw, room, user)
      if how > 0 then
        table.insert(left, room)
        table.insert(left, user)
        table.insert(left, how)
      end
    end
  end
end
return {left, offline}
";

/// Extends a lease; returns 1 when the gateway had a live one.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + ARGV[2], ARGV[1])
if old and tonumber(old) > now then return 1 end
return 0
";

/// Claims the gateways whose lease ran out, atomically: each loses its lease, and its
/// connections hash moves aside to a sweep key listed in `sweeps` (KEYS[2]), so connections it
/// opens after renewing land in a fresh hash the sweep never touches, and a sweep a control
/// could not finish is resumed by the next one.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local p, nonce = ARGV[1], ARGV[2]
for _, gw in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], gw)
  local conns = p .. ':gw:' .. gw .. ':conns'
  local moved = p .. ':gw:' .. gw .. ':sweep:' .. nonce
  if redis.call('EXISTS', conns) == 1 then redis.call('RENAME', conns, moved) end
  redis.call('HSET', KEYS[2], moved, gw)
end
return redis.call('HGETALL', KEYS[2])
";

/// Moves a gateway's connections hash aside to a sweep key listed in `sweeps` (as `CLAIM`
/// does for an expired gateway), so a restarted gateway's new connections land in a fresh hash
/// while the old ones are closed, and a reset cut short is finished by the next sweep.
const RESET: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[3], KEYS[2], ARGV[1])
return 1
";

pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    session_ttl: Duration,
    open: Script,
    join: Script,
    leave: Script,
    close: Script,
    lease: Script,
    claim: Script,
    reset: Script,
}

impl RedisState {
    /// Connects to `url`; fails when Redis cannot be reached now. Later outages are errors of
    /// single operations, retried by the connection manager's reconnects.
    pub async fn open(url: &str, prefix: &str, session_ttl: Duration) -> Result<Self, StateError> {
        let client = redis::Client::open(url).map_err(StateError::from)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(StateError::from)?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            session_ttl,
            open: Script::new(&[CONN_LIB, OPEN].concat()),
            join: Script::new(&[CONN_LIB, JOIN].concat()),
            leave: Script::new(&[CONN_LIB, LEAVE].concat()),
            close: Script::new(&[CONN_LIB, CLOSE].concat()),
            lease: Script::new(LEASE),
            claim: Script::new(CLAIM),
            reset: Script::new(RESET),
        })
    }

    /// The connection to this Redis, for the stores that live beside the state.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
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
        let opened: i64 = self
            .open
            .key(self.key(&format!("gw:{gateway}:conns")))
            .key(self.key(&format!("user:{}:routes", session.user_id)))
            .key(self.key(&format!("gw:{gateway}:closed:{conn_id}")))
            .key(self.key(&format!("user:{}:acking", session.user_id)))
            .arg(&self.prefix)
            .arg(gateway)
            .arg(conn_id)
            .arg(session.user_id)
            .arg(shard)
            .arg(room_id)
            .arg(&session.user_name)
            .arg(u8::from(acks))
            .arg(max_user_conns)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        if opened == -1 {
            return Ok(Err(TooManyConnections));
        }
        Ok(Ok(Arrival { joined: entered(opened & 3, room_id, session), online: opened & 4 != 0 }))
    }

    pub async fn conn_join(
        &self,
        gateway: &str,
        conn_id: u64,
        session: &Session,
        room_id: u64,
    ) -> Result<Result<Option<RoomChange>, NoConnection>, StateError> {
        let joined: i64 = self
            .join
            .key(self.key(&format!("gw:{gateway}:conns")))
            .arg(&self.prefix)
            .arg(gateway)
            .arg(conn_id)
            .arg(room_id)
            .arg(&session.user_name)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok(match joined {
            -1 => Err(NoConnection),
            how => Ok(entered(how, room_id, session)),
        })
    }

    pub async fn conn_leave(
        &self,
        gateway: &str,
        conn_id: u64,
        room_id: u64,
    ) -> Result<Option<RoomChange>, StateError> {
        let left: Vec<u64> = self
            .leave
            .key(self.key(&format!("gw:{gateway}:conns")))
            .arg(&self.prefix)
            .arg(gateway)
            .arg(conn_id)
            .arg(room_id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok(match left[..] {
            [user, how] if how > 0 => Some(RoomChange::left(room_id, user, how == 2)),
            _ => None,
        })
    }

    /// Forgets connections of `gateway`; returns the changes: rooms users left, users who went
    /// offline.
    pub async fn conn_close(&self, gateway: &str, conn_ids: &[u64]) -> Result<Departures, StateError> {
        let conns = self.key(&format!("gw:{gateway}:conns"));
        self.close_from(gateway, &conns, conn_ids, super::CLOSED_TOMBSTONE.as_secs()).await
    }

    /// Forgets connections of `gateway` listed in the hash `conns`; those not there get a
    /// tombstone for `tombstone_secs` (0: none).
    async fn close_from(
        &self,
        gateway: &str,
        conns: &str,
        conn_ids: &[u64],
        tombstone_secs: u64,
    ) -> Result<Departures, StateError> {
        let mut call = self.close.key(conns);
        call.arg(&self.prefix).arg(gateway).arg(tombstone_secs);
        for id in conn_ids {
            call.arg(id);
        }
        let (left, offline): (Vec<u64>, Vec<u64>) =
            call.invoke_async(&mut self.conn.clone()).await.map_err(StateError::from)?;
        let left = left.chunks_exact(3).map(|t| RoomChange::left(t[0], t[1], t[2] == 2)).collect();
        Ok(Departures { left, offline })
    }

    pub async fn gateway_reset(&self, gateway: &str) -> Result<Departures, StateError> {
        let moved = self.key(&format!("gw:{gateway}:sweep:{}", nonce()));
        let claimed: i64 = self
            .reset
            .key(self.key(&format!("gw:{gateway}:conns")))
            .key(&moved)
            .key(self.key("sweeps"))
            .arg(gateway)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        if claimed == 0 {
            return Ok(Departures::default());
        }
        let changes = self.close_all(gateway, &moved).await?;
        let _: i64 = self.conn.clone().hdel(self.key("sweeps"), &moved).await.map_err(StateError::from)?;
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
        let had: i64 = self
            .lease
            .key(self.key("gateways"))
            .arg(gateway)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok(had == 1)
    }

    pub async fn sweep_expired(&self) -> Result<Vec<(String, Departures)>, StateError> {
        let mut swept = Vec::new();
        for (moved, gateway) in self.claim_expired().await? {
            // One gateway's failure must not hold the others back; it is resumed next time.
            match self.close_all(&gateway, &moved).await {
                Ok(changes) => {
                    let _: i64 =
                        self.conn.clone().hdel(self.key("sweeps"), &moved).await.map_err(StateError::from)?;
                    swept.push((gateway, changes));
                }
                Err(e) => {
                    tracing::warn!(%gateway, error = %e, "sweeping a gateway failed; resumed next round")
                }
            }
        }
        Ok(swept)
    }

    /// The first half of a sweep: claims the expired gateways (see `CLAIM`); returns every
    /// sweep to do, (moved connections key, gateway), including unfinished earlier ones.
    #[doc(hidden)]
    pub async fn claim_expired(&self) -> Result<Vec<(String, String)>, StateError> {
        let pairs: Vec<String> = self
            .claim
            .key(self.key("gateways"))
            .key(self.key("sweeps"))
            .arg(&self.prefix)
            .arg(nonce())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StateError::from)?;
        Ok(pairs.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect())
    }

    pub async fn ping(&self) -> Result<(), StateError> {
        redis::cmd("PING").query_async::<()>(&mut self.conn.clone()).await.map_err(StateError::from)
    }

    pub async fn room_count(&self, room_id: u64) -> Result<u64, StateError> {
        self.conn.clone().hlen(self.key(&format!("room:{room_id}:members"))).await.map_err(StateError::from)
    }

    pub async fn room_members(&self, room_id: u64) -> Result<BTreeMap<String, String>, StateError> {
        self.conn.clone().hgetall(self.key(&format!("room:{room_id}:names"))).await.map_err(StateError::from)
    }

    pub async fn is_member(&self, room_id: u64, user_id: u64) -> Result<bool, StateError> {
        self.conn
            .clone()
            .hexists(self.key(&format!("room:{room_id}:members")), user_id)
            .await
            .map_err(StateError::from)
    }

    pub async fn user_connections(&self, user_id: u64) -> Result<u64, StateError> {
        let counts: Vec<u64> = self
            .conn
            .clone()
            .hvals(self.key(&format!("user:{user_id}:routes")))
            .await
            .map_err(StateError::from)?;
        Ok(counts.iter().sum())
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
        let (online, acking): (bool, bool) = redis::pipe()
            .exists(self.key(&format!("user:{user_id}:routes")))
            .exists(self.key(&format!("user:{user_id}:acking")))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(Reach { online, acking })
    }

    pub async fn routes(&self, room_ids: &[u64], user_ids: &[u64]) -> Result<Routes, StateError> {
        let mut pipe = redis::pipe();
        for room in room_ids {
            pipe.hkeys(self.key(&format!("room:{room}:gws")));
        }
        for user in user_ids {
            pipe.hkeys(self.key(&format!("user:{user}:routes")));
        }
        let mut replies: Vec<Vec<String>> =
            pipe.query_async(&mut self.conn.clone()).await.map_err(StateError::from)?;
        let users = replies.split_off(room_ids.len());
        Ok(Routes {
            rooms: replies,
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
