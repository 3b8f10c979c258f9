//! `failover-lab`: the lab's command line. `failover-lab demo` is the
//! README's run command (`cargo xtask build-and-run` runs it): the lab, the
//! real `failover` daemon on it, a client, a killed primary, the failover.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "failover-lab",
    version,
    about = "The failover lab: namespaces, a load balancer, two backends and a client"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab, run the daemon on it, stream client requests, kill
    /// the primary and show the failover; tears everything down at the end
    /// or on Ctrl-C.
    Demo {
        /// How long the client runs, in seconds.
        #[arg(long, default_value_t = 12)]
        duration: u64,
        /// When the primary is killed, in seconds.
        #[arg(long, default_value_t = 4)]
        kill_after: u64,
        /// Milliseconds between client requests.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// The `failover` binary to run as the daemon (default: the one
        /// next to this binary, as cargo builds them).
        #[arg(long)]
        failover: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Demo {
            duration,
            kill_after,
            interval_ms,
            failover,
        } => {
            let failover = match failover {
                Some(path) => path,
                None => std::env::current_exe()
                    .context("locating this binary")?
                    .with_file_name("failover"),
            };
            failover_lab::demo::run(&failover_lab::demo::DemoOptions {
                failover,
                duration: Duration::from_secs(duration),
                kill_after: Duration::from_secs(kill_after),
                interval: Duration::from_millis(interval_ms.max(1)),
            })
        }
    }
}
