//! The `postgresql` section: a real PostgreSQL 15 primary and its standby
//! behind the VIP with roles (`failover_lab::pgfail`), an application
//! inserting every 10 ms, the primary's postmaster killed again and again
//! (the old primary rebuilt as a standby and released between kills).
//! Synchronous and asynchronous replication, probes only and with passive
//! detection; per kill: the RTO (the first acknowledged insert after the
//! kill), read-only errors, acknowledged inserts lost, and the time from
//! the fence to the switch. Then a planned switchover and a drill.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context as _;
use failover_lab::{
    pg::InsertReport,
    pgfail::{Options, PgFailoverLab},
};
use serde_json::{Value, json};

use super::{Opts, daemon_exe, median};

/// How long a killed postmaster's backends may still answer.
const DYING: Duration = Duration::from_millis(30);

/// One configuration's kills.
pub struct Series {
    pub sync: bool,
    pub passive: bool,
    /// The daemon's own PostgreSQL checks (else `pg-role` exec checks).
    pub native: bool,
    pub rto_ms: Vec<f64>,
    /// From the kill to the `fenced` event (detection).
    pub detect_ms: Vec<f64>,
    pub fence_hook_ms: Vec<f64>,
    pub promote_hook_ms: Vec<f64>,
    pub fence_to_switch_ms: Vec<f64>,
    pub read_only: usize,
    pub lost: usize,
    /// Inserts whose outcome is unknown (timed out while committing).
    pub in_doubt: usize,
}

/// A planned switchover or a drill.
pub struct Planned {
    pub what: &'static str,
    pub ms: f64,
    pub read_only: usize,
    pub lost: usize,
}

pub fn run(o: &Opts, report: &mut Value) -> anyhow::Result<(Vec<Series>, Vec<Planned>)> {
    let exe = daemon_exe(o)?;
    let kills = if o.quick { 2 } else { 6 };
    let mut out = Vec::new();
    for (sync, passive, native) in [
        (true, false, false),
        (true, false, true),
        (true, true, true),
        (false, false, true),
        (false, true, true),
    ] {
        let mut lab = PgFailoverLab::start(
            &exe,
            &Options {
                sync,
                passive,
                promote: None,
                native,
            },
        )
        .context("the PostgreSQL failover lab")?;
        let mut s = Series {
            sync,
            passive,
            native,
            rto_ms: Vec::new(),
            detect_ms: Vec::new(),
            fence_hook_ms: Vec::new(),
            promote_hook_ms: Vec::new(),
            fence_to_switch_ms: Vec::new(),
            read_only: 0,
            lost: 0,
            in_doubt: 0,
        };
        for k in 0..kills {
            let (p, n) = (k % 2, 1 - k % 2);
            let client = lab.client((k as i64 + 1) * 1_000_000)?;
            std::thread::sleep(Duration::from_millis(600));
            let killed_at = std::time::Instant::now();
            let killed_wall = day_secs_now();
            lab.db[p].kill_postmaster()?;
            let promoted = lab.wait_event("promoted", k)?;
            let fenced = lab.wait_event("fenced", k)?;
            s.detect_ms
                .push((day_secs(&fenced["ts"]) - killed_wall) * 1e3);
            let hook = |name: &str| {
                lab.events()
                    .iter()
                    .filter(|e| e["kind"] == "hook" && e["hook"] == name)
                    .nth(k)
                    .and_then(|e| e["elapsed_ms"].as_f64())
                    .unwrap_or(f64::NAN)
            };
            s.fence_hook_ms.push(hook("fence"));
            s.promote_hook_ms.push(hook("promote"));
            std::thread::sleep(Duration::from_millis(500));
            let r = client.stop()?;
            // The old primary's backends may still acknowledge an insert
            // in the few ms before they notice their postmaster is gone
            // (9-25 ms measured): the RTO is the first acknowledgement of
            // an insert sent after that.
            let rto = r
                .attempts
                .iter()
                .filter(|a| a.acked() && a.start >= killed_at + DYING)
                .map(|a| a.done.duration_since(killed_at))
                .min()
                .context("no insert acknowledged after the kill")?;
            s.rto_ms.push(rto.as_secs_f64() * 1e3);
            s.fence_to_switch_ms
                .push(promoted["elapsed_ms"].as_f64().unwrap_or(f64::NAN));
            s.read_only += r.counts().read_only;
            let on_new = lab.db[n].ids()?;
            s.lost += InsertReport::lost(&r.acked_ids(), &on_new).len();
            s.in_doubt += r.in_doubt().len();
            lab.rejoin(p, n)?;
            let name = lab.db[p].name().to_string();
            lab.wait_state(&name, "held")?;
            let (ok, _, err) = lab.cli(&["release", "pg", &name])?;
            anyhow::ensure!(ok, "release {name}: {err}");
        }
        let _ = lab.daemon.terminate();
        out.push(s);
    }
    let planned = planned(&exe)?;
    report["postgresql"] = json!({
        "kills_per_configuration": kills,
        "series": out.iter().map(|s| json!({
            "replication": if s.sync { "sync" } else { "async" },
            "detection": if s.passive { "passive+probes" } else { "probes" },
            "checks": if s.native { "postgres (kept connection, 10 ms)" } else { "exec pg-role (psql, 25 ms)" },
            "rto_ms": s.rto_ms,
            "rto_ms_median": median(s.rto_ms.clone()),
            "fence_to_switch_ms": s.fence_to_switch_ms,
            "detect_ms": s.detect_ms,
            "fence_hook_ms": s.fence_hook_ms,
            "promote_hook_ms": s.promote_hook_ms,
            "read_only_errors": s.read_only,
            "acknowledged_lost": s.lost,
            "in_doubt": s.in_doubt,
        })).collect::<Vec<_>>(),
        "planned": planned.iter().map(|p| json!({
            "what": p.what, "ms": p.ms, "read_only_errors": p.read_only, "acknowledged_lost": p.lost,
        })).collect::<Vec<_>>(),
        "goals": goals(&out),
    });
    Ok((out, planned))
}

