//! Operator-surface tests against a running lab: the CLI (tables and JSON),
//! admin actions through the API (unix socket and TCP with a token),
//! reloads (good, broken, dry run), the Alertmanager receiver, the audit
//! chain, and `/metrics`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use failover_lab::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, DaemonProcess, LB_IFACES, LabExtras, Server, Topology,
    tcp_request, vip,
};
use failover_user::sys::http_client::{self as http, Endpoint};

const TOKEN: &str = "test-token-0123456789abcdef";
const ADMIN_TCP: &str = "127.0.0.1:9190";
const METRICS: &str = "127.0.0.1:9477";
const T: Duration = Duration::from_millis(1000);

struct Lab {
    topo: Topology,
    config: PathBuf,
    _daemon: DaemonProcess,
    _servers: Vec<Server>,
    dir: PathBuf,
    bpffs: PathBuf,
    extras: LabExtras,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

fn exe() -> PathBuf {
    failover_tests::failover_exe()
}

fn start() -> Lab {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "namespace tests need root: run `cargo xtask test`"
    );
    static N: AtomicU32 = AtomicU32::new(0);
    let id = format!(
        "{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(format!("failover-optest-{id}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/failover-op-{id}"));
    let token = dir.join("token");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&token)
            .expect("token file");
        std::io::Write::write_all(&mut f, TOKEN.as_bytes()).expect("token");
    }
    let topo = Topology::create(&format!("foo{id}")).expect("topology");
    let extras = LabExtras {
        check: Some("type = \"tcp\"\ninterval = \"20ms\"\ntimeout = \"20ms\"".to_string()),
        events_file: Some(dir.join("events.jsonl")),
        top: format!(
            "[admin]\nsocket = \"{}\"\nlisten = \"{ADMIN_TCP}\"\ntoken_file = \"{}\"\nmetrics_listen = \"{METRICS}\"\naudit_file = \"{}\"\n",
            dir.join("admin.sock").display(),
            token.display(),
            dir.join("audit.jsonl").display()
        ),
        ..Default::default()
    };
    let config = dir.join("lab.toml");
    std::fs::write(
        &config,
        topo.config_with(&bpffs, &dir.join("state"), &extras),
    )
    .expect("config");
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let servers = vec![
        Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1"),
        Server::start(&topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2"),
    ];
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon.wait_attached(&bpffs, &LB_IFACES).expect("attached");
    let sock = dir.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no admin socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Lab {
        topo,
        config,
        _daemon: daemon,
        _servers: servers,
        dir,
        bpffs,
        extras,
    }
}

/// Runs the CLI; (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(exe())
        .args(args)
        .output()
        .expect("running failover");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP request from inside the load balancer's namespace (where the
/// daemon's TCP listeners are).
fn lb_request(
    lab: &Lab,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let body = body.to_vec();
    let method = method.to_string();
    let path = path.to_string();
    lab.topo
        .lb
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let (s, b) = rt.block_on(http::request(
                &Endpoint::Tcp(addr),
                &method,
                &path,
                &h,
                &body,
                T,
            ))?;
            Ok((s, String::from_utf8_lossy(&b).into_owned()))
        })
        .expect("request in the lb namespace")
}

fn cfg_arg(lab: &Lab) -> String {
    lab.config.display().to_string()
}

