//! docs/openapi.yaml against the server: the paths it describes are the routes the server
//! answers (gochat's `Route::ALL`, the server API's `Method::ALL`), and every example is real —
//! each request example is sent to `gochat up` and answered with the code or status its answer
//! example shows, and every answer example has the fields and JSON types of the real answer.
//!
//! Request and answer examples pair by name. An answer example without a request example of
//! its name is one of the server API's refusals that do not depend on the body (no key, a
//! read-only key, not a `POST`, …): the test provokes it by that name (`provoke`).

use std::collections::BTreeSet;

use gochat_control::server_api::{Method, HTTP_PREFIX};
use gochat_proto::rest::Route;
use serde_json::{json, Map, Value};

use crate::common::{self, test_config, Server, User, Ws};

const SPEC: &str = include_str!("../../docs/openapi.yaml");

/// The session token the examples show; a live one replaces it before an example is sent.
const EXAMPLE_TOKEN: &str = "3b9f2c7e41d05a8e6f1c9b2d7a4e0f5c8b3d6a1e9f2c7b40";
/// The users the examples name, by the ids a fresh `gochat up` gives its demo users; the live
/// ids replace them before an example is sent.
const EXAMPLE_USERS: [(u64, &str); 2] = [(1, "demo"), (2, "test")];
/// The room the examples' users are in (2 is a room they are not in).
const ROOM: u64 = 1;

const KEY: &str = "openapi-key-0123456789abcdef0123456789";
const READ_KEY: &str = "openapi-read-0123456789abcdef0123456789";

fn spec() -> Value {
    serde_yaml_ng::from_str(SPEC).expect("docs/openapi.yaml is YAML")
}

/// What `v` stands for: the target of its local `$ref`, or `v`.
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("{reference} is not local"));
            let target = spec.pointer(pointer).unwrap_or_else(|| panic!("{reference} points nowhere"));
            resolve(spec, target)
        }
        None => v,
    }
}

/// The named examples of a request body or an answer: name → value.
fn examples<'a>(spec: &'a Value, body: &'a Value) -> Vec<(&'a str, &'a Value)> {
    let examples = resolve(spec, body).pointer("/content/application~1json/examples");
    let Some(examples) = examples.and_then(Value::as_object) else { return Vec::new() };
    examples.iter().map(|(name, e)| (name.as_str(), &resolve(spec, e)["value"])).collect()
}

/// The `POST` a path describes.
struct Operation<'a> {
    path: &'a str,
    op: &'a Value,
    requests: Vec<(&'a str, &'a Value)>,
    /// (status, example name, value), for every answer example.
    answers: Vec<(u16, &'a str, &'a Value)>,
    /// Every documented status.
    statuses: Vec<u16>,
}

fn operation<'a>(spec: &'a Value, path: &'a str) -> Operation<'a> {
    let item = spec["paths"][path].as_object().unwrap_or_else(|| panic!("{path} is not described"));
    let methods: Vec<&String> = item.keys().collect();
    assert_eq!(methods, ["post"], "{path}: every route is a POST, and only a POST");
    let op = &item["post"];
    let requests = examples(spec, &op["requestBody"]);
    assert!(!requests.is_empty(), "{path}: no request example");
    let (mut answers, mut statuses) = (Vec::new(), Vec::new());
    for (status, answer) in op["responses"].as_object().expect("responses") {
        let status: u16 = status.parse().unwrap_or_else(|_| panic!("{path}: status {status}"));
        statuses.push(status);
        answers.extend(examples(spec, answer).into_iter().map(|(name, v)| (status, name, v)));
    }
    Operation { path, op, requests, answers, statuses }
}

impl Operation<'_> {
    /// The answer example paired with the request example `name`: its status and value.
    fn answer(&self, name: &str) -> (u16, &Value) {
        let found = self.answers.iter().find(|(_, n, _)| *n == name);
        let (status, _, value) = found.unwrap_or_else(|| panic!("{}: no answer example {name:?}", self.path));
        (*status, value)
    }

    fn requested(&self, name: &str) -> bool {
        self.requests.iter().any(|(n, _)| *n == name)
    }
}

