//! The loaded XDP program and its maps: load (with map capacities from the
//! config and maps pinned under the bpffs directory), attach to interfaces,
//! and write a config's services, tiers, tables and backends into the maps.

pub mod inspect;
pub mod layout;
pub mod links;
pub mod maps;
pub mod nexthop;
pub mod objects;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use failover_common::{
    AddrFilter, BackendValue, Counter, EndpointKey, FAMILY_V4, FAMILY_V6, FLAG_NO_BACKEND_PASS,
    FLAG_NO_BACKEND_RESET, FlowKey, FlowTimeouts, FlowValue, MODE_DSR, MODE_NAT, PassiveConfig,
    PassiveGuard, PassiveHealth, PassiveStats, ReverseValue, STATE_DOWN, ServiceStats,
    ServiceValue, TableValue, VipAddrKey, map_names,
};
use tracing::{info, warn};

pub use self::maps::{AgentMaps, pinned_backend_packets, pinned_state, set_pinned_state};
use self::{layout::Layout, maps::write_table_to};
use crate::config::{Config, Limits, Mode, NoBackend, XdpModeCfg};
use crate::maglev;

/// 16-byte address as stored in keys (IPv4 in the first four bytes).
pub fn addr16(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            (a, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The inverse of [`addr16`].
pub fn ip_from16(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

/// The pin path of a map under `dir`.
pub fn map_pin_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The pin path of the XDP link of `iface` under `dir`.
pub fn link_pin_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// How the program was attached to one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
    /// A pinned link from a previous run, now running our program.
    Adopted,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// The attachments, held by our own descriptors (see `links`).
    links: HashMap<String, links::HeldLink>,
}

/// The eBPF program's log records, forwarded to `tracing`.
pub struct Logger(aya_log::EbpfLogger<&'static dyn log::Log>);

impl Logger {
    /// Forwards every record waiting in the ring buffer.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

impl std::os::fd::AsRawFd for Logger {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// What the link watcher did about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The pin was removed; the link (still running) was pinned again.
    Repinned,
    /// The program was off the interface (recreated, or detached); it was
    /// attached again.
    Reattached,
    /// No interface of that name: nothing to attach to until it returns.
    InterfaceGone,
    /// A repair failed (the reason).
    RepairFailed(String),
    /// The pin directory was removed; it was made again.
    PinDirRecreated,
    /// Map pins were removed; the maps (still in use) were pinned again.
    MapsRepinned(usize),
}

impl Dataplane {
    /// Loads the program with the map capacities of `limits`. With
    /// `pin_dir`, maps are pinned there, and maps already pinned there (by a
    /// previous run) are reused, so conntrack and state survive restarts.
    pub fn load(limits: &Limits, pin_dir: Option<&Path>) -> anyhow::Result<Self> {
        objects::check(objects::FAILOVER, "failover")?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::SERVICES, limits.max_services)
            .map_max_entries(map_names::SERVICE_STATS, limits.max_services)
            .map_max_entries(map_names::VIP_ADDRS, limits.max_vip_addresses)
            .map_max_entries(map_names::TIER_ACTIVE, limits.max_tiers)
            .map_max_entries(map_names::TABLES, limits.max_tiers * 2)
            .map_max_entries(map_names::BACKENDS, limits.max_backends)
            .map_max_entries(map_names::BACKEND_STATE, limits.max_backends)
            .map_max_entries(map_names::BACKEND_STATS, limits.max_backends)
            .map_max_entries(map_names::REVERSE, limits.max_backends)
            .map_max_entries(map_names::CONNTRACK, limits.conntrack_entries)
            .map_max_entries(map_names::EMBRYONIC, limits.embryonic_entries)
            .map_max_entries(map_names::FLOW_TIMEOUTS, limits.max_services)
            .map_max_entries(map_names::PASSIVE_CFG, limits.max_services)
            .map_max_entries(map_names::PASSIVE_HEALTH, limits.max_backends)
            .map_max_entries(map_names::PASSIVE_GUARD, limits.max_tiers)
            .map_max_entries(map_names::PASSIVE_MARKED, limits.max_tiers)
            .map_max_entries(map_names::PASSIVE_STATS, limits.max_backends)
            .map_max_entries(map_names::NEXTHOPS, limits.max_backends);
        if let Some(dir) = pin_dir {
            crate::sys::files::ensure_private_dir(dir).context("the pin directory")?;
            check_pinned_maps(dir, limits)?;
            for name in map_names::ALL {
                loader.map_pin_path(name, map_pin_path(dir, name));
            }
        }
        let mut ebpf = loader.load(objects::FAILOVER).context(
            "loading the XDP program and its maps (needs root: CAP_BPF, CAP_NET_ADMIN; if maps are \
             pinned from an older version with other sizes, remove the pin directory)",
        )?;
        let prog: &mut Xdp = ebpf
            .program_mut(objects::FAILOVER_PROGRAM)
            .context("the eBPF object has no `failover` program")?
            .try_into()
            .context("the `failover` program is not an XDP program")?;
        without_signals(|| prog.load()).context("the kernel refused the XDP program (verifier)")?;
        let icmp: &mut Xdp = ebpf
            .program_mut(objects::ICMP_PROGRAM)
            .context("the eBPF object has no `failover_icmp` program")?
            .try_into()
            .context("the `failover_icmp` program is not an XDP program")?;
        without_signals(|| icmp.load())
            .context("the kernel refused the ICMP XDP program (verifier)")?;
        let icmp_fd = icmp
            .fd()
            .context("the ICMP program has no fd")?
            .try_clone()
            .context("duplicating the ICMP program's fd")?;
        let mut progs = aya::maps::ProgramArray::try_from(
            ebpf.map_mut(map_names::PROGS)
                .context("the eBPF object has no PROGS map")?,
        )
        .context("PROGS is not a program array")?;
        progs
            .set(objects::PROG_ICMP, &icmp_fd, 0)
            .context("installing the ICMP program in PROGS")?;
        let mut dp = Self {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf),
            links: HashMap::new(),
        };
        // Next hops cached by an earlier run (pinned maps) may be of routes
        // that changed while no daemon watched.
        dp.forget_next_hops()?;
        Ok(dp)
    }

    /// Makes every cached next hop stale (see `nexthop.rs`).
    pub fn forget_next_hops(&mut self) -> anyhow::Result<()> {
        let mut epoch: Array<&mut MapData, u32> = self.map_mut(map_names::NH_EPOCH)?;
        nexthop::bump(&mut epoch)
    }

    /// Passive detection: each service's thresholds (zero: off), each tier's
    /// guard rail, and every datapath mark settled (`released = marked`,
    /// `marked_ns` cleared): the agent starting after an apply knows of no
    /// unconfirmed mark.
    fn apply_passive(&mut self, cfg: &Config, layout: &Layout) -> anyhow::Result<()> {
        let mut live = HashMap::new();
        let mut guards = HashMap::new();
        for (s, sl) in cfg.services.iter().zip(&layout.services) {
            let Some(p) = s.passive else { continue };
            let down_word = crate::model::word_for(crate::model::State::Down, s.flows_on_down);
            live.insert(
                sl.id,
                PassiveConfig {
                    signals: p.signals,
                    failures: p.failures,
                    window_ns: p.window.as_nanos() as u64,
                    no_reply_ns: p.no_reply.as_nanos() as u64,
                    down_word,
                    _pad: 0,
                },
            );
            for (ti, tl) in sl.tiers.iter().enumerate() {
                guards.insert(sl.first_tier + ti as u32, p.limit(tl.len()));
            }
        }
        {
            let mut m: Array<&mut MapData, PassiveConfig> = self.map_mut(map_names::PASSIVE_CFG)?;
            for id in 0..m.len() {
                let v = live.get(&id).copied().unwrap_or_default();
                m.set(id, v, 0)
                    .with_context(|| format!("writing PASSIVE_CFG[{id}]"))?;
            }
        }
        let marked: Vec<u64> = {
            let m: Array<&mut MapData, u64> = self.map_mut(map_names::PASSIVE_MARKED)?;
            (0..m.len())
                .map(|t| m.get(&t, 0).context("reading PASSIVE_MARKED"))
                .collect::<anyhow::Result<_>>()?
        };
        {
            let mut g: Array<&mut MapData, PassiveGuard> =
                self.map_mut(map_names::PASSIVE_GUARD)?;
            for (t, &released) in marked.iter().enumerate() {
                let t = t as u32;
                let limit = guards.get(&t).copied().unwrap_or(0);
                g.set(t, PassiveGuard { limit, released }, 0)
                    .with_context(|| format!("writing PASSIVE_GUARD[{t}]"))?;
            }
        }
        let mut h: Array<&mut MapData, PassiveHealth> = self.map_mut(map_names::PASSIVE_HEALTH)?;
        for id in 0..h.len() {
            if h.get(&id, 0).context("reading PASSIVE_HEALTH")?.marked_ns != 0 {
                h.set(id, PassiveHealth::default(), 0)
                    .context("settling a passive mark")?;
            }
        }
        Ok(())
    }

    /// The program's log (aya-log's ring buffer): poll its descriptor,
    /// then `flush` it into `tracing`.
    pub fn logger(&mut self) -> anyhow::Result<Logger> {
        Ok(Logger(
            aya_log::EbpfLogger::init(&mut self.ebpf).context("starting the eBPF logger")?,
        ))
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn program(&self) -> anyhow::Result<&Xdp> {
        self.ebpf
            .program(objects::FAILOVER_PROGRAM)
            .context("no `failover` program")?
            .try_into()
            .context("the `failover` program is not XDP")
    }

    fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        self.ebpf
            .program_mut(objects::FAILOVER_PROGRAM)
            .context("no `failover` program")?
            .try_into()
            .context("the `failover` program is not XDP")
    }

    /// Attaches to `iface` (native mode, or generic as configured/as
    /// fallback), pins the link when a pin directory is set (replacing a
    /// link left by a previous run), and adds the interface to the devmap.
    pub fn attach(&mut self, iface: &str, mode: XdpModeCfg) -> anyhow::Result<Attached> {
        let ifindex = ifindex(iface)?;
        if let Some(dir) = self.pin_dir.clone() {
            let path = link_pin_path(&dir, iface);
            if path.exists() {
                // A previous daemon left its link pinned (fail-static): adopt
                // it, swapping our program in atomically (BPF_LINK_UPDATE),
                // so traffic never sees the interface without XDP.
                match self.adopt_link(&path) {
                    Ok(()) => {
                        self.allow_egress(iface)?;
                        info!(
                            iface,
                            ifindex, "adopted the pinned XDP link; program swapped in atomically"
                        );
                        return Ok(Attached::Adopted);
                    }
                    Err(e) => {
                        warn!(iface, error = %format!("{e:#}"), "cannot adopt the pinned XDP link; replacing it (a short gap)");
                        let old = PinnedLink::from_pin(&path).with_context(|| {
                            format!("opening the pinned link {}", path.display())
                        })?;
                        drop(
                            old.unpin()
                                .with_context(|| format!("unpinning {}", path.display()))?,
                        );
                    }
                }
            }
        }
        let prog = self.program_mut()?;
        let (link_id, how) = match mode {
            XdpModeCfg::Native => (
                prog.attach_to_if_index(ifindex, XdpMode::Driver)
                    .with_context(|| format!("attaching XDP in native mode to {iface}"))?,
                Attached::Native,
            ),
            XdpModeCfg::Generic => (
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP in generic mode to {iface}"))?,
                Attached::Generic,
            ),
            XdpModeCfg::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => (id, Attached::Native),
                Err(e) => {
                    warn!(iface, error = %e, "native XDP not available, falling back to generic (slower) mode");
                    (
                        prog.attach_to_if_index(ifindex, XdpMode::Skb)
                            .with_context(|| format!("attaching XDP in generic mode to {iface}"))?,
                        Attached::Generic,
                    )
                }
            },
        };
        if let Some(dir) = self.pin_dir.clone() {
            let link = self
                .program_mut()?
                .take_link(link_id)
                .context("taking the XDP link")?;
            let fd: FdLink = link
                .try_into()
                .context("the kernel attached XDP without a bpf_link (kernel too old to pin it)")?;
            let path = link_pin_path(&dir, iface);
            // The pin keeps the link; our own descriptor of it (below) keeps
            // it even if the pin goes.
            drop(
                fd.pin(&path)
                    .with_context(|| format!("pinning the XDP link at {}", path.display()))?,
            );
            self.hold(iface, ifindex, &path)?;
        }
        self.allow_egress(iface)?;
        info!(iface, ifindex, mode = ?how, "XDP program attached");
        Ok(how)
    }

    /// Where `layout` disagrees with the backends the maps hold: a slot
    /// written before (pinned maps of a previous run) whose address, port
    /// or service is not the layout's. Slots never written (fresh maps)
    /// agree with anything.
    pub fn layout_mismatches(&mut self, layout: &Layout) -> anyhow::Result<Vec<String>> {
        let backends: Array<&mut MapData, BackendValue> = self.map_mut(map_names::BACKENDS)?;
        let mut bad = Vec::new();
        for s in &layout.services {
            for b in s.tiers.iter().flatten() {
                let Ok(v) = backends.get(&b.id, 0) else {
                    bad.push(format!("{}/{}: slot {} out of range", s.name, b.name, b.id));
                    continue;
                };
                if v.family == 0 {
                    continue;
                }
                let (addr, family) = addr16(b.address);
                if v.addr != addr
                    || v.family != family
                    || u16::from_be_bytes(v.port) != b.port
                    || v.service_id != s.id
                {
                    bad.push(format!("{}/{}: slot {}", s.name, b.name, b.id));
                }
            }
        }
        Ok(bad)
    }

    /// Points the pinned XDP link at `path` to our program.
    fn adopt_link(&mut self, path: &Path) -> anyhow::Result<()> {
        let pinned =
            PinnedLink::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        // `into_link` keeps the pin file: the link stays pinned.
        let fd: FdLink = pinned.into();
        let link = aya::programs::xdp::XdpLink::try_from(fd)
            .context("the pinned link is not an XDP link")?;
        let prog = self.program_mut()?;
        let id = prog
            .attach_to_link(link)
            .context("BPF_LINK_UPDATE to the new program")?;
        // The link is pinned: closing aya's handle does not detach it; we
        // hold our own descriptor of it.
        drop(prog.take_link(id).context("taking the adopted link")?);
        let iface = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("link_"))
            .context("link pin name")?
            .to_string();
        self.hold(&iface, ifindex(&iface)?, path)
    }

    fn hold(&mut self, iface: &str, ifindex: u32, pin: &Path) -> anyhow::Result<()> {
        let held = links::hold(pin, ifindex)
            .with_context(|| format!("holding the link pinned at {}", pin.display()))?;
        self.links.insert(iface.to_string(), held);
        Ok(())
    }

    /// Checks every held attachment and repairs what it safely can: a
    /// removed pin is pinned again, a program off its interface (the
    /// interface recreated, or the link detached) is attached again.
    /// Returns what it found and did, per interface (nothing: all well).
    pub fn watch_links(&mut self, mode: XdpModeCfg) -> Vec<(String, LinkEvent)> {
        let Some(dir) = self.pin_dir.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !dir.exists() {
            match crate::sys::files::ensure_private_dir(&dir) {
                Ok(_) => out.push((String::new(), LinkEvent::PinDirRecreated)),
                Err(e) => {
                    out.push((String::new(), LinkEvent::RepairFailed(e.to_string())));
                    return out;
                }
            }
        }
        let mut repinned = 0;
        for name in map_names::ALL {
            let path = map_pin_path(&dir, name);
            if path.exists() {
                continue;
            }
            match self.ebpf.map(name).map(|m| m.pin(&path)) {
                Some(Ok(())) => repinned += 1,
                Some(Err(e)) => out.push((
                    String::new(),
                    LinkEvent::RepairFailed(format!("re-pinning map {name}: {e}")),
                )),
                None => {}
            }
        }
        if repinned > 0 {
            out.push((String::new(), LinkEvent::MapsRepinned(repinned)));
        }
        let ifaces: Vec<String> = self.links.keys().cloned().collect();
        for iface in ifaces {
            let pin = link_pin_path(&dir, &iface);
            let Some(held) = self.links.get_mut(&iface) else {
                continue;
            };
            match links::check(&iface, held, &pin) {
                links::LinkHealth::Ok => {}
                links::LinkHealth::PinMissing => match links::repin(held, &pin) {
                    Ok(()) => out.push((iface, LinkEvent::Repinned)),
                    Err(e) => {
                        out.push((iface, LinkEvent::RepairFailed(format!("re-pinning: {e}"))))
                    }
                },
                links::LinkHealth::InterfaceGone => {
                    if held.ifindex != 0 {
                        held.ifindex = 0;
                        out.push((iface, LinkEvent::InterfaceGone));
                    }
                }
                links::LinkHealth::Detached => {
                    // The old link is dead: forget it and its pin, attach anew.
                    self.links.remove(&iface);
                    let _ = std::fs::remove_file(&pin);
                    match self.attach(&iface, mode) {
                        Ok(_) => out.push((iface, LinkEvent::Reattached)),
                        Err(e) => {
                            warn!(iface, error = %format!("{e:#}"), "re-attaching failed");
                            out.push((iface, LinkEvent::RepairFailed(format!("{e:#}"))));
                        }
                    }
                }
            }
        }
        out
    }

    /// Adds `iface` to the devmap: the program may redirect frames to it.
    pub fn allow_egress(&mut self, iface: &str) -> anyhow::Result<()> {
        let ifindex = ifindex(iface)?;
        let mut devmap: DevMapHash<&mut MapData> = self.map_mut(map_names::DEVMAP)?;
        devmap
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding {iface} (ifindex {ifindex}) to the devmap"))?;
        // A next hop learned as "not ours to send out of" may now be.
        self.forget_next_hops()
    }

    fn map_mut<'a, T>(&'a mut self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the program"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }

    /// Writes `cfg` into the maps with the slots of `layout`. Order matters
    /// for packets in flight: backends and their state first, then tables
    /// (into the inactive half, then one flip per tier), then replies, then
    /// the services that make all of it reachable; stale entries go last.
    /// `words` overrides the configured state word of some backend slots
    /// (health carried over a reload).
    pub fn apply(
        &mut self,
        cfg: &Config,
        layout: &Layout,
        words: &std::collections::HashMap<u32, u32>,
    ) -> anyhow::Result<()> {
        // The address filter first lets the new addresses through as well
        // as the old ones, and at the end only the new.
        let filter = addr_filter(cfg);
        let mut both = self.addr_filter()?;
        both.union(&filter);
        self.set_addr_filter(&both)?;
        let mut live_backends = HashSet::new();
        {
            let mut backends: Array<&mut MapData, BackendValue> =
                self.map_mut(map_names::BACKENDS)?;
            for (s, sl) in cfg.services.iter().zip(&layout.services) {
                let tiers = s.tiers.iter().zip(&sl.tiers).enumerate();
                for (ti, b, bl) in
                    tiers.flat_map(|(ti, (t, tl))| t.iter().zip(tl).map(move |(b, bl)| (ti, b, bl)))
                {
                    let (addr, family) = addr16(b.address);
                    let v = BackendValue {
                        addr,
                        port: b.port.to_be_bytes(),
                        family,
                        _pad: 0,
                        service_id: sl.id,
                        tier: sl.first_tier + ti as u32,
                    };
                    backends.set(bl.id, v, 0).with_context(|| {
                        format!("writing backend {}/{} (slot {})", s.name, b.name, bl.id)
                    })?;
                    live_backends.insert(bl.id);
                }
            }
        }
        {
            let mut state: Array<&mut MapData, u32> = self.map_mut(map_names::BACKEND_STATE)?;
            for (s, sl) in cfg.services.iter().zip(&layout.services) {
                for (b, bl) in s.tiers.iter().flatten().zip(sl.tiers.iter().flatten()) {
                    let w = words.get(&bl.id).copied().unwrap_or_else(|| b.state.word());
                    state
                        .set(bl.id, w, 0)
                        .with_context(|| format!("writing the state of {}/{}", s.name, b.name))?;
                }
            }
            // Slots no longer in the config: down, so pinned flows move off.
            for id in 0..state.len() {
                if !live_backends.contains(&id)
                    && state.get(&id, 0).context("reading BACKEND_STATE")? != STATE_DOWN
                {
                    state
                        .set(id, STATE_DOWN, 0)
                        .context("clearing a stale backend state")?;
                }
            }
        }
        self.apply_passive(cfg, layout)?;
        {
            let mut t: Array<&mut MapData, FlowTimeouts> =
                self.map_mut(map_names::FLOW_TIMEOUTS)?;
            for (s, sl) in cfg.services.iter().zip(&layout.services) {
                t.set(sl.id, s.timeouts, 0)
                    .with_context(|| format!("writing the flow timeouts of {}", s.name))?;
            }
        }
        for (s, sl) in cfg.services.iter().zip(&layout.services) {
            for (ti, (tier, tl)) in s.tiers.iter().zip(&sl.tiers).enumerate() {
                let members: Vec<maglev::Member> = tier
                    .iter()
                    .map(|b| maglev::Member {
                        key: b.key(),
                        weight: b.weight,
                    })
                    .collect();
                let entries = maglev::build(&members, s.table_size).with_context(|| {
                    format!("building the Maglev table of {} tier {ti}", s.name)
                })?;
                let ids: Vec<u32> = tl.iter().map(|b| b.id).collect();
                self.write_table(sl.first_tier + ti as u32, s.table_size, &ids, &entries)
                    .with_context(|| format!("writing the table of {} tier {ti}", s.name))?;
            }
        }
        let mut reverse_keys = HashSet::new();
        {
            let mut reverse: BpfHashMap<&mut MapData, EndpointKey, ReverseValue> =
                self.map_mut(map_names::REVERSE)?;
            for (s, sl) in cfg.services.iter().zip(&layout.services) {
                if s.mode != Mode::Nat {
                    continue;
                }
                let (vip, _) = addr16(s.vip);
                for (b, bl) in s.tiers.iter().flatten().zip(sl.tiers.iter().flatten()) {
                    let (addr, family) = addr16(b.address);
                    let k = EndpointKey {
                        addr,
                        port: b.port.to_be_bytes(),
                        proto: s.protocol.number(),
                        family,
                    };
                    let v = ReverseValue {
                        vip,
                        vport: s.port.to_be_bytes(),
                        _pad: [0; 2],
                        service_id: sl.id,
                        backend_id: bl.id,
                    };
                    reverse.insert(k, v, 0).with_context(|| {
                        format!("writing the reply entry of {}/{}", s.name, b.name)
                    })?;
                    reverse_keys.insert(k);
                }
            }
            remove_stale(&mut reverse, &reverse_keys).context("pruning REVERSE")?;
        }
        let mut vip_keys = HashSet::new();
        {
            let mut vips: BpfHashMap<&mut MapData, VipAddrKey, u32> =
                self.map_mut(map_names::VIP_ADDRS)?;
            for s in &cfg.services {
                let (addr, family) = addr16(s.vip);
                let k = VipAddrKey {
                    addr,
                    family,
                    _pad: [0; 3],
                };
                vips.insert(k, 1, 0)
                    .with_context(|| format!("writing VIP address {}", s.vip))?;
                vip_keys.insert(k);
            }
        }
        let mut svc_keys = HashSet::new();
        {
            let mut services: BpfHashMap<&mut MapData, EndpointKey, ServiceValue> =
                self.map_mut(map_names::SERVICES)?;
            for (s, sl) in cfg.services.iter().zip(&layout.services) {
                let (addr, family) = addr16(s.vip);
                let k = EndpointKey {
                    addr,
                    port: s.port.to_be_bytes(),
                    proto: s.protocol.number(),
                    family,
                };
                let mut flags = match s.mode {
                    Mode::Nat => MODE_NAT,
                    Mode::Dsr => MODE_DSR,
                };
                match s.on_no_backend {
                    NoBackend::Pass => flags |= FLAG_NO_BACKEND_PASS,
                    NoBackend::Reset => flags |= FLAG_NO_BACKEND_RESET,
                    NoBackend::Drop | NoBackend::KeepLast => {}
                }
                let v = ServiceValue {
                    id: sl.id,
                    flags,
                    first_tier: sl.first_tier,
                    tier_count: sl.tiers.len() as u32,
                };
                services
                    .insert(k, v, 0)
                    .with_context(|| format!("writing service {}", s.name))?;
                svc_keys.insert(k);
            }
            remove_stale(&mut services, &svc_keys).context("pruning SERVICES")?;
        }
        {
            let mut vips: BpfHashMap<&mut MapData, VipAddrKey, u32> =
                self.map_mut(map_names::VIP_ADDRS)?;
            remove_stale(&mut vips, &vip_keys).context("pruning VIP_ADDRS")?;
        }
        self.set_addr_filter(&filter)
    }

    fn addr_filter(&mut self) -> anyhow::Result<AddrFilter> {
        let a: Array<&mut MapData, AddrFilter> = self.map_mut(map_names::ADDR_FILTER)?;
        a.get(&0, 0).context("reading ADDR_FILTER")
    }

    /// One map write: readers see each word old or new.
    fn set_addr_filter(&mut self, f: &AddrFilter) -> anyhow::Result<()> {
        let mut a: Array<&mut MapData, AddrFilter> = self.map_mut(map_names::ADDR_FILTER)?;
        a.set(0, f, 0).context("writing ADDR_FILTER")
    }

    /// Writes one tier's table into its inactive half, then flips the tier
    /// to it with a single 4-byte map write.
    pub fn write_table(
        &mut self,
        tier: u32,
        size: u32,
        members: &[u32],
        entries: &[u16],
    ) -> anyhow::Result<()> {
        let [tables, active] = self
            .ebpf
            .maps_disjoint_mut([map_names::TABLES, map_names::TIER_ACTIVE]);
        let mut tables: Array<&mut MapData, TableValue> =
            Array::try_from(tables.context("map TABLES missing")?)
                .context("TABLES has an unexpected type")?;
        let mut active: Array<&mut MapData, u32> =
            Array::try_from(active.context("map TIER_ACTIVE missing")?)
                .context("TIER_ACTIVE has an unexpected type")?;
        write_table_to(&mut tables, &mut active, tier, size, members, entries)
    }

    /// Every reason counter, summed over CPUs, indexed by `Reason as usize`.
    pub fn reason_counts(&mut self) -> anyhow::Result<Vec<u64>> {
        let a: PerCpuArray<&mut MapData, u64> = self.map_mut(map_names::REASON_STATS)?;
        (0..failover_common::REASON_COUNT)
            .map(|i| Ok(a.get(&i, 0).context("reading REASON_STATS")?.iter().sum()))
            .collect()
    }

    /// A service's counters, summed over CPUs.
    pub fn service_stats(&mut self, id: u32) -> anyhow::Result<ServiceStats> {
        let a: PerCpuArray<&mut MapData, ServiceStats> = self.map_mut(map_names::SERVICE_STATS)?;
        let mut t = ServiceStats::default();
        for s in a.get(&id, 0).context("reading SERVICE_STATS")?.iter() {
            for (d, x) in [
                (&mut t.fwd, s.fwd),
                (&mut t.reply, s.reply),
                (&mut t.dropped, s.dropped),
            ] {
                d.packets += x.packets;
                d.bytes += x.bytes;
            }
        }
        Ok(t)
    }

    /// A backend's counters, summed over CPUs.
    pub fn backend_stats(&mut self, id: u32) -> anyhow::Result<Counter> {
        let a: PerCpuArray<&mut MapData, Counter> = self.map_mut(map_names::BACKEND_STATS)?;
        let mut t = Counter::default();
        for c in a.get(&id, 0).context("reading BACKEND_STATS")?.iter() {
            t.packets += c.packets;
            t.bytes += c.bytes;
        }
        Ok(t)
    }

    /// The verified (`CONNTRACK`) entry of a flow, if any.
    pub fn flow(&mut self, key: &FlowKey) -> anyhow::Result<Option<FlowValue>> {
        self.flow_in(map_names::CONNTRACK, key)
    }

    /// The entry of a flow in `table` (`CONNTRACK` or `EMBRYONIC`), if any.
    pub fn flow_in(&mut self, table: &str, key: &FlowKey) -> anyhow::Result<Option<FlowValue>> {
        let m: BpfHashMap<&mut MapData, FlowKey, FlowValue> = self.map_mut(table)?;
        match m.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {table}")),
        }
    }

    /// Sets the dataplane's coarse clock (milliseconds; see [`clock_ms`]).
    pub fn set_clock(&mut self, ms: u64) -> anyhow::Result<()> {
        let mut a: Array<&mut MapData, u64> = self.map_mut(map_names::CLOCK)?;
        a.set(0, ms, 0).context("writing CLOCK")
    }

    /// Sets one backend's state word: the single map write that moves
    /// traffic on the next packet.
    pub fn set_state(&mut self, backend_id: u32, state: u32) -> anyhow::Result<()> {
        let mut a: Array<&mut MapData, u32> = self.map_mut(map_names::BACKEND_STATE)?;
        a.set(backend_id, state, 0)
            .with_context(|| format!("writing BACKEND_STATE[{backend_id}]"))
    }
}

