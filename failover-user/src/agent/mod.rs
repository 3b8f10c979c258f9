//! The health agent: one probe task per backend, one decider task that owns
//! every backend's state machine and the state map, and a table task that
//! rebuilds Maglev tables off the switching path.
//!
//! A decision is applied with one syscall (a 4-byte write to
//! `BACKEND_STATE`) straight from the decider; the time from the decision to
//! the end of that write is measured for every change. Events go to the
//! sink and to hooks, which run in their own tasks and never delay a switch.

pub mod health;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use failover_common::{PassiveEvent, STATE_UP};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use self::health::{Machine, Notice, Policy, State, Transition};
use crate::{
    config::{Check, Config, HookEvent, NoBackend, Service},
    dataplane::layout::Layout,
    dataplane::maps::{AgentMaps, PassiveMaps, PassiveRing, StateMap, TableMaps},
    maglev,
    observe::{
        events::{Event, Sink},
        hooks, metrics,
    },
    probe::{self, ProbeResult, Target},
};

/// Identity of a backend across reloads.
pub type BackendKey = (String, String, SocketAddr);

pub use crate::model::{AdminAction, AdminError, word_for, word_name};

/// Latency samples (µs) with percentiles; bounded.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    samples: Vec<f64>,
}

impl Histogram {
    const CAP: usize = 100_000;

