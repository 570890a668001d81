//! handoff behind a real HAProxy (Debian's package): HAProxy is started in
//! the foreground as a child of the test (killed and reaped on drop) with
//! an admin socket, a frontend on a free 127.0.0.1 port and a backend `web`
//! checked with `GET /healthz`; the daemon drives that backend.
//!
//! Without HAProxy a test prints "skipping: haproxy not installed" and
//! passes, except under CI, where `.ci/run` installs it and it must run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::scenario::{write_app_script, Env, SERIAL};
use super::*;

pub struct Haproxy {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The frontend clients connect to.
    pub front: SocketAddr,
}

/// One server of backend `web` as `show stat` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    pub addr: String,
    pub status: String,
    pub weight: u32,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Haproxy {
    /// None when skipped (HAProxy missing outside CI).
    pub fn start() -> Option<Haproxy> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let Some(bin) = bin else {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
                panic!("haproxy is missing in CI: `.ci/run` installs Debian's haproxy package");
            }
            eprintln!("skipping: haproxy not installed");
            return None;
        };
        // A port from bind(:0) may be taken again before HAProxy binds it:
        // retried with another.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let cfg = format!(
                "global\n  stats socket {sock} mode 600 level admin\n\
                 defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
                 \x20 retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response response-timeout\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend web\n\
                 backend web\n  balance roundrobin\n  option httpchk GET /healthz\n  http-check expect status 200\n",
                sock = dir.path().join("admin.sock").display()
            );
            let path = dir.path().join("haproxy.cfg");
            std::fs::write(&path, cfg).unwrap();
            let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
            let child = Command::new(&bin)
                .arg("-f")
                .arg(&path)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start haproxy");
            let mut ha = Haproxy {
                child,
                dir,
                front: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(st) = ha.child.try_wait().unwrap() {
                    let log = ha.log();
                    if log.contains("cannot bind") || log.contains("Address already in use") {
                        break;
                    }
                    panic!("haproxy exited with {st}:\n{log}");
                }
                if UnixStream::connect(ha.socket()).is_ok() && TcpStream::connect(ha.front).is_ok()
                {
                    return Some(ha);
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy not ready in 10 s:\n{}",
                    ha.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("haproxy could not bind a free port five times");
    }

    /// Kills HAProxy and starts it again on the same config: servers added
    /// at run time are gone, as after a reload that does not keep them.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("haproxy.log"))
            .unwrap();
        self.child = Command::new(bin)
            .arg("-f")
            .arg(self.dir.path().join("haproxy.cfg"))
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(self.socket()).is_err() || TcpStream::connect(self.front).is_err()
        {
            assert!(
                self.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "haproxy did not come back:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// One runtime-API command; its answer.
    pub fn command(&self, line: &str) -> String {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Backend `web`'s servers.
    pub fn servers(&self) -> Vec<Server> {
        let csv = self.command("show stat web 4 -1");
        let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |n: &str| header.iter().position(|c| *c == n).unwrap();
        let (sv, status, weight, addr) = (col("svname"), col("status"), col("weight"), col("addr"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f[sv] != "BACKEND")
            .map(|f| Server {
                name: f[sv].to_string(),
                addr: f[addr].to_string(),
                status: f[status].to_string(),
                weight: f[weight].parse().unwrap_or(0),
            })
            .collect()
    }

    /// handoff's servers (`handoff-…`), sorted by name.
    pub fn owned(&self) -> Vec<Server> {
        let mut v: Vec<Server> = self
            .servers()
            .into_iter()
            .filter(|s| s.name.starts_with("handoff-"))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's config for `instances` of `web` behind `ha`'s backend.
pub fn config(ha: &Haproxy, instances: u32, sections: &str) -> String {
    format!(
        "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
         [services.web]\nrevision = \"v1\"\ninstances = {instances}\n\
         command = \"./app.sh {{port}} {{revision}}\"\nstop_grace = \"5s\"\n\
         [services.web.balancer]\nkind = \"haproxy\"\nsocket = \"{}\"\nbackend = \"web\"\n{sections}",
        ha.socket().display()
    )
}

/// Starts the daemon in `dir` (config written already) and waits until
/// `instances` targets are healthy; `Env::web` is HAProxy's frontend.
pub fn start_daemon(
    ha: &Haproxy,
    dir: tempfile::TempDir,
    instances: usize,
    guard: std::sync::MutexGuard<'static, ()>,
) -> Env {
    let cfg = dir.path().join("handoff.toml");
    let mut daemon = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
    let said = daemon.wait_line("balancer service=web", Duration::from_secs(20));
    assert!(said.contains("haproxy backend web"), "{said}");
    let admin = addr_of(&daemon.wait_line("admin", Duration::from_secs(20)));
    daemon.wait_line("ready", Duration::from_secs(20));
    poll("every instance healthy", Duration::from_secs(30), || {
        let (_, body) = admin_get(admin, dir.path(), "/services").ok()?;
        (body.matches("\"state\":\"healthy\"").count() == instances).then_some(())
    });
    poll("HAProxy routes to each", Duration::from_secs(10), || {
        let up = ha
            .owned()
            .iter()
            .filter(|s| s.status == "UP" && s.weight > 0)
            .count();
        (up == instances).then_some(())
    });
    Env {
        _guard: guard,
        dir,
        daemon,
        web: ha.front,
        admin,
    }
}

/// HAProxy, and a daemon with `instances` of `web` behind it
/// (`sections`: the service's sub-tables). None when skipped.
pub fn setup(instances: u32, sections: &str) -> Option<(Haproxy, Env)> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ha = Haproxy::start()?;
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    std::fs::write(
        dir.path().join("handoff.toml"),
        config(&ha, instances, sections),
    )
    .unwrap();
    let env = start_daemon(&ha, dir, instances as usize, guard);
    Some((ha, env))
}
