//! The elected leader turns the nodes' observations into numbered
//! decisions. [`next`] is the policy, pure; [`run`] is the task: it
//! campaigns (etcd's election API, under the node's lease), reads the
//! cluster's keys and writes each decision in a transaction that holds
//! only while its election key is the one it won (a deposed leader's write
//! fails) and the decision is the one it read (no lost update).
//!
//! The policy:
//! - A backend's health changes only when a strict majority of the live
//!   nodes that report it sees the change (hysteresis both ways: with two
//!   nodes, one node cut off from a backend moves nothing; the node's own
//!   announcement gate withdraws it instead).
//! - An operator override (drain, disable) from `admin/` wins over health.
//! - A tier change of an active-passive service is fence-then-switch: first
//!   a decision in which nothing of the service takes new flows (every
//!   backend that would be up is held draining), then, once every live
//!   node has acknowledged it (or its lease lapsed and etcd deleted its
//!   keys), the decision with the new tier. No node ever serves one tier
//!   while another serves the other.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    etcd::Session,
    keys::{self, Ack, AdminOverride, Decision, Observation},
};
use crate::{config::Service, model::State};

/// What the leader reads before deciding.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// Nodes with a live lease (`nodes/`).
    pub live: BTreeSet<String>,
    pub obs: BTreeMap<String, Observation>,
    pub acks: BTreeMap<String, Ack>,
    /// (service, backend) -> override.
    pub admin: BTreeMap<(String, String), AdminOverride>,
    /// Operators' releases of fenced backends.
    pub releases: BTreeSet<(String, String)>,
    /// Promote hook records: (service, token) -> record.
    pub promotes: BTreeMap<(String, u64), super::keys::PromoteRecord>,
}

/// What the leader itself knows of running promotions.
#[derive(Debug, Default, Clone)]
pub struct Promotions {
    /// Services with a promotion task running: left as they are.
    pub busy: BTreeSet<String>,
    /// Finished attempts not yet in a decision: the candidate, and `Ok`
    /// (make it the active) or `Err(why)` (fence it).
    pub done: BTreeMap<String, (String, Result<(), String>)>,
}

/// The tier of `svc` whose backends take new flows in `d` (the first with
/// one up), as the dataplane picks it.
pub fn serving_tier(s: &Service, states: Option<&BTreeMap<String, State>>) -> Option<usize> {
    let states = states?;
    s.tiers.iter().position(|t| {
        t.iter()
            .any(|b| states.get(&b.name).is_some_and(|st| *st == State::Up))
    })
}

