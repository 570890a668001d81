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
use rustls_pki_types::ServerName;

use crate::AcmeError;

/// The largest answer read (a certificate chain is a few KiB).
const MAX_BODY: usize = 1 << 20;

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
        // The system's roots (a public CA), plus `ca` (a private one).
        let mut roots = handoff_proxy::upstream::system_roots()
            .unwrap_or_else(|_| rustls::RootCertStore::empty());
        if let Some(path) = extra_ca {
            let extra = handoff_proxy::upstream::file_roots(path)
                .map_err(|e| AcmeError::Trust(format!("[server.acme] ca: {e}")))?;
            roots.extend(extra.roots);
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
        // A directory's answers are small; a huge one is a broken server.
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
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
