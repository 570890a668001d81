//! Deployments behind the user's HAProxy (balancer.kind = "haproxy"):
//! the real daemon drives a real HAProxy's backend through its runtime API
//! while a load generator goes through HAProxy's frontend. Every scenario
//! asserts zero failed requests, and that a server the user added by hand
//! is never touched.

mod common;

use std::time::{Duration, Instant};

use common::haproxy::{self, Haproxy, Server};
use common::scenario::*;
use common::*;

const SECTIONS: &str = "[services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"300ms\"\nhealthy_deadline = \"8s\"\n\
     [services.web.drain]\ntimeout = \"5s\"\n\
     [services.web.blue_green]\ntraffic_steps = [50]\nbake = \"1s\"\nretention = \"30s\"\n";

/// A server of the user's, added by hand at run time, pointing at a
/// sample app of "mine"; returns the app (kept alive by the caller).
fn hand_added(ha: &Haproxy, dir: &std::path::Path) -> (Proc, Server) {
    let (app, addr) = sample_app("mine", &[], dir);
    for line in [
        format!("add server web/mine {addr} check"),
        "enable health web/mine".to_string(),
        "set server web/mine state ready".to_string(),
    ] {
        let said = ha.command(&line);
        assert!(
            said.trim().is_empty() || said.contains("New server registered"),
            "{line}: {said}"
        );
    }
    let mine = poll("the hand-added server UP", Duration::from_secs(10), || {
        ha.servers()
            .into_iter()
            .find(|s| s.name == "mine" && s.status == "UP")
    });
    (app, mine)
}

