//! The config file: one TOML file with a section per role, every field defaulted; over it,
//! any key from the environment as `GOCHAT_<SECTION>__<KEY>` ([`Config::load_with_env`]).

use std::ffi::OsString;
use std::path::Path;

use gochat_control::ControlConfig;

use crate::discovery::{DiscoveryConfig, DiscoveryKind};
use gochat_gateway::GatewayConfig;
use gochat_queue::QueueConfig;
use gochat_queue_worker::WorkerConfig;
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

    /// Reads `path` (or takes the defaults), then sets each key named by a variable of `vars`
    /// ([`is_key_var`]: `GOCHAT_CONTROL__REDIS_URL`, `GOCHAT_QUEUE__REDIS__PREFIX` …) over it.
    /// Other variables are ignored. A variable that names no key, or whose value its key cannot
    /// take, is an error naming the variable.
    pub fn load_with_env(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> anyhow::Result<Self> {
        let keys = env_keys(vars)?;
        if keys.is_empty() {
            return Self::load(path);
        }
        // The file on its own first, for its errors with their line and column.
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
                let in_file = |e: &dyn std::fmt::Display| anyhow::anyhow!("config {}: {e}", path.display());
                Self::parse(&text).map_err(|e| in_file(&e))?;
                toml::from_str::<toml::Table>(&text).map_err(|e| in_file(&e))?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Self::default())?;
        for key in &keys {
            let value = key.value(&defaults)?;
            overlay(&mut table, &key.path, value).map_err(|e| anyhow::anyhow!("{}: {e}", key.var))?;
        }
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            let vars: Vec<&str> = keys.iter().map(|k| k.var.as_str()).collect();
            anyhow::anyhow!(
                "config {} with {}: {}",
                path.map_or("defaults".into(), |p| p.display().to_string()),
                vars.join(", "),
                e.message()
            )
        })
    }

    /// The config as TOML, fit to print: the password of every URL (`scheme://user:password@`,
    /// `?password=`) and every key named like a secret replaced by `***`. Unset optional keys
    /// are left out.
    pub fn redacted_toml(&self) -> anyhow::Result<String> {
        let mut table = toml::Table::try_from(self)?;
        for (_, value) in table.iter_mut() {
            redact(value, false);
        }
        // Read back, so that sections and keys come in the order the structs (and the example
        // config) have them.
        Ok(match toml::Value::Table(table.clone()).try_into::<Config>() {
            Ok(redacted) => toml::to_string(&redacted)?,
            Err(_) => toml::to_string(&table)?,
        })
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

/// The start of every variable of this program: the flags' (`GOCHAT_CONFIG`, `GOCHAT_DRIVER`,
/// `GOCHAT_SHARDS`, `GOCHAT_LOG_FORMAT`: one word after it) and the config keys'
/// (`GOCHAT_<SECTION>__<KEY>`).
pub const ENV_PREFIX: &str = "GOCHAT_";

/// Between the section and the key in a config key's variable, and between nested sections.
pub const ENV_SEPARATOR: &str = "__";

/// Whether the variable `name` sets a config key: `GOCHAT_` and then a path with `__` in it.
pub fn is_key_var(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX).is_some_and(|rest| rest.contains(ENV_SEPARATOR))
}

/// A config key set by a variable.
struct EnvKey {
    var: String,
    /// Lowercase: `["queue", "redis", "prefix"]`.
    path: Vec<String>,
    raw: String,
}

/// The config keys among `vars`, in the order they are applied: by name, so a whole table
/// (`GOCHAT_QUEUE__REDIS='{ … }'`) comes before a key in it (`GOCHAT_QUEUE__REDIS__URL`).
fn env_keys(vars: impl IntoIterator<Item = (OsString, OsString)>) -> anyhow::Result<Vec<EnvKey>> {
    let mut keys = Vec::new();
    for (name, value) in vars {
        let Some(var) = name.to_str().filter(|n| is_key_var(n)) else { continue };
        let raw = value.into_string().map_err(|_| anyhow::anyhow!("{var}: the value is not UTF-8"))?;
        let path: Vec<String> =
            var[ENV_PREFIX.len()..].split(ENV_SEPARATOR).map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            anyhow::bail!(
                "{var}: a config key's variable is GOCHAT_<SECTION>__<KEY>, e.g. GOCHAT_CONTROL__REDIS_URL \
                 or GOCHAT_QUEUE__REDIS__PREFIX"
            );
        }
        keys.push(EnvKey { var: var.to_owned(), path, raw });
    }
    keys.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(keys)
}

