//! Hostile and broken clients: one that never reads, one that floods frames, and a connect
//! storm. Each is bounded or closed and counted, and the other users keep being served. Runs
//! under the driver named by `GOCHAT_TEST_DRIVER`.

use crate::common;

use std::time::Duration;

use common::{eventually, Server};
use gochat_gateway::testkit::client_frame;
use gochat_proto::wire;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_the_room_gets_everything() {
    let _heavy = common::heavy().await;
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    // Authenticated, then never reads again: the kernel's buffers fill, then its queue.
    let stuck = common::raw_ws(s.up.gateway.ws_addr, &a.token, 30).await;
    let mut ws = s.ws(&b, 30).await;
    let big = "x".repeat(9000);
    // 7.2 MB: over what loopback's buffers hold (4 MiB send buffer, the reader's window) and
    // the 256 KiB queue bound.
    let pushes = 800;
    // The reader that keeps up must never be a slow consumer itself: at most 16 messages
    // (144 KB) behind, however the machine schedules this test.
    let read = std::sync::atomic::AtomicUsize::new(0);
    let sender = async {
        for i in 0..pushes {
            while i - read.load(std::sync::atomic::Ordering::Relaxed) > 16 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let r = s.push_room(&b, 30, &format!("{i} {big}")).await;
            assert_eq!(r["code"], 0, "{r}");
        }
    };
    let reader = async {
        for i in 0..pushes {
            let m = ws.recv_op(wire::OP_ROOM_SEND).await;
            let msg = m["msg"].as_str().unwrap();
            assert!(msg.starts_with(&format!("{i} ")), "message {i} missing or out of order");
            read.store(i + 1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    tokio::join!(sender, reader);
    let stats = s.gateway_stats().await;
    assert_eq!(stats.slow_consumer_closes, 1, "the stuck client was not dropped as a slow consumer");
    eventually("the stuck connection is gone", || async { s.up.gateway_conns() == 1 }).await;
    drop(stuck);
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_sending_thousands_of_frames_a_second_is_closed_and_others_are_unaffected() {
    let _heavy = common::heavy().await;
    let s = Server::start().await;
    let (flooder, a, b) = (s.user("f").await, s.user("a").await, s.user("b").await);
    let mut same_room = s.ws(&a, 31).await;
    let mut other_room = s.ws(&b, 32).await;
    let mut raw = common::raw_ws(s.up.gateway.ws_addr, &flooder.token, 31).await;
    // 10,000 room messages written as fast as the socket takes them.
    let mut flood = Vec::new();
    for i in 0..10_000 {
        flood.extend(client_frame(
            true,
            1,
            json!({"op": 3, "msg": format!("flood {i}")}).to_string().as_bytes(),
        ));
    }
    let _ = raw.write_all(&flood).await; // the server may close it mid-write
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(common::WAIT, raw.read(&mut buf)).await.expect("closed in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let close = [0x88, 19, 0x03, 0xf0]; // close 1008, "too many messages"
    assert!(seen.windows(4).any(|w| w == close), "the flooder was not closed with 1008");
    let stats = s.gateway_stats().await;
    assert_eq!(stats.flood_closes, 1);
    assert!(stats.frames_throttled > 0);

    // What got through is within the burst; other users are served as before. A gateway
    // sends its sockets' room messages to logic in order, so all that got through come before
    // a room message sent now by another socket of the gateway.
    let got = same_room.frames_before_marker(31).await;
    let from_flood = got.iter().filter(|f| f["op"] == wire::OP_ROOM_SEND).count();
    assert!((1..=60).contains(&from_flood), "{from_flood} flood messages reached the room");
    assert!(
        got.iter().all(|f| f["op"] != wire::OP_ROOM_SEND || f["msg"].as_str().unwrap().starts_with("flood ")),
        "{got:?}"
    );
    s.push_room(&a, 31, "after").await;
    assert_eq!(same_room.recv_op(wire::OP_ROOM_SEND).await["msg"], "after");
    s.push_room(&b, 32, "unaffected").await;
    assert_eq!(other_room.recv_op(wire::OP_ROOM_SEND).await["msg"], "unaffected");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_a_little_over_the_rate_is_throttled_not_closed() {
    let _heavy = common::heavy().await;
    let mut cfg = common::test_config();
    cfg.gateway.client_frames_per_sec = 5;
    cfg.gateway.client_frame_burst = 10;
    let s = Server::start_with(cfg).await;
    let a = s.user("a").await;
    let mut ws = s.ws(&a, 33).await;
    // 15 frames at once: the burst passes (the upgrade and the auth frame took 2 of it), the
    // other 7 are dropped with one notice; 7 over is within the burst, so it stays open.
    for i in 0..15 {
        ws.send_json(json!({"op": 3, "msg": format!("m{i}")})).await;
    }
    // It slows down (a second earns 5 frames back): it is served again, after what got
    // through of the burst (the gateway sends a socket's room messages to logic in order).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ws.send_json(json!({"op": 3, "msg": "calm"})).await;
    let mut got = Vec::new();
    loop {
        let f = ws.next_json().await.expect("not closed");
        if f["op"] == wire::OP_ROOM_SEND && f["msg"] == "calm" {
            break;
        }
        got.push(f);
    }
    let ops = |op| got.iter().filter(|f| f["op"] == op).count();
    assert_eq!((ops(wire::OP_ROOM_SEND), ops(wire::OP_ERROR)), (8, 1), "{got:?}");
    let notice = got.iter().find(|f| f["op"] == wire::OP_ERROR).unwrap();
    assert_eq!(notice["message"], "too many messages, slow down; some were dropped");
    let texts: Vec<&str> =
        got.iter().filter(|f| f["op"] == wire::OP_ROOM_SEND).map(|f| f["msg"].as_str().unwrap()).collect();
    assert_eq!(texts, (0..8).map(|i| format!("m{i}")).collect::<Vec<_>>(), "the first 8, in order");
    assert_eq!(s.gateway_stats().await.frames_throttled, 7);
    s.shutdown().await;
}

#[tokio::test]
async fn a_connect_storm_is_absorbed_and_the_room_keeps_flowing() {
    let _heavy = common::heavy().await;
    // Every client of a restarted gateway at once: 3,000 connects with jittered retries.
    const CLIENTS: usize = 3000;
    let s = Server::start().await;
    let a = s.user("a").await;
    let mut bystander = s.ws(&a, 34).await;
    let storm: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, token) = (s.up.gateway.ws_addr, a.token.clone());
            tokio::spawn(async move {
                for attempt in 0..4u32 {
                    let url = format!("ws://{addr}/ws");
                    if let Ok(Ok((mut ws, _))) =
                        tokio::time::timeout(common::WAIT, tokio_tungstenite::connect_async(url)).await
                    {
                        use futures_util::{SinkExt, StreamExt};
                        let auth = json!({"authToken": token, "roomId": 35}).to_string();
                        if ws.send(auth.into()).await.is_ok() {
                            if let Ok(Some(Ok(m))) = tokio::time::timeout(common::WAIT, ws.next()).await {
                                if m.to_text().is_ok_and(|t| t.contains("\"op\":7")) {
                                    return Some(ws);
                                }
                            }
                        }
                    }
                    let backoff = 50u64 << attempt;
                    let jitter = (i as u64).wrapping_mul(7919) % backoff; // spread, as random jitter would
                    tokio::time::sleep(Duration::from_millis(backoff + jitter)).await;
                }
                None
            })
        })
        .collect();
    // The bystander's room keeps flowing while the storm goes on.
    for i in 0..20 {
        assert_eq!(s.push_room(&a, 34, &format!("during {i}")).await["code"], 0);
        assert_eq!(bystander.recv_op(wire::OP_ROOM_SEND).await["msg"], format!("during {i}"));
    }
    let mut connected = Vec::new();
    for task in storm {
        connected.extend(task.await.unwrap());
    }
    assert_eq!(connected.len(), CLIENTS, "not every client of the storm got in");
    eventually("every storm connection is counted", || async { s.up.gateway_conns() == CLIENTS as u64 + 1 })
        .await;
    // And the stormed room works.
    s.push_room(&a, 35, "after the storm").await;
    let mut first = connected.swap_remove(0);
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(common::WAIT, first.next()).await.unwrap().unwrap().unwrap();
        if m.to_text().is_ok_and(|t| t.contains("after the storm")) {
            break;
        }
    }
    drop(connected);
    s.shutdown().await;
}
