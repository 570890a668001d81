//! Stage two: raw values → typed [`Config`], collecting every problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::defaults as d;
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
    let mut services = BTreeMap::new();
    let raw_services = cx.table("services", raw.services);
    if raw_services.is_empty() {
        cx.err(
            "services",
            "no services; add a [services.NAME] table with `listen` and `targets` or `command`",
        );
    }
    let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
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
        if let Some(svc) = service(&mut cx, &name, rs, base) {
            // Port 0 (tests, "any free port") never conflicts.
            let fixed = svc.listen.port() != 0;
            if fixed && svc.listen == server.admin {
                cx.err(
                    format!("{key}.listen"),
                    format!("{} is also server.admin; pick another port", svc.listen),
                );
            }
            if let Some(other) = listens.insert(svc.listen, name.clone()).filter(|_| fixed) {
                cx.err(
                    format!("{key}.listen"),
                    format!(
                        "{} is already the listen address of service '{other}'",
                        svc.listen
                    ),
                );
            }
            services.insert(name, svc);
        }
    }
    if cx.problems.is_empty() {
        Ok(Config {
            path: PathBuf::new(),
            server,
            services,
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

fn server(cx: &mut Ctx, r: RawServer, base: &Path) -> Server {
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
    }
}

fn service(cx: &mut Ctx, name: &str, r: RawService, base: &Path) -> Option<Service> {
    let k = |s: &str| format!("services.{name}.{s}");
    let listen = match &r.listen {
        Some(_) => cx
            .take(k("listen"), &r.listen)
            .and_then(|s| socket_addr(cx, k("listen"), &s)),
        None => {
            cx.err(
                format!("services.{name}"),
                "missing `listen`, the address clients connect to (e.g. \"127.0.0.1:8080\")",
            );
            None
        }
    };
    let managed_keys = r.command.is_some()
        || r.instances.is_some()
        || r.revision.is_some()
        || r.artifact.is_some();
    let targets = r
        .targets
        .as_ref()
        .map(|_| cx.take(k("targets"), &r.targets));
    let backend = match (targets, managed_keys) {
        (Some(_), true) => {
            cx.err(
                k("targets"),
                "a service has either fixed `targets` or managed instances \
                 (`command`, `instances`, `revision`), not both",
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
        (None, true) => managed(cx, name, &r, base),
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
    let proxy = proxy(cx, name, rp);
    let ri = cx.table(k("in_place"), r.in_place);
    let in_place = in_place(cx, name, &ri);
    // The floor is checked against a usable instance count only.
    let counted = matches!(r.instances, Some(Leaf::Ok(n)) if (1..=1000).contains(&n));
    if let (Some(Backend::Managed(m)), true) = (&backend, counted) {
        check_in_place(cx, name, &in_place, m.instances, ri.min_healthy.is_some());
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
    Some(Service {
        name: name.to_string(),
        listen: listen?,
        backend: backend?,
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

fn managed(cx: &mut Ctx, name: &str, r: &RawService, base: &Path) -> Option<Backend> {
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
    need(cx, r.instances.is_some(), "instances", "2");
    let instances = cx.positive(k("instances"), &r.instances, 1, 1000);
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
    ok.then(|| {
        Backend::Managed(Managed {
            revision: revision.unwrap_or_default(),
            instances,
            command: command.unwrap_or_default(),
            stop_grace,
            artifact,
        })
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
