//! A fleet of servers: the service runs on four hosts (network namespaces,
//! each with its own sshd), reached over OpenSSH, behind handoff's proxy.
//! Every deployment runs under load and must fail no request. Root only:
//! elsewhere the tests skip with a message (CI runs them).

mod common;

use std::time::{Duration, Instant};

use common::fleet;
use common::hostbed::HostBed;
use common::poll;
use common::scenario::{self, *};

#[test]
fn in_place_batch_2_across_4_hosts_under_load() {
    let Some(bed) = HostBed::start(4) else { return };
    let env = fleet::setup(&bed, "[services.web.in_place]\nbatch = 2\n");
    let before = fleet::placement(&env);
    let hosts: std::collections::BTreeSet<&str> =
        before.iter().map(|(_, h, _)| h.as_str()).collect();
    assert_eq!(hosts.len(), 4, "one instance per host: {before:?}");
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let started = Instant::now();
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", "app"]);
    let ended = Instant::now();
    assert!(ok, "{out}");
    assert!(out.contains("capacity floor 2/4"), "{out}");
    assert!(out.contains("deployed: v2 serves service web"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let seen = l.finish();
    assert_eq!(
        versions_between(&seen, ended, Instant::now()),
        ["v2".to_string()].into(),
        "only v2 after the deploy"
    );
    assert!(versions_between(&seen, started, ended).len() <= 2);
    // In place: every instance kept its host (a server gets the new version).
    let after = fleet::placement(&env);
    for (name, host, rev) in &after {
        assert_eq!(rev, "v2", "{after:?}");
        assert!(
            before.iter().any(|(n, h, _)| n == name && h == host),
            "{name} moved: {before:?} → {after:?}"
        );
    }
    // The log comes from the instance's host.
    let (ok, log) = env.cli(&["logs", "web", "web-3"]);
    assert!(ok && log.contains("listening on 10.77."), "{log}");
    // Shipped to every host, verified and unpacked there.
    for (i, h) in bed.hosts().iter().enumerate() {
        let out = bed.ssh(
            i,
            &format!(
                "cat {}/releases/web/v2/.handoff-sha256",
                fleet::home(&env, h).display()
            ),
        );
        assert!(out.status.success(), "{} has no v2 release", h.name);
    }
    fleet::stop(env, &bed);
}

const BLUE_GREEN: &str =
    "[services.web.blue_green]\ntraffic_steps = [50]\nbake = \"1s\"\nretention = \"30s\"\n";

#[test]
fn blue_green_on_the_same_hosts_with_a_50_percent_step_then_a_flip_rollback() {
    let Some(bed) = HostBed::start(4) else { return };
    let env = fleet::setup(&bed, BLUE_GREEN);
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&[
        "deploy",
        "web",
        "v2",
        "--artifact",
        "app",
        "--strategy",
        "blue-green",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("traffic 50% green") && out.contains("blue retained until"),
        "{out}"
    );
    // Green landed one instance per host, beside blue: capacity constant.
    let both = fleet::placement(&env);
    for h in bed.hosts() {
        let on: Vec<&String> = both
            .iter()
            .filter(|(_, host, _)| host == &h.name)
            .map(|(_, _, r)| r)
            .collect();
        assert_eq!(on.len(), 2, "{}: {both:?}", h.name);
        assert!(on.contains(&&"v1".to_string()) && on.contains(&&"v2".to_string()));
    }
    let asked = Instant::now();
    let (ok, out) = env.cli(&["rollback", "web"]);
    assert!(ok && out.contains("rolled back"), "{out}");
    assert!(out.contains("traffic flipped back to v1 in"), "{out}");
    let flipped = poll("v1 serving again", Duration::from_secs(5), || {
        let (_, b) = common::http_get(env.web, "/").ok()?;
        b.contains("\"version\":\"v1\"").then(Instant::now)
    });
    eprintln!("flip back effective after {:?}", flipped - asked);
    std::thread::sleep(Duration::from_millis(300));
    let seen = l.finish();
    assert_eq!(
        versions_between(&seen, flipped + Duration::from_millis(100), Instant::now()),
        ["v1".to_string()].into()
    );
    poll("green stopped", Duration::from_secs(20), || {
        let p = fleet::placement(&env);
        (p.len() == 4 && p.iter().all(|(_, _, r)| r == "v1")).then_some(())
    });
    fleet::stop(env, &bed);
}

#[test]
fn a_crashing_revision_is_rolled_back_on_every_host() {
    let Some(bed) = HostBed::start(4) else { return };
    // min_healthy_time (3 s) longer than the crash delay: it must be caught.
    let env = fleet::setup_with(&bed, "3s", "[services.web.in_place]\nbatch = 2\n");
    let l = load(env.web, 3);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "crash-v2", "--artifact", "app"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("did not stay healthy") || out.contains("exited"),
        "{out}"
    );
    assert!(out.contains("rolled back: v1 serves"), "{out}");
    l.finish();
    let p = fleet::placement(&env);
    assert!(p.len() == 4 && p.iter().all(|(_, _, r)| r == "v1"), "{p:?}");
    fleet::stop(env, &bed);
}

#[test]
fn a_release_changed_on_a_host_is_refused_and_nothing_moves() {
    let Some(bed) = HostBed::start(4) else { return };
    let env = fleet::setup(&bed, "");
    // Someone put other content under v3 on h2.
    let h2 = &bed.hosts()[1];
    let out = bed.ssh(
        1,
        &format!(
            "mkdir -p {d}/releases/web/v3 && echo 0000 > {d}/releases/web/v3/.handoff-sha256",
            d = fleet::home(&env, h2).display()
        ),
    );
    assert!(out.status.success());
    let l = load(env.web, 2);
    l.wait_for_requests(20);
    let (ok, out) = env.cli(&["deploy", "web", "v3", "--artifact", "app"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("host h2") && out.contains("sha256") && out.contains("remove"),
        "{out}"
    );
    l.finish();
    let p = fleet::placement(&env);
    assert!(p.iter().all(|(_, _, r)| r == "v1"), "{p:?}");
    fleet::stop(env, &bed);
}

#[test]
fn handoff_killed_mid_deploy_adopts_the_remote_instances_on_restart() {
    let Some(bed) = HostBed::start(4) else { return };
    let env = fleet::setup_with(&bed, "1s", "[services.web.in_place]\nbatch = 1\n");
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", "app", "--detach"]);
    assert!(ok, "{out}");
    poll("deploy under way", Duration::from_secs(30), || {
        let (_, b) = common::admin_get(env.admin, env.dir.path(), "/deployments/web@1").ok()?;
        b.contains("on v2").then_some(())
    });
    let scenario::Env {
        _guard,
        dir,
        mut daemon,
        ..
    } = env;
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10));
    let (d2, web, admin) = fleet::start(dir.path(), 4);
    let env = scenario::Env {
        _guard,
        dir,
        daemon: d2,
        web,
        admin,
    };
    // The restart closed the deployment and brought the fleet back to v1;
    // instances still on v1 were adopted, not restarted.
    poll("fleet on one revision", Duration::from_secs(40), || {
        let p = fleet::placement(&env);
        (p.len() == 4 && p.iter().all(|(_, _, r)| r == "v1")).then_some(())
    });
    let rec = env.get("/deployments/web@1");
    assert_eq!(rec["status"], "rolled-back", "{rec}");
    let (ok, log) = env.cli(&["status", "web"]);
    assert!(ok, "{log}");
    let l = load(env.web, 3);
    l.wait_for_requests(300);
    l.finish();
    fleet::stop(env, &bed);
}

