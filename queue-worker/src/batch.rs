//! Groups queued messages by room and by user, keeping each one's order.

use std::collections::BTreeMap;

use gochat_proto::queue::queue_message::Target;

use crate::Delivery;

/// One batch's messages, grouped.
#[derive(Debug, Default, PartialEq)]
pub struct Grouped {
    pub rooms: BTreeMap<u64, Vec<Vec<u8>>>,
    pub users: BTreeMap<u64, Vec<Vec<u8>>>,
    pub ids: Vec<String>,
}

impl Grouped {
    pub fn add(&mut self, delivery: Delivery) {
        self.ids.push(delivery.id.clone());
        match delivery.message.target {
            Some(Target::RoomId(room)) => self.rooms.entry(room).or_default().push(delivery.message.body),
            Some(Target::UserId(user)) => self.users.entry(user).or_default().push(delivery.message.body),
            None => tracing::warn!(id = delivery.id, "queued message without a target; dropped"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_proto::queue::QueueMessage;

    #[test]
    fn groups_in_order() {
        let mut g = Grouped::default();
        let d = |id: u32, target, body: &str| Delivery {
            id: id.to_string(),
            message: QueueMessage { target: Some(target), body: body.into() },
        };
        g.add(d(1, Target::RoomId(1), "a"));
        g.add(d(2, Target::UserId(9), "p"));
        g.add(d(3, Target::RoomId(2), "x"));
        g.add(d(4, Target::RoomId(1), "b"));
        assert_eq!(g.rooms[&1], vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(g.rooms[&2], vec![b"x".to_vec()]);
        assert_eq!(g.users[&9], vec![b"p".to_vec()]);
        assert_eq!(g.ids, ["1", "2", "3", "4"]);
    }
}
