//! The daemon's admin API (HTTP/1.1 on a unix socket, 0600, and optionally
//! TCP with a bearer token) and the Prometheus endpoint. Every request is
//! authorised, logged, and every action written to the audit log.
//!
//! Routes:
//! - `GET  /v1/status`: services, backends, agent and dataplane states.
//! - `POST /v1/services/{s}/backends/{b}/{drain|undrain|disable|enable|release}`
//! - `POST /v1/services/{s}/switch` with `{"to": "b"}`: drain what outranks
//!   b; with roles (`[service.promotion]`) a planned switchover to b.
//! - `POST /v1/services/{s}/drill` with `{"to", "back", "dry_run"}`: a
//!   failover drill (see `drill.rs`).
//! - `.../release?force=1`: release a fenced backend without its check.
//! - `POST /v1/reload` (`?dry_run=1`: only the diff).
//! - `POST /v1/alertmanager`: an Alertmanager webhook (token always required).
//! - `GET  /metrics` (on the metrics listener).

pub mod auth;
mod drill;
pub mod limits;
pub mod listen;
pub mod routes;
pub mod server;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::sync::{RwLock, mpsc, oneshot};
use tracing::{info, warn};

pub use self::auth::read_token;
use self::{
    routes::Route,
    server::{Request, Response},
};
use crate::{
    agent::{AdminAction, Agent},
    dataplane::inspect,
    model::AdminError,
    observe::{audit::AuditLog, events, metrics},
};

/// A reload request from the API to the daemon's main loop.
pub struct ReloadRequest {
    pub dry_run: bool,
    pub reply: oneshot::Sender<Result<Value, String>>,
}

pub use crate::config::AlertmanagerCfg;

/// Everything the handlers need.
pub struct AdminState {
    pub agent: Arc<RwLock<Option<Agent>>>,
    pub reload_tx: mpsc::Sender<ReloadRequest>,
    pub audit: Option<Arc<Mutex<AuditLog>>>,
    /// The bearer token; `None`: TCP and Alertmanager requests are refused.
    pub token: Option<String>,
    pub alertmanager: AlertmanagerCfg,
    pub metrics: metrics::Shared,
    pub source: inspect::Source,
    /// 401s per client in the current window (see `refused`).
    pub refusals: Mutex<std::collections::HashMap<String, Refusals>>,
}

/// How long one client's 401s are counted into one audit record.
pub const AUTH_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// One client's 401s in its current window.
#[derive(Debug)]
pub struct Refusals {
    since: std::time::Instant,
    since_ts: String,
    /// Refusals after the first (which is audited in full).
    count: u64,
}

impl AdminState {
    fn audit(&self, record: Value) {
        let Some(a) = &self.audit else { return };
        let Value::Object(map) = record else { return };
        match a.lock() {
            Ok(mut log) => {
                if let Err(e) = log.append(&events::now_rfc3339(), map) {
                    warn!(error = %e, "writing the audit log failed");
                }
            }
            Err(_) => warn!("audit log lock poisoned"),
        }
    }

    /// Writes a record that must be on disk before the action it announces
    /// runs: `false` if it is not (the action is then refused).
    fn audit_first(&self, record: Value) -> bool {
        let Some(a) = &self.audit else { return true };
        let Value::Object(map) = record else {
            return false;
        };
        match a.lock() {
            Ok(mut log) => match log.append(&events::now_rfc3339(), map) {
                Ok(_) => true,
                Err(e) => {
                    warn!(error = %e, "the audit log cannot be written");
                    false
                }
            },
            Err(_) => false,
        }
    }

    /// A 401: the first from a client in each [`AUTH_WINDOW`] is logged
    /// and audited in full; the rest are counted and written as one
    /// `auth-failures` record per client when its window closes (see
    /// [`flush_refusals`](Self::flush_refusals)), so a flood of bad tokens
    /// cannot flood the audit log.
    fn refused(&self, req: &Request, why: &str) {
        let client = limits::client_of(&req.peer).to_string();
        let now = std::time::Instant::now();
        let first = {
            let mut m = match self.refusals.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            match m.get_mut(&client) {
                Some(w) if now.duration_since(w.since) < AUTH_WINDOW => {
                    w.count += 1;
                    false
                }
                _ => {
                    if m.len() >= 4096 {
                        m.clear();
                    }
                    m.insert(
                        client.clone(),
                        Refusals {
                            since: now,
                            since_ts: events::now_rfc3339(),
                            count: 0,
                        },
                    );
                    true
                }
            }
        };
        if first {
            warn!(peer = %req.peer, method = %req.method, path = %req.path, "admin request refused: {why}");
            self.audit(json!({"kind": "admin", "peer": req.peer, "method": req.method, "path": req.path, "status": 401, "result": why}));
        }
    }