/// handoff's servers in HAProxy are exactly the daemon's healthy targets:
/// same names and addresses, each UP and weighted.
fn owned_match_targets(ha: &Haproxy, env: &Env) {
    poll(
        "HAProxy's servers match the targets",
        Duration::from_secs(15),
        || {
            let services = env.get("/services");
            let mut want: Vec<(String, String)> = services[0]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
                .map(|t| {
                    (
                        format!("{}{}", prefix(env), t["name"].as_str().unwrap_or("")),
                        t["addr"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            want.sort();
            let have: Vec<(String, String)> = ha
                .owned()
                .into_iter()
                .filter(|s| s.status == "UP" && s.weight > 0)
                .map(|s| (s.name, s.addr))
                .collect();
            (have == want && ha.owned().len() == want.len()).then_some(())
        },
    );
}

/// `handoff-OWNER-`: this daemon's server names in HAProxy.
fn prefix(env: &Env) -> String {
    let owner = std::fs::read_to_string(env.dir.path().join("state/owner")).unwrap();
    format!("handoff-{}-", &owner.trim()[..8])
}

fn untouched(ha: &Haproxy, mine: &Server) {
    let now = ha.servers().into_iter().find(|s| s.name == "mine");
    assert_eq!(now.as_ref(), Some(mine), "the hand-added server changed");
}

#[test]
fn in_place_batch_2_behind_haproxy_under_load() {
    let Some((ha, env)) = haproxy::setup(4, SECTIONS) else {
        return;
    };
    let (_mine_app, mine) = hand_added(&ha, env.dir.path());
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let started = Instant::now();
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--batch", "2"]);
    let ended = Instant::now();
    assert!(ok, "{out}");
    assert!(
        out.contains("batch 1/2") && out.contains("batch 2/2"),
        "{out}"
    );
    assert!(out.contains("deployed: v2 serves service web"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let seen = l.finish();
    let before = versions_between(&seen, started - Duration::from_secs(3600), started);
    assert!(
        before.contains("v1") && !before.contains("v2"),
        "{before:?}"
    );
    let after = versions_between(&seen, ended, Instant::now());
    assert!(after.contains("v2") && !after.contains("v1"), "{after:?}");
    // The report's figures are HAProxy's per-server counters.
    let rec = env.get("/deployments/web@1");
    let per: Vec<(String, u64)> = rec["report"]["per_revision"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["revision"].as_str().unwrap().to_string(),
                x["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        per.iter().any(|(r, n)| r == "v1" && *n > 0)
            && per.iter().any(|(r, n)| r == "v2" && *n > 0),
        "{per:?}"
    );
    owned_match_targets(&ha, &env);
    untouched(&ha, &mine);
    let (_, st) = env.cli(&["status", "web"]);
    assert!(st.contains("haproxy backend web"), "{st}");
    let (_, m) = admin_get(env.admin, env.dir.path(), "/metrics").unwrap();
    assert!(
        m.contains(
            "handoff_deployments_total{service=\"web\",strategy=\"in-place\",result=\"succeeded\"} 1"
        ),
        "{m}"
    );
    // Per-target figures from HAProxy's counters, as the built-in proxy's.
    assert!(
        m.lines().any(|l| l.starts_with("handoff_requests_total{")
            && l.contains("revision=\"v2\"")
            && l.contains("code=\"2xx\"")
            && !l.ends_with(" 0")),
        "{m}"
    );
    stop(env);
    // A stopped daemon leaves no server of its own behind: each was
    // drained and deleted before its instance stopped.
    assert!(ha.owned().is_empty(), "{:?}", ha.owned());
    untouched(&ha, &mine);
}

#[test]
fn blue_green_with_a_step_then_a_flip_rollback_behind_haproxy() {
    let Some((ha, env)) = haproxy::setup(2, SECTIONS) else {
        return;
    };
    let (_mine_app, mine) = hand_added(&ha, env.dir.path());
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--strategy", "blue-green"]);
    assert!(ok, "{out}");
    assert!(out.contains("traffic 50% green"), "{out}");
    // During the 50 % step both revisions answered, through HAProxy.
    let rec = env.get("/deployments/web@1");
    assert_eq!(rec["status"], "retained", "{rec}");
    let cut = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let now = versions_between(&l.seen.lock().unwrap(), cut, Instant::now());
    assert!(now.contains("v2") && !now.contains("v1"), "{now:?}");
    assert_eq!(ha.owned().len(), 4, "blue retained: {:?}", ha.owned());
    let asked = Instant::now();
    let (ok, out) = env.cli(&["rollback", "web"]);
    assert!(ok && out.contains("traffic 100% blue"), "{out}");
    assert!(out.contains("traffic flipped back to v1 in"), "{out}");
    let flipped = poll("v1 again", Duration::from_secs(5), || {
        let (_, b) = http_get(env.web, "/").ok()?;
        b.contains("\"version\":\"v1\"").then(Instant::now)
    });
    eprintln!("flip effective after {:?}", flipped - asked);
    std::thread::sleep(Duration::from_millis(500));
    let seen = l.finish();
    let after = versions_between(&seen, flipped + Duration::from_millis(200), Instant::now());
    assert!(after.contains("v1") && !after.contains("v2"), "{after:?}");
    let both = versions_between(&seen, asked - Duration::from_secs(3600), asked);
    assert!(both.contains("v1") && both.contains("v2"), "{both:?}");
    owned_match_targets(&ha, &env);
    assert_eq!(ha.owned().len(), 2, "green deleted: {:?}", ha.owned());
    untouched(&ha, &mine);
    stop(env);
}

#[test]
fn a_crashing_revision_is_rolled_back_behind_haproxy() {
    let sections = SECTIONS.replace("min_healthy_time = \"300ms\"", "min_healthy_time = \"3s\"");
    let Some((ha, env)) = haproxy::setup(2, &sections) else {
        return;
    };
    let (_mine_app, mine) = hand_added(&ha, env.dir.path());
    let l = load(env.web, 3);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "crash-v2", "--batch", "1"]);
    assert!(!ok, "{out}");
    assert!(out.contains("rolled back: v1 serves"), "{out}");
    let seen = l.finish();
    assert!(seen.iter().any(|(v, _)| v == "v1"));
    owned_match_targets(&ha, &env);
    let (_, st) = env.cli(&["status", "web"]);
    assert!(
        st.contains("revision v1") && !st.contains("crash-v2  "),
        "{st}"
    );
    untouched(&ha, &mine);
    stop(env);
}

#[test]
fn handoff_sigkilled_mid_deploy_restarts_and_haproxy_never_fails_a_request() {
    let sections = SECTIONS.replace("min_healthy_time = \"300ms\"", "min_healthy_time = \"2s\"");
    let Some((ha, env)) = haproxy::setup(3, &sections) else {
        return;
    };
    let (_mine_app, mine) = hand_added(&ha, env.dir.path());
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--batch", "1", "--detach"]);
    assert!(ok, "{out}");
    poll("batch 2 under way", Duration::from_secs(30), || {
        let (_, b) = admin_get(env.admin, env.dir.path(), "/deployments/web@1").ok()?;
        b.contains("batch 2/3").then_some(())
    });
    let Env {
        _guard,
        dir,
        mut daemon,
        ..
    } = env;
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10));
    // HAProxy goes on routing by its own checks while handoff is away.
    let away = Instant::now();
    let served = l.seen.lock().unwrap().len();
    l.wait_for_requests(served + 50);
    eprintln!(
        "served 50 requests with handoff dead in {:?}",
        away.elapsed()
    );
    let env = haproxy::start_daemon(&ha, dir, 3, _guard);
    // One revision across the fleet, HAProxy's servers the daemon's own.
    let revision = poll("the fleet on one revision", Duration::from_secs(40), || {
        let s = env.get("/services");
        let revs: std::collections::BTreeSet<String> = s[0]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
            .filter(|t| t["state"] == "healthy")
            .map(|t| t["revision"].as_str().unwrap_or("").to_string())
            .collect();
        let n: usize = s[0]["groups"]
            .as_array()?
            .iter()
            .map(|g| g["targets"].as_array().map_or(0, |t| t.len()))
            .sum();
        (revs.len() == 1 && n == 3).then(|| revs.into_iter().next().unwrap())
    });
    eprintln!("after the restart the fleet serves {revision}");
    // Strays of the killed deploy go within STRAY_AFTER (10 s).
    owned_match_targets(&ha, &env);
    std::thread::sleep(Duration::from_millis(500));
    l.finish();
    let rec = env.get("/deployments/web@1");
    assert!(
        rec["events"]
            .to_string()
            .contains("interrupted by a restart"),
        "{rec}"
    );
    untouched(&ha, &mine);
    stop(env);
    assert!(ha.owned().is_empty(), "{:?}", ha.owned());
}

#[test]
fn a_missing_socket_or_backend_is_a_clear_error() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ha) = Haproxy::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_app_script(dir.path());
    let cfg = dir.path().join("handoff.toml");
    let run = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        let mut p = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
        let st = p.wait_exit(Duration::from_secs(20));
        assert!(!st.success());
        p.stderr()
    };
    let good = haproxy::config(&ha, 1, "");
    let socket = ha.socket().display().to_string();
    let err = run(good.replace(&socket, "/nonexistent/admin.sock"));
    assert!(
        err.contains("/nonexistent/admin.sock") && err.contains("services.web.balancer"),
        "{err}"
    );
    let err = run(good.replace("backend = \"web\"", "backend = \"nope\""));
    assert!(err.contains("nope"), "{err}");
    let err = run(good.replace(
        "[services.web]\n",
        "[services.web]\nlisten = \"127.0.0.1:0\"\n",
    ));
    assert!(err.contains("services.web.listen"), "{err}");
    // Nothing was added to HAProxy by the failed starts.
    assert!(ha.owned().is_empty(), "{:?}", ha.owned());
}

