//! Failing PostgreSQL over for real: a synchronous primary (db1) and its
//! streaming standby (db2) behind the VIP, the daemon with roles
//! (`[service.promotion]`, the shipped `examples/postgresql` scripts as its
//! checks and promote hook), and an application inserting a row every
//! 10 ms through the VIP. The integrity figures are asserted exactly:
//! read-only errors, acknowledged inserts lost, inserts reaching the
//! fenced old primary; times are printed (the bench has the table).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use failover_lab::{
    DaemonProcess, LB_IFACES, Topology, Workdir,
    pg::{self, InsertClient, InsertOptions, InsertReport, PgInstall, PgServer, PgServiceConfig},
};

/// Fields drop in order: the databases first, then the daemon, then the
/// namespaces, then the directories.
struct Lab {
    db: Vec<PgServer>,
    daemon: DaemonProcess,
    topo: Topology,
    config: PathBuf,
    events: PathBuf,
    _w: Workdir,
}

/// The shipped scripts, copied where the checks' user (`nobody`) can run
/// them (a CI clone may sit in a private directory).
fn install_scripts(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgresql");
    for s in ["pg-role", "pg-promote", "pg-fence"] {
        std::fs::copy(src.join(s), bin.join(s)).expect("copying a script");
    }
    bin
}

/// `promote`: the promote command (default: the shipped `pg-promote`).
fn start(sync: bool, promote: Option<&str>, passive: bool) -> Lab {
    failover_tests::require_root();
    let install = PgInstall::find().expect("PostgreSQL for the lab (cargo xtask setup)");
    let w = Workdir::new("fpf").expect("workdir");
    let topo = Topology::create(&w.prefix).expect("lab topology");
    pg::route_backends(&topo).expect("routes between the backends");
    let bin = install_scripts(&w.dir);
    let b = bin.display();
    let events = w.dir.join("events.jsonl");
    let promote = promote.map_or_else(
        || format!("[\"{b}/pg-promote\", \"{{address}}\", \"{{port}}\", \"{{token}}\"]"),
        str::to_string,
    );
    let passive = if passive {
        "[service.passive]\nsignals = [\"rst\"]\nfailures = 2\nwindow = \"1s\"\nconfirm_within = \"1s\"\n"
    } else {
        ""
    };
    let x = PgServiceConfig {
        daemon_keys: format!("events_file = \"{}\"\n", events.display()),
        top: format!(
            "[admin]\nsocket = \"{}\"\naudit_file = \"{}\"\n",
            w.dir.join("admin.sock").display(),
            w.dir.join("audit.jsonl").display()
        ),
        service_keys: "flows_on_down = \"reset\"\n".into(),
        check: Some(format!(
            "type = \"exec\"\ncommand = [\"{b}/pg-role\", \"active\", \"{{address}}\", \"{{port}}\"]\ninterval = \"25ms\"\nfast_interval = \"10ms\"\ntimeout = \"1s\"\nfall = 2\nrise = 2\n"
        )),
        service_tables: format!(
            "{passive}\n[service.promotion]\npromote = {promote}\nfence = [\"{b}/pg-fence\", \"{{address}}\", \"{{port}}\"]\nhook_timeout = \"10s\"\nready_within = \"5s\"\n\n[service.promotion.standby_check]\ntype = \"exec\"\ncommand = [\"{b}/pg-role\", \"standby\", \"{{address}}\", \"{{port}}\"]\ninterval = \"100ms\"\ntimeout = \"1s\"\n"
        ),
    };
    let config = pg::write_daemon_config(&w, &x).expect("daemon config");
    let mut db1 = PgServer::on_backend(&install, &topo, &w, 0).expect("db1");
    let mut db2 = PgServer::on_backend(&install, &topo, &w, 1).expect("db2");
    db1.init_primary(sync).expect("primary on backend 1");
    db2.init_standby_of(db1.ip()).expect("standby on backend 2");
    db1.wait_streaming("db2", Duration::from_secs(10))
        .expect("db2 streams from db1");
    let mut daemon = DaemonProcess::spawn(&failover_tests::failover_exe(), &topo.lb.name, &config)
        .expect("daemon");
    daemon
        .wait_attached(&w.bpffs, &LB_IFACES)
        .expect("attached");
    let lab = Lab {
        db: vec![db1, db2],
        daemon,
        topo,
        config,
        events,
        _w: w,
    };
    lab.wait_state("db1", "up");
    lab.wait_state("db2", "standby");
    lab
}

