//! A shard: the connections, rooms and timers one pinned thread owns. Single-threaded and
//! driver-agnostic: the driver feeds it bytes, commands and ticks, and drains the output it
//! queued (`take_dirty` / `out_mut`), the connections to close, and the effects for logic.

pub mod inbox;
pub mod outbound;
pub mod timer;
mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use gochat_proto::wire;
use slab::Slab;

use crate::protocol::session::{self, Phase, Request};
use crate::protocol::{self, ws, Codec, Limits, Output, Transport};
pub use inbox::Inbox;
pub use outbound::OutQueue;
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
        }
    }
}

/// A JSON batch framed once per transport; every member gets a reference.
#[derive(Debug, Clone)]
pub struct Framed {
    pub ws: Bytes,
    pub tcp: Bytes,
}

impl Framed {
    /// Frames `bodies` back to back, once for WebSocket and once for TCP.
    pub fn encode<B: AsRef<[u8]>>(bodies: &[B]) -> Self {
        let size: usize = bodies.iter().map(|b| b.as_ref().len() + 10).sum();
        let (mut ws, mut tcp) = (Vec::with_capacity(size), Vec::with_capacity(size));
        for body in bodies {
            protocol::append_frame(Transport::WebSocket, body.as_ref(), &mut ws);
            protocol::append_frame(Transport::Tcp, body.as_ref(), &mut tcp);
        }
        Self { ws: ws.into(), tcp: tcp.into() }
    }

    fn for_transport(&self, t: Transport) -> &Bytes {
        match t {
            Transport::WebSocket => &self.ws,
            Transport::Tcp => &self.tcp,
        }
    }
}

/// The user a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedUser {
    pub user_id: u64,
    pub user_name: String,
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
    /// The answer to an [`Effect::Auth`].
    AuthDone { key: u32, conn_id: u64, result: Result<AuthedUser, AuthRefused> },
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
    /// Position in the room's and the user's member lists (valid when live).
    room_pos: u32,
    user_pos: u32,
    out: OutQueue,
    /// A wss connection: its session is in the shard's `tls` table, and what is queued in `out`
    /// is encrypted. (A flag in padding, so plain connections carry nothing for TLS.)
    tls: bool,
}

/// Member lists keyed by room or user, with O(1) removal through positions kept in `Conn`.
#[derive(Default)]
struct Index(HashMap<u64, Vec<u32>>);

impl Index {
    fn insert(&mut self, id: u64, key: u32) -> u32 {
        let list = self.0.entry(id).or_default();
        list.push(key);
        (list.len() - 1) as u32
    }

    /// Removes the member at `pos`; returns the key moved into `pos`, if any.
    fn remove(&mut self, id: u64, pos: u32) -> Option<u32> {
        let list = self.0.get_mut(&id)?;
        list.swap_remove(pos as usize);
        let moved = list.get(pos as usize).copied();
        if list.is_empty() {
            self.0.remove(&id);
        }
        moved
    }

    fn members(&self, id: u64) -> &[u32] {
        self.0.get(&id).map_or(&[], Vec::as_slice)
    }
}

