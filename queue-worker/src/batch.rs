//! Groups queued messages by room and by user, keeping each one's order.

use std::collections::{BTreeMap, HashMap};

use gochat_proto::gateway::{PushBatch, RoomPush, UserPush};
use gochat_proto::logic::RouteReply;
use gochat_proto::queue::queue_message::Target;
use gochat_queue::Delivery;

/// Messages for one room or user, in order, with their message ids and (rooms) their
/// numbers in the room's history.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Bodies {
    pub bodies: Vec<Vec<u8>>,
    pub ids: Vec<u64>,
    pub seqs: Vec<u64>,
}

/// What happens to one user's sockets, after its messages.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UserActions {
    /// Sessions whose sockets close (logouts).
    pub end_sessions: Vec<u64>,
    /// Rooms its sockets leave.
    pub leave_rooms: Vec<u64>,
    /// Every socket closes with this code and reason (the last disconnect asked for).
    pub close: Option<(u32, String)>,
}

/// One batch's messages, grouped.
#[derive(Debug, Default, PartialEq)]
pub struct Grouped {
    pub rooms: BTreeMap<u64, Bodies>,
    pub users: BTreeMap<u64, Bodies>,
    /// Per user, what happens to its sockets: logouts, disconnects, kicks.
    pub actions: BTreeMap<u64, UserActions>,
    /// Messages for every socket of every gateway.
    pub everyone: Bodies,
    /// The queue's ids of every message, to acknowledge them.
    pub ids: Vec<String>,
}

