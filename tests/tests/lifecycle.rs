//! The daemon's start cannot be half-done or hijacked: every check comes
//! before the kernel is touched, one daemon holds a pin directory, and the
//! directories and files it keeps cannot be steered by someone else.
//! Namespace tests with the real daemon; need root, fail (never skip)
//! without it; everything is removed at the end, also on failure.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use failover_lab::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, DaemonProcess, LB_IFACES, Server, Topology, netns::Netns,
    tcp_request, vip,
};

type Scratch = failover_lab::Workdir;

const T: Duration = Duration::from_millis(1000);

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

/// Runs `failover --netns NS daemon --config CONFIG` to its end (a start
/// that must fail), bounded at 30 s.
fn daemon_once(netns: &str, config: &Path) -> Output {
    let mut child = Command::new(exe())
        .args(["--netns", netns, "daemon", "--detach-on-exit", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the daemon");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("waiting").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "the daemon kept running although its start must fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The XDP program id on `iface` in `ns` (`None`: no XDP).
fn xdp_prog(ns: &Netns, iface: &str) -> Option<u32> {
    // No such interface: no XDP either.
    let out = ns.ip(&["-d", "link", "show", "dev", iface]).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let i = text.find("prog/xdp id ")?;
    text[i + "prog/xdp id ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn vip_answer(topo: &Topology) -> String {
    tcp_request(&topo.client, vip(false, 80), "life", T).unwrap_or_else(|e| format!("{e:#}"))
}

struct Lab {
    topo: Topology,
    _servers: Vec<Server>,
    daemon: DaemonProcess,
    s: Scratch,
}

fn start_lab(tag: &str) -> Lab {
    require_root();
    let s = Scratch::new(tag).expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("creating the lab topology");
    let config = s.dir.join("lab.toml");
    std::fs::write(&config, topo.config(&s.bpffs, &s.dir.join("state"))).expect("config");
    let ports = [BACKEND_TCP_PORT];
    let servers = vec![
        Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1"),
        Server::start(&topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2"),
    ];
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("daemon attached");
    assert_eq!(vip_answer(&topo), "b1");
    Lab {
        topo,
        _servers: servers,
        daemon,
        s,
    }
}

/// A second daemon pointed at a running one's pin directory (with its own
/// state directory) is refused, naming the running one, and changes
/// nothing: the first keeps its program and its decisions.
#[test]
fn a_second_daemon_on_one_pin_directory_is_refused() {
    let mut lab = start_lab("fol");
    let prog = xdp_prog(&lab.topo.lb, "lb1").expect("XDP on lb1");
    let other = lab.s.dir.join("other.toml");
    std::fs::write(
        &other,
        lab.topo
            .config(&lab.s.bpffs, &lab.s.dir.join("state-other")),
    )
    .unwrap();
    let out = daemon_once(&lab.topo.lb.name, &other);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is held by another failover daemon (pid ") && err.contains("daemon"),
        "{err}"
    );
    assert_eq!(xdp_prog(&lab.topo.lb, "lb1"), Some(prog), "program kept");
    assert_eq!(vip_answer(&lab.topo), "b1");
    // The same state directory is refused as well.
    let same = lab.s.dir.join("lab.toml");
    let out = daemon_once(&lab.topo.lb.name, &same);
    assert!(
        stderr(&out).contains("daemon.state_dir"),
        "{}",
        stderr(&out)
    );
    assert!(lab.daemon.terminate().expect("terminate").success());
}

/// A mistyped second interface: refused before anything is attached (the
/// first interface gets no XDP, nothing is pinned).
#[test]
fn a_mistyped_interface_attaches_nothing() {
    require_root();
    let s = Scratch::new("fom").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("topology");
    let config = s.dir.join("lab.toml");
    let text = topo.config(&s.bpffs, &s.dir.join("state")).replace(
        r#"interfaces = ["lc", "lb1", "lb2"]"#,
        r#"interfaces = ["lc", "lb9"]"#,
    );
    std::fs::write(&config, text).unwrap();
    // check-config says so first (and passes offline: the file is fine).
    let check = |offline: bool| {
        let mut c = Command::new(exe());
        c.args(["--netns", &topo.lb.name, "check-config"])
            .arg(&config);
        if offline {
            c.arg("--offline");
        }
        c.output().expect("check-config")
    };
    let out = check(false);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("daemon.interfaces: \"lb9\""),
        "{}",
        stderr(&out)
    );
    assert!(check(true).status.success());
    let out = daemon_once(&topo.lb.name, &config);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("daemon.interfaces: \"lb9\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(xdp_prog(&topo.lb, "lc"), None, "no XDP left on lc");
    assert!(!s.bpffs.exists(), "nothing pinned");
}

/// An events file that cannot be opened (a directory) stops a restart
/// before the program is swapped into the links the previous run left
/// pinned: the old program keeps running.
#[test]
fn a_bad_events_file_stops_a_restart_before_the_kernel() {
    let mut lab = start_lab("foe");
    let before: Vec<Option<u32>> = LB_IFACES
        .iter()
        .map(|i| xdp_prog(&lab.topo.lb, i))
        .collect();
    assert!(before.iter().all(Option::is_some));
    // SAFETY: SIGKILL to our own child.
    unsafe { libc::kill(lab.daemon.0.id() as libc::pid_t, libc::SIGKILL) };
    let _ = lab.daemon.0.wait();
    let dir_as_file = lab.s.dir.join("events-dir");
    std::fs::create_dir(&dir_as_file).unwrap();
    let config = lab.s.dir.join("restart.toml");
    let text = lab
        .topo
        .config(&lab.s.bpffs, &lab.s.dir.join("state"))
        .replacen(
            "[daemon]\n",
            &format!("[daemon]\nevents_file = \"{}\"\n", dir_as_file.display()),
            1,
        );
    std::fs::write(&config, text).unwrap();
    let out = daemon_once(&lab.topo.lb.name, &config);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("events file"), "{}", stderr(&out));
    let after: Vec<Option<u32>> = LB_IFACES
        .iter()
        .map(|i| xdp_prog(&lab.topo.lb, i))
        .collect();
    assert_eq!(before, after, "the previous program still runs, untouched");
    assert_eq!(vip_answer(&lab.topo), "b1");
    // Clean up the fail-static leftovers: links and maps.
    let _ = std::fs::remove_dir_all(&lab.s.bpffs);
}

/// Directories someone else owns or may write, and symlinks planted where
/// the daemon writes, are refused with the path named; the file a symlink
/// points to is never written.
#[test]
fn foreign_directories_and_planted_symlinks_are_refused() {
    require_root();
    let s = Scratch::new("fos").expect("scratch dir");
    let ns = Netns::new(&format!("{}n", s.prefix)).expect("netns");
    let victim = s.dir.join("victim");
    std::fs::write(&victim, b"root's file\n").unwrap();
    let config = |bpffs: &Path, state: &Path, extra: &str| -> PathBuf {
        let p = s.dir.join("c.toml");
        std::fs::write(
            &p,
            format!(
                "[daemon]\ninterfaces = [\"lo\"]\nbpffs = \"{}\"\nstate_dir = \"{}\"\n{extra}\n\
                 [[service]]\nname = \"web\"\nvip = \"198.18.100.10\"\nport = 80\n\
                 [[service.backend]]\nname = \"b\"\naddress = \"198.18.1.2\"\n",
                bpffs.display(),
                state.display()
            ),
        )
        .unwrap();
        p
    };
    let nobody = 65534;
    // A state directory another user owns.
    let state = s.dir.join("state-foreign");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(nobody), Some(nobody)).unwrap();
    let out = daemon_once(&ns.name, &config(&s.bpffs, &state, ""));
    assert!(
        stderr(&out).contains("belongs to uid 65534"),
        "{}",
        stderr(&out)
    );
    // A pin directory made beforehand by someone else, on a bpffs open to all.
    let state = s.dir.join("state");
    std::fs::create_dir(&s.bpffs).unwrap();
    std::os::unix::fs::chown(&s.bpffs, Some(nobody), Some(nobody)).unwrap();
    let out = daemon_once(&ns.name, &config(&s.bpffs, &state, ""));
    assert!(
        stderr(&out).contains("belongs to uid 65534"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir(&s.bpffs).unwrap();
    // A state directory others may write.
    let open = s.dir.join("state-open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = daemon_once(&ns.name, &config(&s.bpffs, &open, ""));
    assert!(
        stderr(&out).contains("is writable by others"),
        "{}",
        stderr(&out)
    );
    // A symlink planted as the events file.
    let planted = s.dir.join("events.jsonl");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let out = daemon_once(
        &ns.name,
        &config(
            &s.bpffs,
            &state,
            &format!("events_file = \"{}\"", planted.display()),
        ),
    );
    assert!(
        stderr(&out).contains("is a symbolic link"),
        "{}",
        stderr(&out)
    );
    let c = config(
        &s.bpffs,
        &state,
        &format!("events_file = \"{}\"", planted.display()),
    );
    let out = Command::new(exe())
        .args(["--netns", &ns.name, "check-config"])
        .arg(&c)
        .output()
        .expect("check-config");
    assert!(
        !out.status.success() && stderr(&out).contains("daemon.events_file"),
        "check-config must refuse it too: {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's file\n");
    assert!(!s.bpffs.exists(), "nothing pinned");
}

/// Waits (at most 3 s) until `f` holds.
fn within_3s(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within 3 s");
}

/// `rm -rf` of the pin directory does not detach the daemon (it holds its
/// links) and is repaired within a second: the directory, the link pins
/// and the map pins come back, and the daemon says so. A backend interface
/// deleted and recreated gets the program again, and new connections to
/// the VIP through it work; `status` and the events file say what happened.
#[test]
fn removed_pins_and_a_recreated_interface_are_repaired() {
    require_root();
    let s = Scratch::new("fow").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("topology");
    let events = s.dir.join("events.jsonl");
    let config = s.dir.join("lab.toml");
    let x = failover_lab::LabExtras {
        events_file: Some(events.clone()),
        ..Default::default()
    };
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &x),
    )
    .unwrap();
    let ports = [BACKEND_TCP_PORT];
    let mut servers = vec![
        Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1"),
        Server::start(&topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2"),
    ];
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("attached");
    assert_eq!(vip_answer(&topo), "b1");
    let progs: Vec<Option<u32>> = LB_IFACES.iter().map(|i| xdp_prog(&topo.lb, i)).collect();

    // Every pin gone at once.
    std::fs::remove_dir_all(&s.bpffs).expect("rm -rf the pin directory");
    assert_eq!(
        vip_answer(&topo),
        "b1",
        "still forwarding: the links are held"
    );
    let after: Vec<Option<u32>> = LB_IFACES.iter().map(|i| xdp_prog(&topo.lb, i)).collect();
    assert_eq!(progs, after, "the program never left");
    within_3s("pins back", || {
        LB_IFACES
            .iter()
            .all(|i| failover_user::dataplane::link_pin_path(&s.bpffs, i).exists())
            && failover_common::map_names::ALL
                .iter()
                .all(|m| failover_user::dataplane::map_pin_path(&s.bpffs, m).exists())
    });
    let status = Command::new(exe())
        .args(["--netns", &topo.lb.name, "status", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("status");
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(
        st["attached"],
        serde_json::json!(["lb1", "lb2", "lc"]),
        "{st}"
    );

    // lb1 deleted (with its peer) and made again, as a hot-replugged NIC.
    topo.lb.ip(&["link", "del", "lb1"]).expect("deleting lb1");
    within_3s("status shows lb1 detached or gone", || {
        xdp_prog(&topo.lb, "lb1").is_none()
    });
    let b1 = &topo.backends[0];
    failover_lab::netns::veth(&topo.lb, "lb1", b1, "b1").expect("veth again");
    for (ns, a, dev) in [
        (&topo.lb, "198.18.1.1/24", "lb1"),
        (b1, "198.18.1.2/24", "b1"),
    ] {
        ns.ip(&["addr", "add", a, "dev", dev]).expect("address");
    }
    b1.ip(&["route", "add", "198.18.0.0/24", "via", "198.18.1.1"])
        .expect("route");
    b1.run(|| failover_lab::netns::disable_tx_checksum("b1"))
        .expect("tx checksum off");
    let _pass = failover_lab::attach_pass(b1, "b1").expect("pass program on b1");
    within_3s("XDP back on the new lb1", || {
        xdp_prog(&topo.lb, "lb1").is_some()
    });
    assert_eq!(vip_answer(&topo), "b1", "new connections reach b1 again");
    let text = std::fs::read_to_string(&events).expect("events file");
    for want in [
        "the pin directory was removed; made again",
        "lc: the link pin was removed; pinned again",
        "map pins were removed; pinned again",
        "lb1: the program was off the interface",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains("\"kind\":\"dataplane\"") && l.contains(want)),
            "no event {want:?} in:\n{text}"
        );
    }
    assert!(daemon.terminate().expect("terminate").success());
    servers.clear();
}

/// logrotate moves the events file away and sends SIGUSR1 (or SIGHUP):
/// the daemon writes on into a new file at the configured path.
#[test]
fn the_events_file_is_reopened_on_sigusr1_and_sighup() {
    require_root();
    let s = Scratch::new("for").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("topology");
    let events = s.dir.join("events.jsonl");
    let config = s.dir.join("lab.toml");
    let x = failover_lab::LabExtras {
        events_file: Some(events.clone()),
        ..Default::default()
    };
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &x),
    )
    .unwrap();
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("attached");
    let pid = daemon.0.id() as libc::pid_t;
    for (signal, rotated, iface) in [
        (libc::SIGUSR1, "events.jsonl.1", "lc"),
        (libc::SIGHUP, "events.jsonl.2", "lb2"),
    ] {
        let old = s.dir.join(rotated);
        std::fs::rename(&events, &old).expect("rotating");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
        within_3s("the new events file", || events.exists());
        // Something to report: a link pin removed (and put back).
        std::fs::remove_file(failover_user::dataplane::link_pin_path(&s.bpffs, iface))
            .expect("removing a link pin");
        let want = format!("{iface}: the link pin was removed; pinned again");
        within_3s("the event in the new file", || {
            std::fs::read_to_string(&events).is_ok_and(|t| t.contains(&want))
        });
        let old_text = std::fs::read_to_string(&old).expect("rotated file");
        assert!(!old_text.contains(&want), "{old_text}");
    }
    assert!(daemon.terminate().expect("terminate").success());
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 comes once the
/// program is attached (every link pinned), and the watchdog is fed from
/// the daemon's loop at half its period.
#[test]
fn systemd_hears_ready_after_attach_and_a_fed_watchdog() {
    use std::os::unix::net::UnixDatagram;
    require_root();
    let s = Scratch::new("fon").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("topology");
    let config = s.dir.join("lab.toml");
    let x = failover_lab::LabExtras {
        check: Some("type = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"".to_string()),
        ..Default::default()
    };
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &x),
    )
    .unwrap();
    let _servers = [
        Server::start(
            &topo.backends[0],
            "b1",
            &[BACKEND_TCP_PORT],
            BACKEND_UDP_PORT,
        )
        .expect("b1"),
        Server::start(
            &topo.backends[1],
            "b2",
            &[BACKEND_TCP_PORT],
            BACKEND_UDP_PORT,
        )
        .expect("b2"),
    ];
    let sock_path = s.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = Command::new(exe())
        .args([
            "--netns",
            &topo.lb.name,
            "daemon",
            "--detach-on-exit",
            "--config",
        ])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    let mut daemon = DaemonProcess(child);
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !got.iter().any(|m: &String| m.contains("READY=1")) {
        assert!(std::time::Instant::now() < deadline, "no READY=1: {got:?}");
        let n = sock.recv(&mut buf).expect("a notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    for i in LB_IFACES {
        assert!(
            failover_user::dataplane::link_pin_path(&s.bpffs, i).exists(),
            "READY before {i} was attached"
        );
    }
    // Watchdog pings: at least 4 in the next second (every 100 ms).
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(1) {
        if let Ok(n) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
        {
            pings += 1;
        }
    }
    assert!(pings >= 4, "{pings} watchdog pings in 1 s");
    assert!(daemon.terminate().expect("terminate").success());
}

/// Hooks run as `daemon.run_as` (default `nobody`) with no capability,
/// one at a time per hook, coalescing a storm: 40 state changes in quick
/// succession run the hook a few times, and the runs' `hook` events
/// account for every one of the 40 (the sum of `coalesced`).
#[test]
fn hooks_run_unprivileged_and_a_storm_is_coalesced() {
    require_root();
    let s = Scratch::new("foh").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("topology");
    let out = s.dir.join("hook-out");
    std::fs::write(&out, "").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
    let events = s.dir.join("events.jsonl");
    let x = failover_lab::LabExtras {
        events_file: Some(events.clone()),
        service_tables: format!(
            "[[service.hook]]\nname = \"who\"\ntype = \"exec\"\nevents = [\"state\"]\n\
             command = [\"/bin/sh\", \"-c\", \"echo $(id -u) $(grep CapEff /proc/self/status) >> \\\"$0\\\"; sleep 0.2\", \"{}\"]\n\
             timeout = \"2s\"\n",
            out.display()
        ),
        ..Default::default()
    };
    let config = s.dir.join("lab.toml");
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &x),
    )
    .unwrap();
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("attached");
    let actions = 40;
    let t0 = std::time::Instant::now();
    for k in 0..actions {
        let verb = if k % 2 == 0 { "drain" } else { "undrain" };
        let o = Command::new(exe())
            .args([verb, "web", "b1", "--config"])
            .arg(&config)
            .output()
            .expect("action");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let storm = t0.elapsed();
    // Every state change accounted for by a run (sum of coalesced).
    let hook_events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == "hook" && e["service"] == "web")
            .collect()
    };
    let state_events = || {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"kind\":\"state\"") && l.contains("\"service\":\"web\""))
            .count() as u64
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let covered: u64 = hook_events()
            .iter()
            .map(|e| e["coalesced"].as_u64().unwrap_or(0))
            .sum();
        if covered == state_events() && covered >= actions {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hook runs cover {covered} of {} state events",
            state_events()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs = hook_events();
    eprintln!(
        "(hooks) {actions} state changes in {storm:?} ran the hook {} times",
        runs.len()
    );
    assert!(
        runs.len() < 20,
        "{} runs for {actions} events in {:?}: not coalesced: {:?}",
        runs.len(),
        storm,
        runs.iter()
            .map(|e| (e["elapsed_ms"].as_f64(), e["coalesced"].as_u64()))
            .collect::<Vec<_>>()
    );
    assert!(runs.iter().all(|e| e["result"] == "ok"), "{runs:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), runs.len());
    for line in text.lines() {
        assert_eq!(
            line, "65534 CapEff: 0000000000000000",
            "a hook ran with privileges"
        );
    }
    assert!(daemon.terminate().expect("terminate").success());
}

/// `failover status` (no daemon needed) says whether the daemon is alive
/// from its heartbeat: alive while it runs, not alive while its loop is
/// stopped (SIGSTOP: a hung daemon), alive again after SIGCONT, not alive
/// after it exits; and how old its last decision is.
#[test]
fn status_tells_a_live_daemon_from_a_hung_or_dead_one() {
    let mut lab = start_lab("fob");
    let config = lab.s.dir.join("lab.toml");
    let status = || -> serde_json::Value {
        let o = Command::new(exe())
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()
            .expect("status");
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    let alive = || status()["daemon"]["alive"] == serde_json::Value::Bool(true);
    within_3s("alive", alive);
    // A decision: its age shows.
    let o = Command::new(exe())
        .args(["drain", "web", "b1", "--config"])
        .arg(&config)
        .output()
        .expect("drain");
    assert!(o.status.success());
    within_3s("the last decision's age", || {
        status()["daemon"]["last_decision_age_ms"]
            .as_u64()
            .is_some()
    });
    let pid = lab.daemon.0.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(3500));
    let hung = status();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(hung["daemon"]["alive"], false, "{hung}");
    within_3s("alive again", alive);
    assert!(lab.daemon.terminate().expect("terminate").success());
    // Detached on exit: no maps to read either; never "alive".
    assert_ne!(status()["daemon"]["alive"], true);
    assert!(!lab.s.dir.join("state/heartbeat.json").exists());
}

/// A tmpfs of a few pages, unmounted on drop (a disk that fills up).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(&at)
            .output()
            .expect("mount");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Self(at)
    }
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// The audit log fails closed for people and static for the dataplane: on
/// a full disk admin actions are refused (503) and `status` says so, while
/// the health agent's own failover goes on; once space is back the log
/// resumes with an `audit-gap` record sealed into the chain. The head
/// published in `status` detects a truncated copy. A line torn by the full
/// disk is moved aside by `failover audit repair` (kept as evidence), and
/// the daemon starts on the repaired log.
#[test]
fn the_audit_log_fails_closed_for_people_and_heals() {
    require_root();
    let s = Scratch::new("foa").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("topology");
    let disk = SmallDisk::mount(s.dir.join("audit"));
    let log = disk.0.join("audit.jsonl");
    let x = failover_lab::LabExtras {
        check: Some(
            "type = \"tcp\"\ninterval = \"20ms\"\ntimeout = \"20ms\"\nfall = 2\nrise = 2".into(),
        ),
        top: format!("[admin]\naudit_file = \"{}\"\n", log.display()),
        ..Default::default()
    };
    let config = s.dir.join("lab.toml");
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &x),
    )
    .unwrap();
    let mut servers = [
        Some(
            Server::start(
                &topo.backends[0],
                "b1",
                &[BACKEND_TCP_PORT],
                BACKEND_UDP_PORT,
            )
            .unwrap(),
        ),
        Some(
            Server::start(
                &topo.backends[1],
                "b2",
                &[BACKEND_TCP_PORT],
                BACKEND_UDP_PORT,
            )
            .unwrap(),
        ),
    ];
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("attached");
    let cli = |args: &[&str]| {
        let o = Command::new(exe())
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("cli");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr(&o),
        )
    };
    let status = || -> serde_json::Value {
        serde_json::from_str(&cli(&["status", "--json"]).1).unwrap_or(serde_json::Value::Null)
    };
    let audit = |args: &[&str]| {
        let o = Command::new(exe())
            .arg("audit")
            .args(args)
            .output()
            .expect("audit");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr(&o),
        )
    };
    within_3s("web answered by b1", || vip_answer(&topo) == "b1");
    // The disk fills up.
    let filler = disk.fill();
    // The log's last page may still hold a line or two: act until refused.
    let mut refused = None;
    for k in 0..20 {
        // (on another service: web's backends stay as they are)
        let (ok, _, err) = cli(&[if k % 2 == 0 { "drain" } else { "undrain" }, "api", "b2"]);
        if !ok {
            refused = Some(err);
            break;
        }
    }
    let err = refused.expect("no action was refused on a full disk");
    assert!(
        err.contains("(503)") && err.contains("audit log cannot be written"),
        "{err}"
    );
    // The agent decides on: b1 dies, b2 takes over.
    if let Some(b) = servers[0].take() {
        b.stop();
    }
    within_3s("failover to b2 with the audit log down", || {
        vip_answer(&topo) == "b2"
    });
    // Space again: the next action is served and the gap sealed.
    std::fs::remove_file(&filler).unwrap();
    let (ok, _, err) = cli(&["drain", "web", "b2"]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    let gap = text
        .lines()
        .find(|l| l.contains("\"kind\":\"audit-gap\""))
        .unwrap_or_else(|| panic!("no audit-gap record:\n{text}"));
    let lost = serde_json::from_str::<serde_json::Value>(gap).unwrap()["records_lost"]
        .as_u64()
        .unwrap_or(0);
    assert!(lost >= 1, "{gap}");
    let (ok, _, err) = audit(&["verify", &log.display().to_string()]);
    assert!(ok, "{err}");
    within_3s("status: audit writable again", || {
        status()["daemon"]["audit_writable"] == serde_json::Value::Bool(true)
    });
    // The head the daemon publishes (its heartbeat: once a second) catches
    // up with the log.
    let written = std::fs::read_to_string(&log).unwrap().lines().count();
    let head_seq = |h: &str| h.split(':').next().and_then(|n| n.parse::<usize>().ok());
    within_3s("the published head", || {
        status()["daemon"]["audit_head"]
            .as_str()
            .and_then(head_seq)
            .is_some_and(|n| n >= written)
    });
    let head = status()["daemon"]["audit_head"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (ok, _, err) = audit(&["verify", &log.display().to_string(), "--head", &head]);
    assert!(ok, "{err}");
    // A copy cut short is caught by the head.
    let cut = s.dir.join("cut.jsonl");
    let seq = head_seq(&head).expect("head seq");
    let now = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = now.lines().take(seq - 1).collect();
    std::fs::write(&cut, lines.join("\n") + "\n").unwrap();
    let (ok, _, err) = audit(&["verify", &cut.display().to_string(), "--head", &head]);
    assert!(
        !ok && err.contains("truncated"),
        "head {head}: {err} hb={:?} log={}",
        std::fs::read_to_string(s.dir.join("state/heartbeat.json")),
        now.lines().count()
    );
    // A torn line (the disk filled mid-line before a crash): the start
    // refuses, repair moves it aside, the start works.
    assert!(daemon.terminate().expect("terminate").success());
    let before = std::fs::read(&log).unwrap();
    let mut torn = before.clone();
    torn.extend_from_slice(b"{\"seq\":99,\"ts\":\"2026-");
    std::fs::write(&log, &torn).unwrap();
    let out = daemon_once(&topo.lb.name, &config);
    assert!(
        !out.status.success() && stderr(&out).contains("audit"),
        "{}",
        stderr(&out)
    );
    let (ok, out, err) = audit(&["repair", &log.display().to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("moved to"), "{out}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        before,
        "the log ends at its last whole line"
    );
    let evidence: Vec<_> = std::fs::read_dir(&disk.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(evidence.len(), 1);
    assert_eq!(
        std::fs::read(evidence[0].path()).unwrap(),
        b"{\"seq\":99,\"ts\":\"2026-"
    );
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("starts on the repaired log");
    assert!(daemon.terminate().expect("terminate").success());
}

/// One HTTP/1.1 request on a new connection from `src` (inside the
/// caller's namespace): the status code (0: no answer).
fn raw_status(src: &str, to: &str, req: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let sock = match socket2_connect(src, to) {
        Some(s) => s,
        None => return 0,
    };
    let mut s = sock;
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A TCP connection to `to` from the local address `src` (port 0).
fn socket2_connect(src: &str, to: &str) -> Option<std::net::TcpStream> {
    let src: std::net::SocketAddr = format!("{src}:0").parse().ok()?;
    let to: std::net::SocketAddr = to.parse().ok()?;
    let s = tokio::net::TcpSocket::new_v4().ok()?;
    s.bind(src).ok()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let stream = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(2), s.connect(to)).await })
        .ok()?
        .ok()?;
    stream.into_std().ok().inspect(|s| {
        let _ = s.set_nonblocking(false);
    })
}

/// The admin API under attack from another client address (127.0.0.2 in
/// the load balancer's namespace): a flood of wrong-token requests does not
/// spend the token holder's budget (55 of 55 served, none 429), and its
/// 401s reach the audit log as one full record plus one `auth-failures`
/// count per window; 200 slowloris connections leave the token holder's
/// requests served (the per-client connection limit).
#[test]
fn the_admin_api_serves_the_token_holder_under_attack() {
    require_root();
    const TOKEN: &str = "lifecycle-token-0123456789abcdef";
    const API: &str = "127.0.0.1:9190";
    let s = Scratch::new("fox").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("topology");
    let token = s.dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let audit = s.dir.join("audit.jsonl");
    let x = failover_lab::LabExtras {
        top: format!(
            "[admin]\nlisten = \"{API}\"\ntoken_file = \"{}\"\naudit_file = \"{}\"\nrate_limit = 50\n",
            token.display(),
            audit.display()
        ),
        ..Default::default()
    };
    let config = s.dir.join("lab.toml");
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &x),
    )
    .unwrap();
    let mut daemon = DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("attached");
    let good = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let bad = "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nConnection: close\r\n\r\n";
    let holder = |n: usize| -> Vec<u16> {
        topo.lb
            .run(|| {
                Ok((0..n)
                    .map(|_| {
                        std::thread::sleep(Duration::from_millis(20));
                        raw_status("127.0.0.1", API, &good)
                    })
                    .collect())
            })
            .expect("token holder")
    };
    within_3s("the API answers", || holder(1) == [200]);

    // 1. A wrong-token flood from 127.0.0.2 while the holder asks 55 times.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lb = topo.lb.name.clone();
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{lb}")).expect("netns");
            failover_user::sys::netns::setns(&ns).expect("setns");
            let mut sent = 0u64;
            let t0 = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t0.elapsed() < Duration::from_secs(10)
            {
                raw_status("127.0.0.2", API, bad);
                sent += 1;
            }
            sent
        })
    };
    let got = holder(55);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().expect("flood");
    assert!(sent > 100, "the flood sent only {sent}");
    assert_eq!(got.iter().filter(|&&c| c == 200).count(), 55, "{got:?}");
    // The 401s: one full record, then one count when the window closes.
    let lines_401 = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"status\":401"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !lines_401().iter().any(|l| l.contains("auth-failures")) {
        assert!(std::time::Instant::now() < deadline, "{:?}", lines_401());
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = lines_401();
    eprintln!(
        "(api) {sent} wrong-token requests: the holder got {} of 55 answered 200; {} audit lines",
        got.iter().filter(|&&c| c == 200).count(),
        lines.len()
    );
    assert!(
        lines.len() <= 4,
        "{} audit lines for {sent} refusals",
        lines.len()
    );

    // 2. 200 slowloris connections from 127.0.0.2.
    let held = topo
        .lb
        .run(|| {
            use std::io::Write as _;
            let mut v = Vec::new();
            for _ in 0..200 {
                if let Some(mut c) = socket2_connect("127.0.0.2", API) {
                    let _ = c.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
                    v.push(c);
                }
            }
            Ok(v)
        })
        .expect("slowloris");
    assert!(held.len() >= 16, "{} connections", held.len());
    let got = holder(55);
    assert_eq!(got.iter().filter(|&&c| c == 200).count(), 55, "{got:?}");
    drop(held);
    assert!(daemon.terminate().expect("terminate").success());
}

