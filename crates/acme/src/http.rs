//! HTTPS to the ACME directory: one hyper HTTP/1.1 connection per request
//! over rustls (a few requests per certificate, every few weeks: pooling
//! would buy nothing). Trust: the system's CA bundle plus `[server.acme]
//! ca` for a private directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::AcmeError;

/// Where Debian, Fedora and Alpine keep the system's trusted roots.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A request's time limit, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

pub struct Transport {
    tls: tokio_rustls::TlsConnector,
}

impl Transport {
    pub fn new(extra_ca: Option<&Path>) -> Result<Transport, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        for bundle in SYSTEM_BUNDLES {
            if let Ok(pem) = std::fs::read(bundle) {
                for c in CertificateDer::pem_slice_iter(&pem).flatten() {
                    let _ = roots.add(c);
                }
                break;
            }
        }
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path).map_err(|source| AcmeError::State {
                path: path.to_path_buf(),
                source,
            })?;
            let mut added = 0;
            for c in CertificateDer::pem_slice_iter(&pem).flatten() {
                if roots.add(c).is_ok() {
                    added += 1;
                }
            }
            if added == 0 {
                return Err(AcmeError::Trust(format!(
                    "{}: no usable PEM certificate in it ([server.acme] ca)",
                    path.display()
                )));
            }
        }
        if roots.is_empty() {
            return Err(AcmeError::Trust(
                "no trusted root certificates: install the system's CA bundle (ca-certificates) or set [server.acme] ca".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Transport {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, AcmeError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, url, body))
            .await
            .map_err(|_| AcmeError::Http {
                url: url.to_string(),
                why: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            })?
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, AcmeError> {
        let fail = |why: String| AcmeError::Http {
            url: url.to_string(),
            why,
        };
        let uri: Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(fail("an ACME directory is reached over https only".into()));
        }
        let host = uri.host().ok_or_else(|| fail("no host in it".into()))?;
        let port = uri.port_u16().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| fail(format!("bad server name: {e}")))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| fail(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(
                http::header::USER_AGENT,
                concat!("handoff/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/jose+json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
