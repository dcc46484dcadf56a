//! The operations behind the REST API and the gRPC service: accounts, sessions, pushes,
//! connections and routing.

use std::sync::Arc;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::{QueueMessage, SessionEnd};
use gochat_proto::wire::{self, ChatMessage, Position};
use gochat_queue::Queue;
use rand::RngCore;

use crate::history::{History, Recovery};
use crate::ids::{self, MessageIds};
use crate::inbox::{self, Inbox, NotKept};
use crate::limits::{retry_secs, RateLimits};
use crate::metrics::LogicCounts;
use crate::state::{
    NewConn, NoConnection, RoomChange, Routes, Session, State, StateError, TooManyConnections,
};
use crate::store::UserStore;
use crate::{names, password, ControlConfig};

pub use crate::names::MAX_USER_NAME;
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD: usize = 128;
/// Why a room push from a user with no socket in the room is refused (`open_rooms = false`).
pub const NOT_MEMBER: &str = "join the room first";
/// Why a registration is refused when its name is taken (gochat's words).
pub const NAME_TAKEN: &str = "this user name already have , please login !!!";
/// Why a registration is refused when its name looks like a taken one.
pub const NAME_LOOKS_TAKEN: &str = "this user name looks like one already taken, please choose another";
/// Joins and leaves one presence update (op 9) lists; the rest are counted in its `more`.
pub const PRESENCE_MAX_LISTED: usize = 100;

/// What a socket that authenticated gets.
#[derive(Debug)]
pub struct Opened {
    pub session: Session,
    /// Where the room of its auth frame stands, with what it missed (None: no room, or no
    /// history).
    pub joined: Option<Recovery>,
    /// Private messages kept for the user.
    pub kept: inbox::Chunk,
}

/// A room's joins and leaves since its last update, per user: whether the user was in the room
/// before the first of them and is now, so one who left and came back is no change.
#[derive(Debug, Default)]
struct RoomEvents(BTreeMap<u64, (bool, bool, String)>);

/// Why an operation failed; the message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogicError {
    /// Bad input or a refused request (gochat code 1).
    #[error("{0}")]
    Refused(String),
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
    inbox: Inbox,
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
}

impl Logic {
    pub fn new(store: UserStore, state: State, queue: Arc<dyn Queue>, cfg: &ControlConfig) -> Self {
        Self {
            store,
            history: state.history(cfg.history_limits()),
            inbox: state.inbox(cfg.inbox_limits()),
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
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the stores answer: the users' database and the state store (with history and
    /// kept messages).
    pub async fn ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| format!("user database: {e}"))?;
        self.state.ping().await.map_err(|e| format!("state store: {e}"))
    }

    /// Bytes of room history and of kept private messages, when they are in this process.
    pub fn kept_bytes(&self) -> (Option<usize>, Option<usize>) {
        (self.history.bytes(), self.inbox.bytes())
    }

    /// Takes the settings of `cfg` a running control can change (see
    /// [`ControlConfig::RELOADABLE`]).
    pub fn reconfigure(&self, cfg: &ControlConfig) {
        self.max_message_bytes.store(cfg.max_message_bytes, Ordering::Relaxed);
        self.open_rooms.store(cfg.open_rooms, Ordering::Relaxed);
        self.max_connections_per_user.store(cfg.max_connections_per_user, Ordering::Relaxed);
        self.room_info_max_members.store(cfg.room_info_max_members, Ordering::Relaxed);
        self.limits.reconfigure(cfg);
    }

    /// The rate limits the REST API and socket room sends share.
    pub fn limits(&self) -> &Arc<RateLimits> {
        &self.limits
    }

    fn open_rooms(&self) -> bool {
        self.open_rooms.load(Ordering::Relaxed)
    }

    /// Creates gochat's demo users if they are missing.
    pub async fn seed_demo_users(&self) -> Result<(), LogicError> {
        for name in ["demo", "test", "admin"] {
            let name = names::normalize(name).expect("valid names");
            // Not when a look-alike holds the name: that user keeps it.
            if self.store.taken_by(&name).await?.is_none() {
                let hash = password::hash("111111".into()).await;
                self.store.create(&name, &hash).await?;
            }
        }
        Ok(())
    }

