//! Test bed: a real HAProxy per test (Debian's package, started in the
//! foreground as a child, killed and reaped on drop), in-process upstream
//! HTTP servers, and a raw HTTP GET through HAProxy's frontend.
//!
//! Without HAProxy the tests print "skipping: haproxy not installed" and
//! pass, except under CI, where `.ci/run` installs it and they must run.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_haproxy::Socket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HAProxy binary, or None after printing why the test is skipped
/// (panics instead when env CI is set).
pub fn haproxy_or_skip() -> Option<PathBuf> {
    let found = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
            panic!("haproxy is missing in CI: `.ci/run` installs Debian's haproxy package");
        }
        eprintln!("skipping: haproxy not installed");
    }
    found
}

/// A HAProxy process with:
/// - `admin.sock` (level admin) and `operator.sock` (level operator) in a
///   temporary directory, and an admin TCP socket on 127.0.0.1;
/// - a frontend on 127.0.0.1:`port` sending everything to `backend web`
///   (`balance roundrobin`, plus the caller's lines);
/// - the caller's extra sections.
pub struct Haproxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tcp_admin: String,
}

impl Haproxy {
    /// None when the test is skipped (see [`haproxy_or_skip`]).
    pub fn start(web_lines: &str, extra: &str) -> Option<Haproxy> {
        let bin = haproxy_or_skip()?;
        // Ports come from binding :0 and releasing; another test may grab one
        // in between, so a bind failure is retried with new ones.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let cli_port = free_port();
            let cfg = config(dir.path(), port, cli_port, web_lines, extra);
            let cfg_path = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
            let child = Command::new(&bin)
                .arg("-f")
                .arg(&cfg_path)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start haproxy");
            let mut ha = Haproxy {
                child,
                dir,
                port,
                tcp_admin: format!("127.0.0.1:{cli_port}"),
            };
            match ha.wait_ready() {
                Ok(()) => return Some(ha),
                Err(log)
                    if log.contains("cannot bind") || log.contains("Address already in use") =>
                {
                    eprintln!("haproxy could not bind, retrying with other ports:\n{log}");
                }
                Err(log) => panic!("haproxy did not start:\n{log}"),
            }
        }
        panic!("haproxy could not bind free ports five times");
    }

    /// Polls with a deadline until the admin socket and the frontend accept
    /// connections; on failure, HAProxy's log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", self.log()));
            }
            let sock = std::os::unix::net::UnixStream::connect(self.admin_path()).is_ok();
            let front = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if sock && front {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within 10 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn admin_path(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn admin(&self) -> Socket {
        Socket::Unix(self.admin_path())
    }

    pub fn operator(&self) -> Socket {
        Socket::Unix(self.dir.path().join("operator.sock"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// An admin client, checked.
    pub async fn client(&self) -> handoff_haproxy::Client {
        handoff_haproxy::Client::connect_check(self.admin())
            .await
            .expect("connect to haproxy")
            .with_poll_interval(Duration::from_millis(20))
    }

    /// GET `path` through the frontend (blocking work on a blocking thread).
    pub async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let port = self.port;
        let path = path.to_string();
        tokio::task::spawn_blocking(move || http_get(port, &path))
            .await
            .unwrap()
    }

    /// `n` GETs of `/` through the frontend; the count of each body. Any
    /// non-200 answer fails the test.
    pub async fn split(&self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let port = self.port;
        tokio::task::spawn_blocking(move || {
            let mut counts = std::collections::BTreeMap::new();
            for i in 0..n {
                let (status, body) = http_get(port, "/").expect("GET through haproxy");
                assert_eq!(status, 200, "request {i}: {body}");
                *counts.entry(body).or_insert(0) += 1;
            }
            counts
        })
        .await
        .unwrap()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, port: u16, cli_port: u16, web_lines: &str, extra: &str) -> String {
    let dir = dir.display();
    format!(
        "global
    nbthread 2
    stats socket {dir}/admin.sock mode 600 level admin
    stats socket {dir}/operator.sock mode 600 level operator
    stats socket ipv4@127.0.0.1:{cli_port} level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend fe
    bind 127.0.0.1:{port}
    default_backend web

backend web
    balance roundrobin
{web_lines}

{extra}
"
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `GET` with `Connection: close`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    // One write: pieces written separately meet Nagle and delayed ACKs (40 ms).
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {raw:?}")))?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 answering 200 with its name as
/// the body; `/slow` answers after `slow`. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str, slow: Duration) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body: Arc<str> = Arc::from(name);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, body.clone(), slow));
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            task,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut conn: tokio::net::TcpStream, body: Arc<str>, slow: Duration) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if head
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .starts_with("/slow")
        {
            tokio::time::sleep(slow).await;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
