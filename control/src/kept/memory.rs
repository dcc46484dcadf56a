//! Kept private messages in this process's memory, bounded per user, per sender of each user's,
//! and in all (`max_bytes`, of which one sender may hold a sixteenth).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::{take_chunk, Kept, Limits, NotKept};

/// The share of `max_bytes` one sender's kept messages may take, over every user: filling the
/// store, and with it keeping messages for everyone, takes many accounts, not one.
const SENDER_SHARE_OF_STORE: usize = 16;

/// Bytes kept over every user, and per sender. Keyed by user ids, which the server assigns: a
/// fast hash is safe.
#[derive(Default)]
struct Ledger {
    bytes: usize,
    by_sender: FxHashMap<u64, usize>,
}

impl Ledger {
    fn add(&mut self, from: u64, bytes: usize) {
        self.bytes += bytes;
        *self.by_sender.entry(from).or_default() += bytes;
    }

    fn sub(&mut self, from: u64, bytes: usize) {
        self.bytes -= bytes;
        if let Some(b) = self.by_sender.get_mut(&from) {
            *b -= bytes;
            if *b == 0 {
                self.by_sender.remove(&from);
            }
        }
    }
}

/// One user's kept messages: id → (kept since, sender, body), and how many each sender has.
#[derive(Default)]
struct UserKept {
    messages: BTreeMap<u64, (Instant, u64, Vec<u8>)>,
    senders: FxHashMap<u64, usize>,
}

impl UserKept {
    /// Drops message `id`; the bytes it freed.
    fn remove(&mut self, id: u64, ledger: &mut Ledger) -> usize {
        let Some((_, from, body)) = self.messages.remove(&id) else { return 0 };
        if let Some(n) = self.senders.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                self.senders.remove(&from);
            }
        }
        ledger.sub(from, body.len());
        body.len()
    }

    /// Drops the messages kept since before `max_age`; the bytes freed.
    fn expire(&mut self, now: Instant, max_age: std::time::Duration, ledger: &mut Ledger) -> usize {
        let mut freed = 0;
        // Ids are in time order, so the expired ones are the first.
        while let Some((&id, (at, _, _))) = self.messages.first_key_value() {
            if now.duration_since(*at) < max_age {
                break;
            }
            freed += self.remove(id, ledger);
        }
        freed
    }
}

struct Users {
    kept: HashMap<u64, UserKept>,
    /// When expired messages were last dropped for everyone.
    swept: Instant,
    ledger: Ledger,
}

pub struct MemoryKeptStore {
    limits: Limits,
    users: Mutex<Users>,
}

impl MemoryKeptStore {
    pub fn new(limits: Limits) -> Self {
        let users = Users { kept: HashMap::new(), swept: Instant::now(), ledger: Ledger::default() };
        Self { limits, users: Mutex::new(users) }
    }

    /// The user's kept messages, the expired ones dropped, with the ledger of every user's.
    fn with_user<T>(&self, user_id: u64, f: impl FnOnce(&mut UserKept, &mut Ledger) -> T) -> T {
        let now = Instant::now();
        let mut guard = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let users = &mut *guard;
        let max_age = self.limits.max_age;
        // Once an age limit, so users who never come back do not keep theirs forever.
        let mut swept = 0;
        if now.duration_since(users.swept) >= max_age {
            let ledger = &mut users.ledger;
            users.kept.retain(|_, kept| {
                swept += kept.expire(now, max_age, ledger);
                !kept.messages.is_empty()
            });
            users.swept = now;
            // Gone users' slots too, once their number has fallen well below the table's room.
            if users.kept.capacity() > 4 * users.kept.len() + 1024 {
                users.kept.shrink_to_fit();
            }
        }
        let kept = users.kept.entry(user_id).or_default();
        kept.expire(now, max_age, &mut users.ledger);
        let out = f(kept, &mut users.ledger);
        if kept.messages.is_empty() {
            users.kept.remove(&user_id);
        }
        drop(guard);
        crate::memory::released(swept);
        out
    }

    pub fn keep(&self, user_id: u64, from: u64, id: u64, body: &[u8]) -> Result<(), NotKept> {
        self.with_user(user_id, |kept, ledger| {
            if kept.messages.contains_key(&id) {
                return Ok(());
            }
            if kept.messages.len() >= self.limits.size {
                return Err(NotKept::Full);
            }
            if self.limits.per_sender > 0
                && kept.senders.get(&from).copied().unwrap_or(0) >= self.limits.per_sender
            {
                return Err(NotKept::SenderShare);
            }
            if self.limits.max_bytes > 0 {
                let sender_bytes = ledger.by_sender.get(&from).copied().unwrap_or(0);
                if sender_bytes + body.len() > self.limits.max_bytes / SENDER_SHARE_OF_STORE {
                    return Err(NotKept::SenderTotal);
                }
                if ledger.bytes + body.len() > self.limits.max_bytes {
                    return Err(NotKept::StoreFull);
                }
            }
            ledger.add(from, body.len());
            *kept.senders.entry(from).or_default() += 1;
            kept.messages.insert(id, (Instant::now(), from, body.to_vec()));
            Ok(())
        })
    }

