//! Small-UDP-packet forwarding rate through the veth lab, with a generator
//! built on XDP live frames (BPF_PROG_TEST_RUN with
//! BPF_F_TEST_XDP_LIVE_FRAMES, `failover-ebpf/src/benchgen.rs`): the kernel
//! sends a 64-byte frame (without FCS), spread over 256 flows, out of a
//! client veth `repeat` times, and a counting XDP sink on the backend's veth
//! counts what arrives.
//!
//! Closed loop, one core per generator: the generator's thread is pinned to
//! a CPU and nothing runs in threaded NAPI, so after each batch of 64 frames
//! the veth's receive path (the contender's XDP program, the redirect, the
//! backend's sink) runs in the softirq of that same CPU before the next
//! batch. Every contender is offered exactly what it delivers, at the rate
//! one core runs the whole path (generator included); the contenders' labs
//! are all up at once and measured in interleaved rounds (medians).
//!
//! Scaling: the lab gets a second client link (`cl2`/`lc2`,
//! 198.18.3.0/24) with its own generator pinned to the second CPU, both
//! going to the same backend (`b1`, given two receive queues: a veth picks
//! the receive queue of an XDP frame by the sending CPU). The rate is
//! measured over the time both generators ran (the sink is sampled while
//! they run).

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMap, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use failover_lab::{
    DaemonProcess, LabExtras, PassXdp, Topology, Workdir, attach_pass,
    netns::{self, Netns},
};
use failover_tests::pkt::{L4, Pkt};
use failover_user::dataplane::ifindex;

/// Names of the programs in the generator's object, and of the sink's
/// counter map (`failover-ebpf/src/benchgen.rs`).
const GEN_PROGRAM: &str = "failover_gen";
const SINK_PROGRAM: &str = "failover_sink";
const SINK_COUNT_MAP: &str = "SINK_COUNT";
const REDIRECT_PROGRAM: &str = "failover_redir";
const REDIRECT_PORTS_MAP: &str = "REDIRECT_PORTS";

/// The frames of the warm-up run on each link (neighbours resolved,
/// conntrack entries of the 256 flows created).
const WARMUP: u32 = 20_000;
/// How often the sinks are read while generators run.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Bound on one run (generators ready, then running).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The bench's XDP generator and sink, built with the other eBPF programs
/// but kept out of the product binary: loaded from the eBPF target dir
/// (or `FAILOVER_BENCHGEN`).
pub fn benchgen_object() -> anyhow::Result<std::path::PathBuf> {
    let path = match std::env::var_os("FAILOVER_BENCHGEN") {
        Some(p) => std::path::PathBuf::from(p),
        None => option_env!("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("ebpf/bpfel-unknown-none/release/failover-benchgen"),
    };
    anyhow::ensure!(
        path.is_file(),
        "no bench generator object at {} (build with `cargo xtask build`, or set FAILOVER_BENCHGEN)",
        path.display()
    );
    Ok(path)
}

/// A counting sink attached to an interface (detached on drop).
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    pub fn attach(ns: &Netns, iface: &str) -> anyhow::Result<Self> {
        let object = benchgen_object()?;
        ns.run(|| {
            let mut ebpf = Ebpf::load_file(&object).context("loading the bench programs")?;
            let prog: &mut Xdp = ebpf
                .program_mut(SINK_PROGRAM)
                .context("sink program missing")?
                .try_into()?;
            prog.load().context("loading the sink")?;
            prog.attach(iface, XdpMode::Driver)
                .with_context(|| format!("attaching the sink to {iface}"))?;
            Ok(Sink { ebpf })
        })
    }

    /// Frames counted, per CPU.
    pub fn per_cpu(&self) -> anyhow::Result<Vec<u64>> {
        let map = self.ebpf.map(SINK_COUNT_MAP).context("sink counter map")?;
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(a.get(&0, 0).context("reading the sink's counter")?.to_vec())
    }
}

/// The bare-redirect reference (issue 14): one `bpf_redirect_map` per
/// frame from each of `ifaces` to `ports` (two slots), no lookups; detached
/// on drop.
pub struct BareRedirect {
    _ebpf: Ebpf,
}

