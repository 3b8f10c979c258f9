//! Several load-balancer nodes behind BGP (`[cluster]`).
//!
//! - `bird.rs`: route health injection through a local BIRD (an include
//!   file and its control socket); the daemon never speaks BGP.
//! - `live.rs`: the announcement's tie to the daemon's life (a tun the
//!   routes point at) and a watchdog for a hung runtime.
//! - `etcd.rs`: the node's etcd session and its self-fence deadline.
//! - `keys.rs`: what the nodes keep in etcd.
//! - `failsafe.rs`: peers confirming each other through an etcd outage.
//! - `leader.rs`: the elected leader's policy and task (observations in,
//!   numbered decisions out).
//! - `promote.rs`: a promotion run by the leader, once per decision
//!   cluster-wide (`[service.promotion]`).
//! - `apply.rs`: every node applies decisions through the agent and
//!   acknowledges them with its tables' hash; it publishes its own
//!   observations.
//! - this file: wiring, and [`gate`], the pure rule of when a VIP is
//!   announced.
//!
//! The agent knows nothing of this module: it is driven through
//! [`AgentHandle`] (decisions in, backend views out).

pub mod apply;
pub mod bird;
pub mod etcd;
pub mod failsafe;
pub mod keys;
pub mod leader;
pub mod live;
pub mod promote;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    agent::{AgentHandle, BackendView},
    config::{Cluster, Config, CutOff, Service},
    model::State,
};

/// What the node knows that the gate needs.
#[derive(Debug, Default, Clone)]
pub struct NodeView {
    pub attached: bool,
    /// When the node may first announce (first probe round + warmup).
    pub warm_at: Option<Instant>,
    pub stopping: bool,
    /// The decision applied (with agreement), and the newest one seen.
    pub applied: Option<keys::Decision>,
    pub newest_seen: u64,
    /// The lease is surely alive (with agreement).
    pub lease_valid: bool,
    /// Not valid, but only just (`etcd::GRACE`): the failsafe may still
    /// engage.
    pub lease_grace: bool,
    /// Without a lease: every peer confirms it has none either and holds
    /// the same decision (`failsafe.rs`).
    pub failsafe_ok: bool,
    /// The agent's views (this node's own checks and its map words).
    pub local: Vec<BackendView>,
}

/// Whether this node announces `vip`, and why not. Every service on the
/// VIP must pass: the node is attached, warm and not stopping; with
/// agreement, it has applied the newest decision it has seen and (for an
/// active-passive service, or with `cut_off = "withdraw"`) its lease is
/// surely alive; and one of the service's serving backends (decided up,
/// or up in the map without agreement) passes this node's own checks.
pub fn gate(
    cluster: &Cluster,
    services: &[&Service],
    v: &NodeView,
    now: Instant,
) -> Result<(), String> {
    if v.stopping {
        return Err("stopping".into());
    }
    if !v.attached {
        return Err("not attached".into());
    }
    if v.warm_at.is_none_or(|t| now < t) {
        return Err("warming up".into());
    }
    let agreed = cluster.etcd.is_some();
    for s in services {
        let decided = if agreed {
            let Some(d) = &v.applied else {
                return Err("no decision applied yet".into());
            };
            if d.number < v.newest_seen {
                return Err(format!("decision {} not applied yet", v.newest_seen));
            }
            if !v.lease_valid
                && !v.lease_grace
                && !v.failsafe_ok
                && (s.active_passive() || cluster.cut_off == CutOff::Withdraw)
            {
                return Err(format!("{}: cut off from etcd", s.name));
            }
            d.services.get(&s.name)
        } else {
            None
        };
        // The serving tier: the first with a backend taking new flows (as
        // decided, or as the map has it without agreement); only its
        // backends count (a healthy standby does not serve).
        let takes = |b: &BackendView| match decided {
            Some(m) => m.get(&b.backend) == Some(&State::Up),
            None => b.map_word == "up",
        };
        let members = || v.local.iter().filter(|b| b.service == s.name);
        let serving_tier = members().filter(|b| takes(b)).map(|b| b.tier).min();
        let reachable = members().any(|b| {
            Some(b.tier) == serving_tier && takes(b) && matches!(b.health, "up" | "suspect")
        });
        if !reachable {
            return Err(format!(
                "{}: no serving backend passes this node's checks",
                s.name
            ));
        }
    }
    Ok(())
}

/// The running cluster tasks.
pub struct ClusterRt {
    view: Arc<Mutex<NodeView>>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    announcer: Option<JoinHandle<()>>,
    announcer_stop: watch::Sender<bool>,
    agent: watch::Sender<AgentHandle>,
    watchdog: Option<live::Watchdog>,
    _live: Option<live::LiveDevice>,
}