/// Whether `doc` (an example) has the fields and JSON types of `real` (an answer) at `at`: the
/// same keys in every object and the same type in every place; values may differ. An object
/// keyed by ids (`members`) is a map: its values are compared, not its keys. Array items are
/// compared in order, the shorter array's last item standing for the items it lacks.
fn same_shape(doc: &Value, real: &Value, at: &str) -> Result<(), String> {
    let id_map =
        |m: &Map<String, Value>| !m.is_empty() && m.keys().all(|k| k.bytes().all(|b| b.is_ascii_digit()));
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) if id_map(d) && id_map(r) => {
            let (first_d, first_r) = (d.values().next().unwrap(), r.values().next().unwrap());
            d.values().try_for_each(|v| same_shape(v, first_r, &format!("{at}.*")))?;
            r.values().try_for_each(|v| same_shape(first_d, v, &format!("{at}.*")))
        }
        (Value::Object(d), Value::Object(r)) => {
            let (dk, rk): (BTreeSet<&String>, BTreeSet<&String>) = (d.keys().collect(), r.keys().collect());
            if dk != rk {
                return Err(format!("{at}: fields {dk:?} documented, {rk:?} answered"));
            }
            d.iter().try_for_each(|(k, v)| same_shape(v, &r[k], &format!("{at}.{k}")))
        }
        (Value::Array(d), Value::Array(r)) => {
            if d.is_empty() != r.is_empty() {
                return Err(format!("{at}: {} items documented, {} answered", d.len(), r.len()));
            }
            (0..d.len().max(r.len())).try_for_each(|i| {
                same_shape(&d[i.min(d.len() - 1)], &r[i.min(r.len() - 1)], &format!("{at}[{i}]"))
            })
        }
        _ if kind(doc) == kind(real) => Ok(()),
        _ => Err(format!("{at}: {} documented, {} answered", kind(doc), kind(real))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn assert_same_shape(path: &str, name: &str, doc: &Value, real: &Value) {
    if let Err(why) = same_shape(doc, real, "answer") {
        panic!("{path}, example {name:?}: {why}\n  documented: {doc}\n  answered:   {real}");
    }
}

/// The live users the examples name: (example id, user).
struct Users(Vec<(u64, User)>);

impl Users {
    async fn log_in(s: &Server) -> Self {
        let mut users = Vec::new();
        for (example_id, name) in EXAMPLE_USERS {
            users.push((example_id, log_in(s, name).await));
        }
        Self(users)
    }

    /// Sockets of every user, in the examples' room.
    async fn sockets(&self, s: &Server) -> Vec<Ws> {
        let mut sockets = Vec::new();
        for (_, user) in &self.0 {
            sockets.push(s.ws(user, ROOM).await);
        }
        sockets
    }

    /// `example` as it is sent: the live token for the example's, live ids for the example's
    /// users' (numbers stay numbers, strings strings).
    fn live(&self, example: &Value, token: &str) -> Value {
        let id = |v: &Value| {
            let live = |n: u64| self.0.iter().find(|(e, _)| *e == n).map_or(n, |(_, u)| u.id);
            match v {
                Value::Number(n) => json!(live(n.as_u64().expect("an id"))),
                Value::String(s) => {
                    s.parse::<u64>().map_or_else(|_| v.clone(), |n| json!(live(n).to_string()))
                }
                _ => v.clone(),
            }
        };
        match example {
            Value::String(s) if s == EXAMPLE_TOKEN => json!(token),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let v = match (k.as_str(), v) {
                            ("userId" | "toUserId", _) => id(v),
                            ("toUserIds", Value::Array(ids)) => ids.iter().map(&id).collect(),
                            _ => self.live(v, token),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => items.iter().map(|v| self.live(v, token)).collect(),
            _ => example.clone(),
        }
    }
}

/// A new session of the demo user `name` (password `111111`).
async fn log_in(s: &Server, name: &str) -> User {
    let r = s.api("/user/login", json!({"userName": name, "passWord": "111111"})).await;
    assert_eq!(r["code"], 0, "{r}");
    let token = r["data"].as_str().unwrap().to_string();
    let auth = s.api("/user/checkAuth", json!({"authToken": token})).await;
    User { token, id: auth["data"]["userId"].as_u64().unwrap(), name: name.into() }
}

#[test]
fn the_described_paths_are_the_served_routes() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let described: BTreeSet<String> = spec["paths"].as_object().expect("paths").keys().cloned().collect();
    let served: BTreeSet<String> = Route::ALL
        .map(|r| r.path().to_string())
        .into_iter()
        .chain(Method::ALL.map(|m| format!("{HTTP_PREFIX}/{}", m.name())))
        .collect();
    let undescribed: Vec<_> = served.difference(&described).collect();
    let not_served: Vec<_> = described.difference(&served).collect();
    assert!(undescribed.is_empty(), "served but not described in docs/openapi.yaml: {undescribed:?}");
    assert!(not_served.is_empty(), "described in docs/openapi.yaml but not served: {not_served:?}");

    // The server API's key, as the server reads it; gochat's routes take theirs in the body.
    let scheme = &spec["components"]["securitySchemes"]["apiKey"];
    assert_eq!(
        (&scheme["type"], &scheme["in"], &scheme["name"]),
        (&json!("apiKey"), &json!("header"), &json!("Authorization"))
    );
    for path in &described {
        let security = &operation(&spec, path).op["security"];
        if path.starts_with(&format!("{HTTP_PREFIX}/")) {
            assert_eq!(security, &json!([{"apiKey": []}]), "{path}");
        } else {
            assert!(security.is_null(), "{path}: gochat's routes take no key");
        }
    }
}

#[tokio::test]
async fn gochat_route_examples_are_answered_as_documented() {
    let spec = spec();
    let s = Server::start().await;
    let users = Users::log_in(&s).await;
    // Rooms are closed: `pushRoom` and `history` need a socket in the room, `history` messages.
    let _sockets = users.sockets(&s).await;
    for (_, user) in &users.0 {
        assert_eq!(s.push_room(user, ROOM, "hello room").await["code"], 0);
    }
    for route in Route::ALL {
        let op = operation(&spec, route.path());
        for (status, name, _) in &op.answers {
            assert_eq!(*status, 200, "{}, example {name:?}: gochat answers 200 always", op.path);
            assert!(op.requested(name), "{}: answer example {name:?} has no request example", op.path);
        }
        assert_eq!(op.statuses, [200], "{}: gochat answers 200 always", op.path);
        for (name, example) in &op.requests {
            // A session of its own: the logout example ends it.
            let token = log_in(&s, "demo").await.token;
            let real = s.api(op.path, users.live(example, &token)).await;
            let (_, doc) = op.answer(name);
            assert_eq!(real["code"], doc["code"], "{}, example {name:?}: {real}", op.path);
            assert_same_shape(op.path, name, doc, &real);
        }
    }
    s.shutdown().await;
}

fn server_api_config() -> gochat::Config {
    let mut cfg = test_config();
    cfg.control.api_keys = vec![KEY.into()];
    cfg.control.api_read_keys = vec![READ_KEY.into()];
    cfg
}

/// POSTs `body` to `path` with `key` (none: no header); the status and the JSON answer.
async fn call(s: &Server, key: Option<&str>, path: &str, body: String) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(s.api_url(path)).body(body);
    if let Some(key) = key {
        req = req.header("Authorization", format!("apikey {key}"));
    }
    answer(req).await
}