    /// Registers `user_name` in NFKC (see [`names`]), unless it or a name that looks like it
    /// is taken.
    pub async fn register(&self, user_name: &str, pass: &str) -> Result<String, LogicError> {
        let name = names::normalize(user_name).map_err(|e| LogicError::refused(e.to_string()))?;
        check_password(pass)?;
        // Before the costly hash; `create` is the check that counts.
        self.check_name_free(&name).await?;
        let hash = password::hash(pass.to_string()).await;
        match self.store.create(&name, &hash).await? {
            Some(id) => self.new_session(Session { user_id: id, user_name: name.name }).await,
            None => {
                self.check_name_free(&name).await?;
                Err(LogicError::refused(NAME_TAKEN))
            }
        }
    }

    async fn check_name_free(&self, name: &names::Name) -> Result<(), LogicError> {
        match self.store.taken_by(name).await? {
            None => Ok(()),
            Some(holder) if holder == name.name => Err(LogicError::refused(NAME_TAKEN)),
            Some(_) => Err(LogicError::refused(NAME_LOOKS_TAKEN)),
        }
    }

    /// Logs in by the exact name, as registered: as typed, or else in NFKC (so `ａｄｍｉｎ`
    /// typed on a fullwidth keyboard is `admin`). The case is part of a name: `Admin` is not
    /// `admin`'s, and no one else's either, since registering it is refused.
    pub async fn login(&self, user_name: &str, pass: &str) -> Result<String, LogicError> {
        const BAD: &str = "no this user or password error!";
        // A name no one could register is no one's, and a NUL would be a PostgreSQL error.
        if !names::may_log_in(user_name) || check_password(pass).is_err() {
            return Err(LogicError::refused(BAD));
        }
        // As typed first: names of earlier versions were stored as sent.
        let mut user = self.store.by_name(user_name).await?;
        let normal = names::nfkc(user_name);
        if user.is_none() && normal != user_name {
            user = self.store.by_name(&normal).await?;
        }
        let stored = user.as_ref().map(|u| u.password.clone());
        if !password::verify(pass.to_string(), stored).await {
            return Err(LogicError::refused(BAD));
        }
        let user = user.expect("verified users exist");
        self.new_session(Session { user_id: user.id, user_name: user.user_name }).await
    }

    async fn new_session(&self, session: Session) -> Result<String, LogicError> {
        let token = new_token();
        self.state.create_session(token.clone(), session).await?;
        Ok(token)
    }

    pub async fn check_auth(&self, token: &str) -> Result<Session, LogicError> {
        // No issued token is longer: refused without a look-up.
        if token.is_empty() || token.len() > wire::MAX_TOKEN_BYTES {
            return Err(LogicError::Session);
        }
        self.state.session(token).await?.ok_or(LogicError::Session)
    }

    /// Ends the session and closes the sockets that authenticated with it.
    pub async fn logout(&self, token: &str) -> Result<(), LogicError> {
        let session = self.state.remove_session(token).await?.ok_or(LogicError::Session)?;
        let end = SessionEnd { user_id: session.user_id, session: wire::session_fingerprint(token) };
        // The session is gone already (no new socket can use it); a lost close is logged and
        // the logout still succeeds, as the user asked.
        if self.publish_body(Target::SessionEnd(end), Vec::new()).await.is_err() {
            tracing::warn!(
                user_id = session.user_id,
                "logout: the sockets of the session were not told to close"
            );
        }
        Ok(())
    }

    pub async fn user_name(&self, user_id: u64) -> Result<Option<String>, LogicError> {
        Ok(self.store.by_id(user_id).await?.map(|u| u.user_name))
    }