/// A `layout.json` that disagrees with the pinned maps (here: web's two
/// backends' slots swapped while the daemon was down) is not trusted: the
/// restart assigns slots afresh, matching the maps, and a connection
/// established before stays with its backend.
#[test]
fn a_forged_layout_is_not_trusted() {
    let mut lab = start_lab("fol2");
    let c = &lab.topo.client;
    let mut conn = failover_lab::Conn::open(c, vip(false, 80), T).expect("a connection");
    assert_eq!(conn.ask("before").expect("ask"), "b1");
    // SAFETY: SIGKILL to our own child.
    unsafe { libc::kill(lab.daemon.0.id() as libc::pid_t, libc::SIGKILL) };
    let _ = lab.daemon.0.wait();
    let lp = lab.s.dir.join("state/layout.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lp).unwrap()).unwrap();
    let web = v["services"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["name"] == "web")
        .expect("web");
    let (a, b) = (
        web["tiers"][0][0]["id"].clone(),
        web["tiers"][1][0]["id"].clone(),
    );
    web["tiers"][0][0]["id"] = b;
    web["tiers"][1][0]["id"] = a;
    std::fs::write(&lp, serde_json::to_vec(&v).unwrap()).unwrap();
    let config = lab.s.dir.join("lab.toml");
    lab.daemon = DaemonProcess::spawn(&exe(), &lab.topo.lb.name, &config).expect("restart");
    // Links adopted at once; wait until the new daemon has applied.
    within_3s("the restarted daemon serves", || {
        Command::new(exe())
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"alive\": true"))
    });
    assert_eq!(conn.ask("after").expect("ask after the restart"), "b1");
    assert_eq!(vip_answer(&lab.topo), "b1");
    assert!(lab.daemon.terminate().expect("terminate").success());
}

