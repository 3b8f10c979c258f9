//! Failing PostgreSQL over for real: a synchronous primary (db1) and its
//! streaming standby (db2) behind the VIP, the daemon with roles
//! (`[service.promotion]`, the shipped `examples/postgresql` scripts as its
//! checks and promote hook), and an application inserting a row every
//! 10 ms through the VIP. The integrity figures are asserted exactly:
//! read-only errors, acknowledged inserts lost, inserts reaching the
//! fenced old primary; times are printed (the bench has the table).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use failover_lab::{
    pg::InsertReport,
    pgfail::{Options, PgFailoverLab, started_after},
};

/// The lab's calls, failing the test with their error.
trait Must {
    fn wait_event_ok(&self, kind: &str, n: usize) -> serde_json::Value;
    fn cli_ok(&self, args: &[&str]) -> (bool, String, String);
    fn state_of_ok(&self, b: &str) -> String;
    fn wait_state_ok(&self, b: &str, want: &str);
    fn client_ok(&self, first_id: i64) -> failover_lab::pg::InsertClient;
    fn rejoin_ok(&mut self, old: usize, primary: usize);
}

impl Must for PgFailoverLab {
    fn wait_event_ok(&self, kind: &str, n: usize) -> serde_json::Value {
        self.wait_event(kind, n).expect("event")
    }
    fn cli_ok(&self, args: &[&str]) -> (bool, String, String) {
        self.cli(args).expect("the CLI")
    }
    fn state_of_ok(&self, b: &str) -> String {
        self.state_of(b).expect("a backend's state")
    }
    fn wait_state_ok(&self, b: &str, want: &str) {
        self.wait_state(b, want).expect("a backend's state");
    }
    fn client_ok(&self, first_id: i64) -> failover_lab::pg::InsertClient {
        self.client(first_id).expect("the insert client")
    }
    fn rejoin_ok(&mut self, old: usize, primary: usize) {
        self.rejoin(old, primary).expect("rejoined as a standby");
    }
}

fn start(sync: bool, promote: Option<&str>, passive: bool, native: bool) -> PgFailoverLab {
    failover_tests::require_root();
    PgFailoverLab::start(
        &failover_tests::failover_exe(),
        &Options {
            sync,
            passive,
            promote: promote.map(str::to_string),
            native,
        },
    )
    .expect("the PostgreSQL failover lab")
}

/// The primary's postmaster is killed, twice (db1, then db2 after db1 was
/// rebuilt and released). Each time: the standby is promoted before any
/// client reaches it (no read-only error), nothing acknowledged is lost
/// (synchronous replication), the old primary restarted on its own
/// (diverged) gets nothing through the VIP, and `release` of it is
/// refused until it is a standby again.
#[test]
fn a_killed_primary_is_replaced_in_order() {
    // The daemon's own PostgreSQL checks (the other tests use the shipped
    // `pg-role` script as exec checks).
    let mut lab = start(true, None, false, true);
    for round in 0..2usize {
        let (p, s) = if round == 0 { (0, 1) } else { (1, 0) };
        let (pname, sname) = (lab.db[p].name().to_string(), lab.db[s].name().to_string());
        let client = lab.client_ok((round as i64 + 1) * 1_000_000);
        std::thread::sleep(Duration::from_millis(800));
        let killed_at = Instant::now();
        lab.db[p].kill_postmaster().expect("kill -9");
        let promoted = lab.wait_event_ok("promoted", round);
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
            lab.state_of_ok(&pname).starts_with("down"),
            "{pname} fails the standby check"
        );
        let (ok, _, err) = lab.cli_ok(&["release", "pg", &pname]);
        assert!(!ok && err.contains("fenced"), "{err}");
        // Rebuilt as a standby: held, then released by the operator.
        lab.rejoin_ok(p, s);
        lab.wait_state_ok(&pname, "held");
        let (ok, out, err) = lab.cli_ok(&["release", "pg", &pname]);
        assert!(ok, "{out} {err}");
        // The CLI reads the states the agent saves (asynchronously).
        lab.wait_state_ok(&pname, "standby");
    }
    let _ = lab.daemon.terminate();
}

/// A planned switchover and a drill with the application running: no
/// read-only error, nothing acknowledged lost, nothing reaches the old
/// primary after the switch.
#[test]
fn a_planned_switchover_and_a_drill_lose_nothing() {
    let mut lab = start(true, None, false, false);
    let client = lab.client_ok(1);
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    let (ok, out, err) = lab.cli_ok(&["switch", "pg", "--to", "db2"]);
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
    lab.rejoin_ok(0, 1);
    lab.wait_state_ok("db1", "standby");
    let (ok, out, err) = lab.cli_ok(&["drill", "pg", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("promote db1 with token 2"), "{out}");
    let client = lab.client_ok(1_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out, err) = lab.cli_ok(&["drill", "pg"]);
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
        false,
    );
    let client = lab.client_ok(1);
    std::thread::sleep(Duration::from_millis(500));
    let mut lab = lab;
    let killed_at = Instant::now();
    lab.db[0].kill_postmaster().expect("kill -9");
    let failed = lab.wait_event_ok("promotion-failed", 0);
    let seen = killed_at.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let r = client.stop().expect("client report");
    println!(
        "promotion-failed {seen:?} after the kill: {}; {}",
        failed["reason"],
        r.summary()
    );
    let fenced = lab.wait_event_ok("fenced", 0);
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
    // Its promote hook ran (and failed): fenced, shown held while it
    // passes the standby check.
    assert_eq!(lab.state_of_ok("db2"), "held");
    let _ = lab.daemon.terminate();
}