impl BareRedirect {
    pub fn attach(ns: &Netns, ifaces: &[&str], ports: [&str; 2]) -> anyhow::Result<Self> {
        let object = benchgen_object()?;
        ns.run(|| {
            let mut ebpf = Ebpf::load_file(&object).context("loading the bench programs")?;
            {
                let mut m: DevMap<_> = DevMap::try_from(
                    ebpf.map_mut(REDIRECT_PORTS_MAP)
                        .context("redirect devmap missing")?,
                )?;
                for (slot, port) in (0u32..).zip(ports) {
                    m.set(slot, ifindex(port)?, None, 0)
                        .with_context(|| format!("adding {port} to the devmap"))?;
                }
            }
            let prog: &mut Xdp = ebpf
                .program_mut(REDIRECT_PROGRAM)
                .context("redirect program missing")?
                .try_into()?;
            prog.load().context("loading the bare redirect")?;
            for iface in ifaces {
                prog.attach(iface, XdpMode::Driver)
                    .with_context(|| format!("attaching the bare redirect to {iface}"))?;
            }
            Ok(BareRedirect { _ebpf: ebpf })
        })
    }
}

/// The MAC address of `iface` in `ns`.
fn mac_of(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    let s = v[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {iface}"))?;
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC address {s:?}");
    }
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC address {s:?}"))?;
    }
    Ok(m)
}

/// The CPUs this process may run on, lowest first.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is a valid cpu_set_t of the size we pass.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set, with an index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the set (it checks the index).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is a valid cpu_set_t of the size we pass.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        bail!(
            "pinning a generator to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Sets the number of receive queues of veth `dev` (in the calling thread's
/// namespace) through ethtool's channels (a veth has as many queues as
/// CPUs, one in use by default).
fn set_rx_queues(dev: &str, n: u32) -> anyhow::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    const ETHTOOL_SCHANNELS: u32 = 0x3d;
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut Channels,
        _pad: [u8; 16],
    }
    if dev.len() >= libc::IFNAMSIZ {
        bail!("interface name {dev:?} too long");
    }
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut ch,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let ioctl = |req: &mut IfReq| -> std::io::Result<()> {
        // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a
        // live ethtool_channels for the duration of the call.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, req as *mut IfReq) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let r = ioctl(&mut req).and_then(|()| {
        // SAFETY: `data` points at `ch`, alive and not otherwise borrowed.
        let c = unsafe { &mut *req.data };
        if c.max_rx < n {
            return Err(std::io::Error::other(format!(
                "{dev} has at most {} receive queues",
                c.max_rx
            )));
        }
        c.cmd = ETHTOOL_SCHANNELS;
        c.rx_count = n;
        ioctl(&mut req)
    });
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    r.with_context(|| format!("setting {dev}'s receive queues to {n}"))
}

/// What receives the generators' frames on the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// Nothing: the frames are counted and dropped by a sink on the load
    /// balancer's client-facing veths (the generator's own rate).
    GeneratorAlone,
    FailoverNat,
    FailoverDsr,
    NftablesDnat,
    BareRedirect,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::GeneratorAlone => "generator alone (XDP sink on the LB's interface)",
            Contender::FailoverNat => "failover nat",
            Contender::FailoverDsr => "failover dsr",
            Contender::NftablesDnat => "nftables dnat",
            Contender::BareRedirect => "bare redirect",
        }
    }

    /// Measured on two cores (two ingress links) too.
    fn scales(self) -> bool {
        matches!(
            self,
            Contender::GeneratorAlone | Contender::FailoverNat | Contender::BareRedirect
        )
    }
}

/// The client-side interface and the LB-side interface of each ingress
/// link, and the client's source address on it.
const LINKS: [(&str, &str, &str); 2] = [("cl", "lc", "198.18.0.2"), ("cl2", "lc2", "198.18.3.2")];