/// The services' VIPs, each with its services.
fn vips(cfg: &Config) -> BTreeMap<IpAddr, Vec<Service>> {
    let mut m: BTreeMap<IpAddr, Vec<Service>> = BTreeMap::new();
    for s in &cfg.services {
        m.entry(s.vip).or_default().push(s.clone());
    }
    m
}

/// A hash of the services' config: nodes that differ would build
/// different tables.
fn config_hash(cfg: &Config) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(format!("{:?}", cfg.services).as_bytes());
    format!("{:x}", h.finalize())[..16].to_string()
}

impl ClusterRt {
    /// Creates the liveness device (needs CAP_NET_ADMIN: before the
    /// capabilities are dropped) and starts the tasks. Nothing is
    /// announced until [`ClusterRt::attached`] and the warmup.
    pub fn start(
        cfg: &Config,
        agent: AgentHandle,
        metrics: crate::observe::metrics::Shared,
    ) -> anyhow::Result<Option<Self>> {
        let Some(cluster) = cfg.cluster.clone() else {
            return Ok(None);
        };
        let view = Arc::new(Mutex::new(NodeView::default()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (announcer_stop, announcer_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let prefix = cluster.prefix();
        let (agent_tx, agent) = watch::channel(agent);
        // The observer: this node's views, every 20 ms.
        tasks.push(tokio::spawn(apply::observe(
            agent.clone(),
            view.clone(),
            stop_rx.clone(),
        )));
        if let Some(f) = cluster.failsafe.clone() {
            let key = failsafe::read_key(&f.key_file)?;
            tasks.push(tokio::spawn(failsafe::run(
                cluster.node.clone(),
                f,
                key,
                view.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(e) = cluster.etcd.clone() {
            let (sess_tx, sess_rx) = watch::channel(etcd::Session::default());
            let info = keys::NodeInfo {
                node: cluster.node.clone(),
                pid: std::process::id(),
                config_hash: config_hash(cfg),
            };
            let info = serde_json::to_string(&info).context("encoding the node's key")?;
            tasks.push(tokio::spawn(etcd::run(
                e,
                keys::node(&prefix, &cluster.node),
                info,
                sess_tx,
                stop_rx.clone(),
            )));
            let (leader_tx, leader_rx) = watch::channel(false);
            tasks.push(tokio::spawn(report(
                view.clone(),
                leader_rx,
                metrics.clone(),
                stop_rx.clone(),
            )));
            tasks.push(tokio::spawn(leader::run(
                prefix.clone(),
                cluster.node.clone(),
                cfg.services.clone(),
                sess_rx.clone(),
                leader_tx,
                metrics.clone(),
                stop_rx.clone(),
            )));
            tasks.push(tokio::spawn(apply::run(
                prefix.clone(),
                cluster.node.clone(),
                agent.clone(),
                view.clone(),
                sess_rx,
                stop_rx.clone(),
            )));
        }
        let mut live = None;
        let mut announcer = None;
        let mut watchdog = None;
        if let Some(b) = cluster.bgp.clone() {
            live = Some(live::LiveDevice::create(&b.live_device)?);
            let wd = live::Watchdog::new(Duration::from_millis(900));
            watchdog = Some(wd.clone());
            announcer = Some(tokio::spawn(announce_task(
                cluster.clone(),
                b,
                vips(cfg),
                view.clone(),
                wd,
                metrics.clone(),
                announcer_rx,
            )));
        }
        info!(node = %cluster.node, cluster = %cluster.name, "cluster mode");
        Ok(Some(ClusterRt {
            view,
            stop_tx,
            tasks,
            announcer,
            announcer_stop,
            agent: agent_tx,
            watchdog,
            _live: live,
        }))
    }

    /// Starts the watchdog thread (after the capabilities are dropped).
    pub fn arm_watchdog(&self) -> anyhow::Result<()> {
        match &self.watchdog {
            Some(w) => w.arm(),
            None => Ok(()),
        }
    }

    /// A reload started a new agent: talk to it from now on.
    pub fn set_agent(&self, agent: AgentHandle) {
        self.agent.send_replace(agent);
    }

    /// The program is attached and the first probe round is in: the node
    /// may announce once `warmup` has passed too.
    pub fn attached(&self, warmup: Duration) {
        if let Ok(mut v) = self.view.lock() {
            v.attached = true;
            v.warm_at = Some(Instant::now() + warmup);
        }
    }

    /// Withdraws every announcement (and waits until BIRD has them down),
    /// then stops the tasks. Called before anything is detached.
    pub async fn stop(self) {
        if let Ok(mut v) = self.view.lock() {
            v.stopping = true;
        }
        let _ = self.announcer_stop.send(true);
        if let Some(a) = self.announcer {
            let _ = tokio::time::timeout(Duration::from_secs(3), a).await;
        }
        let _ = self.stop_tx.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

/// Copies the node's view into the metrics every 100 ms.
async fn report(
    view: Arc<Mutex<NodeView>>,
    leader: watch::Receiver<bool>,
    metrics: crate::observe::metrics::Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(v) = view.lock().map(|v| {
            (
                v.applied.as_ref().map_or(0, |d| d.number),
                v.lease_valid,
                v.failsafe_ok,
            )
        }) else {
            return;
        };
        if let Ok(mut m) = metrics.lock() {
            let c = m
                .cluster
                .get_or_insert_with(|| crate::observe::metrics::ClusterMetrics {
                    tables_agree: true,
                    ..Default::default()
                });
            (c.decision, c.lease_valid, c.failsafe) = v;
            c.leader = *leader.borrow();
        }
    }
}

/// Keeps BIRD's announcements equal to [`gate`]'s verdicts; beats the
/// watchdog. On stop: withdraws everything, then returns.
async fn announce_task(
    cluster: Cluster,
    bgp: crate::config::Bgp,
    vips: BTreeMap<IpAddr, Vec<Service>>,
    view: Arc<Mutex<NodeView>>,
    watchdog: live::Watchdog,
    metrics: crate::observe::metrics::Shared,
    mut stop: watch::Receiver<bool>,
) {
    let timeout = Duration::from_millis(500);
    let mut conn: Option<bird::Bird> = None;
    let mut shown: Option<BTreeMap<IpAddr, bool>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_verdicts: BTreeMap<IpAddr, String> = BTreeMap::new();
    loop {
        let stopping = *stop.borrow();
        if !stopping {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
        }
        watchdog.beat();
        let stopping = *stop.borrow();
        let now = Instant::now();
        let mut want = BTreeMap::new();
        {
            let Ok(mut v) = view.lock() else { return };
            if stopping {
                v.stopping = true;
            }
            for (vip, svcs) in &vips {
                let refs: Vec<&Service> = svcs.iter().collect();
                let verdict = gate(&cluster, &refs, &v, now);
                let text = match &verdict {
                    Ok(()) => "announced".to_string(),
                    Err(why) => format!("withdrawn: {why}"),
                };
                if last_verdicts.get(vip) != Some(&text) {
                    info!(vip = %vip, verdict = %text, "cluster: announcement");
                    last_verdicts.insert(*vip, text);
                }
                want.insert(*vip, verdict.is_ok());
            }
        }
        if let Ok(mut m) = metrics.lock() {
            let c = m.cluster.get_or_insert_with(Default::default);
            c.announced = want.iter().map(|(v, on)| (v.to_string(), *on)).collect();
        }
        if shown.as_ref() != Some(&want) || conn.is_none() {
            match push(&cluster, &bgp, &mut conn, shown.as_ref(), &want, timeout).await {
                Ok(()) => shown = Some(want.clone()),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cluster: updating BIRD failed (retrying)");
                    conn = None;
                    shown = None;
                    if stopping {
                        // No tick paces the loop while stopping.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        if stopping && shown.as_ref() == Some(&want) {
            // Wait until BIRD has the protocols down (bounded).
            if let Some(c) = conn.as_mut() {
                for _ in 0..50 {
                    match c.protocols("fo_").await {
                        Ok(p) if p.values().all(|s| s != "up") => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        Err(_) => break,
                    }
                }
            }
            return;
        }
    }
}

/// Writes the include for `want` and reconfigures BIRD; a VIP going from
/// announced to withdrawn is disabled first (fast, cannot fail on a bad
/// config).
async fn push(
    cluster: &Cluster,
    bgp: &crate::config::Bgp,
    conn: &mut Option<bird::Bird>,
    shown: Option<&BTreeMap<IpAddr, bool>>,
    want: &BTreeMap<IpAddr, bool>,
    timeout: Duration,
) -> anyhow::Result<()> {
    if conn.is_none() {
        *conn = Some(
            bird::Bird::connect(&bgp.control_socket, timeout)
                .await
                .context("connecting to BIRD")?,
        );
    }
    let c = conn.as_mut().context("no BIRD connection")?;
    let withdrawn: BTreeSet<IpAddr> = want
        .iter()
        .filter(|(vip, on)| !**on && shown.is_none_or(|s| s.get(vip) != Some(&false)))
        .map(|(v, _)| *v)
        .collect();
    for vip in &withdrawn {
        if let Err(e) = c.disable(&bird::proto_name(*vip)).await {
            // Not there yet (first start): the include below defines it.
            if !matches!(e, bird::BirdError::Refused { .. }) {
                return Err(e.into());
            }
        }
    }
    let text = bird::render(
        &cluster.node,
        &bgp.live_device,
        want,
        "one static protocol per VIP",
    );
    bird::write_include(&bgp.include, &text)
        .with_context(|| format!("writing {}", bgp.include.display()))?;
    c.configure().await.context("BIRD configure")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        crate::config::parse(
            &format!(
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
[cluster]
node = "lb1"
name = "t"
[cluster.bgp]
control_socket = "/s"
include = "/i"
{extra}
"#
            ),
            "t",
        )
        .expect("config")
    }

    fn view(b1: &'static str, b2: &'static str, word1: &'static str) -> Vec<BackendView> {
        let one = |name: &str, tier, health: &'static str, word| BackendView {
            service: "ap".into(),
            backend: name.into(),
            address: "198.18.1.2:80".parse().expect("addr"),
            tier,
            state: health,
            health,
            map_word: word,
            kept_last: false,
            role: None,
            role_settled: true,
        };
        vec![one("b1", 0, b1, word1), one("b2", 1, b2, "up")]
    }

    #[test]
    fn the_gate() {
        let c = cfg("[cluster.etcd]\nendpoints = [\"http://198.18.3.1:2379\"]");
        let cl = c.cluster.clone().expect("cluster");
        let s: Vec<&Service> = c.services.iter().collect();
        let now = Instant::now();
        let mut d = keys::Decision {
            number: 4,
            ..Default::default()
        };
        d.services.insert(
            "ap".into(),
            [("b1".to_string(), State::Up), ("b2".to_string(), State::Up)]
                .into_iter()
                .collect(),
        );
        let ok = NodeView {
            attached: true,
            warm_at: Some(now),
            stopping: false,
            applied: Some(d.clone()),
            newest_seen: 4,
            lease_valid: true,
            lease_grace: true,
            failsafe_ok: false,
            local: view("up", "up", "up"),
        };
        assert_eq!(gate(&cl, &s, &ok, now), Ok(()));
        let check = |f: &dyn Fn(&mut NodeView), want: &str| {
            let mut v = ok.clone();
            f(&mut v);
            let got = gate(&cl, &s, &v, now).expect_err("withdrawn");
            assert!(got.contains(want), "{got} lacks {want}");
        };
        check(&|v| v.stopping = true, "stopping");
        check(&|v| v.attached = false, "not attached");
        check(
            &|v| v.warm_at = Some(now + Duration::from_secs(1)),
            "warming up",
        );
        check(&|v| v.applied = None, "no decision");
        check(&|v| v.newest_seen = 5, "not applied");
        check(
            &|v| {
                v.lease_valid = false;
                v.lease_grace = false;
            },
            "cut off from etcd",
        );
        // Just lapsed: the failsafe's grace.
        let mut grace = ok.clone();
        grace.lease_valid = false;
        assert_eq!(gate(&cl, &s, &grace, now), Ok(()));
        // Every peer confirms it is cut off too, on the same decision.
        let mut outage = ok.clone();
        outage.lease_valid = false;
        outage.lease_grace = false;
        outage.failsafe_ok = true;
        assert_eq!(gate(&cl, &s, &outage, now), Ok(()));
        // This node cannot reach the decided serving backend; a healthy
        // standby does not make up for it.
        check(
            &|v| v.local = view("down", "up", "up"),
            "no serving backend",
        );
        // Failed over: the standby serves, and this node reaches it.
        let mut failed_over = ok.clone();
        if let Some(a) = failed_over.applied.as_mut() {
            a.services
                .get_mut("ap")
                .map(|m| m.insert("b1".into(), State::Down));
        }
        failed_over.local = view("down", "up", "up");
        assert_eq!(gate(&cl, &s, &failed_over, now), Ok(()));
        // ... but not if this node cannot reach the standby.
        check(
            &|v| {
                if let Some(a) = v.applied.as_mut() {
                    a.services
                        .get_mut("ap")
                        .map(|m| m.insert("b1".into(), State::Down));
                }
                v.local = view("up", "down", "up");
            },
            "no serving backend",
        );
    }
}
