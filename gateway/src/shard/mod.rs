//! A shard: the connections, rooms and timers one pinned thread owns. Single-threaded and
//! driver-agnostic: the driver feeds it bytes, commands and ticks, and drains the output it
//! queued (`take_dirty` / `out_mut`), the connections to close, and the effects for logic.

mod framed;
pub mod inbox;
mod joins;
pub mod outbound;
mod rooms;
pub mod timer;
mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use gochat_proto::wire::{self, JoinedRoom, Position};
use slab::Slab;

use crate::protocol::session::{self, Phase, Request};
use crate::protocol::{self, ws, Codec, Limits, Output, Transport, Wire};
pub use framed::Framed;
pub use inbox::Inbox;
use joins::{Joins, Offer};
pub use outbound::OutQueue;
use rooms::{Index, Rooms};
use timer::TimerWheel;

/// Connection timing and bounds.
#[derive(Debug, Clone)]
pub struct ShardLimits {
    pub protocol: Limits,
    /// Ping a WebSocket peer silent for this long.
    pub ping_after_secs: u32,
    /// Drop a WebSocket peer silent for this long.
    pub idle_timeout_secs: u32,
    /// Drop a connection that has not authenticated within this long.
    pub auth_timeout_secs: u32,
    /// Pending output per connection; a peer over it is a slow consumer and is dropped.
    pub max_outbound_bytes: usize,
    /// Frames a client may send per second on average (0: no limit) ...
    pub client_frames_per_sec: u32,
    /// ... and at once above it. Frames over the limit are dropped; a client that sends as many
    /// again without slowing down is closed.
    pub client_frame_burst: u32,
    /// Connections this shard accepts.
    pub max_connections: usize,
    /// How long a closing connection may take to write its last bytes before it is dropped.
    pub close_grace_secs: u32,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_conn: usize,
}

impl Default for ShardLimits {
    fn default() -> Self {
        Self {
            protocol: Limits::default(),
            ping_after_secs: 54,
            idle_timeout_secs: 60,
            auth_timeout_secs: 10,
            max_outbound_bytes: 256 * 1024,
            client_frames_per_sec: 20,
            client_frame_burst: 60,
            max_connections: 1_000_000,
            close_grace_secs: 5,
            max_rooms_per_conn: 32,
        }
    }
}

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

/// Private messages kept for a user until a client of theirs acknowledges them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub bodies: Vec<Vec<u8>>,
    /// How many more are kept after these.
    pub more: u32,
}

/// Why a connection's auth failed, with the WebSocket close code it earns.
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
    /// ([`wire::session_fingerprint`]): the user logged out.
    EndSessions { user_id: u64, sessions: Vec<u64> },
    /// Tell one connection a request of its was refused (op 8); it stays open.
    Notice { key: u32, conn_id: u64, message: String },
    /// Close every connection and keep running: logic lost track of them (this gateway was
    /// taken for dead), so clients must reconnect to be routable again.
    CloseAll,
    /// Take no new connections and close the open ones spread over `within_secs`, so their
    /// clients reconnect elsewhere a few at a time (1012, "service restarting").
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

/// Counters readable from other threads (stats, metrics).
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: AtomicU64,
    pub rooms: AtomicU64,
    pub frames_out: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Closes the protocol decided: a client close, a violation, a refused handshake.
    pub protocol_closes: AtomicU64,
    /// Client frames dropped over the rate limit.
    pub frames_throttled: AtomicU64,
    /// Clients closed for flooding (they went on sending far over the limit).
    pub flood_closes: AtomicU64,
    /// wss connections whose TLS handshake failed (plain clients, scanners, untrusting clients).
    pub tls_handshake_failures: AtomicU64,
    /// Open connections that chose the binary protocol: batches are framed in it too while any are.
    pub binary_connections: AtomicU64,
}

