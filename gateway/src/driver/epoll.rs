//! The epoll driver: one epoll instance per shard thread, no runtime. Portable; the fallback.
//!
//! - Connections, the shard's listeners and the inbox's eventfd are registered in one epoll,
//!   edge-triggered, once each. An event's data names its [`Kind`], its slot (a connection's
//!   is the shard's key) and a generation, so an event left over from a connection whose key
//!   was taken by a newer one is ignored.
//! - A connection is its socket and its generation in a table indexed by the shard's key, a few
//!   bytes; it reads into the shard's scratch buffer, so an idle connection holds no buffer, no
//!   task and no allocation of its own.
//! - Edge-triggered readiness is reported once: a connection reads until the socket has no more
//!   (`EAGAIN`), or at most `READ_BUDGET` times per wake-up, after which it is served again on
//!   the next turn of the loop (which then does not wait), so no input is left behind. Writes go
//!   until the socket refuses (`EAGAIN`), and the next `EPOLLOUT` edge resumes them.
//! - A socket we closed lingers in the loop (shutdown of our side, input read and discarded
//!   until the peer's close or `LINGER`), then closes.
//! - The shard's one-second ticks come from `epoll_wait`'s timeout, computed from the next tick.

mod event_data;
mod sys;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::mpsc;

use super::{Clock, Endpoint, ShardSetup};
use crate::shard::{Effect, Inbox, Shard};
use event_data::{decode, event_data, Kind, MAX_SLOTS};
use sys::Epoll;

const SCRATCH: usize = 64 * 1024;
/// Reads per wake-up before a connection yields to the others.
const READ_BUDGET: usize = 16;
/// Accepts per wake-up before a listener yields to the connections.
const ACCEPT_BUDGET: usize = 64;
const IOV_MAX: usize = 64;
/// Inbox commands handled before the output they queued is written.
const INBOX_BATCH: usize = 64;
/// How long a closed socket waits for the peer's close before it is dropped.
const LINGER: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_secs(1);
/// The first pause of a listener that ran out of descriptors or memory, and the longest.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Events taken from the kernel per wait.
const EVENTS: usize = 1024;

const ET: u32 = libc::EPOLLET as u32;
const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const RDHUP: u32 = libc::EPOLLRDHUP as u32;
const HUP: u32 = libc::EPOLLHUP as u32;
const ERR: u32 = libc::EPOLLERR as u32;
const CONN_EVENTS: u32 = IN | OUT | RDHUP | ET;
const LINGER_EVENTS: u32 = IN | RDHUP | ET;

pub fn run(setup: ShardSetup, clock: Clock) -> io::Result<()> {
    let ShardSetup { shard, listeners, inbox, effects, grace } = setup;
    let mut d = Driver::new(shard, listeners, &inbox, effects, clock)?;
    d.event_loop(&inbox, grace)
}

/// A connection's socket, at its shard key; `fd` is `None` when no connection has the key.
struct Conn {
    fd: Option<OwnedFd>,
    gen: u32,
}

/// A socket we closed, waiting for the peer's close.
struct Lingering {
    fd: OwnedFd,
    gen: u32,
}

struct Listener {
    fd: OwnedFd,
    endpoint: Endpoint,
    /// The next pause when accepting runs out of descriptors or memory.
    backoff: Duration,
    paused_until: Option<Instant>,
}

struct Driver {
    epoll: Epoll,
    shard: Shard,
    /// Shard key → its connection's socket.
    conns: Vec<Conn>,
    lingering: Slab<Lingering>,
    /// Lingering sockets' deadlines, oldest first: (slot, generation, deadline).
    linger_deadlines: VecDeque<(u32, u32, Instant)>,
    /// Empty once the shard stopped accepting.
    listeners: Vec<Listener>,
    next_gen: u32,
    /// Registrations to serve on the next turn as if readable again: connections and lingering
    /// sockets that spent their read budget, listeners their accept budget, an inbox with more.
    again: Vec<u64>,
    scratch: Box<[u8]>,
    read_budget: usize,
    dirty: Vec<u32>,
    events: Vec<libc::epoll_event>,
    clock: Clock,
    effects: mpsc::UnboundedSender<(u32, Effect)>,
    next_tick: Instant,
    /// When the shutdown command came.
    stopping: Option<Instant>,
}

