//! `handoff serve`: start everything, run until SIGTERM/SIGINT, stop cleanly.
//!
//! Order matters: bind every listener first (fail fast on a taken port),
//! then boot managed fleets (adopting live instances), then announce. On
//! shutdown the proxy stops taking requests and finishes in-flight ones
//! *before* instances are stopped, so no request meets a stopping instance.
//!
//! The lines printed on stdout are part of the interface (tests and scripts
//! read them): `listening service=NAME addr=IP:PORT` per service,
//! `admin addr=IP:PORT`, then `ready`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use handoff_api::daemon::{DaemonCommand, DaemonRequest};
use handoff_controller::balancer::{self, haproxy::HaproxyBalancer, Balancer};
use handoff_controller::{Fleet, FleetOptions};
use handoff_core::config::{self, Backend};
use handoff_proxy::Proxy;

use crate::{handover, upgrade};
use handoff_runtime::{ssh, AnyRuntime, ProcessRuntime, SshRuntime};
use handoff_store::Store;
use prometheus_client::registry::Registry;

pub struct Options {
    /// Leave managed instances running on exit (the next start adopts them).
    pub keep_instances: bool,
    /// Take over from the daemon that started this one (`reload`,
    /// `upgrade`): its listening sockets, then its state.
    pub takeover: bool,
    /// Listening sockets systemd passed (`LISTEN_FDS`).
    pub systemd: Vec<std::net::TcpListener>,
}

pub fn run(path: &Path, mut opts: Options) -> anyhow::Result<()> {
    init_tracing();
    let cfg = config::load(path)?;
    // Before any thread exists: it edits the environment.
    opts.systemd = handover::systemd_listeners();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, opts))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HANDOFF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a journal, a file or a pipe
    // gets plain text (NO_COLOR is honoured too).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// The admin API's bearer token: `[server] token`, else `HANDOFF_TOKEN`,
