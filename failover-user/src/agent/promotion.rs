//! Orchestrated failover of active-passive services (`[service.promotion]`):
//! roles, fencing, promotion and the switch, in that order.
//!
//! One backend of such a service is active; only its map word may be
//! `up`. The others are standbys (probed with the standby check) or fenced
//! former actives. When the active is lost for a cause the service lists
//! (`on`), or an operator asks for a switchover:
//!
//! 1. **fence**: the old active leaves the map (its word goes down at
//!    once; its flows per `flows_on_down`), is marked fenced, and the fence
//!    hook runs;
//! 2. **promote**: the fencing token (a generation number that only grows,
//!    saved before any hook sees it) goes up by one; the promote hook runs
//!    for the best healthy standby (first tier first) with the token;
//! 3. **ready**: the standby must pass the active check within
//!    `ready_within` (its probe results are not fed to its state machine
//!    meanwhile: the orchestrator judges it);
//! 4. **switch**: one map write makes it the active.
//!
//! A failed hook or a missed deadline tries the next standby; with none
//! left the service stops in `promotion-failed` (an event, an audit
//! record, a metric, the failover hooks): nothing is served rather than a
//! standby whose promotion failed. The orchestration runs in its own task
//! and reports back to the decider, which owns the map.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::*;
use crate::{
    config::{Hook, HookSpec, Promotion},
    model::{Cause, Role},
    sys::exec::fill_placeholders,
};

/// Where a promotion service stands.
#[derive(Debug)]
pub(super) enum Phase {
    /// The active (if any) serves per its health.
    Steady,
    /// An orchestration with this token runs; `trying`: the standby it
    /// promotes now.
    Promoting {
        token: u64,
        cause: Cause,
        from: Option<usize>,
        trying: Option<usize>,
        started: Instant,
        reply: Option<oneshot::Sender<Result<PromotionReport, AdminError>>>,
    },
    /// The last orchestration failed: nothing is promoted until an
    /// operator switches (`failover switch S --to B`).
    Failed { reason: String },
}

/// Why a backend is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Fence {
    /// Lost in a failure: it may have diverged; only an operator lets it
    /// back (`release`, which needs its standby check to pass, or
    /// `--force`).
    Failure,
    /// Handed over in a planned switchover: it becomes a standby by
    /// itself once it passes the standby check (a cleanly demoted active
    /// replicates from the new one; a diverged one cannot).
    Planned,
}

/// A promotion service's runtime.
#[derive(Debug)]
pub(super) struct PromoRt {
    pub(super) cfg: Promotion,
    pub(super) active: Option<usize>,
    /// The fencing token: the number of the last promotion started.
    pub(super) generation: u64,
    pub(super) fenced: BTreeMap<usize, Fence>,
    pub(super) phase: Phase,
}

impl PromoRt {
    pub(super) fn role(&self, i: usize) -> Role {
        if self.active == Some(i) {
            Role::Active
        } else if self.fenced.contains_key(&i) {
            Role::Fenced
        } else {
            Role::Standby
        }
    }

    /// The backend an orchestration is promoting now.
    pub(super) fn trying(&self) -> Option<usize> {
        match self.phase {
            Phase::Promoting { trying, .. } => trying,
            _ => None,
        }
    }

    pub(super) fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Steady if self.active.is_some() => "serving",
            Phase::Steady => "no-active",
            Phase::Promoting { .. } => "promoting",
            Phase::Failed { .. } => "promotion-failed",
        }
    }
}

/// What `<state_dir>/promotion.json` keeps per service: who is active,
/// the token, who is fenced, and whether the last orchestration failed or
/// was cut short by a stop (then the restarted daemon promotes nothing by
/// itself).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedPromotion {
    pub active: Option<String>,
    pub generation: u64,
    #[serde(default)]
    pub fenced: BTreeMap<String, FenceName>,
    /// `serving`, `no-active`, `promoting`, `promotion-failed`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// How a fence is saved (`failure` or `planned`).
pub type FenceName = String;

pub(super) fn promotion_file(state_dir: &Path) -> PathBuf {
    state_dir.join("promotion.json")
}

