//! The `cluster` section: node loss in the failover cluster (issue 16),
//! beside the keepalived VRRP baseline (`keepalived.rs`). The cluster lab
//! (`failover_lab::cluster`): two load balancers running the real daemon
//! with `[cluster]`, each announcing the VIP to a router over eBGP with
//! BIRD (BFD 20 ms x 3), ECMP at the router hashing on L4; etcd for the
//! decisions. One node (lb1) is lost three ways:
//!
//! - `kill -9` of its daemon (its liveness tun goes, its BIRD withdraws);
//! - its data link down (the router's BFD session times out: its bridge
//!   port loses carrier, its own interface, the bridge, does not);
//! - silent drop of everything on its link at the router's bridge port,
//!   carrier up (BFD again).
//!
//! A UDP client sends to VIP4:53 (`dns`, NAT, b1 answers) from 32 sockets
//! (32 source ports, so about half the flows hash to each node), one
//! request per socket every 10 ms. Per run: the router's withdrawal (its
//! next hops for the VIP are lb2 alone) from the event, each flow's longest
//! interval without an answer, the requests sent after the event and never
//! answered. Which node carries each flow (both ways: the NAT replies go
//! back through a live LB, chosen by ECMP in the router's return table) is
//! read from the router's FIB before the event (`ip route get` with the
//! flow's ports). Then the node is restored (daemon restarted, link up,
//! drop off) and the next run waits until both nodes are announced again:
//! one lab for all runs. Plus one TCP row: 16 long-lived flows (the lab's
//! flow client) through the `kill -9`, their longest gap and their
//! reconnects (flows lost).

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use failover_lab::cluster::{
    Backend, CLIENT_ADDR, ClusterLab, FlowOptions, NAT_UDP_PORT, Node, Options, UPLINK, VIP4,
    parse_nexthops,
};
use serde_json::{Value, json};

use super::{Opts, daemon_exe, ensure_packages, median};

/// The node lost in every run, and the one left.
const LOST: Node = Node::Lb1;
const KEPT: Node = Node::Lb2;
/// UDP flows (client sockets) and each one's request interval: a round of
/// 32 requests every 10 ms. (Every 2 ms, 16k requests/s, wedges the LBs'
/// veth towards the router within a second on this kernel: frames the LB
/// sends, XDP_TX and BIRD's BFD alike, are dropped from then on and both
/// nodes' BFD sessions time out; 3.2k/s runs clean.)
const UDP_FLOWS: usize = 32;
const EVERY: Duration = Duration::from_millis(10);
/// The TCP flows' request interval.
const TCP_EVERY: Duration = Duration::from_millis(10);
/// The `dns` service's VIP port.
const DNS_PORT: u16 = 53;
/// TCP flows for the TCP row.
const TCP_FLOWS: usize = 16;
/// How long the client keeps measuring after the withdrawal.
const AFTER: Duration = Duration::from_millis(400);
/// Answers before the event that count for the gaps.
const BEFORE: Duration = Duration::from_millis(200);
/// The niceness of the section's thread (and what it starts).
const NICE: libc::c_int = -10;
/// Bound of every wait for the router.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Kill,
    LinkDown,
    SilentDrop,
}

impl Event {
    const ALL: [Event; 3] = [Event::Kill, Event::LinkDown, Event::SilentDrop];

    /// The same keys as keepalived's section where the events match.
    pub fn key(self) -> &'static str {
        match self {
            Event::Kill => "kill",
            Event::LinkDown => "link-down",
            Event::SilentDrop => "silent-drop",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Event::Kill => "kill -9 of one node's daemon",
            Event::LinkDown => "one node's link down",
            Event::SilentDrop => "silent drop on one node (carrier up)",
        }
    }
}

