//! The health agent: one probe task per backend, one decider task that owns
//! every backend's state machine and the state map, and a table task that
//! rebuilds Maglev tables off the switching path.
//!
//! A decision is applied with one syscall (a 4-byte write to
//! `BACKEND_STATE`) straight from the decider; the time from the decision to
//! the end of that write is measured for every change. Events go to the
//! sink and to hooks, which run in their own tasks and never delay a switch.

mod decided;
mod decider;
pub mod health;
mod promotion;
mod tasks;

pub use self::{
    decided::DecidedState,
    promotion::{PromotionReport, PromotionView, SavedPromotion, active_at_start, load_promotions},
    tasks::{SavedState, load_states},
};

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

use self::{
    decider::*,
    health::{Machine, Notice, Policy, State, Transition},
    tasks::*,
};
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
    /// With `[service.promotion]`: active, standby or fenced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// With roles: its state comes only from the check its role wants
    /// now (see `Decider::role_settled`). A cluster observation leaves it
    /// out until then.
    #[serde(skip)]
    pub role_settled: bool,
}

/// A hook's outcome: a `hook` event (events file and audit log) and
/// `failover_hook_runs_total{hook,result}`. Never runs a hook itself.
fn report_hook(
    sink: &Sink,
    metrics: &metrics::Shared,
    service: &str,
    o: &hooks::HookOutcome,
    events: u64,
) {
    let result = if o.ok { "ok" } else { "failed" };
    if let Ok(mut m) = metrics.lock() {
        *m.hook_runs.entry((o.hook.clone(), result)).or_default() += 1;
    }
    let mut e = Event::new("hook", service, o.detail.clone(), 0);
    e.hook = Some(o.hook.clone());
    e.result = Some(result);
    e.elapsed_ms = Some(o.elapsed.as_secs_f64() * 1e3);
    e.coalesced = Some(events);
    sink.emit(&e);
}

