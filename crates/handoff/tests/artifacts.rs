//! End to end: a revision's artifact is installed into its release
//! directory, instances run there, changed content under the same revision
//! id is refused, and old releases are pruned.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

fn app_dir(root: &Path, version: &str) -> std::path::PathBuf {
    let d = root.join(format!("app-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    // Reads its version from a file next to it: proves the working
    // directory is the release directory.
    std::fs::write(
        d.join("run.sh"),
        "#!/bin/sh\nexec \"$2\" sample-app --port \"$1\" --version \"$(cat VERSION)\"\n",
    )
    .unwrap();
    std::fs::set_permissions(d.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("VERSION"), format!("{version}-from-artifact")).unwrap();
    d
}

fn config(dir: &Path, revision: &str, artifact: &str) -> std::path::PathBuf {
    let cfg = dir.join("handoff.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\nstate_dir = \"state\"\nreleases_kept = 1\n\
             [services.web]\nlisten = \"127.0.0.1:0\"\nrevision = \"{revision}\"\ninstances = 1\n\
             artifact = \"{artifact}\"\ncommand = \"./run.sh {{port}} {bin}\"\n\
             [services.web.health]\ninterval = \"100ms\"\nmin_healthy_time = \"300ms\"\n",
            bin = bin()
        ),
    )
    .unwrap();
    cfg
}

fn serve_once(dir: &Path, cfg: &Path, expect_version: &str) {
    let mut d = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir);
    let web = addr_of(&d.wait_line("listening service=web", Duration::from_secs(20)));
    d.wait_line("ready", Duration::from_secs(20));
    poll("artifact's app serving", Duration::from_secs(20), || {
        let (s, body) = http_get(web, "/").ok()?;
        (s == 200 && body.contains(&format!("\"version\":\"{expect_version}\""))).then_some(())
    });
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        d.stderr()
    );
}

#[test]
fn artifacts_install_once_refuse_changes_and_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = app_dir(dir.path(), "v1");
    let cfg = config(dir.path(), "v1", "app-v1");
    serve_once(dir.path(), &cfg, "v1-from-artifact");
    let rel_v1 = dir.path().join("state/releases/web/v1");
    assert!(rel_v1.join(".handoff-sha256").exists());

    // Same revision id, different content: refused, clearly.
    std::fs::write(v1.join("VERSION"), "tampered").unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("revision v1 of service web was already installed from different content"),
        "{err}"
    );

    // v2 from a .tar.gz: installed and serving; v1's release is kept
    // although releases_kept = 1: it is what a rollback would go back to.
    let v2 = app_dir(dir.path(), "v2");
    let tgz = dir.path().join("app-v2.tar.gz");
    {
        let f = std::fs::File::create(&tgz).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        b.append_dir_all(".", &v2).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    std::fs::remove_dir_all(&v2).unwrap();
    let cfg = config(dir.path(), "v2", "app-v2.tar.gz");
    serve_once(dir.path(), &cfg, "v2-from-artifact");
    assert!(dir.path().join("state/releases/web/v2/run.sh").exists());
    assert!(rel_v1.exists(), "the rollback target's release was pruned");
}

#[test]
fn a_missing_artifact_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "v1", "nowhere.tar.gz");
    let out = std::process::Command::new(bin())
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services.web.artifact:") && err.contains("nowhere.tar.gz does not exist"),
        "{err}"
    );
}

#[test]
fn deploy_with_an_artifact_and_roll_back_without_the_original() {
    let dir = tempfile::tempdir().unwrap();
    app_dir(dir.path(), "v1");
    let cfg = config(dir.path(), "v1", "app-v1");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("releases_kept = 1", "releases_kept = 3"),
    )
    .unwrap();
    let mut d = Proc::spawn(&["serve", "-c", cfg.to_str().unwrap()], dir.path());
    let web = addr_of(&d.wait_line("listening service=web", Duration::from_secs(20)));
    let admin = addr_of(&d.wait_line("admin", Duration::from_secs(20)));
    d.wait_line("ready", Duration::from_secs(20));
    let version = || -> Option<String> {
        let (_, b) = http_get(web, "/").ok()?;
        b.split("\"version\":\"")
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_string)
    };
    poll("v1 serving", Duration::from_secs(20), || {
        (version()? == "v1-from-artifact").then_some(())
    });
    let v2 = app_dir(dir.path(), "v2");
    let tgz = dir.path().join("app-v2.tar.gz");
    {
        let f = std::fs::File::create(&tgz).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        b.append_dir_all(".", &v2).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let cli = |args: &[&str]| cli(admin, dir.path(), args);
    let (ok, out) = cli(&["deploy", "web", "v2", "--artifact", "app-v2.tar.gz"]);
    assert!(ok, "{out}");
    assert_eq!(version().unwrap(), "v2-from-artifact");
    // The originals go; rollback and redeploy use the installed releases.
    std::fs::remove_file(&tgz).unwrap();
    std::fs::remove_dir_all(&v2).unwrap();
    let (ok, out) = cli(&["rollback", "web"]);
    assert!(ok, "{out}");
    assert_eq!(version().unwrap(), "v1-from-artifact");
    let (ok, out) = cli(&["deploy", "web", "v2"]);
    assert!(ok, "{out}");
    assert_eq!(version().unwrap(), "v2-from-artifact");
    let (ok, out) = cli(&["deploy", "web", "v3", "--artifact", "missing.tar.gz"]);
    assert!(!ok && out.contains("--artifact missing.tar.gz"), "{out}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
}
