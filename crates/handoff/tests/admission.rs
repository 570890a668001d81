//! One admission point per service, and "rollback means back", through the
//! real daemon: requests sent at the same instant, rollback pressed twice,
//! a rollback target whose files were pruned or removed.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Duration;

use common::scenario::*;
use common::*;

/// An artifact directory for `revision`: a good one runs the sample app,
/// a bad one exits at once (so its deployment fails within a second).
fn artifact(root: &Path, revision: &str, good: bool) -> PathBuf {
    let dir = root.join(format!("art-{revision}"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = if good {
        format!(
            "#!/bin/sh\nexec {} sample-app --port \"$1\" --version \"$2\"\n",
            bin()
        )
    } else {
        "#!/bin/sh\necho 'this revision cannot start' >&2\nexit 3\n".to_string()
    };
    std::fs::write(dir.join("app.sh"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("app.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn deploy_body(revision: &str, artifact: &Path) -> String {
    serde_json::json!({
        "service": "web",
        "revision": revision,
        "artifact": artifact.display().to_string(),
    })
    .to_string()
}

fn wait_settled(env: &Env, id: &str) -> serde_json::Value {
    poll(&format!("{id} settled"), Duration::from_secs(40), || {
        let v = env.get(&format!("/deployments/{id}"));
        let s = v["status"].as_str().unwrap_or("").to_string();
        matches!(
            s.as_str(),
            "succeeded" | "rolled-back" | "failed" | "retained"
        )
        .then_some(v)
    })
}

fn instance_names(env: &Env) -> Vec<String> {
    let services = env.get("/services");
    let mut names: Vec<String> = services[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["targets"].as_array().unwrap().clone())
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn four_deploys_sent_at_once_admit_exactly_one() {
    let env = setup(2, "[services.web.in_place]\nbatch = 1\nmin_healthy = 1\n");
    let l = load(env.web, 2);
    l.wait_for_requests(50);
    let arts: Vec<PathBuf> = (2..6)
        .map(|i| artifact(env.dir.path(), &format!("v{i}"), true))
        .collect();
    let barrier = Barrier::new(arts.len());
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        arts.iter()
            .enumerate()
            .map(|(i, a)| {
                let (admin, token, barrier) = (env.admin, token(env.dir.path()), &barrier);
                let body = deploy_body(&format!("v{}", i + 2), a);
                s.spawn(move || {
                    barrier.wait();
                    post(admin, &token, "/deployments", &body)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    let admitted: Vec<&(u16, serde_json::Value)> = answers.iter().filter(|a| a.0 == 201).collect();
    assert_eq!(admitted.len(), 1, "exactly one admitted: {answers:?}");
    for (code, body) in answers.iter().filter(|a| a.0 != 201) {
        assert_eq!(*code, 409, "{body}");
        assert_eq!(body["error"]["code"], "conflict", "{body}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("already being deployed by web@") || m.contains("is busy"),
            "the conflict names the holder: {m}"
        );
    }
    let id = admitted[0].1["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("web@"), "{id}");
    let done = wait_settled(&env, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    // One deployment recorded, two instances with two names, one revision.
    let history = env.get("/services/web/deployments");
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(instance_names(&env), vec!["web-1", "web-2"]);
    let services = env.get("/services");
    // The configured port is 0: the API and status say which one it got.
    assert_eq!(services[0]["bound"], env.web.to_string(), "{services}");
    let (ok, status) = env.cli(&["status", "web"]);
    assert!(
        ok && status.contains(&format!("listen {}", env.web)),
        "{status}"
    );
    assert!(
        !status.contains("group blue"),
        "one group, no blue/green words: {status}"
    );
    let revs: Vec<&str> = services[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["targets"].as_array().unwrap().iter())
        .map(|t| t["revision"].as_str().unwrap())
        .collect();
    assert!(revs.iter().all(|r| *r == done["to"]), "{revs:?}");
    // The next deployment gets the next id, never a reused one.
    let (code, body) = env.post(
        "/deployments",
        &deploy_body("v9", &artifact(env.dir.path(), "v9", true)),
    );
    assert_eq!(code, 201, "{body}");
    assert_ne!(body["id"], id);
    wait_settled(&env, body["id"].as_str().unwrap());
    l.finish();
    stop(env);
}

#[test]
fn rollback_pressed_twice_never_redeploys_the_bad_revision() {
    let env = setup(2, "");
    let l = load(env.web, 2);
    l.wait_for_requests(50);
    let (ok, out) = env.cli(&["deploy", "web", "v3", "--strategy", "blue-green"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("deployment web@1"),
        "deploy prints its id: {out}"
    );
    let (ok, out) = env.cli(&["rollback", "web"]);
    assert!(ok, "{out}");
    assert!(out.contains("flips back"), "{out}");
    // Pressed again: v3 was rolled back, v1 never had a predecessor.
    let (ok, out) = env.cli(&["rollback", "web"]);
    assert!(
        !ok,
        "a rollback with nothing to go back to exits non-zero: {out}"
    );
    assert!(out.contains("nothing to roll back to"), "{out}");
    let history = env.get("/services/web/deployments");
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "no new deployment: {history}"
    );
    let revs = env.get("/services/web/revisions");
    let v3 = revs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "v3")
        .unwrap();
    assert_eq!(v3["stable"], false, "{revs}");
    let (ok, out) = env.cli(&["rollback", "web", "--to", "v3"]);
    assert!(!ok && out.contains("was rolled back in web@1"), "{out}");
    let seen = l.finish();
    assert_eq!(seen.last().map(|x| x.0.as_str()), Some("v1"));
    stop(env);
}

#[test]
fn a_pruned_rollback_target_is_kept_or_refused_up_front() {
    let env = setup(2, "[services.web.in_place]\nbatch = 2\nmin_healthy = 0\n");
    // releases_kept is a [server] key: rewrite the config? No: the default
    // (5) with five failed releases after v2 and v3 shows the same thing.
    let root = env.dir.path().to_path_buf();
    for (rev, good) in [("v2", true), ("v3", true)] {
        let (ok, out) = env.cli(&[
            "deploy",
            "web",
            rev,
            "--artifact",
            artifact(&root, rev, good).to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
    }
    for i in 1..=5 {
        let rev = format!("bad{i}");
        let (ok, out) = env.cli(&[
            "deploy",
            "web",
            &rev,
            "--artifact",
            artifact(&root, &rev, false).to_str().unwrap(),
        ]);
        assert!(!ok, "a deploy that rolled back exits non-zero: {out}");
    }
    let releases = root.join("state/releases/web");
    let kept: Vec<String> = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        kept.contains(&"v2".to_string()) && kept.contains(&"v3".to_string()),
        "failed releases go first, the rollback target never: {kept:?}"
    );
    // The rollback target's files removed by hand: refused up front.
    std::fs::remove_dir_all(releases.join("v2")).unwrap();
    let (ok, out) = env.cli(&["rollback", "web"]);
    assert!(!ok, "{out}");
    assert!(out.contains("files of v2 are gone"), "{out}");
    assert_eq!(
        env.get("/services/web/deployments")
            .as_array()
            .unwrap()
            .len(),
        7,
        "no deployment was started"
    );
    // Going back to v1 (no artifact) works, and says so.
    let (ok, out) = env.cli(&["rollback", "web", "--to", "v1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("rolled back: v1 serves service web again"),
        "{out}"
    );
    stop(env);
}

#[test]
fn ctrl_c_of_deploy_says_the_deployment_goes_on_and_follow_picks_it_up() {
    use std::io::{BufRead, BufReader, Read};
    let env = setup(2, "[services.web.in_place]\nbatch = 1\nmin_healthy = 1\n");
    let mut child = std::process::Command::new(bin())
        .args(["deploy", "web", "v2"])
        .env("HANDOFF_ADMIN", format!("http://{}", env.admin))
        .current_dir(env.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(
        first.trim(),
        "deployment web@1",
        "deploy prints its id first"
    );
    // SAFETY: kill(2) on the CLI process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = poll("the CLI exits", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("deployment web@1 goes on in the daemon"),
        "{err}"
    );
    assert!(
        err.contains("handoff follow web@1") && err.contains("handoff abort web"),
        "{err}"
    );
    // It did go on; `follow` picks it up and exits 0 when v2 serves.
    let (ok, out) = env.cli(&["follow", "web@1"]);
    assert!(ok, "{out}");
    assert!(out.contains("deployed: v2 serves service web"), "{out}");
    stop(env);
}

#[test]
fn a_broken_revision_that_never_served_can_be_fixed_under_the_same_id() {
    let env = setup(2, "[services.web.in_place]\nbatch = 1\nmin_healthy = 1\n");
    let root = env.dir.path().to_path_buf();
    let broken = artifact(&root, "v2", false);
    let (ok, out) = env.cli(&[
        "deploy",
        "web",
        "v2",
        "--artifact",
        broken.to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    // The fixed build, same id, other content: accepted, and it serves.
    let fixed = root.join("fixed-v2");
    std::fs::create_dir_all(&fixed).unwrap();
    std::fs::copy(
        artifact(&root, "good", true).join("app.sh"),
        fixed.join("app.sh"),
    )
    .unwrap();
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", fixed.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("deployed: v2 serves"), "{out}");
    // Now v2 served: new content under its id is refused, saying what to do.
    let other = root.join("other-v2");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(fixed.join("app.sh"), other.join("app.sh")).unwrap();
    std::fs::write(other.join("extra.txt"), "changed").unwrap();
    let (ok, out) = env.cli(&["deploy", "web", "v2", "--artifact", other.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("it served") && out.contains("under a new revision id"),
        "{out}"
    );
    stop(env);
}

#[test]
fn rollback_pressed_during_a_rollback_deployment_is_refused() {
    let env = setup(2, "[services.web.in_place]\nbatch = 1\nmin_healthy = 1\n");
    for rev in ["v2", "v3"] {
        let (ok, out) = env.cli(&["deploy", "web", rev]);
        assert!(ok, "{out}");
    }
    let (code, first) = env.post("/services/web/rollback", "");
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["rollback"], "deploy");
    // Pressed again while it runs: aborting it would go back to v3.
    let (code, again) = env.post("/services/web/rollback", "");
    assert_eq!(code, 409, "{again}");
    let m = again["error"]["message"].as_str().unwrap();
    assert!(m.contains("is already rolling back"), "{m}");
    let id = first["id"].as_str().unwrap();
    let done = wait_settled(&env, id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["to"], "v2");
    stop(env);
}
