//! Namespace tests: real packets between network namespaces made here, the
//! real daemon (`failover --netns ... daemon`) on the load balancer, real
//! TCP and UDP servers on two backends. Needs root; fails (never skips)
//! without it. Every namespace, pin and file is removed at the end, also
//! on failure.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use failover_lab::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, Conn, DaemonProcess, LB_IFACES, Server, Topology,
    tcp_request, udp_request, vip,
};

const T: Duration = Duration::from_millis(1000);

/// Per-test names and directories, removed on drop.
type Scratch = failover_lab::Workdir;

fn scratch() -> Scratch {
    Scratch::new("fot").expect("scratch dir")
}

fn require_root() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "namespace tests need root: run `cargo xtask test`"
    );
}

fn exe() -> PathBuf {
    failover_tests::failover_exe()
}

fn set_state(config: &std::path::Path, service: &str, backend: &str, state: &str) {
    failover_lab::set_state(&exe(), config, service, backend, state).expect("set-state");
}

/// Asks until `want` answers (the first answer after a switch may still be
/// in flight), bounded in time; returns how long it took.
fn until_answered_by(f: impl Fn() -> anyhow::Result<String>, want: &str) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(5) {
        match f() {
            Ok(who) if who == want => return start.elapsed(),
            Ok(who) => last = who,
            Err(e) => last = format!("error: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{want} never answered within 5 s (last: {last})");
}

struct Lab {
    topo: Topology,
    config: PathBuf,
    daemon: DaemonProcess,
    servers: Vec<Server>,
    s: Scratch,
}

fn start_lab() -> Lab {
    require_root();
    let s = scratch();
    let topo = Topology::create(&s.prefix).expect("creating the lab topology");
    let config = s.dir.join("lab.toml");
    std::fs::write(&config, topo.config(&s.bpffs, &s.dir.join("state"))).expect("writing config");
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let servers = vec![
        Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1 servers"),
        Server::start(&topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2 servers"),
    ];
    let mut daemon =
        DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("starting the daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("daemon attached");
    Lab {
        topo,
        config,
        daemon,
        servers,
        s,
    }
}

/// The client reaches the VIP over IPv4 (TCP, UDP) and IPv6 (TCP) and the
/// primary answers; after the primary is marked down in the map the next
/// requests are answered by the standby, while established connections to
/// a healthy backend carry on undisturbed; after it is marked up again new
/// flows go back to it and flows on the standby stay there.
#[test]
fn failover_through_the_map_keeps_healthy_connections() {
    let mut lab = start_lab();
    let c = &lab.topo.client;

    for i in 0..20 {
        assert_eq!(
            tcp_request(c, vip(false, 80), &format!("v4-{i}"), T).expect("tcp to VIP"),
            "b1"
        );
    }
    for i in 0..10 {
        assert_eq!(
            udp_request(c, vip(false, 53), &format!("dns-{i}"), T).expect("udp to VIP"),
            "b1"
        );
    }
    for i in 0..10 {
        assert_eq!(
            tcp_request(c, vip(true, 80), &format!("v6-{i}"), T).expect("tcp to VIPv6"),
            "b1"
        );
    }

    // Established connections: one to `api` (primary b2, stays healthy) and
    // one to `web` on b1 (about to be marked down).
    let mut api = Conn::open(c, vip(false, 81), T).expect("api connection");
    assert_eq!(api.ask("api-before").unwrap(), "b2");
    let mut web_b1 = Conn::open(c, vip(false, 80), T).expect("web connection");
    assert_eq!(web_b1.ask("web-before").unwrap(), "b1");

    // Mark b1 down in web, dns and web6: one map write each.
    let t0 = Instant::now();
    for svc in ["web", "dns", "web6"] {
        set_state(&lab.config, svc, "b1", "down");
    }
    let took = until_answered_by(|| tcp_request(c, vip(false, 80), "switch", T), "b2");
    println!(
        "first standby answer {:?} after the set-state calls started ({:?} of requests)",
        t0.elapsed(),
        took
    );
    for i in 0..20 {
        assert_eq!(
            tcp_request(c, vip(false, 80), &format!("after-{i}"), T).unwrap(),
            "b2",
            "new TCP flows go to the standby"
        );
    }
    for i in 0..10 {
        assert_eq!(
            udp_request(c, vip(false, 53), &format!("dns-after-{i}"), T).unwrap(),
            "b2",
            "UDP moves too"
        );
    }
    for i in 0..10 {
        assert_eq!(
            tcp_request(c, vip(true, 80), &format!("v6-after-{i}"), T).unwrap(),
            "b2",
            "IPv6 moves too"
        );
    }
    // The connection to the healthy b2 was not disturbed.
    for i in 0..20 {
        assert_eq!(api.ask(&format!("api-during-{i}")).unwrap(), "b2");
    }
    // The flow pinned to b1 now goes to b2, which has no such connection:
    // it must not be answered by b1 any more (b2 resets it).
    assert!(
        web_b1.ask("web-after").is_err(),
        "a flow of a backend marked down must not reach it"
    );

    // A connection opened during the failover, on b2.
    let mut on_b2 = Conn::open(c, vip(false, 80), T).unwrap();
    assert_eq!(on_b2.ask("on-b2").unwrap(), "b2");

    // b1 back up: new flows go to it; the established one stays on b2.
    set_state(&lab.config, "web", "b1", "up");
    until_answered_by(|| tcp_request(c, vip(false, 80), "back", T), "b1");
    for i in 0..10 {
        assert_eq!(
            on_b2.ask(&format!("still-{i}")).unwrap(),
            "b2",
            "established flow stays on its healthy backend"
        );
        assert_eq!(
            tcp_request(c, vip(false, 80), &format!("new-{i}"), T).unwrap(),
            "b1"
        );
    }
    assert_eq!(api.ask("api-end").unwrap(), "b2");

    let status = lab.daemon.terminate().expect("daemon stops on SIGTERM");
    assert!(status.success(), "daemon exit status {status}");
    assert!(
        !lab.s.bpffs.join("SERVICES").exists(),
        "--detach-on-exit unpins the maps"
    );
    lab.servers.clear();
}

/// A backend whose server process died: requests fail until it is marked
/// down, then the standby answers them; the UDP answer comes from the VIP
/// (replies are translated back), never from the backend's address.
#[test]
fn dead_primary_then_marked_down() {
    let mut lab = start_lab();
    let c = &lab.topo.client;
    assert_eq!(tcp_request(c, vip(false, 80), "hello", T).unwrap(), "b1");
    // Kill b1's servers.
    let b1 = lab.servers.remove(0);
    b1.stop();
    assert!(
        tcp_request(c, vip(false, 80), "dead", T).is_err(),
        "b1 is dead and still in the map"
    );
    set_state(&lab.config, "web", "b1", "down");
    set_state(&lab.config, "dns", "b1", "down");
    until_answered_by(|| tcp_request(c, vip(false, 80), "x", T), "b2");
    // udp_request checks the answer's source is the VIP itself.
    assert_eq!(udp_request(c, vip(false, 53), "q", T).unwrap(), "b2");
    drop(lab);
}

/// A config error names the field and changes nothing: the daemon exits
/// non-zero before touching the kernel.
#[test]
fn daemon_refuses_a_bad_config() {
    require_root();
    let s = scratch();
    let bad = s.dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[daemon]\ninterfaces = [\"lo\"]\nbpffs = \"{}\"\n[[service]]\nname = \"web\"\nvip = \"198.18.100.10\"\nport = 80\n[[service.backend]]\nname = \"b\"\naddress = \"198.18.1.999\"\n",
            s.bpffs.display()
        ),
    )
    .unwrap();
    let out = Command::new(exe())
        .args(["daemon", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service[0].backend[0].address: \"198.18.1.999\" is not an IP address"),
        "{err}"
    );
    assert!(!s.bpffs.exists(), "nothing was pinned");
    let _ = failover_lab::netns::ip(&["-V"]);
}

/// The README's run command (`failover-lab demo`, what `cargo xtask
/// build-and-run` runs with no arguments), shortened: it must show the
/// failover and leave nothing behind.
#[test]
fn lab_demo_shows_failover_and_cleans_up() {
    require_root();
    // Without --failover: the demo runs the `failover` next to it, as
    // `cargo xtask build-and-run` relies on.
    let out = Command::new(failover_tests::built_binary("failover-lab"))
        .args([
            "demo",
            "--duration",
            "3",
            "--kill-after",
            "1",
            "--interval-ms",
            "10",
        ])
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("lab: failover: b2 answered"),
        "no failover shown:\n{stdout}"
    );
    assert!(stdout.contains("client-side recovery time"), "{stdout}");
    let prefix = format!("fod{}", out_pid_hint(&stdout));
    let list = failover_lab::netns::ip(&["netns", "list"]).expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&prefix),
        "namespaces left behind"
    );
}