    /// Writes one `auth-failures` record for each client whose window has
    /// closed with refusals beyond the first (called once a second by the
    /// daemon).
    pub fn flush_refusals(&self) {
        let now = std::time::Instant::now();
        let done: Vec<(String, Refusals)> = {
            let mut m = match self.refusals.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let closed: Vec<String> = m
                .iter()
                .filter(|(_, w)| now.duration_since(w.since) >= AUTH_WINDOW)
                .map(|(k, _)| k.clone())
                .collect();
            closed
                .into_iter()
                .filter_map(|k| m.remove(&k).map(|w| (k, w)))
                .collect()
        };
        for (client, w) in done {
            if w.count > 0 {
                warn!(
                    client,
                    refused = w.count,
                    "more admin requests refused (bad or no token)"
                );
                self.audit(json!({"kind": "auth-failures", "client": client, "since": w.since_ts, "count": w.count, "status": 401}));
            }
        }
    }

    /// Whether the request carries the token.
    fn has_token(&self, req: &Request) -> bool {
        auth::authorized(self.token.as_deref(), req.header("authorization"))
    }
}

/// Serves one admin request. `trusted`: it came over the unix socket (only
/// root can connect to it), so no token is needed except for Alertmanager.
pub async fn handle(st: Arc<AdminState>, req: Request, trusted: bool) -> Response {
    let route = routes::route(&req.method, &req.path, req.query.as_deref());
    if routes::needs_token(trusted, &route) && !st.has_token(&req) {
        let why = if st.token.is_none() {
            "no token is configured: this route is off"
        } else {
            "missing or wrong bearer token"
        };
        st.refused(&req, why);
        return Response::error(401, why);
    }
    // Fail closed for people: an action nobody could audit is refused; the
    // health agent's own decisions go on (fail static for the dataplane).
    if req.method != "GET"
        && !st.audit_first(
            json!({"kind": "admin-request", "peer": req.peer, "method": req.method, "path": req.path}),
        )
    {
        warn!(peer = %req.peer, method = %req.method, path = %req.path, "admin request refused: the audit log cannot be written");
        return Response::error(
            503,
            "the audit log cannot be written: admin actions are refused until it can \
             (the dataplane and the health agent carry on)",
        );
    }
    let resp = serve_route(&st, &req, route).await;
    info!(peer = %req.peer, method = %req.method, path = %req.path, status = resp.status, "admin request");
    if req.method != "GET" {
        let body = String::from_utf8_lossy(&resp.body).trim().to_string();
        st.audit(json!({"kind": "admin", "peer": req.peer, "method": req.method, "path": req.path, "status": resp.status, "result": body}));
    }
    resp
}

async fn serve_route(st: &AdminState, req: &Request, route: Route<'_>) -> Response {
    match route {
        Route::Status => status(st).await,
        Route::Action {
            service,
            backend,
            action,
        } => action_on(st, service, backend, action).await,
        Route::UnknownAction(action) => Response::error(
            404,
            &format!(
                "unknown action {action:?}: drain, undrain, disable, enable, release (?force=1)"
            ),
        ),
        Route::Switch { service } => switch(st, service, &req.body).await,
        Route::Drill { service } => drill::drill(st, service, &req.body).await,
        Route::Reload { dry_run } => reload(st, dry_run).await,
        Route::Alertmanager => alertmanager(st, &req.body).await,
        Route::MethodNotAllowed => Response::error(
            405,
            &format!("{} is not allowed on {}", req.method, req.path),
        ),
        Route::NotFound => Response::error(404, &format!("no route {} {}", req.method, req.path)),
    }
}

async fn status(st: &AdminState) -> Response {
    let agent = st.agent.read().await;
    let backends = match agent.as_ref() {
        Some(a) => match a.backends().await {
            Ok(b) => json!(b),
            Err(e) => json!({"error": format!("{e:#}")}),
        },
        None => json!({"error": "the health agent is not running"}),
    };
    let promotions = match agent.as_ref() {
        Some(a) => a
            .promotions()
            .await
            .map(|p| json!(p))
            .unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
        None => json!([]),
    };
    let services = inspect::services(&st.source)
        .map(|s| json!(s))
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    Response::json(
        200,
        &json!({"services": services, "backends": backends, "promotions": promotions}),
    )
}

/// The one place an operator action's refusal becomes an HTTP status.
fn refusal(e: &AdminError) -> Response {
    let status = match e {
        AdminError::NoBackend { .. } => 404,
        AdminError::Conflict(_) => 409,
        AdminError::AgentDown => 503,
    };
    Response::error(status, &e.to_string())
}

