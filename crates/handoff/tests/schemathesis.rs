//! The admin API against schemathesis (property-based tests generated from
//! `GET /openapi.json`): a short run against the real daemon, with a
//! managed service and a static one, must find no 5xx answer.
//!
//! schemathesis comes from PyPI (`.ci/run` installs it). Without it the
//! test is skipped with a message, except in CI, where it must run.
//! `SCHEMATHESIS_SECS` bounds the run (default 60).

mod common;

use std::process::Command;
use std::time::Duration;

use common::scenario::*;
use common::*;

fn schemathesis() -> Option<String> {
    for c in ["schemathesis", "st"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(c.to_string());
        }
    }
    None
}

#[test]
fn schemathesis_finds_no_server_error_in_the_admin_api() {
    let Some(st) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is missing in CI: `.ci/run` installs it with pip"
        );
        eprintln!("skipped: schemathesis not installed (`pip install schemathesis`)");
        return;
    };
    let env = setup(2, "");
    let secs = std::env::var("SCHEMATHESIS_SECS").unwrap_or_else(|_| "60".into());
    let out = Command::new(&st)
        .args([
            "run",
            &format!("http://{}/openapi.json", env.admin),
            "--checks",
            "not_a_server_error",
            "--header",
            &format!("Authorization: Bearer {}", token(env.dir.path())),
            "--max-time",
            &secs,
            "--workers",
            "1",
            "--max-examples",
            "40",
            "--suppress-health-check",
            "all",
            "--no-color",
            // These hand the daemon over to a new process: not for a fuzzer.
            "--exclude-path",
            "/reload",
            "--exclude-path",
            "/upgrade",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(env.dir.path())
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{}",
        text.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // The daemon is still whole: it answers and stops cleanly.
    let (code, _) = admin_get(env.admin, env.dir.path(), "/services").unwrap();
    assert_eq!(code, 200);
    let _ = Duration::ZERO;
    stop(env);
}