impl Driver {
    fn new(
        shard: Shard,
        listeners: Vec<(std::net::TcpListener, Endpoint)>,
        inbox: &Inbox,
        effects: mpsc::UnboundedSender<(u32, Effect)>,
        clock: Clock,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let mut d = Self {
            epoll,
            shard,
            conns: Vec::new(),
            lingering: Slab::new(),
            linger_deadlines: VecDeque::new(),
            listeners: Vec::new(),
            next_gen: 0,
            again: Vec::new(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            read_budget: READ_BUDGET,
            dirty: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            clock,
            effects,
            next_tick: Instant::now() + TICK,
            stopping: None,
        };
        for (i, (listener, endpoint)) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let fd = OwnedFd::from(listener);
            d.epoll.add(fd.as_raw_fd(), event_data(Kind::Listener, i, 0), IN | ET)?;
            d.listeners.push(Listener { fd, endpoint, backoff: ACCEPT_PAUSE, paused_until: None });
            // Connections may have queued before the registration's first edge could be seen.
            d.again.push(event_data(Kind::Listener, i, 0));
        }
        d.epoll.add(inbox.event_fd(), event_data(Kind::Inbox, 0, 0), IN | ET)?;
        d.again.push(event_data(Kind::Inbox, 0, 0));
        Ok(d)
    }

    /// Runs until a shutdown command arrives, then until the shard is empty or `grace` is over.
    fn event_loop(&mut self, inbox: &Inbox, grace: Duration) -> io::Result<()> {
        loop {
            let stop_by = self.stopping.map(|since| since + grace);
            self.turn(inbox, stop_by)?;
            if let Some(stop_by) = stop_by {
                if self.shard.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= stop_by {
                    let left = self.shard.len();
                    tracing::warn!(left, "shutdown grace over; dropping the remaining connections");
                    return Ok(());
                }
            }
        }
    }

    /// One turn of the loop: waits for events (until the next deadline at most, not at all when
    /// something is to be served again), handles them, then what was to be served again, then
    /// the deadlines that are due.
    fn turn(&mut self, inbox: &Inbox, stop_by: Option<Instant>) -> io::Result<()> {
        let timeout = match self.again.is_empty() {
            true => self.timeout(stop_by),
            false => 0,
        };
        let n = self.epoll.wait(&mut self.events, timeout)?;
        let mut again = std::mem::take(&mut self.again);
        for i in 0..n {
            let event = self.events[i];
            self.dispatch(event.u64, event.events, inbox);
        }
        for &data in &again {
            self.dispatch(data, IN, inbox);
        }
        again.clear();
        if self.again.is_empty() {
            self.again = again; // keeps its allocation
        }
        self.deadlines(Instant::now());
        Ok(())
    }

    /// Milliseconds until the earliest deadline: the next tick, a lingering socket's, a paused
    /// listener's, the end of the shutdown grace.
    fn timeout(&self, stop_by: Option<Instant>) -> i32 {
        let mut at = self.next_tick;
        let others = self.linger_deadlines.front().map(|&(_, _, t)| t).into_iter();
        let others = others.chain(self.listeners.iter().filter_map(|l| l.paused_until)).chain(stop_by);
        for t in others {
            at = at.min(t);
        }
        let wait = at.saturating_duration_since(Instant::now());
        // Rounded up, so the loop does not wake just before a deadline and spin to it.
        wait.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
    }

    fn dispatch(&mut self, data: u64, flags: u32, inbox: &Inbox) {
        let (kind, slot, gen) = decode(data);
        match kind {
            Some(Kind::Conn) => self.conn_ready(slot as u32, gen, flags),
            Some(Kind::Linger) => self.linger_ready(slot, gen),
            Some(Kind::Listener) => self.accept(slot),
            Some(Kind::Inbox) => self.inbox_ready(inbox),
            None => {}
        }
    }