/// else the one generated at first start into `state_dir/token` (0600).
/// A non-loopback admin address needs an explicit one: a generated token
/// sitting in a file is fine for this machine's users, not for a network.
fn admin_token(cfg: &config::Config) -> anyhow::Result<String> {
    let explicit = cfg.server.token.clone().or_else(|| {
        std::env::var("HANDOFF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    if let Some(t) = explicit {
        return Ok(t);
    }
    if !cfg.server.admin.ip().is_loopback() {
        anyhow::bail!(
            "{}: server.admin {} is reachable from other machines, so the admin API (which can deploy) needs an explicit token: set [server] token or HANDOFF_TOKEN, or listen on 127.0.0.1",
            cfg.path.display(),
            cfg.server.admin
        );
    }
    let dir = &cfg.server.state_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state_dir {}", dir.display()))?;
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .context("cannot read /dev/urandom to make an admin token")?;
    let t: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{t}")?;
    tracing::info!(path = %path.display(), "generated the admin API token");
    Ok(t)
}

/// How often each fleet is compared with its desired state (and mended).
pub(crate) const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The config with its state dir made absolute (canonical once it exists;
/// the runtime creates it and marks instances with its canonical path):
/// every path recorded from here on (instance marks, releases, logs) must
/// name the same directory to every process that reads it, whatever its
/// working directory; the default `.handoff` alone names one per directory.
fn absolute_state_dir(mut cfg: config::Config) -> anyhow::Result<config::Config> {
    let dir = &cfg.server.state_dir;
    cfg.server.state_dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(_) => std::path::absolute(dir)
            .with_context(|| format!("cannot resolve state_dir {}", dir.display()))?,
    };
    Ok(cfg)
}

/// Holds an exclusive lock on the state dir for the daemon's life: two
/// daemons on one state dir would fight over the same instances.
pub(crate) struct StateLock {
    _file: std::fs::File,
}

pub(crate) fn lock_state_dir(dir: &Path) -> anyhow::Result<StateLock> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state_dir {}", dir.display()))?;
    let path = dir.join("handoff.lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "another handoff (pid {}) is already running with state_dir {}; stop it or use another state_dir",
            holder.trim(),
            dir.display()
        );
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(StateLock { _file: f })
}

async fn serve(cfg: config::Config, mut opts: Options) -> anyhow::Result<()> {
    let cfg = absolute_state_dir(cfg)?;
    let token = admin_token(&cfg)?;
    std::fs::create_dir_all(&cfg.server.state_dir)
        .with_context(|| format!("cannot create state_dir {}", cfg.server.state_dir.display()))?;
    let needs_state = cfg
        .services
        .values()
        .any(|s| matches!(s.backend, Backend::Managed(_)));
    // ACME certificates (and their plain listener, which two daemons must
    // not share) are state one daemon owns, like instances.
    let owns_state = needs_state
        || cfg
            .services
            .values()
            .any(|s| s.tls.as_ref().is_some_and(|t| t.acme));
    // Listening sockets of the daemon this one takes over from, or from
    // systemd's socket activation; the rest is bound here.
    let mut taking = if opts.takeover {
        Some(upgrade::Taking::connect(&cfg.server.state_dir)?)
    } else {
        None
    };
    let mut inherited = match taking.as_mut() {
        Some(t) => t.listeners(),
        None => upgrade::systemd_by_service(&cfg, std::mem::take(&mut opts.systemd)),
    };
    let admin_std = inherited.remove(handover::ADMIN).and_then(|mut v| v.pop());
    if let Some(t) = &taking {
        t.released()?;
    }
    let lock = if owns_state {
        Some(lock_state_dir(&cfg.server.state_dir)?)
    } else {
        None
    };
    let mut proxy = Proxy::new(cfg.server.workers);
    for svc in cfg.services.values() {
        proxy.add_service(svc)?;
    }
    // Before any listener: an ACME service needs files to serve (a
    // stand-in until the CA's certificate comes).
    let acme = acme_manager(&cfg, &mut proxy)?;
    let admin_std = match admin_std.filter(|l| l.local_addr().is_ok_and(|a| a == cfg.server.admin || cfg.server.admin.port() == 0)) {
        Some(l) => l,
        None => std::net::TcpListener::bind(cfg.server.admin).with_context(|| {
            format!(
                "cannot listen on server.admin {}; is another handoff running? set [server] admin in {}",
                cfg.server.admin,
                cfg.path.display()
            )
        })?,
    };
    admin_std.set_nonblocking(true)?;
    let admin_keep = admin_std.try_clone()?;
    let admin = tokio::net::TcpListener::from_std(admin_std)?;
    let admin_addr = admin.local_addr()?;
    // A fresh start binds at once (a taken port fails it before anything
    // starts). On sockets taken over (from a daemon stepping down, or from
    // systemd) clients are already waiting in the kernel's queue: accepting
    // starts only once the targets have their health, so that no request
    // accepted finds none.
    let mut server = if taking.is_none() && inherited.is_empty() {
        Some(proxy.start_with(cfg.server.shutdown_timeout, std::mem::take(&mut inherited))?)
    } else {
        None
    };

    let mut fleets = Vec::new();
    let mut deployers: std::collections::BTreeMap<
        String,
        Arc<dyn handoff_controller::service::ManagedService>,
    > = std::collections::BTreeMap::new();
    if needs_state {
        let store = Arc::new(Store::open(&cfg.server.state_dir)?);
        let runtime = Arc::new(ProcessRuntime::new(&cfg.server.state_dir)?);
        let hosts = remote_hosts(&cfg, runtime.state_dir()).await?;
        let base_dir = cfg.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() {
            std::env::current_dir()?
        } else {
            base_dir
        };
        for svc in cfg.services.values() {
            if let Backend::Managed(m) = &svc.backend {
                let sp = proxy.service(&svc.name).expect("added above").clone();
                // Local processes, or processes on the service's hosts.
                let place = match &hosts {
                    Some(h) if !m.hosts.is_empty() => {
                        AnyRuntime::Ssh(SshRuntime::new(h.clone(), m.hosts.clone()))
                    }
                    _ => AnyRuntime::Process(runtime.clone()),
                };
                let balancer: Arc<dyn Balancer> = match &svc.balancer {
                    config::Balancer::Builtin => balancer::builtin(sp),
                    config::Balancer::Haproxy { socket, backend } => Arc::new(
                        HaproxyBalancer::connect(
                            sp,
                            runtime.owner(),
                            socket,
                            backend,
                            &svc.health,
                            svc.drain.timeout,
                        )
                        .await
                        .with_context(|| {
                            format!(
                                "service '{}': cannot drive HAProxy (services.{}.balancer in {})",
                                svc.name,
                                svc.name,
                                cfg.path.display()
                            )
                        })?,
                    ),
                };
                println!("balancer service={} {}", svc.name, balancer.describe());
                let fleet = Fleet::new(
                    svc.clone(),
                    balancer,
                    Arc::new(place),
                    store.clone(),
                    FleetOptions {
                        state_dir: runtime.state_dir().to_path_buf(),
                        base_dir: base_dir.clone(),
                        port_range: cfg.server.port_range,
                        releases_kept: cfg.server.releases_kept,
                    },
                )?;
                let deployer = handoff_controller::executor::Deployer::new(fleet.clone());
                for id in deployer.recover()? {
                    tracing::warn!(service = %svc.name, deployment = %id, "closed a deployment interrupted by a restart of handoff");
                }
                fleet.boot().await?;
                fleet.watch_hosts();
                fleet.reconcile().await;
                fleet.reconcile_every(RECONCILE_EVERY);
                deployer.meter.start(fleet.proxy.clone());
                deployers.insert(svc.name.clone(), Arc::new(deployer));
                fleets.push(fleet);
            }
        }
    }
    for svc in cfg.services.values() {
        if let Backend::Static { targets } = &svc.backend {
            let sp = proxy.service(&svc.name).expect("added above");
            handoff_controller::attach_static(sp, targets)?;
        }
    }
    let server = match server.take() {
        Some(s) => s,
        None => {
            settled(&proxy, TAKEOVER_HEALTH_WITHIN).await;
            proxy.start_with(cfg.server.shutdown_timeout, inherited)?
        }
    };

    let mut registry = Registry::default();
    registry.register_collector(Box::new(proxy.collector()));
    registry.register_collector(Box::new(handoff_api::DeployCollector {
        deployers: deployers
            .iter()
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect(),
    }));
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let (daemon_tx, mut daemon_rx) = tokio::sync::mpsc::channel::<DaemonRequest>(4);
    let state = handoff_api::AdminState {
        registry: Arc::new(registry),
        services: Arc::new(
            proxy
                .services()
                .map(|s| (s.name.to_string(), s.clone()))
                .collect(),
        ),
        deployers: Arc::new(deployers.clone()),
        token: token.as_str().into(),
        target_events: proxy.events(),
        stopping: stopping_rx,
        daemon: Some(daemon_tx),
        config_path: cfg.path.display().to_string().into(),
        acme: acme.clone(),
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(handoff_api::serve(admin, state, async {
        let _ = admin_stopped.await;
    }));
    let rotation = tokio::spawn(rotate_logs(cfg.server.state_dir.join("logs")));

    for (name, addr) in &server.addrs {
        println!("listening service={name} addr={addr}");
        tracing::info!(service = %name, %addr, "proxy listening");
    }
    let mut signals = StopSignals::install()?;
    println!("admin addr={admin_addr}");
    // The token rides in the fragment, which browsers never send.
    println!("dashboard http://{admin_addr}/#token={token}");
    println!("ready");
    // The old daemon hears first; systemd then follows the new main pid.
    if let Some(t) = taking {
        match t.serving(deployers.keys().cloned().collect()) {
            Ok(()) => tracing::info!("took over from the previous daemon"),
            // It is gone (killed meanwhile): this one holds everything.
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the previous daemon did not hear that this one serves")
            }
        }
    }
    handover::notify_ready();
    if let Some(m) = &acme {
        m.start();
    }
    // Ready means "listening", not "serving": instances that could not
    // start are said next to it, not only among the log lines.
    for f in &fleets {
        let all = handoff_controller::service::instance_status(f);
        let running = all.iter().filter(|i| i.state == "running").count();
        if running < f.desired() {
            let why: Vec<String> = all
                .iter()
                .filter(|i| i.state != "running")
                .map(|i| {
                    format!(
                        "{}: {}",
                        i.name,
                        i.last_error.as_deref().unwrap_or("not started")
                    )
                })
                .collect();
            let line = format!(
                "{}: {running} of {} instances running: {}",
                f.name(),
                f.desired(),
                why.join("; ")
            );
            println!("warning: {line} (see `handoff status {}`)", f.name());
            tracing::warn!("{line}");
        }
    }
    tracing::info!(%admin_addr, "admin API listening (/metrics, /healthz, /logs)");

    let mut managing = upgrade::Managing {
        fleets,
        lock,
        state_dir: cfg.server.state_dir.clone(),
        adopted: None,
    };
    // Until a stop signal, or a hand-over that went through.
    let handed_over = loop {
        let (command, reply) = tokio::select! {
            sig = signals.next() => match sig {
                Signal::Stop => break false,
                Signal::Reload => (DaemonCommand::Reload, None),
            },
            Some(r) = daemon_rx.recv() => (r.command, Some(r.reply)),
        };
        let mut listeners = match server.listeners() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot duplicate the listening sockets for a hand-over");
                continue;
            }
        };
        match admin_keep.try_clone() {
            Ok(a) => listeners.push((handover::ADMIN.to_string(), a)),
            Err(e) => {
                tracing::error!(error = %e, "cannot duplicate the admin socket for a hand-over");
                continue;
            }
        }
        // The next daemon orders what is due; two never answer one CA.
        if let Some(m) = &acme {
            m.stop();
        }
        let what = if command == DaemonCommand::Reload {
            "reload"
        } else {
            "upgrade"
        };
        let out = upgrade::give(
            upgrade::Giving {
                cfg: &cfg,
                keep_instances: opts.keep_instances,
                deployers: &deployers,
                listeners,
                managing: &mut managing,
            },
            command,
        )
        .await;
        let done = out.is_ok();
        match &out {
            Ok(h) => tracing::info!("{what}: {}", h.message),
            Err(r) => tracing::warn!("{what} refused: {}", r.message),
        }
        if let Some(reply) = reply {
            let _ = reply.send(out);
        }
        if done {
            break true;
        }
        if let Some(m) = &acme {
            m.start();
        }
    };
    if let Some(m) = &acme {
        m.stop();
    }
    if handed_over {
        // A second reload or upgrade sent meanwhile (the same command
        // twice, or at once) is for the new daemon now: said so, not lost.
        daemon_rx.close();
        while let Ok(r) = daemon_rx.try_recv() {
            let _ = r.reply.send(Err(handoff_api::daemon::Refusal {
                status: handoff_api::daemon::StatusCode::CONFLICT,
                code: "handed_over",
                message: "this daemon has just handed over to a new one, which serves now; run the command again to reload or upgrade that one".into(),
            }));
        }
        tracing::info!("handed over: no new connections here; finishing in-flight requests, leaving the instances to the new daemon");
    } else {
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    }
    // Live views (dashboards, `/events` followers) learn it first.
    let _ = stopping.send(true);
    // The hand-over's answer must leave before the admin server stops.
    let _ = stop_admin.send(());
    tokio::task::spawn_blocking(move || server.shutdown()).await?;
    if handed_over {
        // Services the new daemon did not adopt (dropped from the config,
        // or no longer managed) are this daemon's to stop.
        let adopted = managing.adopted.clone().unwrap_or_default();
        for f in &managing.fleets {
            if adopted.iter().any(|k| k == f.name()) {
                f.close().await;
            } else {
                tracing::info!(service = %f.name(), "not taken over: stopping its instances");
                f.shutdown().await;
            }
        }
    } else if opts.keep_instances {
        tracing::info!(
            "leaving managed instances running (--keep-instances); the next start adopts them"
        );
        for f in &managing.fleets {
            f.close().await;
        }
    } else {
        for f in &managing.fleets {
            f.shutdown().await;
        }
    }
    rotation.abort();
    // Graceful shutdown waits for every admin connection; event streams
    // ended when `stopping` turned. A client that holds a connection open
    // otherwise gets 2 s, then it is cut.
    let mut admin_task = admin_task;
    if tokio::time::timeout(std::time::Duration::from_secs(2), &mut admin_task)
        .await
        .is_err()
    {
        admin_task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a take-over waits for adopted targets to be judged before it
/// accepts anyway (the stepping-down daemon serves meanwhile).
const TAKEOVER_HEALTH_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Returns once no target of any service waits for its first health
/// verdict (or after `limit`).
/// The certificate manager for services with `tls.acme = true`, with
/// the plain-HTTP listener that answers its challenges.
fn acme_manager(
    cfg: &config::Config,
    proxy: &mut Proxy,
) -> anyhow::Result<Option<handoff_acme::Manager>> {
    let Some(acme) = &cfg.server.acme else {
        return Ok(None);
    };
    let wanted: Vec<handoff_acme::Wanted> = cfg
        .services
        .values()
        .filter_map(|s| {
            let t = s.tls.as_ref().filter(|t| t.acme)?;
            Some(handoff_acme::Wanted {
                service: s.name.clone(),
                domains: s.domains.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            })
        })
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let challenges = proxy.serve_http01(acme.http_listen);
    let services: Vec<_> = proxy.services().cloned().collect();
    let on_issued: handoff_acme::OnIssued = Box::new(move |name| {
        let Some(s) = services.iter().find(|s| *s.name == *name) else {
            return;
        };
        match s.reload_certificate() {
            Some(Ok(())) => tracing::info!(service = %name, "new certificate in use"),
            Some(Err(e)) => {
                tracing::error!(service = %name, error = %e, "the issued certificate is refused; the previous one stays in use")
            }
            None => {}
        }
    });
    let m = handoff_acme::Manager::new(
        acme.clone(),
        &cfg.server.state_dir,
        wanted,
        challenges,
        on_issued,
    );
    m.prepare().with_context(|| {
        format!(
            "cannot prepare the ACME certificates in {}",
            cfg.server.state_dir.display()
        )
    })?;
    Ok(Some(m))
}

async fn settled(proxy: &Proxy, limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let waiting = proxy.services().any(|s| {
            s.table()
                .targets()
                .any(|(_, t)| t.state() == handoff_core::TargetState::Initial && !t.is_held())
        });
        if !waiting || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The hosts of `[hosts]` that a service is placed on, each watched over
/// its own master connection; `None` when no service uses hosts. Waits a
/// few seconds for them to answer (so that boot adopts what runs there);
/// one that does not is reported and stays out of service until it does.
async fn remote_hosts(
    cfg: &config::Config,
    state_dir: &Path,
) -> anyhow::Result<Option<Arc<ssh::SshHosts>>> {
    let used: std::collections::BTreeSet<&String> = cfg
        .services
        .values()
        .filter_map(|s| match &s.backend {
            Backend::Managed(m) => Some(m.hosts.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    if used.is_empty() {
        return Ok(None);
    }
    let specs: Vec<ssh::HostSpec> = cfg
        .hosts
        .values()
        .filter(|h| used.contains(&h.name))
        .map(|h| ssh::HostSpec::from_config(h, state_dir))
        .collect();
    let hosts = ssh::SshHosts::start(state_dir, specs)?;
    hosts.connected(std::time::Duration::from_secs(8)).await;
    for h in hosts.hosts() {
        if let handoff_runtime::HostState::Lost { why, .. } = hosts.state(&h.name) {
            println!(
                "warning: host {} ({}) unreachable: {why}; its instances stay out of service until it answers (see `handoff hosts check`)",
                h.name,
                h.address()
            );
            tracing::warn!(host = %h.name, "host unreachable at start: {why}");
        }
    }
    Ok(Some(hosts))
}

/// Rotates instance logs by size (the instances write to them directly).
async fn rotate_logs(dir: std::path::PathBuf) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let Ok(services) = std::fs::read_dir(&dir) else {
            continue;
        };
        for s in services.flatten() {
            let Ok(files) = std::fs::read_dir(s.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "log") {
                    let _ = handoff_runtime::logs::rotate_if_large(
                        &p,
                        handoff_runtime::logs::MAX_BYTES,
                        handoff_runtime::logs::KEEP,
                    );
                }
            }
        }
    }
}

/// SIGTERM and SIGINT (stop), SIGHUP (reload), taken over from their
/// default (which kills at once) before `ready` is printed: a supervisor
/// that stops or reloads handoff right after it said ready gets the
/// graceful path too.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

enum Signal {
    Stop,
    Reload,
}
