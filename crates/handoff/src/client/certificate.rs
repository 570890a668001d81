//! `handoff certificate renew SERVICE`: ask for a new ACME certificate
//! now and follow it until it is served or the attempt fails.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use handoff_api::types::{AcmeView, ServiceView};

use super::{clock_date, Client};

fn acme_of(c: &Client, service: &str) -> anyhow::Result<(ServiceView, Option<AcmeView>)> {
    let all: Vec<ServiceView> = c.json("GET", "/services", None)?;
    let s = all
        .into_iter()
        .find(|s| s.name == service)
        .with_context(|| format!("no service '{service}' in the daemon's config"))?;
    let a = s.certificate.as_ref().and_then(|c| c.acme.clone());
    Ok((s, a))
}

/// Exit status: Ok(true) when a new certificate is served.
pub fn renew(c: &Client, service: &str, wait: Duration) -> anyhow::Result<bool> {
    let (_, before) = acme_of(c, service)?;
    let Some(before) = before else {
        bail!("service '{service}' does not get its certificate over ACME (set `acme = true` in [services.{service}.tls] and add [server.acme])");
    };
    c.text(
        "POST",
        &format!("/services/{service}/certificate/renew"),
        None,
    )?;
    println!("renewing the certificate of service {service} over ACME...");
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let (s, now) = acme_of(c, service)?;
        let Some(now) = now else {
            bail!("service '{service}' no longer uses ACME (the config was reloaded)");
        };
        if now.issued > before.issued && now.state == "valid" {
            if let Some(cert) = &s.certificate {
                println!(
                    "renewed: {} now presents a certificate for {}, expiring {} (took {:.1}s)",
                    service,
                    cert.names.join(", "),
                    clock_date(cert.not_after_ms),
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(true);
        }
        if now.failures > before.failures && now.state == "failed" {
            println!(
                "FAILED: {}; the current certificate stays in use",
                now.error.as_deref().unwrap_or("no reason given")
            );
            return Ok(false);
        }
        if started.elapsed() > wait {
            println!(
                "still {} after {}s; follow it with `handoff status {service}`",
                now.state,
                wait.as_secs()
            );
            return Ok(false);
        }
    }
}

/// The `acme:` part of a status line.
pub fn describe(a: &AcmeView) -> String {
    match a.state.as_str() {
        "pending" => {
            "acme: pending, a self-signed stand-in is served until the CA's certificate arrives"
                .into()
        }
        "ordering" => "acme: ordering a certificate now".into(),
        "failed" => format!(
            "acme: FAILED {} time(s): {}{}",
            a.failures,
            a.error.as_deref().unwrap_or("no reason given"),
            a.next_attempt_ms
                .map(|t| format!("; next try {}", from_now(t)))
                .unwrap_or_default()
        ),
        _ => format!(
            "acme: valid{}",
            a.renew_at_ms
                .map(|t| format!(", renews {}", from_now(t)))
                .unwrap_or_default()
        ),
    }
}

/// `in 40s`, `in 12m`, `in 5h`, `in 54 days (2027-01-24)`.
fn from_now(ms: i64) -> String {
    let d = (ms - super::now_ms()) / 1000;
    match d {
        ..=0 => "now".into(),
        1..=119 => format!("in {d}s"),
        120..=7199 => format!("in {}m", d / 60),
        7200..=172_799 => format!("in {}h", d / 3600),
        _ => format!("in {} days ({})", d / 86_400, clock_date(ms)),
    }
}
