//! Joins in progress. A connection asking to join a room is listed in the room at once, so no
//! message published while logic answers is missed: its frames are held here until the answer,
//! then sent after the messages logic recovered from the room's history. Messages up to the
//! last recovered one may still arrive live afterwards (they were in the history before they
//! reached this gateway); those copies are dropped until a later message shows up.

use std::collections::HashMap;

use bytes::Bytes;

use super::framed::Framed;
use crate::protocol::Wire;

/// How long after logic's answer live copies of recovered messages are looked for.
pub(super) const SKIP_SECS: u32 = 10;

/// Longest a join may wait for logic before it is given up.
pub(super) const ANSWER_SECS: u32 = 30;

/// One connection's join of one room.
#[derive(Debug)]
struct Join {
    room_id: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for logic: room frames arriving meanwhile, and their bytes.
    Waiting { held: Vec<Framed>, bytes: usize, overflowed: bool, until: u32 },
    /// Answered with messages up to `through` recovered: later copies of them are dropped.
    Skipping { through: u64, until: u32 },
}

/// What a room frame for a joining connection comes to.
pub(super) enum Offer {
    /// Not joining this room: queue the frame as for anyone.
    Pass,
    /// Held, or dropped as a copy of what was recovered.
    Taken,
    /// Queue these parts: the frame without the copies of recovered messages.
    Parts(Vec<Bytes>),
}

/// The frames held for a join logic answered, to send after what it recovered.
pub(super) struct Released {
    pub parts: Vec<Bytes>,
    /// More arrived than a connection may have pending: some were dropped.
    pub overflowed: bool,
}

#[derive(Default)]
pub(super) struct Joins(HashMap<u32, Vec<Join>>);

impl Joins {
    /// Starts `key`'s join of `room_id`, to be given up at `until` if logic has not answered
    /// by then; false when one is in progress already.
    pub(super) fn start(&mut self, key: u32, room_id: u64, until: u32) -> bool {
        let joins = self.0.entry(key).or_default();
        if let Some(i) = joins.iter().position(|j| j.room_id == room_id) {
            if matches!(joins[i].state, State::Waiting { .. }) {
                return false;
            }
            joins.swap_remove(i);
        }
        joins.push(Join {
            room_id,
            state: State::Waiting { held: Vec::new(), bytes: 0, overflowed: false, until },
        });
        true
    }

    /// Whether `key` is waiting for logic's answer to a join of `room_id`.
    pub(super) fn waiting(&self, key: u32, room_id: u64) -> bool {
        self.find(key, room_id).is_some_and(|j| matches!(j.state, State::Waiting { .. }))
    }

    /// Whether `key` has any join in progress (the connection's flag follows this).
    pub(super) fn any(&self, key: u32) -> bool {
        self.0.contains_key(&key)
    }

    /// A room frame for `key`, which is joining something.
    pub(super) fn offer(
        &mut self,
        key: u32,
        room_id: u64,
        frames: &Framed,
        t: Wire,
        max_bytes: usize,
    ) -> Offer {
        let Some(joins) = self.0.get_mut(&key) else { return Offer::Pass };
        let Some(i) = joins.iter().position(|j| j.room_id == room_id) else { return Offer::Pass };
        match &mut joins[i].state {
            State::Waiting { held, bytes, overflowed, .. } => {
                // Counted as JSON: the binary protocol is no larger.
                let len = frames.ws().len();
                if *bytes + len > max_bytes {
                    // The client is told it missed messages (recovered: false), as for a gap.
                    *overflowed = true;
                } else {
                    *bytes += len;
                    held.push(frames.clone());
                }
                Offer::Taken
            }
            State::Skipping { through, .. } => {
                let through = *through;
                let parts = frames.after(t, through);
                if frames.last_seq() > through {
                    self.end(key, room_id);
                }
                match parts.is_empty() {
                    true => Offer::Taken,
                    false => Offer::Parts(parts),
                }
            }
        }
    }

    /// Logic answered `key`'s join of `room_id`, recovering messages up to `through` (None:
    /// nothing recovered). Returns the held frames to send after the recovered ones, or None
    /// when no such join was waiting (it was left, or the connection closed, meanwhile).
    pub(super) fn answered(
        &mut self,
        key: u32,
        room_id: u64,
        through: Option<u64>,
        t: Wire,
        now: u32,
    ) -> Option<Released> {
        let joins = self.0.get_mut(&key)?;
        let i =
            joins.iter().position(|j| j.room_id == room_id && matches!(j.state, State::Waiting { .. }))?;
        let State::Waiting { held, overflowed, .. } = std::mem::replace(
            &mut joins[i].state,
            State::Skipping { through: through.unwrap_or(0), until: now + SKIP_SECS },
        ) else {
            unreachable!("found waiting")
        };
        let mut parts = Vec::new();
        let mut past = through.is_none();
        for frames in &held {
            match through {
                Some(through) if !past => {
                    past = frames.last_seq() > through;
                    parts.extend(frames.after(t, through));
                }
                _ => parts.push(frames.for_wire(t)),
            }
        }
        if past {
            self.end(key, room_id);
        }
        Some(Released { parts, overflowed })
    }

    /// Forgets `key`'s join of `room_id`.
    pub(super) fn end(&mut self, key: u32, room_id: u64) {
        if let Some(joins) = self.0.get_mut(&key) {
            joins.retain(|j| j.room_id != room_id);
            if joins.is_empty() {
                self.0.remove(&key);
            }
        }
    }

