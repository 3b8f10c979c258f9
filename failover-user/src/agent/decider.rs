//! The decider: the one task that owns every backend's health machine and
//! the state map, turns probe results, passive marks and operator actions
//! into state words, and reports each change (events, hooks, metrics).

use super::*;

pub(super) struct ProbeMsg {
    pub(super) idx: usize,
    pub(super) result: ProbeResult,
    pub(super) at: Instant,
    /// With roles: the probe ran the active check (else the standby
    /// check). A result of the other check than the backend's role now
    /// wants (one in flight across a role change) is not counted.
    pub(super) active_check: bool,
}

pub(super) struct BackendRt {
    pub(super) svc: usize,
    pub(super) tier: usize,
    pub(super) key: BackendKey,
    pub(super) name: String,
    pub(super) id: u32,
    pub(super) weight: u32,
    /// Its identity in Maglev tables (as the config writer uses).
    pub(super) maglev_key: String,
    pub(super) machine: Machine,
    pub(super) policy: Policy,
    /// What the map holds for it now.
    pub(super) word: u32,
    /// Kept up against its health because it is the last one (keep-last).
    pub(super) kept_last: bool,
    pub(super) state_tx: watch::Sender<State>,
    /// Its tier's global index (the passive guard rail's slot).
    pub(super) tier_slot: u32,
    /// Wakes its probe task at once (to confirm a passive mark-down).
    pub(super) probe_now: Arc<tokio::sync::Notify>,
    /// A passive mark-down the probes have not settled yet.
    pub(super) unconfirmed: Option<Unconfirmed>,
    /// Whether its probes use the active check (services with roles: the
    /// active and a standby being promoted); the others get the standby
    /// check.
    pub(super) active_tx: watch::Sender<bool>,
    /// With roles, while fenced: standby-check passes in a row since the
    /// fence (a planned handover is lifted after `rise` of them; a
    /// release needs the last one to have passed).
    pub(super) standby_passes: u32,
    /// With roles: probe results made with the check its current role
    /// wants, since the role last changed (a cluster observation of it
    /// waits until its machine reflects only those).
    pub(super) role_results: u32,
}

/// A datapath mark-down waiting for the probes' verdict.
pub(super) struct Unconfirmed {
    pub(super) signal: &'static str,
    pub(super) deadline: Instant,
    /// Consecutive passing probes since the mark.
    pub(super) oks: u32,
    /// What served before the mark: the failover is
    /// reported (and its hooks run) only once probes confirm the mark.
    pub(super) before: (Option<usize>, Vec<String>),
}

pub(super) struct SvcRt {
    pub(super) cfg: Service,
    pub(super) first_tier: u32,
    pub(super) backends: Vec<usize>,
    /// One queue per configured hook (same order as `cfg.hooks`).
    pub(super) hooks: Vec<hooks::HookQueue>,
    /// Roles and the orchestration (`[service.promotion]`).
    pub(super) promo: Option<super::promotion::PromoRt>,
}

/// A held backend the never-dark rule brings up (see [`never_dark`]).
#[derive(Debug)]
pub(super) struct Override {
    pub(super) idx: usize,
    pub(super) tr: Transition,
    /// The policy it overrode (`None`: nothing held it any more).
    pub(super) overridden: Option<String>,
}

