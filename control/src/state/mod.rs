//! Sessions, live connections, rooms and routing, kept consistent when one user has several
//! connections: a user is in a room (and counted once) while any of its connections is.
//!
//! Two stores behind one interface: [`MemoryState`] in this process (the embedded default) and
//! [`RedisState`], shared by several controls. Gateways hold leases they renew; a gateway whose
//! lease runs out is swept with its connections, so a dead gateway leaves no drift behind.

mod memory;
mod redis;

use std::collections::BTreeMap;
use std::time::Duration;

use gochat_proto::logic::User;

pub use memory::MemoryState;
pub use redis::RedisState;
pub(crate) use redis::{numbered, room_key, user_key};

/// How long a close that found no connection is remembered: a gateway undoes an auth call it
/// gave up on (timed out) with a close, which can reach the state before the open it undoes.
pub(crate) const CLOSED_TOMBSTONE: Duration = Duration::from_secs(60);

/// A logged-in user's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: u64,
    pub user_name: String,
}

impl From<Session> for User {
    fn from(s: Session) -> Self {
        Self { user_id: s.user_id, user_name: s.user_name }
    }
}

/// A room's membership changed: a user joined (first connection) or left (last one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoomChange {
    pub room_id: u64,
    pub user_id: u64,
    /// Whether the user joined (else left).
    pub joined: bool,
    /// The user's name, when it joined.
    pub user_name: String,
    /// Whether the room had no other member: it was empty before this join (occupied), or is
    /// empty after this leave (vacated). Told by the store that made the change, so once per
    /// cluster.
    pub alone: bool,
}

impl RoomChange {
    /// `session`'s user joined `room_id`; `first`: the room was empty.
    pub fn joined(room_id: u64, session: &Session, first: bool) -> Self {
        Self {
            room_id,
            user_id: session.user_id,
            joined: true,
            user_name: session.user_name.clone(),
            alone: first,
        }
    }

    /// `user_id` left `room_id`; `last`: the room is empty now.
    pub fn left(room_id: u64, user_id: u64, last: bool) -> Self {
        Self { room_id, user_id, joined: false, user_name: String::new(), alone: last }
    }
}

// What connections opening and closing changed. Each change is told only to the caller whose
// operation made it, however many controls share the store. One connection's open or close
// reports its user's transition without allocating (every connect and close pays for it).

/// What recording a connection changed: the room its user joined (its first connection there),
/// and whether the user came online (its first connection anywhere).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arrival {
    pub joined: Option<RoomChange>,
    pub online: bool,
}

/// What forgetting one connection changed: the rooms its user left, and the user, when this was
/// its last connection (it went offline).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Departure {
    pub left: Vec<RoomChange>,
    pub offline: Option<u64>,
}

/// What forgetting many connections (a gateway's) changed: the rooms users left, and the users
/// who went offline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Departures {
    pub left: Vec<RoomChange>,
    pub offline: Vec<u64>,
}

impl Departures {
    fn add(&mut self, one: Departure) {
        self.left.extend(one.left);
        self.offline.extend(one.offline);
    }
}

/// A socket that authenticated, as logic records it.
#[derive(Debug, Clone, Copy)]
pub struct NewConn<'a> {
    pub gateway: &'a str,
    pub shard: u32,
    pub conn_id: u64,
    /// Its first room (0: none yet).
    pub room_id: u64,
    /// Its client acknowledges private messages.
    pub acks: bool,
    /// The most connections its user may have at once (0: no cap).
    pub max_user_conns: u32,
}

/// The user has as many connections as it may: the new one is not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyConnections;

/// Whether a user can get a private message now, and whether a client of theirs acknowledges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    pub online: bool,
    pub acking: bool,
}

/// A role of the cluster, as the server API's `info` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKind {
    Control,
    Gateway,
    Worker,
}

impl NodeKind {
    pub const ALL: [NodeKind; 3] = [NodeKind::Control, NodeKind::Gateway, NodeKind::Worker];

    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Control => "control",
            NodeKind::Gateway => "gateway",
            NodeKind::Worker => "worker",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// What a node last reported of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub kind: NodeKind,
    pub id: String,
    pub version: String,
    /// A gateway's sockets, a control's HTTP connections, a worker's gateway links.
    pub connections: u64,
    /// When, in ms since the Unix epoch (the reporting control's clock).
    pub at_ms: u64,
}