pub struct Shard {
    index: u32,
    /// Distinguishes this process's connection ids from an earlier run's.
    epoch: u16,
    limits: ShardLimits,
    conns: Slab<Conn>,
    next_seq: u64,
    rooms: Index,
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
            rooms: Index::default(),
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
            room_pos: 0,
            user_pos: 0,
            out: OutQueue::default(),
            tls: false,
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
        let (over, transport) = (conn.over as u32, conn.codec.transport());
        if over > burst {
            self.stats.flood_closes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = conn.id, "flooding client closed");
            self.refuse_and_close(key, "too many messages, connection closed", "too many messages");
        } else if over == 1 {
            self.queue(
                key,
                protocol::error_frame(transport, "too many messages, slow down; some were dropped"),
            );
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
        let (id, transport) = (conn.id, conn.codec.transport());
        match session::interpret(conn.phase, body) {
            Request::Auth { token, room_id } => {
                conn.phase = Phase::Authenticating { room_id };
                conn.session = wire::session_fingerprint(&token);
                self.effects.push(Effect::Auth { key, conn_id: id, token, room_id });
            }
            Request::AlreadyJoined => {
                if let Phase::Live { user_id, room_id } = conn.phase {
                    let frame = auth_ok_frame(transport, user_id, "", room_id);
                    self.queue(key, frame);
                }
            }
            Request::RoomSend { msg } => {
                if let Phase::Live { user_id, room_id } = conn.phase {
                    self.effects.push(Effect::RoomSend { key, conn_id: id, user_id, room_id, msg });
                }
            }
            Request::Refuse { message, fatal } => {
                if fatal {
                    self.refuse_and_close(key, &message, &message);
                } else {
                    self.queue(key, protocol::error_frame(transport, &message));
                }
            }
        }
    }

    /// A command from the inbox.
    pub fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Room { room_id, frames } => {
                let Self { rooms, conns, dirty, limits, stats, tls, .. } = self;
                for &key in rooms.members(room_id) {
                    queue_to(conns, dirty, limits, stats, tls, key, &frames);
                }
            }
            Command::User { user_id, frames } => {
                let Self { users, conns, dirty, limits, stats, tls, .. } = self;
                for &key in users.members(user_id) {
                    queue_to(conns, dirty, limits, stats, tls, key, &frames);
                }
            }
            Command::AuthDone { key, conn_id, result } => self.auth_done(key, conn_id, result),
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
                    let frame = protocol::error_frame(conn.codec.transport(), &message);
                    self.queue(key, frame);
                }
            }
            Command::CloseAll => self.close_all(1012, "service restarted, reconnect"),
            Command::Drain { within_secs } => {
                let now = self.wheel.now();
                self.drain_by = Some(now + within_secs.max(1));
            }
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

    fn auth_done(&mut self, key: u32, conn_id: u64, result: Result<AuthedUser, AuthRefused>) {
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
        let Phase::Authenticating { room_id } = conn.phase else {
            return;
        };
        match result {
            Ok(user) => {
                conn.phase = Phase::Live { user_id: user.user_id, room_id };
                conn.room_pos = self.rooms.insert(room_id, key);
                conn.user_pos = self.users.insert(user.user_id, key);
                let frame = auth_ok_frame(conn.codec.transport(), user.user_id, &user.user_name, room_id);
                let ping_at = conn.last_rx + self.limits.ping_after_secs;
                self.stats.rooms.store(self.rooms.0.len() as u64, Ordering::Relaxed);
                self.queue(key, frame);
                self.arm(key, ping_at);
            }
            Err(refused) => {
                self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                self.begin_close(key, Some((refused.close_code, &refused.message)));
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
                Phase::AwaitAuth | Phase::Authenticating { .. } => {
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
        let frames = Framed { ws: bytes.clone(), tcp: bytes };
        queue_to(&mut self.conns, &mut self.dirty, &self.limits, &self.stats, &mut self.tls, key, &frames);
    }

    /// Closes with 1008 and `reason`, after an op 8 `notice` on a WebSocket: gochat's clients
    /// cannot see a close reason (a TCP client gets the reason as its error frame).
    fn refuse_and_close(&mut self, key: u32, notice: &str, reason: &str) {
        if self.conns.get(key as usize).is_some_and(|c| c.codec.transport() == Transport::WebSocket) {
            self.queue(key, protocol::error_frame(Transport::WebSocket, notice));
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
            (Some((_, reason)), Transport::Tcp) => Some(protocol::error_frame(Transport::Tcp, reason)),
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
        let conn = self.conns.remove(key as usize);
        if conn.tls {
            self.tls.forget(key);
        }
        if let Phase::Live { user_id, room_id } = conn.phase {
            if let Some(moved) = self.rooms.remove(room_id, conn.room_pos) {
                self.conns[moved as usize].room_pos = conn.room_pos;
            }
            if let Some(moved) = self.users.remove(user_id, conn.user_pos) {
                self.conns[moved as usize].user_pos = conn.user_pos;
            }
            self.effects.push(Effect::Closed { conn_id: conn.id });
            self.stats.rooms.store(self.rooms.0.len() as u64, Ordering::Relaxed);
        }
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

/// Queues a reference to `frames` for `key`, dropping the connection when it is over its bound.
fn queue_to(
    conns: &mut Slab<Conn>,
    dirty: &mut Vec<u32>,
    limits: &ShardLimits,
    stats: &ShardStats,
    tls: &mut tls::TlsConns,
    key: u32,
    frames: &Framed,
) {
    let Some(conn) = conns.get_mut(key as usize) else {
        return;
    };
    if conn.closing {
        return;
    }
    let frame = frames.for_transport(conn.codec.transport());
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
            conn.out.push(tls.seal(key, frame));
        } else {
            conn.out.push(frame.clone());
        }
        stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

fn auth_ok_frame(transport: Transport, user_id: u64, user_name: &str, room_id: u64) -> Bytes {
    let body = serde_json::to_vec(&wire::AuthOk {
        op: wire::OP_AUTH_OK,
        user_id,
        user_name: user_name.to_string(),
        room_id,
    })
    .expect("auth reply serializes");
    protocol::frame_body(transport, &body)
}

#[cfg(test)]
mod tests;
