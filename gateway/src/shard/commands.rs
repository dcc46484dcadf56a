//! The commands other threads send a shard through its inbox, one method each:
//! [`Shard::on_command`] hands each to its method.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use gochat_proto::wire::{self, JoinedRoom};

use super::conn::Outgoing;
use super::contract::{AuthRefused, AuthedUser, Command, Effect, JoinAnswer, Kept};
use super::framed::Framed;
use super::joins::Offer;
use super::requests::{auth_ok_frame, room_reply};
use super::Shard;
use crate::protocol::session::Phase;
use crate::protocol::{self, close, Wire};

impl Shard {
    /// A command from the inbox.
    pub fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Room { room_id, frames } => self.room_frames(room_id, &frames),
            Command::User { user_id, frames } => self.user_frames(user_id, &frames),
            Command::AuthDone { key, conn_id, result } => self.auth_done(key, conn_id, result),
            Command::JoinDone { key, conn_id, room_id, result } => {
                self.join_done(key, conn_id, room_id, result)
            }
            Command::Kept { key, conn_id, kept } => self.kept(key, conn_id, kept),
            Command::EndSessions { user_id, sessions } => self.end_sessions(user_id, &sessions),
            Command::Everyone { frames } => self.everyone_frames(&frames),
            Command::Disconnect { user_id, code, reason } => self.disconnect(user_id, code, &reason),
            Command::Kick { user_id, room_id } => self.kick(user_id, room_id),
            Command::Notice { key, conn_id, message } => self.notice(key, conn_id, &message),
            Command::CloseAll => self.close_all(close::SERVICE_RESTART, "service restarted, reconnect"),
            Command::Drain { within_secs } => {
                let now = self.wheel.now();
                self.drain_by = Some(now + within_secs.max(1));
            }
            Command::Limits(limits) => self.limits = *limits,
            Command::Shutdown => {
                self.shutting_down = true;
                self.close_all(close::GOING_AWAY, "server shutting down");
            }
        }
    }

    /// Writes `frames` to every member of the room; a member joining it has them held (or
    /// released) by its join.
    fn room_frames(&mut self, room_id: u64, frames: &Framed) {
        let Self { rooms, joins, conns, dirty, tls, stats, limits, .. } = self;
        let mut out = Outgoing { conns, dirty, tls, stats, max_bytes: limits.max_outbound_bytes };
        for &key in rooms.members(room_id) {
            let conn = &out.conns[key as usize];
            if !conn.joining {
                out.queue(key, |w| frames.for_wire(w));
                continue;
            }
            let wire = conn.codec.wire();
            match joins.offer(key, room_id, frames, wire, out.max_bytes / 4) {
                Offer::Pass => out.queue(key, |w| frames.for_wire(w)),
                Offer::Taken => {}
                Offer::Parts(parts) => {
                    for part in parts {
                        out.queue(key, |_| part);
                    }
                    out.conns[key as usize].joining = joins.any(key);
                }
            }
        }
    }

    /// Writes `frames` to every connection of the user.
    fn user_frames(&mut self, user_id: u64, frames: &Framed) {
        let Self { users, conns, dirty, tls, stats, limits, .. } = self;
        let mut out = Outgoing { conns, dirty, tls, stats, max_bytes: limits.max_outbound_bytes };
        for &key in users.members(user_id) {
            out.queue(key, |w| frames.for_wire(w));
        }
    }

    /// Writes `frames` to every authenticated connection.
    fn everyone_frames(&mut self, frames: &Framed) {
        let Self { users, conns, dirty, tls, stats, limits, .. } = self;
        let mut out = Outgoing { conns, dirty, tls, stats, max_bytes: limits.max_outbound_bytes };
        for &key in users.all() {
            out.queue(key, |w| frames.for_wire(w));
        }
    }

    /// Closes every connection of the user with `code` and `reason` (TCP: an error frame).
    fn disconnect(&mut self, user_id: u64, code: u16, reason: &str) {
        for key in self.users.members(user_id).to_vec() {
            self.begin_close(key, Some((code, reason)));
        }
    }

    /// Takes the user's connections out of `room_id`: each is answered as if it had left
    /// (op 11), and logic is told, as for a leave.
    fn kick(&mut self, user_id: u64, room_id: u64) {
        for key in self.users.members(user_id).to_vec() {
            let Some(conn) = self.conns.get(key as usize).filter(|c| !c.closing) else { continue };
            let (conn_id, wire) = (conn.id, conn.codec.wire());
            if !self.rooms.leave(&mut self.conns, key, room_id) {
                continue;
            }
            self.joins.end(key, room_id);
            self.sync_joining(key);
            self.effects.push(Effect::Leave { conn_id, room_id });
            self.count_rooms();
            self.queue(key, room_reply(wire, wire::OP_LEAVE, room_id, JoinedRoom::default()));
        }
    }

    fn kept(&mut self, key: u32, conn_id: u64, kept: Kept) {
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.id == conn_id) else {
            return;
        };
        conn.kept_more = kept.more > 0;
        if !kept.bodies.is_empty() {
            let frame = frame_bodies(conn.codec.wire(), &kept.bodies);
            self.queue(key, frame);
        }
    }

    fn end_sessions(&mut self, user_id: u64, sessions: &[u64]) {
        let ended: Vec<u32> = (self.users.members(user_id).iter())
            .copied()
            .filter(|&key| sessions.contains(&self.conns[key as usize].session))
            .collect();
        for key in ended {
            self.refuse_and_close(key, "logged out", "logged out");
        }
    }

    fn notice(&mut self, key: u32, conn_id: u64, message: &str) {
        if let Some(conn) = self.conns.get(key as usize).filter(|c| c.id == conn_id) {
            let frame = protocol::error_frame(conn.codec.wire(), message);
            self.queue(key, frame);
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
                self.count_rooms();
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
                self.count_rooms();
                self.queue(key, protocol::error_frame(conn_wire, &message));
            }
        }
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
}

/// Bodies for one connection, framed back to back.
fn frame_bodies(wire: Wire, bodies: &[Vec<u8>]) -> Bytes {
    let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 10).sum());
    for body in bodies {
        protocol::append_frame(wire, body, &mut out);
    }
    out.into()
}
