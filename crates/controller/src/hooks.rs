//! Lifecycle hooks: shell commands run at named points of a deployment.
//!
//! Each run is `/bin/sh -c COMMAND` in the revision's release directory,
//! in its own process group (a hook that hangs past `hooks.timeout` is
//! killed with everything it started), with `HANDOFF_SERVICE`,
//! `HANDOFF_REVISION`, `HANDOFF_FROM_REVISION`, `HANDOFF_INSTANCE` (empty
//! for once-per-deployment hooks), `HANDOFF_PHASE` (the hook's name) and
//! `HANDOFF_DEPLOYMENT` set. Its output (stdout and stderr, last 16 KiB) is
//! kept with the deployment's events.
//!
//! Why `migrate_expand` / `migrate_contract` exist: both strategies run old
//! and new code side by side, so a schema change that the old code cannot
//! read breaks the old instances still serving. Expand (add columns/tables,
//! backward compatible) runs once before any new instance starts; contract
//! (drop what only the old code used) runs once when no old instance can
//! serve again — after the last in-place batch, or after blue is
//! terminated — never earlier.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

const KEEP_OUTPUT: usize = 16 * 1024;

pub struct HookEnv<'a> {
    pub service: &'a str,
    pub revision: &'a str,
    pub from: &'a str,
    pub deployment: &'a str,
    pub instance: &'a str,
    pub phase: &'a str,
}

impl HookEnv<'_> {
    /// The variables a hook gets, by name.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("HANDOFF_SERVICE", self.service),
            ("HANDOFF_REVISION", self.revision),
            ("HANDOFF_FROM_REVISION", self.from),
            ("HANDOFF_DEPLOYMENT", self.deployment),
            ("HANDOFF_INSTANCE", self.instance),
            ("HANDOFF_PHASE", self.phase),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// How a hook run ended: `Ok(output)` or `Err(reason with output)`.
pub async fn run(
    cmd: &str,
    env: &HookEnv<'_>,
    dir: &Path,
    timeout: Duration,
) -> (Result<(), String>, String, Duration) {
    let started = Instant::now();
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .envs(env.vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setsid is async-signal-safe; the hook gets its own group so a
    // timeout can kill everything it started.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                Err(format!("cannot run `{cmd}`: {e}")),
                String::new(),
                started.elapsed(),
            )
        }
    };
    let pid = child.id().unwrap_or(0) as i32;
    let (mut so, mut se) = (child.stdout.take(), child.stderr.take());
    let read_all = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let a = async {
            if let Some(s) = so.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let b = async {
            if let Some(s) = se.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(a, b);
        out.extend_from_slice(&err);
        out
    };
    let waited = tokio::time::timeout(timeout, async {
        let out = read_all.await;
        (child.wait().await, out)
    })
    .await;
    let (result, out) = match waited {
        Ok((Ok(st), out)) if st.success() => (Ok(()), out),
        Ok((Ok(st), out)) => (Err(format!("exited with {st}")), out),
        Ok((Err(e), out)) => (Err(format!("cannot wait for it: {e}")), out),
        Err(_) => {
            if pid > 1 {
                // SAFETY: kill(2) on the hook's own process group.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            (
                Err(format!(
                    "still running after hooks.timeout {}; killed",
                    handoff_core::duration::format(timeout)
                )),
                Vec::new(),
            )
        }
    };
    let mut text =
        String::from_utf8_lossy(&out[out.len().saturating_sub(KEEP_OUTPUT)..]).into_owned();
    if text.ends_with('\n') {
        text.pop();
    }
    (result, text, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv<'static> {
        HookEnv {
            service: "web",
            revision: "v2",
            from: "v1",
            deployment: "web-1",
            instance: "web-3",
            phase: "before_install",
        }
    }

    #[tokio::test]
    async fn runs_with_env_and_keeps_output() {
        let d = tempfile::tempdir().unwrap();
        let (r, out, _) = run("echo $HANDOFF_PHASE $HANDOFF_REVISION $HANDOFF_FROM_REVISION $HANDOFF_INSTANCE; echo oops >&2", &env(), d.path(), Duration::from_secs(5)).await;
        assert!(r.is_ok());
        assert_eq!(out, "before_install v2 v1 web-3\noops");
    }

    /// Values reach a hook only as environment variables, never pasted
    /// into its command: one that looks like shell code stays data.
    #[tokio::test]
    async fn values_are_data_not_code() {
        let d = tempfile::tempdir().unwrap();
        let env = HookEnv {
            revision: "$(touch pwned);touch pwned",
            ..env()
        };
        let (r, out, _) = run(
            "echo \"$HANDOFF_REVISION\"",
            &env,
            d.path(),
            Duration::from_secs(5),
        )
        .await;
        assert!(r.is_ok());
        assert_eq!(out, "$(touch pwned);touch pwned");
        assert!(!d.path().join("pwned").exists());
    }

    #[tokio::test]
    async fn failure_and_timeout_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let (r, out, _) = run(
            "echo nope; exit 3",
            &env(),
            d.path(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.unwrap_err(), "exited with exit status: 3");
        assert_eq!(out, "nope");
        let t = Instant::now();
        let (r, _, _) = run(
            "sleep 30 & sleep 30",
            &env(),
            d.path(),
            Duration::from_millis(200),
        )
        .await;
        assert!(r
            .unwrap_err()
            .contains("still running after hooks.timeout 200ms; killed"));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
