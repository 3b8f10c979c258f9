//! `failover`: the daemon and the CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::{collections::HashMap, sync::Arc};

use failover_user::{
    admin,
    agent::{self, Agent, BackendKey},
    config::{self, Config},
    dataplane::{self, AgentMaps, Dataplane},
    events,
    health::State,
    http, inspect,
    layout::Layout,
    metrics,
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
    /// Let a backend held down by manual failback back in.
    Release(ActionArgs),
    /// Manual failover: drain every backend that outranks BACKEND.
    Switch {
        service: String,
        #[arg(long)]
        to: String,
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
enum AuditCmd {
    /// Check the hash chain; names the first broken line.
    Verify { file: PathBuf },
}

/// How the CLI reaches the daemon's admin API.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The daemon's config (for its admin socket).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The admin socket (default /run/failover/admin.sock, or the config's).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Use the TCP listener at ip:port instead (needs --token-file).
    #[arg(long)]
    tcp: Option<std::net::SocketAddr>,
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct ActionArgs {
    service: String,
    backend: String,
    #[command(flatten)]
    api: ApiArgs,
}

fn api_call(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let target = match (&api.tcp, &api.socket, &api.config) {
        (Some(addr), _, _) => http::Endpoint::Tcp(*addr),
        (None, Some(s), _) => http::Endpoint::Unix(s.clone()),
        (None, None, Some(c)) => http::Endpoint::Unix(config::load(c)?.admin.socket),
        (None, None, None) => http::Endpoint::Unix(admin::default_socket(std::path::Path::new(
            config::DEFAULT_STATE_DIR,
        ))),
    };
    let token = match &api.token_file {
        Some(p) => Some(admin::read_token(p)?),
        None => None,
    };
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let (status, body) = rt
        .block_on(http::request(
            &target,
            method,
            path,
            &headers,
            body,
            std::time::Duration::from_secs(30),
        ))
        .with_context(|| {
            format!("talking to the daemon at {target:?} (is it running? are you root?)")
        })?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !(200..300).contains(&status) {
        let why = v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        anyhow::bail!("the daemon refused ({status}): {why}");
    }
    Ok(v)
}

fn cmd_action(action: &str, a: &ActionArgs) -> anyhow::Result<()> {
    let v = api_call(
        &a.api,
        "POST",
        &format!("/v1/services/{}/backends/{}/{action}", a.service, a.backend),
        b"",
    )?;
    let (from, to) = (
        v["from"].as_str().unwrap_or("?"),
        v["to"].as_str().unwrap_or("?"),
    );
    if from == to {
        println!(
            "{}/{}: unchanged ({to}; map {})",
            a.service,
            a.backend,
            v["map_word"].as_str().unwrap_or("?")
        );
    } else {
        println!(
            "{}/{}: {from} -> {to} (map {}, version {})",
            a.service,
            a.backend,
            v["map_word"].as_str().unwrap_or("?"),
            v["map_version"]
        );
    }
    Ok(())
}

/// Where the CLI finds the dataplane's state.
#[derive(clap::Args, Clone)]
struct SourceArgs {
    /// The daemon's config (for its bpffs and state directories).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The pin directory (default /sys/fs/bpf/failover, or the config's).
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// The daemon's state directory (default /run/failover, or the config's).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl SourceArgs {
    fn source(&self) -> anyhow::Result<inspect::Source> {
        let (mut bpffs, mut state_dir) = (
            PathBuf::from(config::DEFAULT_BPFFS),
            PathBuf::from(config::DEFAULT_STATE_DIR),
        );
        if let Some(c) = &self.config {
            let cfg = config::load(c)?;
            bpffs = cfg.daemon.bpffs;
            state_dir = cfg.daemon.state_dir;
        }
        if let Some(b) = &self.bpffs {
            bpffs = b.clone();
        }
        if let Some(s) = &self.state_dir {
            state_dir = s.clone();
        }
        Ok(inspect::Source { bpffs, state_dir })
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("serialising")?
    );
    Ok(())
}

fn cmd_status(a: &SourceArgs) -> anyhow::Result<()> {
    let st = inspect::status(&a.source()?)?;
    if a.json {
        return print_json(&st);
    }
    println!("bpffs:     {}", st.bpffs.display());
    println!(
        "attached:  {}",
        if st.attached.is_empty() {
            "(none)".to_string()
        } else {
            st.attached.join(", ")
        }
    );
    println!("services:  {}", st.services);
    let b: Vec<String> = st
        .backends_by_state
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    println!("backends:  {}", b.join(", "));
    println!(
        "flows:     {} tracked (capacity {})",
        st.flows, st.conntrack_capacity
    );
    let m: Vec<String> = st.maps.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("map ids:   {}", m.join(" "));
    Ok(())
}

fn cmd_services(a: &SourceArgs) -> anyhow::Result<()> {
    let rows = inspect::services(&a.source()?)?;
    if a.json {
        return print_json(&rows);
    }
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                std::net::SocketAddr::new(r.vip, r.port).to_string(),
                r.protocol.clone(),
                r.mode.clone(),
                r.serving_tier.map_or("none".to_string(), |t| {
                    format!("{t} ({})", r.serving.join(","))
                }),
                r.fwd_packets.to_string(),
                r.fwd_bytes.to_string(),
                r.reply_packets.to_string(),
                r.dropped_packets.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        inspect::table(
            &[
                "SERVICE",
                "VIP",
                "PROTO",
                "MODE",
                "SERVING TIER",
                "FWD PKTS",
                "FWD BYTES",
                "REPLIES",
                "DROPPED"
            ],
            &t
        )
    );
    Ok(())
}

fn cmd_backends(service: Option<&str>, a: &SourceArgs) -> anyhow::Result<()> {
    let rows = inspect::backends(&a.source()?, service)?;
    if a.json {
        return print_json(&rows);
    }
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                r.backend.clone(),
                std::net::SocketAddr::new(r.address, r.port).to_string(),
                r.tier.to_string(),
                r.state.to_string(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        inspect::table(
            &[
                "SERVICE", "BACKEND", "ADDRESS", "TIER", "STATE", "PACKETS", "BYTES"
            ],
            &t
        )
    );
    Ok(())
}

fn cmd_flows(service: Option<&str>, limit: usize, a: &SourceArgs) -> anyhow::Result<()> {
    let rows = inspect::flows(&a.source()?, service, limit)?;
    if a.json {
        return print_json(&rows);
    }
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.client.to_string(),
                r.vip.to_string(),
                r.protocol.to_string(),
                r.service.clone(),
                r.backend.clone(),
                r.state.to_string(),
                format!("{:.1}s", r.idle_s),
            ]
        })
        .collect();
    print!(
        "{}",
        inspect::table(
            &[
                "CLIENT", "VIP", "PROTO", "SERVICE", "BACKEND", "STATE", "IDLE"
            ],
            &t
        )
    );
    Ok(())
}

