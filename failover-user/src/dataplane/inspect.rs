//! Reading the dataplane's state straight from the pinned maps (works while
//! the daemon is down), with names from the slot layout in the state
//! directory: what `failover status|services|backends|flows|stats` print.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use failover_common::{
    Counter, FlowKey, FlowValue, REASON_COUNT, Reason, STATE_UP, ServiceStats, map_names,
};
use serde::Serialize;

use crate::dataplane::{ip_from16, layout::Layout, link_pin_path, map_pin_path};

/// Where to look.
#[derive(Debug, Clone)]
pub struct Source {
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
}

fn open(src: &Source, name: &str) -> anyhow::Result<MapData> {
    let path = map_pin_path(&src.bpffs, name);
    match MapData::from_pin(&path) {
        Ok(m) => Ok(m),
        Err(e) => {
            let text = format!("{e:?}");
            if !src.bpffs.exists() || text.contains("NotFound") || text.contains("os error 2") {
                bail!(
                    "nothing pinned at {} (is the daemon running or has it run with this bpffs directory? use --bpffs or --config)",
                    path.display()
                );
            }
            if text.contains("PermissionDenied")
                || text.contains("os error 1")
                || text.contains("os error 13")
            {
                bail!(
                    "permission denied opening {}: run as root (CAP_BPF, CAP_SYS_ADMIN)",
                    path.display()
                );
            }
            Err(anyhow::anyhow!("{e}")).with_context(|| format!("opening {}", path.display()))
        }
    }
}

fn layout(src: &Source) -> anyhow::Result<Layout> {
    let p = src.state_dir.join("layout.json");
    Layout::load(&p)?.with_context(|| {
        format!(
            "no layout at {} (the daemon writes it when it applies a config)",
            p.display()
        )
    })
}

pub use crate::model::word_name;

#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub service: String,
    pub backend: String,
    pub address: IpAddr,
    pub port: u16,
    pub tier: usize,
    pub slot: u32,
    pub state: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub service: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub tiers: usize,
    /// The first tier with a backend taking new flows (`null`: none).
    pub serving_tier: Option<usize>,
    pub serving: Vec<String>,
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub reply_packets: u64,
    pub dropped_packets: u64,
}

#[derive(Debug, Serialize)]
pub struct FlowRow {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub protocol: &'static str,
    pub service: String,
    pub backend: String,
    /// `syn`, `established`, `closing` or `udp`.
    pub state: &'static str,
    /// In the verified table (`CONNTRACK`), not the embryonic one.
    pub verified: bool,
    /// Seconds since the flow's last packet.
    pub idle_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub bpffs: PathBuf,
    /// Interfaces whose pinned link runs the program on them.
    pub attached: Vec<String>,
    /// Interfaces with a link pin whose link is no longer on them (the
    /// interface was recreated or removed, or the link detached).
    pub detached: Vec<String>,
    pub maps: BTreeMap<String, u32>,
    pub services: usize,
    pub backends_by_state: BTreeMap<String, usize>,
    pub flows: usize,
    pub conntrack_capacity: u32,
    /// The daemon's heartbeat, judged now.
    pub daemon: crate::sys::heartbeat::Liveness,
}

fn backend_states(src: &Source) -> anyhow::Result<Array<MapData, u32>> {
    Array::try_from(Map::Array(open(src, map_names::BACKEND_STATE)?))
        .context("BACKEND_STATE has an unexpected type")
}

fn sum_counter(v: &aya::maps::PerCpuValues<Counter>) -> Counter {
    let mut t = Counter::default();
    for c in v.iter() {
        t.packets += c.packets;
        t.bytes += c.bytes;
    }
    t
}

