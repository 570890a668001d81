//! `[hosts.NAME]`: the servers handoff reaches over OpenSSH, and how a
//! service's `hosts` list refers to them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use super::defaults as d;
use super::locate::key_segment;
use super::raw::{self, RawHost, Table};
use super::validate::Ctx;
use super::Host;
use crate::names::{self, NameKind};

/// The hosts of the file: the valid ones by name, and every name declared
/// (so that a service naming a host whose own table has problems is not
/// reported a second time).
pub(super) struct Hosts {
    pub(super) valid: BTreeMap<String, Host>,
    pub(super) declared: BTreeSet<String>,
}

pub(super) fn hosts(cx: &mut Ctx, raw: BTreeMap<String, Table<RawHost>>, base: &Path) -> Hosts {
    let mut out = Hosts {
        valid: BTreeMap::new(),
        declared: raw.keys().cloned().collect(),
    };
    for (name, rh) in raw {
        let at = format!("hosts.{}", key_segment(&name));
        let before = cx.problems.len();
        if let Err(e) = names::check_name(NameKind::Host, &name) {
            cx.err(at.clone(), e.problem());
        }
        let rh = match rh {
            Table::Ok(rh) => rh,
            Table::Wrong(found) => {
                cx.err(at, raw::wrong_type("a table", &found));
                continue;
            }
        };
        let host = host(cx, &name, &at, rh, base);
        if let Some(h) = host.filter(|_| cx.problems.len() == before) {
            out.valid.insert(name, h);
        }
    }
    out
}

fn host(cx: &mut Ctx, name: &str, at: &str, r: RawHost, base: &Path) -> Option<Host> {
    let k = |s: &str| format!("{at}.{s}");
    if r.address.is_none() {
        cx.err(
            at,
            "missing `address`, how ssh reaches the host: [user@]IP[:port], \
             e.g. address = \"root@10.0.0.11\"",
        );
    }
    let address = cx.take(k("address"), &r.address);
    let parsed = address.as_deref().and_then(|a| match parse_address(a) {
        Ok(p) => Some(p),
        Err(m) => {
            cx.err(k("address"), m);
            None
        }
    });
    let ip = parsed
        .as_ref()
        .and_then(|p| match resolve(&p.host, p.port) {
            Ok(ip) => Some(ip),
            Err(m) => {
                cx.err(k("address"), m);
                None
            }
        });
    let identity = cx.take(k("identity"), &r.identity).and_then(|s| {
        let path = file(cx, k("identity"), &s, base)?;
        if !path.exists() {
            cx.err(
                k("identity"),
                format!(
                    "{} does not exist; give the private key ssh should use, or remove \
                     `identity` to use your ssh config and agent",
                    path.display()
                ),
            );
            return None;
        }
        if !path.is_file() {
            cx.err(
                k("identity"),
                format!(
                    "{} is not a file; give the private key file",
                    path.display()
                ),
            );
            return None;
        }
        Some(path)
    });
    let known_hosts = cx
        .take(k("known_hosts"), &r.known_hosts)
        .and_then(|s| file(cx, k("known_hosts"), &s, base));
    let dir = match cx.take(k("dir"), &r.dir) {
        None => PathBuf::from(d::HOST_DIR),
        Some(s) if s.starts_with('/') && !s.chars().any(char::is_control) => PathBuf::from(s),
        Some(s) => {
            cx.err(
                k("dir"),
                format!(
                    "'{}' must be an absolute path on the host, e.g. \"{}\"",
                    s.escape_debug(),
                    d::HOST_DIR
                ),
            );
            PathBuf::from(d::HOST_DIR)
        }
    };
    let p = parsed?;
    Some(Host {
        name: name.to_string(),
        address: address?,
        user: p.user,
        hostname: p.host,
        port: p.port,
        ip: ip?,
        identity,
        known_hosts,
        dir,
    })
}

/// A local file named in a host table, resolved against the config
/// file's directory.
fn file(cx: &mut Ctx, key: String, s: &str, base: &Path) -> Option<PathBuf> {
    if s.trim().is_empty() {
        cx.err(key, "is empty; give a file path or remove the key");
        return None;
    }
    if s == "~" || s.starts_with("~/") {
        cx.err(
            key,
            format!("'{s}': '~' is not expanded here; write the full path"),
        );
        return None;
    }
    Some(base.join(s))
}

/// `[user@]host[:port]`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Address {
    pub(super) user: Option<String>,
    /// As written, without the brackets of an IPv6 address.
    pub(super) host: String,
    pub(super) port: u16,
}

const ADDRESS_FORM: &str =
    "write [user@]IP[:port], e.g. \"root@10.0.0.11\" or \"root@[fd00::1]:2222\"";

/// Parses a host's `address`: `[user@]host[:port]`, an IPv6 address in
/// brackets. Each value reaches `ssh` as an argument, so a user or host
/// that could pass for an option (a leading `-`) or hold a space is refused.
pub(super) fn parse_address(s: &str) -> Result<Address, String> {
    if s.trim().is_empty() {
        return Err(format!("is empty; {ADDRESS_FORM}"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "'{}' holds {}; {ADDRESS_FORM}",
            s.escape_debug(),
            if c == ' ' {
                "a space".to_string()
            } else {
                format!("'{}'", c.escape_default())
            }
        ));
    }
    let (user, rest) = match s.split_once('@') {
        Some((u, rest)) => (Some(u), rest),
        None => (None, s),
    };
    if let Some(u) = user {
        check_user(s, u)?;
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(format!("'{s}' has '[' without ']'; {ADDRESS_FORM}"));
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "'{v6}' in brackets is not an IPv6 address; {ADDRESS_FORM}"
            ));
        }
        let port = match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("'{s}': after ']' only ':PORT' may follow")),
            },
        };
        (v6, port)
    } else if rest.matches(':').count() > 1 {
        return Err(format!(
            "'{rest}': an IPv6 address goes in brackets, e.g. \"root@[{}]:22\"",
            rest.parse::<Ipv6Addr>()
                .map_or("fd00::1".to_string(), |a| a.to_string())
        ));
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => d::SSH_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!(
                    "'{p}' is not a port (1-65535) in '{s}'; {ADDRESS_FORM}"
                ))
            }
        },
    };
    if host.is_empty() {
        return Err(format!("'{s}' has no host; {ADDRESS_FORM}"));
    }
    let name_ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && host.starts_with(|c: char| c.is_ascii_alphanumeric());
    if host.parse::<IpAddr>().is_err() && !name_ok {
        return Err(format!(
            "'{host}' is neither an IP address nor a host name; {ADDRESS_FORM}"
        ));
    }
    Ok(Address {
        user: user.map(str::to_string),
        host: host.to_string(),
        port,
    })
}

