//! The daemon's life: start (audit log, dataplane, agent, listeners, the
//! capability drop), the loop that serves reloads (SIGHUP or the admin API)
//! and flushes the eBPF log, and the stop (listeners, agent, optional
//! teardown). Reload is library code end to end: the API asks through a
//! channel, this loop owns the dataplane and answers.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use tracing::{error, info, warn};

use crate::{
    agent::{self, Agent, BackendKey, health::State},
    api,
    config::{self, Config},
    dataplane::{self, AgentMaps, Dataplane, inspect, layout::Layout},
    observe::audit::AuditLog,
    observe::{events, metrics},
    sys::{caps, files},
};

/// Where the daemon keeps the slot layout (so a restart keeps backend ids).
pub fn layout_path(cfg: &Config) -> PathBuf {
    cfg.daemon.state_dir.join("layout.json")
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
    // The saved layout names the slots the pinned maps (and conntrack's
    // flows) use: a file that disagrees with the maps is not trusted.
    let prev = match prev.map(|p| (dp.layout_mismatches(&p), p)) {
        Some((Ok(bad), p)) if bad.is_empty() => Some(p),
        Some((Ok(bad), _)) => {
            warn!(mismatches = ?bad, path = %lp.display(), "the saved layout does not match the pinned maps: ignored, slots assigned afresh");
            None
        }
        Some((Err(e), _)) => {
            warn!(error = %format!("{e:#}"), "cannot check the saved layout against the pinned maps: ignored");
            None
        }
        None => None,
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
    // Roles: only the active of a service with [service.promotion] may
    // take new flows, from the first map write on (the agent starts
    // later). Which one is active is what the last run saved.
    if cfg.services.iter().any(|s| s.promotion.is_some()) {
        let saved = agent::load_promotions(&cfg.daemon.state_dir)?;
        for (s, sl) in cfg.services.iter().zip(&layout.services) {
            if s.promotion.is_none() {
                continue;
            }
            let active = agent::active_at_start(s, saved.get(&s.name));
            for (b, bl) in s.tiers.iter().flatten().zip(sl.tiers.iter().flatten()) {
                if active.as_deref() == Some(b.name.as_str()) {
                    continue;
                }
                let key = (
                    s.name.clone(),
                    b.name.clone(),
                    std::net::SocketAddr::new(b.address, b.port),
                );
                let st = states.get(&key).copied().unwrap_or(State::Up);
                let st = if st.serving() { State::Down } else { st };
                words.insert(bl.id, agent::word_for(st, s.flows_on_down));
            }
        }
    }
    dp.apply(cfg, &layout, &words)
        .context("writing the config into the maps")?;
    layout.save(&lp)?;
    Ok(layout)
}

/// `failover daemon`: loads the config, then runs [`run_daemon`] on a
/// single-threaded runtime until SIGINT or SIGTERM.
pub fn run(path: PathBuf, detach_on_exit: bool) -> anyhow::Result<()> {
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
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    check_forwarding();
    // Pre-flight: everything that can be checked is checked before the
    // kernel is touched, so a mistake leaves the running dataplane (or
    // none) as it was, never half-started.
    let pre = preflight(&cfg)?;
    let Preflight {
        audit,
        sink,
        mut locks,
        created_pin_dir,
    } = pre;
    let token = match &cfg.admin.token_file {
        Some(p) => Some(api::read_token(p)?),
        None => None,
    };
    // The admin API and the metrics endpoint, bound before the kernel is
    // touched (a taken port is a pre-flight failure); requests that come
    // before the agent runs are answered 503.
    let agent: Arc<tokio::sync::RwLock<Option<Agent>>> = Default::default();
    let agent_metrics: metrics::Shared = Default::default();
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<api::ReloadRequest>(4);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let st = Arc::new(api::AdminState {
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
        refusals: Default::default(),
    });
    let servers = api::listen::start(st.clone(), &cfg.admin, stop_rx.clone()).await?;
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
    // The kernel from here on: a failure rolls back what this start
    // attached (links it created are unpinned, so detached; a pin directory
    // it created is removed with its maps).
    let mut attached: Vec<String> = Vec::new();
    let started = async {
        let mut dp = Dataplane::load(&cfg.limits, Some(&cfg.daemon.bpffs))?;
        // Keep the logger alive for the daemon's life: it owns the log ring
        // buffer's fd.
        let logger = dp.logger()?;
        // States the previous run saved: a restart does not send traffic to
        // a backend it knew was down, nor flap one it knew was up.
        let saved = agent::load_states(&cfg.daemon.state_dir.join("states.json"));
        let layout = apply(&mut dp, &cfg, &saved)?;
        // Flows expire on this clock: set before the first packet arrives,
        // advanced by a thread started once capabilities are dropped.
        dp.set_clock(dataplane::clock_ms())?;
        // The agent before the links: once a link is pinned, the API
        // answers with a running agent.
        *agent.write().await = Some(start_agent(&cfg, &layout, &saved)?);
        for iface in &cfg.daemon.interfaces {
            if dp.attach(iface, cfg.daemon.xdp_mode)? != dataplane::Attached::Adopted {
                attached.push(iface.clone());
            }
        }
        anyhow::Ok((dp, logger, layout))
    }
    .await;
    let (mut dp, logger, layout) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = stop_tx.send(true);
            if let Some(a) = agent.write().await.take() {
                let _ = a.stop().await;
            }
            rollback(&cfg, &attached, created_pin_dir);
            return Err(e);
        }
    };
    // The cluster (if any) creates its liveness device now, while the
    // capabilities are still there; it announces nothing before the first
    // probe round and the warmup.
    let handle = agent.read().await.as_ref().map(Agent::handle);
    let cluster =
        match handle.map(|h| crate::cluster::ClusterRt::start(&cfg, h, agent_metrics.clone())) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                let _ = stop_tx.send(true);
                if let Some(a) = agent.write().await.take() {
                    let _ = a.stop().await;
                }
                rollback(&cfg, &attached, created_pin_dir);
                return Err(e.context("starting the cluster"));
            }
            None => None,
        };
    let cluster = std::sync::Arc::new(cluster);
    // Attached and listening: from here on only map writes need a
    // privilege.
    if cfg.daemon.drop_capabilities {
        drop_capabilities()?;
    }
    if let Some(c) = cluster.as_ref() {
        c.arm_watchdog()?;
    }
    dataplane::spawn_clock(&cfg.daemon.bpffs)?;
    dataplane::nexthop::spawn_watch(&cfg.daemon.bpffs)?;
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
    // systemd (Type=notify): ready once attached, listening and the first
    // probe round is in (bounded: a check that never answers still times
    // out); the watchdog is fed from this loop, so a stuck loop is seen.
    if let Some(first) = agent.read().await.as_ref().map(Agent::first_round) {
        let cluster = cluster.clone();
        let warmup = current.cluster.as_ref().map(|c| c.warmup);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), first).await;
            if let (Some(c), Some(w)) = (cluster.as_ref(), warmup) {
                c.attached(w);
            }
            if let Err(e) = sd_notify::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("attached; first probe round done"),
            ]) {
                warn!(error = %e, "telling systemd we are ready failed");
            }
        });
    }
    let mut watchdog = tokio::time::interval(
        sd_notify::watchdog_enabled().map_or(std::time::Duration::from_secs(3600), |d| d / 2),
    );
    let watchdog_on = sd_notify::watchdog_enabled().is_some();
    // The attachments are checked twice a second: a removed pin, a program
    // off its interface or a recreated interface is repaired and reported.
    let mut heartbeat = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut link_watch = tokio::time::interval(std::time::Duration::from_millis(500));
    link_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (dry_run, reply) = tokio::select! {
            _ = watchdog.tick(), if watchdog_on => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                continue;
            }
            _ = heartbeat.tick() => {
                st.flush_refusals();
                let (last_decision_ms, map_version) = agent_metrics
                    .lock()
                    .map_or((0, 0), |m| (m.last_decision_ms, m.map_version));
                let (audit_writable, audit_head) = match audit.lock() {
                    Ok(mut log) => (
                        log.writable(&events::now_rfc3339()),
                        format!("{}:{}", log.next_seq().saturating_sub(1), log.last_hash()),
                    ),
                    Err(_) => (false, String::new()),
                };
                if let Ok(mut m) = agent_metrics.lock() {
                    m.audit_writable = audit_writable;
                }
                let hb = crate::sys::heartbeat::Heartbeat {
                    pid: std::process::id(),
                    at_ms: crate::sys::heartbeat::now_ms(),
                    last_decision_ms,
                    map_version,
                    audit_writable,
                    audit_head,
                };
                if let Err(e) = crate::sys::heartbeat::write(&current.daemon.state_dir, &hb) {
                    warn!(error = %format!("{e:#}"), "writing the heartbeat failed");
                }
                continue;
            }
            _ = link_watch.tick() => {
                for (iface, ev) in dp.watch_links(current.daemon.xdp_mode) {
                    report_link(&sink, &iface, &ev);
                    if ev == dataplane::LinkEvent::PinDirRecreated {
                        // The lock went with the old directory: hold the new one.
                        match files::lock_dir(&current.daemon.bpffs) {
                            Ok(l) => locks[1] = l,
                            Err(e) => error!(error = %e, "locking the recreated pin directory"),
                        }
                    }
                }
                continue;
            }
            _ = term.recv() => { info!("SIGTERM"); break; }
            _ = int.recv() => { info!("SIGINT"); break; }
            _ = usr1.recv() => {
                // logrotate: the events file was moved away; open it anew.
                match sink.reopen() {
                    Ok(()) => info!("SIGUSR1: events file reopened"),
                    Err(e) => error!(error = %format!("{e:#}"), "SIGUSR1: reopening the events file failed; still writing the old one"),
                }
                continue;
            }
            _ = hup.recv() => {
                if let Err(e) = sink.reopen() {
                    error!(error = %format!("{e:#}"), "SIGHUP: reopening the events file failed; still writing the old one");
                }
                (false, None)
            }
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
        if let (Some(c), Some(a)) = (cluster.as_ref(), agent.read().await.as_ref()) {
            c.set_agent(a.handle());
        }
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
    // Withdraw every announcement before anything else stops (and long
    // before anything is detached).
    if let Some(c) = std::sync::Arc::into_inner(cluster).flatten() {
        c.stop().await;
        info!("cluster: announcements withdrawn");
    }
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    let _ = std::fs::remove_file(&current.admin.socket);
    // Not alive from now on (readers need not wait for the heartbeat to age).
    let _ = std::fs::remove_file(crate::sys::heartbeat::path(&current.daemon.state_dir));
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

