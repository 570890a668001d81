//! A multi-host test bed on one machine (root only): every host is a network
//! namespace with a veth into a bridge in the root namespace, a private
//! address and its own sshd (own host key) on port 22. The handoff daemon and
//! the load generator stay in the root namespace and reach the hosts through
//! the bridge, over real OpenSSH with pinned host keys.
//!
//! Bed number k (1..=249; scripts/try-hosts.sh uses 250) owns subnet
//! 10.77.k.0/24: bridge `hobr<k>` at 10.77.k.1, host `hN` in namespace
//! `hob<k>hN` at 10.77.k.(10+N) behind veth `hob<k>vN` (`eth0` inside).
//! A bed claims its k with an abstract unix socket, so beds in parallel
//! threads and processes never share one, and a crashed bed's k is free
//! again: a new bed first deletes the leftovers of every unclaimed k.
//!
//! Hosts share the filesystem and the PID namespace: each gets its own dir
//! ([`BedHost::dir`]). Each sshd is a child of the test and a child
//! subreaper, so it reaps whatever is orphaned on its host (detached apps
//! started over ssh), as init does on a real host; `Drop` kills everything in
//! the namespaces, then the sshds, and deletes namespaces, links and files.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
/// How long each sshd may take to accept TCP, then a real `ssh … true`.
const READY: Duration = Duration::from_secs(10);
/// Bed numbers 1..=BEDS are for tests.
const BEDS: u32 = 249;
/// At most this many hosts per bed (addresses .11 to .210).
const MAX_HOSTS: usize = 200;

/// The bed's temp dir is named TEMP_PREFIX, k, '-' and a random tail.
const TEMP_PREFIX: &str = "handoff-hostbed-";

static NEXT_BED: AtomicU32 = AtomicU32::new(0);

/// One host of a bed, as a test sees it.
pub struct BedHost {
    /// "h1", "h2", …
    pub name: String,
    /// The host's own address (on its `eth0`), where its sshd listens.
    pub ip: Ipv4Addr,
    /// handoff's per-host dir, unique per host (hosts share the filesystem).
    /// Not created: handoff makes it, as on a fresh host.
    pub dir: PathBuf,
}

/// What the bed keeps per host to tear it down.
struct Node {
    netns: String,
    /// The root-namespace end of the veth (cut here).
    veth: String,
    sshd: Option<Child>,
    log: PathBuf,
}

/// N hosts, each reachable over ssh as root with [`HostBed::client_key`].
pub struct HostBed {
    bridge: String,
    hosts: Vec<BedHost>,
    nodes: Vec<Node>,
    client_key: PathBuf,
    known_hosts: PathBuf,
    dir: tempfile::TempDir,
    /// Holds bed number k; released last.
    _claim: UnixListener,
}

