//! handoff-acme: automatic certificates from an ACME (RFC 8555) CA such
//! as Let's Encrypt, proved over HTTP-01.
//!
//! ```text
//! Manager ── one task per service with `tls.acme = true`
//!   ├─ looks at STATE_DIR/acme/certs/SERVICE/{cert,key}.pem (a self-signed
//!   │  placeholder until the first issuance, so the listener can start)
//!   ├─ due (placeholder, unreadable, 2/3 of its lifetime gone, or asked
//!   │  by `handoff certificate renew`) → client.rs: account → order →
//!   │  http-01 (token published through a Responder: the proxy's plain
//!   │  listener answers it) → finalize with a CSR → chain
//!   ├─ writes key then chain atomically; the proxy's certificate watcher
//!   │  swaps it in for new handshakes (open connections keep theirs)
//!   └─ failure: back-off 1 min doubling to 6 h, the reason kept in
//!      `status()` for `handoff status`, the API and the dashboard
//! ```
//!
//! The account key (STATE_DIR/acme/account.key, P-256) makes the account:
//! the CA finds the same account again from the same key.

mod client;
mod files;
mod http;
mod jws;
mod manager;

pub use manager::{Manager, OnIssued, Renew, State, Status, Wanted};

use std::path::PathBuf;

/// Where HTTP-01 key authorizations are published while a CA checks them.
pub trait Responder: Send + Sync {
    fn publish(&self, token: &str, key_authorization: &str);
    fn withdraw(&self, token: &str);
}

impl Responder for handoff_proxy::http01::Challenges {
    fn publish(&self, token: &str, key_authorization: &str) {
        self.insert(token, key_authorization);
    }
    fn withdraw(&self, token: &str) {
        self.remove(token);
    }
}

/// Why a certificate could not be had; each says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{}: {source}", path.display())]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("account key {}: {why}", path.display())]
    AccountKey { path: PathBuf, why: String },
    #[error("{0}")]
    Trust(String),
    #[error("{url}: {why}")]
    Http { url: String, why: String },
    #[error("{url} refused ({status} {kind}): {detail}")]
    Refused {
        url: String,
        status: u16,
        kind: String,
        detail: String,
        /// Seconds the CA asks to wait (`Retry-After`), e.g. a rate limit.
        retry_after: Option<u64>,
    },
    #[error("the CA issued a certificate that cannot be served: {0}")]
    Unusable(String),
    #[error(
        "the CA offers no http-01 challenge for {domain}; handoff proves names over HTTP-01 only"
    )]
    NoHttp01 { domain: String },
    #[error("the CA could not verify {domain} over HTTP-01: {why}; check that {domain} resolves to this server and that [server.acme] http_listen is reachable on port 80")]
    Challenge { domain: String, why: String },
    #[error("{url}: still '{state}' after the deadline; the CA is slow or stuck, retried later")]
    Stuck { url: String, state: String },
    #[error("order {url} became '{state}': {why}")]
    OrderFailed {
        url: String,
        state: String,
        why: String,
    },
    #[error("cannot make the certificate request: {0}")]
    Csr(String),
    #[error("crypto failed while {0}")]
    Crypto(&'static str),
}