    /// The deadlines due at `now`: the shard's tick, lingering sockets, paused listeners.
    fn deadlines(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.shard.on_tick(self.clock.now());
            self.after_event();
            // A late tick delays the next rather than firing twice.
            self.next_tick = now + TICK;
        }
        self.expire_lingering(now);
        for i in 0..self.listeners.len() {
            if self.listeners[i].paused_until.is_some_and(|t| now >= t) {
                self.listeners[i].paused_until = None;
                self.accept(i);
            }
        }
    }

    /// One batch of commands per wake-up, so sockets are served between batches; the rest on
    /// the next turn.
    fn inbox_ready(&mut self, inbox: &Inbox) {
        if self.stopping.is_some() {
            return;
        }
        let more = inbox.drain(INBOX_BATCH, |cmd| self.shard.on_command(cmd));
        // Write what this batch queued before taking more, so queues hold only what sockets
        // refused.
        self.after_event();
        if self.shard.is_shutting_down() {
            inbox.close();
            self.stop_accepting();
            self.stopping = Some(Instant::now());
        } else if more {
            self.again.push(event_data(Kind::Inbox, 0, 0));
        }
    }

    fn stop_accepting(&mut self) {
        // Closing a listener removes it from the epoll.
        self.listeners.clear();
    }

    /// Accepts what the listener has, up to `ACCEPT_BUDGET`.
    fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(l) = self.listeners.get_mut(i).filter(|l| l.paused_until.is_none()) else { return };
            match sys::accept(&l.fd) {
                Ok(fd) => {
                    l.backoff = ACCEPT_PAUSE;
                    let endpoint = l.endpoint;
                    self.open(fd, endpoint);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_resource_exhausted(&e) => {
                    // Out of descriptors or memory: pause instead of spinning on a ready listener.
                    // The connections waiting meanwhile are taken when the pause ends.
                    tracing::warn!(error = %e, pause_ms = l.backoff.as_millis() as u64, "accept paused");
                    l.paused_until = Some(Instant::now() + l.backoff);
                    l.backoff = (l.backoff * 2).min(ACCEPT_PAUSE_MAX);
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
        self.again.push(event_data(Kind::Listener, i, 0));
    }

    fn open(&mut self, fd: OwnedFd, endpoint: Endpoint) {
        if !self.shard.has_room() {
            tracing::debug!("connection refused: shard at its limit");
            return;
        }
        if self.shard.len() >= MAX_SLOTS {
            // Keys must fit the 24 bits event data gives them: a shard's keys stay below the most
            // connections it held at once.
            tracing::warn!("connection refused: the driver's slot table is full");
            return;
        }
        super::tune_accepted(socket2::SockRef::from(&fd), endpoint.transport);
        let Some((key, _)) = endpoint.open(&mut self.shard, self.clock.now()) else { return };
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let raw = fd.as_raw_fd();
        let k = key as usize;
        if self.conns.len() <= k {
            self.conns.resize_with(k + 1, || Conn { fd: None, gen: 0 });
        }
        self.conns[k] = Conn { fd: Some(fd), gen };
        if let Err(e) = self.epoll.add(raw, event_data(Kind::Conn, k, gen), CONN_EVENTS) {
            tracing::warn!(error = %e, "epoll registration failed");
            self.gone(key);
        }
    }

    /// The connection's socket, if `key` is still the connection of generation `gen`.
    fn socket(&self, key: u32, gen: u32) -> Option<&OwnedFd> {
        self.conns.get(key as usize).filter(|c| c.gen == gen).and_then(|c| c.fd.as_ref())
    }

    /// Drives one connection: writes when output waits and the socket may take it, reads when it
    /// may have input.
    fn conn_ready(&mut self, key: u32, gen: u32, flags: u32) {
        if self.socket(key, gen).is_none() {
            return; // a connection that is gone, or an older one at this key
        }
        if flags & (OUT | ERR | HUP) != 0 && self.shard.has_output(key) {
            self.flush(key);
            if self.finish_if_closed(key) {
                return;
            }
        }
        if flags & (IN | RDHUP | HUP | ERR) != 0 {
            self.read(key, gen);
        }
    }

    /// Reads until the socket has nothing more, feeding the shard; after `read_budget` reads the
    /// connection is served again on the next turn.
    fn read(&mut self, key: u32, gen: u32) {
        for _ in 0..self.read_budget {
            let Some(fd) = self.conns.get(key as usize).filter(|c| c.gen == gen).and_then(|c| c.fd.as_ref())
            else {
                return; // closed by what it read
            };
            match sys::recv(fd, &mut self.scratch) {
                Ok(0) => return self.gone(key),
                Ok(n) => {
                    self.shard.on_data(key, &mut self.scratch[..n], self.clock.now());
                    self.after_event();
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        tracing::debug!(error = %e, "read failed");
                        return self.gone(key);
                    }
                },
            }
        }
        // Budget spent: let the other connections run; the edge will not come again.
        self.again.push(event_data(Kind::Conn, key as usize, gen));
    }

    /// Writes as much pending output as the socket takes without blocking.
    fn flush(&mut self, key: u32) {
        let Some(fd) = self.conns.get(key as usize).and_then(|c| c.fd.as_ref()) else { return };
        loop {
            let Some(out) = self.shard.out_mut(key) else { return };
            if out.is_empty() {
                return;
            }
            let written = {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = out.io_slices(&mut iov);
                sys::send_vectored(fd, &iov[..n])
            };
            match written {
                Ok(n) => self.shard.wrote(key, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return, // EPOLLOUT resumes
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    // The peer is gone: drop what it will never read and finish the close.
                    self.shard.begin_close(key, None);
                    if let Some(out) = self.shard.out_mut(key) {
                        out.clear();
                    }
                    return;
                }
            }
        }
    }

    /// After the shard ran: write what it queued, finish closes, forward effects.
    fn after_event(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        self.shard.take_dirty(&mut dirty);
        for &key in &dirty {
            self.flush(key);
            self.finish_if_closed(key);
        }
        self.dirty = dirty;
        super::forward_effects(&mut self.shard, &self.effects);
    }

    /// Removes a closing connection whose output is written, its socket left to linger; returns
    /// whether it did.
    fn finish_if_closed(&mut self, key: u32) -> bool {
        if !self.shard.is_closing(key) || self.shard.has_output(key) {
            return false;
        }
        if let Some(fd) = self.forget(key) {
            self.linger(fd);
        }
        true
    }

    /// The peer is gone (end of stream or an error): forget the connection, close the socket.
    fn gone(&mut self, key: u32) {
        drop(self.forget(key));
    }

    /// Forgets the connection in the shard and hands back its socket.
    fn forget(&mut self, key: u32) -> Option<OwnedFd> {
        self.shard.remove(key);
        super::forward_effects(&mut self.shard, &self.effects);
        self.conns.get_mut(key as usize).and_then(|c| c.fd.take())
    }

    /// We closed: stop sending, then read until the peer closes too (or `LINGER`), so what the
    /// peer still sends does not turn our close into a reset that loses the last frames.
    fn linger(&mut self, fd: OwnedFd) {
        crate::sys::shutdown_write(&fd);
        let slot = self.lingering.vacant_key();
        if slot >= MAX_SLOTS {
            return; // closed at once
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        // The same registration, now for the lingering socket; input already waiting is
        // reported again.
        if let Err(e) = self.epoll.modify(fd.as_raw_fd(), event_data(Kind::Linger, slot, gen), LINGER_EVENTS)
        {
            tracing::debug!(error = %e, "epoll re-registration failed; closing at once");
            return;
        }
        self.lingering.insert(Lingering { fd, gen });
        self.linger_deadlines.push_back((slot as u32, gen, Instant::now() + LINGER));
    }

    /// Reads and discards what a lingering socket has; closes it at the peer's close.
    fn linger_ready(&mut self, slot: usize, gen: u32) {
        for _ in 0..self.read_budget {
            let Some(l) = self.lingering.get(slot).filter(|l| l.gen == gen) else { return };
            match sys::recv(&l.fd, &mut self.scratch) {
                Ok(0) => return drop(self.lingering.remove(slot)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return drop(self.lingering.remove(slot)),
            }
        }
        self.again.push(event_data(Kind::Linger, slot, gen));
    }

    /// Closes the lingering sockets whose deadline is `now` or earlier.
    fn expire_lingering(&mut self, now: Instant) {
        while let Some(&(slot, gen, deadline)) = self.linger_deadlines.front() {
            if deadline > now {
                return;
            }
            self.linger_deadlines.pop_front();
            if self.lingering.get(slot as usize).is_some_and(|l| l.gen == gen) {
                self.lingering.remove(slot as usize);
            }
        }
    }
}

fn is_resource_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
