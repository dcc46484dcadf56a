//! Webhooks against real receivers on loopback (HTTP servers in this process): batches arrive
//! signed and in order; a receiver that is down, fails, is slow or is TLS; the bounded queue;
//! and the events logic raises from connections and messages, once per cluster on Redis.

mod receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gochat_control::logic::Logic;
use gochat_control::state::{RedisState, State};
use gochat_control::store::UserStore;
use gochat_control::webhooks::{Event, EventKind, HookStats, WebhookConfig, Webhooks, What};
use gochat_control::ControlConfig;
use gochat_queue::MemoryQueue;
use gochat_test_services::{self as services, Service};
use receiver::{Answer, Receiver};
use serde_json::Value;

const SECRET: &str = "test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(15);

/// A hook to `url` that takes every kind of event, quick to batch and to retry.
fn hook(url: &str) -> WebhookConfig {
    let mut cfg = WebhookConfig::new(url, SECRET);
    cfg.events = vec![EventKind::User, EventKind::Room, EventKind::Message];
    cfg.batch_wait_ms = 50;
    cfg.retry_base_ms = 50;
    cfg
}

fn event(id: u64) -> Event {
    Event { id, time: 1, what: What::UserOffline { user_id: id } }
}

/// Waits until `check` returns something; fails after [`WAIT`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stats(hooks: &Webhooks, cfg: &WebhookConfig) -> HookStats {
    hooks.stats(&cfg.label()).expect("a hook with counts")
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["id"].as_str().unwrap().parse().unwrap()).collect()
}

