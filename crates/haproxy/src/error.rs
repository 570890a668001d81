//! Typed errors, each saying what is wrong and what to do, and
//! `classify`, which recognises HAProxy's refusals in a command's answer.
//!
//! HAProxy answers every command with text, success or not (there is no
//! status code). The sentences matched here are the ones HAProxy 2.4–2.6
//! print; anything unrecognised becomes [`Error::Rejected`] with the text.

use std::io;
use std::time::Duration;

use crate::stat::Version;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "HAProxy's stats socket {path} does not exist: is HAProxy running, and does \
         the global section of haproxy.cfg have `stats socket {path} mode 600 level admin`?"
    )]
    SocketMissing { path: String },

    #[error(
        "cannot open HAProxy's stats socket {path}: permission denied (connecting needs \
         write permission on the socket file); run handoff as the socket's owner, or give \
         its group access with `stats socket {path} mode 660 group GROUP level admin`"
    )]
    PermissionDenied { path: String },

    #[error(
        "nothing listens on HAProxy's stats socket {addr} (connection refused; a stale \
         socket file?): is HAProxy running with `{config_line}`?"
    )]
    NotListening { addr: String, config_line: String },

    #[error("talking to HAProxy at {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "HAProxy at {addr} did not answer `{command}` within {after:?}: is the process \
         overloaded or stopped?"
    )]
    Timeout {
        addr: String,
        command: String,
        after: Duration,
    },

    #[error(
        "HAProxy's stats socket {addr} is at level `{level}`, and handoff needs level admin \
         to add, drain and remove servers: in the global section of haproxy.cfg use \
         `{config_line}` and reload HAProxy"
    )]
    NotAdmin {
        addr: String,
        level: String,
        config_line: String,
    },

    #[error(
        "HAProxy has no backend `{backend}`: check `backend` in handoff's config against \
         the `backend` sections of haproxy.cfg (`show backend` on the socket lists them)"
    )]
    BackendUnknown { backend: String },

    #[error("backend `{backend}` of HAProxy has no server `{server}`")]
    ServerUnknown { backend: String, server: String },

    #[error(
        "backend `{backend}` of HAProxy already has a server `{server}`: remove it first \
         (`set server {backend}/{server} state maint` then `del server {backend}/{server}`) \
         or use another name"
    )]
    ServerExists { backend: String, server: String },

    #[error(
        "backend `{backend}` uses a static load-balancing algorithm, and HAProxy only adds \
         servers at run time to a dynamic one (\"Backend must use a dynamic load balancing \
         to support dynamic servers.\"): use `balance roundrobin`, `leastconn` or `random`, \
         or `hash-type consistent` with a hash-based balance, instead of `static-rr` or a \
         map-based hash, and reload HAProxy"
    )]
    StaticBalance { backend: String },

    #[error(
        "HAProxy {version} is too old: handoff needs {need} or later to add and delete \
         servers at run time (`add server` and `del server`); upgrade HAProxy (2.6 or \
         later recommended)"
    )]
    TooOld { version: String, need: &'static str },

    #[error(
        "HAProxy {version} refuses `{command}` outside experimental mode (runtime servers \
         were experimental before 2.6), even with `experimental-mode on`: upgrade to \
         HAProxy 2.6 or later"
    )]
    Experimental { version: String, command: String },

    #[error(
        "server {backend}/{server} still has connections attached, so HAProxy will not \
         delete it: wait for them to finish (its `scur` in `show stat`) or cut them with \
         `shutdown sessions server {backend}/{server}`"
    )]
    StillHasConnections { backend: String, server: String },

    #[error(
        "server {backend}/{server} is not in maintenance, and HAProxy only deletes servers \
         in maintenance: drain it, then `set server {backend}/{server} state maint`"
    )]
    NotInMaintenance { backend: String, server: String },

    #[error(
        "server {backend}/{server} is not handoff's (its name does not start with \
         `{prefix}`), so handoff leaves it alone"
    )]
    NotOurs {
        backend: String,
        server: String,
        prefix: String,
    },

    #[error(
        "server {backend}/{server} did not come UP within {waited:?}: it is `{status}`\
         {check}; is the instance listening on the address HAProxy checks?"
    )]
    NotUp {
        backend: String,
        server: String,
        status: String,
        /// ", last check L4CON (Connection refused)" or empty.
        check: String,
        waited: Duration,
    },

    #[error("invalid {what} `{value}`: {why}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        why: &'static str,
    },

    #[error("HAProxy refused `{command}`: {answer}")]
    Rejected { command: String, answer: String },

    #[error("unexpected answer from HAProxy to `{command}`: {why}: {answer:?}")]
    BadAnswer {
        command: String,
        why: &'static str,
        answer: String,
    },
}

