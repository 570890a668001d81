//! One runtime type for the daemon: each service runs either as local
//! processes or on hosts over SSH, and the controller and API name one
//! type for both (the trait's async methods make it unfit for `dyn`).

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    artifact, Exit, HookRun, HostState, InstanceSpec, ProcessRuntime, RunningInstance, Runtime,
    RuntimeError, SshRuntime, StopOutcome,
};

pub enum AnyRuntime {
    Process(std::sync::Arc<ProcessRuntime>),
    Ssh(SshRuntime),
}

macro_rules! each {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            AnyRuntime::Process($r) => $e,
            AnyRuntime::Ssh($r) => $e,
        }
    };
}

impl Runtime for AnyRuntime {
    async fn spawn(&self, spec: &InstanceSpec) -> Result<RunningInstance, RuntimeError> {
        each!(self, r => r.spawn(spec).await)
    }

    async fn confirm_start(
        &self,
        spec: &InstanceSpec,
        inst: &RunningInstance,
    ) -> Result<(), RuntimeError> {
        each!(self, r => r.confirm_start(spec, inst).await)
    }

    fn start_watch(&self) -> Duration {
        each!(self, r => r.start_watch())
    }

    fn port_free(&self, host: Option<&str>, port: u16) -> bool {
        each!(self, r => r.port_free(host, port))
    }

    async fn prepare(
        &self,
        service: &str,
        revision: &str,
        release: Option<&artifact::Release>,
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        each!(self, r => r.prepare(service, revision, release, keep).await)
    }

    async fn stop(&self, inst: &RunningInstance, grace: Duration) -> StopOutcome {
        each!(self, r => r.stop(inst, grace).await)
    }

    fn is_alive(&self, inst: &RunningInstance) -> bool {
        each!(self, r => r.is_alive(inst))
    }

    async fn exited(&self, inst: &RunningInstance) -> Exit {
        each!(self, r => r.exited(inst).await)
    }

    async fn log_tail(
        &self,
        service: &str,
        instance: &str,
        host: Option<&str>,
        lines: usize,
    ) -> Option<String> {
        each!(self, r => r.log_tail(service, instance, host, lines).await)
    }

    async fn marked(&self) -> Vec<RunningInstance> {
        each!(self, r => r.marked().await)
    }

    async fn exec(&self, host: &str, hook: &HookRun) -> (Result<(), String>, String, Duration) {
        each!(self, r => r.exec(host, hook).await)
    }

    async fn preflight(&self, command: &str) -> Result<(), RuntimeError> {
        each!(self, r => r.preflight(command).await)
    }

    fn host_state(&self, host: &str) -> HostState {
        each!(self, r => r.host_state(host))
    }

    fn host_changes(&self) -> Option<watch::Receiver<u64>> {
        each!(self, r => r.host_changes())
    }
}
