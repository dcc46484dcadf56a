//! gochat's REST requests: the route a path names and the fields its JSON body carries. Pure
//! parsing (no state, no I/O), so control's routes and the fuzzers run the same code.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::wire::{clip_refusal, lenient_id};

/// Why a request was refused before anything was looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// No route at this path (gochat code 1, "please check request url !").
    UnknownRoute,
    /// The body's `authToken` is missing or malformed (gochat code 40000).
    Session,
    /// The body does not fit its route (gochat code 1); the message says why.
    BadBody(String),
}

/// A parsed REST request.
pub enum Request {
    Register(Credentials),
    Login(Credentials),
    Logout {
        token: String,
    },
    /// A route that needs a session. gochat checks the session before the route's own fields,
    /// so the body's verdict waits in `action` until the token has been checked.
    Authed {
        token: String,
        action: Result<Action, RequestError>,
    },
}

/// What an authenticated request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CheckAuth,
    Push {
        to_user_id: u64,
        room_id: u64,
        msg: String,
    },
    PushRoom {
        room_id: u64,
        msg: String,
    },
    Count {
        room_id: u64,
    },
    RoomInfo {
        room_id: u64,
    },
    /// The room's last messages (at most `limit`), for a client that must reload.
    History {
        room_id: u64,
        limit: Option<usize>,
    },
}

/// gochat's routes: the paths [`parse_request`] answers, each a `POST` with a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Register,
    Login,
    Logout,
    CheckAuth,
    Push,
    PushRoom,
    Count,
    RoomInfo,
    History,
}