/// The saved promotion states (empty if none; unreadable is an error: the
/// daemon must not guess who is active).
pub fn load_promotions(state_dir: &Path) -> anyhow::Result<BTreeMap<String, SavedPromotion>> {
    let path = promotion_file(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a promotion state file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The runtime of service `s` (backends `idxs`, by name in `names`) from
/// what was saved, or the config's start: the tier-0 backend active.
pub(super) fn start_state(
    cfg: &Promotion,
    saved: Option<&SavedPromotion>,
    idxs: &[usize],
    names: &[String],
) -> PromoRt {
    let by_name = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .and_then(|k| idxs.get(k).copied())
    };
    let mut rt = PromoRt {
        cfg: cfg.clone(),
        active: idxs.first().copied(),
        generation: 0,
        fenced: BTreeMap::new(),
        phase: Phase::Steady,
    };
    let Some(s) = saved else {
        return rt;
    };
    rt.generation = s.generation;
    rt.active = s.active.as_deref().and_then(by_name);
    for (n, f) in &s.fenced {
        if let Some(i) = by_name(n) {
            let f = if f == "planned" {
                Fence::Planned
            } else {
                Fence::Failure
            };
            rt.fenced.insert(i, f);
        }
    }
    match (s.phase.as_str(), &s.failed) {
        ("promotion-failed", why) => {
            rt.phase = Phase::Failed {
                reason: why.clone().unwrap_or_else(|| "a promotion failed".into()),
            }
        }
        ("promoting", _) => {
            rt.active = None;
            rt.phase = Phase::Failed {
                reason: format!(
                    "the daemon stopped during promotion {}: check the backends, then `failover switch`",
                    s.generation
                ),
            }
        }
        _ => {}
    }
    rt
}

/// The backend that is active when service `s` starts from `saved`: the
/// saved active, none after a failed or interrupted promotion, the tier-0
/// backend on a first start.
pub fn active_at_start(
    s: &crate::config::Service,
    saved: Option<&SavedPromotion>,
) -> Option<String> {
    match saved {
        Some(p) if matches!(p.phase.as_str(), "promoting" | "promotion-failed") => None,
        Some(p) => p.active.clone(),
        None => s
            .tiers
            .first()
            .and_then(|t| t.first())
            .map(|b| b.name.clone()),
    }
}

/// What a finished orchestration reports to whoever asked for it.
#[derive(Debug, Clone, Serialize)]
pub struct PromotionReport {
    pub service: String,
    pub from: Option<String>,
    pub to: String,
    pub token: u64,
    pub cause: &'static str,
    /// From the fence to the switch's map write.
    pub elapsed_ms: f64,
    pub map_version: u64,
}

/// A candidate for promotion, as the orchestration task needs it.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) idx: usize,
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    /// Where the active check probes it.
    pub(super) check_addr: SocketAddr,
    /// Its own fencing token: every promote hook run gets a token no other
    /// run got (a candidate whose hook half-worked never shares one with
    /// the next).
    pub(super) token: u64,
}

/// What the orchestration task tells the decider.
#[derive(Debug)]
pub(super) enum PromoMsg {
    /// Now promoting `idx`.
    Trying { svc: usize, token: u64, idx: usize },
    /// `idx` passed the active check after its promote hook: switch.
    /// `tried`: every candidate whose promote hook was started.
    Ready {
        svc: usize,
        token: u64,
        idx: usize,
        tried: Vec<usize>,
    },
    /// No standby could be promoted.
    Failed {
        svc: usize,
        token: u64,
        reason: String,
        tried: Vec<usize>,
    },
}

/// Everything the orchestration task needs (cloned out of the decider).
pub(super) struct Orchestration {
    pub(super) svc: usize,
    pub(super) service: String,
    pub(super) cfg: Promotion,
    pub(super) active_check: Check,
    pub(super) token: u64,
    pub(super) cause: Cause,
    pub(super) from: Option<Candidate>,
    pub(super) candidates: Vec<Candidate>,
    pub(super) sink: Arc<Sink>,
    pub(super) metrics: metrics::Shared,
    pub(super) tx: mpsc::UnboundedSender<PromoMsg>,
}

impl Orchestration {
    /// The hook environment: the cause, the names and addresses of the
    /// old active and the standby, the token.
    fn env(&self, to: Option<&Candidate>) -> Vec<(String, String)> {
        let mut v = vec![
            ("FAILOVER_KIND".into(), "promotion".into()),
            ("FAILOVER_SERVICE".into(), self.service.clone()),
            ("FAILOVER_CAUSE".into(), self.cause.name().into()),
            (
                "FAILOVER_TOKEN".into(),
                to.map_or(self.token, |t| t.token).to_string(),
            ),
        ];
        if let Some(f) = &self.from {
            v.push(("FAILOVER_FROM".into(), f.name.clone()));
            v.push(("FAILOVER_FROM_ADDRESS".into(), f.addr.ip().to_string()));
            v.push(("FAILOVER_FROM_PORT".into(), f.addr.port().to_string()));
        }
        if let Some(t) = to {
            v.push(("FAILOVER_TO".into(), t.name.clone()));
            v.push(("FAILOVER_TO_ADDRESS".into(), t.addr.ip().to_string()));
            v.push(("FAILOVER_TO_PORT".into(), t.addr.port().to_string()));
        }
        v
    }