/// What a command acts on, so that a refusal can name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub backend: &'a str,
    pub server: Option<&'a str>,
}

/// Context for [`classify`].
pub(crate) struct Ctx<'a> {
    pub addr: &'a str,
    pub config_line: &'a str,
    pub command: &'a str,
    pub target: Option<Target<'a>>,
    pub version: Option<&'a Version>,
}

/// Maps a refusal HAProxy printed anywhere in `answer` to its [`Error`]; Ok
/// with the answer otherwise. Several commands joined with `;` print their
/// answers one after the other, so this looks at every line.
pub(crate) fn classify(answer: String, ctx: &Ctx<'_>) -> Result<String, Error> {
    let backend = || {
        ctx.target
            .map(|t| t.backend.to_string())
            .unwrap_or_default()
    };
    let server = || {
        ctx.target
            .and_then(|t| t.server)
            .unwrap_or_default()
            .to_string()
    };
    for line in answer.lines().map(str::trim) {
        let err = if line == "Permission denied" {
            Error::NotAdmin {
                addr: ctx.addr.to_string(),
                level: "operator or user".to_string(),
                config_line: ctx.config_line.to_string(),
            }
        } else if line == "No such backend." || line == "No such proxy." {
            Error::BackendUnknown { backend: backend() }
        } else if line == "No such server." {
            Error::ServerUnknown {
                backend: backend(),
                server: server(),
            }
        } else if line.starts_with("Backend must use a dynamic load balancing") {
            Error::StaticBalance { backend: backend() }
        } else if line.starts_with("Already exists a server with the same name") {
            Error::ServerExists {
                backend: backend(),
                server: server(),
            }
        } else if line.starts_with("Only servers in maintenance mode can be deleted") {
            Error::NotInMaintenance {
                backend: backend(),
                server: server(),
            }
        } else if line.starts_with("Server still has connections attached") {
            Error::StillHasConnections {
                backend: backend(),
                server: server(),
            }
        } else if line.contains("restricted to experimental mode") {
            Error::Experimental {
                version: ctx.version.map(|v| v.to_string()).unwrap_or_default(),
                command: ctx.command.to_string(),
            }
        } else if line.starts_with("Unknown command") {
            match ctx.version {
                Some(v) if !v.at_least(2, 4) => Error::TooOld {
                    version: v.to_string(),
                    need: "2.4",
                },
                _ => Error::Rejected {
                    command: ctx.command.to_string(),
                    answer: line.to_string(),
                },
            }
        } else {
            continue;
        };
        return Err(err);
    }
    Ok(answer)
}

/// The answer of a command that prints nothing when it succeeds (`set
/// server`, `enable health`, …): any text left after [`classify`] is a
/// refusal it does not know.
pub(crate) fn expect_silent(answer: String, command: &str) -> Result<(), Error> {
    let text = answer.trim();
    if text.is_empty() {
        Ok(())
    } else {
        Err(Error::Rejected {
            command: command.to_string(),
            answer: text.to_string(),
        })
    }
}

