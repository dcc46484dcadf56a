//! What other threads ask of a shard ([`Command`], through its inbox) and what it asks of logic
//! ([`Effect`]), with the answers logic gives, each made from logic's message in one place.

use gochat_proto::logic as pb;
use gochat_proto::wire::Position;

use super::framed::Framed;
use super::limits::ShardLimits;

/// The user a token belongs to, with what logic has for the new connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthedUser {
    pub user_id: u64,
    pub user_name: String,
    /// The answer to the join of the room in the auth frame.
    pub joined: JoinAnswer,
    /// Private messages kept for the user.
    pub kept: Kept,
}

/// Logic's answer for one socket of a `ConnOpen` call; the error is the refusal logic gave
/// instead of a user.
impl TryFrom<pb::ConnOpenResult> for AuthedUser {
    type Error = tonic::Status;

    fn try_from(result: pb::ConnOpenResult) -> Result<Self, Self::Error> {
        let Some(user) = result.user else {
            return Err(tonic::Status::new(tonic::Code::from(result.code), result.message));
        };
        Ok(Self {
            user_id: user.user_id,
            user_name: user.user_name,
            joined: result.joined.unwrap_or_default().into(),
            kept: result.pending.unwrap_or_default().into(),
        })
    }
}

/// What logic answered a join: where the room's history stands, and what the connection
/// missed since the position it gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinAnswer {
    /// None when the room keeps no history.
    pub position: Option<Position>,
    /// Only when the connection asked to recover: whether `bodies` are all it missed.
    pub recovered: Option<bool>,
    /// The missed room messages, oldest first.
    pub bodies: Vec<Vec<u8>>,
}

impl From<pb::Joined> for JoinAnswer {
    fn from(joined: pb::Joined) -> Self {
        Self {
            position: joined.position.map(|p| Position { epoch: p.epoch, seq: p.seq }),
            recovered: joined.recovered,
            bodies: joined.bodies,
        }
    }
}

/// Private messages kept for a user until a client of theirs acknowledges them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub bodies: Vec<Vec<u8>>,
    /// How many more are kept after these.
    pub more: u32,
}

impl From<pb::Pending> for Kept {
    fn from(pending: pb::Pending) -> Self {
        Self { bodies: pending.bodies, more: pending.more }
    }
}

/// Why a connection's auth failed, with the WebSocket close code it earns
/// ([`crate::protocol::close`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRefused {
    pub close_code: u16,
    pub message: String,
}

/// What other threads ask of a shard.
#[derive(Debug)]
pub enum Command {
    /// Write to every local member of a room.
    Room { room_id: u64, frames: Framed },
    /// Write to every local connection of a user.
    User { user_id: u64, frames: Framed },
    /// The answer to an [`Effect::Auth`] (boxed, as are the other answers: they are rare, and
    /// every command in an inbox takes the room of the largest).
    AuthDone { key: u32, conn_id: u64, result: Result<Box<AuthedUser>, AuthRefused> },
    /// The answer to an [`Effect::Join`]: the join, or why not.
    JoinDone { key: u32, conn_id: u64, room_id: u64, result: Result<Box<JoinAnswer>, String> },
    /// More private messages kept for a connection that acknowledged the last ones.
    Kept { key: u32, conn_id: u64, kept: Kept },
    /// Close the user's connections that authenticated with these sessions
    /// ([`gochat_proto::wire::session_fingerprint`]): the user logged out.
    EndSessions { user_id: u64, sessions: Vec<u64> },
    /// Write to every authenticated connection (the server API's broadcast).
    Everyone { frames: Framed },
    /// Close every connection of the user with this WebSocket close code and reason (the
    /// server API's disconnect).
    Disconnect { user_id: u64, code: u16, reason: String },
    /// Take every connection of the user out of a room (the server API's kick).
    Kick { user_id: u64, room_id: u64 },
    /// Tell one connection a request of its was refused (op 8); it stays open.
    Notice { key: u32, conn_id: u64, message: String },
    /// Close every connection and keep running: logic lost track of them (this gateway was
    /// taken for dead), so clients must reconnect to be routable again.
    CloseAll,
    /// Take no new connections and close the open ones spread over `within_secs`, so their
    /// clients reconnect elsewhere a few at a time
    /// ([`SERVICE_RESTART`](crate::protocol::close::SERVICE_RESTART)).
    Drain { within_secs: u32 },
    /// New limits (a config reload): for new connections and, from their next frame or timer,
    /// for open ones.
    Limits(Box<ShardLimits>),
    /// Close every connection and stop.
    Shutdown,
}

/// What a shard asks of logic; the gateway's logic link carries them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Auth {
        key: u32,
        conn_id: u64,
        token: String,
        room_id: u64,
        since: Option<Position>,
        acks: bool,
    },
    /// A connection logic knows about (it authenticated) is gone.
    Closed {
        conn_id: u64,
    },
    /// A room message from a live connection (`key`, `conn_id` to answer it with a notice).
    RoomSend {
        key: u32,
        conn_id: u64,
        user_id: u64,
        room_id: u64,
        msg: String,
    },
    /// A live connection joins another room, recovering from `since`.
    Join {
        key: u32,
        conn_id: u64,
        user_id: u64,
        room_id: u64,
        since: Option<Position>,
    },
    /// A connection logic knows about left one of its rooms.
    Leave {
        conn_id: u64,
        room_id: u64,
    },
    /// Private messages of `user_id` the client of connection `key` has; `more`: it wants the
    /// next kept ones.
    Ack {
        key: u32,
        conn_id: u64,
        user_id: u64,
        ids: Vec<u64>,
        more: bool,
    },
}