/// The next decision's services and its reason, or `None` if nothing
/// changes. `cur` is the decision in force.
pub fn next(
    services: &[Service],
    cur: &Decision,
    inp: &Inputs,
    promos: &Promotions,
) -> Option<Decision> {
    let health = &cur.health;
    let observers: Vec<&Observation> = inp.live.iter().filter_map(|n| inp.obs.get(n)).collect();
    let all_acked = inp
        .live
        .iter()
        .all(|n| inp.acks.get(n).is_some_and(|a| a.number >= cur.number));
    let mut out = Decision {
        number: cur.number + 1,
        leader: String::new(),
        services: BTreeMap::new(),
        health: BTreeMap::new(),
        active: BTreeMap::new(),
        fenced: BTreeMap::new(),
        lost_active: BTreeMap::new(),
        failed: BTreeMap::new(),
        planned: BTreeMap::new(),
        switch_to: BTreeMap::new(),
        why: String::new(),
        fence: false,
    };
    let mut whys: Vec<String> = Vec::new();
    for s in services {
        let mut h: BTreeMap<String, bool> = BTreeMap::new();
        let mut target: BTreeMap<String, State> = BTreeMap::new();
        for b in s.tiers.iter().flatten() {
            let prev = health.get(&s.name).and_then(|m| m.get(&b.name)).copied();
            let (mut up, mut n) = (0usize, 0usize);
            // With roles, only healths taken with the check the backend's
            // role wants count (a result in flight across a role change
            // says nothing).
            let wants_active = s
                .promotion
                .as_ref()
                .map(|_| match promos.done.get(&s.name) {
                    Some((c, Ok(()))) => c == &b.name,
                    _ => {
                        cur.active.get(&s.name) == Some(&b.name)
                            || cur.number == 0
                                && s.tiers
                                    .first()
                                    .and_then(|t| t.first())
                                    .is_some_and(|f| f.name == b.name)
                    }
                });
            for o in &observers {
                if let Some(w) = wants_active {
                    let probed_active = o
                        .active_checked
                        .get(&s.name)
                        .is_some_and(|m| m.contains(&b.name));
                    if probed_active != w {
                        continue;
                    }
                }
                if let Some(v) = o.services.get(&s.name).and_then(|m| m.get(&b.name)) {
                    n += 1;
                    up += usize::from(*v);
                }
            }
            let promoted = matches!(promos.done.get(&s.name), Some((c, Ok(()))) if c == &b.name);
            let now = match prev {
                // The leader's promotion task saw it pass the active check.
                _ if promoted => true,
                _ if n == 0 => prev.unwrap_or(false),
                Some(true) => (n - up) * 2 <= n,
                Some(false) | None => up * 2 > n,
            };
            if prev.is_some() && prev != Some(now) {
                whys.push(format!(
                    "{}/{} {} ({up} of {n} nodes see it healthy)",
                    s.name,
                    b.name,
                    if now { "up" } else { "down" }
                ));
            }
            h.insert(b.name.clone(), now);
            // Operator overrides: etcd's `admin/` keys and every live
            // node's own (the strongest wins).
            let ov = observers
                .iter()
                .filter_map(|o| o.overrides.get(&s.name).and_then(|m| m.get(&b.name)))
                .chain(inp.admin.get(&(s.name.clone(), b.name.clone())))
                .max()
                .copied();
            let st = match ov {
                Some(AdminOverride::Disable) => State::Disabled,
                Some(AdminOverride::Drain) => State::Draining,
                None if now => State::Up,
                None => State::Down,
            };
            target.insert(b.name.clone(), st);
        }
        let cur_states = cur.services.get(&s.name);
        if s.promotion.is_some() {
            roles(
                s,
                cur,
                inp,
                promos,
                &mut h,
                &mut target,
                &mut out,
                &mut whys,
            );
        } else if s.active_passive() {
            let was = serving_tier(s, cur_states);
            let will = serving_tier(s, Some(&target));
            if was.is_some() && will.is_some() && was != will {
                // Fence: nothing of the service takes new flows.
                for st in target.values_mut() {
                    if *st == State::Up {
                        *st = State::Draining;
                    }
                }
                out.fence = true;
                whys.push(format!(
                    "{}: fence before moving from tier {} to tier {}",
                    s.name,
                    was.unwrap_or(0),
                    will.unwrap_or(0)
                ));
            } else if was.is_none() && will.is_some() && !all_acked {
                // The fence (or the dark state) is not acknowledged by
                // every live node yet: hold.
                if let Some(c) = cur_states {
                    target = c.clone();
                }
            }
        }
        out.health.insert(s.name.clone(), h);
        out.services.insert(s.name.clone(), target);
    }
    if out.services == cur.services
        && out.health == cur.health
        && out.active == cur.active
        && out.fenced == cur.fenced
        && out.failed == cur.failed
        && out.lost_active == cur.lost_active
        && out.planned == cur.planned
        && out.switch_to == cur.switch_to
    {
        return None;
    }
    out.why = if whys.is_empty() {
        "states agreed".to_string()
    } else {
        whys.join("; ")
    };
    Some(out)
}