#[test]
fn instances_on_remote_hosts_behind_haproxy_in_place_under_load() {
    let Some(bed) = common::hostbed::HostBed::start(2) else {
        return;
    };
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ha) = Haproxy::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    common::fleet::write_app(dir.path());
    let cfg = common::fleet::config(
        &bed,
        "300ms",
        &format!(
            "[services.web.balancer]\nkind = \"haproxy\"\nsocket = \"{}\"\nbackend = \"web\"\n",
            ha.socket().display()
        ),
    )
    .replace("listen = \"127.0.0.1:0\"\n", "");
    std::fs::write(dir.path().join("handoff.toml"), cfg).unwrap();
    let env = haproxy::start_daemon(&ha, dir, 2, guard);
    // HAProxy reaches the instances on their hosts' addresses.
    assert!(
        ha.owned().iter().all(|s| s.addr.starts_with("10.77.")),
        "{:?}",
        ha.owned()
    );
    let l = load(env.web, 4);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", "app", "--batch", "1"]);
    let ended = Instant::now();
    assert!(ok, "{out}");
    assert!(out.contains("deployed: v2 serves service web"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let seen = l.finish();
    assert_eq!(
        versions_between(&seen, ended, Instant::now()),
        ["v2".to_string()].into()
    );
    owned_match_targets(&ha, &env);
    common::fleet::stop(env, &bed);
    assert!(ha.owned().is_empty(), "{:?}", ha.owned());
}

#[test]
fn servers_lost_to_a_haproxy_restart_are_added_again() {
    let Some((mut ha, env)) = haproxy::setup(2, SECTIONS) else {
        return;
    };
    ha.restart();
    // Gone with the old process; handoff notices and adds them again,
    // each taking traffic once HAProxy's own check has passed.
    owned_match_targets(&ha, &env);
    let (code, body) = http_get(env.web, "/").unwrap();
    assert!(
        code == 200 && body.contains("\"version\":\"v1\""),
        "{code} {body}"
    );
    let (_, st) = env.cli(&["status", "web"]);
    assert_eq!(st.matches("healthy").count(), 2, "{st}");
    stop(env);
}

#[test]
fn a_second_daemon_on_the_same_backend_never_touches_the_first_ones_servers() {
    let Some((ha, env)) = haproxy::setup(2, SECTIONS) else {
        return;
    };
    let first: Vec<Server> = ha.owned();
    assert_eq!(first.len(), 2, "{first:?}");
    // Another state dir, so another owner, on the same backend.
    let other = tempfile::tempdir().unwrap();
    write_app_script(other.path());
    std::fs::write(
        other.path().join("handoff.toml"),
        haproxy::config(&ha, 1, SECTIONS),
    )
    .unwrap();
    let cfg = other.path().join("handoff.toml");
    let mut second = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], other.path());
    second.wait_line("ready", Duration::from_secs(20));
    poll(
        "the second daemon's server UP",
        Duration::from_secs(20),
        || (ha.owned().len() == 3).then_some(()),
    );
    // Longer than the sweep's grace for servers no target claims: each
    // daemon's are another's strays only if it mistook them for its own.
    let watch = Instant::now() + haproxy_stray_grace() + Duration::from_secs(1);
    while Instant::now() < watch {
        let now = ha.owned();
        for s in &first {
            assert!(now.contains(s), "{s:?} changed: {now:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    second.signal(libc::SIGTERM);
    assert!(second.wait_exit(Duration::from_secs(30)).success());
    // The second one's server went with it; the first one's stayed.
    assert_eq!(ha.owned(), first);
    stop(env);
}

fn haproxy_stray_grace() -> Duration {
    handoff_controller::balancer::haproxy::STRAY_AFTER
}

#[test]
fn blue_green_without_steps_three_times_behind_haproxy() {
    let sections = SECTIONS.replace("traffic_steps = [50]", "traffic_steps = []");
    let Some((ha, env)) = haproxy::setup(2, &sections) else {
        return;
    };
    let l = load(env.web, 6);
    l.wait_for_requests(50);
    // A cut-over with no steps swaps every weight at once (green's are
    // raised before blue's fall: `in_order` in the balancer's pass).
    for (i, rev) in ["v2", "v3", "v4"].iter().enumerate() {
        let (ok, out) = env.cli(&["deploy", "web", rev, "--strategy", "blue-green"]);
        assert!(ok && out.contains("traffic 100% green"), "{out}");
        let (ok, out) = env.cli(&["promote", "web"]);
        assert!(ok, "deploy {i}: {out}");
        poll("blue gone", Duration::from_secs(20), || {
            (ha.owned().len() == 2).then_some(())
        });
    }
    let seen = l.finish();
    assert!(seen.iter().any(|(v, _)| v == "v4"));
    owned_match_targets(&ha, &env);
    stop(env);
}
