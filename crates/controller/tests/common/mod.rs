//! The fake runtime the controller's tests share: it records every call,
//! keeps its "processes" in a map (each counts as marked with this runtime's
//! owner id), lets a test kill one as `kill -9` would, and fails the start
//! of any revision named `bad…`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::*};
use std::sync::Mutex;
use std::time::Duration;

use handoff_runtime::{Exit, InstanceSpec, RunningInstance, Runtime, RuntimeError, StopOutcome};
use tokio::sync::watch;

pub struct Proc {
    run: RunningInstance,
    exit: watch::Sender<Option<Exit>>,
}

/// Processes are entries in a map; every one of them counts as marked with
/// this runtime's owner id (as `ProcessRuntime::marked` finds them).
#[derive(Default)]
pub struct FakeRuntime {
    pub calls: Mutex<Vec<String>>,
    pub procs: Mutex<HashMap<u32, Proc>>,
    pub next: AtomicU32,
}

impl FakeRuntime {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// The process dies as if by `kill -9`.
    pub fn kill(&self, pid: u32) {
        let p = self.procs.lock().unwrap().remove(&pid).expect("a live pid");
        let _ = p.exit.send(Some(Exit::Signal(9)));
    }
}

impl Runtime for FakeRuntime {
    async fn confirm_start(
        &self,
        _: &InstanceSpec,
        _: &RunningInstance,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn spawn(&self, spec: &InstanceSpec) -> Result<RunningInstance, RuntimeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("start {} {}", spec.instance, spec.revision));
        // A revision named `bad…` dies at start, as a broken build does.
        if spec.revision.starts_with("bad") {
            return Err(RuntimeError::ExitedDuringStart {
                instance: spec.instance.clone(),
                exit: Exit::Code(1),
                log_tail: "boom".into(),
            });
        }
        let pid = 100_000 + self.next.fetch_add(1, SeqCst);
        let run = RunningInstance {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
            revision: spec.revision.clone(),
            host: spec.host.clone(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], spec.port)),
            pid,
            start_time: pid as u64,
        };
        let exit = watch::channel(None).0;
        self.procs.lock().unwrap().insert(
            pid,
            Proc {
                run: run.clone(),
                exit,
            },
        );
        Ok(run)
    }

    async fn stop(&self, inst: &RunningInstance, _grace: Duration) -> StopOutcome {
        self.calls
            .lock()
            .unwrap()
            .push(format!("stop {}", inst.instance));
        match self.procs.lock().unwrap().remove(&inst.pid) {
            Some(p) => {
                let _ = p.exit.send(Some(Exit::Code(0)));
                StopOutcome::Graceful(Exit::Code(0))
            }
            None => StopOutcome::NotRunning,
        }
    }

    fn is_alive(&self, inst: &RunningInstance) -> bool {
        self.procs.lock().unwrap().contains_key(&inst.pid)
    }

    async fn exited(&self, inst: &RunningInstance) -> Exit {
        let rx = self
            .procs
            .lock()
            .unwrap()
            .get(&inst.pid)
            .map(|p| p.exit.subscribe());
        match rx {
            Some(mut rx) => rx
                .wait_for(|e| e.is_some())
                .await
                .map(|e| e.unwrap_or(Exit::Unknown))
                .unwrap_or(Exit::Unknown),
            None => Exit::Unknown,
        }
    }

    async fn log_tail(&self, _: &str, _: &str, _: Option<&str>, _: usize) -> Option<String> {
        None
    }

    async fn marked(&self) -> Vec<RunningInstance> {
        self.procs
            .lock()
            .unwrap()
            .values()
            .map(|p| p.run.clone())
            .collect()
    }
}
