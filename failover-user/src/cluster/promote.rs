//! A promotion in a cluster (`[service.promotion]` with `[cluster.etcd]`):
//! run by the elected leader only, once per decision cluster-wide.
//!
//! When the active is lost, the leader's policy (`leader::next`) decides a
//! fence: nothing of the service takes new flows. Once every live node has
//! acknowledged it, the leader starts this task with the fence decision's
//! number as the fencing token:
//! 1. a create-only transaction records `promote/<service>/<token>`
//!    (only while this node still leads): a second leader, or this one
//!    again, can never start the hook for that token a second time;
//! 2. the fence hook (old active), then the promote hook (candidate), with
//!    `{token}` = the decision number;
//! 3. the candidate is probed with the active check until it passes,
//!    within `ready_within`;
//! 4. the outcome goes back to the leader, whose next decision makes the
//!    candidate the active (and fences the old one), or fences the
//!    candidate and tries the next.
//!
//! A leader that takes over mid-promotion finds the record and resumes at
//! step 3: the hook is not run again.

use std::{net::SocketAddr, time::Duration};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::keys::{self, PromoteRecord};
use crate::{
    config::{HookSpec, Service},
    observe::hooks,
    probe::{self, Target},
    sys::exec::fill_placeholders,
};

/// What a promotion task reports to the leader loop.
#[derive(Debug)]
pub struct Outcome {
    pub service: String,
    pub token: u64,
    pub candidate: String,
    /// `Ok`: ready, make it the active. `Err`: fence it, try the next.
    pub result: Result<(), String>,
}

/// Where the task runs.
pub struct Ctx {
    pub client: etcd_client::Client,
    pub prefix: String,
    pub node: String,
    /// The election key this node won, and its create revision.
    pub leader_key: Vec<u8>,
    pub leader_rev: i64,
    pub tx: mpsc::UnboundedSender<Outcome>,
}

fn addr_of(s: &Service, backend: &str) -> Option<SocketAddr> {
    s.tiers
        .iter()
        .flatten()
        .find(|b| b.name == backend)
        .map(|b| SocketAddr::new(b.address, b.port))
}

async fn record(ctx: &mut Ctx, r: &PromoteRecord) {
    let Ok(text) = serde_json::to_string(r) else {
        return;
    };
    if let Err(e) = ctx
        .client
        .put(
            keys::promote_of(&ctx.prefix, &r.service, r.token),
            text,
            None,
        )
        .await
    {
        warn!(error = %e, "cluster: recording the promotion's progress failed");
    }
}

/// Runs (or, with `resume`, resumes after another leader) the promotion of
/// `candidate` for service `s` with token `token`.
pub async fn run(
    mut ctx: Ctx,
    s: Service,
    token: u64,
    old_active: Option<String>,
    candidate: String,
    resume: bool,
) {
    let result = steps(
        &mut ctx,
        &s,
        token,
        old_active.as_deref(),
        &candidate,
        resume,
    )
    .await;
    if let Err(why) = &result {
        warn!(service = %s.name, token, candidate = %candidate, why = %why, "cluster: promotion attempt failed");
    }
    let _ = ctx.tx.send(Outcome {
        service: s.name.clone(),
        token,
        candidate,
        result,
    });
}

async fn steps(
    ctx: &mut Ctx,
    s: &Service,
    token: u64,
    old_active: Option<&str>,
    candidate: &str,
    resume: bool,
) -> Result<(), String> {
    let Some(p) = s.promotion.as_ref() else {
        return Err("no [service.promotion]".into());
    };
    let addr = addr_of(s, candidate).ok_or_else(|| format!("no backend {candidate}"))?;
    let mut rec = PromoteRecord {
        service: s.name.clone(),
        token,
        candidate: candidate.to_string(),
        leader: ctx.node.clone(),
        state: "started".into(),
    };
    if !resume {
        // At most once per token, and only while this node leads.
        let key = keys::promote_of(&ctx.prefix, &s.name, token);
        let text = serde_json::to_string(&rec).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(ctx.leader_key.clone(), CompareOp::Equal, ctx.leader_rev),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then(vec![TxnOp::put(key.as_str(), text, None)]);
        match ctx.client.txn(txn).await {
            Ok(r) if r.succeeded() => {}
            Ok(_) => return Err("not recorded (no longer leader, or already started)".into()),
            Err(e) => return Err(format!("recording the promotion: {e}")),
        }
        info!(service = %s.name, token, candidate, "cluster: promotion started (recorded)");
        let env = |to: bool| -> Vec<(String, String)> {
            let mut v = vec![
                ("FAILOVER_KIND".to_string(), "promotion".to_string()),
                ("FAILOVER_SERVICE".to_string(), s.name.clone()),
                ("FAILOVER_CAUSE".to_string(), "cluster".to_string()),
                ("FAILOVER_TOKEN".to_string(), token.to_string()),
                ("FAILOVER_NODE".to_string(), ctx.node.clone()),
            ];
            if let Some(o) = old_active {
                v.push(("FAILOVER_FROM".into(), o.to_string()));
            }
            if to {
                v.push(("FAILOVER_TO".into(), candidate.to_string()));
                v.push(("FAILOVER_TO_ADDRESS".into(), addr.ip().to_string()));
            }
            v
        };
        let fill = |hook: &crate::config::Hook, backend: &str, a: SocketAddr| {
            let mut h = hook.clone();
            if let HookSpec::Exec { command } = &mut h.spec {
                *command = fill_placeholders(
                    command,
                    &[
                        ("backend", backend),
                        ("address", &a.ip().to_string()),
                        ("port", &a.port().to_string()),
                        ("token", &token.to_string()),
                        ("service", &s.name),
                    ],
                );
            }
            h
        };
        let json = serde_json::json!({
            "kind": "promotion", "service": s.name, "cause": "cluster",
            "token": token, "backend": candidate, "node": ctx.node,
        })
        .to_string();
        if let (Some(f), Some(o)) = (&p.fence, old_active)
            && let Some(oa) = addr_of(s, o)
        {
            let out = hooks::run(&fill(f, o, oa), &json, &env(false)).await;
            if !out.ok {
                rec.state = "hook-failed".into();
                record(ctx, &rec).await;
                return Err(format!("the fence hook failed for {o}: {}", out.detail));
            }
        }
        let out = hooks::run(&fill(&p.promote, candidate, addr), &json, &env(true)).await;
        rec.state = if out.ok { "hook-ok" } else { "hook-failed" }.into();
        record(ctx, &rec).await;
        if !out.ok {
            return Err(format!("the promote hook failed: {}", out.detail));
        }
    } else {
        info!(service = %s.name, token, candidate, "cluster: resuming a promotion another leader started (its hook is not run again)");
    }
    // Ready: the active check passes within `ready_within`.
    let check = s.check.as_ref().ok_or("no active check")?;
    let target = Target {
        service: s.name.clone(),
        backend: candidate.to_string(),
        addr: SocketAddr::new(addr.ip(), check.port.unwrap_or(addr.port())),
    };
    let deadline = tokio::time::Instant::now() + p.ready_within;
    loop {
        let r = probe::probe(&check.probe, &target, check.timeout).await;
        if r.ok {
            rec.state = "done".into();
            record(ctx, &rec).await;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            rec.state = "not-ready".into();
            record(ctx, &rec).await;
            return Err(format!(
                "not ready within {:?}: {}",
                p.ready_within, r.detail
            ));
        }
        tokio::time::sleep(check.interval.min(Duration::from_millis(100))).await;
    }
}