/// What the pre-flight opened and holds for the daemon's life.
struct Preflight {
    audit: Arc<std::sync::Mutex<AuditLog>>,
    sink: Arc<events::Sink>,
    /// One daemon per state directory and per pin directory.
    locks: [files::DirLock; 2],
    /// Whether this start created the pin directory (a failed start removes
    /// it again).
    created_pin_dir: bool,
}

/// Checks everything a start needs before the kernel is touched: the state
/// and pin directories (ours, closed to others, not held by another
/// daemon), the pin directory on a bpf filesystem, every interface, the
/// audit log (a tampered one stops the start) and the events file.
fn preflight(cfg: &Config) -> anyhow::Result<Preflight> {
    let d = &cfg.daemon;
    // Hooks and exec probes never run with the daemon's privileges.
    let (uid, gid) = crate::sys::exec::lookup_user(&d.run_as)
        .map_err(|e| anyhow::anyhow!("daemon.run_as: {e}"))?;
    crate::sys::exec::run_children_as(uid, gid);
    for iface in &d.interfaces {
        dataplane::ifindex(iface).with_context(|| format!("daemon.interfaces: {iface:?}"))?;
    }
    let parent = d.bpffs.parent().unwrap_or(std::path::Path::new("/"));
    if !is_bpffs(parent) {
        anyhow::bail!(
            "daemon.bpffs: {} is not on a bpf filesystem (mount one: `mount -t bpf -o mode=0700 bpf {}`)",
            d.bpffs.display(),
            parent.display()
        );
    }
    files::ensure_private_dir(&d.state_dir).context("daemon.state_dir")?;
    let state_lock = files::lock_dir(&d.state_dir).context("daemon.state_dir")?;
    let created_pin_dir = files::ensure_private_dir(&d.bpffs).context("daemon.bpffs")?;
    let rest = (|| -> anyhow::Result<_> {
        let pin_lock = files::lock_dir(&d.bpffs).context("daemon.bpffs")?;
        let audit = Arc::new(std::sync::Mutex::new(
            AuditLog::open(&cfg.admin.audit_file).with_context(|| {
                format!("opening the audit log {}", cfg.admin.audit_file.display())
            })?,
        ));
        let sink = Arc::new(events::Sink::with_audit(
            d.events_file.as_deref(),
            Some(audit.clone()),
        )?);
        Ok((pin_lock, audit, sink))
    })();
    match rest {
        Ok((pin_lock, audit, sink)) => Ok(Preflight {
            audit,
            sink,
            locks: [state_lock, pin_lock],
            created_pin_dir,
        }),
        Err(e) => {
            if created_pin_dir {
                let _ = std::fs::remove_dir(&d.bpffs);
            }
            Err(e)
        }
    }
}

