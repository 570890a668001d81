//! The validated configuration of a `handoff.toml`, and how it is loaded.
//!
//! `load(path)` reads the file, deserializes it into [`raw::RawConfig`] while
//! collecting unknown keys, then [`validate`] builds a [`Config`] or returns
//! every problem, each located at `FILE:LINE:COL` with its dotted key path.
//! Defaults are the named constants in [`defaults`], shared by the daemon,
//! the CLI and `docs/config.md`.

pub mod defaults;
mod hosts;
mod locate;
pub mod raw;
mod sections;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{parse_amount, parse_batch, validate};

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    pub server: Server,
    /// Services by name, in name order.
    pub services: BTreeMap<String, Service>,
    /// Hosts by name, in name order (`[hosts.NAME]`); empty when the file
    /// has none. A host no service uses is kept too (`handoff hosts check`).
    pub hosts: BTreeMap<String, Host>,
}

/// A server handoff reaches over OpenSSH (`[hosts.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    /// As written: `user@ip[:port]` (user optional; port default 22).
    pub address: String,
    pub user: Option<String>,
    /// The host part as written (an IP address, or a name resolved at load).
    pub hostname: String,
    /// SSH port (default 22).
    pub port: u16,
    /// The IP instances on that host listen on (`{address}`) and the proxy
    /// connects to: the host part if it is an IP, else resolved once at load
    /// (`std::net::ToSocketAddrs`; an IPv4 result is preferred); an
    /// unresolvable name is a located error. IPv6 in brackets:
    /// `root@[fd00::1]:2222`.
    pub ip: IpAddr,
    /// Private key file (resolved against the config file's directory; must exist).
    pub identity: Option<PathBuf>,
    /// known_hosts file (resolved against the config dir); `None` = the
    /// runtime's default `STATE_DIR/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// handoff's directory on that host; absolute; default
    /// [`defaults::HOST_DIR`].
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Server {
    /// API, events, `/metrics`, dashboard.
    pub admin: SocketAddr,
    /// SQLite database, instance logs, releases. Relative paths are relative
    /// to the config file's directory, so `handoff serve -c x/handoff.toml`
    /// behaves the same from any working directory.
    pub state_dir: PathBuf,
    /// Proxy worker threads (one current-thread runtime and one
    /// `SO_REUSEPORT` listener per service each). Default: number of cores.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    pub shutdown_timeout: Duration,
    /// Ports for managed instances; `None` means ephemeral ports.
    pub port_range: Option<(u16, u16)>,
    /// Installed releases kept per service (besides those in use).
    pub releases_kept: usize,
    /// Bearer token of the admin API, if given in the config (else
    /// `HANDOFF_TOKEN`, else generated into `state_dir/token`).
    pub token: Option<String>,
    /// Automatic certificates (`[server.acme]`), for services with
    /// `tls.acme = true`.
    pub acme: Option<Acme>,
}

/// An ACME (RFC 8555) directory to get certificates from, over HTTP-01.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The directory URL (https).
    pub directory: String,
    /// Contact for the account (expiry warnings from the CA).
    pub email: Option<String>,
    /// Extra trusted root(s), PEM, for a private directory.
    pub ca: Option<PathBuf>,
    /// Plain HTTP: answers HTTP-01 challenges, redirects the rest to HTTPS.
    pub http_listen: SocketAddr,
}

