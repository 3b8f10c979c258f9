//! Small-UDP-packet forwarding rate through the veth lab, with a generator
//! built on XDP live frames (BPF_PROG_TEST_RUN with
//! BPF_F_TEST_XDP_LIVE_FRAMES, `failover-ebpf/src/benchgen.rs`): the kernel
//! sends a 64-byte frame (without FCS), spread over 256 flows, out of the client's veth
//! `repeat` times, and a counting XDP sink on each backend's veth counts
//! what arrives. The load balancer's receive path runs in a NAPI kernel
//! thread, so it can use the other core: the generator is open-loop, and
//! what it offers beyond what a contender forwards is dropped at the veth
//! ring. The generator alone (frames counted and dropped on the load
//! balancer's first interface) shows its own rate.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMap, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use failover_lab::{Topology, netns::Netns};
use failover_tests::pkt::{L4, Pkt};
use failover_user::dataplane::ifindex;

/// Names of the programs in the generator's object, and of the sink's
/// counter map (`failover-ebpf/src/benchgen.rs`).
const GEN_PROGRAM: &str = "failover_gen";
const SINK_PROGRAM: &str = "failover_sink";
const SINK_COUNT_MAP: &str = "SINK_COUNT";
const REDIRECT_PROGRAM: &str = "failover_redir";
const REDIRECT_PORTS_MAP: &str = "REDIRECT_PORTS";

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

    pub fn count(&self) -> anyhow::Result<u64> {
        let map = self.ebpf.map(SINK_COUNT_MAP).context("sink counter map")?;
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(a.get(&0, 0)?.iter().sum())
    }
}

/// The bare-redirect reference (issue 14): one `bpf_redirect_map` per
/// frame from `iface` to `ports` (two slots), no lookups; detached on drop.
pub struct BareRedirect {
    _ebpf: Ebpf,
}

