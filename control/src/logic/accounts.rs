//! Accounts and sessions: registration, login, logout, token checks and user names.

use gochat_proto::queue::queue_message::Target;
use gochat_proto::queue::SessionEnd;
use gochat_proto::wire;

use super::{new_token, Logic, LogicError};
use crate::state::Session;
use crate::{names, password};

/// Longest password accepted, in bytes.
pub(crate) const MAX_PASSWORD: usize = 128;
/// Why a registration is refused when its name is taken (gochat's words).
pub(crate) const NAME_TAKEN: &str = "this user name already have , please login !!!";
/// Why a registration is refused when its name looks like a taken one.
pub(crate) const NAME_LOOKS_TAKEN: &str =
    "this user name looks like one already taken, please choose another";

impl Logic {
    /// Creates gochat's demo users if they are missing.
    pub(crate) async fn seed_demo_users(&self) -> Result<(), LogicError> {
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
    pub(crate) async fn login(&self, user_name: &str, pass: &str) -> Result<String, LogicError> {
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
    pub(crate) async fn logout(&self, token: &str) -> Result<(), LogicError> {
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

    pub(crate) async fn user_name(&self, user_id: u64) -> Result<Option<String>, LogicError> {
        Ok(self.store.by_id(user_id).await?.map(|u| u.user_name))
    }
}

fn check_password(pass: &str) -> Result<(), LogicError> {
    if pass.is_empty() || pass.len() > MAX_PASSWORD {
        return Err(LogicError::refused(format!("passWord must be 1 to {MAX_PASSWORD} bytes")));
    }
    Ok(())
}
