//! What a client that recovers does with a room's numbered messages before its application
//! sees them: each message once, in seq order, across reconnects and worker failovers, or a
//! signal saying what could not be had. Sans-IO: the caller feeds it the join answers, the
//! messages (live, recovered or fetched) and the time, and carries out the fetches it asks for.
//! The rules are those of docs/guarantees.md, "Clients that recover".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gochat_proto::wire::Position;

/// When messages held behind a gap are waited for, fetched, or given up.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The gap is fetched once the oldest message held behind it has waited this long…
    pub fetch_after: Duration,
    /// …or once the newest message held is this many seqs past the last one handed on: a room
    /// keeps its last 100 messages by default, so the gap is fetched while the history has it.
    pub fetch_ahead: u64,
    /// A fetch that failed or did not fill the gap is asked again after this.
    pub refetch_after: Duration,
    /// A gap still open when the oldest message held behind it has waited this long is given
    /// up (a reload): its messages are in no history any more and did not come live.
    pub give_up_after: Duration,
    /// Messages held at most; one more gives the gap up at once.
    pub max_held: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            fetch_after: Duration::from_millis(500),
            fetch_ahead: 50,
            refetch_after: Duration::from_millis(500),
            give_up_after: Duration::from_secs(5),
            max_held: 1000,
        }
    }
}

/// What the application is handed, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    /// The room's next message.
    Message(T),
    /// Messages after `after` were not all had: the application reloads the room (its history
    /// route) before the messages that follow.
    Reload { after: Position, why: Why },
    /// The room's history started again (lost or expired): seqs count from 1 in `epoch`.
    NewEpoch { epoch: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Why {
    /// The server answered a join from a position with `recovered: false`.
    NotRecovered,
    /// A gap was neither filled live nor by fetches in time.
    GapGivenUp,
}

/// A fetch the caller should make: the room's history after `after` (`/push/history`, or a
/// join from `after`), fed back through [`Room::fetched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub after: Position,
    /// The first seq held past the gap.
    pub held_from: u64,
}

/// What the layer did, for the bench's report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Messages dropped as ones the application had (seq at or below its position) or held.
    pub repeats_dropped: u64,
    /// Messages that arrived past a gap and were held.
    pub held: u64,
    pub held_max: u64,
    pub fetches: u64,
    /// Messages the application got from a fetch rather than live.
    pub fetched_used: u64,
    pub reloads: u64,
    pub new_epochs: u64,
}

/// One room's order, as the application sees it.
#[derive(Debug)]
pub struct Room<T> {
    rules: Rules,
    /// The epoch and the last seq handed to the application; none before the first join answer.
    at: Option<Position>,
    /// An epoch the room left: late copies of its messages are repeats, not another new epoch.
    left: Option<String>,
    /// Messages past a gap, by seq, with when they arrived.
    held: BTreeMap<u64, (Instant, T)>,
    fetching: bool,
    /// The position a fetch was last asked from, and when: the same gap is asked again only
    /// after `refetch_after`.
    last_fetch: Option<(u64, Instant)>,
    stats: Stats,
}

impl<T> Default for Room<T> {
    fn default() -> Self {
        Self::new(Rules::default())
    }
}

