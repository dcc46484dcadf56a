//! The epoll driver: a tokio current-thread runtime per shard. A connection is a small
//! readiness-polling future; it reads only when the socket is readable, into the shard's
//! scratch buffer, so an idle connection holds no buffer.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

use super::{Clock, Endpoint, ShardSetup};
use crate::shard::{Effect, Inbox, Shard};

const SCRATCH: usize = 64 * 1024;
/// Reads per wake-up before a connection yields to the others.
const READ_BUDGET: usize = 16;
const IOV_MAX: usize = 64;
/// Inbox commands handled before the output they queued is written.
const INBOX_BATCH: usize = 64;
/// How long a closed socket waits for the peer's close before it is dropped.
const LINGER: Duration = Duration::from_secs(2);

pub fn run(setup: ShardSetup, clock: Clock) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let ShardSetup { shard, listeners, inbox, effects, grace } = setup;
        let driver = Rc::new(EpollShard {
            shard: RefCell::new(shard),
            sockets: RefCell::new(Vec::new()),
            scratch: RefCell::new(vec![0; SCRATCH].into_boxed_slice()),
            dirty: RefCell::new(Vec::new()),
            clock,
            effects,
            stop_accept: Notify::new(),
        });
        for (listener, endpoint) in listeners {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            tokio::task::spawn_local(driver.clone().accept_loop(listener, endpoint));
        }
        tokio::task::spawn_local(driver.clone().tick_loop());
        driver.inbox_loop(&inbox).await?;
        driver.stop_accept.notify_waiters();
        let drained = tokio::time::timeout(grace, async {
            while !driver.shard.borrow().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if drained.is_err() {
            let left = driver.shard.borrow().len();
            tracing::warn!(left, "shutdown grace over; dropping the remaining connections");
        }
        Ok(())
    })
}

struct Socket {
    stream: TcpStream,
    id: u64,
    waker: Option<Waker>,
}

struct EpollShard {
    shard: RefCell<Shard>,
    /// Sockets by shard connection key.
    sockets: RefCell<Vec<Option<Socket>>>,
    scratch: RefCell<Box<[u8]>>,
    dirty: RefCell<Vec<u32>>,
    clock: Clock,
    effects: mpsc::UnboundedSender<(u32, Effect)>,
    stop_accept: Notify,
}

