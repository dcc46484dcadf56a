//! gochat's REST API, byte for byte: `POST` + JSON body, HTTP 200 with the envelope
//! `{"code","message","data"}`, CORS open, the session token in the body. Routes and bodies are
//! parsed by [`gochat_proto::rest`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
pub use gochat_proto::rest::Credentials;
use gochat_proto::rest::{self, Action, Request, RequestError};
use serde::Serialize;
use serde_json::Value;

use crate::logic::{Logic, LogicError};

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
    Ok(match rest::parse_request(path, body)? {
        Request::Register(c) => {
            let token = logic.register(&c.user_name, &c.pass_word).await?;
            success("register success", Value::String(token))
        }
        Request::Login(c) => {
            let token = logic.login(&c.user_name, &c.pass_word).await?;
            success("login success", Value::String(token))
        }
        Request::Logout { token } => {
            logic.logout(&token).await?;
            success("logout ok!", Value::Null)
        }
        Request::Authed { token, action } => {
            let from = logic.check_auth(&token).await?;
            match action? {
                Action::CheckAuth => success(
                    "auth success",
                    serde_json::json!({"userId": from.user_id, "userName": from.user_name}),
                ),
                Action::Push { to_user_id, room_id, msg } => {
                    logic.push_user(&from, to_user_id, room_id, &msg).await?;
                    success("ok", Value::Null)
                }
                Action::PushRoom { room_id, msg } => {
                    logic.push_room(&from, room_id, &msg).await?;
                    success("ok", empty())
                }
                Action::Count { room_id } => {
                    logic.push_count(room_id).await?;
                    success("ok", empty())
                }
                Action::RoomInfo { room_id } => {
                    logic.push_room_info(room_id).await?;
                    success("ok", empty())
                }
            }
        }
    })
}

impl From<RequestError> for LogicError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::UnknownRoute => LogicError::Refused("please check request url !".into()),
            RequestError::Session => LogicError::Session,
            RequestError::BadBody(m) => LogicError::Refused(m),
        }
    }
}

/// A `/user/register` or `/user/login` body.
pub fn credentials(body: &[u8]) -> Result<Credentials, LogicError> {
    Ok(rest::credentials(body)?)
}