impl Lab {
    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `n`th event (counting from 0) of `kind`, waited for (10 s).
    fn wait_event(&self, kind: &str, n: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = self
                .events()
                .into_iter()
                .filter(|e| e["kind"] == kind)
                .collect();
            if let Some(e) = found.get(n) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event #{n} within 10 s: {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

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
        let (ok, out, err) = self.cli(&["backends", "pg", "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["backend"] == b)
            .and_then(|r| r["state"].as_str())
            .unwrap_or("?")
            .to_string()
    }

    fn wait_state(&self, b: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.state_of(b);
            if s == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{b} is {s}, not {want}, after 15 s; events: {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self, first_id: i64) -> InsertClient {
        InsertClient::start(
            &self.topo.client,
            InsertOptions {
                first_id,
                // An application that retries at once: a SYN dropped while
                // no backend takes new flows is not retried by TCP for 1 s.
                connect_timeout: Duration::from_millis(100),
                ..Default::default()
            },
        )
        .expect("insert client")
    }

    /// Makes `old` (stopped or running on its own) a synchronous standby
    /// of `primary` again: rebuilt, streaming, `synchronous_standby_names`
    /// set on the primary again (the promote hook cleared it).
    fn rejoin(&mut self, old: usize, primary: usize) {
        let ip = self.db[primary].ip();
        let name = self.db[old].name().to_string();
        self.db[old]
            .rebuild_as_standby_of(ip)
            .expect("rebuilt as a standby");
        self.db[primary]
            .set_synchronous(true)
            .expect("synchronous again");
        let state = self.db[primary]
            .wait_streaming(&name, Duration::from_secs(10))
            .expect("streams");
        assert_eq!(state, "sync");
    }
}

/// Ids whose insert started at or after `t`.
fn started_after(r: &InsertReport, t: Instant) -> BTreeSet<i64> {
    r.attempts
        .iter()
        .filter(|a| a.start >= t)
        .map(|a| a.id)
        .collect()
}

/// The primary's postmaster is killed, twice (db1, then db2 after db1 was
/// rebuilt and released). Each time: the standby is promoted before any
/// client reaches it (no read-only error), nothing acknowledged is lost
/// (synchronous replication), the old primary restarted on its own
/// (diverged) gets nothing through the VIP, and `release` of it is
/// refused until it is a standby again.
#[test]
fn a_killed_primary_is_replaced_in_order() {
    let mut lab = start(true, None, false);
    for round in 0..2usize {
        let (p, s) = if round == 0 { (0, 1) } else { (1, 0) };
        let (pname, sname) = (lab.db[p].name().to_string(), lab.db[s].name().to_string());
        let client = lab.client((round as i64 + 1) * 1_000_000);
        std::thread::sleep(Duration::from_millis(800));
        let killed_at = Instant::now();
        lab.db[p].kill_postmaster().expect("kill -9");
        let promoted = lab.wait_event("promoted", round);
        assert_eq!(promoted["backend"], sname.as_str(), "{promoted}");
        assert_eq!(promoted["token"], round as u64 + 1);
        assert_eq!(promoted["cause"], "probe");
        std::thread::sleep(Duration::from_millis(500));
        // The old primary comes back on its own, as a primary: diverged
        // from the new one. Fenced: nothing reaches it.
        lab.db[p].start().expect("old primary restarted");
        let restarted_at = Instant::now();
        std::thread::sleep(Duration::from_millis(700));
        let r = client.stop().expect("client report");
        let c = r.counts();
        let rto = r.rto(killed_at);
        println!(
            "round {round}: kill {pname} -> first acknowledged insert on {sname} after {:?}; promoted {} ms after the fence; {}",
            rto,
            promoted["elapsed_ms"],
            r.summary()
        );
        assert!(rto.is_some(), "no insert acknowledged after the kill");
        assert_eq!(c.read_only, 0, "read-only errors: {}", r.summary());
        let acked = r.acked_ids();
        let on_new = lab.db[s].ids().expect("ids on the new primary");
        assert_eq!(
            InsertReport::lost(&acked, &on_new),
            BTreeSet::new(),
            "acknowledged inserts lost"
        );
        let on_old = lab.db[p].ids().expect("ids on the old primary");
        let reached_old: BTreeSet<i64> = on_old
            .intersection(&started_after(&r, restarted_at))
            .copied()
            .collect();
        assert_eq!(
            reached_old,
            BTreeSet::new(),
            "inserts reached the fenced old primary"
        );
        assert!(
            lab.state_of(&pname).starts_with("down"),
            "{pname} fails the standby check"
        );
        let (ok, _, err) = lab.cli(&["release", "pg", &pname]);
        assert!(!ok && err.contains("fenced"), "{err}");
        // Rebuilt as a standby: held, then released by the operator.
        lab.rejoin(p, s);
        lab.wait_state(&pname, "held");
        let (ok, out, err) = lab.cli(&["release", "pg", &pname]);
        assert!(ok, "{out} {err}");
        assert_eq!(lab.state_of(&pname), "standby");
    }
    let _ = lab.daemon.terminate();
}

/// A planned switchover and a drill with the application running: no
/// read-only error, nothing acknowledged lost, nothing reaches the old
/// primary after the switch.
#[test]
fn a_planned_switchover_and_a_drill_lose_nothing() {
    let mut lab = start(true, None, false);
    let client = lab.client(1);
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    let (ok, out, err) = lab.cli(&["switch", "pg", "--to", "db2"]);
    let done = Instant::now();
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("db1 -> db2 promoted (token 1, operator)"),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = client.stop().expect("client report");
    println!(
        "switchover: {out}; first ack on db2 {:?} after the request; {}",
        r.rto(asked),
        r.summary()
    );
    assert_eq!(r.counts().read_only, 0, "{}", r.summary());
    let on_db2 = lab.db[1].ids().expect("ids on db2");
    assert_eq!(InsertReport::lost(&r.acked_ids(), &on_db2), BTreeSet::new());
    let on_db1 = lab.db[0].ids().expect("ids on db1");
    assert_eq!(
        on_db1.intersection(&started_after(&r, done)).count(),
        0,
        "inserts reached db1 after the switchover"
    );
    // db1, rebuilt as db2's standby, is a standby again by itself (a
    // planned handover needs no release); then a drill back to it.
    lab.rejoin(0, 1);
    lab.wait_state("db1", "standby");
    let (ok, out, err) = lab.cli(&["drill", "pg", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("promote db1 with token 2"), "{out}");
    let client = lab.client(1_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out, err) = lab.cli(&["drill", "pg"]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("db1 is active (token 2), RTO"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let r = client.stop().expect("client report");
    println!("drill: {out}; {}", r.summary());
    assert_eq!(r.counts().read_only, 0, "{}", r.summary());
    let on_db1 = lab.db[0].ids().expect("ids on db1");
    assert_eq!(InsertReport::lost(&r.acked_ids(), &on_db1), BTreeSet::new());
    let _ = lab.daemon.terminate();
}

/// The promote hook fails: `promotion-failed` within a second of the
/// fence, the standby (still in recovery) gets no client, nothing is
/// acknowledged after the crash.
#[test]
fn a_failed_promotion_is_seen_and_serves_no_standby() {
    let lab = start(
        true,
        Some("[\"/bin/sh\", \"-c\", \"echo pg_promote: permission denied >&2; exit 1\"]"),
        false,
    );
    let client = lab.client(1);
    std::thread::sleep(Duration::from_millis(500));
    let mut lab = lab;
    let killed_at = Instant::now();
    lab.db[0].kill_postmaster().expect("kill -9");
    let failed = lab.wait_event("promotion-failed", 0);
    let seen = killed_at.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let r = client.stop().expect("client report");
    println!(
        "promotion-failed {seen:?} after the kill: {}; {}",
        failed["reason"],
        r.summary()
    );
    let fenced = lab.wait_event("fenced", 0);
    let secs = |e: &serde_json::Value| -> f64 {
        let t = e["ts"].as_str().unwrap_or_default();
        let hms = &t[11..t.len() - 1];
        hms.split(':')
            .map(|x| x.parse::<f64>().unwrap_or(0.0))
            .fold(0.0, |a, x| a * 60.0 + x)
    };
    assert!(
        secs(&failed) - secs(&fenced) < 1.0,
        "seen within a second of the fence"
    );
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("permission denied"),
        "{failed}"
    );
    let hooks: Vec<_> = lab
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "hook")
        .collect();
    assert_eq!(hooks.len(), 2, "{hooks:#?}");
    assert_eq!(
        (&hooks[0]["hook"], &hooks[0]["result"]),
        (&"fence".into(), &"ok".into())
    );
    assert_eq!(
        (&hooks[1]["hook"], &hooks[1]["result"]),
        (&"promote".into(), &"failed".into())
    );
    assert!(
        hooks[1]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("exit 1: pg_promote: permission denied"),
        "the hook's exit status and output: {}",
        hooks[1]
    );
    assert_eq!(r.counts().read_only, 0, "{}", r.summary());
    let dead = killed_at + Duration::from_millis(100);
    assert!(
        r.attempts.iter().all(|a| !(a.acked() && a.start >= dead)),
        "an insert was acknowledged after the crash: {}",
        r.summary()
    );
    assert!(
        lab.db[1].is_in_recovery().expect("db2 state"),
        "db2 is still a standby"
    );
    assert_eq!(lab.state_of("db2"), "standby");
    let _ = lab.daemon.terminate();
}