impl HostBed {
    /// None (after printing "skipping: …reason…" to stderr) when not root or
    /// /usr/sbin/sshd or `ip` is missing — unless env CI is set, then panics
    /// with the reason (CI must run these tests).
    pub fn start(n: usize) -> Option<HostBed> {
        assert!(
            (1..=MAX_HOSTS).contains(&n),
            "a bed has 1 to {MAX_HOSTS} hosts"
        );
        if let Err(why) = available() {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
                panic!("the multi-host tests must run in CI: {why}");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        let (k, claim) = claim_bed_number();
        remove_leftovers(k);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{k}-"))
            .tempdir()
            .expect("a temp dir for the bed");
        let mut bed = HostBed {
            bridge: format!("hobr{k}"),
            hosts: Vec::new(),
            nodes: Vec::new(),
            client_key: dir.path().join("client_key"),
            known_hosts: dir.path().join("known_hosts"),
            dir,
            _claim: claim,
        };
        // From here on a panic drops `bed`, which removes what exists so far.
        if !Path::new("/run/sshd").is_dir() {
            // sshd's privilege separation directory.
            let _ = fs::DirBuilder::new().mode(0o755).create("/run/sshd");
        }
        keygen(&bed.client_key, "handoff-hostbed-client");
        let authorized = bed.dir.path().join("authorized_keys");
        fs::copy(bed.client_key.with_extension("pub"), &authorized).unwrap();

        run(&["ip", "link", "add", &bed.bridge, "type", "bridge"]);
        let cidr = format!("10.77.{k}.1/24");
        run(&["ip", "addr", "add", &cidr, "dev", &bed.bridge]);
        run(&["ip", "link", "set", &bed.bridge, "up"]);

        let mut known = String::new();
        let mut options = None;
        for i in 0..n {
            known.push_str(&bed.add_host(k, i, &authorized, &mut options));
        }
        fs::write(&bed.known_hosts, known).unwrap();
        for i in 0..n {
            bed.wait_ready(i);
        }
        Some(bed)
    }

    pub fn hosts(&self) -> &[BedHost] {
        &self.hosts
    }

    /// The private key (ed25519, no passphrase) authorised on every host for root.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// A known_hosts file pinning every host's own key: "IP ssh-ed25519 AAAA…".
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The bed's temp dir (keys, configs, sshd logs in hN/sshd.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Host i's network namespace (for `ip netns exec`/`ip netns pids`).
    pub fn netns(&self, i: usize) -> &str {
        &self.nodes[i].netns
    }

    /// Host i's veth in the root namespace (what `cut` sets down).
    pub fn veth(&self, i: usize) -> &str {
        &self.nodes[i].veth
    }

    /// The bridge in the root namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pid of host i's sshd (a child of this process).
    pub fn sshd_pid(&self, i: usize) -> u32 {
        self.nodes[i].sshd.as_ref().expect("sshd started").id()
    }

    /// The `[hosts.hN]` TOML sections for a handoff config.
    pub fn hosts_toml(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            out.push_str(&format!(
                "[hosts.{}]\naddress = \"root@{}\"\nidentity = {}\nknown_hosts = {}\ndir = {}\n\n",
                h.name,
                h.ip,
                toml_path(&self.client_key),
                toml_path(&self.known_hosts),
                toml_path(&h.dir),
            ));
        }
        out
    }

    /// Cuts host i off (a silent partition: packets are dropped, nothing is
    /// refused): sets its root-side veth down. Its processes keep running.
    pub fn cut(&self, i: usize) {
        run(&["ip", "link", "set", &self.nodes[i].veth, "down"]);
    }

    /// Undoes [`HostBed::cut`].
    pub fn restore(&self, i: usize) {
        run(&["ip", "link", "set", &self.nodes[i].veth, "up"]);
    }

    /// Runs a shell command on host i via ssh (BatchMode, strict host key
    /// checking against known_hosts, the client key, ConnectTimeout=5).
    pub fn ssh(&self, i: usize, cmd: &str) -> Output {
        self.ssh_command(i, &[], cmd).output().expect("run ssh")
    }

    /// The `ssh` command behind [`HostBed::ssh`], to spawn or tune: `options`
    /// ("Key=value", passed as `-o`) come first, and ssh keeps the first
    /// value it gets for an option, so they override the bed's defaults.
    pub fn ssh_command(&self, i: usize, options: &[&str], cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null"]);
        for o in options {
            c.args(["-o", o]);
        }
        c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(&self.client_key)
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
            .arg(format!("root@{}", self.hosts[i].ip))
            .arg(cmd)
            .stdin(Stdio::null());
        c
    }

