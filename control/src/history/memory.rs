//! Room history in this process's memory: one lock, short critical sections, bounded per room
//! (count, age) and over every room (bytes).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use gochat_proto::wire::{self, Position};

use super::{new_epoch, recover, Limits, Recovery};

/// Messages and their bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Amount {
    messages: usize,
    bytes: usize,
}

impl Amount {
    fn add(&mut self, body: &[u8]) {
        self.messages += 1;
        self.bytes += body.len();
    }

    fn sub(&mut self, other: Amount) {
        self.messages -= other.messages;
        self.bytes -= other.bytes;
    }
}

struct Log {
    /// Tells this log from an earlier one of the same room in `Rooms::order`.
    generation: u64,
    epoch: String,
    top: u64,
    /// Last appended to (or first looked at): the log is forgotten `max_age` after.
    touched: Instant,
    /// (seq, kept since, body), oldest first.
    messages: VecDeque<(u64, Instant, Vec<u8>)>,
}

impl Log {
    fn position(&self) -> Position {
        Position { epoch: self.epoch.clone(), seq: self.top }
    }

    /// Drops its oldest message; what that freed.
    fn pop(&mut self) -> Amount {
        let mut freed = Amount::default();
        if let Some((_, _, body)) = self.messages.pop_front() {
            freed.add(&body);
        }
        freed
    }

    /// Drops the messages past the room's count or age; what that freed.
    fn trim(&mut self, limits: &Limits, now: Instant) -> Amount {
        let mut freed = Amount::default();
        while self.messages.len() > limits.size
            || self.messages.front().is_some_and(|(_, at, _)| now.duration_since(*at) >= limits.max_age)
        {
            let popped = self.pop();
            freed.messages += popped.messages;
            freed.bytes += popped.bytes;
        }
        freed
    }

    fn amount(&self) -> Amount {
        let mut all = Amount::default();
        self.messages.iter().for_each(|(_, _, b)| all.add(b));
        all
    }
}

/// Every room's log, and what bounds them all.
struct Rooms {
    logs: HashMap<u64, Log>,
    /// When rooms quiet for the age limit were last forgotten.
    swept: Instant,
    /// What is kept, over every room.
    kept: Amount,
    /// With a bound on bytes: (room, log generation, seq) of messages in the order they were
    /// kept, oldest first, for whom to drop past the bound. Entries of messages gone already
    /// (trimmed, or their log forgotten) are skipped when met, and cleared out when they are
    /// most of it.
    order: VecDeque<(u64, u64, u64)>,
    generations: u64,
    /// Bytes freed by the last sweep, for the allocator to be told once the lock is released.
    sweep_freed: usize,
}

impl Rooms {
    /// The room's log, live: a log untouched for `max_age` is replaced by one of a new epoch,
    /// and rooms quiet that long are forgotten once an age limit.
    fn live(&mut self, room_id: u64, limits: &Limits, now: Instant) -> &mut Log {
        let max_age = limits.max_age;
        if now.duration_since(self.swept) >= max_age {
            let mut freed = Amount::default();
            self.logs.retain(|_, log| {
                let keep = now.duration_since(log.touched) < max_age;
                if !keep {
                    let gone = log.amount();
                    freed.messages += gone.messages;
                    freed.bytes += gone.bytes;
                }
                keep
            });
            self.kept.sub(freed);
            self.swept = now;
            self.sweep_freed += freed.bytes;
            // The table's room too, once most rooms in it are gone.
            if self.logs.capacity() > 4 * self.logs.len() + 1024 {
                self.logs.shrink_to_fit();
            }
        }
        let Rooms { logs, kept, generations, .. } = self;
        let mut fresh = || {
            *generations += 1;
            Log {
                generation: *generations,
                epoch: new_epoch(),
                top: 0,
                touched: now,
                messages: VecDeque::new(),
            }
        };
        let log = match logs.entry(room_id) {
            Entry::Vacant(e) => e.insert(fresh()),
            Entry::Occupied(e) => {
                let log = e.into_mut();
                if now.duration_since(log.touched) >= max_age {
                    kept.sub(log.amount());
                    *log = fresh();
                }
                log
            }
        };
        kept.sub(log.trim(limits, now));
        log
    }

    /// Whether the message of `entry` is still kept (messages leave a log from its front).
    fn holds(&self, &(room_id, generation, seq): &(u64, u64, u64)) -> bool {
        self.logs.get(&room_id).is_some_and(|log| {
            log.generation == generation && log.messages.front().is_some_and(|(first, _, _)| seq >= *first)
        })
    }

    /// Drops the oldest messages over every room until what is kept is within `max_bytes`.
    fn bound(&mut self, max_bytes: usize) {
        while self.kept.bytes > max_bytes {
            let Some(entry) = self.order.pop_front() else { break };
            if self.holds(&entry) {
                let freed = self.logs.get_mut(&entry.0).expect("held").pop();
                self.kept.sub(freed);
            }
        }
        if self.order.len() > 2 * self.kept.messages + 1024 {
            let order = std::mem::take(&mut self.order);
            self.order = order.into_iter().filter(|e| self.holds(e)).collect();
        }
    }
}

