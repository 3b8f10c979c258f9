//! Passive failure detection, end to end: the real daemon with
//! `[service.passive]` on the lab, real servers that really die, a link that
//! really goes silent, real clients. Probes are slow (every 5 s) so that
//! only the datapath can have moved the traffic; the agent's immediate
//! probe then confirms. Times are printed, never asserted.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use failover_lab::raw;
use failover_lab::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, DaemonProcess, LB_IFACES, LabExtras, Server, Topology,
    client, tcp_request, vip,
};

/// Slow probes: the datapath, not a probe, must notice the failure.
const SLOW_TCP: &str = "type = \"tcp\"\ninterval = \"5s\"\nfast_interval = \"5s\"\ntimeout = \"200ms\"\nfall = 3\nrise = 2";

struct Lab {
    topo: Topology,
    _daemon: DaemonProcess,
    servers: Vec<Option<Server>>,
    events: PathBuf,
    _w: failover_lab::Workdir,
}

fn start(passive: &str) -> Lab {
    start_with(passive, "")
}

/// `check_extra`: lines added to the `[service.check]` table.
fn start_with(passive: &str, check_extra: &str) -> Lab {
    start_full(passive, check_extra, "")
}

/// `tables`: tables added to every service (e.g. `[[service.hook]]`).
fn start_full(passive: &str, check_extra: &str, tables: &str) -> Lab {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "namespace tests need root: run `cargo xtask test`"
    );
    let w = failover_lab::Workdir::new("fop").expect("scratch dir");
    let topo = Topology::create(&w.prefix).expect("lab topology");
    let events = w.dir.join("events.jsonl");
    let extras = LabExtras {
        check: Some(format!("{SLOW_TCP}\n{check_extra}")),
        checked_tables: format!("[service.passive]\n{passive}\n"),
        events_file: Some(events.clone()),
        service_tables: tables.to_string(),
        top: "[admin]\nmetrics_listen = \"off\"\n".into(),
        ..Default::default()
    };
    let config = w.dir.join("lab.toml");
    std::fs::write(
        &config,
        topo.config_with(&w.bpffs, &w.dir.join("state"), &extras),
    )
    .expect("config");
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let servers = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            Some(
                Server::start(ns, &format!("b{}", i + 1), &ports, BACKEND_UDP_PORT)
                    .expect("servers"),
            )
        })
        .collect();
    let exe = failover_tests::failover_exe();
    let mut daemon = DaemonProcess::spawn(&exe, &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&w.bpffs, &LB_IFACES)
        .expect("attached");
    Lab {
        topo,
        _daemon: daemon,
        servers,
        events,
        _w: w,
    }
}

impl Lab {
    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) for an event of `kind` about web/b1.
    fn wait(&self, kind: &str) -> serde_json::Value {
        self.wait_for(kind, |e| e["kind"] == kind)
    }

    /// Waits (bounded) for an event about web/b1 matching `f`.
    fn wait_for(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["service"] == "web" && e["backend"] == "b1" && f(e))
            {
                return e;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "no {what} event for web/b1 within 10 s: {:#?}",
            self.events()
        );
    }

    fn ask(&self) -> String {
        tcp_request(
            &self.topo.client,
            vip(false, 80),
            "x",
            Duration::from_millis(500),
        )
        .expect("request answered")
    }
}

/// The primary's process dies while a client opens a connection every
/// millisecond: the refusals (RSTs answering SYNs) mark it down in the
/// datapath, the traffic moves to the standby long before the 5 s probe,
/// and the agent's immediate probe confirms.
#[test]
fn killed_primary_fails_over_without_waiting_for_a_probe() {
    let mut lab = start("signals = [\"rst\"]\nfailures = 3\nwindow = \"1s\"");
    assert_eq!(lab.ask(), "b1");
    let t0 = Instant::now();
    let h = client::stream(
        &lab.topo.client.name,
        vip(false, 80),
        t0,
        Duration::from_millis(1200),
    );
    std::thread::sleep(Duration::from_millis(300));
    let fail_at = t0.elapsed();
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    let samples = h.join().expect("client");
    let down = lab.wait("passive-down");
    assert_eq!(down["signal"], "rst", "{down}");
    let confirmed = lab.wait("passive-confirmed");
    let (rec, lost) = client::recovery(&samples, fail_at, "b2").expect("the standby answered");
    println!(
        "passive (rst): client-side recovery {:.1} ms, {lost} requests lost; confirmed: {confirmed}",
        rec.as_secs_f64() * 1e3
    );
    // Everything from shortly after the switch on is answered by b2: the
    // switch happened within the stream, well before any 5 s probe.
    let tail: Vec<_> = samples
        .iter()
        .filter(|s| s.sent > fail_at + rec + Duration::from_millis(20))
        .collect();
    assert!(tail.len() > 300, "the stream went on after the switch");
    assert!(tail.iter().all(|s| s.who.as_deref() == Some("b2")));
    assert!(
        lab.events()
            .iter()
            .all(|e| !(e["kind"] == "passive-restored" && e["backend"] == "b1")),
        "a dead backend must not be restored"
    );
}

