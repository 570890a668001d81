//! A TLS client for the tests: one request per connection, recording
//! the certificate the server presented (any is accepted: the tests
//! compare it with the one they expect).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any certificate (they are self-signed) and records it: the test
/// compares it with the one it wrote.
#[derive(Debug)]
pub struct Record(Mutex<Option<Vec<u8>>>);

impl ServerCertVerifier for Record {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub struct Answer {
    pub code: u16,
    pub body: String,
    pub cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    pub headers: String,
}

/// One HTTPS request on a fresh connection with SNI `host`; with `alpn`
/// h2 only the handshake is checked (no request is sent).
pub fn https(addr: SocketAddr, host: &str, path: &str, alpn: &[&[u8]]) -> std::io::Result<Answer> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    https_raw(addr, host, req.as_bytes(), alpn)
}

/// `req` (whole, with `Connection: close`) over HTTPS with SNI `host`.
pub fn https_raw(
    addr: SocketAddr,
    host: &str,
    req: &[u8],
    alpn: &[&[u8]],
) -> std::io::Result<Answer> {
    let record = Arc::new(Record(Mutex::new(None)));
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(record.clone())
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(host.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let h2 = alpn == [b"h2".as_slice()];
    let mut out = String::new();
    if h2 {
        tls.conn.complete_io(&mut tls.sock)?;
    } else {
        tls.write_all(req)?;
        match tls.read_to_string(&mut out) {
            Ok(_) => {}
            // A close without close_notify after a whole answer is fine.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && out.contains("\r\n\r\n") => {
            }
            Err(e) => return Err(e),
        }
    }
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (headers, body) = out.split_once("\r\n\r\n").unwrap_or(("", ""));
    let cert = record.0.lock().unwrap().clone().unwrap_or_default();
    Ok(Answer {
        code,
        body: body.to_string(),
        headers: headers.to_ascii_lowercase(),
        cert,
        alpn: tls.conn.alpn_protocol().map(|p| p.to_vec()),
    })
}

/// `openssl s_client -connect ADDR -servername HOST`: its whole output.
pub fn s_client(addr: SocketAddr, host: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            host,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (Debian package openssl; .ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first PEM certificate block of `text`, whitespace removed.
pub fn first_pem(text: &str) -> String {
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    text.split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(b, _)| b.split_whitespace().collect())
        .unwrap_or_default()
}

/// `curl --http2` to `https://HOST/PATH` at `addr` (any certificate):
/// (the HTTP version curl spoke, the body).
pub fn curl_h2(addr: SocketAddr, host: &str, path: &str) -> (String, String) {
    let port = addr.port();
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "--max-time",
            "10",
            "--resolve",
            &format!("{host}:{port}:{}", addr.ip()),
            "-w",
            "\n%{http_version}",
            &format!("https://{host}:{port}{path}"),
        ])
        .output()
        .expect("curl (Debian package curl; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, v)) => (v.trim().to_string(), body.to_string()),
        None => (String::new(), text),
    }
}
