//! `cargo xtask chaos`: a steady request stream through the lab (a new TCP
//! connection every millisecond) while the daemon is killed with SIGKILL
//! and restarted, reloaded in storms of valid and invalid configs, the
//! primary backend flaps and its link goes silent, conntrack is far too
//! small for the flows (LRU eviction), and hooks hang or fail. Then the
//! invariants:
//! - no request answered by a backend sent while that backend was marked
//!   down (2 ms allowed on either side of a switch: requests in flight,
//!   and the event's time taken just after its map write);
//! - no request lost outside the windows where the primary was really
//!   broken (a healthy backend loses nothing, whatever the daemon does);
//! - the daemon's memory stays bounded (RSS sampled every 250 ms);
//! - every event of the events file is in the audit log, whose hash chain
//!   verifies.
//!
//! Prints the counts (sent, answered, lost, by backend) and writes
//! `target/chaos/report.json`. Exits non-zero on any violation.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use failover_lab::{DaemonProcess, LB_IFACES, LabExtras, Topology, client, vip};
use serde_json::{Value, json};

/// The daemon's RSS must stay below this (MiB).
const RSS_BOUND_MIB: f64 = 200.0;
/// Requests in flight at a switch may still reach the old backend; and an
/// event's time is taken just after its map write, so a request sent just
/// before an "up" event may already have gone to the backend.
const IN_FLIGHT: Duration = Duration::from_millis(2);
/// After a broken backend is whole again, how long losses are still its
/// fault (probes need `rise` passes; connections already sent to it die).
const SETTLE: Duration = Duration::from_millis(500);

struct Opts {
    seconds: u64,
    out: PathBuf,
    failover: PathBuf,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        seconds: 30,
        out: PathBuf::from("target/chaos/report.json"),
        failover: PathBuf::from("target/release/failover"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                o.seconds = args
                    .next()
                    .context("--seconds needs a number")?
                    .parse()
                    .context("--seconds needs a number")?
            }
            "--out" => o.out = PathBuf::from(args.next().context("--out needs a path")?),
            "--failover" => {
                o.failover = PathBuf::from(args.next().context("--failover needs a path")?)
            }
            "-h" | "--help" => {
                println!("failover-chaos [--seconds N] [--out FILE] [--failover BIN]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if o.seconds < 12 {
        bail!("--seconds must be at least 12 (one chaos cycle)");
    }
    Ok(o)
}

/// Seconds since the epoch of an RFC 3339 UTC time
/// ("2026-11-24T09:09:28.199078Z").
fn rfc3339(s: &str) -> Option<f64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + sec)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = st
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn read_json_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What was done to the lab, as windows where b1 was really broken.
#[derive(Default)]
struct Log {
    actions: Vec<(f64, String)>,
    broken: Vec<(Duration, Duration)>,
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    if !o.failover.is_file() {
        bail!(
            "{} not found: `cargo xtask chaos` builds it",
            o.failover.display()
        );
    }
    let w = failover_lab::Workdir::new("foc")?;
    let topo = Topology::create(&w.prefix)?;
    let events = w.dir.join("events.jsonl");
    let audit = w.dir.join("audit.jsonl");
    // Hooks that hang (killed at their timeout) and fail, on every event.
    let extras = LabExtras {
        check: Some(
            "type = \"tcp\"\ninterval = \"10ms\"\nfast_interval = \"5ms\"\ntimeout = \"10ms\"\nfall = 3\nrise = 2"
                .into(),
        ),
        service_tables: "[[service.hook]]\nname = \"hangs\"\ntype = \"exec\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"200ms\"\nevents = [\"failover\", \"state\"]\n[[service.hook]]\nname = \"fails\"\ntype = \"exec\"\ncommand = [\"false\"]\nevents = [\"failover\", \"state\"]\n".into(),
        events_file: Some(events.clone()),
        top: format!(
            "[limits]\nconntrack_entries = 1024\n[admin]\nmetrics_listen = \"off\"\naudit_file = \"{}\"\n",
            audit.display()
        ),
        ..Default::default()
    };
    let cfg = w.dir.join("lab.toml");
    let good = topo.config_with(&w.bpffs, &w.dir.join("state"), &extras);
    std::fs::write(&cfg, &good)?;
    let mut b1 = Some(topo.start_server(0)?);
    let _b2 = topo.start_server(1)?;
    let mut daemon = DaemonProcess::spawn(&o.failover, &topo.lb.name, &cfg)?;
    daemon.wait_attached(&w.bpffs, &LB_IFACES)?;
    std::thread::sleep(Duration::from_millis(300));