pub fn backends(src: &Source, service: Option<&str>) -> anyhow::Result<Vec<BackendRow>> {
    let l = layout(src)?;
    if let Some(s) = service
        && l.service(s).is_none()
    {
        bail!("no service named {s:?}");
    }
    let states = backend_states(src)?;
    let held = held_backends(src);
    let standby = healthy_standbys(src);
    let stats: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(open(src, map_names::BACKEND_STATS)?))
            .context("BACKEND_STATS has an unexpected type")?;
    let mut rows = Vec::new();
    for s in l
        .services
        .iter()
        .filter(|s| service.is_none_or(|n| n == s.name))
    {
        for (ti, tier) in s.tiers.iter().enumerate() {
            for b in tier {
                let w = states.get(&b.id, 0).context("reading BACKEND_STATE")?;
                let c = sum_counter(&stats.get(&b.id, 0).context("reading BACKEND_STATS")?);
                rows.push(BackendRow {
                    service: s.name.clone(),
                    backend: b.name.clone(),
                    address: b.address,
                    port: b.port,
                    tier: ti,
                    slot: b.id,
                    state: match word_name(w) {
                        "down" | "down-reset"
                            if held.contains(&(s.name.clone(), b.name.clone())) =>
                        {
                            "held"
                        }
                        "down" | "down-reset"
                            if standby.contains(&(s.name.clone(), b.name.clone())) =>
                        {
                            "standby"
                        }
                        name => name,
                    },
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    Ok(rows)
}

/// Backends the agent reports healthy but held down by a policy (or
/// fenced), from its `states.json` (read as plain JSON: the file is the
/// interface).
fn held_backends(src: &Source) -> HashSet<(String, String)> {
    saved_where(src, |r| r["held"] == serde_json::Value::Bool(true))
}

/// Healthy standbys of services with roles (not taking flows until
/// promoted), from `states.json`.
fn healthy_standbys(src: &Source) -> HashSet<(String, String)> {
    saved_where(src, |r| {
        r["role"] == "standby" && matches!(r["state"].as_str(), Some("up" | "suspect"))
    })
}

fn saved_where(src: &Source, f: impl Fn(&serde_json::Value) -> bool) -> HashSet<(String, String)> {
    let Ok(text) = std::fs::read_to_string(src.state_dir.join("states.json")) else {
        return HashSet::new();
    };
    let Ok(serde_json::Value::Array(rows)) = serde_json::from_str(&text) else {
        return HashSet::new();
    };
    rows.iter()
        .filter(|r| f(r))
        .filter_map(|r| {
            Some((
                r["service"].as_str()?.to_string(),
                r["backend"].as_str()?.to_string(),
            ))
        })
        .collect()
}

pub fn services(src: &Source) -> anyhow::Result<Vec<ServiceRow>> {
    let l = layout(src)?;
    let states = backend_states(src)?;
    let stats: PerCpuArray<MapData, ServiceStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(src, map_names::SERVICE_STATS)?))
            .context("SERVICE_STATS has an unexpected type")?;
    let mut rows = Vec::new();
    for s in &l.services {
        let mut serving_tier = None;
        let mut serving = Vec::new();
        for (ti, tier) in s.tiers.iter().enumerate() {
            let up: Vec<String> = tier
                .iter()
                .filter(|b| states.get(&b.id, 0).is_ok_and(|w| w == STATE_UP))
                .map(|b| b.name.clone())
                .collect();
            if !up.is_empty() {
                serving_tier = Some(ti);
                serving = up;
                break;
            }
        }
        let mut t = ServiceStats::default();
        for v in stats.get(&s.id, 0).context("reading SERVICE_STATS")?.iter() {
            t.fwd.packets += v.fwd.packets;
            t.fwd.bytes += v.fwd.bytes;
            t.reply.packets += v.reply.packets;
            t.dropped.packets += v.dropped.packets;
        }
        rows.push(ServiceRow {
            service: s.name.clone(),
            vip: s.vip,
            port: s.port,
            protocol: s.protocol.to_string(),
            mode: format!("{:?}", s.mode).to_lowercase(),
            tiers: s.tiers.len(),
            serving_tier,
            serving,
            fwd_packets: t.fwd.packets,
            fwd_bytes: t.fwd.bytes,
            reply_packets: t.reply.packets,
            dropped_packets: t.dropped.packets,
        });
    }
    Ok(rows)
}

/// The dataplane's clock (ms, as the daemon last wrote it).
fn dataplane_clock(src: &Source) -> anyhow::Result<u32> {
    let a: Array<MapData, u64> = Array::try_from(Map::Array(open(src, map_names::CLOCK)?))
        .context("CLOCK has an unexpected type")?;
    Ok(a.get(&0, 0).context("reading CLOCK")? as u32)
}

fn state_name(state: u8) -> &'static str {
    match state {
        failover_common::FS_SYN => "syn",
        failover_common::FS_ESTABLISHED => "established",
        failover_common::FS_CLOSING => "closing",
        failover_common::FS_UDP => "udp",
        _ => "unknown",
    }
}

/// Live flows (expired entries count as absent, as in the dataplane):
/// verified ones first, then those not verified yet.
pub fn flows(src: &Source, service: Option<&str>, limit: usize) -> anyhow::Result<Vec<FlowRow>> {
    let l = layout(src)?;
    let names: BTreeMap<u32, (&str, BTreeMap<u32, &str>)> = l
        .services
        .iter()
        .map(|s| {
            (
                s.id,
                (
                    s.name.as_str(),
                    s.tiers
                        .iter()
                        .flatten()
                        .map(|b| (b.id, b.name.as_str()))
                        .collect(),
                ),
            )
        })
        .collect();
    let now = dataplane_clock(src)?;
    let mut rows = Vec::new();
    for table in [map_names::CONNTRACK, map_names::EMBRYONIC] {
        let ct: BpfHashMap<MapData, FlowKey, FlowValue> =
            BpfHashMap::try_from(Map::LruHashMap(open(src, table)?))
                .with_context(|| format!("{table} has an unexpected type"))?;
        for item in ct.iter() {
            if rows.len() >= limit {
                break;
            }
            let Ok((k, v)) = item else { continue };
            let idle_ms = now.wrapping_sub(v.seen_ms);
            if idle_ms > v.timeout_ms {
                continue;
            }
            let (svc, backend) = match names.get(&v.service_id) {
                Some((s, bs)) => (
                    s.to_string(),
                    bs.get(&v.backend_id)
                        .map_or(format!("slot {}", v.backend_id), |b| b.to_string()),
                ),
                None => (
                    format!("id {}", v.service_id),
                    format!("slot {}", v.backend_id),
                ),
            };
            if service.is_some_and(|s| s != svc) {
                continue;
            }
            rows.push(FlowRow {
                client: SocketAddr::new(ip_from16(&k.src, k.family), u16::from_be_bytes(k.sport)),
                vip: SocketAddr::new(ip_from16(&k.dst, k.family), u16::from_be_bytes(k.dport)),
                protocol: if k.proto == failover_common::PROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                },
                service: svc,
                backend,
                state: state_name(v.state),
                verified: table == map_names::CONNTRACK,
                idle_s: f64::from(idle_ms) / 1e3,
            });
        }
    }
    Ok(rows)
}