struct Conn {
    id: u64,
    codec: Codec,
    phase: Phase,
    opened: u32,
    last_rx: u32,
    ping_sent: bool,
    dirty: bool,
    /// The fingerprint of the token it authenticated with, so a logout can close it.
    session: u64,
    /// Rate limit: frames it may still send, when that was last topped up (s), and frames
    /// dropped since it last had credit.
    credit: u16,
    credit_at: u32,
    over: u16,
    /// When this connection's live timer entry fires.
    timer_at: u32,
    closing: bool,
    /// Its first room (0: none) and its place in that room's member list; the others are in
    /// the shard's `rooms`.
    room: u64,
    room_pos: u32,
    /// Its place in the user's member list (valid when live).
    user_pos: u32,
    out: OutQueue,
    /// A wss connection: its session is in the shard's `tls` table, and what is queued in `out`
    /// is encrypted. (Flags in padding, so plain connections carry nothing for TLS.)
    tls: bool,
    /// Joining a room: its room frames go through the shard's `joins`.
    joining: bool,
    /// Acknowledges private messages (op 12).
    acks: bool,
    /// Was told more private messages are kept for it: its next ack asks for them.
    kept_more: bool,
    /// Chose the binary protocol (counted in the shard's stats).
    binary: bool,
}

impl rooms::Member for Conn {
    fn first_room(&mut self) -> (&mut u64, &mut u32) {
        (&mut self.room, &mut self.room_pos)
    }
}

pub struct Shard {
    index: u32,
    /// Distinguishes this process's connection ids from an earlier run's.
    epoch: u16,
    limits: ShardLimits,
    conns: Slab<Conn>,
    next_seq: u64,
    rooms: Rooms,
    joins: Joins,
    users: Index,
    wheel: TimerWheel,
    dirty: Vec<u32>,
    effects: Vec<Effect>,
    outputs: Vec<Output>,
    shutting_down: bool,
    /// Draining: no new connections, and every open one closed by this time (s).
    drain_by: Option<u32>,
    stats: Arc<ShardStats>,
    tls: tls::TlsConns,
}