/// The addresses the packet path must look at: every VIP and every
/// backend (NAT replies come from backends, and direct connections go to
/// them).
fn addr_filter(cfg: &Config) -> AddrFilter {
    let mut f: AddrFilter = bytemuck::Zeroable::zeroed();
    for s in &cfg.services {
        f.insert(&addr16(s.vip).0);
        for b in s.tiers.iter().flatten() {
            f.insert(&addr16(b.address).0);
        }
    }
    f
}

/// Runs `f` (a program load) with the asynchronous signals blocked in this
/// thread. The verifier gives up with EAGAIN when a signal is pending for
/// the loading thread, and verifying the program takes a second or more: a
/// SIGHUP (a reload) or SIGCHLD (a hook ending) arriving then would fail a
/// start or a restart. Blocked here, such a signal goes to another thread
/// or waits until the load is done.
fn without_signals<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset operations on a local set, and pthread_sigmask on the
    // calling thread only; the old mask is restored before returning.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGCHLD,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGPIPE,
            libc::SIGWINCH,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0;
        let out = f();
        if blocked {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        out
    }
}

/// CLOCK_MONOTONIC in milliseconds: the dataplane's coarse clock, by which
/// flows expire.
pub fn clock_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC is
    // always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// How often the daemon advances the dataplane's clock.