#[test]
fn cli_actions_reload_and_audit() {
    let lab = start();
    let cfg = cfg_arg(&lab);
    let c = &lab.topo.client;
    assert_eq!(tcp_request(c, vip(false, 80), "x", T).unwrap(), "b1");

    // Tables and JSON.
    let (ok, out, err) = cli(&["services", "--config", &cfg]);
    assert!(ok, "{err}");
    assert!(out.starts_with("SERVICE"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("web ")
            && l.contains("198.18.100.10:80")
            && l.contains("0 (b1)")),
        "{out}"
    );
    let (ok, out, _) = cli(&["backends", "web", "--json", "--config", &cfg]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("backends JSON");
    assert_eq!(v[0]["backend"], "b1");
    assert_eq!(v[0]["state"], "up");
    assert!(v[0]["packets"].as_u64().unwrap() > 0, "{v}");
    let (ok, out, _) = cli(&["status", "--json", "--config", &cfg]);
    assert!(ok);
    let st: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(st["attached"], serde_json::json!(["lb1", "lb2", "lc"]));
    let (ok, out, _) = cli(&["flows", "--service", "web", "--config", &cfg]);
    assert!(ok && out.contains("198.18.0.2:"), "{out}");

    // Drain b1: new flows go to b2; undrain: back.
    let (ok, out, err) = cli(&["drain", "web", "b1", "--config", &cfg]);
    assert!(ok, "{err}");
    assert!(out.contains("web/b1: up -> draining"), "{out}");
    assert_eq!(tcp_request(c, vip(false, 80), "x", T).unwrap(), "b2");
    let (ok, out, _) = cli(&["undrain", "web", "b1", "--config", &cfg]);
    assert!(ok && out.contains("draining -> up"), "{out}");
    assert_eq!(tcp_request(c, vip(false, 80), "x", T).unwrap(), "b1");
    let (ok, _, err) = cli(&["undrain", "web", "b1", "--config", &cfg]);
    assert!(!ok && err.contains("not draining"), "{err}");
    let (ok, _, err) = cli(&["drain", "web", "nope", "--config", &cfg]);
    assert!(
        !ok && err.contains("404") && err.contains("no backend"),
        "{err}"
    );

    // Manual switch to the standby.
    let (ok, out, err) = cli(&["switch", "web", "--to", "b2", "--config", &cfg]);
    assert!(ok, "{err}");
    assert!(out.contains("web/b1: up -> draining"), "{out}");
    assert_eq!(tcp_request(c, vip(false, 80), "x", T).unwrap(), "b2");
    cli(&["undrain", "web", "b1", "--config", &cfg]);

    // Reload with a changed backend list: web gets a third backend in tier 2.
    let base = lab
        .topo
        .config_with(&lab.bpffs, &lab.dir.join("state"), &lab.extras);
    // web's last backend line is its standby's `tier = 1`: add b3 after it.
    let b3 = "tier = 1\n[[service.backend]]\nname = \"b3\"\naddress = \"198.18.2.2\"\nport = 8082\ntier = 2\n";
    let good = base.replacen("tier = 1\n", b3, 1);
    std::fs::write(&lab.config, &good).unwrap();
    let (ok, out, err) = cli(&["reload", "--dry-run", "--config", &cfg]);
    assert!(ok, "{err}");
    assert!(out.contains("backend b3 added"), "{out}");
    let (ok, _, err) = cli(&["backends", "web", "--json", "--config", &cfg]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["reload", "--config", &cfg]);
    assert!(ok, "{err}");
    assert!(out.contains("reloaded"), "{out}");
    let (_, out, _) = cli(&["backends", "web", "--json", "--config", &cfg]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(3), "b3 is in: {v}");
    assert_eq!(
        tcp_request(c, vip(false, 80), "x", T).unwrap(),
        "b1",
        "health and traffic unchanged by the reload"
    );

    // A broken config changes nothing.
    std::fs::write(
        &lab.config,
        good.replace(
            "address = \"198.18.2.2\"\nport = 8082",
            "address = \"not-an-ip\"\nport = 8082",
        ),
    )
    .unwrap();
    let (ok, _, err) = cli(&["reload", "--config", &cfg]);
    assert!(!ok, "a broken config must be refused");
    assert!(
        err.contains("not-an-ip") && err.contains("is not an IP address"),
        "{err}"
    );
    std::fs::write(&lab.config, &good).unwrap();
    let (_, out, _) = cli(&["backends", "web", "--json", "--config", &cfg]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v.as_array().map(Vec::len),
        Some(3),
        "unchanged after the broken reload"
    );
    assert_eq!(tcp_request(c, vip(false, 80), "x", T).unwrap(), "b1");

    // The audit chain verifies, and a tampered line is found.
    let audit = lab.dir.join("audit.jsonl");
    let text = std::fs::read_to_string(&audit).expect("audit log");
    assert!(
        text.lines()
            .any(|l| l.contains("\"kind\":\"admin\"") && l.contains("/drain")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("\"kind\":\"reload\"") && l.contains("\"result\":\"ok\"")),
        "{text}"
    );
    let (ok, out, err) = cli(&["audit", "verify", &audit.display().to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("the chain is intact"), "{out}");
    let copy = lab.dir.join("tampered.jsonl");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(lines.len() >= 4);
    lines[2] = lines[2]
        .replacen("drain", "dRain", 1)
        .replacen("reload", "rEload", 1);
    std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
    let (ok, _, err) = cli(&["audit", "verify", &copy.display().to_string()]);
    assert!(!ok);
    assert!(err.contains("line 3"), "names the first broken line: {err}");
    drop(lab);
}

#[test]
fn tokens_alertmanager_and_metrics() {
    let lab = start();
    let auth = format!("Bearer {TOKEN}");
    // TCP without a token, with a wrong one, with the right one.
    let (s, b) = lb_request(&lab, ADMIN_TCP, "GET", "/v1/status", &[], b"");
    assert_eq!(s, 401, "{b}");
    let (s, _) = lb_request(
        &lab,
        ADMIN_TCP,
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer wrong-token-000000000")],
        b"",
    );
    assert_eq!(s, 401);
    let (s, b) = lb_request(
        &lab,
        ADMIN_TCP,
        "GET",
        "/v1/status",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("status JSON");
    assert!(
        v["backends"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["backend"] == "b1" && x["state"] == "up")),
        "{v}"
    );
    // Unknown routes and bad bodies: 4xx with a reason.
    let (s, b) = lb_request(
        &lab,
        ADMIN_TCP,
        "GET",
        "/v1/nothing",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(s, 404, "{b}");
    let (s, b) = lb_request(
        &lab,
        ADMIN_TCP,
        "POST",
        "/v1/services/web/switch",
        &[("Authorization", &auth)],
        b"{not json",
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("not JSON"), "{b}");
    let (s, _) = lb_request(
        &lab,
        ADMIN_TCP,
        "DELETE",
        "/v1/status",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(s, 405);

    // Alertmanager: token required; a firing alert drains, resolved undrains.
    let alert = |status: &str| {
        serde_json::json!({"version": "4", "status": status, "alerts": [
            {"status": status, "labels": {"alertname": "BackendSlow", "service": "web", "backend": "b1"}}
        ]})
        .to_string()
    };
    let (s, _) = lb_request(
        &lab,
        ADMIN_TCP,
        "POST",
        "/v1/alertmanager",
        &[],
        alert("firing").as_bytes(),
    );
    assert_eq!(s, 401);
    let (s, b) = lb_request(
        &lab,
        ADMIN_TCP,
        "POST",
        "/v1/alertmanager",
        &[("Authorization", &auth)],
        alert("firing").as_bytes(),
    );
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"to\":\"draining\""), "{b}");
    assert_eq!(
        tcp_request(&lab.topo.client, vip(false, 80), "x", T).unwrap(),
        "b2",
        "drained by the alert"
    );
    let (s, b) = lb_request(
        &lab,
        ADMIN_TCP,
        "POST",
        "/v1/alertmanager",
        &[("Authorization", &auth)],
        alert("resolved").as_bytes(),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        tcp_request(&lab.topo.client, vip(false, 80), "x", T).unwrap(),
        "b1",
        "back after resolve"
    );
    let (s, _) = lb_request(
        &lab,
        ADMIN_TCP,
        "POST",
        "/v1/alertmanager",
        &[("Authorization", &auth)],
        b"[1,2",
    );
    assert_eq!(s, 400);

    // /metrics: scraped and parsed.
    let (s, body) = lb_request(&lab, METRICS, "GET", "/metrics", &[], b"");
    assert_eq!(s, 200);
    let mut samples = std::collections::HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(name.to_string(), v);
    }
    let get = |k: &str| {
        samples
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in\n{body}"))
    };
    assert!(get("failover_backend_packets_total{service=\"web\",backend=\"b1\"}") > 0.0);
    assert!(get("failover_service_packets_total{service=\"web\",direction=\"forward\"}") > 0.0);
    assert_eq!(
        get("failover_backend_state{service=\"web\",backend=\"b1\",state=\"up\"}"),
        1.0
    );
    assert!(
        get("failover_probe_results_total{service=\"web\",backend=\"b1\",result=\"ok\"}") > 0.0
    );
    assert!(
        get("failover_state_changes_total{service=\"web\",backend=\"b1\"}") >= 2.0,
        "drain + undrain"
    );
    assert!(get("failover_decision_to_map_seconds_count") >= 2.0);
    assert!(get("failover_packets_total{outcome=\"fwd_redirect\"}") > 0.0);
    assert!(samples.contains_key("failover_conntrack_entries"));
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("failover_probe_duration_seconds_bucket{"))
    );
    // No secret is written anywhere: neither the right token nor the wrong
    // one that was tried is in the audit log, the events file or /metrics.
    let audit = std::fs::read_to_string(lab.dir.join("audit.jsonl")).expect("audit log");
    assert!(audit.contains("\"status\":401"), "the refusals are audited");
    let events = std::fs::read_to_string(lab.dir.join("events.jsonl")).expect("events file");
    assert!(!events.is_empty(), "the drain and undrain are events");
    for (what, text) in [
        ("audit log", &audit),
        ("events file", &events),
        ("/metrics", &body),
    ] {
        for secret in [TOKEN, "wrong-token-000000000"] {
            assert!(!text.contains(secret), "{secret:?} leaked into the {what}");
        }
    }
    let _ = Path::new(&lab.config);
    drop(lab);
}

