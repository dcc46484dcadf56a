//! The state stores behind one interface: every scenario runs against the in-memory store, a
//! real Redis (`REDIS_URL`, default 127.0.0.1:6379) and a real Redis Cluster
//! (`REDIS_CLUSTER_URL`), under keys of its own.

use std::time::Duration;

use crate::common;

use common::RedisKeys;
use gochat_control::state::{
    Arrival, Departure, Departures, NewConn, NoConnection, Reach, RoomChange, Routes, Session, State,
    TooManyConnections,
};

async fn stores(session_ttl: Duration) -> Vec<(State, Option<RedisKeys>)> {
    common::state_stores("state", session_ttl).await
}

fn user(id: u64, name: &str) -> Session {
    Session { user_id: id, user_name: name.into() }
}

/// Records a socket whose client does not acknowledge private messages; returns what changed.
async fn open(s: &State, gateway: &str, shard: u32, conn_id: u64, who: &Session, room_id: u64) -> Arrival {
    let conn = NewConn { gateway, shard, conn_id, room_id, acks: false, max_user_conns: 0 };
    s.conn_open(&conn, who).await.unwrap().unwrap()
}

/// `who` joined `room_id`; `first`: the room was empty.
fn joined(room_id: u64, who: &Session, first: bool) -> RoomChange {
    RoomChange::joined(room_id, who, first)
}

/// `user_id` left `room_id`; `last`: the room is empty now.
fn left(room_id: u64, user_id: u64, last: bool) -> RoomChange {
    RoomChange::left(room_id, user_id, last)
}

/// An open that joined `joined` (or no room), and brought its user online or not.
fn arrived(joined: Option<RoomChange>, online: bool) -> Arrival {
    Arrival { joined, online }
}

/// A close that left these rooms, and took `offline` offline (or no one).
fn departed<const N: usize>(left: [RoomChange; N], offline: Option<u64>) -> Departure {
    Departure { left: left.into(), offline }
}

/// Closes that left these rooms and took these users offline, in a fixed order.
fn departures<const N: usize, const U: usize>(left: [RoomChange; N], offline: [u64; U]) -> Departures {
    sorted(Departures { left: left.into(), offline: offline.into() })
}

/// `d` in a fixed order, to compare with closes made in any order.
fn sorted(mut d: Departures) -> Departures {
    d.left.sort();
    d.offline.sort();
    d
}

/// An open or a close that changed nothing.
fn stayed<T: Default>() -> T {
    T::default()
}

#[tokio::test]
async fn several_connections_count_once() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let (a, b) = (user(1, "a"), user(2, "b"));
        let first = arrived(Some(joined(1, &a, true)), true);
        assert_eq!(open(&s, "g1", 0, 10, &a, 1).await, first, "online, and first in the room");
        assert_eq!(open(&s, "g1", 0, 10, &a, 1).await, stayed(), "idempotent");
        assert_eq!(open(&s, "g2", 1, 11, &a, 1).await, stayed(), "second connection, same user");
        assert_eq!(open(&s, "g1", 1, 12, &b, 1).await, arrived(Some(joined(1, &b, false)), true));
        assert_eq!(s.room_count(1).await.unwrap(), 2);
        let mut routes = s.routes(&[1, 2], &[1, 3]).await.unwrap();
        routes.rooms[0].sort();
        routes.users[0].sort();
        assert_eq!(
            routes,
            Routes {
                rooms: vec![vec!["g1".into(), "g2".into()], vec![]],
                users: vec![vec![("g1".into(), 0), ("g2".into(), 1)], vec![]],
            }
        );

        assert_eq!(s.conn_close("g1", 10).await.unwrap(), stayed(), "a still has a connection");
        assert_eq!(s.conn_close("g1", 10).await.unwrap(), stayed(), "idempotent");
        assert_eq!(s.room_count(1).await.unwrap(), 2);
        assert_eq!(s.conn_close("g2", 11).await.unwrap(), departed([left(1, 1, false)], Some(1)));
        assert_eq!(s.room_count(1).await.unwrap(), 1);
        assert!(!s.reach(1).await.unwrap().online);
        assert!(s.reach(2).await.unwrap().online);
        assert_eq!(s.routes(&[1], &[]).await.unwrap().rooms, vec![vec!["g1".to_string()]]);
        assert_eq!(s.room_members(1).await.unwrap(), [("2".to_string(), "b".to_string())].into());
    }
}

