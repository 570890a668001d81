//! [`Client`]: the runtime-API sequences handoff needs, as measured on
//! HAProxy 2.6 (`../shared/HOSTS.md` §4).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::conn::exchange;
use crate::error::{classify, expect_line, expect_silent, Ctx, Target};
use crate::stat::{parse_servers, ServerStat, Version};
use crate::{check_ident, check_word, Error, Ownership, Socket};

/// How long [`Client::drain_and_delete`] keeps retrying `del server` while
/// HAProxy still reports connections after `scur` reached 0 (a response being
/// flushed, a connection being released).
const DEL_GRACE: Duration = Duration::from_secs(2);

/// A server's administrative state (`set server BE/SRV state …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes traffic (subject to its health checks).
    Ready,
    /// No new sessions (persistent ones aside); those in flight finish.
    Drain,
    /// No traffic; the only state from which `del server` works.
    Maint,
}

impl State {
    fn keyword(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Drain => "drain",
            State::Maint => "maint",
        }
    }
}

/// The `add server` settings. Without `check`, HAProxy trusts the server as
/// soon as it is ready (status `no check`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddOptions {
    /// Health-check it (`check`, then `enable health`).
    pub check: bool,
    /// Interval between checks (`inter`, sent in milliseconds).
    pub inter: Option<Duration>,
    /// Consecutive successes to go UP (`rise`) and failures to go DOWN (`fall`).
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// 0–256 (`weight`); HAProxy's default is 1.
    pub weight: Option<u32>,
    /// More `add server` keywords and values, one word each, e.g.
    /// `["slowstart", "10s"]`.
    pub extra: Vec<String>,
}

/// What [`Client::drain_and_delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// From `state drain` until `scur` reached 0 or the timeout.
    pub waited: Duration,
    /// The timeout came first: the sessions left were cut
    /// (`shutdown sessions server`) before the delete.
    pub timed_out: bool,
    /// Sessions (and queued requests) still there at the timeout.
    pub cut: u64,
}

/// A checked connection to HAProxy's runtime API. Cheap to clone; every call
/// opens its own connection, so it may be shared between tasks.
#[derive(Debug, Clone)]
pub struct Client {
    socket: Socket,
    version: Version,
    timeout: Duration,
    poll: Duration,
    ownership: Option<Ownership>,
}

impl Client {
    /// Opens `socket`, reads HAProxy's version (`show info`; before 2.4 is
    /// [`Error::TooOld`]) and checks the socket is at level admin (`show cli
    /// level`; otherwise [`Error::NotAdmin`]).
    pub async fn connect_check(socket: Socket) -> Result<Client, Error> {
        let mut client = Client {
            version: "0.0".parse().expect("a version"),
            socket,
            timeout: Duration::from_secs(5),
            poll: Duration::from_millis(100),
            ownership: None,
        };
        let info = client.run("show info", None).await?;
        client.version = Version::from_show_info(&info).ok_or_else(|| Error::BadAnswer {
            command: "show info".into(),
            why: "no `Version:` line",
            answer: info.chars().take(200).collect(),
        })?;
        if !client.version.at_least(2, 4) {
            return Err(Error::TooOld {
                version: client.version.to_string(),
                need: "2.4",
            });
        }
        let level = client.run("show cli level", None).await?;
        let level = level.trim();
        if level != "admin" {
            return Err(Error::NotAdmin {
                addr: client.socket.to_string(),
                level: level.to_string(),
                config_line: client.socket.admin_config_line(),
            });
        }
        tracing::debug!(socket = %client.socket, version = %client.version, "haproxy runtime API ready");
        Ok(client)
    }

    /// Refuse to change any server that `ownership` does not claim
    /// ([`Error::NotOurs`]); reading stays unrestricted.
    pub fn owned_by(mut self, ownership: Ownership) -> Client {
        self.ownership = Some(ownership);
        self
    }

