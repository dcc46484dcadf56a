//! The config file: one TOML file with a section per role, every field defaulted.

use std::path::Path;

use gochat_control::ControlConfig;

use crate::discovery::{DiscoveryConfig, DiscoveryKind};
use gochat_gateway::GatewayConfig;
use gochat_queue_worker::{QueueConfig, WorkerConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub control: ControlConfig,
    pub worker: WorkerConfig,
    pub queue: QueueConfig,
    pub discovery: DiscoveryConfig,
}

impl Config {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Checks every section.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.gateway.validate()?;
        if self.discovery.kind == DiscoveryKind::Etcd && self.control.node_id.is_none() {
            // `gochat control` claims a node id in etcd and sets it before the control starts.
            ControlConfig { node_id: Some(0), ..self.control.clone() }.validate()?;
        } else {
            self.control.validate()?;
        }
        self.worker.validate()?;
        self.queue.validate()?;
        self.discovery.validate()?;
        Ok(())
    }
}
