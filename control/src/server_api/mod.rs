//! The server API, for application backends: publish to a room, to users and to everyone,
//! disconnect and kick users, read presence, the cluster's nodes and a room's history. Served
//! over HTTP (`POST /api/<method>` on the REST port, [`http`]) and gRPC (`gochat.api.ServerApi`
//! on the logic gRPC port, [`grpc`]); both go through [`ServerApi`], which checks the key and
//! its rate limit, then calls logic.
//!
//! Keys come from `[control] api_keys` (read and write) and `api_read_keys` (read only); the
//! API is off while there is none. A presented key is compared with every configured one in
//! time that does not depend on where they differ.

pub(crate) mod grpc;
pub(crate) mod http;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use gochat_proto::wire::{self, session_fingerprint, Position};

use crate::ids::unix_ms;
use crate::limits::{retry_secs, Limiter};
use crate::logic::{Logic, LogicError, Presence, Published};
use crate::metrics::ApiCounts;
use crate::state::{NodeReport, Session};
use crate::ControlConfig;

/// Where the HTTP methods are: `POST {HTTP_PREFIX}/<method>` on the REST port.
pub const HTTP_PREFIX: &str = "/api";
/// Users one `publish` may name.
pub const MAX_USERS_PER_PUBLISH: usize = 1000;
/// The shortest key accepted: 128 bits as hex.
pub const MIN_KEY_BYTES: usize = 32;
/// Close code of a disconnect that names none (the first of the private range).
pub const DEFAULT_CLOSE_CODE: u16 = 4000;
/// Close reason of a disconnect that names none.
pub const DEFAULT_CLOSE_REASON: &str = "disconnected by the server";

/// A server API method, by its name in the HTTP path and the gRPC service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Publish,
    Broadcast,
    Disconnect,
    Kick,
    Presence,
    Info,
    History,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Publish,
        Method::Broadcast,
        Method::Disconnect,
        Method::Kick,
        Method::Presence,
        Method::Info,
        Method::History,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Publish => "publish",
            Method::Broadcast => "broadcast",
            Method::Disconnect => "disconnect",
            Method::Kick => "kick",
            Method::Presence => "presence",
            Method::Info => "info",
            Method::History => "history",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether it changes something (a read-only key may not call it).
    pub fn writes(self) -> bool {
        matches!(self, Method::Publish | Method::Broadcast | Method::Disconnect | Method::Kick)
    }
}

/// Why a server API call failed: an HTTP status and a gRPC code each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No key is configured.
    Off,
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    TooLarge(String),
    /// The key's rate limit: retry after this long.
    TooMany(Duration),
    /// A store or the queue failed; try again.
    Unavailable(String),
}

impl ApiError {
    /// The `error` field of an HTTP answer, and the label of the metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Off => "off",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge(_) => "too_large",
            ApiError::TooMany(_) => "too_many_requests",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Off => "the server API is off: no api_keys are configured".into(),
            ApiError::TooMany(wait) => {
                format!("too many requests for this key, retry in {} s", retry_secs(*wait))
            }
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::TooLarge(m)
            | ApiError::Unavailable(m) => m.clone(),
        }
    }
}

impl From<LogicError> for ApiError {
    fn from(e: LogicError) -> Self {
        match e {
            LogicError::Refused(m) => ApiError::BadRequest(m),
            LogicError::NotFound(m) => ApiError::NotFound(m),
            LogicError::TooLarge(m) => ApiError::TooLarge(m),
            LogicError::Session => ApiError::Unauthorized("session error".into()),
            LogicError::Internal(m) => ApiError::Unavailable(m),
        }
    }
}

/// What a `publish` sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// A room message: its id and its place in the room's history (seq 0: the room keeps none).
    Room { id: u64, epoch: String, seq: u64 },
    /// A private message per user, in the order asked: its id, or why it was not sent.
    Users(Vec<(u64, Result<u64, ApiError>)>),
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The configured keys.
#[derive(Default)]
pub struct ApiKeys {
    keys: Vec<(Vec<u8>, Access)>,
}

impl ApiKeys {
    fn new(write: &[String], read: &[String]) -> Self {
        let keys = write.iter().map(|k| (k, Access::Write)).chain(read.iter().map(|k| (k, Access::Read)));
        Self { keys: keys.map(|(k, a)| (k.as_bytes().to_vec(), a)).collect() }
    }

