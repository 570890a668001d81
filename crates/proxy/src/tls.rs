//! HTTPS on a listen address: rustls (ring, no OpenSSL), TLS 1.2 and 1.3,
//! ALPN `h2` and `http/1.1`, and each service's own certificate chosen by
//! SNI among the services sharing the address.
//!
//! Certificates are read from PEM files and checked before use ([`load`]):
//! the key must match the certificate, the certificate must be valid now,
//! and its names must cover the service's `domains`. The same check runs
//! in `handoff check`. A [`Certs`] watches the files: when they change, the
//! new certificate is checked and swapped in for new handshakes. A
//! connection open already keeps its own, and a bad new file is refused
//! (logged) while the old certificate stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate cannot be used; says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it (`-----BEGIN CERTIFICATE-----`)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {why}", path.display())]
    NoKey { path: PathBuf, why: String },
    #[error("{}: a key of a kind rustls cannot sign with: {why}", path.display())]
    BadKey { path: PathBuf, why: String },
    #[error("{} is not the key of {}: give the key this certificate was issued for", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: cannot read the certificate: {why}", path.display())]
    Malformed { path: PathBuf, why: &'static str },
    #[error("{}: expired on {} (UTC); renew it", path.display(), fmt_time(*not_after))]
    Expired { path: PathBuf, not_after: u64 },
    #[error("{}: not valid before {} (UTC); check the clock or the certificate", path.display(), fmt_time(*not_before))]
    NotYetValid { path: PathBuf, not_before: u64 },
    #[error("no roots to verify with: {why}")]
    NoRoots { why: String },
    #[error("{}: its names ({}) do not cover `{domain}` of the service; use a certificate issued for it", path.display(), names.join(", "))]
    NameMismatch {
        path: PathBuf,
        domain: String,
        names: Vec<String>,
    },
}

/// A checked certificate.
#[derive(Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// Its DNS names (subjectAltName).
    pub names: Vec<String>,
}

/// Reads and checks `cert` and `key` for a service answering `domains`.
pub fn load(cert: &Path, key: &Path, domains: &[String]) -> Result<Loaded, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key.to_path_buf(),
        why: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            why: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // Keys whose public half rustls cannot derive: not a mismatch.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
    }
    let info = der::leaf(certified.cert[0].as_ref()).map_err(|why| TlsError::Malformed {
        path: cert.to_path_buf(),
        why,
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now > info.not_after {
        return Err(TlsError::Expired {
            path: cert.to_path_buf(),
            not_after: info.not_after,
        });
    }
    if now < info.not_before {
        return Err(TlsError::NotYetValid {
            path: cert.to_path_buf(),
            not_before: info.not_before,
        });
    }
    for d in domains {
        if !covers(&info.names, d) {
            return Err(TlsError::NameMismatch {
                path: cert.to_path_buf(),
                domain: d.clone(),
                names: info.names.clone(),
            });
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        not_before: info.not_before,
        not_after: info.not_after,
        names: info.names,
    })
}

/// Whether a certificate with `names` is valid for `domain` (itself
/// perhaps a wildcard): an exact name, or a `*.` name one label up.
fn covers(names: &[String], domain: &str) -> bool {
    names.iter().any(|n| {
        let n = n.to_ascii_lowercase();
        if n == domain {
            return true;
        }
        match (n.strip_prefix('*'), domain.split_once('.')) {
            (Some(suffix), Some((first, rest))) => {
                !first.is_empty() && first != "*" && suffix.strip_prefix('.') == Some(rest)
            }
            _ => false,
        }
    })
}

/// One service's certificate on a shared address, kept current.
pub struct Cert {
    pub service: String,
    pub domains: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    /// Refuse files whose names miss a domain. Off for ACME: a certificate
    /// for the old names serves them until its successor is issued.
    check_names: bool,
    current: ArcSwap<Loaded>,
    stamp: std::sync::Mutex<Stamp>,
}

/// The files' modification times and sizes when last read.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| std::fs::metadata(p).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [one(cert), one(key)]
}

