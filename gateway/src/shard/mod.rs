//! A shard: the connections, rooms and timers one pinned thread owns. Single-threaded and
//! driver-agnostic: the driver feeds it bytes, commands and ticks, and drains the output it
//! queued (`take_dirty` / `out_mut`), the connections to close, and the effects for logic.
//!
//! What other threads send it and what it asks of logic are in `contract`; a connection's
//! state in `conn`; the client's requests in `requests`, the inbox's commands in `commands`.

mod commands;
mod conn;
mod contract;
mod framed;
pub mod inbox;
mod joins;
mod limits;
pub mod outbound;
mod requests;
mod rooms;
mod stats;
pub mod timer;
mod tls;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use crate::protocol::session::Phase;
use crate::protocol::{self, close, ws, Output, Transport, Wire};
use conn::{Conn, Outgoing};
pub use contract::{AuthRefused, AuthedUser, Command, Effect, JoinAnswer, Kept};
pub use framed::{Framed, Framings};
pub use inbox::Inbox;
use joins::Joins;
pub use limits::ShardLimits;
pub use outbound::OutQueue;
use rooms::{Index, Rooms};
pub use stats::ShardStats;
use timer::TimerWheel;

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
        let key = self.conns.insert(Conn::new(id, transport, &self.limits, now)) as u32;
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
        if !conn.wire_counted && conn.codec.is_open() {
            conn.wire_counted = true;
            if let Some(count) = self.stats.of_wire(conn.codec.wire()) {
                count.fetch_add(1, Ordering::Relaxed);
            }
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
    /// that sends as many again as its burst without slowing down is closed with
    /// [`POLICY_VIOLATION`](close::POLICY_VIOLATION).
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
        self.count_rooms();
    }

    /// Marks whether `key` has a join holding its room frames.
    fn sync_joining(&mut self, key: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.joining = self.joins.any(key);
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
                conn.mark_dirty(key, &mut self.dirty);
                continue;
            }
            let silent = now.saturating_sub(conn.last_rx);
            conn.out.idle();
            match conn.phase {
                Phase::AwaitAuth | Phase::Authenticating => {
                    let deadline = conn.opened + self.limits.auth_timeout_secs;
                    if now >= deadline {
                        self.begin_close(key, Some((close::POLICY_VIOLATION, "authentication timeout")));
                    } else {
                        self.arm(key, deadline);
                    }
                }
                // TCP has no protocol ping; dead peers are found by TCP keep-alive.
                Phase::Live { .. } if conn.codec.transport() == Transport::Tcp => {}
                Phase::Live { .. } | Phase::Echo if silent >= self.limits.idle_timeout_secs => {
                    self.begin_close(key, Some((close::GOING_AWAY, "idle timeout")));
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
            self.count_rooms();
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
            self.begin_close(key, Some((close::SERVICE_RESTART, "service restarting, reconnect")));
        }
    }

    /// Sets the connection's one live timer entry to `at` (earlier entries become stale).
    fn arm(&mut self, key: u32, at: u32) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            conn.timer_at = self.wheel.schedule(at, key, conn.id);
        }
    }

    /// What queues output to the connections.
    fn outgoing(&mut self) -> Outgoing<'_> {
        let max_bytes = self.limits.max_outbound_bytes;
        Outgoing {
            conns: &mut self.conns,
            dirty: &mut self.dirty,
            tls: &mut self.tls,
            stats: &self.stats,
            max_bytes,
        }
    }

    /// Queues `bytes` for the connection at `key`.
    fn queue(&mut self, key: u32, bytes: Bytes) {
        self.outgoing().queue(key, |_| bytes);
    }

    /// Publishes how many rooms have a member here.
    fn count_rooms(&self) {
        self.stats.rooms.store(self.rooms.len() as u64, Ordering::Relaxed);
    }

    /// Closes with [`POLICY_VIOLATION`](close::POLICY_VIOLATION) and `reason`, after an op 8
    /// `notice` on a WebSocket: gochat's clients cannot see a close reason (a TCP client gets the
    /// reason as its error frame).
    fn refuse_and_close(&mut self, key: u32, notice: &str, reason: &str) {
        let ws = self.conns.get(key as usize).map(|c| c.codec.wire()).filter(|w| *w != Wire::Tcp);
        if let Some(wire) = ws {
            self.queue(key, protocol::error_frame(wire, notice));
        }
        self.begin_close(key, Some((close::POLICY_VIOLATION, reason)));
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
        conn.mark_dirty(key, &mut self.dirty);
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

    /// Records `n` bytes written for `key` by one write.
    pub fn wrote(&mut self, key: u32, n: usize) {
        self.stats.sends.fetch_add(1, Ordering::Relaxed);
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
        if let Some(count) = self.stats.of_wire(conn.codec.wire()).filter(|_| conn.wire_counted) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        if let Phase::Live { user_id } = conn.phase {
            if let Some(moved) = self.users.remove(user_id, conn.user_pos) {
                self.conns[moved as usize].user_pos = conn.user_pos;
            }
            self.effects.push(Effect::Closed { conn_id: conn.id });
        }
        self.count_rooms();
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

#[cfg(test)]
mod tests;
