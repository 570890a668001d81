//! handoff-haproxy: a client of HAProxy's runtime API (the "stats socket"),
//! for deploying behind a user's existing HAProxy (issue #15).
//!
//! What this crate owns: the text protocol and nothing above it. It opens the
//! socket, sends one command line per connection, reads the answer to EOF,
//! turns HAProxy's error sentences into typed [`Error`]s that say what to do,
//! and parses `show stat` CSV into [`ServerStat`]s. It does not know about
//! services, revisions or plans; the controller's balancer layer decides
//! *which* server to add, weigh or drain, and calls this crate to do it.
//!
//! How data flows:
//! - [`Client::connect_check`] opens the [`Socket`] (a unix path or
//!   `host:port`), runs `show info` for the [`Version`] (too old is an error)
//!   and `show cli level` (anything but `admin` is [`Error::NotAdmin`]).
//! - Every operation is one exchange in [`conn`]: connect, write `LINE\n`,
//!   read until HAProxy closes (non-prompt mode answers one line and hangs
//!   up). The answer goes through `error::classify`, which maps the known
//!   refusals ("No such backend.", "Permission denied", "Backend must use a
//!   dynamic load balancing…", …) to [`Error`] variants; whatever is left is
//!   the command's output.
//! - The sequences measured on HAProxy 2.6 (`../shared/HOSTS.md` §4) are
//!   methods of [`Client`]: [`Client::add_server`] (`add server` →
//!   `enable health` → `state ready`), [`Client::set_state`],
//!   [`Client::set_weight`], [`Client::del_server`], and the polling ones,
//!   [`Client::wait_up`] and [`Client::drain_and_delete`] (drain → `scur` 0 →
//!   maint → del), which read [`Client::servers`] (`show stat`, parsed by the
//!   header's column names in [`stat`]).
//! - Ownership: handoff names its servers with a prefix ([`Ownership`]);
//!   a client made [`Client::owned_by`] refuses to change any other server,
//!   so a server the user added by hand is never touched.
//!
//! Every name and address is checked before it is put on a command line
//! (no spaces, `;`, `#` or newlines), since `;` separates commands.

pub mod conn;
pub mod error;
pub mod stat;

mod client;

pub use client::{AddOptions, Client, DrainReport, State};
pub use error::Error;
pub use stat::{ServerStat, Status, Version};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where HAProxy's runtime API listens: a unix socket (the usual
/// `/run/haproxy/admin.sock`) or a TCP `host:port` (`stats socket
/// ipv4@127.0.0.1:9999 level admin`; no authentication, keep it local).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Socket {
    type Err = Error;

    /// A value with a `/`, or without a `:`, is a unix socket path; `host:port`
    /// is TCP. HAProxy's own prefixes are accepted too: `unix@PATH`,
    /// `ipv4@HOST:PORT`, `ipv6@HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::InvalidArgument {
                what: "socket",
                value: s.to_string(),
                why: "give a unix socket path or host:port",
            });
        }
        if let Some(path) = s.strip_prefix("unix@") {
            return Ok(Socket::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("ipv4@") {
            return Ok(Socket::Tcp(addr.to_string()));
        }
        if let Some(addr) = s.strip_prefix("ipv6@") {
            // `::1:9999` → `[::1]:9999`, which tokio can resolve.
            return Ok(Socket::Tcp(match addr.rsplit_once(':') {
                Some((host, port)) if !host.starts_with('[') => format!("[{host}]:{port}"),
                _ => addr.to_string(),
            }));
        }
        let tcp = !s.contains('/')
            && s.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        Ok(if tcp {
            Socket::Tcp(s.to_string())
        } else {
            Socket::Unix(PathBuf::from(s))
        })
    }
}

impl fmt::Display for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socket::Unix(path) => write!(f, "{}", path.display()),
            Socket::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl Socket {
    /// The `stats socket` line that gives this address admin level, for error
    /// messages.
    pub fn admin_config_line(&self) -> String {
        match self {
            Socket::Unix(path) => {
                format!("stats socket {} mode 600 level admin", path.display())
            }
            Socket::Tcp(addr) => format!("stats socket ipv4@{addr} level admin"),
        }
    }
}

