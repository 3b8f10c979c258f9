//! Cluster mode with agreement (`[cluster.etcd]`): the agent's own checks
//! still run and its machines still move, but the map holds only what the
//! cluster decided. Local decisions change no word ([`Decider::write`]
//! refuses them); [`Decider::on_decided`] writes the decided ones. The
//! agent knows nothing of etcd: the cluster module sends it decisions and
//! reads its views through [`AgentHandle`].

use std::collections::BTreeMap;

use sha2::Digest as _;

use super::*;

/// A decided state for one backend.
#[derive(Debug, Clone)]
pub struct DecidedState {
    pub service: String,
    pub backend: String,
    pub state: State,
}

/// A switchover asked of this node in a cluster, waiting for the leader.
pub(super) struct PendingSwitch {
    pub(super) to: usize,
    pub(super) from: Option<usize>,
    pub(super) cause: crate::model::Cause,
    pub(super) started: Instant,
    pub(super) reply: oneshot::Sender<Result<super::PromotionReport, AdminError>>,
}

impl Decider {
    /// The switchovers asked of this node: service -> target.
    pub(super) fn pending_switches(&self) -> BTreeMap<String, String> {
        self.switches
            .iter()
            .map(|(&svc, p)| {
                (
                    self.svcs[svc].cfg.name.clone(),
                    self.backends[p.to].name.clone(),
                )
            })
            .collect()
    }

    /// A switchover the leader did not carry out within the service's
    /// `ready_within` and 10 s more is answered as failed.
    pub(super) fn switch_deadlines(&mut self) {
        let late: Vec<usize> = self
            .switches
            .iter()
            .filter(|(svc, p)| {
                let limit = self.svcs[**svc]
                    .promo
                    .as_ref()
                    .map_or(Duration::from_secs(30), |pr| pr.cfg.ready_within)
                    + Duration::from_secs(10);
                p.started.elapsed() > limit
            })
            .map(|(svc, _)| *svc)
            .collect();
        for svc in late {
            if let Some(p) = self.switches.remove(&svc) {
                let _ = p.reply.send(Err(AdminError::Conflict(format!(
                    "the cluster did not make {} the active of {} in time (is it a healthy standby on most nodes? see the leader's log)",
                    self.backends[p.to].name, self.svcs[svc].cfg.name
                ))));
            }
        }
    }

    /// Answers the switchovers a decision carried out.
    fn settle_switches(&mut self, number: u64) {
        let done: Vec<usize> = self
            .switches
            .iter()
            .filter(|(svc, p)| self.promo(**svc).and_then(|pr| pr.active) == Some(p.to))
            .map(|(svc, _)| *svc)
            .collect();
        for svc in done {
            if let Some(p) = self.switches.remove(&svc) {
                let report = super::PromotionReport {
                    service: self.svcs[svc].cfg.name.clone(),
                    from: p.from.map(|i| self.backends[i].name.clone()),
                    to: self.backends[p.to].name.clone(),
                    token: number,
                    cause: p.cause.name(),
                    elapsed_ms: p.started.elapsed().as_secs_f64() * 1e3,
                    map_version: self.stats.map_version,
                };
                let _ = p.reply.send(Ok(report));
            }
        }
    }

