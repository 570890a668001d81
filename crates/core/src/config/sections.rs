//! Validation of a service's sub-tables (`health`, `proxy`, `in_place`,
//! `blue_green.traffic_steps`), one function per table, each adding every
//! problem it finds to the shared context.

use super::defaults as d;
use super::raw::*;
use super::validate::Ctx;
use super::*;

/// `[services.NAME.in_place]`; the floor against the fleet is checked
/// by `check_in_place` once the instance count is known.
pub(super) fn in_place(cx: &mut Ctx, name: &str, ri: &RawInPlace) -> InPlace {
    let k = |key: &str| format!("services.{name}.{key}");
    let batch = match &ri.batch {
        Some(Leaf::Ok(CountOrText::Text(t))) if t.trim() == "auto" => Batch::Auto,
        b => Batch::Amount(cx.amount(k("in_place.batch"), b.as_ref(), d::BATCH)),
    };
    let headroom = match &ri.headroom {
        Some(Leaf::Wrong(toml::Value::Integer(n))) => {
            let msg = format!("needs a percent sign, e.g. \"{n}%\"");
            cx.err(k("in_place.headroom"), msg);
            d::HEADROOM
        }
        h => match cx.take(k("in_place.headroom"), h) {
            None => d::HEADROOM,
            Some(h) => match h.trim().strip_suffix('%').map(|p| p.trim().parse::<u32>()) {
                Some(Ok(p)) if p <= 1000 => p,
                _ => {
                    cx.err(
                        k("in_place.headroom"),
                        format!("'{h}' is not a percentage from 0% to 1000%, e.g. \"30%\""),
                    );
                    d::HEADROOM
                }
            },
        },
    };
    let instance_capacity = ri.instance_capacity.as_ref().map(|_| {
        cx.int_in(
            k("in_place.instance_capacity"),
            &ri.instance_capacity,
            1,
            1,
            u32::MAX.into(),
        ) as u32
    });
    InPlace {
        batch,
        min_healthy: cx.amount(
            k("in_place.min_healthy"),
            ri.min_healthy.as_ref(),
            d::MIN_HEALTHY,
        ),
        headroom,
        instance_capacity,
    }
}

pub(super) fn check_in_place(cx: &mut Ctx, name: &str, ip: &InPlace, n: u32, explicit_floor: bool) {
    let floor = ip.min_healthy.of(n, false);
    let Batch::Amount(amount) = ip.batch else {
        if n <= floor && explicit_floor && n > 1 {
            cx.err(
                format!("services.{name}.in_place.min_healthy"),
                format!("min_healthy {} keeps all {n} instances in service, so no batch could ever go; lower it", ip.min_healthy),
            );
        }
        return;
    };
    let batch = amount.of(n, true).max(1);
    if batch > n {
        cx.err(
            format!("services.{name}.in_place.batch"),
            format!("batch {amount} is larger than the {n} instances"),
        );
    } else if n - batch < floor && explicit_floor {
        cx.err(
            format!("services.{name}.in_place.min_healthy"),
            format!(
                "batch {} of {n} instances leaves {} in service, below min_healthy {} ({floor}); \
                 lower the batch or the floor",
                amount,
                n - batch,
                ip.min_healthy
            ),
        );
    }
}

pub(super) fn health(cx: &mut Ctx, name: &str, r: RawHealth) -> Health {
    let k = |s: &str| format!("services.{name}.health.{s}");
    let path = cx
        .take(k("path"), &r.path)
        .unwrap_or_else(|| d::HEALTH_PATH.to_string());
    if !path.starts_with('/') {
        cx.err(k("path"), format!("'{path}' must start with '/'"));
    }
    let interval = cx.duration(k("interval"), r.interval.as_ref(), d::HEALTH_INTERVAL);
    let timeout = cx.duration(k("timeout"), r.timeout.as_ref(), d::HEALTH_TIMEOUT);
    if interval < Duration::from_millis(10) {
        cx.err(k("interval"), "must be at least 10ms");
    }
    if timeout.is_zero() {
        cx.err(k("timeout"), "must be more than 0s");
    }
    let ejection_time = cx.duration(
        k("ejection_time"),
        r.ejection_time.as_ref(),
        d::EJECTION_TIME,
    );
    let max_ejection_time = cx.duration(
        k("max_ejection_time"),
        r.max_ejection_time.as_ref(),
        d::MAX_EJECTION_TIME,
    );
    if max_ejection_time < ejection_time {
        cx.err(
            k("max_ejection_time"),
            "must not be shorter than ejection_time",
        );
    }
    Health {
        enabled: cx.take(k("enabled"), &r.enabled).unwrap_or(true),
        path,
        interval,
        timeout,
        healthy_threshold: cx.positive(
            k("healthy_threshold"),
            &r.healthy_threshold,
            d::HEALTHY_THRESHOLD,
            100,
        ),
        unhealthy_threshold: cx.positive(
            k("unhealthy_threshold"),
            &r.unhealthy_threshold,
            d::UNHEALTHY_THRESHOLD,
            100,
        ),
        min_healthy_time: cx.duration(
            k("min_healthy_time"),
            r.min_healthy_time.as_ref(),
            d::MIN_HEALTHY_TIME,
        ),
        healthy_deadline: cx.duration(
            k("healthy_deadline"),
            r.healthy_deadline.as_ref(),
            d::HEALTHY_DEADLINE,
        ),
        passive_failures: cx.positive(
            k("passive_failures"),
            &r.passive_failures,
            d::PASSIVE_FAILURES,
            10_000,
        ),
        ejection_time,
        max_ejection_time,
        max_ejection_percent: cx.int_in(
            k("max_ejection_percent"),
            &r.max_ejection_percent,
            d::MAX_EJECTION_PERCENT.into(),
            0,
            100,
        ) as u32,
    }
}

