//! Starting and stopping control: the REST API with the server API, the page, the logic and
//! server API gRPC services and the admin listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gochat_proto::api::server_api_server::ServerApiServer;
use gochat_proto::config_format::redact_url;
use gochat_proto::logic::logic_server::LogicServer;
use gochat_queue::Queue;
use gochat_runtime::metrics::Exporter;
use gochat_runtime::peers;
use gochat_runtime::tls::{ServerCert, Watch, POLL_INTERVAL};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::StateKind;
use crate::grpc::LogicGrpc;
use crate::http::{self, Connections};
use crate::limits::RateLimits;
use crate::logic::Logic;
use crate::metrics::{self, Metrics, Requests};
use crate::server_api::grpc::ServerApiGrpc;
use crate::server_api::ServerApi;
use crate::state::{NodeKind, RedisState, State};
use crate::store::UserStore;
use crate::{api, server_api, site, ControlConfig, Error};

pub struct Control;

/// A running control plane.
pub struct ControlHandle {
    pub api_addr: SocketAddr,
    pub site_addr: Option<SocketAddr>,
    pub grpc_addr: SocketAddr,
    /// The HTTPS certificate (its reload counts), when HTTPS is on.
    pub tls_cert: Option<Arc<ServerCert>>,
    pub logic: Arc<Logic>,
    /// The REST API's rate limits, with their refusal counts.
    pub limits: Arc<RateLimits>,
    /// The HTTP connections of the REST API and the page.
    pub connections: Arc<Connections>,
    /// The server API for application backends, with its call counts.
    pub server_api: Arc<ServerApi>,
    /// Where `/metrics` is served, when `admin_listen` is on.
    pub admin_addr: Option<SocketAddr>,
    site_ws_port: Arc<AtomicU16>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store: UserStore,
    /// Reloads the HTTPS certificate while control runs.
    tls_watch: Option<Watch>,
    /// Serves `/metrics` until control shuts down.
    admin: Option<Exporter>,
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}

