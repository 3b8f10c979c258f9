//! Health-agent namespace tests: the real daemon with health checks on the
//! lab, real servers that really die, links that really go silent, a client
//! sending a request every millisecond. They assert behaviour (traffic
//! moved, nothing sent to a down backend after the switch, failback per
//! policy, damping bound, hook runs); times are printed, never asserted.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use failover_lab::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, DaemonProcess, HttpHealth, LB_IFACES, LabExtras, Server,
    Topology, client::Sample, netns::Netns, vip,
};
use failover_user::{dataplane, dataplane::layout::Layout};

const HEALTH_PORT: u16 = 8090;

/// Per-test names and directories, removed on drop.
type Scratch = failover_lab::Workdir;

fn scratch() -> Scratch {
    Scratch::new("foa").expect("scratch dir")
}

fn require_root() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "namespace tests need root: run `cargo xtask test`"
    );
}

struct Lab {
    topo: Topology,
    daemon: DaemonProcess,
    config: PathBuf,
    servers: Vec<Option<Server>>,
    _health: Vec<HttpHealth>,
    status: Vec<Arc<AtomicU16>>,
    events: PathBuf,
    layout: Layout,
    s: Scratch,
}

/// 10 ms TCP probes (5 ms while suspect), fall 3, rise 2.
const TCP_10MS: &str = "type = \"tcp\"\ninterval = \"10ms\"\nfast_interval = \"5ms\"\ntimeout = \"20ms\"\nfall = 3\nrise = 2";

fn start(check: &str, keys: &str, tables: &str) -> Lab {
    require_root();
    let s = scratch();
    let topo = Topology::create(&s.prefix).expect("lab topology");
    let events = s.dir.join("events.jsonl");
    let extras = LabExtras {
        check: Some(check.to_string()),
        service_keys: keys.to_string(),
        service_tables: tables.to_string(),
        events_file: Some(events.clone()),
        ..Default::default()
    };
    let config = s.dir.join("lab.toml");
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &extras),
    )
    .expect("config");
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let mut servers = Vec::new();
    let mut health = Vec::new();
    let mut status = Vec::new();
    for (i, ns) in topo.backends.iter().enumerate() {
        servers.push(Some(
            Server::start(ns, &format!("b{}", i + 1), &ports, BACKEND_UDP_PORT).expect("servers"),
        ));
        let st = Arc::new(AtomicU16::new(200));
        health.push(HttpHealth::start(ns, HEALTH_PORT, st.clone()).expect("http health"));
        status.push(st);
    }
    let exe = failover_tests::failover_exe();
    let mut daemon = DaemonProcess::spawn(&exe, &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("attached");
    let layout = Layout::load(&s.dir.join("state/layout.json"))
        .expect("layout")
        .expect("layout written");
    Lab {
        topo,
        daemon,
        config,
        servers,
        _health: health,
        status,
        events,
        layout,
        s,
    }
}

impl Lab {
    fn b1_packets(&self) -> u64 {
        let id = self.layout.backend_id("web", "b1").expect("web/b1");
        dataplane::pinned_backend_packets(&self.s.bpffs, id).expect("backend stats")
    }

    fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) for an event matching `f`.
    fn wait_event(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(e) = self.events().into_iter().find(|e| f(e)) {
                return e;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no {what} event within 10 s; events: {:#?}", self.events());
    }
}

fn is(
    e: &serde_json::Value,
    kind: &str,
    service: &str,
    backend: Option<&str>,
    to: Option<&str>,
) -> bool {
    e["kind"] == kind
        && e["service"] == service
        && backend.is_none_or(|b| e["backend"] == b)
        && to.is_none_or(|t| e["to"] == t)
}

fn client_stream(ns: &Netns, t0: Instant, dur: Duration) -> std::thread::JoinHandle<Vec<Sample>> {
    failover_lab::client::stream(&ns.name, vip(false, 80), t0, dur)
}

fn recovery(samples: &[Sample], fail_at: Duration) -> (Duration, usize) {
    failover_lab::client::recovery(samples, fail_at, "b2")
        .expect("the standby answered after the failure")
}

fn print_latency(lab: &Lab) {
    let lat: Vec<f64> = lab
        .events()
        .iter()
        .filter_map(|e| e["decision_to_map_us"].as_f64())
        .collect();
    println!("decision-to-map latency samples (us): {lat:?}");
}

/// Common checks after the primary of `web` failed at `fail_at` (relative
/// to `t0`): the standby takes the traffic, and b1 receives nothing once it
/// is marked down.
fn assert_failed_over(lab: &Lab, t0: Instant, fail_at: Duration, samples: &[Sample], label: &str) {
    let down = lab.wait_event("web/b1 down", |e| {
        is(e, "state", "web", Some("b1"), Some("down"))
    });
    assert!(
        down["decision_to_map_us"].as_f64().is_some(),
        "the switch was written: {down}"
    );
    let (rec, failed) = recovery(samples, fail_at);
    println!(
        "{label}: client-side recovery {:.1} ms ({failed} failed requests); first failure to switch {} ms; decision to map {} us",
        rec.as_secs_f64() * 1e3,
        down["first_failure_to_switch_ms"],
        down["decision_to_map_us"]
    );
    // The tail of the stream is all answered by the standby.
    let tail: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > fail_at + rec + Duration::from_millis(50))
        .collect();
    assert!(tail.len() > 100, "the stream went on after the switch");
    assert!(
        tail.iter().all(|s| s.who.as_deref() == Some("b2")),
        "{label}: after the switch only b2 answers"
    );
    let _ = t0;
}

/// Traffic to b1 stops once it is marked down: its packet counter does not
/// move while the client keeps sending for another 300 ms.
fn assert_no_more_b1(lab: &Lab, t0: Instant, dur: Duration) {
    let before = lab.b1_packets();
    let h = client_stream(&lab.topo.client, t0, dur);
    let samples = h.join().expect("client");
    assert!(samples.iter().all(|s| s.who.as_deref() == Some("b2")));
    assert_eq!(
        lab.b1_packets(),
        before,
        "packets were sent to b1 after it was marked down"
    );
}

/// (a) The primary's server process dies: the standby takes the traffic.
#[test]
fn a_killed_primary_process() {
    let mut lab = start(TCP_10MS, "", "");
    std::thread::sleep(Duration::from_millis(300)); // probes warm up
    let t0 = Instant::now();
    let h = client_stream(&lab.topo.client, t0, Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(300));
    let fail_at = t0.elapsed();
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    let samples = h.join().expect("client");
    assert!(
        samples
            .iter()
            .any(|s| s.sent < fail_at && s.who.as_deref() == Some("b1")),
        "b1 served before"
    );
    assert_failed_over(&lab, t0, fail_at, &samples, "(a) killed process");
    assert_no_more_b1(&lab, Instant::now(), Duration::from_millis(300));
    print_latency(&lab);
}

/// (b) The primary's link goes silent (packets vanish, no RST, no ICMP):
/// the standby takes the traffic.
#[test]
fn b_silent_link() {
    let lab = start(TCP_10MS, "", "");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let h = client_stream(&lab.topo.client, t0, Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(300));
    let fail_at = t0.elapsed();
    lab.topo.backends[0]
        .ip(&["link", "set", "b1", "down"])
        .expect("link down");
    let samples = h.join().expect("client");
    assert_failed_over(&lab, t0, fail_at, &samples, "(b) silent link");
    assert_no_more_b1(&lab, Instant::now(), Duration::from_millis(300));
    print_latency(&lab);
}

