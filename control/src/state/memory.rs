//! The state in this process's memory, for the embedded default and a single control: one
//! lock, short critical sections, no I/O under it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    Arrival, Departure, Departures, NewConn, NodeKind, NodeReport, Reach, RoomChange, Session,
    TooManyConnections,
};

/// Where a live connection is, and its rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conn {
    user_id: u64,
    rooms: Vec<u64>,
    shard: u32,
    /// Its client acknowledges private messages.
    acks: bool,
}

#[derive(Debug, Default)]
struct Member {
    user_name: String,
    conns: u32,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, (Session, Instant)>,
    /// (gateway, connection id) → connection.
    conns: HashMap<(String, u64), Conn>,
    rooms: HashMap<u64, BTreeMap<u64, Member>>,
    /// user → its connections' (gateway, shard) and how many connections each holds.
    user_routes: HashMap<u64, BTreeMap<(String, u32), u32>>,
    /// room → gateways with members, and how many connections each holds.
    room_gateways: HashMap<u64, BTreeMap<String, u32>>,
    /// user → its connections whose clients acknowledge private messages.
    acking: HashMap<u64, u32>,
    /// gateway → when its lease runs out.
    leases: HashMap<String, Instant>,
    /// Closes that found no connection, until when they are remembered.
    closed: HashMap<(String, u64), Instant>,
    /// (kind, id) → the node's last report.
    nodes: HashMap<(NodeKind, String), NodeReport>,
}

pub struct MemoryState {
    inner: Mutex<Inner>,
    session_ttl: Duration,
}

