//! The cluster (issue 16) with the real daemon on both load balancers of
//! the cluster lab (`failover-lab/src/cluster.rs`): BIRD announcing the
//! VIP over BGP + BFD, decisions agreed through a three-member etcd, a
//! client measuring each long-lived flow. Integrity figures are asserted
//! exactly (flows lost, split-brain windows); times are printed (the bench
//! reports them). Needs root, bird2, etcd, nft; fails, never skips.

use std::time::{Duration, Instant};

use failover_lab::cluster::{
    Backend, ClusterLab, FlowOptions, FlowReport, Member, Mode, Node, Options, VIP4, summarize,
};

fn failover_exe() -> std::path::PathBuf {
    failover_tests::failover_exe()
}

/// One cluster lab at a time: each runs two BIRDs with BFD at 20 ms x 3,
/// three etcd members and two daemons; side by side on a 2-core machine
/// they would starve each other's BFD and measure the machine, not the
/// cluster.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let client = long_flows(&lab, Duration::from_secs(40));
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
    let _serial = serial();
    node_loss(Mode::Nat, "fcn");
}

#[test]
fn node_loss_dsr_loses_no_flow() {
    let _serial = serial();
    node_loss(Mode::Dsr, "fcd");
}

/// 16 long-lived TCP flows to `web`, a request every 10 ms each, for at
/// most `duration`.
fn long_flows(lab: &ClusterLab, duration: Duration) -> failover_lab::cluster::FlowClient {
    lab.flow_client(&FlowOptions {
        flows: 16,
        interval: Duration::from_millis(10),
        duration,
        port: 80,
        timeout: Duration::from_millis(1500),
    })
}

/// The lab with [`CHECK`] on every service, both daemons running and both
/// nodes announcing.
fn checked_lab(tag: &str) -> ClusterLab {
    let mut lab = lab(
        tag,
        Options {
            check: Some(CHECK.into()),
            warmup: "500ms".into(),
            ..Options::default()
        },
    );
    start_both(&mut lab);
    lab
}

/// Fast TCP checks for every service (detection in ~100 ms).
const CHECK: &str = "type = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

/// Opens a new connection through the VIP every `every` until stopped;
/// the backends' accept logs say who took each.
struct NewFlows {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    t: std::thread::JoinHandle<(u64, u64)>,
}

impl NewFlows {
    fn start(lab: &ClusterLab, every: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let ns = lab.client.name.clone();
        let to: std::net::SocketAddr = format!("{VIP4}:80").parse().expect("vip");
        let t = std::thread::spawn(move || {
            // This thread lives in the client's namespace.
            let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("client ns");
            // SAFETY: setns on an fd we own, for this thread only.
            let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns into the client's namespace");
            let (mut ok, mut failed) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match failover_lab::tcp_request_here(to, "new", Duration::from_millis(300)) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                std::thread::sleep(every);
            }
            (ok, failed)
        });
        NewFlows { stop, t }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.t.join().expect("new-flows thread")
    }
}

/// The split-brain window after `since`: how long the old tier still took
/// new flows after the new tier took its first (0: never both).
fn split_window(lab: &ClusterLab, since: Instant, old: Backend, new: Backend) -> Duration {
    let first_new = lab.accepts(new).into_iter().filter(|t| *t >= since).min();
    let last_old = lab.accepts(old).into_iter().filter(|t| *t >= since).max();
    match (first_new, last_old) {
        (Some(n), Some(o)) if o > n => o - n,
        _ => Duration::ZERO,
    }
}

/// One node cut off from the primary backend only: the cluster keeps the
/// primary (one node of two seeing it down moves nothing), the cut-off
/// node withdraws (it cannot reach a serving backend), no new flow ever
/// reaches the standby, no flow is lost; healed, the node comes back.
#[test]
fn a_node_cut_off_from_the_primary_moves_no_tier() {
    let _serial = serial();
    let lab = checked_lab("fcp");
    let since = Instant::now();
    let client = long_flows(&lab, Duration::from_secs(30));
    let fresh = NewFlows::start(&lab, Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(800));
    lab.cut_backend(Node::Lb1, Backend::B1, true).expect("cut");
    wait_hops(&lab, &[Node::Lb2], "lb1 cut off from b1");
    std::thread::sleep(Duration::from_secs(2));
    lab.cut_backend(Node::Lb1, Backend::B1, false)
        .expect("heal");
    wait_hops(&lab, &[Node::Lb1, Node::Lb2], "lb1 reaches b1 again");
    std::thread::sleep(Duration::from_millis(800));
    let (ok, failed) = fresh.stop();
    let reports = client.stop();
    println!("{}", summarize(&reports));
    println!("new connections: {ok} answered, {failed} failed");
    let b2_new = lab
        .accepts(Backend::B2)
        .into_iter()
        .filter(|t| *t >= since)
        .count();
    assert_eq!(
        b2_new,
        0,
        "the standby took new flows: split brain\n{}",
        diag(&lab)
    );
    assert_eq!(lost(&reports), 0, "flows lost\n{}", diag(&lab));
    assert!(ok > 100, "too few new connections answered: {ok}");
}

