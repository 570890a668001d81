//! Stage one: the file as serde sees it.
//!
//! Every field is optional and every value is taken as written: a [`Leaf`]
//! or [`Table`] of the wrong type keeps what was found instead of stopping
//! the reading, so that stage two ([`super::validate`]) reports it with its
//! key path beside every other problem. Leaves that carry units (durations,
//! amounts) are kept as strings for the same reason. Unknown keys are
//! collected by `serde_ignored` (see `super::load`) rather than
//! `#[serde(deny_unknown_fields)]`, because the derive stops at the first
//! unknown key and we promise the user the whole list.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A value as written: of the expected type, or what was found instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf<T> {
    Ok(T),
    Wrong(toml::Value),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Leaf<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Value::deserialize(d)?;
        Ok(T::deserialize(v.clone()).map_or(Leaf::Wrong(v), Leaf::Ok))
    }
}

/// A table as written: read field by field (so `serde_ignored` still sees
/// its unknown keys), or the non-table value found instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Table<T> {
    Ok(T),
    Wrong(toml::Value),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TableVisitor(PhantomData))
    }
}

struct TableVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = Table<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table::Ok)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Table<T>, A::Error> {
        let v = toml::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Table::Wrong(v))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Table<T>, E> {
        Ok(Table::Wrong(toml::Value::Boolean(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Table<T>, E> {
        Ok(Table::Wrong(toml::Value::Integer(n)))
    }

    fn visit_f64<E>(self, x: f64) -> Result<Table<T>, E> {
        Ok(Table::Wrong(toml::Value::Float(x)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Table<T>, E> {
        Ok(Table::Wrong(toml::Value::String(s.to_string())))
    }
}

/// What a value of type `T` is called in "expected …" messages.
pub trait Expected {
    const EXPECTED: &'static str;
}

macro_rules! expected {
    ($($t:ty => $e:literal),* $(,)?) => {
        $(impl Expected for $t { const EXPECTED: &'static str = $e; })*
    };
}

expected! {
    String => "a string",
    i64 => "an integer",
    f64 => "a number",
    bool => "true or false",
    Vec<String> => "an array of strings",
    Vec<i64> => "an array of integers",
    CountOrText => "a count or a percentage, e.g. 2 or \"50%\"",
}

/// `expected a string, found integer 1; write it in quotes: "1"`.
pub fn wrong_type(expected: &str, v: &toml::Value) -> String {
    let mut m = format!("expected {expected}, found {}", found(v));
    match v {
        toml::Value::String(s) if expected == "an integer" && s.trim().parse::<i64>().is_ok() => {
            m.push_str(&format!("; write {} without quotes", s.trim()));
        }
        toml::Value::String(s)
            if expected == "true or false" && ["true", "false"].contains(&s.trim()) =>
        {
            m.push_str(&format!("; write {} without quotes", s.trim()));
        }
        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)
            if expected == "a string" =>
        {
            m.push_str(&format!("; write it in quotes: \"{v}\""));
        }
        _ => {}
    }
    m
}

/// `integer 1`, `string "4"`: what a wrong value is, shortly.
pub fn found(v: &toml::Value) -> String {
    let mut shown = match v {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(n) => format!("integer {n}"),
        toml::Value::Float(x) => format!("number {x}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("date {d}"),
        toml::Value::Array(a) => format!("array {}", toml::Value::Array(a.clone())),
        toml::Value::Table(_) => "a table".to_string(),
    };
    if shown.chars().count() > 60 {
        shown = shown.chars().take(57).collect::<String>() + "...";
    }
    shown
}

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub server: Option<Table<RawServer>>,
    pub services: Option<Table<BTreeMap<String, Table<RawService>>>>,
    pub hosts: Option<Table<BTreeMap<String, Table<RawHost>>>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHost {
    pub address: Option<Leaf<String>>,
    pub identity: Option<Leaf<String>>,
    pub known_hosts: Option<Leaf<String>>,
    pub dir: Option<Leaf<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub admin: Option<Leaf<String>>,
    pub state_dir: Option<Leaf<String>>,
    pub workers: Option<Leaf<i64>>,
    pub shutdown_timeout: Option<Leaf<String>>,
    pub port_range: Option<Leaf<String>>,
    pub releases_kept: Option<Leaf<i64>>,
    pub token: Option<Leaf<String>>,
    pub acme: Option<Table<RawAcme>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAcme {
    pub directory: Option<Leaf<String>>,
    pub email: Option<Leaf<String>>,
    pub ca: Option<Leaf<String>>,
    pub http_listen: Option<Leaf<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawService {
    pub listen: Option<Leaf<String>>,
    pub domains: Option<Leaf<Vec<String>>>,
    pub path_prefix: Option<Leaf<String>>,
    pub targets: Option<Leaf<Vec<String>>>,
    pub revision: Option<Leaf<String>>,
    pub instances: Option<Leaf<i64>>,
    pub command: Option<Leaf<String>>,
    pub artifact: Option<Leaf<String>>,
    pub strategy: Option<Leaf<String>>,
    pub stop_grace: Option<Leaf<String>>,
    pub hosts: Option<Leaf<Vec<String>>>,
    pub instances_per_host: Option<Leaf<i64>>,
    pub on_host_failure: Option<Leaf<String>>,
    pub health: Option<Table<RawHealth>>,
    pub drain: Option<Table<RawDrain>>,
    pub proxy: Option<Table<RawProxy>>,
    pub in_place: Option<Table<RawInPlace>>,
    pub blue_green: Option<Table<RawBlueGreen>>,
    pub hooks: Option<Table<RawHooks>>,
    pub rollback: Option<Table<RawRollback>>,
    pub balancer: Option<Table<RawBalancer>>,
    pub tls: Option<Table<RawTls>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    pub cert: Option<Leaf<String>>,
    pub key: Option<Leaf<String>>,
    pub hsts: Option<Leaf<bool>>,
    pub acme: Option<Leaf<bool>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBalancer {
    pub kind: Option<Leaf<String>>,
    pub socket: Option<Leaf<String>>,
    pub backend: Option<Leaf<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHealth {
    pub enabled: Option<Leaf<bool>>,
    pub path: Option<Leaf<String>>,
    pub interval: Option<Leaf<String>>,
    pub timeout: Option<Leaf<String>>,
    pub healthy_threshold: Option<Leaf<i64>>,
    pub unhealthy_threshold: Option<Leaf<i64>>,
    pub min_healthy_time: Option<Leaf<String>>,
    pub healthy_deadline: Option<Leaf<String>>,
    pub passive_failures: Option<Leaf<i64>>,
    pub ejection_time: Option<Leaf<String>>,
    pub max_ejection_time: Option<Leaf<String>>,
    pub max_ejection_percent: Option<Leaf<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDrain {
    pub timeout: Option<Leaf<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProxy {
    pub balance: Option<Leaf<String>>,
    pub connect_timeout: Option<Leaf<String>>,
    pub response_timeout: Option<Leaf<String>>,
    pub header_timeout: Option<Leaf<String>>,
    pub idle_timeout: Option<Leaf<String>>,
    pub max_header_bytes: Option<Leaf<i64>>,
    pub upstream_tls: Option<Leaf<bool>>,
    pub upstream_ca: Option<Leaf<String>>,
    pub upstream_name: Option<Leaf<String>>,
    pub fast_path: Option<Leaf<bool>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawInPlace {
    pub batch: Option<Leaf<CountOrText>>,
    pub min_healthy: Option<Leaf<CountOrText>>,
    pub headroom: Option<Leaf<String>>,
    pub instance_capacity: Option<Leaf<i64>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBlueGreen {
    pub traffic_steps: Option<Leaf<Vec<i64>>>,
    pub bake: Option<Leaf<String>>,
    pub retention: Option<Leaf<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHooks {
    pub timeout: Option<Leaf<String>>,
    pub before_install: Option<Leaf<String>>,
    pub after_install: Option<Leaf<String>>,
    pub application_start: Option<Leaf<String>>,
    pub validate_service: Option<Leaf<String>>,
    pub before_allow_traffic: Option<Leaf<String>>,
    pub after_allow_traffic: Option<Leaf<String>>,
    pub migrate_expand: Option<Leaf<String>>,
    pub migrate_contract: Option<Leaf<String>>,
    pub once_host: Option<Leaf<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRollback {
    pub max_error_rate_increase: Option<Leaf<f64>>,
    pub max_p99_ratio: Option<Leaf<f64>>,
    pub min_requests: Option<Leaf<i64>>,
}

/// `batch = 1` and `batch = "50%"` are both natural to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CountOrText {
    Count(i64),
    Text(String),
}

/// The keys each table accepts, for "did you mean" hints on unknown keys.
pub fn known_keys(table: &[&str]) -> &'static [&'static str] {
    match table {
        [] => &["server", "services", "hosts"],
        ["hosts", _] => &["address", "identity", "known_hosts", "dir"],
        ["server"] => &[
            "admin",
            "state_dir",
            "workers",
            "shutdown_timeout",
            "port_range",
            "releases_kept",
            "token",
            "acme",
        ],
        ["server", "acme"] => &["directory", "email", "ca", "http_listen"],
        ["services", _] => &[
            "listen",
            "domains",
            "path_prefix",
            "targets",
            "revision",
            "instances",
            "command",
            "artifact",
            "strategy",
            "stop_grace",
            "hosts",
            "instances_per_host",
            "on_host_failure",
            "health",
            "drain",
            "proxy",
            "in_place",
            "blue_green",
            "hooks",
            "rollback",
            "balancer",
            "tls",
        ],
        ["services", _, "balancer"] => &["kind", "socket", "backend"],
        ["services", _, "tls"] => &["cert", "key", "hsts", "acme"],
        ["services", _, "health"] => &[
            "enabled",
            "path",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
            "min_healthy_time",
            "healthy_deadline",
            "passive_failures",
            "ejection_time",
            "max_ejection_time",
            "max_ejection_percent",
        ],
        ["services", _, "drain"] => &["timeout"],
        ["services", _, "proxy"] => &[
            "balance",
            "connect_timeout",
            "response_timeout",
            "header_timeout",
            "idle_timeout",
            "max_header_bytes",
            "upstream_tls",
            "upstream_ca",
            "upstream_name",
            "fast_path",
        ],
        ["services", _, "in_place"] => &["batch", "min_healthy", "headroom", "instance_capacity"],
        ["services", _, "blue_green"] => &["traffic_steps", "bake", "retention"],
        ["services", _, "hooks"] => &[
            "timeout",
            "before_install",
            "after_install",
            "application_start",
            "validate_service",
            "before_allow_traffic",
            "after_allow_traffic",
            "migrate_expand",
            "migrate_contract",
            "once_host",
        ],
        ["services", _, "rollback"] => {
            &["max_error_rate_increase", "max_p99_ratio", "min_requests"]
        }
        _ => &[],
    }
}
