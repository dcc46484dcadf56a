//! gochat's REST API, byte for byte: `POST` + JSON body, HTTP 200 with the envelope
//! `{"code","message","data"}`, CORS open, the session token in the body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gochat_proto::wire;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::{client_key, retry_secs, RateLimits, TrustedProxies};
use crate::logic::{Logic, LogicError};
use crate::state::Session;
use crate::ControlConfig;

pub const CODE_SUCCESS: i64 = 0;
pub const CODE_FAIL: i64 = 1;
pub const CODE_UNKNOWN: i64 = -1;
pub const CODE_SESSION: i64 = 40000;

#[derive(Serialize)]
struct Envelope {
    code: i64,
    message: String,
    data: Value,
}

/// gochat's envelope, as the bytes of a response body.
pub fn envelope(code: i64, message: impl Into<String>, data: Value) -> Vec<u8> {
    serde_json::to_vec(&Envelope { code, message: message.into(), data }).expect("envelope")
}

fn reply(code: i64, message: impl Into<String>, data: Value) -> Response {
    let body = envelope(code, message, data);
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    cors(h);
    res
}

fn cors(h: &mut axum::http::HeaderMap) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Origin, X-Requested-With, Content-Type, Accept"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS, POST, PUT, DELETE"),
    );
}

fn success(message: &str, data: Value) -> Response {
    reply(CODE_SUCCESS, message, data)
}

fn fail(message: impl Into<String>) -> Response {
    reply(CODE_FAIL, message, Value::Null)
}

fn from_error(e: LogicError) -> Response {
    match e {
        LogicError::Refused(m) => fail(m),
        LogicError::Session => reply(CODE_SESSION, "Session error", Value::Null),
        LogicError::Internal(m) => reply(CODE_UNKNOWN, m, Value::Null),
    }
}

/// What the REST handlers share.
struct Api {
    logic: Arc<Logic>,
    limits: Arc<RateLimits>,
    proxies: TrustedProxies,
    max_body: usize,
}

/// The REST router; serve it with connect info (`SocketAddr`), which the per-address rate
/// limits key on.
pub fn router(logic: Arc<Logic>, limits: Arc<RateLimits>, cfg: &ControlConfig) -> Router {
    let proxies = TrustedProxies::new(&cfg.trusted_proxies).expect("validated with the config");
    let api = Api { logic, limits, proxies, max_body: cfg.max_body_bytes };
    Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(api))
        .layer(axum::extract::DefaultBodyLimit::max(cfg.max_body_bytes))
}

/// Why a route did not succeed.
enum Refusal {
    Logic(LogicError),
    /// A rate limit: retry after this long.
    TooMany(Duration),
}

impl From<LogicError> for Refusal {
    fn from(e: LogicError) -> Self {
        Self::Logic(e)
    }
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Logic(e) => from_error(e),
        Refusal::TooMany(wait) => {
            let secs = retry_secs(wait);
            let mut res = fail(format!("too many requests, retry in {secs} s"));
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            res
        }
    }
}

async fn dispatch(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if method == Method::OPTIONS {
        let mut res = (StatusCode::OK, "null").into_response();
        cors(res.headers_mut());
        return res;
    }
    if method != Method::POST {
        return fail("please check request url !");
    }
    // Before anything else, so a refused client costs no parsing and no password hash.
    let per_address = match uri.path() {
        "/user/login" => Some(&api.limits.login),
        "/user/register" => Some(&api.limits.register),
        _ => None,
    };
    if let Some(limit) = per_address {
        if let Err(wait) = limit.take(client_key(api.proxies.client(peer, &headers))) {
            return refused(Refusal::TooMany(wait));
        }
    }
    let body = match body {
        Ok(b) => b,
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            return fail(format!("request body too large (max {} bytes)", api.max_body))
        }
        Err(rejection) => return fail(format!("request body refused: {}", rejection.body_text())),
    };
    api.route(uri.path(), &body).await.unwrap_or_else(refused)
}

