//! Serves the web page: built into the binary, or from a configured folder, plus `/config.js`
//! telling the page where the API and the socket are. Every response carries the page's
//! content security policy ([`page_policy`]) and the other security headers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use include_dir::{include_dir, Dir};

use crate::ControlConfig;

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../site");

struct Site {
    dir: Option<PathBuf>,
    api_port: u16,
    ws_port: Arc<AtomicU16>,
    ws_path: String,
    https: bool,
    /// `site_csp`: a policy replacing the computed one.
    policy: Option<HeaderValue>,
}

/// The page's router, for `cfg`'s site settings. `api_port`, `ws_port` and `ws_path` go into
/// `/config.js` and the page's policy; `ws_port` may change after start (a gateway bound to
/// port 0 in the same process). `https`: whether the page, the API and the socket are served
/// over TLS.
pub fn router(cfg: &ControlConfig, api_port: u16, ws_port: Arc<AtomicU16>, https: bool) -> Router {
    let policy =
        cfg.site_csp.as_deref().map(|p| HeaderValue::from_str(p).expect("validated with the config"));
    let site = Arc::new(Site {
        dir: cfg.site_dir.clone(),
        api_port,
        ws_port,
        ws_path: cfg.site_ws_path.clone(),
        https,
        policy,
    });
    Router::new()
        .fallback(serve)
        .layer(axum::middleware::from_fn_with_state(site.clone(), headers))
        .with_state(site)
}

/// The page's policy: its own scripts, styles and images (and the empty `data:` icon); its
/// REST API and socket, which are on other ports of the host the browser loaded it from, so
/// `'self'` does not cover them; no plugins, no `<base>`, forms only to itself, framed by no
/// one. The host is the request's `Host`, when it is a DNS name or an IPv4 address; a policy
/// cannot name an IPv6 address, so for one the page may reach the two ports on any host. A
/// `Host` that is neither gets `'self'` only (a browser always sends a valid one).
pub fn page_policy(host: Option<&str>, https: bool, api_port: u16, ws_port: u16) -> String {
    let (http, ws) = if https { ("https", "wss") } else { ("http", "ws") };
    let connect = match host.and_then(host_name) {
        Some(h) => {
            let h = if h.starts_with('[') { "*" } else { h };
            format!("'self' {http}://{h}:{api_port} {ws}://{h}:{ws_port}")
        }
        None => "'self'".to_string(),
    };
    format!(
        "default-src 'self'; connect-src {connect}; img-src 'self' data:; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The host of a `Host` header (`name`, `name:port`, `[v6]:port`), when it is a DNS name, an
/// IPv4 address or a bracketed IPv6 address with at most a numeric port after it.
fn host_name(host: &str) -> Option<&str> {
    let name = match host.strip_prefix('[') {
        Some(rest) => &host[..rest.find(']')? + 2],
        None => host.split(':').next()?,
    };
    let port = &host[name.len()..];
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
    };
    (port_ok && name_ok).then_some(name)
}

async fn headers(State(site): State<Arc<Site>>, request: Request, next: Next) -> Response {
    let policy = match &site.policy {
        Some(p) => p.clone(),
        None => {
            let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
            let policy = page_policy(host, site.https, site.api_port, site.ws_port.load(Ordering::Relaxed));
            HeaderValue::try_from(policy).expect("a policy of checked hosts is a header value")
        }
    };
    let mut response = next.run(request).await;
    crate::headers::protect(response.headers_mut(), policy);
    response
}

async fn serve(State(site): State<Arc<Site>>, uri: Uri) -> Response {
    let path = uri.path().strip_prefix('/').unwrap_or(uri.path());
    if path == "config.js" {
        let config = serde_json::json!({
            "apiPort": site.api_port,
            "wsPort": site.ws_port.load(Ordering::Relaxed),
            "wsPath": site.ws_path,
        });
        return file("config.js", format!("window.GOCHAT_CONFIG = {config};\n").into_bytes());
    }
    let path = if path.is_empty() { "index.html" } else { path };
    // No hidden files, no way up, and no empty segment: `index.html/` is not `index.html`.
    if path.split('/').any(|seg| seg.is_empty() || seg == ".." || seg.starts_with('.')) {
        return not_found();
    }
    let bytes = match &site.dir {
        Some(dir) => tokio::fs::read(dir.join(path)).await.ok(),
        None => EMBEDDED.get_file(path).map(|f| f.contents().to_vec()),
    };
    match bytes {
        Some(b) => file(path, b),
        None => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The file's content type, by its extension; anything else is `application/octet-stream`,
/// which `nosniff` keeps a browser from running as a page or a script.
fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn file(path: &str, bytes: Vec<u8>) -> Response {
    let mut res = (StatusCode::OK, bytes).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_src(host: Option<&str>, https: bool) -> String {
        let policy = page_policy(host, https, 7070, 7000);
        let connect = policy.split("; ").find(|d| d.starts_with("connect-src ")).unwrap();
        connect.to_string()
    }

    #[test]
    fn the_page_may_connect_to_its_api_and_socket_on_its_host() {
        for (host, https, want) in [
            (Some("127.0.0.1:8080"), false, "'self' http://127.0.0.1:7070 ws://127.0.0.1:7000"),
            (
                Some("chat.example.com"),
                true,
                "'self' https://chat.example.com:7070 wss://chat.example.com:7000",
            ),
            (
                Some("Chat-1.Example.com.:443"),
                true,
                "'self' https://Chat-1.Example.com.:7070 wss://Chat-1.Example.com.:7000",
            ),
            (Some("[::1]:8080"), false, "'self' http://*:7070 ws://*:7000"),
            (Some("[::1]"), true, "'self' https://*:7070 wss://*:7000"),
            (None, false, "'self'"),
        ] {
            assert_eq!(connect_src(host, https), format!("connect-src {want}"), "{host:?}");
        }
    }

    #[test]
    fn a_host_that_is_no_host_name_adds_nothing() {
        for host in [
            "",
            ":8080",
            "x; script-src *",
            "x:80; script-src *",
            "x:80:81",
            "x:",
            "x:8o",
            "[::1]x",
            "[::1]:80;",
            "[not-v6]:80",
            "[::1",
            "a b",
            "a/b",
            "*",
            "'self'",
            "ä.example",
        ] {
            assert_eq!(connect_src(Some(host), false), "connect-src 'self'", "{host:?}");
        }
    }

    #[test]
    fn the_policy_keeps_the_page_to_itself() {
        let policy = page_policy(Some("h"), false, 1, 2);
        for want in [
            "default-src 'self'",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.split("; ").any(|d| d == want), "{want} in {policy}");
        }
    }

    #[test]
    fn content_types_go_by_the_last_extension_only() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/App.JS"), "text/javascript; charset=utf-8");
        for path in ["index.html/", "dir.html/file", "noext", "x.exe", "x.html.bak", ""] {
            assert_eq!(content_type(path), "application/octet-stream", "{path}");
        }
    }
}
