//! Several services on one listen address, chosen per request by host and
//! path (`domains`, `path_prefix` in the config).
//!
//! Order: an exact host beats a wildcard (`*.example.com`, one label), which
//! beats a service that takes any host; within the first of those classes
//! that has a match, the longest path prefix wins (prefixes match at `/`
//! boundaries: `/api` takes `/api` and `/api/x`, not `/apix`). A request
//! that matches nothing gets a 404 that names its host and path.

use std::sync::Arc;

use crate::service::ServiceProxy;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.example.com` as `.example.com`: one more label in front.
    Wildcard(String),
    Any,
}

struct Entry {
    host: Host,
    prefix: String,
    svc: Arc<ServiceProxy>,
}

/// The services of one listen address.
pub struct Routes {
    /// The address's services in config order (the first one's
    /// connection settings apply).
    services: Vec<Arc<ServiceProxy>>,
    entries: Vec<Entry>,
    /// The only service, when it takes every host and path: no lookup.
    only: Option<Arc<ServiceProxy>>,
}

impl Routes {
    pub fn new(services: &[Arc<ServiceProxy>]) -> Routes {
        let mut entries = Vec::new();
        for s in services {
            let prefix = s.path_prefix.clone().unwrap_or_else(|| "/".into());
            if s.domains.is_empty() {
                entries.push(Entry {
                    host: Host::Any,
                    prefix: prefix.clone(),
                    svc: s.clone(),
                });
            }
            for d in &s.domains {
                let host = match d.strip_prefix('*') {
                    Some(suffix) => Host::Wildcard(suffix.to_string()),
                    None => Host::Exact(d.clone()),
                };
                entries.push(Entry {
                    host,
                    prefix: prefix.clone(),
                    svc: s.clone(),
                });
            }
        }
        // Longest prefix first, so that the first match is the best.
        entries.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        let only = match entries.as_slice() {
            [e] if e.host == Host::Any && e.prefix == "/" => Some(e.svc.clone()),
            _ => None,
        };
        Routes {
            services: services.to_vec(),
            entries,
            only,
        }
    }

    /// Connection-level settings (header and idle timeouts, header size)
    /// come from here: the first service of the address.
    pub fn first(&self) -> &Arc<ServiceProxy> {
        &self.services[0]
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceProxy>> {
        self.services.iter()
    }

    /// The service for a request to `host` (from `Host` or the URI's
    /// authority, port and case aside) and `path`.
    pub fn pick(&self, host: Option<&str>, path: &str) -> Option<&Arc<ServiceProxy>> {
        if let Some(s) = &self.only {
            return Some(s);
        }
        let host = host.map(normalize).unwrap_or_default();
        // Judged on the path with `.` and `..` segments resolved, as the
        // instance will read it: `/api/../admin` is not under `/api`.
        let clean = resolve_dots(path);
        let path = clean.as_str();
        let prefixed = |e: &&Entry| {
            e.prefix == "/"
                || path == e.prefix
                || path
                    .strip_prefix(e.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let exact = |e: &&Entry| matches!(&e.host, Host::Exact(h) if *h == host);
        let wild = |e: &&Entry| {
            matches!(&e.host, Host::Wildcard(sfx)
                if host.len() > sfx.len()
                    && host.ends_with(sfx.as_str())
                    && !host[..host.len() - sfx.len()].contains('.'))
        };
        let any = |e: &&Entry| e.host == Host::Any;
        self.entries
            .iter()
            .filter(exact)
            .find(prefixed)
            .or_else(|| self.entries.iter().filter(wild).find(prefixed))
            .or_else(|| self.entries.iter().filter(any).find(prefixed))
            .map(|e| &e.svc)
    }
}

/// RFC 3986 §5.2.4, on the path only (percent-escapes of dots too).
fn resolve_dots(path: &str) -> String {
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = String::with_capacity(path.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() || decoded.ends_with("/.") || decoded.ends_with("/..") {
        p.push('/');
    }
    p
}

/// `App.Example.com:8443` → `app.example.com`; `[::1]:80` → `::1`.
fn normalize(host: &str) -> String {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                h
            }
        })
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, domains: &[&str], prefix: Option<&str>) -> Arc<ServiceProxy> {
        let mut text = format!(
            "[services.{name}]\nlisten = \"127.0.0.1:8443\"\ntargets = [\"127.0.0.1:9\"]\n"
        );
        if !domains.is_empty() {
            let list: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
            text.push_str(&format!("domains = [{}]\n", list.join(", ")));
        }
        if let Some(p) = prefix {
            text.push_str(&format!("path_prefix = {p:?}\n"));
        }
        let cfg = handoff_core::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        crate::Proxy::new(1)
            .add_service(&cfg.services[name])
            .unwrap()
    }

    fn name(r: &Routes, host: &str, path: &str) -> Option<String> {
        r.pick(Some(host), path).map(|s| s.name.to_string())
    }

    #[test]
    fn exact_beats_wildcard_beats_any_and_the_longest_prefix_wins() {
        let r = Routes::new(&[
            svc("app", &["app.example.com"], None),
            svc("api", &["app.example.com"], Some("/api")),
            svc("tenants", &["*.app.example.com"], None),
            svc("default", &[], None),
            svc("docs", &[], Some("/docs")),
        ]);
        assert_eq!(name(&r, "app.example.com", "/").as_deref(), Some("app"));
        assert_eq!(
            name(&r, "APP.example.com:8443", "/api").as_deref(),
            Some("api")
        );
        assert_eq!(
            name(&r, "app.example.com", "/api/v1/x").as_deref(),
            Some("api")
        );
        // A prefix matches at a `/` boundary only.
        assert_eq!(name(&r, "app.example.com", "/apix").as_deref(), Some("app"));
        assert_eq!(
            name(&r, "acme.app.example.com", "/").as_deref(),
            Some("tenants")
        );
        // One label only, as TLS wildcards.
        assert_eq!(
            name(&r, "a.b.app.example.com", "/").as_deref(),
            Some("default")
        );
        assert_eq!(
            name(&r, "other.org", "/docs/intro").as_deref(),
            Some("docs")
        );
        assert_eq!(name(&r, "other.org", "/").as_deref(), Some("default"));
        assert_eq!(
            r.pick(None, "/").map(|s| s.name.to_string()).as_deref(),
            Some("default")
        );
    }

    #[test]
    fn without_a_default_an_unknown_host_matches_nothing() {
        let r = Routes::new(&[
            svc("a", &["a.test"], None),
            svc("b", &["b.test"], Some("/b")),
        ]);
        assert_eq!(name(&r, "a.test", "/x").as_deref(), Some("a"));
        assert!(r.pick(Some("b.test"), "/").is_none());
        assert!(r.pick(Some("c.test"), "/").is_none());
        assert!(r.pick(Some("[::1]:80"), "/").is_none());
    }

    #[test]
    fn one_service_for_everything_needs_no_lookup() {
        let r = Routes::new(&[svc("web", &[], None)]);
        assert_eq!(name(&r, "anything", "/x").as_deref(), Some("web"));
        assert!(r.only.is_some());
    }
}
