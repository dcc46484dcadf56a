//! What a webhook receives: events, as JSON objects in a batch (a JSON array).

use serde::Serialize;

use super::config::EventKind;

/// One event. Every event has an `id` (a 64-bit id as a decimal string, unique in the cluster:
/// a message's is its `msgId`; a retried batch carries the same ids, for receivers that
/// deduplicate), a `time` (Unix milliseconds when control saw it) and a `type`; the rest
/// depends on the type ([`What`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(serialize_with = "as_string")]
    pub id: u64,
    pub time: u64,
    #[serde(flatten)]
    pub what: What,
}

/// An event's type and fields (camelCase, as gochat's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum What {
    /// A user's first socket authenticated (on any gateway of the cluster).
    #[serde(rename = "user.online", rename_all = "camelCase")]
    UserOnline { user_id: u64, user_name: String },
    /// A user's last socket closed (or its gateway was swept as dead).
    #[serde(rename = "user.offline", rename_all = "camelCase")]
    UserOffline { user_id: u64 },
    /// A room's first member joined: the room was empty.
    #[serde(rename = "room.occupied", rename_all = "camelCase")]
    RoomOccupied { room_id: u64, user_id: u64, user_name: String },
    /// A room's last member left: the room is empty.
    #[serde(rename = "room.vacated", rename_all = "camelCase")]
    RoomVacated { room_id: u64, user_id: u64 },
    /// A room message (op 3) was accepted; `seq` is its number in the room's history, when
    /// rooms keep one.
    #[serde(rename = "message.room", rename_all = "camelCase")]
    RoomMessage {
        room_id: u64,
        from_user_id: u64,
        from_user_name: String,
        msg: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// A private message (op 2) was accepted: sent to the user's sockets, or kept for them.
    /// `roomId` is what the sender gave (gochat's field; 0 when none).
    #[serde(rename = "message.user", rename_all = "camelCase")]
    UserMessage {
        to_user_id: u64,
        to_user_name: String,
        from_user_id: u64,
        from_user_name: String,
        room_id: u64,
        msg: String,
    },
}

impl What {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::UserOnline { .. } | Self::UserOffline { .. } => EventKind::User,
            Self::RoomOccupied { .. } | Self::RoomVacated { .. } => EventKind::Room,
            Self::RoomMessage { .. } | Self::UserMessage { .. } => EventKind::Message,
        }
    }
}

fn as_string<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(what: What) -> serde_json::Value {
        serde_json::to_value(Event { id: 18_446_744_073_709_551_615, time: 1_700_000_000_123, what }).unwrap()
    }

    /// The shapes docs/operations.md publishes.
    #[test]
    fn events_have_the_documented_shapes() {
        let common = |v: serde_json::Value| {
            let mut all = json!({"id": "18446744073709551615", "time": 1_700_000_000_123u64});
            all.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
            all
        };
        assert_eq!(
            event(What::UserOnline { user_id: 7, user_name: "alice".into() }),
            common(json!({"type": "user.online", "userId": 7, "userName": "alice"}))
        );
        assert_eq!(
            event(What::UserOffline { user_id: 7 }),
            common(json!({"type": "user.offline", "userId": 7}))
        );
        assert_eq!(
            event(What::RoomOccupied { room_id: 1, user_id: 7, user_name: "alice".into() }),
            common(json!({"type": "room.occupied", "roomId": 1, "userId": 7, "userName": "alice"}))
        );
        assert_eq!(
            event(What::RoomVacated { room_id: 1, user_id: 7 }),
            common(json!({"type": "room.vacated", "roomId": 1, "userId": 7}))
        );
        assert_eq!(
            event(What::RoomMessage {
                room_id: 1,
                from_user_id: 7,
                from_user_name: "alice".into(),
                msg: "hi".into(),
                seq: Some(3)
            }),
            common(
                json!({"type": "message.room", "roomId": 1, "fromUserId": 7, "fromUserName": "alice", "msg": "hi", "seq": 3})
            )
        );
        let no_seq = event(What::RoomMessage {
            room_id: 1,
            from_user_id: 7,
            from_user_name: "a".into(),
            msg: "hi".into(),
            seq: None,
        });
        assert!(no_seq.get("seq").is_none(), "{no_seq}");
        assert_eq!(
            event(What::UserMessage {
                to_user_id: 8,
                to_user_name: "bob".into(),
                from_user_id: 7,
                from_user_name: "alice".into(),
                room_id: 0,
                msg: "psst".into()
            }),
            common(
                json!({"type": "message.user", "toUserId": 8, "toUserName": "bob", "fromUserId": 7, "fromUserName": "alice", "roomId": 0, "msg": "psst"})
            )
        );
    }
}