#[test]
fn a_host_cut_off_mid_deploy_fails_it_naming_the_host_and_it_rolls_back() {
    let Some(bed) = HostBed::start(4) else { return };
    let env = fleet::setup_with(&bed, "2s", "[services.web.in_place]\nbatch = 1\n");
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", "app", "--detach"]);
    assert!(ok, "{out}");
    // Cut h2 off once the first instance (on h1) is being replaced.
    poll("batch 1 under way", Duration::from_secs(40), || {
        let (_, b) = common::admin_get(env.admin, env.dir.path(), "/deployments/web@1").ok()?;
        b.contains("starting web-1 on v2").then_some(())
    });
    let cut = Instant::now();
    bed.cut(1);
    let rec = poll("deployment ended", Duration::from_secs(60), || {
        let rec = env.get("/deployments/web@1");
        let st = rec["status"].as_str().unwrap_or("").to_string();
        (st == "rolled-back" || st == "failed" || st == "succeeded").then_some(rec)
    });
    let ended = cut.elapsed();
    assert_eq!(rec["status"], "rolled-back", "{rec}");
    let reason = rec["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("host h2 unreachable: no answer for"),
        "the reason names the host: {rec}"
    );
    eprintln!("cut → rolled back in {ended:?}: {reason}");
    // The other hosts carry the traffic: all on v1 and healthy.
    poll(
        "the reachable hosts back on v1",
        Duration::from_secs(30),
        || {
            let p = fleet::placement(&env);
            p.iter()
                .filter(|(_, h, _)| h != "h2")
                .all(|(_, _, r)| r == "v1")
                .then_some(())
        },
    );
    let (_, st) = env.cli(&["status", "web"]);
    eprintln!("{st}");
    bed.restore(1);
    // The host answers again: the reconciler converges it to v1.
    poll("4 healthy instances on v1", Duration::from_secs(60), || {
        let s = env.get("/services");
        let svc = &s[0];
        let inst = svc["instances"].as_array()?;
        let hosts = svc["hosts"].as_array()?;
        (inst.len() == 4
            && hosts.iter().all(|h| h["state"] == "up")
            && inst
                .iter()
                .all(|i| i["revision"] == "v1" && i["target_state"] == "healthy"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    l.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in l.threads {
        t.join().unwrap();
    }
    let failed = l.failures.lock().unwrap().clone();
    let served = l.seen.lock().unwrap().len();
    eprintln!(
        "host cut mid-deploy: {} of {} requests failed: {:?}",
        failed.len(),
        failed.len() + served,
        &failed[..failed.len().min(5)]
    );
    assert!(
        failed.is_empty(),
        "idempotent requests in flight on the lost host go elsewhere: {failed:?}"
    );
    fleet::stop(env, &bed);
}

#[test]
fn a_deploy_refuses_to_start_while_a_host_is_lost() {
    let Some(bed) = HostBed::start(3) else { return };
    let env = fleet::setup(&bed, "");
    bed.cut(2);
    poll("h3 lost", Duration::from_secs(20), || {
        let s = env.get("/services");
        let hosts = s[0]["hosts"].as_array()?.clone();
        hosts
            .iter()
            .any(|h| h["name"] == "h3" && h["state"] == "unreachable")
            .then_some(())
    });
    let l = load(env.web, 2);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", "app"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("host h3 unreachable") && out.contains("partial fleet"),
        "{out}"
    );
    // The two others carry the traffic meanwhile.
    l.wait_for_requests(500);
    l.finish();
    bed.restore(2);
    poll("h3 back", Duration::from_secs(30), || {
        let s = env.get("/services");
        let hosts = s[0]["hosts"].as_array()?.clone();
        hosts.iter().all(|h| h["state"] == "up").then_some(())
    });
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", "app"]);
    assert!(ok, "{out}");
    fleet::stop(env, &bed);
}

/// Which host's network namespace a file was written in: the IP of its
/// `eth0` as `ip` printed it there.
fn written_on(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn hooks_run_where_they_belong_and_a_lost_host_can_hold_a_deployment() {
    let Some(bed) = HostBed::start(2) else { return };
    let env = fleet::setup(
        &bed,
        "on_host_failure = \"pause\"\n\
         [services.web.in_place]\nbatch = 1\n\
         [services.web.hooks]\nonce_host = \"h2\"\n\
         migrate_expand = \"ip -4 -o addr show eth0 > migrate-$HANDOFF_REVISION.txt\"\n\
         validate_service = \"ip -4 -o addr show eth0 > hook-$HANDOFF_INSTANCE.txt\"\n",
    );
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", "app"]);
    assert!(ok, "{out}");
    // Per instance: on the instance's host, in its release there.
    for (name, host, _) in fleet::placement(&env) {
        let h = bed.hosts().iter().find(|h| h.name == host).unwrap();
        let f = fleet::home(&env, h).join(format!("releases/web/v2/hook-{name}.txt"));
        let ip = written_on(&f);
        assert!(ip.contains(&format!("{}/", h.ip)), "{name} on {host}: {ip}");
    }
    // Once per deployment: on `once_host` (h2).
    let h2 = &bed.hosts()[1];
    let ip = written_on(&fleet::home(&env, h2).join("releases/web/v2/migrate-v2.txt"));
    assert!(ip.contains(&format!("{}/", h2.ip)), "{ip}");

    // on_host_failure = "pause": h1 lost mid-way holds the deployment
    // where it is; when h1 answers again it goes on and completes.
    let (ok, out) = env.cli(&["deploy", "web", "v3", "--artifact", "app", "--detach"]);
    assert!(ok, "{out}");
    poll("v3 under way", Duration::from_secs(30), || {
        let (_, b) = common::admin_get(env.admin, env.dir.path(), "/deployments/web@2").ok()?;
        b.contains("starting web-1 on v3").then_some(())
    });
    bed.cut(0);
    poll("holding", Duration::from_secs(30), || {
        let (_, b) = common::admin_get(env.admin, env.dir.path(), "/deployments/web@2").ok()?;
        b.contains("host h1 unreachable").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let rec = env.get("/deployments/web@2");
    assert_eq!(rec["status"], "running", "held, not rolled back: {rec}");
    bed.restore(0);
    let rec = poll("v3 deployed", Duration::from_secs(90), || {
        let rec = env.get("/deployments/web@2");
        (rec["status"] != "running").then_some(rec)
    });
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let p = fleet::placement(&env);
    assert!(p.len() == 2 && p.iter().all(|(_, _, r)| r == "v3"), "{p:?}");
    let (_, report) = env.cli(&["report", "web@2"]);
    assert!(
        report.contains("holding") && report.contains("every host answers again"),
        "{report}"
    );
    fleet::stop(env, &bed);
}

#[test]
fn a_process_marked_as_the_daemons_that_no_instance_owns_is_stopped_on_its_host() {
    let Some(bed) = HostBed::start(2) else { return };
    let env = fleet::setup(&bed, "");
    let owner = std::fs::read_to_string(env.dir.path().join("state/owner")).unwrap();
    let h1 = &bed.hosts()[0];
    // As a daemon that died between a spawn and its record leaves one.
    let out = bed.ssh(
        0,
        &format!(
            "set -e; D={d}; mkdir -p $D/run/web; \
             setsid -f /bin/sh -c 'echo $$ > /tmp/stray.$0; exec sleep 1000' {ip} </dev/null >/dev/null 2>&1; \
             sleep 0.3; pid=$(cat /tmp/stray.{ip}); rm -f /tmp/stray.{ip}; \
             set -- $(sed 's/^.*) //' /proc/$pid/stat); \
             printf '%s %s %s web web-99 v1 1\\n' $pid ${{20}} {owner} > $D/run/web/web-99.pid; echo $pid",
            d = fleet::home(&env, h1).display(),
            ip = h1.ip,
            owner = owner.trim(),
        ),
    );
    assert!(out.status.success(), "{out:?}");
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    poll("the stray stopped", Duration::from_secs(30), || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    });
    // The stop removes its pidfile once the group is gone.
    let pidfile = fleet::home(&env, h1).join("run/web/web-99.pid");
    poll("its pidfile removed", Duration::from_secs(10), || {
        (!pidfile.exists()).then_some(())
    });
    fleet::stop(env, &bed);
}

#[test]
fn two_daemons_sharing_a_host_and_a_service_name_never_touch_each_other() {
    let Some(bed) = HostBed::start(1) else { return };
    let a = fleet::setup(&bed, "");
    // A second daemon (its own state dir) with the same host, the same
    // `dir` there and the same service name: a careless copy of a config.
    let other = tempfile::tempdir().unwrap();
    fleet::write_app(other.path());
    std::fs::write(
        other.path().join("handoff.toml"),
        fleet::config(&bed, "300ms", ""),
    )
    .unwrap();
    let (b, b_web, b_admin) = fleet::start(other.path(), 1);
    let pid_of = |admin, dir: &std::path::Path| -> u64 {
        let (_, s) = common::admin_get(admin, dir, "/services").unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        v[0]["instances"][0]["pid"].as_u64().unwrap()
    };
    let b_pid = pid_of(b_admin, other.path());
    let (ok, out) = a.cli(&["deploy", "web", "v2", "--artifact", "app"]);
    assert!(ok, "{out}");
    // A's deploy, prune and strays left B's instance alone.
    assert_eq!(pid_of(b_admin, other.path()), b_pid);
    assert!(common::http_get(b_web, "/")
        .unwrap()
        .1
        .contains("\"version\":\"v1\""));
    // A stops (with its instances); B's goes on serving.
    let scenario::Env {
        _guard,
        dir: a_dir,
        daemon: mut a_daemon,
        ..
    } = a;
    a_daemon.signal(libc::SIGTERM);
    assert!(a_daemon.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(
        pid_of(b_admin, other.path()),
        b_pid,
        "A's stop left B's instance"
    );
    assert!(common::http_get(b_web, "/")
        .unwrap()
        .1
        .contains("\"version\":\"v1\""));
    drop(a_dir);
    fleet::stop(
        scenario::Env {
            _guard,
            dir: other,
            daemon: b,
            web: b_web,
            admin: b_admin,
        },
        &bed,
    );
}
