//! The `handoff` binary: a thin main that parses the command line and wires
//! the crates together (config → proxy → controller → admin API).

mod client;
mod demo;
mod handover;
mod hosts;
mod plan_view;
mod sample_app;
mod serve;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handoff_controller::executor::rollback::RollbackKind;
use handoff_core::DeploymentStatus;

#[derive(Debug, Parser)]
#[command(
    name = "handoff",
    version,
    about = "Zero-downtime deployments behind a built-in load balancer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the daemon: proxy, health checks, instances and the admin API.
    Serve {
        /// Config file.
        #[arg(short, long, default_value = "handoff.toml")]
        config: PathBuf,
        /// Leave managed instances running when handoff exits; the next
        /// `serve` adopts them instead of restarting them.
        #[arg(long)]
        keep_instances: bool,
        /// Take over from a running daemon (started so by `handoff reload`
        /// and `handoff upgrade`; not for use by hand).
        #[arg(long, hide = true)]
        takeover: bool,
    },
    /// Re-read the daemon's config and apply it (also SIGHUP, or POST
    /// /reload): a new daemon process takes over the listening sockets and
    /// the instances, with no request failed. A bad config is refused and
    /// the running one stays.
    Reload {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Hand the running daemon over to another binary (default: this one),
    /// e.g. after installing a new version: returns once the new daemon
    /// serves; the old one finishes its requests and exits.
    Upgrade {
        /// The new handoff binary.
        #[arg(long)]
        binary: Option<PathBuf>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Print the tail of an instance's log (from the running daemon).
    Logs {
        service: String,
        /// One instance (default: every instance of the service).
        instance: Option<String>,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Validate a config file and print every problem in it.
    Check {
        #[arg(short, long, default_value = "handoff.toml")]
        config: PathBuf,
    },
    /// Deploy REVISION of SERVICE and follow it live; exits 0 when the new
    /// revision serves, 1 when the deploy failed (saying whether it rolled back).
    Deploy {
        service: String,
        revision: String,
        /// in-place, blue-green or all-at-once (default: the service's).
        #[arg(long, value_parser = strategy_arg)]
        strategy: Option<String>,
        /// In-place batch: a count, a percentage or auto ("1", "50%",
        /// "auto": as large as the measured load allows).
        #[arg(long, value_parser = batch_arg)]
        batch: Option<String>,
        /// A directory or .tar.gz with the revision's files (installed once,
        /// verified by sha256, kept for rollbacks).
        #[arg(long)]
        artifact: Option<PathBuf>,
        /// Start it and return at once.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Predict a deployment of SERVICE to REVISION without changing
    /// anything: its steps, how long each takes, capacity over time, the
    /// mixed-version window, extra instances and the cost of a rollback.
    Plan {
        service: String,
        revision: String,
        /// in-place, blue-green, all-at-once, or all (side by side).
        #[arg(long, value_parser = plan_strategy_arg)]
        strategy: Option<String>,
        /// In-place batch: a count, a percentage or auto ("1", "50%",
        /// "auto": as large as the measured load allows).
        #[arg(long, value_parser = batch_arg)]
        batch: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Roll SERVICE back: a flip while blue/green retains blue, else a deploy
    /// of the last stable revision (or --to).
    Rollback {
        service: String,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Hold the running deployment before its next step.
    Pause {
        service: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Continue a paused deployment.
    Resume {
        service: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Stop the running deployment and roll back.
    Abort {
        service: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Skip the remaining bake and traffic steps (or end blue's retention now).
    Promote {
        service: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Services, groups, targets, states and in-flight requests.
    Status {
        service: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Deployments of SERVICE, newest first, with their measured figures.
    History {
        service: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Revisions of SERVICE: serving, stable (rollback targets), never completed.
    Revisions {
        service: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Follow a deployment live until it settles (as `deploy` does); exits
    /// 0 when its new revision serves, non-zero when it failed or rolled
    /// back. Ctrl-C stops following, not the deployment.
    Follow {
        /// The deployment, e.g. web@3 (`deploy` prints it).
        id: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// A deployment's events and measured report, beside what was predicted.
    Report {
        id: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Certificates the daemon gets over ACME: `renew SERVICE` orders a
    /// new one now and waits until it is served (or the attempt fails).
    Certificate {
        #[command(subcommand)]
        cmd: CertificateCmd,
    },
    /// The hosts of a config, over ssh and without a daemon: `check` that
    /// they are ready, `trust` to record a host key.
    Hosts {
        #[command(subcommand)]
        cmd: hosts::HostsCmd,
    },
    /// The self-contained tour: a daemon, 4 instances, steady traffic, an
    /// in-place and a blue/green deploy and a rollback, measured.
    Demo(demo::Demo),
    /// The bundled test/demo web app.
    SampleApp(sample_app::SampleApp),
    /// Print shell completions, e.g. `handoff completions bash > /etc/bash_completion.d/handoff`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, clap::Subcommand)]
enum CertificateCmd {
    /// Order a new certificate for SERVICE now (`tls.acme = true`); the
    /// current one is served until the new one arrives.
    Renew {
        service: String,
        /// How long to wait for the new certificate, in seconds.
        #[arg(long, default_value_t = 300)]
        wait: u64,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Admin address of the daemon (default: server.admin of the config,
    /// else http://127.0.0.1:9900).
    #[arg(long, env = "HANDOFF_ADMIN")]
    admin: Option<String>,
    /// Bearer token of the admin API (default: [server] token of the config,
    /// else the token file in its state dir).
    #[arg(long, env = "HANDOFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The daemon's config file, to find its address and token.
    #[arg(short, long, default_value = "handoff.toml")]
    config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn client(&self) -> client::Client {
        client::resolve(self.admin.clone(), self.token.clone(), &self.config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ids are refused before anything is sent, with the daemon's own rule
    // and message (a bad one would only come back as its 400).
    if let Err(e) = check_ids(&cli.cmd) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if !matches!(
        cli.cmd,
        Cmd::Serve { .. } | Cmd::Demo(_) | Cmd::SampleApp(_)
    ) {
        // A client command piped into `head` ends quietly, as Unix tools do;
        // the servers keep Rust's default (EPIPE as an error on a socket).
        // SAFETY: no other thread exists yet; SIG_DFL is always valid.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.cmd {
        Cmd::Serve {
            config,
            keep_instances,
            takeover,
        } => serve::run(
            &config,
            serve::Options {
                keep_instances,
                takeover,
                systemd: Vec::new(),
            },
        ),
        Cmd::Reload { c } => client::handover(&c.client(), "/reload", None, c.json),
        Cmd::Upgrade { binary, c } => {
            let binary = match binary
                .map(|b| std::fs::canonicalize(&b).map_err(|e| (b, e)))
                .transpose()
            {
                Ok(b) => b,
                Err((b, e)) => {
                    eprintln!("error: --binary {}: {e}", b.display());
                    return ExitCode::FAILURE;
                }
            };
            client::handover(&c.client(), "/upgrade", binary, c.json)
        }
        Cmd::Logs {
            service,
            instance,
            lines,
            c,
        } => match instance {
            Some(i) => client::logs(&c.client(), &service, &i, lines),
            None => client::all_logs(&c.client(), &service, lines),
        },
        Cmd::Check { config } => check(&config),
        Cmd::Certificate {
            cmd: CertificateCmd::Renew { service, wait, c },
        } => match client::certificate::renew(
            &c.client(),
            &service,
            std::time::Duration::from_secs(wait),
        ) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Cmd::Hosts { cmd } => match hosts::run(cmd) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Cmd::SampleApp(a) => sample_app::run(a),
        Cmd::Demo(d) => demo::run(d),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "handoff",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Deploy {
            service,
            revision,
            strategy,
            batch,
            artifact,
            detach,
            c,
        } => {
            let artifact = match artifact
                .map(|a| std::fs::canonicalize(&a).map_err(|e| (a, e)))
                .transpose()
            {
                Ok(a) => a.map(|p| p.display().to_string()),
                Err((a, e)) => {
                    eprintln!("error: --artifact {}: {e}", a.display());
                    return ExitCode::FAILURE;
                }
            };
            let body = handoff_api::types::DeployBody {
                service,
                revision,
                strategy,
                batch,
                artifact,
            };
            match client::deploy(&c.client(), body, detach, c.json) {
                Ok(s) if s.new_revision_serves() || s == DeploymentStatus::Running => Ok(()),
                Ok(_) => return ExitCode::FAILURE,
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            }
        }
        Cmd::Rollback { service, to, c } => {
            let cl = c.client();
            let body =
                serde_json::to_string(&handoff_api::types::RollbackBody { to }).unwrap_or_default();
            // Done when the old revision serves again: a flip or an abort
            // ends rolled-back, a rollback deploy ends succeeded (or
            // retained). Anything else did not go back: non-zero.
            let since = client::now_ms();
            match client::control(&cl, &service, "rollback", Some(body), c.json).and_then(|acc| {
                if !c.json {
                    println!(
                        "rollback: {} ({})",
                        acc.id,
                        match acc.rollback {
                            Some(RollbackKind::Flip) => "traffic flips back to the retained blue",
                            Some(RollbackKind::Abort) =>
                                "the running deployment is aborted and rolls back",
                            _ => "a deployment back to the revision that served before",
                        }
                    );
                }
                let s = client::follow_since(
                    &cl,
                    &acc.id,
                    c.json,
                    since,
                    acc.rollback == Some(RollbackKind::Deploy),
                )?;
                Ok(match acc.rollback {
                    Some(RollbackKind::Flip | RollbackKind::Abort) => {
                        s == DeploymentStatus::RolledBack
                    }
                    _ => s.new_revision_serves(),
                })
            }) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            }
        }
        Cmd::Pause { service, c } => verb(&c, &service, "pause"),
        Cmd::Resume { service, c } => verb(&c, &service, "resume"),
        Cmd::Abort { service, c } => verb(&c, &service, "abort"),
        Cmd::Promote { service, c } => verb(&c, &service, "promote"),
        Cmd::Status { service, c } => client::status(&c.client(), service.as_deref(), c.json),
        Cmd::Plan {
            service,
            revision,
            strategy,
            batch,
            c,
        } => plan_view::plan(
            &c.client(),
            &service,
            handoff_api::types::PlanBody {
                revision,
                strategy,
                batch,
            },
            c.json,
        ),
        Cmd::History { service, c } => client::history(&c.client(), &service, c.json),
        Cmd::Revisions { service, c } => client::revisions(&c.client(), &service, c.json),
        Cmd::Report { id, c } => client::report(&c.client(), &id, c.json),
        Cmd::Follow { id, c } => match client::follow(&c.client(), &id, c.json) {
            Ok(s) if s.new_revision_serves() => Ok(()),
            Ok(_) => return ExitCode::FAILURE,
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The service names and revision ids a command sends, against the one
/// rule of `handoff_core::names`.
fn check_ids(cmd: &Cmd) -> Result<(), handoff_core::names::NameError> {
    use handoff_core::names::{check_name, check_revision, NameKind};
    match cmd {
        Cmd::Deploy {
            service, revision, ..
        }
        | Cmd::Plan {
            service, revision, ..
        } => {
            check_name(NameKind::Service, service)?;
            check_revision(revision)
        }
        Cmd::Rollback { service, to, .. } => {
            check_name(NameKind::Service, service)?;
            to.as_deref().map_or(Ok(()), check_revision)
        }
        _ => Ok(()),
    }
}

/// `--strategy` of `deploy`, checked before anything is sent so that a typo
/// lists the choices.
fn strategy_arg(s: &str) -> Result<String, String> {
    match handoff_core::Strategy::parse(s) {
        Some(_) => Ok(s.to_string()),
        None if s == "all" => Err(
            "'all' is for `handoff plan`; a deployment uses one of in-place, blue-green or all-at-once"
                .into(),
        ),
        None => Err("unknown strategy; use in-place, blue-green or all-at-once".into()),
    }
}

/// `--strategy` of `plan`: a strategy, or `all` to compare them.
fn plan_strategy_arg(s: &str) -> Result<String, String> {
    match s {
        "all" => Ok(s.to_string()),
        _ => strategy_arg(s)
            .map_err(|_| "unknown strategy; use in-place, blue-green, all-at-once or all".into()),
    }
}

/// `--batch`: a count, a percentage or `auto`, by the config's own rule.
fn batch_arg(s: &str) -> Result<String, String> {
    handoff_core::config::parse_batch(s).map(|_| s.to_string())
}

fn verb(c: &ClientArgs, service: &str, verb: &str) -> anyhow::Result<()> {
    let id = client::control(&c.client(), service, verb, None, c.json)?.id;
    if !c.json {
        println!("{verb}: sent to deployment {id}");
    }
    Ok(())
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = handoff_core::config::load(path)?;
    // Certificates are read and checked as the daemon would at start.
    let mut bad = Vec::new();
    // ACME certificates are handoff's to get (a stand-in until then).
    for s in cfg.services.values() {
        if let Some(t) = s.tls.as_ref().filter(|t| !t.acme) {
            if let Err(e) = handoff_proxy::tls::load(&t.cert, &t.key, &s.domains) {
                bad.push(format!("services.{}.tls: {e}", s.name));
            }
        }
    }
    if !bad.is_empty() {
        anyhow::bail!("{}: {}", path.display(), bad.join("\n"));
    }
    println!("{}: ok, {} service(s)", path.display(), cfg.services.len());
    for s in cfg.services.values() {
        let what = match &s.backend {
            handoff_core::config::Backend::Static { targets } => {
                format!("{} fixed target(s)", targets.len())
            }
            handoff_core::config::Backend::Managed(m) => {
                format!(
                    "{} instance(s) of revision {}, strategy {}",
                    m.instances,
                    m.revision,
                    s.strategy.as_str()
                )
            }
        };
        match (&s.listen, &s.balancer) {
            (Some(l), _) => println!("  {} on {l}: {what}", s.name),
            (None, handoff_core::config::Balancer::Haproxy { socket, backend }) => println!(
                "  {} behind HAProxy backend {backend} ({socket}): {what}",
                s.name
            ),
            (None, _) => println!("  {}: {what}", s.name),
        }
    }
    Ok(())
}