/// A planned switchover to db2 and a drill back to db1 (synchronous), with
/// the application running.
fn planned(exe: &std::path::Path) -> anyhow::Result<Vec<Planned>> {
    let mut lab = PgFailoverLab::start(
        exe,
        &Options {
            sync: true,
            native: true,
            ..Default::default()
        },
    )?;
    let mut v = Vec::new();
    for (what, args, to) in [
        (
            "planned switchover (failover switch)",
            vec!["switch", "pg", "--to", "db2"],
            1usize,
        ),
        ("drill (failover drill)", vec!["drill", "pg"], 0),
    ] {
        let client = lab.client((to as i64 + 1) * 1_000_000)?;
        std::thread::sleep(Duration::from_millis(500));
        let (ok, out, err) = lab.cli(&args)?;
        anyhow::ensure!(ok, "{what}: {out} {err}");
        std::thread::sleep(Duration::from_millis(500));
        let r = client.stop()?;
        let on_new: BTreeSet<i64> = lab.db[to].ids()?;
        let ms = lab
            .events()
            .iter()
            .rfind(|e| e["kind"] == "promoted")
            .and_then(|e| e["elapsed_ms"].as_f64())
            .unwrap_or(f64::NAN);
        v.push(Planned {
            what,
            ms,
            read_only: r.counts().read_only,
            lost: InsertReport::lost(&r.acked_ids(), &on_new).len(),
        });
        if to == 1 {
            lab.rejoin(0, 1)?;
            lab.wait_state("db1", "standby")?;
        }
    }
    let _ = lab.daemon.terminate();
    Ok(v)
}

/// Seconds since midnight UTC now (the events' clock).
fn day_secs_now() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Seconds since midnight of an event's RFC 3339 UTC time.
fn day_secs(ts: &Value) -> f64 {
    let t = ts.as_str().unwrap_or_default();
    t.get(11..t.len().saturating_sub(1))
        .map(|hms| {
            hms.split(':')
                .map(|x| x.parse::<f64>().unwrap_or(f64::NAN))
                .fold(0.0, |a, x| a * 60.0 + x)
        })
        .unwrap_or(f64::NAN)
}

fn goals(s: &[Series]) -> Value {
    let rto = |passive: bool| {
        median(
            s.iter()
                .filter(|x| x.passive == passive && x.native)
                .flat_map(|x| x.rto_ms.clone())
                .collect(),
        )
    };
    let sync_lost: usize = s.iter().filter(|x| x.sync).map(|x| x.lost).sum();
    let read_only: usize = s.iter().map(|x| x.read_only).sum();
    json!({
        "rto_ms_median_passive": {"value": rto(true), "goal_at_most": 100.0, "met": rto(true) <= 100.0},
        "rto_ms_median_probes": {"value": rto(false), "goal_at_most": 150.0, "met": rto(false) <= 150.0},
        "read_only_errors": {"value": read_only, "goal_at_most": 0, "met": read_only == 0},
        "acknowledged_lost_sync": {"value": sync_lost, "goal_at_most": 0, "met": sync_lost == 0},
    })
}

pub fn print(report: &Value, series: &[Series], planned: &[Planned]) {
    println!(
        "\n| PostgreSQL 15, primary killed (kill -9), {} times per row | RTO median (min-max), ms | detection (kill to fence) | fence hook | promote hook | fence to switch | read-only errors | acknowledged inserts lost | in doubt |",
        report["postgresql"]["kills_per_configuration"]
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in series {
        let min = s.rto_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = s.rto_ms.iter().copied().fold(0.0, f64::max);
        println!(
            "| {}, {}, {} | {:.0} ({min:.0}-{max:.0}) | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            if s.sync {
                "synchronous"
            } else {
                "asynchronous"
            },
            if s.native {
                "postgres checks (10 ms)"
            } else {
                "exec pg-role checks (25 ms)"
            },
            if s.passive {
                "passive detection + probes"
            } else {
                "probes only"
            },
            median(s.rto_ms.clone()),
            median(s.detect_ms.clone()),
            median(s.fence_hook_ms.clone()),
            median(s.promote_hook_ms.clone()),
            median(s.fence_to_switch_ms.clone()),
            s.read_only,
            s.lost,
            s.in_doubt
        );
    }
    println!(
        "\n| planned, synchronous | fence to switch, ms | read-only errors | acknowledged inserts lost |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for p in planned {
        println!(
            "| {} | {:.0} | {} | {} |",
            p.what, p.ms, p.read_only, p.lost
        );
    }
    println!("\n| PostgreSQL goals (issue 15) | value | goal | met |");
    println!("| --- | ---: | ---: | --- |");
    let g = &report["postgresql"]["goals"];
    for (what, k) in [
        (
            "median RTO, passive detection (ms)",
            "rto_ms_median_passive",
        ),
        ("median RTO, probes only (ms)", "rto_ms_median_probes"),
        ("read-only errors, all kills", "read_only_errors"),
        (
            "acknowledged inserts lost, synchronous",
            "acknowledged_lost_sync",
        ),
    ] {
        println!(
            "| {what} | {} | <= {} | {} |",
            g[k]["value"],
            g[k]["goal_at_most"],
            if g[k]["met"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        );
    }
}