impl Shard {
    pub fn new(index: u32, epoch: u16, limits: ShardLimits, now: u32) -> Self {
        Self {
            index,
            epoch,
            limits,
            conns: Slab::new(),
            next_seq: 0,
            rooms: Rooms::default(),
            joins: Joins::default(),
            users: Index::default(),
            wheel: TimerWheel::new(now),
            dirty: Vec::new(),
            effects: Vec::new(),
            outputs: Vec::new(),
            shutting_down: false,
            drain_by: None,
            stats: Arc::default(),
            tls: tls::TlsConns::default(),
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn stats(&self) -> Arc<ShardStats> {
        self.stats.clone()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether another connection may be accepted.
    pub fn has_room(&self) -> bool {
        !self.shutting_down && self.drain_by.is_none() && self.conns.len() < self.limits.max_connections
    }

    /// Registers an accepted connection; returns its key and gateway-unique id.
    pub fn open(&mut self, transport: Transport, now: u32) -> (u32, u64) {
        self.next_seq += 1;
        // shard (8 bits) | process epoch (16 bits) | sequence (40 bits)
        let id = (self.index as u64) << 56 | (self.epoch as u64) << 40 | (self.next_seq & ((1 << 40) - 1));
        let key = self.conns.insert(Conn {
            id,
            codec: Codec::new(transport),
            phase: Phase::AwaitAuth,
            opened: now,
            last_rx: now,
            ping_sent: false,
            dirty: false,
            session: 0,
            credit: self.limits.client_frame_burst.min(u16::MAX as u32) as u16,
            credit_at: now,
            over: 0,
            timer_at: 0,
            closing: false,
            room: 0,
            room_pos: 0,
            user_pos: 0,
            out: OutQueue::default(),
            tls: false,
            joining: false,
            acks: false,
            kept_more: false,
            binary: false,
        }) as u32;
        self.arm(key, now + self.limits.auth_timeout_secs);
        self.stats.connections.store(self.conns.len() as u64, Ordering::Relaxed);
        (key, id)
    }

    /// The id of the connection at `key`, if it is open.
    pub fn conn_id(&self, key: u32) -> Option<u64> {
        self.conns.get(key as usize).map(|c| c.id)
    }

    /// Bytes the peer sent; `input` is scratch (unmasked in place).
    pub fn on_data(&mut self, key: u32, input: &mut [u8], now: u32) {
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| !c.closing) else {
            return;
        };
        conn.last_rx = now;
        conn.ping_sent = false;
        if conn.tls {
            return self.on_tls_data(key, input, now);
        }
        self.feed(key, input, now);
    }

    /// Bytes for the connection's codec (decrypted, for TLS).
    fn feed(&mut self, key: u32, input: &mut [u8], now: u32) {
        let conn = &mut self.conns[key as usize];
        let mut outputs = std::mem::take(&mut self.outputs);
        conn.codec.feed(input, &self.limits.protocol, &mut outputs);
        if !conn.binary && conn.codec.wire() == Wire::WsBinary {
            conn.binary = true;
            self.stats.binary_connections.fetch_add(1, Ordering::Relaxed);
        }
        if conn.phase == Phase::AwaitAuth && conn.codec.is_echo() {
            conn.phase = Phase::Echo;
            let ping_at = now + self.limits.ping_after_secs;
            self.arm(key, ping_at);
        }
        for output in outputs.drain(..) {
            if !matches!(output, Output::Close) && !self.admit(key, now) {
                continue;
            }
            match output {
                Output::Send(bytes) => self.queue(key, bytes),
                Output::Message(body) => self.on_message(key, &body),
                Output::Close => {
                    self.stats.protocol_closes.fetch_add(1, Ordering::Relaxed);
                    self.begin_close(key, None);
                }
            }
        }
        self.outputs = outputs;
    }

    /// Whether one more client frame (a message, or a ping that owes a pong) is within the
    /// rate limit. Over it the frame is dropped (the first drop is told with op 8); a client
    /// that sends as many again as its burst without slowing down is closed with 1008.
    fn admit(&mut self, key: u32, now: u32) -> bool {
        let limits = &self.limits;
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| !c.closing) else {
            return false;
        };
        if limits.client_frames_per_sec == 0 || conn.phase == Phase::Echo {
            return true;
        }
        let burst = limits.client_frame_burst.min(u16::MAX as u32);
        if now > conn.credit_at {
            let earned = (now - conn.credit_at).saturating_mul(limits.client_frames_per_sec);
            conn.credit = (conn.credit as u32).saturating_add(earned).min(burst) as u16;
            conn.credit_at = now;
        }
        if conn.credit > 0 {
            conn.credit -= 1;
            conn.over = 0;
            return true;
        }
        conn.over = conn.over.saturating_add(1);
        self.stats.frames_throttled.fetch_add(1, Ordering::Relaxed);
        let (over, wire) = (conn.over as u32, conn.codec.wire());
        if over > burst {
            self.stats.flood_closes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = conn.id, "flooding client closed");
            self.refuse_and_close(key, "too many messages, connection closed", "too many messages");
        } else if over == 1 {
            self.queue(key, protocol::error_frame(wire, "too many messages, slow down; some were dropped"));
        }
        false
    }

