//! The plain-HTTP listener beside the HTTPS ones (`[server.acme]
//! http_listen`): it answers ACME HTTP-01 challenges from [`Challenges`]
//! and sends every other request to the HTTPS address of the service that
//! would take it (308, so a POST stays a POST).
//!
//! It is a listen address like the others (see `server.rs`): the same
//! workers, timeouts, draining, and hand-over to a next daemon.

use std::collections::HashMap;
use std::sync::RwLock;

use http::{header, HeaderValue, Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::forward::{self, ClientConn};
use crate::route::Routes;

/// The name its sockets go by in a hand-over (not a valid service name).
pub const SOCKET_NAME: &str = ":http01";

const PREFIX: &str = "/.well-known/acme-challenge/";

/// Key authorizations by token, published while a CA verifies them.
#[derive(Debug, Default)]
pub struct Challenges {
    map: RwLock<HashMap<String, String>>,
}

impl Challenges {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    fn get(&self, token: &str) -> Option<String> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }
}

pub(crate) fn answer<B>(
    challenges: &Challenges,
    routes: &Routes,
    conn: &ClientConn,
    host: Option<&str>,
    req: &Request<B>,
) -> Response<ProxyBody> {
    conn.state.request_started();
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(ProxyBody::text(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(PREFIX) {
        let r = match challenges.get(token) {
            Some(k) => {
                let mut r = text(StatusCode::OK, k);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            None => text(
                StatusCode::NOT_FOUND,
                "404 Not Found: no ACME challenge with this token is open\n".into(),
            ),
        };
        return forward::done_without_target(r, conn);
    }
    let Some(svc) = routes.pick(host, path) else {
        let mut r = text(
            StatusCode::NOT_FOUND,
            format!(
                "404 Not Found: no HTTPS service here for host {} and path {path}\n",
                host.unwrap_or("(none)")
            ),
        );
        r.headers_mut().insert(
            header::HeaderName::from_static("x-handoff-error"),
            HeaderValue::from_static("no_route"),
        );
        return forward::done_without_target(r, conn);
    };
    let Some(host) = host.map(strip_port).filter(|h| plausible_host(h)) else {
        let r = text(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: no usable Host header; this address only redirects to HTTPS\n".into(),
        );
        return forward::done_without_target(r, conn);
    };
    let port = svc.bound().map_or(443, |a| a.port());
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let target = format!(
        "https://{authority}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut r = text(
        StatusCode::PERMANENT_REDIRECT,
        format!("308 Permanent Redirect: {target}\n"),
    );
    match HeaderValue::from_str(&target) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => {
            *r.status_mut() = StatusCode::BAD_REQUEST;
        }
    }
    forward::done_without_target(r, conn)
}

/// A name or an IP literal: nothing that could make the `Location` point
/// elsewhere (`@`, `/`, `\\`) or break it.
fn plausible_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_off_hosts() {
        assert_eq!(strip_port("a.example:80"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn only_plain_hosts_are_redirected_to() {
        assert!(plausible_host("app.example.com"));
        assert!(plausible_host("[::1]"));
        assert!(plausible_host("10.0.0.1"));
        for bad in ["", "evil.com/x", "a@evil.com", "a\\b", "[nope]", "a b"] {
            assert!(!plausible_host(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_are_published_and_withdrawn() {
        let c = Challenges::default();
        c.insert("t1", "t1.thumb");
        assert_eq!(c.get("t1").as_deref(), Some("t1.thumb"));
        c.remove("t1");
        assert_eq!(c.get("t1"), None);
    }
}
