//! Starting and stopping a gateway: listeners, pinned shard threads, the logic link and the
//! gRPC ingress.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gochat_proto::gateway::gateway_server::GatewayServer;
use gochat_proto::logic::logic_client::LogicClient;
use gochat_proto::logic::GatewayResetRequest;
use gochat_runtime::metrics::Exporter;
use gochat_runtime::peers;
use gochat_runtime::tls::{ServerCert, Watch, POLL_INTERVAL};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::driver::{self, Clock, Driver, Endpoint, ShardSetup};
use crate::ingress::{Ingress, Seen};
use crate::metrics::{Delivery, Metrics};
use crate::protocol::Transport;
use crate::shard::{Command, Inbox, Shard, ShardStats};
use crate::{logic_link, Error, GatewayConfig};

/// The largest batch a worker may push: tonic's default of 4 MiB is below a worker's full batch
/// of large messages (512 bodies of 10 KiB of text, escaped as JSON), which the gateway would
/// refuse on every redelivery.
pub const PUSH_MAX_BYTES: usize = 64 << 20;

pub struct Gateway;

/// A running gateway.
pub struct GatewayHandle {
    pub id: Arc<str>,
    pub ws_addr: SocketAddr,
    pub tcp_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    /// The wss certificate (its reload counts), when wss is on.
    pub tls_cert: Option<Arc<ServerCert>>,
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served, when `admin_listen` is on.
    pub admin_addr: Option<SocketAddr>,
    pub driver: Driver,
    pub shards: usize,
    inboxes: Arc<[Arc<Inbox>]>,
    stats: Arc<[Arc<ShardStats>]>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    grpc_stop: watch::Sender<bool>,
    grpc_task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    lease_task: tokio::task::JoinHandle<()>,
    /// Carries the shards' effects to logic; ends after the shards, once what it holds is sent.
    link_task: tokio::task::JoinHandle<()>,
    /// Reloads the wss certificate while the gateway runs.
    tls_watch: Option<Watch>,
    health: tonic_health::server::HealthReporter,
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Serves `/metrics` until the gateway shuts down.
    admin: Option<Exporter>,
}

impl Gateway {
    /// Binds and starts a gateway on the current tokio runtime (shards get threads of their own),
    /// reaching logic at `cfg.logic`.
    pub async fn start(cfg: GatewayConfig) -> Result<GatewayHandle, Error> {
        peers::channel(&cfg.logic).map_err(|e| Error::Logic(format!("{:?}: {e}", cfg.logic)))?;
        let address = cfg.logic.clone();
        let grpc = Self::bind_grpc(&cfg).await?;
        Self::start_with_logic(cfg, grpc, move || peers::channel(&address).expect("checked above")).await
    }

    /// Binds the gRPC listener workers push to, so its address can be announced (discovery)
    /// before [`Gateway::start_with_logic`] accepts any client: a worker must know a gateway
    /// before logic routes messages to it.
    pub async fn bind_grpc(cfg: &GatewayConfig) -> Result<tokio::net::TcpListener, Error> {
        tokio::net::TcpListener::bind(cfg.grpc_listen)
            .await
            .map_err(|source| Error::Bind { addr: cfg.grpc_listen, source })
    }

