//! Prometheus metrics: what the health agent counts (probes, state changes,
//! failovers, decision-to-map latency) plus what the dataplane counts in its
//! per-CPU maps, encoded by prometheus-client (OpenMetrics text) through a
//! collector that reads them at each scrape.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelValue, LabelValueEncoder, MetricEncoder, NoLabelSet,
        text::encode,
    },
    metrics::MetricType,
    registry::Registry,
};
use tracing::warn;

use crate::dataplane::inspect;

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
    /// When the agent last wrote a decision into the map (ms since the
    /// epoch; 0: not yet).
    pub last_decision_ms: u64,
    /// Whether the audit log takes records (admin actions are refused
    /// while it does not).
    pub audit_writable: bool,
    /// (hook, result) -> runs.
    pub hook_runs: BTreeMap<(String, &'static str), u64>,
    /// Services with roles: (service, ok|failed) -> orchestrations.
    pub promotions: BTreeMap<(String, &'static str), u64>,
    /// service -> whether it stands in `promotion-failed`.
    pub promotion_failed: BTreeMap<String, bool>,
    /// service -> its fencing token (the last promotion's number).
    pub promotion_token: BTreeMap<String, u64>,
    /// service -> the last drill's measured RTO (seconds).
    pub drill_rto: BTreeMap<String, f64>,
    /// `[cluster]`: what this node knows of the cluster.
    pub cluster: Option<ClusterMetrics>,
}

/// A cluster node's view (`cluster/`), for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    pub leader: bool,
    /// The decision applied.
    pub decision: u64,
    pub lease_valid: bool,
    pub failsafe: bool,
    /// VIP -> announced.
    pub announced: BTreeMap<String, bool>,
    /// As the leader sees it: every node that acknowledged the decision in
    /// force reported the same tables hash.
    pub tables_agree: bool,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            backends: BTreeMap::new(),
            failovers: BTreeMap::new(),
            policy_overrides: BTreeMap::new(),
            decision_to_map: PromHistogram::new(SWITCH_BUCKETS),
            map_version: 0,
            last_decision_ms: 0,
            audit_writable: true,
            hook_runs: BTreeMap::new(),
            promotions: BTreeMap::new(),
            promotion_failed: BTreeMap::new(),
            promotion_token: BTreeMap::new(),
            cluster: None,
            drill_rto: BTreeMap::new(),
        }
    }
}

pub type Shared = Arc<Mutex<AgentMetrics>>;

/// Escapes a label value (the exposition format's rules; prometheus-client
/// writes label values as they are).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A label value, escaped when encoded.
#[derive(Debug, Clone)]
struct Value(String);

impl EncodeLabelValue for Value {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &esc(&self.0))
    }
}

type Labels = Vec<(&'static str, Value)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k, Value(v.to_string())))
        .collect()
}

/// One sample of a family.
#[derive(Debug, Clone)]
enum Sample {
    Counter(u64),
    Gauge(i64),
    GaugeF(f64),
    /// Sum, count, and (upper bound, count in that bucket only), the last
    /// bound `f64::MAX` (+Inf).
    Histogram(f64, u64, Vec<(f64, u64)>),
}

/// A metric family: name (counters without their `_total`, which the
/// encoder adds), help, type, samples.
#[derive(Debug, Clone)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Sample)>,
}

/// The families of one scrape, read from the agent's counters and the
/// pinned maps, encoded by prometheus-client through [`Collector`] (the
/// values are kept where they are counted; the collector only reads them).
#[derive(Debug, Default)]
struct Scrape(Vec<Family>);