impl Grouped {
    pub fn add(&mut self, delivery: Delivery) {
        self.ids.push(delivery.id.clone());
        // Only room messages are numbered in a history.
        let (to, numbered) = match delivery.message.target {
            Some(Target::RoomId(room)) => (self.rooms.entry(room).or_default(), true),
            Some(Target::UserId(user)) => (self.users.entry(user).or_default(), false),
            Some(Target::SessionEnd(end)) => {
                self.actions.entry(end.user_id).or_default().end_sessions.push(end.session);
                return;
            }
            Some(Target::Kick(kick)) => {
                self.actions.entry(kick.user_id).or_default().leave_rooms.push(kick.room_id);
                return;
            }
            Some(Target::Disconnect(d)) => {
                self.actions.entry(d.user_id).or_default().close = Some((d.code, d.reason));
                return;
            }
            Some(Target::Everyone(_)) => (&mut self.everyone, false),
            None => {
                tracing::warn!(id = delivery.id, "queued message without a target; dropped");
                return;
            }
        };
        to.bodies.push(delivery.message.body);
        to.ids.push(delivery.message.id);
        if numbered {
            to.seqs.push(delivery.message.seq);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The users to route: those with messages or actions.
    pub fn user_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.users.keys().chain(self.actions.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// One `PushBatch` per gateway, as `route` places the rooms and users (a room's bodies go
    /// to every gateway hosting members, a user's to each of its shards, messages for everyone
    /// to each of `gateways`); and the queue ids to acknowledge once every gateway took its
    /// batch.
    pub fn split<'a>(
        self,
        route: RouteReply,
        gateways: impl IntoIterator<Item = &'a String>,
    ) -> (HashMap<String, PushBatch>, Vec<String>) {
        let mut per_gateway: HashMap<String, PushBatch> = HashMap::new();
        let Grouped { mut rooms, mut users, mut actions, everyone, ids } = self;
        if !everyone.bodies.is_empty() {
            for gateway in gateways {
                let batch = per_gateway.entry(gateway.clone()).or_default();
                batch.everyone.clone_from(&everyone.bodies);
                batch.everyone_ids.clone_from(&everyone.ids);
            }
        }
        for room in route.rooms {
            let Some(mut bodies) = rooms.remove(&room.room_id) else {
                continue;
            };
            let mut gateways = room.gateway_ids.into_iter().peekable();
            while let Some(gateway) = gateways.next() {
                let Bodies { bodies, ids, seqs, .. } =
                    if gateways.peek().is_some() { bodies.clone() } else { std::mem::take(&mut bodies) };
                per_gateway.entry(gateway).or_default().rooms.push(RoomPush {
                    room_id: room.room_id,
                    bodies,
                    ids,
                    seqs,
                });
            }
        }
        for user in route.users {
            let bodies = users.remove(&user.user_id).unwrap_or_default();
            let actions = actions.remove(&user.user_id).unwrap_or_default();
            if bodies.bodies.is_empty() && actions == UserActions::default() {
                continue;
            }
            let (close_code, close_reason) = actions.close.clone().unwrap_or_default();
            for shard in user.shards {
                per_gateway.entry(shard.gateway_id).or_default().users.push(UserPush {
                    user_id: user.user_id,
                    shard: shard.shard,
                    bodies: bodies.bodies.clone(),
                    ids: bodies.ids.clone(),
                    end_sessions: actions.end_sessions.clone(),
                    close_code,
                    close_reason: close_reason.clone(),
                    leave_rooms: actions.leave_rooms.clone(),
                });
            }
        }
        (per_gateway, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_proto::queue::QueueMessage;

    /// Queue entry `id`, carrying message id `id`.
    fn d(id: u32, target: Target, body: &str) -> Delivery {
        Delivery {
            id: id.to_string(),
            message: QueueMessage { target: Some(target), body: body.into(), id: id.into(), seq: 0 },
        }
    }

    #[test]
    fn groups_in_order() {
        let mut g = Grouped::default();
        g.add(d(1, Target::RoomId(1), "a"));
        g.add(d(2, Target::UserId(9), "p"));
        g.add(d(3, Target::RoomId(2), "x"));
        g.add(d(4, Target::RoomId(1), "b"));
        assert_eq!(g.rooms[&1].bodies, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!((&g.rooms[&1].ids[..], &g.rooms[&1].seqs[..]), (&[1, 4][..], &[0, 0][..]));
        assert_eq!((&g.rooms[&2].bodies[..], &g.rooms[&2].ids[..]), (&[b"x".to_vec()][..], &[3][..]));
        assert_eq!((&g.users[&9].bodies[..], &g.users[&9].ids[..]), (&[b"p".to_vec()][..], &[2][..]));
        assert_eq!(g.ids, ["1", "2", "3", "4"]);
    }

    #[test]
    fn history_numbers_travel_with_their_room_messages() {
        use gochat_proto::logic::{RoomRoute, ShardAddress, UserRoute};
        let mut g = Grouped::default();
        for (id, seq) in [(1, 7), (2, 8)] {
            let message = QueueMessage { target: Some(Target::RoomId(1)), body: b"m".to_vec(), id, seq };
            g.add(Delivery { id: id.to_string(), message });
        }
        let private = QueueMessage { target: Some(Target::UserId(9)), body: b"p".to_vec(), id: 3, seq: 0 };
        g.add(Delivery { id: "3".into(), message: private });
        let route = RouteReply {
            rooms: vec![RoomRoute { room_id: 1, gateway_ids: vec!["g1".into(), "g2".into()] }],
            users: vec![UserRoute {
                user_id: 9,
                shards: vec![ShardAddress { gateway_id: "g1".into(), shard: 0 }],
            }],
        };
        let (per_gateway, _) = g.split(route, &Vec::new());
        for gateway in ["g1", "g2"] {
            assert_eq!(per_gateway[gateway].rooms[0].seqs, [7, 8], "{gateway}");
        }
    }

    #[test]
    fn ended_sessions_follow_the_users_messages_to_each_shard() {
        use gochat_proto::logic::{ShardAddress, UserRoute};
        use gochat_proto::queue::SessionEnd;
        let mut g = Grouped::default();
        g.add(d(1, Target::UserId(9), "p"));
        g.add(d(2, Target::SessionEnd(SessionEnd { user_id: 9, session: 77 }), ""));
        g.add(d(3, Target::SessionEnd(SessionEnd { user_id: 5, session: 88 }), ""));
        assert_eq!(g.user_ids(), [5, 9]);
        let at = |gateway: &str, shard| ShardAddress { gateway_id: gateway.into(), shard };
        let route = RouteReply {
            rooms: vec![],
            users: vec![
                UserRoute { user_id: 5, shards: vec![at("g1", 0)] },
                UserRoute { user_id: 9, shards: vec![at("g1", 1), at("g2", 0)] },
            ],
        };
        let (per_gateway, ids) = g.split(route, &Vec::new());
        assert_eq!(ids, ["1", "2", "3"]);
        let g1 = &per_gateway["g1"].users;
        assert_eq!((g1[0].user_id, g1[0].bodies.len(), &g1[0].end_sessions[..]), (5, 0, &[88][..]));
        assert_eq!((g1[1].user_id, g1[1].bodies.len(), &g1[1].end_sessions[..]), (9, 1, &[77][..]));
        let g2 = &per_gateway["g2"].users;
        assert_eq!((g2[0].user_id, &g2[0].end_sessions[..]), (9, &[77][..]));
    }

    #[test]
    fn messages_for_everyone_go_to_every_gateway_and_user_actions_to_the_users_shards() {
        use gochat_proto::logic::{ShardAddress, UserRoute};
        use gochat_proto::queue::{Disconnect, Everyone, Kick};
        let mut g = Grouped::default();
        g.add(d(1, Target::Everyone(Everyone {}), "all"));
        g.add(d(2, Target::Kick(Kick { user_id: 9, room_id: 7 }), ""));
        g.add(d(3, Target::Disconnect(Disconnect { user_id: 9, code: 4000, reason: "bye".into() }), ""));
        assert_eq!(g.user_ids(), [9]);
        let route = RouteReply {
            rooms: vec![],
            users: vec![UserRoute {
                user_id: 9,
                shards: vec![ShardAddress { gateway_id: "g1".into(), shard: 1 }],
            }],
        };
        let gateways = vec!["g1".to_string(), "g2".to_string()];
        let (per_gateway, ids) = g.split(route, &gateways);
        assert_eq!(ids, ["1", "2", "3"]);
        for gateway in ["g1", "g2"] {
            assert_eq!(per_gateway[gateway].everyone, [b"all".to_vec()], "{gateway}");
            assert_eq!(per_gateway[gateway].everyone_ids, [1], "{gateway}");
        }
        let user = &per_gateway["g1"].users[0];
        assert_eq!((user.shard, &user.leave_rooms[..]), (1, &[7][..]));
        assert_eq!((user.close_code, user.close_reason.as_str()), (4000, "bye"));
        assert!(per_gateway["g2"].users.is_empty());
    }
}