impl MemoryState {
    pub fn new(session_ttl: Duration) -> Self {
        Self { inner: Mutex::default(), session_ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create_session(&self, token: String, session: Session) {
        let expires = Instant::now() + self.session_ttl;
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.sessions.len() % 1024 == 1023 {
            inner.sessions.retain(|_, (_, exp)| *exp > now);
        }
        inner.sessions.insert(token, (session, expires));
    }

    /// The session of `token`, if it exists and has not expired.
    pub fn session(&self, token: &str) -> Option<Session> {
        let mut inner = self.lock();
        match inner.sessions.get(token) {
            Some((s, exp)) if *exp > Instant::now() => Some(s.clone()),
            Some(_) => {
                inner.sessions.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn remove_session(&self, token: &str) -> Option<Session> {
        let (session, expires) = self.lock().sessions.remove(token)?;
        (expires > Instant::now()).then_some(session)
    }

    /// Records a live connection, in `room_id` unless 0, unless its user has as many as it
    /// may. Idempotent; returns the changes: the user came online, joined the room.
    pub fn conn_open(&self, conn: &NewConn<'_>, session: &Session) -> Result<Arrival, TooManyConnections> {
        let NewConn { gateway, shard, conn_id, room_id, acks, max_user_conns } = *conn;
        let mut inner = self.lock();
        let key = (gateway.to_string(), conn_id);
        if inner.conns.contains_key(&key) || inner.closed.get(&key).is_some_and(|t| *t > Instant::now()) {
            return Ok(Arrival::default());
        }
        let user_conns: u32 = inner.user_routes.get(&session.user_id).map_or(0, |r| r.values().sum());
        if max_user_conns > 0 && user_conns >= max_user_conns {
            return Err(TooManyConnections);
        }
        inner.conns.insert(key, Conn { user_id: session.user_id, rooms: Vec::new(), shard, acks });
        if acks {
            *inner.acking.entry(session.user_id).or_default() += 1;
        }
        let routes = inner.user_routes.entry(session.user_id).or_default();
        let online = routes.is_empty();
        *routes.entry((gateway.to_string(), shard)).or_default() += 1;
        let joined = match room_id {
            0 => None,
            _ => inner.enter(gateway, conn_id, session, room_id).flatten(),
        };
        Ok(Arrival { joined, online })
    }

    /// Adds a recorded connection to `room_id`; None when there is no such connection (it
    /// closed), else the change when the user newly joined.
    pub fn conn_join(
        &self,
        gateway: &str,
        conn_id: u64,
        session: &Session,
        room_id: u64,
    ) -> Option<Option<RoomChange>> {
        self.lock().enter(gateway, conn_id, session, room_id)
    }

    /// Takes a connection out of `room_id`; the change when its user left the room.
    pub fn conn_leave(&self, gateway: &str, conn_id: u64, room_id: u64) -> Option<RoomChange> {
        let mut inner = self.lock();
        let conn = inner.conns.get_mut(&(gateway.to_string(), conn_id))?;
        let at = conn.rooms.iter().position(|r| *r == room_id)?;
        conn.rooms.swap_remove(at);
        let user_id = conn.user_id;
        inner.leave_room(gateway, user_id, room_id)
    }

    /// Forgets a connection. Idempotent; returns the changes: the rooms its user left, the user
    /// went offline.
    pub fn conn_close(&self, gateway: &str, conn_id: u64) -> Departure {
        let mut inner = self.lock();
        let key = (gateway.to_string(), conn_id);
        let Some(conn) = inner.conns.remove(&key) else {
            let now = Instant::now();
            if inner.closed.len() % 1024 == 1023 {
                inner.closed.retain(|_, until| *until > now);
            }
            inner.closed.insert(key, now + super::CLOSED_TOMBSTONE);
            return Departure::default();
        };
        inner.unlink(gateway, &conn)
    }

    /// Forgets every connection of `gateway`; returns the changes: rooms that lost members,
    /// users who went offline.
    pub fn gateway_reset(&self, gateway: &str) -> Departures {
        let mut inner = self.lock();
        let gone: Vec<(u64, Conn)> = inner
            .conns
            .iter()
            .filter(|((g, _), _)| g == gateway)
            .map(|((_, id), c)| (*id, c.clone()))
            .collect();
        let mut changes = Departures::default();
        for (id, conn) in gone {
            inner.conns.remove(&(gateway.to_string(), id));
            changes.add(inner.unlink(gateway, &conn));
        }
        changes
    }

    /// Distinct users online in a room.
    pub fn room_count(&self, room_id: u64) -> u64 {
        self.lock().rooms.get(&room_id).map_or(0, |m| m.len() as u64)
    }

    /// user id (as a string) → user name, for a room.
    pub fn room_members(&self, room_id: u64) -> BTreeMap<String, String> {
        self.lock()
            .rooms
            .get(&room_id)
            .map(|m| m.iter().map(|(id, m)| (id.to_string(), m.user_name.clone())).collect())
            .unwrap_or_default()
    }

    pub fn is_member(&self, room_id: u64, user_id: u64) -> bool {
        self.lock().rooms.get(&room_id).is_some_and(|m| m.contains_key(&user_id))
    }

    /// Gateways hosting members of `room_id`.
    pub(crate) fn room_gateways(&self, room_id: u64) -> Vec<String> {
        self.lock().room_gateways.get(&room_id).map(|g| g.keys().cloned().collect()).unwrap_or_default()
    }

    /// (gateway, shard) pairs holding connections of `user_id`.
    pub(crate) fn user_routes(&self, user_id: u64) -> Vec<(String, u32)> {
        self.lock().user_routes.get(&user_id).map(|r| r.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn reach(&self, user_id: u64) -> Reach {
        let inner = self.lock();
        Reach {
            online: inner.user_routes.contains_key(&user_id),
            acking: inner.acking.contains_key(&user_id),
        }
    }

    pub fn user_connections(&self, user_id: u64) -> u64 {
        self.lock().user_routes.get(&user_id).map_or(0, |r| r.values().map(|n| u64::from(*n)).sum())
    }

    pub fn node_report(&self, report: &NodeReport) {
        self.lock().nodes.insert((report.kind, report.id.clone()), report.clone());
    }

    /// The nodes that reported since `since_ms`; the others are forgotten.
    pub fn nodes(&self, since_ms: u64) -> Vec<NodeReport> {
        let mut inner = self.lock();
        inner.nodes.retain(|_, r| r.at_ms >= since_ms);
        inner.nodes.values().cloned().collect()
    }

    /// Extends `gateway`'s lease; false when it had none (new, or expired and swept).
    pub fn gateway_lease(&self, gateway: &str, ttl: Duration) -> bool {
        self.lock().leases.insert(gateway.to_string(), Instant::now() + ttl).is_some()
    }

    /// Gateways whose lease ran out, forgotten with their connections; the changes of each.
    pub fn sweep_expired(&self) -> Vec<(String, Departures)> {
        let now = Instant::now();
        let expired: Vec<String> =
            self.lock().leases.iter().filter(|(_, until)| **until <= now).map(|(g, _)| g.clone()).collect();
        expired
            .into_iter()
            .map(|g| {
                self.lock().leases.remove(&g);
                let changes = self.gateway_reset(&g);
                (g, changes)
            })
            .collect()
    }
}

impl Inner {
    /// Adds a recorded connection to a room: None without such a connection, else the change
    /// when the user newly joined.
    fn enter(
        &mut self,
        gateway: &str,
        conn_id: u64,
        session: &Session,
        room_id: u64,
    ) -> Option<Option<RoomChange>> {
        let conn = self.conns.get_mut(&(gateway.to_string(), conn_id))?;
        if conn.rooms.contains(&room_id) {
            return Some(None);
        }
        conn.rooms.push(room_id);
        *self.room_gateways.entry(room_id).or_default().entry(gateway.to_string()).or_default() += 1;
        let members = self.rooms.entry(room_id).or_default();
        let first = members.is_empty();
        let member = members.entry(session.user_id).or_default();
        member.user_name.clone_from(&session.user_name);
        member.conns += 1;
        Some((member.conns == 1).then(|| RoomChange::joined(room_id, session, first)))
    }

    /// A connection of `user_id` on `gateway` is out of `room_id`: the change when that was
    /// the user's last one there.
    fn leave_room(&mut self, gateway: &str, user_id: u64, room_id: u64) -> Option<RoomChange> {
        decrement(&mut self.room_gateways, room_id, &gateway.to_string());
        let members = self.rooms.get_mut(&room_id)?;
        let member = members.get_mut(&user_id)?;
        member.conns -= 1;
        if member.conns > 0 {
            return None;
        }
        members.remove(&user_id);
        let last = members.is_empty();
        if last {
            self.rooms.remove(&room_id);
        }
        Some(RoomChange::left(room_id, user_id, last))
    }

    /// Forgets a connection's routes and rooms: the changes that made.
    fn unlink(&mut self, gateway: &str, conn: &Conn) -> Departure {
        let last = decrement(&mut self.user_routes, conn.user_id, &(gateway.to_string(), conn.shard));
        if conn.acks {
            if let Some(n) = self.acking.get_mut(&conn.user_id) {
                *n -= 1;
                if *n == 0 {
                    self.acking.remove(&conn.user_id);
                }
            }
        }
        let left =
            conn.rooms.iter().filter_map(|&room| self.leave_room(gateway, conn.user_id, room)).collect();
        Departure { left, offline: last.then_some(conn.user_id) }
    }
}

/// Decrements a nested count, removing empty entries; true when `outer`'s went.
fn decrement<K: Ord>(map: &mut HashMap<u64, BTreeMap<K, u32>>, outer: u64, inner: &K) -> bool {
    let Some(counts) = map.get_mut(&outer) else {
        return false;
    };
    if let Some(n) = counts.get_mut(inner) {
        *n -= 1;
        if *n == 0 {
            counts.remove(inner);
        }
    }
    if counts.is_empty() {
        map.remove(&outer);
        return true;
    }
    false
}
