//! Private messages (op 2), kept for their user until a client of theirs acknowledges them.

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::QueueMessage;
use gochat_proto::wire;

use super::{chat_message, Logic, LogicError};
use crate::kept::{Kept, NotKept};
use crate::metrics::KeptResult;
use crate::state::Session;
use crate::webhooks::{EventKind, What};

impl Logic {
    /// A private message (op 2) to `to_user_id`, sent now if they are online. With kept messages
    /// on, it is also kept until a client of theirs acknowledges it, when one that does is
    /// online or none is (then it waits for them); a user online only with clients that do not
    /// acknowledge (gochat's) gets it as gochat sent it: at most once. Returns the message's id.
    pub(crate) async fn push_user(
        &self,
        from: &Session,
        to_user_id: u64,
        room_id: u64,
        msg: &str,
    ) -> Result<u64, LogicError> {
        self.check_message(msg)?;
        let Some(to_name) = self.user_name(to_user_id).await? else {
            return Err(LogicError::NotFound(format!("no user with id {to_user_id}")));
        };
        let reach = self.state.reach(to_user_id).await?;
        let (online, kept) = (reach.online, self.kept.is_on() && (reach.acking || !reach.online));
        if !online && !kept {
            return Err(LogicError::refused(format!("user {to_name} is not online")));
        }
        let id = self.ids.next();
        let body = chat_message(id, wire::OP_SINGLE_SEND, from, to_user_id, &to_name, room_id, msg);
        let mut kept = kept;
        if kept {
            let not_kept = self.kept.keep(to_user_id, from.user_id, id, &body).await?.err();
            let (result, refusal) = match not_kept {
                None => (KeptResult::Kept, None),
                Some(NotKept::Full) => (
                    KeptResult::Full,
                    Some(format!("{to_name} has too many unread messages; try again later")),
                ),
                Some(NotKept::SenderShare) => (
                    KeptResult::SenderShare,
                    Some(format!(
                        "{to_name} has too many unread messages from you; try again when they have read some"
                    )),
                ),
                Some(NotKept::SenderTotal) => (
                    KeptResult::SenderTotal,
                    Some("too many of your messages are waiting to be read; try again later".to_string()),
                ),
                // A user online gets it as gochat sent it, unkept: a full store never stops
                // live messages.
                Some(NotKept::StoreFull) if online => (KeptResult::StoreFull, None),
                Some(NotKept::StoreFull) => (
                    KeptResult::StoreFull,
                    Some("too many unread messages are kept here; try again later".to_string()),
                ),
            };
            self.counts.kept(result, 1);
            if let Some(refusal) = refusal {
                return Err(LogicError::Refused(refusal));
            }
            kept = not_kept.is_none();
        }
        if online {
            let sent = self
                .publish(QueueMessage { target: Some(Target::UserId(to_user_id)), body, id, seq: 0 })
                .await;
            if sent.is_err() && kept {
                // Refused to the sender, so not kept either: a retry must not deliver it twice.
                self.kept.ack(to_user_id, &[id]).await?;
            }
            sent?;
        }
        self.hook(EventKind::Message, Some(id), || {
            Some(What::UserMessage {
                to_user_id,
                to_user_name: to_name,
                from_user_id: from.user_id,
                from_user_name: from.user_name.clone(),
                room_id,
                msg: msg.to_string(),
            })
        });
        Ok(id)
    }

    /// A client of `user_id` has these private messages; with `more`, the next kept ones.
    pub(crate) async fn ack(&self, user_id: u64, ids: &[u64], more: bool) -> Result<Kept, LogicError> {
        self.kept.ack(user_id, ids).await?;
        self.counts.kept(KeptResult::Acknowledged, ids.len() as u64);
        if !more {
            return Ok(Kept::default());
        }
        let chunk = self.kept.chunk(user_id, ids.iter().copied().max().unwrap_or(0), false).await?;
        self.counts.kept(KeptResult::HandedOut, chunk.ids.len() as u64);
        Ok(chunk)
    }
}