/// A node cut off from etcd withdraws its (active-passive) VIP before its
/// lease can lapse; the other node serves every flow; nothing is lost and
/// no tier moves; reconnected, it applies the decision in force and
/// announces again.
#[test]
fn a_node_cut_off_from_etcd_withdraws() {
    let _serial = serial();
    let lab = checked_lab("fce");
    let client = long_flows(&lab, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800));
    let t = Instant::now();
    lab.cut_etcd(Node::Lb1, true).expect("cut");
    // When lb1 stops being announced, and when the majority (lb2 and the
    // witness) deletes lb1's lease: the withdrawal must come first.
    let key = format!("/failover/v1/{}/nodes/lb1", lab.prefix);
    let eps = format!(
        "{},{}",
        Member::Witness.client_url(),
        Member::Lb(Node::Lb2).client_url()
    );
    let (mut withdrawn, mut deleted) = (None, None);
    while (withdrawn.is_none() || deleted.is_none()) && t.elapsed() < Duration::from_secs(15) {
        if withdrawn.is_none() && lab.router_nexthops(VIP4).unwrap_or_default() == vec![Node::Lb2] {
            withdrawn = Some(t.elapsed());
        }
        if deleted.is_none()
            && let Ok(out) = lab.etcdctl_from(Member::Witness, &eps, &["get", &key, "--keys-only"])
            && !out.contains("nodes/lb1")
        {
            deleted = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "  lb1 cut off from etcd: withdrawn after {withdrawn:?}, its lease deleted by the majority after {deleted:?}"
    );
    let (Some(w), Some(d)) = (withdrawn, deleted) else {
        panic!(
            "withdrawn {withdrawn:?}, deleted {deleted:?}\n{}",
            diag(&lab)
        );
    };
    assert!(
        w < d,
        "lb1 still announced when its lease lapsed\n{}",
        diag(&lab)
    );
    std::thread::sleep(Duration::from_secs(3));
    lab.cut_etcd(Node::Lb1, false).expect("heal");
    wait_hops(&lab, &[Node::Lb1, Node::Lb2], "lb1 reconnected");
    std::thread::sleep(Duration::from_millis(800));
    let reports = client.stop();
    println!("{}", summarize(&reports));
    assert_eq!(lost(&reports), 0, "flows lost\n{}", diag(&lab));
    let b2: u64 = reports
        .iter()
        .map(|r| r.by_backend.get("b2").copied().unwrap_or(0))
        .sum();
    assert_eq!(b2, 0, "answers from the standby\n{}", diag(&lab));
}

/// The primary dies, then comes back: both moves are fence-then-switch,
/// so at no instant do the two tiers both take new flows (new connections
/// every 5 ms, spread over both nodes by ECMP).
#[test]
fn failover_and_failback_have_no_split_brain_window() {
    let _serial = serial();
    let mut lab = checked_lab("fcf");
    let fresh = NewFlows::start(&lab, Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(800));
    let t_fail = Instant::now();
    lab.kill_backend(Backend::B1);
    std::thread::sleep(Duration::from_secs(2));
    let t_back = Instant::now();
    lab.start_backend(Backend::B1).expect("b1 back");
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed) = fresh.stop();
    println!("new connections: {ok} answered, {failed} failed");
    let b2_first = lab
        .accepts(Backend::B2)
        .into_iter()
        .filter(|t| *t >= t_fail)
        .min();
    let b1_again = lab
        .accepts(Backend::B1)
        .into_iter()
        .filter(|t| *t >= t_back)
        .min();
    println!(
        "standby's first new flow {:?} after the kill; primary's first {:?} after its return",
        b2_first.map(|t| t - t_fail),
        b1_again.map(|t| t - t_back)
    );
    assert!(b2_first.is_some(), "never failed over\n{}", diag(&lab));
    assert!(b1_again.is_some(), "never failed back\n{}", diag(&lab));
    let w_back = split_window(&lab, t_back, Backend::B2, Backend::B1);
    assert_eq!(
        w_back,
        Duration::ZERO,
        "split brain on failback\n{}",
        diag(&lab)
    );
}