impl<T> Room<T> {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            at: None,
            left: None,
            held: BTreeMap::new(),
            fetching: false,
            last_fetch: None,
            stats: Stats::default(),
        }
    }

    /// The position to join from (the auth frame's or op 10's `epoch` and `seq`): the last
    /// message handed to the application.
    pub fn position(&self) -> Option<&Position> {
        self.at.as_ref()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Messages held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A join's answer (op 7 or op 10): where the room stands, and `recovered` when the join
    /// gave a position.
    pub fn joined(&mut self, room: Position, recovered: Option<bool>, out: &mut Vec<Event<T>>) {
        let Some(at) = &self.at else {
            // A first join: the application starts after what the room had; those messages
            // are the history's.
            self.at = Some(room);
            return;
        };
        if recovered == Some(true) && room.epoch == at.epoch {
            // What was missed follows, oldest first, before the live messages.
            return;
        }
        let at = at.clone();
        self.stats.reloads += 1;
        out.push(Event::Reload { after: at.clone(), why: Why::NotRecovered });
        if room.epoch != at.epoch {
            self.stats.new_epochs += 1;
            self.left = Some(at.epoch);
            out.push(Event::NewEpoch { epoch: room.epoch.clone() });
        }
        // The reload shows the room as it stands: what was held is in it, or older than it.
        self.held.clear();
        self.last_fetch = None;
        self.at = Some(room);
    }

    /// A numbered message (live, recovered after a join, or fetched) that arrived at `now`.
    pub fn message(&mut self, pos: Position, item: T, now: Instant, out: &mut Vec<Event<T>>) {
        let at = self.at.get_or_insert_with(|| {
            // No join answer yet (a server sends one first): start from this message.
            Position { epoch: pos.epoch.clone(), seq: pos.seq.saturating_sub(1) }
        });
        if pos.epoch != at.epoch {
            if self.left.as_ref() == Some(&pos.epoch) {
                self.stats.repeats_dropped += 1;
                return;
            }
            self.new_epoch(pos.epoch.clone(), out);
        }
        let at = self.at.as_mut().expect("set above");
        if pos.seq <= at.seq || self.held.contains_key(&pos.seq) {
            self.stats.repeats_dropped += 1;
            return;
        }
        if pos.seq == at.seq + 1 {
            at.seq += 1;
            out.push(Event::Message(item));
            self.drain(out);
            return;
        }
        self.held.insert(pos.seq, (now, item));
        self.stats.held += 1;
        self.stats.held_max = self.stats.held_max.max(self.held.len() as u64);
        if self.held.len() > self.rules.max_held {
            self.give_up(out);
        }
    }

    /// The answer to a [`Fetch`]: the history's messages (the room's current epoch), or None
    /// when the fetch failed.
    pub fn fetched(&mut self, messages: Option<Vec<(Position, T)>>, now: Instant, out: &mut Vec<Event<T>>) {
        self.fetching = false;
        for (pos, item) in messages.into_iter().flatten() {
            let before = (self.at.clone(), self.held.len());
            let mut events = Vec::new();
            self.message(pos, item, now, &mut events);
            // Used when it was handed on or held, not dropped as a repeat.
            if (self.at.clone(), self.held.len()) != before {
                self.stats.fetched_used += 1;
            }
            out.append(&mut events);
        }
    }

    /// What is due at `now`: gaps given up (into `out`), and the fetch to make, if any.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Event<T>>) -> Option<Fetch> {
        while self.oldest_held().is_some_and(|t| now >= t + self.rules.give_up_after) {
            self.give_up(out);
        }
        let oldest = self.oldest_held()?;
        let (&first, at) = (self.held.keys().next()?, self.at.as_ref()?);
        let last = *self.held.keys().next_back()?;
        let due = now >= oldest + self.rules.fetch_after || last - at.seq >= self.rules.fetch_ahead;
        let again =
            self.last_fetch.is_none_or(|(seq, t)| seq != at.seq || now >= t + self.rules.refetch_after);
        if self.fetching || !due || !again {
            return None;
        }
        self.fetching = true;
        self.last_fetch = Some((at.seq, now));
        self.stats.fetches += 1;
        Some(Fetch { after: at.clone(), held_from: first })
    }

    /// When [`Room::poll`] next has something to do (None: nothing held).
    pub fn next_poll(&self) -> Option<Instant> {
        let oldest = self.oldest_held()?;
        let give_up = oldest + self.rules.give_up_after;
        let fetch = match self.last_fetch {
            Some((seq, t)) if self.at.as_ref().is_some_and(|at| at.seq == seq) => {
                (oldest + self.rules.fetch_after).max(t + self.rules.refetch_after)
            }
            _ => oldest + self.rules.fetch_after,
        };
        Some(if self.fetching { give_up } else { give_up.min(fetch) })
    }

    fn oldest_held(&self) -> Option<Instant> {
        self.held.values().map(|(t, _)| *t).min()
    }

    /// Hands on the held messages that now follow the position.
    fn drain(&mut self, out: &mut Vec<Event<T>>) {
        let Some(at) = self.at.as_mut() else { return };
        while let Some(entry) = self.held.first_entry().filter(|e| *e.key() == at.seq + 1) {
            let (_, item) = entry.remove();
            at.seq += 1;
            out.push(Event::Message(item));
        }
    }

    /// Gives up the first gap: reload, then the messages held past it.
    fn give_up(&mut self, out: &mut Vec<Event<T>>) {
        let (Some(&first), Some(at)) = (self.held.keys().next(), self.at.as_mut()) else { return };
        self.stats.reloads += 1;
        out.push(Event::Reload { after: at.clone(), why: Why::GapGivenUp });
        at.seq = first - 1;
        self.last_fetch = None;
        self.drain(out);
    }

    /// The room's history started again: what is held behind a gap will not be filled any more.
    fn new_epoch(&mut self, epoch: String, out: &mut Vec<Event<T>>) {
        while !self.held.is_empty() {
            self.give_up(out);
        }
        self.stats.new_epochs += 1;
        out.push(Event::NewEpoch { epoch: epoch.clone() });
        let old = self.at.replace(Position { epoch, seq: 0 });
        self.left = old.map(|p| p.epoch);
        self.last_fetch = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: &str = "e1";

    fn at(seq: u64) -> Position {
        Position { epoch: EPOCH.into(), seq }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// A room joined at `seq` 10 of EPOCH.
    fn room() -> Room<u64> {
        let mut r = Room::new(Rules::default());
        let mut out = Vec::new();
        r.joined(at(10), None, &mut out);
        assert!(out.is_empty());
        r
    }

    /// Feeds `seqs` (of EPOCH) at `now`; the seqs handed on.
    fn feed(r: &mut Room<u64>, seqs: &[u64], now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        for &s in seqs {
            r.message(at(s), s, now, &mut out);
        }
        messages(&out)
    }

    fn messages(out: &[Event<u64>]) -> Vec<u64> {
        out.iter().filter_map(|e| if let Event::Message(s) = e { Some(*s) } else { None }).collect()
    }

    #[test]
    fn in_order_messages_pass_and_repeats_are_dropped() {
        let t0 = Instant::now();
        let mut r = room();
        assert_eq!(feed(&mut r, &[11, 12, 12, 9, 13], t0), [11, 12, 13]);
        assert_eq!(r.stats().repeats_dropped, 2, "12 again, and 9 from before the join");
        assert_eq!(r.position(), Some(&at(13)));
        assert_eq!(r.next_poll(), None, "nothing held, nothing to wake for");
    }

    #[test]
    fn messages_past_a_gap_wait_for_it_and_follow_it() {
        let t0 = Instant::now();
        let mut r = room();
        assert_eq!(feed(&mut r, &[11, 13, 14], t0), [11]);
        assert_eq!(r.held(), 2);
        assert_eq!(r.position(), Some(&at(11)), "a reconnect resumes after what was handed on");
        assert_eq!(feed(&mut r, &[14], t0), [] as [u64; 0], "a held one again is a repeat");
        assert_eq!(feed(&mut r, &[12], ms(t0, 100)), [12, 13, 14]);
        assert_eq!((r.held(), r.stats().held, r.stats().held_max), (0, 2, 2));
        let mut out = Vec::new();
        assert_eq!(r.poll(ms(t0, 10_000), &mut out), None);
        assert!(out.is_empty(), "the gap filled: nothing to fetch or give up");
    }

    #[test]
    fn a_gap_is_fetched_after_a_while_or_once_far_behind() {
        let t0 = Instant::now();
        let mut r = room();
        feed(&mut r, &[12], t0);
        let mut out = Vec::new();
        assert_eq!(r.poll(ms(t0, 499), &mut out), None, "not yet");
        assert_eq!(r.next_poll(), Some(ms(t0, 500)));
        assert_eq!(r.poll(ms(t0, 500), &mut out), Some(Fetch { after: at(10), held_from: 12 }));
        assert_eq!(r.poll(ms(t0, 600), &mut out), None, "one fetch at a time");
        // Far behind: 50 seqs past the position are a fetch at once, before the history drops
        // the gap.
        let mut r = room();
        feed(&mut r, &(12..=59).collect::<Vec<_>>(), t0);
        assert_eq!(r.poll(t0, &mut out), None, "49 past it");
        feed(&mut r, &[60], t0);
        assert!(r.poll(t0, &mut out).is_some(), "50 past it");
        assert!(out.is_empty());
    }

    #[test]
    fn a_fetch_fills_the_gap_and_what_it_had_is_not_repeated() {
        let t0 = Instant::now();
        let mut r = room();
        feed(&mut r, &[13, 14], t0);
        let mut out = Vec::new();
        let fetch = r.poll(ms(t0, 500), &mut out).unwrap();
        assert_eq!(fetch.after, at(10));
        // The history's last messages: some the application had, the gap, held ones, newer.
        let history = (8..=15).map(|s| (at(s), s)).collect();
        r.fetched(Some(history), ms(t0, 520), &mut out);
        assert_eq!(messages(&out), [11, 12, 13, 14, 15]);
        assert_eq!(r.stats().fetched_used, 3, "11, 12 and 15; 13 and 14 were held");
        assert_eq!(feed(&mut r, &[15, 16], ms(t0, 530)), [16], "the live copy of 15 is a repeat");
        assert_eq!(r.stats().fetches, 1);
    }

    #[test]
    fn a_gap_the_fetch_misses_is_asked_again_then_given_up() {
        let t0 = Instant::now();
        let mut r = room();
        feed(&mut r, &[12, 13], t0);
        let mut out = Vec::new();
        assert!(r.poll(ms(t0, 500), &mut out).is_some());
        r.fetched(None, ms(t0, 510), &mut out);
        assert_eq!(r.poll(ms(t0, 900), &mut out), None, "asked again only after refetch_after");
        assert_eq!(r.next_poll(), Some(ms(t0, 1000)));
        assert!(r.poll(ms(t0, 1000), &mut out).is_some());
        // The history no longer has 11 (it starts at 12): the gap stays open.
        r.fetched(Some(vec![(at(12), 12), (at(13), 13)]), ms(t0, 1010), &mut out);
        assert!(out.is_empty(), "nothing handed on out of order: {out:?}");
        assert_eq!(r.next_poll(), Some(ms(t0, 1500)));
        // A live copy can still fill it…
        let mut late = room();
        feed(&mut late, &[12], t0);
        assert_eq!(feed(&mut late, &[11], ms(t0, 4000)), [11, 12]);
        // …but not after give_up_after: a reload, then what was held.
        r.poll(ms(t0, 4999), &mut out);
        assert!(out.is_empty());
        assert_eq!(r.poll(ms(t0, 5000), &mut out), None);
        assert_eq!(
            out,
            [Event::Reload { after: at(10), why: Why::GapGivenUp }, Event::Message(12), Event::Message(13)]
        );
        assert_eq!(r.stats().reloads, 1);
        assert_eq!(feed(&mut r, &[11, 14], ms(t0, 5001)), [14], "the late 11 is dropped");
    }

    #[test]
    fn holding_is_bounded() {
        let t0 = Instant::now();
        let mut r = Room::new(Rules { max_held: 3, ..Rules::default() });
        let mut out = Vec::new();
        r.joined(at(0), None, &mut out);
        assert_eq!(feed(&mut r, &[2, 3, 4], t0), [] as [u64; 0]);
        let mut out = Vec::new();
        r.message(at(6), 6, t0, &mut out);
        assert_eq!(
            out,
            [
                Event::Reload { after: at(0), why: Why::GapGivenUp },
                Event::Message(2),
                Event::Message(3),
                Event::Message(4)
            ]
        );
        assert_eq!(r.held(), 1, "6 waits for 5");
    }

    #[test]
    fn a_join_that_did_not_recover_is_a_reload_and_a_new_epoch_is_told() {
        let t0 = Instant::now();
        let mut r = room();
        feed(&mut r, &[11, 13], t0);
        let mut out = Vec::new();
        r.joined(at(20), Some(true), &mut out);
        assert!(out.is_empty(), "recovered: 12 and on follow");
        assert_eq!(r.position(), Some(&at(11)));
        r.joined(at(20), Some(false), &mut out);
        assert_eq!(out, [Event::Reload { after: at(11), why: Why::NotRecovered }]);
        assert_eq!((r.position(), r.held()), (Some(&at(20)), 0), "continues from the room's position");
        out.clear();
        let e2 = Position { epoch: "e2".into(), seq: 3 };
        r.joined(e2.clone(), Some(false), &mut out);
        assert_eq!(
            out,
            [Event::Reload { after: at(20), why: Why::NotRecovered }, Event::NewEpoch { epoch: "e2".into() }]
        );
        assert_eq!(r.position(), Some(&e2));
        assert_eq!((r.stats().reloads, r.stats().new_epochs), (2, 1));
    }

    #[test]
    fn a_new_epoch_on_a_live_message_restarts_the_count() {
        let t0 = Instant::now();
        let mut r = room();
        feed(&mut r, &[11, 13], t0);
        let e2 = |seq| Position { epoch: "e2".into(), seq };
        let mut out = Vec::new();
        r.message(e2(2), 102, t0, &mut out);
        assert_eq!(
            out,
            [
                Event::Reload { after: at(11), why: Why::GapGivenUp },
                Event::Message(13),
                Event::NewEpoch { epoch: "e2".into() }
            ],
            "the old epoch's gap cannot fill any more"
        );
        out.clear();
        r.message(e2(1), 101, t0, &mut out);
        assert_eq!(messages(&out), [101, 102], "seqs count from 1 in a new epoch");
        assert_eq!(feed(&mut r, &[14], t0), [] as [u64; 0], "a late copy of the old epoch is a repeat");
        assert_eq!(r.stats().new_epochs, 1);
        assert_eq!(r.position(), Some(&e2(2)));
    }
}
