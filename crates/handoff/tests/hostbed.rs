//! The multi-host test bed itself (tests/common/hostbed.rs): hosts answer
//! over ssh with pinned keys, a cut host is noticed within seconds, and a
//! dropped bed leaves nothing behind. Root only; skipped elsewhere, except
//! in CI.

mod common;

use common::hostbed::HostBed;
use common::poll;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn four_hosts_answer_over_ssh_with_pinned_keys() {
    let Some(bed) = HostBed::start(4) else { return };
    assert_eq!(bed.hosts().len(), 4);
    for (i, h) in bed.hosts().iter().enumerate() {
        let out = bed.ssh(i, "ip -4 -o addr show eth0");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            h.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("inet {}/24", h.ip)),
            "{} shows {text}",
            h.name
        );
    }
    // Commands run without the login user's ~/.bashrc (see sshd_config).
    let out = bed.ssh(0, "echo ${PYENV_ROOT:-unset}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unset");
    // Every host has its own key, pinned by IP.
    let known = std::fs::read_to_string(bed.known_hosts()).unwrap();
    let keys: std::collections::HashSet<&str> = known
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(keys.len(), 4, "{known}");
    for h in bed.hosts() {
        assert!(
            known.contains(&format!("{} ssh-ed25519 AAAA", h.ip)),
            "{known}"
        );
    }
    let toml = bed.hosts_toml();
    for h in bed.hosts() {
        assert!(toml.contains(&format!("[hosts.{}]\naddress = \"root@{}\"", h.name, h.ip)));
    }

    // A known_hosts with a wrong key for h1: strict checking refuses it.
    let wrong_key = bed.dir().join("wrong_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&wrong_key)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(wrong_key.with_extension("pub")).unwrap();
    let blob: Vec<&str> = public.split_whitespace().take(2).collect();
    let wrong = bed.dir().join("wrong_known_hosts");
    let ip = bed.hosts()[0].ip;
    std::fs::write(&wrong, format!("{ip} {} {}\n", blob[0], blob[1])).unwrap();
    let option = format!("UserKnownHostsFile={}", wrong.display());
    let out = bed.ssh_command(0, &[&option], "true").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
}

#[test]
fn a_cut_host_is_noticed_within_seconds() {
    let Some(bed) = HostBed::start(2) else { return };
    let mut ssh = bed
        .ssh_command(
            0,
            &["ServerAliveInterval=1", "ServerAliveCountMax=3"],
            "echo started; sleep 30",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = ssh.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10));
    if first.as_deref() != Ok("started") {
        let _ = ssh.kill();
        panic!("the remote command did not start: {first:?}");
    }

    bed.cut(0);
    let cut = Instant::now();
    let status = loop {
        if let Some(status) = ssh.try_wait().unwrap() {
            break status;
        }
        if cut.elapsed() > Duration::from_secs(15) {
            let _ = ssh.kill();
            let _ = ssh.wait();
            panic!("ssh still runs 15 s after its host was cut");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let noticed = cut.elapsed();
    eprintln!("ssh noticed the cut after {noticed:.1?} ({status})");
    assert_eq!(status.code(), Some(255));
    assert!(noticed < Duration::from_secs(8), "{noticed:?}");

    // The other host still answers; the cut one cannot be reached.
    assert!(bed.ssh(1, "true").status.success());
    let out = bed
        .ssh_command(0, &["ConnectTimeout=2"], "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));

    bed.restore(0);
    let back = Instant::now();
    poll("ssh to the restored host", Duration::from_secs(15), || {
        bed.ssh(0, "true").status.success().then_some(())
    });
    eprintln!("ssh works again {:.1?} after restore", back.elapsed());
}

#[test]
fn a_dropped_bed_leaves_nothing_behind() {
    let Some(bed) = HostBed::start(2) else { return };
    // A detached process on h1, as handoff starts an instance.
    let dir = bed.hosts()[0].dir.clone();
    let pidfile = dir.join("app.pid");
    let out = bed.ssh(
        0,
        &format!(
            "mkdir -p {d} && setsid -f sh -c 'echo $$ >{d}/app.pid; exec sleep 300' \
             </dev/null >/dev/null 2>&1",
            d = dir.display()
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app: u32 = poll("the app's pid file", Duration::from_secs(5), || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let app_start = starttime(app).expect("the app runs");
    let netns: Vec<String> = (0..2).map(|i| bed.netns(i).to_string()).collect();
    let mut links: Vec<String> = (0..2).map(|i| bed.veth(i).to_string()).collect();
    links.push(bed.bridge().to_string());
    let sshds: Vec<u32> = (0..2).map(|i| bed.sshd_pid(i)).collect();
    let bed_dir = bed.dir().to_path_buf();
    assert!(String::from_utf8_lossy(&run(&["ip", "netns", "list"])).contains(&netns[0]));

    drop(bed);

    let listed = String::from_utf8_lossy(&run(&["ip", "netns", "list"])).into_owned();
    for ns in &netns {
        assert!(
            !listed.split_whitespace().any(|w| w == ns),
            "{ns} is left: {listed}"
        );
    }
    for link in &links {
        let out = Command::new("ip")
            .args(["link", "show", link])
            .output()
            .unwrap();
        assert!(!out.status.success(), "link {link} is left");
    }
    for pid in sshds {
        assert!(starttime(pid).is_none(), "sshd {pid} is left");
    }
    // Gone entirely, not even a zombie: its host's sshd reaped it.
    assert_ne!(starttime(app), Some(app_start), "the app {app} is left");
    assert!(!bed_dir.exists(), "{} is left", bed_dir.display());
}

/// A process's start time (field 22 of /proc/PID/stat), None when no such
/// process exists.
fn starttime(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_string)
}

fn run(args: &[&str]) -> Vec<u8> {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap()
        .stdout
}