/// etcd down, all of it: the nodes keep the decision in force and keep
/// announcing (each confirms the other is cut off too, over the failsafe's
/// authenticated datagrams); nothing flaps, nothing is lost; etcd back,
/// the cluster goes on.
#[test]
fn etcd_down_changes_nothing() {
    let _serial = serial();
    let mut lab = checked_lab("fcx");
    let client = long_flows(&lab, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800));
    lab.stop_etcd_all();
    // Well past the lease TTL (3 s): both nodes still announce, every
    // 100 ms of it.
    let until = Instant::now() + Duration::from_secs(5);
    let mut samples = 0;
    while Instant::now() < until {
        let hops = lab.router_nexthops(VIP4).unwrap_or_default();
        assert_eq!(
            hops,
            vec![Node::Lb1, Node::Lb2],
            "a node withdrew with etcd down\n{}",
            diag(&lab)
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let reports = client.stop();
    println!("{}", summarize(&reports));
    println!("both nodes announced in all {samples} samples with etcd down");
    assert_eq!(lost(&reports), 0, "flows lost\n{}", diag(&lab));
}

/// The files a promotion test's backends "are": `<b>.primary` makes the
/// active check pass, `<b>.standby` the standby check; the promote hook
/// logs each run and turns its backend into the primary after 2 s.
struct RoleFiles(std::path::PathBuf);

impl RoleFiles {
    fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::path::PathBuf::from(format!("/tmp/{tag}-roles"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("roles dir");
        // Checks and hooks run as `nobody`.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::write(dir.join("b1.primary"), "").expect("b1");
        std::fs::write(dir.join("b2.standby"), "").expect("b2");
        std::fs::write(
            dir.join("promote.sh"),
            format!(
                "#!/bin/sh\necho \"start $1 $2\" >> {d}/runs\nsleep 2\nrm -f {d}/$1.standby\ntouch {d}/$1.primary\necho \"end $1 $2\" >> {d}/runs\n",
                d = dir.display()
            ),
        )
        .expect("promote.sh");
        RoleFiles(dir)
    }

    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.0.join("runs"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The `web` service's checks and promotion (replacing its `none`
    /// check in the lab's config).
    fn service_text(&self) -> String {
        let d = self.0.display();
        format!(
            "[service.check]\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"test -f {d}/{{backend}}.primary\"]\ninterval = \"50ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n\
             [service.promotion]\npromote = [\"/bin/sh\", \"{d}/promote.sh\", \"{{backend}}\", \"{{token}}\"]\nready_within = \"15s\"\n"
        ) + &format!(
            "[service.promotion.standby_check]\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"test -f {d}/{{backend}}.standby\"]\ninterval = \"50ms\"\ntimeout = \"500ms\"\n"
        )
    }
}

impl Drop for RoleFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The cluster lab with roles on `web` (see [`RoleFiles`]), both daemons
/// running and announcing.
fn roles_lab(tag: &str) -> (ClusterLab, RoleFiles) {
    let mut lab = lab(
        tag,
        Options {
            warmup: "500ms".into(),
            ..Options::default()
        },
    );
    let roles = RoleFiles::new(&lab.prefix);
    let exe = failover_exe();
    for n in [Node::Lb1, Node::Lb2] {
        let text = lab.config(n, true).replacen(
            "[service.check]\ntype = \"none\"\n",
            &roles.service_text(),
            1,
        );
        let path = lab.config_path(n);
        std::fs::write(&path, text).expect("config");
        if let Err(e) = lab.start_daemon_with(n, &exe, &path) {
            panic!("starting {n}: {e:#}\n{}", diag(&lab));
        }
    }
    for n in [Node::Lb1, Node::Lb2] {
        lab.wait_daemon_attached(n).expect("attached");
    }
    if let Err(e) = lab.wait_nexthops(VIP4, &[Node::Lb1, Node::Lb2], Duration::from_secs(20)) {
        panic!("never announced: {e:#}\n{}", diag(&lab));
    }
    (lab, roles)
}

/// After a promotion of b2 that began at `t`: b2 takes new flows, the
/// promote hook ran once, and b1 took no new flow after b2's first.
fn promoted_once_without_split(lab: &ClusterLab, roles: &RoleFiles, fresh: NewFlows, t: Instant) {
    let wait = Instant::now();
    while lab.accepts(Backend::B2).into_iter().all(|a| a < t)
        && wait.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = fresh.stop();
    println!(
        "new connections: {ok} answered, {failed} failed; hook runs: {:?}",
        roles.runs()
    );
    let starts = roles
        .runs()
        .iter()
        .filter(|l| l.starts_with("start"))
        .count();
    assert_eq!(
        starts,
        1,
        "the promote hook ran {starts} times\n{}",
        diag(lab)
    );
    let Some(first_b2) = lab
        .accepts(Backend::B2)
        .into_iter()
        .filter(|a| *a >= t)
        .min()
    else {
        panic!("the new active never took a new flow\n{}", diag(lab));
    };
    let late_b1 = lab
        .accepts(Backend::B1)
        .into_iter()
        .filter(|a| *a >= first_b2)
        .count();
    assert_eq!(
        late_b1,
        0,
        "split brain: b1 took new flows after b2\n{}",
        diag(lab)
    );
}

/// The node leading the cluster now (etcd's election: the oldest key).
fn leader(lab: &ClusterLab) -> Option<Node> {
    let eps = format!(
        "{},{}",
        Member::Witness.client_url(),
        Member::Lb(Node::Lb2).client_url()
    );
    let key = format!("/failover/v1/{}/election", lab.prefix);
    let out = lab
        .etcdctl_from(
            Member::Witness,
            &eps,
            &[
                "get",
                "--prefix",
                &key,
                "--sort-by=CREATE",
                "--order=ASCEND",
                "--print-value-only",
            ],
        )
        .ok()?;
    match out.lines().next()?.trim() {
        "lb1" => Some(Node::Lb1),
        "lb2" => Some(Node::Lb2),
        _ => None,
    }
}

/// An active-passive service with roles: its primary is lost, the leader
/// starts the promote hook and is killed in the middle of it. The other
/// node takes over as leader, finds the hook recorded for that decision,
/// does not run it again, waits until the standby is ready and completes
/// the switch. The hook ran once; the old primary took no new flow after
/// the new one took its first.
#[test]
fn leader_killed_mid_promote_hook_runs_it_once() {
    let _serial = serial();
    let (mut lab, roles) = roles_lab("fck");
    let Some(first_leader) = leader(&lab) else {
        panic!("no leader\n{}", diag(&lab));
    };
    let fresh = NewFlows::start(&lab, Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    // The primary is lost.
    std::fs::remove_file(roles.0.join("b1.primary")).expect("rm");
    let t = Instant::now();
    while !roles.runs().iter().any(|l| l.starts_with("start b2")) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the promote hook never started\n{}",
            diag(&lab)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The leader dies in the middle of the hook.
    lab.kill_daemon(first_leader, libc::SIGKILL).expect("kill");
    let survivor = match first_leader {
        Node::Lb1 => Node::Lb2,
        Node::Lb2 => Node::Lb1,
    };
    println!(
        "leader {first_leader} killed {:?} after the primary was lost",
        t.elapsed()
    );
    // The switch completes: the survivor announces with b2 serving.
    if let Err(e) = lab.wait_nexthops(VIP4, &[survivor], Duration::from_secs(20)) {
        panic!("the switch never completed: {e:#}\n{}", diag(&lab));
    }
    println!(
        "switch completed {:?} after the primary was lost",
        t.elapsed()
    );
    promoted_once_without_split(&lab, &roles, fresh, t);
}

/// A planned switchover asked of one node (`failover switch` against lb2's
/// admin socket) is carried out by the leader for the whole cluster: the
/// active fenced on every node, the promote hook run once, the standby the
/// active; no new flow reaches the old active after the new one's first.
#[test]
fn a_planned_switchover_through_any_node() {
    let _serial = serial();
    let (lab, roles) = roles_lab("fcs");
    let exe = failover_exe();
    let fresh = NewFlows::start(&lab, Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let out = std::process::Command::new(&exe)
        .args(["switch", "web", "--to", "b2", "--config"])
        .arg(lab.config_path(Node::Lb2))
        .output()
        .expect("failover switch");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("failover switch ({:?}): {said}", t.elapsed());
    assert!(
        out.status.success(),
        "the switch failed: {said}\n{}",
        diag(&lab)
    );
    if let Err(e) = lab.wait_nexthops(VIP4, &[Node::Lb1, Node::Lb2], Duration::from_secs(10)) {
        panic!("not announced after the switch: {e:#}\n{}", diag(&lab));
    }
    promoted_once_without_split(&lab, &roles, fresh, t);
    // b1 rebuilt as a standby: the nodes agree it passes the standby check,
    // its planned fence is lifted, and a drill through lb1 moves the
    // service back to it (the hook once more, for b1).
    std::fs::remove_file(roles.0.join("b1.primary")).expect("rm b1.primary");
    std::fs::write(roles.0.join("b1.standby"), "").expect("b1.standby");
    let t = Instant::now();
    let drill = loop {
        let out = std::process::Command::new(&exe)
            .args(["drill", "web", "--to", "b1", "--config"])
            .arg(lab.config_path(Node::Lb1))
            .output()
            .expect("failover drill");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // Refused while b1 is still fenced (the nodes have not agreed yet).
        if out.status.success() || t.elapsed() > Duration::from_secs(10) {
            break (out.status.success(), said);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("failover drill ({:?}): {}", t.elapsed(), drill.1);
    assert!(drill.0, "the drill failed: {}\n{}", drill.1, diag(&lab));
    let b1_runs = roles
        .runs()
        .iter()
        .filter(|l| l.starts_with("start b1"))
        .count();
    assert_eq!(
        b1_runs,
        1,
        "the promote hook ran {b1_runs} times for b1\n{}",
        diag(&lab)
    );
}
