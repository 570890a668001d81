//! Stage two: raw values → typed [`Config`], collecting every problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::defaults as d;
use super::hosts::{self, Hosts};
use super::raw::*;
use super::sections::*;
use super::*;
use crate::names::{self, NameKind};
use crate::{command, duration};

/// Problems as `(dotted key, message)`; `load` turns keys into positions.
type Problems = Vec<(String, String)>;

pub(super) struct Ctx {
    pub(super) problems: Problems,
}

impl Ctx {
    pub(super) fn err(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.problems.push((key.into(), msg.into()));
    }

    /// A leaf's value when it has the expected type; else a problem, and `None`.
    pub(super) fn take<T: Expected + Clone>(
        &mut self,
        key: impl Into<String>,
        v: &Option<Leaf<T>>,
    ) -> Option<T> {
        match v.as_ref()? {
            Leaf::Ok(t) => Some(t.clone()),
            Leaf::Wrong(found) => {
                self.err(key, raw::wrong_type(T::EXPECTED, found));
                None
            }
        }
    }

    /// A sub-table, or its defaults (with a problem when it is not a table).
    pub(super) fn table<T: Default>(&mut self, key: impl Into<String>, v: Option<Table<T>>) -> T {
        match v {
            None => T::default(),
            Some(Table::Ok(t)) => t,
            Some(Table::Wrong(found)) => {
                self.err(key, raw::wrong_type("a table", &found));
                T::default()
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        key: String,
        v: Option<&Leaf<String>>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(Leaf::Ok(s)) => duration::parse(s).unwrap_or_else(|m| {
                self.err(key, m);
                default
            }),
            // A bare number: which unit was meant is a guess we do not make.
            Some(Leaf::Wrong(n @ (toml::Value::Integer(_) | toml::Value::Float(_)))) => {
                self.err(key, format!("needs a unit, e.g. \"{n}s\""));
                default
            }
            Some(Leaf::Wrong(found)) => {
                self.err(key, raw::wrong_type("a duration, e.g. \"10s\"", found));
                default
            }
        }
    }

    /// An integer within `lo..=hi` (`hi = i64::MAX`: no upper bound), or the
    /// default with a problem recorded.
    pub(super) fn int_in(
        &mut self,
        key: impl Into<String>,
        v: &Option<Leaf<i64>>,
        default: i64,
        lo: i64,
        hi: i64,
    ) -> i64 {
        let key = key.into();
        match self.take(key.clone(), v) {
            None => default,
            Some(n) if (lo..=hi).contains(&n) => n,
            Some(n) => {
                let range = if hi == i64::MAX {
                    format!("at least {lo}")
                } else {
                    format!("between {lo} and {hi}")
                };
                self.err(key, format!("must be {range}, got {n}"));
                default
            }
        }
    }

    pub(super) fn positive(
        &mut self,
        key: String,
        v: &Option<Leaf<i64>>,
        default: u32,
        max: u32,
    ) -> u32 {
        self.int_in(key, v, default.into(), 1, max.into()) as u32
    }

    pub(super) fn amount(
        &mut self,
        key: String,
        v: Option<&Leaf<CountOrText>>,
        default: &str,
    ) -> Amount {
        let parsed = match v {
            None => parse_amount(default),
            Some(Leaf::Ok(CountOrText::Count(n))) if *n >= 0 => Ok(Amount::Count(*n as u32)),
            Some(Leaf::Ok(CountOrText::Count(n))) => Err(format!("must not be negative, got {n}")),
            Some(Leaf::Ok(CountOrText::Text(s))) => parse_amount(s),
            Some(Leaf::Wrong(found)) => Err(raw::wrong_type(CountOrText::EXPECTED, found)),
        };
        parsed.unwrap_or_else(|m| {
            self.err(key, m);
            parse_amount(default).expect("defaults parse")
        })
    }
}

/// A batch: an amount, or `"auto"`.
pub fn parse_batch(s: &str) -> Result<Batch, String> {
    if s.trim() == "auto" {
        return Ok(Batch::Auto);
    }
    parse_amount(s)
        .map(Batch::Amount)
        .map_err(|m| format!("{m}, nor \"auto\""))
}

/// `"2"`, `2` or `"50%"`.
pub fn parse_amount(s: &str) -> Result<Amount, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        match p.trim().parse::<u32>() {
            Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
            _ => Err(format!("'{s}' is not a percentage from 0% to 100%")),
        }
    } else {
        t.parse::<u32>()
            .map(Amount::Count)
            .map_err(|_| format!("'{s}' is neither a count (\"2\") nor a percentage (\"50%\")"))
    }
}

pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, Problems> {
    let mut cx = Ctx {
        problems: Vec::new(),
    };
    let raw_server = cx.table("server", raw.server);
    let server = server(&mut cx, raw_server, base);
    let raw_hosts = cx.table("hosts", raw.hosts);
    let hosts = hosts::hosts(&mut cx, raw_hosts, base);
    let mut services = BTreeMap::new();
    let raw_services = cx.table("services", raw.services);
    if raw_services.is_empty() {
        cx.err(
            "services",
            "no services; add a [services.NAME] table with `listen` and `targets` or `command`",
        );
    }
    // Who takes what on each fixed listen address: (domain or "*", path
    // prefix) → service.
    let mut routes: BTreeMap<SocketAddr, BTreeMap<(String, String), String>> = BTreeMap::new();
    // Whether each fixed listen address speaks TLS, and who said so first.
    let mut secure: BTreeMap<SocketAddr, (bool, String)> = BTreeMap::new();
    for (name, rs) in raw_services {
        let key = format!("services.{name}");
        let at = format!("services.{}", super::locate::key_segment(&name));
        if let Err(e) = names::check_name(NameKind::Service, &name) {
            cx.err(at.clone(), e.problem());
        }
        let rs = match rs {
            Table::Ok(rs) => rs,
            Table::Wrong(found) => {
                cx.err(at, raw::wrong_type("a table", &found));
                continue;
            }
        };
        if let Some(svc) = service(&mut cx, &name, rs, base, &hosts, &server) {
            if let (Some(a), Some(listen)) = (&server.acme, svc.listen) {
                if listen == a.http_listen && listen.port() != 0 {
                    cx.err(
                        format!("{key}.listen"),
                        format!("{listen} is also server.acme.http_listen (HTTP-01 answers and the redirect to HTTPS); pick another"),
                    );
                }
            }
            // Port 0 (tests, "any free port") never conflicts.
            if let Some(listen) = svc.listen.filter(|l| l.port() != 0) {
                if listen == server.admin {
                    cx.err(
                        format!("{key}.listen"),
                        format!("{listen} is also server.admin; pick another port"),
                    );
                }
                let (tls, first) = secure
                    .entry(listen)
                    .or_insert((svc.tls.is_some(), name.clone()))
                    .clone();
                if tls != svc.tls.is_some() {
                    cx.err(
                        format!("{key}.tls"),
                        format!(
                            "{listen} is shared with service '{first}', which {} TLS: on one address, every service has a `[tls]` certificate or none does",
                            if tls { "has" } else { "has no" }
                        ),
                    );
                }
                // 0.0.0.0:443 and 127.0.0.1:443 both bind (SO_REUSEPORT),
                // and the kernel would split their traffic silently.
                if let Some(other) = routes.keys().find(|a| {
                    **a != listen
                        && a.port() == listen.port()
                        && (a.ip().is_unspecified() || listen.ip().is_unspecified())
                }) {
                    cx.err(
                        format!("{key}.listen"),
                        format!(
                            "{listen} overlaps {other} of another service (same port, one on every address); use the same address to share it"
                        ),
                    );
                }
                let taken = routes.entry(listen).or_default();
                let hosts: Vec<String> = if svc.domains.is_empty() {
                    vec!["*".into()]
                } else {
                    svc.domains.clone()
                };
                let prefix = svc.path_prefix.clone().unwrap_or_else(|| "/".into());
                for h in hosts {
                    if let Some(other) = taken.insert((h.clone(), prefix.clone()), name.clone()) {
                        let what = if h == "*" {
                            format!("{listen} (any host, path {prefix})")
                        } else {
                            format!(
                                "{h}{} on {listen}",
                                if prefix == "/" {
                                    String::new()
                                } else {
                                    prefix.clone()
                                }
                            )
                        };
                        cx.err(
                            format!("{key}.listen"),
                            format!(
                                "{what} is already service '{other}''s; services share a listen address when each has its own `domains` or `path_prefix`"
                            ),
                        );
                        break;
                    }
                }
            }
            services.insert(name, svc);
        }
    }
    // Two services on one HAProxy backend would take each other's servers
    // for strays.
    let mut driven: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut shared = Vec::new();
    for (name, svc) in &services {
        if let Balancer::Haproxy { socket, backend } = &svc.balancer {
            if let Some(other) = driven.insert((socket.as_str(), backend.as_str()), name.as_str()) {
                shared.push((
                    format!("services.{name}.balancer.backend"),
                    format!(
                        "backend '{backend}' of {socket} is also service '{other}''s; \
                         give each service its own backend"
                    ),
                ));
            }
        }
    }
    for (k, m) in shared {
        cx.err(k, m);
    }
    if cx.problems.is_empty() {
        Ok(Config {
            path: PathBuf::new(),
            server,
            services,
            hosts: hosts.valid,
        })
    } else {
        Err(cx.problems)
    }
}