/// The namespace prefix the demo printed ("creating namespaces fodNNNNc").
fn out_pid_hint(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("fod")
                .and_then(|r| r.strip_suffix('c'))
                .map(str::to_string)
        })
        .expect("the demo names its namespaces")
}

/// On an interface whose driver has no native XDP (loopback), `auto` falls
/// back to generic mode with a warning, and `native` fails clearly.
#[test]
fn generic_mode_fallback() {
    require_root();
    let s = scratch();
    let ns = failover_lab::netns::Netns::new(&format!("{}g", s.prefix)).expect("netns");
    let write = |mode: &str| {
        let cfg = s.dir.join(format!("{mode}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[daemon]\ninterfaces = [\"lo\"]\nxdp_mode = \"{mode}\"\nbpffs = \"{}\"\nstate_dir = \"{}\"\n",
                s.bpffs.join(mode).display(),
                s.dir.join(mode).display()
            ),
        )
        .unwrap();
        cfg
    };
    let native = write("native");
    let out = Command::new(exe())
        .args([
            "--netns",
            &ns.name,
            "daemon",
            "--detach-on-exit",
            "--config",
        ])
        .arg(&native)
        .output()
        .unwrap();
    assert!(!out.status.success(), "native XDP on loopback must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("attaching XDP in native mode to lo"), "{err}");

    let auto = write("auto");
    let mut d = DaemonProcess::spawn(&exe(), &ns.name, &auto).expect("daemon");
    d.wait_attached(&s.bpffs.join("auto"), &["lo"])
        .expect("attached in generic mode");
    let link = ns.ip(&["link", "show", "lo"]).expect("ip link");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdpgeneric"),
        "{}",
        String::from_utf8_lossy(&link.stdout)
    );
    assert!(d.terminate().expect("stops").success());
}