#[tokio::test]
async fn a_close_that_arrives_before_its_open_wins() {
    // A gateway gave up on a slow auth call and undid it; the open lands afterwards.
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let (a, b) = (user(1, "a"), user(2, "b"));
        assert_eq!(s.conn_close("g1", 20).await.unwrap(), stayed());
        assert_eq!(open(&s, "g1", 0, 20, &a, 5).await, stayed(), "recorded after its close");
        assert_eq!(s.room_count(5).await.unwrap(), 0);
        assert!(!s.reach(1).await.unwrap().online);
        // Other connections, and the same id on another gateway, are not affected.
        assert_eq!(open(&s, "g2", 0, 20, &a, 5).await, arrived(Some(joined(5, &a, true)), true));
        assert_eq!(open(&s, "g1", 0, 21, &b, 5).await, arrived(Some(joined(5, &b, false)), true));
        assert_eq!(s.room_count(5).await.unwrap(), 2);
    }
}

#[tokio::test]
async fn reach_tells_whether_a_client_that_acknowledges_is_online() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let a = user(1, "a");
        let acking = |gateway, conn_id| NewConn {
            gateway,
            shard: 0,
            conn_id,
            room_id: 1,
            acks: true,
            max_user_conns: 0,
        };
        assert_eq!(s.reach(1).await.unwrap(), Reach { online: false, acking: false });
        open(&s, "g1", 0, 1, &a, 1).await;
        assert_eq!(s.reach(1).await.unwrap(), Reach { online: true, acking: false });
        s.conn_open(&acking("g1", 2), &a).await.unwrap().unwrap();
        s.conn_open(&acking("g2", 2), &a).await.unwrap().unwrap();
        s.conn_open(&acking("g2", 2), &a).await.unwrap().unwrap();
        assert_eq!(s.reach(1).await.unwrap(), Reach { online: true, acking: true });
        s.conn_close("g1", 2).await.unwrap();
        assert!(s.reach(1).await.unwrap().acking, "one left on g2, counted once");
        s.gateway_reset("g2").await.unwrap();
        assert_eq!(s.reach(1).await.unwrap(), Reach { online: true, acking: false }, "g2's went with it");
        s.conn_open(&acking("g1", 3), &a).await.unwrap().unwrap();
        s.conn_close("g1", 3).await.unwrap();
        assert_eq!(s.reach(1).await.unwrap(), Reach { online: true, acking: false }, "closed");
        s.conn_close("g1", 1).await.unwrap();
        assert_eq!(s.reach(1).await.unwrap(), Reach::default());
    }
}

#[tokio::test]
async fn gateway_reset_forgets_its_connections() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        open(&s, "g1", 0, 1, &user(1, "a"), 5).await;
        open(&s, "g1", 0, 2, &user(2, "b"), 6).await;
        open(&s, "g2", 0, 3, &user(2, "b"), 6).await;
        let reset = sorted(s.gateway_reset("g1").await.unwrap());
        let expected = departures([left(5, 1, true)], [1]);
        assert_eq!(reset, expected, "b is still in 6, and online, through g2");
        assert_eq!(s.room_count(5).await.unwrap(), 0);
        assert_eq!(s.room_count(6).await.unwrap(), 1);
        assert_eq!(s.routes(&[5, 6], &[]).await.unwrap().rooms, vec![vec![], vec!["g2".to_string()]]);
    }
}

