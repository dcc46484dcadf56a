//! The Redis Streams queue against a real Redis (`REDIS_URL`, default 127.0.0.1:6379) and a real
//! Redis Cluster (`REDIS_CLUSTER_URL`): each scenario runs on both. Each test uses keys of its
//! own and deletes them; without them, outside CI, it says so and skips.

use std::time::Duration;

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::QueueMessage;
use gochat_queue::{Queue, RedisQueue, RedisQueueConfig};
use gochat_runtime::redis::{RedisConn, RedisTimeouts};
use gochat_test_services::{self as services, redis_url, require, Service};

/// The Redis URLs a scenario runs on: one node, and the cluster when there is one.
fn urls() -> Vec<String> {
    let mut urls = vec![redis_url()];
    if services::present_for(" (its Redis Cluster half)", &[Service::RedisCluster]) {
        urls.extend(services::redis_cluster_url());
    }
    urls
}

fn config(url: &str, consumer: &str, prefix: &str) -> RedisQueueConfig {
    RedisQueueConfig {
        url: url.to_string(),
        prefix: prefix.to_string(),
        streams: 3,
        consumer: Some(consumer.to_string()),
        claim_idle_ms: 200,
        ..RedisQueueConfig::default()
    }
}

fn prefix(test: &str) -> String {
    format!("gochat-test-{}-{test}", std::process::id())
}

async fn cleanup(cfg: &RedisQueueConfig) {
    gochat_runtime::redis::delete_keys(&cfg.url, &cfg.prefix);
}

fn room(room: u64, body: &str) -> QueueMessage {
    QueueMessage { target: Some(Target::RoomId(room)), body: body.as_bytes().to_vec(), ..Default::default() }
}

async fn read_all(q: &RedisQueue, n: usize) -> Vec<gochat_queue::Delivery> {
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(q.read(100, Duration::from_millis(100)).await.unwrap());
        if got.len() >= n {
            break;
        }
    }
    got
}

#[tokio::test]
async fn round_trip_in_order_per_room_and_acked() {
    require!(Service::Redis);
    for url in urls() {
        let cfg = config(&url, "w1", &prefix("order"));
        let q = RedisQueue::open(cfg.clone()).await.unwrap();
        for i in 0..50 {
            q.publish(room(7, &format!("m{i}"))).await.unwrap();
        }
        q.publish(QueueMessage {
            target: Some(Target::UserId(3)),
            body: b"p".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let got = read_all(&q, 51).await;
        assert_eq!(got.len(), 51);
        let room7: Vec<String> = got
            .iter()
            .filter(|d| d.message.target == Some(Target::RoomId(7)))
            .map(|d| String::from_utf8(d.message.body.clone()).unwrap())
            .collect();
        assert_eq!(room7, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>(), "a room's order holds");
        q.ack(&got.iter().map(|d| d.id.clone()).collect::<Vec<_>>()).await.unwrap();
        // Nothing pending: a later claim finds nothing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(read_all(&q, 1).await.is_empty());
        cleanup(&cfg).await;
    }
}

#[tokio::test]
async fn entries_of_a_worker_that_died_are_claimed_by_another() {
    require!(Service::Redis);
    for url in urls() {
        let p = prefix("claim");
        let dead = RedisQueue::open(config(&url, "dead", &p)).await.unwrap();
        let alive = RedisQueue::open(config(&url, "alive", &p)).await.unwrap();
        for i in 0..5 {
            dead.publish(room(i, "x")).await.unwrap();
        }
        let taken = read_all(&dead, 5).await;
        assert_eq!(taken.len(), 5);
        // `dead` never acknowledges. Once idle past claim_idle_ms, `alive` takes them over.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut claimed = Vec::new();
        for _ in 0..20 {
            claimed.extend(alive.read(100, Duration::from_millis(100)).await.unwrap());
            if claimed.len() >= 5 {
                break;
            }
        }
        let mut a: Vec<_> = taken.iter().map(|d| d.id.clone()).collect();
        let mut b: Vec<_> = claimed.iter().map(|d| d.id.clone()).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "every unacknowledged entry is delivered again");
        alive.ack(&b).await.unwrap();
        cleanup(&config(&url, "alive", &p)).await;
    }
}

/// A worker given the stream of one that died (etcd shares the streams out) hands out what the
/// dead one left pending before anything newer, without waiting for `claim_idle_ms`: a room's
/// messages keep their order across a failover.
#[tokio::test]
async fn a_stream_taken_over_delivers_what_its_reader_left_pending_first() {
    require!(Service::Redis);
    for url in urls() {
        let p = prefix("takeover");
        // Claims of idle entries would come only after a minute.
        let cfg = |consumer| RedisQueueConfig { claim_idle_ms: 60_000, ..config(&url, consumer, &p) };
        let dead = RedisQueue::open(cfg("dead")).await.unwrap();
        for i in 0..5 {
            dead.publish(room(7, &format!("m{i}"))).await.unwrap();
        }
        // Read and never acknowledged: the worker died pushing them.
        assert_eq!(read_all(&dead, 5).await.len(), 5);
        for i in 5..10 {
            dead.publish(room(7, &format!("m{i}"))).await.unwrap();
        }
        let alive = RedisQueue::open(cfg("alive")).await.unwrap();
        let (_workers_tx, workers) = tokio::sync::watch::channel(std::collections::BTreeMap::from([(
            "alive".to_string(),
            String::new(),
        )]));
        alive.share_with("alive", workers);
        let got = read_all(&alive, 10).await;
        let bodies: Vec<String> =
            got.iter().map(|d| String::from_utf8(d.message.body.clone()).unwrap()).collect();
        assert_eq!(
            bodies,
            (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>(),
            "older ones first, each once"
        );
        alive.ack(&got.iter().map(|d| d.id.clone()).collect::<Vec<_>>()).await.unwrap();
        assert!(read_all(&alive, 1).await.is_empty(), "taken over once, not again at every read");
        cleanup(&cfg("alive")).await;
    }
}

#[tokio::test]
async fn an_undecodable_entry_is_dropped_not_redelivered() {
    require!(Service::Redis);
    for url in urls() {
        let cfg = config(&url, "w", &prefix("bad"));
        let q = RedisQueue::open(cfg.clone()).await.unwrap();
        let timeouts = RedisTimeouts { connect: Duration::from_secs(2), response: None, retries: 1 };
        let mut conn = RedisConn::open(&cfg.url, timeouts).await.unwrap();
        let _: String = redis::cmd("XADD")
            .arg(format!("{}:queue:0", cfg.prefix))
            .arg("*")
            .arg("m")
            .arg(b"\xff\xff\xff garbage".as_slice())
            .query_async(&mut conn)
            .await
            .unwrap();
        q.publish(room(1, "good")).await.unwrap();
        let got = read_all(&q, 1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.body, b"good");
        q.ack(&[got[0].id.clone()]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(read_all(&q, 1).await.is_empty(), "the bad entry was acknowledged, not left pending");
        cleanup(&cfg).await;
    }
}
