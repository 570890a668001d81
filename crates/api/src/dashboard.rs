//! The dashboard's files, embedded in the binary: no build step, no
//! external request, nothing to install. The page asks for the token (or
//! takes it from the link `handoff serve` prints, `/#token=…`, which never
//! reaches the server: a fragment is not sent) and keeps it for the tab.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Only our own files and our own API: no inline script, no framing, no
/// referrer (the token never travels in a URL, but nothing else should
/// either).
const HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CACHE_CONTROL, "no-cache"),
];

fn file(kind: &'static str, body: &'static str) -> impl IntoResponse {
    let [a, b, c, d] = HEADERS;
    ([(header::CONTENT_TYPE, kind), a, b, c, d], body)
}

pub(crate) async fn index() -> impl IntoResponse {
    file("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn script() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", SCRIPT)
}

pub(crate) async fn style() -> impl IntoResponse {
    file("text/css; charset=utf-8", STYLE)
}
