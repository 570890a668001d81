//! A daemon whose service runs on the hosts of a [`HostBed`]: the sample
//! app shipped as an artifact to every host, listening on the host's own
//! address, behind handoff's proxy on 127.0.0.1.

use std::time::Duration;

use super::hostbed::HostBed;
use super::scenario::{Env, SERIAL};
use super::*;

/// The artifact dir `app` (the revision's name picks the sample app's
/// behaviour, as in `scenario`) and a config placing `web` on every host
/// of `bed`, one instance each, with `sections` appended.
pub fn write_app(dir: &Path) {
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("app.sh"),
        format!(
            "#!/bin/sh\nA=\"$1\"; P=\"$2\"; V=\"$3\"\ncase \"$V\" in\n  crash*) exec {b} sample-app --address \"$A\" --port \"$P\" --version \"$V\" --crash-after 2s ;;\n  bad*) exec {b} sample-app --address \"$A\" --port \"$P\" --version \"$V\" --fail-health ;;\n  *) exec {b} sample-app --address \"$A\" --port \"$P\" --version \"$V\" ;;\nesac\n",
            b = bin()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(app.join("app.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `stay`: `health.min_healthy_time`.
pub fn config(bed: &HostBed, stay: &str, sections: &str) -> String {
    // Keys before the first table of `sections` belong to [services.web].
    let at = sections
        .find("\n[")
        .map(|i| i + 1)
        .unwrap_or(if sections.starts_with('[') {
            0
        } else {
            sections.len()
        });
    let (keys, sections) = sections.split_at(at);
    let hosts: Vec<String> = bed
        .hosts()
        .iter()
        .map(|h| format!("\"{}\"", h.name))
        .collect();
    format!(
        "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\n{hosts_toml}\
         [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"v1\"\nhosts = [{hosts}]\n\
         artifact = \"app\"\ncommand = \"./app.sh {{address}} {{port}} {{revision}}\"\nstop_grace = \"5s\"\n{keys}\
         [services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"{stay}\"\nhealthy_deadline = \"10s\"\n\
         [services.web.drain]\ntimeout = \"5s\"\n{sections}",
        hosts_toml = bed.hosts_toml(),
        hosts = hosts.join(", "),
    )
}

/// Starts the daemon on `bed` and waits until every host's instance is
/// healthy.
pub fn setup(bed: &HostBed, sections: &str) -> Env {
    setup_with(bed, "300ms", sections)
}

pub fn setup_with(bed: &HostBed, stay: &str, sections: &str) -> Env {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path());
    let cfg = dir.path().join("handoff.toml");
    std::fs::write(&cfg, config(bed, stay, sections)).unwrap();
    let (daemon, web, admin) = start(dir.path(), bed.hosts().len());
    Env {
        _guard: guard,
        dir,
        daemon,
        web,
        admin,
    }
}

/// Starts (or restarts) the daemon of `dir` and waits until `n`
/// instances are healthy: (daemon, proxy address, admin address).
pub fn start(dir: &Path, n: usize) -> (Proc, std::net::SocketAddr, std::net::SocketAddr) {
    let cfg = dir.join("handoff.toml");
    let mut daemon = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir);
    let web = addr_of(&daemon.wait_line("listening service=web", Duration::from_secs(30)));
    let admin = addr_of(&daemon.wait_line("admin", Duration::from_secs(30)));
    daemon.wait_line("ready", Duration::from_secs(60));
    poll(
        "every host's instance serving",
        Duration::from_secs(30),
        || {
            let (_, body) = admin_get(admin, dir, "/services").ok()?;
            (body.matches("\"state\":\"healthy\"").count() == n).then_some(())
        },
    );
    (daemon, web, admin)
}

/// The daemon's own part of a host's `dir` (`dir/OWNER`, the owner id's
/// first 12 characters): its releases, pidfiles and logs there.
pub fn home(env: &Env, host: &super::hostbed::BedHost) -> std::path::PathBuf {
    let owner = std::fs::read_to_string(env.dir.path().join("state/owner")).unwrap();
    host.dir.join(&owner.trim()[..12])
}

/// Where each instance runs, from `/services`: (instance, host, revision).
pub fn placement(env: &Env) -> Vec<(String, String, String)> {
    let s = env.get("/services");
    let mut out = Vec::new();
    for svc in s.as_array().into_iter().flatten() {
        for i in svc["instances"].as_array().into_iter().flatten() {
            out.push((
                i["name"].as_str().unwrap_or("").to_string(),
                i["host"].as_str().unwrap_or("").to_string(),
                i["revision"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// Stops the daemon (instances with it) and checks that nothing it
/// started is left on any host.
pub fn stop(mut env: Env, bed: &HostBed) {
    env.daemon.signal(libc::SIGTERM);
    assert!(
        env.daemon.wait_exit(Duration::from_secs(40)).success(),
        "{}",
        env.daemon.stderr()
    );
    for h in bed.hosts() {
        let mine = || -> Vec<String> {
            // The bed's hosts share one PID namespace: this host's are the
            // sample apps listening on its address.
            let mut v = Vec::new();
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(c) = std::fs::read_to_string(e.path().join("cmdline")) else {
                    continue;
                };
                let c = c.replace('\0', " ");
                if c.contains("sample-app --address") && c.contains(&format!("{} ", h.ip)) {
                    v.push(format!("{} {c}", e.file_name().to_string_lossy()));
                }
            }
            v
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !mine().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = mine();
        assert!(
            left.is_empty(),
            "left on {}: {left:?}\npidfiles: {}\ndaemon log:\n{}",
            h.name,
            String::from_utf8_lossy(
                &std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("cat {}/*/run/*/*.pid", h.dir.display()))
                    .output()
                    .unwrap()
                    .stdout
            ),
            env.daemon.stderr()
        );
    }
}
