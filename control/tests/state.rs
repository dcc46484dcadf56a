//! The state stores behind one interface: every scenario runs against the in-memory store and
//! against a real Redis (`REDIS_URL`, default 127.0.0.1:6379) under keys of its own.

use std::time::Duration;

use gochat_control::state::{RedisState, RoomChange, Routes, Session, State};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis-backed state under a fresh prefix; its keys are deleted when dropped.
struct RedisKeys(String);

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", self.0)).query(&mut conn).unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
        }
    }
}

async fn stores(session_ttl: Duration) -> Vec<(State, Option<RedisKeys>)> {
    let prefix = format!("gochat-test-state-{}-{}", std::process::id(), rand_suffix());
    let redis = RedisState::open(&redis_url(), &prefix, session_ttl).await.expect("Redis reachable");
    vec![(State::memory(session_ttl), None), (State::Redis(redis), Some(RedisKeys(prefix)))]
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn user(id: u64, name: &str) -> Session {
    Session { user_id: id, user_name: name.into() }
}

fn join(room_id: u64) -> Option<RoomChange> {
    Some(RoomChange { room_id })
}

#[tokio::test]
async fn several_connections_count_once() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let a = user(1, "a");
        assert_eq!(s.conn_open("g1", 0, 10, &a, 1).await.unwrap(), join(1));
        assert_eq!(s.conn_open("g1", 0, 10, &a, 1).await.unwrap(), None, "idempotent");
        assert_eq!(s.conn_open("g2", 1, 11, &a, 1).await.unwrap(), None, "second connection, same user");
        assert_eq!(s.conn_open("g1", 1, 12, &user(2, "b"), 1).await.unwrap(), join(1));
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

        assert_eq!(s.conn_close("g1", 10).await.unwrap(), None, "a still has a connection");
        assert_eq!(s.conn_close("g1", 10).await.unwrap(), None, "idempotent");
        assert_eq!(s.room_count(1).await.unwrap(), 2);
        assert_eq!(s.conn_close("g2", 11).await.unwrap(), join(1));
        assert_eq!(s.room_count(1).await.unwrap(), 1);
        assert!(!s.is_online(1).await.unwrap());
        assert!(s.is_online(2).await.unwrap());
        assert_eq!(s.routes(&[1], &[]).await.unwrap().rooms, vec![vec!["g1".to_string()]]);
        assert_eq!(s.room_members(1).await.unwrap(), [("2".to_string(), "b".to_string())].into());
    }
}

#[tokio::test]
async fn a_close_that_arrives_before_its_open_wins() {
    // A gateway gave up on a slow auth call and undid it; the open lands afterwards.
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        let a = user(1, "a");
        assert_eq!(s.conn_close("g1", 20).await.unwrap(), None);
        assert_eq!(s.conn_open("g1", 0, 20, &a, 5).await.unwrap(), None, "recorded after its close");
        assert_eq!(s.room_count(5).await.unwrap(), 0);
        assert!(!s.is_online(1).await.unwrap());
        // Other connections, and the same id on another gateway, are not affected.
        assert_eq!(s.conn_open("g2", 0, 20, &a, 5).await.unwrap(), join(5));
        assert_eq!(s.conn_open("g1", 0, 21, &user(2, "b"), 5).await.unwrap(), join(5));
        assert_eq!(s.room_count(5).await.unwrap(), 2);
    }
}

#[tokio::test]
async fn gateway_reset_forgets_its_connections() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        s.conn_open("g1", 0, 1, &user(1, "a"), 5).await.unwrap();
        s.conn_open("g1", 0, 2, &user(2, "b"), 6).await.unwrap();
        s.conn_open("g2", 0, 3, &user(2, "b"), 6).await.unwrap();
        assert_eq!(s.gateway_reset("g1").await.unwrap(), vec![RoomChange { room_id: 5 }]);
        assert_eq!(s.room_count(5).await.unwrap(), 0);
        assert_eq!(s.room_count(6).await.unwrap(), 1);
        assert_eq!(s.routes(&[5, 6], &[]).await.unwrap().rooms, vec![vec![], vec!["g2".to_string()]]);
    }
}

