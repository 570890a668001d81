use super::*;

fn inst(name: &str, port: u16) -> InstanceRecord {
    InstanceRecord {
        service: "web".into(),
        name: name.into(),
        revision: "v1".into(),
        port,
        pid: 42,
        start_time: 123,
        status: "running".into(),
        restarts: 0,
        group: "blue".into(),
        host: String::new(),
        address: String::new(),
    }
}

#[test]
fn instances_round_trip_in_name_order() {
    let s = Store::memory().unwrap();
    s.put_instance(&inst("web-10", 3)).unwrap();
    s.put_instance(&inst("web-2", 2)).unwrap();
    s.put_instance(&inst("web-1", 1)).unwrap();
    let mut changed = inst("web-2", 2);
    changed.pid = 99;
    changed.restarts = 3;
    s.put_instance(&changed).unwrap();
    let all = s.instances("web").unwrap();
    assert_eq!(
        all.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["web-1", "web-2", "web-10"]
    );
    assert_eq!(all[1], changed);
    s.delete_instance("web", "web-1").unwrap();
    assert_eq!(s.instances("web").unwrap().len(), 2);
    assert!(s.instances("other").unwrap().is_empty());
}

#[test]
fn revisions_are_immutable() {
    let s = Store::memory().unwrap();
    let r = RevisionRecord {
        service: "web".into(),
        id: "v1".into(),
        artifact: Some("/a.tgz".into()),
        sha256: Some("abc".into()),
        created_ms: 1,
    };
    assert_eq!(s.put_revision(&r).unwrap(), r);
    let again = RevisionRecord {
        sha256: Some("other".into()),
        ..r.clone()
    };
    assert_eq!(s.put_revision(&again).unwrap(), r, "first record wins");
    assert_eq!(s.revision("web", "v1").unwrap(), Some(r));
    assert_eq!(s.revision("web", "v2").unwrap(), None);
}

#[test]
fn events_keep_order_and_limit() {
    let s = Store::memory().unwrap();
    for i in 0..5 {
        s.event("web", Some("web-1"), "restart", &format!("n{i}"))
            .unwrap();
    }
    s.event("api", None, "x", "other service").unwrap();
    let ev = s.events("web", 3).unwrap();
    assert_eq!(
        ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["n2", "n3", "n4"]
    );
}

#[test]
fn file_database_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.put_instance(&inst("web-1", 7)).unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.instances("web").unwrap()[0].port, 7);
    assert_eq!(s.schema_version().unwrap(), migrations::LATEST);
}

#[test]
fn migrates_a_v1_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Connection::open(dir.path().join("handoff.db")).unwrap();
        migrations::migrate_to(&c, 1).unwrap();
        c.execute(
            "INSERT INTO instances (service, name, revision, port, pid, start_time, status, updated_ms)
             VALUES ('web', 'web-1', 'v1', 5000, 10, 20, 'running', 0)",
            [],
        )
        .unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    let i = &s.instances("web").unwrap()[0];
    assert_eq!((i.port, i.restarts), (5000, 0));
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Connection::open(dir.path().join("handoff.db")).unwrap();
        c.pragma_update(None, "user_version", 999).unwrap();
    }
    let e = Store::open(dir.path()).err().unwrap();
    assert!(
        e.to_string()
            .contains("newer than this handoff understands"),
        "{e}"
    );
}

#[test]
fn deployment_state_and_events_are_written_together() {
    let s = Store::memory().unwrap();
    let mut d = running_web_1();
    s.save_deployment(&d, Some(("start", "deploying v2")))
        .unwrap();
    d.status = "succeeded".into();
    d.report = Some("{\"ok\":1}".into());
    s.save_deployment(&d, Some(("done", "v2 serves"))).unwrap();
    let got = s.deployment("web-1").unwrap().unwrap();
    assert_eq!(
        (got.status.as_str(), got.report.as_deref()),
        ("succeeded", Some("{\"ok\":1}"))
    );
    let ev = s.deployment_events("web-1").unwrap();
    assert_eq!(
        ev.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        ["start", "done"]
    );
    assert_eq!(s.deployments("web", 10).unwrap().len(), 1);
}