impl Cert {
    pub fn new(
        service: &str,
        domains: &[String],
        cert: &Path,
        key: &Path,
        check_names: bool,
    ) -> Result<Cert, TlsError> {
        let s = stamp(cert, key);
        let loaded = load(cert, key, if check_names { domains } else { &[] })?;
        Ok(Cert {
            service: service.to_string(),
            domains: domains.to_vec(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            check_names,
            current: ArcSwap::from_pointee(loaded),
            stamp: std::sync::Mutex::new(s),
        })
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Reads the files again if they changed; `Some(Ok)` when a new
    /// certificate is in use, `Some(Err)` when the new files were refused.
    pub fn refresh(&self) -> Option<Result<(), TlsError>> {
        let now = stamp(&self.cert, &self.key);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return None;
        }
        *last = now;
        let names: &[String] = if self.check_names { &self.domains } else { &[] };
        Some(load(&self.cert, &self.key, names).map(|l| self.current.store(Arc::new(l))))
    }
}

/// SNI → certificate among the services of one address: an exact domain,
/// then a wildcard one label up, then the first service without domains,
/// then the first service (a client without SNI gets that).
#[derive(Debug)]
pub struct Resolver {
    certs: Vec<Arc<Cert>>,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cert")
            .field("service", &self.service)
            .finish()
    }
}

impl Resolver {
    pub fn new(certs: Vec<Arc<Cert>>) -> Resolver {
        Resolver { certs }
    }

    fn pick(&self, sni: Option<&str>) -> Option<&Arc<Cert>> {
        let host = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        if let Some(h) = host.as_deref() {
            if let Some(c) = self.certs.iter().find(|c| c.domains.iter().any(|d| d == h)) {
                return Some(c);
            }
            if let Some(c) = self.certs.iter().find(|c| {
                c.domains
                    .iter()
                    .filter_map(|d| d.strip_prefix("*."))
                    .any(|sfx| h.split_once('.').is_some_and(|(_, rest)| rest == sfx))
            }) {
                return Some(c);
            }
        }
        self.certs
            .iter()
            .find(|c| c.domains.is_empty())
            .or(self.certs.first())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
            .map(|c| c.current().key.clone())
    }
}

