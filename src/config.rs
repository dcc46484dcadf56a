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

/// What a config reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reload {
    /// `section.key` of each changed setting the running process took.
    pub applied: Vec<String>,
    /// `section.key` of each changed setting that needs a restart (not taken).
    pub ignored: Vec<String>,
}

/// The settings of each section a running process takes from its config file again.
fn reloadable(section: &str) -> &'static [&'static str] {
    match section {
        "gateway" => GatewayConfig::RELOADABLE,
        "control" => ControlConfig::RELOADABLE,
        _ => &[],
    }
}

impl Config {
    /// Compares the config file as it was (`before`) with what it is now (`after`), and copies
    /// into `self` (the running config) the changed settings a running process can take.
    pub fn reload(&mut self, before: &Config, after: &Config) -> anyhow::Result<Reload> {
        let (before, after) = (toml::Table::try_from(before)?, toml::Table::try_from(after)?);
        let mut running = toml::Table::try_from(&*self)?;
        let mut reload = Reload::default();
        let empty = toml::Table::new();
        for (section, now) in &after {
            let (now, was) =
                (now.as_table().unwrap_or(&empty), before.get(section).and_then(|t| t.as_table()));
            let was = was.unwrap_or(&empty);
            let keys: std::collections::BTreeSet<&String> = now.keys().chain(was.keys()).collect();
            for key in keys.into_iter().filter(|k| now.get(*k) != was.get(*k)) {
                let name = format!("{section}.{key}");
                if !reloadable(section).contains(&key.as_str()) {
                    reload.ignored.push(name);
                    continue;
                }
                let table = running.entry(section.clone()).or_insert_with(|| toml::Table::new().into());
                if let Some(table) = table.as_table_mut() {
                    match now.get(key) {
                        Some(value) => table.insert(key.clone(), value.clone()),
                        None => table.remove(key),
                    };
                }
                reload.applied.push(name);
            }
        }
        *self = toml::Value::Table(running).try_into()?;
        Ok(reload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_takes_what_may_change_and_names_what_needs_a_restart() {
        let before =
            Config::parse("[gateway]\nclient_frames_per_sec = 20\n[control]\nnode_id = 4\n").unwrap();
        let mut running = before.clone();
        running.control.api_listen = "127.0.0.1:1".parse().unwrap(); // set at start, not in the file
        let after = Config::parse(
            "[gateway]\nclient_frames_per_sec = 5\nshards = 3\n[control]\nnode_id = 4\nopen_rooms = true\n",
        )
        .unwrap();
        let reload = running.reload(&before, &after).unwrap();
        assert_eq!(reload.applied, ["control.open_rooms", "gateway.client_frames_per_sec"]);
        assert_eq!(reload.ignored, ["gateway.shards"]);
        assert_eq!(running.gateway.client_frames_per_sec, 5);
        assert!(running.control.open_rooms);
        assert_eq!(running.gateway.shards, before.gateway.shards, "not taken");
        assert_eq!(running.control.api_listen, "127.0.0.1:1".parse().unwrap(), "what was set at start stays");
        assert_eq!(running.clone().reload(&after, &after).unwrap(), Reload::default());
    }
}
