//! Prometheus metrics: what the health agent counts (probes, state changes,
//! failovers, decision-to-map latency) plus what the dataplane counts in its
//! per-CPU maps, rendered in the text exposition format.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use crate::inspect;

/// A Prometheus histogram with fixed bucket bounds (seconds).
#[derive(Debug, Clone)]
pub struct PromHistogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Probe latencies: 100 µs .. 5 s.
pub const PROBE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Decision-to-map latencies: 1 µs .. 10 ms.
pub const SWITCH_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.01,
];

impl PromHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Per-backend counters of the agent.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    pub probes_ok: u64,
    pub probes_failed: u64,
    pub probe_latency: PromHistogram,
    pub state_changes: u64,
    /// Passive detection: marks by the datapath, and how the agent settled
    /// them (confirmed by probes, or restored as false alarms).
    pub passive_marked: u64,
    pub passive_confirmed: u64,
    pub passive_restored: u64,
    /// The agent's view (up, suspect, down, draining, disabled).
    pub health: &'static str,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        Self {
            probes_ok: 0,
            probes_failed: 0,
            probe_latency: PromHistogram::new(PROBE_BUCKETS),
            state_changes: 0,
            passive_marked: 0,
            passive_confirmed: 0,
            passive_restored: 0,
            health: "up",
        }
    }
}

/// Everything the agent counts; shared with the metrics endpoint.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// (service, backend) -> counters.
    pub backends: BTreeMap<(String, String), BackendMetrics>,
    /// service -> failovers (serving tier changes, including to none).
    pub failovers: BTreeMap<String, u64>,
    /// service -> held backends brought up because none served.
    pub policy_overrides: BTreeMap<String, u64>,
    pub decision_to_map: PromHistogram,
    pub map_version: u64,
    pub hooks_ok: u64,
    pub hooks_failed: u64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            backends: BTreeMap::new(),
            failovers: BTreeMap::new(),
            policy_overrides: BTreeMap::new(),
            decision_to_map: PromHistogram::new(SWITCH_BUCKETS),
            map_version: 0,
            hooks_ok: 0,
            hooks_failed: 0,
        }
    }
}

pub type Shared = Arc<Mutex<AgentMetrics>>;

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders the agent's metrics and, when the pinned maps can be read, the
/// dataplane's.
pub fn render(agent: &AgentMetrics, src: Option<&inspect::Source>) -> String {
    let mut o = String::new();
    head(
        &mut o,
        "failover_probe_results_total",
        "counter",
        "Health probe results by outcome.",
    );
    for ((s, b), m) in &agent.backends {
        let l = format!("service=\"{}\",backend=\"{}\"", esc(s), esc(b));
        let _ = writeln!(
            o,
            "failover_probe_results_total{{{l},result=\"ok\"}} {}",
            m.probes_ok
        );
        let _ = writeln!(
            o,
            "failover_probe_results_total{{{l},result=\"failed\"}} {}",
            m.probes_failed
        );
    }
    head(
        &mut o,
        "failover_probe_duration_seconds",
        "histogram",
        "Health probe latency.",
    );
    for ((s, b), m) in &agent.backends {
        let l = format!("service=\"{}\",backend=\"{}\"", esc(s), esc(b));
        m.probe_latency
            .render(&mut o, "failover_probe_duration_seconds", &l);
    }
    head(
        &mut o,
        "failover_backend_health",
        "gauge",
        "The health agent's state of each backend (1 for the current state).",
    );
    for ((s, b), m) in &agent.backends {
        for st in ["up", "suspect", "down", "draining", "disabled"] {
            let v = u8::from(m.health == st);
            let _ = writeln!(
                o,
                "failover_backend_health{{service=\"{}\",backend=\"{}\",state=\"{st}\"}} {v}",
                esc(s),
                esc(b)
            );
        }
    }
    head(
        &mut o,
        "failover_passive_total",
        "counter",
        "Backends marked down by the datapath's passive detection, and how the agent settled each mark.",
    );
    for ((s, b), m) in &agent.backends {
        for (outcome, n) in [
            ("marked", m.passive_marked),
            ("confirmed", m.passive_confirmed),
            ("restored", m.passive_restored),
        ] {
            let _ = writeln!(
                o,
                "failover_passive_total{{service=\"{}\",backend=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(s),
                esc(b),
            );
        }
    }
    head(
        &mut o,
        "failover_state_changes_total",
        "counter",
        "Backend state changes decided by the health agent.",
    );
    for ((s, b), m) in &agent.backends {
        let _ = writeln!(
            o,
            "failover_state_changes_total{{service=\"{}\",backend=\"{}\"}} {}",
            esc(s),
            esc(b),
            m.state_changes
        );
    }
    head(
        &mut o,
        "failover_failovers_total",
        "counter",
        "Changes of a service's serving tier.",
    );
    for (s, n) in &agent.failovers {
        let _ = writeln!(o, "failover_failovers_total{{service=\"{}\"}} {n}", esc(s));
    }
    head(
        &mut o,
        "failover_policy_overrides_total",
        "counter",
        "Held backends (hold-down, manual failback, damping) brought up because no backend of the service served.",
    );
    for (s, n) in &agent.policy_overrides {
        let _ = writeln!(
            o,
            "failover_policy_overrides_total{{service=\"{}\"}} {n}",
            esc(s)
        );
    }
    head(
        &mut o,
        "failover_decision_to_map_seconds",
        "histogram",
        "From a health decision to the end of its map write.",
    );
    agent
        .decision_to_map
        .render(&mut o, "failover_decision_to_map_seconds", "");
    head(
        &mut o,
        "failover_map_version",
        "gauge",
        "Writes the agent made to the state map.",
    );
    let _ = writeln!(o, "failover_map_version {}", agent.map_version);
    head(
        &mut o,
        "failover_hook_runs_total",
        "counter",
        "Hook runs by outcome.",
    );
    let _ = writeln!(
        o,
        "failover_hook_runs_total{{result=\"ok\"}} {}",
        agent.hooks_ok
    );
    let _ = writeln!(
        o,
        "failover_hook_runs_total{{result=\"failed\"}} {}",
        agent.hooks_failed
    );
    if let Some(src) = src {
        render_dataplane(&mut o, src);
    }
    o
}

