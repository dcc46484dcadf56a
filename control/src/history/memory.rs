//! Room history in this process's memory: one lock, short critical sections.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use gochat_proto::wire::{self, Position};

use super::{new_epoch, recover, Limits, Recovery};

struct Log {
    epoch: String,
    top: u64,
    /// Last appended to (or first looked at): the log is forgotten `max_age` after.
    touched: Instant,
    /// (seq, kept since, body), oldest first.
    messages: VecDeque<(u64, Instant, Vec<u8>)>,
}

impl Log {
    fn new(now: Instant) -> Self {
        Self { epoch: new_epoch(), top: 0, touched: now, messages: VecDeque::new() }
    }

    fn position(&self) -> Position {
        Position { epoch: self.epoch.clone(), seq: self.top }
    }

    fn trim(&mut self, limits: &Limits, now: Instant) {
        while self.messages.len() > limits.size
            || self.messages.front().is_some_and(|(_, at, _)| now.duration_since(*at) >= limits.max_age)
        {
            self.messages.pop_front();
        }
    }
}

pub struct MemoryHistory {
    limits: Limits,
    /// The logs, and when rooms quiet for the age limit were last forgotten.
    rooms: Mutex<(HashMap<u64, Log>, Instant)>,
}

impl MemoryHistory {
    pub fn new(limits: Limits) -> Self {
        Self { limits, rooms: Mutex::new((HashMap::new(), Instant::now())) }
    }

    /// The room's log, live: a log untouched for `max_age` is replaced by one of a new epoch.
    fn with_log<T>(&self, room_id: u64, f: impl FnOnce(&mut Log, Instant) -> T) -> T {
        let now = Instant::now();
        let mut guard = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let (rooms, swept) = &mut *guard;
        // Once an age limit: what a room keeps is bounded by its size, the rooms by time.
        let max_age = self.limits.max_age;
        if now.duration_since(*swept) >= max_age {
            rooms.retain(|_, log| now.duration_since(log.touched) < max_age);
            *swept = now;
        }
        let log = rooms.entry(room_id).or_insert_with(|| Log::new(now));
        if now.duration_since(log.touched) >= self.limits.max_age {
            *log = Log::new(now);
        }
        log.trim(&self.limits, now);
        f(log, now)
    }

    pub fn append(&self, room_id: u64, body: &[u8]) -> (Position, Vec<u8>) {
        self.with_log(room_id, |log, now| {
            log.top += 1;
            log.touched = now;
            let body = wire::with_position(body, log.top, &log.epoch);
            log.messages.push_back((log.top, now, body.clone()));
            log.trim(&self.limits, now);
            (log.position(), body)
        })
    }

    pub fn join(&self, room_id: u64, since: Option<&Position>) -> Recovery {
        self.with_log(room_id, |log, _| {
            let position = log.position();
            let oldest = log.messages.front().map(|(seq, _, _)| *seq);
            let kept = log.messages.iter().map(|(seq, _, body)| (*seq, body.clone()));
            let (recovered, bodies) = recover(&position, since, oldest, kept);
            Recovery { position, recovered, bodies }
        })
    }

    pub fn latest(&self, room_id: u64, limit: usize) -> (Position, Vec<Vec<u8>>) {
        self.with_log(room_id, |log, _| {
            let skip = log.messages.len().saturating_sub(limit);
            (log.position(), log.messages.iter().skip(skip).map(|(_, _, b)| b.clone()).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn msg(text: &str) -> Vec<u8> {
        format!(r#"{{"op":3,"msg":"{text}"}}"#).into_bytes()
    }

    #[test]
    fn numbers_keeps_and_recovers() {
        let h = MemoryHistory::new(Limits { size: 3, max_age: Duration::from_secs(60) });
        let start = h.join(1, None).position;
        assert_eq!(start.seq, 0);
        let (p1, b1) = h.append(1, &msg("a"));
        assert_eq!(p1, Position { epoch: start.epoch.clone(), seq: 1 });
        let expected = format!(r#"{{"op":3,"msg":"a","seq":1,"epoch":"{}"}}"#, start.epoch);
        assert_eq!(String::from_utf8(b1).unwrap(), expected);
        for t in ["b", "c", "d"] {
            h.append(1, &msg(t));
        }
        assert_eq!(h.append(2, &msg("x")).0.seq, 1, "each room counts its own");
        let r = h.join(1, Some(&p1));
        assert_eq!((r.position.seq, r.recovered, r.bodies.len()), (4, Some(true), 3), "2, 3 and 4 kept");
        let r = h.join(1, Some(&start));
        assert_eq!(r.recovered, Some(false), "1 fell out of the 3 kept");
        let (at, last) = h.latest(1, 2);
        assert_eq!(at.seq, 4);
        assert!(String::from_utf8_lossy(&last[1]).contains(r#""msg":"d","seq":4"#));
    }

    #[test]
    fn old_messages_and_idle_rooms_expire() {
        let h = MemoryHistory::new(Limits { size: 10, max_age: Duration::from_millis(50) });
        let (p, _) = h.append(1, &msg("a"));
        std::thread::sleep(Duration::from_millis(60));
        let r = h.join(1, Some(&Position { epoch: p.epoch.clone(), seq: 0 }));
        assert_eq!(r.recovered, Some(false), "an idle room starts over");
        assert_ne!(r.position.epoch, p.epoch, "with a new epoch");
        assert_eq!(r.position.seq, 0);
    }
}
