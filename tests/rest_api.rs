//! gochat's REST API, byte for byte: envelope, codes, messages, CORS.

mod common;

use common::{unique, Server};
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
    let missing = reqwest::get(format!("http://{site}/../Cargo.toml")).await.unwrap();
    assert_eq!(missing.status(), 404);
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
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