async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("REST reachable");
    let status = res.status().as_u16();
    (status, res.json().await.expect("the server API answers JSON"))
}

/// The servers the server API's refusals are provoked on.
struct Servers {
    main: Server,
    /// One call a second per key.
    limited: Server,
    /// No key: the server API is off.
    off: Server,
}

/// The answer to the request that an answer example named `name` documents without a request
/// example: a refusal that does not depend on the body.
async fn provoke(servers: &Servers, path: &str, name: &str) -> (u16, Value) {
    let s = &servers.main;
    match name {
        "noKey" => call(s, None, path, "{}".into()).await,
        "unknownKey" => call(s, Some("unknown-key-0123456789abcdef0123456789"), path, "{}".into()).await,
        "readOnlyKey" => call(s, Some(READ_KEY), path, "{}".into()).await,
        "notPost" => {
            answer(
                reqwest::Client::new().get(s.api_url(path)).header("Authorization", format!("apikey {KEY}")),
            )
            .await
        }
        "tooLarge" => {
            let max = server_api_config().control.max_body_bytes;
            call(s, Some(KEY), path, format!(r#"{{"msg":"{}"}}"#, "x".repeat(max))).await
        }
        "rateLimited" => {
            // Calls come faster than one a second: the bucket runs dry within a few.
            for _ in 0..50 {
                let answer = call(&servers.limited, Some(KEY), path, "{}".into()).await;
                if answer.0 == 429 {
                    return answer;
                }
            }
            panic!("{path}: never rate-limited")
        }
        "apiOff" => call(&servers.off, Some(KEY), path, "{}".into()).await,
        other => panic!(
            "{path}: answer example {other:?} has no request example of its name, and the test knows no \
             other way to provoke it"
        ),
    }
}

#[tokio::test]
async fn server_api_examples_are_answered_as_documented() {
    let spec = spec();
    let mut limited = server_api_config();
    (limited.control.api_requests_per_second, limited.control.api_request_burst) = (1, 1);
    let servers = Servers {
        main: Server::start_with(server_api_config()).await,
        limited: Server::start_with(limited).await,
        off: Server::start().await,
    };
    let s = &servers.main;
    let users = Users::log_in(s).await;
    {
        let _sockets = users.sockets(s).await;
        for (_, user) in &users.0 {
            assert_eq!(s.push_room(user, ROOM, "hello room").await["code"], 0);
        }
    }
    // As in the example: a control, a gateway and a worker.
    common::eventually("every role reported", || async {
        let (_, info) = call(s, Some(KEY), &format!("{HTTP_PREFIX}/info"), "{}".into()).await;
        let kinds: BTreeSet<&str> =
            info["nodes"].as_array().unwrap().iter().filter_map(|n| n["kind"].as_str()).collect();
        kinds.len() == 3
    })
    .await;

    for method in Method::ALL {
        let path = format!("{HTTP_PREFIX}/{}", method.name());
        let op = operation(&spec, &path);
        for (name, example) in &op.requests {
            // Sockets of their own: kick and disconnect take them away.
            let _sockets = users.sockets(s).await;
            let (status, real) = call(s, Some(KEY), &path, users.live(example, "").to_string()).await;
            let (doc_status, doc) = op.answer(name);
            assert_eq!(status, doc_status, "{path}, example {name:?}: {real}");
            assert_same_shape(&path, name, doc, &real);
        }
        for (doc_status, name, doc) in op.answers.iter().filter(|(_, name, _)| !op.requested(name)) {
            let (status, real) = provoke(&servers, &path, name).await;
            assert_eq!(status, *doc_status, "{path}, example {name:?}: {real}");
            assert_same_shape(&path, name, doc, &real);
        }
        // A store or the queue failing is the one refusal not provoked here.
        for status in op.statuses.iter().filter(|s| **s != 503) {
            let shown = op.answers.iter().any(|(s, _, _)| s == status);
            assert!(shown, "{path}: status {status} has no answer example");
        }
    }
    for s in [servers.main, servers.limited, servers.off] {
        s.shutdown().await;
    }
}