fn render_dataplane(o: &mut String, src: &inspect::Source) {
    match inspect::services(src) {
        Ok(rows) => {
            head(
                o,
                "failover_service_packets_total",
                "counter",
                "Packets per service and direction (forwarded to a backend, replies translated back, dropped).",
            );
            for r in &rows {
                let s = esc(&r.service);
                let _ = writeln!(
                    o,
                    "failover_service_packets_total{{service=\"{s}\",direction=\"forward\"}} {}",
                    r.fwd_packets
                );
                let _ = writeln!(
                    o,
                    "failover_service_packets_total{{service=\"{s}\",direction=\"reply\"}} {}",
                    r.reply_packets
                );
                let _ = writeln!(
                    o,
                    "failover_service_packets_total{{service=\"{s}\",direction=\"dropped\"}} {}",
                    r.dropped_packets
                );
            }
            head(
                o,
                "failover_service_bytes_total",
                "counter",
                "Bytes forwarded to a backend per service.",
            );
            for r in &rows {
                let _ = writeln!(
                    o,
                    "failover_service_bytes_total{{service=\"{}\",direction=\"forward\"}} {}",
                    esc(&r.service),
                    r.fwd_bytes
                );
            }
        }
        Err(e) => {
            let _ = writeln!(
                o,
                "# dataplane services unavailable: {}",
                esc(&format!("{e:#}"))
            );
        }
    }
    if let Ok(rows) = inspect::backends(src, None) {
        head(
            o,
            "failover_backend_packets_total",
            "counter",
            "Packets forwarded to each backend.",
        );
        for r in &rows {
            let _ = writeln!(
                o,
                "failover_backend_packets_total{{service=\"{}\",backend=\"{}\"}} {}",
                esc(&r.service),
                esc(&r.backend),
                r.packets
            );
        }
        head(
            o,
            "failover_backend_bytes_total",
            "counter",
            "Bytes forwarded to each backend.",
        );
        for r in &rows {
            let _ = writeln!(
                o,
                "failover_backend_bytes_total{{service=\"{}\",backend=\"{}\"}} {}",
                esc(&r.service),
                esc(&r.backend),
                r.bytes
            );
        }
        head(
            o,
            "failover_backend_state",
            "gauge",
            "The state word in the dataplane's map (1 for the current one).",
        );
        for r in &rows {
            for st in ["up", "down", "draining", "disabled", "down-reset"] {
                let v = u8::from(r.state == st);
                let _ = writeln!(
                    o,
                    "failover_backend_state{{service=\"{}\",backend=\"{}\",state=\"{st}\"}} {v}",
                    esc(&r.service),
                    esc(&r.backend)
                );
            }
        }
    }
    if let Ok(reasons) = inspect::reasons(src) {
        head(
            o,
            "failover_packets_total",
            "counter",
            "Every packet the XDP program saw, by outcome (fwd_*, pass_*, drop_*, tx_*).",
        );
        for (k, v) in reasons {
            let _ = writeln!(o, "failover_packets_total{{outcome=\"{k}\"}} {v}");
        }
    }
    if let Ok(st) = inspect::status(src) {
        head(
            o,
            "failover_conntrack_entries",
            "gauge",
            "Flows in the conntrack map.",
        );
        let _ = writeln!(o, "failover_conntrack_entries {}", st.flows);
        head(
            o,
            "failover_conntrack_capacity",
            "gauge",
            "Capacity of the conntrack map (LRU).",
        );
        let _ = writeln!(o, "failover_conntrack_capacity {}", st.conntrack_capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = PromHistogram::new(&[0.001, 0.01]);
        h.observe(0.0005);
        h.observe(0.005);
        h.observe(1.0);
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.01\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 3\n"), "{s}");
    }

    #[test]
    fn agent_metrics_render_with_escaping() {
        let mut m = AgentMetrics::default();
        let b = m.backends.entry(("we\"b".into(), "b1".into())).or_default();
        b.probes_ok = 3;
        b.health = "down";
        m.failovers.insert("we\"b".into(), 2);
        m.policy_overrides.insert("web".into(), 1);
        let s = render(&m, None);
        assert!(
            s.contains(
                "failover_probe_results_total{service=\"we\\\"b\",backend=\"b1\",result=\"ok\"} 3"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "failover_backend_health{service=\"we\\\"b\",backend=\"b1\",state=\"down\"} 1"
            ),
            "{s}"
        );
        assert!(
            s.contains("failover_failovers_total{service=\"we\\\"b\"} 2"),
            "{s}"
        );
        assert!(s.contains("# TYPE failover_decision_to_map_seconds histogram"));
        assert!(
            s.contains("failover_policy_overrides_total{service=\"web\"} 1"),
            "{s}"
        );
    }
}