    pub fn chunk(&self, user_id: u64, after: u64, take: bool) -> Kept {
        self.with_user(user_id, |kept, ledger| {
            let chunk =
                take_chunk(kept.messages.iter().map(|(id, (_, _, body))| (*id, body.as_slice())), after);
            if take {
                for id in &chunk.ids {
                    kept.remove(*id, ledger);
                }
            }
            chunk
        })
    }

    pub fn ack(&self, user_id: u64, ids: &[u64]) {
        self.with_user(user_id, |kept, ledger| {
            for id in ids {
                kept.remove(*id, ledger);
            }
        });
    }

    /// Bytes of bodies kept now, over every user.
    pub fn bytes(&self) -> usize {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).ledger.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(size: usize, per_sender: usize, max_bytes: usize, max_age: Duration) -> Limits {
        Limits { size, per_sender, max_bytes, max_age }
    }

    #[test]
    fn keeps_until_acknowledged_bounded_and_expiring() {
        let store = MemoryKeptStore::new(limits(2, 0, 0, Duration::from_millis(80)));
        assert_eq!(store.keep(1, 5, 10, b"a"), Ok(()));
        assert_eq!(store.keep(1, 5, 11, b"b"), Ok(()));
        assert_eq!(store.keep(1, 5, 12, b"c"), Err(NotKept::Full), "full");
        assert_eq!(store.keep(2, 5, 12, b"c"), Ok(()), "per user");
        let c = store.chunk(1, 0, false);
        assert_eq!((c.ids, c.more), (vec![10, 11], 0));
        assert_eq!(store.chunk(1, 10, false).ids, [11], "after an id");
        store.ack(1, &[10]);
        assert_eq!(store.chunk(1, 0, false).ids, [11]);
        assert_eq!(store.keep(1, 5, 12, b"c"), Ok(()), "room again");
        assert_eq!(store.chunk(1, 0, true).ids, [11, 12], "taken");
        assert!(store.chunk(1, 0, false).ids.is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert!(store.chunk(2, 0, false).ids.is_empty(), "expired");
        assert_eq!(store.bytes(), 0, "and their bytes with them");
    }

    #[test]
    fn one_sender_fills_only_its_share_of_a_users_messages() {
        let store = MemoryKeptStore::new(limits(10, 3, 0, Duration::from_secs(60)));
        for id in 1..=3 {
            assert_eq!(store.keep(1, 66, id, b"spam"), Ok(()));
        }
        assert_eq!(store.keep(1, 66, 4, b"spam"), Err(NotKept::SenderShare));
        assert_eq!(store.keep(1, 67, 5, b"hello"), Ok(()), "others still reach the user");
        assert_eq!(store.keep(2, 66, 6, b"spam"), Ok(()), "a share is per user");
        store.ack(1, &[1]);
        assert_eq!(store.keep(1, 66, 7, b"spam"), Ok(()), "a read message gives the share back");
    }

    #[test]
    fn bytes_are_bounded_in_all_and_per_sender_and_given_back() {
        let store = MemoryKeptStore::new(limits(100, 0, 160, Duration::from_secs(60)));
        // A sender holds at most a sixteenth of the store (10 bytes), over every user.
        assert_eq!(store.keep(1, 5, 1, b"12345"), Ok(()));
        assert_eq!(store.keep(2, 5, 2, b"12345"), Ok(()));
        assert_eq!(store.keep(3, 5, 3, b"1"), Err(NotKept::SenderTotal));
        for sender in 6..21 {
            assert_eq!(store.keep(3, sender, 100 + sender, b"1234567890"), Ok(()), "sender {sender}");
        }
        assert_eq!(store.bytes(), 160);
        assert_eq!(store.keep(4, 30, 4, b"1"), Err(NotKept::StoreFull));
        assert_eq!(store.chunk(1, 0, true).ids, [1]);
        assert_eq!(store.keep(3, 5, 3, b"1"), Ok(()), "bytes taken are given back, to the sender too");
        assert_eq!(store.bytes(), 156);
        store.ack(3, &(106..121).collect::<Vec<_>>());
        store.ack(3, &[3]);
        store.ack(2, &[2, 2]);
        assert_eq!(store.bytes(), 0);
        assert!(store.users.lock().unwrap().ledger.by_sender.is_empty(), "no sender left counted");
    }
}
