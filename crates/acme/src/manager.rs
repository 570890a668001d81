//! Keeps every ACME service's certificate current: one task per service,
//! one account (and one order at a time) for them all.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handoff_core::config::Acme;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::client::Client;
use crate::http::Transport;
use crate::jws::AccountKey;
use crate::{files, AcmeError, Responder};

/// The longest sleep between two looks at a certificate (files may be
/// changed by hand, clocks jump).
const LOOK_EVERY: Duration = Duration::from_secs(3600);
/// Back-off after a failure: this, doubled per failure, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// A service whose certificate handoff gets.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub service: String,
    pub domains: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Wanted {
    /// Present while the files hold the self-signed stand-in.
    fn marker(&self) -> PathBuf {
        self.cert.with_file_name("placeholder")
    }

    /// The directory URL the certificate came from (a switch from a
    /// staging CA to a production one renews at once).
    fn issuer_file(&self) -> PathBuf {
        self.cert.with_file_name("directory")
    }
}

/// What [`Manager::renew`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renew {
    Started,
    /// An order for it is running now; its outcome will show.
    Busy,
    /// Not a service with `tls.acme = true`.
    NotAcme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No certificate from the CA yet: a self-signed stand-in is served.
    Pending,
    /// Ordering one now.
    Ordering,
    /// A certificate from the CA is served.
    Valid,
    /// The last attempt failed; another comes at `next_attempt`.
    Failed,
}

/// What `handoff status`, the API and the dashboard show.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    /// Unix seconds: when the served CA certificate expires.
    pub not_after: Option<u64>,
    /// Unix seconds: when it will be renewed.
    pub renew_at: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Unix seconds: the next attempt after a failure.
    pub next_attempt: Option<u64>,
    /// Failures in a row.
    pub failures: u32,
    /// Certificates obtained by this daemon.
    pub issued: u32,
}

struct One {
    wanted: Wanted,
    status: Mutex<Status>,
    force: AtomicBool,
    kick: Notify,
}

/// Told the service's name once its new files are written.
pub type OnIssued = Box<dyn Fn(&str) + Send + Sync>;

struct Inner {
    acme: Acme,
    on_issued: OnIssued,
    account_key: PathBuf,
    responder: Arc<dyn Responder>,
    services: Vec<One>,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The running tasks' stop switch (none while stopped).
    running: Mutex<Option<watch::Sender<bool>>>,
}

/// See the crate docs.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum Look {
    Due(String),
    Until { not_after: u64, renew_at: u64 },
}

fn look(w: &Wanted, directory: &str) -> Look {
    if w.marker().exists() {
        return Look::Due("no certificate from the CA yet".into());
    }
    let from = std::fs::read_to_string(w.issuer_file()).unwrap_or_default();
    if from.trim() != directory {
        return Look::Due(format!(
            "it came from another directory ({}), not {directory}",
            if from.trim().is_empty() {
                "unknown"
            } else {
                from.trim()
            }
        ));
    }
    match handoff_proxy::tls::load(&w.cert, &w.key, &w.domains) {
        Err(e) => Look::Due(e.to_string()),
        Ok(l) => {
            // Let's Encrypt's advice: renew with a third of the lifetime left.
            let life = l.not_after.saturating_sub(l.not_before);
            let renew_at = l.not_before + life * 2 / 3;
            if now() >= renew_at {
                Look::Due("two thirds of its lifetime have passed".into())
            } else {
                Look::Until {
                    not_after: l.not_after,
                    renew_at,
                }
            }
        }
    }
}

impl Manager {
    pub fn new(
        acme: Acme,
        state_dir: &Path,
        wanted: Vec<Wanted>,
        responder: Arc<dyn Responder>,
        on_issued: OnIssued,
    ) -> Manager {
        let services = wanted
            .into_iter()
            .map(|wanted| One {
                wanted,
                status: Mutex::new(Status {
                    state: State::Pending,
                    not_after: None,
                    renew_at: None,
                    error: None,
                    next_attempt: None,
                    failures: 0,
                    issued: 0,
                }),
                force: AtomicBool::new(false),
                kick: Notify::new(),
            })
            .collect();
        Manager {
            inner: Arc::new(Inner {
                acme,
                on_issued,
                account_key: state_dir.join("acme").join("account.key"),
                responder,
                services,
                client: tokio::sync::Mutex::new(None),
                running: Mutex::new(None),
            }),
        }
    }