    let dur = Duration::from_secs(o.seconds);
    let wall0 = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let t0 = Instant::now();
    let stream = client::stream(&topo.client.name, vip(false, 80), t0, dur);
    let mut log = Log::default();
    let mut rss_max: f64 = 0.0;
    let mut restarts = 0;
    let mut reloads = (0, 0);
    let note = |log: &mut Log, what: &str| {
        log.actions
            .push((t0.elapsed().as_secs_f64(), what.to_string()));
    };
    let sleep_until = |at: Duration, rss_max: &mut f64, pid: u32| {
        while t0.elapsed() < at {
            if let Some(r) = rss_mib(pid) {
                *rss_max = rss_max.max(r);
            }
            std::thread::sleep(Duration::from_millis(50).min(at.saturating_sub(t0.elapsed())));
        }
    };
    let mut cycle = Duration::ZERO;
    while cycle + Duration::from_secs(12) <= dur {
        let at = |s: f64| cycle + Duration::from_secs_f64(s);
        // kill -9 and restart: fail-static, then the same maps and links.
        sleep_until(at(0.5), &mut rss_max, daemon.0.id());
        let _ = daemon.0.kill();
        let _ = daemon.0.wait();
        note(&mut log, "daemon killed (SIGKILL)");
        std::thread::sleep(Duration::from_millis(200));
        daemon = DaemonProcess::spawn(&o.failover, &topo.lb.name, &cfg)?;
        daemon.wait_attached(&w.bpffs, &LB_IFACES)?;
        restarts += 1;
        note(&mut log, "daemon restarted");
        // A reload storm: valid and invalid configs, 50 ms apart.
        sleep_until(at(2.5), &mut rss_max, daemon.0.id());
        for i in 0..10 {
            let valid = i % 2 == 0;
            if valid {
                std::fs::write(&cfg, &good)?;
                reloads.0 += 1;
            } else {
                std::fs::write(&cfg, "[daemon]\ninterfaces = 7\n")?;
                reloads.1 += 1;
            }
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(daemon.0.id() as libc::pid_t, libc::SIGHUP) };
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::write(&cfg, &good)?;
        note(&mut log, "reload storm (5 valid, 5 invalid)");
        // b1 flaps: its process dies and comes back, 5 times.
        sleep_until(at(4.0), &mut rss_max, daemon.0.id());
        for _ in 0..5 {
            let from = t0.elapsed();
            if let Some(s) = b1.take() {
                s.stop();
            }
            std::thread::sleep(Duration::from_millis(150));
            b1 = Some(topo.start_server(0)?);
            log.broken.push((from, t0.elapsed() + SETTLE));
            std::thread::sleep(Duration::from_millis(150));
        }
        note(&mut log, "b1 flapped 5 times");
        // b1's link goes silent for 800 ms.
        sleep_until(at(6.5), &mut rss_max, daemon.0.id());
        let from = t0.elapsed();
        topo.backend_link(0, false)?;
        std::thread::sleep(Duration::from_millis(800));
        topo.backend_link(0, true)?;
        log.broken.push((from, t0.elapsed() + SETTLE));
        note(&mut log, "b1 link silent for 800 ms");
        cycle += Duration::from_secs(12);
    }
    sleep_until(dur, &mut rss_max, daemon.0.id());
    let samples = stream
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
    std::thread::sleep(Duration::from_millis(400)); // the last events land
    drop(daemon);