/// A service with roles (`[service.promotion]`): only the active takes new
/// flows. A lost active is fenced (a fence decision: nothing serves) and
/// the leader's promotion task is started for the best healthy standby
/// once every node acknowledged the fence; its outcome comes back in
/// `promos.done`.
#[allow(clippy::too_many_arguments)]
fn roles(
    s: &Service,
    cur: &Decision,
    inp: &Inputs,
    promos: &Promotions,
    h: &mut BTreeMap<String, bool>,
    target: &mut BTreeMap<String, State>,
    out: &mut Decision,
    whys: &mut Vec<String>,
) {
    let name = &s.name;
    if promos.busy.contains(name) {
        // A promotion runs: the service stays as it is.
        if let Some(c) = cur.services.get(name) {
            *target = c.clone();
        }
        for (m, c) in [
            (&mut out.active, &cur.active),
            (&mut out.lost_active, &cur.lost_active),
            (&mut out.failed, &cur.failed),
        ] {
            if let Some(v) = c.get(name) {
                m.insert(name.clone(), v.clone());
            }
        }
        for (m, c) in [
            (&mut out.fenced, &cur.fenced),
            (&mut out.planned, &cur.planned),
        ] {
            if let Some(f) = c.get(name) {
                m.insert(name.clone(), f.clone());
            }
        }
        if let Some(t) = cur.switch_to.get(name) {
            out.switch_to.insert(name.clone(), t.clone());
        }
        return;
    }
    let mut fenced = cur.fenced.get(name).cloned().unwrap_or_default();
    fenced.retain(|b| {
        let released = inp.releases.contains(&(name.clone(), b.clone()));
        if released {
            whys.push(format!("{name}/{b} released by an operator"));
        }
        !released
    });
    let mut active = if cur.number == 0 {
        s.tiers
            .first()
            .and_then(|t| t.first())
            .map(|b| b.name.clone())
    } else {
        cur.active.get(name).cloned()
    };
    let mut lost = cur.lost_active.get(name).cloned();
    let mut failed = cur.failed.get(name).cloned();
    let mut planned = cur.planned.get(name).cloned().unwrap_or_default();
    let mut switch_to = cur.switch_to.get(name).cloned();
    // A planned fence is lifted once the nodes agree the old active passes
    // the standby check (its health is only counted from that check now).
    planned.retain(|b| {
        let ok = h.get(b).copied().unwrap_or(false) && active.as_deref() != Some(b.as_str());
        if ok {
            fenced.remove(b);
            whys.push(format!(
                "{name}/{b} passes the standby check: no longer fenced"
            ));
        }
        !ok
    });
    match promos.done.get(name) {
        Some((c, Ok(()))) => {
            whys.push(format!("{name}: {c} promoted and ready"));
            active = Some(c.clone());
            lost = None;
            failed = None;
            switch_to = None;
        }
        Some((c, Err(why))) => {
            whys.push(format!("{name}: promoting {c} failed ({why}); fenced"));
            fenced.insert(c.clone());
            failed = Some(format!("{c}: {why}"));
            switch_to = None;
        }
        None => {}
    }
    // A planned switchover asked of any live node (the smallest target if
    // nodes disagree): fence the active, promote the target.
    let asked = inp
        .live
        .iter()
        .filter_map(|n| inp.obs.get(n))
        .filter_map(|o| o.switch_to.get(name))
        .min()
        .cloned();
    if let (Some(a), Some(to)) = (active.clone(), asked)
        && a != to
        && switch_to.is_none()
        && h.get(&to).copied().unwrap_or(false)
        && !fenced.contains(&to)
        && s.tiers.iter().flatten().any(|b| b.name == to)
    {
        whys.push(format!(
            "{name}: planned switchover from {a} to {to}; {a} fenced"
        ));
        // Its health is unknown until the standby check says otherwise
        // (what the nodes saw so far came from the active check).
        h.insert(a.clone(), false);
        fenced.insert(a.clone());
        planned.insert(a.clone());
        lost = Some(a);
        active = None;
        switch_to = Some(to);
        out.fence = true;
    }
    if let Some(a) = active.clone()
        && !h.get(&a).copied().unwrap_or(false)
    {
        whys.push(format!("{name}: the active {a} is lost; fenced"));
        fenced.insert(a.clone());
        lost = Some(a);
        active = None;
        out.fence = true;
    }
    for (b, st) in target.iter_mut() {
        if active.as_deref() != Some(b.as_str()) && *st == State::Up {
            *st = State::Down;
        }
    }
    if let Some(a) = active {
        out.active.insert(name.clone(), a);
    } else {
        if let Some(l) = lost {
            out.lost_active.insert(name.clone(), l);
        }
        if let Some(f) = failed {
            out.failed.insert(name.clone(), f);
        }
    }
    if !fenced.is_empty() {
        out.fenced.insert(name.clone(), fenced);
    }
    if !planned.is_empty() {
        out.planned.insert(name.clone(), planned);
    }
    if let Some(t) = switch_to {
        out.switch_to.insert(name.clone(), t);
    }
}