#[tokio::test]
async fn a_gateway_reset_larger_than_one_sweep_chunk_leaves_nothing() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        for conn in 0..1200 {
            open(&s, "g1", 0, conn, &user(conn, "u"), 1 + conn % 3).await;
        }
        assert_eq!(s.room_count(1).await.unwrap(), 400);
        let changes = s.gateway_reset("g1").await.unwrap();
        assert_eq!(changes.left.len(), 1200, "every user left its room");
        assert_eq!(changes.offline.len(), 1200, "and went offline");
        let rooms: std::collections::BTreeSet<u64> = changes.left.iter().map(|c| c.room_id).collect();
        assert_eq!(rooms, [1, 2, 3].into());
        let vacated: Vec<u64> = changes.left.iter().filter(|c| c.alone).map(|c| c.room_id).collect();
        assert_eq!(vacated.len(), 3, "each room vacated once: {vacated:?}");
        for room in 1..=3 {
            assert_eq!(s.room_count(room).await.unwrap(), 0);
        }
    }
}

#[tokio::test]
async fn a_gateway_reset_of_many_connections_leaves_none() {
    // Large enough that a hash scan from cursor 0 returns nothing long before the hash is empty.
    for (s, keys) in stores(Duration::from_secs(60)).await {
        if keys.is_none() {
            continue;
        }
        for chunk in (0..30_000u64).collect::<Vec<_>>().chunks(500) {
            let opens = chunk.iter().map(|&c| {
                let user = user(c, "u");
                let s = &s;
                async move { open(s, "g1", 0, c, &user, 7).await }
            });
            futures_util::future::join_all(opens).await;
        }
        assert_eq!(s.room_count(7).await.unwrap(), 30_000);
        let reset = s.gateway_reset("g1").await.unwrap();
        assert_eq!((reset.left.len(), reset.offline.len()), (30_000, 30_000));
        assert_eq!(reset.left.iter().filter(|c| c.alone).count(), 1, "vacated once");
        assert_eq!(s.room_count(7).await.unwrap(), 0, "every connection forgotten");
        assert!(s.routes(&[7], &[]).await.unwrap().rooms[0].is_empty());
    }
}

#[tokio::test]
async fn expired_gateways_are_swept_and_told_so() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        assert!(!s.gateway_lease("g1", Duration::ZERO).await.unwrap(), "a new gateway had no lease");
        assert!(!s.gateway_lease("g2", Duration::from_secs(60)).await.unwrap());
        open(&s, "g1", 0, 1, &user(1, "a"), 5).await;
        open(&s, "g2", 0, 2, &user(2, "b"), 5).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let swept = departures([left(5, 1, false)], [1]);
        assert_eq!(s.sweep_expired().await.unwrap(), vec![("g1".to_string(), swept)]);
        assert_eq!(s.sweep_expired().await.unwrap(), vec![], "swept once");
        assert_eq!(s.room_count(5).await.unwrap(), 1);
        assert!(!s.reach(1).await.unwrap().online);
        assert!(s.gateway_lease("g2", Duration::from_secs(60)).await.unwrap(), "g2 kept its lease");
        assert!(!s.gateway_lease("g1", Duration::from_secs(60)).await.unwrap(), "g1 was swept");
    }
}

