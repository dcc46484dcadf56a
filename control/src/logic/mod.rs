//! The operations behind the REST API and the gRPC service: accounts, sessions, pushes,
//! connections and routing.
//!
//! [`Logic`] is one type; its operations are written by concern:
//! - `accounts`: registration, login, sessions and user names.
//! - `private_messages`: private messages (op 2) and their kept copies, acknowledged.
//! - `rooms`: room messages (op 3), history, joins and leaves, and room updates (counts,
//!   member lists, presence).
//! - `connections`: sockets opening and closing, gateway leases and sweeps, routes.
//! - `server_api`: what application backends ask through the server API: messages from the
//!   system to rooms, users and everyone, disconnects and kicks, presence and the cluster's
//!   nodes.

mod accounts;
mod connections;
mod private_messages;
mod rooms;
mod server_api;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::QueueMessage;
use gochat_proto::wire::ChatMessage;
use gochat_queue::Queue;
use rand::RngCore;

use crate::history::{History, Recovery};
use crate::ids::{self, MessageIds};
use crate::kept::{Kept, KeptStore};
use crate::limits::RateLimits;
use crate::metrics::LogicCounts;
use crate::state::{Arrival, RoomChange, Session, State, StateError};
use crate::store::UserStore;
use crate::webhooks::{Event, EventKind, Webhooks, What};
use crate::ControlConfig;

use self::rooms::RoomEvents;
pub use self::rooms::NOT_MEMBER;
pub use self::server_api::{Presence, Published};

/// What a socket that authenticated gets.
#[derive(Debug)]
pub struct Opened {
    pub session: Session,
    /// Where the room of its auth frame stands, with what it missed (None: no room, or no
    /// history).
    pub joined: Option<Recovery>,
    /// Private messages kept for the user.
    pub kept: Kept,
}

/// Why an operation failed; the message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogicError {
    /// Bad input or a refused request (gochat code 1).
    #[error("{0}")]
    Refused(String),
    /// What the request names does not exist, e.g. a user id (gochat code 1, as a refusal).
    #[error("{0}")]
    NotFound(String),
    /// A message over `max_message_bytes` (gochat code 1, as a refusal).
    #[error("{0}")]
    TooLarge(String),
    /// A missing, invalid or expired session (gochat code 40000).
    #[error("Session error")]
    Session,
    /// Something on our side failed (gochat code -1); details are logged, not sent.
    #[error("{0}")]
    Internal(String),
}

impl LogicError {
    fn refused(m: impl Into<String>) -> Self {
        Self::Refused(m.into())
    }
}

impl From<StateError> for LogicError {
    fn from(e: StateError) -> Self {
        tracing::error!(error = %e, "state store error");
        Self::Internal("state store unavailable, try again".into())
    }
}

impl From<sqlx::Error> for LogicError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Self::Internal("database unavailable".into())
    }
}

pub struct Logic {
    store: UserStore,
    state: State,
    history: History,
    kept: KeptStore,
    queue: Arc<dyn Queue>,
    /// Settings a config reload changes (`reconfigure`).
    max_message_bytes: AtomicUsize,
    open_rooms: AtomicBool,
    max_connections_per_user: AtomicU32,
    gateway_lease: std::time::Duration,
    /// When the state store last failed a lease renewal or a sweep.
    store_failed_at: std::sync::Mutex<Option<std::time::Instant>>,
    ids: MessageIds,
    /// Rooms whose members changed since the last room update went out.
    changed_rooms: std::sync::Mutex<BTreeMap<u64, RoomEvents>>,
    room_info_max_members: AtomicU64,
    history_size: usize,
    /// Rate limits: the REST API's, and its per-user push limit for socket room sends too.
    limits: Arc<RateLimits>,
    /// For the admin listener.
    pub counts: LogicCounts,
    webhooks: Webhooks,
}

impl Logic {
    pub fn new(store: UserStore, state: State, queue: Arc<dyn Queue>, cfg: &ControlConfig) -> Self {
        Self {
            store,
            history: state.history(cfg.history_limits()),
            kept: state.kept(cfg.kept_limits()),
            state,
            queue,
            max_message_bytes: AtomicUsize::new(cfg.max_message_bytes),
            open_rooms: AtomicBool::new(cfg.open_rooms),
            max_connections_per_user: AtomicU32::new(cfg.max_connections_per_user),
            gateway_lease: std::time::Duration::from_secs(cfg.gateway_lease_secs),
            store_failed_at: std::sync::Mutex::default(),
            ids: MessageIds::new(cfg.node_id.unwrap_or_else(|| ids::node_of(&cfg.id))),
            changed_rooms: std::sync::Mutex::default(),
            room_info_max_members: AtomicU64::new(cfg.room_info_max_members),
            history_size: cfg.history_size,
            limits: Arc::new(RateLimits::new(cfg)),
            counts: LogicCounts::default(),
            webhooks: Webhooks::new(&cfg.webhooks),
        }
    }