    /// `hook` with `{backend}`, `{address}`, `{port}`, `{token}` filled
    /// for backend `b`.
    fn hook_for(&self, hook: &Hook, b: &Candidate) -> Hook {
        let mut h = hook.clone();
        if let HookSpec::Exec { command } = &mut h.spec {
            let (address, port, token) = (
                b.addr.ip().to_string(),
                b.addr.port().to_string(),
                b.token.to_string(),
            );
            *command = fill_placeholders(
                command,
                &[
                    ("backend", &b.name),
                    ("address", &address),
                    ("port", &port),
                    ("token", &token),
                    ("service", &self.service),
                ],
            );
        }
        h
    }

    /// Runs one hook; its outcome becomes a `hook` event (events file,
    /// audit log) and `failover_hook_runs_total{hook}`.
    async fn run_hook(&self, hook: &Hook, b: &Candidate, to: Option<&Candidate>) -> HookRun {
        let h = self.hook_for(hook, b);
        let env = self.env(to);
        let json = serde_json::json!({
            "kind": "promotion",
            "service": self.service,
            "cause": self.cause.name(),
            "token": b.token,
            "backend": b.name,
            "address": b.addr.ip().to_string(),
        })
        .to_string();
        let o = hooks::run(&h, &json, &env).await;
        report_hook(&self.sink, &self.metrics, &self.service, &o, 1);
        HookRun {
            ok: o.ok,
            detail: o.detail,
        }
    }

    /// The orchestration: fence hook, then each candidate in turn until
    /// one is promoted and ready.
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tried = Vec::new();
        let out = tokio::select! {
            r = self.steps(&mut tried) => r,
            _ = stop.changed() => return,
        };
        let msg = match out {
            Ok(idx) => PromoMsg::Ready {
                svc: self.svc,
                token: self.token,
                idx,
                tried,
            },
            Err(reason) => PromoMsg::Failed {
                svc: self.svc,
                token: self.token,
                reason,
                tried,
            },
        };
        let _ = self.tx.send(msg);
    }

    async fn steps(&self, tried: &mut Vec<usize>) -> Result<usize, String> {
        if let (Some(fence), Some(from)) = (&self.cfg.fence, &self.from) {
            let r = self.run_hook(fence, from, None).await;
            if !r.ok {
                return Err(format!(
                    "the fence hook failed for {}: {}; nothing promoted",
                    from.name, r.detail
                ));
            }
        }
        if self.candidates.is_empty() {
            return Err("no healthy standby to promote".into());
        }
        let mut why = Vec::new();
        for c in &self.candidates {
            let _ = self.tx.send(PromoMsg::Trying {
                svc: self.svc,
                token: self.token,
                idx: c.idx,
            });
            tried.push(c.idx);
            let r = self.run_hook(&self.cfg.promote, c, Some(c)).await;
            if !r.ok {
                why.push(format!("{}: promote hook {}", c.name, r.detail));
                continue;
            }
            match self.wait_ready(c).await {
                Ok(()) => return Ok(c.idx),
                Err(e) => why.push(format!("{}: {e}", c.name)),
            }
        }
        Err(format!("no standby could be promoted ({})", why.join("; ")))
    }

    /// Probes `c` with the active check until it passes, within
    /// `ready_within`.
    async fn wait_ready(&self, c: &Candidate) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.ready_within;
        let target = Target {
            service: self.service.clone(),
            backend: c.name.clone(),
            addr: c.check_addr,
        };
        let last = loop {
            let started = Instant::now();
            let r =
                probe::probe(&self.active_check.probe, &target, self.active_check.timeout).await;
            if r.ok {
                return Ok(());
            }
            let next = started + self.active_check.fast_interval;
            if next >= deadline {
                break r.detail;
            }
            tokio::time::sleep_until(next.into()).await;
        };
        Err(format!(
            "not ready as active within {:?} (last check: {last})",
            self.cfg.ready_within
        ))
    }
}

struct HookRun {
    ok: bool,
    detail: String,
}

impl Decider {
    pub(super) fn promo(&self, svc: usize) -> Option<&PromoRt> {
        self.svcs[svc].promo.as_ref()
    }

    /// Backend `i`'s role, if its service has roles.
    pub(super) fn role(&self, i: usize) -> Option<Role> {
        self.promo(self.backends[i].svc).map(|p| p.role(i))
    }