/// One event over its runs (UDP).
pub struct Series {
    pub event: Event,
    /// From the event to the router routing the VIP through lb2 alone.
    pub withdrawal_ms: Vec<f64>,
    /// How long the event's own call took (the kill and reaping, the
    /// ioctl, `nft`): included in `withdrawal_ms`.
    pub event_call_ms: Vec<f64>,
    /// The longest gap of any flow.
    pub worst_gap_ms: Vec<f64>,
    /// When the worst gap began, ms from the event.
    pub worst_gap_start_ms: Vec<f64>,
    /// Median gap over the flows the router sent to the lost node.
    pub lost_node_gap_ms: Vec<f64>,
    /// Median gap over the flows whose replies only went through the lost
    /// node (their requests through the other).
    pub return_only_gap_ms: Vec<f64>,
    /// Median gap over the flows on the other node both ways.
    pub other_gap_ms: Vec<f64>,
    /// Flows to the lost node; flows whose replies went through it.
    pub flows_to_lost: Vec<usize>,
    pub flows_back_through_lost: Vec<usize>,
    pub lost: Vec<usize>,
}

/// The TCP row (kill -9).
pub struct TcpSeries {
    pub withdrawal_ms: Vec<f64>,
    pub worst_gap_ms: Vec<f64>,
    pub median_gap_ms: Vec<f64>,
    pub reconnects: Vec<u64>,
    pub failures: Vec<u64>,
}

pub struct Outcome {
    pub udp: Vec<Series>,
    pub tcp: TcpSeries,
}

pub fn run(o: &Opts, report: &mut Value) -> anyhow::Result<Outcome> {
    ensure_packages(&[
        ("bird", "bird2"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("nft", "nftables"),
    ])?;
    let exe = daemon_exe(o)?;
    let runs = if o.quick { 2 } else { 3 };
    // BFD at 20 ms x 3 on a shared two-core machine: what the lab starts
    // (BIRD, etcd, the daemons, the client) runs at a higher priority than
    // a compiler next to it.
    let _nice = Nice::set(NICE);
    let mut lab = Bench::create(&exe)?;
    let mut udp = Vec::new();
    for event in Event::ALL {
        let mut s = Series {
            event,
            withdrawal_ms: Vec::new(),
            event_call_ms: Vec::new(),
            worst_gap_ms: Vec::new(),
            worst_gap_start_ms: Vec::new(),
            lost_node_gap_ms: Vec::new(),
            return_only_gap_ms: Vec::new(),
            other_gap_ms: Vec::new(),
            flows_to_lost: Vec::new(),
            flows_back_through_lost: Vec::new(),
            lost: Vec::new(),
        };
        for i in 0..runs {
            let r = lab
                .udp_run(event)
                .with_context(|| format!("cluster, {}, run {i}", event.key()))?;
            s.withdrawal_ms.push(r.withdrawal_ms);
            s.event_call_ms.push(r.event_call_ms);
            s.worst_gap_ms.push(r.worst_gap_ms);
            s.worst_gap_start_ms.push(r.worst_gap_start_ms);
            s.lost_node_gap_ms.push(r.lost_node_gap_ms);
            s.return_only_gap_ms.push(r.return_only_gap_ms);
            s.other_gap_ms.push(r.other_gap_ms);
            s.flows_to_lost.push(r.flows_to_lost);
            s.flows_back_through_lost.push(r.flows_back_through_lost);
            s.lost.push(r.lost);
        }
        udp.push(s);
    }
    let mut tcp = TcpSeries {
        withdrawal_ms: Vec::new(),
        worst_gap_ms: Vec::new(),
        median_gap_ms: Vec::new(),
        reconnects: Vec::new(),
        failures: Vec::new(),
    };
    for i in 0..runs {
        let (w, worst, med, rec, fail) = lab
            .tcp_run()
            .with_context(|| format!("cluster, TCP, kill, run {i}"))?;
        tcp.withdrawal_ms.push(w);
        tcp.worst_gap_ms.push(worst);
        tcp.median_gap_ms.push(med);
        tcp.reconnects.push(rec);
        tcp.failures.push(fail);
    }
    report["cluster"] = json!({
        "nodes": 2,
        "lost_node": LOST.name(),
        "bgp": "eBGP, BIRD, BFD 20 ms x 3, ECMP (L4 hash) at the router",
        "client_interval_ms": EVERY.as_secs_f64() * 1e3,
        "udp_flows": UDP_FLOWS,
        "service": "dns (UDP VIP4:53, NAT, backend b1)",
        "cases": udp.iter().map(|s| json!({
            "event": s.event.key(),
            "what": s.event.what(),
            "runs": s.worst_gap_ms.len(),
            "withdrawal_ms": s.withdrawal_ms,
            "withdrawal_ms_median": median(s.withdrawal_ms.clone()),
            "withdrawal_ms_min": min(&s.withdrawal_ms),
            "withdrawal_ms_max": max(&s.withdrawal_ms),
            "event_call_ms": s.event_call_ms,
            "client_gap_ms": s.worst_gap_ms,
            "client_gap_ms_median": median(s.worst_gap_ms.clone()),
            "client_gap_ms_min": min(&s.worst_gap_ms),
            "client_gap_ms_max": max(&s.worst_gap_ms),
            "client_gap_start_ms": s.worst_gap_start_ms,
            "lost_node_flows_gap_ms_median": s.lost_node_gap_ms,
            "return_only_flows_gap_ms_median": s.return_only_gap_ms,
            "other_flows_gap_ms_median": s.other_gap_ms,
            "flows_to_lost_node": s.flows_to_lost,
            "flows_back_through_lost_node": s.flows_back_through_lost,
            "requests_lost": s.lost,
            "requests_lost_median": median(s.lost.iter().map(|&n| n as f64).collect()),
        })).collect::<Vec<_>>(),
        "tcp": {
            "event": Event::Kill.key(),
            "flows": TCP_FLOWS,
            "client_interval_ms": TCP_EVERY.as_secs_f64() * 1e3,
            "runs": tcp.worst_gap_ms.len(),
            "withdrawal_ms": tcp.withdrawal_ms,
            "client_gap_ms": tcp.worst_gap_ms,
            "client_gap_ms_median": median(tcp.worst_gap_ms.clone()),
            "client_gap_ms_min": min(&tcp.worst_gap_ms),
            "client_gap_ms_max": max(&tcp.worst_gap_ms),
            "flows_gap_ms_median": tcp.median_gap_ms,
            "reconnects": tcp.reconnects,
            "failed_requests": tcp.failures,
        },
    });
    Ok(Outcome { udp, tcp })
}

/// The calling thread's niceness (inherited by the threads and processes
/// it starts), restored on drop.
struct Nice(Option<libc::c_int>);

impl Nice {
    fn set(nice: libc::c_int) -> Self {
        // SAFETY: getpriority/setpriority on the calling thread (who 0);
        // errno distinguishes -1 as an error.
        unsafe {
            *libc::__errno_location() = 0;
            let was = libc::getpriority(libc::PRIO_PROCESS, 0);
            if *libc::__errno_location() != 0 {
                return Self(None);
            }
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                return Self(None);
            }
            Self(Some(was))
        }
    }
}