fn socket_addr(cx: &mut Ctx, key: String, s: &str) -> Option<SocketAddr> {
    let t = s.trim();
    let t2 = t
        .strip_prefix("localhost:")
        .map(|p| format!("127.0.0.1:{p}"));
    match t2.as_deref().unwrap_or(t).parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(
                key,
                format!("'{s}' is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

fn server(cx: &mut Ctx, mut r: RawServer, base: &Path) -> Server {
    let raw_acme = r.acme.take();
    let acme = raw_acme.is_some().then(|| {
        let ra = cx.table("server.acme", raw_acme);
        acme(cx, &ra, base)
    });
    let admin = cx
        .take("server.admin", &r.admin)
        .and_then(|s| socket_addr(cx, "server.admin".into(), &s))
        .unwrap_or_else(|| d::ADMIN.parse().expect("default admin"));
    let state_dir = cx.take("server.state_dir", &r.state_dir);
    let state_dir = base.join(state_dir.as_deref().unwrap_or(d::STATE_DIR));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cx.int_in("server.workers", &r.workers, cores as i64, 1, 256) as usize;
    let shutdown_timeout = cx.duration(
        "server.shutdown_timeout".into(),
        r.shutdown_timeout.as_ref(),
        d::SHUTDOWN_TIMEOUT,
    );
    let port_range = cx.take("server.port_range", &r.port_range);
    let port_range = port_range.as_deref().and_then(|s| {
        let parsed = s.split_once('-').and_then(|(a, b)| {
            Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
        });
        match parsed {
            Some((a, b)) if a >= 1 && a <= b => Some((a, b)),
            _ => {
                cx.err(
                    "server.port_range",
                    format!("'{s}' is not a port range; write e.g. \"20000-20999\""),
                );
                None
            }
        }
    });
    let releases_kept = cx.int_in(
        "server.releases_kept",
        &r.releases_kept,
        d::RELEASES_KEPT as i64,
        1,
        1000,
    ) as usize;
    let token = cx.take("server.token", &r.token).filter(|t| {
        let ok = t.len() >= 16 && t.chars().all(|c| c.is_ascii_graphic());
        if !ok {
            cx.err("server.token", "must be at least 16 printable characters without spaces (or leave it out: one is generated)");
        }
        ok
    });
    Server {
        admin,
        state_dir,
        workers,
        shutdown_timeout,
        port_range,
        releases_kept,
        token,
        acme: acme.flatten(),
    }
}

/// `[server.acme]`: `directory` (https URL), `email`, `ca`, `http_listen`.
fn acme(cx: &mut Ctx, r: &RawAcme, base: &Path) -> Option<Acme> {
    let directory = cx.take("server.acme.directory", &r.directory);
    let email = cx.take("server.acme.email", &r.email);
    let ca = cx.take("server.acme.ca", &r.ca);
    let http_listen = cx
        .take("server.acme.http_listen", &r.http_listen)
        .and_then(|s| socket_addr(cx, "server.acme.http_listen".into(), &s))
        .unwrap_or_else(|| d::ACME_HTTP_LISTEN.parse().expect("default http_listen"));
    let directory = match directory {
        Some(u) if u.trim().starts_with("https://") => Some(u.trim().to_string()),
        Some(u) => {
            cx.err(
                "server.acme.directory",
                format!(
                    "'{u}' is not an https URL; give the ACME directory, e.g. \"{}\"",
                    d::ACME_DIRECTORY
                ),
            );
            None
        }
        None => {
            cx.err(
                "server.acme",
                format!(
                    "missing `directory`: the CA's ACME directory URL, e.g. \"{}\"",
                    d::ACME_DIRECTORY
                ),
            );
            None
        }
    };
    let email = email.map(|e| e.trim().to_string()).filter(|e| {
        let ok = e.contains('@') && !e.contains([' ', ',', '<', '>']);
        if !ok {
            cx.err(
                "server.acme.email",
                format!("'{e}' is not an email address; the CA writes to it about expiring certificates"),
            );
        }
        ok
    });
    let ca = ca.map(|c| base.join(c.trim()));
    if let Some(c) = ca.as_ref().filter(|c| !c.is_file()) {
        cx.err(
            "server.acme.ca",
            format!(
                "{} does not exist; give the PEM root of your private ACME directory",
                c.display()
            ),
        );
    }
    let directory = directory?;
    Some(Acme {
        directory,
        email,
        ca,
        http_listen,
    })
}

fn service(
    cx: &mut Ctx,
    name: &str,
    mut r: RawService,
    base: &Path,
    known: &Hosts,
    server: &Server,
) -> Option<Service> {
    let k = |s: &str| format!("services.{name}.{s}");
    let rb = cx.table(k("balancer"), r.balancer.take());
    let balancer = balancer(cx, name, &rb);
    let listen = match (&r.listen, &balancer) {
        (Some(_), Balancer::Builtin) => cx
            .take(k("listen"), &r.listen)
            .and_then(|s| socket_addr(cx, k("listen"), &s)),
        (None, Balancer::Builtin) => {
            cx.err(
                format!("services.{name}"),
                "missing `listen`, the address clients connect to (e.g. \"127.0.0.1:8080\")",
            );
            None
        }
        (Some(_), Balancer::Haproxy { .. }) => {
            cx.err(
                k("listen"),
                "is for handoff's own proxy; with balancer.kind = \"haproxy\" clients \
                 connect to HAProxy's frontend, so remove `listen`",
            );
            None
        }
        (None, Balancer::Haproxy { .. }) => None,
    };
    let domains = match cx.take(k("domains"), &r.domains) {
        Some(ds) => domains(cx, name, &ds),
        None => Vec::new(),
    };
    let path_prefix = cx
        .take(k("path_prefix"), &r.path_prefix)
        .and_then(|p| path_prefix(cx, name, &p));
    if matches!(balancer, Balancer::Haproxy { .. })
        && (!domains.is_empty() || path_prefix.is_some())
    {
        cx.err(
            k(if domains.is_empty() { "path_prefix" } else { "domains" }),
            "routes requests on handoff's own listener; behind HAProxy, route in haproxy.cfg (its frontend's `use_backend`)",
        );
    }
    let rt = cx.table(k("tls"), r.tls.take());
    let tls = tls(
        cx,
        name,
        &rt,
        base,
        matches!(balancer, Balancer::Builtin),
        server,
    );
    if tls.as_ref().is_some_and(|t| t.acme) {
        // HTTP-01 proves one name at a time, by fetching a file from it.
        if domains.is_empty() {
            cx.err(
                k("domains"),
                "is needed with `tls.acme = true`: the names to get a certificate for, e.g. [\"app.example.com\"]",
            );
        } else if let Some(w) = domains.iter().find(|d| d.starts_with("*.")) {
            cx.err(
                k("domains"),
                format!("'{w}': HTTP-01 cannot prove a wildcard name; list the names, or give a wildcard certificate as `tls.cert`/`tls.key`"),
            );
        } else if let Some(ip) = domains
            .iter()
            .find(|d| d.parse::<std::net::IpAddr>().is_ok())
        {
            cx.err(
                k("domains"),
                format!("'{ip}' is an IP address: ACME certificates here are for names; give the certificate as `tls.cert`/`tls.key`"),
            );
        }
    }
    let placed = r.hosts.is_some();
    let managed_keys = r.command.is_some()
        || r.instances.is_some()
        || r.revision.is_some()
        || r.artifact.is_some()
        || placed
        || r.instances_per_host.is_some()
        || r.on_host_failure.is_some();
    let targets = r
        .targets
        .as_ref()
        .map(|_| cx.take(k("targets"), &r.targets));
    // The instance count the in-place floor is checked against, when usable.
    let mut counted = None;
    let mut backend = match (targets, managed_keys) {
        (Some(_), true) => {
            cx.err(
                k("targets"),
                format!(
                    "a service has either fixed `targets` or managed instances \
                     (`command`, `instances`, `revision`{}), not both",
                    if placed { ", `hosts`" } else { "" }
                ),
            );
            None
        }
        // Not an array of strings: already reported.
        (Some(None), false) => None,
        (Some(Some(ts)), false) => {
            if ts.is_empty() {
                cx.err(k("targets"), "is empty; list at least one \"IP:PORT\"");
            }
            let mut addrs = Vec::new();
            for (i, t) in ts.iter().enumerate() {
                if let Some(a) = socket_addr(cx, format!("services.{name}.targets.{i}"), t) {
                    if addrs.contains(&a) {
                        cx.err(
                            format!("services.{name}.targets.{i}"),
                            format!("{a} is listed twice"),
                        );
                    }
                    addrs.push(a);
                }
            }
            Some(Backend::Static { targets: addrs })
        }
        (None, true) => {
            let (backend, n) = managed(cx, name, &r, base, known);
            counted = n;
            backend
        }
        (None, false) => {
            cx.err(
                format!("services.{name}"),
                "has no targets; give `targets = [\"IP:PORT\", ...]` or `command` + `instances` + `revision`",
            );
            None
        }
    };
    let strategy = match cx.take(k("strategy"), &r.strategy).as_deref() {
        None => Strategy::InPlace,
        Some(s) => Strategy::parse(s).unwrap_or_else(|| {
            cx.err(
                k("strategy"),
                format!("unknown strategy '{s}'; use in-place, blue-green or all-at-once"),
            );
            Strategy::InPlace
        }),
    };
    let rh = cx.table(k("health"), r.health);
    let health = health(cx, name, rh);
    let rd = cx.table(k("drain"), r.drain);
    let drain = Drain {
        timeout: cx.duration(k("drain.timeout"), rd.timeout.as_ref(), d::DRAIN_TIMEOUT),
    };
    let rp = cx.table(k("proxy"), r.proxy);
    let proxy = proxy(cx, name, rp, base);
    if proxy.upstream_tls.is_some() && matches!(balancer, Balancer::Haproxy { .. }) {
        cx.err(
            k("proxy.upstream_tls"),
            "is for handoff's own proxy; behind HAProxy, give the backend's servers `ssl verify required ca-file FILE` (default-server) in haproxy.cfg",
        );
    }
    let ri = cx.table(k("in_place"), r.in_place);
    let in_place = in_place(cx, name, &ri);
    // The floor is checked against a usable instance count only.
    if let (Some(Backend::Managed(_)), Some(n)) = (&backend, counted) {
        check_in_place(cx, name, &in_place, n, ri.min_healthy.is_some());
    }
    let rb = cx.table(k("blue_green"), r.blue_green);
    let steps = cx.take(k("blue_green.traffic_steps"), &rb.traffic_steps);
    let blue_green = BlueGreen {
        traffic_steps: traffic_steps(cx, name, steps),
        bake: cx.duration(k("blue_green.bake"), rb.bake.as_ref(), d::BAKE),
        retention: cx.duration(
            k("blue_green.retention"),
            rb.retention.as_ref(),
            d::RETENTION,
        ),
    };
    let rh = cx.table(k("hooks"), r.hooks);
    if let Some(h) = cx.take(k("hooks.once_host"), &rh.once_host) {
        match backend.as_mut() {
            Some(Backend::Managed(m)) if !m.hosts.is_empty() => {
                if m.hosts.contains(&h) {
                    m.once_host = Some(h);
                } else {
                    let mut listed: Vec<&str> = Vec::new();
                    for x in &m.hosts {
                        if !listed.contains(&x.as_str()) {
                            listed.push(x);
                        }
                    }
                    cx.err(
                        k("hooks.once_host"),
                        format!(
                            "'{h}' is not one of this service's hosts ({}); name one of them, \
                             or remove `once_host` to run migrate_expand and migrate_contract \
                             on this machine",
                            listed.join(", ")
                        ),
                    );
                }
            }
            // A `hosts` that is not a usable list has its own problem.
            _ if placed => {}
            _ => cx.err(
                k("hooks.once_host"),
                "only with `hosts`: without them every hook runs on this machine; \
                 remove it or add `hosts` to the service",
            ),
        }
    }
    let hooks = Hooks {
        timeout: cx.duration(k("hooks.timeout"), rh.timeout.as_ref(), d::HOOK_TIMEOUT),
        commands: [
            ("before_install", rh.before_install),
            ("after_install", rh.after_install),
            ("application_start", rh.application_start),
            ("validate_service", rh.validate_service),
            ("before_allow_traffic", rh.before_allow_traffic),
            ("after_allow_traffic", rh.after_allow_traffic),
            ("migrate_expand", rh.migrate_expand),
            ("migrate_contract", rh.migrate_contract),
        ]
        .into_iter()
        .filter_map(|(n, c)| {
            let c = cx.take(k(&format!("hooks.{n}")), &c)?;
            if c.trim().is_empty() {
                cx.err(
                    k(&format!("hooks.{n}")),
                    "is empty; remove it or give a command",
                );
                return None;
            }
            Some((n.to_string(), c))
        })
        .collect(),
    };
    let rr = cx.table(k("rollback"), r.rollback);
    let rollback = RollbackPolicy {
        max_error_rate_increase: match cx.take(
            k("rollback.max_error_rate_increase"),
            &rr.max_error_rate_increase,
        ) {
            None => d::MAX_ERROR_RATE_INCREASE,
            Some(x) if (0.0..=1.0).contains(&x) => x,
            Some(x) => {
                cx.err(
                    k("rollback.max_error_rate_increase"),
                    format!("must be a share from 0.0 to 1.0, got {x}"),
                );
                d::MAX_ERROR_RATE_INCREASE
            }
        },
        max_p99_ratio: match cx.take(k("rollback.max_p99_ratio"), &rr.max_p99_ratio) {
            None => d::MAX_P99_RATIO,
            Some(x) if x >= 1.0 => x,
            Some(x) => {
                cx.err(
                    k("rollback.max_p99_ratio"),
                    format!("must be at least 1.0, got {x}"),
                );
                d::MAX_P99_RATIO
            }
        },
        min_requests: cx.int_in(
            k("rollback.min_requests"),
            &rr.min_requests,
            d::MIN_REQUESTS as i64,
            1,
            i64::MAX,
        ) as u64,
    };
    if matches!(balancer, Balancer::Haproxy { .. })
        && matches!(backend, Some(Backend::Static { .. }))
    {
        cx.err(
            k("targets"),
            "fixed `targets` go straight into HAProxy's own config; handoff drives \
             HAProxy for managed instances (`command`, `instances`, `revision`)",
        );
        return None;
    }
    if matches!(balancer, Balancer::Builtin) && listen.is_none() {
        return None;
    }
    Some(Service {
        name: name.to_string(),
        listen,
        domains,
        path_prefix,
        tls,
        backend: backend?,
        balancer,
        health,
        drain,
        proxy,
        strategy,
        in_place,
        blue_green,
        hooks,
        rollback,
    })
}

/// `domains`: host names, lower-cased; `*.` only as a whole first label.
fn domains(cx: &mut Ctx, name: &str, list: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let key = format!("services.{name}.domains.{i}");
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = d.strip_prefix("*.").unwrap_or(&d);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if d.contains(':') {
            cx.err(
                key,
                format!("'{d}' has a port; give the host name only (the port is `listen`'s)"),
            );
        } else if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
            cx.err(
                key,
                format!("'{d}' is not a host name (letters, digits, '-', dots; `*.` only in front, as in \"*.example.com\")"),
            );
        } else if out.contains(&d) {
            cx.err(key, format!("'{d}' is listed twice"));
        } else {
            out.push(d);
        }
    }
    if list.is_empty() {
        cx.err(
            format!("services.{name}.domains"),
            "is empty; list host names, or remove it to answer any host",
        );
    }
    out
}

/// `[services.NAME.tls]`: `cert` and `key` (paths from the config's
/// directory), `hsts`. Only on handoff's own listener.
fn tls(
    cx: &mut Ctx,
    name: &str,
    r: &RawTls,
    base: &Path,
    listens: bool,
    server: &Server,
) -> Option<Tls> {
    let k = |s: &str| format!("services.{name}.tls.{s}");
    if r.cert.is_none() && r.key.is_none() && r.hsts.is_none() && r.acme.is_none() {
        return None;
    }
    if !listens {
        cx.err(
            format!("services.{name}.tls"),
            "is for handoff's own listener; behind HAProxy, terminate TLS in haproxy.cfg",
        );
        return None;
    }
    let cert = cx.take(k("cert"), &r.cert);
    let key = cx.take(k("key"), &r.key);
    let hsts = cx.take(k("hsts"), &r.hsts).unwrap_or(false);
    if cx.take(k("acme"), &r.acme).unwrap_or(false) {
        if cert.is_some() || key.is_some() {
            cx.err(
                format!("services.{name}.tls"),
                "has `acme = true` and `cert`/`key`: give files, or let handoff get the certificate, not both",
            );
            return None;
        }
        if server.acme.is_none() {
            cx.err(
                k("acme"),
                format!(
                    "needs a CA to ask: add [server.acme] with `directory` (e.g. \"{}\") and `email`",
                    d::ACME_DIRECTORY
                ),
            );
            return None;
        }
        let (cert, key) = acme_files(&server.state_dir, name);
        return Some(Tls {
            cert,
            key,
            hsts,
            acme: true,
        });
    }
    match (cert, key) {
        (Some(c), Some(k)) => Some(Tls {
            cert: base.join(c.trim()),
            key: base.join(k.trim()),
            hsts,
            acme: false,
        }),
        (c, _) => {
            cx.err(
                format!("services.{name}.tls"),
                format!(
                    "missing `{}`: give the PEM certificate chain (`cert`) and its private key (`key`)",
                    if c.is_none() { "cert" } else { "key" }
                ),
            );
            None
        }
    }
}

/// `path_prefix`: `/` and a path, no query; a trailing `/` is dropped.
fn path_prefix(cx: &mut Ctx, name: &str, p: &str) -> Option<String> {
    let key = format!("services.{name}.path_prefix");
    let t = p.trim();
    if !t.starts_with('/') || t.contains(['?', '#', ' ', '*']) {
        cx.err(
            key,
            format!("'{t}' is not a path prefix; give one that starts with '/', e.g. \"/api\""),
        );
        return None;
    }
    let t = t.trim_end_matches('/');
    Some(if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    })
}