/// What the pre-flight would refuse on this host, without changing
/// anything (for `check-config`): every problem, each naming its field.
pub fn host_problems(cfg: &Config) -> Vec<String> {
    let d = &cfg.daemon;
    let mut out = Vec::new();
    if let Err(e) = crate::sys::exec::lookup_user(&d.run_as) {
        out.push(format!("daemon.run_as: {e}"));
    }
    if d.interfaces.is_empty() {
        out.push("daemon.interfaces: empty: the daemon would attach to nothing".to_string());
    }
    let local = crate::sys::netns::local_addresses();
    for (si, s) in cfg.services.iter().enumerate() {
        for b in s.tiers.iter().flatten() {
            if local.contains(&b.address) {
                out.push(format!(
                    "service[{si}] ({}) backend {:?}: {} is an address of this host: the load \
                     balancer would forward to itself",
                    s.name, b.name, b.address
                ));
            }
        }
        for h in &s.hooks {
            if let crate::config::HookSpec::Exec { command } = &h.hook.spec
                && let Some(program) = command.first()
                && !program_exists(program)
            {
                out.push(format!(
                    "service[{si}] ({}) hook {:?}: program {program:?} not found",
                    s.name, h.hook.name
                ));
            }
        }
        let promotion_hooks = s
            .promotion
            .iter()
            .flat_map(|p| std::iter::once(&p.promote).chain(p.fence.as_ref()));
        for h in promotion_hooks {
            if let crate::config::HookSpec::Exec { command } = &h.spec
                && let Some(program) = command.first()
                && !program_exists(program)
            {
                out.push(format!(
                    "service[{si}] ({}) promotion.{}: program {program:?} not found",
                    s.name, h.name
                ));
            }
        }
    }
    for iface in &d.interfaces {
        if let Err(e) = dataplane::ifindex(iface) {
            out.push(format!("daemon.interfaces: {iface:?}: {e:#}"));
        }
    }
    let parent = d.bpffs.parent().unwrap_or(std::path::Path::new("/"));
    if !is_bpffs(parent) {
        out.push(format!(
            "daemon.bpffs: {} is not on a bpf filesystem",
            d.bpffs.display()
        ));
    }
    for (field, dir) in [
        ("daemon.state_dir", &d.state_dir),
        ("daemon.bpffs", &d.bpffs),
    ] {
        if std::fs::symlink_metadata(dir).is_ok()
            && let Err(e) = files::check_private_dir(dir)
        {
            out.push(format!("{field}: {e}"));
        }
    }
    let written = [
        ("daemon.events_file", d.events_file.as_deref()),
        ("admin.audit_file", Some(cfg.admin.audit_file.as_path())),
    ];
    for (field, file) in written {
        let Some(p) = file else { continue };
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => out.push(format!(
                "{field}: {} is a symbolic link: the daemon refuses to follow it",
                p.display()
            )),
            Ok(m) if !m.is_file() => {
                out.push(format!("{field}: {} is not a regular file", p.display()));
            }
            _ => {}
        }
    }
    out
}