    /// Checks `api_keys` and `api_read_keys`: each at least [`MIN_KEY_BYTES`] of visible ASCII,
    /// none listed twice.
    pub(crate) fn check(write: &[String], read: &[String]) -> Result<(), String> {
        let all: Vec<&String> = write.iter().chain(read).collect();
        for (i, key) in all.iter().enumerate() {
            if key.len() < MIN_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "api_keys and api_read_keys: each key must be at least {MIN_KEY_BYTES} visible ASCII \
                     characters (e.g. `openssl rand -hex 32`)"
                ));
            }
            if all[..i].contains(key) {
                return Err("api_keys and api_read_keys: a key is listed twice".into());
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// What `presented` may do, comparing it with every key whatever matches.
    fn access(&self, presented: &[u8]) -> Option<Access> {
        let mut found = None;
        for (key, access) in &self.keys {
            if constant_time_eq(key, presented) {
                found = Some(*access);
            }
        }
        found
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The key in an `Authorization` value: `apikey KEY` (the scheme in any case).
pub fn presented_key(authorization: &str) -> Option<&str> {
    let (scheme, key) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("apikey").then(|| key.trim()).filter(|k| !k.is_empty())
}

struct Settings {
    keys: ApiKeys,
    sender: String,
}

/// The server API behind both transports.
pub struct ServerApi {
    logic: Arc<Logic>,
    settings: RwLock<Settings>,
    /// Per key (its fingerprint).
    limiter: Limiter<u64>,
    pub counts: ApiCounts,
}

impl ServerApi {
    pub(crate) fn new(logic: Arc<Logic>, cfg: &ControlConfig) -> Self {
        Self {
            logic,
            settings: RwLock::new(Settings {
                keys: ApiKeys::new(&cfg.api_keys, &cfg.api_read_keys),
                sender: cfg.api_sender_name.clone(),
            }),
            limiter: Limiter::new(f64::from(cfg.api_requests_per_second), cfg.api_request_burst, 10_000),
            counts: ApiCounts::default(),
        }
    }

    /// Takes the reloadable `api_*` settings of `cfg`.
    pub(crate) fn reconfigure(&self, cfg: &ControlConfig) {
        let mut settings = self.settings.write().unwrap_or_else(|p| p.into_inner());
        settings.keys = ApiKeys::new(&cfg.api_keys, &cfg.api_read_keys);
        settings.sender.clone_from(&cfg.api_sender_name);
        self.limiter.set(f64::from(cfg.api_requests_per_second), cfg.api_request_burst);
    }

    /// Calls refused by their key's rate limit.
    pub fn refused(&self) -> u64 {
        self.limiter.refused()
    }

    /// Whether a key is configured.
    pub fn is_on(&self) -> bool {
        !self.settings.read().unwrap_or_else(|p| p.into_inner()).keys.is_empty()
    }

    /// Lets a call of `method` with `authorization` (the header's or metadata's value) through,
    /// or says why not; a call let through takes a token of its key's rate limit.
    pub fn authorize(&self, method: Method, authorization: Option<&str>) -> Result<(), ApiError> {
        let access = {
            let settings = self.settings.read().unwrap_or_else(|p| p.into_inner());
            if settings.keys.is_empty() {
                return Err(ApiError::Off);
            }
            let Some(key) = authorization.and_then(presented_key) else {
                return Err(ApiError::Unauthorized(
                    "an API key is required: Authorization: apikey KEY".into(),
                ));
            };
            let access = settings.keys.access(key.as_bytes());
            access.map(|a| (a, session_fingerprint(key)))
        };
        let Some((access, fingerprint)) = access else {
            return Err(ApiError::Unauthorized("unknown API key".into()));
        };
        if method.writes() && access == Access::Read {
            return Err(ApiError::Forbidden(format!("this key may only read; {} writes", method.name())));
        }
        self.limiter.take(fingerprint).map_err(ApiError::TooMany)
    }

    /// The sender of a published message: `name`, or the configured one.
    fn sender(&self, name: Option<&str>) -> Result<Session, ApiError> {
        let user_name = match name.filter(|n| !n.is_empty()) {
            Some(name) => {
                if name.chars().count() > 32 || name.chars().any(char::is_control) {
                    return Err(ApiError::BadRequest(
                        "fromUserName must be 1 to 32 characters, none of them control characters".into(),
                    ));
                }
                name.to_string()
            }
            None => self.settings.read().unwrap_or_else(|p| p.into_inner()).sender.clone(),
        };
        Ok(Session { user_id: 0, user_name })
    }

    /// A message to `room_id` or, with room 0, to each of `users` (exactly one of them named).
    pub async fn publish(
        &self,
        from: Option<&str>,
        room_id: u64,
        users: &[u64],
        msg: &str,
    ) -> Result<Publication, ApiError> {
        let from = self.sender(from)?;
        match (room_id, users.is_empty()) {
            (0, true) => Err(ApiError::BadRequest("name a room, or users to send to".into())),
            (1.., false) => Err(ApiError::BadRequest("name a room or users, not both".into())),
            (room_id, true) => {
                let Published { id, position } = self.logic.api_publish_room(&from, room_id, msg).await?;
                let (epoch, seq) = position.map_or((String::new(), 0), |p| (p.epoch, p.seq));
                Ok(Publication::Room { id, epoch, seq })
            }
            (0, false) => Ok(Publication::Users(self.publish_users(&from, users, msg).await?)),
        }
    }

    /// A private message to each of `users`: per user, its id or why it was not sent. The call
    /// itself fails only for what fails them all (bad input, a store down).
    async fn publish_users(
        &self,
        from: &Session,
        users: &[u64],
        msg: &str,
    ) -> Result<Vec<(u64, Result<u64, ApiError>)>, ApiError> {
        if users.len() > MAX_USERS_PER_PUBLISH {
            return Err(ApiError::BadRequest(format!("at most {MAX_USERS_PER_PUBLISH} users per publish")));
        }
        self.logic.check_message(msg)?;
        let mut results = Vec::with_capacity(users.len());
        for &user in users {
            match self.logic.api_publish_user(from, user, msg).await.map_err(ApiError::from) {
                Err(e @ ApiError::Unavailable(_)) => return Err(e),
                sent => results.push((user, sent)),
            }
        }
        Ok(results)
    }

    pub async fn broadcast(&self, from: Option<&str>, msg: &str) -> Result<u64, ApiError> {
        let from = self.sender(from)?;
        Ok(self.logic.api_broadcast(&from, msg).await?)
    }

    /// Closes the user's sockets with `code` (default [`DEFAULT_CLOSE_CODE`]) and `reason`;
    /// returns how many it had.
    pub async fn disconnect(
        &self,
        user_id: u64,
        code: Option<u32>,
        reason: Option<&str>,
    ) -> Result<u64, ApiError> {
        let code = code.filter(|c| *c != 0).unwrap_or(u32::from(DEFAULT_CLOSE_CODE));
        let code = u16::try_from(code)
            .ok()
            .filter(|c| wire::is_app_close_code(*c))
            .ok_or_else(|| ApiError::BadRequest("code must be 1000, 1008 or 3000 to 4999".into()))?;
        let reason = reason.filter(|r| !r.is_empty()).unwrap_or(DEFAULT_CLOSE_REASON);
        if reason.len() > wire::MAX_CLOSE_REASON_BYTES {
            let max = wire::MAX_CLOSE_REASON_BYTES;
            return Err(ApiError::BadRequest(format!("reason must be at most {max} bytes")));
        }
        Ok(self.logic.api_disconnect(user_id, code, reason).await?)
    }

    pub async fn kick(&self, user_id: u64, room_id: u64) -> Result<bool, ApiError> {
        Ok(self.logic.api_kick(user_id, room_id).await?)
    }

    /// A room's presence or a user's: exactly one of them named (not 0).
    pub async fn presence(&self, room_id: u64, user_id: u64) -> Result<Presence, ApiError> {
        match (room_id, user_id) {
            (0, 0) | (1.., 1..) => Err(ApiError::BadRequest("name either a roomId or a userId".into())),
            (room_id, 0) => Ok(self.logic.room_presence(room_id).await?),
            (0, user_id) => Ok(self.logic.user_presence(user_id).await?),
        }
    }

    /// The nodes that reported lately, each with how long ago (ms).
    pub async fn info(&self) -> Result<Vec<(NodeReport, u64)>, ApiError> {
        let now = unix_ms();
        let nodes = self.logic.nodes().await?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let age_ms = now.saturating_sub(n.at_ms);
                (n, age_ms)
            })
            .collect())
    }

    pub async fn history(
        &self,
        room_id: u64,
        limit: Option<usize>,
    ) -> Result<(Position, Vec<Vec<u8>>), ApiError> {
        Ok(self.logic.api_history(room_id, limit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0123456789abcdef0123456789abcdef";
    const K2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn keys_are_checked_for_length_characters_and_repeats() {
        assert!(ApiKeys::check(&[K1.into()], &[K2.into()]).is_ok());
        assert!(ApiKeys::check(&[], &[]).is_ok(), "no key: the API is off");
        assert!(ApiKeys::check(&["short".into()], &[]).unwrap_err().contains("at least 32"));
        assert!(ApiKeys::check(&[format!("{K1} x")], &[]).is_err(), "a space");
        assert!(ApiKeys::check(&[K1.into()], &[K1.into()]).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_key_gets_its_access_and_others_none() {
        let keys = ApiKeys::new(&[K1.into()], &[K2.into()]);
        assert_eq!(keys.access(K1.as_bytes()), Some(Access::Write));
        assert_eq!(keys.access(K2.as_bytes()), Some(Access::Read));
        assert_eq!(keys.access(&K1.as_bytes()[1..]), None);
        assert_eq!(keys.access(b""), None);
        let mut near = K1.as_bytes().to_vec();
        near[31] ^= 1;
        assert_eq!(keys.access(&near), None);
    }

    #[test]
    fn the_authorization_value_names_the_scheme() {
        assert_eq!(presented_key("apikey abc"), Some("abc"));
        assert_eq!(presented_key("ApiKey  abc "), Some("abc"));
        assert_eq!(presented_key("Bearer abc"), None);
        assert_eq!(presented_key("apikey"), None);
        assert_eq!(presented_key("apikey "), None);
    }

    #[test]
    fn methods_by_name_and_what_writes() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(m));
        }
        assert_eq!(Method::parse("Publish"), None);
        let writes: Vec<_> = Method::ALL.into_iter().filter(|m| m.writes()).map(Method::name).collect();
        assert_eq!(writes, ["publish", "broadcast", "disconnect", "kick"]);
    }
}
