//! Validation of `[service.promotion]`: the roles, hooks and deadlines of
//! an orchestrated failover.

use super::*;

/// What the rest of the service says, for the checks that need it.
pub(super) struct PromotionContext<'a> {
    /// `[service.check]` is set (it is the active check).
    pub(super) active_check: bool,
    pub(super) tiers: &'a [Vec<Backend>],
    pub(super) on_no_backend: NoBackend,
}

/// Default of `on`: only confirmed failures promote.
pub const DEFAULT_PROMOTE_ON: [Cause; 2] = [Cause::Probe, Cause::PassiveConfirmed];

pub(super) fn validate_promotion(
    errs: &mut Errors,
    p: &str,
    raw: RawPromotion,
    cx: &PromotionContext<'_>,
) -> Option<Promotion> {
    let pp = format!("{p}.promotion");
    let before = errs.0.len();
    if !cx.active_check {
        errs.push(
            format!("{p}.check"),
            "a service with [service.promotion] needs a check: it is the active check (\"can serve as active\")",
        );
    }
    if cx.tiers.first().is_none_or(|t| t.len() != 1) {
        errs.push(
            format!("{p}.backend"),
            "a service with [service.promotion] has exactly one backend in its first tier: the active at start",
        );
    }
    if cx.tiers.iter().map(Vec::len).sum::<usize>() < 2 {
        errs.push(
            format!("{p}.backend"),
            "a service with [service.promotion] needs at least one standby",
        );
    }
    if cx.on_no_backend == NoBackend::KeepLast {
        errs.push(
            format!("{p}.on_no_backend"),
            "keep-last would keep a lost active in service; with [service.promotion] use drop or pass",
        );
    }
    let command = |errs: &mut Errors, field: &str, c: Option<Vec<String>>| -> Option<Vec<String>> {
        match c {
            Some(c) if !c.is_empty() && !c[0].is_empty() => Some(c),
            Some(_) => {
                errs.push(
                    format!("{pp}.{field}"),
                    "needs a program and its arguments (no shell)",
                );
                None
            }
            None => None,
        }
    };
    let promote = command(errs, "promote", raw.promote);
    if promote.is_none()
        && !errs.0[before..]
            .iter()
            .any(|e| e.path.ends_with(".promote"))
    {
        errs.push(
            format!("{pp}.promote"),
            "missing: the command that promotes a standby (e.g. [\"/usr/local/bin/pg-promote\", \"{address}\"])",
        );
    }
    let fence = command(errs, "fence", raw.fence);
    let hook_timeout = duration(
        errs,
        &format!("{pp}.hook_timeout"),
        raw.hook_timeout.as_deref(),
        Duration::from_secs(30),
    );
    let ready_within = duration(
        errs,
        &format!("{pp}.ready_within"),
        raw.ready_within.as_deref(),
        Duration::from_secs(30),
    );
    let on = raw.on.unwrap_or_else(|| DEFAULT_PROMOTE_ON.to_vec());
    if on.is_empty() {
        errs.push(
            format!("{pp}.on"),
            "empty: a lost active would never be replaced",
        );
    }
    for c in &on {
        if matches!(c, Cause::Drill | Cause::Reload | Cause::Cluster) {
            errs.push(
                format!("{pp}.on"),
                format!(
                    "{:?}: only probe, passive-confirmed and operator lose an active",
                    c.name()
                ),
            );
        }
    }
    let standby_check = match raw.standby_check {
        Some(c) => {
            let c = validate_check_at(errs, &format!("{pp}.standby_check"), c);
            if c.is_none() {
                errs.push(
                    format!("{pp}.standby_check.type"),
                    "a standby check must probe (not \"none\")",
                );
            }
            c
        }
        None => {
            errs.push(
                format!("{pp}.standby_check"),
                "missing: the check a healthy standby passes (one that refuses writes still passes it)",
            );
            None
        }
    };
    if errs.0.len() > before {
        return None;
    }
    let hook = |name: &str, command: Vec<String>| Hook {
        name: name.to_string(),
        spec: HookSpec::Exec { command },
        timeout: hook_timeout,
    };
    Some(Promotion {
        standby_check: standby_check?,
        promote: hook("promote", promote?),
        fence: fence.map(|c| hook("fence", c)),
        ready_within,
        on,
    })
}
