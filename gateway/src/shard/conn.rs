//! One connection's state in a shard, and [`Outgoing`]: queueing output to connections.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use slab::Slab;

use super::limits::ShardLimits;
use super::outbound::OutQueue;
use super::rooms;
use super::stats::ShardStats;
use super::tls::TlsConns;
use crate::protocol::session::Phase;
use crate::protocol::{Codec, Transport, Wire};

/// A connection: its protocol state, timers, rate limit, rooms and pending output.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) codec: Codec,
    pub(super) phase: Phase,
    pub(super) opened: u32,
    pub(super) last_rx: u32,
    pub(super) ping_sent: bool,
    pub(super) dirty: bool,
    /// The fingerprint of the token it authenticated with, so a logout can close it.
    pub(super) session: u64,
    /// Rate limit: frames it may still send, when that was last topped up (s), and frames
    /// dropped since it last had credit.
    pub(super) credit: u16,
    pub(super) credit_at: u32,
    pub(super) over: u16,
    /// When this connection's live timer entry fires.
    pub(super) timer_at: u32,
    pub(super) closing: bool,
    /// Its first room (0: none) and its place in that room's member list; the others are in
    /// the shard's `rooms`.
    pub(super) room: u64,
    pub(super) room_pos: u32,
    /// Its place in the user's member list (valid when live).
    pub(super) user_pos: u32,
    pub(super) out: OutQueue,
    /// A wss connection: its session is in the shard's `tls` table, and what is queued in `out`
    /// is encrypted. (Flags in padding, so plain connections carry nothing for TLS.)
    pub(super) tls: bool,
    /// Joining a room: its room frames go through the shard's `joins`.
    pub(super) joining: bool,
    /// Acknowledges private messages (op 12).
    pub(super) acks: bool,
    /// Was told more private messages are kept for it: its next ack asks for them.
    pub(super) kept_more: bool,
    /// Its wire is counted in the shard's stats (the binary protocol, compression): set once
    /// the handshake chose it.
    pub(super) wire_counted: bool,
}

impl Conn {
    /// A connection accepted just now, awaiting its auth frame, with a full burst of credit.
    pub(super) fn new(id: u64, transport: Transport, limits: &ShardLimits, now: u32) -> Self {
        Self {
            id,
            codec: Codec::new(transport),
            phase: Phase::AwaitAuth,
            opened: now,
            last_rx: now,
            ping_sent: false,
            dirty: false,
            session: 0,
            credit: limits.client_frame_burst.min(u16::MAX as u32) as u16,
            credit_at: now,
            over: 0,
            timer_at: 0,
            closing: false,
            room: 0,
            room_pos: 0,
            user_pos: 0,
            out: OutQueue::default(),
            tls: false,
            joining: false,
            acks: false,
            kept_more: false,
            wire_counted: false,
        }
    }

    /// Its user once it authenticated; 0 before.
    pub(super) fn user_id(&self) -> u64 {
        match self.phase {
            Phase::Live { user_id } => user_id,
            _ => 0,
        }
    }

    /// Lists the connection at `key` (this one) in `dirty`, once, for the driver to write.
    #[inline]
    pub(super) fn mark_dirty(&mut self, key: u32, dirty: &mut Vec<u32>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }
}

impl rooms::Member for Conn {
    fn first_room(&mut self) -> (&mut u64, &mut u32) {
        (&mut self.room, &mut self.room_pos)
    }
}

/// The parts of a shard that queueing output borrows, apart from the rest of it: a broadcast
/// queues to the members of a room while it reads the room and its joins.
pub(super) struct Outgoing<'a> {
    pub(super) conns: &'a mut Slab<Conn>,
    pub(super) dirty: &'a mut Vec<u32>,
    pub(super) tls: &'a mut TlsConns,
    pub(super) stats: &'a ShardStats,
    /// Pending output a connection may have ([`ShardLimits::max_outbound_bytes`]).
    pub(super) max_bytes: usize,
}

impl Outgoing<'_> {
    /// Queues `frame` (made for the connection's wire: a reference to a shared buffer, mostly)
    /// for `key`, dropping the connection when it is over its bound. Inlined: a broadcast runs
    /// it once per member.
    #[inline]
    pub(super) fn queue(&mut self, key: u32, frame: impl FnOnce(Wire) -> Bytes) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing {
            return;
        }
        let frame = frame(conn.codec.wire());
        // The bound is on what the peer has not taken yet: an empty queue takes any frame.
        if !conn.out.is_empty() && conn.out.bytes() + frame.len() > self.max_bytes {
            // A slow consumer: its queue cannot take a close frame either, so drop it outright.
            self.stats.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = conn.id, pending = conn.out.bytes(), "slow consumer dropped");
            conn.out.clear();
            conn.closing = true;
        } else {
            if conn.tls {
                // Encrypted for this connection alone: a broadcast costs one encryption per member.
                // (Nothing, when the session cannot send: it failed or is closing.)
                let sealed = self.tls.seal(key, &frame);
                if !sealed.is_empty() {
                    conn.out.push(sealed);
                }
            } else {
                conn.out.push(frame);
            }
            self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        conn.mark_dirty(key, self.dirty);
    }
}
