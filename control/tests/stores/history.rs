//! Room history and kept private messages, behind their interfaces: every scenario runs against
//! the in-memory store, a real Redis (`REDIS_URL`, default 127.0.0.1:6379) and a real Redis
//! Cluster (`REDIS_CLUSTER_URL`), under keys of its own, deleted afterwards.

use std::time::Duration;

use crate::common;

use common::RedisKeys;
use gochat_control::history::{self, History, RECOVER_MAX_BYTES};
use gochat_control::kept::{self, KeptStore, CHUNK_MESSAGES};
use gochat_control::state::State;
use gochat_proto::wire::{self, Position};
use gochat_test_services::{self as services, Service};

/// The two kinds of state (in memory, on Redis), each with its keys' guard.
async fn states() -> Vec<(State, Option<RedisKeys>)> {
    common::state_stores("history", Duration::from_secs(60)).await
}

fn limits(size: usize, max_age: Duration) -> history::Limits {
    history::Limits { size, max_age, max_bytes: 0 }
}

fn body(text: &str) -> Vec<u8> {
    format!(r#"{{"code":0,"msg":{text:?},"op":3,"msgId":"1"}}"#).into_bytes()
}

fn texts(bodies: &[Vec<u8>]) -> Vec<String> {
    let msg = |b: &Vec<u8>| {
        serde_json::from_slice::<serde_json::Value>(b).unwrap()["msg"].as_str().unwrap().to_string()
    };
    bodies.iter().map(msg).collect()
}

#[tokio::test]
async fn room_messages_are_numbered_kept_and_recovered() {
    for (state, _keys) in states().await {
        let h = state.history(limits(5, Duration::from_secs(60)));
        let start = h.join(1, None).await.unwrap().unwrap();
        assert_eq!((start.position.seq, start.recovered, start.bodies.len()), (0, None, 0));
        let (at, stored) = h.append(1, body("a")).await.unwrap();
        let at = at.unwrap();
        assert_eq!(at, Position { epoch: start.position.epoch.clone(), seq: 1 });
        assert_eq!(stored, wire::with_position(&body("a"), 1, &at.epoch), "the body clients get");
        let parsed: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(
            (&parsed["seq"], parsed["epoch"].as_str()),
            (&serde_json::json!(1), Some(at.epoch.as_str()))
        );
        for t in ["b", "c", "d"] {
            h.append(1, body(t)).await.unwrap();
        }
        assert_eq!(h.append(2, body("x")).await.unwrap().0.unwrap().seq, 1, "rooms count on their own");

        let r = h.join(1, Some(&at)).await.unwrap().unwrap();
        assert_eq!((r.position.seq, r.recovered), (4, Some(true)));
        assert_eq!(texts(&r.bodies), ["b", "c", "d"]);
        let r = h.join(1, Some(&Position { seq: 4, ..at.clone() })).await.unwrap().unwrap();
        assert_eq!((r.recovered, r.bodies.len()), (Some(true), 0), "missed nothing");
        let other = Position { epoch: "another".into(), seq: 1 };
        assert_eq!(h.join(1, Some(&other)).await.unwrap().unwrap().recovered, Some(false));
        let ahead = Position { seq: 9, ..at.clone() };
        assert_eq!(h.join(1, Some(&ahead)).await.unwrap().unwrap().recovered, Some(false));

        for t in ["e", "f", "g"] {
            h.append(1, body(t)).await.unwrap();
        }
        let r = h.join(1, Some(&at)).await.unwrap().unwrap();
        assert_eq!(r.recovered, Some(false), "2 fell out of the 5 kept: reload");
        let r = h.join(1, Some(&Position { seq: 2, ..at.clone() })).await.unwrap().unwrap();
        assert_eq!(texts(&r.bodies), ["c", "d", "e", "f", "g"], "3 is the oldest kept");
        let (now, last) = h.latest(1, 2).await.unwrap().unwrap();
        assert_eq!((now.seq, texts(&last)), (7, vec!["f".to_string(), "g".to_string()]));
        assert_eq!(texts(&h.latest(1, 50).await.unwrap().unwrap().1).len(), 5);
    }
}

#[tokio::test]
async fn a_quiet_room_forgets_its_history_and_starts_a_new_epoch() {
    for (state, _keys) in states().await {
        let h = state.history(limits(10, Duration::from_millis(300)));
        let (at, _) = h.append(1, body("a")).await.unwrap();
        let at = at.unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
        let r = h.join(1, Some(&Position { seq: 0, ..at.clone() })).await.unwrap().unwrap();
        assert_eq!(r.recovered, Some(false), "the message expired");
        let (next, _) = h.append(1, body("b")).await.unwrap();
        let next = next.unwrap();
        assert_ne!(next.epoch, at.epoch, "a new epoch, so old positions cannot match");
        assert_eq!(next.seq, 1);
    }
}

#[tokio::test]
async fn a_recovery_too_large_for_one_write_is_a_reload() {
    for (state, _keys) in states().await {
        let h = state.history(limits(100, Duration::from_secs(60)));
        let start = h.join(1, None).await.unwrap().unwrap().position;
        let big = "x".repeat(RECOVER_MAX_BYTES / 10);
        for _ in 0..12 {
            h.append(1, body(&big)).await.unwrap();
        }
        assert_eq!(h.join(1, Some(&start)).await.unwrap().unwrap().recovered, Some(false));
        let recent = Position { seq: 5, ..start };
        assert_eq!(h.join(1, Some(&recent)).await.unwrap().unwrap().bodies.len(), 7);
    }
}

#[tokio::test]
async fn controls_sharing_a_room_number_its_messages_in_turn() {
    for (state, keys) in states().await {
        let Some(keys) = keys else { continue };
        let ttl = Duration::from_secs(60);
        let other = keys.state(ttl).await;
        let (a, b) = (state.history(limits(1000, ttl)), State::Redis(other).history(limits(1000, ttl)));
        let appends = (0..200).map(|i| {
            let h = if i % 2 == 0 { &a } else { &b };
            async move { h.append(9, body(&i.to_string())).await.unwrap().0.unwrap().seq }
        });
        let mut seqs = futures_util::future::join_all(appends).await;
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "each number once");
        let (_, kept) = a.latest(9, 1000).await.unwrap().unwrap();
        let kept: Vec<u64> = kept
            .iter()
            .map(|b| serde_json::from_slice::<serde_json::Value>(b).unwrap()["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(kept, (1..=200).collect::<Vec<_>>(), "kept in their order");
    }
}

#[tokio::test]
async fn history_off_numbers_nothing() {
    let state = State::memory(Duration::from_secs(60));
    let h = state.history(limits(0, Duration::from_secs(60)));
    assert!(!h.is_on());
    assert!(matches!(h, History::Off));
    assert_eq!(h.append(1, body("a")).await.unwrap(), (None, body("a")));
    assert_eq!(h.join(1, None).await.unwrap(), None);
}

fn kept_limits(size: usize, max_age: Duration) -> kept::Limits {
    kept::Limits { size, per_sender: 0, max_bytes: 0, max_age }
}

/// A message id made now (ids carry their time; the Redis store of kept messages expires by it).
fn id_now(seq: u64) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    gochat_control::ids::first_at(now) + seq
}

#[tokio::test]
async fn private_messages_are_kept_until_acknowledged() {
    for (state, _keys) in states().await {
        let store = state.kept(kept_limits(3, Duration::from_secs(60)));
        let ids: Vec<u64> = (1..=4).map(id_now).collect();
        for (i, id) in ids.iter().take(3).enumerate() {
            assert_eq!(store.keep(7, 5, *id, format!("m{i}").as_bytes()).await.unwrap(), Ok(()));
        }
        assert_eq!(store.keep(7, 5, ids[0], b"m0").await.unwrap(), Ok(()), "a repeat is no new message");
        assert!(store.keep(7, 5, ids[3], b"m3").await.unwrap().is_err(), "full");
        assert_eq!(store.keep(8, 5, ids[3], b"other").await.unwrap(), Ok(()), "per user");
        let all = store.chunk(7, 0, false).await.unwrap();
        assert_eq!((all.ids.clone(), all.more), (ids[..3].to_vec(), 0));
        assert_eq!(all.bodies, [b"m0".to_vec(), b"m1".to_vec(), b"m2".to_vec()]);
        assert_eq!(store.chunk(7, ids[0], false).await.unwrap().ids, ids[1..3], "after an id");
        store.ack(7, &ids[..2]).await.unwrap();
        assert_eq!(store.chunk(7, 0, false).await.unwrap().ids, [ids[2]]);
        assert_eq!(
            store.chunk(7, 0, true).await.unwrap().ids,
            [ids[2]],
            "taken by a client that does not ack"
        );
        assert!(store.chunk(7, 0, false).await.unwrap().ids.is_empty());
        assert_eq!(store.keep(7, 5, ids[3], b"m3").await.unwrap(), Ok(()), "room again");
    }
}

#[tokio::test]
async fn kept_messages_come_in_chunks_and_expire() {
    for (state, _keys) in states().await {
        let store = state.kept(kept_limits(1000, Duration::from_millis(400)));
        let n = CHUNK_MESSAGES as u64 + 20;
        for seq in 1..=n {
            store.keep(7, 5, id_now(seq), b"m").await.unwrap().unwrap();
        }
        let first = store.chunk(7, 0, false).await.unwrap();
        assert_eq!((first.ids.len(), first.more), (CHUNK_MESSAGES, 20));
        let next = store.chunk(7, *first.ids.last().unwrap(), false).await.unwrap();
        assert_eq!((next.ids.len(), next.more), (20, 0));
        assert!(next.ids[0] > *first.ids.last().unwrap());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(store.chunk(7, 0, false).await.unwrap().ids.is_empty(), "expired");
        assert!(matches!(state.kept(kept_limits(0, Duration::from_secs(1))), KeptStore::Off));
    }
}

#[tokio::test]
async fn one_sender_takes_only_its_share_of_a_users_kept_messages() {
    for (state, _keys) in states().await {
        let limits =
            kept::Limits { size: 10, per_sender: 3, max_bytes: 0, max_age: Duration::from_millis(400) };
        let store = state.kept(limits);
        let ids: Vec<u64> = (1..=8).map(id_now).collect();
        for id in &ids[..3] {
            assert_eq!(store.keep(7, 66, *id, b"spam").await.unwrap(), Ok(()));
        }
        assert_eq!(store.keep(7, 66, ids[3], b"spam").await.unwrap(), Err(kept::NotKept::SenderShare));
        assert_eq!(store.keep(7, 67, ids[4], b"hello").await.unwrap(), Ok(()), "others still reach the user");
        assert_eq!(store.keep(8, 66, ids[5], b"spam").await.unwrap(), Ok(()), "a share is per user");
        store.ack(7, &[ids[0], ids[0], ids[0]]).await.unwrap();
        assert_eq!(
            store.keep(7, 66, ids[6], b"spam").await.unwrap(),
            Ok(()),
            "a read one gives its place back"
        );
        assert_eq!(
            store.keep(7, 66, ids[7], b"spam").await.unwrap(),
            Err(kept::NotKept::SenderShare),
            "once, however often it was acknowledged"
        );
        assert_eq!(store.chunk(7, 0, true).await.unwrap().ids.len(), 4, "taken");
        assert_eq!(store.keep(7, 66, ids[7], b"spam").await.unwrap(), Ok(()), "taken ones too");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fresh: Vec<u64> = (10..=12).map(id_now).collect();
        for id in &fresh {
            assert_eq!(store.keep(7, 66, *id, b"spam").await.unwrap(), Ok(()), "expired ones too");
        }
    }
}

/// A store written before the hash tags (one Redis): the first control of this layout moves
/// the rooms' histories and the users' kept messages to their keys now, drops the old routing
/// state, and does it once.
#[tokio::test]
async fn a_store_of_the_layout_before_hash_tags_is_upgraded_once() {
    if !services::present_for("", &[Service::Redis]) {
        return;
    }
    let ttl = Duration::from_secs(60);
    let keys = RedisKeys::new("upgrade", &common::redis_url());
    let p = keys.prefix.clone();
    let mut conn =
        redis::Client::open(keys.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // Written with this layout, then renamed to the old one's keys.
    let state = State::Redis(keys.state(ttl).await);
    let at = state.history(limits(10, ttl)).append(5, body("kept in history")).await.unwrap().0.unwrap();
    state.kept(kept_limits(10, ttl)).keep(7, 3, id_now(1), b"kept for 7").await.unwrap().unwrap();
    drop(state);
    for (new, old) in [
        (format!("{p}:{{r:5}}:history"), format!("{p}:room:5:history")),
        (format!("{p}:{{r:5}}:history:meta"), format!("{p}:room:5:history:meta")),
        (format!("{p}:{{u:7}}:inbox"), format!("{p}:user:7:inbox")),
        (format!("{p}:{{u:7}}:inbox:bodies"), format!("{p}:user:7:inbox:bodies")),
        (format!("{p}:{{u:7}}:inbox:from"), format!("{p}:user:7:inbox:from")),
        (format!("{p}:{{u:7}}:inbox:senders"), format!("{p}:user:7:inbox:senders")),
    ] {
        let _: () = redis::cmd("RENAME").arg(new).arg(old).query_async(&mut conn).await.unwrap();
    }
    let old_routing =
        [format!("{p}:gw:g1:conns"), format!("{p}:user:7:routes"), format!("{p}:room:5:members")];
    for key in &old_routing {
        let _: () = redis::cmd("HSET").arg(key).arg("f").arg(1).query_async(&mut conn).await.unwrap();
    }
    let _: () = redis::cmd("ZADD")
        .arg(format!("{p}:gateways"))
        .arg(1)
        .arg("g1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL").arg(format!("{p}:layout")).query_async(&mut conn).await.unwrap();

    let state = State::Redis(keys.state(ttl).await);
    let (position, bodies) = state.history(limits(10, ttl)).latest(5, 10).await.unwrap().unwrap();
    assert_eq!((position, texts(&bodies)), (at, vec!["kept in history".to_string()]), "the history moved");
    let kept = state.kept(kept_limits(10, ttl)).chunk(7, 0, false).await.unwrap();
    assert_eq!(kept.bodies, [b"kept for 7".to_vec()], "the kept messages moved");
    for pattern in ["room:*", "user:*", "gw:*"] {
        let old: Vec<String> =
            redis::cmd("KEYS").arg(format!("{p}:{pattern}")).query_async(&mut conn).await.unwrap();
        assert_eq!(old, Vec::<String>::new(), "nothing left under the old layout's keys");
    }
    assert!(state.gateway_lease("g1", ttl).await.is_ok(), "the old lease index is gone, not in the way");

    // Once: old keys written after the upgrade are not looked at again.
    let _: () = redis::cmd("HSET").arg(&old_routing[0]).arg("f").arg(1).query_async(&mut conn).await.unwrap();
    drop(keys.state(ttl).await);
    let left: bool = redis::cmd("EXISTS").arg(&old_routing[0]).query_async(&mut conn).await.unwrap();
    assert!(left, "the upgrade ran once");
}
