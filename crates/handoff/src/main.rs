//! The `handoff` binary: a thin main that parses the command line and wires
//! the crates together (config → proxy → controller → admin API).

mod sample_app;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    },
    /// Validate a config file and print every problem in it.
    Check {
        #[arg(short, long, default_value = "handoff.toml")]
        config: PathBuf,
    },
    /// The bundled test/demo web app.
    SampleApp(sample_app::SampleApp),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { config } => serve::run(&config),
        Cmd::Check { config } => check(&config),
        Cmd::SampleApp(a) => sample_app::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = handoff_core::config::load(path)?;
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
        println!("  {} on {}: {what}", s.name, s.listen);
    }
    Ok(())
}
