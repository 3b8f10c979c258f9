//! The packet-test environment (shared by the packet tests and the bench):
//! a network namespace holding the load balancer's two interfaces (`c0`
//! towards clients, `b0` towards backends) with fixed MACs, addresses and
//! permanent neighbour entries, so `bpf_fib_lookup` answers
//! deterministically; the program is loaded (not attached) and runs through
//! BPF_PROG_TEST_RUN with `ingress_ifindex` set to one of them.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use failover_user::{
    config,
    dataplane::{Dataplane, layout::Layout},
};

use crate::{
    netns::Netns,
    pkt::{L4, Pkt},
    require_root, unique,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const LB_C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const Q_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
pub const LB_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const P_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const S_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x03];

/// The permanent neighbour entries of the lab: (address, MAC, interface).
pub const NEIGHBOURS: [(&str, [u8; 6], &str); 7] = [
    ("198.18.0.2", CLIENT_MAC, "c0"),
    ("198.18.0.5", Q_MAC, "c0"),
    ("2001:db8::2", CLIENT_MAC, "c0"),
    ("198.18.1.2", P_MAC, "b0"),
    ("198.18.1.3", S_MAC, "b0"),
    ("2001:db8:1::2", P_MAC, "b0"),
    ("2001:db8:1::3", S_MAC, "b0"),
];

pub const CONFIG: &str = r#"
[[service]]
name = "web"
vip = "198.18.0.10"
port = 80
[[service.backend]]
name = "p"
address = "198.18.1.2"
port = 8080
[[service.backend]]
name = "s"
address = "198.18.1.3"
port = 8080
tier = 1

[[service]]
name = "dns"
vip = "198.18.0.10"
port = 53
protocol = "udp"
[[service.backend]]
name = "p"
address = "198.18.1.2"
port = 5353

[[service]]
name = "web-dsr"
vip = "198.18.0.11"
port = 80
mode = "dsr"
[[service.backend]]
name = "p"
address = "198.18.1.2"

[[service]]
name = "dns-dsr"
vip = "198.18.0.11"
port = 53
protocol = "udp"
mode = "dsr"
[[service.backend]]
name = "s"
address = "198.18.1.3"

[[service]]
name = "web6"
vip = "2001:db8::10"
port = 80
[[service.backend]]
name = "p"
address = "2001:db8:1::2"
port = 8080
[[service.backend]]
name = "s"
address = "2001:db8:1::3"
port = 8080
tier = 1

[[service]]
name = "dead"
vip = "198.18.0.12"
port = 80
[[service.backend]]
name = "p"
address = "198.18.1.2"
port = 8081
state = "down"

[[service]]
name = "dead-pass"
vip = "198.18.0.13"
port = 80
on_no_backend = "pass"
[[service.backend]]
name = "p"
address = "198.18.1.2"
port = 8082
state = "disabled"

[[service]]
name = "noneigh"
vip = "198.18.0.14"
port = 80
[[service.backend]]
name = "x"
address = "198.18.1.9"
port = 8080

[[service]]
name = "local-dsr"
vip = "198.18.0.15"
port = 80
mode = "dsr"
[[service.backend]]
name = "q"
address = "198.18.0.5"
"#;

/// The packet-test environment: a namespace with the LB's interfaces, the
/// program loaded (not attached: it runs through BPF_PROG_TEST_RUN), and the
/// config above written into its maps.
pub struct Lab {
    pub dp: Dataplane,
    pub layout: Layout,
    pub c0: u32,
    pub b0: u32,
    // Field order matters: leave the namespace before deleting it.
    _guard: crate::netns::NsGuard,
    _ns: Netns,
}

impl Lab {
    /// `ip` in the lab's namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self._ns.ip(args)
    }
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Lab {
    // No `Default`: building the lab needs root and may fail loudly.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self::with_config(CONFIG)
    }

    /// The same environment with another config.
    pub fn with_config(config_text: &str) -> Self {
        require_root();
        let ns = Netns::new(&unique("fop")).expect("creating the test namespace");
        let setup = || -> anyhow::Result<()> {
            ns.ip(&[
                "link",
                "add",
                "c0",
                "address",
                &mac(LB_C_MAC),
                "type",
                "veth",
                "peer",
                "name",
                "c1",
            ])?;
            ns.ip(&[
                "link",
                "add",
                "b0",
                "address",
                &mac(LB_B_MAC),
                "type",
                "veth",
                "peer",
                "name",
                "b1",
            ])?;
            for l in ["c0", "c1", "b0", "b1"] {
                ns.ip(&["link", "set", l, "up"])?;
            }
            ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "c0"])?;
            ns.ip(&["addr", "add", "198.18.1.1/24", "dev", "b0"])?;
            ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "c0", "nodad"])?;
            ns.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "b0", "nodad"])?;
            for (addr, m, dev) in NEIGHBOURS {
                ns.ip(&[
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    &mac(m),
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
            ns.forwarding()
        };
        setup().expect("setting up the test namespace");
        let guard = ns.enter().expect("entering the test namespace");
        let cfg = config::parse(config_text, "packet-test").expect("test config is valid");
        let mut dp = Dataplane::load(&cfg.limits, None).expect("loading the XDP program");
        let layout = Layout::assign(&cfg, None).expect("layout");
        dp.apply(&cfg, &layout, &Default::default())
            .expect("writing the config into the maps");
        dp.allow_egress("c0").expect("devmap c0");
        dp.allow_egress("b0").expect("devmap b0");
        let c0 = failover_user::dataplane::ifindex("c0").expect("c0");
        let b0 = failover_user::dataplane::ifindex("b0").expect("b0");
        Lab {
            dp,
            layout,
            c0,
            b0,
            _guard: guard,
            _ns: ns,
        }
    }

    /// Runs the program once on `frame` arriving on `ifindex`.
    pub fn run(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(ifindex, frame).expect("BPF_PROG_TEST_RUN")
    }

    /// [`Lab::run`] that reports the kernel's refusal (e.g. EINVAL for a
    /// frame shorter than an Ethernet header) instead of panicking.
    pub fn try_run(&self, ifindex: u32, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let prog = self.dp.program()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = Vec::with_capacity(24);
        for v in [0u32, frame.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    pub fn reasons(&mut self) -> Vec<u64> {
        self.dp.reason_counts().expect("reason counters")
    }

    pub fn backend(&self, svc: &str, b: &str) -> u32 {
        self.layout.backend_id(svc, b).expect("backend in layout")
    }

    pub fn set_state(&mut self, svc: &str, b: &str, state: u32) {
        let id = self.backend(svc, b);
        self.dp.set_state(id, state).expect("set state");
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The client's packet to a VIP, as it arrives on c0.
pub fn from_client(dst: &str, l4: L4) -> Pkt {
    let src = if dst.contains(':') {
        "2001:db8::2"
    } else {
        "198.18.0.2"
    };
    let mut p = Pkt::new(ip(src), ip(dst), l4);
    p.smac = CLIENT_MAC;
    p.dmac = LB_C_MAC;
    p
}

/// What NAT towards a backend must turn `p` into.
pub fn natted(p: &Pkt, backend: &str, port: u16, dmac: [u8; 6], smac: [u8; 6]) -> Pkt {
    let mut e = p.clone();
    e.dst = ip(backend);
    let sport = match p.l4 {
        L4::Tcp { sport, .. } | L4::Udp { sport, .. } => sport,
        L4::Echo { .. } => 0,
    };
    e.l4.set_ports(sport, port);
    e.ttl -= 1;
    e.dmac = dmac;
    e.smac = smac;
    e
}