    /// A private message (op 2) to `to_user_id`, sent now if they are online. With the inbox
    /// on, it is also kept until a client of theirs acknowledges it, when one that does is
    /// online or none is (then it waits for them); a user online only with clients that do not
    /// acknowledge (gochat's) gets it as gochat sent it: at most once.
    pub async fn push_user(
        &self,
        from: &Session,
        to_user_id: u64,
        room_id: u64,
        msg: &str,
    ) -> Result<(), LogicError> {
        self.check_message(msg)?;
        let Some(to_name) = self.user_name(to_user_id).await? else {
            return Err(LogicError::refused(format!("no user with id {to_user_id}")));
        };
        let reach = self.state.reach(to_user_id).await?;
        let (online, kept) = (reach.online, self.inbox.is_on() && (reach.acking || !reach.online));
        if !online && !kept {
            return Err(LogicError::refused(format!("user {to_name} is not online")));
        }
        let id = self.ids.next();
        let body = chat_message(id, wire::OP_SINGLE_SEND, from, to_user_id, &to_name, room_id, msg);
        let mut kept = kept;
        if kept {
            let not_kept = self.inbox.keep(to_user_id, from.user_id, id, &body).await?.err();
            let (counter, refusal) = match not_kept {
                None => (0, None),
                Some(NotKept::Full) => {
                    (1, Some(format!("{to_name} has too many unread messages; try again later")))
                }
                Some(NotKept::SenderShare) => (
                    4,
                    Some(format!(
                        "{to_name} has too many unread messages from you; try again when they have read some"
                    )),
                ),
                Some(NotKept::SenderTotal) => {
                    (6, Some("too many of your messages are waiting to be read; try again later".to_string()))
                }
                // A user online gets it as gochat sent it, unkept: a full store never stops
                // live messages.
                Some(NotKept::StoreFull) if online => (5, None),
                Some(NotKept::StoreFull) => {
                    (5, Some("too many unread messages are kept here; try again later".to_string()))
                }
            };
            self.counts.kept[counter].inc();
            if let Some(refusal) = refusal {
                return Err(LogicError::Refused(refusal));
            }
            kept = not_kept.is_none();
        }
        if !online {
            return Ok(());
        }
        let sent =
            self.publish(QueueMessage { target: Some(Target::UserId(to_user_id)), body, id, seq: 0 }).await;
        if sent.is_err() && kept {
            // Refused to the sender, so not kept either: a retry must not deliver it twice.
            self.inbox.ack(to_user_id, &[id]).await?;
        }
        sent
    }

    /// A room message (op 3) from `from` through the REST API: unless rooms are open, only from
    /// a user with a socket in the room.
    pub async fn push_room(&self, from: &Session, room_id: u64, msg: &str) -> Result<(), LogicError> {
        self.room_message(from, room_id, msg, !self.open_rooms()).await
    }

    /// A room message, numbered in the room's history when it keeps one.
    async fn room_message(
        &self,
        from: &Session,
        room_id: u64,
        msg: &str,
        members_only: bool,
    ) -> Result<(), LogicError> {
        self.check_message(msg)?;
        check_room(room_id)?;
        if members_only && !self.state.is_member(room_id, from.user_id).await? {
            return Err(LogicError::refused(NOT_MEMBER));
        }
        let id = self.ids.next();
        let body = chat_message(id, wire::OP_ROOM_SEND, from, 0, "", room_id, msg);
        let (position, body) = self.history.append(room_id, body).await?;
        let seq = position.map_or(0, |p| p.seq);
        self.publish(QueueMessage { target: Some(Target::RoomId(room_id)), body, id, seq }).await
    }

    /// The room's position and last `limit` messages (at most what it keeps), oldest first,
    /// for a client that must reload; only to a user in the room unless rooms are open.
    pub async fn history(
        &self,
        from: &Session,
        room_id: u64,
        limit: Option<usize>,
    ) -> Result<(Position, Vec<Vec<u8>>), LogicError> {
        check_room(room_id)?;
        if !self.open_rooms() && !self.state.is_member(room_id, from.user_id).await? {
            return Err(LogicError::refused(NOT_MEMBER));
        }
        let limit = limit.unwrap_or(self.history_size).min(self.history_size);
        self.history
            .latest(room_id, limit)
            .await?
            .ok_or_else(|| LogicError::refused("rooms keep no history here"))
    }

    /// Has the room's online count (op 4) sent, with its next room update: however often it is
    /// asked, a room gets one per `room_update_interval_ms`.
    pub async fn push_count(&self, room_id: u64) -> Result<(), LogicError> {
        check_room(room_id)?;
        self.update_room(room_id);
        Ok(())
    }

