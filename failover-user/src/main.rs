//! `failover`: the daemon and the CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::{collections::HashMap, sync::Arc};

use failover_user::{
    agent::{self, Agent, BackendKey},
    config::{self, Config},
    dataplane::{self, AgentMaps, Dataplane},
    events,
    health::State,
    layout::Layout,
};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "failover",
    version,
    about = "XDP failover dataplane: daemon and CLI"
)]
struct Cli {
    /// Run in this network namespace (`/run/netns/NAME`, as made by `ip
    /// netns add`), keeping the host's mounts (bpffs) in view.
    #[arg(long, global = true)]
    netns: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
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
    CheckConfig { config: PathBuf },
    /// The lab: namespaces, a load balancer, two backends and a client.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
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
enum LabCmd {
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
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
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

fn init_logging(format: LogFormat) {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Some(ns) = &cli.netns
        && let Err(e) = failover_user::lab::netns::enter_named(ns)
    {
        eprintln!("error: entering network namespace {ns:?}: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.cmd {
        Cmd::Lab {
            cmd:
                LabCmd::Demo {
                    duration,
                    kill_after,
                    interval_ms,
                },
        } => failover_user::lab::demo::run(&failover_user::lab::demo::DemoOptions {
            duration: std::time::Duration::from_secs(duration),
            kill_after: std::time::Duration::from_secs(kill_after),
            interval: std::time::Duration::from_millis(interval_ms.max(1)),
        }),
        Cmd::Daemon {
            config,
            detach_on_exit,
        } => daemon(config, detach_on_exit),
        Cmd::CheckConfig { config } => check_config(config),
        Cmd::SetState {
            service,
            backend,
            state,
            config,
        } => set_state(config, &service, &backend, state),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let cfg = config::load(&path)?;
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

fn layout_path(cfg: &Config) -> PathBuf {
    cfg.daemon.state_dir.join("layout.json")
}

fn set_state(path: PathBuf, service: &str, backend: &str, state: StateArg) -> anyhow::Result<()> {
    let cfg = config::load(&path)?;
    let lp = layout_path(&cfg);
    let layout = Layout::load(&lp)?
        .with_context(|| format!("no layout at {} (is the daemon running?)", lp.display()))?;
    let id = layout
        .backend_id(service, backend)
        .with_context(|| format!("no backend {backend:?} in service {service:?}"))?;
    dataplane::set_pinned_state(&cfg.daemon.bpffs, id, state.word())?;
    println!("{service}/{backend} (slot {id}): state set");
    Ok(())
}

fn apply(
    dp: &mut Dataplane,
    cfg: &Config,
    states: &HashMap<BackendKey, State>,
) -> anyhow::Result<Layout> {
    let lp = layout_path(cfg);
    let prev = match Layout::load(&lp) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "ignoring an unreadable previous layout");
            None
        }
    };
    let layout = Layout::assign(cfg, prev.as_ref()).context("assigning map slots")?;
    // Backends whose health is known (a reload) keep it: their state words
    // are written from it, not from the config.
    let mut words = HashMap::new();
    for (s, sl) in cfg.services.iter().zip(&layout.services) {
        for (b, bl) in s.tiers.iter().flatten().zip(sl.tiers.iter().flatten()) {
            let key = (
                s.name.clone(),
                b.name.clone(),
                std::net::SocketAddr::new(b.address, b.port),
            );
            if let Some(st) = states.get(&key) {
                words.insert(bl.id, agent::word_for(*st, s.flows_on_down));
            }
        }
    }
    dp.apply(cfg, &layout, &words)
        .context("writing the config into the maps")?;
    layout.save(&lp)?;
    Ok(layout)
}

fn daemon(path: PathBuf, detach_on_exit: bool) -> anyhow::Result<()> {
    let cfg = config::load(&path)?;
    if cfg.daemon.interfaces.is_empty() {
        anyhow::bail!(
            "{}: daemon.interfaces is empty: nothing to attach to",
            path.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_daemon(path, cfg, detach_on_exit))
}

async fn run_daemon(path: PathBuf, cfg: Config, detach_on_exit: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    check_forwarding();
    let mut dp = Dataplane::load(&cfg.limits, Some(&cfg.daemon.bpffs))?;
    // Keep the logger alive for the daemon's life: it owns the log ring
    // buffer's fd.
    let logger = aya_log::EbpfLogger::init(dp.ebpf_mut()).context("starting the eBPF logger")?;
    let layout = apply(&mut dp, &cfg, &HashMap::new())?;
    for iface in &cfg.daemon.interfaces {
        dp.attach(iface, cfg.daemon.xdp_mode)?;
    }
    let sink = Arc::new(events::Sink::new(cfg.daemon.events_file.as_deref())?);
    let start_agent = |cfg: &Config,
                       layout: &Layout,
                       states: &HashMap<BackendKey, State>|
     -> anyhow::Result<Agent> {
        let maps = AgentMaps::open(&cfg.daemon.bpffs)
            .context("opening the pinned maps for the health agent")?;
        Agent::start(cfg, layout, maps, sink.clone(), states)
    };
    let mut agent = Some(start_agent(&cfg, &layout, &HashMap::new())?);
    info!(
        services = layout.services.len(),
        bpffs = %cfg.daemon.bpffs.display(),
        "failover dataplane running"
    );
    // SAFETY: the AsyncFd owns the logger, so the ring buffer's fd stays
    // open for as long as it is registered.
    let mut log_fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the eBPF log buffer: {e}"))?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); break; }
            _ = int.recv() => { info!("SIGINT"); break; }
            _ = hup.recv() => {
                match config::load(&path) {
                    Err(e) => error!(error = %e, "reload refused: the running config is unchanged"),
                    Ok(new) if new.daemon != current.daemon || new.limits != current.limits => {
                        error!("reload refused: [daemon] and [limits] changes need a restart");
                    }
                    Ok(new) => {
                        // Stop the agent (keeping what it knows), apply, restart it.
                        let states = match agent.take() {
                            Some(a) => a.stop().await.0,
                            None => HashMap::new(),
                        };
                        match apply(&mut dp, &new, &states) {
                            Ok(l) => {
                                info!(services = l.services.len(), "config reloaded");
                                match start_agent(&new, &l, &states) {
                                    Ok(a) => agent = Some(a),
                                    Err(e) => error!(error = %format!("{e:#}"), "health agent failed to restart: states are frozen"),
                                }
                                current = new;
                            }
                            Err(e) => error!(error = %format!("{e:#}"), "reload failed part-way"),
                        }
                    }
                }
            }
            guard = log_fd.readable_mut() => {
                match guard {
                    Ok(mut g) => { g.get_inner_mut().flush(); g.clear_ready(); }
                    Err(e) => { warn!(error = %e, "eBPF log buffer unreadable"); }
                }
            }
        }
    }
    if let Some(a) = agent.take() {
        let (_, stats) = a.stop().await;
        if let (Some(p50), Some(p99)) = (
            stats.decision_to_map_us.quantile(0.5),
            stats.decision_to_map_us.quantile(0.99),
        ) {
            info!(
                changes = stats.decision_to_map_us.len(),
                p50_us = p50,
                p99_us = p99,
                "decision-to-map latency over this run"
            );
        }
    }
    if detach_on_exit {
        teardown(&current)?;
        info!("detached and unpinned");
    } else {
        info!("exiting; the dataplane stays attached with its last state (fail-static)");
    }
    Ok(())
}

/// Unpins the links (detaching the program) and the maps.
fn teardown(cfg: &Config) -> anyhow::Result<()> {
    for iface in &cfg.daemon.interfaces {
        let p = dataplane::link_pin_path(&cfg.daemon.bpffs, iface);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
        }
    }
    for name in failover_common::map_names::ALL {
        let p = dataplane::map_pin_path(&cfg.daemon.bpffs, name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
        }
    }
    let _ = std::fs::remove_dir(&cfg.daemon.bpffs);
    let _ = std::fs::remove_file(layout_path(cfg));
    Ok(())
}

/// NAT and DSR forward through the kernel's FIB, which refuses when IP
/// forwarding is off.
fn check_forwarding() {
    for (file, what) in [
        ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
        (
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        if let Ok(v) = std::fs::read_to_string(file)
            && v.trim() == "0"
        {
            warn!(
                "{what} is 0: the FIB lookup will refuse to forward (packets counted as drop_fib_fail); set it to 1"
            );
        }
    }
}