/// `[services.NAME.balancer]`: `kind` builtin (default) or haproxy, which
/// needs `socket` and `backend`.
fn balancer(cx: &mut Ctx, name: &str, r: &RawBalancer) -> Balancer {
    let k = |s: &str| format!("services.{name}.balancer.{s}");
    let kind = cx.take(k("kind"), &r.kind);
    match kind.as_deref().map(str::trim) {
        None | Some("builtin") => {
            for (key, set) in [
                ("socket", r.socket.is_some()),
                ("backend", r.backend.is_some()),
            ] {
                if set {
                    cx.err(
                        k(key),
                        "is for kind = \"haproxy\"; set the kind or remove it",
                    );
                }
            }
            Balancer::Builtin
        }
        Some("haproxy") => {
            let socket = cx.take(k("socket"), &r.socket);
            let backend = cx.take(k("backend"), &r.backend);
            let socket = match socket.map(|s| s.trim().to_string()) {
                Some(s) if !s.is_empty() => s,
                _ => {
                    cx.err(
                        format!("services.{name}.balancer"),
                        "missing `socket`, HAProxy's runtime API at level admin \
                         (e.g. \"/run/haproxy/admin.sock\" or \"127.0.0.1:9999\")",
                    );
                    String::new()
                }
            };
            let backend = match backend.map(|s| s.trim().to_string()) {
                Some(b)
                    if !b.is_empty()
                        && b.chars()
                            .all(|c| c.is_ascii_graphic() && !matches!(c, ';' | '#' | '/')) =>
                {
                    b
                }
                Some(b) if !b.is_empty() => {
                    cx.err(
                        k("backend"),
                        format!("'{b}' is not a HAProxy backend name (no spaces, ';', '#' or '/')"),
                    );
                    String::new()
                }
                _ => {
                    cx.err(
                        format!("services.{name}.balancer"),
                        "missing `backend`, the HAProxy backend whose servers handoff manages",
                    );
                    String::new()
                }
            };
            Balancer::Haproxy { socket, backend }
        }
        Some(other) => {
            cx.err(
                k("kind"),
                format!("unknown balancer '{other}'; use \"builtin\" (handoff's own proxy) or \"haproxy\""),
            );
            Balancer::Builtin
        }
    }
}

