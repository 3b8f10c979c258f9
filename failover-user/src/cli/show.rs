//! Readers: what is pinned and attached, services, backends, flows and
//! counters, as tables or JSON, straight from the pinned maps (no daemon
//! needed).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{config, dataplane::inspect};

/// Where the CLI finds the dataplane's state.
#[derive(clap::Args, Clone)]
pub struct SourceArgs {
    /// The daemon's config (for its bpffs and state directories).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The pin directory (default /sys/fs/bpf/failover, or the config's).
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// The daemon's state directory (default /run/failover, or the config's).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl SourceArgs {
    fn source(&self) -> anyhow::Result<inspect::Source> {
        let (mut bpffs, mut state_dir) = (
            PathBuf::from(config::DEFAULT_BPFFS),
            PathBuf::from(config::DEFAULT_STATE_DIR),
        );
        if let Some(c) = &self.config {
            let cfg = config::load(c)?;
            bpffs = cfg.daemon.bpffs;
            state_dir = cfg.daemon.state_dir;
        }
        if let Some(b) = &self.bpffs {
            bpffs = b.clone();
        }
        if let Some(s) = &self.state_dir {
            state_dir = s.clone();
        }
        Ok(inspect::Source { bpffs, state_dir })
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("serialising")?
    );
    Ok(())
}

pub fn cmd_status(a: &SourceArgs) -> anyhow::Result<()> {
    let st = inspect::status(&a.source()?)?;
    if a.json {
        return print_json(&st);
    }
    let d = &st.daemon;
    let ago = |ms: Option<u64>| {
        ms.map_or("-".to_string(), |ms| {
            format!("{:.1} s ago", ms as f64 / 1e3)
        })
    };
    println!(
        "daemon:    {} (pid {}, heartbeat {}, last decision {})",
        if d.alive {
            "alive"
        } else {
            "NOT RUNNING (or hung)"
        },
        d.pid.map_or("-".to_string(), |p| p.to_string()),
        ago(d.heartbeat_age_ms),
        ago(d.last_decision_age_ms)
    );
    if let Some(w) = d.audit_writable {
        println!(
            "audit:     {} (head {})",
            if w {
                "writable"
            } else {
                "NOT WRITABLE: admin actions are refused"
            },
            d.audit_head.as_deref().unwrap_or("-")
        );
    }
    println!("bpffs:     {}", st.bpffs.display());
    println!(
        "attached:  {}",
        if st.attached.is_empty() {
            "(none)".to_string()
        } else {
            st.attached.join(", ")
        }
    );
    if !st.detached.is_empty() {
        println!(
            "DETACHED:  {} (pinned, but the program is not on the interface)",
            st.detached.join(", ")
        );
    }
    println!("services:  {}", st.services);
    let b: Vec<String> = st
        .backends_by_state
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    println!("backends:  {}", b.join(", "));
    println!(
        "flows:     {} tracked (capacity {})",
        st.flows, st.conntrack_capacity
    );
    let m: Vec<String> = st.maps.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("map ids:   {}", m.join(" "));
    Ok(())
}

pub fn cmd_services(a: &SourceArgs) -> anyhow::Result<()> {
    let rows = inspect::services(&a.source()?)?;
    if a.json {
        return print_json(&rows);
    }
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                std::net::SocketAddr::new(r.vip, r.port).to_string(),
                r.protocol.clone(),
                r.mode.clone(),
                r.serving_tier.map_or("none".to_string(), |t| {
                    format!("{t} ({})", r.serving.join(","))
                }),
                r.fwd_packets.to_string(),
                r.fwd_bytes.to_string(),
                r.reply_packets.to_string(),
                r.dropped_packets.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        inspect::table(
            &[
                "SERVICE",
                "VIP",
                "PROTO",
                "MODE",
                "SERVING TIER",
                "FWD PKTS",
                "FWD BYTES",
                "REPLIES",
                "DROPPED"
            ],
            &t
        )
    );
    Ok(())
}

pub fn cmd_backends(service: Option<&str>, a: &SourceArgs) -> anyhow::Result<()> {
    let rows = inspect::backends(&a.source()?, service)?;
    if a.json {
        return print_json(&rows);
    }
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                r.backend.clone(),
                std::net::SocketAddr::new(r.address, r.port).to_string(),
                r.tier.to_string(),
                r.state.to_string(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        inspect::table(
            &[
                "SERVICE", "BACKEND", "ADDRESS", "TIER", "STATE", "PACKETS", "BYTES"
            ],
            &t
        )
    );
    Ok(())
}

pub fn cmd_flows(service: Option<&str>, limit: usize, a: &SourceArgs) -> anyhow::Result<()> {
    let rows = inspect::flows(&a.source()?, service, limit)?;
    if a.json {
        return print_json(&rows);
    }
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.client.to_string(),
                r.vip.to_string(),
                r.protocol.to_string(),
                r.service.clone(),
                r.backend.clone(),
                r.state.to_string(),
                format!("{:.1}s", r.idle_s),
            ]
        })
        .collect();
    print!(
        "{}",
        inspect::table(
            &[
                "CLIENT", "VIP", "PROTO", "SERVICE", "BACKEND", "STATE", "IDLE"
            ],
            &t
        )
    );
    Ok(())
}

pub fn cmd_stats(watch: bool, count: Option<u64>, a: &SourceArgs) -> anyhow::Result<()> {
    let src = a.source()?;
    let mut prev = inspect::reasons(&src)?;
    if !watch {
        if a.json {
            return print_json(&prev);
        }
        let t: Vec<Vec<String>> = prev
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()])
            .collect();
        print!("{}", inspect::table(&["OUTCOME", "PACKETS"], &t));
        return Ok(());
    }
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let cur = inspect::reasons(&src)?;
        let rates: std::collections::BTreeMap<&str, u64> = cur
            .iter()
            .map(|(k, v)| (*k, v.saturating_sub(prev.get(k).copied().unwrap_or(0))))
            .collect();
        if a.json {
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({"totals": cur, "per_second": rates}))
                    .context("serialising")?
            );
        } else {
            let busy: Vec<String> = rates
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}/s"))
                .collect();
            println!(
                "{}",
                if busy.is_empty() {
                    "(idle)".to_string()
                } else {
                    busy.join("  ")
                }
            );
        }
        prev = cur;
        n += 1;
    }
    Ok(())
}
