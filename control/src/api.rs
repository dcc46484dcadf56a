//! gochat's REST API, byte for byte: `POST` + JSON body, HTTP 200 with the envelope
//! `{"code","message","data"}`, CORS open, the session token in the body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
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

fn reply(code: i64, message: impl Into<String>, data: Value) -> Response {
    let body = serde_json::to_vec(&Envelope {
        code,
        message: message.into(),
        data,
    })
    .expect("envelope");
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    cors(h);
    res
}

fn cors(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
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
    Router::new()
        .fallback(dispatch)
        .with_state(logic)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
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
    let logic = &*logic;
    match uri.path() {
        "/user/register" => register(logic, &body).await,
        "/user/login" => login(logic, &body).await,
        "/user/checkAuth" => {
            with_session(logic, &body, |s| async move {
                success(
                    "auth success",
                    serde_json::json!({"userId": s.user_id, "userName": s.user_name}),
                )
            })
            .await
        }
        "/user/logout" => logout(logic, &body),
        "/push/push" => with_session(logic, &body, |s| push(logic, &body, s)).await,
        "/push/pushRoom" => with_session(logic, &body, |s| push_room(logic, &body, s)).await,
        "/push/count" => with_session(logic, &body, |_| count(logic, &body)).await,
        "/push/getRoomInfo" => with_session(logic, &body, |_| room_info(logic, &body)).await,
        _ => fail("please check request url !"),
    }
}

/// Parses a route's body; a bad body is a code 1 with serde's explanation.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, LogicError> {
    serde_json::from_slice(body).map_err(|e| LogicError::Refused(format!("bad request body: {e}")))
}

#[derive(Deserialize)]
struct Credentials {
    #[serde(rename = "userName")]
    user_name: String,
    #[serde(rename = "passWord")]
    pass_word: String,
}

async fn register(logic: &Logic, body: &[u8]) -> Response {
    let c: Credentials = match parse(body) {
        Ok(c) => c,
        Err(e) => return from_error(e),
    };
    match logic.register(&c.user_name, &c.pass_word).await {
        Ok(token) => success("register success", Value::String(token)),
        Err(e) => from_error(e),
    }
}

async fn login(logic: &Logic, body: &[u8]) -> Response {
    let c: Credentials = match parse(body) {
        Ok(c) => c,
        Err(e) => return from_error(e),
    };
    match logic.login(&c.user_name, &c.pass_word).await {
        Ok(token) => success("login success", Value::String(token)),
        Err(e) => from_error(e),
    }
}

#[derive(Deserialize)]
struct AuthOnly {
    #[serde(rename = "authToken")]
    auth_token: String,
}

/// gochat checks the session before the route's own fields: no valid `authToken` → 40000.
async fn with_session<F, Fut>(logic: &Logic, body: &[u8], f: F) -> Response
where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let session = serde_json::from_slice::<AuthOnly>(body)
        .map_err(|_| LogicError::Session)
        .and_then(|a| logic.check_auth(&a.auth_token));
    match session {
        Ok(s) => f(s).await,
        Err(e) => from_error(e),
    }
}

fn logout(logic: &Logic, body: &[u8]) -> Response {
    let token = match serde_json::from_slice::<AuthOnly>(body) {
        Ok(a) => a.auth_token,
        Err(_) => return from_error(LogicError::Session),
    };
    match logic.logout(&token) {
        Ok(()) => success("logout ok!", Value::Null),
        Err(e) => from_error(e),
    }
}

/// gochat's clients send ids as numbers or numeric strings.
fn id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a valid id"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a valid id"))),
        other => Err(serde::de::Error::custom(format!(
            "{other} is not a valid id"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushBody {
    msg: String,
    #[serde(deserialize_with = "id")]
    to_user_id: u64,
    #[serde(default, deserialize_with = "id")]
    room_id: u64,
}

async fn push(logic: &Logic, body: &[u8], from: Session) -> Response {
    let b: PushBody = match parse(body) {
        Ok(b) => b,
        Err(e) => return from_error(e),
    };
    match logic
        .push_user(&from, b.to_user_id, b.room_id, &b.msg)
        .await
    {
        Ok(()) => success("ok", Value::Null),
        Err(e) => from_error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomBody {
    msg: String,
    #[serde(deserialize_with = "id")]
    room_id: u64,
}

async fn push_room(logic: &Logic, body: &[u8], from: Session) -> Response {
    let b: RoomBody = match parse(body) {
        Ok(b) => b,
        Err(e) => return from_error(e),
    };
    match logic.push_room(&from, b.room_id, &b.msg).await {
        Ok(()) => success("ok", Value::String(String::new())),
        Err(e) => from_error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomOnly {
    #[serde(deserialize_with = "id")]
    room_id: u64,
}

async fn count(logic: &Logic, body: &[u8]) -> Response {
    let b: RoomOnly = match parse(body) {
        Ok(b) => b,
        Err(e) => return from_error(e),
    };
    match logic.push_count(b.room_id).await {
        Ok(()) => success("ok", Value::String(String::new())),
        Err(e) => from_error(e),
    }
}

async fn room_info(logic: &Logic, body: &[u8]) -> Response {
    let b: RoomOnly = match parse(body) {
        Ok(b) => b,
        Err(e) => return from_error(e),
    };
    match logic.push_room_info(b.room_id).await {
        Ok(()) => success("ok", Value::String(String::new())),
        Err(e) => from_error(e),
    }
}
