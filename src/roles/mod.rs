//! Starting each role and running it until Ctrl-C or SIGTERM: [`up`] (every role in one
//! process, the embedded default), [`gateway`], [`control`] and [`worker`]. Here: what they
//! share — the operator's output ([`Say`]), reading the config again on SIGHUP ([`Reloader`]),
//! waiting for the stop signal, and the address a gRPC listener is announced with.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use gochat_gateway::driver::DriverChoice;

use crate::logging::LogFormat;
use crate::Config;

pub mod control;
pub mod gateway;
pub mod up;
pub mod worker;

pub use up::{Addresses, Up};
pub use worker::WorkerHandle;

/// What a running role tells its operator (addresses, stopping): printed to stdout, or with
/// a JSON log an `INFO` record, so that every line of output is one.
#[derive(Debug, Clone, Copy)]
pub struct Say(pub LogFormat);

impl Say {
    pub fn line(self, line: impl std::fmt::Display) {
        match self.0 {
            LogFormat::Text => println!("{line}"),
            LogFormat::Json => tracing::info!(target: "gochat", "{}", line.to_string().trim()),
        }
    }
}

/// The config file read again on SIGHUP, with the same variables and command-line overrides.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    /// The `GOCHAT_<SECTION>__<KEY>` variables, as they were at start.
    env: Vec<(OsString, OsString)>,
    driver: Option<DriverChoice>,
    shards: Option<usize>,
    /// The file as it was last read.
    loaded: Option<Config>,
}

impl Reloader {
    /// The config file at `path` (or the defaults), this process's `GOCHAT_<SECTION>__<KEY>`
    /// variables, and the command line's `--driver` and `--shards` over them.
    pub fn new(path: Option<PathBuf>, driver: Option<DriverChoice>, shards: Option<usize>) -> Self {
        let env =
            std::env::vars_os().filter(|(name, _)| name.to_str().is_some_and(crate::config::is_key_var));
        Self { path, env: env.collect(), driver, shards, loaded: None }
    }

    /// The config file (or the defaults), the variables and the flags over it, validated.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = Config::load_with_env(self.path.as_deref(), self.env.iter().cloned())?;
        if let Some(driver) = self.driver {
            cfg.gateway.driver = driver;
        }
        if let Some(shards) = self.shards {
            cfg.gateway.shards = shards;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Remembers `cfg` as the file as last read: what a reload compares the file with.
    pub fn loaded(self, cfg: Config) -> Self {
        Self { loaded: Some(cfg), ..self }
    }

    /// Reads the file again and copies what a running process can change into `running`;
    /// whether anything was. A file that does not load changes nothing.
    fn reload(&mut self, running: &mut Config) -> bool {
        if self.path.is_none() {
            tracing::warn!("SIGHUP: no config file to read again (start with --config)");
            return false;
        }
        let now = match self.load() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "config not reloaded; running on as before");
                return false;
            }
        };
        let before = self.loaded.replace(now.clone()).unwrap_or_default();
        match running.reload(&before, &now) {
            Ok(reload) => {
                for key in &reload.ignored {
                    tracing::warn!(setting = %key, "changed in the config file; takes effect at the next restart");
                }
                if !reload.applied.is_empty() {
                    tracing::info!(settings = ?reload.applied, "config reloaded");
                }
                !reload.applied.is_empty()
            }
            Err(e) => {
                tracing::warn!(error = %e, "config not reloaded");
                false
            }
        }
    }
}

/// Runs until `stop`; on each SIGHUP meanwhile reads the config file again, and hands the
/// running config to `apply` when it changed.
async fn until_stopped<T, F, Fut>(
    stop: impl Future<Output = T>,
    reloader: &mut Reloader,
    cfg: &mut Config,
    mut apply: F,
) -> T
where
    F: FnMut(Config) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::pin!(stop);
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hangup = async {
            match &mut hangups {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = &mut stop => return out,
            Some(()) = hangup => {
                if reloader.reload(cfg) {
                    apply(cfg.clone()).await;
                }
            }
        }
    }
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.context("ctrl-c handler").ok();
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The address other roles use for a gRPC listener: the configured one, or the bound one.
fn advertised(configured: Option<&str>, bound: std::net::SocketAddr) -> String {
    configured.map_or_else(|| format!("http://{bound}"), str::to_string)
}