/// Where an ACME service's certificate and key are kept:
/// `STATE_DIR/acme/certs/SERVICE/{cert,key}.pem`.
pub fn acme_files(state_dir: &Path, service: &str) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("acme").join("certs").join(service);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// Where clients connect to handoff's own proxy; `None` when another
    /// balancer (HAProxy) takes the clients.
    pub listen: Option<SocketAddr>,
    /// Host names this service answers on a listen address it shares with
    /// others (`app.example.com`, `*.example.com`); empty: any host.
    pub domains: Vec<String>,
    /// Only requests whose path starts with this (at a `/` boundary);
    /// `None`: every path. The longest match wins.
    pub path_prefix: Option<String>,
    pub backend: Backend,
    /// What routes the clients to the instances.
    pub balancer: Balancer,
    /// HTTPS on `listen` (`[services.NAME.tls]`).
    pub tls: Option<Tls>,
    pub health: Health,
    pub drain: Drain,
    pub proxy: ProxySettings,
    pub strategy: Strategy,
    pub in_place: InPlace,
    pub blue_green: BlueGreen,
    pub hooks: Hooks,
    pub rollback: RollbackPolicy,
}

/// Lifecycle hooks (DESIGN.md), each a shell command run in the revision's
/// release directory with `HANDOFF_SERVICE`, `HANDOFF_REVISION`,
/// `HANDOFF_INSTANCE`, `HANDOFF_PHASE`, `HANDOFF_DEPLOYMENT` set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hooks {
    /// Per hook run; a hook still running then has failed.
    pub timeout: Duration,
    /// Hook name → command, only for the hooks configured.
    pub commands: BTreeMap<String, String>,
}

impl Hooks {
    /// Every hook name, in the order a deployment reaches them.
    pub const NAMES: [&'static str; 8] = [
        "migrate_expand",
        "before_install",
        "after_install",
        "application_start",
        "validate_service",
        "before_allow_traffic",
        "after_allow_traffic",
        "migrate_contract",
    ];

    pub fn get(&self, name: &str) -> Option<&str> {
        self.commands.get(name).map(String::as_str)
    }
}

/// When the new revision counts as worse than the old one (automatic
/// rollback), from the proxy's own per-revision figures.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackPolicy {
    /// Added share of 5xx answers tolerated (0.05 = 5 points).
    pub max_error_rate_increase: f64,
    /// New p99 over old p99 tolerated.
    pub max_p99_ratio: f64,
    /// Requests the new revision must have served before it is judged.
    pub min_requests: u64,
}

/// Who runs the service's targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// Fixed, externally run targets: handoff as a plain load balancer.
    Static { targets: Vec<SocketAddr> },
    /// Instances handoff starts and replaces itself.
    Managed(Managed),
}

/// A service's certificate (`[services.NAME.tls]`). The files are read
/// (and checked: key matches, not expired, names cover `domains`) by the
/// proxy at start, by `handoff check`, and again whenever they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM: the certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Send `Strict-Transport-Security: max-age=31536000`.
    pub hsts: bool,
    /// The files are obtained and renewed by handoff over ACME (they live
    /// in the state dir: [`acme_files`]).
    pub acme: bool,
}

/// What routes a service's clients to its targets (`[services.X.balancer]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balancer {
    /// handoff's own proxy, listening on the service's `listen`.
    #[default]
    Builtin,
    /// The user's HAProxy, driven through its runtime API: handoff adds,
    /// weighs, drains and deletes its own servers in `backend`.
    Haproxy {
        /// A unix socket path, or `host:port` (`ipv4@`/`unix@` prefixes too).
        socket: String,
        backend: String,
    },
}

impl Balancer {
    pub fn kind(&self) -> &'static str {
        match self {
            Balancer::Builtin => "builtin",
            Balancer::Haproxy { .. } => "haproxy",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    /// Revision to bring up on first start.
    pub revision: String,
    pub instances: u32,
    /// Command template; its placeholders are [`crate::command::PLACEHOLDERS`],
    /// filled by [`crate::command::render`].
    pub command: String,
    /// SIGTERM → SIGKILL grace when stopping an instance.
    pub stop_grace: Duration,
    /// Directory or `.tar.gz` holding the revision's files (absolute, or
    /// resolved against the config file's directory).
    pub artifact: Option<PathBuf>,
    /// Hosts the instances run on, in order; empty = local processes on this machine.
    pub hosts: Vec<String>,
    /// Instances on each host (default 1); with hosts, instances = hosts.len() * instances_per_host.
    pub instances_per_host: u32,
    /// What a deployment does when one of its hosts is lost: roll back (default) or pause.
    pub on_host_failure: OnHostFailure,
    /// Where once-per-deployment hooks (migrate_expand, migrate_contract) run: None = the handoff machine, Some(host name).
    pub once_host: Option<String>,
}

/// `on_host_failure`: what a deployment does when one of its hosts is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnHostFailure {
    /// End the deployment and roll back what it changed (tolerating the lost host).
    #[default]
    Rollback,
    /// Pause the deployment where it is (as `handoff pause` does), for a
    /// person to `resume` or `abort` it.
    Pause,
}