/// Once attached and listening, the daemon keeps only CAP_BPF and
/// CAP_NET_ADMIN (bounding set: CAP_BPF alone), in every
/// thread, with the bounding set reduced (the tests run as root, which has
/// CAP_SETPCAP) and no_new_privs set; actions that write maps still work.
#[test]
fn capabilities_are_dropped_after_attaching() {
    let lab = start();
    let pid = lab._daemon.0.id();
    let bpf = 1u64 << failover_user::sys::caps::CAP_BPF;
    // CAP_NET_ADMIN stays to re-attach to a recreated interface, CAP_SETUID
    // and CAP_SETGID to start children as `daemon.run_as`; what the daemon
    // runs can never get them (the bounding set is CAP_BPF alone).
    use failover_user::sys::caps::{CAP_NET_ADMIN, CAP_SETGID, CAP_SETUID};
    let want = bpf | (1u64 << CAP_NET_ADMIN) | (1u64 << CAP_SETUID) | (1u64 << CAP_SETGID);
    // The admin socket (what `start` waits for) is up before the drop,
    // which comes right after attaching: wait (bounded) for the daemon's
    // log line's effect, then check every thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let dropped = std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks.filter_map(Result::ok).all(|t| {
                std::fs::read_to_string(t.path().join("status"))
                    .is_ok_and(|st| st.lines().any(|l| l == "NoNewPrivs:\t1"))
            })
        });
        if dropped {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("daemon threads");
    let mut n = 0;
    for t in tasks {
        let st = std::fs::read_to_string(t.expect("task").path().join("status")).expect("status");
        for (field, want) in [("CapEff", want), ("CapPrm", want), ("CapBnd", bpf)] {
            assert_eq!(
                failover_user::sys::caps::status_set(&st, field),
                Some(want),
                "{field} of a daemon thread:\n{st}"
            );
        }
        assert_eq!(failover_user::sys::caps::status_set(&st, "CapInh"), Some(0));
        assert!(st.lines().any(|l| l == "NoNewPrivs:\t1"), "{st}");
        n += 1;
    }
    assert!(n >= 1);
    // Map writes (CAP_BPF) still work: drain moves new flows to b2.
    let cfg = cfg_arg(&lab);
    let (ok, out, err) = cli(&["drain", "web", "b1", "--config", &cfg]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        tcp_request(&lab.topo.client, vip(false, 80), "x", T).unwrap(),
        "b2"
    );
}