/// A running agent; stop it with [`Agent::stop`].
pub struct Agent {
    first_round: watch::Receiver<bool>,
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
        let (promo_tx, promo_rx) = mpsc::unbounded_channel();
        let saved_promotions = if cfg.services.iter().any(|s| s.promotion.is_some()) {
            promotion::load_promotions(&cfg.daemon.state_dir)?
        } else {
            Default::default()
        };
        let mut svcs = Vec::new();
        let mut backends = Vec::new();
        let mut unprobed = std::collections::HashSet::new();
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
                    // Roles: the active (first the tier-0 backend) gets the
                    // active check; the decider corrects this at once from
                    // the saved state.
                    let (active_tx, active_rx) = watch::channel(ti == 0);
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
                        unprobed.insert(idx);
                        let target = Target {
                            service: s.name.clone(),
                            backend: b.name.clone(),
                            addr: SocketAddr::new(b.address, check.port.unwrap_or(b.port)),
                        };
                        let standby = s
                            .promotion
                            .as_ref()
                            .map(|p| (p.standby_check.clone(), active_rx));
                        tasks.push(tokio::spawn(probe_loop(
                            idx,
                            check.clone(),
                            standby,
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
                        active_tx,
                        standby_passes: 0,
                        role_results: 0,
                    });
                    idxs.push(idx);
                }
            }
            let queues = s
                .hooks
                .iter()
                .map(|h| {
                    let (sink, metrics, service) = (sink.clone(), metrics.clone(), s.name.clone());
                    hooks::HookQueue::start(
                        h.hook.clone(),
                        move |o, events| report_hook(&sink, &metrics, &service, &o, events),
                        stop_rx.clone(),
                    )
                })
                .collect();
            let promo = s.promotion.as_ref().map(|p| {
                let names: Vec<String> = idxs
                    .iter()
                    .map(|&i: &usize| backends[i].name.clone())
                    .collect();
                promotion::start_state(p, saved_promotions.get(&s.name), &idxs, &names)
            });
            svcs.push(SvcRt {
                cfg: s.clone(),
                first_tier: sl.first_tier,
                backends: idxs,
                hooks: queues,
                promo,
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
        let (round_tx, round_rx) = watch::channel(unprobed.is_empty());
        let mut d = Decider {
            svcs,
            backends,
            unprobed,
            round_tx,
            state_map: state,
            sink,
            stats: Stats::default(),
            table_tx,
            metrics,
            persist_tx,
            passive,
            promo_tx,
            stop_rx: stop_rx.clone(),
            state_dir: cfg.daemon.state_dir.clone(),
            cause: None,
            decided_mode: cfg.cluster.as_ref().is_some_and(|c| c.etcd.is_some()),
            applying: false,
            switches: HashMap::new(),
        };
        for svc in 0..d.svcs.len() {
            d.set_probe_roles(svc);
            d.report_start_phase(svc);
        }
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
        d.save_promotions();
        let decider = tokio::spawn(d.run(rx, cmd_rx, passive_rx, promo_rx, stop_rx));
        info!(probed = tasks.len() - 1, "health agent started");
        Ok(Self {
            stop_tx,
            cmd_tx,
            tasks,
            decider,
            first_round: round_rx,
        })
    }

    /// Waits until every probed backend has had its first probe result (the
    /// first round: the states are known, not just carried over).
    /// (The future holds no borrow of the agent.)
    pub fn first_round(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.first_round.clone();
        async move {
            let _ = rx.wait_for(|done| *done).await;
        }
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

    /// See [`AgentHandle::admin`].
    pub async fn admin(
        &self,
        service: &str,
        backend: &str,
        action: AdminAction,
    ) -> Result<Change, AdminError> {
        self.handle().admin(service, backend, action).await
    }

    /// A handle for the long calls (a switchover, a drill): it holds no
    /// borrow of the agent, so a caller need not keep the agent's lock
    /// while it waits.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            cmd_tx: self.cmd_tx.clone(),
        }
    }

    /// Every backend's state as the agent sees it.
    pub async fn backends(&self) -> anyhow::Result<Vec<BackendView>> {
        self.handle().backends().await
    }

    /// See [`AgentHandle::switchover`].
    pub async fn switchover(
        &self,
        service: &str,
        to: &str,
        cause: crate::model::Cause,
    ) -> Result<PromotionReport, AdminError> {
        self.handle().switchover(service, to, cause).await
    }

    /// See [`AgentHandle::promotions`].
    pub async fn promotions(&self) -> anyhow::Result<Vec<PromotionView>> {
        self.handle().promotions().await
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

/// The agent's requests without the agent: see [`Agent::handle`]. Fails
/// with `AgentDown` once the agent has stopped.
#[derive(Clone)]
pub struct AgentHandle {
    cmd_tx: mpsc::Sender<Cmd>,
}

impl AgentHandle {
    /// Sends the command `make` builds around a reply channel and waits
    /// for the reply; `Err(AgentDown)` if the agent has stopped.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, AdminError> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx
            .send(make(tx))
            .await
            .map_err(|_| AdminError::AgentDown)?;
        rx.await.map_err(|_| AdminError::AgentDown)
    }

    /// Applies an operator action; the change it made.
    pub async fn admin(
        &self,
        service: &str,
        backend: &str,
        action: AdminAction,
    ) -> Result<Change, AdminError> {
        self.ask(|reply| Cmd::Admin {
            service: service.to_string(),
            backend: backend.to_string(),
            action,
            reply,
        })
        .await?
    }

    /// Every backend's state as the agent sees it.
    pub async fn backends(&self) -> anyhow::Result<Vec<BackendView>> {
        Ok(self.ask(Cmd::Backends).await?)
    }

    /// A planned switchover of a service with roles to `to` (fence, promote,
    /// wait until ready, switch); answers when it is done or failed.
    pub async fn switchover(
        &self,
        service: &str,
        to: &str,
        cause: crate::model::Cause,
    ) -> Result<PromotionReport, AdminError> {
        self.ask(|reply| Cmd::Switchover {
            service: service.to_string(),
            to: to.to_string(),
            cause,
            reply,
        })
        .await?
    }

    /// The roles and orchestration state of every service with roles.
    pub async fn promotions(&self) -> anyhow::Result<Vec<PromotionView>> {
        Ok(self.ask(Cmd::Promotions).await?)
    }
}

#[cfg(test)]
mod tests;