    /// Has the room's member list (op 5) sent, for rooms of up to `room_info_max_members`, with
    /// its next room update: a list goes to every member, so asked for on every call it grew
    /// with the square of the room, and one member could have it sent a hundred times a second.
    pub async fn push_room_info(&self, room_id: u64) -> Result<(), LogicError> {
        check_room(room_id)?;
        let count = self.state.room_count(room_id).await?;
        let max = self.room_info_max_members.load(Ordering::Relaxed);
        if count > max {
            return Err(LogicError::refused(format!(
                "room {room_id} has more than {max} users online: its member list is not sent"
            )));
        }
        self.update_room(room_id);
        Ok(())
    }

    /// Broadcasts the room's member list (op 5).
    async fn send_room_info(&self, room_id: u64) -> Result<(), LogicError> {
        let members = self.state.room_members(room_id).await?;
        let body = wire::RoomInfo {
            op: wire::OP_ROOM_INFO,
            room_id,
            count: members.len() as u64,
            room_user_info: members,
        };
        self.publish_body(Target::RoomId(room_id), to_json(&body)).await
    }

    /// A socket authenticated: record it in `room_id` (0: none yet), and tell the room when a
    /// user joined. It gets the room's position (with what it missed since `since`) and the
    /// private messages kept for the user; to a socket that does not acknowledge (`acks`),
    /// those count as delivered, and it gets none while the user has one online that does.
    #[allow(clippy::too_many_arguments)]
    pub async fn conn_open(
        &self,
        token: &str,
        room_id: u64,
        gateway: &str,
        shard: u32,
        conn_id: u64,
        since: Option<&Position>,
        acks: bool,
    ) -> Result<Opened, LogicError> {
        let session = self.check_auth(token).await?;
        let max_user_conns = self.max_connections_per_user.load(Ordering::Relaxed);
        let conn = NewConn { gateway, shard, conn_id, room_id, acks, max_user_conns };
        match self.state.conn_open(&conn, &session).await? {
            Ok(change) => change.into_iter().for_each(|c| self.room_changed(c)),
            Err(TooManyConnections) => {
                self.counts.user_connections_refused.inc();
                return Err(LogicError::refused(format!(
                    "too many connections for this user (max {max_user_conns})"
                )));
            }
        }
        let joined = match room_id {
            0 => None,
            _ => self.joined(room_id, since).await?,
        };
        // Kept messages are for the clients that acknowledge: one that does not takes them
        // (each then counts as delivered) only while none that does is online.
        let kept = if acks || !self.inbox.is_on() || !self.state.reach(session.user_id).await?.acking {
            self.inbox.chunk(session.user_id, 0, !acks).await?
        } else {
            inbox::Chunk::default()
        };
        self.counts.kept[3].add(kept.ids.len() as u64);
        Ok(Opened { session, joined, kept })
    }

    /// Where `room_id` stands for a socket joining it, with what it missed since `since`.
    async fn joined(&self, room_id: u64, since: Option<&Position>) -> Result<Option<Recovery>, LogicError> {
        let recovery = self.history.join(room_id, since).await?;
        if let Some(r) = &recovery {
            let result = match r.recovered {
                None => 0,
                Some(true) => 1,
                Some(false) => 2,
            };
            self.counts.joins[result].inc();
        }
        Ok(recovery)
    }

    /// An authenticated socket joins another room: its position there, with what it missed.
    pub async fn room_join(
        &self,
        gateway: &str,
        conn_id: u64,
        user_id: u64,
        room_id: u64,
        since: Option<&Position>,
    ) -> Result<Option<Recovery>, LogicError> {
        check_room(room_id)?;
        let Some(user_name) = self.user_name(user_id).await? else {
            return Err(LogicError::refused(format!("no user with id {user_id}")));
        };
        match self.state.conn_join(gateway, conn_id, &Session { user_id, user_name }, room_id).await? {
            Err(NoConnection) => {
                return Err(LogicError::refused("this connection is not known here: reconnect"))
            }
            Ok(change) => change.into_iter().for_each(|c| self.room_changed(c)),
        }
        self.joined(room_id, since).await
    }

    pub async fn room_leave(&self, gateway: &str, conn_id: u64, room_id: u64) -> Result<(), LogicError> {
        if let Some(change) = self.state.conn_leave(gateway, conn_id, room_id).await? {
            self.room_changed(change);
        }
        Ok(())
    }

