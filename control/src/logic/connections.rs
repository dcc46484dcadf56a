//! Sockets opening and closing, gateways' leases and the sweep of expired ones, and routes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gochat_proto::wire::Position;

use super::{periodically, Logic, LogicError, Opened};
use crate::ids::unix_ms;
use crate::kept::Kept;
use crate::metrics::KeptResult;
use crate::state::{NewConn, NodeKind, NodeReport, Routes, TooManyConnections};

impl Logic {
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
            Ok(arrival) => self.arrived(arrival, &session),
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
        let kept = if acks || !self.kept.is_on() || !self.state.reach(session.user_id).await?.acking {
            self.kept.chunk(session.user_id, 0, !acks).await?
        } else {
            Kept::default()
        };
        self.counts.kept(KeptResult::HandedOut, kept.ids.len() as u64);
        Ok(Opened { session, joined, kept })
    }

    pub async fn conn_close(&self, gateway: &str, conn_id: u64) -> Result<(), LogicError> {
        let departure = self.state.conn_close(gateway, conn_id).await?;
        self.departed(departure.left, departure.offline);
        Ok(())
    }

    pub(crate) async fn gateway_reset(&self, gateway: &str) -> Result<(), LogicError> {
        let departures = self.state.gateway_reset(gateway).await?;
        self.departed(departures.left, departures.offline);
        Ok(())
    }

    /// A gateway renews its lease; false when it had none (it is new, or was swept as dead and
    /// its connections forgotten).
    /// The renewal carries the gateway's version and open connections, kept for `info`.
    pub(crate) async fn gateway_lease(
        &self,
        gateway: &str,
        version: &str,
        connections: u64,
    ) -> Result<bool, LogicError> {
        let renewed = self.state.gateway_lease(gateway, self.gateway_lease).await;
        if renewed.is_err() {
            self.store_failed();
        }
        let renewed = renewed?;
        self.node_report(NodeKind::Gateway, gateway, version, connections).await?;
        Ok(renewed)
    }

    /// Records what a control, gateway or worker reports of itself, for `info`.
    pub(crate) async fn node_report(
        &self,
        kind: NodeKind,
        id: &str,
        version: &str,
        connections: u64,
    ) -> Result<(), LogicError> {
        let report =
            NodeReport { kind, id: id.into(), version: version.into(), connections, at_ms: unix_ms() };
        Ok(self.state.node_report(&report).await?)
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

    pub(crate) fn gateway_lease_ttl(&self) -> std::time::Duration {
        self.gateway_lease
    }

    /// Where a batch of rooms and users is connected.
    pub(crate) async fn routes(&self, room_ids: &[u64], user_ids: &[u64]) -> Result<Routes, LogicError> {
        Ok(self.state.routes(room_ids, user_ids).await?)
    }

    /// Forgets gateways whose lease ran out, every `every`, so a dead gateway's users and room
    /// memberships do not linger. Any control may sweep; the scripts make it safe to race.
    pub(crate) async fn sweep_gateways(
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
                        tracing::warn!(%gateway, rooms = changes.left.len(), "gateway lease expired: its connections are forgotten");
                        self.departed(changes.left, changes.offline);
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
}