/// (c) The primary recovers: with `failback = "hold-down"` it takes new
/// flows back only after it has been healthy for the hold-down time.
#[test]
fn c_failback_after_hold_down() {
    let mut lab = start(TCP_10MS, "failback = \"hold-down\"\nhold_down = \"1s\"", "");
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    lab.wait_event("web/b1 down", |e| {
        is(e, "state", "web", Some("b1"), Some("down"))
    });
    let c = &lab.topo.client;
    let ask1 =
        || failover_lab::tcp_request(c, vip(false, 80), "x", Duration::from_millis(500)).ok();
    assert_eq!(ask1().as_deref(), Some("b2"));
    // b1 comes back.
    let back = Instant::now();
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    lab.servers[0] = Some(
        Server::start(&lab.topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1 again"),
    );
    let held = lab.wait_event("held-down", |e| is(e, "held-down", "web", Some("b1"), None));
    assert!(
        held["reason"].as_str().unwrap_or("").contains("hold-down"),
        "{held}"
    );
    // Until the hold-down ends, new flows still go to b2.
    while back.elapsed() < Duration::from_millis(800) {
        assert_eq!(
            ask1().as_deref(),
            Some("b2"),
            "b1 took traffic back during its hold-down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let up = lab.wait_event("web/b1 up", |e| {
        is(e, "state", "web", Some("b1"), Some("up"))
    });
    let took = back.elapsed();
    println!(
        "(c) b1 back up {:.0} ms after its server restarted (hold-down 1 s): {up}",
        took.as_secs_f64() * 1e3
    );
    assert!(
        took >= Duration::from_secs(1),
        "failback before the hold-down ended"
    );
    let failback = lab.wait_event("failback", |e| {
        is(e, "failover", "web", None, None) && e["to_tier"] == 0
    });
    assert_eq!(failback["serving"], serde_json::json!(["b1"]));
    let deadline = Instant::now() + Duration::from_secs(2);
    while ask1().as_deref() != Some("b1") {
        assert!(
            Instant::now() < deadline,
            "b1 never answered after failback"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    print_latency(&lab);
}

/// (d) An HTTP backend that answers 503 is taken out.
#[test]
fn d_http_503_taken_out() {
    let check = format!(
        "type = \"http\"\nport = {HEALTH_PORT}\npath = \"/healthz\"\nexpect_status = [\"2xx\"]\nexpect_body = \"ok\"\ninterval = \"10ms\"\ntimeout = \"50ms\"\nfall = 2\nrise = 2"
    );
    let lab = start(&check, "", "");
    let c = &lab.topo.client;
    let ask1 =
        || failover_lab::tcp_request(c, vip(false, 80), "x", Duration::from_millis(500)).ok();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ask1().as_deref(), Some("b1"));
    lab.status[0].store(503, Ordering::Relaxed);
    let down = lab.wait_event("web/b1 down", |e| {
        is(e, "state", "web", Some("b1"), Some("down"))
    });
    assert!(
        down["reason"].as_str().unwrap_or("").contains("503"),
        "{down}"
    );
    for _ in 0..20 {
        assert_eq!(ask1().as_deref(), Some("b2"), "the 503 backend is out");
    }
    // The business port still works on b1: it is the check that took it out.
    lab.status[0].store(200, Ordering::Relaxed);
    lab.wait_event("web/b1 up", |e| {
        is(e, "state", "web", Some("b1"), Some("up"))
    });
    print_latency(&lab);
}

/// (e) A backend flapping every 50 ms: with damping (4 changes per 10 s),
/// its state and the client's traffic change a bounded number of times.
#[test]
fn e_flapping_backend_is_damped() {
    let check = format!(
        "type = \"http\"\nport = {HEALTH_PORT}\npath = \"/\"\ninterval = \"5ms\"\nfast_interval = \"5ms\"\ntimeout = \"50ms\"\nfall = 1\nrise = 1\njitter = 0.0"
    );
    let lab = start(
        &check,
        "damping = { max_changes = 4, window = \"10s\" }",
        "",
    );
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let h = client_stream(&lab.topo.client, t0, Duration::from_millis(2500));
    let st = lab.status[0].clone();
    let flapper = std::thread::spawn(move || {
        for i in 0..40 {
            st.store(if i % 2 == 0 { 503 } else { 200 }, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
        st.store(200, Ordering::Relaxed);
    });
    flapper.join().expect("flapper");
    let samples = h.join().expect("client");
    let changes: Vec<serde_json::Value> = lab
        .events()
        .into_iter()
        .filter(|e| {
            is(e, "state", "web", Some("b1"), None)
                && (e["to"] == "down" || e["to"] == "up" && e["from"] == "down")
        })
        .collect();
    println!(
        "(e) b1 changed state {} times while flapping 40 times",
        changes.len()
    );
    assert!(changes.len() >= 2, "it did go down: {changes:#?}");
    assert!(
        changes.len() <= 5,
        "damping bound (max_changes + 1) exceeded: {changes:#?}"
    );
    // The client saw at most as many backend switches as there were changes.
    let answers: Vec<&str> = samples.iter().filter_map(|s| s.who.as_deref()).collect();
    let mut switches = 0;
    let mut last: Option<&str> = None;
    let mut sorted: Vec<&Sample> = samples.iter().filter(|s| s.who.is_some()).collect();
    sorted.sort_by_key(|s| s.sent);
    for s in sorted {
        let w = s.who.as_deref();
        if last.is_some() && w != last {
            switches += 1;
        }
        last = w;
    }
    println!(
        "(e) the client saw {switches} switches over {} answers",
        answers.len()
    );
    assert!(
        switches <= changes.len() + 1,
        "traffic flapped beyond the damping bound"
    );
    print_latency(&lab);
}

/// (f) An exec hook runs once per failover, with the event in its
/// environment.
#[test]
fn f_exec_hook_once_per_failover() {
    let out =
        std::env::temp_dir().join(format!("failover-hook-{}-{}", std::process::id(), line!()));
    let _ = std::fs::remove_file(&out);
    let hook = format!(
        "[[service.hook]]\nname = \"record\"\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"env | grep ^FAILOVER_ | sort > \\\"$0.$FAILOVER_SERVICE.$FAILOVER_MAP_VERSION\\\"\", \"{}\"]\ntimeout = \"2s\"\n",
        out.display()
    );
    let mut lab = start(TCP_10MS, "", &hook);
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    lab.wait_event("web failover", |e| is(e, "failover", "web", None, None));
    std::thread::sleep(Duration::from_millis(500)); // let hooks finish; nothing else should come
    let dir = out.parent().expect("temp dir");
    let prefix = format!(
        "{}.web.",
        out.file_name().and_then(|n| n.to_str()).expect("name")
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("temp dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "the hook ran once for web's failover: {runs:?}"
    );
    let env = std::fs::read_to_string(&runs[0]).expect("hook output");
    for want in [
        "FAILOVER_KIND=failover",
        "FAILOVER_SERVICE=web",
        "FAILOVER_FROM_TIER=0",
        "FAILOVER_TO_TIER=1",
        "FAILOVER_SERVING=b2",
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in:\n{env}");
    }
    assert!(
        env.contains("FAILOVER_REASON=tier 0 has no healthy backend"),
        "{env}"
    );
    for p in std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
    {
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(out.file_name().and_then(|n| n.to_str()).unwrap_or("?")))
        {
            let _ = std::fs::remove_file(p);
        }
    }
    print_latency(&lab);
}

/// `on_no_backend = "keep-last"`: when every backend of a service fails,
/// the last one stays in the map (alerted), and the client is still sent
/// to it rather than dropped.
#[test]
fn g_keep_last_backend() {
    let mut lab = start(TCP_10MS, "on_no_backend = \"keep-last\"", "");
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    lab.wait_event("web failover", |e| is(e, "failover", "web", None, None));
    if let Some(s) = lab.servers[1].take() {
        s.stop();
    }
    let kept = lab.wait_event("keep-last", |e| is(e, "keep-last", "web", Some("b2"), None));
    println!("(g) {kept}");
    let b2 = lab.layout.backend_id("web", "b2").expect("web/b2");
    assert_eq!(
        dataplane::pinned_state(&lab.s.bpffs, b2).expect("state"),
        failover_common::STATE_UP,
        "b2 kept in the map"
    );
    assert!(
        !lab.events()
            .iter()
            .any(|e| is(e, "no-healthy-backend", "web", None, None)),
        "the service never ran dry"
    );
    // b1 comes back: b2's pending down is applied.
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    lab.servers[0] = Some(
        Server::start(&lab.topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1 again"),
    );
    lab.wait_event("b2 released", |e| {
        is(e, "state", "web", Some("b2"), None)
            && e["reason"].as_str().is_some_and(|r| r.contains("released"))
    });
    assert_eq!(
        dataplane::pinned_state(&lab.s.bpffs, b2).expect("state"),
        failover_common::STATE_DOWN
    );
    print_latency(&lab);
}

/// A restarted daemon starts from the states the previous one saved: after
/// a `kill -9` and a restart, a backend that was down stays down (no
/// traffic is sent to it while probes would have to find it dead again).
#[test]
fn h_restart_keeps_known_states() {
    let mut lab = start(TCP_10MS, "", "");
    if let Some(s) = lab.servers[0].take() {
        s.stop();
    }
    lab.wait_event("web/b1 down", |e| {
        is(e, "state", "web", Some("b1"), Some("down"))
    });
    std::thread::sleep(Duration::from_millis(100)); // the states file is written in the background
    // SAFETY: SIGKILL to our own child.
    unsafe { libc::kill(lab.daemon.0.id() as libc::pid_t, libc::SIGKILL) };
    let _ = lab.daemon.0.wait();
    let b1 = lab.layout.backend_id("web", "b1").expect("web/b1");
    let exe = failover_tests::failover_exe();
    lab.daemon = DaemonProcess::spawn(&exe, &lab.topo.lb.name, &lab.config).expect("restart");
    // Through the whole restart (load, adopt, agent start, first probes),
    // b1 must read down.
    let mut seen_up = false;
    for _ in 0..300 {
        seen_up |=
            dataplane::pinned_state(&lab.s.bpffs, b1).expect("state") == failover_common::STATE_UP;
        std::thread::sleep(Duration::from_millis(2));
    }
    lab.daemon
        .wait_attached(&lab.s.bpffs, &LB_IFACES)
        .expect("attached again");
    assert!(
        !seen_up,
        "the restarted daemon put the dead b1 back in service"
    );
    let c = &lab.topo.client;
    for _ in 0..20 {
        assert_eq!(
            failover_lab::tcp_request(c, vip(false, 80), "x", Duration::from_millis(500)).unwrap(),
            "b2"
        );
    }
}

/// Policies never keep a service dark: with a 30 s hold-down, both
/// backends die, then the standby comes back while the primary stays dead.
/// The standby serves within a few probe intervals (not after 30 s), with a
/// `policy-override` event; when the primary returns while b2 serves, its
/// hold-down applies again and b2 stays up.
#[test]
fn i_hold_down_never_keeps_the_service_dark() {
    let mut lab = start(
        TCP_10MS,
        "failback = \"hold-down\"\nhold_down = \"30s\"",
        "",
    );
    for k in 0..2 {
        if let Some(s) = lab.servers[k].take() {
            s.stop();
        }
    }
    lab.wait_event("web dark", |e| {
        is(e, "no-healthy-backend", "web", None, None)
    });
    let c = &lab.topo.client;
    let ask = || failover_lab::tcp_request(c, vip(false, 80), "x", Duration::from_millis(200)).ok();
    assert_eq!(ask(), None, "nothing answers while both are dead");
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let back = Instant::now();
    lab.servers[1] = Some(
        Server::start(&lab.topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2 again"),
    );
    // rise 2 at 10 ms: it should serve within tens of milliseconds.
    while ask().as_deref() != Some("b2") {
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "web stayed dark although b2 is healthy (hold-down 30 s)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = back.elapsed();
    let o = lab.wait_event("policy-override", |e| {
        is(e, "policy-override", "web", Some("b2"), Some("up"))
    });
    println!(
        "(i) b2 answered {:.0} ms after its server restarted (hold-down 30 s): {o}",
        took.as_secs_f64() * 1e3
    );
    assert!(
        o["reason"]
            .as_str()
            .is_some_and(|r| r.contains("hold-down")),
        "{o}"
    );
    // The primary returns while b2 serves: its hold-down applies again.
    lab.servers[0] = Some(
        Server::start(&lab.topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1 again"),
    );
    lab.wait_event("b1 held down", |e| {
        is(e, "held-down", "web", Some("b1"), None)
    });
    for _ in 0..25 {
        assert_eq!(ask().as_deref(), Some("b2"), "b1 took traffic back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let overrides: Vec<serde_json::Value> = lab
        .events()
        .into_iter()
        .filter(|e| is(e, "policy-override", "web", None, None))
        .collect();
    assert_eq!(overrides.len(), 1, "{overrides:#?}");
    assert!(
        !lab.events()
            .iter()
            .any(|e| is(e, "state", "web", Some("b2"), Some("down"))
                && e["ts"].as_str() > o["ts"].as_str()),
        "the overridden b2 stayed up"
    );
}

/// `failover set-state S B down` writes the word the agent would write for
/// down under the service's `flows_on_down` (here reset).
#[test]
fn j_set_state_down_honours_flows_on_down() {
    let lab = start(TCP_10MS, "flows_on_down = \"reset\"", "");
    let exe = failover_tests::failover_exe();
    failover_lab::set_state(&exe, &lab.config, "web", "b1", "down").expect("set-state");
    let b1 = lab.layout.backend_id("web", "b1").expect("web/b1");
    assert_eq!(
        dataplane::pinned_state(&lab.s.bpffs, b1).expect("state"),
        failover_common::STATE_DOWN_RESET,
        "flows_on_down = reset: the reset word"
    );
}

/// The same with `failback = "manual"`: both backends die and come back;
/// one serves at once, without `failover release`.
#[test]
fn k_manual_failback_never_keeps_the_service_dark() {
    let mut lab = start(TCP_10MS, "failback = \"manual\"", "");
    for k in 0..2 {
        if let Some(s) = lab.servers[k].take() {
            s.stop();
        }
    }
    lab.wait_event("web dark", |e| {
        is(e, "no-healthy-backend", "web", None, None)
    });
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let back = Instant::now();
    for (k, name) in ["b1", "b2"].into_iter().enumerate() {
        lab.servers[k] = Some(
            Server::start(&lab.topo.backends[k], name, &ports, BACKEND_UDP_PORT)
                .expect("server again"),
        );
    }
    let c = &lab.topo.client;
    let ask = || failover_lab::tcp_request(c, vip(false, 80), "x", Duration::from_millis(200)).ok();
    while ask().is_none() {
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "web stayed dark with both backends healthy (manual failback)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = lab.wait_event("policy-override", |e| {
        is(e, "policy-override", "web", None, Some("up"))
    });
    println!(
        "(k) web answered {:.0} ms after both servers restarted: {o}",
        back.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        o["reason"]
            .as_str()
            .is_some_and(|r| r.contains("manual failback")),
        "{o}"
    );
    // Exactly one came up; the other waits for an operator.
    std::thread::sleep(Duration::from_millis(300));
    let ups = lab
        .events()
        .into_iter()
        .filter(|e| is(e, "state", "web", None, Some("up")))
        .count();
    assert_eq!(ups, 1, "{:#?}", lab.events());
    // The other one is healthy and waits: `held` to the CLI (which reads
    // the pins and the state file, not the daemon), not `down`.
    let exe = failover_tests::failover_exe();
    let deadline = Instant::now() + Duration::from_secs(3);
    let states = loop {
        let out = std::process::Command::new(&exe)
            .args(["backends", "web", "--json", "--config"])
            .arg(&lab.config)
            .output()
            .expect("failover backends");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backends JSON");
        let mut states: Vec<String> = v
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["state"].as_str().unwrap_or("?").to_string())
            .collect();
        states.sort();
        if states == ["held", "up"] || Instant::now() > deadline {
            break states;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(states, ["held", "up"], "one serves, the other is held");
}
