//! `POST /v1/services/{s}/drill`: a failover drill ("regularly test
//! failover scenarios") for a service with roles. Refused unless a standby
//! is ready; otherwise a planned switchover through the same orchestration
//! a failure runs (fence, promote with a new token, wait for the active
//! check, switch), timed, and optionally back again.
//!
//! The measured RTO runs from the fence (the old active stops taking new
//! flows) to the map write that hands new flows to the new active, which
//! is made only after the new active answered the service's own check (a
//! connection and the check's request, from the load balancer to its
//! address). A client on the load balancer cannot go through the VIP:
//! XDP sees only packets arriving on an interface, not the host's own.
//!
//! Body: `{"to": "B" (default: the first healthy standby), "back": bool,
//! "dry_run": bool}`; every drill request is audited like any admin
//! request (the response, with the plan and the measurements, is in the
//! record).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::{AdminState, Response, refusal};
use crate::{
    agent::{Agent, AgentHandle, BackendView, PromotionView},
    model::{AdminError, Cause},
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillBody {
    to: Option<String>,
    #[serde(default)]
    back: bool,
    #[serde(default)]
    dry_run: bool,
}

/// How long a drill waits for the old active to pass the standby check
/// before switching back.
const BACK_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn drill(st: &AdminState, svc: &str, body: &[u8]) -> Response {
    let b: DrillBody = if body.iter().all(u8::is_ascii_whitespace) {
        DrillBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return Response::error(
                    400,
                    &format!(
                        "body must be {{\"to\": \"B\", \"back\": bool, \"dry_run\": bool}}: {e}"
                    ),
                );
            }
        }
    };
    // A handle, not the lock: a drill waits for promotions (and a reload
    // waits for the lock).
    let handle = st.agent.read().await.as_ref().map(Agent::handle);
    let Some(agent) = handle.as_ref() else {
        return refusal(&AdminError::AgentDown);
    };
    let (promo, backends) = match (agent.promotions().await, agent.backends().await) {
        (Ok(p), Ok(b)) => (p, b),
        (Err(e), _) | (_, Err(e)) => return Response::error(503, &format!("{e:#}")),
    };
    let Some(p) = promo.into_iter().find(|p| p.service == svc) else {
        return Response::error(
            409,
            &format!(
                "{svc:?} has no [service.promotion]: a drill needs roles (an active and standbys)"
            ),
        );
    };
    let plan = match plan(&p, &backends, b.to.as_deref(), b.back) {
        Ok(plan) => plan,
        Err(why) => return Response::error(409, &why),
    };
    if b.dry_run {
        return Response::json(
            200,
            &json!({"service": svc, "dry_run": true, "plan": plan.steps}),
        );
    }
    let there = match timed_switch(st, agent, svc, &plan.to).await {
        Ok(v) => v,
        Err(e) => return refusal(&e),
    };
    let mut out = json!({
        "service": svc,
        "plan": plan.steps,
        "to": plan.to,
        "rto_ms": there.0,
        "switchover": there.1,
    });
    if b.back {
        let from = plan.from.clone();
        match wait_standby(agent, svc, &from).await {
            Ok(()) => match timed_switch(st, agent, svc, &from).await {
                Ok(back) => {
                    out["back"] = json!({"to": from, "rto_ms": back.0, "switchover": back.1});
                }
                Err(e) => out["back"] = json!({"to": from, "error": e.to_string()}),
            },
            Err(why) => out["back"] = json!({"to": from, "error": why}),
        }
    }
    Response::json(200, &out)
}

struct Plan {
    from: String,
    to: String,
    steps: Vec<String>,
}

/// The drill's steps, or why it is refused (no active, no ready standby).
fn plan(
    p: &PromotionView,
    backends: &[BackendView],
    to: Option<&str>,
    back: bool,
) -> Result<Plan, String> {
    let svc = &p.service;
    if p.phase != "serving" {
        return Err(format!(
            "{svc} is {}: a drill starts only from a serving active",
            p.phase
        ));
    }
    let Some(from) = p.active.clone() else {
        return Err(format!("{svc} has no active"));
    };
    let mut standbys: Vec<&BackendView> = backends
        .iter()
        .filter(|b| &b.service == svc && b.role == Some("standby") && b.state == "standby")
        .collect();
    standbys.sort_by_key(|b| b.tier);
    let to = match to {
        Some(t) => match standbys.iter().find(|b| b.backend == t) {
            Some(b) => b.backend.clone(),
            None => {
                return Err(format!(
                    "{t} is not a ready standby of {svc} (ready: {})",
                    names(&standbys)
                ));
            }
        },
        None => match standbys.first() {
            Some(b) => b.backend.clone(),
            None => {
                return Err(format!(
                    "{svc} has no ready standby: a drill would leave it without an active"
                ));
            }
        },
    };
    let mut steps = vec![
        format!(
            "fence {from}: no new flows (its established flows per flows_on_down), then the fence hook if any"
        ),
        format!("promote {to} with token {} (the promote hook)", p.token + 1),
        format!("wait until {to} passes the active check (promotion.ready_within)"),
        format!("switch the map to {to} in one write; measure the time since the fence"),
    ];
    if back {
        steps.push(format!(
            "wait until {from} passes the standby check (at most {}s), then the same back to {from}",
            BACK_WAIT.as_secs()
        ));
    }
    Ok(Plan { from, to, steps })
}

fn names(v: &[&BackendView]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|b| b.backend.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One switchover, timed; the RTO also goes to
/// `failover_drill_rto_seconds`.
async fn timed_switch(
    st: &AdminState,
    agent: &AgentHandle,
    svc: &str,
    to: &str,
) -> Result<(f64, crate::agent::PromotionReport), AdminError> {
    let started = Instant::now();
    let report = agent.switchover(svc, to, Cause::Drill).await?;
    let rto_ms = report.elapsed_ms.min(started.elapsed().as_secs_f64() * 1e3);
    if let Ok(mut m) = st.metrics.lock() {
        m.drill_rto.insert(svc.to_string(), rto_ms / 1e3);
    }
    Ok((rto_ms, report))
}

/// Waits until `b` is a standby again (a planned fence lifts itself once
/// the standby check passes).
async fn wait_standby(agent: &AgentHandle, svc: &str, b: &str) -> Result<(), String> {
    let deadline = Instant::now() + BACK_WAIT;
    loop {
        if let Ok(v) = agent.backends().await
            && v.iter()
                .any(|x| x.service == svc && x.backend == b && x.state == "standby")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{b} did not pass the standby check within {}s: not switched back",
                BACK_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
