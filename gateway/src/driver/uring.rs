//! The native io_uring driver: one ring per shard, no runtime.
//!
//! - Multishot accept on each of the shard's `SO_REUSEPORT` listeners.
//! - Multishot receive into a provided-buffer ring shared by the shard's connections, so an idle
//!   connection holds no receive buffer: the kernel picks a buffer only when bytes arrive, and
//!   the shard hands it back as soon as the protocol has read it.
//! - Sends are `writev`s of references to the shared frame buffers of a broadcast; every send
//!   queued while handling a batch of completions goes to the kernel in one `io_uring_enter`.
//!   A send's frame list and iovecs are reused from send to send, not allocated per send.
//! - Sockets are registered in the ring's file table at their slot, so an operation skips the
//!   descriptor lookup (`fget`) a plain descriptor costs on every send.
//! - The inbox's eventfd is read on the ring; the shard's timers run off one ring timeout.
//!
//! Buffer ownership is the whole safety argument: a receive buffer belongs to the kernel from
//! the moment it is in the buffer ring until its completion names it; a send's frames are kept
//! (refcounted) by the connection's `Io` until its completion arrives; an `Io` slot is reused
//! only when none of its operations is in flight. At exit, whatever the kernel may still hold
//! is leaked rather than freed.

mod buffer_ring;
mod user_data;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use tokio::sync::mpsc;

use super::{Clock, Endpoint, ShardSetup};
use crate::shard::{Effect, Inbox, Shard};
use buffer_ring::BufferRing;
use user_data::{decode, user_data, Kind};

const RING_ENTRIES: u32 = 4096;
/// Receive buffers the shard's connections share.
const BUFFERS: u16 = 256;
const BUFFER_SIZE: usize = 4096;
const BUFFER_GROUP: u16 = 0;
/// Frames one `writev` takes at most.
const IOV_MAX: usize = 64;
const INBOX_BATCH: usize = 64;
/// No io slot for a shard key (slots fit in 24 bits).
const NO_SLOT: u32 = u32::MAX;
/// Submissions queued before they are handed to the kernel (at the latest: at the loop's wait).
const SUBMIT_BATCH: usize = 64;
/// Finished sends whose buffers are kept for reuse.
const SPARE_SENDS: usize = 1024;
/// How long a closed socket waits for the peer's close before it is dropped.
const LINGER_SECS: u32 = 2;

/// Checks that this kernel runs everything the driver uses; the error says what is missing.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => "io_uring is not permitted here (kernel.io_uring_disabled, or a seccomp profile such as Docker's or Kubernetes' default)".to_string(),
        Some(libc::ENOSYS) => "this kernel has no io_uring".to_string(),
        _ => format!("io_uring_setup failed: {e}"),
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::Writev::CODE, "writev"),
        (opcode::Read::CODE, "read"),
        (opcode::Timeout::CODE, "timeout"),
        (opcode::AsyncCancel::CODE, "async cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks the {name} operation on this kernel"));
        }
    }
    // Multishot receive with provided-buffer rings needs Linux 6.0.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (6, 0) {
        return Err(format!("kernel {} is older than 6.0 (multishot receive)", release.trim()));
    }
    let mut pool =
        BufferRing::new(&ring, 8, 64).map_err(|e| format!("provided-buffer rings unavailable: {e}"))?;
    if ring.submitter().unregister_buf_ring(BUFFER_GROUP).is_ok() {
        pool.free();
    }
    Ok(())
}

/// One connection's I/O state, in the driver's own slab: it outlives the shard's record until
/// none of its operations is in flight.
struct Io {
    fd: OwnedFd,
    /// The shard's key; `None` once the shard has forgotten the connection.
    conn: Option<u32>,
    gen: u32,
    recv_armed: bool,
    /// Registered in the ring's file table at the io's slot.
    fixed: bool,
    /// Its send in flight, in the driver's `sends`.
    sending: Option<u32>,
    /// We closed: discard input until the peer closes or the deadline.
    linger_until: Option<u32>,
}

/// A send in flight: the frames it references (alive until its completion) and its iovecs.
#[derive(Default)]
struct Send {
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
}

/// The io at `$slot` as an operation's target: its registered slot, or its descriptor.
macro_rules! target {
    ($io:expr, $slot:expr, $op:path, $($arg:expr),*) => {
        if $io.fixed {
            $op(types::Fixed($slot as u32), $($arg),*)
        } else {
            $op(types::Fd($io.fd.as_raw_fd()), $($arg),*)
        }
    };
}

