//! A shard's bounded, lock-free inbox with an eventfd wake-up: the only way other threads reach a
//! shard. Wake-ups are coalesced: one eventfd write per batch of commands, not per command.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use super::contract::Command;
use crate::sys;

pub struct Inbox {
    queue: ArrayQueue<Command>,
    event: OwnedFd,
    armed: AtomicBool,
    /// The shard stopped: pushes fail instead of waiting forever.
    closed: AtomicBool,
    /// Pushes refused because the inbox was full (the sender waits and retries).
    pub full: AtomicU64,
}

impl Inbox {
    pub fn new(capacity: usize) -> std::io::Result<Self> {
        Ok(Self {
            queue: ArrayQueue::new(capacity.max(1)),
            event: sys::eventfd()?,
            armed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            full: AtomicU64::new(0),
        })
    }

    /// Hands `cmd` to the shard; gives it back when the inbox is full.
    pub fn push(&self, cmd: Command) -> Result<(), Command> {
        if let Err(cmd) = self.queue.push(cmd) {
            self.full.fetch_add(1, Ordering::Relaxed);
            return Err(cmd);
        }
        if !self.armed.swap(true, Ordering::SeqCst) {
            sys::eventfd_signal(&self.event);
        }
        Ok(())
    }

    /// Pushes `cmd`, waiting while the inbox is full (backpressure to the sender). Returns false
    /// when the shard has stopped and the command was dropped.
    pub async fn push_wait(&self, mut cmd: Command) -> bool {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            match self.push(cmd) {
                Ok(()) => return true,
                Err(back) => {
                    cmd = back;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Makes the wake-up fire again: for a reader that stopped before draining everything.
    pub fn wake_again(&self) {
        sys::eventfd_signal(&self.event);
    }

    /// The shard no longer reads this inbox.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// The descriptor that becomes readable when commands wait.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Clears the wake-up and hands up to `max` waiting commands to `f`; returns whether more
    /// are waiting.
    pub fn drain(&self, max: usize, mut f: impl FnMut(Command)) -> bool {
        sys::eventfd_clear(&self.event);
        self.armed.store(false, Ordering::SeqCst);
        for _ in 0..max {
            match self.queue.pop() {
                Some(cmd) => f(cmd),
                None => return false,
            }
        }
        !self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_coalesced_wakeups() {
        let inbox = Inbox::new(2).unwrap();
        assert!(!sys::is_readable(&inbox.event));
        assert!(inbox.push(Command::Shutdown).is_ok());
        assert!(sys::is_readable(&inbox.event));
        assert!(inbox.push(Command::Shutdown).is_ok());
        assert!(inbox.push(Command::Shutdown).is_err(), "third push exceeds capacity 2");
        assert_eq!(inbox.full.load(Ordering::Relaxed), 1);
        let mut n = 0;
        assert!(inbox.drain(1, |_| n += 1), "one left");
        assert!(!inbox.drain(8, |_| n += 1));
        assert_eq!(n, 2);
        assert!(!sys::is_readable(&inbox.event), "drain clears the wake-up");
        assert!(inbox.push(Command::Shutdown).is_ok());
        assert!(sys::is_readable(&inbox.event), "a push after drain wakes again");
    }
}
