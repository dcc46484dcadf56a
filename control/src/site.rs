//! Serves the web page: built into the binary, or from a configured folder, plus `/config.js`
//! telling the page where the API and the socket are: ports on the host it was loaded from, or
//! URLs ([`SiteUrl`]: paths on its own origin, for one origin behind a proxy), and `/gochat.js`,
//! the JavaScript client library the page is built on. Every response carries the page's content
//! security policy ([`page_policy`]) and the other security headers.

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

/// The JavaScript client library (`clients/js/`, published to npm too), which the page imports
/// from its own origin: the one copy in the repository, at [`CLIENT_LIBRARY_PATH`] beside the
/// built-in page or a `site_dir`'s (a folder's own file of that name comes first).
static CLIENT_LIBRARY: &str = include_str!("../../clients/js/gochat.js");
const CLIENT_LIBRARY_PATH: &str = "gochat.js";

struct Site {
    dir: Option<PathBuf>,
    api_port: u16,
    ws_port: Arc<AtomicU16>,
    ws_path: String,
    /// `site_api_url`, `site_ws_url`: where the page goes instead of the ports.
    api_url: Option<SiteUrl>,
    ws_url: Option<SiteUrl>,
    https: bool,
    /// `site_csp`: a policy replacing the computed one.
    policy: Option<HeaderValue>,
}

/// The page's router, for `cfg`'s site settings. `api_port`, `ws_port` and `ws_path` go into
/// `/config.js` and the page's policy; `ws_port` may change after start (a gateway bound to
/// port 0 in the same process). `https`: whether the page, the API and the socket are served
/// over TLS.
pub(crate) fn router(cfg: &ControlConfig, api_port: u16, ws_port: Arc<AtomicU16>, https: bool) -> Router {
    let policy =
        cfg.site_csp.as_deref().map(|p| HeaderValue::from_str(p).expect("validated with the config"));
    let url = |url: &Option<String>, schemes: &[&str]| {
        url.as_deref().map(|u| SiteUrl::parse(u, schemes).expect("validated with the config"))
    };
    let site = Arc::new(Site {
        dir: cfg.site_dir.clone(),
        api_port,
        ws_port,
        ws_path: cfg.site_ws_path.clone(),
        api_url: url(&cfg.site_api_url, &["http", "https"]),
        ws_url: url(&cfg.site_ws_url, &["ws", "wss", "http", "https"]),
        https,
        policy,
    });
    Router::new()
        .fallback(serve)
        .layer(axum::middleware::from_fn_with_state(site.clone(), headers))
        .with_state(site)
}

/// Where the page sends its REST calls or opens its socket, as `site_api_url` and
/// `site_ws_url` say: a path on the page's own origin, or a full URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SiteUrl {
    /// `/api`: on the origin the page was loaded from.
    Path(String),
    /// `https://api.example.com/v1`: elsewhere.
    Url { scheme: String, authority: String, path: String },
}

impl SiteUrl {
    /// Parses `url`: a path from `/` (not `//`), or `scheme://host[:port][/path]` with a scheme
    /// of `schemes`, a DNS name or an IPv4 address, and no user, query or fragment. Paths are
    /// held to `A-Z a-z 0-9 - . _ ~ % /`, so that nothing in them reads as more than a path in
    /// a policy or a script.
    pub(crate) fn parse(url: &str, schemes: &[&str]) -> Result<Self, String> {
        let path_ok = |path: &str| {
            path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%/".contains(&b))
                && !path.split('/').any(|seg| seg == "." || seg == "..")
        };
        if let Some(rest) = url.strip_prefix('/') {
            if rest.starts_with('/') || !path_ok(url) {
                return Err(
                    "a path on the page's origin is /name[/name…], of letters, digits and -._~%".into()
                );
            }
            return Ok(Self::Path(url.to_owned()));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("expected a path from / (e.g. /api) or a {} URL", schemes.join(", ")));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!("the scheme must be one of {}", schemes.join(", ")));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.starts_with('[') {
            return Err("a content security policy cannot name an IPv6 address: use a host name".into());
        }
        if host_name(authority) != Some(authority.split(':').next().unwrap_or_default()) {
            return Err(format!("{authority:?} is not host[:port]"));
        }
        if !path_ok(path) {
            return Err("the path may hold letters, digits and -._~%/ only, with no query".into());
        }
        Ok(Self::Url { scheme, authority: authority.to_owned(), path: path.to_owned() })
    }

    /// The path: all of a [`SiteUrl::Path`], the part after the host of a URL.
    pub(crate) fn path(&self) -> &str {
        match self {
            Self::Path(path) | Self::Url { path, .. } => path,
        }
    }

    /// As configured (the scheme in lowercase).
    fn text(&self) -> String {
        match self {
            Self::Path(path) => path.clone(),
            Self::Url { scheme, authority, path } => format!("{scheme}://{authority}{path}"),
        }
    }
}