/// Whether an exec hook's program can be found (a path, or a name on PATH).
fn program_exists(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Whether `path` (its nearest existing ancestor: the pin directory may
/// be made with its parents) is on a bpf filesystem.
fn is_bpffs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Some(path) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we own; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Undoes a failed start: the links this start created are unpinned (the
/// program leaves those interfaces); a pin directory it created goes with
/// its maps. Adopted links keep running (they ran before this start).
fn rollback(cfg: &Config, attached: &[String], created_pin_dir: bool) {
    for iface in attached {
        let p = dataplane::link_pin_path(&cfg.daemon.bpffs, iface);
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %p.display(), error = %e, "rollback: unpinning a link failed");
        }
    }
    if created_pin_dir {
        for name in failover_common::map_names::ALL {
            let _ = std::fs::remove_file(dataplane::map_pin_path(&cfg.daemon.bpffs, name));
        }
        let _ = std::fs::remove_dir(&cfg.daemon.bpffs);
    }
    warn!(
        detached = ?attached,
        removed_pins = created_pin_dir,
        "start failed: rolled back what this start attached"
    );
}

/// Logs a link watcher finding and records it as a `dataplane` event (in
/// the events file and the audit log).
fn report_link(sink: &events::Sink, iface: &str, ev: &dataplane::LinkEvent) {
    use dataplane::LinkEvent;
    let reason = match ev {
        LinkEvent::Repinned => format!("{iface}: the link pin was removed; pinned again"),
        LinkEvent::Reattached => {
            format!(
                "{iface}: the program was off the interface (recreated or detached); attached again"
            )
        }
        LinkEvent::InterfaceGone => {
            format!("{iface}: the interface is gone; the program is attached again when it returns")
        }
        LinkEvent::RepairFailed(why) => format!("{iface}: repair failed: {why}"),
        LinkEvent::PinDirRecreated => "the pin directory was removed; made again".to_string(),
        LinkEvent::MapsRepinned(n) => format!("{n} map pins were removed; pinned again"),
    };
    match ev {
        LinkEvent::RepairFailed(_) | LinkEvent::InterfaceGone => error!(iface, "{reason}"),
        _ => warn!(iface, "{reason}"),
    }
    let e = events::Event::new("dataplane", "", reason, 0);
    sink.emit(&e);
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
    if new.cluster != current.cluster
        || (current.cluster.is_some() && new.services != current.services)
    {
        // The cluster's tasks hold the services and VIPs they started with;
        // a restart withdraws this node, the peers serve meanwhile.
        return Err(
            "[cluster] changes, and service changes in cluster mode, need a restart".to_string(),
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

/// Keeps CAP_BPF and CAP_NET_ADMIN, the bounding set CAP_BPF alone (see
/// `sys/caps.rs`), and checks every thread.
fn drop_capabilities() -> anyhow::Result<()> {
    let last = caps::last_cap()?;
    let keep = caps::keep_set(last);
    let d = caps::drop_all_but(keep, caps::bound_set(last)).context("dropping capabilities")?;
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
pub fn teardown(cfg: &Config) -> anyhow::Result<()> {
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
