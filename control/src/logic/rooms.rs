//! Rooms: room messages (op 3) and history, sockets joining and leaving, and the updates
//! (counts, member lists, presence) each room gets at most once per interval.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::QueueMessage;
use gochat_proto::wire::{self, Position};

use super::{chat_message, periodically, to_json, Logic, LogicError};
use crate::history::Recovery;
use crate::limits::retry_secs;
use crate::metrics::JoinResult;
use crate::state::{NoConnection, RoomChange, Session};
use crate::webhooks::{EventKind, What};

/// Why a room push from a user with no socket in the room is refused (`open_rooms = false`).
pub const NOT_MEMBER: &str = "join the room first";
/// Joins and leaves one presence update (op 9) lists; the rest are counted in its `more`.
pub(crate) const PRESENCE_MAX_LISTED: usize = 100;

/// A room's joins and leaves since its last update, per user: whether the user was in the room
/// before the first of them and is now, so one who left and came back is no change.
#[derive(Debug, Default)]
pub(super) struct RoomEvents(BTreeMap<u64, (bool, bool, String)>);

impl Logic {
    /// A room message (op 3) from `from` through the REST API: unless rooms are open, only from
    /// a user with a socket in the room.
    pub async fn push_room(&self, from: &Session, room_id: u64, msg: &str) -> Result<(), LogicError> {
        self.room_message(from, room_id, msg, !self.open_rooms()).await.map(drop)
    }

    /// A room message, numbered in the room's history when it keeps one: its id, and its
    /// place in the history.
    pub(super) async fn room_message(
        &self,
        from: &Session,
        room_id: u64,
        msg: &str,
        members_only: bool,
    ) -> Result<(u64, Option<Position>), LogicError> {
        self.check_message(msg)?;
        check_room(room_id)?;
        if members_only && !self.state.is_member(room_id, from.user_id).await? {
            return Err(LogicError::refused(NOT_MEMBER));
        }
        let id = self.ids.next();
        let body = chat_message(id, wire::OP_ROOM_SEND, from, 0, "", room_id, msg);
        let (position, body) = self.history.append(room_id, body).await?;
        let seq = position.as_ref().map(|p| p.seq);
        let queued = QueueMessage { target: Some(Target::RoomId(room_id)), body, id, seq: seq.unwrap_or(0) };
        self.publish_room_message(room_id, queued).await?;
        self.hook(EventKind::Message, Some(id), || {
            Some(What::RoomMessage {
                room_id,
                from_user_id: from.user_id,
                from_user_name: from.user_name.clone(),
                msg: msg.to_string(),
                seq,
            })
        });
        Ok((id, position))
    }