    /// Host i's sshd log so far.
    pub fn sshd_log(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Builds host i of bed k (namespace, veth, address, host key, sshd) and
    /// returns its known_hosts line. `options`: sshd's extra command-line
    /// options, probed once per bed.
    fn add_host(
        &mut self,
        k: u32,
        i: usize,
        authorized: &Path,
        options: &mut Option<Vec<String>>,
    ) -> String {
        let num = i + 1;
        let ip = Ipv4Addr::new(10, 77, k as u8, 11 + i as u8);
        let hdir = self.dir.path().join(format!("h{num}"));
        fs::create_dir(&hdir).unwrap();
        self.nodes.push(Node {
            netns: format!("hob{k}h{num}"),
            veth: format!("hob{k}v{num}"),
            sshd: None,
            log: hdir.join("sshd.log"),
        });
        self.hosts.push(BedHost {
            name: format!("h{num}"),
            ip,
            dir: hdir.join("handoff"),
        });
        let node = self.nodes.last_mut().unwrap();
        let (ns, veth) = (node.netns.as_str(), node.veth.as_str());
        run(&["ip", "netns", "add", ns]);
        run(&[
            "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        run(&["ip", "link", "set", veth, "master", &self.bridge, "up"]);
        let cidr = format!("{ip}/24");
        run(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);

        let key = hdir.join("ssh_host_ed25519_key");
        keygen(&key, &format!("handoff-hostbed-h{num}"));
        let public = fs::read_to_string(key.with_extension("pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());

        let cfg = hdir.join("sshd_config");
        fs::write(&cfg, sshd_config(ip, &key, &hdir, authorized)).unwrap();
        let options = options.get_or_insert_with(|| sshd_extra_options(&cfg));
        let log = fs::File::create(&node.log).unwrap();
        let mut sshd = Command::new("ip");
        sshd.args(["netns", "exec", ns, SSHD, "-D", "-e", "-f"])
            .arg(&cfg)
            .args(options.iter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the flag survives the execs
        // of `ip` and sshd (which does not fork: `ip netns exec` execs).
        unsafe {
            sshd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        node.sshd = Some(sshd.spawn().expect("start sshd"));
        format!("{ip} {kind} {blob}\n")
    }

    /// Waits until host i's sshd accepts TCP, then until `ssh … true` works.
    fn wait_ready(&mut self, i: usize) {
        let addr = SocketAddr::from((self.hosts[i].ip, 22));
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(status)) = self.nodes[i].sshd.as_mut().unwrap().try_wait() {
                panic!(
                    "sshd of {} exited ({status}); its log:\n{}",
                    self.hosts[i].name,
                    self.sshd_log(i)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sshd of {} does not accept on {addr} after {READY:?}; its log:\n{}",
                self.hosts[i].name,
                self.sshd_log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + READY;
        loop {
            let out = self.ssh(i, "true");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ssh to {} fails after {READY:?}: {}{}; sshd log:\n{}",
                self.hosts[i].name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.sshd_log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HostBed {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let listener = node.sshd.as_ref().map(|c| c.id());
            kill_netns(&node.netns, listener);
            if let Some(mut sshd) = node.sshd.take() {
                let _ = sshd.kill();
                let _ = sshd.wait();
            }
            // Anything that slipped in after the sshd was killed.
            kill_netns(&node.netns, None);
            quiet(&["ip", "link", "del", &node.veth]);
            quiet(&["ip", "netns", "del", &node.netns]);
        }
        quiet(&["ip", "link", "del", &self.bridge]);
        // The temp dir and then the claim on k go with the fields.
    }
}

/// Why the bed cannot run here, if it cannot.
fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the multi-host test bed needs root (network namespaces)".into());
    }
    if !Path::new(SSHD).exists() {
        return Err(format!(
            "{SSHD} not found: install openssh-server (.ci/run does)"
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ] {
        let found = Command::new(tool)
            .arg("-V")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!(
                "`{tool}` not found: install {package} (.ci/run does)"
            ));
        }
    }
    Ok(())
}

/// Claims a bed number no live bed holds: an abstract unix socket named after
/// it, which the kernel frees when its process dies.
fn claim_bed_number() -> (u32, UnixListener) {
    let start = std::process::id().wrapping_add(NEXT_BED.fetch_add(1, Ordering::Relaxed));
    for j in 0..BEDS {
        let k = start.wrapping_add(j) % BEDS + 1;
        if let Some(claim) = claim(k) {
            return (k, claim);
        }
    }
    panic!("all {BEDS} host bed numbers are in use");
}

fn claim(k: u32) -> Option<UnixListener> {
    let name = format!("handoff-hostbed-{k}");
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).ok()?;
    UnixListener::bind_addr(&addr).ok()
}

/// Deletes what crashed beds left (namespaces with their processes, veths,
/// bridges, temp dirs): those of number `own`, and those of any number no
/// live bed holds.
fn remove_leftovers(own: u32) {
    let temp = std::env::temp_dir();
    let dirs: Vec<(u32, PathBuf)> = fs::read_dir(&temp)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let (k, _) = name.strip_prefix(TEMP_PREFIX)?.split_once('-')?;
                    Some((k.parse().ok()?, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    let netns: Vec<String> = output(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    // "12: hob7v1@if2: <…"
    let links: Vec<String> = output(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect();
    let numbers: std::collections::BTreeSet<u32> = netns
        .iter()
        .chain(&links)
        .filter_map(|n| bed_number(n))
        .chain(dirs.iter().map(|(k, _)| *k))
        .collect();
    for k in numbers {
        let _claim = if k == own {
            None
        } else {
            match claim(k) {
                Some(c) => Some(c),
                None => continue, // a live bed's
            }
        };
        for ns in netns.iter().filter(|n| bed_number(n) == Some(k)) {
            kill_netns(ns, None);
            quiet(&["ip", "netns", "del", ns]);
        }
        for link in links.iter().filter(|n| bed_number(n) == Some(k)) {
            quiet(&["ip", "link", "del", link]);
        }
        for (_, dir) in dirs.iter().filter(|(dk, _)| *dk == k) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The bed number in one of the bed's names: `hobr<k>`, `hob<k>h<n>`,
/// `hob<k>v<n>`.
fn bed_number(name: &str) -> Option<u32> {
    let digits = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let rest = name.strip_prefix("hob")?;
    if let Some(k) = rest.strip_prefix('r') {
        return digits(k);
    }
    let (k, n) = rest.split_once(['h', 'v'])?;
    digits(n).and(digits(k))
}

/// Kills every process in the namespace but `keep` (host i's sshd), until
/// none is left and `keep` has reaped all its children (orphans included: it
/// is their subreaper), so that nothing lingers, not even a zombie.
fn kill_netns(netns: &str, keep: Option<u32>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids: Vec<i32> = output(&["ip", "netns", "pids", netns])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| Some(p as u32) != keep)
            .collect();
        let waiting = keep.is_some_and(has_children);
        if (pids.is_empty() && !waiting) || Instant::now() > deadline {
            return;
        }
        for p in pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any process (zombies included) has `parent` as its parent.
fn has_children(parent: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .is_some_and(|ppid| ppid == parent.to_string())
    })
}

/// `SetEnv SHLVL=1`: Debian's bash sources `~/.bashrc` for commands run
/// by sshd when it is a top-level shell; with SHLVL set it is not, so a
/// root `.bashrc` (pyenv's, here, which takes a lock that a killed session
/// leaves behind and every later login then waits for) stays out of every
/// command the tests and handoff run on the hosts.
fn sshd_config(ip: Ipv4Addr, key: &Path, hdir: &Path, authorized: &Path) -> String {
    format!(
        "ListenAddress {ip}\n\
         Port 22\n\
         HostKey {}\n\
         PidFile {}\n\
         AuthorizedKeysFile {}\n\
         StrictModes no\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UseDNS no\n\
         MaxStartups 100\n\
         MaxSessions 100\n\
         ClientAliveInterval 0\n\
         PrintMotd no\n\
         SetEnv SHLVL=1\n\
         LogLevel ERROR\n",
        key.display(),
        hdir.join("sshd.pid").display(),
        authorized.display(),
    )
}

/// Options for sshd's command line that only some OpenSSH versions know:
/// since 9.8 sshd penalises (refuses for a while) addresses whose sessions
/// fail, and every session of a test comes from the bridge's one address.
fn sshd_extra_options(cfg: &Path) -> Vec<String> {
    let check = Command::new(SSHD)
        .arg("-t")
        .arg("-f")
        .arg(cfg)
        .output()
        .expect("run sshd -t");
    assert!(
        check.status.success(),
        "sshd rejects {}: {}",
        cfg.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let penalties = ["-o", "PerSourcePenalties=no"];
    let ok = Command::new(SSHD)
        .arg("-t")
        .arg("-f")
        .arg(cfg)
        .args(penalties)
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        penalties.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    }
}

fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A path as a TOML basic string.
fn toml_path(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs a command; panics with its stderr when it fails.
fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command for its stdout ("" when it fails).
fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Runs a command, ignoring how it went (cleanup).
fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