    /// Deadline of one exchange (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// How often the waiting operations read `show stat` (default 100 ms).
    pub fn with_poll_interval(mut self, poll: Duration) -> Client {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The version `connect_check` read.
    pub fn version(&self) -> &Version {
        &self.version
    }

    pub fn ownership(&self) -> Option<&Ownership> {
        self.ownership.as_ref()
    }

    /// Runs one raw command line and returns its answer, with HAProxy's
    /// known refusals as errors. Bypasses the ownership guard: for
    /// diagnostics, not for changing servers.
    pub async fn command(&self, line: &str) -> Result<String, Error> {
        self.run(line, None).await
    }

    /// Names of all backends (`show backend`).
    pub async fn backends(&self) -> Result<Vec<String>, Error> {
        let answer = self.run("show backend", None).await?;
        Ok(answer
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    }

    pub async fn backend_exists(&self, backend: &str) -> Result<bool, Error> {
        check_ident("backend", backend)?;
        Ok(self.backends().await?.iter().any(|b| b == backend))
    }

    /// The backend's balance algorithm (`show stat BACKEND 2 -1`), when
    /// HAProxy says.
    pub async fn backend_algo(&self, backend: &str) -> Result<Option<String>, Error> {
        check_ident("backend", backend)?;
        let command = format!("show stat {backend} 2 -1");
        let target = Target {
            backend,
            server: None,
        };
        let answer = self.run(&command, Some(target)).await?;
        Ok(crate::stat::parse_backend_algo(&answer, backend))
    }

    /// drain → poll `scur` (and `qcur`) until 0 or `timeout` → maint (at
    /// the timeout, `shutdown sessions server` first). The server stays,
    /// in maintenance; [`Client::delete`] removes it.
    pub async fn drain(
        &self,
        backend: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<DrainReport, Error> {
        let start = Instant::now();
        self.set_state(backend, name, State::Drain).await?;
        let mut report = DrainReport {
            waited: Duration::ZERO,
            timed_out: false,
            cut: 0,
        };
        loop {
            let server = self
                .server(backend, name)
                .await?
                .ok_or_else(|| Error::ServerUnknown {
                    backend: backend.into(),
                    server: name.into(),
                })?;
            let left = server.scur + server.qcur;
            let elapsed = start.elapsed();
            if left == 0 {
                break;
            }
            if elapsed >= timeout {
                report.timed_out = true;
                report.cut = left;
                break;
            }
            tokio::time::sleep(self.poll.min(timeout - elapsed)).await;
        }
        report.waited = start.elapsed();
        self.set_state(backend, name, State::Maint).await?;
        if report.timed_out {
            tracing::warn!(
                backend,
                server = name,
                sessions = report.cut,
                "haproxy: drain timed out, cutting the sessions left"
            );
            self.shutdown_sessions(backend, name).await?;
        }
        Ok(report)
    }

    /// `del server`, retried for a moment while HAProxy still holds
    /// connections to it (idle ones close shortly after maint).
    pub async fn delete(&self, backend: &str, name: &str) -> Result<(), Error> {
        let grace = Instant::now() + DEL_GRACE;
        loop {
            match self.del_server(backend, name).await {
                Ok(()) => return Ok(()),
                Err(Error::StillHasConnections { .. }) if Instant::now() < grace => {
                    tokio::time::sleep(self.poll).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The backend's servers, from `show stat BACKEND 4 -1` (4: servers only).
    pub async fn servers(&self, backend: &str) -> Result<Vec<ServerStat>, Error> {
        check_ident("backend", backend)?;
        let command = format!("show stat {backend} 4 -1");
        let target = Target {
            backend,
            server: None,
        };
        let answer = self.run(&command, Some(target)).await?;
        let servers = parse_servers(&answer).map_err(|why| Error::BadAnswer {
            command: command.clone(),
            why,
            answer: answer.chars().take(200).collect(),
        })?;
        Ok(servers
            .into_iter()
            .filter(|s| s.backend == backend)
            .collect())
    }

    /// One server of the backend, None if it has none by that name.
    pub async fn server(&self, backend: &str, name: &str) -> Result<Option<ServerStat>, Error> {
        check_ident("server", name)?;
        Ok(self
            .servers(backend)
            .await?
            .into_iter()
            .find(|s| s.name == name))
    }

    /// The backend's servers that `ownership` claims; the user's are left out.
    pub async fn owned_servers(
        &self,
        backend: &str,
        ownership: &Ownership,
    ) -> Result<Vec<ServerStat>, Error> {
        let mut servers = self.servers(backend).await?;
        servers.retain(|s| ownership.is_ours(&s.name));
        Ok(servers)
    }

    /// `add server BE/NAME ADDR …` (it starts in maintenance), `enable
    /// health` when `check`, then `state ready`. If a step after the add
    /// fails, the new server is deleted again before the error is returned.
    ///
    /// On 2.6 a server made ready shows `UP 1/N` until its first check after
    /// that passes, and takes traffic meanwhile: confirm the instance is
    /// healthy before adding it, then [`Client::wait_up`].
    pub async fn add_server(
        &self,
        backend: &str,
        name: &str,
        addr: SocketAddr,
        options: &AddOptions,
    ) -> Result<(), Error> {
        self.guard(backend, name)?;
        let mut command = format!("add server {backend}/{name} {addr}");
        if options.check {
            command.push_str(" check");
        }
        if let Some(inter) = options.inter {
            let ms = inter.as_millis().max(1);
            command.push_str(&format!(" inter {ms}"));
        }
        for (keyword, value) in [("rise", options.rise), ("fall", options.fall)] {
            match value {
                Some(0) => {
                    return Err(Error::InvalidArgument {
                        what: keyword,
                        value: "0".into(),
                        why: "at least 1",
                    })
                }
                Some(n) => command.push_str(&format!(" {keyword} {n}")),
                None => {}
            }
        }
        if let Some(weight) = options.weight {
            check_weight(weight)?;
            command.push_str(&format!(" weight {weight}"));
        }
        for word in &options.extra {
            check_word("add server argument", word)?;
            command.push(' ');
            command.push_str(word);
        }
        let target = Target {
            backend,
            server: Some(name),
        };
        let answer = self.run(&self.experimental(&command), Some(target)).await?;
        expect_line(answer, &command, "New server registered.")?;

        let rest = async {
            if options.check {
                let enable = format!("enable health {backend}/{name}");
                expect_silent(self.run(&enable, Some(target)).await?, &enable)?;
            }
            self.set_state(backend, name, State::Ready).await
        };
        if let Err(e) = rest.await {
            tracing::warn!(backend, server = name, error = %e, "haproxy: removing the server just added");
            if let Err(undo) = self.del_server(backend, name).await {
                tracing::warn!(backend, server = name, error = %undo, "haproxy: could not remove it");
            }
            return Err(e);
        }
        Ok(())
    }

    /// `set server BE/NAME state ready|drain|maint`.
    pub async fn set_state(&self, backend: &str, name: &str, state: State) -> Result<(), Error> {
        self.guard(backend, name)?;
        let command = format!("set server {backend}/{name} state {}", state.keyword());
        let answer = self.run(&command, Some(self.target(backend, name))).await?;
        expect_silent(answer, &command)
    }

    /// `set server BE/NAME weight W`, W in 0–256.
    pub async fn set_weight(&self, backend: &str, name: &str, weight: u32) -> Result<(), Error> {
        self.guard(backend, name)?;
        check_weight(weight)?;
        let command = format!("set server {backend}/{name} weight {weight}");
        let answer = self.run(&command, Some(self.target(backend, name))).await?;
        expect_silent(answer, &command)
    }

    /// `del server BE/NAME`: the server must be in maintenance
    /// ([`Error::NotInMaintenance`]) with no connection left
    /// ([`Error::StillHasConnections`]).
    pub async fn del_server(&self, backend: &str, name: &str) -> Result<(), Error> {
        self.guard(backend, name)?;
        let command = format!("del server {backend}/{name}");
        let answer = self
            .run(
                &self.experimental(&command),
                Some(self.target(backend, name)),
            )
            .await?;
        expect_line(answer, &command, "Server deleted.")
    }

    /// `shutdown sessions server BE/NAME`: cuts the sessions in flight.
    pub async fn shutdown_sessions(&self, backend: &str, name: &str) -> Result<(), Error> {
        self.guard(backend, name)?;
        let command = format!("shutdown sessions server {backend}/{name}");
        let answer = self.run(&command, Some(self.target(backend, name))).await?;
        expect_silent(answer, &command)
    }

    /// Polls until the server is fully `UP` after a passed check (or `no
    /// check` when it has none) and returns how long that took; after
    /// `timeout`, [`Error::NotUp`] with its last status and check.
    pub async fn wait_up(
        &self,
        backend: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Duration, Error> {
        let start = Instant::now();
        loop {
            let server = self
                .server(backend, name)
                .await?
                .ok_or_else(|| Error::ServerUnknown {
                    backend: backend.into(),
                    server: name.into(),
                })?;
            if server.is_settled_up() {
                return Ok(start.elapsed());
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                let check = match (&server.check_status, &server.check_desc) {
                    (Some(s), Some(d)) => format!(", last check {s} ({d})"),
                    (Some(s), None) => format!(", last check {s}"),
                    _ => String::new(),
                };
                return Err(Error::NotUp {
                    backend: backend.into(),
                    server: name.into(),
                    status: server.status_text,
                    check,
                    waited: elapsed,
                });
            }
            tokio::time::sleep(self.poll.min(timeout - elapsed)).await;
        }
    }

    /// drain → poll `scur` (and `qcur`) until 0 or `timeout` → maint → (at
    /// the timeout, `shutdown sessions server`) → del. Nothing in flight is
    /// lost unless the timeout came first, which the report says.
    pub async fn drain_and_delete(
        &self,
        backend: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<DrainReport, Error> {
        let report = self.drain(backend, name, timeout).await?;
        self.delete(backend, name).await?;
        Ok(report)
    }

    /// Names valid, and the server ours if the client is [`Client::owned_by`].
    fn guard(&self, backend: &str, name: &str) -> Result<(), Error> {
        check_ident("backend", backend)?;
        check_ident("server", name)?;
        match &self.ownership {
            Some(own) if !own.is_ours(name) => Err(Error::NotOurs {
                backend: backend.into(),
                server: name.into(),
                prefix: own.prefix().into(),
            }),
            _ => Ok(()),
        }
    }

    fn target<'a>(&self, backend: &'a str, name: &'a str) -> Target<'a> {
        Target {
            backend,
            server: Some(name),
        }
    }

    /// Before 2.6, `add server` and `del server` need experimental mode, which
    /// lasts for the connection: prefix it on the same line.
    fn experimental(&self, command: &str) -> String {
        if self.version.at_least(2, 6) {
            command.to_string()
        } else {
            format!("experimental-mode on; {command}")
        }
    }

    async fn run(&self, line: &str, target: Option<Target<'_>>) -> Result<String, Error> {
        let answer = exchange(&self.socket, line, self.timeout).await?;
        let addr = self.socket.to_string();
        let config_line = self.socket.admin_config_line();
        classify(
            answer,
            &Ctx {
                addr: &addr,
                config_line: &config_line,
                command: line,
                target,
                version: Some(&self.version),
            },
        )
    }
}

fn check_weight(weight: u32) -> Result<(), Error> {
    if weight > 256 {
        return Err(Error::InvalidArgument {
            what: "weight",
            value: weight.to_string(),
            why: "HAProxy weights are 0 to 256",
        });
    }
    Ok(())
}