    /// Writes the decided states (number `number`); answers with the hash
    /// of the Maglev tables they give (see [`Decider::tables_hash`]).
    pub(super) fn on_decided(
        &mut self,
        number: u64,
        why: &str,
        states: &[DecidedState],
        active: Option<&BTreeMap<String, String>>,
    ) -> Result<String, String> {
        let now = Instant::now();
        // Roles as decided: the active gets the active check, the others
        // the standby check (the leader runs promotions; this node only
        // probes and applies).
        if let Some(active) = active {
            for svc in 0..self.svcs.len() {
                if self.svcs[svc].promo.is_none() {
                    continue;
                }
                let want = active.get(&self.svcs[svc].cfg.name).and_then(|a| {
                    self.svcs[svc]
                        .backends
                        .iter()
                        .copied()
                        .find(|&i| &self.backends[i].name == a)
                });
                if let Some(p) = self.svcs[svc].promo.as_mut()
                    && p.active != want
                {
                    p.active = want;
                    p.fenced.clear();
                    self.set_probe_roles(svc);
                }
            }
        }
        let mut touched: std::collections::BTreeSet<(usize, usize)> = Default::default();
        let mut before: HashMap<usize, (Option<usize>, Vec<String>)> = HashMap::new();
        for d in states {
            let Some(i) = self
                .backends
                .iter()
                .position(|b| b.key.0 == d.service && b.name == d.backend)
            else {
                // A backend this node's config lacks: the configs differ
                // (the acks' table hashes show it); skip, do not fail.
                warn!(service = %d.service, backend = %d.backend, number, "decided backend not in this node's config");
                continue;
            };
            let svc = self.backends[i].svc;
            let word = word_for(d.state, self.svcs[svc].cfg.flows_on_down);
            if self.backends[i].word == word {
                continue;
            }
            before.entry(svc).or_insert_with(|| self.serving(svc));
            self.applying = true;
            let dt = self.write(i, word, now);
            self.applying = false;
            if dt.is_none() {
                return Err(format!(
                    "writing the decided state of {}/{} failed",
                    d.service, d.backend
                ));
            }
            touched.insert((svc, self.backends[i].tier));
            let mut e = Event::new(
                "decided",
                &self.svcs[svc].cfg.name,
                format!("cluster decision {number}: {why}"),
                self.stats.map_version,
            );
            e.backend = Some(self.backends[i].name.clone());
            e.to = Some(d.state.name().to_string());
            e.map_word = Some(word_name(word));
            e.decision_to_map_us = dt.map(|d| d.as_secs_f64() * 1e6);
            self.emit(svc, e, HookEvent::State);
        }
        for &(svc, tier) in &touched {
            self.rebuild(svc, tier);
        }
        self.settle_switches(number);
        for (svc, b) in before {
            self.report_failover(svc, b, &format!("cluster decision {number}: {why}"));
        }
        self.tables_hash()
    }

    /// A hash over every tier's Maglev table as this node builds it from
    /// the words the map now holds (the same function the table task
    /// writes with): equal hashes on two nodes mean a flow hashes to the
    /// same backend on both.
    pub(super) fn tables_hash(&self) -> Result<String, String> {
        let mut h = sha2::Sha256::new();
        for s in &self.svcs {
            for ti in 0..s.cfg.tiers.len() {
                let members: Vec<(u32, String, u32, bool)> = s
                    .backends
                    .iter()
                    .map(|&i| &self.backends[i])
                    .filter(|b| b.tier == ti)
                    .map(|b| (b.id, b.maglev_key.clone(), b.weight, b.word == STATE_UP))
                    .collect();
                let entries = tasks::build_entries(&members, s.cfg.table_size)
                    .map_err(|e| format!("{e:#}"))?;
                h.update(s.cfg.name.as_bytes());
                h.update((ti as u32).to_le_bytes());
                for e in entries {
                    h.update(members[usize::from(e)].0.to_le_bytes());
                }
            }
        }
        Ok(format!("{:x}", h.finalize())[..16].to_string())
    }
}

impl AgentHandle {
    /// Cluster mode: the switchovers asked of this node (service -> to).
    pub async fn pending_switches(&self) -> Result<BTreeMap<String, String>, AdminError> {
        self.ask(Cmd::PendingSwitches).await
    }

    /// Applies a cluster decision; the hash of the tables it gives.
    pub async fn decided(
        &self,
        number: u64,
        why: String,
        states: Vec<DecidedState>,
        active: Option<BTreeMap<String, String>>,
    ) -> Result<String, AdminError> {
        self.ask(|reply| Cmd::Decided {
            number,
            why,
            states,
            active,
            reply,
        })
        .await?
        .map_err(AdminError::Conflict)
    }
}