#[tokio::test]
async fn sessions_expire_and_revoke() {
    for (s, _keys) in stores(Duration::from_secs(1)).await {
        s.create_session("t".into(), user(1, "a b\tc")).await.unwrap();
        assert_eq!(s.session("t").await.unwrap(), Some(user(1, "a b\tc")));
        assert_eq!(s.remove_session("t").await.unwrap(), Some(user(1, "a b\tc")));
        assert_eq!(s.remove_session("t").await.unwrap(), None);
        assert_eq!(s.session("t").await.unwrap(), None);
        s.create_session("u".into(), user(2, "b")).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while s.session("u").await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "the session never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_sweep_never_touches_connections_opened_after_the_claim_and_resumes_if_cut_short() {
    for (s, keys) in stores(Duration::from_secs(60)).await {
        let (State::Redis(redis), Some(_keys)) = (&s, keys) else { continue };
        s.gateway_lease("g1", Duration::ZERO).await.unwrap();
        open(&s, "g1", 0, 1, &user(1, "a"), 5).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A control claims the expired gateway, then stops before closing anything.
        assert_eq!(redis.claim_expired().await.unwrap().len(), 1);
        // Meanwhile the gateway renews and its clients reconnect.
        assert!(!s.gateway_lease("g1", Duration::from_secs(60)).await.unwrap(), "told it was swept");
        open(&s, "g1", 0, 2, &user(2, "b"), 5).await;
        // The next sweep finishes the claimed one, and only that.
        let swept = departures([left(5, 1, false)], [1]);
        assert_eq!(s.sweep_expired().await.unwrap(), vec![("g1".to_string(), swept)]);
        assert_eq!(s.room_members(5).await.unwrap(), [("2".to_string(), "b".to_string())].into());
        assert_eq!(s.routes(&[5], &[1, 2]).await.unwrap().users, vec![vec![], vec![("g1".to_string(), 0)]]);
        assert_eq!(s.sweep_expired().await.unwrap(), vec![], "nothing left to resume");
    }
}

#[tokio::test]
async fn membership_is_per_room_and_lasts_while_any_connection_does() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let a = user(1, "a");
        assert!(!s.is_member(5, 1).await.unwrap());
        open(&s, "g1", 0, 1, &a, 5).await;
        open(&s, "g2", 0, 2, &a, 5).await;
        assert!(s.is_member(5, 1).await.unwrap());
        assert!(!s.is_member(6, 1).await.unwrap(), "another room");
        assert!(!s.is_member(5, 2).await.unwrap(), "another user");
        s.conn_close("g1", 1).await.unwrap();
        assert!(s.is_member(5, 1).await.unwrap(), "one connection left");
        s.conn_close("g2", 2).await.unwrap();
        assert!(!s.is_member(5, 1).await.unwrap());
    }
}

#[tokio::test]
async fn a_connection_joins_and_leaves_several_rooms() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let (a, b) = (user(1, "a"), user(2, "b"));
        assert_eq!(open(&s, "g1", 3, 1, &a, 0).await, arrived(None, true), "in no room yet");
        assert!(s.reach(1).await.unwrap().online);
        assert_eq!(s.conn_join("g1", 1, &a, 5).await.unwrap(), Ok(Some(joined(5, &a, true))));
        assert_eq!(s.conn_join("g1", 1, &a, 5).await.unwrap(), Ok(None), "idempotent");
        assert_eq!(s.conn_join("g1", 1, &a, 6).await.unwrap(), Ok(Some(joined(6, &a, true))));
        assert_eq!(s.conn_join("g1", 99, &a, 6).await.unwrap(), Err(NoConnection), "an unknown connection");
        assert_eq!(open(&s, "g2", 0, 2, &b, 6).await, arrived(Some(joined(6, &b, false)), true));
        assert_eq!(open(&s, "g2", 0, 3, &a, 6).await, stayed(), "in 6 and online already");
        assert_eq!((s.room_count(5).await.unwrap(), s.room_count(6).await.unwrap()), (1, 2));
        let mut routes = s.routes(&[5, 6], &[]).await.unwrap().rooms;
        routes[1].sort();
        assert_eq!(routes, [vec!["g1".to_string()], vec!["g1".to_string(), "g2".to_string()]]);
        assert_eq!(s.conn_leave("g1", 1, 6).await.unwrap(), None, "a is in 6 through g2");
        assert_eq!(s.conn_leave("g1", 1, 6).await.unwrap(), None, "idempotent");
        assert_eq!(s.routes(&[6], &[]).await.unwrap().rooms, [vec!["g2".to_string()]]);
        assert_eq!(s.conn_leave("g1", 1, 5).await.unwrap(), Some(left(5, 1, true)));
        assert_eq!(s.room_count(5).await.unwrap(), 0);
        let again = s.conn_join("g1", 1, &a, 7).await.unwrap();
        assert_eq!(again, Ok(Some(joined(7, &a, true))), "after leaving its first");
        // Its close takes it out of the rooms it is still in; a is online through g2.
        assert_eq!(s.conn_close("g1", 1).await.unwrap(), departed([left(7, 1, true)], None));
        let a_gone = departed([left(6, 1, false)], Some(1));
        assert_eq!(s.conn_close("g2", 3).await.unwrap(), a_gone);
        let b_gone = departed([left(6, 2, true)], Some(2));
        assert_eq!(s.conn_close("g2", 2).await.unwrap(), b_gone, "the last one out");
        for room in [5, 6, 7] {
            assert_eq!(s.room_count(room).await.unwrap(), 0);
            assert!(s.routes(&[room], &[]).await.unwrap().rooms[0].is_empty());
        }
        assert!(!s.reach(1).await.unwrap().online);
    }
}