impl EpollShard {
    async fn accept_loop(self: Rc<Self>, listener: TcpListener, endpoint: Endpoint) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = self.stop_accept.notified() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    if !self.shard.borrow().has_room() {
                        tracing::debug!(%peer, "connection refused: shard at its limit");
                        continue;
                    }
                    super::tune_accepted(socket2::SockRef::from(&stream), endpoint.transport);
                    let Some((key, id)) = endpoint.open(&mut self.shard.borrow_mut(), self.clock.now())
                    else {
                        continue;
                    };
                    {
                        let mut sockets = self.sockets.borrow_mut();
                        if sockets.len() <= key as usize {
                            sockets.resize_with(key as usize + 1, || None);
                        }
                        sockets[key as usize] = Some(Socket { stream, id, waker: None });
                    }
                    let this = self.clone();
                    tokio::task::spawn_local(async move {
                        poll_fn(|cx| this.poll_conn(key, id, cx)).await;
                    });
                }
                Err(e) if is_resource_exhausted(&e) => {
                    // Out of descriptors or memory: pause instead of spinning on a ready listener.
                    tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept paused");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }

    async fn tick_loop(self: Rc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.shard.borrow_mut().on_tick(self.clock.now());
            self.after_event();
        }
    }

    /// Runs commands until a shutdown command arrives.
    async fn inbox_loop(&self, inbox: &Inbox) -> io::Result<()> {
        // SAFETY: the inbox owns the eventfd and outlives this loop, which drops the
        // registration before returning.
        let fd = unsafe {
            AsyncFd::register_with_interest(EventFd(inbox.event_fd()), tokio::io::Interest::READABLE)?
        };
        loop {
            let mut guard = fd.readable().await?;
            guard.clear_ready();
            loop {
                let more = {
                    let mut shard = self.shard.borrow_mut();
                    inbox.drain(INBOX_BATCH, |cmd| shard.on_command(cmd))
                };
                // Write what this batch queued before taking more, so queues hold only what
                // sockets refused.
                self.after_event();
                if self.shard.borrow().is_shutting_down() {
                    inbox.close();
                    return Ok(());
                }
                if !more {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// Drives one connection: reads when readable, writes when output waits and the socket is
    /// writable, finishes when the shard is done with it.
    fn poll_conn(&self, key: u32, id: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut reads = 0;
        loop {
            let mut sockets = self.sockets.borrow_mut();
            let Some(socket) = sockets.get_mut(key as usize).and_then(Option::as_mut).filter(|s| s.id == id)
            else {
                return Poll::Ready(());
            };
            let wants_write = self.shard.borrow().has_output(key);
            if wants_write {
                if let Poll::Ready(r) = socket.stream.poll_write_ready(cx) {
                    drop(sockets);
                    if r.is_err() {
                        self.gone(key);
                    } else {
                        self.flush(key);
                        self.finish_if_closed(key);
                    }
                    continue;
                }
            }
            match socket.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) if reads < READ_BUDGET => {
                    reads += 1;
                    drop(sockets);
                    self.read(key);
                    self.after_event();
                }
                Poll::Ready(Ok(())) => {
                    // Budget spent: let the other connections run.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => {
                    drop(sockets);
                    self.gone(key);
                }
                Poll::Pending => {
                    if !socket.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        socket.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Reads what is available into the scratch buffer and feeds it to the shard.
    fn read(&self, key: u32) {
        let mut scratch = self.scratch.borrow_mut();
        let result = {
            let sockets = self.sockets.borrow();
            match sockets.get(key as usize).and_then(Option::as_ref) {
                Some(socket) => socket.stream.try_read(&mut scratch),
                None => return,
            }
        };
        match result {
            Ok(0) => {
                drop(scratch);
                self.gone(key);
            }
            Ok(n) => self.shard.borrow_mut().on_data(key, &mut scratch[..n], self.clock.now()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!(error = %e, "read failed");
                drop(scratch);
                self.gone(key);
            }
        }
    }

    /// Writes as much pending output as the socket takes without blocking.
    fn flush(&self, key: u32) {
        let sockets = self.sockets.borrow();
        let Some(socket) = sockets.get(key as usize).and_then(Option::as_ref) else {
            return;
        };
        let mut shard = self.shard.borrow_mut();
        loop {
            let Some(out) = shard.out_mut(key) else {
                return;
            };
            if out.is_empty() {
                return;
            }
            let written = {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = out.io_slices(&mut iov);
                socket.stream.try_write_vectored(&iov[..n])
            };
            match written {
                Ok(n) => shard.wrote(key, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    // The peer is gone: drop what it will never read and finish the close.
                    shard.begin_close(key, None);
                    if let Some(out) = shard.out_mut(key) {
                        out.clear();
                    }
                    return;
                }
            }
        }
    }

    /// After the shard ran: write what it queued, finish closes, forward effects.
    fn after_event(&self) {
        let mut dirty = self.dirty.borrow_mut();
        self.shard.borrow_mut().take_dirty(&mut dirty);
        for &key in dirty.iter() {
            self.flush(key);
            if !self.finish_if_closed(key) && self.shard.borrow().has_output(key) {
                // Short write: the connection's future must wait for writability.
                self.wake(key);
            }
        }
        drop(dirty);
        super::forward_effects(&mut self.shard.borrow_mut(), &self.effects);
    }

    /// Removes a closing connection whose output is written; returns whether it did.
    fn finish_if_closed(&self, key: u32) -> bool {
        let done = {
            let shard = self.shard.borrow();
            shard.is_closing(key) && !shard.has_output(key)
        };
        if done {
            if let Some(socket) = self.forget(key) {
                tokio::task::spawn_local(linger(socket.stream));
            }
        }
        done
    }

    /// The peer is gone (end of stream or an error): forget the connection, close the socket.
    fn gone(&self, key: u32) {
        drop(self.forget(key));
    }

    /// Forgets the connection in the shard and hands back its socket.
    fn forget(&self, key: u32) -> Option<Socket> {
        self.shard.borrow_mut().remove(key);
        let mut socket = self.sockets.borrow_mut().get_mut(key as usize).and_then(Option::take);
        if let Some(waker) = socket.as_mut().and_then(|s| s.waker.take()) {
            waker.wake();
        }
        super::forward_effects(&mut self.shard.borrow_mut(), &self.effects);
        socket
    }

    fn wake(&self, key: u32) {
        let sockets = self.sockets.borrow();
        if let Some(waker) = sockets.get(key as usize).and_then(Option::as_ref).and_then(|s| s.waker.as_ref())
        {
            waker.wake_by_ref();
        }
    }
}

/// We closed: stop sending, then read until the peer closes too (or a short deadline), so what
/// the peer still sends does not turn our close into a reset that loses the last frames.
async fn linger(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 512];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

fn is_resource_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The inbox eventfd, borrowed (the inbox owns it).
struct EventFd(RawFd);

impl std::os::fd::AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
