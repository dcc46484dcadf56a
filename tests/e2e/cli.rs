//! The `gochat` binary: config checks, health checks, and control and gateway as two processes.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, KillOnDrop, Tcp, User};
use gochat_proto::wire;
use gochat_test_services::{require, Service};
use serde_json::json;

/// The binary, with none of this process's `GOCHAT_*` variables (flags' and config keys').
fn gochat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gochat"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GOCHAT_") {
            c.env_remove(name);
        }
    }
    c
}

#[test]
fn check_validates_configs() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gochat.example.toml");
    let out = gochat().args(["--config", example, "--check"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");

    let dir = tempdir();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[gateway]\nping_after_secs = 99\n").unwrap();
    let out = gochat().args(["--config", bad.to_str().unwrap(), "--check"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ping_after_secs"));

    let out = gochat().args(["--config", "/nonexistent.toml", "--check"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

/// `--check --print` with `envs` set: the effective config, parsed, or what went wrong.
fn effective(args: &[&str], envs: &[(&str, &str)]) -> Result<toml::Table, String> {
    let out = gochat().args(["--check", "--print"]).args(args).envs(envs.iter().copied()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(stdout.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{stdout}")))
}

/// Every key can come from the environment as `GOCHAT_<SECTION>__<KEY>`, over the file and
/// under the flags (and the flags' own variables): numbers, booleans, lists, nested sections,
/// and strings without quotes.
#[test]
fn the_environment_sets_any_key_over_the_file_and_under_the_flags() {
    let dir = tempdir();
    let file = dir.join("gochat.toml");
    std::fs::write(
        &file,
        "[gateway]\nshards = 3\ndriver = \"epoll\"\n[control]\nredis_prefix = \"from-file\"\nsession_ttl_secs = 60\n",
    )
    .unwrap();
    let config = ["--config", file.to_str().unwrap()];
    std::fs::write(dir.join("index.html"), "").unwrap();
    let site_dir = dir.to_str().unwrap();
    let envs = [
        ("GOCHAT_CONTROL__SESSION_TTL_SECS", "120"),
        ("GOCHAT_CONTROL__OPEN_ROOMS", "true"),
        ("GOCHAT_CONTROL__TRUSTED_PROXIES", r#"["10.0.0.0/8", "192.168.0.1"]"#),
        ("GOCHAT_CONTROL__REDIS_URL", "redis://10.0.0.2:6380/1"),
        ("GOCHAT_CONTROL__NODE_ID", "7"),
        ("GOCHAT_CONTROL__SITE_DIR", site_dir),
        ("GOCHAT_CONTROL__ADMIN_LISTEN", "127.0.0.1:9101"),
        ("GOCHAT_GATEWAY__WS_LISTEN", "127.0.0.1:7555"),
        ("GOCHAT_GATEWAY__SHARDS", "5"),
        ("GOCHAT_GATEWAY__TCP_LISTEN", "off"),
        ("GOCHAT_QUEUE__REDIS__PREFIX", "12345"),
        ("GOCHAT_WORKER__GATEWAYS", r#"[{ id = "g1", grpc = "http://10.0.0.3:7100" }]"#),
    ];
    let cfg = effective(&config, &envs).unwrap_or_else(|e| panic!("{e}"));
    let get = |path: &str| {
        let mut at = toml::Value::Table(cfg.clone());
        for key in path.split('.') {
            let next = match key.parse::<usize>() {
                Ok(i) => at.get(i),
                Err(_) => at.get(key),
            };
            at = next.unwrap_or_else(|| panic!("{path} not printed:\n{cfg}")).clone();
        }
        at
    };
    assert_eq!(get("control.redis_prefix").as_str(), Some("from-file"), "the file where no variable is set");
    assert_eq!(get("control.session_ttl_secs").as_integer(), Some(120), "the variable over the file");
    assert_eq!(get("control.open_rooms").as_bool(), Some(true));
    assert_eq!(get("control.trusted_proxies"), toml::Value::from(vec!["10.0.0.0/8", "192.168.0.1"]));
    assert_eq!(get("control.redis_url").as_str(), Some("redis://10.0.0.2:6380/1"), "no quotes needed");
    assert_eq!(get("control.node_id").as_integer(), Some(7), "an optional number");
    assert_eq!(get("control.site_dir").as_str(), Some(site_dir), "an optional path");
    assert_eq!(get("control.admin_listen").as_str(), Some("127.0.0.1:9101"));
    assert_eq!(get("gateway.ws_listen").as_str(), Some("127.0.0.1:7555"));
    assert_eq!(get("gateway.tcp_listen").as_str(), Some("off"));
    assert_eq!(get("gateway.shards").as_integer(), Some(5));
    assert_eq!(get("gateway.driver").as_str(), Some("epoll"));
    assert_eq!(get("queue.redis.prefix").as_str(), Some("12345"), "a string key keeps digits as text");
    assert_eq!(get("worker.gateways.0.grpc").as_str(), Some("http://10.0.0.3:7100"), "inline tables");

    // Flags, and the flags' own variables (GOCHAT_SHARDS, GOCHAT_DRIVER), over the keys' variables.
    let with = |extra: &[(&'static str, &'static str)], args: &[&str]| {
        let envs: Vec<_> = envs.iter().chain(extra).copied().collect();
        let cfg = effective(&[&config[..], args].concat(), &envs).unwrap_or_else(|e| panic!("{e}"));
        (
            cfg["gateway"]["shards"].as_integer().unwrap(),
            cfg["gateway"]["driver"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(with(&[], &["--shards", "2"]).0, 2, "a flag over the variable");
    assert_eq!(with(&[("GOCHAT_SHARDS", "4")], &[]).0, 4, "the flag's variable over the key's");
    assert_eq!(with(&[("GOCHAT_SHARDS", "4")], &["--shards", "6"]).0, 6);
    assert_eq!(with(&[("GOCHAT_GATEWAY__DRIVER", "auto")], &[]).1, "auto");
    assert_eq!(with(&[("GOCHAT_GATEWAY__DRIVER", "auto"), ("GOCHAT_DRIVER", "epoll")], &[]).1, "epoll");

    // Without a file, the variables apply to the defaults.
    let cfg = effective(&[], &[("GOCHAT_GATEWAY__SHARDS", "9")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg["gateway"]["shards"].as_integer(), Some(9));
    assert_eq!(cfg["control"]["api_listen"].as_str(), Some("127.0.0.1:7070"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A variable that names no key, or holds a value its key cannot take, is an error naming it.
#[test]
fn a_bad_variable_is_an_error_that_names_it() {
    for (name, value, want) in [
        ("GOCHAT_CONTROL__REDIS_UR", "redis://x", "unknown key redis_ur in [control]"),
        ("GOCHAT_CONTROLL__REDIS_URL", "redis://x", "unknown section [controll]"),
        ("GOCHAT_QUEUE__REDIS__URLS", "redis://x", "unknown key urls in [queue.redis]"),
        ("GOCHAT_CONTROL__SESSION_TTL_SECS", "soon", "session_ttl_secs"),
        ("GOCHAT_CONTROL__SESSION_TTL_SECS", "-5", "session_ttl_secs"),
        ("GOCHAT_CONTROL__OPEN_ROOMS", "yes", "open_rooms"),
        ("GOCHAT_CONTROL__TRUSTED_PROXIES", "10.0.0.0/8", "a list is written"),
        ("GOCHAT_GATEWAY__DRIVER", "kqueue", "kqueue"),
        ("GOCHAT_GATEWAY__WS_LISTEN", "nowhere", "ws_listen in [gateway]"),
        ("GOCHAT_CONTROL__", "1", "GOCHAT_CONTROL__"),
        ("GOCHAT_CONTROL__REDIS_URL__X", "1", "redis_url"),
    ] {
        let err = effective(&[], &[(name, value)]).err().unwrap_or_else(|| panic!("{name}={value} taken"));
        assert!(err.contains(name) && err.contains(want), "{name}={value}: {err}");
    }
    // A value the key takes but the config does not validate with is named by its key.
    let err = effective(&[], &[("GOCHAT_GATEWAY__PING_AFTER_SECS", "99")]).unwrap_err();
    assert!(err.contains("ping_after_secs"), "{err}");
    // The flags' variables have one underscore: they are not keys.
    let err = effective(&[], &[("GOCHAT_SHARDS", "many")]).unwrap_err();
    assert!(err.contains("many"), "{err}");
}

/// `--check --print` shows every setting, secrets given by file or environment redacted.
#[test]
fn check_print_shows_the_config_without_its_secrets() {
    let dir = tempdir();
    let file = dir.join("gochat.toml");
    std::fs::write(
        &file,
        "[control]\nstate = \"redis\"\nnode_id = 1\nredis_url = \"redis://:File-Secret-1@10.0.0.2:6379\"\n",
    )
    .unwrap();
    let envs = [
        (
            "GOCHAT_CONTROL__DATABASE",
            "postgres://gochat:Env-Secret-2@db:5432/gochat?sslmode=disable&password=Env-Secret-5",
        ),
        ("GOCHAT_QUEUE__REDIS__URL", "redis://worker:Env-Secret-3@10.0.0.4:6379/0"),
        ("GOCHAT_DISCOVERY__ETCD_ENDPOINTS", r#"["http://root:Env-Secret-4@10.0.0.5:2379"]"#),
    ];
    let out = gochat()
        .args(["--config", file.to_str().unwrap(), "--check", "--print"])
        .envs(envs)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    for secret in ["File-Secret-1", "Env-Secret-2", "Env-Secret-3", "Env-Secret-4", "Env-Secret-5"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} printed:\n{stdout}{stderr}");
    }
    let cfg: toml::Table = stdout.parse().unwrap();
    assert_eq!(
        cfg["control"]["database"].as_str(),
        Some("postgres://gochat:***@db:5432/gochat?sslmode=disable&password=***")
    );
    assert_eq!(cfg["control"]["redis_url"].as_str(), Some("redis://:***@10.0.0.2:6379"));
    assert_eq!(cfg["queue"]["redis"]["url"].as_str(), Some("redis://worker:***@10.0.0.4:6379/0"));
    // Every section, every key with a value.
    for section in ["gateway", "control", "worker", "queue", "discovery"] {
        assert!(cfg.contains_key(section), "[{section}] missing:\n{stdout}");
    }
    assert_eq!(cfg["gateway"]["ping_after_secs"].as_integer(), Some(54));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn standalone_worker_explains_what_it_needs() {
    let out = gochat().arg("worker").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shared queue"));
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::unique(&format!("gochat-cli-{}-", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Stops a child with SIGINT (Ctrl-C) and returns whether it exited cleanly.
fn interrupt(mut child: KillOnDrop) -> bool {
    gochat_runtime::os::signal(child.0.id(), libc::SIGINT).unwrap();
    for _ in 0..200 {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test]
async fn control_and_gateway_as_separate_processes() {
    separate_processes("", &["control", "gateway"]).await;
}

#[tokio::test]
async fn control_worker_and_gateway_over_a_redis_queue() {
    require!(Service::Redis);
    let url = gochat_test_services::redis_url();
    let prefix = format!("gochat-test-{}-cli", std::process::id());
    let queue = format!(
        "[queue]\nkind = \"redis\"\n[queue.redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\nstreams = 2\n"
    );
    separate_processes(&queue, &["control", "worker", "gateway"]).await;
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for s in 0..2 {
        let _: () =
            redis::cmd("DEL").arg(format!("{prefix}:queue:{s}")).query_async(&mut conn).await.unwrap();
    }
}

/// Control, gateway (and a worker, with a shared queue) as separate processes: a TCP client's
/// room message comes back through all of them.
async fn separate_processes(queue: &str, roles: &[&str]) {
    let dir = tempdir();
    let [api, grpc, ws, tcp, gw_grpc, gw_admin, admin] = [(); 7].map(|_| common::free_port());
    let config = format!(
        r#"
[gateway]
ws_listen = "127.0.0.1:{ws}"
tcp_listen = "127.0.0.1:{tcp}"
grpc_listen = "127.0.0.1:{gw_grpc}"
admin_listen = "127.0.0.1:{gw_admin}"
logic = "http://127.0.0.1:{grpc}"
shards = 2

[control]
api_listen = "127.0.0.1:{api}"
site_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:{grpc}"
admin_listen = "127.0.0.1:{admin}"
database = "sqlite://{db}"

[worker]
logic = "http://127.0.0.1:{grpc}"
gateways = [{{ id = "gateway-1", grpc = "http://127.0.0.1:{gw_grpc}" }}]

{queue}
"#,
        db = dir.join("users.sqlite3").display()
    );
    let path = dir.join("cluster.toml");
    std::fs::write(&path, config).unwrap();
    let spawn = |role: &str| {
        gochat()
            .args(["--config", path.to_str().unwrap(), role])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    };
    let children: Vec<_> = roles.iter().map(|r| spawn(r)).collect();

    let http = reqwest::Client::new();
    let api_url = |p: &str| format!("http://127.0.0.1:{api}{p}");
    eventually("control answers", || async {
        http.post(api_url("/user/checkAuth")).body("{}").send().await.is_ok()
    })
    .await;
    let base = format!("http://127.0.0.1:{api}");
    let r = common::post(&base, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    assert_eq!(r["code"], 1, "no demo users outside the embedded demo: {r}");
    let r = common::post(&base, "/user/register", json!({"userName": "solo", "passWord": "pw"})).await;
    let token = r["data"].as_str().unwrap().to_string();

    let deadline = tokio::time::Instant::now() + common::WAIT;
    let client = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", tcp)).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("gateway never accepted: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client = Tcp(client);
    client.send_json(json!({"op": 6, "authToken": token, "roomId": 2})).await;
    client.recv_op(wire::OP_AUTH_OK).await;
    client.send_json(json!({"op": 3, "msg": "across processes", "roomId": 2})).await;
    assert_eq!(client.recv_op(wire::OP_ROOM_SEND).await["msg"], "across processes");

    // `gochat health` answers for both gRPC ports while they serve, and fails once they are gone.
    let health = |port: u16| async move {
        let out = tokio::task::spawn_blocking(move || {
            gochat().args(["health", &format!("http://127.0.0.1:{port}")]).output().unwrap()
        });
        let out = out.await.unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for port in [grpc, gw_grpc] {
        let (ok, said) = health(port).await;
        assert!(ok && said.contains("SERVING"), "health of :{port}: {said}");
    }
    // And over HTTP, on the admin listeners: alive, and ready for traffic.
    let health_at = |url: String| async move {
        let out = tokio::task::spawn_blocking(move || gochat().args(["health", &url]).output().unwrap());
        let out = out.await.unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    for port in [gw_admin, admin] {
        let (ok, said) = health_at(format!("http://127.0.0.1:{port}/healthz")).await;
        assert!(ok && said.contains("alive"), "/healthz of :{port}: {said}");
        eventually("ready over HTTP", || async {
            health_at(format!("http://127.0.0.1:{port}/readyz")).await.0
        })
        .await;
    }

    for child in children.into_iter().rev() {
        let ok = tokio::task::spawn_blocking(move || interrupt(child)).await.unwrap();
        assert!(ok, "every role stops cleanly on Ctrl-C");
    }
    assert!(!health(grpc).await.0, "no health from a stopped control");
    let (ok, said) = health_at(format!("http://127.0.0.1:{admin}/readyz")).await;
    assert!(!ok && said.contains("cannot reach"), "a stopped control over HTTP: {said}");
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP reads the config file again: what a running process can change takes effect for the
/// sockets already open, what needs a restart is named in the log and left as it is, and a file
/// that does not load changes nothing.
#[tokio::test]
async fn sighup_reloads_what_can_change_and_names_the_rest() {
    let dir = tempdir();
    let [api, grpc, ws, gw_grpc] = [(); 4].map(|_| common::free_port());
    let config = |extra_gateway: &str, extra_control: &str| {
        format!(
            "[gateway]\nws_listen = \"127.0.0.1:{ws}\"\ntcp_listen = \"off\"\ngrpc_listen = \"127.0.0.1:{gw_grpc}\"\n\
             shards = 1\n{extra_gateway}\n[control]\napi_listen = \"127.0.0.1:{api}\"\nsite_listen = \"off\"\n\
             grpc_listen = \"127.0.0.1:{grpc}\"\ndatabase = \"sqlite::memory:\"\n{extra_control}\n"
        )
    };
    let path = dir.join("gochat.toml");
    std::fs::write(&path, config("", "")).unwrap();
    let log = dir.join("gochat.log");
    let child = gochat()
        .args(["--config", path.to_str().unwrap(), "up"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let base = format!("http://127.0.0.1:{api}");
    eventually("control answers", || async {
        reqwest::Client::new().post(format!("{base}/user/checkAuth")).body("{}").send().await.is_ok()
    })
    .await;
    let r = common::post(&base, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    let token = r["data"].as_str().unwrap().to_string();
    let id =
        common::post(&base, "/user/checkAuth", json!({"authToken": token})).await["data"]["userId"].as_u64();
    let user = User { token: token.clone(), id: id.unwrap(), name: "demo".into() };
    let mut socket = common::ws_at(&format!("ws://127.0.0.1:{ws}/ws"), &user, 1).await;
    let push = |msg: String| {
        let (base, token) = (base.clone(), token.clone());
        async move {
            common::post(&base, "/push/pushRoom", json!({"authToken": token, "roomId": 1, "msg": msg})).await
        }
    };
    assert_eq!(push("x".repeat(200)).await["code"], 0);

    let hangup = || {
        gochat_runtime::os::signal(child.0.id(), libc::SIGHUP).unwrap();
    };
    std::fs::write(
        &path,
        config(
            "max_rooms_per_conn = 1\ninbox_capacity = 100",
            "max_message_bytes = 100\nsession_ttl_secs = 60",
        ),
    )
    .unwrap();
    hangup();
    eventually("the new message limit holds", || async {
        push("x".repeat(200)).await["message"] == "msg is too long (max 100 bytes)"
    })
    .await;
    socket.send_json(json!({"op": 10, "roomId": 2})).await;
    let refused = socket.recv_op(wire::OP_ERROR).await;
    assert_eq!(refused["message"], "at most 1 rooms per connection", "the open socket has the new limit");
    let logged = std::fs::read_to_string(&log).unwrap();
    for key in ["gateway.inbox_capacity", "control.session_ttl_secs"] {
        assert!(logged.contains(key) && logged.contains("next restart"), "{key} not named:\n{logged}");
    }

    std::fs::write(&path, "[control]\nmax_message_bytes = \"many\"\n").unwrap();
    hangup();
    eventually("the bad file is reported", || async {
        std::fs::read_to_string(&log).unwrap().contains("config not reloaded")
    })
    .await;
    assert_eq!(push("x".repeat(200)).await["message"], "msg is too long (max 100 bytes)", "as before");
    assert_eq!(push("short".into()).await["code"], 0, "still serving");
    assert!(tokio::task::spawn_blocking(move || interrupt(child)).await.unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

/// With every log at trace level (ours and every library's), a session's life — register, a
/// wrong password, login, sockets, pushes, logout — leaves no password, token or password hash
/// in the process's output.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    require!(Service::Redis);
    let dir = tempdir();
    let redis = common::RedisPrefix::new("secrets");
    let [api, grpc, ws, gw_grpc] = [(); 4].map(|_| common::free_port());
    let db = dir.join("users.sqlite3");
    let config = format!(
        r#"
[gateway]
ws_listen = "127.0.0.1:{ws}"
tcp_listen = "off"
grpc_listen = "127.0.0.1:{gw_grpc}"
shards = 1

[control]
api_listen = "127.0.0.1:{api}"
site_listen = "off"
grpc_listen = "127.0.0.1:{grpc}"
database = "sqlite://{db}"
state = "redis"
redis_url = "{redis_url}"
redis_prefix = "{prefix}"
node_id = 1
"#,
        db = db.display(),
        redis_url = redis.url,
        prefix = redis.prefix,
    );
    let path = dir.join("gochat.toml");
    std::fs::write(&path, config).unwrap();
    let (out, err) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let child = gochat()
        .args(["--config", path.to_str().unwrap(), "up"])
        .env("RUST_LOG", "trace")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .map(KillOnDrop)
        .unwrap();

    let base = format!("http://127.0.0.1:{api}");
    let http = reqwest::Client::new();
    eventually("gochat up answers", || async {
        http.post(format!("{base}/user/checkAuth")).body("{}").send().await.is_ok()
    })
    .await;
    let (alice, bob) = (common::unique("alice"), common::unique("bob"));
    let (alice_pw, bob_pw, guess) = ("Alice-Secret-7f3a9c", "Bob-Secret-0d41e2", "Wrong-Guess-5b6c8d");
    let call = |path: &'static str, body: serde_json::Value| {
        let base = base.clone();
        async move { common::post(&base, path, body).await }
    };
    let mut tokens = Vec::new();
    for (name, pw) in [(&alice, alice_pw), (&bob, bob_pw)] {
        let r = call("/user/register", json!({"userName": name, "passWord": pw})).await;
        assert_eq!(r["code"], 0, "{r}");
        tokens.push(r["data"].as_str().unwrap().to_string());
    }
    let r = call("/user/login", json!({"userName": alice, "passWord": guess})).await;
    assert_eq!(r["code"], 1);
    let r = call("/user/register", json!({"userName": alice, "passWord": guess})).await;
    assert_eq!(r["code"], 1, "taken");
    let r = call("/user/login", json!({"userName": alice, "passWord": alice_pw})).await;
    let alice_token = r["data"].as_str().unwrap().to_string();
    tokens.push(alice_token.clone());
    let me = call("/user/checkAuth", json!({"authToken": alice_token})).await;
    let bob_token = tokens[1].clone();
    let bob_me = call("/user/checkAuth", json!({"authToken": bob_token})).await;
    let user = |token: &str, me: &serde_json::Value| common::User {
        token: token.to_string(),
        id: me["data"]["userId"].as_u64().unwrap(),
        name: me["data"]["userName"].as_str().unwrap().to_string(),
    };
    let ws_url = format!("ws://127.0.0.1:{ws}/ws");
    let mut wa = common::ws_at(&ws_url, &user(&alice_token, &me), 1).await;
    let mut wb = common::ws_at(&ws_url, &user(&bob_token, &bob_me), 1).await;
    // A forged token on a socket, too.
    let (mut forged, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    use futures_util::SinkExt;
    let fake = "f".repeat(48);
    forged
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"authToken": fake, "roomId": 1}).to_string(),
        ))
        .await
        .unwrap();
    let r = call("/push/pushRoom", json!({"authToken": alice_token, "roomId": 1, "msg": "hello room"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let bob_id = bob_me["data"]["userId"].as_u64().unwrap().to_string();
    let r =
        call("/push/push", json!({"authToken": alice_token, "toUserId": bob_id, "roomId": 1, "msg": "psst"}))
            .await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(wb.recv_op(wire::OP_SINGLE_SEND).await["msg"], "psst");
    assert_eq!(wa.recv_op(wire::OP_ROOM_SEND).await["msg"], "hello room");
    for path in ["/push/count", "/push/getRoomInfo"] {
        assert_eq!(call(path, json!({"authToken": alice_token, "roomId": 1})).await["code"], 0);
    }
    for token in &tokens {
        assert_eq!(call("/user/logout", json!({"authToken": token})).await["code"], 0);
        assert_eq!(call("/user/checkAuth", json!({"authToken": token})).await["code"], 40000);
    }
    wa.close().await;
    wb.close().await;
    assert!(tokio::task::spawn_blocking(move || interrupt(child)).await.unwrap(), "stops cleanly");

    let store = gochat_control::store::UserStore::open(&format!("sqlite://{}", db.display())).await.unwrap();
    let mut hashes = Vec::new();
    for name in [&alice, &bob, &"demo".to_string()] {
        hashes.push(store.by_name(name).await.unwrap().expect("stored").password);
    }
    store.close().await;
    let logs = std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap();
    assert!(logs.lines().filter(|l| l.contains("TRACE")).count() > 100, "trace logging was on:\n{logs}");
    let mut secrets: Vec<(&str, String)> = vec![
        ("alice's password", alice_pw.into()),
        ("bob's password", bob_pw.into()),
        ("a wrong password", guess.into()),
        ("a forged token", fake),
    ];
    secrets.extend(tokens.iter().map(|t| ("a session token", t.clone())));
    for h in &hashes {
        secrets.push(("a password hash", h.clone()));
        // The salt and the hash on their own, too.
        secrets.extend(h.rsplit('$').take(2).map(|part| ("part of a password hash", part.to_string())));
    }
    secrets.push(("a password hash", "$argon2".into()));
    for (what, secret) in &secrets {
        if let Some(at) = logs.find(secret.as_str()) {
            let line = logs[..at].lines().count();
            panic!(
                "{what} in the logs, line {line}: {}",
                logs[at.saturating_sub(200)..].chars().take(400).collect::<String>()
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Each line of `text` as a JSON log record with its time, level, target, message and fields;
/// panics naming the first line that is not one.
fn json_records(what: &str, text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let record: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what} line {}: not JSON ({e}): {line}", n + 1));
            let ok = record["time"].as_str().is_some_and(|t| t.len() >= 20 && t.ends_with('Z'))
                && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                    .contains(&record["level"].as_str().unwrap_or(""))
                && record["target"].as_str().is_some_and(|t| !t.is_empty())
                && record["message"].is_string()
                && record["fields"].is_object()
                && record.get("spans").is_none_or(|s| {
                    s.as_array().is_some_and(|s| s.iter().all(|span| span["name"].is_string()))
                });
            assert!(ok, "{what} line {}: not a log record: {line}", n + 1);
            record
        })
        .collect()
}

/// `--log-format json`: a whole `gochat up` session at debug level — start, register, login,
/// a socket, a room message and a private one, Ctrl-C — writes nothing but JSON records, one
/// per line, on both its outputs. `GOCHAT_LOG_FORMAT=json` does the same, and a start that
/// fails says why in a record too.
#[tokio::test]
async fn json_logs_are_one_record_per_line_for_a_whole_session() {
    let dir = tempdir();
    let [api, grpc, ws, gw_grpc] = [(); 4].map(|_| common::free_port());
    let config = format!(
        "[gateway]\nws_listen = \"127.0.0.1:{ws}\"\ntcp_listen = \"off\"\ngrpc_listen = \"127.0.0.1:{gw_grpc}\"\n\
         shards = 1\n[control]\napi_listen = \"127.0.0.1:{api}\"\nsite_listen = \"off\"\n\
         grpc_listen = \"127.0.0.1:{grpc}\"\ndatabase = \"sqlite::memory:\"\n"
    );
    let path = dir.join("gochat.toml");
    std::fs::write(&path, config).unwrap();
    let (out, err) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let child = gochat()
        .args(["--log-format", "json", "--config", path.to_str().unwrap(), "up"])
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let base = format!("http://127.0.0.1:{api}");
    eventually("gochat up answers", || async {
        reqwest::Client::new().post(format!("{base}/user/checkAuth")).body("{}").send().await.is_ok()
    })
    .await;
    let mut users = Vec::new();
    for name in [common::unique("json-a"), common::unique("json-b")] {
        let r =
            common::post(&base, "/user/register", json!({"userName": name, "passWord": "pw-123456"})).await;
        assert_eq!(r["code"], 0, "{r}");
        let r = common::post(&base, "/user/login", json!({"userName": name, "passWord": "pw-123456"})).await;
        let token = r["data"].as_str().unwrap().to_string();
        let me = common::post(&base, "/user/checkAuth", json!({"authToken": token})).await;
        users.push(User { token, id: me["data"]["userId"].as_u64().unwrap(), name });
    }
    let url = format!("ws://127.0.0.1:{ws}/ws");
    let (mut a, mut b) = (common::ws_at(&url, &users[0], 1).await, common::ws_at(&url, &users[1], 1).await);
    let r =
        common::post(&base, "/push/pushRoom", json!({"authToken": users[0].token, "roomId": 1, "msg": "hi"}))
            .await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(b.recv_op(wire::OP_ROOM_SEND).await["msg"], "hi");
    let to = users[1].id.to_string();
    let body = json!({"authToken": users[0].token, "toUserId": to, "roomId": 1, "msg": "psst"});
    assert_eq!(common::post(&base, "/push/push", body).await["code"], 0);
    assert_eq!(b.recv_op(wire::OP_SINGLE_SEND).await["msg"], "psst");
    assert_eq!(a.recv_op(wire::OP_ROOM_SEND).await["msg"], "hi");
    a.close().await;
    b.close().await;
    assert!(tokio::task::spawn_blocking(move || interrupt(child)).await.unwrap(), "stops cleanly");

    let stderr = std::fs::read_to_string(&err).unwrap();
    let mut records = json_records("stderr", &stderr);
    records.extend(json_records("stdout", &std::fs::read_to_string(&out).unwrap()));
    assert!(records.len() > 20, "debug logging was on:\n{stderr}");
    let said = |level: &str, message: &str| {
        records
            .iter()
            .any(|r| r["level"] == level && r["message"].as_str().is_some_and(|m| m.contains(message)))
    };
    assert!(said("INFO", "gochat-rs is up") && said("INFO", "stopping"), "the banner is logged:\n{stderr}");
    assert!(said("DEBUG", ""), "debug records too");
    let listening = records.iter().find(|r| r["message"] == "control listening").expect("control listening");
    assert_eq!(listening["fields"]["api_addr"], format!("127.0.0.1:{api}"), "fields keep their names");
    assert_eq!(listening["fields"]["https"], false, "and their types");

    // From the environment; and an error that stops the start is a record as well.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&format!("127.0.0.1:{api}"), &busy)).unwrap();
    let out = gochat()
        .args(["--config", path.to_str().unwrap(), "up"])
        .env("GOCHAT_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the API's port is taken");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let records = json_records("stderr", &stderr);
    json_records("stdout", &String::from_utf8_lossy(&out.stdout));
    assert!(
        records.iter().any(|r| r["level"] == "ERROR" && r["message"].as_str().unwrap().contains(&busy)),
        "the error names the address:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
