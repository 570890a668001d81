use super::*;

fn spec(dir: &Path, name: &str, command: &str) -> InstanceSpec {
    InstanceSpec {
        host: None,
        service: "web".into(),
        instance: name.into(),
        revision: "v1".into(),
        port: ports::allocate(None, &[]).unwrap(),
        command: command.into(),
        release_dir: dir.join("release"),
    }
}

#[tokio::test]
async fn starts_in_own_group_with_env_and_stops_gracefully() {
    let d = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(d.path()).unwrap();
    // The shell traps TERM and exits 0: a graceful app.
    let s = spec(d.path(), "web-1", "sh -c 'echo port=$PORT rev={revision} inst=$HANDOFF_INSTANCE pwd=$(pwd); trap \"exit 0\" TERM; while true; do sleep 0.05; done'");
    let inst = rt.start(&s).await.unwrap();
    assert!(rt.is_alive(&inst));
    // Own session: pgid == pid.
    assert_eq!(unsafe { libc::getpgid(inst.pid as i32) }, inst.pid as i32);
    let out = rt.stop(&inst, Duration::from_secs(5)).await;
    assert_eq!(out, StopOutcome::Graceful(Exit::Code(0)));
    assert!(!rt.is_alive(&inst));
    assert!(
        !procfs::group_alive(inst.pid),
        "nothing of the group is left"
    );
    let log = std::fs::read_to_string(rt.log_path("web", "web-1")).unwrap();
    assert!(
        log.contains(&format!("port={} rev=v1 inst=web-1", s.port)),
        "{log}"
    );
    assert!(log.contains("release"), "{log}");
}

#[tokio::test]
async fn stop_kills_the_whole_group_after_grace() {
    let d = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(d.path()).unwrap();
    // Ignores TERM and has a child of its own that ignores it too.
    let s = spec(
        d.path(),
        "web-1",
        "sh -c 'trap \"\" TERM; (trap \"\" TERM; sleep 60) & sleep 60'",
    );
    let inst = rt.start(&s).await.unwrap();
    let t = std::time::Instant::now();
    let out = rt.stop(&inst, Duration::from_millis(300)).await;
    assert_eq!(out, StopOutcome::Killed);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while procfs::group_alive(inst.pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "orphans left in group {}",
            inst.pid
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn clear_errors_for_bad_starts() {
    let d = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(d.path()).unwrap();
    let e = rt
        .start(&spec(d.path(), "web-1", "no-such-binary-xyz --port {port}"))
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::CommandNotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("command not found: `no-such-binary-xyz --port"),
        "{e}"
    );

    let e = rt
        .start(&spec(d.path(), "web-2", "sh -c 'echo boom >&2; exit 3'"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::ExitedDuringStart {
                exit: Exit::Code(3),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("boom"), "{e}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = spec(d.path(), "web-3", "sleep 5");
    s.port = busy.local_addr().unwrap().port();
    let e = rt.start(&s).await.unwrap_err();
    assert!(matches!(e, RuntimeError::PortInUse { .. }), "{e}");

    let e = rt
        .start(&spec(d.path(), "web-4", "app {nope}"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown placeholder {nope}"), "{e}");
}

#[tokio::test]
async fn exit_is_reported_and_identity_checked() {
    let d = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(d.path()).unwrap();
    let inst = rt
        .start(&spec(d.path(), "web-1", "sh -c 'sleep 0.4; exit 7'"))
        .await
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), rt.exited(&inst))
        .await
        .unwrap();
    assert_eq!(exit, Exit::Code(7));
    assert!(!rt.is_alive(&inst));
    // A recorded pid with the wrong start time is never "alive".
    let me = RunningInstance {
        pid: std::process::id(),
        start_time: 1,
        ..inst.clone()
    };
    assert!(!rt.is_alive(&me));
}

#[tokio::test]
async fn adopted_processes_are_watched_through_proc() {
    let d = tempfile::tempdir().unwrap();
    let first = ProcessRuntime::new(d.path()).unwrap();
    let inst = first
        .start(&spec(d.path(), "web-1", "sleep 30"))
        .await
        .unwrap();
    // A new runtime (as after a daemon restart) did not spawn it.
    let second = ProcessRuntime::new(d.path()).unwrap();
    assert!(second.is_alive(&inst));
    let marked = procfs::marked_processes(d.path());
    assert!(
        marked
            .iter()
            .any(|(p, s, i)| *p == inst.pid && s == "web" && i == "web-1"),
        "{marked:?}"
    );
    let out = second.stop(&inst, Duration::from_secs(2)).await;
    assert!(matches!(out, StopOutcome::Graceful(_)), "{out:?}");
    assert!(!second.is_alive(&inst));
}
