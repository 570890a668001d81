//! Runs the real `handoff` binary: children are killed and reaped on drop,
//! output is read on threads, and every wait polls with a deadline.

#![allow(dead_code)]

pub mod fleet;
pub mod haproxy;
pub mod hostbed;
pub mod https;
pub mod scenario;
pub mod webdriver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_handoff")
}

/// A child process that is always reaped.
pub struct Proc {
    pub child: Child,
    /// For `serve`: where its instances' state dir may be, so that even a
    /// test that fails (and kills the daemon) leaves no instance behind.
    state_dirs: Vec<std::path::PathBuf>,
    // In a mutex so that a test may share its daemon (&Env) with threads.
    lines: std::sync::Mutex<mpsc::Receiver<String>>,
    pub seen: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    pub fn spawn(args: &[&str], dir: &Path) -> Proc {
        Proc::spawn_env(args, dir, &[])
    }

    /// `spawn` with extra environment variables.
    pub fn spawn_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .current_dir(dir)
            // HANDOFF_LOG=debug (or a filter) when running the tests shows
            // more of the daemons they start.
            .env(
                "HANDOFF_LOG",
                std::env::var("HANDOFF_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn handoff");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut err, buf) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let state_dirs = if args.first() == Some(&"serve") {
            vec![dir.join("state"), dir.join(".handoff")]
        } else {
            Vec::new()
        };
        Proc {
            child,
            state_dirs,
            lines: std::sync::Mutex::new(lines),
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.get_mut().unwrap().recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {limit:?}; stdout: {:?}; stderr:\n{}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Every stdout line, once the process has exited (reads what is left).
    pub fn all_lines(&mut self) -> Vec<String> {
        while let Ok(l) = self
            .lines
            .get_mut()
            .unwrap()
            .recv_timeout(Duration::from_secs(5))
        {
            self.seen.push(l);
        }
        self.seen.clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit with a deadline; kills and panics past it.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "process did not exit within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in &self.state_dirs {
            for (pid, _, _) in handoff_runtime::procfs::marked_processes(d) {
                // SAFETY: kill(2) on an instance group this test's daemon made.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
        }
    }
}

/// Starts a sample app on a free port and returns it with its address.
pub fn sample_app(version: &str, extra: &[&str], dir: &Path) -> (Proc, SocketAddr) {
    let mut args = vec!["sample-app", "--port", "0", "--version", version];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args, dir);
    let line = p.wait_line("sample-app", Duration::from_secs(10));
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (p, addr)
}

/// `addr=` field of a line like `listening service=web addr=127.0.0.1:1234`.
pub fn addr_of(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap()
}

/// A blocking HTTP/1.1 GET on a fresh connection: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, path, "")
}

/// The admin token a daemon with its state dir under `dir` wrote
/// (`state_dir = "state"` in the tests' configs, else the default).
pub fn token(dir: &Path) -> String {
    for d in ["state", ".handoff"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(d).join("token")) {
            return t.trim().to_string();
        }
    }
    panic!("no admin token under {}", dir.display());
}

/// A GET on the admin API with the daemon's token.
pub fn admin_get(admin: SocketAddr, dir: &Path, path: &str) -> std::io::Result<(u16, String)> {
    request(
        admin,
        path,
        &format!("Authorization: Bearer {}\r\n", token(dir)),
    )
}

/// `POST /echo` to `host` with a body of `n` bytes `q` by
/// `Content-Length`, ending its connection.
pub fn upload_length(host: &str, n: usize) -> Vec<u8> {
    let mut r = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n"
    )
    .into_bytes();
    r.resize(r.len() + n, b'q');
    r
}

/// `POST /echo` to `host` with a chunked body of `n` bytes `q` (chunks of
/// 7,000: no `q` in the framing), ending its connection.
pub fn upload_chunked(host: &str, n: usize) -> Vec<u8> {
    let mut r = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let mut left = n;
    while left > 0 {
        let k = left.min(7000);
        r.extend_from_slice(format!("{k:x}\r\n").as_bytes());
        r.resize(r.len() + k, b'q');
        r.extend_from_slice(b"\r\n");
        left -= k;
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// Sends `req` whole on a fresh connection and reads until it closes.
pub fn raw_request(addr: SocketAddr, req: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = s.try_clone()?;
    let writer = std::thread::spawn({
        let req = req.to_vec();
        move || s.write_all(&req)
    });
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    writer.join().expect("writer")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn request(addr: SocketAddr, path: &str, extra: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a CLI command against the daemon at `admin`: (success, stdout+stderr).
pub fn cli(admin: SocketAddr, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env("HANDOFF_ADMIN", format!("http://{admin}"))
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
