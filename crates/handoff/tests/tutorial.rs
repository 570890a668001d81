//! `docs/tutorial.md` runs as written. Its marked blocks are its steps:
//!
//! - `<!-- tutorial: file NAME -->`: the block is saved as NAME;
//! - `<!-- tutorial: serve -->`: the daemon, left running;
//! - `<!-- tutorial: run -->`: each line is a shell command run in the
//!   tutorial's directory (with this build's `handoff` first on `PATH`),
//!   which must succeed; a comment `# → TEXT` is output it must show.
//!
//! The only change: the tutorial's fixed addresses (127.0.0.1:8080 and
//! :9900) become free loopback ports. Until the first deploy the daemon may
//! still be starting its instances, so expectations are polled; after a
//! deploy or rollback returned they must hold at once. At the end Ctrl-C
//! (SIGINT) must stop the daemon and every instance it started.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

enum Step {
    File(String, String),
    Serve(String),
    Run(Vec<String>),
}

/// The marked blocks of `text`, in order.
fn steps(text: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("<!-- tutorial: ") {
        let after = &rest[at + "<!-- tutorial: ".len()..];
        let (mark, after) = after.split_once(" -->\n").expect("unclosed marker");
        let after = after
            .strip_prefix("```")
            .expect("a marker precedes a block");
        let (_info, after) = after.split_once('\n').unwrap();
        let (block, after) = after.split_once("```\n").expect("unclosed block");
        rest = after;
        let lines = || {
            block
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        out.push(match mark.split_once(' ') {
            Some(("file", name)) => Step::File(name.to_string(), block.to_string()),
            None if mark == "serve" => {
                let l = lines();
                assert_eq!(l.len(), 1, "a serve block is one command: {l:?}");
                Step::Serve(l[0].clone())
            }
            None if mark == "run" => Step::Run(lines()),
            _ => panic!("unknown tutorial marker {mark:?}"),
        });
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `command  # → expected` → (command, Some(expected)).
fn split_expect(line: &str) -> (&str, Option<&str>) {
    match line.split_once(" # ") {
        Some((cmd, comment)) => (cmd.trim(), comment.trim().strip_prefix("→ ")),
        None => (line.trim(), None),
    }
}

struct Ran {
    ok: bool,
    out: String,
}

/// Runs `line` with `/bin/sh` in `dir`, in its own process group, killed
/// (group and all) past `limit`.
fn sh(line: &str, dir: &Path, path: &str, limit: Duration) -> Ran {
    let (out_file, err_file) = (dir.join(".step.out"), dir.join(".step.err"));
    let mut child = Command::new("/bin/sh")
        .args(["-c", line])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("HANDOFF_ADMIN")
        .env_remove("HANDOFF_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the process group this test just made.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            panic!(
                "`{line}` did not finish within {limit:?}:\n{}{}",
                std::fs::read_to_string(&out_file).unwrap_or_default(),
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        ok: status.success(),
        out: std::fs::read_to_string(&out_file).unwrap()
            + &std::fs::read_to_string(&err_file).unwrap(),
    }
}

#[test]
fn the_tutorial_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/tutorial.md")).unwrap();
    let app = std::fs::read_to_string(root.join("examples/tutorial/app.py")).unwrap();
    let (web, admin) = (free_port(), free_port());
    let text = text
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{web}"))
        .replace("127.0.0.1:9900", &format!("127.0.0.1:{admin}"));
    let steps = steps(&text);

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let bin_dir = Path::new(bin()).parent().unwrap().display().to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let have_curl = sh("command -v curl", dir, &path, Duration::from_secs(10)).ok;

    let mut daemon: Option<Proc> = None;
    let mut settled = false;
    let mut seen = Vec::new();
    for step in steps {
        match step {
            Step::File(name, body) => {
                if name == "app.py" {
                    assert_eq!(
                        body, app,
                        "the tutorial's app.py differs from examples/tutorial/app.py"
                    );
                }
                std::fs::write(dir.join(&name), body).unwrap();
                seen.push(format!("file {name}"));
            }
            Step::Serve(line) => {
                let args: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(args[..2], ["handoff", "serve"], "{line}");
                let mut d = Proc::spawn(&args[1..], dir);
                let listening = d.wait_line("listening service=shop", Duration::from_secs(30));
                assert_eq!(addr_of(&listening).port(), web, "{listening}");
                let link = d.wait_line("dashboard ", Duration::from_secs(30));
                assert!(
                    link.starts_with(&format!("dashboard http://127.0.0.1:{admin}/#token=")),
                    "{link}"
                );
                d.wait_line("ready", Duration::from_secs(30));
                daemon = Some(d);
                seen.push("serve".into());
            }
            Step::Run(lines) => {
                for line in lines {
                    assert!(daemon.is_some(), "`{line}` before the daemon runs");
                    let (cmd, expect) = split_expect(&line);
                    let deploys =
                        cmd.starts_with("handoff deploy ") || cmd.starts_with("handoff rollback ");
                    let run = |cmd: &str| -> Ran {
                        match cmd.strip_prefix("curl ") {
                            // Without curl on the machine: the same GET.
                            Some(url) if !have_curl => {
                                let url = url.trim().strip_prefix("http://").unwrap();
                                let (host, p) = url.split_once('/').unwrap();
                                match http_get(host.parse().unwrap(), &format!("/{p}")) {
                                    Ok((s, body)) => Ran {
                                        ok: s == 200,
                                        out: body,
                                    },
                                    Err(e) => Ran {
                                        ok: false,
                                        out: e.to_string(),
                                    },
                                }
                            }
                            _ => sh(cmd, dir, &path, Duration::from_secs(180)),
                        }
                    };
                    let meets = |r: &Ran| {
                        r.ok && expect.iter().all(|e| r.out.contains(e))
                            && (cmd != "handoff status" || all_healthy(&r.out, 3))
                    };
                    let r = if settled || deploys {
                        run(cmd)
                    } else {
                        // The daemon is ready, its instances may still be
                        // getting healthy.
                        let deadline = Instant::now() + Duration::from_secs(60);
                        loop {
                            let r = run(cmd);
                            if meets(&r) || Instant::now() > deadline {
                                break r;
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    };
                    assert!(meets(&r), "`{cmd}` (expected {expect:?}):\n{}", r.out);
                    if deploys {
                        settled = true;
                        // Once it returned, every request is answered by
                        // the new revision.
                        seen.push(cmd.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
                    }
                    if cmd.starts_with("handoff deploy ") && cmd.contains("--artifact") {
                        assert!(
                            r.out.starts_with("deployment shop@"),
                            "deploy prints its id first:\n{}",
                            r.out
                        );
                        assert!(
                            dir.join(".handoff/releases/shop/v2/app.py").exists(),
                            "v2 was not installed into its release directory"
                        );
                        seen.push("artifact".into());
                    }
                    if cmd.starts_with("curl ") {
                        // Not one request from another revision.
                        for _ in 0..10 {
                            let again = run(cmd);
                            assert!(meets(&again), "`{cmd}` then:\n{}", again.out);
                        }
                    }
                }
            }
        }
    }
    for must in [
        "file app.py",
        "file handoff.toml",
        "serve",
        "handoff deploy",
        "artifact",
        "handoff rollback",
    ] {
        assert!(
            seen.iter().any(|s| s == must),
            "the tutorial has no `{must}` step any more: {seen:?}"
        );
    }

    // Ctrl-C stops the daemon and its instances.
    let mut d = daemon.unwrap();
    d.signal(libc::SIGINT);
    assert!(
        d.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        d.stderr()
    );
    let state = dir.join(".handoff");
    poll("every instance stopped", Duration::from_secs(10), || {
        handoff_runtime::procfs::marked_processes(&state)
            .is_empty()
            .then_some(())
    });
}

/// `handoff status` shows `n` instances, each healthy.
fn all_healthy(status: &str, n: usize) -> bool {
    let rows: Vec<&str> = status
        .lines()
        .filter(|l| l.trim_start().starts_with("shop-"))
        .collect();
    rows.len() == n
        && rows
            .iter()
            .all(|l| l.contains("healthy") && !l.contains("unhealthy"))
}

#[test]
fn markers_parse() {
    let doc = "x\n<!-- tutorial: file a.txt -->\n```text\nhi\n```\n\
               <!-- tutorial: run -->\n```sh\necho a   # → a\n\necho b\n```\n";
    let s = steps(doc);
    assert!(matches!(&s[0], Step::File(n, b) if n == "a.txt" && b == "hi\n"));
    assert!(matches!(&s[1], Step::Run(l) if l.len() == 2));
    assert_eq!(split_expect("echo a   # → a"), ("echo a", Some("a")));
    assert_eq!(split_expect("echo b  # a remark"), ("echo b", None));
}