impl Api {
    async fn route(&self, path: &str, body: &[u8]) -> Result<Response, Refusal> {
        let logic = &self.logic;
        let empty = || Value::String(String::new());
        Ok(match path {
            "/user/register" => {
                let c = credentials(body)?;
                let token = logic.register(&c.user_name, &c.pass_word).await?;
                success("register success", Value::String(token))
            }
            "/user/login" => {
                let c = credentials(body)?;
                let token = logic.login(&c.user_name, &c.pass_word).await?;
                success("login success", Value::String(token))
            }
            "/user/checkAuth" => {
                let s = session(logic, body).await?;
                success("auth success", serde_json::json!({"userId": s.user_id, "userName": s.user_name}))
            }
            "/user/logout" => {
                logic.logout(&token(body)?).await?;
                success("logout ok!", Value::Null)
            }
            "/push/push" => {
                let from = self.pusher(body).await?;
                let b: PushBody = parse(body)?;
                logic.push_user(&from, b.to_user_id, b.room_id, &b.msg).await?;
                success("ok", Value::Null)
            }
            "/push/pushRoom" => {
                let from = self.pusher(body).await?;
                let b: RoomBody = parse(body)?;
                logic.push_room(&from, b.room_id, &b.msg).await?;
                success("ok", empty())
            }
            "/push/count" => {
                self.pusher(body).await?;
                logic.push_count(parse::<RoomOnly>(body)?.room_id).await?;
                success("ok", empty())
            }
            "/push/getRoomInfo" => {
                self.pusher(body).await?;
                logic.push_room_info(parse::<RoomOnly>(body)?.room_id).await?;
                success("ok", empty())
            }
            _ => fail("please check request url !"),
        })
    }

    /// The sender of a push route, within its rate limit.
    async fn pusher(&self, body: &[u8]) -> Result<Session, Refusal> {
        let from = session(&self.logic, body).await?;
        self.limits.push.take(from.user_id).map_err(Refusal::TooMany)?;
        Ok(from)
    }
}

/// Parses a route's body, a JSON object; a bad body is a code 1 with serde's explanation.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, LogicError> {
    let bad = |why: &dyn std::fmt::Display| LogicError::Refused(format!("bad request body: {why}"));
    // serde would take a JSON array for a struct, its fields in order.
    match body.trim_ascii_start().first() {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| bad(&e)),
        None => Err(bad(&"empty, expected a JSON object")),
        Some(_) => Err(bad(&"expected a JSON object")),
    }
}

/// A `/user/register` or `/user/login` body.
#[derive(Deserialize)]
pub struct Credentials {
    #[serde(rename = "userName")]
    pub user_name: String,
    #[serde(rename = "passWord")]
    pub pass_word: String,
}

pub fn credentials(body: &[u8]) -> Result<Credentials, LogicError> {
    parse(body)
}

#[derive(Deserialize)]
struct AuthOnly {
    #[serde(rename = "authToken")]
    auth_token: String,
}

/// The body's `authToken`; gochat checks it before the route's own fields, so a missing or
/// malformed one is a session error (40000), not a bad body.
fn token(body: &[u8]) -> Result<String, LogicError> {
    parse::<AuthOnly>(body).map(|a| a.auth_token).map_err(|_| LogicError::Session)
}

async fn session(logic: &Logic, body: &[u8]) -> Result<Session, LogicError> {
    logic.check_auth(&token(body)?).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushBody {
    msg: String,
    #[serde(deserialize_with = "wire::lenient_id")]
    to_user_id: u64,
    #[serde(default, deserialize_with = "wire::lenient_id")]
    room_id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomBody {
    msg: String,
    #[serde(deserialize_with = "wire::lenient_id")]
    room_id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomOnly {
    #[serde(deserialize_with = "wire::lenient_id")]
    room_id: u64,
}