/// A room push over REST from a user with no socket in the room: refused unless rooms are
/// open; socket sends (always to the socket's own room) are never asked.
#[tokio::test]
async fn room_pushes_need_a_socket_in_the_room_unless_rooms_are_open() {
    use gochat_control::logic::{Logic, LogicError, NOT_MEMBER};
    use gochat_control::store::UserStore;
    use gochat_queue::MemoryQueue;

    for open_rooms in [false, true] {
        for (s, _keys) in stores(Duration::from_secs(60)).await {
            let cfg = gochat_control::ControlConfig { open_rooms, ..Default::default() };
            let queue = std::sync::Arc::new(MemoryQueue::new(100));
            let store = UserStore::open("sqlite::memory:").await.unwrap();
            let logic = Logic::new(store, s, queue.clone(), &cfg);
            let token = logic.register("alice", "pw-1").await.unwrap();
            let alice = logic.check_auth(&token).await.unwrap();

            let outsider = logic.push_room(&alice, 7, "hi").await;
            if open_rooms {
                assert_eq!(outsider, Ok(()));
            } else {
                assert_eq!(outsider, Err(LogicError::Refused(NOT_MEMBER.into())));
            }
            // Bad input is reported as such, before membership.
            assert!(
                matches!(logic.push_room(&alice, 0, "hi").await, Err(LogicError::Refused(m)) if m.contains("roomId"))
            );
            assert!(
                matches!(logic.push_room(&alice, 7, "").await, Err(LogicError::Refused(m)) if m.contains("empty"))
            );
            logic.send_room(alice.user_id, 7, "from a socket").await.unwrap();

            logic.conn_open(&token, 7, "g1", 0, 1, None, false).await.unwrap();
            logic.push_room(&alice, 7, "member").await.unwrap();
            let outside = logic.push_room(&alice, 8, "next door").await;
            assert_eq!(outside.is_ok(), open_rooms, "membership is per room");
            logic.conn_close("g1", 1).await.unwrap();
            let left = logic.push_room(&alice, 7, "after leaving").await;
            assert_eq!(left.is_ok(), open_rooms, "membership ends with the socket");
            let accepted = 2 + 3 * usize::from(open_rooms);
            assert_eq!(queue.len(), accepted, "open_rooms = {open_rooms}");
        }
    }
}

/// Reads `queue` until a presence update (op 9, the last body of a room update that has one)
/// is among what was read; returns the bodies read.
async fn bodies_through_presence(queue: &gochat_queue::MemoryQueue) -> Vec<serde_json::Value> {
    use gochat_queue::Queue;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut bodies: Vec<serde_json::Value> = Vec::new();
    while !bodies.iter().any(|b| b["op"] == 9) {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!wait.is_zero(), "no presence update in time, after {bodies:?}");
        let read = queue.read(100, wait).await.unwrap();
        bodies.extend(
            read.iter().map(|d| serde_json::from_slice::<serde_json::Value>(&d.message.body).unwrap()),
        );
    }
    bodies
}

