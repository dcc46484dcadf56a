//! The client's requests (gochat's ops), one method each: [`Shard::on_message`] reads a message
//! and hands it to the method of its request; and the replies they earn.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use gochat_proto::wire::{self, JoinedRoom, Position};

use super::contract::Effect;
use super::Shard;
use crate::protocol::session::{self, Phase, Request};
use crate::protocol::{self, Wire};

/// The connection a request came from: its key, id and wire, and its user (0 before auth).
#[derive(Clone, Copy)]
struct Client {
    key: u32,
    id: u64,
    wire: Wire,
    user_id: u64,
}

impl Shard {
    /// A whole message from the client at `key`.
    pub(super) fn on_message(&mut self, key: u32, body: &[u8]) {
        let Some(conn) = self.conns.get_mut(key as usize).filter(|c| !c.closing) else {
            return;
        };
        let client = Client { key, id: conn.id, wire: conn.codec.wire(), user_id: conn.user_id() };
        let request = match client.wire {
            Wire::WsBinary => session::interpret_binary(conn.phase, body),
            Wire::WsJson | Wire::WsDeflate | Wire::Tcp => session::interpret(conn.phase, body),
        };
        match request {
            Request::Auth { token, room_id, since, acks } => self.auth(client, token, room_id, since, acks),
            Request::Reauth { room_id } => self.reauth(client, room_id),
            Request::Join { room_id, since } => self.join(client, room_id, since),
            Request::Leave { room_id } => self.leave(client, room_id),
            Request::RoomSend { room_id, msg } => self.room_send(client, room_id, msg),
            Request::Ack { ids } => self.ack(client, ids),
            Request::Refuse { message, fatal } => self.refuse(client, &message, fatal),
        }
    }

    /// The auth frame: logic is asked who the token is, and the room it names is joined at once.
    fn auth(&mut self, client: Client, token: String, room_id: u64, since: Option<Position>, acks: bool) {
        let Client { key, id, .. } = client;
        let conn = &mut self.conns[key as usize];
        conn.phase = Phase::Authenticating;
        conn.session = wire::session_fingerprint(&token);
        conn.acks = acks;
        self.begin_join(key, room_id);
        self.effects.push(Effect::Auth { key, conn_id: id, token, room_id, since, acks });
    }

    /// An auth frame again on a live connection: answered from what the connection has.
    fn reauth(&mut self, client: Client, room_id: u64) {
        let Client { key, wire, user_id, .. } = client;
        if self.rooms.contains(&mut self.conns[key as usize], key, room_id) {
            let frame = auth_ok_frame(wire, user_id, "", room_id, JoinedRoom::default(), 0);
            self.queue(key, frame);
        } else {
            let message = format!("this connection is not in room {room_id}; join it with op 10");
            self.queue(key, protocol::error_frame(wire, &message));
        }
    }

    /// Op 10: join another room, recovering from `since`.
    fn join(&mut self, client: Client, room_id: u64, since: Option<Position>) {
        let Client { key, id, wire, user_id } = client;
        let conn = &mut self.conns[key as usize];
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

    /// Op 11: leave a room (answered whether or not the connection was in it).
    fn leave(&mut self, client: Client, room_id: u64) {
        let Client { key, id, wire, .. } = client;
        if self.rooms.leave(&mut self.conns, key, room_id) {
            self.joins.end(key, room_id);
            self.sync_joining(key);
            self.effects.push(Effect::Leave { conn_id: id, room_id });
            self.count_rooms();
        }
        self.queue(key, room_reply(wire, wire::OP_LEAVE, room_id, JoinedRoom::default()));
    }

    /// A room message (room 0: the connection's first room), for logic to publish.
    fn room_send(&mut self, client: Client, room_id: u64, msg: String) {
        let Client { key, id, wire, user_id } = client;
        let conn = &mut self.conns[key as usize];
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

    /// Op 12: private messages the client has; asks for the next kept ones when it was told
    /// there are more.
    fn ack(&mut self, client: Client, ids: Vec<u64>) {
        let Client { key, id, user_id, .. } = client;
        let more = std::mem::take(&mut self.conns[key as usize].kept_more);
        self.effects.push(Effect::Ack { key, conn_id: id, user_id, ids, more });
    }

    /// A message that is no request the connection may make now: told, and closed when `fatal`.
    fn refuse(&mut self, client: Client, message: &str, fatal: bool) {
        if fatal {
            // Only a client that has not authenticated is refused for good: its auth
            // frame was missing, malformed or over the limits.
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            self.refuse_and_close(client.key, message, message);
        } else {
            self.queue(client.key, protocol::error_frame(client.wire, message));
        }
    }
}

/// The answer to an auth frame: who the connection is, its room, and the kept private messages
/// that follow.
pub(super) fn auth_ok_frame(
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
pub(super) fn room_reply(wire: Wire, op: i32, room_id: u64, joined: JoinedRoom) -> Bytes {
    let body = serde_json::to_vec(&wire::RoomReply { op, room_id, joined }).expect("room reply serializes");
    protocol::frame_body(wire, &body)
}