impl OnHostFailure {
    /// `"rollback"` or `"pause"`, as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnHostFailure::Rollback => "rollback",
            OnHostFailure::Pause => "pause",
        }
    }

    /// The config's spelling back; `None` for anything else.
    pub fn parse(s: &str) -> Option<OnHostFailure> {
        match s.trim() {
            "rollback" => Some(OnHostFailure::Rollback),
            "pause" => Some(OnHostFailure::Pause),
            _ => None,
        }
    }
}

impl fmt::Display for OnHostFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use crate::deploy::Strategy;

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Active checks on; when off a target is healthy as soon as registered.
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub min_healthy_time: Duration,
    /// A new (or adopted) instance that is not healthy this long after it
    /// started is replaced (and fails a deploy).
    pub healthy_deadline: Duration,
    /// Consecutive connect failures or 5xx from real traffic that eject a target.
    pub passive_failures: u32,
    /// First ejection length; doubles on each repeat up to `max_ejection_time`.
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Most of a group that passive ejection may take out at once, in
    /// percent; one target may always be ejected.
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Least outstanding requests, power of two random choices.
    LeastOutstanding,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Time from request sent to response head received (504 after).
    pub response_timeout: Duration,
    /// Time a client has to send a whole request head (408 after).
    pub header_timeout: Duration,
    /// Idle keep-alive time of client connections.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// HTTPS to the targets (`upstream_tls = true`), for apps that speak
    /// only TLS; health checks go over it too.
    pub upstream_tls: Option<UpstreamTls>,
    /// HTTP/1 requests without a body go through handoff's own HTTP/1
    /// path (`fast_path`, the default); off: every request goes through
    /// hyper. The listener follows its first service's setting.
    pub fast_path: bool,
}

/// How handoff verifies a target's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Trusted root(s), PEM (`upstream_ca`); none: the system's roots.
    pub ca: Option<PathBuf>,
    /// The name the certificate must carry, also sent as SNI
    /// (`upstream_name`); none: the target's IP address.
    pub name: Option<String>,
}

/// A count (`"2"`) or a share of the fleet (`"50%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The amount out of `n` instances. Percentages round *down* for a floor
    /// and *up* for a batch, so each errs on the side of safety/progress.
    pub fn of(self, n: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(c) => c,
            Amount::Percent(p) => {
                let x = n as u64 * p as u64;
                let v = if round_up { x.div_ceil(100) } else { x / 100 };
                v as u32
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(c) => write!(f, "{c}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// An in-place batch: fixed, or chosen from the load at deploy time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Amount(Amount),
    Auto,
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batch::Amount(a) => a.fmt(f),
            Batch::Auto => f.write_str("auto"),
        }
    }
}

