//! Versioned schema migrations, applied in order inside one transaction each.
//!
//! Never edit a released step: add a new one. `tests::migrates_a_v1_database`
//! keeps an old database opening.

use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;

/// Step N brings the schema from version N to N+1.
const STEPS: &[&str] = &[
    // v1: revisions, instances, events.
    "CREATE TABLE revisions (
        service TEXT NOT NULL,
        id TEXT NOT NULL,
        artifact TEXT,
        sha256 TEXT,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (service, id)
     );
     CREATE TABLE instances (
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        revision TEXT NOT NULL,
        port INTEGER NOT NULL,
        pid INTEGER NOT NULL DEFAULT 0,
        start_time INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (service, name)
     );
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        service TEXT NOT NULL,
        instance TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
     );
     CREATE INDEX events_by_service ON events (service, id);",
    // v2: restart counts survive a daemon restart (the back-off resumes).
    "ALTER TABLE instances ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;",
    // v3: deployments (state as JSON, written before every side effect),
    // their events, the instance's target group, and the revision that
    // currently serves each service.
    "CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        from_rev TEXT NOT NULL,
        to_rev TEXT NOT NULL,
        strategy TEXT NOT NULL,
        status TEXT NOT NULL,
        state TEXT NOT NULL,
        report TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
     );
     CREATE INDEX deployments_by_service ON deployments (service, created_ms);
     CREATE TABLE deployment_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment TEXT NOT NULL REFERENCES deployments (id),
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
     );
     CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment, id);
     ALTER TABLE instances ADD COLUMN grp TEXT NOT NULL DEFAULT 'blue';
     CREATE TABLE current_revisions (
        service TEXT PRIMARY KEY,
        revision TEXT NOT NULL,
        config_revision TEXT NOT NULL DEFAULT '',
        updated_ms INTEGER NOT NULL
     );
     ALTER TABLE revisions ADD COLUMN stable INTEGER NOT NULL DEFAULT 0;",
    // v4: what deploys measured (start-up, drain, stop, hook times), which
    // `handoff plan` predicts from, and the plan each deployment was given.
    "CREATE TABLE observations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service TEXT NOT NULL,
        kind TEXT NOT NULL,
        ms INTEGER NOT NULL,
        at_ms INTEGER NOT NULL
     );
     CREATE INDEX observations_by_kind ON observations (service, kind, id);
     ALTER TABLE deployments ADD COLUMN plan TEXT;",
    // v5: why each deployment was started (a rollback's target is never a
    // revision a rollback left), and deployment numbers handed out once per
    // service, in a transaction, never reused (ids were a count of past
    // deployments, which two concurrent requests computed alike).
    "ALTER TABLE deployments ADD COLUMN origin TEXT NOT NULL DEFAULT 'deploy';
     CREATE TABLE deployment_numbers (
        service TEXT PRIMARY KEY,
        last INTEGER NOT NULL
     );",
    // v6: where an instance runs. The runtime returns the address an
    // instance serves on (another machine's, for instances on hosts), and
    // its identity is host + pid + start time; both are kept so a
    // restarted daemon adopts remote instances as it does local ones.
    "ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '';
     ALTER TABLE instances ADD COLUMN address TEXT NOT NULL DEFAULT '';",
];

pub const LATEST: i64 = STEPS.len() as i64;

pub fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > LATEST {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known: LATEST,
        });
    }
    while version < LATEST {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(STEPS[version as usize])?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        version += 1;
    }
    Ok(())
}

/// Applies only the first `n` steps (tests of upgrades from old versions).
#[cfg(test)]
pub fn migrate_to(conn: &Connection, n: i64) -> Result<(), StoreError> {
    for v in 0..n {
        conn.execute_batch(STEPS[v as usize])?;
        conn.pragma_update(None, "user_version", v + 1)?;
    }
    Ok(())
}