/// The answer of a command that must print `expected` (`New server
/// registered.`, `Server deleted.`).
pub(crate) fn expect_line(answer: String, command: &str, expected: &str) -> Result<(), Error> {
    if answer.lines().any(|l| l.trim() == expected) {
        Ok(())
    } else {
        Err(Error::Rejected {
            command: command.to_string(),
            answer: answer.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(version: Option<&'a Version>) -> Ctx<'a> {
        Ctx {
            addr: "/run/h.sock",
            config_line: "stats socket /run/h.sock mode 600 level admin",
            command: "add server web/handoff-a 127.0.0.1:1",
            target: Some(Target {
                backend: "web",
                server: Some("handoff-a"),
            }),
            version,
        }
    }

    fn err(answer: &str) -> Error {
        classify(answer.to_string(), &ctx(None)).unwrap_err()
    }

    // The answers below are copied from HAProxy 2.6.12.
    #[test]
    fn refusals_become_typed_errors() {
        assert!(matches!(
            err("Permission denied\n\n"),
            Error::NotAdmin { .. }
        ));
        assert!(
            matches!(err("No such backend.\n"), Error::BackendUnknown { backend } if backend == "web")
        );
        assert!(matches!(
            err("No such proxy.\n\n"),
            Error::BackendUnknown { .. }
        ));
        assert!(matches!(
            err("No such server.\n\n"),
            Error::ServerUnknown { server, .. } if server == "handoff-a"
        ));
        assert!(matches!(
            err("Backend must use a dynamic load balancing to support dynamic servers.\n"),
            Error::StaticBalance { .. }
        ));
        assert!(matches!(
            err("Already exists a server with the same name in backend.\n\n"),
            Error::ServerExists { .. }
        ));
        assert!(matches!(
            err("Only servers in maintenance mode can be deleted.\n"),
            Error::NotInMaintenance { .. }
        ));
        assert!(matches!(
            err("Server still has connections attached to it, cannot remove it.\n"),
            Error::StillHasConnections { .. }
        ));
        assert!(matches!(
            err("This command is restricted to experimental mode only.\n"),
            Error::Experimental { .. }
        ));
        // Joined commands: the refusal may come after another answer.
        assert!(matches!(
            err("\nNo such server.\n"),
            Error::ServerUnknown { .. }
        ));
    }

    #[test]
    fn unknown_command_is_too_old_only_on_old_versions() {
        let old: Version = "2.2.9".parse().unwrap();
        let new: Version = "2.6.12-1+deb12u4".parse().unwrap();
        let answer =
            "Unknown command, but maybe one of the following ones is a better match:\n  x\n";
        assert!(matches!(
            classify(answer.to_string(), &ctx(Some(&old))),
            Err(Error::TooOld { need: "2.4", .. })
        ));
        assert!(matches!(
            classify(answer.to_string(), &ctx(Some(&new))),
            Err(Error::Rejected { .. })
        ));
    }

    #[test]
    fn success_answers_pass_through() {
        assert_eq!(classify("\n".into(), &ctx(None)).unwrap(), "\n");
        expect_silent("\n".into(), "set server").unwrap();
        assert!(matches!(
            expect_silent("Absolute weight can only be between 0 and 256 inclusive.\n\n".into(), "x"),
            Err(Error::Rejected { answer, .. }) if answer.starts_with("Absolute weight")
        ));
        expect_line(
            "New server registered.\n\n".into(),
            "add",
            "New server registered.",
        )
        .unwrap();
        expect_line("\nServer deleted.\n".into(), "del", "Server deleted.").unwrap();
        assert!(expect_line(
            "unknown keyword 'bogus'.\n\n".into(),
            "add",
            "New server registered."
        )
        .is_err());
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = err("Permission denied\n");
        assert!(
            e.to_string()
                .contains("stats socket /run/h.sock mode 600 level admin"),
            "{e}"
        );
        let e = err("Backend must use a dynamic load balancing to support dynamic servers.\n");
        assert!(e.to_string().contains("balance roundrobin"), "{e}");
    }
}