/// A managed backend, and its instance count when that count is usable
/// (for the in-place floor check).
fn managed(
    cx: &mut Ctx,
    name: &str,
    r: &RawService,
    base: &Path,
    known: &Hosts,
) -> (Option<Backend>, Option<u32>) {
    let k = |s: &str| format!("services.{name}.{s}");
    let mut ok = true;
    let mut need = |cx: &mut Ctx, present: bool, key: &str, example: &str| {
        if !present {
            cx.err(
                format!("services.{name}"),
                format!("managed service is missing `{key}` (e.g. {key} = {example})"),
            );
            ok = false;
        }
    };
    need(
        cx,
        r.command.is_some(),
        "command",
        "\"./server --port {port}\"",
    );
    need(cx, r.revision.is_some(), "revision", "\"v1\"");
    // With `hosts`, the count follows from them.
    need(
        cx,
        r.instances.is_some() || r.hosts.is_some(),
        "instances",
        "2",
    );
    let mut instances = cx.positive(k("instances"), &r.instances, 1, 1000);
    let mut counted =
        matches!(r.instances, Some(Leaf::Ok(n)) if (1..=1000).contains(&n)).then_some(instances);
    let placement = placement(cx, name, r, known);
    if let Some(p) = &placement {
        counted = p.instances;
        instances = p.instances.unwrap_or(instances);
    }
    let command = cx.take(k("command"), &r.command);
    if let Some(c) = &command {
        check_template(cx, k("command"), c);
    }
    let revision = cx.take(k("revision"), &r.revision);
    if let Some(rev) = &revision {
        if let Err(e) = names::check_revision(rev) {
            cx.err(k("revision"), e.problem());
        }
    }
    let stop_grace = cx.duration(k("stop_grace"), r.stop_grace.as_ref(), d::STOP_GRACE);
    let artifact = cx.take(k("artifact"), &r.artifact).map(|a| base.join(a));
    if let Some(a) = &artifact {
        if !a.exists() {
            cx.err(
                k("artifact"),
                format!(
                    "{} does not exist; give a directory or a .tar.gz",
                    a.display()
                ),
            );
        }
    }
    let p = placement.unwrap_or_default();
    let backend = ok.then(|| {
        Backend::Managed(Managed {
            revision: revision.unwrap_or_default(),
            instances,
            command: command.unwrap_or_default(),
            stop_grace,
            artifact,
            hosts: p.hosts,
            instances_per_host: p.instances_per_host,
            on_host_failure: p.on_host_failure,
            // Set by `service`, which reads the hooks table.
            once_host: None,
        })
    });
    (backend, counted)
}