/// `check-config` refuses, on the host it would configure, a backend at
/// one of the host's own addresses and an exec hook whose program is
/// missing (each naming its field), and a config with no interface.
#[test]
fn check_config_refuses_host_mistakes() {
    require_root();
    let s = Scratch::new("foc").expect("scratch dir");
    let ns = Netns::new(&format!("{}n", s.prefix)).expect("netns");
    ns.ip(&["addr", "add", "198.18.9.1/24", "dev", "lo"])
        .expect("address");
    ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
    let config = s.dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\ninterfaces = []\nbpffs = \"{}\"\nstate_dir = \"{}\"\n\
             [[service]]\nname = \"web\"\nvip = \"198.18.100.10\"\nport = 80\n\
             [[service.backend]]\nname = \"me\"\naddress = \"198.18.9.1\"\n\
             [[service.hook]]\nname = \"promote\"\ntype = \"exec\"\ncommand = [\"/nonexistent/promote\"]\n",
            s.bpffs.display(),
            s.dir.join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(exe())
        .args(["--netns", &ns.name, "check-config"])
        .arg(&config)
        .output()
        .expect("check-config");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    for want in [
        "daemon.interfaces: empty",
        "backend \"me\": 198.18.9.1 is an address of this host",
        "hook \"promote\": program \"/nonexistent/promote\" not found",
    ] {
        assert!(err.contains(want), "no {want:?} in: {err}");
    }
}