pub const CLOCK_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// Advances the pinned `CLOCK` map every [`CLOCK_PERIOD`] on a thread of
/// its own, for as long as the process runs (a stopped clock only stops
/// expiry: flows then live until evicted).
pub fn spawn_clock(pin_dir: &Path) -> anyhow::Result<()> {
    let path = map_pin_path(pin_dir, map_names::CLOCK);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut clock: Array<MapData, u64> =
        Array::try_from(aya::maps::Map::Array(data)).context("CLOCK is not an array")?;
    clock.set(0, clock_ms(), 0).context("writing CLOCK")?;
    std::thread::Builder::new()
        .name("failover-clock".into())
        .spawn(move || {
            loop {
                std::thread::sleep(CLOCK_PERIOD);
                if let Err(e) = clock.set(0, clock_ms(), 0) {
                    tracing::error!(error = %e, "cannot advance the dataplane clock");
                }
            }
        })
        .context("starting the clock thread")?;
    Ok(())
}

/// (key size, value size or `None` when the kernel decides it, max entries)
/// of every map for `limits`.
fn expected_maps(limits: &Limits) -> [(&'static str, u32, Option<u32>, u32); 26] {
    use std::mem::size_of;
    let sz = |n: usize| n as u32;
    [
        (
            map_names::SERVICES,
            sz(size_of::<EndpointKey>()),
            Some(sz(size_of::<ServiceValue>())),
            limits.max_services,
        ),
        (
            map_names::VIP_ADDRS,
            sz(size_of::<VipAddrKey>()),
            Some(4),
            limits.max_vip_addresses,
        ),
        (map_names::TIER_ACTIVE, 4, Some(4), limits.max_tiers),
        (
            map_names::TABLES,
            4,
            Some(sz(size_of::<TableValue>())),
            limits.max_tiers * 2,
        ),
        (
            map_names::BACKENDS,
            4,
            Some(sz(size_of::<BackendValue>())),
            limits.max_backends,
        ),
        (map_names::BACKEND_STATE, 4, Some(4), limits.max_backends),
        (
            map_names::CONNTRACK,
            sz(size_of::<FlowKey>()),
            Some(sz(size_of::<FlowValue>())),
            limits.conntrack_entries,
        ),
        (
            map_names::REVERSE,
            sz(size_of::<EndpointKey>()),
            Some(sz(size_of::<ReverseValue>())),
            limits.max_backends,
        ),
        (
            map_names::DEVMAP,
            4,
            None,
            failover_common::defaults::DEVMAP_ENTRIES,
        ),
        (
            map_names::SERVICE_STATS,
            4,
            Some(sz(size_of::<ServiceStats>())),
            limits.max_services,
        ),
        (
            map_names::BACKEND_STATS,
            4,
            Some(sz(size_of::<Counter>())),
            limits.max_backends,
        ),
        (
            map_names::REASON_STATS,
            4,
            Some(8),
            failover_common::REASON_COUNT,
        ),
        (
            map_names::PASSIVE_CFG,
            4,
            Some(sz(size_of::<PassiveConfig>())),
            limits.max_services,
        ),
        (
            map_names::PASSIVE_HEALTH,
            4,
            Some(sz(size_of::<PassiveHealth>())),
            limits.max_backends,
        ),
        (
            map_names::PASSIVE_GUARD,
            4,
            Some(sz(size_of::<PassiveGuard>())),
            limits.max_tiers,
        ),
        (map_names::PASSIVE_MARKED, 4, Some(8), limits.max_tiers),
        (
            map_names::PASSIVE_STATS,
            4,
            Some(sz(size_of::<PassiveStats>())),
            limits.max_backends,
        ),
        // A ring buffer: no key or value.
        (map_names::PASSIVE_EVENTS, 0, None, PASSIVE_EVENTS_BYTES),
        (
            map_names::EMBRYONIC,
            sz(size_of::<FlowKey>()),
            Some(sz(size_of::<FlowValue>())),
            limits.embryonic_entries,
        ),
        (
            map_names::DIRECT,
            sz(size_of::<FlowKey>()),
            Some(4),
            failover_common::defaults::DIRECT_ENTRIES,
        ),
        (
            map_names::FLOW_TIMEOUTS,
            4,
            Some(sz(size_of::<FlowTimeouts>())),
            limits.max_services,
        ),
        (map_names::CLOCK, 4, Some(8), 1),
        (map_names::PROGS, 4, Some(4), 1),
        (
            map_names::NEXTHOPS,
            4,
            Some(sz(size_of::<failover_common::NextHop>())),
            limits.max_backends,
        ),
        (map_names::NH_EPOCH, 4, Some(4), 1),
        (
            map_names::ADDR_FILTER,
            4,
            Some(sz(size_of::<failover_common::AddrFilter>())),
            1,
        ),
    ]
}

/// Size of the passive-detection event ring buffer (bytes, a power of two
/// multiple of the page size).
pub const PASSIVE_EVENTS_BYTES: u32 = 1 << 16;

/// Maps pinned by an earlier run are reused (that keeps conntrack and the
/// counters); one made for other `[limits]` or by another version would be
/// reused wrongly, so it is refused with what differs and what to do.
fn check_pinned_maps(dir: &Path, limits: &Limits) -> anyhow::Result<()> {
    for (name, key, value, max) in expected_maps(limits) {
        let path = map_pin_path(dir, name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut diffs = Vec::new();
        if info.key_size() != key {
            diffs.push(format!("key size {} (this build: {key})", info.key_size()));
        }
        if let Some(v) = value
            && info.value_size() != v
        {
            diffs.push(format!(
                "value size {} (this build: {v})",
                info.value_size()
            ));
        }
        if info.max_entries() != max {
            diffs.push(format!(
                "max_entries {} (this config: {max})",
                info.max_entries()
            ));
        }
        if !diffs.is_empty() {
            bail!(
                "the pinned map {} was made by another version or for other [limits]: {}. Restore the old \
                 [limits], or stop the daemon, detach and remove {} (this drops conntrack) to start afresh",
                path.display(),
                diffs.join(", "),
                dir.display()
            );
        }
    }
    Ok(())
}

fn remove_stale<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    map: &mut BpfHashMap<&mut MapData, K, V>,
    keep: &HashSet<K>,
) -> anyhow::Result<()> {
    let stale: Vec<K> = map
        .keys()
        .collect::<Result<Vec<K>, _>>()
        .context("listing keys")?
        .into_iter()
        .filter(|k| !keep.contains(k))
        .collect();
    for k in stale {
        map.remove(&k).context("removing a stale entry")?;
    }
    Ok(())
}

/// The ifindex of `iface` in the current network namespace.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name =
        std::ffi::CString::new(iface).with_context(|| format!("bad interface name {iface:?}"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        bail!("no interface named {iface:?} in this network namespace");
    }
    Ok(idx)
}