    fn on_message(&mut self, key: u32, body: &[u8]) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing {
            return;
        }
        let (id, wire) = (conn.id, conn.codec.wire());
        let user_id = match conn.phase {
            Phase::Live { user_id } => user_id,
            _ => 0,
        };
        let request = match conn.binary {
            true => session::interpret_binary(conn.phase, body),
            false => session::interpret(conn.phase, body),
        };
        match request {
            Request::Auth { token, room_id, since, acks } => {
                conn.phase = Phase::Authenticating;
                conn.session = wire::session_fingerprint(&token);
                conn.acks = acks;
                self.begin_join(key, room_id);
                self.effects.push(Effect::Auth { key, conn_id: id, token, room_id, since, acks });
            }
            Request::Reauth { room_id } => {
                if self.rooms.contains(conn, key, room_id) {
                    let frame = auth_ok_frame(wire, user_id, "", room_id, JoinedRoom::default(), 0);
                    self.queue(key, frame);
                } else {
                    let message = format!("this connection is not in room {room_id}; join it with op 10");
                    self.queue(key, protocol::error_frame(wire, &message));
                }
            }
            Request::Join { room_id, since } => {
                if self.rooms.contains(conn, key, room_id) {
                    // A join in progress answers when logic does; otherwise it is done already.
                    if !self.joins.waiting(key, room_id) {
                        self.queue(key, room_reply(wire, wire::OP_JOIN, room_id, JoinedRoom::default()));
                    }
                } else if self.rooms.count(conn, key) >= self.limits.max_rooms_per_conn {
                    let message = format!("at most {} rooms per connection", self.limits.max_rooms_per_conn);
                    self.queue(key, protocol::error_frame(wire, &message));
                } else {
                    self.begin_join(key, room_id);
                    self.effects.push(Effect::Join { key, conn_id: id, user_id, room_id, since });
                }
            }
            Request::Leave { room_id } => {
                if self.rooms.leave(&mut self.conns, key, room_id) {
                    self.joins.end(key, room_id);
                    self.sync_joining(key);
                    self.effects.push(Effect::Leave { conn_id: id, room_id });
                    self.stats.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
                }
                self.queue(key, room_reply(wire, wire::OP_LEAVE, room_id, JoinedRoom::default()));
            }
            Request::RoomSend { room_id, msg } => {
                let room_id = if room_id == 0 { conn.room } else { room_id };
                let joined = self.rooms.contains(conn, key, room_id) && !self.joins.waiting(key, room_id);
                if joined {
                    self.effects.push(Effect::RoomSend { key, conn_id: id, user_id, room_id, msg });
                } else {
                    let message = match room_id {
                        0 => "this connection is in no room: join one with op 10".to_string(),
                        _ => format!("this connection is not in room {room_id}"),
                    };
                    self.queue(key, protocol::error_frame(wire, &message));
                }
            }
            Request::Ack { ids } => {
                let more = std::mem::take(&mut conn.kept_more);
                self.effects.push(Effect::Ack { key, conn_id: id, user_id, ids, more });
            }
            Request::Refuse { message, fatal } => {
                if fatal {
                    // Only a client that has not authenticated is refused for good: its auth
                    // frame was missing, malformed or over the limits.
                    self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    self.refuse_and_close(key, &message, &message);
                } else {
                    self.queue(key, protocol::error_frame(wire, &message));
                }
            }
        }
    }

    /// Lists `key` in `room_id` (0: none) at once, holding the room's frames for it until
    /// logic answers the join, so nothing published meanwhile is missed. A join in an auth
    /// frame waits as long as the auth does (its timeout closes the connection); a later one
    /// is given up after `joins::ANSWER_SECS`.
    fn begin_join(&mut self, key: u32, room_id: u64) {
        if room_id == 0 || !self.rooms.join(&mut self.conns, key, room_id) {
            return;
        }
        let until = match self.conns[key as usize].phase {
            Phase::Live { .. } => self.wheel.now() + joins::ANSWER_SECS,
            _ => u32::MAX,
        };
        self.joins.start(key, room_id, until);
        self.conns[key as usize].joining = true;
        self.stats.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
    }

    /// Logic answered `key`'s join of `room_id`: `reply` (built from the answer, told whether
    /// messages were missed while holding) and `then`, then what it recovered, then what was
    /// held.
    fn finish_join(
        &mut self,
        key: u32,
        room_id: u64,
        answer: JoinAnswer,
        reply: impl FnOnce(JoinedRoom) -> Bytes,
        then: Option<Bytes>,
    ) {
        let wire = self.conns[key as usize].codec.wire();
        let through = match answer.recovered {
            Some(true) => answer.position.as_ref().map(|p| p.seq),
            _ => None,
        };
        let released = self.joins.answered(key, room_id, through, wire, self.wheel.now());
        self.sync_joining(key);
        let mut joined = JoinedRoom { recovered: answer.recovered, ..JoinedRoom::default() };
        if let Some(p) = answer.position {
            (joined.epoch, joined.seq) = (p.epoch, Some(p.seq));
        }
        if released.as_ref().is_some_and(|r| r.overflowed) {
            joined.recovered = Some(false);
        }
        // One write: the queue's bound is for what the client does not read, and all of this
        // was bounded already (held frames here, recovered messages by logic).
        let mut out = reply(joined).to_vec();
        out.extend(then.iter().flatten());
        for body in &answer.bodies {
            protocol::append_frame(wire, body, &mut out);
        }
        for part in released.into_iter().flat_map(|r| r.parts) {
            out.extend_from_slice(&part);
        }
        self.queue(key, out.into());
    }

    fn sync_joining(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.joining = self.joins.any(key);
        }
    }

    /// A command from the inbox.
    pub fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Room { room_id, frames } => {
                let Self { rooms, conns, dirty, limits, stats, tls, joins, .. } = self;
                for &key in rooms.members(room_id) {
                    let conn = &mut conns[key as usize];
                    if !conn.joining {
                        queue_to(conns, dirty, limits, stats, tls, key, |w| frames.for_wire(w));
                        continue;
                    }
                    let wire = conn.codec.wire();
                    match joins.offer(key, room_id, &frames, wire, limits.max_outbound_bytes / 4) {
                        Offer::Pass => {
                            queue_to(conns, dirty, limits, stats, tls, key, |w| frames.for_wire(w))
                        }
                        Offer::Taken => {}
                        Offer::Parts(parts) => {
                            for part in parts {
                                queue_to(conns, dirty, limits, stats, tls, key, |_| part);
                            }
                            conns[key as usize].joining = joins.any(key);
                        }
                    }
                }
            }
            Command::User { user_id, frames } => {
                let Self { users, conns, dirty, limits, stats, tls, .. } = self;
                for &key in users.members(user_id) {
                    queue_to(conns, dirty, limits, stats, tls, key, |w| frames.for_wire(w));
                }
            }
            Command::AuthDone { key, conn_id, result } => self.auth_done(key, conn_id, result),
            Command::JoinDone { key, conn_id, room_id, result } => {
                self.join_done(key, conn_id, room_id, result)
            }
            Command::Kept { key, conn_id, kept } => {
                let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.id == conn_id) else {
                    return;
                };
                conn.kept_more = kept.more > 0;
                if !kept.bodies.is_empty() {
                    let frame = frame_bodies(conn.codec.wire(), &kept.bodies);
                    self.queue(key, frame);
                }
            }
            Command::EndSessions { user_id, sessions } => {
                let ended: Vec<u32> = (self.users.members(user_id).iter())
                    .copied()
                    .filter(|&key| sessions.contains(&self.conns[key as usize].session))
                    .collect();
                for key in ended {
                    self.refuse_and_close(key, "logged out", "logged out");
                }
            }
            Command::Notice { key, conn_id, message } => {
                if let Some(conn) = self.conns.get(key as usize).filter(|c| c.id == conn_id) {
                    let frame = protocol::error_frame(conn.codec.wire(), &message);
                    self.queue(key, frame);
                }
            }
            Command::CloseAll => self.close_all(1012, "service restarted, reconnect"),
            Command::Drain { within_secs } => {
                let now = self.wheel.now();
                self.drain_by = Some(now + within_secs.max(1));
            }
            Command::Limits(limits) => self.limits = *limits,
            Command::Shutdown => {
                self.shutting_down = true;
                self.close_all(1001, "server shutting down");
            }
        }
    }

    fn close_all(&mut self, code: u16, reason: &'static str) {
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.begin_close(key, Some((code, reason)));
        }
    }

    fn auth_done(&mut self, key: u32, conn_id: u64, result: Result<Box<AuthedUser>, AuthRefused>) {
        let conn = match self.conns.get_mut(key as usize) {
            Some(c) if c.id == conn_id && !c.closing => c,
            _ => {
                // Closed while logic was answering: logic recorded it, so tell it it's gone.
                if result.is_ok() {
                    self.effects.push(Effect::Closed { conn_id });
                }
                return;
            }
        };
        if conn.phase != Phase::Authenticating {
            return;
        }
        match result {
            Ok(user) => {
                let user = *user;
                conn.phase = Phase::Live { user_id: user.user_id };
                conn.user_pos = self.users.insert(user.user_id, key);
                conn.kept_more = conn.acks && user.kept.more > 0;
                let (wire, room_id) = (conn.codec.wire(), conn.room);
                let ping_at = conn.last_rx + self.limits.ping_after_secs;
                let (name, more) = (user.user_name, user.kept.more);
                let reply = |joined| auth_ok_frame(wire, user.user_id, &name, room_id, joined, more);
                // Kept private messages right after the reply, before anything of the room.
                let kept = (!user.kept.bodies.is_empty()).then(|| frame_bodies(wire, &user.kept.bodies));
                if room_id == 0 {
                    self.queue(key, reply(JoinedRoom::default()));
                    if let Some(kept) = kept {
                        self.queue(key, kept);
                    }
                } else {
                    self.finish_join(key, room_id, user.joined, reply, kept);
                }
                self.arm(key, ping_at);
            }
            Err(refused) => {
                self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                self.rooms.leave_all(&mut self.conns, key);
                self.joins.forget(key);
                self.sync_joining(key);
                self.stats.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
                self.begin_close(key, Some((refused.close_code, &refused.message)));
            }
        }
    }

    fn join_done(&mut self, key: u32, conn_id: u64, room_id: u64, result: Result<Box<JoinAnswer>, String>) {
        let live = self.conns.get(key as usize).is_some_and(|c| c.id == conn_id && !c.closing);
        if !live || !self.joins.waiting(key, room_id) {
            // Left, or gone, while logic was answering: if logic recorded the join, undo it (a
            // connection that is gone was undone with its close).
            if live && result.is_ok() {
                self.effects.push(Effect::Leave { conn_id, room_id });
            }
            return;
        }
        let conn_wire = self.conns[key as usize].codec.wire();
        match result {
            Ok(answer) => {
                let reply = |joined| room_reply(conn_wire, wire::OP_JOIN, room_id, joined);
                self.finish_join(key, room_id, *answer, reply, None)
            }
            Err(message) => {
                self.rooms.leave(&mut self.conns, key, room_id);
                self.joins.end(key, room_id);
                self.sync_joining(key);
                self.stats.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
                self.queue(key, protocol::error_frame(conn_wire, &message));
            }
        }
    }

    /// Timers: auth timeouts, keep-alive pings, idle drops.
    pub fn on_tick(&mut self, now: u32) {
        let mut due = Vec::new();
        self.wheel.advance(now, |key, id, at| due.push((key, id, at)));
        if let Some(by) = self.drain_by {
            // After the advance, so a close's grace counts from now.
            self.drain_some(now, by);
        }
        self.expire_joins(now);
        for (key, id, at) in due {
            let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.id == id) else {
                continue;
            };
            if conn.timer_at != at {
                continue; // superseded by a later arm()
            }
            if conn.closing {
                // Its grace is over (a peer that stopped reading): drop what it never took.
                conn.out.clear();
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
                continue;
            }
            let silent = now.saturating_sub(conn.last_rx);
            match conn.phase {
                Phase::AwaitAuth | Phase::Authenticating => {
                    let deadline = conn.opened + self.limits.auth_timeout_secs;
                    if now >= deadline {
                        self.begin_close(key, Some((1008, "authentication timeout")));
                    } else {
                        self.arm(key, deadline);
                    }
                }
                // TCP has no protocol ping; dead peers are found by TCP keep-alive.
                Phase::Live { .. } if conn.codec.transport() == Transport::Tcp => {}
                Phase::Live { .. } | Phase::Echo if silent >= self.limits.idle_timeout_secs => {
                    self.begin_close(key, Some((1001, "idle timeout")));
                }
                Phase::Live { .. } | Phase::Echo if silent >= self.limits.ping_after_secs => {
                    let (last_rx, ping) = (conn.last_rx, !conn.ping_sent);
                    conn.ping_sent = true;
                    if ping {
                        self.queue(key, ws::ping_frame());
                    }
                    self.arm(key, last_rx + self.limits.idle_timeout_secs);
                }
                Phase::Live { .. } | Phase::Echo => {
                    let at = conn.last_rx + self.limits.ping_after_secs;
                    self.arm(key, at);
                }
            }
        }
    }

    /// Ends joins that are over: skips past their time, and joins logic never answered, which
    /// are undone.
    fn expire_joins(&mut self, now: u32) {
        for (key, unanswered) in self.joins.expire(now) {
            self.sync_joining(key);
            let Some(room_id) = unanswered else { continue };
            let Some(conn) = self.conns.get(key as usize).filter(|c| !c.closing) else { continue };
            let (conn_id, wire) = (conn.id, conn.codec.wire());
            self.rooms.leave(&mut self.conns, key, room_id);
            self.stats.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
            self.effects.push(Effect::Leave { conn_id, room_id });
            let message = format!("joining room {room_id} timed out, try again");
            self.queue(key, protocol::error_frame(wire, &message));
        }
    }

    /// Closes this tick's share of the open connections, so the last go by `by`.
    fn drain_some(&mut self, now: u32, by: u32) {
        let open: Vec<u32> = self.conns.iter().filter(|(_, c)| !c.closing).map(|(k, _)| k as u32).collect();
        // This tick and each one up to and including `by`.
        let ticks_left = (by.saturating_sub(now) + 1) as usize;
        for &key in open.iter().take(open.len().div_ceil(ticks_left)) {
            self.begin_close(key, Some((1012, "service restarting, reconnect")));
        }
    }

    /// Sets the connection's one live timer entry to `at` (earlier entries become stale).
    fn arm(&mut self, key: u32, at: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.timer_at = self.wheel.schedule(at, key, conn.id);
        }
    }

    /// Queues `bytes` for the connection at `key`.
    fn queue(&mut self, key: u32, bytes: Bytes) {
        queue_to(&mut self.conns, &mut self.dirty, &self.limits, &self.stats, &mut self.tls, key, |_| bytes);
    }

    /// Closes with 1008 and `reason`, after an op 8 `notice` on a WebSocket: gochat's clients
    /// cannot see a close reason (a TCP client gets the reason as its error frame).
    fn refuse_and_close(&mut self, key: u32, notice: &str, reason: &str) {
        let ws = self.conns.get(key as usize).map(|c| c.codec.wire()).filter(|w| *w != Wire::Tcp);
        if let Some(wire) = ws {
            self.queue(key, protocol::error_frame(wire, notice));
        }
        self.begin_close(key, Some((1008, reason)));
    }

    /// Starts closing: owes a close frame (WebSocket) or error frame (TCP) when `why` is given;
    /// the driver removes the connection once its output is written.
    pub fn begin_close(&mut self, key: u32, why: Option<(u16, &str)>) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing {
            return;
        }
        let frame = match (why, conn.codec.transport()) {
            (Some((code, reason)), Transport::WebSocket) if conn.codec.is_open() => {
                Some(ws::close_frame(code, reason))
            }
            (Some((_, reason)), Transport::Tcp) => Some(protocol::error_frame(Wire::Tcp, reason)),
            _ => None,
        };
        if let Some(frame) = frame {
            self.queue(key, frame);
        }
        self.close_tls(key);
        let conn = &mut self.conns[key as usize];
        conn.closing = true;
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        self.arm(key, self.wheel.now() + self.limits.close_grace_secs);
    }

    /// Connections with output to write or a close to finish since the last call.
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        into.clear();
        std::mem::swap(into, &mut self.dirty);
        for &key in into.iter() {
            if let Some(c) = self.conns.get_mut(key as usize) {
                c.dirty = false;
            }
        }
    }

    /// The pending output of the connection at `key`.
    pub fn out_mut(&mut self, key: u32) -> Option<&mut OutQueue> {
        self.conns.get_mut(key as usize).map(|c| &mut c.out)
    }

    /// Records `n` bytes written for `key`.
    pub fn wrote(&mut self, key: u32, n: usize) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            // A completion-based driver may report a write the shard already dropped (a slow
            // consumer cleared while the send was in flight).
            c.out.advance(n.min(c.out.bytes()));
        }
    }

    /// Whether the connection at `key` has pending output.
    pub fn has_output(&self, key: u32) -> bool {
        self.conns.get(key as usize).is_some_and(|c| !c.out.is_empty())
    }

    /// Whether the connection at `key` should be removed once its output is written.
    pub fn is_closing(&self, key: u32) -> bool {
        self.conns.get(key as usize).is_some_and(|c| c.closing)
    }

    /// Removes the connection at `key` (closed by us, by the peer, or failed).
    pub fn remove(&mut self, key: u32) {
        if !self.conns.contains(key as usize) {
            return;
        }
        self.rooms.leave_all(&mut self.conns, key);
        self.joins.forget(key);
        let conn = self.conns.remove(key as usize);
        if conn.tls {
            self.tls.forget(key);
        }
        if conn.binary {
            self.stats.binary_connections.fetch_sub(1, Ordering::Relaxed);
        }
        if let Phase::Live { user_id } = conn.phase {
            if let Some(moved) = self.users.remove(user_id, conn.user_pos) {
                self.conns[moved as usize].user_pos = conn.user_pos;
            }
            self.effects.push(Effect::Closed { conn_id: conn.id });
        }
        self.stats.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
        self.stats.connections.store(self.conns.len() as u64, Ordering::Relaxed);
    }

    /// Effects for logic queued since the last call.
    pub fn take_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// Local members of a room (for tests and stats).
    pub fn room_members(&self, room_id: u64) -> usize {
        self.rooms.members(room_id).len()
    }
}

