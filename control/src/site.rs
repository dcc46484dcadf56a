//! Serves the web page: built into the binary, or from a configured folder, plus `/config.js`
//! telling the page where the API and the socket are.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use include_dir::{include_dir, Dir};

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../site");

struct Site {
    dir: Option<PathBuf>,
    api_port: u16,
    ws_port: Arc<AtomicU16>,
    ws_path: String,
}

/// The page's router. `api_port`, `ws_port` and `ws_path` go into `/config.js`; `ws_port` may
/// change after start (a gateway bound to port 0 in the same process).
pub fn router(dir: Option<PathBuf>, api_port: u16, ws_port: Arc<AtomicU16>, ws_path: &str) -> Router {
    let site = Site { dir, api_port, ws_port, ws_path: ws_path.to_string() };
    Router::new().fallback(serve).with_state(Arc::new(site))
}

async fn serve(State(site): State<Arc<Site>>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path == "config.js" {
        let config = serde_json::json!({
            "apiPort": site.api_port,
            "wsPort": site.ws_port.load(Ordering::Relaxed),
            "wsPath": site.ws_path,
        });
        return file("config.js", format!("window.GOCHAT_CONFIG = {config};\n").into_bytes());
    }
    let path = if path.is_empty() { "index.html" } else { path };
    if path.split('/').any(|seg| seg == ".." || seg.starts_with('.')) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let bytes = match &site.dir {
        Some(dir) => tokio::fs::read(dir.join(path)).await.ok(),
        None => EMBEDDED.get_file(path).map(|f| f.contents().to_vec()),
    };
    match bytes {
        Some(b) => file(path, b),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn file(path: &str, bytes: Vec<u8>) -> Response {
    let mime = match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    };
    let mut res = (StatusCode::OK, bytes).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