/// Where the page reaches its REST API or its socket, for its policy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reach<'a> {
    /// This port of the host the page was loaded from.
    Port(u16),
    /// A configured URL.
    Url(&'a SiteUrl),
}

/// The page's policy: its own scripts, styles and images (and the empty `data:` icon); its
/// REST API and socket (`api`, `ws`), which are on other ports of the host the browser loaded
/// it from (so `'self'` does not cover them), or at the configured URLs; no plugins, no
/// `<base>`, forms only to itself, framed by no one. The host is the request's `Host`, when it
/// is a DNS name or an IPv4 address; a policy cannot name an IPv6 address, so for one the page
/// may reach the two ports on any host. A `Host` that is neither gets `'self'` only (a browser
/// always sends a valid one). A socket on the page's own origin is named with `ws:` and `wss:`
/// (not every browser counts either as `'self'`), both unless the page is served over TLS: a
/// proxy in front may be what serves HTTPS.
pub(crate) fn page_policy(host: Option<&str>, https: bool, api: Reach<'_>, ws: Reach<'_>) -> String {
    let (http_scheme, ws_scheme) = if https { ("https", "wss") } else { ("http", "ws") };
    let host = host.and_then(|h| Some((host_name(h)?, h)));
    // The request's host (any host for an IPv6 address), and its port as the `Host` gave it.
    let on_host = |port: &str| {
        host.map(|(name, _)| {
            let name = if name.starts_with('[') { "*" } else { name };
            format!("{name}{port}")
        })
    };
    let mut connect = vec!["'self'".to_string()];
    match api {
        Reach::Port(port) => {
            connect.extend(on_host(&format!(":{port}")).map(|h| format!("{http_scheme}://{h}")))
        }
        Reach::Url(SiteUrl::Path(_)) => {}
        Reach::Url(SiteUrl::Url { scheme, authority, .. }) => connect.push(format!("{scheme}://{authority}")),
    }
    match ws {
        Reach::Port(port) => {
            connect.extend(on_host(&format!(":{port}")).map(|h| format!("{ws_scheme}://{h}")))
        }
        Reach::Url(SiteUrl::Path(_)) => {
            let own = host.and_then(|(name, given)| on_host(&given[name.len()..]));
            for scheme in if https { &["wss"][..] } else { &["ws", "wss"][..] } {
                connect.extend(own.as_ref().map(|h| format!("{scheme}://{h}")));
            }
        }
        Reach::Url(SiteUrl::Url { scheme, authority, .. }) => {
            let scheme = match scheme.as_str() {
                "http" => "ws",
                "https" => "wss",
                other => other,
            };
            connect.push(format!("{scheme}://{authority}"));
        }
    }
    format!(
        "default-src 'self'; connect-src {}; img-src 'self' data:; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        connect.join(" ")
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
            let api = site.api_url.as_ref().map_or(Reach::Port(site.api_port), Reach::Url);
            let ws_port = site.ws_port.load(Ordering::Relaxed);
            let ws = site.ws_url.as_ref().map_or(Reach::Port(ws_port), Reach::Url);
            let policy = page_policy(host, site.https, api, ws);
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
        let mut config = serde_json::json!({
            "apiPort": site.api_port,
            "wsPort": site.ws_port.load(Ordering::Relaxed),
            "wsPath": site.ws_path,
        });
        for (key, url) in [("apiUrl", &site.api_url), ("wsUrl", &site.ws_url)] {
            if let Some(url) = url {
                config[key] = url.text().into();
            }
        }
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
    let bytes = bytes.or_else(|| (path == CLIENT_LIBRARY_PATH).then(|| CLIENT_LIBRARY.as_bytes().to_vec()));
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
        connect_src_to(host, https, Reach::Port(7070), Reach::Port(7000))
    }

    fn connect_src_to(host: Option<&str>, https: bool, api: Reach<'_>, ws: Reach<'_>) -> String {
        let policy = page_policy(host, https, api, ws);
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
    fn configured_urls_replace_the_ports() {
        let parse = |u: &str| SiteUrl::parse(u, &["ws", "wss", "http", "https"]).unwrap();
        let (api, ws) = (parse("/api"), parse("/ws"));
        for (host, https, want) in [
            (Some("chat.example.com"), true, "'self' wss://chat.example.com"),
            (Some("127.0.0.1:8080"), false, "'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080"),
            (Some("[::1]:8080"), false, "'self' ws://*:8080 wss://*:8080"),
            (Some("x; script-src *"), false, "'self'"),
            (None, true, "'self'"),
        ] {
            let got = connect_src_to(host, https, Reach::Url(&api), Reach::Url(&ws));
            assert_eq!(got, format!("connect-src {want}"), "{host:?}");
        }
        let (api, ws) = (parse("https://api.example.com:8443/v1"), parse("https://chat.example.com/ws"));
        assert_eq!(
            connect_src_to(Some("page.example.com"), true, Reach::Url(&api), Reach::Url(&ws)),
            "connect-src 'self' https://api.example.com:8443 wss://chat.example.com",
            "http(s) names the socket as ws(s)"
        );
        let ws = parse("WS://gw.example.com:7000/ws");
        assert_eq!(
            connect_src_to(Some("h"), false, Reach::Port(7070), Reach::Url(&ws)),
            "connect-src 'self' http://h:7070 ws://gw.example.com:7000"
        );
    }

    #[test]
    fn site_urls_are_paths_or_plain_urls() {
        let api = |u: &str| SiteUrl::parse(u, &["http", "https"]);
        assert_eq!(api("/api"), Ok(SiteUrl::Path("/api".into())));
        assert_eq!(api("/"), Ok(SiteUrl::Path("/".into())));
        assert_eq!(api("/a/b-c_d.e~%20/").map(|u| u.path().to_owned()), Ok("/a/b-c_d.e~%20/".into()));
        assert_eq!(
            api("HTTPS://api.example.com:8443/v1"),
            Ok(SiteUrl::Url {
                scheme: "https".into(),
                authority: "api.example.com:8443".into(),
                path: "/v1".into()
            })
        );
        assert_eq!(api("http://10.0.0.1").map(|u| u.path().to_owned()), Ok(String::new()));
        for bad in [
            "",
            "api",
            "//evil.example/api",
            "/api?x=1",
            "/api#x",
            "/a b",
            "/a;b",
            "/a,b",
            "/a'b",
            "/../x",
            "/a/./b",
            "ws://h/ws",
            "ftp://h",
            "https://",
            "https://u:p@h",
            "https://h:80x",
            "https://[::1]:7070",
            "https://h/x?y",
            "https://h x",
        ] {
            assert!(api(bad).is_err(), "{bad:?} taken");
        }
        assert!(SiteUrl::parse("wss://h/ws", &["ws", "wss", "http", "https"]).is_ok());
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
        let policy = page_policy(Some("h"), false, Reach::Port(1), Reach::Port(2));
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