    /// Whether probe results of `i` are held back from its machine (the
    /// orchestration judges a standby it is promoting).
    pub(super) fn judged_by_orchestration(&self, i: usize) -> bool {
        self.promo(self.backends[i].svc)
            .is_some_and(|p| p.trying() == Some(i))
    }

    /// At start: a service that starts without an active (its saved
    /// active is no longer in the config) is in `promotion-failed`; one
    /// that starts there (saved so, or cut short by a stop) says so again:
    /// an event (the failover hooks) and the metric.
    pub(super) fn report_start_phase(&mut self, svc: usize) {
        let Some(p) = self.svcs[svc].promo.as_mut() else {
            return;
        };
        if matches!(p.phase, Phase::Steady) && p.active.is_none() {
            p.phase = Phase::Failed {
                reason: "the saved active is not in the config any more".into(),
            };
        }
        let Phase::Failed { reason } = &p.phase else {
            self.set_promotion_metrics(svc, None);
            return;
        };
        let reason = reason.clone();
        self.save_promotions();
        self.set_promotion_metrics(svc, None);
        let name = self.svcs[svc].cfg.name.clone();
        let e = Event::new(
            "promotion-failed",
            &name,
            format!(
                "starting in promotion-failed: {reason}; no standby serves until an operator switches (failover switch {name} --to BACKEND)"
            ),
            self.stats.map_version,
        );
        self.emit(svc, e, HookEvent::Failover);
    }

    /// Tells each probe task of service `svc` which check its backend gets.
    pub(super) fn set_probe_roles(&mut self, svc: usize) {
        let Some(p) = self.promo(svc) else {
            return;
        };
        let mut changed = Vec::new();
        for &i in &self.svcs[svc].backends {
            let active = p.active == Some(i) || p.trying() == Some(i);
            let b = &self.backends[i];
            if *b.active_tx.borrow() != active {
                let _ = b.active_tx.send(active);
                b.probe_now.notify_one();
                changed.push(i);
            }
        }
        for i in changed {
            self.backends[i].role_results = 0;
        }
    }