/// Queues `frame` (made for the connection's wire: a reference to a shared buffer, mostly) for
/// `key`, dropping the connection when it is over its bound.
fn queue_to(
    conns: &mut Slab<Conn>,
    dirty: &mut Vec<u32>,
    limits: &ShardLimits,
    stats: &ShardStats,
    tls: &mut tls::TlsConns,
    key: u32,
    frame: impl FnOnce(Wire) -> Bytes,
) {
    let Some(conn) = conns.get_mut(key as usize) else {
        return;
    };
    if conn.closing {
        return;
    }
    let frame = frame(conn.codec.wire());
    // The bound is on what the peer has not taken yet: an empty queue takes any frame.
    if !conn.out.is_empty() && conn.out.bytes() + frame.len() > limits.max_outbound_bytes {
        // A slow consumer: its queue cannot take a close frame either, so drop it outright.
        stats.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(conn = conn.id, pending = conn.out.bytes(), "slow consumer dropped");
        conn.out.clear();
        conn.closing = true;
    } else {
        if conn.tls {
            // Encrypted for this connection alone: a broadcast costs one encryption per member.
            conn.out.push(tls.seal(key, &frame));
        } else {
            conn.out.push(frame);
        }
        stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

fn auth_ok_frame(
    wire: Wire,
    user_id: u64,
    user_name: &str,
    room_id: u64,
    joined: JoinedRoom,
    pending: u32,
) -> Bytes {
    let body = serde_json::to_vec(&wire::AuthOk {
        op: wire::OP_AUTH_OK,
        user_id,
        user_name: user_name.to_string(),
        room_id,
        joined,
        pending,
    })
    .expect("auth reply serializes");
    protocol::frame_body(wire, &body)
}

/// Op 10 or op 11: the answer to a join or leave.
fn room_reply(wire: Wire, op: i32, room_id: u64, joined: JoinedRoom) -> Bytes {
    let body = serde_json::to_vec(&wire::RoomReply { op, room_id, joined }).expect("room reply serializes");
    protocol::frame_body(wire, &body)
}

/// Bodies for one connection, framed back to back.
fn frame_bodies(wire: Wire, bodies: &[Vec<u8>]) -> Bytes {
    let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 10).sum());
    for body in bodies {
        protocol::append_frame(wire, body, &mut out);
    }
    out.into()
}

#[cfg(test)]
mod tests;
