//! Every default in one place: the daemon, the CLI and the docs agree.

use std::time::Duration;

pub const ADMIN: &str = "127.0.0.1:9900";
pub const STATE_DIR: &str = ".handoff";
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const RELEASES_KEPT: usize = 5;

pub const HEALTH_PATH: &str = "/healthz";
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const HEALTHY_THRESHOLD: u32 = 2;
pub const UNHEALTHY_THRESHOLD: u32 = 2;
pub const MIN_HEALTHY_TIME: Duration = Duration::from_secs(5);
pub const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
pub const STOP_GRACE: Duration = Duration::from_secs(10);
pub const PASSIVE_FAILURES: u32 = 5;
pub const EJECTION_TIME: Duration = Duration::from_secs(5);
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(60);

pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

pub const STRATEGY: &str = "in-place";
pub const BATCH: &str = "50%";
pub const MIN_HEALTHY: &str = "50%";
/// `batch = "auto"`: capacity kept above the measured load.
pub const HEADROOM: u32 = 30;
pub const TRAFFIC_STEPS: &[u32] = &[50];
pub const BAKE: Duration = Duration::from_secs(5);
pub const RETENTION: Duration = Duration::from_secs(600);

/// `[hosts.NAME] dir`: handoff's directory on a host.
pub const HOST_DIR: &str = "/var/lib/handoff";
/// SSH port of a host address without one.
pub const SSH_PORT: u16 = 22;
/// `instances_per_host`, and its largest value.
pub const INSTANCES_PER_HOST: u32 = 1;
pub const MAX_INSTANCES_PER_HOST: u32 = 64;

pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_ERROR_RATE_INCREASE: f64 = 0.05;
pub const MAX_P99_RATIO: f64 = 2.0;
pub const MIN_REQUESTS: u64 = 20;
/// Passive ejection never takes out more of a group than this (percent;
/// one target always may be): a shared failure (a database down) must not
/// turn every answer into handoff's own 503.
pub const MAX_EJECTION_PERCENT: u32 = 50;

/// Let's Encrypt's production directory (the example the docs give).
pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Where HTTP-01 is answered (the CA connects to port 80).
pub const ACME_HTTP_LISTEN: &str = "0.0.0.0:80";