impl From<Amount> for Batch {
    fn from(a: Amount) -> Batch {
        Batch::Amount(a)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InPlace {
    pub batch: Batch,
    pub min_healthy: Amount,
    /// `batch = "auto"`: capacity kept above the measured load, in percent.
    pub headroom: u32,
    /// `batch = "auto"`: requests per second one instance can carry, if
    /// known; else handoff trusts only what it has seen one carry.
    pub instance_capacity: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlueGreen {
    pub traffic_steps: Vec<u32>,
    pub bake: Duration,
    pub retention: Duration,
}

/// One thing wrong with a config, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: usize,
    pub col: usize,
    /// Dotted key path, e.g. `services.web.health.interval`.
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message, not a `source`: callers that print
    /// the whole chain would say it twice.
    #[error("{}", read_problem(path, error))]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}:{col}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn read_problem(path: &Path, e: &std::io::Error) -> String {
    let p = path.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "config file {p} does not exist; pass yours with -c FILE (examples/ has samples)"
        ),
        _ => format!("cannot read config file {p}: {e}; pass a readable file with -c FILE"),
    }
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let mut s = format!(
        "{} has {} problem{}:",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str(&format!(
            "\n  {}:{}:{}: {}: {}",
            path.display(),
            p.line,
            p.col,
            p.key,
            p.message
        ));
    }
    s
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(path, &text)
}

/// How a client reaches the daemon of a config file: `server.admin`, the
/// state dir (for its token file) and `server.token`, read leniently so
/// that a file with a mistake elsewhere (one being fixed for a reload)
/// still names them. Defaults for what is missing or unreadable.
pub fn reach(path: &Path) -> (SocketAddr, PathBuf, Option<String>) {
    let base = path.parent().unwrap_or(Path::new(""));
    let server = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("server").and_then(|s| s.as_table()).cloned())
        .unwrap_or_default();
    let text = |k: &str| server.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let admin = text("admin")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| defaults::ADMIN.parse().expect("the default admin address"));
    let state_dir = base.join(text("state_dir").unwrap_or_else(|| defaults::STATE_DIR.into()));
    (admin, state_dir, text("token"))
}

/// `services.web.helth`, without serde_ignored's `?` markers for `Option`s.
fn dotted(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => join(dotted(parent), &index.to_string()),
        P::Map { parent, key } => join(dotted(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            dotted(parent)
        }
    }
}

fn join(a: String, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// Validates config text as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let doc = locate::Doc::parse(text).map_err(|(offset, message)| {
        let (line, col) = locate::line_col(text, offset);
        // Some parser errors come without words (`_=`: a key and no value).
        let message = if message.trim().is_empty() {
            "this is not valid TOML here (a key needs `= value`, a table `[name]`)".to_string()
        } else {
            message
        };
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            col,
            message,
        }
    })?;
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let raw: raw::RawConfig = match serde_ignored::deserialize(de, |p| unknown.push(dotted(&p))) {
        Ok(raw) => raw,
        Err(e) => {
            // Not expected: every raw value is lenient (`raw::Leaf`,
            // `raw::Table`), so wrong types are problems of `validate`. Kept
            // so that a future strict field still gets a located message.
            let (line, col) = e
                .span()
                .map(|s| locate::line_col(text, s.start))
                .unwrap_or((1, 1));
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                col,
                message: e
                    .message()
                    .trim()
                    .replace("expected i64", "expected an integer"),
            });
        }
    };
    let mut problems = Vec::new();
    for key in unknown {
        let segs: Vec<&str> = key.split('.').collect();
        let (table, leaf) = segs.split_at(segs.len() - 1);
        let known = raw::known_keys(table);
        let mut message = format!("unknown key '{}'", leaf[0]);
        if let Some(near) = locate::nearest(leaf[0], known) {
            message.push_str(&format!("; did you mean '{near}'?"));
        } else if !known.is_empty() {
            message.push_str(&format!("; this table takes: {}", known.join(", ")));
        }
        problems.push(doc.problem(&key, message));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    match validate(raw, base) {
        Ok(cfg) if problems.is_empty() => Ok(Config {
            path: path.to_path_buf(),
            ..cfg
        }),
        Ok(_) => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }),
        Err(more) => {
            problems.extend(more.into_iter().map(|(k, m)| doc.problem(&k, m)));
            problems.sort_by_key(|p| (p.line, p.col));
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }
}

#[cfg(test)]
mod tests;
