//! gochat's REST API, byte for byte: envelope, codes, messages, CORS.

use crate::common;

use common::{unique, Server};
use gochat_proto::wire;
use gochat_test_services::{require, Service};
use serde_json::json;

#[tokio::test]
async fn register_login_check_auth_logout() {
    let s = Server::start().await;
    let name = unique("alice");
    let r = s.api("/user/register", json!({"userName": name, "passWord": "pw-1"})).await;
    assert_eq!((r["code"].as_i64(), r["message"].as_str()), (Some(0), Some("register success")));
    let t1 = r["data"].as_str().unwrap().to_string();

    let r = s.api("/user/register", json!({"userName": name, "passWord": "other"})).await;
    assert_eq!(
        r,
        json!({"code": 1, "message": "this user name already have , please login !!!", "data": null})
    );

    let r = s.api("/user/login", json!({"userName": name, "passWord": "wrong"})).await;
    assert_eq!(r, json!({"code": 1, "message": "no this user or password error!", "data": null}));
    let r = s.api("/user/login", json!({"userName": unique("nobody"), "passWord": "pw-1"})).await;
    assert_eq!(r["message"], "no this user or password error!");

    let r = s.api("/user/login", json!({"userName": name, "passWord": "pw-1"})).await;
    assert_eq!((r["code"].as_i64(), r["message"].as_str()), (Some(0), Some("login success")));
    let t2 = r["data"].as_str().unwrap().to_string();
    assert_ne!(t1, t2, "each login is a new session");

    let r = s.api("/user/checkAuth", json!({"authToken": t2})).await;
    assert_eq!(r["code"], 0);
    assert_eq!(r["message"], "auth success");
    assert_eq!(r["data"]["userName"], name);
    assert!(r["data"]["userId"].as_u64().unwrap() > 0);

    let r = s.api("/user/logout", json!({"authToken": t2})).await;
    assert_eq!(r, json!({"code": 0, "message": "logout ok!", "data": null}));
    let r = s.api("/user/checkAuth", json!({"authToken": t2})).await;
    assert_eq!(r, json!({"code": 40000, "message": "Session error", "data": null}));
    let r = s.api("/push/pushRoom", json!({"authToken": t2, "roomId": 1, "msg": "x"})).await;
    assert_eq!(r["code"], 40000, "a logged-out token fails everywhere");
    // The other session is untouched.
    assert_eq!(s.api("/user/checkAuth", json!({"authToken": t1})).await["code"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn demo_users_are_seeded_in_the_embedded_default() {
    let s = Server::start().await;
    for name in ["demo", "test", "admin"] {
        let r = s.api("/user/login", json!({"userName": name, "passWord": "111111"})).await;
        assert_eq!(r["code"], 0, "{name}: {r}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_documented_errors() {
    let s = Server::start().await;
    let unknown = json!({"code": 1, "message": "please check request url !", "data": null});
    assert_eq!(s.api("/nope", json!({})).await, unknown);
    let get: serde_json::Value = reqwest::get(s.api_url("/user/login")).await.unwrap().json().await.unwrap();
    assert_eq!(get, unknown, "gochat's routes are POST only");

    for body in ["not json", "{\"userName\": 5, \"passWord\": \"x\"}", "{}", "[]", "\u{0}"] {
        let r = s.api_raw("/user/register", body).await;
        assert_eq!(r["code"], 1, "{body}: {r}");
        assert!(r["message"].as_str().unwrap().starts_with("bad request body"), "{r}");
    }
    let r = s.api("/user/register", json!({"userName": "", "passWord": "x"})).await;
    assert_eq!(r["code"], 1);
    let r = s.api("/user/register", json!({"userName": "a".repeat(33), "passWord": "x"})).await;
    assert_eq!(r["code"], 1);
    let r = s.api("/user/register", json!({"userName": "tab\tname", "passWord": "x"})).await;
    assert_eq!(r["code"], 1);
    // SQL metacharacters and unicode are just names.
    let odd = format!("{}'; DROP TABLE user;-- ✓", unique("x"));
    let r = s.api("/user/register", json!({"userName": odd, "passWord": "p"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let r = s.api("/user/login", json!({"userName": odd, "passWord": "p"})).await;
    assert_eq!(r["code"], 0, "{r}");

    // Session routes check the token before anything else.
    for path in [
        "/user/checkAuth",
        "/user/logout",
        "/push/push",
        "/push/pushRoom",
        "/push/count",
        "/push/getRoomInfo",
    ] {
        for body in [json!({}), json!({"authToken": "forged"}), json!({"authToken": 5})] {
            let r = s.api(path, body).await;
            assert_eq!(r, json!({"code": 40000, "message": "Session error", "data": null}), "{path}");
        }
    }
    let user = s.user("bob").await;
    let r = s.api("/push/pushRoom", json!({"authToken": user.token, "roomId": "x", "msg": "m"})).await;
    assert_eq!(r["code"], 1, "{r}");
    let r = s.api("/push/pushRoom", json!({"authToken": user.token, "roomId": 0, "msg": "m"})).await;
    assert_eq!(r["code"], 1, "{r}");
    let r = s
        .api("/push/pushRoom", json!({"authToken": user.token, "roomId": 1, "msg": "m".repeat(20_000)}))
        .await;
    assert_eq!(r["message"], "msg is too long (max 10240 bytes)");
    let r = s.api_raw("/push/pushRoom", vec![b'x'; 200_000]).await;
    assert_eq!(r["code"], 1, "oversized body: {r}");

    // Still serving.
    assert_eq!(s.api("/user/checkAuth", json!({"authToken": user.token})).await["code"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn cors_is_open() {
    let s = Server::start().await;
    let http = reqwest::Client::new();
    let pre = http
        .request(reqwest::Method::OPTIONS, s.api_url("/user/login"))
        .header("Origin", "http://example.test")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 200);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert!(pre.headers()["access-control-allow-headers"].to_str().unwrap().contains("Content-Type"));
    let post = http.post(s.api_url("/user/login")).body("{}").send().await.unwrap();
    assert_eq!(post.headers()["access-control-allow-origin"], "*");
    assert!(post.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    s.shutdown().await;
}

#[tokio::test]
async fn site_is_served_with_its_config() {
    let s = Server::start().await;
    let site = s.up.control.site_addr.unwrap();
    let page = reqwest::get(format!("http://{site}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/config.js"));
    let config = reqwest::get(format!("http://{site}/config.js")).await.unwrap().text().await.unwrap();
    assert!(config.contains(&format!("\"apiPort\":{}", s.up.control.api_addr.port())), "{config}");
    assert!(config.contains(&format!("\"wsPort\":{}", s.up.gateway.ws_addr.port())), "{config}");
    // The client library the page imports (clients/js/gochat.js), as a script.
    let library = reqwest::get(format!("http://{site}/gochat.js")).await.unwrap();
    assert!(library.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(library.text().await.unwrap().contains("export class GochatClient"));
    let missing = reqwest::get(format!("http://{site}/../Cargo.toml")).await.unwrap();
    assert_eq!(missing.status(), 404);
    s.shutdown().await;
}

/// One origin: with `site_api_url` and `site_ws_url` paths, `/config.js` sends the page there,
/// its policy lets it open the socket on its own host and port, and the REST API answers under
/// the API's path as well as at its root (a proxy passes `/api/…` on as it is).
#[tokio::test]
async fn site_urls_send_the_page_through_its_own_origin() {
    let mut cfg = common::test_config();
    cfg.control.site_api_url = Some("/api".into());
    cfg.control.site_ws_url = Some("/ws".into());
    let s = Server::start_with(cfg).await;
    let site = s.up.control.site_addr.unwrap();
    let config = reqwest::get(format!("http://{site}/config.js")).await.unwrap().text().await.unwrap();
    assert!(config.contains(r#""apiUrl":"/api""#) && config.contains(r#""wsUrl":"/ws""#), "{config}");
    let http = reqwest::Client::new();
    let page = http.get(format!("http://{site}/")).header("host", "chat.example.com").send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("connect-src 'self' ws://chat.example.com wss://chat.example.com;"),
        "only its own origin: {csp}"
    );

    let name = unique("proxied");
    let r = s.api("/api/user/register", json!({"userName": name, "passWord": "pw-1"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let token = r["data"].as_str().unwrap();
    let r = s.api("/api/user/checkAuth?x=1", json!({"authToken": token})).await;
    assert_eq!(r["data"]["userName"], name.as_str(), "{r}");
    let r = s.api("/user/checkAuth", json!({"authToken": token})).await;
    assert_eq!(r["data"]["userName"], name.as_str(), "and at the root, as gochat's clients call it: {r}");
    for elsewhere in ["/apix/user/checkAuth", "/api", "/x/api/user/checkAuth"] {
        let r = s.api(elsewhere, json!({"authToken": token})).await;
        assert_eq!(r["message"], "please check request url !", "{elsewhere}: {r}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_configured_site_folder_overrides_the_built_in_page() {
    let dir = std::env::temp_dir().join(unique(&format!("gochat-site-{}-", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<p>custom page</p>").unwrap();
    let mut cfg = common::test_config();
    cfg.control.site_dir = Some(dir.clone());
    let s = Server::start_with(cfg).await;
    let site = s.up.control.site_addr.unwrap();
    let page = reqwest::get(format!("http://{site}/")).await.unwrap().text().await.unwrap();
    assert_eq!(page, "<p>custom page</p>");
    // The client library is there for a folder's page to import too.
    let library = reqwest::get(format!("http://{site}/gochat.js")).await.unwrap().text().await.unwrap();
    assert!(library.contains("export class GochatClient"));
    // A file of no known type is served as bytes, which a browser may not sniff into a page.
    std::fs::write(dir.join("notes.xyz"), "<script>alert(1)</script>").unwrap();
    let res = reqwest::get(format!("http://{site}/notes.xyz")).await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A POST with what the envelope alone does not show: the HTTP status and `Retry-After`.
async fn post_full(
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("REST reachable");
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, res.json().await.expect("envelope is JSON"))
}

/// Checks a rate-limit refusal: gochat's envelope, code 1, HTTP 200, and a Retry-After header
/// saying what the message says.
fn assert_too_many(status: u16, retry: Option<String>, r: &serde_json::Value, max_secs: u64) {
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["code"], 1, "{r}");
    assert_eq!(r["data"], serde_json::Value::Null);
    let secs: u64 = retry.expect("a Retry-After header").parse().unwrap();
    assert!((1..=max_secs).contains(&secs), "retry in {secs} s");
    assert_eq!(r["message"], format!("too many requests, retry in {secs} s"));
}

#[tokio::test]
async fn logins_and_registrations_are_limited_per_client_address() {
    let mut cfg = common::test_config();
    cfg.control.login_per_minute = 1;
    cfg.control.login_burst = 3;
    cfg.control.register_per_minute = 1;
    cfg.control.register_burst = 2;
    let s = Server::start_with(cfg).await;
    let limits = &s.up.control.limits;
    let name = unique("limited");
    let creds = json!({"userName": name, "passWord": "pw-1"});
    assert_eq!(s.api("/user/register", creds.clone()).await["code"], 0);
    // A refused registration (a taken name) counts too.
    assert_eq!(s.api("/user/register", creds.clone()).await["code"], 1);
    let other = json!({"userName": unique("later"), "passWord": "pw-1"});
    let (status, retry, r) = post_full(&s.api_url("/user/register"), other.to_string(), &[]).await;
    assert_too_many(status, retry, &r, 60);
    assert_eq!(limits.register.refused(), 1);

    // Logins have a bucket of their own; wrong passwords count.
    let wrong = json!({"userName": name, "passWord": "wrong"});
    assert_eq!(s.api("/user/login", wrong).await["message"], "no this user or password error!");
    assert_eq!(s.api("/user/login", creds.clone()).await["code"], 0);
    let r = s.api("/user/login", creds.clone()).await;
    assert_eq!(r["code"], 0);
    let (status, retry, refused) = post_full(&s.api_url("/user/login"), creds.to_string(), &[]).await;
    assert_too_many(status, retry, &refused, 60);
    // A bad body is refused by the limit first, and costs nothing more.
    let (status, retry, refused) = post_full(&s.api_url("/user/login"), "not json", &[]).await;
    assert_too_many(status, retry, &refused, 60);
    assert_eq!(limits.login.refused(), 2);
    assert_eq!(limits.push.refused(), 0);

    // Sessions are not limited per address.
    let token = r["data"].as_str().unwrap();
    for _ in 0..30 {
        assert_eq!(s.api("/user/checkAuth", json!({"authToken": token})).await["code"], 0);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    for trusted in [false, true] {
        let mut cfg = common::test_config();
        cfg.control.login_per_minute = 1;
        cfg.control.login_burst = 1;
        if trusted {
            cfg.control.trusted_proxies = vec!["127.0.0.0/8".into()];
        }
        let s = Server::start_with(cfg).await;
        let login = |client: &'static str| {
            let url = s.api_url("/user/login");
            async move {
                let body = json!({"userName": "nobody", "passWord": "x"}).to_string();
                let (_, _, r) = post_full(&url, body, &[("X-Forwarded-For", client)]).await;
                r["message"].as_str().unwrap().to_string()
            }
        };
        let bad = "no this user or password error!";
        assert_eq!(login("198.51.100.1").await, bad);
        assert!(login("198.51.100.1").await.starts_with("too many requests"));
        // Another client: its own bucket behind a trusted proxy; the proxy's own otherwise.
        let other = login("198.51.100.2, 127.0.0.1").await;
        assert_eq!(other == bad, trusted, "trusted = {trusted}: {other}");
        s.shutdown().await;
    }
}

#[tokio::test]
async fn pushes_are_limited_per_user() {
    let mut cfg = common::test_config();
    cfg.control.push_per_second = 1;
    cfg.control.push_burst = 3;
    cfg.control.open_rooms = true;
    let s = Server::start_with(cfg).await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let room = json!({"authToken": a.token, "roomId": 40});
    // pushRoom, count and getRoomInfo take from one bucket.
    assert_eq!(s.push_room(&a, 40, "one").await["code"], 0);
    assert_eq!(s.api("/push/count", room.clone()).await["code"], 0);
    assert_eq!(s.api("/push/getRoomInfo", room.clone()).await["code"], 0);
    let (status, retry, r) = post_full(&s.api_url("/push/count"), room.to_string(), &[]).await;
    assert_too_many(status, retry, &r, 1);
    let private = json!({"authToken": a.token, "msg": "x", "toUserId": b.id.to_string()});
    let (status, retry, r) = post_full(&s.api_url("/push/push"), private.to_string(), &[]).await;
    assert_too_many(status, retry, &r, 1);
    assert_eq!(s.up.control.limits.push.refused(), 2);
    // Another user is not held back; a bad token is a session error, never a limit.
    assert_eq!(s.push_room(&b, 40, "from b").await["code"], 0);
    let forged = json!({"authToken": "forged", "roomId": 40});
    assert_eq!(s.api("/push/count", forged).await["code"], 40000);
    // The bucket refills at its rate.
    common::eventually("a may push again", || async { s.push_room(&a, 40, "again").await["code"] == 0 })
        .await;
    s.shutdown().await;
}

/// Over REST, a user may push to a room only with a socket in it, unless `open_rooms`; both
/// state stores. `count` and `getRoomInfo` stay open: their answer goes to the room's sockets,
/// not to the caller, and gochat's page calls `getRoomInfo` right after sending its auth frame.
#[tokio::test]
async fn room_pushes_need_a_socket_in_the_room_unless_rooms_are_open() {
    require!(Service::Redis);
    let redis = common::RedisPrefix::new("rooms");
    let mut runs = 0;
    for shared in [false, true] {
        for open_rooms in [false, true] {
            runs += 1;
            let room = 50 + runs;
            let mut cfg = common::test_config();
            cfg.control.open_rooms = open_rooms;
            if shared {
                cfg.control.state = gochat_control::config::StateKind::Redis;
                cfg.control.redis_url = redis.url.clone();
                cfg.control.redis_prefix = redis.prefix.clone();
                cfg.control.node_id = Some(1);
            }
            let what = format!("shared state {shared}, open rooms {open_rooms}");
            let s = Server::start_with(cfg).await;
            let (a, b) = (s.user("a").await, s.user("b").await);
            let mut wb = s.ws(&b, room).await;
            let r = s.push_room(&a, room, "from outside").await;
            if open_rooms {
                assert_eq!(r["code"], 0, "{what}: {r}");
            } else {
                assert_eq!(r, json!({"code": 1, "message": "join the room first", "data": null}), "{what}");
            }
            for path in ["/push/count", "/push/getRoomInfo"] {
                let r = s.api(path, json!({"authToken": a.token, "roomId": room})).await;
                assert_eq!(r["code"], 0, "{what}: {path}: {r}");
            }
            // A socket in another room is not enough.
            let elsewhere = s.ws(&a, room + 100).await;
            assert_eq!(s.push_room(&a, room, "next door").await["code"] == 0, open_rooms, "{what}");
            let wa = s.ws(&a, room).await;
            assert_eq!(s.push_room(&a, room, "from a member").await["code"], 0, "{what}");
            let mut got = Vec::new();
            while got.last().map(String::as_str) != Some("from a member") {
                got.push(wb.recv_op(wire::OP_ROOM_SEND).await["msg"].as_str().unwrap().to_string());
            }
            let expected: &[&str] =
                if open_rooms { &["from outside", "next door", "from a member"] } else { &["from a member"] };
            assert_eq!(got, expected, "{what}");
            // Membership ends with the socket.
            wa.close().await;
            elsewhere.close().await;
            if !open_rooms {
                common::eventually("a's membership ended", || async {
                    s.push_room(&a, room, "after leaving").await["code"] == 1
                })
                .await;
            }
            s.shutdown().await;
        }
    }
}

/// The message of a refused body, checking the envelope around it.
fn refused_message(r: &serde_json::Value) -> String {
    assert_eq!(r["code"], 1, "{r}");
    assert_eq!(r["data"], serde_json::Value::Null, "{r}");
    r["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn bodies_up_to_the_limit_are_read_and_larger_ones_refused() {
    let s = Server::start().await;
    let max = common::test_config().control.max_body_bytes;
    // A valid body padded with a field the route ignores, to exactly the limit.
    let padded = |len: usize| {
        let name = unique("big");
        let head = format!(r#"{{"userName":"{name}","passWord":"pw-1","pad":""#);
        let mut body = head.into_bytes();
        body.resize(len - 2, b'x');
        body.extend_from_slice(b"\"}");
        body
    };
    let r = s.api_raw("/user/register", padded(max)).await;
    assert_eq!(r["code"], 0, "exactly max_body_bytes is accepted: {r}");
    let r = s.api_raw("/user/register", padded(max + 1)).await;
    assert_eq!(refused_message(&r), format!("request body too large (max {max} bytes)"));
    let r = s.api_raw("/user/register", vec![b' '; 4 * max]).await;
    assert_eq!(refused_message(&r), format!("request body too large (max {max} bytes)"));

    // Chunked, with no length announced: refused once past the limit, the same way.
    let mut tcp = tokio::net::TcpStream::connect(s.up.control.api_addr).await.unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    let mut req =
        b"POST /user/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..(max / chunk.len() + 2) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may answer and close before it has read everything.
    let _ = tcp.write_all(&req).await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("request body too large"), "{answer}");

    // Still serving.
    assert_eq!(s.api("/user/login", json!({"userName": "demo", "passWord": "111111"})).await["code"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_get_clear_errors() {
    let s = Server::start().await;
    let user = s.user("typed").await;
    let bad = |m: &str| format!("bad request body: {m}");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("/user/register", b"".to_vec(), bad("empty, expected a JSON object")),
        ("/user/register", b"  \n ".to_vec(), bad("empty, expected a JSON object")),
        ("/user/register", b"null".to_vec(), bad("expected a JSON object")),
        ("/user/register", b"42".to_vec(), bad("expected a JSON object")),
        ("/user/register", b"\"text\"".to_vec(), bad("expected a JSON object")),
        // serde reads an array as a struct's fields in order: refused, not a registration.
        ("/user/register", br#"["arrayuser", "pw-1"]"#.to_vec(), bad("expected a JSON object")),
        ("/user/login", br#"["demo", "111111"]"#.to_vec(), bad("expected a JSON object")),
        ("/user/register", b"{}".to_vec(), bad("missing field `userName` at line 1 column 2")),
        (
            "/user/register",
            br#"{"userName": "x"}"#.to_vec(),
            bad("missing field `passWord` at line 1 column 17"),
        ),
        (
            "/user/register",
            br#"{"userName": 5, "passWord": "x"}"#.to_vec(),
            bad("invalid type: integer `5`, expected a string at line 1 column 14"),
        ),
        (
            "/user/register",
            br#"{"userName": null, "passWord": "x"}"#.to_vec(),
            bad("invalid type: null, expected a string at line 1 column 17"),
        ),
        (
            "/user/register",
            br#"{"userName": ["a"], "passWord": "x"}"#.to_vec(),
            bad("invalid type: sequence, expected a string at line 1 column 13"),
        ),
        (
            "/user/login",
            br#"{"userName": "a", "passWord": true}"#.to_vec(),
            bad("invalid type: boolean `true`, expected a string at line 1 column 34"),
        ),
        (
            "/user/register",
            br#"{"userName": "a", "userName": "b", "passWord": "x"}"#.to_vec(),
            bad("duplicate field `userName` at line 1 column 28"),
        ),
        (
            "/user/register",
            br#"{"userName": "a", "passWord": "x""#.to_vec(),
            bad("EOF while parsing an object at line 1 column 33"),
        ),
        (
            "/user/register",
            br#"{"userName": "a", "passWord": "x"} trailing"#.to_vec(),
            bad("trailing characters at line 1 column 36"),
        ),
        // Invalid UTF-8, in a string and outside one.
        (
            "/user/register",
            b"{\"userName\": \"a\xff\", \"passWord\": \"x\"}".to_vec(),
            bad("invalid unicode code point at line 1 column 16"),
        ),
        ("/user/register", b"{\xfe\xff}".to_vec(), bad("key must be a string at line 1 column 2")),
        // Lone surrogates escaped in JSON are not text either.
        (
            "/user/register",
            br#"{"userName": "\ud800", "passWord": "x"}"#.to_vec(),
            bad("unexpected end of hex escape at line 1 column 21"),
        ),
    ];
    for (path, body, message) in cases {
        let shown = String::from_utf8_lossy(&body).to_string();
        let r = s.api_raw(path, body).await;
        assert_eq!(refused_message(&r), message, "{path} {shown}");
    }
    let r = s.api("/user/login", json!({"userName": "arrayuser", "passWord": "pw-1"})).await;
    assert_eq!(r["code"], 1, "the array body registered no one");

    // Deep nesting costs no stack: skipped in a field the route ignores, refused by the
    // parser's depth limit where it is read.
    let nested = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let r = s
        .api_raw(
            "/user/register",
            format!(r#"{{"userName": "{}", "passWord": "x", "pad": {nested}}}"#, unique("deep")),
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let r =
        s.api_raw("/push/count", format!(r#"{{"authToken": "{}", "roomId": {nested}}}"#, user.token)).await;
    assert!(refused_message(&r).starts_with("bad request body: recursion limit exceeded"), "{r}");

    // Route fields: ids may be numbers or numeric strings (gochat's clients send both), nothing
    // else.
    let room_body = |room: serde_json::Value| json!({"authToken": user.token, "roomId": room, "msg": "m"});
    for (room, why) in [
        (json!("x"), r#""x" is not a valid id"#),
        (json!(-1), "-1 is not a valid id"),
        (json!(1.5), "1.5 is not a valid id"),
        (json!(1e30), "1e+30 is not a valid id"),
        (json!(null), "null is not a valid id"),
        // Named, not quoted: an array or object may be as large as the request.
        (json!([1]), "an array is not a valid id"),
        (json!({"id": 1}), "an object is not a valid id"),
        (json!("18446744073709551616"), r#""18446744073709551616" is not a valid id"#),
    ] {
        let r = s.api("/push/pushRoom", room_body(room.clone())).await;
        let m = refused_message(&r);
        assert!(m.starts_with(&bad(why)), "roomId {room}: {m}");
    }
    let r = s.api("/push/pushRoom", json!({"authToken": user.token, "msg": "m"})).await;
    assert!(refused_message(&r).starts_with(&bad("missing field `roomId`")), "{r}");
    let r = s.api("/push/pushRoom", json!({"authToken": user.token, "roomId": 1})).await;
    assert!(refused_message(&r).starts_with(&bad("missing field `msg`")), "{r}");
    let r = s.api("/push/pushRoom", json!({"authToken": user.token, "roomId": 1, "msg": 7})).await;
    assert!(refused_message(&r).starts_with(&bad("invalid type: integer `7`, expected a string")), "{r}");
    let r = s.api("/push/pushRoom", json!({"authToken": user.token, "roomId": "0", "msg": "m"})).await;
    assert_eq!(refused_message(&r), "roomId must be a positive number");
    let r = s.api("/push/push", json!({"authToken": user.token, "msg": "m", "toUserId": null})).await;
    assert!(refused_message(&r).starts_with(&bad("null is not a valid id")), "{r}");
    let r = s.api("/push/count", json!({"authToken": user.token, "roomId": true})).await;
    assert!(refused_message(&r).starts_with(&bad("true is not a valid id")), "{r}");
    // The session comes first on session routes: a body that is not an object is a session error.
    for body in ["", "[]", "null", &format!("[\"{}\"]", user.token)] {
        let r = s.api_raw("/user/checkAuth", body.to_string()).await;
        assert_eq!(r, json!({"code": 40000, "message": "Session error", "data": null}), "{body:?}");
    }

    // Still serving.
    assert_eq!(s.api("/user/checkAuth", json!({"authToken": user.token})).await["code"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn content_type_and_method_do_not_matter_beyond_post() {
    let s = Server::start().await;
    let body = json!({"userName": "demo", "passWord": "111111"}).to_string();
    // gochat's page posts JSON as a form, so the content type is not looked at.
    for ct in [
        None,
        Some("application/json"),
        Some("application/x-www-form-urlencoded; charset=UTF-8"),
        Some("text/plain"),
        Some("application/xml"),
        Some("multipart/form-data; boundary=x"),
        Some("nonsense"),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("Content-Type", c)).into_iter().collect();
        let (status, _, r) = post_full(&s.api_url("/user/login"), body.clone(), &headers).await;
        assert_eq!((status, r["code"].as_i64()), (200, Some(0)), "{ct:?}: {r}");
    }
    let http = reqwest::Client::new();
    let unknown = json!({"code": 1, "message": "please check request url !", "data": null});
    for method in
        [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::PATCH]
    {
        let res =
            http.request(method.clone(), s.api_url("/user/login")).body(body.clone()).send().await.unwrap();
        assert_eq!(res.status(), 200, "{method}");
        assert_eq!(res.json::<serde_json::Value>().await.unwrap(), unknown, "{method}");
    }
    // A query string is not part of the route; a trailing slash is another route.
    assert_eq!(s.api("/user/login?x=1", json!({"userName": "demo", "passWord": "111111"})).await["code"], 0);
    assert_eq!(s.api("/user/login/", json!({"userName": "demo", "passWord": "111111"})).await, unknown);
    s.shutdown().await;
}

#[tokio::test]
async fn chat_messages_are_limited_in_bytes() {
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let mut wa = s.ws(&a, 60).await;
    let _wb = s.ws(&b, 60).await;
    let max = common::test_config().control.max_message_bytes;
    let too_long = format!("msg is too long (max {max} bytes)");
    for (msg, ok) in [
        ("m".repeat(max), true),
        ("m".repeat(max + 1), false),
        // Bytes, not characters: é is two.
        ("é".repeat(max / 2), true),
        ("é".repeat(max / 2 + 1), false),
        ("😀".repeat(max / 4), true),
        ("😀".repeat(max / 4) + "m", false),
    ] {
        let r = s.push_room(&a, 60, &msg).await;
        if ok {
            assert_eq!(r["code"], 0, "{} bytes", msg.len());
            assert_eq!(wa.recv_op(wire::OP_ROOM_SEND).await["msg"], msg.as_str());
        } else {
            assert_eq!(refused_message(&r), too_long, "{} bytes", msg.len());
        }
        let private = json!({"authToken": a.token, "msg": msg, "toUserId": b.id.to_string()});
        let r = s.api("/push/push", private).await;
        assert_eq!(r["code"] == 0, ok, "{} bytes: {r}", msg.len());
    }
    let r = s.push_room(&a, 60, "").await;
    assert_eq!(refused_message(&r), "msg must not be empty");
    s.shutdown().await;
}

/// Names are 1 to 32 characters (Unicode scalar values, not bytes, in NFKC), without
/// invisible, control or text-direction characters or spaces at their ends or two in a row;
/// anything else is just text.
#[tokio::test]
async fn user_names_are_unicode_text_counted_in_characters() {
    let s = Server::start().await;
    let length = "userName must be 1 to 32 characters";
    let chars = INVISIBLE;
    let id = unique("");
    let cases: Vec<(String, Option<&str>)> = vec![
        ("😀".repeat(31) + &id[..1], None),
        ("😀".repeat(33), Some(length)),
        (format!("{id}{}", "a".repeat(32 - id.len())), None),
        (format!("{id}{}", "a".repeat(33 - id.len())), Some(length)),
        // Combining marks with no precomposed form count as characters of their own.
        (format!("{id}{}", "q\u{301}".repeat((32 - id.len()) / 2)), None),
        ("q\u{301}".repeat(17), Some(length)),
        // A family emoji: five characters joined by zero-width joiners.
        (format!("{id}👩\u{200d}👩\u{200d}👧"), None),
        (format!("{id}שלום"), None),
        (format!("{id}\u{202e}gnp.exe"), Some(chars)),
        (format!("{id}\u{2067}x"), Some(chars)),
        (format!("{id}\u{200f}"), Some(chars)),
        (format!("{id}\0"), Some(chars)),
        (format!("{id}\u{7}"), Some(chars)),
        (format!("{id}\u{1b}[31m"), Some(chars)),
        (format!("{id}\u{85}"), Some(chars)),
        (format!("{id}\n"), Some(chars)),
        (format!(" {id}"), Some(chars)),
        (format!("{id}\u{a0}"), Some(chars)),
        (format!("{id}\u{3000}"), Some(chars)),
        (format!("{id}a  b"), Some(chars)),
        (format!("{id}\u{200b}"), Some(chars)),
        (String::new(), Some(length)),
    ];
    for (name, refused) in cases {
        let creds = json!({"userName": name, "passWord": "pw-1"});
        let r = s.api("/user/register", creds.clone()).await;
        match refused {
            Some(why) => {
                assert_eq!(refused_message(&r), why, "{name:?}");
                let r = s.api("/user/login", creds).await;
                assert_eq!(refused_message(&r), "no this user or password error!", "{name:?}");
            }
            None => {
                assert_eq!(r["code"], 0, "{name:?}: {r}");
                let token = s.api("/user/login", creds).await["data"].as_str().unwrap().to_string();
                let me = s.api("/user/checkAuth", json!({"authToken": token})).await;
                assert_eq!(me["data"]["userName"], name.as_str(), "stored as sent");
            }
        }
    }
    s.shutdown().await;
}

/// SQL metacharacters are ordinary characters of a name, in SQLite and in PostgreSQL; names
/// no one could register (a NUL, which PostgreSQL cannot store) are a failed login, not a
/// database error.
#[tokio::test]
async fn names_with_sql_metacharacters_are_just_names_in_every_store() {
    require!(Service::Postgres);
    let pg = common::PgDatabase::create("names");
    for database in ["sqlite::memory:", pg.url.as_str()] {
        let mut cfg = common::test_config();
        cfg.control.database = database.to_string();
        let s = Server::start_with(cfg).await;
        let victim = s.user("victim").await;
        for name in [
            "'; DROP TABLE users; --",
            "'; DROP TABLE \"user\"; --",
            "\" OR 1=1",
            "' OR '1'='1",
            "admin'--",
            "%",
            "_",
            "\\",
            "$1",
            "x'); DELETE FROM \"user\"; --",
        ] {
            let r = s.api("/user/login", json!({"userName": name, "passWord": "pw-1"})).await;
            assert_eq!(refused_message(&r), "no this user or password error!", "{database}: {name}");
            let r = s.api("/user/register", json!({"userName": name, "passWord": "pw-1"})).await;
            assert_eq!(r["code"], 0, "{database}: {name}: {r}");
            let r = s.api("/user/login", json!({"userName": name, "passWord": "pw-1"})).await;
            assert_eq!(r["code"], 0, "{database}: {name}: {r}");
            let me = s.api("/user/checkAuth", json!({"authToken": r["data"]})).await;
            assert_eq!(me["data"]["userName"], name);
            let r = s.api("/user/login", json!({"userName": name, "passWord": "' OR '1'='1"})).await;
            assert_eq!(r["code"], 1, "{database}: {name}");
        }
        let r = s.api("/user/login", json!({"userName": victim.name, "passWord": "' OR '1'='1"})).await;
        assert_eq!(r["code"], 1);
        let r = s.api("/user/login", json!({"userName": "demo\u{0}", "passWord": "111111"})).await;
        assert_eq!(refused_message(&r), "no this user or password error!", "{database}");
        // The table is still there, with everyone in it.
        let r = s.api("/user/login", json!({"userName": victim.name, "passWord": "secret-1"})).await;
        assert_eq!(r["code"], 0, "{database}: {r}");
        s.shutdown().await;
    }
}

const INVISIBLE: &str = "userName must not have invisible, control or text-direction characters, or spaces at its ends or two in a row";
const LOOK_ALIKE: &str = "this user name looks like one already taken, please choose another";
const TAKEN: &str = "this user name already have , please login !!!";

/// The look-alike names of the security review, against the seeded `admin`, `demo` and `test`:
/// each is refused, either for what it hides or as a look-alike of the name it imitates. The
/// imitated accounts are untouched, and `Admin` does not log in as `admin`.
#[tokio::test]
async fn look_alike_names_are_refused() {
    let s = Server::start().await;
    for (name, why) in [
        ("admin\u{200b}", INVISIBLE),
        ("\u{feff}demo", INVISIBLE),
        ("de\u{ad}mo", INVISIBLE),
        ("te\u{2060}st", INVISIBLE),
        ("dem\u{43e}", LOOK_ALIKE),
        ("\u{3164}", INVISIBLE),
        ("Admin", LOOK_ALIKE),
        ("ADMIN", LOOK_ALIKE),
        ("adrnin", LOOK_ALIKE),
        ("\u{430}dmin", LOOK_ALIKE),
        ("Test", LOOK_ALIKE),
        ("ａｄｍｉｎ", TAKEN),
        ("\u{301}", "userName must not start with a combining mark or have more than 4 in a row"),
    ] {
        let r = s.api("/user/register", json!({"userName": name, "passWord": "pw-1"})).await;
        assert_eq!(refused_message(&r), why, "{name:?}");
        let r = s.api("/user/login", json!({"userName": name, "passWord": "pw-1"})).await;
        assert_eq!(refused_message(&r), "no this user or password error!", "{name:?}");
    }
    // Login is by the exact name (in NFKC): the case of a name is part of it.
    let r = s.api("/user/login", json!({"userName": "Admin", "passWord": "111111"})).await;
    assert_eq!(refused_message(&r), "no this user or password error!");
    let r = s.api("/user/login", json!({"userName": "admin", "passWord": "111111"})).await;
    assert_eq!(r["code"], 0, "{r}");

    // A look-alike registered first holds its look-alikes too.
    let id = unique("");
    let first = format!("\u{412}\u{41e}\u{412}{id}"); // Cyrillic ВОВ
    let r = s.api("/user/register", json!({"userName": first, "passWord": "pw-1"})).await;
    assert_eq!(r["code"], 0, "{r}");
    for name in [format!("BOB{id}"), format!("\u{412}\u{43e}\u{432}{id}"), format!("B0B{id}")] {
        let r = s.api("/user/register", json!({"userName": name, "passWord": "pw-1"})).await;
        assert_eq!(refused_message(&r), LOOK_ALIKE, "{name:?}");
    }
    s.shutdown().await;
}

/// Names in any script are names; a name typed in a compatibility form (fullwidth letters, a
/// ligature) is stored in NFKC, shown so, and logs in typed either way.
#[tokio::test]
async fn names_are_stored_in_nfkc_and_other_scripts_register() {
    let s = Server::start().await;
    let id = unique("");
    for name in ["张三", "Иван", "Ελένη", "محمد", "नमस्ते", "さくら", "👩\u{200d}💻"]
    {
        let name = format!("{name}{id}");
        let r = s.api("/user/register", json!({"userName": name, "passWord": "pw-1"})).await;
        assert_eq!(r["code"], 0, "{name:?}: {r}");
        let me = s.api("/user/checkAuth", json!({"authToken": r["data"]})).await;
        assert_eq!(me["data"]["userName"], name.as_str());
    }
    let r = s.api("/user/register", json!({"userName": format!("ИВАН{id}"), "passWord": "pw-1"})).await;
    assert_eq!(refused_message(&r), LOOK_ALIKE);

    let wide = format!("ｆｕｌｌ\u{fb01}{id}");
    let stored = format!("fullfi{id}");
    let r = s.api("/user/register", json!({"userName": wide, "passWord": "pw-1"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let me = s.api("/user/checkAuth", json!({"authToken": r["data"]})).await;
    assert_eq!(me["data"]["userName"], stored.as_str());
    for typed in [&wide, &stored] {
        let r = s.api("/user/login", json!({"userName": typed, "passWord": "pw-1"})).await;
        assert_eq!(r["code"], 0, "{typed:?}: {r}");
        let me = s.api("/user/checkAuth", json!({"authToken": r["data"]})).await;
        assert_eq!(me["data"]["userName"], stored.as_str());
    }
    s.shutdown().await;
}

/// The page: a content security policy that lets it reach exactly its REST API and socket
/// (on other ports of the host it came from), no framing, no sniffing, no referrer. The REST
/// API: the same, with a policy that allows nothing, and CORS still open.
#[tokio::test]
async fn page_and_api_send_security_headers() {
    let s = Server::start().await;
    let site = s.up.control.site_addr.unwrap();
    let (api, ws) = (s.up.control.api_addr.port(), s.up.gateway.ws_addr.port());
    let http = reqwest::Client::new();
    let common = |h: &reqwest::header::HeaderMap, what: &str| {
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["x-frame-options"], "DENY", "{what}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
        h["content-security-policy"].to_str().unwrap().to_string()
    };
    for path in
        ["/", "/index.html", "/app.js", "/gochat.js", "/style.css", "/config.js", "/nope", "/index.html/"]
    {
        let res = http.get(format!("http://{site}{path}")).send().await.unwrap();
        let csp = common(res.headers(), path);
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for want in [
            "default-src 'self'",
            &format!("connect-src 'self' http://127.0.0.1:{api} ws://127.0.0.1:{ws}"),
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(directives.contains(&want), "{path}: {want:?} not in {csp:?}");
        }
    }
    // The page's host is the one the browser asked for (a policy cannot name an IPv6 address:
    // any host, on those ports); a Host that is no host name gets no hosts, and cannot add
    // directives.
    for (host, want) in [
        (
            format!("localhost:{}", site.port()),
            format!("connect-src 'self' http://localhost:{api} ws://localhost:{ws}"),
        ),
        (format!("[::1]:{}", site.port()), format!("connect-src 'self' http://*:{api} ws://*:{ws}")),
        ("x; script-src *".to_string(), "connect-src 'self'".to_string()),
    ] {
        let res = http.get(format!("http://{site}/")).header("host", &host).send().await.unwrap();
        let csp = common(res.headers(), &host);
        assert!(csp.split(';').map(str::trim).any(|d| d == want), "{host}: {csp}");
        assert!(!csp.contains("script-src"), "{host}: {csp}");
    }

    let api_csp = "default-src 'none'; frame-ancestors 'none'";
    let posted = http.post(s.api_url("/user/login")).body("{}").send().await.unwrap();
    let preflight = http
        .request(reqwest::Method::OPTIONS, s.api_url("/user/login"))
        .header("Origin", "http://example.test")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    let got = http.get(s.api_url("/user/login")).send().await.unwrap();
    for (what, res) in [("POST", posted), ("OPTIONS", preflight), ("GET", got)] {
        assert_eq!(common(res.headers(), what), api_csp, "{what}");
        assert_eq!(res.headers()["access-control-allow-origin"], "*", "{what}");
    }
    s.shutdown().await;
}

/// A path with a trailing slash is no file: `/index.html/` was the page, served as
/// `application/octet-stream`.
#[tokio::test]
async fn paths_with_a_trailing_slash_are_no_files() {
    let s = Server::start().await;
    let site = s.up.control.site_addr.unwrap();
    for path in ["/index.html/", "/app.js/", "/style.css//", "//index.html", "/config.js/"] {
        let res = reqwest::get(format!("http://{site}{path}")).await.unwrap();
        let kind = res.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!((res.status().as_u16(), kind.starts_with("text/plain")), (404, true), "{path}: {kind}");
    }
    s.shutdown().await;
}