    /// Before the listeners start: every service gets files the proxy can
    /// load. One with nothing usable (first start, or expired while the
    /// daemon was down) gets a self-signed stand-in until the CA's arrives.
    /// A valid certificate for other names (`domains` changed) stays
    /// served until its successor is issued: the names it covers keep
    /// working meanwhile.
    pub fn prepare(&self) -> Result<(), AcmeError> {
        for one in &self.inner.services {
            let w = &one.wanted;
            if handoff_proxy::tls::load(&w.cert, &w.key, &[]).is_ok() {
                continue;
            }
            let key =
                rcgen::KeyPair::generate().map_err(|_| AcmeError::Crypto("a stand-in key"))?;
            let mut params = rcgen::CertificateParams::new(w.domains.clone())
                .map_err(|e| AcmeError::Csr(e.to_string()))?;
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                "handoff stand-in until the ACME certificate arrives",
            );
            let cert = params
                .self_signed(&key)
                .map_err(|e| AcmeError::Csr(e.to_string()))?;
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| AcmeError::State { path, source }
            };
            files::write_private(
                &w.marker(),
                b"self-signed until the CA's certificate arrives\n",
            )
            .map_err(io(&w.marker()))?;
            files::write_private(&w.key, key.serialize_pem().as_bytes()).map_err(io(&w.key))?;
            files::write_private(&w.cert, cert.pem().as_bytes()).map_err(io(&w.cert))?;
            tracing::info!(service = %w.service, "no usable ACME certificate yet: serving a self-signed stand-in until one is issued");
        }
        Ok(())
    }

    /// Starts one task per service on the current runtime, until
    /// [`Self::stop`].
    pub fn start(&self) {
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return;
        }
        let (tx, rx) = watch::channel(false);
        for i in 0..self.inner.services.len() {
            tokio::spawn(run(self.inner.clone(), i, rx.clone()));
        }
        *running = Some(tx);
    }

    /// Stops the tasks; an order under way is dropped (its challenges
    /// withdrawn). Before a hand-over: the next daemon orders what is
    /// still due, and two daemons never answer one CA at once.
    pub fn stop(&self) {
        if let Some(tx) = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(true);
        }
    }

    pub fn status(&self, service: &str) -> Option<Status> {
        self.inner
            .services
            .iter()
            .find(|o| o.wanted.service == service)
            .map(|o| o.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Orders a new certificate for `service` now (after a key compromise,
    /// a changed CA, or to test renewal).
    pub fn renew(&self, service: &str) -> Renew {
        let Some(o) = self
            .inner
            .services
            .iter()
            .find(|o| o.wanted.service == service)
        else {
            return Renew::NotAcme;
        };
        if o.status.lock().unwrap_or_else(|e| e.into_inner()).state == State::Ordering {
            return Renew::Busy;
        }
        o.force.store(true, Ordering::SeqCst);
        o.kick.notify_one();
        Renew::Started
    }
}

async fn run(inner: Arc<Inner>, i: usize, mut stop: watch::Receiver<bool>) {
    let one = &inner.services[i];
    let w = &one.wanted;
    loop {
        if *stop.borrow() {
            return;
        }
        let why = if one.force.swap(false, Ordering::SeqCst) {
            "asked for".to_string()
        } else {
            match look(w, &inner.acme.directory) {
                Look::Due(why) => why,
                Look::Until {
                    not_after,
                    renew_at,
                } => {
                    {
                        let mut s = one.status.lock().unwrap_or_else(|e| e.into_inner());
                        s.state = State::Valid;
                        s.not_after = Some(not_after);
                        s.renew_at = Some(renew_at);
                    }
                    let wait = Duration::from_secs(renew_at.saturating_sub(now())).min(LOOK_EVERY);
                    if !pause(one, wait, &mut stop).await {
                        return;
                    }
                    continue;
                }
            }
        };
        one.status.lock().unwrap_or_else(|e| e.into_inner()).state = State::Ordering;
        tracing::info!(service = %w.service, domains = ?w.domains, reason = %why, "ordering a certificate over ACME");
        let started = std::time::Instant::now();
        let result = tokio::select! {
            r = obtain(&inner, w) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok(()) => {
                // Served from now on, before it is reported issued.
                (inner.on_issued)(&w.service);
                let mut s = one.status.lock().unwrap_or_else(|e| e.into_inner());
                s.failures = 0;
                s.error = None;
                s.next_attempt = None;
                s.issued += 1;
                s.state = State::Valid;
                tracing::info!(service = %w.service, took_ms = started.elapsed().as_millis() as u64,
                    "certificate issued; new connections get it");
            }
            Err(e) => {
                let failures = {
                    let mut s = one.status.lock().unwrap_or_else(|e| e.into_inner());
                    s.failures += 1;
                    s.failures
                };
                let mut backoff = BACKOFF_FIRST
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(BACKOFF_MAX);
                // A CA that says when to come back (rate limits) is obeyed.
                if let AcmeError::Refused {
                    retry_after: Some(s),
                    ..
                } = &e
                {
                    backoff = backoff.max(Duration::from_secs(*s));
                }
                {
                    let mut s = one.status.lock().unwrap_or_else(|e| e.into_inner());
                    s.state = State::Failed;
                    s.error = Some(e.to_string());
                    s.next_attempt = Some(now() + backoff.as_secs());
                }
                tracing::warn!(service = %w.service, error = %e, retry_in_s = backoff.as_secs(),
                    "could not get a certificate; the current one stays in use");
                // A failed conversation may have left a stale nonce or a
                // dead connection: start the next one from the directory.
                *inner.client.lock().await = None;
                if !pause(one, backoff, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `d`, or until a renewal is asked for; false when stopping.
async fn pause(one: &One, d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = one.kick.notified() => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

async fn obtain(inner: &Inner, w: &Wanted) -> Result<(), AcmeError> {
    // One order at a time, on one account.
    let mut guard = inner.client.lock().await;
    if guard.is_none() {
        let http = Transport::new(inner.acme.ca.as_deref())?;
        let key = AccountKey::load_or_create(&inner.account_key)?;
        let mut c = Client::new(http, key, &inner.acme.directory).await?;
        c.account(inner.acme.email.as_deref()).await?;
        *guard = Some(c);
    }
    let client = guard.as_mut().expect("set above");
    let issued = client.issue(&w.domains, inner.responder.as_ref()).await?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AcmeError::State { path, source }
    };
    // Checked as the proxy will load it, before it replaces anything: a
    // certificate that cannot serve is a failure (backed off), not an
    // issuance to repeat at once.
    let (new_cert, new_key) = (
        w.cert.with_extension("pem.new"),
        w.key.with_extension("pem.new"),
    );
    files::write_private(&new_key, issued.key_pem.as_bytes()).map_err(io(&new_key))?;
    files::write_private(&new_cert, issued.chain_pem.as_bytes()).map_err(io(&new_cert))?;
    if let Err(e) = handoff_proxy::tls::load(&new_cert, &new_key, &w.domains) {
        let _ = std::fs::remove_file(&new_cert);
        let _ = std::fs::remove_file(&new_key);
        return Err(AcmeError::Unusable(e.to_string()));
    }
    // Key first: the watcher re-reads when either file changes, and the
    // chain is the one that makes the pair whole again.
    std::fs::rename(&new_key, &w.key).map_err(io(&w.key))?;
    std::fs::rename(&new_cert, &w.cert).map_err(io(&w.cert))?;
    files::write_private(&w.issuer_file(), inner.acme.directory.as_bytes())
        .map_err(io(&w.issuer_file()))?;
    let _ = std::fs::remove_file(w.marker());
    Ok(())
}