async fn action_on(st: &AdminState, svc: &str, b: &str, a: AdminAction) -> Response {
    let agent = st.agent.read().await;
    let Some(agent) = agent.as_ref() else {
        return refusal(&AdminError::AgentDown);
    };
    match agent.admin(svc, b, a).await {
        Ok(change) => Response::json(200, &json!(change)),
        Err(e) => refusal(&e),
    }
}

/// Manual failover: drain every backend that would take new flows before
/// `to` (the other members of its tier and every higher tier).
async fn switch(st: &AdminState, svc: &str, body: &[u8]) -> Response {
    let to = match parse_switch_body(body) {
        Ok(to) => to,
        Err(why) => return Response::error(400, &why),
    };
    // A handle, not the lock: a switchover waits for a promotion (and a
    // reload waits for the lock).
    let handle = st
        .agent
        .read()
        .await
        .as_ref()
        .map(crate::agent::Agent::handle);
    let Some(agent) = handle.as_ref() else {
        return Response::error(503, "the health agent is not running");
    };
    // With roles a switch is a planned switchover: fence, promote, wait
    // until ready, switch.
    match agent.promotions().await {
        Ok(p) if p.iter().any(|p| p.service == svc) => {
            return match agent
                .switchover(svc, &to, crate::model::Cause::Operator)
                .await
            {
                Ok(report) => Response::json(
                    200,
                    &json!({"service": svc, "to": to, "switchover": report}),
                ),
                Err(e) => refusal(&e),
            };
        }
        Ok(_) => {}
        Err(e) => return Response::error(503, &format!("{e:#}")),
    }
    let backends = match agent.backends().await {
        Ok(b) => b,
        Err(e) => return Response::error(503, &format!("{e:#}")),
    };
    let Some(target) = backends
        .iter()
        .find(|b| b.service == svc && b.backend == to)
    else {
        return Response::error(404, &format!("no backend {to:?} in service {svc:?}"));
    };
    if !matches!(target.state, "up" | "suspect") {
        return Response::error(
            409,
            &format!("{to} is {}: it cannot take the traffic", target.state),
        );
    }
    let mut changes = Vec::new();
    for b in backends
        .iter()
        .filter(|b| b.service == svc && b.backend != to && b.tier <= target.tier)
    {
        if matches!(b.state, "up" | "suspect") {
            match agent.admin(svc, &b.backend, AdminAction::Drain).await {
                Ok(c) => changes.push(json!(c)),
                Err(e) => return refusal(&e),
            }
        }
    }
    Response::json(200, &json!({"service": svc, "to": to, "changes": changes}))
}

async fn reload(st: &AdminState, dry_run: bool) -> Response {
    let (tx, rx) = oneshot::channel();
    if st
        .reload_tx
        .send(ReloadRequest { dry_run, reply: tx })
        .await
        .is_err()
    {
        return Response::error(503, "the daemon is shutting down");
    }
    match rx.await {
        Ok(Ok(v)) => Response::json(200, &v),
        Ok(Err(why)) => Response::error(422, &why),
        Err(_) => Response::error(503, "the daemon dropped the reload"),
    }
}

/// An Alertmanager webhook: each firing alert that names a service and a
/// backend (by the configured labels) drains or disables it; a resolved one
/// lifts that again (the backend returns to what its probes say).
async fn alertmanager(st: &AdminState, body: &[u8]) -> Response {
    let requests = match parse_alertmanager(body, &st.alertmanager) {
        Ok(r) => r,
        Err(why) => return Response::error(400, &why),
    };
    let agent = st.agent.read().await;
    let Some(agent) = agent.as_ref() else {
        return Response::error(503, "the health agent is not running");
    };
    let mut results = Vec::new();
    for r in requests {
        let AlertRequest::Act {
            service: svc,
            backend: b,
            action,
        } = r
        else {
            results.push(json!({"skipped": "no service/backend labels"}));
            continue;
        };
        let (svc, b) = (svc.as_str(), b.as_str());
        match agent.admin(svc, b, action).await {
            Ok(c) => results.push(json!({"action": action, "change": c})),
            Err(AdminError::AgentDown) => return refusal(&AdminError::AgentDown),
            Err(e) => results.push(
                json!({"action": action, "service": svc, "backend": b, "unchanged": e.to_string()}),
            ),
        }
    }
    Response::json(200, &json!({"results": results}))
}

/// The backend a switch request's body (`{"to": "BACKEND"}`) names, or
/// why the body is refused (a 400).
pub fn parse_switch_body(body: &[u8]) -> Result<String, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => match v.get("to").and_then(Value::as_str) {
            Some(t) => Ok(t.to_string()),
            None => Err("body must be {\"to\": \"BACKEND\"}".into()),
        },
        Err(e) => Err(format!("body is not JSON: {e}")),
    }
}