    pub fn record(&mut self, v: f64) {
        if self.samples.len() >= Self::CAP {
            self.samples.remove(0);
        }
        self.samples.push(v);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q` quantile (0..=1), nearest rank.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        Some(s[rank - 1])
    }
}

/// What the agent measured, for the log and for tests.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub decision_to_map_us: Histogram,
    pub first_failure_to_switch_ms: Histogram,
    pub map_version: u64,
}

struct ProbeMsg {
    idx: usize,
    result: ProbeResult,
    at: Instant,
}

struct BackendRt {
    svc: usize,
    tier: usize,
    key: BackendKey,
    name: String,
    id: u32,
    weight: u32,
    /// Its identity in Maglev tables (as the config writer uses).
    maglev_key: String,
    machine: Machine,
    policy: Policy,
    /// What the map holds for it now.
    word: u32,
    /// Kept up against its health because it is the last one (keep-last).
    kept_last: bool,
    state_tx: watch::Sender<State>,
    /// Its tier's global index (the passive guard rail's slot).
    tier_slot: u32,
    /// Wakes its probe task at once (to confirm a passive mark-down).
    probe_now: Arc<tokio::sync::Notify>,
    /// A passive mark-down the probes have not settled yet.
    unconfirmed: Option<Unconfirmed>,
}

/// A datapath mark-down waiting for the probes' verdict.
struct Unconfirmed {
    signal: &'static str,
    deadline: Instant,
    /// Consecutive passing probes since the mark.
    oks: u32,
    /// What served before the mark: the failover is
    /// reported (and its hooks run) only once probes confirm the mark.
    before: (Option<usize>, Vec<String>),
}

struct SvcRt {
    cfg: Service,
    first_tier: u32,
    backends: Vec<usize>,
}

/// A held backend the never-dark rule brings up (see [`never_dark`]).
#[derive(Debug)]
struct Override {
    idx: usize,
    tr: Transition,
    /// The policy it overrode (`None`: nothing held it any more).
    overridden: Option<String>,
}

/// Whether backend `b` serves: up (or suspect) by its probes and taking new
/// flows in the map. A backend kept in the map by keep-last is down: it
/// does not serve.
fn serves(b: &BackendRt) -> bool {
    b.word == STATE_UP && b.machine.state().serving()
}

/// Policies never keep a service dark. Hold-down, manual failback and flap
/// damping delay a healthy backend's return only while another backend of
/// the service (`members`: its indexes in `backends`) serves. When none
/// does, the best held backend is brought up at once: the highest-priority
/// tier first, then the one healthy for longest, then the first in the
/// config. One is enough: the others stay under their policy, now that
/// one serves. Backends in an operator state or with an unsettled passive
/// mark are never picked.
fn never_dark(backends: &mut [BackendRt], members: &[usize], now: Instant) -> Option<Override> {
    if members.iter().any(|&i| serves(&backends[i])) {
        return None;
    }
    let idx = members
        .iter()
        .copied()
        .filter(|&i| {
            let b = &backends[i];
            b.unconfirmed.is_none() && b.machine.held(&b.policy)
        })
        .min_by_key(|&i| {
            let b = &backends[i];
            (b.tier, b.machine.healthy_since().unwrap_or(now), i)
        })?;
    let p = backends[idx].policy;
    let (tr, overridden) = backends[idx].machine.override_up(
        now,
        &p,
        "policy override: no backend of the service serves",
    )?;
    Some(Override {
        idx,
        tr,
        overridden,
    })
}

/// The `policy-override` event for `o` (after its map write).
fn override_event(service: &str, b: &BackendRt, o: &Override, map_version: u64) -> Event {
    let held = o.overridden.as_deref().unwrap_or("nothing any more");
    let mut e = Event::new(
        "policy-override",
        service,
        format!(
            "no backend of the service serves: {} is healthy and brought up at once (it was held by {held}); its policy applies again once another backend serves",
            b.name
        ),
        map_version,
    );
    e.backend = Some(b.name.clone());
    e.from = Some(o.tr.from.name().to_string());
    e.to = Some(o.tr.to.name().to_string());
    e.map_word = Some(word_name(b.word));
    e
}

enum Cmd {
    Snapshot(oneshot::Sender<(HashMap<BackendKey, State>, Stats)>),
    Admin {
        service: String,
        backend: String,
        action: AdminAction,
        reply: oneshot::Sender<Result<Change, AdminError>>,
    },
    Backends(oneshot::Sender<Vec<BackendView>>),
}

/// What an operator action changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub service: String,
    pub backend: String,
    pub from: &'static str,
    pub to: &'static str,
    pub map_word: &'static str,
    pub map_version: u64,
}

/// One backend as the agent sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendView {
    pub service: String,
    pub backend: String,
    pub address: SocketAddr,
    pub tier: usize,
    pub state: &'static str,
    pub health: &'static str,
    pub map_word: &'static str,
    pub kept_last: bool,
}

/// A running agent; stop it with [`Agent::stop`].
pub struct Agent {
    stop_tx: watch::Sender<bool>,
    cmd_tx: mpsc::Sender<Cmd>,
    tasks: Vec<JoinHandle<()>>,
    decider: JoinHandle<Stats>,
}

impl Agent {
    /// Starts probing every backend of `cfg` that has a check. `initial`
    /// carries health states over from a previous agent (reload); others
    /// start in their configured state.
    pub fn start(
        cfg: &Config,
        layout: &Layout,
        maps: AgentMaps,
        sink: Arc<Sink>,
        initial: &HashMap<BackendKey, State>,
        metrics: metrics::Shared,
    ) -> anyhow::Result<Self> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel::<ProbeMsg>(4096);
        let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(16);
        let (table_tx, table_rx) = mpsc::unbounded_channel::<TableJob>();
        let (persist_tx, persist_rx) = watch::channel(Vec::new());
        let mut svcs = Vec::new();
        let mut backends = Vec::new();
        let mut tasks = Vec::new();
        for (si, (s, sl)) in cfg.services.iter().zip(&layout.services).enumerate() {
            let mut idxs = Vec::new();
            for (ti, (tier, tl)) in s.tiers.iter().zip(&sl.tiers).enumerate() {
                for (b, bl) in tier.iter().zip(tl) {
                    let addr = SocketAddr::new(b.address, b.port);
                    let key: BackendKey = (s.name.clone(), b.name.clone(), addr);
                    let configured = match b.state {
                        crate::config::InitialState::Up => State::Up,
                        crate::config::InitialState::Down => State::Down,
                        crate::config::InitialState::Draining => State::Draining,
                        crate::config::InitialState::Disabled => State::Disabled,
                    };
                    let start_state = initial.get(&key).copied().unwrap_or(configured);
                    let (state_tx, state_rx) = watch::channel(start_state);
                    let policy = match &s.check {
                        Some(c) => Policy {
                            rise: c.rise,
                            fall: c.fall,
                            failback: s.failback,
                            damping: s.damping,
                        },
                        None => Policy {
                            rise: 1,
                            fall: 1,
                            failback: s.failback,
                            damping: s.damping,
                        },
                    };
                    let idx = backends.len();
                    let probe_now = Arc::new(tokio::sync::Notify::new());
                    if let Some(check) = &s.check {
                        let target = Target {
                            service: s.name.clone(),
                            backend: b.name.clone(),
                            addr: SocketAddr::new(b.address, check.port.unwrap_or(b.port)),
                        };
                        tasks.push(tokio::spawn(probe_loop(
                            idx,
                            check.clone(),
                            target,
                            tx.clone(),
                            state_rx,
                            probe_now.clone(),
                            stop_rx.clone(),
                        )));
                    }
                    backends.push(BackendRt {
                        svc: si,
                        tier: ti,
                        key,
                        name: b.name.clone(),
                        id: bl.id,
                        weight: b.weight,
                        maglev_key: b.key(),
                        machine: Machine::new(start_state),
                        policy,
                        word: STATE_UP,
                        kept_last: false,
                        state_tx,
                        tier_slot: sl.first_tier + ti as u32,
                        probe_now,
                        unconfirmed: None,
                    });
                    idxs.push(idx);
                }
            }
            svcs.push(SvcRt {
                cfg: s.clone(),
                first_tier: sl.first_tier,
                backends: idxs,
            });
        }
        let AgentMaps {
            state,
            tables,
            passive,
            passive_events,
        } = maps;
        if let Ok(mut m) = metrics.lock() {
            let keep: std::collections::HashSet<(String, String)> = backends
                .iter()
                .map(|b| (b.key.0.clone(), b.key.1.clone()))
                .collect();
            m.backends.retain(|k, _| keep.contains(k));
            for b in &backends {
                m.backends
                    .entry((b.key.0.clone(), b.key.1.clone()))
                    .or_default()
                    .health = b.machine.state().name();
            }
        }
        let mut d = Decider {
            svcs,
            backends,
            state_map: state,
            sink,
            stats: Stats::default(),
            table_tx,
            metrics,
            persist_tx,
            passive,
        };
        // Write the starting states (carried over or configured) so the map
        // and the machines agree from the first packet on.
        d.sync_all()
            .context("writing the starting backend states")?;
        tasks.push(tokio::spawn(table_task(table_rx, tables, stop_rx.clone())));
        // Tables over the members that serve now (some may start down).
        for s in 0..d.svcs.len() {
            for t in 0..d.svcs[s].cfg.tiers.len() {
                d.rebuild(s, t);
            }
        }
        d.save();
        tasks.push(tokio::spawn(persist_task(
            cfg.daemon.state_dir.join("states.json"),
            persist_rx,
            stop_rx.clone(),
        )));
        // DSR forwards with the backend's MAC from the kernel's neighbour
        // table, which XDP cannot fill: keep an entry for every DSR backend.
        let dsr: Vec<std::net::IpAddr> = cfg
            .services
            .iter()
            .filter(|s| s.mode == crate::config::Mode::Dsr)
            .flat_map(|s| s.tiers.iter().flatten().map(|b| b.address))
            .collect();
        if !dsr.is_empty() {
            tasks.push(tokio::spawn(neighbour_task(dsr, stop_rx.clone())));
        }
        // The datapath's passive mark-downs, from its ring buffer.
        let (passive_tx, passive_rx) = mpsc::channel::<PassiveEvent>(1024);
        if cfg.services.iter().any(|s| s.passive.is_some()) {
            tasks.push(tokio::spawn(passive_task(
                passive_events,
                passive_tx,
                stop_rx.clone(),
            )));
        }
        let decider = tokio::spawn(d.run(rx, cmd_rx, passive_rx, stop_rx));
        info!(probed = tasks.len() - 1, "health agent started");
        Ok(Self {
            stop_tx,
            cmd_tx,
            tasks,
            decider,
        })
    }

    /// Current states and measurements.
    pub async fn snapshot(&self) -> anyhow::Result<(HashMap<BackendKey, State>, Stats)> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx
            .send(Cmd::Snapshot(tx))
            .await
            .context("the agent has stopped")?;
        rx.await.context("the agent has stopped")
    }

    /// Applies an operator action; the change it made.
    pub async fn admin(
        &self,
        service: &str,
        backend: &str,
        action: AdminAction,
    ) -> Result<Change, AdminError> {
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Admin {
            service: service.to_string(),
            backend: backend.to_string(),
            action,
            reply: tx,
        };
        self.cmd_tx
            .send(cmd)
            .await
            .map_err(|_| AdminError::AgentDown)?;
        rx.await.map_err(|_| AdminError::AgentDown)?
    }

    /// Every backend's state as the agent sees it.
    pub async fn backends(&self) -> anyhow::Result<Vec<BackendView>> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx
            .send(Cmd::Backends(tx))
            .await
            .context("the agent has stopped")?;
        rx.await.context("the agent has stopped")
    }

    /// Stops every task; returns the final states and measurements.
    pub async fn stop(self) -> (HashMap<BackendKey, State>, Stats) {
        let snap = self.snapshot().await.ok();
        let _ = self.stop_tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let stats = self.decider.await.unwrap_or_default();
        match snap {
            Some((states, _)) => (states, stats),
            None => (HashMap::new(), stats),
        }
    }
}

/// Keeps neighbour entries for `addrs` fresh: an empty UDP datagram to the
/// discard port of each, at once and every few seconds, makes the kernel
/// resolve (and keep) its MAC address. `bpf_fib_lookup` then finds it.
async fn neighbour_task(addrs: Vec<std::net::IpAddr>, mut stop: watch::Receiver<bool>) {
    loop {
        for a in &addrs {
            let bind: SocketAddr = if a.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            if let Ok(s) = tokio::net::UdpSocket::bind(bind).await {
                let _ = s.send_to(&[], SocketAddr::new(*a, 9)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A small xorshift generator for jitter (no need for cryptographic quality).
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Self((seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t) | 1)
    }
    /// A factor in [1 - j, 1 + j].
    fn factor(&mut self, j: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let u = (self.0 >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        1.0 + j * (2.0 * u - 1.0)
    }
}

async fn probe_loop(
    idx: usize,
    check: Check,
    target: Target,
    tx: mpsc::Sender<ProbeMsg>,
    state_rx: watch::Receiver<State>,
    probe_now: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut jitter = Jitter::new(idx as u64 + 1);
    // Start at a random point of the first interval so probes spread out.
    let mut wait = check.interval.mul_f64((jitter.factor(0.5) - 0.5).max(0.0));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = probe_now.notified() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = probe::probe(&check.probe, &target, check.timeout) => r,
            _ = stop.changed() => return,
        };
        let ok = result.ok;
        if tx
            .send(ProbeMsg {
                idx,
                result,
                at: Instant::now(),
            })
            .await
            .is_err()
        {
            return;
        }
        let suspect = !ok || *state_rx.borrow() == State::Suspect;
        let base = if suspect {
            check.fast_interval
        } else {
            check.interval
        };
        // Intervals run from start to start (a probe that timed out does
        // not push the next one back by its timeout); a probe longer than
        // the interval is followed at once.
        wait = (started + base.mul_f64(jitter.factor(check.jitter)))
            .saturating_duration_since(Instant::now());
    }
}

/// Reads the datapath's passive mark-down events as they come.
async fn passive_task(
    ring: Option<PassiveRing>,
    tx: mpsc::Sender<PassiveEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(ring) = ring else {
        warn!("no passive event ring buffer: passive mark-downs are not confirmed");
        return;
    };
    // SAFETY: the ring buffer owns its map fd, which stays open and the
    // same for as long as the `AsyncFd` owns the ring.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e.into_parts().1, "cannot poll the passive event ring buffer");
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "polling the passive event ring buffer failed");
                    return;
                }
            },
            _ = stop.changed() => return,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next_event() {
            match item {
                Ok(ev) => {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(len) => warn!(len, "malformed passive event"),
            }
        }
        guard.clear_ready();
    }
}

/// One backend's state as saved in `<state_dir>/states.json`, so that a
/// restarted daemon starts from what the previous one knew.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedState {
    pub service: String,
    pub backend: String,
    pub address: SocketAddr,
    pub state: State,
}

/// The states saved by a previous run (empty if none or unreadable).
pub fn load_states(path: &std::path::Path) -> HashMap<BackendKey, State> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<Vec<SavedState>>(&bytes) {
        Ok(v) => v
            .into_iter()
            .map(|s| ((s.service, s.backend, s.address), s.state))
            .collect(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring unreadable saved states");
            HashMap::new()
        }
    }
}

/// Writes saved states as they change (coalesced), atomically.
async fn persist_task(
    path: std::path::PathBuf,
    mut rx: watch::Receiver<Vec<SavedState>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            c = rx.changed() => if c.is_err() { return },
            _ = stop.changed() => return,
        }
        let snapshot = rx.borrow_and_update().clone();
        let path = path.clone();
        let res = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
            let tmp = path.with_extension("json.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&snapshot)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        })
        .await;
        if let Ok(Err(e)) | Err(e) = res.map_err(anyhow::Error::from) {
            warn!(error = %format!("{e:#}"), "saving backend states failed");
        }
    }
}

struct Decider {
    svcs: Vec<SvcRt>,
    backends: Vec<BackendRt>,
    state_map: StateMap,
    sink: Arc<Sink>,
    stats: Stats,
    table_tx: mpsc::UnboundedSender<TableJob>,
    metrics: metrics::Shared,
    persist_tx: watch::Sender<Vec<SavedState>>,
    passive: PassiveMaps,
}

impl Decider {
    fn save(&self) {
        let v = self
            .backends
            .iter()
            .map(|b| SavedState {
                service: b.key.0.clone(),
                backend: b.key.1.clone(),
                address: b.key.2,
                state: b.machine.state(),
            })
            .collect();
        let _ = self.persist_tx.send(v);
    }

    fn with_metrics(&self, f: impl FnOnce(&mut metrics::AgentMetrics)) {
        if let Ok(mut m) = self.metrics.lock() {
            f(&mut m);
        }
    }

    fn backend_metrics(&self, i: usize, f: impl FnOnce(&mut metrics::BackendMetrics)) {
        let key = (
            self.backends[i].key.0.clone(),
            self.backends[i].key.1.clone(),
        );
        self.with_metrics(|m| f(m.backends.entry(key).or_default()));
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<ProbeMsg>,
        mut cmd_rx: mpsc::Receiver<Cmd>,
        mut passive_rx: mpsc::Receiver<PassiveEvent>,
        mut stop: watch::Receiver<bool>,
    ) -> Stats {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => {
                        let svc = self.backends[m.idx].svc;
                        self.on_probe(m);
                        self.enforce_never_dark(svc);
                    }
                    None => break,
                },
                Some(ev) = passive_rx.recv() => {
                    self.on_passive(ev);
                    for svc in 0..self.svcs.len() {
                        self.enforce_never_dark(svc);
                    }
                }
                _ = tick.tick() => self.passive_deadlines(),
                c = cmd_rx.recv() => match c {
                    Some(Cmd::Snapshot(reply)) => {
                        let states = self.backends.iter().map(|b| (b.key.clone(), b.machine.state())).collect();
                        let _ = reply.send((states, self.stats.clone()));
                    }
                    Some(Cmd::Admin { service, backend, action, reply }) => {
                        let _ = reply.send(self.admin(&service, &backend, action));
                    }
                    Some(Cmd::Backends(reply)) => {
                        let v = self
                            .backends
                            .iter()
                            .map(|b| BackendView {
                                service: b.key.0.clone(),
                                backend: b.name.clone(),
                                address: b.key.2,
                                tier: b.tier,
                                state: b.machine.state().name(),
                                health: b.machine.health().name(),
                                map_word: word_name(b.word),
                                kept_last: b.kept_last,
                            })
                            .collect();
                        let _ = reply.send(v);
                    }
                    None => break,
                },
                _ = stop.changed() => break,
            }
        }
        if let (Some(p50), Some(p99)) = (
            self.stats.decision_to_map_us.quantile(0.5),
            self.stats.decision_to_map_us.quantile(0.99),
        ) {
            info!(
                changes = self.stats.decision_to_map_us.len(),
                p50_us = p50,
                p99_us = p99,
                "decision-to-map latency"
            );
        }
        self.stats
    }

    /// Asks the table task to rebuild tier `ti` of service `svc` over its
    /// members as the map now has them.
    fn rebuild(&self, svc: usize, ti: usize) {
        let s = &self.svcs[svc];
        let members = s
            .backends
            .iter()
            .map(|&i| &self.backends[i])
            .filter(|b| b.tier == ti)
            .map(|b| (b.id, b.maglev_key.clone(), b.weight, b.word == STATE_UP))
            .collect();
        let job = TableJob {
            tier: s.first_tier + ti as u32,
            size: s.cfg.table_size,
            members,
        };
        let _ = self.table_tx.send(job);
    }

    /// The word the map should hold for backend `i`, ignoring keep-last.
    fn desired(&self, i: usize) -> u32 {
        let b = &self.backends[i];
        word_for(b.machine.state(), self.svcs[b.svc].cfg.flows_on_down)
    }

    /// What [`Self::serving`] would say if backend `i` still had `word`
    /// (what served before a write, for the failover report).
    fn serving_with(&mut self, svc: usize, i: usize, word: u32) -> (Option<usize>, Vec<String>) {
        let now = std::mem::replace(&mut self.backends[i].word, word);
        let before = self.serving(svc);
        self.backends[i].word = now;
        before
    }

    /// The first tier with a member taking new flows, and those members.
    fn serving(&self, svc: usize) -> (Option<usize>, Vec<String>) {
        let s = &self.svcs[svc];
        for ti in 0..s.cfg.tiers.len() {
            let up: Vec<String> = s
                .backends
                .iter()
                .map(|&i| &self.backends[i])
                .filter(|b| b.tier == ti && b.word == STATE_UP)
                .map(|b| b.name.clone())
                .collect();
            if !up.is_empty() {
                return (Some(ti), up);
            }
        }
        (None, Vec::new())
    }

    /// Writes one backend's word: the one syscall of a switch. Returns the
    /// decision-to-map time.
    fn write(&mut self, i: usize, word: u32, decided: Instant) -> Option<Duration> {
        let id = self.backends[i].id;
        match self.state_map.set(id, word) {
            Ok(()) => {
                let dt = decided.elapsed();
                self.backends[i].word = word;
                self.stats.map_version += 1;
                self.stats.decision_to_map_us.record(dt.as_secs_f64() * 1e6);
                let version = self.stats.map_version;
                self.with_metrics(|m| {
                    m.decision_to_map.observe(dt.as_secs_f64());
                    m.map_version = version;
                });
                Some(dt)
            }
            Err(e) => {
                warn!(error = %e, backend = %self.backends[i].name, "writing BACKEND_STATE failed; the dataplane keeps the old state");
                None
            }
        }
    }

    /// An operator action: the machine changes state, the map follows (one
    /// write), events and failover reports as for probe-driven changes.
    fn admin(
        &mut self,
        service: &str,
        backend: &str,
        action: AdminAction,
    ) -> Result<Change, AdminError> {
        let i = self
            .backends
            .iter()
            .position(|b| b.key.0 == service && b.name == backend)
            .ok_or_else(|| AdminError::NoBackend {
                service: service.to_string(),
                backend: backend.to_string(),
            })?;
        let now = Instant::now();
        let policy = self.backends[i].policy;
        let current = self.backends[i].machine.state();
        let tr = match action {
            AdminAction::Drain => self.backends[i]
                .machine
                .set_admin(now, Some(State::Draining)),
            AdminAction::Disable => self.backends[i]
                .machine
                .set_admin(now, Some(State::Disabled)),
            AdminAction::Undrain if current != State::Draining => {
                return Err(AdminError::Conflict(format!(
                    "{backend} is {}, not draining",
                    current.name()
                )));
            }
            AdminAction::Enable if current != State::Disabled => {
                return Err(AdminError::Conflict(format!(
                    "{backend} is {}, not disabled",
                    current.name()
                )));
            }
            AdminAction::Undrain | AdminAction::Enable => {
                self.backends[i].machine.set_admin(now, None)
            }
            AdminAction::Release => self.backends[i]
                .machine
                .release(now, &policy)
                .map_err(AdminError::Conflict)?,
        };
        let svc = self.backends[i].svc;
        let (from, to) = match &tr {
            Some(t) => (t.from.name(), t.to.name()),
            None => (current.name(), current.name()),
        };
        if let Some(tr) = tr {
            let old_word = self.backends[i].word;
            let want = self.desired(i);
            let mut dt = None;
            if want != old_word {
                self.backends[i].kept_last = false;
                dt = self.write(i, want, now);
            }
            let _ = self.backends[i].state_tx.send(tr.to);
            let before = self.serving_with(svc, i, old_word);
            let mut e = Event::new("state", service, tr.reason.clone(), self.stats.map_version);
            e.backend = Some(backend.to_string());
            e.from = Some(from.to_string());
            e.to = Some(to.to_string());
            e.map_word = Some(word_name(self.backends[i].word));
            e.decision_to_map_us = dt.map(|d| d.as_secs_f64() * 1e6);
            self.emit(svc, e, HookEvent::State);
            self.backend_metrics(i, |b| {
                b.state_changes += 1;
                b.health = to;
            });
            if dt.is_some() {
                self.rebuild(svc, self.backends[i].tier);
            }
            if self.backends[i].word == STATE_UP {
                self.keep_last(svc, now, Some(i));
            }
            self.report_failover(svc, before, &tr.reason);
        }
        self.enforce_never_dark(svc);
        Ok(Change {
            service: service.to_string(),
            backend: backend.to_string(),
            from,
            to,
            map_word: word_name(self.backends[i].word),
            map_version: self.stats.map_version,
        })
    }

    fn sync_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.backends.len() {
            let w = self.desired(i);
            let id = self.backends[i].id;
            self.state_map
                .set(id, w)
                .with_context(|| format!("writing BACKEND_STATE[{id}]"))?;
            self.backends[i].word = w;
        }
        // Keep-last on start: if a service would start with nothing up.
        for s in 0..self.svcs.len() {
            self.keep_last(s, Instant::now(), None);
        }
        Ok(())
    }

    fn on_probe(&mut self, m: ProbeMsg) {
        let i = m.idx;
        if self.backends[i].unconfirmed.is_some() {
            self.confirm(i, &m);
            return;
        }
        let detail = format!(
            "{}: {} in {:.1} ms",
            kind_name(&self.svcs[self.backends[i].svc].cfg),
            m.result.detail,
            m.result.latency.as_secs_f64() * 1e3
        );
        let policy = self.backends[i].policy;
        let (tr, notice) = self.backends[i]
            .machine
            .observe(m.at, m.result.ok, &detail, &policy);
        let (ok, lat) = (m.result.ok, m.result.latency.as_secs_f64());
        let health = self.backends[i].machine.state().name();
        let changed = tr.is_some();
        self.backend_metrics(i, |b| {
            if ok {
                b.probes_ok += 1;
            } else {
                b.probes_failed += 1;
            }
            b.probe_latency.observe(lat);
            b.health = health;
            if changed {
                b.state_changes += 1;
            }
        });
        let svc = self.backends[i].svc;
        if let Some(Notice::HeldDown(why)) = notice {
            let mut e = Event::new(
                "held-down",
                &self.svcs[svc].cfg.name,
                why,
                self.stats.map_version,
            );
            e.backend = Some(self.backends[i].name.clone());
            self.emit(svc, e, HookEvent::State);
        }
        let Some(tr) = tr else {
            debug!(backend = %self.backends[i].name, ok = m.result.ok, detail = %m.result.detail, "probe");
            return;
        };
        self.apply_transition(i, tr, None);
    }

    /// A state change of backend `i`: the map write first (one syscall),
    /// then events, keep-last, tables and the failover report.
    fn apply_transition(&mut self, i: usize, tr: Transition, signal: Option<&'static str>) {
        self.apply_transition_from(i, tr, signal, None);
    }

    /// As [`Self::apply_transition`]; `before`: what served before, for the
    /// failover report, when not what served just before this write.
    fn apply_transition_from(
        &mut self,
        i: usize,
        tr: Transition,
        signal: Option<&'static str>,
        before: Option<(Option<usize>, Vec<String>)>,
    ) {
        let svc = self.backends[i].svc;
        let decided = Instant::now();
        let old_word = self.backends[i].word;
        let want = self.desired(i);
        let mut dt = None;
        let mut reason = tr.reason.clone();
        if want != old_word {
            if want != STATE_UP && self.keeps_last(svc, i) {
                self.backends[i].kept_last = true;
                reason = format!(
                    "{reason}; kept in service: it is the last healthy backend (on_no_backend = keep-last)"
                );
            } else {
                self.backends[i].kept_last = false;
                dt = self.write(i, want, decided);
            }
        }
        let _ = self.backends[i].state_tx.send(tr.to);
        // What served before the write, for the failover report.
        let before = before.unwrap_or_else(|| self.serving_with(svc, i, old_word));
        let mut e = Event::new(
            "state",
            &self.svcs[svc].cfg.name,
            reason,
            self.stats.map_version,
        );
        e.backend = Some(self.backends[i].name.clone());
        e.from = Some(tr.from.name().to_string());
        e.to = Some(tr.to.name().to_string());
        e.map_word = Some(word_name(self.backends[i].word));
        e.signal = signal;
        e.decision_to_map_us = dt.map(|d| d.as_secs_f64() * 1e6);
        if let (Some(first), Some(_)) = (tr.first_failure_at, dt) {
            let ms = first.elapsed().as_secs_f64() * 1e3;
            self.stats.first_failure_to_switch_ms.record(ms);
            e.first_failure_to_switch_ms = Some(ms);
        }
        self.emit(svc, e, HookEvent::State);
        if self.backends[i].kept_last {
            let mut a = Event::new(
                "keep-last",
                &self.svcs[svc].cfg.name,
                "no other healthy backend: keeping the last one in service".into(),
                self.stats.map_version,
            );
            a.backend = Some(self.backends[i].name.clone());
            self.emit(svc, a, HookEvent::Failover);
        }
        // A backend that came up may let a kept one go down now.
        if self.backends[i].word == STATE_UP {
            self.keep_last(svc, decided, Some(i));
        }
        if dt.is_some() {
            self.rebuild(svc, self.backends[i].tier);
        }
        self.report_failover(svc, before, &tr.reason);
    }

    /// Applies the never-dark rule ([`never_dark`]) to service `svc`: the
    /// state change as any other, then a `policy-override` event.
    fn enforce_never_dark(&mut self, svc: usize) {
        let members = std::mem::take(&mut self.svcs[svc].backends);
        let o = never_dark(&mut self.backends, &members, Instant::now());
        self.svcs[svc].backends = members;
        let Some(o) = o else {
            return;
        };
        let i = o.idx;
        let name = self.svcs[svc].cfg.name.clone();
        self.backend_metrics(i, |b| {
            b.state_changes += 1;
            b.health = State::Up.name();
        });
        self.with_metrics(|m| *m.policy_overrides.entry(name.clone()).or_default() += 1);
        self.apply_transition(i, o.tr.clone(), None);
        let e = override_event(&name, &self.backends[i], &o, self.stats.map_version);
        self.emit(svc, e, HookEvent::Failover);
    }

    /// The datapath marked a backend down (its word is already written).
    fn on_passive(&mut self, ev: PassiveEvent) {
        let signal = crate::config::PASSIVE_SIGNALS
            .get(ev.signal as usize)
            .copied()
            .unwrap_or("unknown");
        let Some(i) = self.backends.iter().position(|b| b.id == ev.backend_id) else {
            warn!(
                backend_id = ev.backend_id,
                "passive event about an unknown backend slot"
            );
            return;
        };
        let svc = self.backends[i].svc;
        let Some(p) = self.svcs[svc].cfg.passive else {
            self.settle(i, true);
            return;
        };
        self.backend_metrics(i, |b| b.passive_marked += 1);
        let name = self.svcs[svc].cfg.name.clone();
        let reason = format!(
            "passive detection in the datapath: {signal} x{} (unconfirmed; probes decide within {:?})",
            ev.count, p.confirm_within
        );
        let mut e = Event::new(
            "passive-down",
            &name,
            reason.clone(),
            self.stats.map_version,
        );
        e.backend = Some(self.backends[i].name.clone());
        e.signal = Some(signal);
        self.emit(svc, e, HookEvent::State);
        if self.backends[i].unconfirmed.is_some() {
            // A second CPU marked it too: give its place back.
            self.settle(i, false);
            return;
        }
        // The map already holds the down word; the agent's view follows.
        let old_word = self.backends[i].word;
        self.backends[i].word = self.desired_down(i);
        if self.keeps_last(svc, i) {
            // Keep-last: never leave the service without a backend.
            let decided = Instant::now();
            self.write(i, STATE_UP, decided);
            self.settle(i, true);
            let mut e = Event::new(
                "passive-restored",
                &name,
                "kept in service: it is the last healthy backend (on_no_backend = keep-last)"
                    .into(),
                self.stats.map_version,
            );
            e.backend = Some(self.backends[i].name.clone());
            e.signal = Some(signal);
            self.emit(svc, e, HookEvent::State);
            return;
        }
        let now = Instant::now();
        let Some(tr) = self.backends[i].machine.passive_down(now, reason) else {
            // Not up in the agent's view (an operator's state, or down): the
            // agent's word stands.
            let w = self.desired(i);
            self.backends[i].word = old_word;
            self.write(i, w, now);
            self.settle(i, true);
            return;
        };
        // The word is written: record the change as the datapath made it.
        let before = self.serving_with(svc, i, old_word);
        self.backends[i].unconfirmed = Some(Unconfirmed {
            signal,
            deadline: now + p.confirm_within,
            oks: 0,
            before: before.clone(),
        });
        let _ = self.backends[i].state_tx.send(tr.to);
        let mut e = Event::new("state", &name, tr.reason.clone(), self.stats.map_version);
        e.backend = Some(self.backends[i].name.clone());
        e.from = Some(tr.from.name().to_string());
        e.to = Some(tr.to.name().to_string());
        e.map_word = Some(word_name(self.backends[i].word));
        e.signal = Some(signal);
        self.emit(svc, e, HookEvent::State);
        self.rebuild(svc, self.backends[i].tier);
        // No failover report yet: an unconfirmed mark may be a false alarm
        // (see `confirm`).
        // Probe it now rather than at its next interval.
        self.backends[i].probe_now.notify_one();
    }

    /// The down word of backend `i`'s service (its flow policy).
    fn desired_down(&self, i: usize) -> u32 {
        word_for(
            State::Down,
            self.svcs[self.backends[i].svc].cfg.flows_on_down,
        )
    }

    /// A probe result for a backend with an unsettled passive mark: one
    /// failure confirms it; `rise` passes in a row restore it.
    fn confirm(&mut self, i: usize, m: &ProbeMsg) {
        let svc = self.backends[i].svc;
        let name = self.svcs[svc].cfg.name.clone();
        let rise = self.backends[i].policy.rise;
        let Some(u) = self.backends[i].unconfirmed.as_mut() else {
            return;
        };
        let signal = u.signal;
        if !m.result.ok {
            let Some(u) = self.backends[i].unconfirmed.take() else {
                return;
            };
            self.backends[i].machine.passive_confirmed();
            self.settle(i, true);
            self.backend_metrics(i, |b| b.passive_confirmed += 1);
            let mut e = Event::new(
                "passive-confirmed",
                &name,
                format!("probe failed: {}", m.result.detail),
                self.stats.map_version,
            );
            e.backend = Some(self.backends[i].name.clone());
            e.signal = Some(signal);
            self.emit(svc, e, HookEvent::State);
            // Now a real failure: the failover it caused is reported.
            let cause = format!(
                "passive {signal} mark confirmed by a probe: {}",
                m.result.detail
            );
            self.report_failover(svc, u.before, &cause);
            // From here on an ordinary down backend: its failback policy.
            let policy = self.backends[i].policy;
            let _ = self.backends[i]
                .machine
                .observe(m.at, false, &m.result.detail, &policy);
            return;
        }
        u.oks += 1;
        if u.oks >= rise {
            let why = format!(
                "passive mark-down not confirmed: {} probes passed ({})",
                u.oks, m.result.detail
            );
            self.restore(i, why);
        } else {
            // The verdict needs `rise` passes: the next one at once.
            self.backends[i].probe_now.notify_one();
        }
    }

    /// Undoes an unsettled passive mark (a false alarm).
    fn restore(&mut self, i: usize, why: String) {
        let Some(u) = self.backends[i].unconfirmed.take() else {
            return;
        };
        self.settle(i, true);
        self.backend_metrics(i, |b| b.passive_restored += 1);
        let svc = self.backends[i].svc;
        let mut e = Event::new(
            "passive-restored",
            &self.svcs[svc].cfg.name,
            why.clone(),
            self.stats.map_version,
        );
        e.backend = Some(self.backends[i].name.clone());
        e.signal = Some(u.signal);
        self.emit(svc, e, HookEvent::State);
        let rise = self.backends[i].policy.rise;
        if let Some(tr) = self.backends[i]
            .machine
            .passive_restore(Instant::now(), rise, why)
        {
            // Compared with what served before the mark: a false alarm
            // undone is no failover (no event, no hooks).
            self.apply_transition_from(i, tr, Some(u.signal), Some(u.before));
        }
    }

    /// Marks whose probes gave no verdict in time are restored: no
    /// evidence beyond the datapath's is not enough to keep one down.
    fn passive_deadlines(&mut self) {
        let now = Instant::now();
        for i in 0..self.backends.len() {
            if let Some(u) = &self.backends[i].unconfirmed
                && now >= u.deadline
            {
                self.restore(i, "passive mark-down not confirmed in time".to_string());
            }
        }
    }

    /// Gives a datapath mark's place under the guard rail back (`released`
    /// + 1) and, with `clear`, lets the datapath mark the backend again.
    fn settle(&mut self, i: usize, clear: bool) {
        let (id, tier) = (self.backends[i].id, self.backends[i].tier_slot);
        let result = self.passive.release_guard(tier).and_then(|()| {
            if clear {
                self.passive.clear_health(id)
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            warn!(error = %format!("{e:#}"), backend = %self.backends[i].name, "settling a passive mark failed");
        }
    }

    /// Whether marking `i` not-up would leave service `svc` with no backend
    /// taking new flows while its rule is keep-last.
    fn keeps_last(&self, svc: usize, i: usize) -> bool {
        self.svcs[svc].cfg.on_no_backend == NoBackend::KeepLast
            && !self.svcs[svc]
                .backends
                .iter()
                .any(|&j| j != i && self.backends[j].word == STATE_UP)
    }

    /// Applies pending downs of kept-last backends once another is up.
    fn keep_last(&mut self, svc: usize, decided: Instant, except: Option<usize>) {
        let idxs = self.svcs[svc].backends.clone();
        for i in idxs {
            if Some(i) == except || !self.backends[i].kept_last {
                continue;
            }
            let want = self.desired(i);
            if want != STATE_UP && !self.keeps_last(svc, i) {
                self.backends[i].kept_last = false;
                let before = self.serving(svc);
                if self.write(i, want, decided).is_some() {
                    let mut e = Event::new(
                        "state",
                        &self.svcs[svc].cfg.name,
                        "kept-last backend released: another one is up".into(),
                        self.stats.map_version,
                    );
                    e.backend = Some(self.backends[i].name.clone());
                    e.to = Some(self.backends[i].machine.state().name().to_string());
                    e.map_word = Some(word_name(want));
                    self.emit(svc, e, HookEvent::State);
                    self.rebuild(svc, self.backends[i].tier);
                    self.report_failover(svc, before, "kept-last backend released");
                }
            }
        }
    }

    fn report_failover(&mut self, svc: usize, before: (Option<usize>, Vec<String>), cause: &str) {
        let after = self.serving(svc);
        if after.0 == before.0 {
            return;
        }
        let name = self.svcs[svc].cfg.name.clone();
        self.with_metrics(|m| *m.failovers.entry(name.clone()).or_default() += 1);
        let kind = if after.0.is_none() {
            "no-healthy-backend"
        } else {
            "failover"
        };
        let reason = match (before.0, after.0) {
            (_, None) => format!(
                "no backend takes new flows ({cause}); on_no_backend = {:?}",
                self.svcs[svc].cfg.on_no_backend
            ),
            (Some(a), Some(b)) if b > a => {
                format!("tier {a} has no healthy backend ({cause}): tier {b} takes over")
            }
            (Some(a), Some(b)) => {
                format!("tier {b} is healthy again ({cause}): it takes over from tier {a}")
            }
            (None, Some(b)) => format!("tier {b} is healthy again ({cause})"),
        };
        let mut e = Event::new(kind, &name, reason, self.stats.map_version);
        e.from_tier = Some(before.0);
        e.to_tier = Some(after.0);
        e.serving = Some(after.1);
        self.emit(svc, e, HookEvent::Failover);
    }

    fn emit(&self, svc: usize, e: Event, class: HookEvent) {
        if e.kind == "state" {
            self.save();
        }
        let json = self.sink.emit(&e);
        for h in &self.svcs[svc].cfg.hooks {
            if h.events.contains(&class) {
                // The hook runs (and logs its outcome) on its own; a watcher
                // only counts the outcome.
                let run = hooks::spawn(&h.hook, json.clone(), e.env());
                let m = self.metrics.clone();
                drop(tokio::spawn(async move {
                    if let Ok(o) = run.await
                        && let Ok(mut m) = m.lock()
                    {
                        if o.ok {
                            m.hooks_ok += 1;
                        } else {
                            m.hooks_failed += 1;
                        }
                    }
                }));
            }
        }
    }
}

fn kind_name(s: &Service) -> &'static str {
    match s.check.as_ref().map(|c| &c.probe) {
        Some(probe::ProbeSpec::Tcp) => "tcp",
        Some(probe::ProbeSpec::Http { .. }) => "http",
        Some(probe::ProbeSpec::Udp { .. }) => "udp",
        Some(probe::ProbeSpec::Exec { .. }) => "exec",
        None => "none",
    }
}

/// A table rebuild request: one tier, its members and which take new flows.
struct TableJob {
    tier: u32,
    size: u32,
    /// (backend id, Maglev key, weight, takes new flows)
    members: Vec<(u32, String, u32, bool)>,
}

/// Rebuilds tiers' Maglev tables over the members that take new flows (all
/// of them if none does), off the switching path, coalescing bursts (the
/// latest job per tier wins); each table is written into the inactive half
/// and swapped in with one write.
async fn table_task(
    mut rx: mpsc::UnboundedReceiver<TableJob>,
    tables: TableMaps,
    mut stop: watch::Receiver<bool>,
) {
    let maps = Arc::new(std::sync::Mutex::new(tables));
    loop {
        let first = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => return },
            _ = stop.changed() => return,
        };
        // Coalesce a burst of changes: keep the newest job per tier.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut pending: Vec<TableJob> = vec![first];
        while let Ok(j) = rx.try_recv() {
            pending.retain(|p| p.tier != j.tier);
            pending.push(j);
        }
        for job in pending {
            let maps = maps.clone();
            let tier = job.tier;
            let res = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let entries = build_entries(&job.members, job.size)?;
                let ids: Vec<u32> = job.members.iter().map(|m| m.0).collect();
                let mut guard = maps
                    .lock()
                    .map_err(|_| anyhow::anyhow!("table maps lock poisoned"))?;
                guard.write(job.tier, job.size, &ids, &entries)
            })
            .await;
            match res {
                Ok(Ok(())) => debug!(tier, "table rebuilt"),
                Ok(Err(e)) => {
                    warn!(tier, error = %format!("{e:#}"), "table rebuild failed; the old table stays")
                }
                Err(e) => warn!(tier, error = %e, "table rebuild task failed"),
            }
        }
    }
}

/// Maglev entries (indexes into `members`) over the members that take new
/// flows, or over all of them when none does.
fn build_entries(members: &[(u32, String, u32, bool)], size: u32) -> anyhow::Result<Vec<u16>> {
    let chosen: Vec<usize> = (0..members.len()).filter(|&k| members[k].3).collect();
    let chosen = if chosen.is_empty() {
        (0..members.len()).collect()
    } else {
        chosen
    };
    let list: Vec<maglev::Member> = chosen
        .iter()
        .map(|&k| maglev::Member {
            key: members[k].1.clone(),
            weight: members[k].2,
        })
        .collect();
    let table = maglev::build(&list, size).context("building a Maglev table")?;
    Ok(table
        .into_iter()
        .map(|e| chosen[usize::from(e)] as u16)
        .collect())
}

#[cfg(test)]
mod tests;
