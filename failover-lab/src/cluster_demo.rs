//! `failover-lab cluster`: the cluster lab for a newcomer. Builds it
//! ([`crate::cluster`]), runs a daemon on each load balancer, shows the
//! router's ECMP route to the VIP, runs long-lived client flows, kills one
//! node's daemon and shows the route move and the clients' outage. When
//! the `failover` binary has no cluster support yet (its `check-config`
//! refuses `[cluster]`), the lab stands in for it: plain daemons (the XDP
//! dataplane), `fo-live` tuns held by the lab and the include written by
//! hand; "killing the node" then kills the daemon and closes its tun.
//! Bounded in time; Ctrl-C ends it early; everything is torn down.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::cluster::{
    ClusterLab, FlowOptions, Node, Options, RETURN_TABLE, VIP4, include_text, summarize,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub struct ClusterDemoOptions {
    pub failover: PathBuf,
    pub duration: Duration,
    pub kill_after: Duration,
    pub flows: usize,
}

/// Whether `failover check-config --offline CONFIG` accepts the file.
fn accepts(failover: &Path, config: &Path) -> bool {
    Command::new(failover)
        .args(["check-config", "--offline"])
        .arg(config)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sleep_unless_interrupted(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !INTERRUPTED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn show_routes(lab: &ClusterLab) {
    for (what, args) in [
        ("VIP (main table)", vec!["route", "show", VIP4]),
        (
            "NAT return path (table 100)",
            vec!["route", "show", "table", RETURN_TABLE],
        ),
    ] {
        match lab.router.ip(&args) {
            Ok(out) => {
                println!("router, {what}:");
                for l in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("    {l}");
                }
            }
            Err(e) => println!("router, {what}: {e:#}"),
        }
    }
}

pub fn run(o: &ClusterDemoOptions) -> anyhow::Result<()> {
    crate::cluster::check_prerequisites()?;
    // SAFETY: installs an async-signal-safe handler that only stores to an
    // atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
    let prefix = format!("foc{}", std::process::id() % 100_000);
    println!(
        "lab: creating namespaces {prefix}r (router), {prefix}l1 {prefix}l2 (load balancers), {prefix}w (etcd witness), {prefix}b1 {prefix}b2 (backends), {prefix}c (client); starting BIRD x3 and etcd x3"
    );
    let mut lab = ClusterLab::create(&prefix, Options::default())?;
    println!(
        "lab: work directory {} (configs, logs, sockets)",
        lab.dir.display()
    );
    let have_exe = o.failover.is_file();
    let cluster = have_exe && accepts(&o.failover, &lab.config_path(Node::Lb1));
    if cluster {
        for n in Node::ALL {
            println!(
                "lab: starting `failover --netns {} daemon --config {}`",
                lab.lb(n).name,
                lab.config_path(n).display()
            );
            lab.start_daemon(n, &o.failover)?;
        }
        for n in Node::ALL {
            lab.wait_daemon_attached(n)?;
        }
    } else {
        println!(
            "lab: {} has no cluster support yet ({}): the lab stands in for it. With it, each LB's daemon would \
             create and hold the `fo-live` tun, write {} and run `birdc configure` over {}, agreeing through etcd ({}).",
            o.failover.display(),
            if have_exe {
                "its check-config refuses [cluster]"
            } else {
                "not found; build it with `cargo xtask build` or pass --failover"
            },
            lab.include_path(Node::Lb1).display(),
            lab.bird_socket(Node::Lb1).display(),
            lab.etcd_endpoints().join(", ")
        );
        for n in Node::ALL {
            if have_exe {
                let plain = lab.node_dir(n).join("failover-plain.toml");
                std::fs::write(&plain, lab.config(n, false))
                    .with_context(|| format!("writing {}", plain.display()))?;
                println!(
                    "lab: starting `failover --netns {} daemon --config {}` (no [cluster])",
                    lab.lb(n).name,
                    plain.display()
                );
                lab.start_daemon_with(n, &o.failover, &plain)?;
                lab.wait_daemon_attached(n)?;
            }
            lab.fake_live(n, true)?;
            lab.write_include(n, &include_text(true))?;
        }
    }
    let t = lab.wait_nexthops(VIP4, &Node::ALL, Duration::from_secs(30))?;
    println!(
        "lab: the router routes the VIP over both LBs ({:.0} ms)",
        t.as_secs_f64() * 1e3
    );
    show_routes(&lab);

    let flows = lab.flow_client(&FlowOptions {
        flows: o.flows,
        duration: o.duration,
        ..FlowOptions::default()
    });
    println!(
        "lab: {} client flows to {VIP4}:80, one request every 5 ms each, for {} s; lb1 is killed after {} s",
        o.flows,
        o.duration.as_secs(),
        o.kill_after.as_secs()
    );
    sleep_unless_interrupted(o.kill_after);
    if !INTERRUPTED.load(Ordering::Relaxed) {
        let killed = Instant::now();
        if lab.daemon(Node::Lb1).is_some() {
            lab.kill_daemon(Node::Lb1, libc::SIGKILL)?;
            println!("lab: kill -9 of lb1's daemon");
        }
        if !cluster {
            lab.fake_live(Node::Lb1, false)?;
            println!("lab: lb1's fo-live tun closed (what the daemon's death does)");
        }
        match lab.wait_withdrawn(Node::Lb1, Duration::from_secs(5)) {
            Ok(_) => println!(
                "lab: the router withdrew lb1 {:.1} ms after the kill",
                killed.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => println!("lab: {e:#}"),
        }
        show_routes(&lab);
    }
    while !INTERRUPTED.load(Ordering::Relaxed) && flows.t0().elapsed() < o.duration {
        std::thread::sleep(Duration::from_millis(50));
    }
    let reports = flows.stop();
    println!("lab: {}", summarize(&reports));
    for r in &reports {
        let by: Vec<String> = r
            .by_backend
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "    flow {:>2}: {} answers ({}), {} failures, {} reconnects, longest gap {:.1} ms",
            r.flow,
            r.answers,
            by.join(" "),
            r.failures,
            r.reconnects,
            r.longest_gap.as_secs_f64() * 1e3
        );
    }
    println!("lab: tearing down");
    drop(lab);
    Ok(())
}