async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Control {
    /// Opens the user store, binds the listeners and serves, enqueuing to `queue`.
    pub async fn start(cfg: ControlConfig, queue: Arc<dyn Queue>) -> Result<ControlHandle, Error> {
        cfg.validate()?;
        let store = UserStore::open(&cfg.database).await?;
        let session_ttl = Duration::from_secs(cfg.session_ttl_secs);
        let state = match cfg.state {
            StateKind::Memory => State::memory(session_ttl),
            StateKind::Redis => State::Redis(
                RedisState::open(&cfg.redis_url, &cfg.redis_prefix, session_ttl)
                    .await
                    .map_err(|e| Error::Config(format!("state on {}: {e}", redact_url(&cfg.redis_url))))?,
            ),
        };
        let logic = Arc::new(Logic::new(store.clone(), state, queue, &cfg));
        if cfg.demo_users == Some(true) {
            logic.seed_demo_users().await.map_err(|e| Error::Config(format!("seeding demo users: {e}")))?;
        }
        let cert = match cfg.tls_files()? {
            Some((cert, key)) => Some(ServerCert::load(&cert, &key)?),
            None => None,
        };
        let tls = cert.as_ref().map(ServerCert::server_config).transpose()?;
        let api_listener = bind(cfg.api_listen).await?;
        let api_addr = api_listener.local_addr()?;
        let grpc_listener = bind(cfg.grpc_listen).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let site_listener = match cfg.site_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let site_addr = site_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let limits = logic.limits().clone();
        let server_api = Arc::new(ServerApi::new(logic.clone(), &cfg));
        let connections = Arc::new(Connections::new(&cfg));
        let requests = Arc::new(Requests::default());
        let admin = match cfg.admin_listen {
            Some(addr) => {
                let metrics = Metrics {
                    control_id: cfg.id.as_str().into(),
                    requests: requests.clone(),
                    logic: logic.clone(),
                    limits: limits.clone(),
                    connections: connections.clone(),
                    server_api: server_api.clone(),
                };
                let ready_logic = logic.clone();
                let ready = gochat_runtime::metrics::ready(move || {
                    let logic = ready_logic.clone();
                    async move { logic.ready().await }
                });
                let exporter = Exporter::start(addr, "control", move || metrics.render(), ready).await;
                Some(exporter.map_err(|source| Error::Bind { addr, source })?)
            }
            None => None,
        };

        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let site_ws_port = Arc::new(AtomicU16::new(cfg.site_ws_port));
        let mut app = api::router(logic.clone(), limits.clone(), &cfg)
            .layer(axum::middleware::from_fn_with_state(requests, metrics::track));
        if let Some(prefix) = cfg.api_path_prefix() {
            app = api::also_under(app, &prefix);
        }
        // Routed before gochat's routes and their prefix: `/api/publish` is the server API's
        // even when the page's API path is `/api`.
        let app = axum::Router::new()
            .nest(server_api::HTTP_PREFIX, server_api::http::router(server_api.clone(), cfg.max_body_bytes))
            .merge(app);
        tasks.push(http::serve(
            api_listener,
            tls.clone(),
            app,
            connections.clone(),
            stopped.clone(),
            "REST API",
        ));
        if let Some(listener) = site_listener {
            let app = site::router(&cfg, api_addr.port(), site_ws_port.clone(), tls.is_some());
            tasks.push(http::serve(listener, tls.clone(), app, connections.clone(), stopped.clone(), "site"));
        }
        let every = Duration::from_millis(cfg.room_update_interval_ms);
        tasks.push(tokio::spawn(logic.clone().send_room_updates(every, stopped.clone())));
        let sweep_every = Duration::from_secs(cfg.gateway_lease_secs).div_f32(4.0);
        tasks.push(tokio::spawn(logic.clone().sweep_gateways(sweep_every, stopped.clone())));
        tasks.push(tokio::spawn(report_self(
            logic.clone(),
            cfg.id.clone(),
            connections.clone(),
            stopped.clone(),
        )));
        let grpc = LogicServer::new(LogicGrpc(logic.clone()));
        let api_grpc = ServerApiServer::new(ServerApiGrpc(server_api.clone()));
        // grpc.health.v1 for probes and load balancers: serving while the process runs.
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<LogicServer<LogicGrpc>>().await;
        health_reporter.set_serving::<ServerApiServer<ServerApiGrpc>>().await;
        let rx = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(grpc)
                .add_service(api_grpc)
                .serve_with_incoming_shutdown(peers::incoming(grpc_listener), until_stopped(rx))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "logic gRPC stopped");
            }
        }));
        let tls_watch = cert.clone().map(|c| c.watch(POLL_INTERVAL, "control HTTPS"));
        tracing::info!(%api_addr, ?site_addr, %grpc_addr, https = cert.is_some(), "control listening");
        Ok(ControlHandle {
            api_addr,
            site_addr,
            grpc_addr,
            tls_cert: cert,
            logic,
            limits,
            connections,
            server_api,
            admin_addr: admin.as_ref().map(|a| a.addr),
            site_ws_port,
            stop,
            tasks,
            store,
            tls_watch,
            admin,
        })
    }
}

/// Reports this control (its version and open HTTP connections) every few seconds, for the
/// server API's `info`.
async fn report_self(
    logic: Arc<Logic>,
    id: String,
    connections: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let open = connections.open() as u64;
        if let Err(e) = logic.node_report(NodeKind::Control, &id, env!("CARGO_PKG_VERSION"), open).await {
            tracing::debug!(error = %e, "this control's report was not recorded");
        }
        tokio::select! {
            _ = tokio::time::sleep(NODE_REPORT_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How often a control reports itself.
const NODE_REPORT_EVERY: Duration = Duration::from_secs(5);

impl ControlHandle {
    /// Whether the REST API and the page serve HTTPS.
    pub fn https(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Takes the settings of `cfg` a running control can change ([`ControlConfig::RELOADABLE`]).
    pub fn reconfigure(&self, cfg: &ControlConfig) {
        self.logic.reconfigure(cfg);
        self.server_api.reconfigure(cfg);
    }

    /// Points the page at the gateway's WebSocket port (known once the gateway is bound).
    pub fn set_site_ws_port(&self, port: u16) {
        self.site_ws_port.store(port, Ordering::Relaxed);
    }

    /// Stops accepting, lets requests in flight finish, gives webhooks a few seconds to send
    /// what they hold, closes the database.
    pub async fn shutdown(self) {
        drop(self.tls_watch);
        drop(self.admin);
        let _ = self.stop.send(true);
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("a control listener did not drain in 5 s; left behind");
            }
        }
        self.logic.webhooks().shutdown(Duration::from_secs(5)).await;
        self.store.close().await;
    }
}
