//! gochat's REST API, byte for byte: `POST` + JSON body, HTTP 200 with the envelope
//! `{"code","message","data"}`, CORS open, the session token in the body. Routes and bodies are
//! parsed by [`gochat_proto::rest`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
pub use gochat_proto::rest::Credentials;
use gochat_proto::rest::{self, Action, Request, RequestError, Route};
use serde::Serialize;
use serde_json::Value;

use crate::limits::{client_key, retry_secs, RateLimits, TrustedProxies};
use crate::logic::{Logic, LogicError};
use crate::ControlConfig;

pub(crate) const CODE_SUCCESS: i64 = 0;
pub(crate) const CODE_FAIL: i64 = 1;
pub(crate) const CODE_UNKNOWN: i64 = -1;
pub(crate) const CODE_SESSION: i64 = 40000;

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
    res.extensions_mut().insert(crate::metrics::Code(code));
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
        LogicError::Refused(m) | LogicError::NotFound(m) | LogicError::TooLarge(m) => fail(m),
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
pub(crate) fn router(logic: Arc<Logic>, limits: Arc<RateLimits>, cfg: &ControlConfig) -> Router {
    let proxies = TrustedProxies::new(&cfg.trusted_proxies).expect("validated with the config");
    let api = Api { logic, limits, proxies, max_body: cfg.max_body_bytes };
    Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(api))
        .layer(axum::extract::DefaultBodyLimit::max(cfg.max_body_bytes))
        .layer(axum::middleware::from_fn(crate::headers::api))
}

/// `app`, answering under `prefix` too: `{prefix}/user/login` as `/user/login`, for a proxy
/// that sends a path of the page's origin to the REST API as it is (`site_api_url = "/api"`).
pub(crate) fn also_under(app: Router, prefix: &str) -> Router {
    let prefix: Arc<str> = prefix.into();
    app.layer(axum::middleware::map_request_with_state(prefix, strip_prefix))
}

async fn strip_prefix(
    State(prefix): State<Arc<str>>,
    mut request: axum::extract::Request,
) -> axum::extract::Request {
    let uri = request.uri();
    let rest = uri.path().strip_prefix(&*prefix).filter(|rest| rest.is_empty() || rest.starts_with('/'));
    if let Some(rest) = rest {
        let path = if rest.is_empty() { "/" } else { rest };
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(pq) = path_and_query.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(stripped) = Uri::from_parts(parts) {
                *request.uri_mut() = stripped;
            }
        }
    }
    request
}

/// Why a route did not succeed.
enum Refusal {
    Logic(LogicError),
    /// A rate limit: retry after this long.
    TooMany(Duration),
    /// Failed logins of one account, from anywhere: retry after this long.
    AccountLocked(Duration),
}

impl From<LogicError> for Refusal {
    fn from(e: LogicError) -> Self {
        Self::Logic(e)
    }
}

impl From<RequestError> for Refusal {
    fn from(e: RequestError) -> Self {
        Self::Logic(e.into())
    }
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

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Logic(e) => from_error(e),
        Refusal::TooMany(wait) => retry_after(wait, "too many requests"),
        Refusal::AccountLocked(wait) => retry_after(wait, "too many failed logins for this account"),
    }
}

/// A refusal for a rate limit: `what`, and when to try again.
fn retry_after(wait: Duration, what: &str) -> Response {
    let secs = retry_secs(wait);
    let mut res = fail(format!("{what}, retry in {secs} s"));
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    res
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
    let client = client_key(api.proxies.client(peer, &headers));
    let per_address = match Route::parse(uri.path()) {
        Some(Route::Login) => Some(&api.limits.login),
        Some(Route::Register) => Some(&api.limits.register),
        _ => None,
    };
    if let Some(limit) = per_address {
        if let Err(wait) = limit.take(client) {
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
    api.route(uri.path(), &body, client).await.unwrap_or_else(refused)
}

impl Api {
    /// Answers the request at `path` with `body`, from `client` (its [`client_key`]).
    async fn route(&self, path: &str, body: &[u8], client: u128) -> Result<Response, Refusal> {
        let logic = &self.logic;
        let empty = || Value::String(String::new());
        Ok(match rest::parse_request(path, body)? {
            Request::Register(c) => {
                let token = logic.register(&c.user_name, &c.pass_word).await?;
                success("register success", Value::String(token))
            }
            Request::Login(c) => {
                // Failed logins count against the account, from any address but those it has
                // logged in from (so an attack from elsewhere does not lock its owner out);
                // anything but a failed login gives its token back.
                let limits = &self.limits;
                let account = limits.account_key(&c.user_name);
                let counted = !limits.known_clients.knows(account, client);
                if counted {
                    limits.login_account.take(account).map_err(Refusal::AccountLocked)?;
                }
                let login = logic.login(&c.user_name, &c.pass_word).await;
                if counted && !matches!(login, Err(LogicError::Refused(_))) {
                    limits.login_account.give_back(account);
                }
                if login.is_ok() {
                    limits.known_clients.remember(account, client);
                }
                success("login success", Value::String(login?))
            }
            Request::Logout { token } => {
                logic.logout(&token).await?;
                success("logout ok!", Value::Null)
            }
            Request::Authed { token, action } => {
                let from = logic.check_auth(&token).await?;
                // Right after the session, before the body's verdict: every push route counts.
                if path.starts_with("/push/") {
                    self.limits.push.take(from.user_id).map_err(Refusal::TooMany)?;
                }
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
                    Action::History { room_id, limit } => {
                        let (position, bodies) = logic.history(&from, room_id, limit).await?;
                        // Stored bodies are the JSON objects clients were sent.
                        let messages: Vec<Value> =
                            bodies.iter().filter_map(|b| serde_json::from_slice(b).ok()).collect();
                        let data = serde_json::json!({"epoch": position.epoch, "seq": position.seq, "messages": messages});
                        success("ok", data)
                    }
                }
            }
        })
    }
}

/// A `/user/register` or `/user/login` body.
pub fn credentials(body: &[u8]) -> Result<Credentials, LogicError> {
    Ok(rest::credentials(body)?)
}