/// The primary's link goes silent: clients' SYNs go unanswered, the kernel
/// retransmits them after a second, and those retransmissions mark the
/// backend down; the next retransmission of the same connections reaches
/// the standby, and the connections complete.
#[test]
fn silent_backend_is_detected_from_syn_retransmissions() {
    let lab = start("signals = [\"syn-retransmit\"]\nfailures = 2\nwindow = \"10s\"");
    assert_eq!(lab.ask(), "b1");
    lab.topo.backends[0]
        .ip(&["link", "set", "b1", "down"])
        .expect("silence b1");
    let to: SocketAddr = vip(false, 80);
    let t0 = Instant::now();
    let conns: Vec<_> = (0..4)
        .map(|_| {
            let name = lab.topo.client.name.clone();
            std::thread::spawn(move || -> Option<Duration> {
                failover_user::sys::netns::enter_named(&name).ok()?;
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(8)).ok()?;
                drop(s);
                Some(t0.elapsed())
            })
        })
        .collect();
    let down = lab.wait("passive-down");
    assert_eq!(down["signal"], "syn-retransmit", "{down}");
    let done: Vec<Option<Duration>> = conns
        .into_iter()
        .map(|c| c.join().expect("thread"))
        .collect();
    println!(
        "silent backend: connections completed at {done:?} (SYN retransmission at ~1 s and ~3 s)"
    );
    assert!(
        done.iter().any(Option::is_some),
        "a connection whose SYNs went unanswered completed on the standby"
    );
    assert_eq!(lab.ask(), "b2");
    lab.wait("passive-confirmed");
}

/// A single refused connection (the primary's listener gone for a moment)
/// is below `failures = 3`: no mark, no failover, b1 keeps serving.
#[test]
fn a_single_spurious_rst_does_not_fail_over() {
    let mut lab = start("signals = [\"rst\"]\nfailures = 3\nwindow = \"10s\"");
    assert_eq!(lab.ask(), "b1");
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    let refused = tcp_request(
        &lab.topo.client,
        vip(false, 80),
        "x",
        Duration::from_millis(500),
    );
    assert!(refused.is_err(), "the one request is refused: {refused:?}");
    lab.servers[0] = Some(
        Server::start(
            &lab.topo.backends[0],
            "b1",
            &[BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1],
            BACKEND_UDP_PORT,
        )
        .expect("b1 back"),
    );
    for _ in 0..50 {
        assert_eq!(lab.ask(), "b1");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        lab.events()
            .iter()
            .all(|e| e["kind"] != "passive-down" && e["kind"] != "failover"),
        "{:#?}",
        lab.events()
    );
}

/// The datapath and the probes disagree: the service port refuses (the
/// datapath marks b1 down) while the health-check port answers. The
/// agent's probes pass, so the mark is a false alarm: b1 is restored
/// (whatever the failback policy), and serves again.
#[test]
fn a_mark_the_probes_do_not_confirm_is_restored() {
    let mut lab = start_with("signals = [\"rst\"]\nfailures = 1", "port = 8081");
    assert_eq!(lab.ask(), "b1");
    // b1: the service port and the check port as two servers.
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    let b1 = &lab.topo.backends[0];
    let _check_port =
        Server::start(b1, "b1", &[BACKEND_TCP_PORT + 1], BACKEND_UDP_PORT + 1).expect("check port");
    let refused = tcp_request(
        &lab.topo.client,
        vip(false, 80),
        "x",
        Duration::from_millis(500),
    );
    assert!(refused.is_err(), "the service port refuses: {refused:?}");
    let down = lab.wait("passive-down");
    let restored = lab.wait("passive-restored");
    println!("marked: {down}\nrestored: {restored}");
    assert!(
        restored["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not confirmed")),
        "{restored}"
    );
    // b1 is back up (the state event follows the restore).
    lab.wait_for("state up", |e| e["kind"] == "state" && e["to"] == "up");
    lab.servers[0] = Some(
        Server::start(b1, "b1", &[BACKEND_TCP_PORT], BACKEND_UDP_PORT).expect("service port back"),
    );
    assert_eq!(lab.ask(), "b1");
    // A false alarm is no failover: no failover event (nor its hooks),
    // neither for the mark nor for its undoing.
    let failovers: Vec<_> = lab
        .events()
        .into_iter()
        .filter(|e| e["service"] == "web" && e["kind"] == "failover")
        .collect();
    assert!(failovers.is_empty(), "{failovers:#?}");
}

