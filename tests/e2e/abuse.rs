//! Attacks at the edge, scaled down: what one client (or one account) sends must never fail,
//! slow or starve another user. Each test reproduces an attack that worked before its fix.

use crate::common;

use common::{Server, User, WAIT};
use futures_util::StreamExt;
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
    let _heavy = common::heavy().await;
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

/// A connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Everything the server sends until it closes the connection; fails when it does not close
/// it in time.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "still open after {WAIT:?}; got {:?}", String::from_utf8_lossy(&got));
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_page_connections_that_stall_are_closed() {
    // Before: silent, half-header, half-body and idle connections stayed open for good.
    let mut cfg = common::test_config();
    cfg.control.http_header_timeout_ms = 300;
    cfg.control.http_body_timeout_ms = 300;
    let server = Server::start_with(cfg).await;
    let control = &server.up.control;
    for addr in [control.api_addr, control.site_addr.unwrap()] {
        let silent = connect_from("127.0.0.1", addr).await;
        let mut half_head = connect_from("127.0.0.1", addr).await;
        half_head.write_all(b"POST /user/login HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut half_body = connect_from("127.0.0.1", addr).await;
        half_body
            .write_all(b"POST /user/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"userName\"")
            .await
            .unwrap();
        let mut idle = connect_from("127.0.0.1", addr).await;
        idle.write_all(b"POST /user/checkAuth HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        for (what, mut s) in [("silent", silent), ("half a head", half_head), ("idle", idle)] {
            let got = until_closed(&mut s).await;
            assert!(what != "idle" || got.starts_with("HTTP/1.1 "), "{what}: {got}");
        }
        let got = until_closed(&mut half_body).await;
        if addr == control.api_addr {
            assert!(got.contains("request body"), "half a body is told why: {got}");
        }
    }
    let counts = &control.connections;
    assert!(counts.header_timeouts.get() >= 6, "{}", counts.header_timeouts.get());
    assert!(counts.body_timeouts.get() >= 1, "{}", counts.body_timeouts.get());
    common::eventually("every place given back", || async { control.connections.open() == 0 }).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_and_never_reads_is_closed() {
    // Before: hyper's header timer runs only while it reads a head: a client that sent
    // requests and never read the answers held its connection for good once they filled the
    // socket's buffers.
    let mut cfg = common::test_config();
    cfg.control.http_header_timeout_ms = 300;
    let server = Server::start_with(cfg).await;
    let mut greedy = connect_from("127.0.0.1", server.up.control.site_addr.unwrap()).await;
    // 70 KB of requests, which the socket buffers take whole (no head is left half sent), for
    // ~35 MB of answers, which they cannot.
    let requests = "GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    greedy.write_all(requests.as_bytes()).await.unwrap();
    // Read the start of the first answer, so the connection is known to be served (until then
    // no connection is open and the wait below would pass at once), then never read again.
    let mut start = [0u8; 12];
    greedy.read_exact(&mut start).await.unwrap();
    assert_eq!(&start, b"HTTP/1.1 200");
    let connections = &server.up.control.connections;
    common::eventually("the stalled connection closed", || async { connections.open() == 0 }).await;
    // Closed by the write timer; on a loaded machine the server may have read part of the next
    // head when the answers stalled, and the header timer closes it first. Either timer is the
    // fix: before it, neither ran and the connection stayed open.
    let (writes, heads) = (connections.write_timeouts.get(), connections.header_timeouts.get());
    assert!(writes + heads >= 1, "closed by neither timer: {writes} write, {heads} header timeouts");
    drop(greedy);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http2_on_a_silent_connection_is_still_closed() {
    // Before: with HTTP/2 on, a connection waited for the preface with no timer.
    let mut cfg = common::test_config();
    (cfg.control.http2, cfg.control.http_header_timeout_ms) = (true, 300);
    let server = Server::start_with(cfg).await;
    let mut silent = connect_from("127.0.0.1", server.up.control.api_addr).await;
    until_closed(&mut silent).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_http_connections_are_capped_and_leave_sockets_their_descriptors() {
    // Before: every connection held open took a descriptor of the process the gateway runs in;
    // 19,982 of them left none for new sockets or requests.
    let mut cfg = common::test_config();
    cfg.control.http_max_connections = 40;
    cfg.control.http_max_connections_per_address = 20;
    cfg.control.http_header_timeout_ms = 2_000;
    let server = Server::start_with(cfg).await;
    let user = server.user("held").await;
    let api = server.up.control.api_addr;
    // The client's kept-alive connection times out first.
    common::eventually("the REST client's connection closed", || async {
        server.up.control.connections.open() == 0
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from("127.0.0.2", api).await);
    }
    let mut one_more = connect_from("127.0.0.2", api).await;
    assert!(until_closed(&mut one_more).await.starts_with("HTTP/1.1 503"), "a 21st from one address");
    for _ in 0..20 {
        held.push(connect_from("127.0.0.3", api).await);
    }
    common::eventually("every held one taken", || async { server.up.control.connections.open() == 40 }).await;
    let mut past_the_cap = connect_from("127.0.0.4", server.up.control.site_addr.unwrap()).await;
    assert!(until_closed(&mut past_the_cap).await.starts_with("HTTP/1.1 503"), "a 41st anywhere");
    // The gateway takes sockets meanwhile.
    let mut ws = server.ws(&user, 1).await;
    // The held ones run out of time, and the API serves again.
    for s in &mut held {
        until_closed(s).await;
    }
    let r = server.api("/user/checkAuth", json!({"authToken": user.token})).await;
    assert_eq!(r["data"]["userId"], user.id);
    ws.send_json(json!({"op": 3, "msg": "still here"})).await;
    assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "still here");
    let counts = &server.up.control.connections;
    assert_eq!((counts.refused_per_address.get(), counts.refused_full.get()), (1, 1));
    server.shutdown().await;
}

/// What the server first answers to HTTP/2's connection preface (prior knowledge).
async fn answer_to_h2_preface(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut s = connect_from("127.0.0.1", addr).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let mut got = vec![0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut got)).await.unwrap().unwrap_or(0);
    got.truncate(n);
    got
}

/// Whether `answer` starts with an HTTP/2 SETTINGS frame (what an HTTP/2 server sends first).
fn is_h2_settings(answer: &[u8]) -> bool {
    answer.len() >= 9 && answer[3] == 0x04
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_is_spoken_only_when_configured() {
    let server = Server::start().await;
    for addr in [server.up.control.api_addr, server.up.control.site_addr.unwrap()] {
        let answer = answer_to_h2_preface(addr).await;
        assert!(!is_h2_settings(&answer), "HTTP/2 spoken by default: {answer:?}");
    }
    server.shutdown().await;
    let mut cfg = common::test_config();
    cfg.control.http2 = true;
    let server = Server::start_with(cfg).await;
    assert!(is_h2_settings(&answer_to_h2_preface(server.up.control.api_addr).await));
    server.shutdown().await;
}

/// A REST client whose connections come from the loopback address `from`.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(from.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

async fn login_from(from: &str, base: &str, name: &str, password: &str) -> serde_json::Value {
    let body = json!({"userName": name, "passWord": password}).to_string();
    let res = client_from(from).post(format!("{base}/user/login")).body(body).send().await.unwrap();
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_is_not_guessed_from_many_addresses() {
    // Before: login attempts were limited per address only; each new address had its own 20.
    let mut cfg = common::test_config();
    (cfg.control.login_per_minute, cfg.control.login_burst) = (10, 20);
    (cfg.control.login_failures_per_account_per_minute, cfg.control.login_failures_per_account_burst) =
        (5, 10);
    let server = Server::start_with(cfg).await;
    let base = format!("http://{}", server.up.control.api_addr);
    let victim = server.user("victim").await;
    let bystander = server.user("bystander").await;
    // The victim's own address, where it logged in before.
    assert_eq!(login_from("127.0.3.1", &base, &victim.name, "secret-1").await["code"], 0);
    // Successes give their token back: the owner logs in as often as the address allows.
    for i in 0..15 {
        let r = login_from(&format!("127.0.1.{i}"), &base, &bystander.name, "secret-1").await;
        assert_eq!(r["code"], 0, "{r}");
    }
    for i in 0..10 {
        let r = login_from(&format!("127.0.2.{i}"), &base, &victim.name, "guess").await;
        assert_eq!(r["message"], "no this user or password error!", "guess {i}: {r}");
    }
    let locked = |r: &serde_json::Value| {
        r["message"].as_str().unwrap().starts_with("too many failed logins for this account, retry in")
    };
    let r = login_from("127.0.2.200", &base, &victim.name, "guess").await;
    assert!(locked(&r), "an 11th address: {r}");
    // Neither case nor a compatibility form makes another account to guess.
    let r = login_from("127.0.2.201", &base, &victim.name.to_uppercase(), "guess").await;
    assert!(locked(&r), "{r}");
    let fullwidth: String = victim
        .name
        .chars()
        .map(|c| char::from_u32(c as u32 + 0xFEE0).filter(|_| c.is_ascii_graphic()).unwrap_or(c))
        .collect();
    let r = login_from("127.0.2.202", &base, &fullwidth, "guess").await;
    assert!(locked(&r), "{fullwidth}: {r}");
    // The owner still logs in from where it did before, not from a new address; other
    // accounts are not touched, and open sessions stay.
    assert_eq!(login_from("127.0.3.1", &base, &victim.name, "secret-1").await["code"], 0);
    assert!(locked(&login_from("127.0.3.2", &base, &victim.name, "secret-1").await));
    assert_eq!(login_from("127.0.2.203", &base, &bystander.name, "secret-1").await["code"], 0);
    let r = server.api("/user/checkAuth", json!({"authToken": victim.token})).await;
    assert_eq!(r["data"]["userId"], victim.id);
    assert_eq!(server.up.control.limits.login_account.refused(), 4);
    server.shutdown().await;
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// `gochat up` as a process of its own (its memory is measured alone), on free ports with
/// `control` added to its `[control]` settings; with its REST API's base URL.
async fn spawn_up(control: &str) -> (common::KillOnDrop, String, std::path::PathBuf) {
    let [api, grpc, ws, gw_grpc] = [(); 4].map(|_| common::free_port());
    let dir = std::env::temp_dir().join(common::unique(&format!("gochat-abuse-{}-", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[gateway]\nws_listen = \"127.0.0.1:{ws}\"\ntcp_listen = \"off\"\ngrpc_listen = \"127.0.0.1:{gw_grpc}\"\n\
         [control]\napi_listen = \"127.0.0.1:{api}\"\nsite_listen = \"off\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\n\
         database = \"sqlite::memory:\"\n{control}\n"
    );
    let path = dir.join("gochat.toml");
    std::fs::write(&path, config).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gochat"))
        .args(["--config", path.to_str().unwrap(), "up"])
        .env_remove("GOCHAT_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(common::KillOnDrop)
        .unwrap();
    let base = format!("http://127.0.0.1:{api}");
    common::eventually("control answers", || async {
        reqwest::Client::new().post(format!("{base}/user/checkAuth")).body("{}").send().await.is_ok()
    })
    .await;
    (child, base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_leave_memory_where_it_was() {
    let _heavy = common::heavy().await;
    // Before: each password hash's 19 MiB stayed with the allocator of the thread that ran it:
    // 20 failed logins took a fresh `up` from 57 MB to 369 MB, a few hundred to ~1 GB.
    let (child, base, dir) =
        spawn_up("login_per_minute = 0\nlogin_failures_per_account_per_minute = 0").await;
    let pid = child.0.id();
    assert_eq!(
        common::post(&base, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await["code"],
        0
    );
    let fresh = rss(pid);
    // 1,000 failed logins, 8 at a time: wrong passwords and names no one has.
    let http = reqwest::Client::new();
    let tries = futures_util::stream::iter(0..1000).map(|i| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let name = if i % 2 == 0 { "demo".to_string() } else { format!("nobody{i}") };
            let body = json!({"userName": name, "passWord": format!("wrong{i}")}).to_string();
            let r: serde_json::Value = http
                .post(format!("{base}/user/login"))
                .body(body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["message"], "no this user or password error!");
        }
    });
    futures_util::StreamExt::buffer_unordered(tries, 8).collect::<Vec<()>>().await;
    let after = rss(pid);
    eprintln!("RSS: {fresh} B fresh, {after} B after 1,000 failed logins");
    assert!(after < fresh + (64 << 20), "RSS grew from {fresh} B to {after} B");
    drop(child);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_opens_at_most_its_cap_of_sockets() {
    // Before: one account could open sockets without end, each holding gateway memory.
    let mut cfg = common::test_config();
    cfg.control.max_connections_per_user = 4;
    let server = Server::start_with(cfg).await;
    let (hog, other) = (server.user("hog").await, server.user("other").await);
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(server.ws(&hog, 1).await);
    }
    let mut one_more = server.ws_raw().await;
    one_more.send_json(json!({"authToken": hog.token, "roomId": 1})).await;
    match one_more.recv_end().await {
        common::End::Close(1008, reason) => assert!(reason.contains("too many connections"), "{reason}"),
        end => panic!("a fifth socket ended {end:?}"),
    }
    let _other = server.ws(&other, 1).await;
    sockets.pop().unwrap().close().await;
    common::eventually("a closed socket makes room", || async {
        let mut ws = server.ws_raw().await;
        ws.send_json(json!({"authToken": hog.token, "roomId": 1})).await;
        matches!(ws.next_json().await, Ok(v) if v["op"] == wire::OP_AUTH_OK)
    })
    .await;
    assert!(server.up.control.logic.counts.user_connections_refused.get() >= 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_cannot_fill_a_users_kept_messages() {
    // Before: 1,000 messages from one sender filled an offline user's kept messages, and
    // everyone else was told "too many unread messages" for them, for up to 7 days.
    let mut cfg = common::test_config();
    (cfg.control.inbox_size, cfg.control.inbox_per_sender) = (20, 5);
    let server = Server::start_with(cfg).await;
    let (spammer, friend, offline) =
        (server.user("spammer").await, server.user("friend").await, server.user("away").await);
    let send = |from: &common::User, n: usize| {
        let body =
            json!({"authToken": from.token, "toUserId": offline.id, "roomId": 1, "msg": format!("m{n}")});
        server.api("/push/push", body)
    };
    for n in 0..5 {
        assert_eq!(send(&spammer, n).await["code"], 0);
    }
    let r = send(&spammer, 5).await;
    assert!(r["message"].as_str().unwrap().contains("too many unread messages from you"), "{r}");
    assert_eq!(send(&friend, 0).await["code"], 0, "others still reach the user");
    let mut ws = server.ws_auth(json!({"authToken": offline.token, "roomId": 1, "acks": true})).await.0;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(ws.recv_op(wire::OP_SINGLE_SEND).await["fromUserId"].as_u64().unwrap());
    }
    assert_eq!(got.iter().filter(|f| **f == friend.id).count(), 1, "{got:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_history_in_memory_is_bounded_over_every_room() {
    let _heavy = common::heavy().await;
    // Before: each room kept its last 100 messages for 10 minutes, and rooms had no bound in
    // number: 50 sockets × 60 × 10 KiB into separate rooms kept +46 MB after they closed.
    let mut cfg = common::test_config();
    cfg.control.open_rooms = true;
    cfg.control.history_max_bytes = 1 << 20;
    let server = Server::start_with(cfg).await;
    let user = server.user("filler").await;
    let msg = "h".repeat(10_000);
    for room in 1..=20 {
        for _ in 0..20 {
            assert_eq!(server.push_room(&user, room, &msg).await["code"], 0);
        }
    }
    let (history, _) = server.up.control.logic.kept_bytes();
    let history = history.unwrap();
    assert!(history <= 1 << 20 && history > 900_000, "{history} bytes kept");
    // The quietest rooms lost theirs first; each still counts where it is.
    let history = |room: u64| server.api("/push/history", json!({"authToken": user.token, "roomId": room}));
    let newest = history(20).await;
    assert_eq!(newest["data"]["messages"].as_array().unwrap().len(), 20, "{}", newest["message"]);
    let oldest = history(1).await;
    assert_eq!(oldest["data"]["messages"].as_array().unwrap().len(), 0);
    assert_eq!(oldest["data"]["seq"], 20);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_rooms_member_list_again_and_again_sends_it_once_per_update() {
    // Before: every /push/getRoomInfo sent the whole member list to every member at once:
    // 100 calls by one user sent 340 KiB to each of 100 members.
    let server = Server::start().await;
    let mut members = Vec::new();
    for _ in 0..10 {
        let user = server.user("listed").await;
        let ws = server.ws(&user, 5).await;
        members.push((user, ws));
    }
    let (asker, watcher) = members.split_at_mut(1);
    let watcher = &mut watcher[0].1;
    // The joins' own list, with everyone in it.
    while watcher.recv_op(wire::OP_ROOM_INFO).await["count"] != 10 {}
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let r = server.api("/push/getRoomInfo", json!({"authToken": asker[0].0.token, "roomId": 5})).await;
        assert_eq!(r["code"], 0, "{r}");
    }
    // A list comes; then a marker message: the lists before it are counted.
    watcher.recv_op(wire::OP_ROOM_INFO).await;
    server.push_room(&asker[0].0, 5, "marker").await;
    let mut lists = 1;
    loop {
        let frame = watcher.next_json().await.expect("the socket stays open");
        if frame["op"] == wire::OP_ROOM_INFO {
            lists += 1;
        }
        if frame["msg"] == "marker" {
            break;
        }
    }
    // One per room update (every 500 ms) while the calls came, and the one after.
    let updates = 2 + started.elapsed().as_millis() / 500;
    assert!(lists <= updates, "{lists} member lists for 100 calls in {:?}", started.elapsed());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_sockets_together_send_no_faster_than_one_client() {
    let _heavy = common::heavy().await;
    // Before: sends were limited per connection only: 20 sockets of one user, each at its own
    // limit with 10 KiB messages, got a member who read as fast as it could dropped as a slow
    // consumer.
    let mut cfg = common::test_config();
    (cfg.control.push_per_second, cfg.control.push_burst) = (50, 100);
    let server = Server::start_with(cfg).await;
    let (flooder, reader) = (server.user("flooder").await, server.user("reader").await);
    let mut reader_ws = server.ws(&reader, 9).await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(server.ws(&flooder, 9).await);
    }
    let msg = "f".repeat(10_000);
    // Each socket sends its burst (60) and then 20 a second, for 2 s.
    let sends = sockets.into_iter().map(|mut ws| {
        let msg = msg.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                ws.send_json(json!({"op": 3, "msg": msg})).await;
                if i >= 60 {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            ws
        })
    });
    let sends: Vec<_> = sends.collect();
    let mut received = 0;
    let reading = async {
        loop {
            match reader_ws.next_json().await {
                Ok(v) if v["op"] == wire::OP_ROOM_SEND => received += 1,
                Ok(_) => {}
                Err(end) => panic!("the reader was dropped: {end:?} after {received} messages"),
            }
            if received >= 100 {
                break;
            }
        }
    };
    reading.await;
    let mut told = 0;
    for send in sends {
        let mut ws = send.await.unwrap();
        while let Ok(Ok(v)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), ws.next_json()).await
        {
            if v["op"] == wire::OP_ERROR && v["message"].as_str().is_some_and(|m| m.contains("too fast")) {
                told += 1;
            }
        }
    }
    assert!(told > 0, "the flooder was told to slow down");
    // The reader is still there, and gets what comes next.
    server.push_room(&reader, 9, "after").await;
    while reader_ws.recv_op(wire::OP_ROOM_SEND).await["msg"] != "after" {}
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_that_go_quiet_give_their_memory_back() {
    let _heavy = common::heavy().await;
    // Before: rooms' history was forgotten when they went quiet, but the process kept the
    // memory: 50 sockets × 60 × 10 KiB into separate rooms kept +46 MB after they closed.
    let (child, base, dir) = spawn_up("history_ttl_secs = 2\nopen_rooms = true\npush_per_second = 0").await;
    let pid = child.0.id();
    let r = common::post(&base, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    let token = r["data"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let push = |room: u64, msg: String| {
        let body = json!({"authToken": token, "roomId": room, "msg": msg}).to_string();
        let request = http.post(format!("{base}/push/pushRoom")).body(body);
        async move {
            let r: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            assert_eq!(r["code"], 0, "{r}");
        }
    };
    let before = rss(pid);
    let pushes = (0..3000u64).map(|i| push(1 + i % 50, format!("{i:>10}").repeat(1000)));
    futures_util::stream::iter(pushes).buffer_unordered(8).collect::<Vec<()>>().await;
    let full = rss(pid);
    // Once the rooms have been quiet for their age limit, the next message forgets them.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    push(99, "wake".into()).await;
    let after = rss(pid);
    eprintln!("RSS: {before} B before, {full} B with 50 rooms' history, {after} B after they went quiet");
    // 30 MB of messages; the allocator reuses some memory the process already had, so the
    // growth is less (15-18 MB seen). What is asked is that it grows by clearly more than it keeps.
    assert!(full > before + (10 << 20), "the history took memory: {before} B -> {full} B");
    assert!(
        after < before + (5 << 20),
        "kept {} B after the rooms were forgotten",
        after.saturating_sub(before)
    );
    drop(child);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_of_kept_messages_never_stops_live_ones() {
    let _heavy = common::heavy().await;
    // Before: accounts that filled the store of kept messages (messages to users who never
    // read them) got every private message refused, to users online too, for up to 7 days.
    let mut cfg = common::test_config();
    cfg.control.inbox_max_bytes = 32_000;
    let server = Server::start_with(cfg).await;
    let sink = server.user("sink").await;
    let msg = "p".repeat(1500);
    let mut refused = 0;
    for _ in 0..20 {
        let puppet = server.user("puppet").await;
        let body = json!({"authToken": puppet.token, "toUserId": sink.id, "roomId": 1, "msg": msg});
        let r = server.api("/push/push", body.clone()).await;
        if r["code"] != 0 {
            assert_eq!(r["message"], "too many unread messages are kept here; try again later");
            refused += 1;
            continue;
        }
        // One sender holds at most a sixteenth of the store.
        let again = server.api("/push/push", body).await;
        assert_eq!(again["message"], "too many of your messages are waiting to be read; try again later");
    }
    assert!(refused > 0, "the store filled up");
    let (friend, online) = (server.user("friend").await, server.user("online").await);
    let mut ws = server.ws_auth(json!({"authToken": online.token, "roomId": 1, "acks": true})).await.0;
    let body = json!({"authToken": friend.token, "toUserId": online.id, "roomId": 1, "msg": "live"});
    assert_eq!(server.api("/push/push", body).await["code"], 0, "an online user still gets messages");
    assert_eq!(ws.recv_op(wire::OP_SINGLE_SEND).await["msg"], "live");
    server.shutdown().await;
}