/// Whether backend `b` serves: up (or suspect) by its probes and taking new
/// flows in the map. A backend kept in the map by keep-last is down: it
/// does not serve.
pub(super) fn serves(b: &BackendRt) -> bool {
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
pub(super) fn never_dark(
    backends: &mut [BackendRt],
    members: &[usize],
    now: Instant,
) -> Option<Override> {
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
pub(super) fn override_event(
    service: &str,
    b: &BackendRt,
    o: &Override,
    map_version: u64,
) -> Event {
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

pub(super) enum Cmd {
    Snapshot(oneshot::Sender<(HashMap<BackendKey, State>, Stats)>),
    Admin {
        service: String,
        backend: String,
        action: AdminAction,
        reply: oneshot::Sender<Result<Change, AdminError>>,
    },
    Backends(oneshot::Sender<Vec<BackendView>>),
    Switchover {
        service: String,
        to: String,
        cause: crate::model::Cause,
        reply: oneshot::Sender<Result<super::promotion::PromotionReport, AdminError>>,
    },
    Promotions(oneshot::Sender<Vec<super::promotion::PromotionView>>),
    /// Cluster mode: the switchovers asked of this node (service -> to).
    PendingSwitches(oneshot::Sender<std::collections::BTreeMap<String, String>>),
    /// A cluster decision (see `decided.rs`).
    Decided {
        number: u64,
        why: String,
        states: Vec<super::decided::DecidedState>,
        /// Services with roles: the active as decided.
        active: Option<std::collections::BTreeMap<String, String>>,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

pub(super) struct Decider {
    pub(super) svcs: Vec<SvcRt>,
    pub(super) backends: Vec<BackendRt>,
    pub(super) state_map: StateMap,
    pub(super) sink: Arc<Sink>,
    pub(super) stats: Stats,
    pub(super) table_tx: mpsc::UnboundedSender<TableJob>,
    pub(super) metrics: metrics::Shared,
    pub(super) persist_tx: watch::Sender<Vec<SavedState>>,
    pub(super) passive: PassiveMaps,
    /// Probed backends without a result yet; `round_tx` turns true when
    /// none is left.
    pub(super) unprobed: std::collections::HashSet<usize>,
    pub(super) round_tx: watch::Sender<bool>,
    /// Orchestration tasks report here.
    pub(super) promo_tx: mpsc::UnboundedSender<super::promotion::PromoMsg>,
    pub(super) stop_rx: watch::Receiver<bool>,
    /// Where `promotion.json` lives.
    pub(super) state_dir: std::path::PathBuf,
    /// What the decider is handling now (a probe result, a confirmed
    /// passive mark, an operator action): every event it emits meanwhile
    /// carries it (`cause`, `FAILOVER_CAUSE`), so a hook can tell a crash
    /// from an operator's disable.
    pub(super) cause: Option<crate::model::Cause>,
    /// Cluster mode with agreement: only decided states reach the map.
    pub(super) decided_mode: bool,
    /// Set while a decided state is being written.
    pub(super) applying: bool,
    /// Cluster mode: switchovers asked of this node, by service, until a
    /// decision carries them out.
    pub(super) switches: HashMap<usize, super::decided::PendingSwitch>,
}

impl Decider {
    pub(super) fn save(&self) {
        let v = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| SavedState {
                service: b.key.0.clone(),
                backend: b.key.1.clone(),
                address: b.key.2,
                state: b.machine.state(),
                held: b.machine.held(&b.policy)
                    || (self.role(i) == Some(crate::model::Role::Fenced)
                        && b.machine.state().serving()),
                role: self.role(i).map(|r| r.name().to_string()),
            })
            .collect();
        let _ = self.persist_tx.send(v);
    }

    pub(super) fn with_metrics(&self, f: impl FnOnce(&mut metrics::AgentMetrics)) {
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

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<ProbeMsg>,
        mut cmd_rx: mpsc::Receiver<Cmd>,
        mut passive_rx: mpsc::Receiver<PassiveEvent>,
        mut promo_rx: mpsc::UnboundedReceiver<super::promotion::PromoMsg>,
        mut stop: watch::Receiver<bool>,
    ) -> Stats {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // No probe task at all (no service has a check) closes the probe
        // channel at once: that must not end the decider, which still
        // serves operator actions and passive marks.
        let mut probes_open = true;
        loop {
            tokio::select! {
                m = rx.recv(), if probes_open => match m {
                    Some(m) => {
                        let svc = self.backends[m.idx].svc;
                        self.cause = Some(crate::model::Cause::Probe);
                        self.on_probe(m);
                        self.enforce_never_dark(svc);
                        self.cause = None;
                    }
                    None => probes_open = false,
                },
                Some(ev) = passive_rx.recv() => {
                    self.on_passive(ev);
                    for svc in 0..self.svcs.len() {
                        self.enforce_never_dark(svc);
                    }
                }
                _ = tick.tick() => {
                    self.passive_deadlines();
                    self.switch_deadlines();
                }
                Some(m) = promo_rx.recv() => self.on_promo(m),
                c = cmd_rx.recv() => match c {
                    Some(Cmd::Snapshot(reply)) => {
                        let states = self.backends.iter().map(|b| (b.key.clone(), b.machine.state())).collect();
                        let _ = reply.send((states, self.stats.clone()));
                    }
                    Some(Cmd::Admin { service, backend, action, reply }) => {
                        self.cause = Some(crate::model::Cause::Operator);
                        let _ = reply.send(self.admin(&service, &backend, action));
                        self.cause = None;
                    }
                    Some(Cmd::Backends(reply)) => {
                        let v = (0..self.backends.len()).map(|i| self.view(i)).collect();
                        let _ = reply.send(v);
                    }
                    Some(Cmd::Switchover { service, to, cause, reply }) => {
                        self.switchover(&service, &to, cause, reply);
                    }
                    Some(Cmd::Promotions(reply)) => {
                        let _ = reply.send(self.promotion_views());
                    }
                    Some(Cmd::PendingSwitches(reply)) => {
                        let _ = reply.send(self.pending_switches());
                    }
                    Some(Cmd::Decided { number, why, states, active, reply }) => {
                        self.cause = Some(crate::model::Cause::Cluster);
                        let _ = reply.send(self.on_decided(number, &why, &states, active.as_ref()));
                        self.cause = None;
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

    /// Backend `i` as the API shows it. With roles: a healthy standby is
    /// `standby`, a healthy fenced one `held`.
    fn view(&self, i: usize) -> BackendView {
        let b = &self.backends[i];
        let role = self.role(i);
        let state = match role {
            Some(crate::model::Role::Standby) if b.machine.state().serving() => "standby",
            Some(crate::model::Role::Fenced) if b.machine.state().serving() => "held",
            _ if b.machine.held(&b.policy) => "held",
            _ => b.machine.state().name(),
        };
        BackendView {
            service: b.key.0.clone(),
            backend: b.name.clone(),
            address: b.key.2,
            tier: b.tier,
            state,
            health: b.machine.health().name(),
            map_word: word_name(b.word),
            kept_last: b.kept_last,
            role: role.map(|r| r.name()),
            role_settled: self.role_settled(i),
        }
    }

    /// Whether backend `i`'s machine reflects only results of the check
    /// its role wants now (`rise` and `fall` of them since the role last
    /// changed); always without roles.
    fn role_settled(&self, i: usize) -> bool {
        let svc = self.backends[i].svc;
        let Some(p) = self.svcs[svc].promo.as_ref() else {
            return true;
        };
        let check = if p.active == Some(i) {
            self.svcs[svc].cfg.check.as_ref()
        } else {
            Some(&p.cfg.standby_check)
        };
        let need = check.map_or(1, |c| c.rise.max(c.fall));
        self.backends[i].role_results >= need
    }

    /// Asks the table task to rebuild tier `ti` of service `svc` over its
    /// members as the map now has them.
    pub(super) fn rebuild(&self, svc: usize, ti: usize) {
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
    /// With roles only the active may take new flows: any other backend
    /// gets the down word of its service's flow policy.
    pub(super) fn desired(&self, i: usize) -> u32 {
        let b = &self.backends[i];
        let flows = self.svcs[b.svc].cfg.flows_on_down;
        match self.role(i) {
            Some(crate::model::Role::Standby | crate::model::Role::Fenced)
                if b.machine.state().serving() =>
            {
                word_for(State::Down, flows)
            }
            _ => word_for(b.machine.state(), flows),
        }
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
    pub(super) fn serving(&self, svc: usize) -> (Option<usize>, Vec<String>) {
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
    pub(super) fn write(&mut self, i: usize, word: u32, decided: Instant) -> Option<Duration> {
        if self.decided_mode && !self.applying {
            // In a cluster with agreement the map holds only decided
            // states; this node's own view goes to etcd as an observation.
            return None;
        }
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
                    m.last_decision_ms = crate::sys::heartbeat::now_ms();
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
        if self.decided_mode
            && matches!(action, AdminAction::ForceRelease)
            && self
                .svcs
                .iter()
                .any(|s| s.cfg.name == service && s.promo.is_some())
        {
            return Err(AdminError::Conflict(
                "in a cluster the leader holds the fence: put the key /failover/v1/<cluster>/release/<service>/<backend> in etcd (docs/cluster.md)".into(),
            ));
        }
        let i = self
            .backends
            .iter()
            .position(|b| b.key.0 == service && b.name == backend)
            .ok_or_else(|| AdminError::NoBackend {
                service: service.to_string(),
                backend: backend.to_string(),
            })?;
        if self.judged_by_orchestration(i) {
            return Err(AdminError::Conflict(format!(
                "{backend} is being promoted: act on it once the promotion has ended"
            )));
        }
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
            AdminAction::Release | AdminAction::ForceRelease => {
                let force = action == AdminAction::ForceRelease;
                if let Some(r) = self.release_fenced(i, force) {
                    return r;
                }
                self.backends[i]
                    .machine
                    .release(now, &policy)
                    .map_err(AdminError::Conflict)?
            }
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
        self.check_active(svc, crate::model::Cause::Operator);
        Ok(Change {
            service: service.to_string(),
            backend: backend.to_string(),
            from,
            to,
            map_word: word_name(self.backends[i].word),
            map_version: self.stats.map_version,
        })
    }

    pub(super) fn sync_all(&mut self) -> anyhow::Result<()> {
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
        if self.unprobed.remove(&i) && self.unprobed.is_empty() {
            let _ = self.round_tx.send(true);
        }
        if self.backends[i].unconfirmed.is_some() {
            self.confirm(i, &m);
            return;
        }
        if self.judged_by_orchestration(i) {
            // Its promotion decides (the active check within a deadline).
            return;
        }
        if let Some(role) = self.role(i) {
            if m.active_check != (role == crate::model::Role::Active) {
                // Made for the role it had before a change: not evidence
                // about the role it has now.
                return;
            }
            self.backends[i].role_results = self.backends[i].role_results.saturating_add(1);
            if role == crate::model::Role::Fenced {
                let b = &mut self.backends[i];
                b.standby_passes = if m.result.ok {
                    b.standby_passes.saturating_add(1)
                } else {
                    0
                };
            }
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
        // A planned handover's fence lifts on the probes' verdict alone.
        self.unfence_planned(i);
        let (ok, lat) = (m.result.ok, m.result.latency.as_secs_f64());
        let health = if self.backends[i].machine.held(&policy) {
            "held"
        } else {
            self.backends[i].machine.state().name()
        };
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
            // Readers without the daemon (the CLI) see it held, not down.
            self.save();
        }
        let Some(tr) = tr else {
            debug!(backend = %self.backends[i].name, ok = m.result.ok, detail = %m.result.detail, "probe");
            return;
        };
        self.apply_transition(i, tr, None);
        self.check_active(svc, crate::model::Cause::Probe);
    }

    /// A state change of backend `i`: the map write first (one syscall),
    /// then events, keep-last, tables and the failover report.
    pub(super) fn apply_transition(
        &mut self,
        i: usize,
        tr: Transition,
        signal: Option<&'static str>,
    ) {
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
        if self.svcs[svc].promo.is_some() {
            // Roles decide who serves: a held backend is never brought up
            // (a standby serves only once promoted).
            return;
        }
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
            self.cause = Some(crate::model::Cause::PassiveConfirmed);
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
            self.check_active(svc, crate::model::Cause::PassiveConfirmed);
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

    pub(super) fn report_failover(
        &mut self,
        svc: usize,
        before: (Option<usize>, Vec<String>),
        cause: &str,
    ) {
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
        e.serving_addresses = Some(
            after
                .1
                .iter()
                .filter_map(|n| {
                    self.svcs[svc]
                        .backends
                        .iter()
                        .map(|&i| &self.backends[i])
                        .find(|b| &b.name == n)
                        .map(|b| b.key.2.to_string())
                })
                .collect(),
        );
        e.serving = Some(after.1);
        self.emit(svc, e, HookEvent::Failover);
    }

    pub(super) fn emit(&self, svc: usize, mut e: Event, class: HookEvent) {
        if e.cause.is_none() {
            e.cause = self.cause.map(crate::model::Cause::name);
        }
        if e.kind == "state" {
            self.save();
        }
        let json = self.sink.emit(&e);
        let s = &self.svcs[svc];
        for (h, q) in s.cfg.hooks.iter().zip(&s.hooks) {
            if h.events.contains(&class) {
                // Its queue runs it (one at a time, coalescing) and reports.
                q.submit(json.clone(), e.env());
            }
        }
    }
}

pub(super) fn kind_name(s: &Service) -> &'static str {
    match s.check.as_ref().map(|c| &c.probe) {
        Some(probe::ProbeSpec::Tcp) => "tcp",
        Some(probe::ProbeSpec::Http { .. }) => "http",
        Some(probe::ProbeSpec::Udp { .. }) => "udp",
        Some(probe::ProbeSpec::Exec { .. }) => "exec",
        Some(probe::ProbeSpec::Postgres { .. }) => "postgres",
        None => "none",
    }
}
