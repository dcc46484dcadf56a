//! The services some tests need beyond their own process, which `./test.sh` provides: Redis,
//! a Redis Cluster, PostgreSQL, the `etcd` and `redis-server` programs, and root with `ip` for network
//! namespaces. A plain `cargo test` on a machine without them runs every other test, and each
//! test that needs a missing one says so on stderr and passes without running; under CI (`CI`
//! set) a missing service fails the test instead, as a CI that skips tests is a defect. Used by
//! the end-to-end tests (tests/e2e/), control's, the queue's and the bench's agents test.
#![forbid(unsafe_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

use gochat_runtime::redis::RedisUrl;

/// A service a test needs.
#[derive(Clone, Copy, Debug)]
pub enum Service {
    /// Redis at `REDIS_URL` (default redis://127.0.0.1:6379).
    Redis,
    /// A Redis Cluster at `REDIS_CLUSTER_URL` (`redis+cluster://host:port,…`, naming every
    /// node; `.ci/redis-cluster.sh` starts one and prints it).
    RedisCluster,
    /// PostgreSQL at `POSTGRES_ADMIN_URL` (default postgres://postgres@127.0.0.1:5432/postgres),
    /// reached with `psql` and no password.
    Postgres,
    /// The `etcd` program (or `$ETCD_BIN`), which the test starts itself.
    Etcd,
    /// The `redis-server` program, which the test starts itself.
    RedisServer,
    /// Root and the `ip` program (iproute2), to make network namespaces of the test's own.
    NetworkNamespaces,
}

/// The Redis the tests use: `REDIS_URL`, default redis://127.0.0.1:6379.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Redis Cluster the tests use: `REDIS_CLUSTER_URL`, or none.
pub fn redis_cluster_url() -> Option<String> {
    std::env::var("REDIS_CLUSTER_URL").ok().filter(|u| !u.is_empty())
}

/// The PostgreSQL server the tests make their databases on, as its superuser: `POSTGRES_ADMIN_URL`,
/// default postgres://postgres@127.0.0.1:5432/postgres.
pub fn postgres_admin_url() -> String {
    std::env::var("POSTGRES_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl Service {
    /// What the test needs, for the message, and why it is not there (`Err`).
    fn check(self) -> (String, Result<(), String>) {
        match self {
            Self::Redis => {
                let url = redis_url();
                let what = format!("Redis at {} (REDIS_URL)", without_password(&url));
                let ping = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                    .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
                (what, ping.map(drop).map_err(|e| e.to_string()))
            }
            Self::RedisCluster => {
                let Some(url) = redis_cluster_url() else {
                    return (
                        "a Redis Cluster at REDIS_CLUSTER_URL".into(),
                        Err("REDIS_CLUSTER_URL is not set".into()),
                    );
                };
                let what = format!("a Redis Cluster at {} (REDIS_CLUSTER_URL)", without_password(&url));
                let node =
                    RedisUrl::parse(&url).ok().and_then(|u| u.nodes().first().cloned()).unwrap_or_default();
                let state = redis::Client::open(node.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                    .and_then(|mut conn| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut conn));
                let found = match state {
                    Ok(info) if info.contains("cluster_state:ok") => Ok(()),
                    Ok(_) => Err("cluster_state is not ok".into()),
                    Err(e) => Err(e.to_string()),
                };
                (what, found)
            }
            Self::Postgres => {
                let url = postgres_admin_url();
                let what = format!(
                    "PostgreSQL at {} (POSTGRES_ADMIN_URL), reached with psql without a password",
                    without_password(&url)
                );
                let out = Command::new("psql")
                    .args(["-w", &url, "-Atqc", "select 1"])
                    .env("PGCONNECT_TIMEOUT", "3")
                    .stdin(Stdio::null())
                    .output();
                let found = match out {
                    Err(e) => Err(format!("psql: {e}")),
                    Ok(out) if out.status.success() => Ok(()),
                    Ok(out) => {
                        Err(String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("").to_string())
                    }
                };
                (what, found)
            }
            Self::Etcd => {
                let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
                (format!("the {bin:?} program (ETCD_BIN)"), runs(&bin))
            }
            Self::RedisServer => ("the \"redis-server\" program".into(), runs("redis-server")),
            Self::NetworkNamespaces => {
                let found =
                    if effective_uid() == Some(0) { runs_with("ip", "-V") } else { Err("not root".into()) };
                ("root and the \"ip\" program, for network namespaces".into(), found)
            }
        }
    }
}

/// Whether `program --version` runs.
fn runs(program: &str) -> Result<(), String> {
    runs_with(program, "--version")
}

/// Whether `program arg` runs.
fn runs_with(program: &str, arg: &str) -> Result<(), String> {
    match Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{program} {arg}: {status}")),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

/// This process's effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// A URL without the password it may hold, to print.
fn without_password(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?))) {
        Some((scheme, (user, host))) => {
            let name = user.split_once(':').map_or(user, |(name, _)| name);
            if name.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{name}@{host}")
            }
        }
        None => url.to_string(),
    }
}

/// Whether every one of `services` is there, for the test running on this thread. When one is
/// not: outside CI, a line on stderr naming the test and what it needs, and false (the test
/// returns, see [`require!`]); under CI, a panic.
pub fn present(services: &[Service]) -> bool {
    present_for("", services)
}

/// [`present`] for a part of the test, named by `part` after the test's name in what it says:
/// the part is skipped, the rest runs.
pub fn present_for(part: &str, services: &[Service]) -> bool {
    let thread = std::thread::current();
    let name = thread.name().filter(|n| *n != "main").unwrap_or("this test");
    let test = format!("{name}{part}");
    for service in services {
        let (what, found) = service.check();
        if let Err(why) = found {
            if std::env::var_os("CI").is_some() {
                panic!("{test} needs {what}, which is not there ({why}); CI runs every test");
            }
            let remedy = match service {
                Service::Redis | Service::Postgres => "start one",
                Service::RedisCluster => "start one: .ci/redis-cluster.sh prints its URL",
                Service::Etcd => "install it, Debian's etcd-server",
                Service::RedisServer => "install it, Debian's redis-server",
                Service::NetworkNamespaces => "run it as root, with Debian's iproute2",
            };
            let line = format!("skipped: {test} needs {what} ({remedy}, or run ./test.sh): {why}\n");
            // Straight to stderr, not through the test harness's capture of a passing test.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            return false;
        }
    }
    true
}

/// Returns from the test, having said why, when a service it needs is not there; under CI fails
/// it instead ([`present`]). `require!(Service::Redis, Service::Postgres);`
#[macro_export]
macro_rules! require {
    ($($service:expr),+ $(,)?) => {
        if !$crate::present(&[$($service),+]) {
            return;
        }
    };
}
