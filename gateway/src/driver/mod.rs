//! Drivers: what turns socket readiness or completions into calls on a [`Shard`].
//!
//! The boundary is small: a driver owns the listeners' sockets for one shard, feeds the shard
//! bytes (`on_data`), commands from its [`Inbox`] (`on_command`) and one-second ticks
//! (`on_tick`), writes what the shard queued (`take_dirty`, `out_mut`, `wrote`), removes
//! closed connections (`remove`), and forwards the shard's effects to logic.

pub mod epoll;
mod tag;
pub mod uring;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::protocol::Transport;
use crate::shard::{Effect, Inbox, Shard};

/// Which driver runs the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// The best driver this machine supports.
    Auto,
    /// An edge-triggered epoll loop per shard, no runtime.
    Epoll,
    /// The native io_uring driver.
    IoUring,
}

impl std::str::FromStr for DriverChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "epoll" => Ok(Self::Epoll),
            "io_uring" | "io-uring" => Ok(Self::IoUring),
            other => Err(format!("unknown driver {other:?}: expected auto, epoll or io_uring")),
        }
    }
}

/// The driver the gateway actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Epoll,
    IoUring,
}

impl Driver {
    /// Resolves a configured choice to a driver this machine can run, with the reason when
    /// `auto` had to fall back to epoll.
    pub fn resolve(choice: DriverChoice) -> Result<(Self, Option<String>), crate::Error> {
        match choice {
            DriverChoice::Epoll => Ok((Self::Epoll, None)),
            DriverChoice::Auto => match uring::probe() {
                Ok(()) => Ok((Self::IoUring, None)),
                Err(why) => Ok((Self::Epoll, Some(why))),
            },
            DriverChoice::IoUring => uring::probe()
                .map(|()| (Self::IoUring, None))
                .map_err(|why| crate::Error::Config(format!("driver io_uring is unavailable: {why}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::IoUring => "io_uring",
        }
    }
}

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub transport: Transport,
    /// Under TLS (the wss listener).
    pub tls: bool,
}

impl Endpoint {
    pub const fn plain(transport: Transport) -> Self {
        Self { transport, tls: false }
    }

    /// Registers a connection accepted here; `None` when the shard could not take it.
    pub fn open(self, shard: &mut Shard, now: u32) -> Option<(u32, u64)> {
        match self.tls {
            false => Some(shard.open(self.transport, now)),
            true => shard.open_tls(now),
        }
    }
}

/// Everything one shard thread starts with.
pub struct ShardSetup {
    pub shard: Shard,
    pub listeners: Vec<(TcpListener, Endpoint)>,
    pub inbox: Arc<Inbox>,
    pub effects: mpsc::UnboundedSender<(u32, Effect)>,
    /// How long a shutdown waits for connections to close.
    pub grace: std::time::Duration,
}

/// Hands the effects the shard queued to the logic link.
pub fn forward_effects(shard: &mut Shard, effects: &mpsc::UnboundedSender<(u32, Effect)>) {
    let index = shard.index();
    for effect in shard.take_effects() {
        // The link is gone only at shutdown; nothing is left to tell logic then.
        let _ = effects.send((index, effect));
    }
}

/// Options every accepted socket gets: no Nagle delay, and for gochat's TCP protocol (which has
/// no ping) keep-alive probes, so dead peers are found.
pub fn tune_accepted(sock: socket2::SockRef<'_>, transport: Transport) {
    let _ = sock.set_tcp_nodelay(true);
    if transport == Transport::Tcp {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(std::time::Duration::from_secs(60))
            .with_interval(std::time::Duration::from_secs(10))
            .with_retries(3);
        let _ = sock.set_tcp_keepalive(&keepalive);
    }
}

/// Whole seconds since the shard started: the clock shard timers run on.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> u32 {
        self.0.elapsed().as_secs() as u32
    }
}

/// Runs one shard on the current thread until it shuts down.
pub fn run(driver: Driver, setup: ShardSetup, clock: Clock) -> std::io::Result<()> {
    match driver {
        Driver::Epoll => epoll::run(setup, clock),
        Driver::IoUring => uring::run(setup, clock),
    }
}
