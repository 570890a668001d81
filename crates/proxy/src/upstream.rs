//! Connections to targets: plain TCP, or TLS for apps that speak only
//! HTTPS (`[services.X.proxy] upstream_tls`). Requests and health checks
//! dial through the same [`dial`], so a target whose certificate does not
//! verify is unhealthy, with the reason in its last check.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TlsError;

/// Where Debian, Fedora and Alpine keep the system's trusted roots.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The system's trusted roots (its CA bundle).
pub fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let path = SYSTEM_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| TlsError::NoRoots {
            why: "no system CA bundle found (install ca-certificates) and no CA file given".into(),
        })?;
    let roots = file_roots(path)?;
    Ok(roots)
}

/// The certificates of a PEM file, as trusted roots.
pub fn file_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// TLS towards a service's targets.
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    /// Verified name and SNI; `None`: the target's IP address.
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish()
    }
}

impl UpstreamTls {
    pub fn new(cfg: &handoff_core::config::UpstreamTls) -> Result<UpstreamTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(match &cfg.ca {
                Some(ca) => file_roots(ca)?,
                None => system_roots()?,
            })
            .with_no_client_auth();
        // The upstream side is HTTP/1.1 (pooled, upgrades relayed).
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match &cfg.name {
            Some(n) => Some(
                ServerName::try_from(n.clone()).map_err(|_| TlsError::NoRoots {
                    why: format!("'{n}' is not a server name"),
                })?,
            ),
            None => None,
        };
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(c)),
            name,
        })
    }
}

/// A connection to a target, plain or TLS.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Upstream {
    /// Whether an idle connection is still open and quiet: a read that
    /// would block. EOF, an error or unasked bytes mean it must not carry
    /// a request. Never waits (the waker is a no-op).
    pub(crate) fn alive(&mut self) -> bool {
        let mut one = [0u8; 1];
        let mut buf = ReadBuf::new(&mut one);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(Pin::new(self).poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

/// Connects to `addr`, with the TLS handshake when `tls` is given.
pub async fn dial(addr: SocketAddr, tls: Option<&UpstreamTls>) -> std::io::Result<Upstream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let Some(tls) = tls else {
        return Ok(Upstream::Plain(s));
    };
    let name = tls
        .name
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let s = tls
        .connector
        .connect(name, s)
        .await
        .map_err(|e| {
            std::io::Error::other(format!(
                "TLS to {addr}: {e} (upstream_ca must hold the root that issued its certificate, and upstream_name a name in it)"
            ))
        })?;
    Ok(Upstream::Tls(Box::new(s)))
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(s) => s.is_write_vectored(),
            Upstream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