/// Which servers of a backend are handoff's: those whose name starts with a
/// prefix (default `handoff-`). Everything else belongs to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    prefix: String,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership {
            prefix: "handoff-".to_string(),
        }
    }
}

impl Ownership {
    /// A prefix of HAProxy identifier characters (`A-Z a-z 0-9 - _ . :`),
    /// not empty.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        check_ident("server name prefix", prefix)?;
        Ok(Ownership {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether handoff may change this server.
    pub fn is_ours(&self, name: &str) -> bool {
        name.len() > self.prefix.len() && name.starts_with(&self.prefix)
    }

    /// The server name for `suffix` (e.g. `web-3-v2` → `handoff-web-3-v2`).
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

/// Checks a backend or server name: HAProxy identifiers are made of
/// `A-Z a-z 0-9 - _ . :`, and anything else could split the command line.
pub(crate) fn check_ident(what: &'static str, value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what,
            value: value.to_string(),
            why: "HAProxy names use only A-Z a-z 0-9 - _ . :",
        })
    }
}

/// Checks a free-form word put on a command line (an extra `add server`
/// keyword or value): printable ASCII without spaces, `;`, `#`, quotes or
/// backslashes.
pub(crate) fn check_word(what: &'static str, value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'#' | b'"' | b'\'' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what,
            value: value.to_string(),
            why: "one word of printable ASCII, without ; # quotes or backslashes",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_parses_paths_and_addresses() {
        let unix = |p: &str| Socket::Unix(PathBuf::from(p));
        let tcp = |a: &str| Socket::Tcp(a.to_string());
        assert_eq!(
            "/run/haproxy/admin.sock".parse::<Socket>().unwrap(),
            unix("/run/haproxy/admin.sock")
        );
        assert_eq!("admin.sock".parse::<Socket>().unwrap(), unix("admin.sock"));
        assert_eq!("./a:1".parse::<Socket>().unwrap(), unix("./a:1"));
        assert_eq!("unix@/tmp/x".parse::<Socket>().unwrap(), unix("/tmp/x"));
        assert_eq!(
            "127.0.0.1:9999".parse::<Socket>().unwrap(),
            tcp("127.0.0.1:9999")
        );
        assert_eq!("lb1:9999".parse::<Socket>().unwrap(), tcp("lb1:9999"));
        assert_eq!(
            "ipv4@10.0.0.1:9999".parse::<Socket>().unwrap(),
            tcp("10.0.0.1:9999")
        );
        assert_eq!(
            "ipv6@::1:9999".parse::<Socket>().unwrap(),
            tcp("[::1]:9999")
        );
        assert_eq!("[::1]:9999".parse::<Socket>().unwrap(), tcp("[::1]:9999"));
        assert!("".parse::<Socket>().is_err());
        assert_eq!(
            unix("/run/h.sock").admin_config_line(),
            "stats socket /run/h.sock mode 600 level admin"
        );
    }

    #[test]
    fn ownership_by_prefix() {
        let own = Ownership::default();
        assert!(own.is_ours("handoff-web-1"));
        assert!(!own.is_ours("handoff-"));
        assert!(!own.is_ours("web1"));
        assert!(!own.is_ours("Handoff-web-1"));
        assert_eq!(own.name("web-1"), "handoff-web-1");
        assert!(Ownership::new("hd_").is_ok());
        assert!(Ownership::new("").is_err());
        assert!(Ownership::new("a b").is_err());
    }

    #[test]
    fn names_and_words_cannot_split_a_command() {
        assert!(check_ident("server", "handoff-web-1.v2:a_b").is_ok());
        for bad in ["", "a b", "a;b", "a\nb", "a/b", "a#b", "é"] {
            assert!(check_ident("server", bad).is_err(), "{bad:?}");
        }
        assert!(check_word("arg", "slowstart").is_ok());
        assert!(check_word("arg", "10s").is_ok());
        for bad in ["", "a b", "x;del", "a\n", "'q'", "a\\b", "#c"] {
            assert!(check_word("arg", bad).is_err(), "{bad:?}");
        }
    }
}
