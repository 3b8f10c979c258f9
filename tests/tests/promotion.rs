//! Orchestrated failover (`[service.promotion]`) on the lab with the real
//! daemon: the roles of the two backends live in files the checks and the
//! hooks read and write (the PostgreSQL scenario in `postgres.rs` does the
//! same with real databases). They assert the order fence -> promote ->
//! ready -> switch (nothing reaches the standby before it is promoted), a
//! failed promotion that is visible and serves nothing, fencing of a
//! returning old active, a planned switchover and a drill, and that an
//! operator's drain does not promote by default.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use failover_lab::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, BACKENDS, DaemonProcess, LB_IFACES, Server, Topology, VIP4,
    client::Sample,
};
use failover_user::{dataplane, dataplane::layout::Layout};

struct Lab {
    topo: Topology,
    daemon: DaemonProcess,
    servers: Vec<Option<Server>>,
    config: PathBuf,
    roles: PathBuf,
    events: PathBuf,
    layout: Layout,
    w: failover_lab::Workdir,
}

/// The checks read `<roles>/<backend>.primary` (active check) and
/// `<roles>/<backend>.standby` (standby check); the promote hook turns a
/// standby into a primary after `promote_ms` and logs its environment.
fn start(promote_script: &str, promotion_keys: &str) -> Lab {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "namespace tests need root: run `cargo xtask test`"
    );
    let w = failover_lab::Workdir::new("fpr").expect("workdir");
    let roles = w.dir.join("roles");
    std::fs::create_dir_all(&roles).expect("roles dir");
    // Checks and hooks run as `nobody`: the roles directory is theirs too.
    std::fs::set_permissions(&w.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&roles, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(roles.join("b1.primary"), "").expect("role");
    std::fs::write(roles.join("b2.standby"), "").expect("role");
    let topo = Topology::create(&w.prefix).expect("lab topology");
    let events = w.dir.join("events.jsonl");
    let r = roles.display();
    let config = format!(
        r#"[daemon]
interfaces = ["lc", "lb1", "lb2"]
bpffs = "{bpffs}"
state_dir = "{state}"
events_file = "{events}"

[admin]
socket = "{sock}"
audit_file = "{audit}"

[[service]]
name = "web"
vip = "{VIP4}"
port = 80
flows_on_down = "reset"

[[service.backend]]
name = "b1"
address = "{b1}"
port = {port}
[[service.backend]]
name = "b2"
address = "{b2}"
port = {port}
tier = 1

[service.check]
type = "exec"
command = ["/bin/sh", "-c", "test -f {r}/{{backend}}.primary"]
interval = "20ms"
fast_interval = "10ms"
timeout = "200ms"
fall = 2
rise = 2

[service.promotion]
promote = ["/bin/sh", "-c", "{promote_script}", "{r}", "{{backend}}", "{{address}}", "{{token}}"]
hook_timeout = "2s"
ready_within = "1s"
{promotion_keys}

[service.promotion.standby_check]
type = "exec"
command = ["/bin/sh", "-c", "test -f {r}/{{backend}}.standby"]
interval = "20ms"
timeout = "200ms"
"#,
        bpffs = w.bpffs.display(),
        state = w.dir.join("state").display(),
        events = events.display(),
        sock = w.dir.join("admin.sock").display(),
        audit = w.dir.join("audit.jsonl").display(),
        b1 = BACKENDS[0].0,
        b2 = BACKENDS[1].0,
        port = BACKEND_TCP_PORT,
    );
    let path = w.dir.join("lab.toml");
    std::fs::write(&path, config).expect("config");
    let ports = [BACKEND_TCP_PORT];
    let servers = vec![
        Some(Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1")),
        Some(Server::start(&topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2")),
    ];
    let exe = failover_tests::failover_exe();
    let mut daemon = DaemonProcess::spawn(&exe, &topo.lb.name, &path).expect("daemon");
    daemon
        .wait_attached(&w.bpffs, &LB_IFACES)
        .expect("attached");
    let layout = Layout::load(&w.dir.join("state/layout.json"))
        .expect("layout")
        .expect("layout written");
    let sock = w.dir.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no admin socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Lab {
        topo,
        daemon,
        servers,
        config: path,
        roles,
        events,
        layout,
        w,
    }
}

/// A promote hook that waits `ms`, then turns `$1/$2.standby` into
/// `$1/$2.primary`, logging `$4 $FAILOVER_CAUSE $FAILOVER_FROM
/// $FAILOVER_FROM_ADDRESS $FAILOVER_TO $3` to `$1/promote.log` first.
fn promote_after(ms: u32) -> String {
    format!(
        "echo \\\"$3 $FAILOVER_CAUSE $FAILOVER_FROM $FAILOVER_FROM_ADDRESS $FAILOVER_TO $2 $FAILOVER_TOKEN\\\" >> $0/promote.log; sleep 0.{ms:03}; rm -f $0/$1.standby; touch $0/$1.primary"
    )
}

impl Lab {
    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

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

    fn packets(&self, b: &str) -> u64 {
        let id = self.layout.backend_id("web", b).expect("backend");
        dataplane::pinned_backend_packets(&self.w.bpffs, id).expect("backend stats")
    }

    /// Runs the CLI against this lab's daemon: (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(failover_tests::failover_exe())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("running failover");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn state_of(&self, b: &str) -> String {
        let (ok, out, err) = self.cli(&["backends", "web", "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["backend"] == b)
            .map(|r| r["state"].as_str().unwrap_or("?").to_string())
            .unwrap_or_default()
    }

    /// Waits (5 s) until `b` shows `want` (the CLI reads the states the
    /// agent saves asynchronously).
    fn wait_state(&self, b: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.state_of(b);
            if s == want {
                return;
            }
            assert!(Instant::now() < deadline, "{b} is {s}, not {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn role(&self, b: &str, role: &str) {
        for r in ["primary", "standby"] {
            let _ = std::fs::remove_file(self.roles.join(format!("{b}.{r}")));
        }
        if !role.is_empty() {
            std::fs::write(self.roles.join(format!("{b}.{role}")), "").expect("role");
        }
    }

    /// A new connection to the VIP every millisecond for `ms`, from the
    /// client: who answered each.
    fn ask_vip(&self, ms: u64) -> Vec<Sample> {
        failover_lab::client::stream(
            &self.topo.client.name,
            failover_lab::vip(false, 80),
            Instant::now(),
            Duration::from_millis(ms),
        )
        .join()
        .expect("client")
    }

    fn kill(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.stop();
        }
    }
}

fn kind(e: &serde_json::Value) -> &str {
    e["kind"].as_str().unwrap_or("")
}

fn position(events: &[serde_json::Value], f: impl Fn(&serde_json::Value) -> bool) -> usize {
    events
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("event missing in {events:#?}"))
}

/// The primary dies: fence, promote (the hook gets the cause, both
/// backends and the token), wait until the standby passes the active
/// check, and only then the switch. Nothing reaches the standby while it
/// is a standby; after the switch everything does.
#[test]
fn failover_waits_for_the_promotion() {
    let mut lab = start(&promote_after(300), "");
    std::thread::sleep(Duration::from_millis(300));
    lab.wait_state("b1", "up");
    lab.wait_state("b2", "standby");
    let t0 = Instant::now();
    let client = failover_lab::client::stream(
        &lab.topo.client.name,
        failover_lab::vip(false, 80),
        t0,
        Duration::from_millis(2500),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lab.packets("b2"),
        0,
        "the standby took packets before any failure"
    );
    // The primary dies: its server and its role.
    lab.kill(0);
    lab.role("b1", "");
    let promoted = lab.wait_event("promoted", |e| kind(e) == "promoted");
    let samples: Vec<Sample> = client.join().expect("client");
    let events = lab.events();
    let fenced = position(&events, |e| kind(e) == "fenced" && e["backend"] == "b1");
    let started = position(&events, |e| kind(e) == "promotion-started");
    let hook = position(&events, |e| kind(e) == "hook" && e["hook"] == "promote");
    let done = position(&events, |e| kind(e) == "promoted");
    assert!(
        fenced < started && started < hook && hook < done,
        "{events:#?}"
    );
    assert_eq!(events[hook]["result"], "ok");
    assert_eq!(promoted["backend"], "b2");
    assert_eq!(promoted["token"], 1);
    assert_eq!(promoted["cause"], "probe");
    let dark = position(&events, |e| kind(e) == "no-healthy-backend");
    assert_eq!(
        events[dark]["cause"], "probe",
        "a crash is told from a drain"
    );
    let failover = position(&events, |e| kind(e) == "failover" && e["to_tier"] == 1);
    assert!(
        failover > done,
        "the failover is reported after the promotion"
    );
    assert_eq!(
        events[failover]["serving_addresses"][0],
        format!("{}:{BACKEND_TCP_PORT}", BACKENDS[1].0)
    );
    let log = std::fs::read_to_string(lab.roles.join("promote.log")).expect("promote.log");
    assert_eq!(
        log.trim(),
        format!("1 probe b1 {} b2 {} 1", BACKENDS[0].0, BACKENDS[1].0),
        "the promote hook's arguments and environment"
    );
    // No request was answered by b2 before it was promoted: the first b2
    // answer was sent after the hook had run for its 300 ms.
    let first_b2 = samples
        .iter()
        .filter(|s| s.who.as_deref() == Some("b2"))
        .map(|s| s.sent)
        .min()
        .expect("b2 answered after the promotion");
    let last_b1 = samples
        .iter()
        .filter(|s| s.who.as_deref() == Some("b1"))
        .map(|s| s.sent)
        .max()
        .expect("b1 answered before the kill");
    let gap = first_b2.saturating_sub(last_b1);
    println!(
        "last b1 answer sent at {:?}, first b2 answer sent at {:?} (gap {:?}, promote hook 300 ms); promoted {} ms after the fence",
        last_b1, first_b2, gap, promoted["elapsed_ms"]
    );
    assert!(
        gap >= Duration::from_millis(300),
        "b2 served before its promote hook finished (gap {gap:?})"
    );
    let tail: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > first_b2 + Duration::from_millis(20))
        .collect();
    assert!(tail.len() > 100 && tail.iter().all(|s| s.who.as_deref() == Some("b2")));
    lab.wait_state("b2", "up");
    let _ = lab.daemon.terminate();
}

/// The promote hook fails: `promotion-failed` within a second (event,
/// audit record), and the standby never serves; an operator's switch
/// once the cause is fixed promotes it.
#[test]
fn a_failed_promotion_is_visible_and_serves_nothing() {
    // Fails while `$0/broken` exists.
    let script = format!(
        "test -f $0/broken && {{ echo promote: broken >&2; exit 3; }}; {}",
        promote_after(0)
    );
    let mut lab = start(&script, "");
    std::fs::write(lab.roles.join("broken"), "").expect("broken");
    std::thread::sleep(Duration::from_millis(300));
    lab.kill(0);
    lab.role("b1", "");
    let fenced = lab.wait_event("fenced", |e| kind(e) == "fenced");
    let failed = lab.wait_event("promotion-failed", |e| kind(e) == "promotion-failed");
    let ts = |e: &serde_json::Value| e["ts"].as_str().unwrap_or_default().to_string();
    println!(
        "fenced at {}, promotion-failed at {}: {}",
        ts(&fenced),
        ts(&failed),
        failed["reason"]
    );
    let hook = lab.wait_event("hook", |e| kind(e) == "hook" && e["hook"] == "promote");
    assert_eq!(hook["result"], "failed");
    assert!(
        hook["reason"]
            .as_str()
            .unwrap_or("")
            .contains("exit 3: promote: broken"),
        "{hook}"
    );
    assert!(
        failed["reason"].as_str().unwrap_or("").contains("exit 3"),
        "{failed}"
    );
    // Within one second of the fence (the hook itself is immediate).
    let secs = |t: &str| -> f64 {
        let hms = &t[11..t.len() - 1];
        let p: Vec<f64> = hms.split(':').map(|x| x.parse().unwrap_or(0.0)).collect();
        p[0] * 3600.0 + p[1] * 60.0 + p[2]
    };
    assert!(secs(&ts(&failed)) - secs(&ts(&fenced)) < 1.0);
    let audit = std::fs::read_to_string(lab.w.dir.join("audit.jsonl")).expect("audit");
    assert!(audit.contains("\"kind\":\"promotion-failed\""), "audited");
    // Nothing serves; b2 gets nothing through the VIP.
    let samples = lab.ask_vip(300);
    assert!(samples.iter().all(|s| s.who.is_none()), "nothing answers");
    assert_eq!(
        lab.packets("b2"),
        0,
        "a standby whose promotion failed served"
    );
    // b2's promote hook ran: it may be half-promoted, so it is fenced
    // (held while it passes the standby check) and must be released
    // before it can be promoted again.
    lab.wait_state("b2", "held");
    let (ok, _, err) = lab.cli(&["switch", "web", "--to", "b2"]);
    assert!(!ok && err.contains("fenced"), "{err}");
    // The operator fixes the cause, releases b2 and switches: a new token.
    std::fs::remove_file(lab.roles.join("broken")).expect("fix");
    let (ok, out, err) = lab.cli(&["release", "web", "b2"]);
    assert!(ok, "release: {out} {err}");
    let (ok, out, err) = lab.cli(&["switch", "web", "--to", "b2"]);
    assert!(ok, "switch after the fix: {out} {err}");
    assert!(out.contains("token 2"), "{out}");
    let samples = lab.ask_vip(200);
    assert!(samples.iter().all(|s| s.who.as_deref() == Some("b2")));
    let _ = lab.daemon.terminate();
}

/// After a failover the old active comes back as a primary (diverged): it
/// is fenced, gets nothing, and `release` is refused until it passes the
/// standby check. A drill (dry run, then for real) moves the role back to
/// it with a new token; a second drill is refused without a ready standby.
#[test]
fn a_returning_old_active_stays_fenced_until_released() {
    let mut lab = start(&promote_after(50), "");
    std::thread::sleep(Duration::from_millis(300));
    lab.kill(0);
    lab.role("b1", "");
    lab.wait_event("promoted", |e| kind(e) == "promoted");
    // b1 comes back believing it is the primary.
    lab.servers[0] = Some(
        Server::start(
            &lab.topo.backends[0],
            "b1",
            &[BACKEND_TCP_PORT],
            BACKEND_UDP_PORT,
        )
        .expect("b1 again"),
    );
    lab.role("b1", "primary");
    std::thread::sleep(Duration::from_millis(300));
    let before = lab.packets("b1");
    let samples = lab.ask_vip(300);
    assert!(samples.iter().all(|s| s.who.as_deref() == Some("b2")));
    assert_eq!(lab.packets("b1"), before, "a fenced old active got packets");
    assert!(
        lab.state_of("b1").starts_with("down"),
        "fails the standby check: {}",
        lab.state_of("b1")
    );
    let (ok, _, err) = lab.cli(&["release", "web", "b1"]);
    assert!(
        !ok && err.contains("fenced") && err.contains("standby check"),
        "{err}"
    );
    let (ok, _, err) = lab.cli(&["drill", "web", "--to", "b1"]);
    assert!(!ok && err.contains("not a ready standby"), "{err}");
    // Rebuilt as a standby: shown held, released by the operator.
    lab.role("b1", "standby");
    std::thread::sleep(Duration::from_millis(300));
    lab.wait_state("b1", "held");
    let (ok, out, err) = lab.cli(&["release", "web", "b1"]);
    assert!(ok, "{out} {err}");
    lab.wait_state("b1", "standby");
    // A drill back to b1: the plan first, then for real.
    let (ok, out, err) = lab.cli(&["drill", "web", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("fence b2") && out.contains("promote b1 with token 2"),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");
    let (ok, out, err) = lab.cli(&["drill", "web"]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("b1 is active (token 2), RTO"), "{out}");
    println!("{out}");
    let samples = lab.ask_vip(200);
    assert!(samples.iter().all(|s| s.who.as_deref() == Some("b1")));
    // b2 was handed over in a planned switchover: it is fenced until it
    // passes the standby check (the hook promoted it; nothing demoted it).
    let (ok, _, err) = lab.cli(&["drill", "web"]);
    assert!(!ok && err.contains("no ready standby"), "{err}");
    let _ = lab.daemon.terminate();
}

/// An operator's drain of the active does not promote (promotion.on
/// defaults to confirmed failures): `active-lost`, no promote hook; with
/// `on = ["operator"]` listed it does.
#[test]
fn a_drain_promotes_only_when_asked() {
    let lab = start(&promote_after(0), "");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, err) = lab.cli(&["drain", "web", "b1"]);
    assert!(ok, "{err}");
    let lost = lab.wait_event("active-lost", |e| kind(e) == "active-lost");
    assert_eq!(lost["cause"], "operator", "{lost}");
    let drained = lab.wait_event("b1 draining", |e| {
        kind(e) == "state" && e["to"] == "draining"
    });
    assert_eq!(drained["cause"], "operator", "{drained}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lab.events().iter().any(|e| kind(e) == "promotion-started"),
        "a drain started a promotion"
    );
    assert!(
        !lab.roles.join("promote.log").exists(),
        "the promote hook ran"
    );
    drop(lab);
    let lab = start(&promote_after(0), "on = [\"probe\", \"operator\"]");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, err) = lab.cli(&["drain", "web", "b1"]);
    assert!(ok, "{err}");
    let e = lab.wait_event("promoted", |e| kind(e) == "promoted");
    assert_eq!(e["cause"], "operator");
    assert_eq!(e["backend"], "b2");
}
