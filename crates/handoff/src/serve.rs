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
use handoff_controller::{Fleet, FleetOptions};
use handoff_core::config::{self, Backend};
use handoff_proxy::Proxy;
use handoff_runtime::ProcessRuntime;
use handoff_store::Store;
use prometheus_client::registry::Registry;

pub struct Options {
    /// Leave managed instances running on exit (the next start adopts them).
    pub keep_instances: bool,
}

pub fn run(path: &Path, opts: Options) -> anyhow::Result<()> {
    init_tracing();
    let cfg = config::load(path)?;
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
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

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
struct StateLock {
    _file: std::fs::File,
}

fn lock_state_dir(dir: &Path) -> anyhow::Result<StateLock> {
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

async fn serve(cfg: config::Config, opts: Options) -> anyhow::Result<()> {
    let cfg = absolute_state_dir(cfg)?;
    let token = admin_token(&cfg)?;
    let needs_state = cfg
        .services
        .values()
        .any(|s| matches!(s.backend, Backend::Managed(_)));
    let _lock = if needs_state {
        Some(lock_state_dir(&cfg.server.state_dir)?)
    } else {
        None
    };
    let mut proxy = Proxy::new(cfg.server.workers);
    for svc in cfg.services.values() {
        proxy.add_service(svc);
    }
    let admin = tokio::net::TcpListener::bind(cfg.server.admin).await.with_context(|| {
        format!(
            "cannot listen on server.admin {}; is another handoff running? set [server] admin in {}",
            cfg.server.admin,
            cfg.path.display()
        )
    })?;
    let admin_addr = admin.local_addr()?;
    let server = proxy.start(cfg.server.shutdown_timeout)?;

    let mut fleets = Vec::new();
    let mut deployers: std::collections::BTreeMap<
        String,
        Arc<dyn handoff_controller::service::ManagedService>,
    > = std::collections::BTreeMap::new();
    if needs_state {
        let store = Arc::new(Store::open(&cfg.server.state_dir)?);
        let runtime = Arc::new(ProcessRuntime::new(&cfg.server.state_dir)?);
        let base_dir = cfg.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() {
            std::env::current_dir()?
        } else {
            base_dir
        };
        for svc in cfg.services.values() {
            if let Backend::Managed(_) = svc.backend {
                let sp = proxy.service(&svc.name).expect("added above").clone();
                let fleet = Fleet::new(
                    svc.clone(),
                    sp,
                    runtime.clone(),
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

    let mut registry = Registry::default();
    registry.register_collector(Box::new(proxy.collector()));
    registry.register_collector(Box::new(handoff_api::DeployCollector {
        deployers: deployers
            .iter()
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect(),
    }));
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let state = handoff_api::AdminState {
        registry: Arc::new(registry),
        services: Arc::new(
            proxy
                .services()
                .map(|s| (s.name.to_string(), s.clone()))
                .collect(),
        ),
        deployers: Arc::new(deployers),
        token: token.as_str().into(),
        target_events: proxy.events(),
        stopping: stopping_rx,
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
    let signals = StopSignals::install()?;
    println!("admin addr={admin_addr}");
    // The token rides in the fragment, which browsers never send.
    println!("dashboard http://{admin_addr}/#token={token}");
    println!("ready");
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

    signals.wait().await;
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    // Live views (dashboards, `/events` followers) learn it first.
    let _ = stopping.send(true);
    tokio::task::spawn_blocking(move || server.shutdown()).await?;
    if opts.keep_instances {
        tracing::info!(
            "leaving managed instances running (--keep-instances); the next start adopts them"
        );
        for f in &fleets {
            f.close().await;
        }
    } else {
        for f in &fleets {
            f.shutdown().await;
        }
    }
    rotation.abort();
    let _ = stop_admin.send(());
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

/// SIGTERM and SIGINT, taken over from their default (which kills at
/// once) before `ready` is printed: a supervisor that stops handoff right
/// after it said ready gets the graceful stop too.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