#[test]
fn current_and_last_stable_revisions() {
    let s = Store::memory().unwrap();
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        s.put_revision(&RevisionRecord {
            service: "web".into(),
            id: v.to_string(),
            artifact: None,
            sha256: None,
            created_ms: i as i64,
        })
        .unwrap();
    }
    assert_eq!(s.current_revision("web").unwrap(), None);
    s.set_current_revision("web", "v1").unwrap();
    s.set_current_revision("web", "v2").unwrap();
    assert_eq!(s.current_revision("web").unwrap().as_deref(), Some("v2"));
    assert!(s.is_stable("web", "v1").unwrap() && s.is_stable("web", "v2").unwrap());
    assert!(!s.is_stable("web", "v3").unwrap());
}

#[test]
fn deployment_ids_are_never_handed_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    // Two deployments recorded before numbers existed: numbering follows.
    for id in ["web-1", "web-2"] {
        s.save_deployment(
            &DeploymentRecord {
                id: id.into(),
                ..running_web_1()
            },
            None,
        )
        .unwrap();
    }
    assert_eq!(s.next_deployment_id("web").unwrap(), "web@3");
    // A number handed out but never saved is not handed out again.
    assert_eq!(s.next_deployment_id("web").unwrap(), "web@4");
    assert_eq!(s.next_deployment_id("api").unwrap(), "api@1");
    drop(s);
    let s = std::sync::Arc::new(Store::open(dir.path()).unwrap());
    assert_eq!(s.next_deployment_id("web").unwrap(), "web@5");
    // Concurrent callers each get their own.
    let ids: Vec<String> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.next_deployment_id("web").unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 8, "{ids:?}");
}

#[test]
fn observations_keep_the_newest_per_kind() {
    let s = Store::memory().unwrap();
    for ms in 0..250u64 {
        s.observe("web", "drain", ms).unwrap();
    }
    s.observe("web", "stop", 7).unwrap();
    s.observe("api", "drain", 9).unwrap();
    let d = s.observations("web", "drain", 1000).unwrap();
    assert_eq!(d.len(), 200);
    assert_eq!(d[0], 249);
    assert_eq!(*d.last().unwrap(), 50);
    assert_eq!(
        s.observations("web", "drain", 3).unwrap(),
        vec![249, 248, 247]
    );
    assert_eq!(s.observations("web", "stop", 10).unwrap(), vec![7]);
    assert_eq!(s.observations("api", "drain", 10).unwrap(), vec![9]);
}

#[test]
fn a_deployment_keeps_its_plan() {
    let s = Store::memory().unwrap();
    let d = running_web_1();
    s.save_deployment(&d, None).unwrap();
    assert_eq!(s.deployment_plan("web-1").unwrap(), None);
    s.set_deployment_plan("web-1", "{\"steps\":[]}").unwrap();
    // A later state save keeps it.
    s.save_deployment(&d, Some(("drain", "batch 1/2"))).unwrap();
    assert_eq!(
        s.deployment_plan("web-1").unwrap().as_deref(),
        Some("{\"steps\":[]}")
    );
    assert_eq!(s.deployment_plan("nope").unwrap(), None);
}

/// A running in-place deployment `web-1` of `web`, v1 → v2.
fn running_web_1() -> DeploymentRecord {
    DeploymentRecord {
        id: "web-1".into(),
        service: "web".into(),
        from: "v1".into(),
        to: "v2".into(),
        strategy: "in-place".into(),
        status: "running".into(),
        state: "{}".into(),
        report: None,
        origin: "deploy".into(),
        created_ms: 0,
        updated_ms: 0,
    }
}

#[test]
fn a_v4_database_with_deployments_migrates_to_numbered_ids() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("handoff.db")).unwrap();
        migrations::migrate_to(&c, 4).unwrap();
        c.execute(
            "INSERT INTO deployments (id, service, from_rev, to_rev, strategy, status, state, created_ms, updated_ms)
             VALUES ('web-1', 'web', 'v1', 'v2', 'in-place', 'succeeded', '{}', 1, 2)",
            [],
        )
        .unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.schema_version().unwrap(), migrations::LATEST);
    let old = s.deployment("web-1").unwrap().unwrap();
    assert_eq!(old.origin, "deploy", "records from before v5 were deploys");
    assert_eq!(s.next_deployment_id("web").unwrap(), "web@2");
}
