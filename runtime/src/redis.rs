//! Connections to Redis: one node (a primary, with its replicas behind it) or a Redis Cluster,
//! behind one handle that reconnects by itself. The stores send the same commands and scripts
//! either way: every script touches one hash slot (its keys share a `{…}` tag), and what spans
//! slots is sent as separate commands, which a connection to one node pipelines all the same.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where Redis is, as `redis_url` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// `redis://host:port[/db]`: one node.
    Node(String),
    /// `redis+cluster://[user:password@]h1:p1,h2:p2,…`, or `redis://h1:p1,redis://h2:p2,…`: a
    /// Redis Cluster, found from any of these nodes (as `redis://` URLs).
    Cluster(Vec<String>),
}

impl RedisUrl {
    /// Reads `url`; an error says what is wrong with it (without its password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            let hosts = hosts.trim_end_matches('/');
            if hosts.contains('/') {
                return Err(
                    "a redis+cluster:// URL names nodes only (a cluster has no database number)".into()
                );
            }
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{auth}{h}"))
                .collect();
            return Self::cluster(nodes);
        }
        if url.contains(',') {
            return Self::cluster(
                url.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect(),
            );
        }
        ::redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self::Node(url.to_string()))
    }

    /// Each node it names, as a `redis://` URL (one, or a cluster's).
    pub fn nodes(&self) -> &[String] {
        match self {
            Self::Node(url) => std::slice::from_ref(url),
            Self::Cluster(nodes) => nodes,
        }
    }

    fn cluster(nodes: Vec<String>) -> Result<Self, String> {
        if nodes.is_empty() {
            return Err("a cluster URL names no node".into());
        }
        for node in &nodes {
            let info = ::redis::Client::open(node.as_str()).map_err(|e| e.to_string())?;
            if info.get_connection_info().redis.db != 0 {
                return Err(
                    "a cluster node's URL has no database number (a cluster has only database 0)".into()
                );
            }
        }
        Ok(Self::Cluster(nodes))
    }
}

/// Deletes every key under `prefix` (`prefix:*`) from the Redis at `url`, one node or each
/// node of a cluster (its replicas refuse the deletes, and follow), finding them with `SCAN`
/// so a shared Redis is never blocked. For the bench's runs and the tests: errors are passed
/// over, as what is left is only a run's leftovers.
pub fn delete_keys(url: &str, prefix: &str) {
    let Ok(url) = RedisUrl::parse(url) else { return };
    for node in url.nodes() {
        let Ok(mut conn) = ::redis::Client::open(node.as_str()).and_then(|c| c.get_connection()) else {
            continue;
        };
        let scan =
            |cursor: u64, conn: &mut ::redis::Connection| -> ::redis::RedisResult<(u64, Vec<String>)> {
                ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}:*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query(conn)
            };
        let mut cursor = 0u64;
        while let Ok((next, keys)) = scan(cursor, &mut conn) {
            // A `DEL` each (a cluster refuses one naming keys of several slots), pipelined.
            let mut dels = ::redis::pipe();
            for key in keys {
                dels.del(key).ignore();
            }
            let _: ::redis::RedisResult<()> = dels.query(&mut conn);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// How long to wait, and how often to retry, on a connection.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    pub connect: Duration,
    /// `None`: no limit (a connection of its own for blocking reads).
    pub response: Option<Duration>,
    pub retries: u32,
}

/// A connection to Redis that reconnects by itself; clones share it.
#[derive(Clone)]
pub enum RedisConn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects to `url`; fails when it is not a Redis URL or cannot be reached now.
    pub async fn open(url: &str, t: RedisTimeouts) -> ::redis::RedisResult<Self> {
        let url = RedisUrl::parse(url).map_err(|e| {
            ::redis::RedisError::from((::redis::ErrorKind::InvalidClientConfig, "bad Redis URL", e))
        })?;
        match url {
            RedisUrl::Node(url) => {
                let mut config = ConnectionManagerConfig::new()
                    .set_connection_timeout(t.connect)
                    .set_number_of_retries(t.retries as usize);
                if let Some(response) = t.response {
                    config = config.set_response_timeout(response);
                }
                Ok(Self::Node(ConnectionManager::new_with_config(::redis::Client::open(url)?, config).await?))
            }
            RedisUrl::Cluster(nodes) => {
                let mut builder =
                    ClusterClientBuilder::new(nodes).connection_timeout(t.connect).retries(t.retries);
                if let Some(response) = t.response {
                    builder = builder.response_timeout(response);
                }
                Ok(Self::Cluster(builder.build()?.get_async_connection().await?))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RedisUrl;

    #[test]
    fn urls_name_a_node_or_a_cluster() {
        assert_eq!(
            RedisUrl::parse("redis://127.0.0.1:6379/2"),
            Ok(RedisUrl::Node("redis://127.0.0.1:6379/2".into()))
        );
        let nodes = |n: &[&str]| Ok(RedisUrl::Cluster(n.iter().map(|s| s.to_string()).collect()));
        assert_eq!(
            RedisUrl::parse("redis+cluster://h1:7000,h2:7001/"),
            nodes(&["redis://h1:7000", "redis://h2:7001"])
        );
        assert_eq!(
            RedisUrl::parse("redis+cluster://u:p@h1:7000,h2:7001"),
            nodes(&["redis://u:p@h1:7000", "redis://u:p@h2:7001"])
        );
        assert_eq!(
            RedisUrl::parse("redis://h1:7000, redis://h2:7001"),
            nodes(&["redis://h1:7000", "redis://h2:7001"])
        );
        assert!(RedisUrl::parse("redis+cluster://").unwrap_err().contains("no node"));
        assert!(RedisUrl::parse("redis+cluster://h1:7000/3").unwrap_err().contains("database"));
        assert!(RedisUrl::parse("redis://h1:7000/1,redis://h2:7001").unwrap_err().contains("database"));
        assert!(RedisUrl::parse("http://h1").is_err());
    }
}
