//! `handoff hosts check` and `handoff hosts trust`: the hosts of a config,
//! reached directly over ssh, without a running daemon.
//!
//! - check: every host (or the ones named) at once, one table, a reason per
//!   failure with what to do; exit 0 only when every host is ready.
//! - trust: a host's keys from `ssh-keyscan`, shown by fingerprint, then
//!   appended to the host's known_hosts file after a yes. A key that
//!   differs from a recorded one is never written over.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use handoff_core::config::{Backend, Config, Host};
use handoff_runtime::ssh::check::{self, HostCheck};
use handoff_runtime::ssh::conn::{quote, Conn};
use handoff_runtime::ssh::HostSpec;

/// How long `ssh-keyscan` (and the connection probe that explains an empty
/// scan) waits for a host.
const SCAN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Subcommand)]
pub enum HostsCmd {
    /// Check that hosts are ready for deployments (over ssh, no daemon).
    ///
    /// Each host, all at once: reachable, key accepted, host key known and
    /// matching, `dir` writable, /proc, the tools and the services' programs
    /// there, free disk. Exits 0 when every host is ready, 1 otherwise.
    Check {
        /// Hosts to check (default: every [hosts.NAME] of the config).
        names: Vec<String>,
        /// Config file.
        #[arg(short, long, default_value = "handoff.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Record the host key of NAME, after showing its fingerprints.
    ///
    /// The keys go to the host's `known_hosts` (default
    /// STATE_DIR/known_hosts). A key that differs from a recorded one is
    /// refused, even with --yes.
    Trust {
        /// The host: a [hosts.NAME] of the config.
        name: String,
        /// Config file.
        #[arg(short, long, default_value = "handoff.toml")]
        config: PathBuf,
        /// Record without asking (a changed key is still refused).
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a `hosts` command; `Ok(false)` is a failure already explained
/// (exit 1 without an `error:` line).
pub fn run(cmd: HostsCmd) -> anyhow::Result<bool> {
    match cmd {
        HostsCmd::Check {
            names,
            config,
            json,
        } => check_hosts(&config, &names, json),
        HostsCmd::Trust { name, config, yes } => trust(&config, &name, yes),
    }
}

fn no_hosts(cfg: &Config) -> anyhow::Error {
    anyhow!(
        "{} defines no hosts; add a [hosts.NAME] table with its `address` (docs/config.md)",
        cfg.path.display()
    )
}

/// The host `name` of the config, or an error listing the ones it has.
fn host<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a Host> {
    if cfg.hosts.is_empty() {
        return Err(no_hosts(cfg));
    }
    cfg.hosts.get(name).ok_or_else(|| {
        anyhow!(
            "no host '{name}' in {}; the hosts defined are {}",
            cfg.path.display(),
            cfg.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// The programs (first words) of the commands of every service placed on
/// `host`, as far as they can be looked up before a release is shipped.
fn programs_on(cfg: &Config, host: &str) -> Vec<String> {
    let mut set = BTreeSet::new();
    for s in cfg.services.values() {
        if let Backend::Managed(m) = &s.backend {
            if m.hosts.iter().any(|h| h == host) {
                set.extend(check::program_of(&m.command));
            }
        }
    }
    set.into_iter().collect()
}

/// A private directory for the connections' `ControlPath`, removed when
/// dropped. Not the daemon's socket directory: a check makes its own
/// connection (key, host key and all) even while a daemon holds a master
/// connection to the host. Under /tmp, so the socket path stays short.
struct ControlDir(PathBuf);

impl ControlDir {
    fn new() -> anyhow::Result<ControlDir> {
        let dir = Path::new("/tmp").join(format!(
            "handoff-hosts-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(ControlDir(dir))
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_hosts(config: &Path, names: &[String], json: bool) -> anyhow::Result<bool> {
    let cfg = handoff_core::config::load(config)?;
    let mut chosen: Vec<&Host> = Vec::new();
    if names.is_empty() {
        if cfg.hosts.is_empty() {
            return Err(no_hosts(&cfg));
        }
        chosen.extend(cfg.hosts.values());
    } else {
        for n in names {
            let h = host(&cfg, n)?;
            if !chosen.iter().any(|c| c.name == h.name) {
                chosen.push(h);
            }
        }
    }
    let control = ControlDir::new()?;
    let work: Vec<(Conn, Vec<String>)> = chosen
        .iter()
        .map(|h| {
            let spec = HostSpec::from_config(h, &cfg.server.state_dir);
            (
                Conn::new(spec, &control.0, &h.name),
                programs_on(&cfg, &h.name),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results: Vec<HostCheck> = rt.block_on(futures_util::future::join_all(
        work.iter().map(|(conn, progs)| check::check(conn, progs)),
    ));
    drop(control);
    let all_ok = results.iter().all(HostCheck::ok);
    if json {
        let list: Vec<serde_json::Value> = results
            .iter()
            .map(|c| {
                serde_json::json!({
                    "host": c.host,
                    "address": c.address,
                    "ok": c.ok(),
                    "rtt_ms": c.rtt_ms,
                    "problems": c.problems,
                    "facts": c.facts,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", table(&results, colour()));
    }
    Ok(all_ok)
}

/// Colour only for a person at a terminal (NO_COLOR is honoured too).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The check's table: one row per host; the problems of a failing host
/// each on its own line under its row.
fn table(results: &[HostCheck], colour: bool) -> String {
    let head = ["HOST", "ADDRESS", "STATUS", "RTT", "NOTES"];
    let rows: Vec<[String; 5]> = results
        .iter()
        .map(|c| {
            [
                c.host.clone(),
                c.address.clone(),
                if c.ok() { "ok" } else { "FAIL" }.to_string(),
                c.rtt_ms.map_or("-".into(), |ms| format!("{ms} ms")),
                if c.ok() {
                    c.facts.join(", ")
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5], status_colour: Option<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(width[i].saturating_sub(cell.chars().count()));
            match status_colour {
                Some(c) if i == 2 => s.push_str(&format!("{c}{cell}\x1b[0m")),
                _ => s.push_str(cell),
            }
            if i + 1 < cells.len() {
                s.push_str(&pad);
                s.push_str("  ");
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(head, None);
    for (c, r) in results.iter().zip(&rows) {
        let status_colour = colour.then_some(if c.ok() { "\x1b[32m" } else { "\x1b[1;31m" });
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]], status_colour));
        for p in &c.problems {
            out.push_str(&format!("    - {p}\n"));
        }
    }
    let failing = results.iter().filter(|c| !c.ok()).count();
    out.push_str(&match (results.len(), failing) {
        (n, 0) => format!("{n} host{} ready\n", plural(n)),
        (n, f) => format!("{f} of {n} host{} not ready\n", plural(n)),
    });
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A host key: its type and base64 blob.
type Key = (String, String);

/// The keys of known_hosts lines (`[@marker] hosts type blob [comment]`);
/// comments, markers (@revoked, @cert-authority) and blank lines skipped.
fn keys_of(text: &str) -> Vec<Key> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('@'))
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// How the scanned keys compare with the ones already recorded.
#[derive(Debug, PartialEq, Eq)]
enum Recorded {
    None,
    Same,
    /// A recorded key of a type the host offers is not the one it offers
    /// (or the host offers none of the recorded types).
    Changed,
}

fn compare(scanned: &[Key], recorded: &[Key]) -> Recorded {
    if recorded.is_empty() {
        return Recorded::None;
    }
    let mut common = false;
    for (t, blob) in scanned {
        let of_type: Vec<&String> = recorded
            .iter()
            .filter(|(rt, _)| rt == t)
            .map(|(_, b)| b)
            .collect();
        if of_type.is_empty() {
            continue;
        }
        common = true;
        if !of_type.contains(&blob) {
            return Recorded::Changed;
        }
    }
    if common {
        Recorded::Same
    } else {
        Recorded::Changed
    }
}

/// The recorded known_hosts lines for `pattern` (hashed or not), as ssh
/// itself matches them: `ssh-keygen -F`.
fn recorded_for(known_hosts: &Path, pattern: &str) -> anyhow::Result<String> {
    if !known_hosts.exists() {
        return Ok(String::new());
    }
    let out = Command::new("ssh-keygen")
        .arg("-F")
        .arg(pattern)
        .arg("-f")
        .arg(known_hosts)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run ssh-keygen: {e}; install the OpenSSH client"))?;
    // Exit 1 = not found; anything printed on stderr is a broken file.
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !err.trim().is_empty() {
        bail!("cannot read {}: {}", known_hosts.display(), err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ssh-keygen -lf -` of the scanned lines: "TYPE  SHA256:…" per key.
fn fingerprints(lines: &[String]) -> anyhow::Result<Vec<String>> {
    let mut child = Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("cannot run ssh-keygen: {e}; install the OpenSSH client"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "ssh-keygen cannot read the scanned keys: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // "256 SHA256:abc… 10.0.0.11 (ED25519)"
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let fp = w.iter().find(|x| x.starts_with("SHA256:"));
            let kind = w
                .last()
                .filter(|x| x.starts_with('(') && x.ends_with(')'))
                .map(|x| x.trim_matches(|c| c == '(' || c == ')'));
            match (kind, fp, w.first()) {
                (Some(k), Some(fp), Some(bits)) => format!("{k:<8} {fp}  ({bits} bits)"),
                _ => l.trim().to_string(),
            }
        })
        .collect())
}

/// Why `ssh-keyscan` found nothing, as far as a plain connection tells.
fn why_no_keys(spec: &HostSpec, stderr: &str) -> String {
    let at = std::net::SocketAddr::new(spec.ip, spec.port);
    match std::net::TcpStream::connect_timeout(&at, SCAN_TIMEOUT) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            format!("no answer from {at} in {} s", SCAN_TIMEOUT.as_secs())
        }
        Err(e) => format!("cannot connect to {at}: {e}"),
        Ok(_) => match stderr.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(l) => format!("{at} accepts connections but gave no ssh host key ({l})"),
            None => format!("{at} accepts connections but gave no ssh host key"),
        },
    }
}

fn trust(config: &Path, name: &str, yes: bool) -> anyhow::Result<bool> {
    let cfg = handoff_core::config::load(config)?;
    let h = host(&cfg, name)?;
    let spec = HostSpec::from_config(h, &cfg.server.state_dir);
    let kh = spec.known_hosts.clone();
    // How known_hosts names the host (and ssh-keyscan writes it).
    let pattern = if spec.port == 22 {
        spec.hostname.clone()
    } else {
        format!("[{}]:{}", spec.hostname, spec.port)
    };
    let out = Command::new("ssh-keyscan")
        .args(["-T", &SCAN_TIMEOUT.as_secs().to_string()])
        .args(["-p", &spec.port.to_string()])
        .arg(&spec.hostname)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run ssh-keyscan: {e}; install the OpenSSH client"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        bail!(
            "no host key from {name} ({}): {}; check its `address` in {} and that sshd runs there",
            spec.address(),
            why_no_keys(&spec, &String::from_utf8_lossy(&out.stderr)),
            cfg.path.display()
        );
    }
    let scanned = keys_of(&lines.join("\n"));
    println!("{name} ({}) offers these host keys:", spec.address());
    for f in fingerprints(&lines)? {
        println!("  {f}");
    }
    let recorded = recorded_for(&kh, &pattern)?;
    match compare(&scanned, &keys_of(&recorded)) {
        Recorded::Same => {
            println!(
                "{} already holds these keys for {name}; nothing changed",
                kh.display()
            );
            return Ok(true);
        }
        Recorded::Changed => {
            eprintln!(
                "\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
@    WARNING: THE HOST KEY OF {name} HAS CHANGED\n\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
{kh} holds a different key for {pattern} than the host offers now.\n\
Someone may be intercepting the connection (a man-in-the-middle), or the\n\
host was reinstalled and made new keys. Nothing was recorded.\n\
Verify the fingerprints above on the host itself (its console:\n\
`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then remove the old key:\n\
\x20   ssh-keygen -R {q_pattern} -f {q_kh}\n\
and run `handoff hosts trust {name}` again.\n",
                kh = kh.display(),
                q_pattern = quote(&pattern),
                q_kh = quote(&kh.to_string_lossy()),
            );
            bail!("the host key of {name} changed; refusing to record it");
        }
        Recorded::None => {}
    }
    println!(
        "Compare them with the host's own (on its console: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)."
    );
    println!("They will be added to {}.", kh.display());
    if !yes {
        print!("Record these keys for {name}? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("nothing recorded");
            return Ok(false);
        }
    }
    append(&kh, &lines)?;
    println!(
        "recorded {} key{} for {name} in {}; `handoff hosts check {name}` checks the rest",
        lines.len(),
        plural(lines.len()),
        kh.display()
    );
    Ok(true)
}

/// Appends `lines` to the known_hosts file, creating it (0600) and its
/// directories when missing.
fn append(kh: &Path, lines: &[String]) -> anyhow::Result<()> {
    if let Some(parent) = kh.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let before = std::fs::read(kh).unwrap_or_default();
    let mut text = String::new();
    if before.last().is_some_and(|&b| b != b'\n') {
        text.push('\n');
    }
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(kh)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", kh.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(t: &str, b: &str) -> Key {
        (t.into(), b.into())
    }

    #[test]
    fn recorded_keys_match_by_type() {
        let scanned = [k("ssh-ed25519", "A"), k("ssh-rsa", "B")];
        assert_eq!(compare(&scanned, &[]), Recorded::None);
        assert_eq!(compare(&scanned, &[k("ssh-ed25519", "A")]), Recorded::Same);
        assert_eq!(
            compare(&scanned, &[k("ssh-ed25519", "X")]),
            Recorded::Changed
        );
        assert_eq!(
            compare(&scanned, &[k("ecdsa-sha2-nistp256", "C")]),
            Recorded::Changed
        );
    }

    #[test]
    fn known_hosts_lines_give_their_keys() {
        let text =
            "# Host x found: line 1\n10.0.0.1 ssh-ed25519 AAAA c\n@revoked * ssh-rsa BBBB\n\n";
        assert_eq!(keys_of(text), vec![k("ssh-ed25519", "AAAA")]);
    }

    #[test]
    fn failures_are_listed_under_their_row() {
        let ok = HostCheck {
            host: "h1".into(),
            address: "root@10.0.0.11".into(),
            rtt_ms: Some(120),
            problems: vec![],
            facts: vec!["900 MB free".into(), "Linux 6.1".into()],
        };
        let bad = HostCheck {
            host: "h2".into(),
            address: "root@10.0.0.12".into(),
            rtt_ms: None,
            problems: vec!["unreachable: Connection refused".into()],
            facts: vec![],
        };
        let t = table(&[ok, bad], false);
        assert_eq!(
            t,
            "HOST  ADDRESS         STATUS  RTT     NOTES\n\
             h1    root@10.0.0.11  ok      120 ms  900 MB free, Linux 6.1\n\
             h2    root@10.0.0.12  FAIL    -\n    \
             - unreachable: Connection refused\n\
             1 of 2 hosts not ready\n"
        );
    }
}
