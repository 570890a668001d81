//! `handoff serve`: start everything, run until SIGTERM/SIGINT, stop cleanly.
//!
//! The lines printed on stdout are part of the interface (tests and scripts
//! read them): `listening service=NAME addr=IP:PORT` per service and
//! `admin addr=IP:PORT`, then `ready`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use handoff_core::config::{self, Backend};
use handoff_proxy::Proxy;
use prometheus_client::registry::Registry;

pub fn run(path: &Path) -> anyhow::Result<()> {
    init_tracing();
    let cfg = config::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HANDOFF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    let mut proxy = Proxy::new(cfg.server.workers);
    for svc in cfg.services.values() {
        let sp = proxy.add_service(svc);
        match &svc.backend {
            Backend::Static { targets } => handoff_controller::attach_static(&sp, targets)?,
            Backend::Managed(_) => anyhow::bail!(
                "{}: service '{}' has managed instances (`command`), which this build cannot run yet; \
                 use `targets = [...]` for now",
                cfg.path.display(),
                svc.name
            ),
        }
    }
    let admin = tokio::net::TcpListener::bind(cfg.server.admin)
        .await
        .with_context(|| format!("cannot listen on server.admin {}; is another handoff running? set [server] admin in {}", cfg.server.admin, cfg.path.display()))?;
    let admin_addr = admin.local_addr()?;
    let server = proxy.start(cfg.server.shutdown_timeout)?;

    let mut registry = Registry::default();
    registry.register_collector(Box::new(proxy.collector()));
    let state = handoff_api::AdminState {
        registry: Arc::new(registry),
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(handoff_api::serve(admin, state, async {
        let _ = admin_stopped.await;
    }));

    for (name, addr) in &server.addrs {
        println!("listening service={name} addr={addr}");
        tracing::info!(service = %name, %addr, "proxy listening");
    }
    println!("admin addr={admin_addr}");
    println!("ready");
    tracing::info!(%admin_addr, "admin API listening (/metrics, /healthz)");

    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    tokio::task::spawn_blocking(move || server.shutdown()).await?;
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
