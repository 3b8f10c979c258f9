//! The `failover` command line: the daemon, config checks, the admin verbs
//! (through the daemon's API) and the readers of the pinned maps.

mod remote;
mod show;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use self::{
    remote::{ActionArgs, ApiArgs, api_call, cmd_action},
    show::{SourceArgs, cmd_backends, cmd_flows, cmd_services, cmd_stats, cmd_status},
};
use crate::{
    agent::{self, health::State},
    config,
    daemon::layout_path,
    dataplane::{self, layout::Layout},
};

#[derive(Parser)]
#[command(
    name = "failover",
    version,
    about = "XDP failover dataplane: daemon and CLI"
)]
pub struct Cli {
    /// Run in this network namespace (`/run/netns/NAME`, as made by `ip
    /// netns add`), keeping the host's mounts (bpffs) in view.
    #[arg(long, global = true)]
    pub netns: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Load and attach the XDP program, fill its maps from the config, and
    /// run until SIGINT/SIGTERM (SIGHUP re-reads the config).
    Daemon {
        #[arg(long)]
        config: PathBuf,
        /// Detach the program and unpin everything on exit (default: leave
        /// the dataplane running with its last decisions).
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Validate a config without touching the kernel; prints every error.
    /// Also checks this host as the daemon would before starting (the
    /// interfaces, the bpf filesystem, who owns the state and pin
    /// directories, symlinks where it writes) unless `--offline`.
    CheckConfig {
        config: PathBuf,
        /// Only the file itself (e.g. on a build host).
        #[arg(long)]
        offline: bool,
    },
    /// What is pinned and attached, and backends by state.
    Status {
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Services: VIP, mode, the serving tier, counters.
    Services {
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Backends (of one service): state in the map, counters.
    Backends {
        service: Option<String>,
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Tracked flows (conntrack).
    Flows {
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Packet outcome counters (per reason); `--watch` prints rates.
    Stats {
        /// Refresh every second, printing per-second rates.
        #[arg(long)]
        watch: bool,
        /// With --watch: stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Drain a backend (keeps its flows, takes no new ones).
    Drain(ActionArgs),
    /// Lift a drain.
    Undrain(ActionArgs),
    /// Disable a backend (its flows move).
    Disable(ActionArgs),
    /// Lift a disable.
    Enable(ActionArgs),
    /// Let a backend held down by manual failback back in; a fenced one
    /// (roles) only if it passes the standby check, or with --force.
    Release {
        #[command(flatten)]
        a: ActionArgs,
        /// A fenced backend without its standby check (audited).
        #[arg(long)]
        force: bool,
    },
    /// Manual failover: drain every backend that outranks BACKEND. With
    /// roles ([service.promotion]): a planned switchover (fence the
    /// active, promote BACKEND, wait until it is ready, switch).
    Switch {
        service: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A failover drill of a service with roles: refused unless a standby
    /// is ready; a planned switchover, timed (RTO), optionally back.
    Drill {
        service: String,
        /// The standby to promote (default: the first ready one).
        #[arg(long)]
        to: Option<String>,
        /// Switch back to the old active afterwards (once it passes the
        /// standby check).
        #[arg(long)]
        back: bool,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Re-read the daemon's config (a bad one changes nothing).
    Reload {
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Set a backend's state in the pinned maps (one map write).
    SetState {
        service: String,
        backend: String,
        #[arg(value_enum)]
        state: StateArg,
        /// The daemon's config (for its bpffs and state directories).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; names the first broken line.
    Verify {
        file: PathBuf,
        /// The head the daemon published (`status`: `SEQ:HASH`): also
        /// detects a log cut short or rewritten from that line on.
        #[arg(long)]
        head: Option<String>,
    },
    /// A last line torn by a crash or a full disk: move it aside (kept as
    /// evidence in FILE.torn-<ms>) so the daemon can append again. Refuses
    /// any other damage. Run with the daemon stopped.
    Repair { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Up,
    Down,
    Draining,
    Disabled,
}

impl StateArg {
    fn word(self) -> u32 {
        match self {
            StateArg::Up => failover_common::STATE_UP,
            StateArg::Down => failover_common::STATE_DOWN,
            StateArg::Draining => failover_common::STATE_DRAINING,
            StateArg::Disabled => failover_common::STATE_DISABLED,
        }
    }
}

/// Logs to stderr, human or JSON, filtered by RUST_LOG (default info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Daemon {
            config,
            detach_on_exit,
        } => crate::daemon::run(config, detach_on_exit),
        Cmd::CheckConfig { config, offline } => check_config(config, offline),
        Cmd::Status { src } => cmd_status(&src),
        Cmd::Drain(a) => cmd_action("drain", &a),
        Cmd::Undrain(a) => cmd_action("undrain", &a),
        Cmd::Disable(a) => cmd_action("disable", &a),
        Cmd::Enable(a) => cmd_action("enable", &a),
        Cmd::Release { a, force: false } => cmd_action("release", &a),
        Cmd::Release { a, force: true } => cmd_action("release?force=1", &a),
        Cmd::Drill {
            service,
            to,
            back,
            dry_run,
            api,
        } => remote::cmd_drill(&service, to.as_deref(), back, dry_run, &api),
        Cmd::Switch { service, to, api } => api_call(
            &api,
            "POST",
            &format!("/v1/services/{service}/switch"),
            serde_json::json!({"to": to}).to_string().as_bytes(),
        )
        .map(|v| {
            if let Some(r) = v.get("switchover") {
                println!(
                    "{service}: {} -> {} promoted (token {}, {}), {:.1} ms from the fence to the switch",
                    r["from"].as_str().unwrap_or("-"),
                    r["to"].as_str().unwrap_or("?"),
                    r["token"],
                    r["cause"].as_str().unwrap_or("?"),
                    r["elapsed_ms"].as_f64().unwrap_or(f64::NAN)
                );
                return;
            }
            let changes = v["changes"].as_array().cloned().unwrap_or_default();
            if changes.is_empty() {
                println!("{service}: {to} already takes the new flows");
            }
            for c in changes {
                println!(
                    "{service}/{}: {} -> {} (map {})",
                    c["backend"].as_str().unwrap_or("?"),
                    c["from"].as_str().unwrap_or("?"),
                    c["to"].as_str().unwrap_or("?"),
                    c["map_word"].as_str().unwrap_or("?")
                );
            }
        }),
        Cmd::Reload { dry_run, api } => {
            let path = if dry_run {
                "/v1/reload?dry_run=1"
            } else {
                "/v1/reload"
            };
            api_call(&api, "POST", path, b"").map(|v| {
                println!(
                    "{}{}",
                    if dry_run {
                        "would change: "
                    } else {
                        "reloaded: "
                    },
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
            })
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { file, head },
        } => {
            let r = match &head {
                Some(h) => crate::observe::audit::verify_head(&file, h),
                None => crate::observe::audit::verify(&file).map_err(|e| e.to_string()),
            };
            match r {
                Ok(n) => {
                    println!("{}: ok, {n} lines, the chain is intact", file.display());
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!("{}: {e}", file.display())),
            }
        }
        Cmd::Audit {
            cmd: AuditCmd::Repair { file },
        } => match crate::observe::audit::repair(&file) {
            Ok(r) => {
                match &r.evidence {
                    Some((p, n)) => println!(
                        "{}: {} lines kept, the chain is intact; the torn last line ({n} bytes) moved to {}",
                        file.display(),
                        r.lines,
                        p.display()
                    ),
                    None => println!(
                        "{}: nothing to repair ({} lines, intact)",
                        file.display(),
                        r.lines
                    ),
                }
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("{}: {e}", file.display())),
        },
        Cmd::Services { src } => cmd_services(&src),
        Cmd::Backends { service, src } => cmd_backends(service.as_deref(), &src),
        Cmd::Flows {
            service,
            limit,
            src,
        } => cmd_flows(service.as_deref(), limit, &src),
        Cmd::Stats { watch, count, src } => cmd_stats(watch, count, &src),
        Cmd::SetState {
            service,
            backend,
            state,
            config,
        } => set_state(config, &service, &backend, state),
    }
}

fn check_config(path: PathBuf, offline: bool) -> anyhow::Result<()> {
    let cfg = config::load(&path)?;
    if !offline {
        let problems = crate::daemon::host_problems(&cfg);
        if !problems.is_empty() {
            anyhow::bail!(
                "{}: the daemon would refuse to start on this host:\n  {}",
                path.display(),
                problems.join("\n  ")
            );
        }
    }
    let backends: usize = cfg
        .services
        .iter()
        .map(|s| s.tiers.iter().map(Vec::len).sum::<usize>())
        .sum();
    println!(
        "{}: ok ({} services, {} backends)",
        path.display(),
        cfg.services.len(),
        backends
    );
    Ok(())
}

fn set_state(path: PathBuf, service: &str, backend: &str, state: StateArg) -> anyhow::Result<()> {
    let cfg = config::load(&path)?;
    let lp = layout_path(&cfg);
    let layout = Layout::load(&lp)?
        .with_context(|| format!("no layout at {} (is the daemon running?)", lp.display()))?;
    let id = layout
        .backend_id(service, backend)
        .with_context(|| format!("no backend {backend:?} in service {service:?}"))?;
    // "down" is the word the agent would write: the service's flows_on_down
    // policy decides what its established flows get.
    let word = match state {
        StateArg::Down => {
            let svc = cfg
                .services
                .iter()
                .find(|s| s.name == service)
                .with_context(|| format!("no service {service:?} in the config"))?;
            agent::word_for(State::Down, svc.flows_on_down)
        }
        other => other.word(),
    };
    dataplane::set_pinned_state(&cfg.daemon.bpffs, id, word)?;
    println!("{service}/{backend} (slot {id}): state set");
    Ok(())
}