/// Room updates: a user who joined and left between two updates is no change; one who left
/// and came back neither; the others are listed once, with the count.
#[tokio::test]
async fn presence_updates_net_out_users_who_came_and_went() {
    use gochat_control::logic::Logic;
    use gochat_control::store::UserStore;
    use gochat_queue::{MemoryQueue, Queue};

    let queue = std::sync::Arc::new(MemoryQueue::new(100));
    let store = UserStore::open("sqlite::memory:").await.unwrap();
    let cfg = gochat_control::ControlConfig::default();
    let logic =
        std::sync::Arc::new(Logic::new(store, State::memory(Duration::from_secs(60)), queue.clone(), &cfg));
    let mut tokens = Vec::new();
    for name in ["stays", "blinks", "returns", "leaves"] {
        tokens.push(logic.register(name, "pw-1").await.unwrap());
    }
    let ids: Vec<u64> = futures_util::future::join_all(tokens.iter().map(|t| logic.check_auth(t)))
        .await
        .into_iter()
        .map(|s| s.unwrap().user_id)
        .collect();
    // Before: "returns" and "leaves" are in the room, and that was reported.
    logic.conn_open(&tokens[2], 5, "g1", 0, 3, None, false).await.unwrap();
    logic.conn_open(&tokens[3], 5, "g1", 0, 4, None, false).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let every = Duration::from_millis(600);
    let task = tokio::spawn(logic.clone().send_room_updates(every, stopped));
    let before = bodies_through_presence(&queue).await;
    let presence: Vec<&serde_json::Value> = before.iter().filter(|b| b["op"] == 9).collect();
    assert_eq!(
        presence,
        [&serde_json::json!({
            "op": 9, "roomId": 5, "count": 2,
            "joined": {ids[2].to_string(): "returns", ids[3].to_string(): "leaves"},
            "left": [],
        })]
    );
    // Within one update (the last one has just been sent): all of these.
    logic.conn_open(&tokens[0], 5, "g1", 0, 1, None, false).await.unwrap();
    logic.conn_open(&tokens[1], 5, "g1", 0, 2, None, false).await.unwrap();
    logic.conn_close("g1", 2).await.unwrap();
    logic.conn_close("g1", 3).await.unwrap();
    logic.conn_open(&tokens[2], 5, "g1", 0, 5, None, false).await.unwrap();
    logic.conn_close("g1", 4).await.unwrap();
    let mut bodies = bodies_through_presence(&queue).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    // Nothing after it: the presence update ends its room update, and nothing changed since.
    for d in queue.read(100, Duration::from_millis(10)).await.unwrap() {
        bodies.push(serde_json::from_slice(&d.message.body).unwrap());
    }
    let presence: Vec<&serde_json::Value> = bodies.iter().filter(|b| b["op"] == 9).collect();
    assert_eq!(presence.len(), 1, "{bodies:?}");
    assert_eq!(
        presence[0],
        &serde_json::json!({
            "op": 9, "roomId": 5, "count": 2,
            "joined": {ids[0].to_string(): "stays"},
            "left": [ids[3].to_string()],
        })
    );
    let counts: Vec<&serde_json::Value> = bodies.iter().filter(|b| b["op"] == 4).collect();
    assert_eq!(counts, [&serde_json::json!({"count": 2, "op": 4, "roomId": 5})]);
}

#[tokio::test]
async fn a_user_has_at_most_its_cap_of_connections() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let (a, b) = (user(1, "a"), user(2, "b"));
        let capped = |gateway, conn_id| NewConn {
            gateway,
            shard: 0,
            conn_id,
            room_id: 1,
            acks: false,
            max_user_conns: 3,
        };
        for (gateway, conn_id) in [("g1", 1), ("g1", 2), ("g2", 3)] {
            assert!(s.conn_open(&capped(gateway, conn_id), &a).await.unwrap().is_ok());
        }
        assert_eq!(
            s.conn_open(&capped("g2", 4), &a).await.unwrap(),
            Err(TooManyConnections),
            "over gateways"
        );
        assert!(s.conn_open(&capped("g1", 1), &a).await.unwrap().is_ok(), "an open repeated is no new one");
        assert!(s.conn_open(&capped("g1", 5), &b).await.unwrap().is_ok(), "per user");
        assert_eq!(s.routes(&[], &[1]).await.unwrap().users[0].len(), 2, "the refused one is not routed");
        s.conn_close("g1", 2).await.unwrap();
        assert!(s.conn_open(&capped("g2", 4), &a).await.unwrap().is_ok(), "a close makes room");
        assert_eq!(s.conn_open(&capped("g2", 6), &a).await.unwrap(), Err(TooManyConnections));
    }
}