/// Where a managed service's instances run: `hosts`, `instances_per_host`,
/// `on_host_failure`.
struct Placement {
    hosts: Vec<String>,
    instances_per_host: u32,
    on_host_failure: OnHostFailure,
    /// `hosts.len() × instances_per_host`, when both are usable.
    instances: Option<u32>,
}

impl Default for Placement {
    fn default() -> Placement {
        Placement {
            hosts: Vec::new(),
            instances_per_host: d::INSTANCES_PER_HOST,
            on_host_failure: OnHostFailure::default(),
            instances: None,
        }
    }
}

/// `None` without `hosts` (local processes), after refusing the keys that
/// only mean something with them.
fn placement(cx: &mut Ctx, name: &str, r: &RawService, known: &Hosts) -> Option<Placement> {
    let k = |s: &str| format!("services.{name}.{s}");
    if r.hosts.is_none() {
        if r.instances_per_host.is_some() {
            cx.err(
                k("instances_per_host"),
                "only with `hosts`; local processes are counted by `instances` \
                 (or add hosts = [\"h1\", ...])",
            );
        }
        if r.on_host_failure.is_some() {
            cx.err(
                k("on_host_failure"),
                "only with `hosts`; local instances have no host to lose, remove it",
            );
        }
        return None;
    }
    let list = cx.take(k("hosts"), &r.hosts);
    let per_host = cx.positive(
        k("instances_per_host"),
        &r.instances_per_host,
        d::INSTANCES_PER_HOST,
        d::MAX_INSTANCES_PER_HOST,
    );
    let per_host_ok = match r.instances_per_host {
        None => true,
        Some(Leaf::Ok(n)) => (1..=d::MAX_INSTANCES_PER_HOST.into()).contains(&n),
        Some(Leaf::Wrong(_)) => false,
    };
    let on_host_failure = match cx.take(k("on_host_failure"), &r.on_host_failure) {
        None => OnHostFailure::default(),
        Some(s) => OnHostFailure::parse(&s).unwrap_or_else(|| {
            cx.err(
                k("on_host_failure"),
                format!("unknown value '{s}'; use rollback or pause"),
            );
            OnHostFailure::default()
        }),
    };
    let mut instances = None;
    if let Some(list) = &list {
        let listed = hosts::service_hosts(cx, name, list, known);
        let n = list.len() as u64 * u64::from(per_host);
        // Counted only from a list without problems of its own.
        if listed && per_host_ok {
            if n > 1000 {
                cx.err(
                    k("hosts"),
                    format!(
                        "{} hosts × instances_per_host {per_host} make {n} instances, \
                         more than 1000",
                        list.len()
                    ),
                );
            } else {
                instances = Some(n as u32);
            }
        }
        match (&r.instances, instances) {
            (Some(Leaf::Ok(given)), Some(n)) if *given != i64::from(n) => cx.err(
                k("instances"),
                format!(
                    "is {given}, but {} hosts × instances_per_host {per_host} make {n}; \
                     remove `instances` (with `hosts` it follows from them)",
                    list.len()
                ),
            ),
            _ => {}
        }
    }
    Some(Placement {
        hosts: list.unwrap_or_default(),
        instances_per_host: per_host,
        on_host_failure,
        instances,
    })
}

/// Unknown `{placeholders}`, and placeholders where no value could be
/// quoted safely, are caught here rather than at start time.
pub fn check_template(cx_err: &mut impl TemplateSink, key: String, cmd: &str) {
    if cmd.split_whitespace().next().is_none() {
        cx_err.template_problem(
            key,
            "is empty; give the command that starts one instance".into(),
        );
        return;
    }
    for e in command::check(cmd) {
        cx_err.template_problem(key.clone(), e.to_string());
    }
}

/// Lets the template check report into the validator or anywhere else.
pub trait TemplateSink {
    fn template_problem(&mut self, key: String, msg: String);
}

impl TemplateSink for Ctx {
    fn template_problem(&mut self, key: String, msg: String) {
        self.err(key, msg);
    }
}
