//! Attacks at the edge, scaled down: what one client (or one account) sends must never fail,
//! slow or starve another user. Each test reproduces an attack that worked before its fix.

mod common;

use common::{Server, User, WAIT};
use gochat_gateway::testkit::{client_frame, UPGRADE};
use gochat_proto::wire;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket opened by hand, its upgrade answered, nothing sent yet.
async fn upgraded(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.up.gateway.ws_addr).await.unwrap();
    s.write_all(UPGRADE).await.unwrap();
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed during the upgrade");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// How a hand-made socket's auth went: its user id (op 7), or the close code it got.
#[derive(Debug, PartialEq)]
enum Outcome {
    In(u64),
    Closed(u16),
}

/// Reads server frames until op 7 or a close; frames are small here, unmasked, one per read
/// or several.
async fn outcome(s: &mut TcpStream) -> Outcome {
    let mut seen = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("an answer in time").unwrap_or(0);
        if n == 0 {
            return Outcome::Closed(1006);
        }
        seen.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while seen.len() >= at + 2 {
            let (op, len) = (seen[at] & 0x0f, usize::from(seen[at + 1] & 0x7f));
            let (head, len) = match len {
                126 if seen.len() >= at + 4 => {
                    (4, usize::from(u16::from_be_bytes([seen[at + 2], seen[at + 3]])))
                }
                126 => break,
                127 => panic!("no frame here is that large"),
                n => (2, n),
            };
            if seen.len() < at + head + len {
                break;
            }
            let payload = &seen[at + head..at + head + len];
            match op {
                0x8 => return Outcome::Closed(u16::from_be_bytes([payload[0], payload[1]])),
                0x1 => {
                    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
                    if v["op"] == wire::OP_AUTH_OK {
                        return Outcome::In(v["userId"].as_u64().unwrap());
                    }
                }
                _ => {}
            }
            at += head + len;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_tokens_in_a_burst_never_refuse_real_users() {
    // Before: 40 KB fake tokens went to logic up to 128 to a call; under load a call went past
    // gRPC's 4 MiB, and the real users batched with it were closed with 1013. Now the gateway
    // refuses such a token before it is batched (`logic_link`'s unit test holds each call's
    // bytes bounded whatever the tokens).
    const REAL: usize = 10;
    const EVERY: usize = 30;
    let server = Server::start().await;
    let mut users = Vec::new();
    for _ in 0..REAL {
        users.push(server.user("burst").await);
    }
    let fake = "f".repeat(40_000);
    let mut sockets = Vec::new();
    for i in 0..REAL * EVERY {
        let user: Option<&User> = if i % EVERY == EVERY - 1 { Some(&users[i / EVERY]) } else { None };
        sockets.push((user.map(|u| u.id), upgraded(&server).await));
    }
    // Every auth frame but its last byte, then the last bytes: the gateway takes them all
    // within a moment, the real ones among the fakes.
    let mut last_bytes = Vec::new();
    for (user, s) in &mut sockets {
        let token = match user {
            Some(id) => users.iter().find(|u| u.id == *id).unwrap().token.clone(),
            None => fake.clone(),
        };
        let frame = client_frame(true, 1, json!({"authToken": token, "roomId": 1}).to_string().as_bytes());
        s.write_all(&frame[..frame.len() - 1]).await.unwrap();
        last_bytes.push(frame[frame.len() - 1]);
    }
    for ((_, s), last) in sockets.iter_mut().zip(last_bytes) {
        s.write_all(&[last]).await.unwrap();
    }
    let mut refused_fakes = 0;
    for (user, s) in &mut sockets {
        match (user, outcome(s).await) {
            (Some(id), got) => assert_eq!(got, Outcome::In(*id), "a real user was not let in"),
            (None, Outcome::Closed(1008)) => refused_fakes += 1,
            (None, got) => panic!("a fake token got {got:?}"),
        }
    }
    assert_eq!(refused_fakes, REAL * (EVERY - 1));
    let logic = &server.up.control.logic.counts;
    assert_eq!(logic.socket_auths_refused.get(), 0, "an oversized token reached logic");
    assert_eq!(logic.socket_auths_accepted.get(), REAL as u64);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_each_get_a_chunk_of_kept_messages_fit_one_call() {
    // Before: every socket of a user with kept messages got a 64 KiB chunk of them in logic's
    // answer, and ~100 such sockets in one call made an answer gRPC refused (4 MiB): every
    // socket in it, other users' too, was closed with 1013.
    let server = Server::start().await;
    let sender = server.user("sender").await;
    let mut holders = Vec::new();
    for _ in 0..8 {
        let holder = server.user("holder").await;
        for _ in 0..7 {
            let msg = "k".repeat(10_000);
            let body = json!({"authToken": sender.token, "toUserId": holder.id, "roomId": 1, "msg": msg});
            let r = server.api("/push/push", body).await;
            assert_eq!(r["code"], 0, "{r}");
        }
        holders.push(holder);
    }
    let bystander = server.user("bystander").await;
    let mut sockets = Vec::new();
    for (i, holder) in holders.iter().cycle().take(96).enumerate() {
        sockets.push((holder, upgraded(&server).await));
        if i % 12 == 11 {
            sockets.push((&bystander, upgraded(&server).await));
        }
    }
    for (user, s) in &mut sockets {
        let auth = json!({"authToken": user.token, "roomId": 1, "acks": true}).to_string();
        s.write_all(&client_frame(true, 1, auth.as_bytes())).await.unwrap();
    }
    for (user, s) in &mut sockets {
        assert_eq!(outcome(s).await, Outcome::In(user.id));
    }
    server.shutdown().await;
}