impl Drop for Nice {
    fn drop(&mut self) {
        if let Some(was) = self.0 {
            // SAFETY: setpriority on the calling thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, was) };
        }
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `median (min-max)`, in ms.
fn spread(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    format!("{:.0} ({:.0}-{:.0})", median(v.to_vec()), min(v), max(v))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn print(report: &Value, out: &Outcome) {
    let c = &report["cluster"];
    println!(
        "\n| failover cluster (2 nodes, BGP + BFD 20 ms x 3, ECMP), client UDP every {} ms on {} flows | runs | router withdrawal ms, median (min-max) | client gap ms, worst flow, median (min-max) | gap of the flows on the lost node ms (median) | requests lost (median) |",
        c["client_interval_ms"], c["udp_flows"]
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for s in &out.udp {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} |",
            s.event.what(),
            s.worst_gap_ms.len(),
            spread(&s.withdrawal_ms),
            spread(&s.worst_gap_ms),
            median(s.lost_node_gap_ms.clone()),
            median(s.lost.iter().map(|&n| n as f64).collect())
        );
    }
    let t = &out.tcp;
    println!(
        "| TCP, {TCP_FLOWS} long-lived flows: {} | {} | {} | {} | - | {} reconnects (flows lost) |",
        Event::Kill.what(),
        t.worst_gap_ms.len(),
        spread(&t.withdrawal_ms),
        spread(&t.worst_gap_ms),
        t.reconnects.iter().sum::<u64>()
    );
    let f = |v: &[usize]| median(v.iter().map(|&n| n as f64).collect());
    println!(
        "\n(flows per run to the lost node / replies through it, median: {})",
        out.udp
            .iter()
            .map(|s| format!(
                "{} {:.0}/{:.0}",
                s.event.key(),
                f(&s.flows_to_lost),
                f(&s.flows_back_through_lost)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_comparison(report);
}

/// "node loss: failover cluster vs keepalived VRRP", when the keepalived
/// section ran in the same report.
fn print_comparison(report: &Value) {
    let Some(cases) = report["keepalived"]["cases"].as_array() else {
        return;
    };
    let Some(ours) = report["cluster"]["cases"].as_array() else {
        return;
    };
    let ka = |event: &str, advert: f64| -> String {
        cases
            .iter()
            .find(|c| c["event"].as_str() == Some(event) && num(&c["advert_int_s"]) == advert)
            .map_or("-".to_string(), |c| {
                format!(
                    "{:.0} ({:.0}-{:.0})",
                    num(&c["client_gap_ms_median"]),
                    num(&c["client_gap_ms_min"]),
                    num(&c["client_gap_ms_max"])
                )
            })
    };
    println!("\nnode loss: failover cluster vs keepalived VRRP (client gap, ms, median (min-max))");
    println!(
        "\n| event | failover cluster: router withdrawal | failover cluster: client gap (worst of {} flows) | keepalived advert_int 1 s | keepalived advert_int 0.01 s |",
        report["cluster"]["udp_flows"]
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for c in ours {
        let key = c["event"].as_str().unwrap_or("?");
        println!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {} | {} |",
            c["what"].as_str().unwrap_or("?"),
            num(&c["withdrawal_ms_median"]),
            num(&c["withdrawal_ms_min"]),
            num(&c["withdrawal_ms_max"]),
            num(&c["client_gap_ms_median"]),
            num(&c["client_gap_ms_min"]),
            num(&c["client_gap_ms_max"]),
            ka(key, 1.0),
            ka(key, 0.01)
        );
    }
}

/// One UDP run's figures.
struct UdpOutcome {
    withdrawal_ms: f64,
    event_call_ms: f64,
    worst_gap_ms: f64,
    worst_gap_start_ms: f64,
    lost_node_gap_ms: f64,
    return_only_gap_ms: f64,
    other_gap_ms: f64,
    flows_to_lost: usize,
    flows_back_through_lost: usize,
    lost: usize,
}

struct Bench {
    lab: ClusterLab,
    exe: PathBuf,
}

impl Bench {
    fn create(exe: &Path) -> anyhow::Result<Self> {
        let prefix = failover_tests::unique("fcb");
        let lab = ClusterLab::create(
            &prefix,
            Options {
                warmup: "500ms".into(),
                ..Options::default()
            },
        )
        .context("the cluster lab")?;
        let mut b = Self {
            lab,
            exe: exe.to_path_buf(),
        };
        for n in Node::ALL {
            b.lab
                .start_daemon(n, exe)
                .with_context(|| format!("starting the daemon on {n}"))?;
        }
        for n in Node::ALL {
            b.lab
                .wait_daemon_attached(n)
                .with_context(|| format!("{n} not attached{}", b.diag()))?;
        }
        b.wait_both()?;
        Ok(b)
    }

    /// Tails of the daemons' logs and the router's routes, for errors.
    fn diag(&self) -> String {
        let mut out = String::new();
        for n in Node::ALL {
            let log = std::fs::read_to_string(self.lab.daemon_log(n)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out += &format!(
                "\n--- {n} daemon log (tail)\n{}",
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        out += &format!(
            "\n--- router\n{}",
            self.lab.router_birdc("show route").unwrap_or_default()
        );
        out
    }

    /// Both nodes announced (VIP and return path), then a moment for BFD
    /// and the flows to settle.
    fn wait_both(&self) -> anyhow::Result<()> {
        self.lab
            .wait_nexthops(VIP4, &[Node::Lb1, Node::Lb2], ROUTE_TIMEOUT)
            .with_context(|| format!("both nodes never announced{}", self.diag()))?;
        let start = Instant::now();
        while self.lab.return_nexthops()? != [Node::Lb1, Node::Lb2] {
            if start.elapsed() > ROUTE_TIMEOUT {
                bail!(
                    "the return path never went through both nodes{}",
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// Both nodes still announced just before an event (a BFD session
    /// that timed out under the machine's load would spoil the run).
    fn both_still(&self) -> anyhow::Result<()> {
        let hops = self.lab.router_nexthops(VIP4)?;
        if hops != [Node::Lb1, Node::Lb2] {
            bail!(
                "before the event the router routes the VIP via {hops:?} only (a BFD session timed out: the machine overloaded?){}",
                self.diag()
            );
        }
        Ok(())
    }

    /// The event on lb1.
    fn event(&mut self, e: Event) -> anyhow::Result<()> {
        match e {
            Event::Kill => self.lab.kill_daemon(LOST, libc::SIGKILL),
            // In-process (an ioctl): at the instant, not a process start
            // later.
            Event::LinkDown => self
                .lab
                .lb(LOST)
                .run(|| failover_lab::netns::set_link_up(UPLINK, false)),
            Event::SilentDrop => self.lab.silent_drop(LOST, true),
        }
    }

    fn restore(&mut self, e: Event) -> anyhow::Result<()> {
        match e {
            Event::Kill => {
                self.lab.start_daemon(LOST, &self.exe)?;
                self.lab
                    .wait_daemon_attached(LOST)
                    .with_context(|| format!("{LOST} not attached again{}", self.diag()))?;
            }
            Event::LinkDown => self.lab.uplink(LOST, true)?,
            Event::SilentDrop => self.lab.silent_drop(LOST, false)?,
        }
        self.wait_both()
    }

    /// The event, then the router's next hops polled until lb2 alone: the
    /// withdrawal (from before the event) and the event call's duration.
    fn event_and_withdrawal(&mut self, e: Event) -> anyhow::Result<(f64, f64)> {
        let t0 = Instant::now();
        self.event(e).context("the event")?;
        let call = t0.elapsed();
        self.lab
            .wait_nexthops(VIP4, &[KEPT], ROUTE_TIMEOUT)
            .with_context(|| format!("{LOST} never withdrawn{}", self.diag()))?;
        Ok((ms(t0.elapsed()), ms(call)))
    }

    /// The node each flow's requests (to the VIP) and replies (from b1)
    /// go through, from the router's FIB.
    fn paths(&self, port: u16) -> anyhow::Result<(Node, Node)> {
        let p = port.to_string();
        let dns = DNS_PORT.to_string();
        let nat = NAT_UDP_PORT.to_string();
        let one = |args: &[&str]| -> anyhow::Result<Node> {
            let out = self.lab.router.ip(args)?;
            let hops = parse_nexthops(&String::from_utf8_lossy(&out.stdout))?;
            match hops.as_slice() {
                [n] => Ok(*n),
                _ => bail!("`ip {}` gave next hops {hops:?}", args.join(" ")),
            }
        };
        let to = one(&[
            "-j",
            "route",
            "get",
            VIP4,
            "from",
            CLIENT_ADDR,
            "iif",
            "rc",
            "ipproto",
            "udp",
            "sport",
            &p,
            "dport",
            &dns,
        ])?;
        let back = one(&[
            "-j",
            "route",
            "get",
            CLIENT_ADDR,
            "from",
            Backend::B1.addr(),
            "iif",
            "dp",
            "ipproto",
            "udp",
            "sport",
            &nat,
            "dport",
            &p,
        ])?;
        Ok((to, back))
    }

    fn udp_run(&mut self, e: Event) -> anyhow::Result<UdpOutcome> {
        let client = UdpFlows::start(&self.lab)?;
        // A route may be missing for a moment (a BFD session that flapped
        // under load comes back within a second or two): ask again.
        let paths: Vec<(Node, Node)> = client
            .ports
            .iter()
            .map(|&p| {
                let mut tries = 0;
                loop {
                    match self.paths(p) {
                        Ok(v) => break Ok(v),
                        Err(e) if tries >= 30 => break Err(e),
                        Err(_) => {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .collect::<anyhow::Result<_>>()?;
        let steady_by = Instant::now() + Duration::from_secs(5);
        std::thread::sleep(Duration::from_millis(300));
        while !client.all_answering(Duration::from_millis(20)) {
            if Instant::now() > steady_by {
                bail!(
                    "not every flow was answered before the event{}",
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.both_still()?;
        let t0 = Instant::now();
        let (withdrawal_ms, event_call_ms) = self.event_and_withdrawal(e)?;
        // Until every flow has been answered for a while (bounded).
        std::thread::sleep(AFTER);
        let until = Instant::now() + Duration::from_secs(3);
        while !client.all_answering(Duration::from_millis(20)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let logs = client.stop();
        let end = Instant::now();
        self.restore(e)?;
        let mut lost = 0;
        let (mut to_lost, mut back_only, mut other) = (Vec::new(), Vec::new(), Vec::new());
        let (mut worst, mut worst_at): (f64, f64) = (0.0, 0.0);
        for (f, (to, back)) in logs.flows.iter().zip(&paths) {
            let (g, at) = f.gap_at(t0, end);
            if g > worst {
                (worst, worst_at) = (g, at);
            }
            lost += f.lost(&logs.sent, t0, end);
            if *to == LOST {
                to_lost.push(g);
            } else if *back == LOST {
                back_only.push(g);
            } else {
                other.push(g);
            }
        }
        Ok(UdpOutcome {
            withdrawal_ms,
            event_call_ms,
            worst_gap_ms: worst,
            worst_gap_start_ms: worst_at,
            flows_to_lost: to_lost.len(),
            flows_back_through_lost: paths.iter().filter(|(_, b)| *b == LOST).count(),
            lost_node_gap_ms: median(to_lost),
            return_only_gap_ms: median(back_only),
            other_gap_ms: median(other),
            lost,
        })
    }

    /// 16 long-lived TCP flows through `kill -9` of lb1's daemon: the
    /// withdrawal, the worst flow's and the median flow's longest gap, the
    /// reconnects and failed requests.
    fn tcp_run(&mut self) -> anyhow::Result<(f64, f64, f64, u64, u64)> {
        let client = self.lab.flow_client(&FlowOptions {
            flows: TCP_FLOWS,
            interval: TCP_EVERY,
            duration: Duration::from_secs(30),
            port: 80,
            timeout: Duration::from_millis(1500),
        });
        std::thread::sleep(Duration::from_millis(800));
        self.both_still()?;
        let (w, _) = self.event_and_withdrawal(Event::Kill)?;
        std::thread::sleep(Duration::from_millis(800));
        let reports = client.stop();
        self.restore(Event::Kill)?;
        let gaps: Vec<f64> = reports.iter().map(|r| ms(r.longest_gap)).collect();
        let answers: u64 = reports.iter().map(|r| r.answers).sum();
        if answers < TCP_FLOWS as u64 * 50 {
            bail!("too few TCP answers: {answers}{}", self.diag());
        }
        Ok((
            w,
            gaps.iter().copied().fold(0.0, f64::max),
            median(gaps),
            reports.iter().map(|r| r.reconnects).sum(),
            reports.iter().map(|r| r.failures).sum(),
        ))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What one flow saw: per answer, its arrival and sequence number.
#[derive(Default)]
struct FlowLog {
    answers: Vec<(Instant, u64)>,
}

impl FlowLog {
    /// The longest interval without an answer from [`BEFORE`] the event to
    /// the end (which counts as an answer: a flow never answered again has
    /// its whole outage as its gap).
    /// Also when it began, ms from the event (negative: before it).
    fn gap_at(&self, t0: Instant, end: Instant) -> (f64, f64) {
        let from = t0.checked_sub(BEFORE).unwrap_or(t0);
        let mut last = None::<Instant>;
        let (mut g, mut at) = (Duration::ZERO, from);
        for t in self
            .answers
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= from)
            .chain([end])
        {
            if let Some(l) = last
                && t.saturating_duration_since(l) > g
            {
                g = t.saturating_duration_since(l);
                at = l;
            }
            last = Some(t);
        }
        let start = if at >= t0 { ms(at - t0) } else { -ms(t0 - at) };
        (ms(g), start)
    }

    /// Requests sent after the event (until 50 ms before the end) never
    /// answered.
    fn lost(&self, sent: &[Instant], t0: Instant, end: Instant) -> usize {
        let until = end.checked_sub(Duration::from_millis(50)).unwrap_or(end);
        let answered: std::collections::HashSet<u64> =
            self.answers.iter().map(|(_, s)| *s).collect();
        sent.iter()
            .enumerate()
            .filter(|(seq, t)| **t >= t0 && **t <= until && !answered.contains(&(*seq as u64)))
            .count()
    }
}

struct Logs {
    /// Send time of each round (a request per flow, the round's number).
    sent: Vec<Instant>,
    flows: Vec<FlowLog>,
}

/// The UDP client: [`UDP_FLOWS`] connected sockets in the client's
/// namespace, a request `f<flow>n<round>` on each every [`EVERY`] (one
/// sender thread), answers (`b1 f<flow>n<round>`) read by a second thread
/// polling them all.
struct UdpFlows {
    ports: Vec<u16>,
    /// Per flow, its last answer (ns since `start`; 0: none yet).
    last: Arc<Vec<AtomicU64>>,
    start: Instant,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Vec<Instant>>>,
    receiver: Option<JoinHandle<Vec<FlowLog>>>,
}

impl UdpFlows {
    fn start(lab: &ClusterLab) -> anyhow::Result<Self> {
        let to = SocketAddr::from((
            VIP4.parse::<std::net::Ipv4Addr>().context("VIP4")?,
            DNS_PORT,
        ));
        let socks: Vec<UdpSocket> = lab.client.run(|| {
            (0..UDP_FLOWS)
                .map(|_| {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    s.connect(to)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect::<anyhow::Result<_>>()
        })?;
        let ports = socks
            .iter()
            .map(|s| Ok(s.local_addr()?.port()))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let tx: Vec<UdpSocket> = socks
            .iter()
            .map(UdpSocket::try_clone)
            .collect::<Result<_, _>>()?;
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let last: Arc<Vec<AtomicU64>> =
            Arc::new((0..UDP_FLOWS).map(|_| AtomicU64::new(0)).collect());
        let st = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut next = Instant::now();
            let mut seq: u64 = 0;
            // Bounded: the section never runs a client this long.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                let at = Instant::now();
                for (i, s) in tx.iter().enumerate() {
                    let _ = s.send(format!("f{i}n{seq}").as_bytes());
                }
                sent.push(at);
                seq += 1;
                next += EVERY;
                // Behind by far (the machine stalled): do not burst.
                if at > next + Duration::from_millis(50) {
                    next = at + EVERY;
                }
            }
            sent
        });
        let (st, lt) = (stop.clone(), last.clone());
        let receiver = std::thread::spawn(move || {
            let mut logs: Vec<FlowLog> = (0..UDP_FLOWS).map(|_| FlowLog::default()).collect();
            let mut fds: Vec<libc::pollfd> = socks
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let mut buf = [0u8; 128];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: poll(2) on our sockets' fds (alive as long as
                // `socks`), with their count.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
                if n <= 0 {
                    continue;
                }
                for (i, s) in socks.iter().enumerate() {
                    if fds[i].revents == 0 {
                        continue;
                    }
                    fds[i].revents = 0;
                    // Errors (an ICMP error on a connected socket) are
                    // skipped like silence.
                    while let Ok(len) = s.recv(&mut buf) {
                        let at = Instant::now();
                        if let Some(seq) = parse_answer(&buf[..len], i) {
                            logs[i].answers.push((at, seq));
                            lt[i].store(
                                at.duration_since(start).as_nanos().max(1) as u64,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
            }
            logs
        });
        Ok(Self {
            ports,
            last,
            start,
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Every flow answered within `within`.
    fn all_answering(&self, within: Duration) -> bool {
        let now = self.start.elapsed().as_nanos() as u64;
        self.last.iter().all(|l| {
            let t = l.load(Ordering::Relaxed);
            t != 0 && now.saturating_sub(t) <= within.as_nanos() as u64
        })
    }

    fn stop(mut self) -> Logs {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .sender
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let flows = self
            .receiver
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        Logs { sent, flows }
    }
}

impl Drop for UdpFlows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
    }
}

/// `<backend> f<flow>n<seq>` for flow `flow`: its sequence number.
fn parse_answer(b: &[u8], flow: usize) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    let (_, req) = s.split_once(' ')?;
    let (f, n) = req.strip_prefix('f')?.split_once('n')?;
    (f.parse::<usize>().ok()? == flow).then_some(())?;
    n.parse().ok()
}