    /// Enqueues a room message. Numbered, the message is in the room's history: clients that
    /// recover or reload get it. Had it not reached the queue, they would see a message its
    /// sender was told failed, and its retry again under another seq, and every client that
    /// orders by seq would wait for a seq that never comes live. A queue connection dropped
    /// since its last use (a Redis restart) fails once and is rebuilt, so a failed publish is
    /// tried again; should a failed try have gone through after all, the gateways drop the copy
    /// by its id.
    async fn publish_room_message(&self, room_id: u64, message: QueueMessage) -> Result<(), LogicError> {
        let seq = message.seq;
        if seq == 0 {
            return self.publish(message).await;
        }
        for wait_ms in [50, 200] {
            match self.queue.publish(message.clone()).await {
                Ok(()) => {
                    self.counts.enqueue(&Target::RoomId(room_id), true);
                    return Ok(());
                }
                Err(gochat_queue::Error::Queue(error)) => {
                    self.counts.enqueue(&Target::RoomId(room_id), false);
                    tracing::info!(%error, room = room_id, seq, "enqueue of a numbered message failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
                }
                Err(full_or_closed) => {
                    self.counts.enqueue(&Target::RoomId(room_id), false);
                    tracing::warn!(error = %full_or_closed, "enqueue failed");
                    return Err(LogicError::Internal("server busy, message not sent".into()));
                }
            }
        }
        self.publish(message).await
    }

    /// The room's position and last `limit` messages (at most what it keeps), oldest first,
    /// for a client that must reload; only to a user in the room unless rooms are open.
    pub(crate) async fn history(
        &self,
        from: &Session,
        room_id: u64,
        limit: Option<usize>,
    ) -> Result<(Position, Vec<Vec<u8>>), LogicError> {
        check_room(room_id)?;
        if !self.open_rooms() && !self.state.is_member(room_id, from.user_id).await? {
            return Err(LogicError::refused(NOT_MEMBER));
        }
        self.room_history(room_id, limit).await
    }

    /// The room's position and last `limit` messages (at most what it keeps), oldest first.
    pub(super) async fn room_history(
        &self,
        room_id: u64,
        limit: Option<usize>,
    ) -> Result<(Position, Vec<Vec<u8>>), LogicError> {
        check_room(room_id)?;
        let limit = limit.unwrap_or(self.history_size).min(self.history_size);
        self.history
            .latest(room_id, limit)
            .await?
            .ok_or_else(|| LogicError::refused("rooms keep no history here"))
    }

    /// Has the room's online count (op 4) sent, with its next room update: however often it is
    /// asked, a room gets one per `room_update_interval_ms`.
    pub(crate) async fn push_count(&self, room_id: u64) -> Result<(), LogicError> {
        check_room(room_id)?;
        self.update_room(room_id);
        Ok(())
    }

    /// Has the room's member list (op 5) sent, for rooms of up to `room_info_max_members`, with
    /// its next room update: a list goes to every member, so asked for on every call it grew
    /// with the square of the room, and one member could have it sent a hundred times a second.
    pub(crate) async fn push_room_info(&self, room_id: u64) -> Result<(), LogicError> {
        check_room(room_id)?;
        let count = self.state.room_count(room_id).await?;
        let max = self.room_info_max_members.load(Ordering::Relaxed);
        if count > max {
            return Err(LogicError::refused(format!(
                "room {room_id} has more than {max} users online: its member list is not sent"
            )));
        }
        self.update_room(room_id);
        Ok(())
    }

    /// Broadcasts the room's member list (op 5).
    async fn send_room_info(&self, room_id: u64) -> Result<(), LogicError> {
        let members = self.state.room_members(room_id).await?;
        let body = wire::RoomInfo {
            op: wire::OP_ROOM_INFO,
            room_id,
            count: members.len() as u64,
            room_user_info: members,
        };
        self.publish_body(Target::RoomId(room_id), to_json(&body)).await
    }

    /// Where `room_id` stands for a socket joining it, with what it missed since `since`.
    pub(super) async fn joined(
        &self,
        room_id: u64,
        since: Option<&Position>,
    ) -> Result<Option<Recovery>, LogicError> {
        let recovery = self.history.join(room_id, since).await?;
        if let Some(r) = &recovery {
            self.counts.join(JoinResult::of(r.recovered));
        }
        Ok(recovery)
    }

    /// An authenticated socket joins another room: its position there, with what it missed.
    pub(crate) async fn room_join(
        &self,
        gateway: &str,
        conn_id: u64,
        user_id: u64,
        room_id: u64,
        since: Option<&Position>,
    ) -> Result<Option<Recovery>, LogicError> {
        check_room(room_id)?;
        let Some(user_name) = self.user_name(user_id).await? else {
            return Err(LogicError::refused(format!("no user with id {user_id}")));
        };
        match self.state.conn_join(gateway, conn_id, &Session { user_id, user_name }, room_id).await? {
            Err(NoConnection) => {
                return Err(LogicError::refused("this connection is not known here: reconnect"))
            }
            Ok(change) => change.into_iter().for_each(|c| self.room_changed(c)),
        }
        self.joined(room_id, since).await
    }

    pub(crate) async fn room_leave(
        &self,
        gateway: &str,
        conn_id: u64,
        room_id: u64,
    ) -> Result<(), LogicError> {
        if let Some(change) = self.state.conn_leave(gateway, conn_id, room_id).await? {
            self.room_changed(change);
        }
        Ok(())
    }

    /// A room message sent on a socket by an authenticated user. Sockets send only to their
    /// own room, so membership needs no check.
    pub async fn send_room(&self, from_user_id: u64, room_id: u64, msg: &str) -> Result<(), LogicError> {
        // Per user, over every socket (and the REST pushes): one user's sockets together send
        // no faster than one client may push.
        if let Err(wait) = self.limits.push.take(from_user_id) {
            return Err(LogicError::refused(format!(
                "sending too fast: message dropped, retry in {} s",
                retry_secs(wait)
            )));
        }
        let Some(name) = self.user_name(from_user_id).await? else {
            return Err(LogicError::refused(format!("no user with id {from_user_id}")));
        };
        self.room_message(&Session { user_id: from_user_id, user_name: name }, room_id, msg, false)
            .await
            .map(drop)
    }

    /// The room gets its count and member list with its next update, even with no member
    /// change.
    pub(super) fn update_room(&self, room_id: u64) {
        self.changed_rooms.lock().unwrap_or_else(|p| p.into_inner()).entry(room_id).or_default();
    }

    /// Membership changed: noted for the room's next update, and told to webhooks when the
    /// room was empty before or is now.
    pub(super) fn room_changed(&self, change: RoomChange) {
        if change.alone {
            let RoomChange { room_id, user_id, .. } = change;
            self.hook(EventKind::Room, None, || {
                Some(match change.joined {
                    true => What::RoomOccupied { room_id, user_id, user_name: change.user_name.clone() },
                    false => What::RoomVacated { room_id, user_id },
                })
            });
        }
        let mut rooms = self.changed_rooms.lock().unwrap_or_else(|p| p.into_inner());
        let events = rooms.entry(change.room_id).or_default();
        let event = events.0.entry(change.user_id).or_insert((!change.joined, false, String::new()));
        event.1 = change.joined;
        if change.joined {
            event.2 = change.user_name;
        }
    }

    /// Sends each room whose members changed (or whose count or list was asked for) its count
    /// (op 4), its member list (op 5, rooms of up to `room_info_max_members`) — gochat sent an
    /// empty frame — and who joined and left (op 9), at most once per `every`: a join storm, or
    /// a storm of `/push/getRoomInfo`, costs one update per room, not one per event to every
    /// member.
    pub async fn send_room_updates(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        periodically(every, stop, || async {
            let rooms = std::mem::take(&mut *self.changed_rooms.lock().unwrap_or_else(|p| p.into_inner()));
            for (room_id, events) in rooms {
                if let Err(e) = self.room_update(room_id, events).await {
                    tracing::warn!(room = room_id, error = %e, "room update not sent");
                }
            }
        })
        .await
    }

    async fn room_update(&self, room_id: u64, events: RoomEvents) -> Result<(), LogicError> {
        let count = self.state.room_count(room_id).await?;
        let body = wire::RoomCount { count, op: wire::OP_ROOM_COUNT, room_id };
        self.publish_body(Target::RoomId(room_id), to_json(&body)).await?;
        if count <= self.room_info_max_members.load(Ordering::Relaxed) {
            self.send_room_info(room_id).await?;
        }
        let mut presence = wire::Presence {
            op: wire::OP_PRESENCE,
            room_id,
            count,
            joined: BTreeMap::new(),
            left: Vec::new(),
            more: 0,
        };
        for (user_id, (was_in, is_in, name)) in events.0 {
            if was_in == is_in {
                continue;
            }
            if presence.joined.len() + presence.left.len() == PRESENCE_MAX_LISTED {
                presence.more += 1;
            } else if is_in {
                presence.joined.insert(user_id.to_string(), name);
            } else {
                presence.left.push(user_id.to_string());
            }
        }
        if presence.joined.is_empty() && presence.left.is_empty() && presence.more == 0 {
            return Ok(());
        }
        self.publish_body(Target::RoomId(room_id), to_json(&presence)).await
    }
}

pub(super) fn check_room(room_id: u64) -> Result<(), LogicError> {
    if room_id == 0 {
        return Err(LogicError::refused("roomId must be a positive number"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use gochat_queue::{Delivery, MemoryQueue, Queue};

    use super::*;
    use crate::state::State;
    use crate::store::UserStore;
    use crate::ControlConfig;

    /// A queue whose first publishes fail as a connection lost since its last use does.
    struct Dropped {
        failures: AtomicU32,
        queue: MemoryQueue,
    }

    #[async_trait::async_trait]
    impl Queue for Dropped {
        async fn publish(&self, message: QueueMessage) -> Result<(), gochat_queue::Error> {
            if self.failures.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
            {
                return Err(gochat_queue::Error::Queue("broken pipe".into()));
            }
            self.queue.publish(message).await
        }

        async fn read(
            &self,
            max: usize,
            wait: std::time::Duration,
        ) -> Result<Vec<Delivery>, gochat_queue::Error> {
            self.queue.read(max, wait).await
        }

        async fn ack(&self, ids: &[String]) -> Result<(), gochat_queue::Error> {
            self.queue.ack(ids).await
        }
    }

    async fn with_queue_failing(failures: u32) -> (Logic, Arc<Dropped>) {
        let queue = Arc::new(Dropped { failures: AtomicU32::new(failures), queue: MemoryQueue::new(100) });
        let store = UserStore::open("sqlite::memory:").await.unwrap();
        let cfg = ControlConfig::default();
        let state = State::memory(std::time::Duration::from_secs(60));
        (Logic::new(store, state, queue.clone(), &cfg), queue)
    }

    #[tokio::test]
    async fn a_numbered_message_reaches_the_queue_through_a_dropped_connection() {
        let (logic, queue) = with_queue_failing(1).await;
        let from = Session { user_id: 1, user_name: "a".into() };
        logic.room_message(&from, 7, "hi", false).await.unwrap();
        let queued = queue.read(10, std::time::Duration::ZERO).await.unwrap();
        assert_eq!(queued.iter().map(|d| d.message.seq).collect::<Vec<_>>(), [1], "numbered and queued once");
        // A queue that stays away: the sender is told, after a few tries.
        let (logic, queue) = with_queue_failing(3).await;
        assert!(logic.room_message(&from, 7, "hi", false).await.is_err());
        assert!(queue.read(10, std::time::Duration::ZERO).await.unwrap().is_empty());
    }
}