/// One contender's lab: the `failover-lab` topology plus a second client
/// link, the contender on the load balancer and the counting sinks.
/// Fields drop in order: the contender first, the namespaces last.
struct Lab {
    contender: Contender,
    _daemon: Option<DaemonProcess>,
    _redirect: Option<BareRedirect>,
    _pass: Vec<PassXdp>,
    sinks: Vec<Sink>,
    /// The generator's frame on each ingress link (by client interface).
    frames: Vec<(&'static str, [u8; 64])>,
    topo: Topology,
    _w: Workdir,
}

impl Lab {
    fn new(exe: &std::path::Path, contender: Contender) -> anyhow::Result<Self> {
        let w = Workdir::new("fou")?;
        let topo = Topology::create(&w.prefix)?;
        let (cl2, lc2, src2) = LINKS[1];
        netns::veth(&topo.client, cl2, &topo.lb, lc2)?;
        topo.client
            .ip(&["addr", "add", &format!("{src2}/24"), "dev", cl2])?;
        topo.lb.ip(&["addr", "add", "198.18.3.1/24", "dev", lc2])?;
        topo.client.run(|| netns::disable_tx_checksum(cl2))?;
        // The one backend receives on as many queues as there are
        // generators: a veth puts an XDP frame on the queue of the CPU
        // that sends it.
        topo.backends[0].run(|| set_rx_queues("b1", 2))?;
        let mut lab = Lab {
            contender,
            _daemon: None,
            _redirect: None,
            _pass: Vec::new(),
            sinks: Vec::new(),
            frames: Vec::new(),
            topo,
            _w: w,
        };
        let ingress: Vec<&str> = LINKS.iter().map(|l| l.1).collect();
        if contender == Contender::GeneratorAlone {
            for lc in &ingress {
                lab.sinks.push(Sink::attach(&lab.topo.lb, lc)?);
            }
        } else {
            lab.topo.detach_backend_pass();
            lab.sinks.push(Sink::attach(&lab.topo.backends[0], "b1")?);
            lab.sinks.push(Sink::attach(&lab.topo.backends[1], "b2")?);
        }
        match contender {
            Contender::GeneratorAlone => {}
            Contender::FailoverNat | Contender::FailoverDsr => {
                lab._daemon = Some(start_daemon(
                    exe,
                    &lab._w,
                    &lab.topo,
                    contender == Contender::FailoverDsr,
                )?);
            }
            Contender::NftablesDnat => {
                let rules = format!(
                    "table ip bench {{\n chain pre {{\n  type nat hook prerouting priority -100;\n  ip daddr {} udp dport 53 dnat to {}:{}\n }}\n}}\n",
                    failover_lab::VIP4,
                    failover_lab::BACKENDS[0].0,
                    failover_lab::BACKEND_UDP_PORT
                );
                crate::load_nft(&lab._w, &lab.topo, &rules)?;
                // The client's frames arrive as XDP frames: the receiving
                // veth must run XDP to accept them.
                lab._pass.push(attach_pass(&lab.topo.lb, "lc")?);
            }
            Contender::BareRedirect => {
                // Both slots to the one backend, as failover's `dns` service
                // sends everything to its primary; the frames reach the
                // sink unchanged (it counts them whatever their addresses).
                lab._redirect = Some(BareRedirect::attach(
                    &lab.topo.lb,
                    &ingress,
                    ["lb1", "lb1"],
                )?);
            }
        }
        for (cl, lc, src) in LINKS {
            let mut p = Pkt::new(
                src.parse()?,
                failover_lab::VIP4.parse()?,
                L4::udp(10_000, 53, &[0u8; 22]),
            );
            p.smac = mac_of(&lab.topo.client, cl)?;
            p.dmac = mac_of(&lab.topo.lb, lc)?;
            let frame: [u8; 64] = p
                .bytes()
                .as_slice()
                .try_into()
                .context("the generated frame must be 64 bytes")?;
            lab.frames.push((cl, frame));
        }
        Ok(lab)
    }

    /// Frames counted by the sinks, per CPU.
    fn per_cpu(&self) -> anyhow::Result<Vec<u64>> {
        let mut sum = Vec::new();
        for s in &self.sinks {
            let v = s.per_cpu()?;
            sum.resize(sum.len().max(v.len()), 0);
            for (a, b) in sum.iter_mut().zip(v) {
                *a += b;
            }
        }
        Ok(sum)
    }

    fn count(&self) -> anyhow::Result<u64> {
        Ok(self.per_cpu()?.iter().sum())
    }