    /// A client of `user_id` has these private messages; with `more`, the next kept ones.
    pub async fn ack(&self, user_id: u64, ids: &[u64], more: bool) -> Result<inbox::Chunk, LogicError> {
        self.inbox.ack(user_id, ids).await?;
        self.counts.kept[2].add(ids.len() as u64);
        if !more {
            return Ok(inbox::Chunk::default());
        }
        let chunk = self.inbox.chunk(user_id, ids.iter().copied().max().unwrap_or(0), false).await?;
        self.counts.kept[3].add(chunk.ids.len() as u64);
        Ok(chunk)
    }

    pub async fn conn_close(&self, gateway: &str, conn_id: u64) -> Result<(), LogicError> {
        for change in self.state.conn_close(gateway, conn_id).await? {
            self.room_changed(change);
        }
        Ok(())
    }

    pub async fn gateway_reset(&self, gateway: &str) -> Result<(), LogicError> {
        for change in self.state.gateway_reset(gateway).await? {
            self.room_changed(change);
        }
        Ok(())
    }

    /// A gateway renews its lease; false when it had none (it is new, or was swept as dead and
    /// its connections forgotten).
    pub async fn gateway_lease(&self, gateway: &str) -> Result<bool, LogicError> {
        let renewed = self.state.gateway_lease(gateway, self.gateway_lease).await;
        if renewed.is_err() {
            self.store_failed();
        }
        Ok(renewed?)
    }

    fn store_failed(&self) {
        *self.store_failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    /// Whether the state store failed within the last lease period: leases could not be renewed
    /// meanwhile, so their expiry says nothing about the gateways.
    fn store_troubled(&self) -> bool {
        self.store_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < self.gateway_lease)
    }

    pub fn gateway_lease_ttl(&self) -> std::time::Duration {
        self.gateway_lease
    }

    /// Where a batch of rooms and users is connected.
    pub async fn routes(&self, room_ids: &[u64], user_ids: &[u64]) -> Result<Routes, LogicError> {
        Ok(self.state.routes(room_ids, user_ids).await?)
    }

    /// Forgets gateways whose lease ran out, every `every`, so a dead gateway's users and room
    /// memberships do not linger. Any control may sweep; the scripts make it safe to race.
    pub async fn sweep_gateways(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let last = std::sync::Mutex::new(tokio::time::Instant::now());
        periodically(every, stop, || async {
            // A tick far behind schedule means this process was starved: renewals may be
            // waiting unanswered in its queues, so leases that look expired may not be.
            let late = {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                let late = last.elapsed().saturating_sub(every);
                *last = tokio::time::Instant::now();
                late
            };
            if late > self.gateway_lease / 4 {
                tracing::warn!(?late, "control was stalled; skipping one gateway sweep");
                return;
            }
            if self.store_troubled() {
                tracing::info!("the state store failed within the last lease period; not sweeping yet");
                return;
            }
            match self.state.sweep_expired().await {
                Ok(swept) => {
                    for (gateway, changes) in swept {
                        self.counts.gateways_swept.inc();
                        tracing::warn!(%gateway, rooms = changes.len(), "gateway lease expired: its connections are forgotten");
                        changes.into_iter().for_each(|c| self.room_changed(c));
                    }
                }
                Err(e) => {
                    self.store_failed();
                    tracing::warn!(error = %e, "gateway sweep failed; retrying");
                }
            }
        })
        .await
    }

    /// A room message sent on a socket by an authenticated user. Sockets send only to their
    /// own room, so membership needs no check.
    pub async fn send_room(&self, from_user_id: u64, room_id: u64, msg: &str) -> Result<(), LogicError> {
        // Per user, over every socket (and the REST pushes): one user's sockets together send
        // no faster than one client may push.
        if let Err(wait) = self.limits.push.take(from_user_id) {
            return Err(LogicError::refused(format!(
                "sending too fast: message dropped, retry in {} s",
                retry_secs(wait)
            )));
        }
        let Some(name) = self.user_name(from_user_id).await? else {
            return Err(LogicError::refused(format!("no user with id {from_user_id}")));
        };
        self.room_message(&Session { user_id: from_user_id, user_name: name }, room_id, msg, false).await
    }