fn cmd_stats(watch: bool, count: Option<u64>, a: &SourceArgs) -> anyhow::Result<()> {
    let src = a.source()?;
    let mut prev = inspect::reasons(&src)?;
    if !watch {
        if a.json {
            return print_json(&prev);
        }
        let t: Vec<Vec<String>> = prev
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()])
            .collect();
        print!("{}", inspect::table(&["OUTCOME", "PACKETS"], &t));
        return Ok(());
    }
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let cur = inspect::reasons(&src)?;
        let rates: std::collections::BTreeMap<&str, u64> = cur
            .iter()
            .map(|(k, v)| (*k, v.saturating_sub(prev.get(k).copied().unwrap_or(0))))
            .collect();
        if a.json {
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({"totals": cur, "per_second": rates}))
                    .context("serialising")?
            );
        } else {
            let busy: Vec<String> = rates
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}/s"))
                .collect();
            println!(
                "{}",
                if busy.is_empty() {
                    "(idle)".to_string()
                } else {
                    busy.join("  ")
                }
            );
        }
        prev = cur;
        n += 1;
    }
    Ok(())
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
        Cmd::Status { src } => cmd_status(&src),
        Cmd::Drain(a) => cmd_action("drain", &a),
        Cmd::Undrain(a) => cmd_action("undrain", &a),
        Cmd::Disable(a) => cmd_action("disable", &a),
        Cmd::Enable(a) => cmd_action("enable", &a),
        Cmd::Release(a) => cmd_action("release", &a),
        Cmd::Switch { service, to, api } => api_call(
            &api,
            "POST",
            &format!("/v1/services/{service}/switch"),
            serde_json::json!({"to": to}).to_string().as_bytes(),
        )
        .map(|v| {
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
            cmd: AuditCmd::Verify { file },
        } => match failover_user::audit::verify(&file) {
            Ok(n) => {
                println!("{}: ok, {n} lines, the chain is intact", file.display());
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
    // A reload asked for before the handler is installed (in run_daemon)
    // is moot, the config is read fresh: ignore SIGHUP until then rather
    // than die of its default action.
    // SAFETY: setting a signal's disposition to "ignore" has no
    // preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
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

    // Signals first: a SIGHUP (or SIGTERM) that comes while the program is
    // still being verified (seconds on a busy host) must not kill the daemon
    // half-started by its default action; it is handled once running.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    check_forwarding();
    // The audit log first: a tampered log stops the daemon before anything
    // changes.
    let audit = Arc::new(std::sync::Mutex::new(
        failover_user::audit::AuditLog::open(&cfg.admin.audit_file)
            .with_context(|| format!("opening the audit log {}", cfg.admin.audit_file.display()))?,
    ));
    let token = match &cfg.admin.token_file {
        Some(p) => Some(admin::read_token(p)?),
        None => None,
    };
    let mut dp = Dataplane::load(&cfg.limits, Some(&cfg.daemon.bpffs))?;
    // Keep the logger alive for the daemon's life: it owns the log ring
    // buffer's fd.
    let logger = aya_log::EbpfLogger::init(dp.ebpf_mut()).context("starting the eBPF logger")?;
    // States the previous run saved: a restart does not send traffic to a
    // backend it knew was down, nor flap one it knew was up.
    let saved = agent::load_states(&cfg.daemon.state_dir.join("states.json"));
    let layout = apply(&mut dp, &cfg, &saved)?;
    // Flows expire on this clock: set before the first packet arrives,
    // advanced by a thread started once capabilities are dropped.
    dp.set_clock(dataplane::clock_ms())?;
    for iface in &cfg.daemon.interfaces {
        dp.attach(iface, cfg.daemon.xdp_mode)?;
    }
    let sink = Arc::new(events::Sink::with_audit(
        cfg.daemon.events_file.as_deref(),
        Some(audit.clone()),
    )?);
    let agent_metrics: metrics::Shared = Default::default();
    let start_agent = |cfg: &Config,
                       layout: &Layout,
                       states: &HashMap<BackendKey, State>|
     -> anyhow::Result<Agent> {
        let maps = AgentMaps::open(&cfg.daemon.bpffs)
            .context("opening the pinned maps for the health agent")?;
        Agent::start(
            cfg,
            layout,
            maps,
            sink.clone(),
            states,
            agent_metrics.clone(),
        )
    };
    let agent = Arc::new(tokio::sync::RwLock::new(Some(start_agent(
        &cfg, &layout, &saved,
    )?)));

    // The admin API and the metrics endpoint.
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<admin::ReloadRequest>(4);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let st = Arc::new(admin::AdminState {
        agent: agent.clone(),
        reload_tx,
        audit: Some(audit.clone()),
        token,
        alertmanager: cfg.admin.alertmanager.clone(),
        metrics: agent_metrics.clone(),
        source: inspect::Source {
            bpffs: cfg.daemon.bpffs.clone(),
            state_dir: cfg.daemon.state_dir.clone(),
        },
    });
    let handler = |trusted: bool| -> http::Handler {
        let st = st.clone();
        Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { admin::handle(st, req, trusted).await })
        })
    };
    // Every listener: the same bounds and request rate.
    let limits = http::Limits {
        max_requests_per_sec: cfg.admin.rate_limit,
        ..http::Limits::default()
    };
    let mut servers = Vec::new();
    let unix = http::bind_unix(&cfg.admin.socket)
        .with_context(|| format!("admin socket {}", cfg.admin.socket.display()))?;
    servers.push(tokio::spawn(http::serve_unix(
        unix,
        handler(true),
        limits,
        stop_rx.clone(),
    )));
    if let Some(addr) = cfg.admin.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin listener {addr}"))?;
        servers.push(tokio::spawn(http::serve_tcp(
            l,
            handler(false),
            limits,
            stop_rx.clone(),
        )));
    }
    if let Some(addr) = cfg.admin.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listener {addr}"))?;
        let st = st.clone();
        let h: http::Handler = Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { admin::metrics_response(&st, &req) })
        });
        servers.push(tokio::spawn(http::serve_tcp(l, h, limits, stop_rx.clone())));
    }
    // Attached and listening: from here on only map writes need a
    // privilege.
    if cfg.daemon.drop_capabilities {
        drop_capabilities()?;
    }
    dataplane::spawn_clock(&cfg.daemon.bpffs)?;
    info!(
        services = layout.services.len(),
        bpffs = %cfg.daemon.bpffs.display(),
        admin = %cfg.admin.socket.display(),
        "failover dataplane running"
    );
    // SAFETY: the AsyncFd owns the logger, so the ring buffer's fd stays
    // open for as long as it is registered.
    let mut log_fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the eBPF log buffer: {e}"))?;
    let mut current = cfg;
    let audit_note = |what: serde_json::Value| {
        if let (Ok(mut log), serde_json::Value::Object(m)) = (audit.lock(), what)
            && let Err(e) = log.append(&events::now_rfc3339(), m)
        {
            warn!(error = %e, "writing the audit log failed");
        }
    };
    loop {
        let (dry_run, reply) = tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); break; }
            _ = int.recv() => { info!("SIGINT"); break; }
            _ = hup.recv() => (false, None),
            r = reload_rx.recv() => match r {
                Some(r) => (r.dry_run, Some(r.reply)),
                None => continue,
            },
            guard = log_fd.readable_mut() => {
                match guard {
                    Ok(mut g) => { g.get_inner_mut().flush(); g.clear_ready(); }
                    Err(e) => { warn!(error = %e, "eBPF log buffer unreadable"); }
                }
                continue;
            }
        };
        let outcome = reload(&path, &current, dry_run, &mut dp, &agent, &start_agent).await;
        match &outcome {
            Ok((diff, new)) => {
                audit_note(
                    serde_json::json!({"kind": "reload", "dry_run": dry_run, "result": "ok", "diff": diff}),
                );
                if let Some(new) = new {
                    current = new.clone();
                }
            }
            Err(e) => {
                error!(error = %e, "reload refused: the running config is unchanged");
                audit_note(serde_json::json!({"kind": "reload", "dry_run": dry_run, "result": e}));
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(outcome.map(|(d, _)| d));
        }
    }
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    let _ = std::fs::remove_file(&current.admin.socket);
    if let Some(a) = agent.write().await.take() {
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

/// Re-reads the config: validates, diffs, and (unless `dry_run`) applies it
/// with the health of unchanged backends carried over. A config that does
/// not validate changes nothing.
async fn reload(
    path: &std::path::Path,
    current: &Config,
    dry_run: bool,
    dp: &mut Dataplane,
    agent: &tokio::sync::RwLock<Option<Agent>>,
    start_agent: &impl Fn(&Config, &Layout, &HashMap<BackendKey, State>) -> anyhow::Result<Agent>,
) -> Result<(serde_json::Value, Option<Config>), String> {
    let new = config::load(path).map_err(|e| e.to_string())?;
    if new.daemon != current.daemon || new.limits != current.limits || new.admin != current.admin {
        return Err(
            "[daemon], [limits], [admin] and [alertmanager] changes need a restart".to_string(),
        );
    }
    let d = config::diff(current, &new);
    if dry_run {
        return Ok((d, None));
    }
    // Stop the agent (keeping what it knows), apply, restart it.
    let mut slot = agent.write().await;
    let states = match slot.take() {
        Some(a) => a.stop().await.0,
        None => HashMap::new(),
    };
    match apply(dp, &new, &states) {
        Ok(l) => {
            info!(services = l.services.len(), diff = %d, "config reloaded");
            match start_agent(&new, &l, &states) {
                Ok(a) => *slot = Some(a),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "health agent failed to restart: states are frozen")
                }
            }
            Ok((d, Some(new)))
        }
        Err(e) => Err(format!("reload failed part-way: {e:#}")),
    }
}

/// Keeps only CAP_BPF (see `caps.rs`), and checks every thread.
fn drop_capabilities() -> anyhow::Result<()> {
    use failover_user::caps;
    let keep = caps::keep_set(caps::last_cap()?);
    let d = caps::drop_all_but(keep).context("dropping capabilities")?;
    let over = caps::check_threads(keep)?;
    if !over.is_empty() {
        anyhow::bail!(
            "threads still hold capabilities after the drop: {over:?}; refusing to run with them"
        );
    }
    info!(
        kept = %caps::names(d.kept),
        bounding_set_dropped = d.bounding,
        "capabilities dropped"
    );
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
