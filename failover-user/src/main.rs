//! `failover`: the daemon and the CLI. Everything lives in the library
//! (`failover_user::cli` parses and dispatches, `failover_user::daemon`
//! runs the daemon); this file only sets up logging and the namespace.

use std::process::ExitCode;

use clap::Parser as _;
use failover_user::{
    cli::{self, Cli},
    sys::netns,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    if let Some(ns) = &cli.netns
        && let Err(e) = netns::enter_named(ns)
    {
        eprintln!("error: entering network namespace {ns:?}: {e:#}");
        return ExitCode::FAILURE;
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