/// `kill -9` of the daemon under a steady request stream: the dataplane
/// keeps forwarding with its last state (fail-static), and the restarted
/// daemon adopts the pinned link and maps (same map ids, conntrack kept,
/// an established connection carries on), losing no request.
#[test]
fn kill_9_and_restart_loses_nothing() {
    let mut lab = start_lab();
    let src = failover_user::dataplane::inspect::Source {
        bpffs: lab.s.bpffs.clone(),
        state_dir: lab.s.dir.join("state"),
    };
    let c = lab.topo.client.name.clone();
    let mut conn = Conn::open(&lab.topo.client, vip(false, 80), T).expect("connection");
    assert_eq!(conn.ask("before").unwrap(), "b1");
    let before = failover_user::dataplane::inspect::status(&src).expect("status");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let stream = std::thread::spawn(move || {
        failover_user::sys::netns::enter_named(&c).expect("client netns");
        let mut results = Vec::new();
        while !stop2.load(Ordering::Relaxed) {
            results.push(
                failover_lab::tcp_request_here(vip(false, 80), "s", T)
                    .map_err(|e| format!("{e:#}")),
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        results
    });
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: SIGKILL to our own child.
    unsafe { libc::kill(lab.daemon.0.id() as libc::pid_t, libc::SIGKILL) };
    let _ = lab.daemon.0.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        conn.ask("daemon dead").unwrap(),
        "b1",
        "fail-static: forwarding goes on without the daemon"
    );
    lab.daemon = DaemonProcess::spawn(&exe(), &lab.topo.lb.name, &lab.config).expect("restart");
    // The restarted daemon is up once it has rewritten its layout.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let results = stream.join().expect("stream");
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let answered = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|w| w == "b1"))
        .count();
    println!(
        "kill -9 + restart: {} requests, {answered} answered by b1, {} failed",
        results.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "requests lost: {failed:?}");
    assert_eq!(answered, results.len());
    assert_eq!(
        conn.ask("after").unwrap(),
        "b1",
        "the established connection survived"
    );
    let after = failover_user::dataplane::inspect::status(&src).expect("status");
    assert_eq!(before.maps, after.maps, "same maps (ids) after the restart");
    assert!(after.flows >= before.flows, "conntrack kept");
    assert_eq!(after.attached, ["lb1", "lb2", "lc"]);
}