/// How long a node's report stands: past it, the node is taken for gone.
pub const NODE_REPORT_TTL: Duration = Duration::from_secs(30);

/// The connection a join names is not recorded (it closed, or never authenticated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoConnection;

/// The state store failed; the operation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

impl From<::redis::RedisError> for StateError {
    fn from(e: ::redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// Where a batch of rooms and users is connected: per room the gateways with members, per user
/// its (gateway, shard) pairs; both in the order asked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routes {
    pub rooms: Vec<Vec<String>>,
    pub users: Vec<Vec<(String, u32)>>,
}

// One per control process: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum State {
    Memory(MemoryState),
    Redis(RedisState),
}

impl State {
    pub fn memory(session_ttl: Duration) -> Self {
        Self::Memory(MemoryState::new(session_ttl))
    }

    /// A room history where this state is: in this process, or on the same Redis.
    pub fn history(&self, limits: crate::history::Limits) -> crate::history::History {
        use crate::history::{History, MemoryHistory, RedisHistory};
        match self {
            _ if limits.size == 0 => History::Off,
            Self::Memory(_) => History::Memory(MemoryHistory::new(limits)),
            Self::Redis(s) => History::Redis(RedisHistory::new(s.connection(), s.prefix(), limits)),
        }
    }

    /// Kept private messages where this state is: in this process, or on the same Redis.
    pub fn kept(&self, limits: crate::kept::Limits) -> crate::kept::KeptStore {
        use crate::kept::{KeptStore, MemoryKeptStore, RedisKeptStore};
        match self {
            _ if limits.size == 0 => KeptStore::Off,
            Self::Memory(_) => KeptStore::Memory(MemoryKeptStore::new(limits)),
            Self::Redis(s) => KeptStore::Redis(RedisKeptStore::new(s.connection(), s.prefix(), limits)),
        }
    }

    pub async fn create_session(&self, token: String, session: Session) -> Result<(), StateError> {
        match self {
            Self::Memory(s) => {
                s.create_session(token, session);
                Ok(())
            }
            Self::Redis(s) => s.create_session(&token, &session).await,
        }
    }