impl EnvKey {
    /// `[a.b]` for the section holding the key, and the key.
    fn place(&self) -> (String, &str) {
        let (key, section) = self.path.split_last().expect("at least two parts");
        (format!("[{}]", section.join(".")), key)
    }

    /// The value this variable sets, as its key takes it: for a key whose default is a
    /// string, the variable's text as it is; otherwise the text read as a TOML value (a
    /// number, a boolean, a list, an inline table, a quoted string), or as plain text when that
    /// is what the key takes. Tried alone over the defaults, so that an error is this
    /// variable's.
    fn value(&self, defaults: &toml::Table) -> anyhow::Result<toml::Value> {
        let var = &self.var;
        // How deep the path goes in the defaults, and the default at its end.
        let (mut known, mut default, mut at) = (0, None, defaults);
        for (i, part) in self.path.iter().enumerate() {
            match at.get(part) {
                Some(toml::Value::Table(t)) => at = t,
                Some(value) if i + 1 == self.path.len() => default = Some(value),
                Some(_) => anyhow::bail!("{var}: {} is a key, not a section", self.path[..=i].join(".")),
                None => break,
            }
            known = i + 1;
        }
        let plain = toml::Value::String(self.raw.clone());
        let candidates = match default {
            Some(toml::Value::String(_)) => vec![plain],
            _ => match parse_value(&self.raw) {
                Some(typed @ toml::Value::String(_)) => vec![typed],
                Some(typed) => vec![typed, plain],
                None => vec![plain],
            },
        };
        let mut first_error = None;
        for candidate in candidates {
            let mut alone = toml::Table::new();
            overlay(&mut alone, &self.path, candidate.clone()).map_err(|e| anyhow::anyhow!("{var}: {e}"))?;
            match toml::Value::Table(alone).try_into::<Config>() {
                Ok(_) => return Ok(candidate),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let e = first_error.expect("at least one candidate");
        let message = e.message();
        let (section, key) = self.place();
        if message.starts_with("unknown field `") && known < self.path.len() {
            if known + 1 < self.path.len() {
                anyhow::bail!("{var}: unknown section [{}]", self.path[..=known].join("."));
            }
            anyhow::bail!("{var}: unknown key {key} in {section}");
        }
        let hint = match default {
            Some(toml::Value::Array(_)) => " (a list is written as in TOML: [\"a\", \"b\"])",
            Some(toml::Value::Table(_)) => " (a table is written as in TOML: { key = \"value\" })",
            _ => "",
        };
        anyhow::bail!("{var}: {key} in {section}: {message}{hint}")
    }
}

/// `text` as a TOML value (`5`, `true`, `["a"]`, `{ a = 1 }`, `"quoted"`), if it is one.
fn parse_value(text: &str) -> Option<toml::Value> {
    let mut table: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    let value = table.remove("v")?;
    // `1\nother = 2` is not one value.
    table.is_empty().then_some(value)
}

/// Sets `path` in `table` to `value`, making the sections on the way; a table set over a
/// table is merged into it.
fn overlay(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = path.split_last().expect("a key");
    let mut at = table;
    for (i, section) in sections.iter().enumerate() {
        let entry = at.entry(section.clone()).or_insert_with(|| toml::Table::new().into());
        at = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is a key, not a section", path[..=i].join(".")))?;
    }
    match (at.get_mut(last), value) {
        (Some(toml::Value::Table(old)), toml::Value::Table(new)) => {
            for (k, v) in new {
                overlay(old, &[k], v)?;
            }
        }
        (_, value) => {
            at.insert(last.clone(), value);
        }
    }
    Ok(())
}

/// Whether a key's name says it holds a secret.
fn secret_key(name: &str) -> bool {
    ["password", "secret", "token", "_keys"].iter().any(|s| name.contains(s))
}

/// Redacts `value` in place: every URL's password, and everything under a secret key.
fn redact(value: &mut toml::Value, secret: bool) {
    match value {
        toml::Value::String(s) if secret => *s = "***".into(),
        toml::Value::String(s) => *s = gochat_proto::config_format::redact_url(s),
        toml::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, secret)),
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                redact(v, secret || secret_key(k));
            }
        }
        _ if secret => *value = toml::Value::String("***".into()),
        _ => {}
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

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    /// The config from `file` (a TOML text) with `pairs` as the environment.
    fn with_env(file: &str, pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let path = std::env::temp_dir().join(format!(
            "gochat-env-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, file).unwrap();
        let cfg = Config::load_with_env(Some(&path), vars(pairs));
        let _ = std::fs::remove_file(&path);
        cfg
    }

    #[test]
    fn variables_set_keys_of_every_type_over_the_file() {
        let cfg = with_env(
            "[control]\nredis_prefix = \"file\"\nsession_ttl_secs = 60\nlogin_per_minute = 3\n",
            &[
                ("GOCHAT_CONTROL__SESSION_TTL_SECS", "120"),
                ("GOCHAT_CONTROL__OPEN_ROOMS", "true"),
                ("GOCHAT_CONTROL__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
                ("GOCHAT_CONTROL__REDIS_URL", "redis://:pw@10.0.0.2:6379/0"),
                ("GOCHAT_CONTROL__NODE_ID", "12"),
                ("GOCHAT_CONTROL__SITE_CSP", "default-src 'self'"),
                ("GOCHAT_CONTROL__GRPC_ADVERTISE", "\"http://10.0.0.1:6900\""),
                ("GOCHAT_CONTROL__SITE_LISTEN", "off"),
                ("GOCHAT_GATEWAY__WS_PATH", "/chat"),
                ("GOCHAT_GATEWAY__ID", "42"),
                ("GOCHAT_QUEUE__REDIS__STREAMS", "8"),
                ("GOCHAT_QUEUE__REDIS__CONSUMER", "7"),
                ("GOCHAT_WORKER__GATEWAYS", "[{ id = \"g\", grpc = \"http://10.0.0.3:7100\" }]"),
                ("GOCHAT_DISCOVERY__LEASE_TTL_SECS", "9"),
                // Not config keys: the flags' variables, and others.
                ("GOCHAT_SHARDS", "x"),
                ("GOCHAT_CONFIG", "/nowhere"),
                ("RUST_LOG", "debug"),
                ("CONTROL__REDIS_URL", "x"),
            ],
        )
        .unwrap();
        let c = &cfg.control;
        assert_eq!(
            (c.redis_prefix.as_str(), c.login_per_minute),
            ("file", 3),
            "the file where no variable is set"
        );
        assert_eq!(c.session_ttl_secs, 120, "the variable over the file");
        assert!(c.open_rooms);
        assert_eq!(c.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(c.redis_url, "redis://:pw@10.0.0.2:6379/0");
        assert_eq!(c.node_id, Some(12));
        assert_eq!(c.site_csp.as_deref(), Some("default-src 'self'"), "plain text for an optional string");
        assert_eq!(c.grpc_advertise.as_deref(), Some("http://10.0.0.1:6900"), "or a quoted TOML string");
        assert_eq!(c.site_listen, None);
        assert_eq!(
            (cfg.gateway.ws_path.as_str(), cfg.gateway.id.as_str()),
            ("/chat", "42"),
            "digits stay text"
        );
        assert_eq!(cfg.queue.redis.streams, 8, "a nested section");
        assert_eq!(cfg.queue.redis.consumer.as_deref(), Some("7"), "an optional string from digits");
        assert_eq!(cfg.worker.gateways[0].grpc, "http://10.0.0.3:7100");
        assert_eq!(cfg.discovery.lease_ttl_secs, 9);

        let cfg = Config::load_with_env(None, vars(&[("GOCHAT_GATEWAY__SHARDS", "3")])).unwrap();
        assert_eq!(cfg.gateway.shards, 3, "over the defaults without a file");
    }

    #[test]
    fn a_table_and_keys_in_it_apply_in_order_of_their_names() {
        let cfg = with_env(
            "[queue.redis]\nprefix = \"file\"\ngroup = \"g\"\n",
            &[("GOCHAT_QUEUE__REDIS__STREAMS", "2"), ("GOCHAT_QUEUE__REDIS", "{ streams = 9, max_len = 5 }")],
        )
        .unwrap();
        let r = &cfg.queue.redis;
        assert_eq!((r.prefix.as_str(), r.group.as_str()), ("file", "g"), "a table merges into the file's");
        assert_eq!((r.streams, r.max_len), (2, 5), "the key after its table");
    }

    #[test]
    fn a_bad_variable_is_named() {
        let err = |pairs: &[(&str, &str)]| with_env("", pairs).unwrap_err().to_string();
        for (name, value, want) in [
            (
                "GOCHAT_CONTROL__REDIS_UR",
                "redis://x",
                "GOCHAT_CONTROL__REDIS_UR: unknown key redis_ur in [control]",
            ),
            ("GOCHAT_CONTROLL__REDIS_URL", "x", "GOCHAT_CONTROLL__REDIS_URL: unknown section [controll]"),
            ("GOCHAT_QUEUE__REDISS__URL", "x", "GOCHAT_QUEUE__REDISS__URL: unknown section [queue.rediss]"),
            ("GOCHAT_CONTROL__CONTROL", "x", "GOCHAT_CONTROL__CONTROL: unknown key control in [control]"),
            (
                "GOCHAT_CONTROL__SESSION_TTL_SECS",
                "soon",
                "GOCHAT_CONTROL__SESSION_TTL_SECS: session_ttl_secs in [control]: invalid type",
            ),
            ("GOCHAT_CONTROL__NODE_ID", "-1", "GOCHAT_CONTROL__NODE_ID: node_id in [control]"),
            ("GOCHAT_CONTROL__TRUSTED_PROXIES", "10.0.0.0/8", "GOCHAT_CONTROL__TRUSTED_PROXIES: trusted_proxies in [control]: invalid type: string \"10.0.0.0/8\", expected a sequence (a list is written as in TOML"),
            (
                "GOCHAT_WORKER__GATEWAYS",
                "[{ id = \"g\" }]",
                "GOCHAT_WORKER__GATEWAYS: gateways in [worker]: missing field",
            ),
            (
                "GOCHAT_CONTROL__REDIS_URL__HOST",
                "x",
                "GOCHAT_CONTROL__REDIS_URL__HOST: control.redis_url is a key, not a section",
            ),
            ("GOCHAT_CONTROL__", "x", "GOCHAT_CONTROL__: a config key's variable is GOCHAT_<SECTION>__<KEY>"),
            ("GOCHAT_CONTROL____ID", "x", "GOCHAT_CONTROL____ID: a config key's variable"),
        ] {
            let e = err(&[(name, value)]);
            assert!(e.starts_with(name) && e.contains(want), "{name}={value}: {e}");
        }
        let values = vec![(
            OsString::from("GOCHAT_CONTROL__ID"),
            std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]),
        )];
        let e = Config::load_with_env(None, values).unwrap_err().to_string();
        assert_eq!(e, "GOCHAT_CONTROL__ID: the value is not UTF-8");
        // The file's own errors keep their place in it.
        let e = with_env("[control]\nsession_ttl_secs = \"x\"\n", &[("GOCHAT_GATEWAY__SHARDS", "1")])
            .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn the_printed_config_has_no_secret() {
        let mut cfg = Config::default();
        cfg.control.database = "postgres://u:Secret-1@db/x?password=Secret-2".into();
        cfg.queue.redis.url = "redis://:Secret-3@h:6379".into();
        cfg.discovery.etcd_endpoints = vec!["http://root:Secret-4@h:2379".into()];
        cfg.control.api_keys = vec!["Secret-5-0123456789abcdef0123456789".into()];
        cfg.control.api_read_keys = vec!["Secret-6-0123456789abcdef0123456789".into()];
        let printed = cfg.redacted_toml().unwrap();
        assert!(!printed.contains("Secret-"), "{printed}");
        let back = Config::parse(&printed).unwrap();
        assert_eq!(back.control.database, "postgres://u:***@db/x?password=***");
        assert!(printed.starts_with("[gateway]\n"), "in the structs' order: {printed}");
        // A key named for a secret is hidden whole, whatever it holds.
        let mut value: toml::Value =
            toml::from_str("a = { api_token = 5, nested = { password = \"p\" }, url = \"x\" }").unwrap();
        redact(&mut value, false);
        assert_eq!(
            value.to_string(),
            toml::Value::from(
                toml::toml! { a = { api_token = "***", nested = { password = "***" }, url = "x" } }
            )
            .to_string()
        );
    }

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