#[tokio::test]
async fn events_arrive_in_signed_batches_in_order() {
    let receiver = Receiver::start(SECRET, Answer::Status(200)).await;
    let mut cfg = hook(&receiver.url());
    cfg.batch_size = 5;
    cfg.batch_wait_ms = 300;
    let hooks = Webhooks::new(std::slice::from_ref(&cfg));
    for id in 1..=23 {
        hooks.emit(event(id));
    }
    let events = eventually("23 events", || Some(receiver.events()).filter(|e| e.len() >= 23)).await;
    assert_eq!(ids(&events), (1..=23).collect::<Vec<_>>(), "each once, in order");
    let posts = receiver.posts();
    assert!(posts.iter().all(|p| p.signed), "every batch signed");
    assert!(posts.iter().all(|p| p.content_type == "application/json"));
    let sizes: Vec<usize> = posts.iter().map(|p| p.events.len()).collect();
    assert!(sizes.iter().all(|n| (1..=5).contains(n)), "at most batch_size: {sizes:?}");
    assert!(sizes.len() <= 7, "batched, not one POST per event: {sizes:?}");
    assert_eq!(events[0], serde_json::json!({"id": "1", "time": 1, "type": "user.offline", "userId": 1}));
    let s = stats(&hooks, &cfg);
    assert_eq!((s.queued, s.sent, s.dropped, s.failed, s.batches_sent), (23, 23, 0, 0, sizes.len() as u64));
    // A receiver with another secret rejects them: the signature depends on the secret.
    assert!(!receiver::verify(b"another-secret-0123456789", "t=1,v1=00", b"[]"));
    hooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_events_once_it_is_up() {
    // A port nothing listens on (connection refused), until the receiver starts there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cfg = hook(&format!("http://{addr}/hooks"));
    cfg.max_attempts = 20;
    cfg.retry_base_ms = 100;
    let hooks = Webhooks::new(std::slice::from_ref(&cfg));
    for id in 1..=3 {
        hooks.emit(event(id));
    }
    eventually("a retry", || Some(()).filter(|_| stats(&hooks, &cfg).retries >= 2)).await;
    assert_eq!(stats(&hooks, &cfg).sent, 0);
    let receiver = Receiver::start_at(addr, SECRET, Answer::Status(204), None).await;
    let events = eventually("the events", || Some(receiver.events()).filter(|e| e.len() >= 3)).await;
    assert_eq!(ids(&events), [1, 2, 3]);
    assert!(receiver.posts().iter().all(|p| p.signed), "signed again on each attempt");
    // Counted once the receiver's answer is in, a moment after it has the events.
    let s =
        eventually("the batch counted", || Some(stats(&hooks, &cfg)).filter(|s| s.batches_sent > 0)).await;
    assert_eq!((s.sent, s.failed, s.batches_sent, s.batches_failed), (3, 0, 1, 0));
    hooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_then_given_up_and_counted() {
    let receiver = Receiver::start(SECRET, Answer::Status(500)).await;
    let mut cfg = hook(&receiver.url());
    cfg.max_attempts = 3;
    cfg.retry_base_ms = 20;
    let hooks = Webhooks::new(std::slice::from_ref(&cfg));
    hooks.emit(event(1));
    hooks.emit(event(2));
    eventually("given up", || Some(()).filter(|_| stats(&hooks, &cfg).batches_failed == 1)).await;
    let s = stats(&hooks, &cfg);
    assert_eq!((s.sent, s.failed, s.retries, s.batches_sent), (0, 2, 2, 0));
    let posts = receiver.posts();
    assert_eq!(posts.len(), 3, "max_attempts in all");
    assert!(posts.iter().all(|p| ids(&p.events) == [1, 2]), "the same batch each time");
    // A refusal (4xx) is not retried; and the hook goes on with the next batch.
    receiver.answer(Answer::Status(400));
    hooks.emit(event(3));
    eventually("given up", || Some(()).filter(|_| stats(&hooks, &cfg).batches_failed == 2)).await;
    assert_eq!(receiver.posts().len(), 4, "one attempt");
    assert_eq!(stats(&hooks, &cfg).retries, 2);
    receiver.answer(Answer::Status(200));
    hooks.emit(event(4));
    eventually("sent", || Some(()).filter(|_| stats(&hooks, &cfg).sent == 1)).await;
    assert_eq!(ids(&receiver.posts().last().unwrap().events), [4]);
    hooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let receiver = Receiver::start(SECRET, Answer::After(Duration::from_secs(3))).await;
    let mut cfg = hook(&receiver.url());
    cfg.timeout_ms = 300;
    cfg.max_attempts = 20;
    let hooks = Webhooks::new(std::slice::from_ref(&cfg));
    hooks.emit(event(1));
    eventually("a retry after a timeout", || Some(()).filter(|_| stats(&hooks, &cfg).retries >= 1)).await;
    receiver.answer(Answer::Status(200));
    eventually("sent", || Some(()).filter(|_| stats(&hooks, &cfg).sent == 1)).await;
    hooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    // The receiver holds the first batch for longer than the test: the queue can only fill.
    let receiver = Receiver::start(SECRET, Answer::After(Duration::from_secs(60))).await;
    let mut cfg = hook(&receiver.url());
    cfg.queue_size = 10;
    cfg.batch_size = 5;
    cfg.timeout_ms = 60_000;
    let hooks = Webhooks::new(std::slice::from_ref(&cfg));
    hooks.emit(event(0));
    eventually("the first batch in flight", || Some(()).filter(|_| !receiver.posts().is_empty())).await;
    let started = Instant::now();
    for id in 1..=1000 {
        hooks.emit(event(id));
    }
    // Waiting for room in the queue would take the receiver's 60 s; a loaded machine, well
    // under 5 s.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "1,000 events took {took:?}: emitting must not wait");
    let s = stats(&hooks, &cfg);
    assert_eq!(s.queued, 11, "the first, and a full queue of 10");
    assert_eq!(s.dropped, 990);
    hooks.shutdown(Duration::from_millis(100)).await;
}

/// A test CA and a server certificate for 127.0.0.1 signed by it.
fn tls_receiver_setup() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::pem::PemObject;
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(gochat_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca.pem())
}

#[tokio::test]
async fn https_receivers_get_events_when_their_certificate_chains_to_ca_file() {
    let (acceptor, ca_pem) = tls_receiver_setup();
    let (_, other_ca) = tls_receiver_setup();
    let dir = std::env::temp_dir().join(format!("gochat-hooks-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, other_file) = (dir.join("ca.pem"), dir.join("other.pem"));
    std::fs::write(&ca_file, ca_pem).unwrap();
    std::fs::write(&other_file, other_ca).unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let receiver = Receiver::start_at(any, SECRET, Answer::Status(200), Some(acceptor)).await;
    let url = format!("https://{}/hooks", receiver.addr);
    let mut trusted = hook(&url);
    trusted.ca_file = Some(ca_file);
    trusted.validate().unwrap();
    let mut untrusted = hook(&format!("{url}?untrusted"));
    untrusted.ca_file = Some(other_file);
    untrusted.max_attempts = 1;
    // Two hooks to the same receiver: only the one that trusts its CA gets through.
    let good = Webhooks::new(std::slice::from_ref(&trusted));
    let bad = Webhooks::new(std::slice::from_ref(&untrusted));
    good.emit(event(1));
    bad.emit(event(2));
    let events = eventually("over TLS", || Some(receiver.events()).filter(|e| !e.is_empty())).await;
    assert_eq!(ids(&events), [1]);
    assert!(receiver.posts()[0].signed);
    eventually("the untrusted one given up", || {
        Some(()).filter(|_| bad.stats(&untrusted.label()).unwrap().batches_failed == 1)
    })
    .await;
    assert_eq!(ids(&receiver.events()), [1], "nothing sent to a server it does not trust");
    let _ = std::fs::remove_dir_all(&dir);
    good.shutdown(Duration::from_secs(1)).await;
    bad.shutdown(Duration::from_secs(1)).await;
}

/// A control's logic with `hooks`, on `state`.
async fn logic(state: State, hooks: Vec<WebhookConfig>) -> (Arc<Logic>, Arc<MemoryQueue>) {
    let cfg = ControlConfig { webhooks: hooks, ..ControlConfig::default().without_rate_limits() };
    cfg.validate().unwrap();
    let queue = Arc::new(MemoryQueue::new(1000));
    let store = UserStore::open("sqlite::memory:").await.unwrap();
    (Arc::new(Logic::new(store, state, queue.clone(), &cfg)), queue)
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn logic_raises_user_room_and_message_events() {
    let all = Receiver::start(SECRET, Answer::Status(200)).await;
    let users_only = Receiver::start(SECRET, Answer::Status(200)).await;
    let mut user_hook = hook(&users_only.url());
    user_hook.events = vec![EventKind::User];
    let state = State::memory(Duration::from_secs(60));
    let (logic, _queue) = logic(state, vec![hook(&all.url()), user_hook]).await;
    let alice_token = logic.register("alice", "pw-1").await.unwrap();
    let bob_token = logic.register("bob", "pw-1").await.unwrap();
    let alice = logic.check_auth(&alice_token).await.unwrap();
    let bob = logic.check_auth(&bob_token).await.unwrap();

    logic.conn_open(&alice_token, 5, "g1", 0, 1, None, false).await.unwrap();
    logic.conn_open(&alice_token, 5, "g1", 1, 2, None, false).await.unwrap();
    logic.conn_open(&bob_token, 5, "g1", 0, 3, None, false).await.unwrap();
    logic.push_room(&alice, 5, "hello room").await.unwrap();
    logic.send_room(bob.user_id, 5, "from a socket").await.unwrap();
    logic.conn_close("g1", 1).await.unwrap();
    logic.conn_close("g1", 2).await.unwrap();
    logic.conn_close("g1", 3).await.unwrap();

    let expected = [
        "user.online",
        "room.occupied",
        "user.online",
        "message.room",
        "message.room",
        "user.offline",
        "room.vacated",
        "user.offline",
    ];
    let events = eventually("every event", || Some(all.events()).filter(|e| e.len() >= expected.len())).await;
    assert_eq!(types(&events), expected, "{events:#?}");
    let (a, b) = (alice.user_id, bob.user_id);
    let strip = |e: &Value| {
        let mut e = e.clone();
        let o = e.as_object_mut().unwrap();
        assert!(
            o.remove("id").unwrap().as_str().unwrap().parse::<u64>().is_ok(),
            "ids are numbers as strings"
        );
        assert!(o.remove("time").unwrap().as_u64().unwrap() > 1_700_000_000_000, "Unix ms");
        e
    };
    use serde_json::json;
    assert_eq!(strip(&events[0]), json!({"type": "user.online", "userId": a, "userName": "alice"}));
    assert_eq!(
        strip(&events[1]),
        json!({"type": "room.occupied", "roomId": 5, "userId": a, "userName": "alice"})
    );
    assert_eq!(
        strip(&events[3]),
        json!({"type": "message.room", "roomId": 5, "fromUserId": a, "fromUserName": "alice", "msg": "hello room", "seq": 1})
    );
    let from_bob = json!({"type": "message.room", "roomId": 5, "fromUserId": b, "fromUserName": "bob", "msg": "from a socket", "seq": 2});
    assert_eq!(strip(&events[4]), from_bob);
    assert_eq!(strip(&events[5]), json!({"type": "user.offline", "userId": a}));
    assert_eq!(strip(&events[6]), json!({"type": "room.vacated", "roomId": 5, "userId": b}));
    assert_eq!(strip(&events[7]), json!({"type": "user.offline", "userId": b}));
    let ids = ids(&events);
    assert!(ids.windows(2).all(|w| w[0] != w[1]), "ids are unique: {ids:?}");
    assert!(all.posts().iter().all(|p| p.signed));

    let users = eventually("user events", || Some(users_only.events()).filter(|e| e.len() >= 4)).await;
    assert_eq!(
        types(&users),
        ["user.online", "user.online", "user.offline", "user.offline"],
        "only its kinds"
    );
    // A message refused is no event.
    assert!(logic.push_room(&alice, 5, "").await.is_err());
    logic.webhooks().shutdown(Duration::from_secs(2)).await;
    assert_eq!(all.events().len(), expected.len());
}

/// (Private messages, `message.user`, are raised through the REST API: tests/e2e/webhooks.rs.)
///
/// Two controls on one Redis, each with the same hook: a user with a socket on each, and a
/// room with a member through each, are online and occupied once, offline and vacated once.
#[tokio::test]
async fn controls_sharing_redis_raise_each_transition_once() {
    if !services::present_for("", &[Service::Redis]) {
        return;
    }
    let prefix = format!("gochat-test-hooks-{}-{}", std::process::id(), events_nonce());
    let receiver = Receiver::start(SECRET, Answer::Status(200)).await;
    let state = || async {
        State::Redis(
            RedisState::open(&services::redis_url(), &prefix, Duration::from_secs(60)).await.unwrap(),
        )
    };
    let (one, _) = logic(state().await, vec![hook(&receiver.url())]).await;
    let (two, _) = logic(state().await, vec![hook(&receiver.url())]).await;
    let token = one.register("carol", "pw-1").await.unwrap();
    let dave = one.register("dave", "pw-1").await.unwrap();
    one.conn_open(&token, 8, "g1", 0, 1, None, false).await.unwrap();
    two.conn_open(&token, 8, "g2", 0, 1, None, false).await.unwrap();
    two.conn_open(&dave, 8, "g2", 0, 2, None, false).await.unwrap();
    one.conn_close("g1", 1).await.unwrap();
    two.conn_close("g2", 2).await.unwrap();
    two.conn_close("g2", 1).await.unwrap();
    let expected =
        ["user.online", "room.occupied", "user.online", "user.offline", "user.offline", "room.vacated"];
    let events =
        eventually("every event", || Some(receiver.events()).filter(|e| e.len() >= expected.len())).await;
    let mut got = types(&events);
    got.sort();
    let mut want = expected.map(String::from).to_vec();
    want.sort();
    assert_eq!(got, want, "{events:#?}");
    for logic in [one, two] {
        logic.webhooks().shutdown(Duration::from_secs(2)).await;
    }
    assert_eq!(receiver.events().len(), expected.len(), "nothing twice");
    let client = redis::Client::open(services::redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    }
}

fn events_nonce() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}