    // Invariants.
    let mut violations = Vec::new();
    let (mut b1n, mut b2n, mut lost, mut lost_healthy) = (0, 0, 0, 0);
    for s in &samples {
        match s.who.as_deref() {
            Some("b1") => b1n += 1,
            Some("b2") => b2n += 1,
            Some(_) => {}
            None => {
                lost += 1;
                if !log
                    .broken
                    .iter()
                    .any(|(a, b)| s.sent + Duration::from_millis(300) >= *a && s.sent <= *b)
                {
                    lost_healthy += 1;
                    if lost_healthy <= 5 {
                        violations.push(format!(
                            "request sent at {:.3} s lost while every backend was healthy",
                            s.sent.as_secs_f64()
                        ));
                    }
                }
            }
        }
    }
    // b1's down periods from the events (wall clock -> stream time).
    let evs = read_json_lines(&events);
    let mut downs = Vec::new();
    let mut open: Option<f64> = None;
    for e in &evs {
        if e["kind"] != "state" || e["service"] != "web" || e["backend"] != "b1" {
            continue;
        }
        let Some(ts) = e["ts"].as_str().and_then(rfc3339) else {
            continue;
        };
        let t = ts - wall0;
        match e["to"].as_str() {
            Some("down") if open.is_none() => open = Some(t),
            Some("up") => {
                if let Some(a) = open.take() {
                    downs.push((a, t));
                }
            }
            _ => {}
        }
    }
    if let Some(a) = open {
        downs.push((a, f64::INFINITY));
    }
    let mut to_down = 0;
    for s in &samples {
        let t = s.sent.as_secs_f64();
        if s.who.as_deref() != Some("b1") {
            continue;
        }
        let m = IN_FLIGHT.as_secs_f64();
        if let Some((a, b)) = downs.iter().find(|(a, b)| t > a + m && t < b - m) {
            to_down += 1;
            if to_down <= 5 {
                violations.push(format!(
                    "request sent at {t:.3} s answered by b1 while it was marked down ({:.1} ms after the down event, {:.1} ms before the up event)",
                    (t - a) * 1e3,
                    (b - t) * 1e3
                ));
            }
        }
    }
    // Every event is in the audit log.
    let audit_lines = read_json_lines(&audit);
    let mut missing = 0;
    for e in &evs {
        let found = audit_lines
            .iter()
            .any(|a| a["event_ts"] == e["ts"] && a["kind"] == e["kind"]);
        if !found {
            missing += 1;
            if missing <= 5 {
                violations.push(format!("event not in the audit log: {e}"));
            }
        }
    }
    let verify = std::process::Command::new(&o.failover)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .context("running failover audit verify")?;
    if !verify.status.success() {
        violations.push(format!(
            "audit verify failed: {}",
            String::from_utf8_lossy(&verify.stderr).trim()
        ));
    }
    if rss_max > RSS_BOUND_MIB {
        violations.push(format!(
            "daemon RSS reached {rss_max:.1} MiB (bound {RSS_BOUND_MIB} MiB)"
        ));
    }
    if evs.iter().filter(|e| e["kind"] == "failover").count() == 0 {
        violations.push("no failover happened: the chaos did not bite".to_string());
    }

    let report = json!({
        "seconds": o.seconds,
        "requests": {"sent": samples.len(), "answered_b1": b1n, "answered_b2": b2n, "lost": lost,
                     "lost_while_all_healthy": lost_healthy, "answered_by_b1_while_marked_down": to_down},
        "daemon": {"sigkill_restarts": restarts, "reloads_valid": reloads.0, "reloads_invalid": reloads.1,
                   "rss_max_mib": rss_max},
        "events": evs.len(), "audit_lines": audit_lines.len(), "events_missing_from_audit": missing,
        "b1_down_periods": downs.len(),
        "actions": log.actions.iter().map(|(t, a)| json!({"t": t, "what": a})).collect::<Vec<_>>(),
        "violations": violations,
    });
    if let Some(d) = o.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&o.out, serde_json::to_vec_pretty(&report)?)?;
    println!("| chaos, {} s | count |", o.seconds);
    println!("| --- | ---: |");
    for (k, v) in [
        ("requests sent", samples.len()),
        ("answered by b1", b1n),
        ("answered by b2", b2n),
        ("lost (b1 really broken)", lost - lost_healthy),
        ("lost while every backend was healthy", lost_healthy),
        ("answered by b1 while marked down", to_down),
        ("daemon SIGKILL + restart", restarts),
        ("reloads valid / invalid", reloads.0 * 1000 + reloads.1),
        ("events (all in the audit log)", evs.len() - missing),
        ("events missing from the audit log", missing),
    ] {
        if k.starts_with("reloads") {
            println!("| {k} | {} / {} |", reloads.0, reloads.1);
        } else {
            println!("| {k} | {v} |");
        }
    }
    println!("| daemon RSS max | {rss_max:.1} MiB |");
    println!("\nreport: {}", o.out.display());
    if !violations.is_empty() {
        for v in &violations {
            eprintln!("chaos: VIOLATION: {v}");
        }
        bail!("{} invariant violation(s)", violations.len());
    }
    println!("chaos: ok, every invariant held");
    Ok(())
}
