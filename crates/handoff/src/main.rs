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
        /// Leave managed instances running when handoff exits; the next
        /// `serve` adopts them instead of restarting them.
        #[arg(long)]
        keep_instances: bool,
    },
    /// Print the tail of an instance's log (from the running daemon).
    Logs {
        service: String,
        instance: String,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Admin address of the daemon.
        #[arg(long, env = "HANDOFF_ADMIN", default_value = "http://127.0.0.1:9900")]
        admin: String,
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
        Cmd::Serve {
            config,
            keep_instances,
        } => serve::run(&config, serve::Options { keep_instances }),
        Cmd::Logs {
            service,
            instance,
            lines,
            admin,
        } => logs(&admin, &service, &instance, lines),
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

/// A minimal blocking GET against the admin address (the full CLI client
/// arrives with the API).
fn logs(admin: &str, service: &str, instance: &str, lines: usize) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let hostport = admin.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).map_err(|e| {
        anyhow::anyhow!("cannot reach the handoff daemon at {admin}: {e}; is `handoff serve` running? (set --admin or HANDOFF_ADMIN)")
    })?;
    write!(s, "GET /logs/{service}/{instance}?lines={lines} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{}", body.trim());
    }
    print!("{body}");
    Ok(())
}