struct Listener {
    fd: OwnedFd,
    endpoint: Endpoint,
    armed: bool,
    retry: Box<types::Timespec>,
}

struct Driver {
    ring: IoUring,
    shard: Shard,
    pool: BufferRing,
    ios: Slab<Io>,
    /// Slots below this are in the ring's registered file table.
    file_table: usize,
    sends: Slab<Send>,
    /// Finished sends, their buffers kept for the next ones.
    spare: Vec<Send>,
    /// Shard key → io slot (`NO_SLOT`: none).
    by_key: Vec<u32>,
    listeners: Vec<Listener>,
    next_gen: u32,
    clock: Clock,
    effects: mpsc::UnboundedSender<(u32, Effect)>,
    event_buf: Box<u64>,
    tick: Box<types::Timespec>,
    dirty: Vec<u32>,
    cqes: Vec<cqueue::Entry>,
    buffers_returned: bool,
}

pub fn run(setup: ShardSetup, clock: Clock) -> io::Result<()> {
    let ShardSetup { shard, listeners, inbox, effects, grace } = setup;
    // Completion work runs when this thread asks for completions, not as interrupts (6.1+);
    // older kernels get the plain ring.
    let ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)
    {
        Ok(ring) => ring,
        Err(_) => IoUring::builder().build(RING_ENTRIES)?,
    };
    let pool = BufferRing::new(&ring, BUFFERS, BUFFER_SIZE)?;
    let file_table = register_file_table(&ring);
    let mut d = Driver {
        ring,
        shard,
        pool,
        ios: Slab::new(),
        file_table,
        sends: Slab::new(),
        spare: Vec::new(),
        by_key: Vec::new(),
        listeners: listeners
            .into_iter()
            .map(|(l, endpoint)| Listener {
                fd: OwnedFd::from(l),
                endpoint,
                armed: false,
                retry: Box::new(types::Timespec::new().nsec(100_000_000)),
            })
            .collect(),
        next_gen: 0,
        clock,
        effects,
        event_buf: Box::new(0),
        tick: Box::new(types::Timespec::new().sec(1)),
        dirty: Vec::new(),
        cqes: Vec::with_capacity(1024),
        buffers_returned: false,
    };
    for i in 0..d.listeners.len() {
        d.arm_accept(i);
    }
    d.arm_event(&inbox);
    d.arm_tick();
    d.event_loop(&inbox, grace)
}

/// A sparse file table as large as the descriptors this process may hold (every io holds one,
/// so every slot fits); 0 when the kernel refuses it, and sockets are then used by descriptor.
fn register_file_table(ring: &IoUring) -> usize {
    let size = gochat_runtime::os::open_files_limit().map_or(1024, |(soft, _)| (soft as usize).min(1 << 24));
    match ring.submitter().register_files_sparse(size as u32) {
        Ok(()) => size,
        Err(e) => {
            tracing::warn!(error = %e, "io_uring file table unavailable; sockets are used by descriptor");
            0
        }
    }
}