fn check_user(s: &str, u: &str) -> Result<(), String> {
    if u.is_empty() {
        return Err(format!(
            "'{s}' has nothing before '@'; give the user or leave out the '@'"
        ));
    }
    let ok = u.len() <= 64
        && u.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        return Err(format!(
            "'{u}' is not a user name: use letters, digits, '.', '_', '-' \
             (first a letter, digit or '_'), at most 64 characters"
        ));
    }
    Ok(())
}

/// The IP instances listen on: the host itself when it is an IP, else its
/// name resolved now (an IPv4 address preferred).
fn resolve(host: &str, port: u16) -> Result<IpAddr, String> {
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let fail = |why: String| {
                format!(
                    "cannot resolve '{host}' ({why}); give the host's IP address, \
                     or make the name resolve on this machine"
                )
            };
            let addrs: Vec<_> = (host, port)
                .to_socket_addrs()
                .map_err(|e| fail(e.to_string()))?
                .map(|a| a.ip())
                .collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| fail("no addresses".into()))?
        }
    };
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "{ip} is not the address of one host; give the IP its instances can listen on"
        ));
    }
    Ok(ip)
}

/// A managed service's `hosts`: not empty, each naming a `[hosts.NAME]`,
/// none twice. True when it is all of that.
pub(super) fn service_hosts(cx: &mut Ctx, service: &str, list: &[String], known: &Hosts) -> bool {
    let key = format!("services.{service}.hosts");
    if list.is_empty() {
        cx.err(
            key,
            "is empty; list the hosts the instances run on, e.g. [\"h1\", \"h2\"], \
             or remove `hosts` to run local processes",
        );
        return false;
    }
    let before = cx.problems.len();
    let mut seen = BTreeSet::new();
    for (i, h) in list.iter().enumerate() {
        let at = format!("{key}.{i}");
        if !seen.insert(h) {
            cx.err(at, format!("'{h}' is listed twice"));
        } else if !known.declared.contains(h) {
            let msg = if known.declared.is_empty() {
                format!(
                    "no host '{h}': this file defines no hosts; add a [hosts.{}] \
                     table with its address",
                    key_segment(h)
                )
            } else {
                let names: Vec<&str> = known.declared.iter().map(String::as_str).collect();
                format!(
                    "no host '{h}'; the hosts defined are {}; add a [hosts.{}] table \
                     or fix the name",
                    names.join(", "),
                    key_segment(h)
                )
            };
            cx.err(at, msg);
        }
    }
    cx.problems.len() == before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(user: Option<&str>, host: &str, port: u16) -> Address {
        Address {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("root@10.0.0.11"),
            Ok(a(Some("root"), "10.0.0.11", 22))
        );
        assert_eq!(
            parse_address("10.0.0.11:2222"),
            Ok(a(None, "10.0.0.11", 2222))
        );
        assert_eq!(
            parse_address("deploy@[fd00::1]:2222"),
            Ok(a(Some("deploy"), "fd00::1", 2222))
        );
        assert_eq!(parse_address("[::1]"), Ok(a(None, "::1", 22)));
        assert_eq!(
            parse_address("ops@web-1.example.com"),
            Ok(a(Some("ops"), "web-1.example.com", 22))
        );
        for (bad, says) in [
            ("", "is empty"),
            ("root@", "has no host"),
            ("@10.0.0.1", "nothing before '@'"),
            ("root@10.0.0.1:", "'' is not a port"),
            ("root@10.0.0.1:0", "'0' is not a port"),
            ("root@10.0.0.1:70000", "'70000' is not a port"),
            ("root@10.0.0.1:ssh", "'ssh' is not a port"),
            (
                "root@fd00::1",
                "goes in brackets, e.g. \"root@[fd00::1]:22\"",
            ),
            ("root@[fd00::1", "without ']'"),
            ("root@[10.0.0.1]", "is not an IPv6 address"),
            ("root@[::1]x", "only ':PORT'"),
            (
                "root@-oProxyCommand=x",
                "neither an IP address nor a host name",
            ),
            ("-oX@10.0.0.1", "is not a user name"),
            ("a@b@10.0.0.1", "neither an IP address nor a host name"),
            ("root@10.0.0.1 x", "a space"),
        ] {
            let e = parse_address(bad).expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ips_are_kept_and_names_resolved() {
        assert_eq!(resolve("10.0.0.11", 22), Ok("10.0.0.11".parse().unwrap()));
        assert!(resolve("localhost", 22).unwrap().is_loopback());
        assert!(resolve("0.0.0.0", 22).is_err());
        let e = resolve("no-such-host.invalid", 22).unwrap_err();
        assert!(
            e.starts_with("cannot resolve 'no-such-host.invalid'"),
            "{e}"
        );
    }
}
