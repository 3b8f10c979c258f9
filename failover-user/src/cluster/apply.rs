//! Every node: reads its own views from the agent and publishes them as
//! its observation; applies each new decision through the agent and
//! acknowledges it with the hash of the tables it built.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::PutOptions;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    NodeView,
    etcd::Session,
    keys::{self, Ack, Decision, Observation},
};
use crate::agent::{AgentHandle, DecidedState};

const PERIOD: Duration = Duration::from_millis(20);

/// Refreshes the node's view of the agent every 20 ms.
pub async fn observe(
    agent: watch::Receiver<AgentHandle>,
    view: Arc<Mutex<NodeView>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let a = agent.borrow().clone();
        if let Ok(v) = a.backends().await
            && let Ok(mut nv) = view.lock()
        {
            nv.local = v;
        }
    }
}

fn observation(node: &str, view: &NodeView) -> Observation {
    let mut o = Observation {
        node: node.to_string(),
        ..Default::default()
    };
    for b in &view.local {
        if !b.role_settled {
            // Its state still carries results of the check its previous
            // role got: no evidence either way yet.
            continue;
        }
        o.services
            .entry(b.service.clone())
            .or_default()
            // Serving by this node's machine: its checks *and* its
            // failback policy (hold-down, damping, manual failback: a
            // held backend is not offered as healthy).
            .insert(
                b.backend.clone(),
                matches!(b.state, "up" | "suspect" | "standby"),
            );
        if b.role == Some("active") {
            o.active_checked
                .entry(b.service.clone())
                .or_default()
                .insert(b.backend.clone());
        }
        let ov = match b.state {
            "draining" => Some(keys::AdminOverride::Drain),
            "disabled" => Some(keys::AdminOverride::Disable),
            _ => None,
        };
        if let Some(ov) = ov {
            o.overrides
                .entry(b.service.clone())
                .or_default()
                .insert(b.backend.clone(), ov);
        }
    }
    o
}

/// Publishes observations, applies decisions, acknowledges them.
pub async fn run(
    prefix: String,
    node: String,
    agent: watch::Receiver<AgentHandle>,
    view: Arc<Mutex<NodeView>>,
    session: watch::Receiver<Session>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: Option<(u64, Observation)> = None;
    let mut acked: Option<(u64, u64)> = None;
    let mut applied: Option<Decision> = None;
    let mut first_round = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let agent = agent.borrow().clone();
        let s = session.borrow().clone();
        let now = Instant::now();
        let valid = s.valid(now);
        let snapshot = match view.lock() {
            Ok(mut v) => {
                v.lease_valid = valid;
                v.lease_grace = s.in_grace(now);
                v.clone()
            }
            Err(_) => return,
        };
        let Some(mut client) = s.client.clone() else {
            continue;
        };
        if s.lease == 0 {
            continue;
        }
        // Publish this node's observation once its checks have answered
        // (a node that has not probed yet has nothing to say).
        if !first_round {
            first_round = snapshot.attached && !snapshot.local.is_empty();
        }
        let mut obs = observation(&node, &snapshot);
        if let Ok(sw) = agent.pending_switches().await {
            obs.switch_to = sw;
        }
        if first_round && published.as_ref() != Some(&(s.generation, obs.clone())) {
            let text = serde_json::to_string(&obs).unwrap_or_default();
            match client
                .put(
                    keys::obs_of(&prefix, &node),
                    text,
                    Some(PutOptions::new().with_lease(s.lease)),
                )
                .await
            {
                Ok(_) => published = Some((s.generation, obs)),
                Err(e) => warn!(error = %e, "cluster: publishing the observation failed"),
            }
        }
        // The decision in force.
        let d = match client.get(keys::decision(&prefix), None).await {
            Ok(r) => match r
                .kvs()
                .first()
                .map(|kv| serde_json::from_slice::<Decision>(kv.value()))
            {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    warn!(error = %e, "cluster: unreadable decision");
                    continue;
                }
                None => continue,
            },
            Err(_) => continue,
        };
        if let Ok(mut v) = view.lock() {
            v.newest_seen = v.newest_seen.max(d.number);
        }
        if applied.as_ref().is_none_or(|a| a.number != d.number) {
            let states: Vec<DecidedState> = d
                .services
                .iter()
                .flat_map(|(svc, m)| {
                    m.iter().map(|(b, st)| DecidedState {
                        service: svc.clone(),
                        backend: b.clone(),
                        state: *st,
                    })
                })
                .collect();
            match agent
                .decided(d.number, d.why.clone(), states, Some(d.active.clone()))
                .await
            {
                Ok(hash) => {
                    info!(number = d.number, fence = d.fence, why = %d.why, tables = %hash, "cluster: applied");
                    applied = Some(d.clone());
                    if let Ok(mut v) = view.lock() {
                        v.applied = Some(d.clone());
                    }
                    let ack = Ack {
                        node: node.clone(),
                        number: d.number,
                        tables: hash,
                    };
                    if put_ack(&mut client, &prefix, &node, s.lease, &ack).await {
                        acked = Some((s.generation, d.number));
                    }
                }
                Err(e) => {
                    warn!(error = %e, number = d.number, "cluster: applying the decision failed")
                }
            }
        } else if acked != Some((s.generation, d.number)) {
            // A new lease (the old keys are gone), or a failed ack: again.
            if let Ok(hash) = agent
                .decided(d.number, d.why.clone(), Vec::new(), None)
                .await
            {
                let ack = Ack {
                    node: node.clone(),
                    number: d.number,
                    tables: hash,
                };
                if put_ack(&mut client, &prefix, &node, s.lease, &ack).await {
                    acked = Some((s.generation, d.number));
                }
            }
        }
    }
}

async fn put_ack(
    client: &mut etcd_client::Client,
    prefix: &str,
    node: &str,
    lease: i64,
    ack: &Ack,
) -> bool {
    let Ok(text) = serde_json::to_string(ack) else {
        return false;
    };
    match client
        .put(
            keys::ack_of(prefix, node),
            text,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e, "cluster: acknowledging the decision failed");
            false
        }
    }
}