/// The standby to promote for `s` under decision `d`: healthy (by the
/// standby check, as agreed), not fenced, the first by tier.
pub fn candidate(s: &Service, d: &Decision) -> Option<String> {
    let fenced = d.fenced.get(&s.name);
    let health = d.health.get(&s.name)?;
    if let Some(to) = d.switch_to.get(&s.name) {
        // A planned switchover promotes its target or nothing.
        return (health.get(to).copied().unwrap_or(false)
            && fenced.is_none_or(|f| !f.contains(to)))
        .then(|| to.clone());
    }
    s.tiers
        .iter()
        .flatten()
        .map(|b| &b.name)
        .find(|b| {
            health.get(*b).copied().unwrap_or(false) && fenced.is_none_or(|f| !f.contains(*b))
        })
        .cloned()
}

/// Reads everything under `prefix` once (one linearizable range read):
/// the decision in force (with its mod revision) and the inputs.
async fn read(
    client: &mut etcd_client::Client,
    prefix: &str,
) -> Result<(Decision, i64, Inputs), etcd_client::Error> {
    let r = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut inp = Inputs::default();
    let mut cur = Decision::default();
    let mut cur_rev = 0;
    let dkey = keys::decision(prefix);
    for kv in r.kvs() {
        let Ok(k) = kv.key_str() else { continue };
        let v = kv.value();
        if k == dkey {
            match serde_json::from_slice::<Decision>(v) {
                Ok(d) => {
                    cur = d;
                    cur_rev = kv.mod_revision();
                }
                Err(e) => warn!(error = %e, "etcd: unreadable decision"),
            }
        } else if let Some(n) = k.strip_prefix(&keys::nodes(prefix)) {
            inp.live.insert(n.to_string());
        } else if let Some(n) = k.strip_prefix(&keys::obs(prefix)) {
            if let Ok(o) = serde_json::from_slice::<Observation>(v) {
                inp.obs.insert(n.to_string(), o);
            }
        } else if let Some(n) = k.strip_prefix(&keys::acks(prefix)) {
            if let Ok(a) = serde_json::from_slice::<Ack>(v) {
                inp.acks.insert(n.to_string(), a);
            }
        } else if let Some(rest) = k.strip_prefix(&keys::releases(prefix))
            && let Some((svc, be)) = rest.split_once('/')
        {
            inp.releases.insert((svc.to_string(), be.to_string()));
        } else if k.starts_with(&keys::promotes(prefix)) {
            if let Ok(r) = serde_json::from_slice::<super::keys::PromoteRecord>(v) {
                inp.promotes.insert((r.service.clone(), r.token), r);
            }
        } else if let Some(rest) = k.strip_prefix(&keys::admin(prefix))
            && let Some((svc, be)) = rest.split_once('/')
            && let Ok(o) = serde_json::from_slice::<AdminOverride>(v)
        {
            inp.admin.insert((svc.to_string(), be.to_string()), o);
        }
    }
    Ok((cur, cur_rev, inp))
}