impl Driver {
    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: (for every caller) each entry's buffers are owned by `self` (boxes, the io
        // slab, the buffer ring) and stay alive until its completion; see the module docs.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            // Submission queue full: hand what is queued to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed while the queue was full");
            }
        }
        if self.ring.submission().len() >= SUBMIT_BATCH {
            // A loopback send runs the receiver's side too, inside the submit: thousands in one
            // `io_uring_enter` hold the CPU for milliseconds with no point at which the
            // scheduler can run another thread (control, on this shard's CPU), so they go in
            // batches, each return to user space such a point.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listeners[i];
        if l.armed {
            return;
        }
        l.armed = true;
        let sqe = opcode::AcceptMulti::new(types::Fd(l.fd.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Kind::Accept, i, 0));
        self.push(sqe);
    }

    fn arm_event(&mut self, inbox: &Inbox) {
        let buf: *mut u64 = &mut *self.event_buf;
        let sqe = opcode::Read::new(types::Fd(inbox.event_fd()), buf.cast(), 8).build().user_data(user_data(
            Kind::Event,
            0,
            0,
        ));
        self.push(sqe);
    }

    fn arm_tick(&mut self) {
        let ts: *const types::Timespec = &*self.tick;
        let sqe = opcode::Timeout::new(ts).build().user_data(user_data(Kind::Tick, 0, 0));
        self.push(sqe);
    }

    fn arm_recv(&mut self, slot: usize) {
        let io = &mut self.ios[slot];
        io.recv_armed = true;
        let sqe = target!(io, slot, opcode::RecvMulti::new, BUFFER_GROUP).build().user_data(user_data(
            Kind::Recv,
            slot,
            io.gen,
        ));
        self.push(sqe);
    }

    fn event_loop(&mut self, inbox: &Inbox, grace: Duration) -> io::Result<()> {
        let mut stopping: Option<Instant> = None;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.ring.completion());
            for cqe in cqes.drain(..) {
                self.complete(cqe, inbox);
            }
            self.cqes = cqes;
            if self.buffers_returned {
                self.pool.publish();
                self.buffers_returned = false;
            }
            self.after_event();
            if self.shard.is_shutting_down() {
                let since = *stopping.get_or_insert_with(Instant::now);
                if self.shard.is_empty() || since.elapsed() >= grace {
                    if !self.shard.is_empty() {
                        tracing::warn!(
                            left = self.shard.len(),
                            "shutdown grace over; dropping the remaining connections"
                        );
                    }
                    return Ok(());
                }
            }
        }
    }

    fn complete(&mut self, cqe: cqueue::Entry, inbox: &Inbox) {
        let (kind, slot, gen) = decode(cqe.user_data());
        let (res, flags) = (cqe.result(), cqe.flags());
        match kind {
            Some(Kind::Accept) => self.accepted(slot, res, cqueue::more(flags)),
            Some(Kind::AcceptRetry) if !self.shard.is_shutting_down() => self.arm_accept(slot),
            Some(Kind::AcceptRetry) => {}
            Some(Kind::Recv) => self.received(slot, gen, res, flags),
            Some(Kind::Send) => self.sent(slot, gen, res),
            Some(Kind::Event) => {
                // One batch per wake-up, so sockets are served between batches; what is left
                // makes the eventfd fire again right away.
                let more = inbox.drain(INBOX_BATCH, |cmd| self.shard.on_command(cmd));
                self.after_event();
                if self.shard.is_shutting_down() {
                    inbox.close();
                    self.stop_accepting();
                } else {
                    if more {
                        inbox.wake_again();
                    }
                    self.arm_event(inbox);
                }
            }
            Some(Kind::Tick) => {
                let now = self.clock.now();
                self.shard.on_tick(now);
                let expired: Vec<usize> = self
                    .ios
                    .iter()
                    .filter(|(_, io)| io.linger_until.is_some_and(|t| now >= t) && io.recv_armed)
                    .map(|(s, _)| s)
                    .collect();
                for slot in expired {
                    self.cancel_recv(slot);
                }
                self.arm_tick();
            }
            Some(Kind::Cancel) | None => {}
        }
    }

    fn accepted(&mut self, i: usize, res: i32, more: bool) {
        if !more {
            self.listeners[i].armed = false;
        }
        if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            if matches!(-res, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
                // Out of descriptors: stop accepting for a moment instead of spinning.
                tracing::warn!(error = %err, "accept paused");
                if more {
                    let sqe = opcode::AsyncCancel::new(user_data(Kind::Accept, i, 0))
                        .build()
                        .user_data(user_data(Kind::Cancel, 0, 0));
                    self.push(sqe);
                }
                let ts: *const types::Timespec = &*self.listeners[i].retry;
                let sqe = opcode::Timeout::new(ts).build().user_data(user_data(Kind::AcceptRetry, i, 0));
                self.push(sqe);
                return;
            }
            if -res == libc::ECANCELED {
                return; // paused by us; the retry timer re-arms it
            }
            tracing::debug!(error = %err, "accept failed");
        } else {
            // SAFETY: a successful accept completion carries a new descriptor we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(res as RawFd) };
            self.open(fd, self.listeners[i].endpoint);
        }
        if !self.listeners[i].armed && !self.shard.is_shutting_down() {
            self.arm_accept(i);
        }
    }

    fn open(&mut self, fd: OwnedFd, endpoint: Endpoint) {
        if !self.shard.has_room() {
            tracing::debug!("connection refused: shard at its limit");
            return;
        }
        if self.ios.vacant_key() >= super::tag::MAX_SLOTS {
            // Slots must fit the 24 bits user data gives them.
            tracing::warn!("connection refused: the driver's slot table is full");
            return;
        }
        let _ = socket2::SockRef::from(&fd).set_nonblocking(true);
        super::tune_accepted(socket2::SockRef::from(&fd), endpoint.transport);
        let Some((key, _)) = endpoint.open(&mut self.shard, self.clock.now()) else { return };
        self.next_gen = self.next_gen.wrapping_add(1);
        let slot = self.ios.vacant_key();
        let fixed = slot < self.file_table
            && self.ring.submitter().register_files_update(slot as u32, &[fd.as_raw_fd()]).is_ok();
        self.ios.insert(Io {
            fd,
            conn: Some(key),
            gen: self.next_gen,
            recv_armed: false,
            fixed,
            sending: None,
            linger_until: None,
        });
        if self.by_key.len() <= key as usize {
            self.by_key.resize(key as usize + 1, NO_SLOT);
        }
        self.by_key[key as usize] = slot as u32;
        self.arm_recv(slot);
    }

    fn received(&mut self, slot: usize, gen: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let live = self.ios.get(slot).is_some_and(|io| io.gen == gen);
        if live && !cqueue::more(flags) {
            self.ios[slot].recv_armed = false;
        }
        if let Some(bid) = bid {
            if res > 0 && live {
                let conn = self.ios[slot].conn.filter(|_| self.ios[slot].linger_until.is_none());
                if let Some(key) = conn {
                    // SAFETY: the completion handed buffer `bid` to us; it goes back to the
                    // ring right after the shard has read it.
                    let data = unsafe { self.pool.buffer(bid, res as usize) };
                    self.shard.on_data(key, data, self.clock.now());
                }
            }
            self.pool.push(bid);
            self.buffers_returned = true;
        }
        if !live {
            return;
        }
        match res {
            n if n > 0 => {
                // Keep reading: a live connection, or a lingering one waiting for the peer's close.
                let io = &self.ios[slot];
                let lingering = io.linger_until.is_some_and(|t| self.clock.now() < t);
                if !io.recv_armed && (io.conn.is_some() || lingering) {
                    self.arm_recv(slot);
                } else if !io.recv_armed {
                    self.release_if_idle(slot);
                }
            }
            n if n == -libc::ENOBUFS => {
                // Every buffer was in use; the ones just returned make room.
                if !self.ios[slot].recv_armed {
                    self.pool.publish();
                    self.arm_recv(slot);
                }
            }
            _ => {
                // End of stream, an error, or our cancel: the peer is done.
                if !self.ios[slot].recv_armed {
                    self.gone(slot);
                }
            }
        }
    }

    fn sent(&mut self, slot: usize, gen: u32, res: i32) {
        let Some(io) = self.ios.get_mut(slot).filter(|io| io.gen == gen) else { return };
        if let Some(send) = io.sending.take() {
            let mut send = self.sends.remove(send as usize);
            if self.spare.len() < SPARE_SENDS {
                send.frames.clear();
                send.iov.clear();
                self.spare.push(send);
            }
        }
        let conn = io.conn;
        match (conn, res) {
            (Some(key), n) if n >= 0 => {
                self.shard.wrote(key, n as usize);
                self.flush_or_finish(key);
            }
            (Some(key), n) => {
                tracing::debug!(error = %io::Error::from_raw_os_error(-n), "send failed");
                // The peer is gone: drop what it will never read and finish the close.
                self.shard.begin_close(key, None);
                if let Some(out) = self.shard.out_mut(key) {
                    out.clear();
                }
                self.flush_or_finish(key);
            }
            (None, _) => self.release_if_idle(slot),
        }
    }

    /// After the shard ran: send what it queued, finish closes, forward effects.
    fn after_event(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        self.shard.take_dirty(&mut dirty);
        for &key in &dirty {
            self.flush_or_finish(key);
        }
        self.dirty = dirty;
        super::forward_effects(&mut self.shard, &self.effects);
    }

    /// Starts a send of the connection's pending output, or finishes its close.
    fn flush_or_finish(&mut self, key: u32) {
        let Some(slot) = self.by_key.get(key as usize).filter(|&&s| s != NO_SLOT).map(|&s| s as usize) else {
            return;
        };
        if self.ios[slot].sending.is_some() {
            if self.shard.is_closing(key) && !self.shard.has_output(key) {
                // The shard gave up on this peer (slow consumer, or its close grace ran out)
                // while a send was parked in the kernel: cancel it; its completion finishes.
                self.cancel(Kind::Send, slot);
            }
            return; // its completion continues
        }
        let Some(out) = self.shard.out_mut(key) else { return };
        if !out.is_empty() {
            let mut send = self.spare.pop().unwrap_or_default();
            out.pending_frames(IOV_MAX, &mut send.frames);
            let iov = send
                .frames
                .iter()
                .map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() });
            send.iov.extend(iov);
            let (iov, len) = (send.iov.as_ptr(), send.iov.len() as u32);
            let io = &mut self.ios[slot];
            let sqe = target!(io, slot, opcode::Writev::new, iov, len).build().user_data(user_data(
                Kind::Send,
                slot,
                io.gen,
            ));
            // The iovecs' heap buffer does not move when `send` moves into the table.
            io.sending = Some(self.sends.insert(send) as u32);
            self.push(sqe);
        } else if self.shard.is_closing(key) {
            self.finish(slot, key);
        }
    }

    /// We closed and everything is written: forget the connection in the shard, stop sending,
    /// and read until the peer closes (or the linger deadline).
    fn finish(&mut self, slot: usize, key: u32) {
        self.forget(slot, key);
        let io = &mut self.ios[slot];
        crate::sys::shutdown_write(&io.fd);
        io.linger_until = Some(self.clock.now() + LINGER_SECS);
        if !io.recv_armed {
            self.release_if_idle(slot);
        }
    }

    /// The peer is gone: forget the connection and release its slot once idle. A send still in
    /// flight (a half-closed peer that stopped reading) is cancelled rather than waited for.
    fn gone(&mut self, slot: usize) {
        if let Some(key) = self.ios[slot].conn {
            self.forget(slot, key);
        }
        if self.ios[slot].sending.is_some() {
            self.cancel(Kind::Send, slot);
        }
        self.release_if_idle(slot);
    }

    fn stop_accepting(&mut self) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let sqe = opcode::AsyncCancel::new(user_data(Kind::Accept, i, 0))
                    .build()
                    .user_data(user_data(Kind::Cancel, 0, 0));
                self.push(sqe);
            }
        }
    }

    fn forget(&mut self, slot: usize, key: u32) {
        self.ios[slot].conn = None;
        if let Some(s) = self.by_key.get_mut(key as usize) {
            *s = NO_SLOT;
        }
        self.shard.remove(key);
        super::forward_effects(&mut self.shard, &self.effects);
    }

    fn cancel_recv(&mut self, slot: usize) {
        self.cancel(Kind::Recv, slot);
    }

    /// Asks the kernel to cancel the slot's operation of `kind`; its completion still arrives.
    fn cancel(&mut self, kind: Kind, slot: usize) {
        let gen = self.ios[slot].gen;
        let sqe = opcode::AsyncCancel::new(user_data(kind, slot, gen)).build().user_data(user_data(
            Kind::Cancel,
            0,
            0,
        ));
        self.push(sqe);
    }

    /// Frees the slot (closing the descriptor) once nothing of it is in flight.
    fn release_if_idle(&mut self, slot: usize) {
        let io = &self.ios[slot];
        if io.conn.is_some() {
            return;
        }
        if io.recv_armed {
            self.cancel_recv(slot);
            return;
        }
        if io.sending.is_none() {
            if io.fixed {
                // The table's reference would keep the socket open past the descriptor's close.
                let _ = self.ring.submitter().register_files_update(slot as u32, &[-1]);
            }
            self.ios.remove(slot);
        }
    }
}

/// However the loop ends (a return or a panic unwinding the shard thread), descriptors and the
/// ring are closed, and memory the kernel may still touch while it tears the ring down (frames
/// of sends in flight, the eventfd buffer, timespecs, the buffer ring) is leaked, not freed.
impl Drop for Driver {
    fn drop(&mut self) {
        for (_, send) in std::mem::take(&mut self.sends) {
            std::mem::forget(send);
        }
        std::mem::forget(std::mem::replace(&mut self.event_buf, Box::new(0)));
        std::mem::forget(std::mem::replace(&mut self.tick, Box::new(types::Timespec::new())));
        for l in &mut self.listeners {
            std::mem::forget(std::mem::replace(&mut l.retry, Box::new(types::Timespec::new())));
        }
        // `BufferRing` has no destructor: its memory stays allocated.
    }
}