    /// Runs one generator per `(link, cpu)` at once, `repeat` frames each.
    /// `softirqd`: each CPU's ksoftirqd `schedstat`.
    fn run(
        &self,
        gens: &[(usize, usize)],
        repeat: u32,
        softirqd: &[(usize, String)],
    ) -> anyhow::Result<Run> {
        let object = benchgen_object()?;
        let softirqd: Vec<(usize, &str)> = gens
            .iter()
            .map(|&(_, cpu)| {
                softirqd
                    .iter()
                    .find(|(c, _)| *c == cpu)
                    .map(|(_, p)| (cpu, p.as_str()))
                    .with_context(|| format!("no ksoftirqd for CPU {cpu}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let before = self.per_cpu()?;
        let softirq_before = softirqd
            .iter()
            .map(|(_, p)| on_cpu_ns(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ready = AtomicUsize::new(0);
        let go = AtomicBool::new(false);
        let limit = Instant::now() + RUN_LIMIT;
        let (times, samples) = std::thread::scope(|s| -> anyhow::Result<_> {
            let mut handles = Vec::new();
            for &(link, cpu) in gens {
                let (iface, frame) = *self.frames.get(link).context("no such link")?;
                let (object, ready, go, ns) = (&object, &ready, &go, &self.topo.client);
                handles.push(s.spawn(move || -> anyhow::Result<Timing> {
                    let prep = (|| {
                        let guard = ns.enter()?;
                        pin(cpu)?;
                        let g = Generator::load(object, iface, frame)?;
                        anyhow::Ok((guard, g))
                    })();
                    ready.fetch_add(1, Ordering::SeqCst);
                    while !go.load(Ordering::SeqCst) {
                        if Instant::now() > limit {
                            bail!("the generators did not start");
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    let (_guard, g) = prep?;
                    g.run(repeat)
                }));
            }
            while ready.load(Ordering::SeqCst) < gens.len() && Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(1));
            }
            go.store(true, Ordering::SeqCst);
            let mut samples = Vec::new();
            while !handles.iter().all(|h| h.is_finished()) && Instant::now() < limit {
                samples.push((Instant::now(), self.count()?));
                std::thread::sleep(SAMPLE_EVERY);
            }
            let mut times = Vec::new();
            for h in handles {
                times.push(
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??,
                );
            }
            Ok((times, samples))
        })?;
        // What the last batch left in a queue.
        std::thread::sleep(Duration::from_millis(20));
        let after = self.per_cpu()?;
        let per_cpu: Vec<u64> = after
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a - b)
            .collect();
        let delivered: u64 = per_cpu.iter().sum();
        // Per core: the frames counted on that CPU over the time the
        // generator's thread and the CPU's ksoftirqd held it.
        let mut on_cpu_pps = 0.0;
        let mut held = 0.0;
        for (((&(_, cpu), t), (_, sq)), sq0) in
            gens.iter().zip(&times).zip(&softirqd).zip(&softirq_before)
        {
            let ns = t.on_cpu_ns + (on_cpu_ns(sq)? - sq0);
            let frames = per_cpu.get(cpu).copied().unwrap_or(0);
            on_cpu_pps += frames as f64 / (ns as f64 / 1e9);
            held += ns as f64 / 1e9 / (t.end - t.start).as_secs_f64();
        }
        let first = times
            .iter()
            .map(|t| t.start)
            .min()
            .context("no generator")?;
        let last = times.iter().map(|t| t.end).max().context("no generator")?;
        // Wall clock: over the window where every generator ran, from the
        // samples if they cover most of it, else over the whole run.
        let (from, to) = (
            times
                .iter()
                .map(|t| t.start)
                .max()
                .context("no generator")?,
            times.iter().map(|t| t.end).min().context("no generator")?,
        );
        let inside: Vec<&(Instant, u64)> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .collect();
        let wall_pps = match (inside.first(), inside.last()) {
            (Some(a), Some(b))
                if to > from && (b.0 - a.0).as_secs_f64() >= 0.5 * (to - from).as_secs_f64() =>
            {
                (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64()
            }
            _ => delivered as f64 / (last - first).as_secs_f64(),
        };
        Ok(Run {
            on_cpu_pps,
            wall_pps,
            held: held / gens.len() as f64,
            offered: u64::from(repeat) * gens.len() as u64,
            delivered,
            per_cpu,
        })
    }
}

/// The daemon on the lab, NAT or DSR, attached to both ingress links and
/// the backends' links (its default config: `dns` sends UDP 53 to backend
/// 1, backend 2 standing by).
fn start_daemon(
    exe: &std::path::Path,
    w: &Workdir,
    topo: &Topology,
    dsr: bool,
) -> anyhow::Result<DaemonProcess> {
    let x = LabExtras {
        service_keys: if dsr {
            "mode = \"dsr\"".into()
        } else {
            String::new()
        },
        top: "[admin]\nmetrics_listen = \"off\"\n".into(),
        ..Default::default()
    };
    let base = topo.config_with(&w.bpffs, &w.dir.join("state"), &x);
    let from = "interfaces = [\"lc\", \"lb1\", \"lb2\"]";
    anyhow::ensure!(
        base.contains(from),
        "the lab's config no longer lists {from}"
    );
    let cfg = w.dir.join("lab.toml");
    std::fs::write(
        &cfg,
        base.replace(from, "interfaces = [\"lc\", \"lc2\", \"lb1\", \"lb2\"]"),
    )
    .with_context(|| format!("writing {}", cfg.display()))?;
    let mut d = DaemonProcess::spawn(exe, &topo.lb.name, &cfg)?;
    d.wait_attached(&w.bpffs, &["lc", "lc2", "lb1", "lb2"])?;
    Ok(d)
}

/// The generator loaded, its frame written, in the client's namespace.
struct Generator {
    ebpf: Ebpf,
    frame: [u8; 64],
    ctx: Vec<u8>,
}

impl Generator {
    fn load(object: &std::path::Path, iface: &str, frame: [u8; 64]) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load_file(object).context("loading the bench programs")?;
        let prog: &mut Xdp = ebpf
            .program_mut(GEN_PROGRAM)
            .context("generator program missing")?
            .try_into()?;
        prog.load().context("loading the generator")?;
        let mut tmpl: Array<_, [u8; 64]> =
            Array::try_from(ebpf.map_mut("GEN_FRAME").context("GEN_FRAME map")?)?;
        tmpl.set(0, frame, 0)?;
        let mut ctx = Vec::with_capacity(24);
        for v in [0u32, frame.len() as u32, 0, ifindex(iface)?, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        Ok(Self { ebpf, frame, ctx })
    }

    /// Sends `repeat` frames; returns when it started and ended, and the
    /// calling thread's time on its CPU meanwhile.
    fn run(&self, repeat: u32) -> anyhow::Result<Timing> {
        let prog: &Xdp = self
            .ebpf
            .program(GEN_PROGRAM)
            .context("generator program missing")?
            .try_into()?;
        let cpu0 = on_cpu_ns(THREAD_SCHEDSTAT)?;
        let t = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(&self.ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN in live-frames mode")?;
        let end = Instant::now();
        Ok(Timing {
            start: t,
            end,
            on_cpu_ns: on_cpu_ns(THREAD_SCHEDSTAT)? - cpu0,
        })
    }
}

/// When a generator ran, and its thread's time on its CPU (which, without
/// IRQ time accounting, includes the softirqs that ran in its context: the
/// whole receive path).
struct Timing {
    start: Instant,
    end: Instant,
    on_cpu_ns: u64,
}

const THREAD_SCHEDSTAT: &str = "/proc/thread-self/schedstat";

/// A task's time on a CPU so far (the first field of its `schedstat`).
fn on_cpu_ns(schedstat: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(schedstat).with_context(|| format!("reading {schedstat}"))?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad {schedstat}: {s:?}"))
}

/// The `schedstat` of each CPU's `ksoftirqd` (softirqs deferred out of the
/// generator's context run there), by CPU.
fn ksoftirqd(cpus: &[usize]) -> anyhow::Result<Vec<(usize, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").context("listing /proc")? {
        let e = e.context("listing /proc")?;
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if let Some(cpu) = comm
            .trim()
            .strip_prefix("ksoftirqd/")
            .and_then(|c| c.parse::<usize>().ok())
            .filter(|c| cpus.contains(c))
        {
            out.push((cpu, format!("/proc/{pid}/schedstat")));
        }
    }
    for c in cpus {
        anyhow::ensure!(out.iter().any(|(x, _)| x == c), "no ksoftirqd for CPU {c}");
    }
    Ok(out)
}

/// One run's figures.
struct Run {
    /// Delivered per second of the cores' time (summed over cores).
    on_cpu_pps: f64,
    /// Delivered per second of wall-clock time.
    wall_pps: f64,
    /// The share of the run's wall-clock time the cores spent on it.
    held: f64,
    offered: u64,
    delivered: u64,
    /// Frames counted per CPU.
    per_cpu: Vec<u64>,
}

/// One contender's runs on one or two cores.
pub struct Series {
    pub contender: Contender,
    /// Delivered packets per second of the cores' time, one per round.
    pub pps: Vec<f64>,
    /// Delivered packets per second of wall-clock time, one per round.
    pub wall_pps: Vec<f64>,
    /// The share of each round's wall-clock time the cores spent on it.
    pub held: Vec<f64>,
    pub offered: u64,
    pub delivered: u64,
    /// Frames counted per CPU over every round.
    pub per_cpu: Vec<u64>,
}

impl Series {
    fn new(contender: Contender) -> Self {
        Self {
            contender,
            pps: Vec::new(),
            wall_pps: Vec::new(),
            held: Vec::new(),
            offered: 0,
            delivered: 0,
            per_cpu: Vec::new(),
        }
    }

    fn add(&mut self, r: Run) {
        self.pps.push(r.on_cpu_pps);
        self.wall_pps.push(r.wall_pps);
        self.held.push(r.held);
        self.offered += r.offered;
        self.delivered += r.delivered;
        self.per_cpu
            .resize(self.per_cpu.len().max(r.per_cpu.len()), 0);
        for (a, b) in self.per_cpu.iter_mut().zip(r.per_cpu) {
            *a += b;
        }
    }

    pub fn median_pps(&self) -> f64 {
        crate::median(self.pps.clone())
    }

    pub fn median_wall_pps(&self) -> f64 {
        crate::median(self.wall_pps.clone())
    }

    pub fn median_held(&self) -> f64 {
        crate::median(self.held.clone())
    }
}

/// Every contender's rates.
pub struct Rates {
    /// The CPUs used: the first for one core, both for two.
    pub cpus: Vec<usize>,
    pub one_core: Vec<Series>,
    pub two_cores: Vec<Series>,
}

/// Brings up one lab per contender, warms each up, then measures them in
/// `rounds` interleaved rounds (the order reversed every other round):
/// each contender on one core, then those that scale on two.
pub fn rates(
    exe: &std::path::Path,
    contenders: &[Contender],
    repeat: u32,
    rounds: usize,
) -> anyhow::Result<Rates> {
    let cpus: Vec<usize> = allowed_cpus()?.into_iter().take(2).collect();
    let Some(&first) = cpus.first() else {
        bail!("no CPU to run on");
    };
    let softirqd = ksoftirqd(&cpus)?;
    let mut labs = Vec::new();
    for &c in contenders {
        labs.push(Lab::new(exe, c).with_context(|| format!("the {} lab", c.name()))?);
    }
    for lab in &labs {
        for link in 0..LINKS.len() {
            if link == 0 || lab.contender.scales() {
                lab.run(&[(link, first)], WARMUP, &softirqd)?;
            }
        }
    }
    let mut one: Vec<Series> = contenders.iter().map(|&c| Series::new(c)).collect();
    let mut two: Vec<Series> = contenders
        .iter()
        .filter(|c| c.scales())
        .map(|&c| Series::new(c))
        .collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..labs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let lab = &labs[i];
            let r = lab.run(&[(0, first)], repeat, &softirqd)?;
            if r.delivered == 0 {
                bail!("{}: no UDP packet reached a sink", lab.contender.name());
            }
            one[i].add(r);
            if let (true, [a, b]) = (lab.contender.scales(), cpus.as_slice()) {
                let r = lab.run(&[(0, *a), (1, *b)], repeat, &softirqd)?;
                if let Some(s) = two.iter_mut().find(|s| s.contender == lab.contender) {
                    s.add(r);
                }
            }
        }
    }
    if cpus.len() < 2 {
        two.clear();
    }
    Ok(Rates {
        cpus,
        one_core: one,
        two_cores: two,
    })
}