impl Route {
    /// Every route, in the order of their metric labels.
    pub const ALL: [Route; 9] = [
        Route::Register,
        Route::Login,
        Route::Logout,
        Route::CheckAuth,
        Route::Push,
        Route::PushRoom,
        Route::Count,
        Route::RoomInfo,
        Route::History,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Route::Register => "/user/register",
            Route::Login => "/user/login",
            Route::Logout => "/user/logout",
            Route::CheckAuth => "/user/checkAuth",
            Route::Push => "/push/push",
            Route::PushRoom => "/push/pushRoom",
            Route::Count => "/push/count",
            Route::RoomInfo => "/push/getRoomInfo",
            Route::History => "/push/history",
        }
    }

    /// The route at `path`, exactly as written (gochat's router was case-sensitive).
    pub fn parse(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// Parses a `POST` to `path` with `body`.
pub fn parse_request(path: &str, body: &[u8]) -> Result<Request, RequestError> {
    let authed = |action: fn(&[u8]) -> Result<Action, RequestError>| {
        Ok(Request::Authed { token: token(body)?, action: action(body) })
    };
    match Route::parse(path).ok_or(RequestError::UnknownRoute)? {
        Route::Register => Ok(Request::Register(credentials(body)?)),
        Route::Login => Ok(Request::Login(credentials(body)?)),
        Route::Logout => Ok(Request::Logout { token: token(body)? }),
        Route::CheckAuth => authed(|_| Ok(Action::CheckAuth)),
        Route::Push => authed(|body| {
            let b: PushBody = parse_body(body)?;
            Ok(Action::Push { to_user_id: b.to_user_id, room_id: b.room_id, msg: b.msg })
        }),
        Route::PushRoom => authed(|body| {
            let b: RoomBody = parse_body(body)?;
            Ok(Action::PushRoom { room_id: b.room_id, msg: b.msg })
        }),
        Route::Count => authed(|body| Ok(Action::Count { room_id: parse_body::<RoomOnly>(body)?.room_id })),
        Route::RoomInfo => {
            authed(|body| Ok(Action::RoomInfo { room_id: parse_body::<RoomOnly>(body)?.room_id }))
        }
        Route::History => authed(|body| {
            let b: HistoryBody = parse_body(body)?;
            Ok(Action::History { room_id: b.room_id, limit: b.limit })
        }),
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

pub fn credentials(body: &[u8]) -> Result<Credentials, RequestError> {
    parse_body(body)
}

/// Parses a route's body, a JSON object; a bad body is a code 1 with serde's explanation.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    let bad =
        |why: &dyn std::fmt::Display| RequestError::BadBody(clip_refusal(format!("bad request body: {why}")));
    // serde would take a JSON array for a struct, its fields in order; gochat's Go decoder
    // wanted an object.
    match body.trim_ascii_start().first() {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| bad(&e)),
        None => Err(bad(&"empty, expected a JSON object")),
        Some(_) => Err(bad(&"expected a JSON object")),
    }
}

#[derive(Deserialize)]
struct AuthOnly {
    #[serde(rename = "authToken")]
    auth_token: String,
}

/// The body's `authToken`; gochat checks it before the route's own fields, so a missing or
/// malformed one is a session error (40000), not a bad body.
fn token(body: &[u8]) -> Result<String, RequestError> {
    parse_body::<AuthOnly>(body).map(|a| a.auth_token).map_err(|_| RequestError::Session)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushBody {
    msg: String,
    #[serde(deserialize_with = "lenient_id")]
    to_user_id: u64,
    #[serde(default, deserialize_with = "lenient_id")]
    room_id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomBody {
    msg: String,
    #[serde(deserialize_with = "lenient_id")]
    room_id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomOnly {
    #[serde(deserialize_with = "lenient_id")]
    room_id: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryBody {
    #[serde(deserialize_with = "lenient_id")]
    room_id: u64,
    #[serde(default)]
    limit: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(path: &str, body: &str) -> Result<Action, RequestError> {
        match parse_request(path, body.as_bytes()) {
            Ok(Request::Authed { token, action }) => {
                assert_eq!(token, "t");
                action
            }
            Ok(_) => panic!("{path} is not an authenticated route"),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn routes_and_bodies() {
        let Ok(Request::Login(c)) = parse_request("/user/login", br#"{"userName":"a","passWord":"b"}"#)
        else {
            panic!("a login")
        };
        assert_eq!((c.user_name.as_str(), c.pass_word.as_str()), ("a", "b"));
        assert!(matches!(parse_request("/user/register", b"{}"), Err(RequestError::BadBody(_))));
        assert!(matches!(parse_request("/nope", b"{}"), Err(RequestError::UnknownRoute)));
        assert_eq!(
            action("/push/push", r#"{"authToken":"t","msg":"m","toUserId":"2"}"#),
            Ok(Action::Push { to_user_id: 2, room_id: 0, msg: "m".into() })
        );
        assert_eq!(
            action("/push/pushRoom", r#"{"authToken":"t","msg":"m","roomId":1}"#),
            Ok(Action::PushRoom { room_id: 1, msg: "m".into() })
        );
        assert_eq!(
            action("/push/getRoomInfo", r#"{"authToken":"t","roomId":3}"#),
            Ok(Action::RoomInfo { room_id: 3 })
        );
        assert_eq!(
            action("/push/history", r#"{"authToken":"t","roomId":3,"limit":20}"#),
            Ok(Action::History { room_id: 3, limit: Some(20) })
        );
        assert_eq!(
            action("/push/history", r#"{"authToken":"t","roomId":"3"}"#),
            Ok(Action::History { room_id: 3, limit: None })
        );
        assert!(matches!(
            action("/push/history", r#"{"authToken":"t","roomId":3,"limit":-1}"#),
            Err(RequestError::BadBody(_))
        ));
    }

    #[test]
    fn every_route_is_listed_once_in_order_and_found_by_its_path() {
        // Metric labels are indexed by discriminant: `ALL` must list the routes in that order.
        assert!(Route::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        for route in Route::ALL {
            assert_eq!(Route::parse(route.path()), Some(route));
            assert!(!matches!(parse_request(route.path(), b"{}"), Err(RequestError::UnknownRoute)));
        }
        assert_eq!(Route::parse("/user/Login"), None);
        assert_eq!(Route::parse("/user/login/"), None);
    }

    #[test]
    fn the_session_is_judged_before_the_body() {
        assert!(matches!(parse_request("/push/count", br#"{"roomId":1}"#), Err(RequestError::Session)));
        assert!(matches!(parse_request("/user/logout", b"[]"), Err(RequestError::Session)));
        assert!(matches!(action("/push/count", r#"{"authToken":"t"}"#), Err(RequestError::BadBody(_))));
        assert_eq!(action("/user/checkAuth", r#"{"authToken":"t","x":[]}"#), Ok(Action::CheckAuth));
    }

    #[test]
    fn a_refusal_does_not_grow_with_the_body() {
        // serde quotes the offending value whole: a 60,000-byte room id.
        let body = format!(r#"{{"authToken":"t","roomId":"{}"}}"#, "x".repeat(60_000));
        let Err(RequestError::BadBody(message)) = action("/push/count", &body) else { panic!("a bad body") };
        assert!(message.len() <= crate::wire::MAX_REFUSAL, "{} bytes", message.len());
        assert!(message.starts_with("bad request body: \"xxx"), "{message}");
        assert!(message.contains("is not a valid id at line 1 column"), "{message}");
    }
}
