//! `gochat gateway`: the connection gateway alone, registered in discovery, drained on stop.

use std::time::Duration;

use gochat_gateway::{Gateway, GatewayHandle};
use gochat_runtime::peers;

use super::{advertised, shutdown_signal, until_stopped, Reloader, Say};
use crate::discovery::{self, DiscoveryKind, Registration, Role};
use crate::Config;

/// `gochat gateway`: serves clients until Ctrl-C or SIGTERM, then deregisters, drains its
/// connections over `drain_secs` and stops.
pub async fn run(mut cfg: Config, mut reloader: Reloader, say: Say) -> anyhow::Result<()> {
    let (gateway, registration) = start(&cfg).await?;
    say.line(format_args!(
        "gateway {} listening: ws://{} , tcp {:?}, wss {:?}, gRPC {}",
        gateway.id, gateway.ws_addr, gateway.tcp_addr, gateway.wss_addr, gateway.grpc_addr
    ));
    until_stopped(shutdown_signal(), &mut reloader, &mut cfg, |c| {
        let gateway = &gateway;
        async move { gateway.reconfigure(&c.gateway).await }
    })
    .await;
    registration.shutdown().await;
    if cfg.gateway.drain_secs > 0 {
        say.line(format_args!(
            "draining: closing {} connections over {} s",
            gateway.connections(),
            cfg.gateway.drain_secs
        ));
        gateway.drain(Duration::from_secs(cfg.gateway.drain_secs)).await;
    }
    gateway.shutdown().await;
    Ok(())
}

/// Starts the gateway and registers its gRPC address; with etcd, it also follows the controls
/// there for logic.
async fn start(cfg: &Config) -> anyhow::Result<(GatewayHandle, Registration)> {
    Ok(match cfg.discovery.kind {
        DiscoveryKind::Static => {
            let gateway = Gateway::start(cfg.gateway.clone()).await?;
            let advertise = advertised(cfg.gateway.grpc_advertise.as_deref(), gateway.grpc_addr);
            let registration =
                Registration::start(&cfg.discovery, Role::Gateway, &gateway.id, &advertise).await?;
            (gateway, registration)
        }
        DiscoveryKind::Etcd => {
            // Announced before any client is accepted: workers drop what they would push
            // to a gateway they do not know.
            let grpc = Gateway::bind_grpc(&cfg.gateway).await?;
            let advertise = advertised(cfg.gateway.grpc_advertise.as_deref(), grpc.local_addr()?);
            let registration =
                Registration::start(&cfg.discovery, Role::Gateway, &cfg.gateway.id, &advertise).await?;
            let controls = discovery::watch(&cfg.discovery, Role::Control).await?;
            let connect = move || peers::balanced_channel(controls.clone());
            (Gateway::start_with_logic(cfg.gateway.clone(), grpc, connect).await?, registration)
        }
    })
}
