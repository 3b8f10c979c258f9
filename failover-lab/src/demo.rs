//! `failover-lab demo`: builds the lab, starts the daemon on it, sends a
//! steady stream of client requests to the VIP and shows which backend
//! answers; after a few seconds the primary's server is killed and marked
//! down, and the demo shows the failover and the recovery time seen by the
//! client. Bounded in time; Ctrl-C ends it early; everything is torn down.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use failover_user::dataplane::layout::Layout;

use crate::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, DaemonProcess, Server, Topology, check_prerequisites,
    tcp_request, vip,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// The demo's health check: TCP connect every 10 ms (5 ms while suspect),
/// down after 3 failures, back after 2 successes.
const DEMO_CHECK: &str = "type = \"tcp\"\ninterval = \"10ms\"\nfast_interval = \"5ms\"\ntimeout = \"20ms\"\nfall = 3\nrise = 2";

pub struct DemoOptions {
    /// The `failover` binary the demo runs as the load balancer's daemon.
    pub failover: PathBuf,
    pub duration: Duration,
    pub kill_after: Duration,
    pub interval: Duration,
}

pub fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    check_prerequisites()?;
    if !opts.failover.is_file() {
        anyhow::bail!(
            "{} not found: build it (`cargo xtask build` does) or pass --failover",
            opts.failover.display()
        );
    }
    // SAFETY: installs an async-signal-safe handler that only stores to an
    // atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
    let id = std::process::id() % 100_000;
    let prefix = format!("fod{id}");
    let work = std::env::temp_dir().join(format!("failover-lab-{id}"));
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/failover-lab-{id}"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = (|| {
        println!(
            "lab: creating namespaces {prefix}c (client), {prefix}l (load balancer), {prefix}1 and {prefix}2 (backends)"
        );
        let topo = Topology::create(&prefix)?;
        let cfg_path = work.join("lab.toml");
        let extras = crate::LabExtras {
            check: Some(DEMO_CHECK.to_string()),
            events_file: Some(work.join("events.jsonl")),
            ..Default::default()
        };
        std::fs::write(
            &cfg_path,
            topo.config_with(&bpffs, &work.join("state"), &extras),
        )
        .with_context(|| format!("writing {}", cfg_path.display()))?;
        let b1 = Server::start(
            &topo.backends[0],
            "b1",
            &[BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1],
            BACKEND_UDP_PORT,
        )?;
        let _b2 = Server::start(
            &topo.backends[1],
            "b2",
            &[BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1],
            BACKEND_UDP_PORT,
        )?;
        let exe = &opts.failover;
        println!(
            "lab: starting `failover --netns {} daemon --config {}`",
            topo.lb.name,
            cfg_path.display()
        );
        let mut daemon = DaemonProcess::spawn(exe, &topo.lb.name, &cfg_path)?;
        daemon.wait_attached(&bpffs, &crate::LB_IFACES)?;
        let layout =
            Layout::load(&work.join("state/layout.json"))?.context("the daemon wrote no layout")?;
        let b1_id = layout
            .backend_id("web", "b1")
            .context("web/b1 not in the layout")?;

        println!(
            "lab: client -> {} every {} ms for {} s; backend b1's server is killed after {} s",
            vip(false, 80),
            opts.interval.as_millis(),
            opts.duration.as_secs(),
            opts.kill_after.as_secs()
        );
        let start = Instant::now();
        let mut b1 = Some(b1);
        let mut killed_at: Option<Instant> = None;
        let mut recovered: Option<Duration> = None;
        let mut per_second: BTreeMap<String, u32> = BTreeMap::new();
        let mut totals: BTreeMap<String, u32> = BTreeMap::new();
        let mut last_report = start;
        let mut n = 0u64;
        while start.elapsed() < opts.duration && !INTERRUPTED.load(Ordering::Relaxed) {
            if killed_at.is_none() && start.elapsed() >= opts.kill_after {
                if let Some(s) = b1.take() {
                    s.stop();
                }
                killed_at = Some(Instant::now());
                println!(
                    "lab: killed b1's server (slot {b1_id}); the health agent probes it every 10 ms and marks it down after 3 failures"
                );
            }
            n += 1;
            let who = match tcp_request(
                &topo.client,
                vip(false, 80),
                &format!("req{n}"),
                Duration::from_millis(300),
            ) {
                Ok(name) => name,
                Err(_) => "failed".to_string(),
            };
            if let (Some(k), None) = (killed_at, recovered)
                && who == "b2"
            {
                recovered = Some(k.elapsed());
                println!(
                    "lab: failover: b2 answered {:.1} ms after b1 was killed",
                    k.elapsed().as_secs_f64() * 1e3
                );
            }
            *per_second.entry(who.clone()).or_default() += 1;
            *totals.entry(who).or_default() += 1;
            if last_report.elapsed() >= Duration::from_secs(1) {
                let line: Vec<String> =
                    per_second.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "t={:>4.1}s  answered by: {}",
                    start.elapsed().as_secs_f64(),
                    line.join(" ")
                );
                per_second.clear();
                last_report = Instant::now();
            }
            std::thread::sleep(opts.interval);
        }
        let line: Vec<String> = totals.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("lab: {n} requests: {}", line.join(" "));
        match recovered {
            Some(d) => println!(
                "lab: client-side recovery time {:.1} ms",
                d.as_secs_f64() * 1e3
            ),
            None if killed_at.is_some() => println!("lab: no failover seen"),
            None => println!("lab: ended before the primary was killed"),
        }
        drop(daemon);
        println!("lab: tearing down");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&bpffs);
    result
}