    /// The session of `token`, if it exists and has not expired.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, StateError> {
        match self {
            Self::Memory(s) => Ok(s.session(token)),
            Self::Redis(s) => s.session(token).await,
        }
    }

    /// Ends `token`'s session; returns it when it was live.
    pub async fn remove_session(&self, token: &str) -> Result<Option<Session>, StateError> {
        match self {
            Self::Memory(s) => Ok(s.remove_session(token)),
            Self::Redis(s) => s.remove_session(token).await,
        }
    }

    /// Records a live connection, in `room_id` unless 0, unless its user has as many as it
    /// may. Idempotent; returns the changes: the user came online, joined the room.
    pub async fn conn_open(
        &self,
        conn: &NewConn<'_>,
        session: &Session,
    ) -> Result<Result<Arrival, TooManyConnections>, StateError> {
        match self {
            Self::Memory(s) => Ok(s.conn_open(conn, session)),
            Self::Redis(s) => s.conn_open(conn, session).await,
        }
    }

    /// Adds a recorded connection to another room; the change when the user newly joined it.
    pub async fn conn_join(
        &self,
        gateway: &str,
        conn_id: u64,
        session: &Session,
        room_id: u64,
    ) -> Result<Result<Option<RoomChange>, NoConnection>, StateError> {
        match self {
            Self::Memory(s) => Ok(s.conn_join(gateway, conn_id, session, room_id).ok_or(NoConnection)),
            Self::Redis(s) => s.conn_join(gateway, conn_id, session, room_id).await,
        }
    }

    /// Takes a connection out of one of its rooms. Idempotent; the change when its user left.
    pub async fn conn_leave(
        &self,
        gateway: &str,
        conn_id: u64,
        room_id: u64,
    ) -> Result<Option<RoomChange>, StateError> {
        match self {
            Self::Memory(s) => Ok(s.conn_leave(gateway, conn_id, room_id)),
            Self::Redis(s) => s.conn_leave(gateway, conn_id, room_id).await,
        }
    }

    /// Forgets a connection. Idempotent; returns the changes: the rooms its user left, the user
    /// went offline. A connection not (yet) recorded is never recorded later
    /// ([`CLOSED_TOMBSTONE`]).
    pub async fn conn_close(&self, gateway: &str, conn_id: u64) -> Result<Departure, StateError> {
        match self {
            Self::Memory(s) => Ok(s.conn_close(gateway, conn_id)),
            Self::Redis(s) => {
                let Departures { left, offline } = s.conn_close(gateway, &[conn_id]).await?;
                Ok(Departure { left, offline: offline.first().copied() })
            }
        }
    }

    /// Forgets every connection of `gateway`; returns the changes: rooms that lost members,
    /// users who went offline.
    pub async fn gateway_reset(&self, gateway: &str) -> Result<Departures, StateError> {
        match self {
            Self::Memory(s) => Ok(s.gateway_reset(gateway)),
            Self::Redis(s) => s.gateway_reset(gateway).await,
        }
    }

    /// Extends `gateway`'s lease by `ttl`; false when it had none (new, or expired and swept).
    pub async fn gateway_lease(&self, gateway: &str, ttl: Duration) -> Result<bool, StateError> {
        match self {
            Self::Memory(s) => Ok(s.gateway_lease(gateway, ttl)),
            Self::Redis(s) => s.gateway_lease(gateway, ttl).await,
        }
    }

    /// Forgets the gateways whose lease ran out, with their connections; returns them and the
    /// changes (rooms that lost members, users who went offline).
    pub async fn sweep_expired(&self) -> Result<Vec<(String, Departures)>, StateError> {
        match self {
            Self::Memory(s) => Ok(s.sweep_expired()),
            Self::Redis(s) => s.sweep_expired().await,
        }
    }

    /// Distinct users online in a room.
    pub async fn room_count(&self, room_id: u64) -> Result<u64, StateError> {
        match self {
            Self::Memory(s) => Ok(s.room_count(room_id)),
            Self::Redis(s) => s.room_count(room_id).await,
        }
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), StateError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(s) => s.ping().await,
        }
    }

    /// user id (as a string) → user name, for a room.
    pub async fn room_members(&self, room_id: u64) -> Result<BTreeMap<String, String>, StateError> {
        match self {
            Self::Memory(s) => Ok(s.room_members(room_id)),
            Self::Redis(s) => s.room_members(room_id).await,
        }
    }

    /// Whether `user_id` has a live connection in `room_id`.
    pub async fn is_member(&self, room_id: u64, user_id: u64) -> Result<bool, StateError> {
        match self {
            Self::Memory(s) => Ok(s.is_member(room_id, user_id)),
            Self::Redis(s) => s.is_member(room_id, user_id).await,
        }
    }

    /// Whether `user_id` is online, and with a client that acknowledges private messages.
    pub async fn reach(&self, user_id: u64) -> Result<Reach, StateError> {
        match self {
            Self::Memory(s) => Ok(s.reach(user_id)),
            Self::Redis(s) => s.reach(user_id).await,
        }
    }

    /// Live sockets of `user_id`, over every gateway.
    pub async fn user_connections(&self, user_id: u64) -> Result<u64, StateError> {
        match self {
            Self::Memory(s) => Ok(s.user_connections(user_id)),
            Self::Redis(s) => s.user_connections(user_id).await,
        }
    }

    /// Records what a node reports of itself (replacing its last report).
    pub async fn node_report(&self, report: &NodeReport) -> Result<(), StateError> {
        match self {
            Self::Memory(s) => {
                s.node_report(report);
                Ok(())
            }
            Self::Redis(s) => s.node_report(report).await,
        }
    }

    /// The nodes that reported within [`NODE_REPORT_TTL`], by kind and id; older reports are
    /// forgotten.
    pub async fn nodes(&self) -> Result<Vec<NodeReport>, StateError> {
        let since = crate::ids::unix_ms().saturating_sub(NODE_REPORT_TTL.as_millis() as u64);
        let mut nodes = match self {
            Self::Memory(s) => s.nodes(since),
            Self::Redis(s) => s.nodes(since).await?,
        };
        nodes.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(nodes)
    }

    /// Where `room_ids` and `user_ids` are connected, in one round trip.
    pub async fn routes(&self, room_ids: &[u64], user_ids: &[u64]) -> Result<Routes, StateError> {
        match self {
            Self::Memory(s) => Ok(Routes {
                rooms: room_ids.iter().map(|r| s.room_gateways(*r)).collect(),
                users: user_ids.iter().map(|u| s.user_routes(*u)).collect(),
            }),
            Self::Redis(s) => s.routes(room_ids, user_ids).await,
        }
    }
}
