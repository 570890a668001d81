//! The RFC 8555 conversation: directory, nonces, account, order, HTTP-01
//! authorizations, finalize with a CSR, download the chain.
//!
//! Every POST is signed with the account key and carries a fresh nonce; a
//! `badNonce` refusal is retried with the nonce it came with (§6.5). Polls
//! follow `Retry-After` within bounds and give up after a deadline, saying
//! which object was stuck in which state.

use std::time::{Duration, Instant};

use http::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{Reply, Transport};
use crate::jws::{b64url, AccountKey};
use crate::{AcmeError, Responder};

/// How long an authorization or order may stay pending.
const POLL_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

#[derive(Debug, Deserialize)]
struct Order {
    status: String,
    #[serde(default)]
    authorizations: Vec<String>,
    finalize: String,
    certificate: Option<String>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Authorization {
    status: String,
    identifier: Identifier,
    #[serde(default)]
    challenges: Vec<Challenge>,
}

#[derive(Debug, Deserialize)]
struct Identifier {
    value: String,
}

#[derive(Debug, Deserialize)]
struct Challenge {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    token: Option<String>,
    error: Option<Value>,
}

/// A certificate just issued: its chain and its private key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// An account at one ACME directory.
pub struct Client {
    http: Transport,
    key: AccountKey,
    dir: Directory,
    directory_url: String,
    kid: Option<String>,
    nonce: Option<String>,
}

fn problem(url: &str, r: &Reply) -> AcmeError {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    AcmeError::Refused {
        url: url.to_string(),
        status: r.status,
        kind: v["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("urn:ietf:params:acme:error:")
            .to_string(),
        detail: v["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).chars().take(300).collect()),
        retry_after: r
            .header("retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok()),
    }
}

fn describe(err: &Option<Value>) -> String {
    match err {
        Some(e) => format!(
            "{} ({})",
            e["detail"].as_str().unwrap_or("no detail"),
            e["type"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("urn:ietf:params:acme:error:")
        ),
        None => "no reason given".into(),
    }
}

impl Client {
    pub async fn new(
        http: Transport,
        key: AccountKey,
        directory_url: &str,
    ) -> Result<Client, AcmeError> {
        let r = http.request(Method::GET, directory_url, None).await?;
        if r.status != 200 {
            return Err(problem(directory_url, &r));
        }
        let dir: Directory = serde_json::from_slice(&r.body).map_err(|e| AcmeError::Http {
            url: directory_url.to_string(),
            why: format!("not an ACME directory: {e}"),
        })?;
        Ok(Client {
            http,
            key,
            dir,
            directory_url: directory_url.to_string(),
            kid: None,
            nonce: None,
        })
    }

    async fn fresh_nonce(&mut self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let url = self.dir.new_nonce.clone();
        let r = self.http.request(Method::HEAD, &url, None).await?;
        r.header("replay-nonce").ok_or_else(|| AcmeError::Http {
            url,
            why: format!("no Replay-Nonce in the answer ({})", r.status),
        })
    }

    /// A signed POST (None: POST-as-GET). `badNonce` is retried.
    async fn post(&mut self, url: &str, payload: Option<&Value>) -> Result<Reply, AcmeError> {
        let mut tries = 0;
        loop {
            let nonce = self.fresh_nonce().await?;
            let body = self.key.sign(url, &nonce, self.kid.as_deref(), payload)?;
            let r = self.http.request(Method::POST, url, Some(body)).await?;
            self.nonce = r.header("replay-nonce");
            if r.status < 400 {
                return Ok(r);
            }
            let e = problem(url, &r);
            tries += 1;
            if matches!(&e, AcmeError::Refused { kind, .. } if kind == "badNonce") && tries < 5 {
                continue;
            }
            return Err(e);
        }
    }

    /// Registers (or finds: the same key answers with the same account)
    /// the account, agreeing to the directory's terms.
    pub async fn account(&mut self, email: Option<&str>) -> Result<(), AcmeError> {
        let mut req = json!({"termsOfServiceAgreed": true});
        if let Some(e) = email {
            req["contact"] = json!([format!("mailto:{e}")]);
        }
        let url = self.dir.new_account.clone();
        self.kid = None;
        let r = self.post(&url, Some(&req)).await?;
        let kid = r.header("location").ok_or_else(|| AcmeError::Http {
            url: url.clone(),
            why: "the new account has no Location".into(),
        })?;
        self.kid = Some(kid);
        Ok(())
    }

    /// Orders and fetches a certificate for `domains`, answering HTTP-01
    /// through `responder`.
    pub async fn issue(
        &mut self,
        domains: &[String],
        responder: &dyn Responder,
    ) -> Result<Issued, AcmeError> {
        if self.kid.is_none() {
            return Err(AcmeError::Http {
                url: self.directory_url.clone(),
                why: "no account yet".into(),
            });
        }
        let ids: Vec<Value> = domains
            .iter()
            .map(|d| json!({"type": "dns", "value": d}))
            .collect();
        let new_order = self.dir.new_order.clone();
        let r = self
            .post(&new_order, Some(&json!({ "identifiers": ids })))
            .await?;
        let order_url = r.header("location").ok_or_else(|| AcmeError::Http {
            url: new_order.clone(),
            why: "the new order has no Location".into(),
        })?;
        let order: Order = self.parse(&new_order, &r)?;
        for authz_url in &order.authorizations {
            self.authorize(authz_url, responder).await?;
        }
        let order = self.poll_order(&order_url, &["pending"], "ready").await?;
        // A fresh key per certificate: a renewal never reuses one.
        let key = rcgen::KeyPair::generate().map_err(|_| AcmeError::Crypto("a certificate key"))?;
        let mut params = rcgen::CertificateParams::new(domains.to_vec())
            .map_err(|e| AcmeError::Csr(e.to_string()))?;
        // rcgen's default subject ("rcgen self signed cert") would be read
        // by the CA as one more name to prove: the first domain, or none.
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = domains.first().filter(|d| d.len() <= 64) {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.clone());
        }
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Csr(e.to_string()))?;
        let finalize = order.finalize.clone();
        self.post(&finalize, Some(&json!({"csr": b64url(csr.der())})))
            .await?;
        let order = self
            .poll_order(&order_url, &["ready", "processing"], "valid")
            .await?;
        let cert_url = order.certificate.ok_or_else(|| AcmeError::Http {
            url: order_url.clone(),
            why: "a valid order without a certificate URL".into(),
        })?;
        let r = self.post(&cert_url, None).await?;
        let chain_pem = String::from_utf8(r.body.to_vec()).map_err(|_| AcmeError::Http {
            url: cert_url.clone(),
            why: "the certificate is not PEM text".into(),
        })?;
        if !chain_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AcmeError::Http {
                url: cert_url,
                why: "the certificate is not PEM text".into(),
            });
        }
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, url: &str, r: &Reply) -> Result<T, AcmeError> {
        serde_json::from_slice(&r.body).map_err(|e| AcmeError::Http {
            url: url.to_string(),
            why: format!("unexpected answer: {e}"),
        })
    }

    async fn authorize(&mut self, url: &str, responder: &dyn Responder) -> Result<(), AcmeError> {
        let r = self.post(url, None).await?;
        let authz: Authorization = self.parse(url, &r)?;
        if authz.status == "valid" {
            return Ok(()); // proved recently: the CA reuses it
        }
        let domain = authz.identifier.value.clone();
        let ch = authz
            .challenges
            .iter()
            .find(|c| c.kind == "http-01")
            .ok_or_else(|| AcmeError::NoHttp01 {
                domain: domain.clone(),
            })?;
        let token = ch.token.clone().ok_or_else(|| AcmeError::Http {
            url: ch.url.clone(),
            why: "an http-01 challenge without a token".into(),
        })?;
        let answer = format!("{token}.{}", self.key.thumbprint());
        responder.publish(&token, &answer);
        // Withdrawn however this ends, a dropped (stopped) order included.
        let _published = Published { responder, token };
        self.prove(url, &ch.url.clone(), &domain).await
    }

    async fn prove(
        &mut self,
        authz_url: &str,
        ch_url: &str,
        domain: &str,
    ) -> Result<(), AcmeError> {
        self.post(ch_url, Some(&json!({}))).await?;
        let started = Instant::now();
        loop {
            let r = self.post(authz_url, None).await?;
            let authz: Authorization = self.parse(authz_url, &r)?;
            match authz.status.as_str() {
                "valid" => return Ok(()),
                "pending" | "processing" => {}
                _ => {
                    let why = authz
                        .challenges
                        .iter()
                        .find(|c| c.kind == "http-01")
                        .map(|c| describe(&c.error))
                        .unwrap_or_else(|| "no reason given".into());
                    return Err(AcmeError::Challenge {
                        domain: domain.to_string(),
                        why,
                    });
                }
            }
            if started.elapsed() > POLL_DEADLINE {
                return Err(AcmeError::Stuck {
                    url: authz_url.to_string(),
                    state: authz.status,
                });
            }
            tokio::time::sleep(retry_after(&r)).await;
        }
    }

    async fn poll_order(
        &mut self,
        url: &str,
        waiting: &[&str],
        want: &str,
    ) -> Result<Order, AcmeError> {
        let started = Instant::now();
        loop {
            let r = self.post(url, None).await?;
            let order: Order = self.parse(url, &r)?;
            if order.status == want {
                return Ok(order);
            }
            if !waiting.contains(&order.status.as_str()) {
                return Err(AcmeError::OrderFailed {
                    url: url.to_string(),
                    state: order.status,
                    why: describe(&order.error),
                });
            }
            if started.elapsed() > POLL_DEADLINE {
                return Err(AcmeError::Stuck {
                    url: url.to_string(),
                    state: order.status,
                });
            }
            tokio::time::sleep(retry_after(&r)).await;
        }
    }
}

struct Published<'a> {
    responder: &'a dyn Responder,
    token: String,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.responder.withdraw(&self.token);
    }
}

/// `Retry-After` in seconds, kept between 0.2 s and 10 s.
fn retry_after(r: &Reply) -> Duration {
    r.header("retry-after")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(500), |s| {
            Duration::from_secs(s).clamp(Duration::from_millis(200), Duration::from_secs(10))
        })
}
