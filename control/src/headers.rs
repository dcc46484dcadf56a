//! Security headers of the page and the REST API: a content security policy, no MIME sniffing,
//! no framing, no referrer.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The REST API's policy: its answers are JSON, never a document, so they may load nothing
/// and be framed by no one.
pub(crate) const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// Adds the headers every response of ours carries, and `policy` as its content security
/// policy.
pub(crate) fn protect(headers: &mut HeaderMap, policy: HeaderValue) {
    headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    // A body is what its Content-Type says, never sniffed into HTML or a script.
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // For browsers that do not know `frame-ancestors`.
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The page's address (and a room in it) is no one else's business.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Middleware giving every REST API response the headers, with [`API_POLICY`]. CORS stays open
/// (gochat's contract): these headers do not restrict who may call the API.
pub(crate) async fn api(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    protect(response.headers_mut(), HeaderValue::from_static(API_POLICY));
    response
}