/// The leader task: campaign, then decide every `period` while leader.
pub async fn run(
    prefix: String,
    node: String,
    services: Vec<Service>,
    session: watch::Receiver<Session>,
    is_leader: watch::Sender<bool>,
    metrics: crate::observe::metrics::Shared,
    mut stop: watch::Receiver<bool>,
) {
    let period = Duration::from_millis(25);
    loop {
        let s = session.borrow().clone();
        let (Some(mut client), lease) = (s.client.clone(), s.lease) else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = stop.changed() => return,
            }
        };
        if lease == 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = stop.changed() => return,
            }
        }
        // Blocks until this node leads (or the lease is gone).
        let won = tokio::select! {
            r = client.campaign(keys::election(&prefix), node.as_str(), lease) => r,
            _ = stop.changed() => return,
        };
        let key = match won {
            Ok(r) => match r.leader() {
                Some(k) => k.clone(),
                None => continue,
            },
            Err(e) => {
                warn!(error = %e, "etcd: campaign failed (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        info!(node = %node, "cluster: elected leader");
        is_leader.send_replace(true);
        let lkey = key.key().to_vec();
        let lrev = key.rev();
        // This leadership's promotions (a new leadership starts afresh:
        // tasks of an old one report into a dropped channel).
        let (done_tx, mut done_rx) =
            tokio::sync::mpsc::unbounded_channel::<super::promote::Outcome>();
        let mut promos = Promotions::default();
        loop {
            if session.borrow().lease != lease {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => { is_leader.send_replace(false); return; }
            }
            let (cur, cur_rev, inp) = match read(&mut client, &prefix).await {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %e, "cluster leader: reading the cluster failed");
                    continue;
                }
            };
            // Do the nodes on the decision in force build the same tables?
            let hashes: BTreeSet<&str> = inp
                .live
                .iter()
                .filter_map(|n| inp.acks.get(n))
                .filter(|a| a.number == cur.number)
                .map(|a| a.tables.as_str())
                .collect();
            let agree = hashes.len() <= 1;
            if let Ok(mut m) = metrics.lock() {
                let c = m.cluster.get_or_insert_with(Default::default);
                if c.tables_agree != agree && !agree {
                    warn!(decision = cur.number, hashes = ?hashes, "cluster: the nodes' Maglev tables differ (different configs?): flows that move between nodes may change backend");
                }
                c.tables_agree = agree;
            }
            // Finished promotion attempts.
            while let Ok(o) = done_rx.try_recv() {
                promos.busy.remove(&o.service);
                promos
                    .done
                    .insert(o.service.clone(), (o.candidate, o.result));
            }
            // Promotions due: no active, the fence acknowledged by every
            // live node, a candidate.
            let all_acked = inp
                .live
                .iter()
                .all(|n| inp.acks.get(n).is_some_and(|a| a.number >= cur.number));
            for s in services.iter().filter(|s| s.promotion.is_some()) {
                if cur.number == 0
                    || cur.active.contains_key(&s.name)
                    || promos.busy.contains(&s.name)
                    || promos.done.contains_key(&s.name)
                    || !all_acked
                {
                    continue;
                }
                // Started for this token already (by a leader before us)?
                let (cand, resume) = match inp.promotes.get(&(s.name.clone(), cur.number)) {
                    Some(r) if matches!(r.state.as_str(), "started" | "hook-ok" | "done") => {
                        (Some(r.candidate.clone()), true)
                    }
                    Some(r) => {
                        promos.done.insert(
                            s.name.clone(),
                            (
                                r.candidate.clone(),
                                Err(format!("attempt {}: {}", r.token, r.state)),
                            ),
                        );
                        continue;
                    }
                    None => (candidate(s, &cur), false),
                };
                let Some(cand) = cand else { continue };
                promos.busy.insert(s.name.clone());
                let ctx = super::promote::Ctx {
                    client: client.clone(),
                    prefix: prefix.clone(),
                    node: node.clone(),
                    leader_key: lkey.clone(),
                    leader_rev: lrev,
                    tx: done_tx.clone(),
                };
                tokio::spawn(super::promote::run(
                    ctx,
                    s.clone(),
                    cur.number,
                    cur.lost_active.get(&s.name).cloned(),
                    cand,
                    resume,
                ));
            }
            let Some(mut d) = next(&services, &cur, &inp, &promos) else {
                continue;
            };
            d.leader = node.clone();
            let Ok(text) = serde_json::to_vec(&d) else {
                continue;
            };
            let dkey = keys::decision(&prefix);
            let mut ops = vec![TxnOp::put(dkey.as_str(), text, None)];
            // Consumed releases go with the decision.
            for (svc, b) in &inp.releases {
                ops.push(TxnOp::delete(keys::release_of(&prefix, svc, b), None));
            }
            let txn = Txn::new()
                .when(vec![
                    Compare::create_revision(lkey.clone(), CompareOp::Equal, lrev),
                    Compare::mod_revision(dkey.as_str(), CompareOp::Equal, cur_rev),
                ])
                .and_then(ops);
            match client.txn(txn).await {
                Ok(r) if r.succeeded() => {
                    info!(number = d.number, fence = d.fence, why = %d.why, "cluster: decided");
                    // The finished attempts are in this decision.
                    promos.done.clear();
                }
                Ok(_) => {
                    // Deposed, or someone else wrote: check who leads.
                    match client.leader(keys::election(&prefix)).await {
                        Ok(l) if l.kv().is_some_and(|kv| kv.key() == lkey.as_slice()) => {}
                        _ => break,
                    }
                }
                Err(e) => warn!(error = %e, "cluster leader: writing the decision failed"),
            }
        }
        is_leader.send_replace(false);
        info!(node = %node, "cluster: no longer leader");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<Service> {
        let cfg = crate::config::parse(
            r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "ap"
vip = "198.18.100.10"
port = 80
[[service.backend]]
name = "b1"
address = "198.18.1.2"
[[service.backend]]
name = "b2"
address = "198.18.2.2"
tier = 1
"#,
            "test",
        )
        .expect("config");
        cfg.services
    }

    fn obs(node: &str, b1: bool, b2: bool) -> (String, Observation) {
        let mut m = BTreeMap::new();
        m.insert("b1".to_string(), b1);
        m.insert("b2".to_string(), b2);
        let mut s = BTreeMap::new();
        s.insert("ap".to_string(), m);
        (
            node.to_string(),
            Observation {
                node: node.to_string(),
                services: s,
                overrides: BTreeMap::new(),
                // With roles: b1, the first active, gets the active check.
                active_checked: [("ap".to_string(), ["b1".to_string()].into())].into(),
                switch_to: BTreeMap::new(),
            },
        )
    }

    fn inputs(o: &[(String, Observation)], acked: u64) -> Inputs {
        Inputs {
            live: o.iter().map(|(n, _)| n.clone()).collect(),
            obs: o.iter().cloned().collect(),
            acks: o
                .iter()
                .map(|(n, _)| {
                    (
                        n.clone(),
                        Ack {
                            node: n.clone(),
                            number: acked,
                            tables: String::new(),
                        },
                    )
                })
                .collect(),
            admin: BTreeMap::new(),
            releases: BTreeSet::new(),
            promotes: BTreeMap::new(),
        }
    }

    /// The next decision after `cur` with these observations, every node
    /// having acknowledged decision `acked`, no promotion running.
    fn step(
        svcs: &[Service],
        cur: &Decision,
        o: &[(String, Observation)],
        acked: u64,
    ) -> Option<Decision> {
        next(svcs, cur, &inputs(o, acked), &Promotions::default())
    }

    fn st(d: &Decision, b: &str) -> State {
        d.services["ap"][b]
    }

    #[test]
    fn failover_is_fence_then_switch_and_one_node_moves_nothing() {
        let svcs = services();
        let cur = Decision::default();
        // Both nodes see both healthy: tier 0 serves.
        let d1 = step(
            &svcs,
            &cur,
            &[obs("a", true, true), obs("b", true, true)],
            0,
        )
        .expect("first");
        assert_eq!((st(&d1, "b1"), st(&d1, "b2")), (State::Up, State::Up));
        // One node cut off from b1: nothing moves.
        assert!(
            step(
                &svcs,
                &d1,
                &[obs("a", false, true), obs("b", true, true)],
                1
            )
            .is_none()
        );
        // Both see b1 dead: a fence first (nothing takes new flows) ...
        let d2 = step(
            &svcs,
            &d1,
            &[obs("a", false, true), obs("b", false, true)],
            1,
        )
        .expect("fence");
        assert!(d2.fence);
        assert_eq!(
            (st(&d2, "b1"), st(&d2, "b2")),
            (State::Down, State::Draining)
        );
        // ... held until every live node acknowledged it ...
        assert!(
            step(
                &svcs,
                &d2,
                &[obs("a", false, true), obs("b", false, true)],
                1
            )
            .is_none()
        );
        // ... then tier 1.
        let d3 = step(
            &svcs,
            &d2,
            &[obs("a", false, true), obs("b", false, true)],
            2,
        )
        .expect("switch");
        assert!(!d3.fence);
        assert_eq!((st(&d3, "b1"), st(&d3, "b2")), (State::Down, State::Up));
        // b1 back on one node only: stays down (both must see it).
        assert!(
            step(
                &svcs,
                &d3,
                &[obs("a", true, true), obs("b", false, true)],
                3
            )
            .is_none()
        );
        // A lone surviving node decides alone.
        let d4 = step(&svcs, &d3, &[obs("a", true, true)], 3).expect("failback fence");
        assert!(d4.fence);
        assert_eq!(
            (st(&d4, "b1"), st(&d4, "b2")),
            (State::Draining, State::Draining)
        );
    }

    #[test]
    fn an_override_on_any_node_holds_cluster_wide() {
        let svcs = services();
        let both =
            |a: (String, Observation), b: (String, Observation), acked| inputs(&[a, b], acked);
        let d1 = next(
            &svcs,
            &Decision::default(),
            &both(obs("a", true, true), obs("b", true, true), 0),
            &Promotions::default(),
        )
        .expect("first");
        let (na, mut oa) = obs("a", true, true);
        oa.overrides
            .entry("ap".into())
            .or_default()
            .insert("b2".into(), AdminOverride::Drain);
        let d2 = next(
            &svcs,
            &d1,
            &both((na.clone(), oa.clone()), obs("b", true, true), 1),
            &Promotions::default(),
        )
        .expect("drain");
        assert_eq!((st(&d2, "b1"), st(&d2, "b2")), (State::Up, State::Draining));
        // Disable wins over drain.
        let (nb, mut ob) = obs("b", true, true);
        ob.overrides
            .entry("ap".into())
            .or_default()
            .insert("b2".into(), AdminOverride::Disable);
        let d3 = next(
            &svcs,
            &d2,
            &both((na, oa), (nb, ob), 2),
            &Promotions::default(),
        )
        .expect("disable");
        assert_eq!(st(&d3, "b2"), State::Disabled);
        // Lifted everywhere: back to health.
        let d4 = next(
            &svcs,
            &d3,
            &both(obs("a", true, true), obs("b", true, true), 3),
            &Promotions::default(),
        )
        .expect("lifted");
        assert_eq!(st(&d4, "b2"), State::Up);
    }

    fn roles_services() -> Vec<Service> {
        crate::config::parse(
            r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "ap"
vip = "198.18.100.20"
port = 5432
[[service.backend]]
name = "b1"
address = "198.18.1.2"
[[service.backend]]
name = "b2"
address = "198.18.2.2"
tier = 1
[service.check]
type = "tcp"
[service.promotion]
promote = ["/bin/true"]
[service.promotion.standby_check]
type = "tcp"
"#,
            "test",
        )
        .expect("config")
        .services
    }

    #[test]
    fn roles_fence_then_promote_once_then_fence_the_old_active() {
        let svcs = roles_services();
        let idle = Promotions::default();
        let healthy = |b1, b2| inputs(&[obs("a", b1, b2), obs("b", b1, b2)], 0);
        // First decision: the tier-0 backend is the active, alone up.
        let d1 = next(&svcs, &Decision::default(), &healthy(true, true), &idle).expect("first");
        assert_eq!(d1.active.get("ap").map(String::as_str), Some("b1"));
        assert_eq!((st(&d1, "b1"), st(&d1, "b2")), (State::Up, State::Down));
        // The active lost by both nodes: a fence, nothing serves, b1 fenced.
        let d2 = next(&svcs, &d1, &healthy(false, true), &idle).expect("fence");
        assert!(d2.fence && !d2.active.contains_key("ap"));
        assert_eq!((st(&d2, "b1"), st(&d2, "b2")), (State::Down, State::Down));
        assert_eq!(d2.lost_active.get("ap").map(String::as_str), Some("b1"));
        assert_eq!(candidate(&svcs[0], &d2).as_deref(), Some("b2"));
        // While the promotion runs, nothing changes.
        let busy = Promotions {
            busy: ["ap".to_string()].into(),
            ..Default::default()
        };
        assert!(next(&svcs, &d2, &healthy(false, true), &busy).is_none());
        // Ready: b2 is the active; b1 stays fenced even once healthy.
        let ready = Promotions {
            done: [("ap".to_string(), ("b2".to_string(), Ok(())))].into(),
            ..Default::default()
        };
        let d3 = next(&svcs, &d2, &healthy(true, true), &ready).expect("promoted");
        assert_eq!(d3.active.get("ap").map(String::as_str), Some("b2"));
        assert_eq!((st(&d3, "b1"), st(&d3, "b2")), (State::Down, State::Up));
        assert!(
            d3.fenced.get("ap").is_some_and(|f| f.contains("b1")),
            "{d3:#?}"
        );
        assert_eq!(candidate(&svcs[0], &d3).as_deref(), Some("b2"));
        // A failed attempt fences the candidate: no candidate left.
        let failed = Promotions {
            done: [(
                "ap".to_string(),
                ("b2".to_string(), Err("hook".to_string())),
            )]
            .into(),
            ..Default::default()
        };
        let d3b = next(&svcs, &d2, &healthy(false, true), &failed).expect("failed");
        assert!(d3b.failed.contains_key("ap"));
        assert_eq!(candidate(&svcs[0], &d3b), None);
        // An operator's release of b1 makes it a candidate again (the
        // nodes probe it with the standby check now).
        let mut rel = healthy(true, true);
        for o in rel.obs.values_mut() {
            o.active_checked.clear();
        }
        rel.releases.insert(("ap".into(), "b1".into()));
        let d4 = next(&svcs, &d3b, &rel, &idle).expect("released");
        assert_eq!(candidate(&svcs[0], &d4).as_deref(), Some("b1"));
    }

    #[test]
    fn a_planned_switchover_asked_of_any_node() {
        let svcs = roles_services();
        let idle = Promotions::default();
        let healthy = |b1, b2| inputs(&[obs("a", b1, b2), obs("b", b1, b2)], 0);
        let d1 = next(&svcs, &Decision::default(), &healthy(true, true), &idle).expect("first");
        // Node b is asked to switch to b2.
        let mut ask = healthy(true, true);
        if let Some(o) = ask.obs.get_mut("b") {
            o.switch_to.insert("ap".into(), "b2".into());
        }
        let d2 = next(&svcs, &d1, &ask, &idle).expect("fence");
        assert!(d2.fence && !d2.active.contains_key("ap"));
        assert_eq!(d2.switch_to.get("ap").map(String::as_str), Some("b2"));
        assert!(d2.planned["ap"].contains("b1") && d2.fenced["ap"].contains("b1"));
        assert_eq!(d2.health["ap"].get("b1"), Some(&false), "{d2:#?}");
        assert_eq!(candidate(&svcs[0], &d2).as_deref(), Some("b2"));
        // Promoted: b2 active; b1 stays fenced while only active-check
        // results of it are in.
        let ready = Promotions {
            done: [("ap".to_string(), ("b2".to_string(), Ok(())))].into(),
            ..Default::default()
        };
        let d3 = next(&svcs, &d2, &ask, &ready).expect("switched");
        assert_eq!(d3.active.get("ap").map(String::as_str), Some("b2"));
        assert!(!d3.switch_to.contains_key("ap"));
        assert!(
            d3.fenced.get("ap").is_some_and(|f| f.contains("b1")),
            "{d3:#?}"
        );
        // Both nodes see b1 pass the standby check: unfenced.
        let mut standby = healthy(true, true);
        for o in standby.obs.values_mut() {
            o.active_checked = [("ap".to_string(), ["b2".to_string()].into())].into();
        }
        let d4 = next(&svcs, &d3, &standby, &idle).expect("unfenced");
        assert!(d4.fenced.get("ap").is_none_or(|f| !f.contains("b1")));
        assert_eq!((st(&d4, "b1"), st(&d4, "b2")), (State::Down, State::Up));
    }
}
