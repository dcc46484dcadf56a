//! Kept private messages in this process's memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use super::{take_chunk, Chunk, Full, Limits};

/// One user's kept messages: id → (kept since, body).
type Kept = BTreeMap<u64, (Instant, Vec<u8>)>;

pub struct MemoryInbox {
    limits: Limits,
    /// The users' kept messages, and when expired ones were last dropped for everyone.
    users: Mutex<(HashMap<u64, Kept>, Instant)>,
}

impl MemoryInbox {
    pub fn new(limits: Limits) -> Self {
        Self { limits, users: Mutex::new((HashMap::new(), Instant::now())) }
    }

    /// The user's kept messages, the expired ones dropped.
    fn with_user<T>(&self, user_id: u64, f: impl FnOnce(&mut Kept) -> T) -> T {
        let now = Instant::now();
        let mut guard = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let (users, swept) = &mut *guard;
        let max_age = self.limits.max_age;
        // Once an age limit, so users who never come back do not keep theirs forever.
        if now.duration_since(*swept) >= max_age {
            users.retain(|_, kept| {
                kept.retain(|_, (at, _)| now.duration_since(*at) < max_age);
                !kept.is_empty()
            });
            *swept = now;
        }
        let kept = users.entry(user_id).or_default();
        // Ids are in time order, so the expired ones are the first.
        while let Some(oldest) = kept.first_entry() {
            if now.duration_since(oldest.get().0) < max_age {
                break;
            }
            oldest.remove();
        }
        let out = f(kept);
        if kept.is_empty() {
            users.remove(&user_id);
        }
        out
    }

    pub fn keep(&self, user_id: u64, id: u64, body: &[u8]) -> Result<(), Full> {
        self.with_user(user_id, |kept| {
            if kept.len() >= self.limits.size && !kept.contains_key(&id) {
                return Err(Full);
            }
            kept.insert(id, (Instant::now(), body.to_vec()));
            Ok(())
        })
    }

    pub fn chunk(&self, user_id: u64, after: u64, take: bool) -> Chunk {
        self.with_user(user_id, |kept| {
            let chunk = take_chunk(kept.iter().map(|(id, (_, body))| (*id, body.as_slice())), after);
            if take {
                chunk.ids.iter().for_each(|id| drop(kept.remove(id)));
            }
            chunk
        })
    }

    pub fn ack(&self, user_id: u64, ids: &[u64]) {
        self.with_user(user_id, |kept| ids.iter().for_each(|id| drop(kept.remove(id))));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keeps_until_acknowledged_bounded_and_expiring() {
        let inbox = MemoryInbox::new(Limits { size: 2, max_age: Duration::from_millis(80) });
        assert_eq!(inbox.keep(1, 10, b"a"), Ok(()));
        assert_eq!(inbox.keep(1, 11, b"b"), Ok(()));
        assert_eq!(inbox.keep(1, 12, b"c"), Err(Full), "full");
        assert_eq!(inbox.keep(2, 12, b"c"), Ok(()), "per user");
        let c = inbox.chunk(1, 0, false);
        assert_eq!((c.ids, c.more), (vec![10, 11], 0));
        assert_eq!(inbox.chunk(1, 10, false).ids, [11], "after an id");
        inbox.ack(1, &[10]);
        assert_eq!(inbox.chunk(1, 0, false).ids, [11]);
        assert_eq!(inbox.keep(1, 12, b"c"), Ok(()), "room again");
        assert_eq!(inbox.chunk(1, 0, true).ids, [11, 12], "taken");
        assert!(inbox.chunk(1, 0, false).ids.is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert!(inbox.chunk(2, 0, false).ids.is_empty(), "expired");
    }
}