pub struct MemoryHistory {
    limits: Limits,
    rooms: Mutex<Rooms>,
}

impl MemoryHistory {
    pub fn new(limits: Limits) -> Self {
        let rooms = Rooms {
            logs: HashMap::new(),
            swept: Instant::now(),
            kept: Amount::default(),
            order: VecDeque::new(),
            generations: 0,
            sweep_freed: 0,
        };
        Self { limits, rooms: Mutex::new(rooms) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock, then hands what a sweep freed back to the system.
    fn unlock(mut rooms: std::sync::MutexGuard<'_, Rooms>) {
        let freed = std::mem::take(&mut rooms.sweep_freed);
        drop(rooms);
        crate::memory::released(freed);
    }

    pub fn append(&self, room_id: u64, body: &[u8]) -> (Position, Vec<u8>) {
        let now = Instant::now();
        let mut rooms = self.lock();
        let log = rooms.live(room_id, &self.limits, now);
        log.top += 1;
        log.touched = now;
        let body = wire::with_position(body, log.top, &log.epoch);
        log.messages.push_back((log.top, now, body.clone()));
        let freed = log.trim(&self.limits, now);
        let (entry, position) = ((room_id, log.generation, log.top), log.position());
        rooms.kept.add(&body);
        rooms.kept.sub(freed);
        if self.limits.max_bytes > 0 {
            rooms.order.push_back(entry);
            rooms.bound(self.limits.max_bytes);
        }
        Self::unlock(rooms);
        (position, body)
    }

    pub fn join(&self, room_id: u64, since: Option<&Position>) -> Recovery {
        let mut rooms = self.lock();
        let log = rooms.live(room_id, &self.limits, Instant::now());
        let position = log.position();
        let oldest = log.messages.front().map(|(seq, _, _)| *seq);
        let kept = log.messages.iter().map(|(seq, _, body)| (*seq, body.clone()));
        let (recovered, bodies) = recover(&position, since, oldest, kept);
        Self::unlock(rooms);
        Recovery { position, recovered, bodies }
    }

    pub fn latest(&self, room_id: u64, limit: usize) -> (Position, Vec<Vec<u8>>) {
        let mut rooms = self.lock();
        let log = rooms.live(room_id, &self.limits, Instant::now());
        let skip = log.messages.len().saturating_sub(limit);
        let latest = (log.position(), log.messages.iter().skip(skip).map(|(_, _, b)| b.clone()).collect());
        Self::unlock(rooms);
        latest
    }

    /// Bytes of messages kept now, over every room.
    pub fn bytes(&self) -> usize {
        self.lock().kept.bytes
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
        let h = MemoryHistory::new(Limits { size: 3, max_age: Duration::from_secs(60), max_bytes: 0 });
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
        let h = MemoryHistory::new(Limits { size: 10, max_age: Duration::from_millis(50), max_bytes: 0 });
        let (p, _) = h.append(1, &msg("a"));
        std::thread::sleep(Duration::from_millis(60));
        let r = h.join(1, Some(&Position { epoch: p.epoch.clone(), seq: 0 }));
        assert_eq!(r.recovered, Some(false), "an idle room starts over");
        assert_ne!(r.position.epoch, p.epoch, "with a new epoch");
        assert_eq!(r.position.seq, 0);
    }

    #[test]
    fn every_room_together_keeps_at_most_its_bytes_the_oldest_going_first() {
        let h = MemoryHistory::new(Limits { size: 100, max_age: Duration::from_secs(60), max_bytes: 2000 });
        let body = |room: u64| format!(r#"{{"op":3,"msg":"{}"}}"#, room.to_string().repeat(80)).into_bytes();
        let (first, _) = h.append(1, &body(1));
        for room in 2..=60 {
            h.append(room, &body(room));
            assert!(h.bytes() <= 2000, "{} bytes", h.bytes());
        }
        let r = h.join(1, Some(&Position { epoch: first.epoch.clone(), seq: 0 }));
        assert_eq!(r.recovered, Some(false), "room 1's message went first: its clients reload");
        assert_eq!(r.position.seq, 1, "the room still counts where it is");
        let (_, last) = h.latest(60, 10);
        assert_eq!(last.len(), 1, "the newest are kept");
        // Many messages into one room: the room's own bound turns over what it keeps, and the
        // list of what to drop first does not grow with what passed through.
        for _ in 0..10_000 {
            h.append(7, &body(7));
        }
        assert!(h.bytes() <= 2000);
        let rooms = h.lock();
        assert!(rooms.order.len() <= 2 * rooms.kept.messages + 1024, "{} entries", rooms.order.len());
    }

    #[test]
    fn forgotten_rooms_give_their_bytes_back() {
        let h =
            MemoryHistory::new(Limits { size: 10, max_age: Duration::from_millis(50), max_bytes: 1 << 20 });
        for room in 1..=20 {
            h.append(room, &msg("a"));
        }
        assert!(h.bytes() > 0);
        std::thread::sleep(Duration::from_millis(60));
        h.append(99, &msg("b"));
        assert_eq!(h.bytes(), h.latest(99, 1).1[0].len(), "only the new room's message is counted");
        assert_eq!(h.lock().logs.len(), 1, "the quiet rooms are forgotten");
    }
}