    /// Forgets every join of `key`.
    pub(super) fn forget(&mut self, key: u32) {
        self.0.remove(&key);
    }

    /// Ends what is over by `now`: skips past their time (`None`), and joins logic never
    /// answered (their room, to be undone).
    pub(super) fn expire(&mut self, now: u32) -> Vec<(u32, Option<u64>)> {
        let mut ended = Vec::new();
        self.0.retain(|&key, joins| {
            joins.retain(|j| match j.state {
                State::Skipping { until, .. } if until <= now => {
                    ended.push((key, None));
                    false
                }
                State::Waiting { until, .. } if until <= now => {
                    ended.push((key, Some(j.room_id)));
                    false
                }
                _ => true,
            });
            !joins.is_empty()
        });
        ended
    }

    fn find(&self, key: u32, room_id: u64) -> Option<&Join> {
        self.0.get(&key)?.iter().find(|j| j.room_id == room_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: Wire = Wire::WsJson;

    fn numbered(seqs: &[u64]) -> Framed {
        let bodies: Vec<String> = seqs.iter().map(|s| format!("m{s}")).collect();
        Framed::encode_numbered(&bodies, seqs, crate::shard::Framings::default())
    }

    fn text(parts: &[Bytes]) -> String {
        let framed: Vec<u8> = parts.concat();
        // Unmasked server frames of under 126 bytes: two header bytes each.
        let mut out = Vec::new();
        let mut at = 0;
        while at < framed.len() {
            let len = framed[at + 1] as usize;
            out.push(String::from_utf8_lossy(&framed[at + 2..at + 2 + len]).to_string());
            at += 2 + len;
        }
        out.join(" ")
    }

    #[test]
    fn held_frames_follow_the_recovered_ones_without_repeats() {
        let mut joins = Joins::default();
        assert!(joins.start(1, 7, ANSWER_SECS));
        assert!(!joins.start(1, 7, ANSWER_SECS), "one join of a room at a time");
        assert!(matches!(joins.offer(1, 8, &numbered(&[1]), WS, 1000), Offer::Pass), "another room");
        for seqs in [&[4, 5][..], &[6], &[7, 8]] {
            assert!(matches!(joins.offer(1, 7, &numbered(seqs), WS, 1000), Offer::Taken));
        }
        // Logic recovered up to 6: 4, 5 and 6 came with its answer.
        let released = joins.answered(1, 7, Some(6), WS, 0).unwrap();
        assert_eq!(text(&released.parts), "m7 m8");
        assert!(!released.overflowed);
        assert!(!joins.any(1), "past the recovered messages: the join is over");
    }

    #[test]
    fn late_copies_of_recovered_messages_are_dropped() {
        let mut joins = Joins::default();
        joins.start(1, 7, ANSWER_SECS);
        let released = joins.answered(1, 7, Some(6), WS, 0).unwrap();
        assert!(released.parts.is_empty());
        assert!(joins.any(1), "still looking for copies");
        assert!(matches!(joins.offer(1, 7, &numbered(&[5, 6]), WS, 1000), Offer::Taken));
        assert!(
            matches!(joins.offer(1, 7, &Framed::encode(&[b"count"]), WS, 1000), Offer::Parts(p) if p.len() == 1)
        );
        let Offer::Parts(parts) = joins.offer(1, 7, &numbered(&[6, 7]), WS, 1000) else { panic!("parts") };
        assert_eq!(text(&parts), "m7");
        assert!(!joins.any(1));
        assert!(matches!(joins.offer(1, 7, &numbered(&[8]), WS, 1000), Offer::Pass));
    }

    #[test]
    fn a_join_without_recovery_sends_everything_held() {
        let mut joins = Joins::default();
        joins.start(1, 7, ANSWER_SECS);
        joins.offer(1, 7, &numbered(&[1]), WS, 1000);
        joins.offer(1, 7, &Framed::encode(&[b"x"]), WS, 1000);
        let released = joins.answered(1, 7, None, WS, 0).unwrap();
        assert_eq!(text(&released.parts), "m1 x");
        assert!(!joins.any(1));
        assert!(joins.answered(1, 7, None, WS, 0).is_none(), "answered once");
    }

    #[test]
    fn holding_is_bounded_and_unanswered_joins_expire() {
        let mut joins = Joins::default();
        joins.start(1, 7, ANSWER_SECS);
        joins.start(2, 7, 10 + ANSWER_SECS);
        let big = Framed::encode(&[vec![b'x'; 100]]);
        for _ in 0..5 {
            joins.offer(1, 7, &big, WS, 250);
        }
        assert_eq!(joins.expire(ANSWER_SECS), [(1, Some(7))], "logic never answered the first");
        assert!(!joins.any(1) && joins.any(2));
        joins.start(1, 7, ANSWER_SECS);
        for _ in 0..5 {
            joins.offer(1, 7, &big, WS, 250);
        }
        let released = joins.answered(1, 7, None, WS, 0).unwrap();
        assert_eq!(released.parts.len(), 2);
        assert!(released.overflowed);
        joins.answered(2, 7, Some(3), WS, 10).unwrap();
        assert_eq!(joins.expire(10 + SKIP_SECS), [(2, None)]);
        assert!(!joins.any(2), "the skip is over");
    }
}
