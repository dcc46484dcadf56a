//! One timer wheel per shard (1 s slots) instead of a timer per connection. Each connection has
//! at most one entry; when it fires, the shard re-derives the next deadline from the
//! connection's state, so activity never has to touch the wheel.

const SLOTS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: u32,
    key: u32,
    id: u64,
}

#[derive(Debug)]
pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    /// The last second processed.
    now: u32,
}

impl TimerWheel {
    pub fn new(now: u32) -> Self {
        Self { slots: (0..SLOTS).map(|_| Vec::new()).collect(), now }
    }

    /// The last second processed.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Schedules connection (`key`, `id`) to be looked at on second `at` (or the next tick).
    /// Returns the second it will fire on.
    pub fn schedule(&mut self, at: u32, key: u32, id: u64) -> u32 {
        let at = at.max(self.now + 1);
        self.slots[at as usize % SLOTS].push(Entry { at, key, id });
        at
    }

    /// Advances to `now`, handing every due entry (key, id, second) to `f`.
    pub fn advance(&mut self, now: u32, mut f: impl FnMut(u32, u64, u32)) {
        // After a long stall, one pass over every slot catches everything.
        let from = self.now + 1;
        let to = now.min(self.now + SLOTS as u32);
        self.now = now.max(self.now);
        for t in from..=to {
            let slot = std::mem::take(&mut self.slots[t as usize % SLOTS]);
            let mut keep = Vec::new();
            for e in slot {
                if e.at <= now {
                    f(e.key, e.id, e.at);
                } else {
                    keep.push(e);
                }
            }
            let s = &mut self.slots[t as usize % SLOTS];
            keep.append(s);
            *s = keep;
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(w: &mut TimerWheel, now: u32) -> Vec<u32> {
        let mut v = Vec::new();
        w.advance(now, |k, _, _| v.push(k));
        v.sort();
        v
    }

    #[test]
    fn fires_on_time_including_past_one_round() {
        let mut w = TimerWheel::new(0);
        w.schedule(5, 1, 10);
        w.schedule(5 + SLOTS as u32, 2, 20);
        w.schedule(0, 3, 30);
        assert_eq!(fired(&mut w, 1), vec![3], "past deadlines fire on the next tick");
        assert_eq!(fired(&mut w, 4), Vec::<u32>::new());
        assert_eq!(fired(&mut w, 5), vec![1]);
        assert_eq!(fired(&mut w, 5 + SLOTS as u32 - 1), Vec::<u32>::new());
        assert_eq!(fired(&mut w, 5 + SLOTS as u32), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn long_stall_fires_everything_due() {
        let mut w = TimerWheel::new(0);
        for k in 1..=10 {
            w.schedule(k * 7, k, 0);
        }
        assert_eq!(fired(&mut w, 1000), (1..=10).collect::<Vec<_>>());
    }
}