    /// As [`Gateway::start`], serving gRPC on `grpc_listener` and reaching logic through
    /// channels `connect` makes (e.g. balanced over the controls discovery finds). Lease
    /// renewals get a connection of their own, so a flood of socket authentications never
    /// delays them.
    pub async fn start_with_logic(
        cfg: GatewayConfig,
        grpc_listener: tokio::net::TcpListener,
        connect: impl Fn() -> Channel,
    ) -> Result<GatewayHandle, Error> {
        cfg.validate()?;
        let logic = connect();
        let lease_channel = connect();
        let (driver, fallback) = Driver::resolve(cfg.driver)?;
        match fallback {
            Some(why) => tracing::info!("driver auto: io_uring unavailable ({why}); running epoll"),
            None => tracing::info!(driver = driver.name(), "driver selected"),
        }
        let shards = cfg.shard_count();
        let (ws_listeners, ws_addr) = bind_reuseport(cfg.ws_listen, shards)?;
        let (tcp_listeners, tcp_addr) = bind_optional(cfg.tcp_listen, shards)?;
        let cert = match cfg.tls_files()? {
            Some((cert, key)) => Some(ServerCert::load(&cert, &key)?),
            None => None,
        };
        let tls_config = cert.as_ref().map(ServerCert::server_config).transpose()?;
        let (wss_listeners, wss_addr) = bind_optional(cfg.wss_listen, shards)?;
        let grpc_addr = grpc_listener.local_addr()?;
        let logic = LogicClient::new(logic).max_decoding_message_size(logic_link::ANSWER_MAX_BYTES);
        let id: Arc<str> = cfg.id.as_str().into();
        reset_routes(logic.clone(), &id).await;

        let inboxes: Arc<[Arc<Inbox>]> = (0..shards)
            .map(|_| Inbox::new(cfg.inbox_capacity).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let (effects_tx, effects_rx) = mpsc::unbounded_channel();
        let clock = Clock::start();
        let limits = cfg.shard_limits();
        let epoch = process_epoch();
        let allowed = crate::sys::allowed_cpus();
        let placement = cfg.placement(&allowed);
        match placement.first() {
            Some(Some(_)) => {
                tracing::info!(cpus = ?placement.iter().flatten().collect::<Vec<_>>(), "shards pinned")
            }
            _ => {
                tracing::info!(shards, ?allowed, pin = ?cfg.pin, "shards not pinned: they share the CPUs the process may use")
            }
        }
        let mut stats = Vec::with_capacity(shards);
        let mut threads = Vec::with_capacity(shards);
        let per_shard = ws_listeners.into_iter().zip(tcp_listeners).zip(wss_listeners);
        for (i, ((ws, tcp), wss)) in per_shard.enumerate() {
            let mut shard = Shard::new(i as u32, epoch, limits.clone(), clock.now());
            if let Some(config) = &tls_config {
                shard.set_tls(config.clone());
            }
            stats.push(shard.stats());
            let mut listeners = vec![(ws, Endpoint::plain(Transport::WebSocket))];
            listeners.extend(tcp.map(|l| (l, Endpoint::plain(Transport::Tcp))));
            listeners.extend(wss.map(|l| (l, Endpoint { transport: Transport::WebSocket, tls: true })));
            let setup = ShardSetup {
                shard,
                listeners,
                inbox: inboxes[i].clone(),
                effects: effects_tx.clone(),
                grace: Duration::from_millis(cfg.shutdown_grace_ms),
            };
            let inbox = inboxes[i].clone();
            let cpu = placement[i];
            let thread = std::thread::Builder::new().name(format!("gochat-shard-{i}")).spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = crate::sys::pin_to_cpu(cpu) {
                        tracing::warn!(shard = i, cpu, error = %e, "could not pin the shard thread; it runs unpinned");
                    }
                }
                let result = driver::run(driver, setup, clock);
                // However the shard ended, nobody may wait on its inbox any more.
                inbox.close();
                if let Err(e) = &result {
                    tracing::error!(shard = i, error = %e, "shard stopped with an error");
                }
                result
            })?;
            threads.push(thread);
        }
        drop(effects_tx);
        let link_task = tokio::spawn(logic_link::run(effects_rx, logic.clone(), id.clone(), inboxes.clone()));
        let leased = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stats: Arc<[Arc<ShardStats>]> = stats.into();
        let lease_task = tokio::spawn(logic_link::keep_lease(
            LogicClient::new(lease_channel),
            id.clone(),
            inboxes.clone(),
            stats.clone(),
            leased.clone(),
        ));

        let (grpc_stop, stop_rx) = watch::channel(false);
        let delivery = Arc::new(Delivery::default());
        let ingress = Ingress {
            gateway_id: id.clone(),
            seen: Arc::new(std::sync::Mutex::new(Seen::new(cfg.dedup_window))),
            inboxes: inboxes.clone(),
            stats: stats.clone(),
            delivery: delivery.clone(),
            stopping: stop_rx.clone(),
            compression: cfg.compression(),
        };
        let mut stop_rx = stop_rx;
        // grpc.health.v1: serving until a drain starts, so probes and balancers move away.
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<GatewayServer<Ingress>>().await;
        let grpc_task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(GatewayServer::new(ingress).max_decoding_message_size(PUSH_MAX_BYTES))
                .serve_with_incoming_shutdown(peers::incoming(grpc_listener), async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                }),
        );
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let admin = match cfg.admin_listen {
            Some(addr) => {
                let metrics = Metrics {
                    gateway_id: id.clone(),
                    driver: driver.name(),
                    stats: stats.clone(),
                    draining: draining.clone(),
                    delivery,
                };
                // Ready: logic has its lease (it routes to this gateway), and it is not draining.
                let (leased, draining) = (leased.clone(), draining.clone());
                let ready = gochat_runtime::metrics::ready(move || {
                    let verdict = if draining.load(std::sync::atomic::Ordering::Relaxed) {
                        Err("draining".to_string())
                    } else if !leased.load(std::sync::atomic::Ordering::Relaxed) {
                        Err("no lease from logic: it does not route to this gateway".to_string())
                    } else {
                        Ok(())
                    };
                    std::future::ready(verdict)
                });
                let exporter = Exporter::start(addr, "gateway", move || metrics.render(), ready).await;
                Some(exporter.map_err(|source| Error::Bind { addr, source })?)
            }
            None => None,
        };
        let tls_watch = cert.clone().map(|c| c.watch(POLL_INTERVAL, "gateway wss"));
        tracing::info!(%ws_addr, ?tcp_addr, ?wss_addr, %grpc_addr, shards, driver = driver.name(), gateway = %id, "gateway listening");
        Ok(GatewayHandle {
            id,
            ws_addr,
            tcp_addr,
            wss_addr,
            tls_cert: cert,
            grpc_addr,
            admin_addr: admin.as_ref().map(|a| a.addr),
            driver,
            shards,
            inboxes,
            stats,
            threads,
            grpc_stop,
            grpc_task,
            lease_task,
            link_task,
            tls_watch,
            health,
            draining,
            admin,
        })
    }
}