/// Pinned maps made for other `[limits]` are refused with what differs,
/// not silently reused; with the old limits the daemon adopts them again.
#[test]
fn pinned_maps_of_other_limits_are_refused() {
    let mut lab = start_lab();
    // SAFETY: SIGKILL to our own child: the pins stay.
    unsafe { libc::kill(lab.daemon.0.id() as libc::pid_t, libc::SIGKILL) };
    let _ = lab.daemon.0.wait();
    let text = std::fs::read_to_string(&lab.config).expect("config");
    let other = lab.s.dir.join("other.toml");
    std::fs::write(
        &other,
        text.replacen(
            "[[service]]",
            "[limits]\nconntrack_entries = 1234\n\n[[service]]",
            1,
        ),
    )
    .expect("write");
    let out = Command::new(exe())
        .args(["--netns", &lab.topo.lb.name, "daemon", "--config"])
        .arg(&other)
        .output()
        .expect("daemon");
    assert!(!out.status.success(), "must refuse");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CONNTRACK was made by another version or for other [limits]"),
        "{err}"
    );
    assert!(
        err.contains("max_entries 65536 (this config: 1234)"),
        "{err}"
    );
    // The dataplane kept running meanwhile, and the old config adopts it.
    assert_eq!(
        tcp_request(&lab.topo.client, vip(false, 80), "x", T).unwrap(),
        "b1"
    );
    lab.daemon = DaemonProcess::spawn(&exe(), &lab.topo.lb.name, &lab.config).expect("restart");
    lab.daemon
        .wait_attached(&lab.s.bpffs, &LB_IFACES)
        .expect("attached");
}

/// DSR through real namespaces, with no health checks: the backends hold
/// the VIP on loopback and answer the client directly; the daemon keeps
/// their neighbour entries (XDP cannot resolve them) so the first packet
/// already goes through; marking the primary down moves traffic.
#[test]
fn dsr_end_to_end() {
    require_root();
    let s = scratch();
    let topo = Topology::create(&s.prefix).expect("topology");
    for b in &topo.backends {
        b.ip(&["addr", "add", "198.18.100.10/32", "dev", "lo"])
            .expect("VIP on lo");
    }
    let x = failover_lab::LabExtras {
        service_keys: "mode = \"dsr\"".into(),
        ..Default::default()
    };
    let config = s.dir.join("lab.toml");
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &x),
    )
    .expect("config");
    let ports = [80, 81, BACKEND_TCP_PORT];
    let _servers = [
        Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1"),
        Server::start(&topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2"),
    ];
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("attached");
    let c = &topo.client;
    let first = Instant::now();
    let who = loop {
        match tcp_request(c, vip(false, 80), "dsr", Duration::from_millis(300)) {
            Ok(w) => break w,
            Err(e) => assert!(
                first.elapsed() < Duration::from_secs(3),
                "DSR never answered: {e:#}"
            ),
        }
    };
    assert_eq!(who, "b1");
    for i in 0..10 {
        assert_eq!(
            tcp_request(c, vip(false, 80), &format!("d{i}"), T).unwrap(),
            "b1"
        );
    }
    set_state(&config, "web", "b1", "down");
    until_answered_by(|| tcp_request(c, vip(false, 80), "x", T), "b2");
    assert!(daemon.terminate().expect("stops").success());
}

/// Signals while the daemon starts (verifying the program takes a second
/// or more): SIGHUPs sent every 20 ms from its spawn neither kill it (the
/// default action of an unhandled SIGHUP) nor fail the program load (the
/// verifier gives up with EAGAIN when a signal is pending): it attaches,
/// runs, and serves.
#[test]
fn sighup_storm_during_start() {
    require_root();
    let s = scratch();
    let topo = Topology::create(&s.prefix).expect("creating the lab topology");
    let config = s.dir.join("lab.toml");
    std::fs::write(&config, topo.config(&s.bpffs, &s.dir.join("state"))).expect("writing config");
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let _b1 = Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1");
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    let pid = daemon.0.id() as libc::pid_t;
    // From 50 ms after the spawn (the process has reached its main).
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        daemon.0.try_wait().expect("daemon status").is_none(),
        "the daemon survived SIGHUPs during its start"
    );
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("daemon attached");
    assert_eq!(
        tcp_request(&topo.client, vip(false, 80), "after-hups", T).expect("served"),
        "b1"
    );
    let status = daemon.terminate().expect("daemon stops on SIGTERM");
    assert!(status.success(), "daemon exit status {status}");
}
