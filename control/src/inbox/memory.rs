//! Kept private messages in this process's memory, bounded per user, per sender of each user's
//! and in all (`max_bytes`).

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::{take_chunk, Chunk, Limits, NotKept};

/// One user's kept messages: id → (kept since, sender, body), and how many each sender has.
#[derive(Default)]
struct Kept {
    messages: BTreeMap<u64, (Instant, u64, Vec<u8>)>,
    /// Keyed by user ids, which the server assigns: a fast hash is safe.
    senders: FxHashMap<u64, usize>,
}

impl Kept {
    /// Drops message `id`; the bytes it freed.
    fn remove(&mut self, id: u64) -> usize {
        let Some((_, from, body)) = self.messages.remove(&id) else { return 0 };
        if let Some(n) = self.senders.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                self.senders.remove(&from);
            }
        }
        body.len()
    }

    /// Drops the messages kept since before `max_age`; the bytes freed.
    fn expire(&mut self, now: Instant, max_age: std::time::Duration) -> usize {
        let mut freed = 0;
        // Ids are in time order, so the expired ones are the first.
        while let Some((&id, (at, _, _))) = self.messages.first_key_value() {
            if now.duration_since(*at) < max_age {
                break;
            }
            freed += self.remove(id);
        }
        freed
    }
}

struct Users {
    kept: HashMap<u64, Kept>,
    /// When expired messages were last dropped for everyone.
    swept: Instant,
    /// Bytes of bodies kept, over every user.
    bytes: usize,
}

pub struct MemoryInbox {
    limits: Limits,
    users: Mutex<Users>,
}

impl MemoryInbox {
    pub fn new(limits: Limits) -> Self {
        let users = Users { kept: HashMap::new(), swept: Instant::now(), bytes: 0 };
        Self { limits, users: Mutex::new(users) }
    }

    /// The user's kept messages, the expired ones dropped, with the bytes kept in all.
    fn with_user<T>(&self, user_id: u64, f: impl FnOnce(&mut Kept, &mut usize) -> T) -> T {
        let now = Instant::now();
        let mut guard = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let users = &mut *guard;
        let max_age = self.limits.max_age;
        // Once an age limit, so users who never come back do not keep theirs forever.
        if now.duration_since(users.swept) >= max_age {
            let mut freed = 0;
            users.kept.retain(|_, kept| {
                freed += kept.expire(now, max_age);
                !kept.messages.is_empty()
            });
            users.bytes -= freed;
            users.swept = now;
            crate::memory::released(freed);
            // Gone users' slots too, once their number has fallen well below the table's room.
            if users.kept.capacity() > 4 * users.kept.len() + 1024 {
                users.kept.shrink_to_fit();
            }
        }
        let kept = users.kept.entry(user_id).or_default();
        users.bytes -= kept.expire(now, max_age);
        let out = f(kept, &mut users.bytes);
        if kept.messages.is_empty() {
            users.kept.remove(&user_id);
        }
        out
    }

    pub fn keep(&self, user_id: u64, from: u64, id: u64, body: &[u8]) -> Result<(), NotKept> {
        self.with_user(user_id, |kept, bytes| {
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
            if self.limits.max_bytes > 0 && *bytes + body.len() > self.limits.max_bytes {
                return Err(NotKept::StoreFull);
            }
            *bytes += body.len();
            *kept.senders.entry(from).or_default() += 1;
            kept.messages.insert(id, (Instant::now(), from, body.to_vec()));
            Ok(())
        })
    }

    pub fn chunk(&self, user_id: u64, after: u64, take: bool) -> Chunk {
        self.with_user(user_id, |kept, bytes| {
            let chunk =
                take_chunk(kept.messages.iter().map(|(id, (_, _, body))| (*id, body.as_slice())), after);
            if take {
                *bytes -= chunk.ids.iter().map(|id| kept.remove(*id)).sum::<usize>();
            }
            chunk
        })
    }

    pub fn ack(&self, user_id: u64, ids: &[u64]) {
        self.with_user(user_id, |kept, bytes| *bytes -= ids.iter().map(|id| kept.remove(*id)).sum::<usize>());
    }

    /// Bytes of bodies kept now, over every user.
    pub fn bytes(&self) -> usize {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).bytes
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
        let inbox = MemoryInbox::new(limits(2, 0, 0, Duration::from_millis(80)));
        assert_eq!(inbox.keep(1, 5, 10, b"a"), Ok(()));
        assert_eq!(inbox.keep(1, 5, 11, b"b"), Ok(()));
        assert_eq!(inbox.keep(1, 5, 12, b"c"), Err(NotKept::Full), "full");
        assert_eq!(inbox.keep(2, 5, 12, b"c"), Ok(()), "per user");
        let c = inbox.chunk(1, 0, false);
        assert_eq!((c.ids, c.more), (vec![10, 11], 0));
        assert_eq!(inbox.chunk(1, 10, false).ids, [11], "after an id");
        inbox.ack(1, &[10]);
        assert_eq!(inbox.chunk(1, 0, false).ids, [11]);
        assert_eq!(inbox.keep(1, 5, 12, b"c"), Ok(()), "room again");
        assert_eq!(inbox.chunk(1, 0, true).ids, [11, 12], "taken");
        assert!(inbox.chunk(1, 0, false).ids.is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert!(inbox.chunk(2, 0, false).ids.is_empty(), "expired");
        assert_eq!(inbox.bytes(), 0, "and their bytes with them");
    }

    #[test]
    fn one_sender_fills_only_its_share_of_a_users_messages() {
        let inbox = MemoryInbox::new(limits(10, 3, 0, Duration::from_secs(60)));
        for id in 1..=3 {
            assert_eq!(inbox.keep(1, 66, id, b"spam"), Ok(()));
        }
        assert_eq!(inbox.keep(1, 66, 4, b"spam"), Err(NotKept::SenderShare));
        assert_eq!(inbox.keep(1, 67, 5, b"hello"), Ok(()), "others still reach the user");
        assert_eq!(inbox.keep(2, 66, 6, b"spam"), Ok(()), "a share is per user");
        inbox.ack(1, &[1]);
        assert_eq!(inbox.keep(1, 66, 7, b"spam"), Ok(()), "a read message gives the share back");
    }

    #[test]
    fn bytes_are_bounded_in_all_and_given_back() {
        let inbox = MemoryInbox::new(limits(100, 0, 10, Duration::from_secs(60)));
        assert_eq!(inbox.keep(1, 5, 1, b"12345"), Ok(()));
        assert_eq!(inbox.keep(2, 5, 2, b"12345"), Ok(()));
        assert_eq!(inbox.keep(3, 5, 3, b"1"), Err(NotKept::StoreFull));
        assert_eq!(inbox.bytes(), 10);
        assert_eq!(inbox.chunk(1, 0, true).ids, [1]);
        assert_eq!(inbox.keep(3, 5, 3, b"1"), Ok(()), "bytes taken are given back");
        assert_eq!(inbox.bytes(), 6);
    }
}
