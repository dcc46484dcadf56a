//! The server API over HTTP: `POST /api/<method>` with a JSON object in gochat's field names
//! (`roomId`, `toUserId`, `toUserIds`, `userId`, `msg`, `fromUserName`), answered with a JSON
//! object and a standard status: 200, or 400, 401, 403, 404, 405, 413, 429 (with
//! `Retry-After`), 503, each with `{"error": <kind>, "message": <why>}`. No CORS: it is for
//! backends, never for pages.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method as HttpMethod, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use gochat_proto::rest::{parse_body, RequestError};
use gochat_proto::wire::lenient_id;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Method, Publication, ServerApi};
use crate::limits::retry_secs;
use crate::logic::Presence;
use crate::metrics::API_HTTP;

/// The routes under `/api`, for control's REST router; bodies at most `max_body` bytes.
pub(crate) fn router(api: Arc<ServerApi>, max_body: usize) -> Router {
    Router::new()
        .route("/{method}", axum::routing::any(call))
        .with_state((api, max_body))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
}

async fn call(
    State((api, max_body)): State<(Arc<ServerApi>, usize)>,
    Path(name): Path<String>,
    http_method: HttpMethod,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let Some(method) = Method::parse(&name) else {
        let known: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        let why = format!("no server API method {name:?}; there are {}", known.join(", "));
        return error(&ApiError::NotFound(why));
    };
    let answer = async {
        if http_method != HttpMethod::POST {
            return Err(None);
        }
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        api.authorize(method, authorization)?;
        let body = match body {
            Ok(b) => b,
            Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
                return Err(Some(ApiError::TooLarge(format!(
                    "request body too large (max {max_body} bytes)"
                ))))
            }
            Err(rejection) => {
                return Err(Some(ApiError::BadRequest(format!(
                    "request body refused: {}",
                    rejection.body_text()
                ))))
            }
        };
        Ok(answer(&api, method, &body).await?)
    }
    .await;
    let (res, outcome) = match answer {
        Ok(value) => ((StatusCode::OK, json_body(&value)).into_response(), "ok"),
        Err(None) => {
            let body = json!({"error": "method_not_allowed", "message": "use POST"});
            let mut res = (StatusCode::METHOD_NOT_ALLOWED, json_body(&body)).into_response();
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            (res, "method_not_allowed")
        }
        Err(Some(e)) => (error(&e), e.kind()),
    };
    api.counts.record(API_HTTP, method, outcome, started.elapsed());
    res
}

fn json_body(value: &Value) -> ([(header::HeaderName, HeaderValue); 1], Vec<u8>) {
    let content_type = HeaderValue::from_static("application/json");
    ([(header::CONTENT_TYPE, content_type)], serde_json::to_vec(value).expect("JSON values serialize"))
}

/// The status an error answers with.
pub(crate) fn status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::Off | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn error(e: &ApiError) -> Response {
    let mut res = (status(e), json_body(&json!({"error": e.kind(), "message": e.message()}))).into_response();
    match e {
        ApiError::TooMany(wait) => {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(*wait)));
        }
        ApiError::Unauthorized(_) => {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("apikey"));
        }
        _ => {}
    }
    res
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::BadBody(m) => ApiError::BadRequest(m),
            RequestError::UnknownRoute | RequestError::Session => ApiError::BadRequest("bad request".into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishBody {
    msg: String,
    #[serde(default, deserialize_with = "lenient_id")]
    room_id: u64,
    #[serde(default, deserialize_with = "lenient_id")]
    to_user_id: u64,
    #[serde(default)]
    to_user_ids: Vec<Id>,
    #[serde(default)]
    from_user_name: Option<String>,
}

/// An id in a list, as gochat's ids are elsewhere: a number or a numeric string.
#[derive(Deserialize)]
struct Id(#[serde(deserialize_with = "lenient_id")] u64);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BroadcastBody {
    msg: String,
    #[serde(default)]
    from_user_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DisconnectBody {
    #[serde(deserialize_with = "lenient_id")]
    user_id: u64,
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KickBody {
    #[serde(deserialize_with = "lenient_id")]
    user_id: u64,
    #[serde(deserialize_with = "lenient_id")]
    room_id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PresenceBody {
    #[serde(default, deserialize_with = "lenient_id")]
    room_id: u64,
    #[serde(default, deserialize_with = "lenient_id")]
    user_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfoBody {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HistoryBody {
    #[serde(deserialize_with = "lenient_id")]
    room_id: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// Runs `method` with `body`; the JSON it answers.
async fn answer(api: &ServerApi, method: Method, body: &[u8]) -> Result<Value, ApiError> {
    Ok(match method {
        Method::Publish => {
            let b: PublishBody = parse_body(body)?;
            let mut users: Vec<u64> = b.to_user_ids.iter().map(|id| id.0).collect();
            if b.to_user_id != 0 {
                users.insert(0, b.to_user_id);
            }
            match api.publish(b.from_user_name.as_deref(), b.room_id, &users, &b.msg).await? {
                Publication::Room { id, epoch, seq } => {
                    json!({"msgId": id.to_string(), "epoch": epoch, "seq": seq})
                }
                Publication::Users(results) => {
                    // One user named alone: its failure is the call's.
                    if b.to_user_ids.is_empty() {
                        if let Some((_, Err(e))) = results.first() {
                            return Err(e.clone());
                        }
                    }
                    let users: Vec<Value> = results
                        .into_iter()
                        .map(|(user, sent)| match sent {
                            Ok(id) => json!({"toUserId": user, "msgId": id.to_string()}),
                            Err(e) => json!({"toUserId": user, "error": e.kind(), "message": e.message()}),
                        })
                        .collect();
                    json!({"users": users})
                }
            }
        }
        Method::Broadcast => {
            let b: BroadcastBody = parse_body(body)?;
            let id = api.broadcast(b.from_user_name.as_deref(), &b.msg).await?;
            json!({"msgId": id.to_string()})
        }
        Method::Disconnect => {
            let b: DisconnectBody = parse_body(body)?;
            let connections = api.disconnect(b.user_id, b.code, b.reason.as_deref()).await?;
            json!({"connections": connections})
        }
        Method::Kick => {
            let b: KickBody = parse_body(body)?;
            json!({"wasMember": api.kick(b.user_id, b.room_id).await?})
        }
        Method::Presence => {
            let b: PresenceBody = parse_body(body)?;
            match api.presence(b.room_id, b.user_id).await? {
                Presence::Room { count, members } => {
                    json!({"roomId": b.room_id, "count": count, "members": members})
                }
                Presence::User { online, connections } => {
                    json!({"userId": b.user_id, "online": online, "connections": connections})
                }
            }
        }
        Method::Info => {
            let _: InfoBody = parse_body(body)?;
            let nodes: Vec<Value> = api
                .info()
                .await?
                .into_iter()
                .map(|(n, age_ms)| {
                    json!({"kind": n.kind.name(), "id": n.id, "version": n.version, "connections": n.connections, "ageMs": age_ms})
                })
                .collect();
            json!({"nodes": nodes})
        }
        Method::History => {
            let b: HistoryBody = parse_body(body)?;
            let (position, bodies) = api.history(b.room_id, b.limit).await?;
            // Stored bodies are the JSON objects clients were sent.
            let messages: Vec<Value> = bodies.iter().filter_map(|b| serde_json::from_slice(b).ok()).collect();
            json!({"roomId": b.room_id, "epoch": position.epoch, "seq": position.seq, "messages": messages})
        }
    })
}