    /// The room gets its count and member list with its next update, even with no member
    /// change.
    fn update_room(&self, room_id: u64) {
        self.changed_rooms.lock().unwrap_or_else(|p| p.into_inner()).entry(room_id).or_default();
    }

    /// Membership changed: noted for the room's next update.
    fn room_changed(&self, change: RoomChange) {
        let mut rooms = self.changed_rooms.lock().unwrap_or_else(|p| p.into_inner());
        let events = rooms.entry(change.room_id).or_default();
        let event = events.0.entry(change.user_id).or_insert((!change.joined, false, String::new()));
        event.1 = change.joined;
        if change.joined {
            event.2 = change.user_name;
        }
    }

    /// Sends each room whose members changed (or whose count or list was asked for) its count
    /// (op 4), its member list (op 5, rooms of up to `room_info_max_members`) — gochat sent an
    /// empty frame — and who joined and left (op 9), at most once per `every`: a join storm, or
    /// a storm of `/push/getRoomInfo`, costs one update per room, not one per event to every
    /// member.
    pub async fn send_room_updates(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        periodically(every, stop, || async {
            let rooms = std::mem::take(&mut *self.changed_rooms.lock().unwrap_or_else(|p| p.into_inner()));
            for (room_id, events) in rooms {
                if let Err(e) = self.room_update(room_id, events).await {
                    tracing::warn!(room = room_id, error = %e, "room update not sent");
                }
            }
        })
        .await
    }

    async fn room_update(&self, room_id: u64, events: RoomEvents) -> Result<(), LogicError> {
        let count = self.state.room_count(room_id).await?;
        let body = wire::RoomCount { count, op: wire::OP_ROOM_COUNT, room_id };
        self.publish_body(Target::RoomId(room_id), to_json(&body)).await?;
        if count <= self.room_info_max_members.load(Ordering::Relaxed) {
            self.send_room_info(room_id).await?;
        }
        let mut presence = wire::Presence {
            op: wire::OP_PRESENCE,
            room_id,
            count,
            joined: BTreeMap::new(),
            left: Vec::new(),
            more: 0,
        };
        for (user_id, (was_in, is_in, name)) in events.0 {
            if was_in == is_in {
                continue;
            }
            if presence.joined.len() + presence.left.len() == PRESENCE_MAX_LISTED {
                presence.more += 1;
            } else if is_in {
                presence.joined.insert(user_id.to_string(), name);
            } else {
                presence.left.push(user_id.to_string());
            }
        }
        if presence.joined.is_empty() && presence.left.is_empty() && presence.more == 0 {
            return Ok(());
        }
        self.publish_body(Target::RoomId(room_id), to_json(&presence)).await
    }

    fn check_message(&self, msg: &str) -> Result<(), LogicError> {
        if msg.is_empty() {
            return Err(LogicError::refused("msg must not be empty"));
        }
        let max = self.max_message_bytes.load(Ordering::Relaxed);
        if msg.len() > max {
            return Err(LogicError::refused(format!("msg is too long (max {max} bytes)")));
        }
        Ok(())
    }

    /// Enqueues a body with an id of its own and nothing else (counts, member lists, ends).
    async fn publish_body(&self, target: Target, body: Vec<u8>) -> Result<(), LogicError> {
        self.publish(QueueMessage { target: Some(target), body, id: self.ids.next(), seq: 0 }).await
    }

    async fn publish(&self, message: QueueMessage) -> Result<(), LogicError> {
        let target = message.target;
        let published = self.queue.publish(message).await;
        if let Some(target) = target {
            self.counts.enqueue(target, published.is_ok());
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

fn check_password(pass: &str) -> Result<(), LogicError> {
    if pass.is_empty() || pass.len() > MAX_PASSWORD {
        return Err(LogicError::refused(format!("passWord must be 1 to {MAX_PASSWORD} bytes")));
    }
    Ok(())
}

fn check_room(room_id: u64) -> Result<(), LogicError> {
    if room_id == 0 {
        return Err(LogicError::refused("roomId must be a positive number"));
    }
    Ok(())
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
