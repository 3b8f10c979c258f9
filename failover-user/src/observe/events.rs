//! Events: every state change and failover, as one JSON object per line,
//! written to the log (target `failover::event`) and, if configured, appended
//! to `daemon.events_file`; and handed to the service's hooks.

use std::{
    fs::File,
    io::Write as _,
    path::Path,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::Serialize;
use tracing::{info, warn};

/// One event. Fields that do not apply are omitted from the JSON.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Event {
    /// RFC 3339 UTC time with microseconds.
    pub ts: String,
    /// `state`, `failover`, `held-down`, `keep-last`, `no-healthy-backend`,
    /// `policy-override`, `passive-down`, `passive-confirmed`,
    /// `passive-restored`, `dataplane` (the link watcher), `hook` (a hook's
    /// outcome).
    pub kind: &'static str,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub reason: String,
    /// Incremented by every write the agent makes to the state map.
    pub map_version: u64,
    /// The state word now in the map for this backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_word: Option<&'static str>,
    /// From the decision to the end of the map write syscall.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_to_map_us: Option<f64>,
    /// From the first failed probe's result to the map write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure_to_switch_ms: Option<f64>,
    /// Failover: the serving tier before and after (`null`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_tier: Option<Option<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_tier: Option<Option<usize>>,
    /// Failover: the backends now serving new flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<Vec<String>>,
    /// Failover: their addresses (`ip:port`), in the same order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_addresses: Option<Vec<String>>,
    /// Services with roles: why (`probe`, `passive-confirmed`,
    /// `operator`, `drill`, `reload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    /// Services with roles: the fencing token of the promotion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// Passive detection: the datapath signal (rst, icmp, syn-retransmit,
    /// no-reply) behind a `passive-*` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<&'static str>,
    /// `hook` events: the hook, its result (`ok`/`failed`), how long it
    /// ran, and how many events it stood for (coalesced into one run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesced: Option<u64>,
}

impl Event {
    pub fn new(kind: &'static str, service: &str, reason: String, map_version: u64) -> Self {
        Self {
            ts: now_rfc3339(),
            kind,
            service: service.to_string(),
            reason,
            map_version,
            ..Self::default()
        }
    }

    /// Environment for hooks: FAILOVER_KIND, FAILOVER_SERVICE, ... (only the
    /// fields that apply).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("FAILOVER_KIND".to_string(), self.kind.to_string()),
            ("FAILOVER_SERVICE".to_string(), self.service.clone()),
            ("FAILOVER_REASON".to_string(), self.reason.clone()),
            (
                "FAILOVER_MAP_VERSION".to_string(),
                self.map_version.to_string(),
            ),
            ("FAILOVER_TIME".to_string(), self.ts.clone()),
        ];
        let mut add = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push((k.to_string(), val));
            }
        };
        add("FAILOVER_BACKEND", self.backend.clone());
        add("FAILOVER_FROM", self.from.clone());
        add("FAILOVER_TO", self.to.clone());
        add(
            "FAILOVER_FROM_TIER",
            self.from_tier
                .map(|t| t.map_or("none".to_string(), |t| t.to_string())),
        );
        add(
            "FAILOVER_TO_TIER",
            self.to_tier
                .map(|t| t.map_or("none".to_string(), |t| t.to_string())),
        );
        add(
            "FAILOVER_SERVING",
            self.serving.as_ref().map(|s| s.join(",")),
        );
        add(
            "FAILOVER_SERVING_ADDRESSES",
            self.serving_addresses.as_ref().map(|s| s.join(",")),
        );
        add("FAILOVER_CAUSE", self.cause.map(str::to_string));
        add("FAILOVER_TOKEN", self.token.map(|t| t.to_string()));
        v
    }
}

/// Where events go.
pub struct Sink {
    /// The events file's path and its open handle.
    file: Option<(std::path::PathBuf, Mutex<File>)>,
    audit: Option<std::sync::Arc<Mutex<crate::observe::audit::AuditLog>>>,
}

impl Sink {
    /// Events go to the log, to `path` if given, and to the audit log.
    pub fn with_audit(
        path: Option<&Path>,
        audit: Option<std::sync::Arc<Mutex<crate::observe::audit::AuditLog>>>,
    ) -> anyhow::Result<Self> {
        let mut s = Self::new(path)?;
        s.audit = audit;
        Ok(s)
    }

    pub fn new(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = match path {
            None => None,
            Some(p) => {
                let f = crate::sys::files::open_append(p)
                    .with_context(|| format!("opening the events file {}", p.display()))?;
                Some((p.to_path_buf(), Mutex::new(f)))
            }
        };
        Ok(Self { file, audit: None })
    }

    /// Opens the events file again by its path (after logrotate moved it
    /// away): later events go to the new file. On failure the old handle
    /// stays, so nothing is lost.
    pub fn reopen(&self) -> anyhow::Result<()> {
        let Some((path, file)) = &self.file else {
            return Ok(());
        };
        let f = crate::sys::files::open_append(path)
            .with_context(|| format!("reopening the events file {}", path.display()))?;
        match file.lock() {
            Ok(mut cur) => *cur = f,
            Err(_) => anyhow::bail!("events file lock poisoned"),
        }
        Ok(())
    }

    /// Writes the event; returns its JSON.
    pub fn emit(&self, e: &Event) -> String {
        let json = serde_json::to_string(e)
            .unwrap_or_else(|err| format!("{{\"kind\":\"error\",\"reason\":\"{err}\"}}"));
        info!(target: "failover::event", "{json}");
        if let Some(a) = &self.audit
            && let Ok(serde_json::Value::Object(mut map)) = serde_json::to_value(e)
        {
            // The audit line has its own time and sequence.
            let ts = map
                .remove("ts")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(now_rfc3339);
            map.insert(
                "event_ts".to_string(),
                serde_json::Value::String(ts.clone()),
            );
            match a.lock() {
                Ok(mut log) => {
                    if let Err(err) = log.append(&now_rfc3339(), map) {
                        warn!(error = %err, "writing the audit log failed");
                    }
                }
                Err(_) => warn!("audit log lock poisoned"),
            }
        }
        if let Some((_, f)) = &self.file {
            match f.lock() {
                Ok(mut f) => {
                    if let Err(err) = f.write_all(format!("{json}\n").as_bytes()) {
                        warn!(error = %err, "writing the events file");
                    }
                }
                Err(_) => warn!("events file lock poisoned"),
            }
        }
        json
    }
}

/// The current time as RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_micros())
}

fn rfc3339(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(
            rfc3339(1_795_478_400 + 3661, 123_456),
            "2026-11-24T01:01:01.123456Z"
        );
    }

    #[test]
    fn env_has_only_the_fields_that_apply() {
        let mut e = Event::new("state", "web", "tcp: refused".into(), 3);
        e.backend = Some("b1".into());
        e.from = Some("up".into());
        e.to = Some("down".into());
        let env: std::collections::HashMap<_, _> = e.env().into_iter().collect();
        assert_eq!(env["FAILOVER_BACKEND"], "b1");
        assert_eq!(env["FAILOVER_TO"], "down");
        assert_eq!(env["FAILOVER_MAP_VERSION"], "3");
        assert!(!env.contains_key("FAILOVER_TO_TIER"));
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("to_tier"), "{json}");
    }
}
