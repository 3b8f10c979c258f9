//! The cluster (issue 16) with the real daemon on both load balancers of
//! the cluster lab (`failover-lab/src/cluster.rs`): BIRD announcing the
//! VIP over BGP + BFD, decisions agreed through a three-member etcd, a
//! client measuring each long-lived flow. Integrity figures are asserted
//! exactly (flows lost, split-brain windows); times are printed (the bench
//! reports them). Needs root, bird2, etcd, nft; fails, never skips.

use std::time::{Duration, Instant};

use failover_lab::cluster::{
    ClusterLab, FlowOptions, FlowReport, Mode, Node, Options, VIP4, summarize,
};

fn failover_exe() -> std::path::PathBuf {
    failover_tests::failover_exe()
}

fn lab(tag: &str, opts: Options) -> ClusterLab {
    failover_tests::require_root();
    let prefix = failover_tests::unique(tag);
    match ClusterLab::create(&prefix, opts) {
        Ok(l) => l,
        Err(e) => panic!("creating the cluster lab: {e:#}"),
    }
}

fn diag(lab: &ClusterLab) -> String {
    let mut out = String::new();
    for n in [Node::Lb1, Node::Lb2] {
        out += &format!(
            "--- {n} daemon log (tail)\n{}\n--- {n} include\n{}\n--- {n} bird\n{}\n",
            std::fs::read_to_string(lab.daemon_log(n))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(lab.include_path(n)).unwrap_or_default(),
            lab.birdc(n, "show protocols").unwrap_or_default(),
        );
    }
    out += &format!(
        "--- router\n{}\n",
        lab.router_birdc("show route").unwrap_or_default()
    );
    out
}

/// Both daemons up and both nodes announcing.
fn start_both(lab: &mut ClusterLab) {
    let exe = failover_exe();
    for n in [Node::Lb1, Node::Lb2] {
        if let Err(e) = lab.start_daemon(n, &exe) {
            panic!("starting the daemon on {n}: {e:#}\n{}", diag(lab));
        }
    }
    for n in [Node::Lb1, Node::Lb2] {
        if let Err(e) = lab.wait_daemon_attached(n) {
            panic!("{n} not attached: {e:#}\n{}", diag(lab));
        }
    }
    if let Err(e) = lab.wait_nexthops(VIP4, &[Node::Lb1, Node::Lb2], Duration::from_secs(20)) {
        panic!("both nodes never announced: {e:#}\n{}", diag(lab));
    }
}

fn wait_hops(lab: &ClusterLab, want: &[Node], what: &str) -> Duration {
    match lab.wait_nexthops(VIP4, want, Duration::from_secs(10)) {
        Ok(d) => {
            println!(
                "{what}: router has {want:?} after {:.1} ms",
                d.as_secs_f64() * 1e3
            );
            d
        }
        Err(e) => panic!("{what}: {e:#}\n{}", diag(lab)),
    }
}

fn lost(reports: &[FlowReport]) -> u64 {
    reports.iter().map(|r| r.reconnects).sum()
}

fn longest_gap(reports: &[FlowReport]) -> Duration {
    reports
        .iter()
        .map(|r| r.longest_gap)
        .max()
        .unwrap_or_default()
}

/// A node lost three ways (daemon killed, link down, silent drop) and
/// back each time, under 16 long-lived flows: no flow is lost, neither
/// when traffic leaves a node nor when it comes back (failback), and every
/// answer comes from the primary (no tier moved).
fn node_loss(mode: Mode, tag: &str) {
    let mut lab = lab(
        tag,
        Options {
            mode,
            warmup: "500ms".into(),
            ..Options::default()
        },
    );
    start_both(&mut lab);
    let client = lab.flow_client(&FlowOptions {
        flows: 16,
        interval: Duration::from_millis(10),
        duration: Duration::from_secs(40),
        port: 80,
        timeout: Duration::from_millis(1500),
    });
    std::thread::sleep(Duration::from_millis(800));
    // 1. kill -9 of lb1's daemon: its tun goes with it.
    let t = Instant::now();
    lab.kill_daemon(Node::Lb1, libc::SIGKILL).expect("kill");
    wait_hops(&lab, &[Node::Lb2], "lb1's daemon killed");
    println!(
        "  (kill to withdrawal {:.1} ms)",
        t.elapsed().as_secs_f64() * 1e3
    );
    std::thread::sleep(Duration::from_millis(500));
    // Back: it waits until warm, then the flows hashed to it return.
    lab.start_daemon(Node::Lb1, &failover_exe())
        .expect("restart");
    lab.wait_daemon_attached(Node::Lb1).expect("attached");
    wait_hops(&lab, &[Node::Lb1, Node::Lb2], "lb1 back (failback)");
    std::thread::sleep(Duration::from_millis(800));
    // 2. lb1's link down, then up.
    lab.uplink(Node::Lb1, false).expect("link down");
    wait_hops(&lab, &[Node::Lb2], "lb1's link down");
    std::thread::sleep(Duration::from_millis(500));
    lab.uplink(Node::Lb1, true).expect("link up");
    wait_hops(&lab, &[Node::Lb1, Node::Lb2], "lb1's link up");
    std::thread::sleep(Duration::from_millis(800));
    // 3. silent drop on lb2 (carrier up): BFD.
    lab.silent_drop(Node::Lb2, true).expect("drop");
    wait_hops(&lab, &[Node::Lb1], "silent drop on lb2");
    std::thread::sleep(Duration::from_millis(500));
    lab.silent_drop(Node::Lb2, false).expect("undrop");
    wait_hops(&lab, &[Node::Lb1, Node::Lb2], "lb2 back");
    std::thread::sleep(Duration::from_millis(800));
    let reports = client.stop();
    println!("{}", summarize(&reports));
    println!(
        "longest gap of any flow: {:.1} ms",
        longest_gap(&reports).as_secs_f64() * 1e3
    );
    let answers: u64 = reports.iter().map(|r| r.answers).sum();
    assert!(
        answers > 16 * 50,
        "too few answers: {answers}\n{}",
        diag(&lab)
    );
    assert_eq!(lost(&reports), 0, "flows lost\n{}", diag(&lab));
    let b2: u64 = reports
        .iter()
        .map(|r| r.by_backend.get("b2").copied().unwrap_or(0))
        .sum();
    assert_eq!(
        b2,
        0,
        "answers from the standby: a tier moved\n{}",
        diag(&lab)
    );
}

#[test]
fn node_loss_nat_loses_no_flow() {
    node_loss(Mode::Nat, "fcn");
}

#[test]
fn node_loss_dsr_loses_no_flow() {
    node_loss(Mode::Dsr, "fcd");
}