#[tokio::test]
async fn a_gateway_reset_larger_than_one_sweep_chunk_leaves_nothing() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        for conn in 0..1200 {
            s.conn_open("g1", 0, conn, &user(conn, "u"), 1 + conn % 3).await.unwrap();
        }
        assert_eq!(s.room_count(1).await.unwrap(), 400);
        let mut changes = s.gateway_reset("g1").await.unwrap();
        changes.sort();
        assert_eq!(changes, [1, 2, 3].map(|room_id| RoomChange { room_id }));
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
                async move { s.conn_open("g1", 0, c, &user, 7).await.unwrap() }
            });
            futures_util::future::join_all(opens).await;
        }
        assert_eq!(s.room_count(7).await.unwrap(), 30_000);
        assert_eq!(s.gateway_reset("g1").await.unwrap(), vec![RoomChange { room_id: 7 }]);
        assert_eq!(s.room_count(7).await.unwrap(), 0, "every connection forgotten");
        assert!(s.routes(&[7], &[]).await.unwrap().rooms[0].is_empty());
    }
}

#[tokio::test]
async fn expired_gateways_are_swept_and_told_so() {
    for (s, _keys) in stores(Duration::from_secs(60)).await {
        assert!(!s.gateway_lease("g1", Duration::ZERO).await.unwrap(), "a new gateway had no lease");
        assert!(!s.gateway_lease("g2", Duration::from_secs(60)).await.unwrap());
        s.conn_open("g1", 0, 1, &user(1, "a"), 5).await.unwrap();
        s.conn_open("g2", 0, 2, &user(2, "b"), 5).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            s.sweep_expired().await.unwrap(),
            vec![("g1".to_string(), vec![RoomChange { room_id: 5 }])]
        );
        assert_eq!(s.sweep_expired().await.unwrap(), vec![], "swept once");
        assert_eq!(s.room_count(5).await.unwrap(), 1);
        assert!(!s.is_online(1).await.unwrap());
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
        s.conn_open("g1", 0, 1, &user(1, "a"), 5).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A control claims the expired gateway, then stops before closing anything.
        assert_eq!(redis.claim_expired().await.unwrap().len(), 1);
        // Meanwhile the gateway renews and its clients reconnect.
        assert!(!s.gateway_lease("g1", Duration::from_secs(60)).await.unwrap(), "told it was swept");
        s.conn_open("g1", 0, 2, &user(2, "b"), 5).await.unwrap();
        // The next sweep finishes the claimed one, and only that.
        assert_eq!(
            s.sweep_expired().await.unwrap(),
            vec![("g1".to_string(), vec![RoomChange { room_id: 5 }])]
        );
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
        s.conn_open("g1", 0, 1, &a, 5).await.unwrap();
        s.conn_open("g2", 0, 2, &a, 5).await.unwrap();
        assert!(s.is_member(5, 1).await.unwrap());
        assert!(!s.is_member(6, 1).await.unwrap(), "another room");
        assert!(!s.is_member(5, 2).await.unwrap(), "another user");
        s.conn_close("g1", 1).await.unwrap();
        assert!(s.is_member(5, 1).await.unwrap(), "one connection left");
        s.conn_close("g2", 2).await.unwrap();
        assert!(!s.is_member(5, 1).await.unwrap());
    }
}

/// A room push over REST from a user with no socket in the room: refused unless rooms are
/// open; socket sends (always to the socket's own room) are never asked.
#[tokio::test]
async fn room_pushes_need_a_socket_in_the_room_unless_rooms_are_open() {
    use gochat_control::logic::{Logic, LogicError, NOT_MEMBER};
    use gochat_control::store::UserStore;
    use gochat_queue_worker::MemoryQueue;

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

            logic.conn_open(&token, 7, "g1", 0, 1).await.unwrap();
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
