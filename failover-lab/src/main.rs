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
    /// The cluster lab (issue 16): a router with BGP/BFD/ECMP, two load
    /// balancers with BIRD and etcd, a witness, two backends, a client;
    /// runs a daemon on each LB, shows the ECMP route, kills lb1's daemon
    /// and shows the route move and the clients' outage per flow; tears
    /// everything down at the end or on Ctrl-C.
    Cluster {
        /// How long the client flows run, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// When lb1's daemon is killed, in seconds.
        #[arg(long, default_value_t = 4)]
        kill_after: u64,
        /// Long-lived client flows.
        #[arg(long, default_value_t = 16)]
        flows: usize,
        /// The `failover` binary (default: the one next to this binary).
        #[arg(long)]
        failover: Option<PathBuf>,
    },
}

fn failover_exe(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => Ok(std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("failover")),
    }
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
            let failover = failover_exe(failover)?;
            failover_lab::demo::run(&failover_lab::demo::DemoOptions {
                failover,
                duration: Duration::from_secs(duration),
                kill_after: Duration::from_secs(kill_after),
                interval: Duration::from_millis(interval_ms.max(1)),
            })
        }
        Cmd::Cluster {
            duration,
            kill_after,
            flows,
            failover,
        } => failover_lab::cluster_demo::run(&failover_lab::cluster_demo::ClusterDemoOptions {
            failover: failover_exe(failover)?,
            duration: Duration::from_secs(duration),
            kill_after: Duration::from_secs(kill_after),
            flows: flows.clamp(1, 256),
        }),
    }
}