impl BareRedirect {
    pub fn attach(ns: &Netns, iface: &str, ports: [&str; 2]) -> anyhow::Result<Self> {
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
            prog.attach(iface, XdpMode::Driver)
                .with_context(|| format!("attaching the bare redirect to {iface}"))?;
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

/// Runs the load balancer's receive path (the NAPI of `lc`) in a kernel
/// thread of its own, so that it can run on the other core than the
/// generator: otherwise the two take turns on one core and every packet
/// pays for both.
fn threaded_napi(topo: &Topology) -> anyhow::Result<()> {
    let st = topo
        .lb
        .cmd("sh")
        .args(["-c", "echo 1 > /sys/class/net/lc/threaded"])
        .status()?;
    if !st.success() {
        bail!("cannot switch lc to threaded NAPI");
    }
    Ok(())
}

/// Sends `repeat` frames out of the client's veth; returns the wall time.
fn generate(topo: &Topology, repeat: u32) -> anyhow::Result<Duration> {
    let mut p = Pkt::new(
        failover_lab::VIP4.parse()?,
        failover_lab::VIP4.parse()?,
        L4::udp(10_000, 53, &[0u8; 22]),
    );
    p.src = "198.18.0.2".parse()?;
    p.smac = mac_of(&topo.client, "cl")?;
    p.dmac = mac_of(&topo.lb, "lc")?;
    let frame = p.bytes();
    let object = benchgen_object()?;
    topo.client.run(|| {
        let mut ebpf = Ebpf::load_file(&object).context("loading the bench programs")?;
        let prog: &mut Xdp = ebpf
            .program_mut(GEN_PROGRAM)
            .context("generator program missing")?
            .try_into()?;
        prog.load().context("loading the generator")?;
        let mut tmpl: Array<_, [u8; 64]> =
            Array::try_from(ebpf.map_mut("GEN_FRAME").context("GEN_FRAME map")?)?;
        let fixed: [u8; 64] = frame
            .as_slice()
            .try_into()
            .context("the generated frame must be 64 bytes")?;
        tmpl.set(0, fixed, 0)?;
        let prog: &Xdp = ebpf
            .program(GEN_PROGRAM)
            .context("generator program missing")?
            .try_into()?;
        let idx = ifindex("cl")?;
        let mut ctx = Vec::with_capacity(24);
        for v in [0u32, frame.len() as u32, 0, idx, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let t = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN in live-frames mode")?;
        Ok(t.elapsed())
    })
}

/// One contender's figures (packets per second).
pub struct Rate {
    pub contender: String,
    pub offered_pps: f64,
    pub delivered_pps: f64,
}

/// The generator alone (its frames counted and dropped by an XDP sink on
/// the load balancer's first interface), then each contender.
pub fn rates(
    exe: &std::path::Path,
    contenders: &[&str],
    repeat: u32,
) -> anyhow::Result<(Rate, Vec<Rate>)> {
    let alone = {
        let w = failover_lab::Workdir::new("fog")?;
        let topo = Topology::create(&w.prefix)?;
        let sink = Sink::attach(&topo.lb, "lc")?;
        threaded_napi(&topo)?;
        generate(&topo, repeat / 10)?;
        let before = sink.count()?;
        let t = generate(&topo, repeat)?;
        std::thread::sleep(Duration::from_millis(50));
        Rate {
            contender: "generator alone (XDP sink on the LB's interface)".into(),
            offered_pps: f64::from(repeat) / t.as_secs_f64(),
            delivered_pps: (sink.count()? - before) as f64 / t.as_secs_f64(),
        }
    };
    let mut out = Vec::new();
    for &contender in contenders {
        let w = failover_lab::Workdir::new("fou")?;
        let mut topo = Topology::create(&w.prefix)?;
        topo.detach_backend_pass();
        let sinks = [
            Sink::attach(&topo.backends[0], "b1")?,
            Sink::attach(&topo.backends[1], "b2")?,
        ];
        let mut _daemon = None;
        let mut _pass = None;
        let mut _redirect = None;
        match contender {
            "failover nat" | "failover dsr" => {
                _daemon = Some(crate::start_daemon(
                    exe,
                    &w,
                    &topo,
                    contender.ends_with("dsr"),
                )?);
            }
            "nftables dnat" => {
                let rules = format!(
                    "table ip bench {{\n chain pre {{\n  type nat hook prerouting priority -100;\n  ip daddr {} udp dport 53 dnat to 198.18.1.2:{}\n }}\n}}\n",
                    failover_lab::VIP4,
                    failover_lab::BACKEND_UDP_PORT
                );
                crate::load_nft(&w, &topo, &rules)?;
                // The client's frames arrive as XDP frames: the receiving
                // veth must run XDP to accept them.
                _pass = Some(failover_lab::attach_pass(&topo.lb, "lc")?);
            }
            "bare redirect" => {
                // The frames reach the backends' sinks unchanged (an XDP
                // sink counts them whatever their addresses).
                _redirect = Some(BareRedirect::attach(&topo.lb, "lc", ["lb1", "lb2"])?);
            }
            other => bail!("no UDP setup for {other}"),
        }
        threaded_napi(&topo)?;
        // Warm up (neighbours, conntrack entries of the 256 flows).
        generate(&topo, 20_000)?;
        std::thread::sleep(Duration::from_millis(200));
        let count = || -> anyhow::Result<u64> { Ok(sinks[0].count()? + sinks[1].count()?) };
        let before = count()?;
        let t = generate(&topo, repeat)?;
        std::thread::sleep(Duration::from_millis(50));
        let got = count()? - before;
        if std::env::var_os("FAILOVER_BENCH_PAUSE").is_some() {
            eprintln!("bench: {got} delivered; pausing 60 s in {}", topo.lb.name);
            std::thread::sleep(Duration::from_secs(60));
        }
        if got == 0 {
            bail!("{contender}: no UDP packet reached a backend");
        }
        out.push(Rate {
            contender: contender.to_string(),
            offered_pps: f64::from(repeat) / t.as_secs_f64(),
            delivered_pps: got as f64 / t.as_secs_f64(),
        });
    }
    Ok((alone, out))
}
