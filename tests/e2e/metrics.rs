//! Every role's admin listener: what it exports moves with real traffic, and the Grafana
//! dashboard asks only for metrics some role exports.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::Server;
use gochat_proto::wire;

/// A scrape of `/metrics` at `addr`.
async fn scrape(addr: Option<SocketAddr>) -> String {
    let url = format!("http://{}/metrics", addr.expect("admin listener on"));
    let res = reqwest::get(&url).await.expect("metrics reachable");
    assert_eq!(res.headers()["content-type"], "text/plain; version=0.0.4");
    res.text().await.unwrap()
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The sample names a scrape may hold, from its `# TYPE` lines; checks that every sample
/// belongs to one.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        names.insert(name.to_string());
        if kind == "histogram" {
            names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        }
    }
    for sample in text.lines().filter(|l| !l.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap();
        assert!(names.contains(name), "{name} has no # TYPE line:\n{text}");
        assert!(sample.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{sample}");
    }
    names
}

/// Every `expr` in a Grafana dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value.as_str() {
                    Some(expr) if key == "expr" => out.push(expr.to_string()),
                    _ => exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| exprs(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_role_exports_metrics_that_move_and_the_dashboard_uses_only_those() {
    let mut cfg = common::test_config();
    let any = Some("127.0.0.1:0".parse().unwrap());
    (cfg.gateway.admin_listen, cfg.control.admin_listen, cfg.worker.admin_listen) = (any, any, any);
    let s = Server::start_with(cfg).await;
    let a = s.user("metrics").await;
    let mut ws = s.ws(&a, 61).await;
    let sent = s.push_room(&a, 61, "measured").await;
    assert_eq!(sent["code"], 0, "{sent}");
    ws.recv_op(wire::OP_ROOM_SEND).await;

    let up = &s.up;
    let (gateway, control, worker) = (up.gateway.admin_addr, up.control.admin_addr, up.worker.admin_addr);
    // The worker acknowledges its batch, and the gateway counts the hand-off, around the frame
    // reaching the client, not strictly before it.
    common::eventually("every role counted the message", || async {
        let (g, c, w) = (scrape(gateway).await, scrape(control).await, scrape(worker).await);
        value(&c, "gochat_control_enqueued_total", &["kind=\"room\""]) >= 1.0
            && value(&c, "gochat_control_requests_total", &["route=\"/push/pushRoom\"", "code=\"0\""]) >= 1.0
            && value(&c, "gochat_control_socket_auths_total", &["result=\"accepted\""]) >= 1.0
            && value(&w, "gochat_worker_batches_total", &["gateway=\"gateway-1\""]) >= 1.0
            && value(&w, "gochat_worker_queue_lag_seconds_count", &[]) >= 1.0
            && value(&w, "gochat_worker_push_seconds_count", &[]) >= 1.0
            && value(&g, "gochat_gateway_delivery_latency_seconds_count", &[]) >= 1.0
            && value(&g, "gochat_gateway_messages_total", &[]) >= 1.0
    })
    .await;
    let c = scrape(control).await;
    assert_eq!(value(&c, "gochat_control_requests_total", &["route=\"/push/pushRoom\""]), 1.0, "{c}");
    assert_eq!(
        value(&c, "gochat_control_request_duration_seconds_count", &["route=\"/push/pushRoom\""]),
        1.0
    );
    assert_eq!(value(&c, "gochat_control_enqueue_failures_total", &[]), 0.0);
    assert_eq!(value(&c, "gochat_control_room_joins_total", &["result=\"fresh\""]), 1.0, "the socket's join");
    let b = s.user("offline").await;
    let kept =
        s.api("/push/push", serde_json::json!({"authToken": a.token, "msg": "k", "toUserId": b.id})).await;
    assert_eq!(kept["code"], 0, "{kept}");
    let c = scrape(control).await;
    assert_eq!(value(&c, "gochat_control_kept_messages_total", &["result=\"kept\""]), 1.0);

    let mut names = BTreeSet::new();
    for text in [scrape(gateway).await, c, scrape(worker).await] {
        names.extend(exported(&text));
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/gochat.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 20, "{} queries", all.len());
    let mut used = BTreeSet::new();
    for expr in &all {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        used.extend(words.filter(|w| w.starts_with("gochat_")).map(str::to_string));
    }
    let unknown: Vec<_> = used.difference(&names).collect();
    assert!(unknown.is_empty(), "the dashboard asks for metrics no role exports: {unknown:?}");
    for role in ["gochat_gateway_", "gochat_worker_", "gochat_control_"] {
        assert!(used.iter().any(|n| n.starts_with(role)), "no {role}* panel");
    }
    s.shutdown().await;
}

/// `GET` of `path` on an admin listener: the status code and the JSON body.
async fn admin_get(addr: Option<SocketAddr>, path: &str) -> (u16, serde_json::Value) {
    let res = reqwest::get(format!("http://{}{path}", addr.expect("admin listener on"))).await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_tells_its_process_its_build_and_whether_it_is_alive_and_ready() {
    let mut cfg = common::test_config();
    let any = Some("127.0.0.1:0".parse().unwrap());
    (cfg.gateway.admin_listen, cfg.control.admin_listen, cfg.worker.admin_listen) = (any, any, any);
    let s = Server::start_with(cfg).await;
    let up = &s.up;
    let roles = [
        ("gateway", up.gateway.admin_addr),
        ("control", up.control.admin_addr),
        ("worker", up.worker.admin_addr),
    ];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for (role, addr) in roles {
        let text = scrape(addr).await;
        exported(&text);
        let rss = value(&text, "process_resident_memory_bytes", &[]);
        assert!(rss > 1e6 && rss < 1e10, "{role}: {rss}");
        let fds = value(&text, "process_open_fds", &[]);
        assert!(fds >= 10.0 && fds <= value(&text, "process_max_fds", &[]), "{role}: {fds} descriptors");
        assert!(value(&text, "process_cpu_seconds_total", &[]) > 0.0, "{role}");
        let started = value(&text, "process_start_time_seconds", &[]);
        assert!(started > now - 3600.0 && started <= now + 1.0, "{role}: started at {started}, now {now}");
        let build = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert_eq!(value(&text, "gochat_build_info", &[&build, &format!("role=\"{role}\"")]), 1.0, "{role}");
        assert_eq!(
            admin_get(addr, "/healthz").await,
            (200, serde_json::json!({"status": "alive", "role": role}))
        );
        common::eventually(&format!("{role} ready"), || async { admin_get(addr, "/readyz").await.0 == 200 })
            .await;
    }
    // A draining gateway is alive but not ready.
    let gateway = up.gateway.admin_addr;
    let drain = up.gateway.drain(std::time::Duration::from_secs(1));
    let check = async {
        common::eventually("a draining gateway not ready", || async {
            admin_get(gateway, "/readyz").await.0 == 503
        })
        .await;
        let (_, body) = admin_get(gateway, "/readyz").await;
        assert_eq!(body["reason"], "draining", "{body}");
        assert_eq!(admin_get(gateway, "/healthz").await.0, 200);
    };
    tokio::join!(drain, check);
    s.shutdown().await;
}