    /// Saves every promotion service's state; before any hook sees a new
    /// token and before a switch, so a restarted daemon never reuses one.
    pub(super) fn save_promotions(&self) -> bool {
        let mut all = BTreeMap::new();
        for s in &self.svcs {
            let Some(p) = &s.promo else { continue };
            let name = |i: usize| self.backends[i].name.clone();
            all.insert(
                s.cfg.name.clone(),
                SavedPromotion {
                    active: p.active.map(name),
                    generation: p.generation,
                    fenced: p
                        .fenced
                        .iter()
                        .map(|(&i, f)| {
                            let f = match f {
                                Fence::Failure => "failure",
                                Fence::Planned => "planned",
                            };
                            (name(i), f.to_string())
                        })
                        .collect(),
                    phase: p.phase_name().to_string(),
                    failed: match &p.phase {
                        Phase::Failed { reason } => Some(reason.clone()),
                        _ => None,
                    },
                },
            );
        }
        if all.is_empty() {
            return true;
        }
        let path = promotion_file(&self.state_dir);
        let res = serde_json::to_vec_pretty(&all)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(crate::sys::files::write_atomic(&path, &b)?));
        match res {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %format!("{e:#}"), path = %path.display(), "saving the promotion state failed");
                false
            }
        }
    }

    fn set_promotion_metrics(&self, svc: usize, result: Option<&'static str>) {
        let name = self.svcs[svc].cfg.name.clone();
        let failed = matches!(
            self.promo(svc).map(|p| &p.phase),
            Some(Phase::Failed { .. })
        );
        let token = self.promo(svc).map_or(0, |p| p.generation);
        self.with_metrics(|m| {
            m.promotion_failed.insert(name.clone(), failed);
            m.promotion_token.insert(name.clone(), token);
            if let Some(r) = result {
                *m.promotions.entry((name, r)).or_default() += 1;
            }
        });
    }

    /// After anything that may have cost service `svc` its active: starts
    /// the orchestration if the active is lost for a cause the service
    /// promotes on. An unsettled passive mark waits for its verdict.
    pub(super) fn check_active(&mut self, svc: usize, cause: Cause) {
        if self.decided_mode {
            // In a cluster the elected leader promotes (cluster/promote.rs).
            return;
        }
        let Some(p) = self.promo(svc) else {
            return;
        };
        if !matches!(p.phase, Phase::Steady) {
            return;
        }
        let Some(a) = p.active else {
            return;
        };
        let b = &self.backends[a];
        if b.unconfirmed.is_some() || b.machine.state().serving() {
            return;
        }
        if !p.cfg.on.contains(&cause) {
            let mut e = Event::new(
                "active-lost",
                &self.svcs[svc].cfg.name,
                format!(
                    "{} does not serve ({}), and {} does not start a promotion (promotion.on): nothing takes new flows",
                    b.name,
                    b.machine.state().name(),
                    cause.name()
                ),
                self.stats.map_version,
            );
            e.backend = Some(b.name.clone());
            e.cause = Some(cause.name());
            self.emit(svc, e, HookEvent::Failover);
            return;
        }
        self.start_promotion(svc, cause, None, None);
    }

    /// Fences the active (if any) and starts promoting `target` (or the best
    /// healthy standby). `reply` gets the outcome.
    pub(super) fn start_promotion(
        &mut self,
        svc: usize,
        cause: Cause,
        target: Option<usize>,
        reply: Option<oneshot::Sender<Result<PromotionReport, AdminError>>>,
    ) {
        let started = Instant::now();
        let name = self.svcs[svc].cfg.name.clone();
        // The standbys to try, best first (the active is not one).
        let candidate_idxs: Vec<usize> = match target {
            Some(t) => vec![t],
            None => {
                let mut c: Vec<usize> = self.svcs[svc]
                    .backends
                    .iter()
                    .copied()
                    .filter(|&i| self.promotable(i))
                    .collect();
                c.sort_by_key(|&i| (self.backends[i].tier, i));
                c
            }
        };
        let Some(p) = self.svcs[svc].promo.as_mut() else {
            return;
        };
        let from = p.active.take();
        // One token per candidate (the first also names the orchestration).
        let token = p.generation + 1;
        p.generation += candidate_idxs.len().max(1) as u64;
        if let Some(a) = from {
            let fence = if matches!(cause, Cause::Operator | Cause::Drill)
                && self.backends[a].machine.state().serving()
            {
                Fence::Planned
            } else {
                Fence::Failure
            };
            p.fenced.insert(a, fence);
        }
        p.phase = Phase::Promoting {
            token,
            cause,
            from,
            trying: None,
            started,
            reply,
        };
        // The tokens are on disk before any hook sees one.
        let saved = self.save_promotions();
        self.set_promotion_metrics(svc, None);
        let before = self.serving(svc);
        if let Some(a) = from {
            let want = self.desired(a);
            if self.backends[a].word != want && self.write(a, want, started).is_some() {
                self.rebuild(svc, self.backends[a].tier);
            }
            let mut e = Event::new(
                "fenced",
                &name,
                format!(
                    "{} is fenced ({}): no new flows; its established flows per flows_on_down",
                    self.backends[a].name,
                    cause.name()
                ),
                self.stats.map_version,
            );
            e.backend = Some(self.backends[a].name.clone());
            e.map_word = Some(word_name(self.backends[a].word));
            e.cause = Some(cause.name());
            e.token = Some(token);
            self.emit(svc, e, HookEvent::State);
        }
        self.set_probe_roles(svc);
        self.save();
        if let Some(a) = from {
            self.backends[a].standby_passes = 0;
        }
        let candidates: Vec<Candidate> = candidate_idxs
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let mut c = self.candidate(i);
                c.token = token + k as u64;
                c
            })
            .collect();
        let mut e = Event::new(
            "promotion-started",
            &name,
            format!(
                "promotion {token} ({}): candidates {}",
                cause.name(),
                if candidates.is_empty() {
                    "none".to_string()
                } else {
                    candidates
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            self.stats.map_version,
        );
        e.from = from.map(|a| self.backends[a].name.clone());
        e.cause = Some(cause.name());
        e.token = Some(token);
        self.emit(svc, e, HookEvent::State);
        self.report_failover(svc, before, &format!("{} fenced", cause.name()));
        if !saved {
            // A token not on disk could be handed out again after a restart:
            // no hook sees it.
            self.promotion_failed(
                svc,
                token,
                "the promotion state could not be saved (see the log): no hook was run".into(),
                Vec::new(),
            );
            return;
        }
        let Some(p) = self.promo(svc) else {
            return;
        };
        let check = self.svcs[svc].cfg.check.clone();
        let Some(active_check) = check else {
            return;
        };
        let o = Orchestration {
            svc,
            service: name,
            cfg: p.cfg.clone(),
            active_check,
            token,
            cause,
            from: from.map(|a| self.candidate(a)),
            candidates,
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
            tx: self.promo_tx.clone(),
        };
        // A panic in the orchestration must not leave the phase at
        // `promoting` for ever: its supervisor reports it as a failure.
        let tx = self.promo_tx.clone();
        let job = tokio::spawn(o.run(self.stop_rx.clone()));
        tokio::spawn(async move {
            if let Err(e) = job.await
                && e.is_panic()
            {
                let _ = tx.send(PromoMsg::Failed {
                    svc,
                    token,
                    reason: "the orchestration task panicked".into(),
                    tried: Vec::new(),
                });
            }
        });
    }

    fn candidate(&self, i: usize) -> Candidate {
        let b = &self.backends[i];
        let port = self.svcs[b.svc]
            .cfg
            .check
            .as_ref()
            .and_then(|c| c.port)
            .unwrap_or(b.key.2.port());
        Candidate {
            idx: i,
            name: b.name.clone(),
            addr: b.key.2,
            check_addr: SocketAddr::new(b.key.2.ip(), port),
            token: 0,
        }
    }

    /// A healthy standby: not active, not fenced, passing its standby
    /// check, no unsettled mark, no operator state.
    pub(super) fn promotable(&self, i: usize) -> bool {
        let b = &self.backends[i];
        self.role(i) == Some(Role::Standby)
            && b.unconfirmed.is_none()
            && b.machine.state().serving()
    }

    /// A message from an orchestration task.
    pub(super) fn on_promo(&mut self, m: PromoMsg) {
        match m {
            PromoMsg::Trying { svc, token, idx } => {
                if let Some(p) = self.svcs[svc].promo.as_mut()
                    && let Phase::Promoting {
                        token: t, trying, ..
                    } = &mut p.phase
                    && *t == token
                {
                    *trying = Some(idx);
                }
                self.set_probe_roles(svc);
            }
            PromoMsg::Ready {
                svc,
                token,
                idx,
                tried,
            } => self.promoted(svc, token, idx, tried),
            PromoMsg::Failed {
                svc,
                token,
                reason,
                tried,
            } => self.promotion_failed(svc, token, reason, tried),
        }
    }

    fn current(&self, svc: usize, token: u64) -> bool {
        matches!(self.promo(svc).map(|p| &p.phase), Some(Phase::Promoting { token: t, .. }) if *t == token)
    }

    /// The standby is promoted and ready: the switch, in one write.
    fn promoted(&mut self, svc: usize, token: u64, idx: usize, tried: Vec<usize>) {
        if !self.current(svc, token) {
            return;
        }
        let used = token + tried.iter().position(|&t| t == idx).unwrap_or(0) as u64;
        self.fence_tried(svc, &tried, Some(idx), token);
        let Some(p) = self.svcs[svc].promo.as_mut() else {
            return;
        };
        let Phase::Promoting {
            cause,
            from,
            started,
            reply,
            ..
        } = std::mem::replace(&mut p.phase, Phase::Steady)
        else {
            return;
        };
        p.active = Some(idx);
        p.fenced.remove(&idx);
        // Saved before the map says so: a restart finds it active.
        self.save_promotions();
        let before = self.serving(svc);
        // It passed the active check just now: up, whatever its standby
        // probes said before.
        let now = Instant::now();
        if !self.backends[idx].machine.state().serving() {
            let policy = self.backends[idx].policy;
            let _ = self.backends[idx].machine.set_admin(now, None);
            for _ in 0..policy.rise {
                let _ = self.backends[idx].machine.observe(
                    now,
                    true,
                    "promoted: the active check passed",
                    &policy,
                );
            }
        }
        let want = self.desired(idx);
        let dt = if self.backends[idx].word != want {
            self.write(idx, want, now)
        } else {
            Some(Duration::ZERO)
        };
        self.rebuild(svc, self.backends[idx].tier);
        self.set_probe_roles(svc);
        self.save();
        let elapsed = started.elapsed();
        let name = self.svcs[svc].cfg.name.clone();
        let mut e = Event::new(
            "promoted",
            &name,
            format!(
                "{} promoted with token {used} ({}): it passed the active check and takes new flows; {:.1} ms from the fence",
                self.backends[idx].name,
                cause.name(),
                elapsed.as_secs_f64() * 1e3
            ),
            self.stats.map_version,
        );
        e.backend = Some(self.backends[idx].name.clone());
        e.from = from.map(|a| self.backends[a].name.clone());
        e.to = Some(self.backends[idx].name.clone());
        e.map_word = Some(word_name(self.backends[idx].word));
        e.cause = Some(cause.name());
        e.token = Some(used);
        e.elapsed_ms = Some(elapsed.as_secs_f64() * 1e3);
        e.decision_to_map_us = dt.map(|d| d.as_secs_f64() * 1e6);
        self.emit(svc, e, HookEvent::State);
        self.set_promotion_metrics(svc, Some("ok"));
        self.report_failover(
            svc,
            before,
            &format!(
                "{} promoted ({}, token {used})",
                self.backends[idx].name,
                cause.name()
            ),
        );
        if let Some(r) = reply {
            let _ = r.send(Ok(PromotionReport {
                service: name,
                from: from.map(|a| self.backends[a].name.clone()),
                to: self.backends[idx].name.clone(),
                token: used,
                cause: cause.name(),
                elapsed_ms: elapsed.as_secs_f64() * 1e3,
                map_version: self.stats.map_version,
            }));
        }
    }

    fn promotion_failed(&mut self, svc: usize, token: u64, reason: String, tried: Vec<usize>) {
        if !self.current(svc, token) {
            return;
        }
        self.fence_tried(svc, &tried, None, token);
        let Some(p) = self.svcs[svc].promo.as_mut() else {
            return;
        };
        let Phase::Promoting { cause, reply, .. } = std::mem::replace(
            &mut p.phase,
            Phase::Failed {
                reason: reason.clone(),
            },
        ) else {
            return;
        };
        self.save_promotions();
        self.set_probe_roles(svc);
        self.save();
        let name = self.svcs[svc].cfg.name.clone();
        let mut e = Event::new(
            "promotion-failed",
            &name,
            format!(
                "promotion {token} ({}) failed: {reason}; no standby serves until an operator switches (failover switch {name} --to BACKEND)",
                cause.name()
            ),
            self.stats.map_version,
        );
        e.cause = Some(cause.name());
        e.token = Some(token);
        self.emit(svc, e, HookEvent::Failover);
        self.set_promotion_metrics(svc, Some("failed"));
        if let Some(r) = reply {
            let _ = r.send(Err(AdminError::Conflict(format!(
                "promotion {token} failed: {reason}"
            ))));
        }
    }

    /// Fences every candidate whose promote hook ran but which did not
    /// become the active: it may be half-promoted (a primary nobody
    /// serves), so it must pass the standby check again and be released
    /// by an operator before it can serve or be promoted.
    fn fence_tried(&mut self, svc: usize, tried: &[usize], chosen: Option<usize>, token: u64) {
        for &i in tried.iter().filter(|&&i| Some(i) != chosen) {
            if let Some(p) = self.svcs[svc].promo.as_mut() {
                p.fenced.insert(i, Fence::Failure);
            }
            self.backends[i].standby_passes = 0;
            let mut e = Event::new(
                "fenced",
                &self.svcs[svc].cfg.name,
                format!(
                    "{} is fenced: its promotion (in orchestration {token}) was started but did not complete; it may be half-promoted",
                    self.backends[i].name
                ),
                self.stats.map_version,
            );
            e.backend = Some(self.backends[i].name.clone());
            e.token = Some(token);
            self.emit(svc, e, HookEvent::State);
        }
        if tried.iter().any(|&i| Some(i) != chosen) {
            self.save_promotions();
            self.save();
        }
    }

    /// An operator's (or a drill's) switchover to `to`: refused unless `to`
    /// is a healthy standby and no orchestration runs.
    pub(super) fn switchover(
        &mut self,
        service: &str,
        to: &str,
        cause: Cause,
        reply: oneshot::Sender<Result<PromotionReport, AdminError>>,
    ) {
        let refuse = |reply: oneshot::Sender<_>, e: AdminError| {
            let _ = reply.send(Err(e));
        };
        let Some(svc) = self.svcs.iter().position(|s| s.cfg.name == service) else {
            return refuse(
                reply,
                AdminError::NoBackend {
                    service: service.into(),
                    backend: to.into(),
                },
            );
        };
        let Some(i) = self.svcs[svc]
            .backends
            .iter()
            .copied()
            .find(|&i| self.backends[i].name == to)
        else {
            return refuse(
                reply,
                AdminError::NoBackend {
                    service: service.into(),
                    backend: to.into(),
                },
            );
        };
        let Some(p) = self.promo(svc) else {
            return refuse(
                reply,
                AdminError::Conflict(format!("{service} has no [service.promotion]")),
            );
        };
        if matches!(p.phase, Phase::Promoting { .. }) {
            return refuse(
                reply,
                AdminError::Conflict(format!("{service}: a promotion is running")),
            );
        }
        if p.active == Some(i) {
            return refuse(
                reply,
                AdminError::Conflict(format!("{to} is already the active of {service}")),
            );
        }
        if !self.promotable(i) {
            let b = &self.backends[i];
            let why = match self.role(i) {
                Some(Role::Fenced) => format!(
                    "{to} is fenced: it may have diverged; bring it back as a standby, then `failover release {service} {to}`"
                ),
                _ if b.unconfirmed.is_some() => format!("{to} has an unsettled passive mark"),
                _ => format!(
                    "{to} is not a healthy standby ({}): it does not pass the standby check",
                    b.machine.state().name()
                ),
            };
            return refuse(reply, AdminError::Conflict(why));
        }
        if self.decided_mode {
            // In a cluster the leader switches: the request goes out with
            // this node's observation and is answered once a decision
            // makes `to` the active (decided.rs).
            if self.switches.contains_key(&svc) {
                return refuse(
                    reply,
                    AdminError::Conflict(format!("{service}: a switchover is already asked for")),
                );
            }
            let from = self.promo(svc).and_then(|p| p.active);
            self.switches.insert(
                svc,
                super::decided::PendingSwitch {
                    to: i,
                    from,
                    cause,
                    started: Instant::now(),
                    reply,
                },
            );
            return;
        }
        self.start_promotion(svc, cause, Some(i), Some(reply));
    }

    /// `release` of a fenced backend: it must pass the standby check now,
    /// unless forced (the admin request is audited either way).
    pub(super) fn release_fenced(
        &mut self,
        i: usize,
        force: bool,
    ) -> Option<Result<Change, AdminError>> {
        let svc = self.backends[i].svc;
        if self.role(i) != Some(Role::Fenced) {
            return None;
        }
        let b = &self.backends[i];
        // The last standby check since the fence passed (a policy such as
        // flap damping may still hold its state down: the release lifts
        // that too).
        if !force && b.standby_passes == 0 {
            return Some(Err(AdminError::Conflict(format!(
                "{} is fenced and does not pass the standby check: rebuild it as a standby first, or release it with --force",
                b.name
            ))));
        }
        let why = format!(
            "{} released from its fence{}: a standby again",
            self.backends[i].name,
            if force { " (forced)" } else { "" }
        );
        self.unfence(i, why);
        let policy = self.backends[i].policy;
        if self.backends[i].machine.held(&policy)
            && let Ok(Some(tr)) = self.backends[i].machine.release(Instant::now(), &policy)
        {
            self.apply_transition(i, tr, None);
        }
        Some(Ok(Change {
            service: self.svcs[svc].cfg.name.clone(),
            backend: self.backends[i].name.clone(),
            from: "fenced",
            to: "standby",
            map_word: word_name(self.backends[i].word),
            map_version: self.stats.map_version,
        }))
    }

    /// A fenced backend handed over in a planned switchover becomes a
    /// standby once it passes the standby check.
    pub(super) fn unfence_planned(&mut self, i: usize) {
        let svc = self.backends[i].svc;
        let planned = self
            .promo(svc)
            .is_some_and(|p| p.fenced.get(&i) == Some(&Fence::Planned));
        let rise = self
            .promo(svc)
            .map_or(1, |p| p.cfg.standby_check.rise.max(1));
        if planned && self.backends[i].standby_passes >= rise {
            let why = format!(
                "{} (handed over in a planned switchover) passes the standby check: a standby again",
                self.backends[i].name
            );
            self.unfence(i, why);
        }
    }

    /// Lifts backend `i`'s fence: saved, then a `released` event.
    fn unfence(&mut self, i: usize, why: String) {
        let svc = self.backends[i].svc;
        if let Some(p) = self.svcs[svc].promo.as_mut() {
            p.fenced.remove(&i);
        }
        self.save_promotions();
        self.save();
        let mut e = Event::new(
            "released",
            &self.svcs[svc].cfg.name,
            why,
            self.stats.map_version,
        );
        e.backend = Some(self.backends[i].name.clone());
        self.emit(svc, e, HookEvent::State);
    }

    /// The promotion state of every promotion service, for the API.
    pub(super) fn promotion_views(&self) -> Vec<PromotionView> {
        self.svcs
            .iter()
            .filter_map(|s| {
                let p = s.promo.as_ref()?;
                Some(PromotionView {
                    service: s.cfg.name.clone(),
                    active: p.active.map(|i| self.backends[i].name.clone()),
                    phase: p.phase_name(),
                    token: p.generation,
                    fenced: p
                        .fenced
                        .keys()
                        .map(|&i| self.backends[i].name.clone())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    failed: match &p.phase {
                        Phase::Failed { reason } => Some(reason.clone()),
                        _ => None,
                    },
                })
            })
            .collect()
    }
}

/// A promotion service as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PromotionView {
    pub service: String,
    pub active: Option<String>,
    pub phase: &'static str,
    pub token: u64,
    pub fenced: Vec<String>,
    pub failed: Option<String>,
}