/// An off-path attacker on the clients' side sends 1000 crafted packets a
/// second for 10 s, a mix of every forgery that used to count: bare ACKs
/// to new tuples (the backend answers them with RSTs), SYNs with a bad
/// checksum retransmitted, valid SYNs repeated at once, ICMP unreachables
/// sent from the clients' side quoting the attacker's own fresh handshakes
/// with their right sequence numbers, and SYNs from spoofed sources. Every
/// passive signal is on with a threshold of 3; a client asks every
/// millisecond meanwhile. Nothing may follow: 0 marks, 0 failovers, 0 hook
/// runs, every legitimate request answered by the primary.
#[test]
fn forged_signals_cause_no_mark_no_failover_and_no_hook() {
    let w = failover_lab::Workdir::new("fof").expect("scratch dir");
    let hook_out = w.dir.join("hook-runs");
    // Hooks run as `nobody`: give it a file it may append to.
    std::fs::write(&hook_out, "").expect("hook output file");
    std::fs::set_permissions(
        &hook_out,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    let mut lab = start_full(
        "signals = [\"rst\", \"icmp\", \"syn-retransmit\", \"no-reply\"]\nfailures = 3\nwindow = \"10s\"\nno_reply = \"500ms\"",
        "",
        &format!(
            "[[service.hook]]\nname = \"count\"\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"echo run >> \\\"$0\\\"\", \"{}\"]\ntimeout = \"2s\"\n",
            hook_out.display()
        ),
    );
    assert_eq!(lab.ask(), "b1");
    let c = &lab.topo.client;
    let lb_mac = raw::mac_of(&lab.topo.lb, "lc").expect("LB MAC");
    let client_mac = raw::mac_of(c, "cl").expect("client MAC");
    // The forged packets use client ports 20000-29999: keep the real
    // client's connections off them, or a forged RST could land on a real
    // flow by chance (seen under load: a request lost).
    c.sysctl("net/ipv4/ip_local_reserved_ports", "20000-29999")
        .expect("reserving the forged ports");
    let t0 = Instant::now();
    let legit = client::stream(&c.name, vip(false, 80), t0, Duration::from_secs(10));
    let (vip4, me, b1) = ([198, 18, 100, 10], [198, 18, 0, 2], [198, 18, 1, 2]);
    let sent = c
        .run(|| {
            let tx = raw::packet_socket("cl")?;
            let mut sent = 0u32;
            let start = Instant::now();
            for k in 0..10_000u32 {
                // 1000 a second, for 10 s.
                let due = Duration::from_micros(u64::from(k) * 1000);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                let port = 20_000 + (k % 20_000) as u16;
                let mut frames = Vec::new();
                match k % 5 {
                    0 => {
                        let mut t = raw::Tcp::syn(me, vip4, port, 80, k);
                        t.flags = raw::ACK;
                        t.ack = 0x0bad_0000 + k;
                        frames.push(t.ip());
                    }
                    1 => {
                        let mut t = raw::Tcp::syn(me, vip4, port, 80, k);
                        t.bad_checksum = true;
                        frames.push(t.ip());
                    }
                    2 => {
                        let t = raw::Tcp::syn(me, vip4, port, 80, k);
                        frames.push(t.ip());
                        frames.push(t.ip());
                    }
                    3 => {
                        // The attacker's own handshake, and at once an
                        // unreachable about it (as the load balancer sent
                        // it to b1), from the clients' side.
                        let t = raw::Tcp::syn(me, vip4, port, 80, k);
                        frames.push(t.ip());
                        let natted = raw::Tcp::syn(me, b1, port, BACKEND_TCP_PORT, k).ip();
                        frames.push(raw::icmp_unreachable(b1, me, 3, &natted));
                    }
                    _ => {
                        let src = [198, 19, (k >> 8) as u8, k as u8];
                        let t = raw::Tcp::syn(src, vip4, port, 80, k);
                        frames.push(t.ip());
                        frames.push(t.ip());
                    }
                }
                for ip in frames {
                    if raw::send(&tx, &raw::ether(lb_mac, client_mac, None, &ip)) {
                        sent += 1;
                    }
                }
                if start.elapsed() > Duration::from_secs(15) {
                    break;
                }
            }
            Ok(sent)
        })
        .expect("the forged packets");
    let samples = legit.join().expect("client");
    println!(
        "forged: {sent} packets; legitimate requests: {}",
        samples.len()
    );
    assert!(sent >= 10_000, "the forgeries went out ({sent})");
    // Let any deferred decision (a probe confirming a mark) happen.
    std::thread::sleep(Duration::from_millis(500));
    let unanswered = samples
        .iter()
        .filter(|s| s.who.as_deref() != Some("b1"))
        .count();
    let kinds: Vec<String> = lab
        .events()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .filter(|k| k.starts_with("passive") || k == "failover" || k == "state")
        .collect();
    let hook_runs = std::fs::read_to_string(&hook_out).map_or(0, |s| s.lines().count());
    assert_eq!(
        (kinds.len(), hook_runs, unanswered),
        (0, 0, 0),
        "marks/failovers/state events {kinds:?}, hook runs, legitimate requests not answered by b1"
    );
    assert!(samples.len() > 5000, "the legitimate stream ran");
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
}
