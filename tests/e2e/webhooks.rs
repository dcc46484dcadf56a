//! Webhooks through a real `gochat up`: sockets connecting and closing raise user and room
//! events, REST and socket messages raise theirs, signed, and counted on control's metrics; a
//! receiver that hangs does not slow chat.

use std::time::{Duration, Instant};

use gochat_control::webhooks::{EventKind, WebhookConfig};
use gochat_proto::wire;
use serde_json::{json, Value};

use crate::common::{self, eventually_some, Server};
#[path = "../../control/tests/webhooks/receiver.rs"]
mod receiver;
use receiver::{Answer, Receiver};

const SECRET: &str = "e2e-webhook-secret-0123";

fn hook(receiver: &Receiver) -> WebhookConfig {
    let mut hook = WebhookConfig::new(receiver.url(), SECRET);
    hook.events = vec![EventKind::User, EventKind::Room, EventKind::Message];
    hook.batch_wait_ms = 50;
    hook
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn sockets_and_messages_raise_signed_events() {
    let receiver = Receiver::start(SECRET, Answer::Status(200)).await;
    let mut cfg = common::test_config();
    cfg.control.webhooks = vec![hook(&receiver)];
    cfg.control.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::start_with(cfg).await;
    let (alice, bob) = (server.user("hook-a").await, server.user("hook-b").await);
    let room = 41;
    let mut a = server.ws(&alice, room).await;
    let mut b = server.ws(&bob, room).await;
    let a2 = server.ws(&alice, room).await;
    assert_eq!(server.push_room(&alice, room, "over REST").await["code"], 0);
    a.send_json(json!({"op": wire::OP_ROOM_SEND, "roomId": room, "msg": "on a socket"})).await;
    while b.recv_op(wire::OP_ROOM_SEND).await["msg"] != "on a socket" {}
    let body = json!({"authToken": alice.token, "toUserId": bob.id, "roomId": room, "msg": "psst"});
    assert_eq!(server.api("/push/push", body).await["code"], 0);
    b.recv_op(wire::OP_SINGLE_SEND).await;
    a.close().await;
    // Events of one socket's close come in order; wait for each before the next close.
    a2.close().await;
    eventually_some("alice offline", || async {
        Some(()).filter(|_| receiver.events().iter().any(|e| e["type"] == "user.offline"))
    })
    .await;
    b.close().await;
    let expected = [
        "user.online",
        "room.occupied",
        "user.online",
        "message.room",
        "message.room",
        "message.user",
        "user.offline",
        "room.vacated",
        "user.offline",
    ];
    let events = eventually_some("every event", || async {
        Some(receiver.events()).filter(|e| e.len() >= expected.len())
    })
    .await;
    assert_eq!(types(&events), expected, "{events:#?}");
    let who: Vec<&Value> = events.iter().map(|e| &e["userId"]).collect();
    let (alice_id, bob_id) = (json!(alice.id), json!(bob.id));
    assert_eq!(
        [who[0], who[1], who[2], who[6], who[7], who[8]],
        [&alice_id, &alice_id, &bob_id, &alice_id, &bob_id, &bob_id]
    );
    assert_eq!(events[0]["userName"], alice.name.as_str());
    assert_eq!((&events[3]["msg"], &events[3]["fromUserId"]), (&json!("over REST"), &alice_id));
    assert_eq!((&events[4]["msg"], &events[4]["roomId"]), (&json!("on a socket"), &json!(room)));
    assert_eq!((&events[5]["toUserId"], &events[5]["toUserName"]), (&bob_id, &json!(bob.name)));
    assert!(receiver.posts().iter().all(|p| p.signed), "every batch signed");

    let metrics = reqwest::get(format!("http://{}/metrics", server.up.control.admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let url = hook(&receiver).label();
    let sent = format!(
        "gochat_control_webhook_events_total{{control=\"control-1\",url=\"{url}\",result=\"sent\"}} 9"
    );
    assert!(metrics.contains(&sent), "{sent} in:\n{metrics}");
    for family in ["batches_total", "retries_total", "queue_events", "batch_seconds_bucket"] {
        assert!(metrics.contains(&format!("gochat_control_webhook_{family}{{")), "{family}");
    }
    server.shutdown().await;
}

/// While the receiver holds a batch unanswered (for longer than the test), room messages still
/// reach sockets at once, over the socket and over REST.
#[tokio::test]
async fn a_receiver_that_hangs_does_not_slow_chat() {
    let receiver = Receiver::start(SECRET, Answer::After(Duration::from_secs(60))).await;
    let mut cfg = common::test_config();
    let mut stuck = hook(&receiver);
    stuck.timeout_ms = 60_000;
    cfg.control.webhooks = vec![stuck];
    let server = Server::start_with(cfg).await;
    let (alice, bob) = (server.user("slow-a").await, server.user("slow-b").await);
    let room = 42;
    let mut a = server.ws(&alice, room).await;
    let mut b = server.ws(&bob, room).await;
    eventually_some("a batch held by the receiver", || async {
        Some(()).filter(|_| !receiver.posts().is_empty())
    })
    .await;
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let msg = format!("socket {i}");
        let sent = Instant::now();
        a.send_json(json!({"op": wire::OP_ROOM_SEND, "roomId": room, "msg": msg})).await;
        while b.recv_op(wire::OP_ROOM_SEND).await["msg"] != msg.as_str() {}
        slowest = slowest.max(sent.elapsed());
        let msg = format!("rest {i}");
        let sent = Instant::now();
        assert_eq!(server.push_room(&alice, room, &msg).await["code"], 0);
        while b.recv_op(wire::OP_ROOM_SEND).await["msg"] != msg.as_str() {}
        slowest = slowest.max(sent.elapsed());
    }
    // Coupled to the hook, a message would wait for its 60 s; on a loaded machine, well under 5 s.
    assert!(slowest < Duration::from_secs(5), "a room message took {slowest:?} while the hook hung");
    assert_eq!(receiver.posts().len(), 1, "the hook was stuck all along");
    let stats = server.up.control.logic.webhooks().stats(&hook(&receiver).label()).unwrap();
    assert_eq!(stats.sent, 0);
    assert!(stats.queued >= 22, "the messages' events waited in the queue: {stats:?}");
    server.shutdown().await;
}

/// `[[control.webhooks]]` in a config file and in the environment: parsed, validated, printed
/// without the secret, taken on reload; bad ones are errors that name the receiver.
#[test]
fn webhooks_in_the_config_parse_validate_reload_and_print_redacted() {
    use gochat::Config;
    let text = r#"
[[control.webhooks]]
url = "https://hooks.example.com/in?token=t0k3n"
secret = "s3cr3t-s3cr3t-s3cr3t"
events = ["user", "message"]
batch_size = 10
"#;
    let cfg = Config::parse(text).unwrap();
    cfg.validate().unwrap();
    let hooks = &cfg.control.webhooks;
    assert_eq!((hooks.len(), hooks[0].batch_size, hooks[0].queue_size), (1, 10, 10_000));
    let printed = cfg.redacted_toml().unwrap();
    assert!(!printed.contains("s3cr3t"), "the secret is not printed:\n{printed}");
    assert!(printed.contains("[[control.webhooks]]"), "{printed}");
    let again = Config::parse(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(again.control.webhooks, cfg.control.webhooks, "written and read back");

    // The environment sets the list as an inline TOML value.
    let vars = [(
        "GOCHAT_CONTROL__WEBHOOKS".into(),
        r#"[{ url = "http://10.0.0.9/h", secret = "0123456789abcdef", events = ["room"] }]"#.into(),
    )];
    let from_env = Config::load_with_env(None, vars).unwrap();
    assert_eq!(from_env.control.webhooks[0].events, [EventKind::Room]);

    // A reload takes a changed list.
    let mut running = Config::default();
    let reload = running.reload(&Config::default(), &cfg).unwrap();
    assert!(reload.applied.contains(&"control.webhooks".to_string()), "{reload:?}");
    assert_eq!(running.control.webhooks, cfg.control.webhooks);

    for (bad, why) in [
        ("url = \"ftp://h/x\"\nsecret = \"0123456789abcdef\"", "scheme"),
        ("url = \"http://h/x\"\nsecret = \"short-secret\"", "16 to 1024 bytes"),
        ("url = \"http://h/x\"\nsecret = \"0123456789abcdef\"\nevents = []", "at least one"),
        ("url = \"http://h/x\"\nsecret = \"0123456789abcdef\"\nqueue_size = 0", "queue_size"),
    ] {
        let cfg = Config::parse(&format!("[[control.webhooks]]\n{bad}\n")).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(why) && err.contains("://h"), "{bad}: {err}");
        assert!(!err.contains("0123456789abcdef") && !err.contains("short-secret"), "{err}");
    }
    let err = Config::parse(
        "[[control.webhooks]]\nurl = \"http://h/\"\nsecret = \"0123456789abcdef\"\nretries = 3\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("retries"), "{err}");
    let err = Config::parse("[[control.webhooks]]\nurl = \"http://h/\"\n").unwrap_err().to_string();
    assert!(err.contains("secret"), "{err}");
}

/// A running control takes a changed list of hooks (what SIGHUP does with the file's): events
/// go to the hooks it now has, and no longer to those it had.
#[tokio::test]
async fn a_reload_starts_and_stops_hooks() {
    let receiver = Receiver::start(SECRET, Answer::Status(200)).await;
    let mut cfg = common::test_config();
    let server = Server::start_with(cfg.clone()).await;
    let user = server.user("reload").await;
    // A socket's close reaches control after the client sees it: wait for control to know.
    let offline = || async {
        let reach = server.up.control.logic.state().reach(user.id).await.unwrap();
        (!reach.online).then_some(())
    };
    server.ws(&user, 43).await.close().await;
    eventually_some("offline before the reload", offline).await;
    cfg.control.webhooks = vec![hook(&receiver)];
    server.up.control.reconfigure(&cfg.control);
    server.ws(&user, 43).await.close().await;
    eventually_some("offline", offline).await;
    let expected = ["user.online", "room.occupied", "room.vacated", "user.offline"];
    let events = eventually_some("events after the reload", || async {
        Some(receiver.events()).filter(|e| e.len() >= expected.len())
    })
    .await;
    assert_eq!(types(&events), expected, "none from before the reload");
    cfg.control.webhooks.clear();
    server.up.control.reconfigure(&cfg.control);
    server.ws(&user, 43).await.close().await;
    eventually_some("offline after the second reload", offline).await;
    // Events are handed to hooks as control records the change: none went to the old hook.
    let stats = server.up.control.logic.webhooks().stats(&hook(&receiver).label()).unwrap();
    assert_eq!((stats.queued, stats.sent), (4, 4), "{stats:?}");
    assert_eq!(receiver.events().len(), expected.len(), "{:#?}", receiver.events());
    server.shutdown().await;
}
