//! What application backends ask through the server API: messages from the system (sender id
//! 0 and a name of the backend's choosing) to a room, a user and everyone, with the same ids,
//! history and kept copies as users' messages; disconnects and kicks; presence and the nodes
//! of the cluster. Who may ask is the server API's business (`crate::server_api`).

use std::collections::BTreeMap;

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::{Disconnect, Everyone, Kick, QueueMessage};
use gochat_proto::wire::{self, Position};

use super::rooms::check_room;
use super::{chat_message, Logic, LogicError};
use crate::state::{NodeReport, Session};
use crate::webhooks::{EventKind, What};

/// A message the server API published: its id, and its place in the room's history (room
/// messages of a room that keeps one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    pub position: Option<Position>,
}

/// Who is online in a room, or whether a user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Distinct users online in the room: user id (as a string) → name.
    Room { count: u64, members: BTreeMap<String, String> },
    /// The user's live sockets over every gateway.
    User { online: bool, connections: u64 },
}

impl Logic {
    /// A room message (op 3) from the system: to every member, numbered in the room's history.
    pub async fn api_publish_room(
        &self,
        from: &Session,
        room_id: u64,
        msg: &str,
    ) -> Result<Published, LogicError> {
        let (id, position) = self.room_message(from, room_id, msg, false).await?;
        Ok(Published { id, position })
    }

    /// A private message (op 2) from the system, kept for the user as a user's message is.
    pub async fn api_publish_user(
        &self,
        from: &Session,
        to_user_id: u64,
        msg: &str,
    ) -> Result<u64, LogicError> {
        check_user(to_user_id)?;
        self.push_user(from, to_user_id, 0, msg).await
    }

    /// A message (op 3, room 0) to every authenticated socket of every gateway. Not numbered
    /// in a history: a client away when it went out does not get it on return.
    pub async fn api_broadcast(&self, from: &Session, msg: &str) -> Result<u64, LogicError> {
        self.check_message(msg)?;
        let id = self.ids.next();
        let body = chat_message(id, wire::OP_ROOM_SEND, from, 0, "", 0, msg);
        let target = Target::Everyone(Everyone {});
        self.publish(QueueMessage { target: Some(target), body, id, seq: 0 }).await?;
        // To webhooks, a room message to room 0, as sockets get it.
        self.hook(EventKind::Message, Some(id), || {
            Some(What::RoomMessage {
                room_id: 0,
                from_user_id: from.user_id,
                from_user_name: from.user_name.clone(),
                msg: msg.to_string(),
                seq: None,
            })
        });
        Ok(id)
    }

    /// Closes every socket of the user with `code` and `reason`, on every gateway; returns how
    /// many it had. Its sessions stay: a client may connect again.
    pub async fn api_disconnect(&self, user_id: u64, code: u16, reason: &str) -> Result<u64, LogicError> {
        self.known_user(user_id).await?;
        let connections = self.state.user_connections(user_id).await?;
        let end = Disconnect { user_id, code: code.into(), reason: reason.into() };
        self.publish_body(Target::Disconnect(end), Vec::new()).await?;
        Ok(connections)
    }

    /// Takes the user's sockets out of the room (each gets op 11, the room op 4, 5 and 9);
    /// returns whether the user was in it. Nothing stops the user from joining again.
    pub async fn api_kick(&self, user_id: u64, room_id: u64) -> Result<bool, LogicError> {
        check_room(room_id)?;
        self.known_user(user_id).await?;
        let member = self.state.is_member(room_id, user_id).await?;
        self.publish_body(Target::Kick(Kick { user_id, room_id }), Vec::new()).await?;
        Ok(member)
    }

    pub async fn room_presence(&self, room_id: u64) -> Result<Presence, LogicError> {
        check_room(room_id)?;
        let members = self.state.room_members(room_id).await?;
        Ok(Presence::Room { count: members.len() as u64, members })
    }

    pub async fn user_presence(&self, user_id: u64) -> Result<Presence, LogicError> {
        self.known_user(user_id).await?;
        let connections = self.state.user_connections(user_id).await?;
        Ok(Presence::User { online: connections > 0, connections })
    }

    /// The controls, gateways and workers that reported within the last half minute.
    pub async fn nodes(&self) -> Result<Vec<NodeReport>, LogicError> {
        Ok(self.state.nodes().await?)
    }

    /// The room's position and its last `limit` messages, whoever is in it.
    pub async fn api_history(
        &self,
        room_id: u64,
        limit: Option<usize>,
    ) -> Result<(Position, Vec<Vec<u8>>), LogicError> {
        self.room_history(room_id, limit).await
    }

    async fn known_user(&self, user_id: u64) -> Result<(), LogicError> {
        check_user(user_id)?;
        match self.user_name(user_id).await? {
            Some(_) => Ok(()),
            None => Err(LogicError::NotFound(format!("no user with id {user_id}"))),
        }
    }
}

fn check_user(user_id: u64) -> Result<(), LogicError> {
    if user_id == 0 {
        return Err(LogicError::refused("userId must be a positive number"));
    }
    Ok(())
}