/// Every outcome counter, summed over CPUs, by name.
pub fn reasons(src: &Source) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let a: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(src, map_names::REASON_STATS)?))
            .context("REASON_STATS has an unexpected type")?;
    let mut out = BTreeMap::new();
    for (i, r) in Reason::ALL.iter().enumerate().take(REASON_COUNT as usize) {
        let v: u64 = a
            .get(&(i as u32), 0)
            .context("reading REASON_STATS")?
            .iter()
            .sum();
        out.insert(r.name(), v);
    }
    Ok(out)
}

pub fn status(src: &Source) -> anyhow::Result<Status> {
    let mut maps = BTreeMap::new();
    for name in map_names::ALL {
        let m = open(src, name)?;
        let info = m
            .info()
            .with_context(|| format!("reading map info of {name}"))?;
        maps.insert(name.to_string(), info.id());
    }
    let (mut attached, mut detached) = (Vec::new(), Vec::new());
    if let Ok(rd) = std::fs::read_dir(&src.bpffs) {
        for e in rd.flatten() {
            if let Some(iface) = e.file_name().to_str().and_then(|n| n.strip_prefix("link_")) {
                if super::links::pinned_attached(&e.path(), iface) {
                    attached.push(iface.to_string());
                } else {
                    detached.push(iface.to_string());
                }
            }
        }
    }
    attached.sort();
    detached.sort();
    let rows = backends(src, None)?;
    let mut by_state = BTreeMap::new();
    for r in &rows {
        *by_state.entry(r.state.to_string()).or_insert(0) += 1;
    }
    let ct_data = open(src, map_names::CONNTRACK)?;
    let capacity = ct_data.info().context("conntrack map info")?.max_entries();
    let ct: BpfHashMap<MapData, FlowKey, FlowValue> =
        BpfHashMap::try_from(Map::LruHashMap(ct_data))
            .context("CONNTRACK has an unexpected type")?;
    let flows = ct.keys().filter(Result::is_ok).count();
    Ok(Status {
        bpffs: src.bpffs.clone(),
        attached,
        detached,
        maps,
        services: layout(src)?.services.len(),
        backends_by_state: by_state,
        flows,
        conntrack_capacity: capacity,
        daemon: crate::sys::heartbeat::liveness(&src.state_dir, crate::sys::heartbeat::now_ms()),
    })
}

/// Renders rows as an aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        &mut out,
    );
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// The link pinned for `iface` runs the program on the interface of that
/// name.
pub fn attached(src: &Source, iface: &str) -> bool {
    super::links::pinned_attached(&link_pin_path(&src.bpffs, iface), iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn missing_pins_give_a_clear_message() {
        let src = Source {
            bpffs: PathBuf::from("/nonexistent/failover"),
            state_dir: PathBuf::from("/nonexistent/state"),
        };
        let e = format!("{:#}", status(&src).unwrap_err());
        assert!(e.contains("nothing pinned at /nonexistent/failover"), "{e}");
    }
}