/// The server side of one TLS address.
pub fn acceptor(certs: Vec<Arc<Cert>>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver::new(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Re-reads every certificate whose files changed, every `every`, until
/// `stop` turns true (a thread of its own: the data plane's workers never
/// touch a file).
pub fn watch(certs: Vec<Arc<Cert>>, every: Duration, stop: tokio::sync::watch::Receiver<bool>) {
    if certs.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("tls-watch".into())
        .spawn(move || {
            while !*stop.borrow() {
                for c in &certs {
                    // One bad file must not end the watch of every other.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.refresh()));
                    let Ok(r) = r else {
                        tracing::error!(service = %c.service, "reading the certificate panicked; it is looked at again later");
                        continue;
                    };
                    match r {
                        Some(Ok(())) => tracing::info!(service = %c.service, path = %c.cert.display(),
                            "certificate changed on disk: new connections get the new one"),
                        Some(Err(e)) => tracing::warn!(service = %c.service, error = %e,
                            "certificate changed on disk but is refused; the previous one stays in use"),
                        None => {}
                    }
                }
                std::thread::sleep(every);
            }
        });
}

fn fmt_time(unix: u64) -> String {
    let (y, m, d) = der::civil_from_days((unix / 86_400) as i64);
    let s = unix % 86_400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", s / 3600, (s / 60) % 60)
}

/// Just enough DER to read a leaf certificate's validity and DNS names.
mod der {
    pub struct Leaf {
        pub not_before: u64,
        pub not_after: u64,
        pub names: Vec<String>,
    }

    /// (tag, contents, rest).
    fn next(b: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
        let (&tag, b) = b.split_first().ok_or("truncated")?;
        let (&first, mut b) = b.split_first().ok_or("truncated")?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return Err("bad length");
            }
            let mut l = 0usize;
            for &x in &b[..n] {
                l = (l << 8) | x as usize;
            }
            b = &b[n..];
            l
        };
        if b.len() < len {
            return Err("truncated");
        }
        Ok((tag, &b[..len], &b[len..]))
    }

    pub fn leaf(cert: &[u8]) -> Result<Leaf, &'static str> {
        let (_, cert, _) = next(cert)?; // Certificate
        let (_, tbs, _) = next(cert)?; // TBSCertificate
        let mut rest = tbs;
        let (tag, _, r) = next(rest)?;
        if tag == 0xa0 {
            rest = r; // [0] version
        }
        let (_, _, r) = next(rest)?; // serialNumber
        let (_, _, r) = next(r)?; // signature
        let (_, _, r) = next(r)?; // issuer
        let (_, validity, r) = next(r)?;
        let (t1, nb, v) = next(validity)?;
        let (t2, na, _) = next(v)?;
        let not_before = time(t1, nb)?;
        let not_after = time(t2, na)?;
        let (_, _, r) = next(r)?; // subject
        let (_, _, mut r) = next(r)?; // subjectPublicKeyInfo
        let mut names = Vec::new();
        while !r.is_empty() {
            let (tag, body, after) = next(r)?;
            r = after;
            if tag != 0xa3 {
                continue; // [1], [2]: unique ids
            }
            let (_, mut exts, _) = next(body)?;
            while !exts.is_empty() {
                let (_, ext, after) = next(exts)?;
                exts = after;
                let (_, oid, e) = next(ext)?;
                // 2.5.29.17 subjectAltName
                if oid != [0x55, 0x1d, 0x11] {
                    continue;
                }
                let (mut tag, mut value, after) = next(e)?;
                if tag == 0x01 {
                    // `critical`, then the value.
                    (tag, value, _) = next(after)?;
                }
                if tag != 0x04 {
                    return Err("bad subjectAltName");
                }
                let (_, mut general, _) = next(value)?;
                while !general.is_empty() {
                    let (tag, name, after) = next(general)?;
                    general = after;
                    if tag == 0x82 {
                        names.push(String::from_utf8_lossy(name).to_ascii_lowercase());
                    }
                }
            }
        }
        Ok(Leaf {
            not_before,
            not_after,
            names,
        })
    }

    /// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
    fn time(tag: u8, b: &[u8]) -> Result<u64, &'static str> {
        let s = std::str::from_utf8(b).map_err(|_| "bad time")?;
        let s = s.strip_suffix('Z').ok_or("time not in UTC")?;
        // Digits only: the slicing below is by byte.
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err("bad time");
        }
        let (year, rest) = match tag {
            0x17 if s.len() == 12 => {
                let yy: i64 = s[..2].parse().map_err(|_| "bad time")?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
            }
            0x18 if s.len() == 14 => (s[..4].parse().map_err(|_| "bad time")?, &s[4..]),
            _ => return Err("bad time"),
        };
        let n = |i: usize| rest[i..i + 2].parse::<i64>().map_err(|_| "bad time");
        let days = days_from_civil(year, n(0)?, n(2)?);
        Ok((days * 86_400 + n(4)? * 3600 + n(6)? * 60 + n(8)?).max(0) as u64)
    }

    /// Howard Hinnant's days-from-civil (proleptic Gregorian).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (if m <= 2 { y + 1 } else { y }, m, d)
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(time(0x17, "2é0101000000Z".as_bytes()).is_err());
        assert!(time(0x18, b"20x1010100000Z").is_err());
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let _ = leaf(&junk);
        }
        let _ = leaf(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn dates_round_trip() {
        for days in [0i64, 10_957, 19_000, 20_423, 47_482] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(20_423), (2025, 12, 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, valid from 1975 to 4096
    /// unless `expired` (2001 only); (cert path, key path).
    fn write_cert(dir: &Path, file: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 12, 31);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_good_certificate_loads_with_its_names_and_expiry() {
        let dir = tempfile_dir();
        let (c, k) = write_cert(&dir, "app", &["app.test", "*.app.test"], false);
        let l = load(
            &c,
            &k,
            &["app.test".into(), "x.app.test".into(), "*.app.test".into()],
        )
        .unwrap();
        assert_eq!(l.names, ["app.test", "*.app.test"]);
        // rcgen's default: valid until 4096.
        assert!(l.not_after > 4_000_000_000, "{}", l.not_after);
    }

    #[test]
    fn each_problem_names_the_file_and_what_to_do() {
        let dir = tempfile_dir();
        let (c, k) = write_cert(&dir, "app", &["app.test"], false);
        let (_, other_key) = write_cert(&dir, "other", &["other.test"], false);
        let (old, old_key) = write_cert(&dir, "old", &["app.test"], true);
        let e = load(&c, &other_key, &[]).unwrap_err().to_string();
        assert!(
            e.contains("other.key is not the key of") && e.contains("app.pem"),
            "{e}"
        );
        let e = load(&old, &old_key, &[]).unwrap_err().to_string();
        assert!(e.contains("old.pem: expired on 2001-12-31"), "{e}");
        let e = load(&c, &k, &["api.test".into()]).unwrap_err().to_string();
        assert!(e.contains("do not cover `api.test`"), "{e}");
        let e = load(&k, &k, &[]).unwrap_err().to_string();
        assert!(e.contains("app.key: no PEM certificate"), "{e}");
        let e = load(&c, &c, &[]).unwrap_err().to_string();
        assert!(e.contains("no PEM private key"), "{e}");
        let e = load(&dir.join("nope.pem"), &k, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read") && e.contains("nope.pem"), "{e}");
    }

    #[test]
    fn wildcards_cover_one_label() {
        let names = vec!["*.app.test".to_string(), "api.test".to_string()];
        assert!(covers(&names, "x.app.test"));
        assert!(covers(&names, "*.app.test"));
        assert!(!covers(&names, "app.test"));
        assert!(!covers(&names, "a.b.app.test"));
        assert!(covers(&names, "api.test"));
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let dir = tempfile_dir();
        let cert = |svc: &str, domains: &[&str]| {
            let (c, k) = write_cert(&dir, svc, domains, false);
            let ds: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
            Arc::new(Cert::new(svc, &ds, &c, &k, true).unwrap())
        };
        let r = Resolver::new(vec![
            cert("app", &["app.test"]),
            cert("tenants", &["*.tenants.test"]),
            cert("fallback", &[]),
        ]);
        let pick = |sni: Option<&str>| r.pick(sni).unwrap().service.clone();
        assert_eq!(pick(Some("APP.test")), "app");
        assert_eq!(pick(Some("a.tenants.test")), "tenants");
        assert_eq!(pick(Some("unknown.test")), "fallback");
        assert_eq!(pick(None), "fallback");
    }

    #[test]
    fn a_changed_file_is_picked_up_and_a_bad_one_refused() {
        let dir = tempfile_dir();
        let (c, k) = write_cert(&dir, "app", &["app.test"], false);
        let cert = Cert::new("app", &["app.test".into()], &c, &k, true).unwrap();
        let first = cert.current().key.cert[0].clone();
        assert!(cert.refresh().is_none(), "nothing changed");
        write_cert(&dir, "app", &["app.test"], false);
        assert!(matches!(cert.refresh(), Some(Ok(()))));
        assert_ne!(cert.current().key.cert[0], first, "the new one is in use");
        let now = cert.current().key.cert[0].clone();
        write_cert(&dir, "app", &["other.test"], false);
        assert!(matches!(
            cert.refresh(),
            Some(Err(TlsError::NameMismatch { .. }))
        ));
        assert_eq!(cert.current().key.cert[0], now, "the previous one stays");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "handoff-tls-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