/// Online and offline are told once per user however its connections come and go: over
/// gateways and without a room; a refused connection, and one closed before it opened, tell
/// nothing.
#[tokio::test]
async fn users_come_online_with_their_first_connection_and_go_offline_with_their_last() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let a = user(1, "a");
        let capped = |gateway, conn_id| NewConn {
            gateway,
            shard: 0,
            conn_id,
            room_id: 0,
            acks: true,
            max_user_conns: 2,
        };
        let online = arrived(None, true);
        assert_eq!(s.conn_open(&capped("g1", 1), &a).await.unwrap(), Ok(online.clone()));
        assert_eq!(s.conn_open(&capped("g2", 2), &a).await.unwrap(), Ok(stayed()), "a second gateway");
        assert_eq!(s.conn_open(&capped("g2", 3), &a).await.unwrap(), Err(TooManyConnections));
        assert_eq!(s.conn_close("g2", 3).await.unwrap(), stayed(), "the refused one was never recorded");
        assert_eq!(s.conn_close("g1", 1).await.unwrap(), stayed(), "still online through g2");
        assert_eq!(s.conn_close("g2", 2).await.unwrap(), departed([], Some(1)), "the last one");
        assert_eq!(s.conn_close("g2", 2).await.unwrap(), stayed(), "told once");
        // A close before its open: neither tells anything.
        assert_eq!(s.conn_close("g1", 4).await.unwrap(), stayed());
        assert_eq!(s.conn_open(&capped("g1", 4), &a).await.unwrap(), Ok(stayed()));
        assert!(!s.reach(1).await.unwrap().online);
        // Online again; its gateway's reset, and another's expiry, take it offline.
        assert_eq!(open(&s, "g3", 0, 5, &a, 0).await, online);
        assert_eq!(s.gateway_reset("g3").await.unwrap(), departures([], [1]));
        s.gateway_lease("g4", Duration::ZERO).await.unwrap();
        assert_eq!(open(&s, "g4", 0, 6, &a, 0).await, online);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.sweep_expired().await.unwrap(), [("g4".to_string(), departures([], [1]))]);
    }
}

/// Controls racing on the same users and room (tasks on one store, and on Redis two
/// connections, as two controls have): however the opens and closes interleave, exactly one of
/// them sees each user come online and the room occupied, and exactly one sees each user go
/// offline and the room vacated.
#[tokio::test]
async fn racing_controls_see_each_transition_once() {
    for (s, keys) in stores(Duration::from_secs(60)).await {
        let second = match &keys {
            Some(keys) => Some(State::Redis(keys.state(Duration::from_secs(60)).await)),
            None => None,
        };
        let controls: Vec<&State> = std::iter::once(&s).chain(second.as_ref()).collect();
        let users = [user(1, "a"), user(2, "b")];
        for round in 0..10u64 {
            let conns: Vec<(String, u64, &Session, &State)> = (0..12u64)
                .map(|i| {
                    (
                        format!("g{}", i % 3),
                        round * 100 + i,
                        &users[i as usize % 2],
                        controls[i as usize % controls.len()],
                    )
                })
                .collect();
            let opened = futures_util::future::join_all(
                conns.iter().map(|(g, id, who, state)| open(state, g, 0, *id, who, 9)),
            )
            .await;
            let closed = futures_util::future::join_all(
                conns.iter().map(|(g, id, _, state)| async move { state.conn_close(g, *id).await.unwrap() }),
            )
            .await; // Opens tell who came online by their session; closes name who went offline.
            let online =
                conns.iter().zip(&opened).filter(|(_, a)| a.online).map(|((_, _, who, _), _)| who.user_id);
            let offline = closed.iter().filter_map(|d| d.offline);
            let rooms_in = opened.iter().filter_map(|a| a.joined.as_ref());
            let rooms_out = closed.iter().flat_map(|d| &d.left);
            for (what, users, rooms) in [
                ("opens", online.collect::<Vec<u64>>(), rooms_in.collect::<Vec<&RoomChange>>()),
                ("closes", offline.collect(), rooms_out.collect()),
            ] {
                let mut users = users;
                users.sort();
                assert_eq!(users, [1, 2], "round {round}, {what}: each user once");
                assert_eq!(rooms.len(), 2, "round {round}, {what}: each user joins and leaves once");
                assert_eq!(
                    rooms.iter().filter(|c| c.alone).count(),
                    1,
                    "round {round}, {what}: the room once"
                );
            }
            assert_eq!(s.room_count(9).await.unwrap(), 0);
        }
    }
}