pub(super) fn proxy(cx: &mut Ctx, name: &str, r: RawProxy, base: &Path) -> ProxySettings {
    let k = |s: &str| format!("services.{name}.proxy.{s}");
    let tls = cx.take(k("upstream_tls"), &r.upstream_tls).unwrap_or(false);
    let ca = cx.take(k("upstream_ca"), &r.upstream_ca);
    let sni = cx.take(k("upstream_name"), &r.upstream_name);
    let upstream_tls = if tls {
        let ca = ca.map(|c| base.join(c.trim())).filter(|p| {
            let there = p.is_file();
            if !there {
                cx.err(
                    k("upstream_ca"),
                    format!("{} does not exist; give the PEM root that issued the instances' certificates", p.display()),
                );
            }
            there
        });
        let sni = sni.map(|n| n.trim().to_ascii_lowercase()).filter(|n| {
            let ok = !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !ok {
                cx.err(
                    k("upstream_name"),
                    format!("'{n}' is not a host name; give the name the instances' certificates carry, e.g. \"localhost\""),
                );
            }
            ok
        });
        Some(UpstreamTls { ca, name: sni })
    } else {
        for (key, set) in [
            ("upstream_ca", ca.is_some()),
            ("upstream_name", sni.is_some()),
        ] {
            if set {
                cx.err(
                    k(key),
                    "is for HTTPS to the instances: set `upstream_tls = true` too",
                );
            }
        }
        None
    };
    let balance = match cx.take(k("balance"), &r.balance).as_deref() {
        None | Some("least-outstanding") => Balance::LeastOutstanding,
        Some("round-robin") => Balance::RoundRobin,
        Some(o) => {
            cx.err(
                k("balance"),
                format!("unknown balance '{o}'; use round-robin or least-outstanding"),
            );
            Balance::LeastOutstanding
        }
    };
    let max_header_bytes = cx.int_in(
        k("max_header_bytes"),
        &r.max_header_bytes,
        d::MAX_HEADER_BYTES as i64,
        1024,
        1 << 20,
    ) as usize;
    ProxySettings {
        balance,
        connect_timeout: cx.duration(
            k("connect_timeout"),
            r.connect_timeout.as_ref(),
            d::CONNECT_TIMEOUT,
        ),
        response_timeout: cx.duration(
            k("response_timeout"),
            r.response_timeout.as_ref(),
            d::RESPONSE_TIMEOUT,
        ),
        header_timeout: cx.duration(
            k("header_timeout"),
            r.header_timeout.as_ref(),
            d::HEADER_TIMEOUT,
        ),
        idle_timeout: cx.duration(k("idle_timeout"), r.idle_timeout.as_ref(), d::IDLE_TIMEOUT),
        max_header_bytes,
        upstream_tls,
        fast_path: cx.take(k("fast_path"), &r.fast_path).unwrap_or(true),
    }
}

pub(super) fn traffic_steps(cx: &mut Ctx, name: &str, v: Option<Vec<i64>>) -> Vec<u32> {
    let key = format!("services.{name}.blue_green.traffic_steps");
    let Some(v) = v else {
        return d::TRAFFIC_STEPS.to_vec();
    };
    let mut prev = 0;
    let mut out = Vec::new();
    for s in v {
        if !(1..=100).contains(&s) || s <= prev {
            cx.err(
                key.clone(),
                format!(
                    "steps must rise strictly within 1..=100 (% of traffic on green); {s} does not"
                ),
            );
            return d::TRAFFIC_STEPS.to_vec();
        }
        prev = s;
        out.push(s as u32);
    }
    out
}
