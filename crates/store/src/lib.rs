//! handoff-store: the daemon's memory, in SQLite (WAL) under `state_dir`.
//!
//! It owns what must survive a restart or a crash of handoff: revisions,
//! instances (with pid *and* process start time, so a recycled pid is never
//! mistaken for ours) and an append-only event log. Every write is one
//! transaction. The schema is versioned with `PRAGMA user_version` and
//! migrated forward in code at open ([`migrations`]).
//!
//! Data flow: the controller writes here *before* it acts (start, stop,
//! replace), and reads it back at boot to adopt live instances.

mod measure;
mod migrations;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {}: {source}; check that state_dir is writable", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database {} has schema version {found}, newer than this handoff understands ({known}); upgrade handoff", path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// An instance as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub service: String,
    /// Stable name, e.g. `web-1`; keeps its port across restarts.
    pub name: String,
    pub revision: String,
    pub port: u16,
    /// 0 while not running.
    pub pid: u32,
    /// Process start time (clock ticks since boot, from /proc); with `pid`
    /// it identifies the process.
    pub start_time: u64,
    /// `starting`, `running`, `stopping`, `stopped`, `failed`.
    pub status: String,
    pub restarts: u32,
    /// The host it runs on; empty on this machine.
    pub host: String,
    /// Where it serves (`IP:PORT`), as its runtime said; empty if unknown.
    pub address: String,
    /// Target group (`blue` / `green`).
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub service: String,
    pub instance: Option<String>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRecord {
    pub service: String,
    pub id: String,
    pub artifact: Option<String>,
    pub sha256: Option<String>,
    pub created_ms: i64,
}

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `dir/handoff.db` and migrates it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("handoff.db");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations::migrate(&conn, &path)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// An in-memory store (tests).
    pub fn memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        migrations::migrate(&conn, Path::new(":memory:"))?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: PathBuf::from(":memory:"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a revision once; a second call with the same id keeps the
    /// first record (revisions are immutable).
    pub fn put_revision(&self, r: &RevisionRecord) -> Result<RevisionRecord, StoreError> {
        self.lock().execute(
            "INSERT OR IGNORE INTO revisions (service, id, artifact, sha256, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![r.service, r.id, r.artifact, r.sha256, r.created_ms],
        )?;
        Ok(self
            .revision(&r.service, &r.id)?
            .expect("just inserted or already there"))
    }

    /// New content for a revision that never served (a broken build fixed
    /// under the same id); the controller decides when that is allowed.
    pub fn replace_revision(&self, r: &RevisionRecord) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE revisions SET artifact = ?3, sha256 = ?4, created_ms = ?5 WHERE service = ?1 AND id = ?2",
            params![r.service, r.id, r.artifact, r.sha256, r.created_ms],
        )?;
        Ok(())
    }

    pub fn revision(&self, service: &str, id: &str) -> Result<Option<RevisionRecord>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT service, id, artifact, sha256, created_ms FROM revisions WHERE service = ?1 AND id = ?2",
                params![service, id],
                |row| {
                    Ok(RevisionRecord {
                        service: row.get(0)?,
                        id: row.get(1)?,
                        artifact: row.get(2)?,
                        sha256: row.get(3)?,
                        created_ms: row.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// A service's revisions with whether each is stable, newest first.
    pub fn revisions(&self, service: &str) -> Result<Vec<(RevisionRecord, bool)>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT service, id, artifact, sha256, created_ms, stable FROM revisions WHERE service = ?1 ORDER BY created_ms DESC, id DESC",
        )?;
        let rows = st.query_map(params![service], |row| {
            Ok((
                RevisionRecord {
                    service: row.get(0)?,
                    id: row.get(1)?,
                    artifact: row.get(2)?,
                    sha256: row.get(3)?,
                    created_ms: row.get(4)?,
                },
                row.get::<_, i64>(5)? == 1,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts or replaces the instance record (keyed by service + name).
    pub fn put_instance(&self, i: &InstanceRecord) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO instances (service, name, revision, port, pid, start_time, status, restarts, updated_ms, grp, host, address)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (service, name) DO UPDATE SET revision = excluded.revision, port = excluded.port,
               pid = excluded.pid, start_time = excluded.start_time, status = excluded.status,
               restarts = excluded.restarts, updated_ms = excluded.updated_ms, grp = excluded.grp,
               host = excluded.host, address = excluded.address",
            params![i.service, i.name, i.revision, i.port, i.pid, i.start_time as i64, i.status, i.restarts, now_ms(), i.group, i.host, i.address],
        )?;
        Ok(())
    }

    pub fn instances(&self, service: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT service, name, revision, port, pid, start_time, status, restarts, grp, host, address FROM instances
             WHERE service = ?1 ORDER BY length(name), name",
        )?;
        let rows = st.query_map(params![service], |r| {
            Ok(InstanceRecord {
                service: r.get(0)?,
                name: r.get(1)?,
                revision: r.get(2)?,
                port: r.get(3)?,
                pid: r.get(4)?,
                start_time: r.get::<_, i64>(5)? as u64,
                status: r.get(6)?,
                restarts: r.get(7)?,
                group: r.get(8)?,
                host: r.get(9)?,
                address: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_instance(&self, service: &str, name: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "DELETE FROM instances WHERE service = ?1 AND name = ?2",
            params![service, name],
        )?;
        Ok(())
    }

    /// Appends to the event log.
    pub fn event(
        &self,
        service: &str,
        instance: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<i64, StoreError> {
        let c = self.lock();
        c.execute(
            "INSERT INTO events (at_ms, service, instance, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), service, instance, kind, message],
        )?;
        Ok(c.last_insert_rowid())
    }

    /// The last `limit` events of a service, oldest first.
    pub fn events(&self, service: &str, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT id, at_ms, service, instance, kind, message FROM
               (SELECT * FROM events WHERE service = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = st.query_map(params![service, limit as i64], |r| {
            Ok(EventRecord {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                service: r.get(2)?,
                instance: r.get(3)?,
                kind: r.get(4)?,
                message: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A deployment as stored: its planner state is opaque JSON to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    pub service: String,
    pub from: String,
    pub to: String,
    pub strategy: String,
    pub status: String,
    pub state: String,
    pub report: Option<String>,
    /// `deploy` or `rollback` (see `handoff_core::Origin`).
    pub origin: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Store {
    /// Writes a deployment's state and, in the same transaction, the event
    /// that explains the change: the state is never ahead of its record.
    pub fn save_deployment(
        &self,
        d: &DeploymentRecord,
        event: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO deployments (id, service, from_rev, to_rev, strategy, status, state, report, created_ms, updated_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state,
               report = COALESCE(excluded.report, deployments.report), updated_ms = excluded.updated_ms",
            params![d.id, d.service, d.from, d.to, d.strategy, d.status, d.state, d.report, now, d.origin],
        )?;
        if let Some((kind, message)) = event {
            tx.execute(
                "INSERT INTO deployment_events (deployment, at_ms, kind, message) VALUES (?1, ?2, ?3, ?4)",
                params![d.id, now, kind, message],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn deployment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRecord> {
        Ok(DeploymentRecord {
            id: r.get(0)?,
            service: r.get(1)?,
            from: r.get(2)?,
            to: r.get(3)?,
            strategy: r.get(4)?,
            status: r.get(5)?,
            state: r.get(6)?,
            report: r.get(7)?,
            created_ms: r.get(8)?,
            updated_ms: r.get(9)?,
            origin: r.get(10)?,
        })
    }

    pub fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, service, from_rev, to_rev, strategy, status, state, report, created_ms, updated_ms, origin
                 FROM deployments WHERE id = ?1",
                params![id],
                Self::deployment_row,
            )
            .optional()?)
    }

    /// A service's deployments, newest first.
    pub fn deployments(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT id, service, from_rev, to_rev, strategy, status, state, report, created_ms, updated_ms, origin
             FROM deployments WHERE service = ?1 ORDER BY created_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![service, limit as i64], Self::deployment_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A new deployment id for `service`, `SERVICE@N`: N is handed out once,
    /// in a transaction, and never again (across restarts, and for requests
    /// that arrive together). The `@` keeps it apart from instance names
    /// (`web-1`), which the naming rule forbids to contain one. The first
    /// number follows the deployments recorded before numbers existed.
    pub fn next_deployment_id(&self, service: &str) -> Result<String, StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT last FROM deployment_numbers WHERE service = ?1",
                params![service],
                |r| r.get(0),
            )
            .optional()?;
        let mut n = match last {
            Some(n) => n,
            None => tx.query_row(
                "SELECT COUNT(*) FROM deployments WHERE service = ?1",
                params![service],
                |r| r.get(0),
            )?,
        };
        let id = loop {
            n += 1;
            let id = format!("{service}@{n}");
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM deployments WHERE id = ?1)",
                params![id],
                |r| r.get(0),
            )?;
            if !taken {
                break id;
            }
        };
        tx.execute(
            "INSERT INTO deployment_numbers (service, last) VALUES (?1, ?2)
             ON CONFLICT (service) DO UPDATE SET last = excluded.last",
            params![service, n],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Appends an event to a deployment's record without changing its state.
    pub fn save_deployment_event(
        &self,
        id: &str,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO deployment_events (deployment, at_ms, kind, message) VALUES (?1, ?2, ?3, ?4)",
            params![id, now_ms(), kind, message],
        )?;
        Ok(())
    }

    /// Finished and running deployments counted by (strategy, status).
    pub fn deployment_counts(
        &self,
        service: &str,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT strategy, status, COUNT(*) FROM deployments WHERE service = ?1 GROUP BY strategy, status ORDER BY strategy, status",
        )?;
        let rows = st.query_map(params![service], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `(at_ms, kind, message)` of a deployment, in order.
    pub fn deployment_events(&self, id: &str) -> Result<Vec<(i64, String, String)>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT at_ms, kind, message FROM deployment_events WHERE deployment = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The revision serving `service` (set by successful deployments).
    pub fn current_revision(&self, service: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT revision FROM current_revisions WHERE service = ?1",
                params![service],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The `revision` key of the config when the daemon last booted: a
    /// changed one means the user edited it, and it wins over deployments.
    pub fn config_revision(&self, service: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT config_revision FROM current_revisions WHERE service = ?1",
                params![service],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_config_revision(&self, service: &str, revision: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE current_revisions SET config_revision = ?2 WHERE service = ?1",
            params![service, revision],
        )?;
        Ok(())
    }

    /// Records that `revision` serves `service` and is stable (a rollback
    /// target).
    pub fn set_current_revision(&self, service: &str, revision: &str) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO current_revisions (service, revision, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (service) DO UPDATE SET revision = excluded.revision, updated_ms = excluded.updated_ms",
            params![service, revision, now_ms()],
        )?;
        tx.execute(
            "UPDATE revisions SET stable = 1 WHERE service = ?1 AND id = ?2",
            params![service, revision],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a deployment (or the first boot) ever completed `revision`.
    pub fn is_stable(&self, service: &str, revision: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT stable FROM revisions WHERE service = ?1 AND id = ?2",
                params![service, revision],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            == Some(1))
    }
}

#[cfg(test)]
mod tests;