/// What one alert of an Alertmanager webhook asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertRequest {
    /// The alert lacks the configured service/backend labels.
    Skipped,
    Act {
        service: String,
        backend: String,
        action: AdminAction,
    },
}

/// Alerts read from one webhook payload at most (the rest are ignored).
pub const MAX_ALERTS: usize = 1000;

/// The requests of an Alertmanager webhook payload: a firing alert naming
/// a service and a backend (by the configured labels) applies the
/// configured action, a resolved one lifts it; or why the payload is
/// refused (a 400).
pub fn parse_alertmanager(body: &[u8], cfg: &AlertmanagerCfg) -> Result<Vec<AlertRequest>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("not an Alertmanager payload: {e}"))?;
    let Some(alerts) = v.get("alerts").and_then(Value::as_array) else {
        return Err("not an Alertmanager payload: no \"alerts\" array".into());
    };
    Ok(alerts
        .iter()
        .take(MAX_ALERTS)
        .map(|a| {
            let labels = a.get("labels");
            let svc = labels
                .and_then(|l| l.get(&cfg.service_label))
                .and_then(Value::as_str);
            let b = labels
                .and_then(|l| l.get(&cfg.backend_label))
                .and_then(Value::as_str);
            let status = a.get("status").and_then(Value::as_str).unwrap_or("firing");
            let (Some(svc), Some(b)) = (svc, b) else {
                return AlertRequest::Skipped;
            };
            let action = match (status, cfg.action) {
                ("resolved", AdminAction::Disable) => AdminAction::Enable,
                ("resolved", _) => AdminAction::Undrain,
                (_, a) => a,
            };
            AlertRequest::Act {
                service: svc.to_string(),
                backend: b.to_string(),
                action,
            }
        })
        .collect())
}

/// The `/metrics` handler.
pub fn metrics_response(st: &AdminState, req: &Request) -> Response {
    if req.method != "GET" || req.path != "/metrics" {
        return Response::error(404, "only GET /metrics here");
    }
    let m = match st.metrics.lock() {
        Ok(m) => m.clone(),
        Err(_) => return Response::error(500, "metrics lock poisoned"),
    };
    let mut r = Response::text(200, metrics::render(&m, Some(&st.source)));
    r.content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8".to_string();
    r
}

/// Where the CLI talks to the daemon.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_their_status() {
        let cases = [
            (
                AdminError::NoBackend {
                    service: "web".into(),
                    backend: "x".into(),
                },
                404,
            ),
            (AdminError::Conflict("b1 is up, not draining".into()), 409),
            (AdminError::AgentDown, 503),
        ];
        for (e, status) in cases {
            let r = refusal(&e);
            assert_eq!(r.status, status, "{e}");
            let body: Value = serde_json::from_slice(&r.body).expect("JSON error body");
            assert_eq!(body["error"], e.to_string(), "{e}");
        }
    }

    #[test]
    fn switch_body() {
        assert_eq!(parse_switch_body(br#"{"to": "s"}"#), Ok("s".to_string()));
        assert!(
            parse_switch_body(br#"{"to": 3}"#)
                .unwrap_err()
                .contains("must be")
        );
        assert!(parse_switch_body(b"[1,").unwrap_err().contains("not JSON"));
        assert!(parse_switch_body(b"\xff\xfe").is_err());
    }

    #[test]
    fn alertmanager_payload() {
        let cfg = AlertmanagerCfg {
            service_label: "service".into(),
            backend_label: "backend".into(),
            action: AdminAction::Drain,
        };
        let body = br#"{"alerts": [
            {"status": "firing", "labels": {"service": "web", "backend": "p"}},
            {"status": "resolved", "labels": {"service": "web", "backend": "s"}},
            {"labels": {"service": "web"}},
            {"status": "firing", "labels": {"service": "web", "backend": 7}},
            "not an object"
        ]}"#;
        let act = |b: &str, action| AlertRequest::Act {
            service: "web".into(),
            backend: b.into(),
            action,
        };
        assert_eq!(
            parse_alertmanager(body, &cfg).unwrap(),
            vec![
                act("p", AdminAction::Drain),
                act("s", AdminAction::Undrain),
                AlertRequest::Skipped,
                AlertRequest::Skipped,
                AlertRequest::Skipped,
            ]
        );
        assert!(
            parse_alertmanager(br#"{"alerts": {}}"#, &cfg)
                .unwrap_err()
                .contains("no \"alerts\"")
        );
        assert!(parse_alertmanager(b"", &cfg).is_err());
        let many = format!(
            r#"{{"alerts": [{}]}}"#,
            vec!["{}"; MAX_ALERTS + 5].join(",")
        );
        assert_eq!(
            parse_alertmanager(many.as_bytes(), &cfg).unwrap().len(),
            MAX_ALERTS
        );
    }
}
