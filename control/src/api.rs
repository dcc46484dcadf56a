//! gochat's REST API, byte for byte: `POST` + JSON body, HTTP 200 with the envelope
//! `{"code","message","data"}`, CORS open, the session token in the body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gochat_proto::wire;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::logic::{Logic, LogicError};
use crate::state::Session;

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

/// The REST router. `max_body` bounds request bodies.
pub fn router(logic: Arc<Logic>, max_body: usize) -> Router {
    Router::new().fallback(dispatch).with_state(logic).layer(axum::extract::DefaultBodyLimit::max(max_body))
}

async fn dispatch(
    State(logic): State<Arc<Logic>>,
    method: Method,
    uri: Uri,
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
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return fail(format!("request body refused: {}", rejection.body_text())),
    };
    route(&logic, uri.path(), &body).await.unwrap_or_else(from_error)
}

async fn route(logic: &Logic, path: &str, body: &[u8]) -> Result<Response, LogicError> {
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
            let from = session(logic, body).await?;
            let b: PushBody = parse(body)?;
            logic.push_user(&from, b.to_user_id, b.room_id, &b.msg).await?;
            success("ok", Value::Null)
        }
        "/push/pushRoom" => {
            let from = session(logic, body).await?;
            let b: RoomBody = parse(body)?;
            logic.push_room(&from, b.room_id, &b.msg).await?;
            success("ok", empty())
        }
        "/push/count" => {
            session(logic, body).await?;
            logic.push_count(parse::<RoomOnly>(body)?.room_id).await?;
            success("ok", empty())
        }
        "/push/getRoomInfo" => {
            session(logic, body).await?;
            logic.push_room_info(parse::<RoomOnly>(body)?.room_id).await?;
            success("ok", empty())
        }
        _ => fail("please check request url !"),
    })
}

/// Parses a route's body; a bad body is a code 1 with serde's explanation.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, LogicError> {
    serde_json::from_slice(body).map_err(|e| LogicError::Refused(format!("bad request body: {e}")))
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
    serde_json::from_slice::<AuthOnly>(body).map(|a| a.auth_token).map_err(|_| LogicError::Session)
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