impl Scrape {
    fn family(&mut self, name: &'static str, kind: MetricType, help: &'static str) {
        self.0.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        });
    }

    fn sample(&mut self, l: Labels, v: Sample) {
        if let Some(f) = self.0.last_mut() {
            f.samples.push((l, v));
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut m = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (l, v) in &f.samples {
                // No labels: no family level (it would print `{}`).
                if l.is_empty() {
                    encode_sample(&mut m, v)?;
                } else {
                    encode_sample(&mut m.encode_family(l)?, v)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_sample(e: &mut MetricEncoder, v: &Sample) -> Result<(), std::fmt::Error> {
    match v {
        Sample::Counter(n) => e.encode_counter::<NoLabelSet, _, u64>(n, None),
        Sample::Gauge(n) => e.encode_gauge(n),
        Sample::GaugeF(n) => e.encode_gauge(n),
        Sample::Histogram(sum, count, buckets) => {
            e.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
        }
    }
}

impl PromHistogram {
    /// As the encoder wants it: per-bucket counts, +Inf last.
    fn sample(&self) -> Sample {
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        let mut below = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            buckets.push((*b, c - below));
            below = *c;
        }
        buckets.push((f64::MAX, self.count - below));
        Sample::Histogram(self.sum, self.count, buckets)
    }
}

/// Renders the agent's metrics and, when the pinned maps can be read, the
/// dataplane's (OpenMetrics text, by prometheus-client).
pub fn render(agent: &AgentMetrics, src: Option<&inspect::Source>) -> String {
    let mut o = Scrape::default();
    o.family(
        "failover_probe_results",
        MetricType::Counter,
        "Health probe results by outcome.",
    );
    for ((s, b), m) in &agent.backends {
        for (result, n) in [("ok", m.probes_ok), ("failed", m.probes_failed)] {
            let l = labels([("service", s), ("backend", b), ("result", result)]);
            o.sample(l, Sample::Counter(n));
        }
    }
    o.family(
        "failover_probe_duration_seconds",
        MetricType::Histogram,
        "Health probe latency.",
    );
    for ((s, b), m) in &agent.backends {
        o.sample(
            labels([("service", s), ("backend", b)]),
            m.probe_latency.sample(),
        );
    }
    o.family(
        "failover_backend_health",
        MetricType::Gauge,
        "The health agent's state of each backend (1 for the current state).",
    );
    for ((s, b), m) in &agent.backends {
        for st in ["up", "suspect", "down", "held", "draining", "disabled"] {
            let l = labels([("service", s), ("backend", b), ("state", st)]);
            o.sample(l, Sample::Gauge(i64::from(m.health == st)));
        }
    }
    o.family(
        "failover_passive",
        MetricType::Counter,
        "Backends marked down by the datapath's passive detection, and how the agent settled each mark.",
    );
    for ((s, b), m) in &agent.backends {
        for (outcome, n) in [
            ("marked", m.passive_marked),
            ("confirmed", m.passive_confirmed),
            ("restored", m.passive_restored),
        ] {
            let l = labels([("service", s), ("backend", b), ("outcome", outcome)]);
            o.sample(l, Sample::Counter(n));
        }
    }
    o.family(
        "failover_state_changes",
        MetricType::Counter,
        "Backend state changes decided by the health agent.",
    );
    for ((s, b), m) in &agent.backends {
        let l = labels([("service", s), ("backend", b)]);
        o.sample(l, Sample::Counter(m.state_changes));
    }
    o.family(
        "failover_failovers",
        MetricType::Counter,
        "Changes of a service's serving tier.",
    );
    for (s, n) in &agent.failovers {
        o.sample(labels([("service", s)]), Sample::Counter(*n));
    }
    o.family(
        "failover_policy_overrides",
        MetricType::Counter,
        "Held backends (hold-down, manual failback, damping) brought up because no backend of the service served.",
    );
    for (s, n) in &agent.policy_overrides {
        o.sample(labels([("service", s)]), Sample::Counter(*n));
    }
    o.family(
        "failover_decision_to_map_seconds",
        MetricType::Histogram,
        "From a health decision to the end of its map write.",
    );
    o.sample(Labels::new(), agent.decision_to_map.sample());
    o.family(
        "failover_map_version",
        MetricType::Gauge,
        "Writes the agent made to the state map.",
    );
    o.sample(
        Labels::new(),
        Sample::Gauge(i64::try_from(agent.map_version).unwrap_or(i64::MAX)),
    );
    o.family(
        "failover_audit_writable",
        MetricType::Gauge,
        "1 while the audit log takes records; 0: admin actions are refused.",
    );
    o.sample(
        Labels::new(),
        Sample::Gauge(i64::from(agent.audit_writable)),
    );
    o.family(
        "failover_hook_runs",
        MetricType::Counter,
        "Hook runs by hook and outcome (a run may stand for several coalesced events).",
    );
    for ((hook, result), n) in &agent.hook_runs {
        o.sample(
            labels([("hook", hook.as_str()), ("result", result)]),
            Sample::Counter(*n),
        );
    }
    o.family(
        "failover_promotions",
        MetricType::Counter,
        "Orchestrated failovers and switchovers of services with roles, by result.",
    );
    for ((s, result), n) in &agent.promotions {
        o.sample(
            labels([("service", s.as_str()), ("result", result)]),
            Sample::Counter(*n),
        );
    }
    o.family(
        "failover_promotion_failed",
        MetricType::Gauge,
        "1 while a service with roles stands in promotion-failed (no standby serves until an operator switches): alert on it.",
    );
    for (s, f) in &agent.promotion_failed {
        o.sample(labels([("service", s)]), Sample::Gauge(i64::from(*f)));
    }
    o.family(
        "failover_fencing_token",
        MetricType::Gauge,
        "The fencing token of a service with roles: the number of its last promotion.",
    );
    for (s, t) in &agent.promotion_token {
        o.sample(
            labels([("service", s)]),
            Sample::Gauge(i64::try_from(*t).unwrap_or(i64::MAX)),
        );
    }
    o.family(
        "failover_drill_rto_seconds",
        MetricType::Gauge,
        "The last `failover drill`'s measured recovery time: from the fence until the new active answered its check.",
    );
    for (s, t) in &agent.drill_rto {
        o.sample(labels([("service", s)]), Sample::GaugeF(*t));
    }
    if let Some(c) = &agent.cluster {
        let one = |o: &mut Scrape, name, help, v: bool| {
            o.family(name, MetricType::Gauge, help);
            o.sample(labels([]), Sample::Gauge(i64::from(v)));
        };
        one(
            &mut o,
            "failover_cluster_leader",
            "1 while this node is the cluster's elected leader.",
            c.leader,
        );
        one(
            &mut o,
            "failover_cluster_lease_valid",
            "1 while this node's etcd lease is surely alive (it may announce active-passive VIPs).",
            c.lease_valid,
        );
        one(
            &mut o,
            "failover_cluster_failsafe",
            "1 while this node has no lease but every peer confirms the same (an etcd outage): it keeps the decision in force.",
            c.failsafe,
        );
        one(
            &mut o,
            "failover_cluster_tables_agree",
            "0 when, as the leader sees it, the nodes acknowledged the decision in force with different Maglev table hashes (configs differ).",
            c.tables_agree,
        );
        o.family(
            "failover_cluster_decision",
            MetricType::Gauge,
            "The number of the cluster decision this node applied.",
        );
        o.sample(
            labels([]),
            Sample::Gauge(i64::try_from(c.decision).unwrap_or(i64::MAX)),
        );
        o.family(
            "failover_cluster_announced",
            MetricType::Gauge,
            "1 while this node announces the VIP to its BGP peers (through BIRD).",
        );
        for (vip, on) in &c.announced {
            o.sample(
                labels([("vip", vip.as_str())]),
                Sample::Gauge(i64::from(*on)),
            );
        }
    }
    if let Some(src) = src {
        dataplane(&mut o, src);
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(o));
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        warn!(error = %e, "encoding the metrics failed");
    }
    text
}

/// The dataplane's counters, from the pinned maps.
fn dataplane(o: &mut Scrape, src: &inspect::Source) {
    match inspect::services(src) {
        Ok(rows) => {
            o.family(
                "failover_service_packets",
                MetricType::Counter,
                "Packets per service and direction (forwarded to a backend, replies translated back, dropped).",
            );
            for r in &rows {
                for (dir, n) in [
                    ("forward", r.fwd_packets),
                    ("reply", r.reply_packets),
                    ("dropped", r.dropped_packets),
                ] {
                    let l = labels([("service", &r.service), ("direction", dir)]);
                    o.sample(l, Sample::Counter(n));
                }
            }
            o.family(
                "failover_service_bytes",
                MetricType::Counter,
                "Bytes forwarded to a backend per service.",
            );
            for r in &rows {
                let l = labels([("service", &r.service), ("direction", "forward")]);
                o.sample(l, Sample::Counter(r.fwd_bytes));
            }
        }
        Err(e) => warn!(error = %format!("{e:#}"), "metrics: dataplane services unavailable"),
    }
    if let Ok(rows) = inspect::backends(src, None) {
        o.family(
            "failover_backend_packets",
            MetricType::Counter,
            "Packets forwarded to each backend.",
        );
        for r in &rows {
            let l = labels([("service", &r.service), ("backend", &r.backend)]);
            o.sample(l, Sample::Counter(r.packets));
        }
        o.family(
            "failover_backend_bytes",
            MetricType::Counter,
            "Bytes forwarded to each backend.",
        );
        for r in &rows {
            let l = labels([("service", &r.service), ("backend", &r.backend)]);
            o.sample(l, Sample::Counter(r.bytes));
        }
        o.family(
            "failover_backend_state",
            MetricType::Gauge,
            "The state word in the dataplane's map (1 for the current one).",
        );
        for r in &rows {
            for st in ["up", "down", "draining", "disabled", "down-reset"] {
                let l = labels([
                    ("service", &r.service),
                    ("backend", &r.backend),
                    ("state", st),
                ]);
                o.sample(l, Sample::Gauge(i64::from(r.state == st)));
            }
        }
    }
    if let Ok(reasons) = inspect::reasons(src) {
        o.family(
            "failover_packets",
            MetricType::Counter,
            "Every packet the XDP program saw, by outcome (fwd_*, pass_*, drop_*, tx_*).",
        );
        for (k, v) in reasons {
            o.sample(labels([("outcome", k)]), Sample::Counter(v));
        }
    }
    if let Ok(st) = inspect::status(src) {
        o.family(
            "failover_dataplane_attached",
            MetricType::Gauge,
            "1 while the program runs on the interface, 0 when its link is off it.",
        );
        for (iface, up) in st
            .attached
            .iter()
            .map(|i| (i, 1))
            .chain(st.detached.iter().map(|i| (i, 0)))
        {
            o.sample(labels([("interface", iface.as_str())]), Sample::Gauge(up));
        }
        o.family(
            "failover_conntrack_entries",
            MetricType::Gauge,
            "Flows in the conntrack map.",
        );
        o.sample(
            Labels::new(),
            Sample::Gauge(i64::try_from(st.flows).unwrap_or(i64::MAX)),
        );
        o.family(
            "failover_conntrack_capacity",
            MetricType::Gauge,
            "Capacity of the conntrack map (LRU).",
        );
        o.sample(
            Labels::new(),
            Sample::Gauge(i64::from(st.conntrack_capacity)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_metrics_render_only_in_cluster_mode() {
        let m = AgentMetrics::default();
        assert!(!render(&m, None).contains("failover_cluster_"));
        let mut m = AgentMetrics::default();
        let mut c = ClusterMetrics {
            leader: true,
            decision: 7,
            lease_valid: true,
            tables_agree: true,
            ..Default::default()
        };
        c.announced.insert("198.18.100.10".into(), true);
        m.cluster = Some(c);
        let s = render(&m, None);
        for line in [
            "failover_cluster_leader 1\n",
            "failover_cluster_decision 7\n",
            "failover_cluster_lease_valid 1\n",
            "failover_cluster_failsafe 0\n",
            "failover_cluster_tables_agree 1\n",
            "failover_cluster_announced{vip=\"198.18.100.10\"} 1\n",
        ] {
            assert!(s.contains(line), "{line} not in\n{s}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut m = AgentMetrics {
            decision_to_map: PromHistogram::new(&[0.001, 0.01]),
            ..AgentMetrics::default()
        };
        m.decision_to_map.observe(0.0005);
        m.decision_to_map.observe(0.005);
        m.decision_to_map.observe(1.0);
        let s = render(&m, None);
        let x = "failover_decision_to_map_seconds";
        assert!(
            s.contains(&format!("{x}_bucket{{le=\"0.001\"}} 1\n")),
            "{s}"
        );
        assert!(s.contains(&format!("{x}_bucket{{le=\"0.01\"}} 2\n")), "{s}");
        assert!(s.contains(&format!("{x}_bucket{{le=\"+Inf\"}} 3\n")), "{s}");
        assert!(s.contains(&format!("{x}_count 3\n")), "{s}");
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