#[tokio::test]
async fn a_users_connections_are_counted_over_every_gateway() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let a = user(1, "a");
        assert_eq!(s.user_connections(1).await.unwrap(), 0);
        open(&s, "g1", 0, 10, &a, 1).await;
        open(&s, "g1", 0, 11, &a, 2).await;
        open(&s, "g2", 1, 12, &a, 0).await;
        assert_eq!(s.user_connections(1).await.unwrap(), 3);
        s.conn_close("g1", 10).await.unwrap();
        assert_eq!(s.user_connections(1).await.unwrap(), 2);
        s.gateway_reset("g2").await.unwrap();
        assert_eq!(s.user_connections(1).await.unwrap(), 1);
    }
}

#[tokio::test]
async fn nodes_are_listed_by_their_last_report_until_it_is_stale() {
    use gochat_control::state::{NodeKind, NodeReport, NODE_REPORT_TTL};
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let report = |kind, id: &str, connections, at_ms| NodeReport {
            kind,
            id: id.into(),
            version: "1.2.3".into(),
            connections,
            at_ms,
        };
        s.node_report(&report(NodeKind::Worker, "w1", 2, now)).await.unwrap();
        s.node_report(&report(NodeKind::Gateway, "g1", 10, now)).await.unwrap();
        s.node_report(&report(NodeKind::Gateway, "g1", 12, now)).await.unwrap();
        let stale = now - NODE_REPORT_TTL.as_millis() as u64 - 1000;
        s.node_report(&report(NodeKind::Control, "c-gone", 0, stale)).await.unwrap();
        let nodes = s.nodes().await.unwrap();
        assert_eq!(
            nodes,
            [report(NodeKind::Gateway, "g1", 12, now), report(NodeKind::Worker, "w1", 2, now)],
            "the last report of each, in kind order, none stale"
        );
        s.node_report(&report(NodeKind::Control, "c-gone", 0, now)).await.unwrap();
        assert_eq!(s.nodes().await.unwrap().len(), 3, "a stale node that reports again is back");
    }
}

/// A connection record that does not parse (written by hand, or by a future layout) is
/// forgotten with the rest, and a reset of its gateway ends instead of reading it forever.
#[tokio::test]
async fn an_unreadable_connection_record_is_forgotten_not_read_forever() {
    for (s, keys) in stores(Duration::from_secs(60)).await {
        let Some(keys) = keys else { continue };
        open(&s, "g1", 0, 1, &user(1, "a"), 5).await;
        let timeouts = gochat_runtime::redis::RedisTimeouts {
            connect: Duration::from_secs(2),
            response: Some(Duration::from_secs(2)),
            retries: 1,
        };
        let mut conn = gochat_runtime::redis::RedisConn::open(&keys.url, timeouts).await.unwrap();
        let hash = format!("{}:{{g:g1}}:conns", keys.prefix);
        let _: () =
            redis::cmd("HSET").arg(&hash).arg(2).arg("not a record").query_async(&mut conn).await.unwrap();
        let reset = tokio::time::timeout(Duration::from_secs(10), s.gateway_reset("g1")).await;
        let reset = reset.expect("the reset ended").unwrap();
        assert_eq!(sorted(reset), departures([left(5, 1, true)], [1]), "the readable one closed as usual");
        let sweeps = format!("{}:{{g:g1}}:sweeps", keys.prefix);
        let unfinished: u64 = redis::cmd("SCARD").arg(&sweeps).query_async(&mut conn).await.unwrap();
        assert_eq!(unfinished, 0, "the reset's sweep finished");
    }
}
