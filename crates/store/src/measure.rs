//! Measurements of past deploys, kept per service and kind (`ready`: from
//! spawn to passing checks; `drain`; `stop`; `hook:NAME`), and the plan a
//! deployment was given, so its report can be read beside it.

use rusqlite::params;

use crate::{now_ms, Store, StoreError};

/// How many measurements of one kind a service keeps.
const KEPT: i64 = 200;

impl Store {
    /// Records one measurement; the oldest beyond the last 200 of its kind
    /// are dropped in the same transaction.
    pub fn observe(&self, service: &str, kind: &str, ms: u64) -> Result<(), StoreError> {
        let mut c = self.lock();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO observations (service, kind, ms, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![service, kind, ms as i64, now_ms()],
        )?;
        tx.execute(
            "DELETE FROM observations WHERE service = ?1 AND kind = ?2 AND id <=
               (SELECT id FROM observations WHERE service = ?1 AND kind = ?2
                ORDER BY id DESC LIMIT 1 OFFSET ?3)",
            params![service, kind, KEPT],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The last `limit` measurements of `kind`, newest first.
    pub fn observations(
        &self,
        service: &str,
        kind: &str,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let c = self.lock();
        let mut st = c.prepare(
            "SELECT ms FROM observations WHERE service = ?1 AND kind = ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(params![service, kind, limit as i64], |r| {
            r.get::<_, i64>(0).map(|v| v.max(0) as u64)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Attaches the plan (JSON) a deployment was predicted with.
    pub fn set_deployment_plan(&self, id: &str, plan: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE deployments SET plan = ?2 WHERE id = ?1",
            params![id, plan],
        )?;
        Ok(())
    }

    pub fn deployment_plan(&self, id: &str) -> Result<Option<String>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .lock()
            .query_row(
                "SELECT plan FROM deployments WHERE id = ?1",
                params![id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }
}