impl GatewayHandle {
    /// Open connections over all shards.
    pub fn connections(&self) -> u64 {
        self.stats.iter().map(|s| s.connections.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// wss connections whose TLS handshake failed, over all shards.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.stats.iter().map(|s| s.tls_handshake_failures.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// Takes the settings of `cfg` a running gateway can change ([`GatewayConfig::RELOADABLE`]):
    /// every shard gets its new limits.
    pub async fn reconfigure(&self, cfg: &GatewayConfig) {
        let limits = cfg.shard_limits();
        for inbox in self.inboxes.iter() {
            inbox.push_wait(Command::Limits(Box::new(limits.clone()))).await;
        }
    }

    /// Takes no new connections and closes the open ones spread over `within` (1012: clients
    /// reconnect, to another gateway, a few at a time instead of all at once); returns when
    /// they are all closed, or `within` and the close grace have passed.
    pub async fn drain(&self, within: Duration) {
        let within_secs = within.as_secs().clamp(1, u32::MAX as u64) as u32;
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        self.health.set_not_serving::<GatewayServer<Ingress>>().await;
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        for inbox in self.inboxes.iter() {
            inbox.push_wait(Command::Drain { within_secs }).await;
        }
        let grace = Duration::from_secs(crate::shard::ShardLimits::default().close_grace_secs.into());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(within_secs.into()) + grace;
        while self.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Closes every connection (with a going-away close), stops the shards and the gRPC server.
    pub async fn shutdown(self) {
        drop(self.tls_watch);
        drop(self.admin);
        // Stop taking batches first, so no pusher waits on a shard that is going away.
        let _ = self.grpc_stop.send(true);
        self.lease_task.abort();
        for inbox in self.inboxes.iter() {
            inbox.push_wait(Command::Shutdown).await;
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        if tokio::time::timeout(Duration::from_secs(5), self.grpc_task).await.is_err() {
            tracing::warn!("gateway gRPC server did not drain in 5 s; left behind");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.link_task).await.is_err() {
            tracing::warn!("acknowledgements not all handed to logic in 5 s; those messages may come again");
        }
    }
}

/// Routes logic holds for this gateway id are from an earlier run: clear them.
async fn reset_routes(mut logic: LogicClient<Channel>, id: &str) {
    let req = GatewayResetRequest { gateway_id: id.to_string() };
    if let Err(status) = logic.gateway_reset(req).await {
        tracing::warn!(%status, "could not reset this gateway's routes in logic; stale ones expire later");
    }
}

/// As [`bind_reuseport`] for a listener that may be off: one `None` per shard then.
#[allow(clippy::type_complexity)]
fn bind_optional(
    addr: Option<SocketAddr>,
    n: usize,
) -> Result<(Vec<Option<std::net::TcpListener>>, Option<SocketAddr>), Error> {
    match addr {
        Some(addr) => {
            let (l, a) = bind_reuseport(addr, n)?;
            Ok((l.into_iter().map(Some).collect(), Some(a)))
        }
        None => Ok(((0..n).map(|_| None).collect(), None)),
    }
}

/// Binds `n` listeners to one address with `SO_REUSEPORT`, so the kernel spreads connections
/// over the shards. Port 0 picks one port for all of them.
fn bind_reuseport(addr: SocketAddr, n: usize) -> Result<(Vec<std::net::TcpListener>, SocketAddr), Error> {
    let mut bound = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let bind = || -> std::io::Result<std::net::TcpListener> {
            let socket = Socket::new(Domain::for_address(bound), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&bound.into())?;
            socket.listen(4096)?;
            Ok(socket.into())
        };
        let listener = bind().map_err(|source| Error::Bind { addr: bound, source })?;
        if bound.port() == 0 {
            bound = listener.local_addr()?;
        }
        out.push(listener);
    }
    Ok((out, bound))
}

/// 16 bits that differ between runs, so connection ids of a restarted gateway are new ids.
fn process_epoch() -> u16 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().rotate_left(16)) as u16
}
