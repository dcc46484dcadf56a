//! `gochat health`: a health check for containers and supervisors. An `http://` address with a
//! path asks a role's admin listener (`/healthz`, `/readyz`) and needs a 200; any other address
//! asks a gRPC port for its `grpc.health.v1` status and needs SERVING.

use anyhow::Context;
use gochat_runtime::peers;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Checks `address` and prints its answer; an error unless it is healthy.
pub async fn check(address: &str) -> anyhow::Result<()> {
    if http_path(address).is_some() {
        check_http(address).await
    } else {
        check_grpc(address).await
    }
}

async fn check_http(address: &str) -> anyhow::Result<()> {
    let (status, body) = http_get(address).await.with_context(|| format!("health check of {address}"))?;
    if status != 200 {
        anyhow::bail!("{address}: {status} {body}");
    }
    println!("{address}: {status} {body}");
    Ok(())
}

async fn check_grpc(address: &str) -> anyhow::Result<()> {
    let channel = peers::endpoint(address)
        .with_context(|| format!("{address:?} is not a gRPC address"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach {address}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .with_context(|| format!("health check of {address}"))?;
    let status = reply.into_inner().status();
    if status != ServingStatus::Serving {
        anyhow::bail!("{address}: {}", status.as_str_name());
    }
    println!("{address}: {}", status.as_str_name());
    Ok(())
}

/// The path of an `http://host:port/path` address, when it has one besides `/`.
fn http_path(address: &str) -> Option<&str> {
    let rest = address.strip_prefix("http://")?;
    let path = &rest[rest.find('/')?..];
    (path != "/").then_some(path)
}

/// `GET` of an `http://` address with a path: the status code and the body. A plain request
/// over TCP: admin listeners speak HTTP/1.1 without TLS.
async fn http_get(address: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = address.strip_prefix("http://").context("not an http:// address")?;
    let (host, path) = rest.split_at(rest.find('/').context("no path")?);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .context("no answer within 5 s")?
        .with_context(|| format!("cannot reach {host}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", answer.lines().next().unwrap_or("")))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim().to_string();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_addresses_with_a_path_are_asked_over_http() {
        assert_eq!(http_path("http://127.0.0.1:9100/readyz"), Some("/readyz"));
        assert_eq!(http_path("http://127.0.0.1:6900"), None);
        assert_eq!(http_path("http://127.0.0.1:6900/"), None);
        assert_eq!(http_path("127.0.0.1:6900"), None);
        assert_eq!(http_path("https://127.0.0.1:6900/readyz"), None);
    }
}