    /// Where events are POSTed.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Hands an event (if `what` makes one) to the webhooks that take its kind, built only
    /// when one does; `id`: a message's own, or a fresh one.
    fn hook(&self, kind: EventKind, id: Option<u64>, what: impl FnOnce() -> Option<What>) {
        if !self.webhooks.wants(kind) {
            return;
        }
        if let Some(what) = what() {
            let id = id.unwrap_or_else(|| self.ids.next());
            self.webhooks.emit(Event { id, time: crate::ids::unix_ms(), what });
        }
    }

    /// `session`'s socket was recorded: its room gets its update, webhooks their events (the
    /// user online before the room it entered).
    fn arrived(&self, arrival: Arrival, session: &Session) {
        if arrival.online {
            let (user_id, user_name) = (session.user_id, &session.user_name);
            self.hook(EventKind::User, None, || {
                Some(What::UserOnline { user_id, user_name: user_name.clone() })
            });
        }
        arrival.joined.into_iter().for_each(|c| self.room_changed(c));
    }

    /// Sockets were forgotten: the rooms they left get their updates, webhooks their events (a
    /// user offline after the rooms it left).
    fn departed(&self, left: Vec<RoomChange>, offline: impl IntoIterator<Item = u64>) {
        left.into_iter().for_each(|c| self.room_changed(c));
        for user_id in offline {
            self.hook(EventKind::User, None, || Some(What::UserOffline { user_id }));
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the stores answer: the users' database and the state store (with history and
    /// kept messages).
    pub(crate) async fn ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| format!("user database: {e}"))?;
        self.state.ping().await.map_err(|e| format!("state store: {e}"))
    }

    /// Bytes of room history and of kept private messages, when they are in this process.
    pub fn kept_bytes(&self) -> (Option<usize>, Option<usize>) {
        (self.history.bytes(), self.kept.bytes())
    }

    /// Takes the settings of `cfg` a running control can change (see
    /// [`ControlConfig::RELOADABLE`]).
    pub(crate) fn reconfigure(&self, cfg: &ControlConfig) {
        self.max_message_bytes.store(cfg.max_message_bytes, Ordering::Relaxed);
        self.open_rooms.store(cfg.open_rooms, Ordering::Relaxed);
        self.max_connections_per_user.store(cfg.max_connections_per_user, Ordering::Relaxed);
        self.room_info_max_members.store(cfg.room_info_max_members, Ordering::Relaxed);
        self.limits.reconfigure(cfg);
        self.webhooks.reconfigure(&cfg.webhooks);
    }

    /// The rate limits the REST API and socket room sends share.
    pub(crate) fn limits(&self) -> &Arc<RateLimits> {
        &self.limits
    }

    fn open_rooms(&self) -> bool {
        self.open_rooms.load(Ordering::Relaxed)
    }

    /// Refuses an empty message, or one over `max_message_bytes`.
    pub(crate) fn check_message(&self, msg: &str) -> Result<(), LogicError> {
        if msg.is_empty() {
            return Err(LogicError::refused("msg must not be empty"));
        }
        let max = self.max_message_bytes.load(Ordering::Relaxed);
        if msg.len() > max {
            return Err(LogicError::TooLarge(format!("msg is too long (max {max} bytes)")));
        }
        Ok(())
    }

    /// Enqueues a body with an id of its own and nothing else (counts, member lists, ends).
    async fn publish_body(&self, target: Target, body: Vec<u8>) -> Result<(), LogicError> {
        self.publish(QueueMessage { target: Some(target), body, id: self.ids.next(), seq: 0 }).await
    }

    async fn publish(&self, message: QueueMessage) -> Result<(), LogicError> {
        let target = message.target.clone();
        let published = self.queue.publish(message).await;
        if let Some(target) = target {
            self.counts.enqueue(&target, published.is_ok());
        }
        published.map_err(|e| {
            tracing::warn!(error = %e, "enqueue failed");
            LogicError::Internal("server busy, message not sent".into())
        })
    }
}

/// A fresh session token: 192 random bits, in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `tick` every `every` until `stop` turns true.
async fn periodically<F, Fut>(
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tick().await;
    }
}

fn chat_message(
    id: u64,
    op: i32,
    from: &Session,
    to_user_id: u64,
    to_user_name: &str,
    room_id: u64,
    msg: &str,
) -> Vec<u8> {
    to_json(&ChatMessage {
        code: 0,
        msg: msg.to_string(),
        from_user_id: from.user_id,
        from_user_name: from.user_name.clone(),
        to_user_id,
        to_user_name: to_user_name.to_string(),
        room_id,
        op,
        create_time: chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        msg_id: id.to_string(),
        seq: None,
        epoch: String::new(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("wire types serialize")
}
