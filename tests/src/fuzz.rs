//! The packet fuzzer's logic (`failover-fuzz`, `cargo xtask fuzz`): a
//! seeded PRNG, seed packets, mutations, and an independent model of the
//! packet rules that judges every output of the XDP program.
//!
//! The model is written from the documented rules (docs/architecture.md, "Packet rules",
//! `failover_common::Reason`), not from the eBPF code: its parser is strict
//! (a header is only "there" if it lies inside the IP packet's declared
//! length), it knows the lab's neighbour table and connected subnets, and
//! the backend states the fuzzer wrote. For each packet it lists what may
//! legitimately come out (usually exactly one outcome) and [`Model::judge`]
//! checks the program's verdict and bytes against that list:
//!
//! 1. never XDP_ABORTED (nor an unknown action);
//! 2. a packet not for a VIP (and not a reply of a tracked NAT flow) passes
//!    byte-identical;
//! 3. a forwarded (or rewritten-and-passed) VIP packet goes to a backend that
//!    is UP (or UP/DRAINING for a flow already pinned to it), with exactly
//!    the expected bytes changed, MACs from the neighbour table, and correct
//!    checksums (`pkt::verify_checksums`) whenever the input's were correct;
//!    an ICMP error about a VIP flow follows the flow (to its backend, or
//!    back to its client as if from the VIP) with every patched checksum
//!    consistent with the input's;
//! 4. everything else gets the documented verdict, and the per-CPU reason
//!    counters move exactly as the model says ([`check_counters`], batch
//!    by batch).
//!
//! Known limits added with the flow lifecycle (issue 11): the model reads
//! `CONNTRACK`, `EMBRYONIC` and `DIRECT` for the packet's flow before it
//! runs and predicts from them, so it trusts what earlier packets recorded;
//! after the run it checks only recording rules no LRU eviction can make
//! look wrong ([`Model::check_tables`]: no entry for a TCP non-SYN without
//! one, a direct connection's SYN in `DIRECT` with the VIP flow gone).
//! `CLOCK` stays 0 (nothing expires; expiry is not modelled). For
//! addresses outside the lab's subnets the FIB may also answer NOT_FWDED
//! (an untracked reply then passes untouched): taken from the output.
//!
//! ICMP errors about VIP flows and VLAN (issue 11, points 4 and 6): an
//! error's quoted flow is judged from its `CONNTRACK`/`EMBRYONIC` entry
//! (and, towards a client, `DIRECT`) read before it runs, like any flow;
//! an error records no entry (checked). Its checksums are patched
//! incrementally, so they are judged consistent rather than right: the
//! one's-complement sum over what each covers must be the same (mod
//! 0xffff) after as before, so a wrong checksum stays exactly as wrong,
//! and 0x0000/0xffff are told apart only for a quoted UDP checksum (zero
//! stays zero, over IPv6 too; non-zero never becomes zero). As the program
//! does, the quoted IPv6 header's version is not looked at, and an error
//! to a VIP follows the flow's entry whatever its backend's state. Not
//! modelled: the passive ICMP signals (passive detection is off in the
//! lab) and PassNoEgress (both lab interfaces are in the devmap). A frame
//! forwarded by XDP_TX/XDP_REDIRECT after a FIB lookup leaves without its
//! VLAN tag; passed frames and the RST keep it. An 802.1ad-tagged input's
//! checksums are judged as if untagged (`pkt::verify_checksums` knows
//! 802.1Q only).

use std::net::IpAddr;

use failover_common::{
    FlowKey, FlowValue, PROTO_TCP, PROTO_UDP, Reason, STATE_DOWN_RESET, STATE_DRAINING, STATE_UP,
};
use failover_user::{
    config::{Config, Mode, NoBackend},
    dataplane::addr16,
    dataplane::layout::Layout,
};

use crate::{
    pkt::{L4, Pkt, arp_request, icmp_error, inet_checksum, verify_checksums},
    pktlab::{
        CLIENT_MAC, LB_B_MAC, LB_C_MAC, NEIGHBOURS, P_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        XDP_TX, from_client, ip,
    },
};

pub const XDP_ABORTED: u32 = 0;
/// MTU of the lab's interfaces (veth default).
pub const MTU: usize = 1500;
/// Largest frame the fuzzer makes (BPF_PROG_TEST_RUN takes up to about a
/// page minus head- and tailroom).
pub const MAX_FRAME: usize = 3000;

// ------------------------------------------------------------------ PRNG

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator of iteration `i` of a run with `seed`: each packet can
    /// be regenerated on its own.
    pub fn for_iteration(seed: u64, i: u64) -> Self {
        let mut r = Rng(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    /// One of `v`, or (as often as each of them) a value from `random`.
    pub fn pick_or<T: Copy>(&mut self, v: &[T], random: impl FnOnce(&mut Self) -> T) -> T {
        let i = self.below(v.len() + 1);
        if i == v.len() { random(self) } else { v[i] }
    }
}

// ------------------------------------------------------------------ parsing

/// What the strict parser found at L2/L3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Not IPv4/IPv6 (or the Ethernet/VLAN header is cut).
    NotIp,
    /// An IP header that is cut or invalid (`dst` set when readable).
    BadIp,
    /// A valid IP header whose lengths fit the frame.
    Ip,
}

/// A frame as the documented rules see it.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub kind: Kind,
    pub v6: bool,
    pub l3: usize,
    /// End of the IP packet (`l3` + total length, or + 40 + payload length).
    pub ip_end: usize,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// L4 protocol (after IPv6 extension headers).
    pub proto: u8,
    pub l4: usize,
    pub fragment: bool,
    /// TCP/UDP with its whole fixed header inside the IP packet.
    pub l4_ok: bool,
    /// TCP/UDP (or an extension header before it) cut short, or a
    /// TCP/UDP header that disagrees with the IP header: a TCP data offset
    /// below 5 or past the IP packet, a UDP length other than the IP
    /// payload's, an IPv6 UDP checksum of zero; or (any protocol) IPv6
    /// extension headers that end past the IP packet.
    pub l4_truncated: bool,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags, sequence and acknowledgement numbers (when `l4_ok`).
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// IPv4: the header checksum is right (always true for IPv6).
    pub ip_sum_ok: bool,
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn addr_at(f: &[u8], at: usize, v6: bool) -> Option<IpAddr> {
    if v6 {
        let b: [u8; 16] = f.get(at..at + 16)?.try_into().ok()?;
        Some(IpAddr::from(b))
    } else {
        let b: [u8; 4] = f.get(at..at + 4)?.try_into().ok()?;
        Some(IpAddr::from(b))
    }
}

/// The strict parse: Ethernet with at most one 802.1Q/802.1ad tag, IPv4
/// (IHL >= 5, total length >= IHL and inside the frame) or IPv6 (payload
/// inside the frame, at most four hop-by-hop/routing/destination-options
/// headers walked, a fragment header makes a fragment), then a TCP/UDP
/// header that must lie inside the IP packet.
pub fn parse(f: &[u8]) -> Parsed {
    let mut p = Parsed {
        kind: Kind::NotIp,
        v6: false,
        l3: 14,
        ip_end: 0,
        src: None,
        dst: None,
        proto: 0,
        l4: 0,
        fragment: false,
        l4_ok: false,
        l4_truncated: false,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        ip_sum_ok: true,
    };
    let Some(mut et) = be16(f, 12) else {
        return p;
    };
    if et == 0x8100 || et == 0x88a8 {
        let Some(inner) = be16(f, 16) else {
            return p;
        };
        et = inner;
        p.l3 = 18;
    }
    let l3 = p.l3;
    match et {
        0x0800 => {
            p.kind = Kind::BadIp;
            if f.len() < l3 + 20 {
                return p;
            }
            p.dst = addr_at(f, l3 + 16, false);
            let vihl = f[l3];
            let ihl = usize::from(vihl & 0xf) * 4;
            let tot = usize::from(be16(f, l3 + 2).unwrap_or(0));
            if vihl >> 4 != 4 || ihl < 20 || tot < ihl || l3 + tot > f.len() {
                return p;
            }
            p.kind = Kind::Ip;
            p.src = addr_at(f, l3 + 12, false);
            p.proto = f[l3 + 9];
            p.ip_end = l3 + tot;
            p.l4 = l3 + ihl;
            p.ip_sum_ok = inet_checksum(&f[l3..l3 + ihl]) == 0;
            p.fragment = be16(f, l3 + 6).unwrap_or(0) & 0x3fff != 0;
            if p.fragment {
                return p;
            }
        }
        0x86dd => {
            p.kind = Kind::BadIp;
            p.v6 = true;
            if f.len() < l3 + 40 {
                return p;
            }
            p.dst = addr_at(f, l3 + 24, true);
            let plen = usize::from(be16(f, l3 + 4).unwrap_or(0));
            if f[l3] >> 4 != 6 || l3 + 40 + plen > f.len() {
                return p;
            }
            p.kind = Kind::Ip;
            p.src = addr_at(f, l3 + 8, true);
            p.ip_end = l3 + 40 + plen;
            p.proto = f[l3 + 6];
            p.l4 = l3 + 40;
            for _ in 0..4 {
                match p.proto {
                    0 | 43 | 60 => {
                        if p.l4 + 2 > p.ip_end {
                            p.l4_truncated = true;
                            return p;
                        }
                        p.proto = f[p.l4];
                        p.l4 += (usize::from(f[p.l4 + 1]) + 1) * 8;
                    }
                    44 => {
                        p.fragment = true;
                        return p;
                    }
                    _ => break,
                }
            }
        }
        _ => return p,
    }
    // Extension headers that end past the IP packet leave no room for any
    // L4 header (whatever the protocol).
    if p.l4 > p.ip_end {
        p.l4_truncated = true;
        return p;
    }
    let need = match p.proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return p,
    };
    if p.l4 + need > p.ip_end {
        p.l4_truncated = true;
        return p;
    }
    let l4_len = p.ip_end - p.l4;
    let consistent = if p.proto == PROTO_TCP {
        let doff = usize::from(f[p.l4 + 12] >> 4) * 4;
        (20..=l4_len).contains(&doff)
    } else {
        usize::from(be16(f, p.l4 + 4).unwrap_or(0)) == l4_len
            && !(p.v6 && be16(f, p.l4 + 6) == Some(0))
    };
    if !consistent {
        p.l4_truncated = true;
        return p;
    }
    p.sport = be16(f, p.l4).unwrap_or(0);
    p.dport = be16(f, p.l4 + 2).unwrap_or(0);
    if p.proto == PROTO_TCP {
        let w = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
        p.seq = w(p.l4 + 4);
        p.ack = w(p.l4 + 8);
        p.tcp_flags = f[p.l4 + 13];
    }
    p.l4_ok = true;
    p
}

// ------------------------------------------------------------------ seeds

/// A valid packet the mutations start from.
#[derive(Clone, Debug)]
pub struct Seed {
    pub name: &'static str,
    pub frame: Vec<u8>,
    /// Arrives on the backend side (`b0`) rather than the client side.
    pub from_backend: bool,
}

/// A client's frame to the LB: Ethernet, an IPv4 header (no options,
/// checksummed) or an IPv6 header (no extension headers), then `payload`
/// of protocol `proto`.
pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = LB_C_MAC.to_vec();
    f.extend_from_slice(&CLIENT_MAC);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0x43, 0x21, 0, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = inet_checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(payload);
    f
}

/// An ICMP destination-unreachable (port unreachable) from `from` to `to`
/// quoting the IP packet of `quoted` (a frame): IPv4 quotes the header and
/// 8 bytes, IPv6 as much as fits.
pub fn icmp_unreachable(from: IpAddr, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let q = &quoted[14..];
    if from.is_ipv4() {
        let q = &q[..q.len().min(28)];
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(q);
        let c = inet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ip_frame(from, to, 1, &icmp)
    } else {
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(q);
        let (IpAddr::V6(s), IpAddr::V6(d)) = (from, to) else {
            panic!("mixed families")
        };
        let mut pseudo = s.octets().to_vec();
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&icmp);
        let c = inet_checksum(&pseudo);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ip_frame(from, to, 58, &icmp)
    }
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        payload: payload.to_vec(),
    }
}

/// A backend's packet to the client (arrives on `b0`).
fn from_backend(src: &str, dst: &str, l4: L4) -> Pkt {
    let mut p = Pkt::new(ip(src), ip(dst), l4);
    p.smac = P_MAC;
    p.dmac = LB_B_MAC;
    p
}

/// The seed packets, for the lab config (`pktlab::CONFIG`): VIP and non-VIP,
/// both families, TCP/UDP, NAT and DSR services, VLAN, IPv4 options, IPv6
/// extension headers, fragments, ICMP errors quoting VIP flows, ARP, and
/// replies from NAT backends (the client seeds with the same ports open the
/// flows these replies belong to).
pub fn seeds() -> Vec<Seed> {
    let mut v = Vec::new();
    let mut add = |name, frame: Vec<u8>, from_backend: bool| {
        v.push(Seed {
            name,
            frame,
            from_backend,
        })
    };
    let syn = from_client("198.18.0.10", tcp(40000, 80, 0x02, b""));
    add("v4 tcp syn to nat web", syn.bytes(), false);
    add(
        "v4 tcp data to nat web",
        from_client(
            "198.18.0.10",
            tcp(40000, 80, 0x18, b"GET / HTTP/1.1\r\n\r\n"),
        )
        .bytes(),
        false,
    );
    add(
        "v4 udp to nat dns",
        from_client("198.18.0.10", L4::udp(40001, 53, b"query")).bytes(),
        false,
    );
    add(
        "v4 udp without checksum to nat dns",
        from_client(
            "198.18.0.10",
            L4::Udp {
                sport: 40002,
                dport: 53,
                payload: b"q".to_vec(),
                no_checksum: true,
            },
        )
        .bytes(),
        false,
    );
    add(
        "v6 tcp to nat web6",
        from_client("2001:db8::10", tcp(40003, 80, 0x18, b"GET /")).bytes(),
        false,
    );
    let mut p = from_client("198.18.0.10", tcp(40004, 80, 0x10, b"x"));
    p.vlan = Some(100);
    add("vlan v4 tcp to nat web", p.bytes(), false);
    let mut p = from_client("198.18.0.10", tcp(40005, 80, 0x10, b""));
    p.ip_options = vec![1, 1, 0x44, 4, 5, 0, 0, 0];
    add("v4 options tcp to nat web", p.bytes(), false);
    let mut p = from_client("2001:db8::10", tcp(40006, 80, 0x02, b""));
    p.v6_dstopts = true;
    add("v6 dstopts tcp to nat web6", p.bytes(), false);
    let mut p = from_client("2001:db8::10", tcp(40007, 80, 0x02, b""));
    p.v6_fragment = true;
    add("v6 fragment to web6", p.bytes(), false);
    let mut p = from_client("198.18.0.10", tcp(40008, 80, 0x02, b""));
    p.frag = 0x2000;
    add("v4 fragment to web", p.bytes(), false);
    // Plain client packets: (name, VIP, L4).
    for (name, vip, l4) in [
        (
            "v4 tcp to dsr web-dsr",
            "198.18.0.11",
            tcp(40010, 80, 0x02, b""),
        ),
        (
            "v4 udp to dsr dns-dsr",
            "198.18.0.11",
            L4::udp(40011, 53, b"q"),
        ),
        (
            "v4 tcp to dsr local-dsr (XDP_TX)",
            "198.18.0.15",
            tcp(40012, 80, 0x10, b""),
        ),
        (
            "v4 tcp to dead (no backend, drop)",
            "198.18.0.12",
            tcp(40013, 80, 0x02, b""),
        ),
        (
            "v4 tcp to dead-pass (no backend, pass)",
            "198.18.0.13",
            tcp(40014, 80, 0x02, b""),
        ),
        (
            "v4 tcp to noneigh (backend without neighbour)",
            "198.18.0.14",
            tcp(40015, 80, 0x02, b""),
        ),
        (
            "v4 tcp to a VIP, other port",
            "198.18.0.10",
            tcp(40016, 443, 0x02, b""),
        ),
        ("icmp echo to a VIP", "198.18.0.10", L4::Echo { id: 9 }),
    ] {
        add(name, from_client(vip, l4).bytes(), false);
    }
    let mut p = Pkt::new(
        ip("198.18.0.2"),
        ip("198.18.0.99"),
        tcp(40020, 80, 0x02, b""),
    );
    p.dmac = LB_C_MAC;
    add("v4 tcp not for a VIP", p.bytes(), false);
    add(
        "v6 udp not for a VIP",
        Pkt::new(
            ip("2001:db8::2"),
            ip("2001:db8::99"),
            L4::udp(40021, 53, b"x"),
        )
        .bytes(),
        false,
    );
    add(
        "arp who-has VIP",
        arp_request(CLIENT_MAC, [198, 18, 0, 2], [198, 18, 0, 10]),
        false,
    );
    // ICMP errors about VIP flows: the client's host says the VIP's packet
    // to it could not be delivered (quoting VIP -> client).
    for (name, vip, client, port) in [
        (
            "icmp port unreachable quoting a v4 VIP flow",
            "198.18.0.10",
            "198.18.0.2",
            40000,
        ),
        (
            "icmpv6 unreachable quoting a v6 VIP flow",
            "2001:db8::10",
            "2001:db8::2",
            40003,
        ),
    ] {
        let quoted = Pkt::new(ip(vip), ip(client), tcp(80, port, 0x12, b"")).bytes();
        add(name, icmp_unreachable(ip(client), ip(vip), &quoted), false);
    }
    // More errors to a VIP (from a router on the clients' side), quoting
    // whole packets (the quoted L4 checksum inside) or the first 8 bytes:
    // (name, sender, VIP, client, quoted L4, type, code, whole quote).
    for (name, from, vip, client, l4, ty, code, whole) in [
        (
            "icmp frag needed to a v4 VIP (whole tcp quote)",
            "198.18.0.7",
            "198.18.0.10",
            "198.18.0.2",
            tcp(80, 40000, 0x18, b"HTTP/1.1 200 OK"),
            3,
            4,
            true,
        ),
        (
            "icmp time exceeded to a v4 VIP (udp quote)",
            "198.18.0.7",
            "198.18.0.10",
            "198.18.0.2",
            L4::udp(53, 40001, b"answer"),
            11,
            0,
            false,
        ),
        (
            "icmp time exceeded to a v4 VIP (udp quote without checksum)",
            "198.18.0.7",
            "198.18.0.10",
            "198.18.0.2",
            L4::Udp {
                sport: 53,
                dport: 40002,
                payload: b"a".to_vec(),
                no_checksum: true,
            },
            11,
            0,
            true,
        ),
        (
            "icmp time exceeded to a DSR VIP",
            "198.18.0.7",
            "198.18.0.11",
            "198.18.0.2",
            tcp(80, 40010, 0x12, b""),
            11,
            0,
            true,
        ),
        (
            "icmpv6 packet too big to a v6 VIP",
            "2001:db8::7",
            "2001:db8::10",
            "2001:db8::2",
            tcp(80, 40003, 0x10, b"200 OK"),
            2,
            0,
            true,
        ),
    ] {
        let q = Pkt::new(ip(vip), ip(client), l4).bytes();
        let q = &q[14..];
        let q = if whole { q } else { &q[..q.len().min(28)] };
        add(
            name,
            icmp_error(
                CLIENT_MAC,
                LB_C_MAC,
                ip(from),
                ip(vip),
                64,
                ty,
                code,
                [0, 0, 0x05, 0x78],
                q,
            ),
            false,
        );
    }
    // Errors to a client from the backends' side, quoting the client's
    // packet to a NAT backend endpoint: from the backend itself (its
    // address becomes the VIP too) or from a router.
    for (name, from, client, backend, l4, ty, code, whole) in [
        (
            "icmp frag needed from web backend p to a v4 client",
            "198.18.1.2",
            "198.18.0.2",
            "198.18.1.2",
            tcp(40000, 8080, 0x18, b"GET / HTTP/1.1\r\n\r\n"),
            3,
            4,
            true,
        ),
        (
            "icmp time exceeded from a router to a v4 client (udp quote)",
            "198.18.1.7",
            "198.18.0.2",
            "198.18.1.2",
            L4::udp(40001, 5353, b"query"),
            11,
            0,
            false,
        ),
        (
            "icmpv6 packet too big from web6 backend p to a v6 client",
            "2001:db8:1::2",
            "2001:db8::2",
            "2001:db8:1::2",
            tcp(40003, 8080, 0x18, b"GET /"),
            2,
            0,
            true,
        ),
        (
            "icmpv6 time exceeded from a router to a v6 client",
            "2001:db8:1::7",
            "2001:db8::2",
            "2001:db8:1::2",
            tcp(40003, 8080, 0x10, b""),
            3,
            0,
            true,
        ),
    ] {
        let q = Pkt::new(ip(client), ip(backend), l4).bytes();
        let q = &q[14..];
        let q = if whole { q } else { &q[..q.len().min(28)] };
        add(
            name,
            icmp_error(
                P_MAC,
                LB_B_MAC,
                ip(from),
                ip(client),
                64,
                ty,
                code,
                [0, 0, 0x05, 0x78],
                q,
            ),
            true,
        );
    }
    // Replies of NAT backends, for the client flows above.
    add(
        "v4 tcp reply from web backend p",
        from_backend("198.18.1.2", "198.18.0.2", tcp(8080, 40000, 0x12, b"")).bytes(),
        true,
    );
    add(
        "v4 udp reply from dns backend p",
        from_backend("198.18.1.2", "198.18.0.2", L4::udp(5353, 40001, b"answer")).bytes(),
        true,
    );
    add(
        "v6 tcp reply from web6 backend p",
        from_backend(
            "2001:db8:1::2",
            "2001:db8::2",
            tcp(8080, 40003, 0x10, b"200"),
        )
        .bytes(),
        true,
    );
    let mut p = from_backend("198.18.1.2", "198.18.0.2", tcp(8080, 40004, 0x10, b""));
    p.vlan = Some(100);
    add("vlan v4 tcp reply from web backend p", p.bytes(), true);
    add(
        "v4 tcp from a backend, no flow (probe reply)",
        from_backend("198.18.1.3", "198.18.1.1", tcp(8080, 50000, 0x12, b"")).bytes(),
        true,
    );
    v
}

// ------------------------------------------------------------------ mutation

/// Where the layers of a frame start, found leniently (for choosing
/// mutation points, not for judging).
#[derive(Clone, Debug, Default)]
struct Layers {
    l3: usize,
    v4: bool,
    v6: bool,
    /// L4 offset (IPv4: after the options; IPv6: after the extension
    /// headers walked), if the IP header is there.
    l4: Option<usize>,
    proto: u8,
    /// Offset of the first IPv6 extension header, if any.
    ext: Option<usize>,
}

fn layers(f: &[u8]) -> Layers {
    let mut l = Layers {
        l3: 14,
        ..Layers::default()
    };
    let Some(mut et) = be16(f, 12) else {
        return l;
    };
    if et == 0x8100 || et == 0x88a8 {
        et = be16(f, 16).unwrap_or(0);
        l.l3 = 18;
    }
    let l3 = l.l3;
    if et == 0x0800 {
        l.v4 = true;
        if f.len() >= l3 + 20 {
            l.l4 = Some(l3 + usize::from(f[l3] & 0xf) * 4);
            l.proto = f[l3 + 9];
        }
    } else if et == 0x86dd {
        l.v6 = true;
        if f.len() >= l3 + 40 {
            let mut next = f[l3 + 6];
            let mut at = l3 + 40;
            for _ in 0..4 {
                if !matches!(next, 0 | 43 | 60 | 44) || at + 2 > f.len() {
                    break;
                }
                l.ext.get_or_insert(at);
                let len = if next == 44 {
                    8
                } else {
                    (usize::from(f[at + 1]) + 1) * 8
                };
                next = f[at];
                at += len;
            }
            l.proto = next;
            l.l4 = Some(at);
        }
    }
    l
}

const ADDRS4: [&str; 12] = [
    "198.18.0.10",
    "198.18.0.11",
    "198.18.0.12",
    "198.18.0.13",
    "198.18.0.14",
    "198.18.0.15",
    "198.18.0.2",
    "198.18.0.5",
    "198.18.1.2",
    "198.18.1.3",
    "198.18.0.1",
    "198.18.1.9",
];
const ADDRS6: [&str; 7] = [
    "2001:db8::10",
    "2001:db8::2",
    "2001:db8:1::2",
    "2001:db8:1::3",
    "2001:db8::1",
    "2001:db8::99",
    "2001:db8:1::9",
];
const PORTS: [u16; 10] = [80, 53, 8080, 5353, 8081, 8082, 443, 0, 65535, 40000];

fn put16(f: &mut [u8], at: usize, v: u16) {
    if let Some(s) = f.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

fn set_addr(f: &mut [u8], at: usize, rng: &mut Rng, v6: bool) {
    let n = if v6 { 16 } else { 4 };
    let Some(slot) = f.get_mut(at..at + n) else {
        return;
    };
    if rng.chance(1, 8) {
        for b in slot.iter_mut() {
            *b = rng.byte();
        }
        return;
    }
    let a: &&str = if v6 {
        rng.pick(&ADDRS6)
    } else {
        rng.pick(&ADDRS4)
    };
    let a = ip(a);
    match a {
        IpAddr::V4(a) => slot.copy_from_slice(&a.octets()),
        IpAddr::V6(a) => slot.copy_from_slice(&a.octets()),
    }
}

/// Applies one random mutation to `f` (the frame stays >= 14 and <=
/// [`MAX_FRAME`] bytes). Returns its name (for the statistics).
pub fn mutate(f: &mut Vec<u8>, rng: &mut Rng) -> &'static str {
    let l = layers(f);
    let l3 = l.l3;
    let name = match rng.below(19) {
        0 => {
            // Truncate at (or next to) a layer boundary.
            let mut cuts = vec![
                12,
                14,
                16,
                18,
                l3 + 1,
                l3 + 10,
                l3 + 19,
                l3 + 20,
                l3 + 39,
                l3 + 40,
            ];
            if let Some(l4) = l.l4 {
                cuts.extend([
                    l4,
                    l4 + 1,
                    l4 + 4,
                    l4 + 7,
                    l4 + 8,
                    l4 + 13,
                    l4 + 19,
                    l4 + 20,
                ]);
            }
            if let Some(e) = l.ext {
                cuts.extend([e + 1, e + 2, e + 8]);
            }
            let n = *rng.pick(&cuts);
            f.truncate(n);
            "truncate-boundary"
        }
        1 => {
            let n = rng.below(f.len() + 1);
            f.truncate(n);
            "truncate-random"
        }
        2 => {
            for _ in 0..1 + rng.below(64) {
                f.push(rng.byte());
            }
            "extend-random"
        }
        3 => {
            let to = match rng.below(4) {
                0 => 60,
                1 => MTU + 14 + 1 + rng.below(100),
                _ => f.len() + 1 + rng.below(40),
            };
            if f.len() < to {
                f.resize(to, 0);
            }
            "extend-padding"
        }
        4 => {
            if let Some(at) = l.l4.map(|o| o + 13).filter(|&o| o < f.len()) {
                f[at] = rng.pick_or(
                    &[0x02, 0x12, 0x10, 0x18, 0x04, 0x14, 0x01, 0x11, 0x00, 0xff],
                    |r| r.byte(),
                );
            }
            "tcp-flags"
        }
        5 => {
            if l.v4 {
                let w = rng.pick_or(&[0x2000, 0x0001, 0x4000, 0x2001, 0x1fff, 0x8000], |r| {
                    r.next_u64() as u16
                });
                put16(f, l3 + 6, w);
            } else if l.v6 {
                // Insert a fragment header right after the fixed header.
                insert_v6_ext(f, l3, 44, &[0, 0, 0, 1, 0, 0, 0, 9], rng);
            }
            "fragment-bits"
        }
        6 => {
            if let Some(b) = f.get_mut(l3) {
                *b = (rng.pick_or(&[4u8, 6, 0, 5, 15], |r| r.byte() >> 4) << 4) | (*b & 0xf);
            }
            "ip-version"
        }
        7 => {
            if l.v4
                && let Some(b) = f.get_mut(l3)
            {
                *b = (*b & 0xf0) | (rng.byte() & 0xf);
            }
            "ipv4-ihl"
        }
        8 => {
            let at = if l.v6 { l3 + 4 } else { l3 + 2 };
            let cur = be16(f, at).unwrap_or(0);
            let v = match rng.below(5) {
                0 => 0,
                1 => cur.wrapping_add(1 + rng.below(8) as u16),
                2 => cur.wrapping_sub(1 + rng.below(8) as u16),
                3 => 0xffff,
                _ => rng.next_u64() as u16,
            };
            put16(f, at, v);
            "ip-length"
        }
        9 => {
            let at = if l.v6 { l3 + 6 } else { l3 + 9 };
            if let Some(b) = f.get_mut(at) {
                *b = rng.pick_or(&[6, 17, 1, 58, 0, 43, 44, 60, 59, 132], |r| r.byte());
            }
            "next-header"
        }
        10 => {
            if l.v6 {
                if let Some(e) = l.ext.filter(|_| rng.chance(1, 2)) {
                    if let Some(b) = f.get_mut(e + 1) {
                        *b = rng.pick_or(&[0, 1, 2, 255], |r| r.byte());
                    }
                } else {
                    let t = *rng.pick(&[0u8, 43, 60]);
                    insert_v6_ext(f, l3, t, &[0, 0, 1, 4, 0, 0, 0, 0], rng);
                }
            }
            "ext-header"
        }
        11 => {
            if let Some(l4) = l.l4 {
                let at = l4 + 2 * rng.below(2);
                let v = if rng.chance(1, 4) {
                    rng.next_u64() as u16
                } else {
                    *rng.pick(&PORTS)
                };
                put16(f, at, v);
            }
            "port"
        }
        12 => {
            if l.v4 {
                set_addr(f, l3 + 12 + 4 * rng.below(2), rng, false);
            } else if l.v6 {
                set_addr(f, l3 + 8 + 16 * rng.below(2), rng, true);
            }
            "address"
        }
        13 => {
            let (a, n) = if l.v6 { (l3 + 8, 16) } else { (l3 + 12, 4) };
            if f.len() >= a + 2 * n {
                let (x, y) = f[a..a + 2 * n].split_at_mut(n);
                x.swap_with_slice(y);
                if let Some(l4) = l.l4.filter(|&o| o + 4 <= f.len()) {
                    let (x, y) = f[l4..l4 + 4].split_at_mut(2);
                    x.swap_with_slice(y);
                }
            }
            "swap-src-dst"
        }
        14 => {
            match rng.below(3) {
                0 => {
                    // Insert a VLAN tag (or a second one).
                    let tpid: u16 = *rng.pick(&[0x8100, 0x88a8]);
                    let tag = [(tpid >> 8) as u8, tpid as u8, 0, rng.byte()];
                    let at = 12.min(f.len());
                    f.splice(at..at, tag);
                }
                1 if l3 == 18 && f.len() >= 18 => {
                    f.drain(12..16);
                }
                _ => {
                    let et: u16 = rng
                        .pick_or(&[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x88cc], |r| {
                            r.next_u64() as u16
                        });
                    put16(f, l3 - 2, et);
                }
            }
            "ethertype-vlan"
        }
        15 => {
            for _ in 0..1 + rng.below(8) {
                if f.is_empty() {
                    break;
                }
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
            "bit-flips"
        }
        16 => {
            let at = if l.v6 { l3 + 7 } else { l3 + 8 };
            if let Some(b) = f.get_mut(at) {
                *b = rng.pick_or(&[0, 1, 2, 255], |r| r.byte());
            }
            "ttl"
        }
        17 => {
            icmp_quote(f, &l, rng);
            "icmp-quote"
        }
        _ => {
            if l.v4 && f.len() >= l3 + 20 {
                // Add IPv4 options (NOPs, end of list, or junk) and raise
                // IHL to match; lengths are fixed up later (or not).
                let ihl = usize::from(f[l3] & 0xf) * 4;
                let add = 4 * (1 + rng.below(4));
                if ihl >= 20 && ihl + add <= 60 && l3 + ihl <= f.len() {
                    let opt: Vec<u8> = (0..add)
                        .map(|_| rng.pick_or(&[1u8, 1, 1, 0], |r| r.byte()))
                        .collect();
                    f.splice(l3 + ihl..l3 + ihl, opt);
                    f[l3] = (f[l3] & 0xf0) | ((ihl + add) / 4) as u8;
                }
            }
            "ipv4-options"
        }
    };
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f.truncate(MAX_FRAME);
    name
}

/// Mutates an ICMP/ICMPv6 message's type or code, or the packet it quotes
/// (taken to be of the outer family, at ICMP header + 8): its addresses,
/// ports, protocol, version/IHL, its length, or its direction.
fn icmp_quote(f: &mut Vec<u8>, l: &Layers, rng: &mut Rng) {
    let Some(l4) = l.l4 else {
        return;
    };
    if !((l.v4 && l.proto == 1) || (l.v6 && l.proto == 58)) || l4 + 8 >= f.len() {
        return;
    }
    let qip = l4 + 8;
    let ql4 = if l.v6 {
        qip + 40
    } else {
        qip + usize::from(f[qip] & 0xf) * 4
    };
    match rng.below(8) {
        0 => f[l4] = rng.pick_or(&[3, 11, 1, 2, 3, 4, 0, 8, 128, 135], |r| r.byte()),
        1 => f[l4 + 1] = rng.pick_or(&[0, 1, 3, 4, 13], |r| r.byte()),
        2 => {
            let at = if l.v6 {
                qip + 8 + 16 * rng.below(2)
            } else {
                qip + 12 + 4 * rng.below(2)
            };
            set_addr(f, at, rng, l.v6);
        }
        3 => {
            let v = if rng.chance(1, 4) {
                rng.next_u64() as u16
            } else {
                *rng.pick(&PORTS)
            };
            put16(f, ql4 + 2 * rng.below(2), v);
        }
        4 => {
            let at = qip + if l.v6 { 6 } else { 9 };
            if let Some(b) = f.get_mut(at) {
                *b = rng.pick_or(&[6, 17, 1, 58, 0], |r| r.byte());
            }
        }
        5 => {
            f[qip] = if l.v6 {
                rng.pick_or(&[0x60, 0x40, 0x00], |r| r.byte())
            } else {
                rng.pick_or(&[0x45, 0x46, 0x44, 0x4f, 0x65, 0x55], |r| r.byte())
            };
        }
        6 => {
            let n = ql4 + rng.pick_or(&[0, 2, 3, 4, 5, 6, 7, 8, 16, 17, 18, 20], |r| r.below(64));
            f.truncate(n.max(14));
        }
        _ => {
            let (a, n) = if l.v6 { (qip + 8, 16) } else { (qip + 12, 4) };
            if f.len() >= a + 2 * n {
                let (x, y) = f[a..a + 2 * n].split_at_mut(n);
                x.swap_with_slice(y);
            }
            if ql4 + 4 <= f.len() {
                let (x, y) = f[ql4..ql4 + 4].split_at_mut(2);
                x.swap_with_slice(y);
            }
        }
    }
}

/// Inserts an 8-byte IPv6 extension header of type `ty` (body `body`, its
/// next-header byte set to the current first next header) after the fixed
/// header.
fn insert_v6_ext(f: &mut Vec<u8>, l3: usize, ty: u8, body: &[u8; 8], rng: &mut Rng) {
    if f.len() < l3 + 40 {
        return;
    }
    let mut h = *body;
    h[0] = f[l3 + 6];
    if ty != 44 && rng.chance(1, 4) {
        h[1] = rng.byte() & 3;
    }
    let extra = if ty == 44 { 0 } else { usize::from(h[1]) * 8 };
    let mut bytes = h.to_vec();
    bytes.extend(std::iter::repeat_n(1u8, extra));
    f.splice(l3 + 40..l3 + 40, bytes);
    f[l3 + 6] = ty;
}

/// Makes the IP length fields say what the frame holds (so mutated packets
/// get past the length checks and reach the deeper rules).
pub fn fix_lengths(f: &mut [u8]) {
    let l = layers(f);
    let l3 = l.l3;
    if l.v4 && f.len() >= l3 + 20 {
        put16(f, l3 + 2, (f.len() - l3).min(0xffff) as u16);
    } else if l.v6 && f.len() >= l3 + 40 {
        put16(f, l3 + 4, (f.len() - l3 - 40).min(0xffff) as u16);
    }
}

/// Recomputes the IPv4 header checksum and the TCP/UDP/ICMP checksum where
/// the headers are there, so checksum-valid mutants are common (the
/// invariant on output checksums applies to them).
pub fn fix_checksums(f: &mut [u8]) {
    let l = layers(f);
    let l3 = l.l3;
    let Some(l4) = l.l4 else {
        return;
    };
    let ip_end;
    let pseudo_addrs: Vec<u8>;
    if l.v4 {
        let ihl = l4 - l3;
        if ihl < 20 || l4 > f.len() {
            return;
        }
        f[l3 + 10] = 0;
        f[l3 + 11] = 0;
        let c = inet_checksum(&f[l3..l4]);
        put16(f, l3 + 10, c);
        ip_end = l3 + usize::from(be16(f, l3 + 2).unwrap_or(0));
        pseudo_addrs = f[l3 + 12..l3 + 20].to_vec();
    } else {
        ip_end = l3 + 40 + usize::from(be16(f, l3 + 4).unwrap_or(0));
        pseudo_addrs = f[l3 + 8..l3 + 40].to_vec();
    }
    let proto = l.proto;
    let at = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        1 | 58 => 2,
        _ => return,
    };
    if ip_end > f.len() || l4 + at + 2 > ip_end {
        return;
    }
    f[l4 + at] = 0;
    f[l4 + at + 1] = 0;
    let seg = &f[l4..ip_end];
    let mut data = Vec::with_capacity(seg.len() + 40);
    if proto != 1 {
        data.extend_from_slice(&pseudo_addrs);
        if l.v6 {
            data.extend_from_slice(&(seg.len() as u32).to_be_bytes());
            data.extend_from_slice(&[0, 0, 0, proto]);
        } else {
            data.extend_from_slice(&[0, proto]);
            data.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        }
    }
    data.extend_from_slice(seg);
    let mut c = inet_checksum(&data);
    if c == 0 && proto == PROTO_UDP {
        c = 0xffff;
    }
    put16(f, l4 + at, c);
}

/// One fuzz case: a seed, 1-4 mutations, lengths and checksums fixed up
/// some of the time, and the ingress side (mostly the seed's).
pub struct Case {
    pub frame: Vec<u8>,
    pub seed: usize,
    pub from_backend: bool,
    pub mutations: Vec<&'static str>,
}

pub fn make_case(seeds: &[Seed], rng: &mut Rng) -> Case {
    let si = rng.below(seeds.len());
    let s = &seeds[si];
    let mut frame = s.frame.clone();
    let mut mutations = Vec::new();
    // A few untouched seeds keep the flows that replies belong to alive.
    if !rng.chance(1, 16) {
        for _ in 0..1 + rng.below(4) {
            mutations.push(mutate(&mut frame, rng));
        }
        if rng.chance(1, 2) {
            fix_lengths(&mut frame);
        }
        if rng.chance(3, 4) {
            fix_checksums(&mut frame);
        }
    }
    let from_backend = if rng.chance(1, 8) {
        !s.from_backend
    } else {
        s.from_backend
    };
    Case {
        frame,
        seed: si,
        from_backend,
        mutations,
    }
}

// ------------------------------------------------------------------ model

/// A bit per `Reason`.
pub type Mask = u32;

pub const fn bit(r: Reason) -> Mask {
    1 << r as u32
}

/// The reasons in `m`, by name.
pub fn mask_names(m: Mask) -> String {
    Reason::ALL
        .iter()
        .filter(|r| m & bit(**r) != 0)
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join("|")
}

#[derive(Clone, Debug)]
pub struct MBackend {
    pub id: u32,
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct MService {
    pub id: u32,
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub dsr: bool,
    pub pass_on_none: bool,
    pub tiers: Vec<Vec<MBackend>>,
}

/// The lab's side a frame arrives on / leaves by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// The model of the documented packet rules over the lab's config, maps
/// and network.
pub struct Model {
    pub services: Vec<MService>,
    pub neighbours: Vec<(IpAddr, [u8; 6], Side)>,
    pub c0: u32,
    pub b0: u32,
}

/// How a packet is classified before it runs (what conntrack entry the
/// judge needs is in `flow`).
#[derive(Clone, Debug)]
pub enum Class {
    /// The rules fix the outcome whatever the maps hold: pass untouched or
    /// drop, with this reason; `vip`: addressed to a VIP address.
    Fixed { reason: Reason, vip: bool },
    /// A client packet of `services[i]`.
    Service(usize),
    /// A packet from NAT backend `services[s].tiers[t][m]`.
    Reply { s: usize, t: usize, m: usize },
    /// An ICMP/ICMPv6 error whose quoted packet `q` may belong to a VIP
    /// flow (which one is in `Pre::flow`); `vip`: the outer destination is
    /// a VIP address.
    Icmp { q: Quote, to: IcmpTo, vip: bool },
}

/// Which way an ICMP error about a VIP flow would go.
#[derive(Clone, Copy, Debug)]
pub enum IcmpTo {
    /// To the VIP of `services[i]` (the quoted packet is the VIP's reply):
    /// on to the flow's backend.
    Vip(usize),
    /// To a client, quoting its packet to NAT backend
    /// `services[s].tiers[t][m]`: back as if from the VIP.
    Client { s: usize, t: usize, m: usize },
}

/// The packet an ICMP/ICMPv6 error quotes, where the rules look for it.
#[derive(Clone, Copy, Debug)]
pub struct Quote {
    /// Offset of the quoted IP header (ICMP header + 8).
    pub ip: usize,
    /// Length of the quoted IP header (IPv4: IHL; IPv6: 40).
    pub hlen: usize,
    /// Offset of the quoted TCP/UDP header.
    pub l4: usize,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// The quoted packet of an ICMP error the rules translate: an IPv4
/// destination unreachable (any code) or time exceeded, or an ICMPv6
/// destination unreachable, packet too big or time exceeded, quoting (in
/// the outer family) an IPv4 header with IHL >= 5 or a fixed IPv6 header
/// (its version is not looked at, no extension headers walked), of TCP or
/// UDP, whose 4 port bytes lie inside the outer IP packet.
pub fn icmp_quote_of(f: &[u8], p: &Parsed) -> Option<Quote> {
    if p.kind != Kind::Ip || p.fragment || p.l4_truncated {
        return None;
    }
    let ty = *f.get(p.l4)?;
    let ok = if p.v6 {
        p.proto == 58 && (1..=3).contains(&ty)
    } else {
        p.proto == 1 && (ty == 3 || ty == 11)
    };
    if !ok {
        return None;
    }
    let ip = p.l4 + 8;
    let (hlen, proto, src, dst) = if p.v6 {
        (
            40,
            *f.get(ip + 6)?,
            addr_at(f, ip + 8, true)?,
            addr_at(f, ip + 24, true)?,
        )
    } else {
        let vihl = *f.get(ip)?;
        let hlen = usize::from(vihl & 0xf) * 4;
        if vihl >> 4 != 4 || hlen < 20 {
            return None;
        }
        (
            hlen,
            *f.get(ip + 9)?,
            addr_at(f, ip + 12, false)?,
            addr_at(f, ip + 16, false)?,
        )
    };
    let l4 = ip + hlen;
    if !(proto == PROTO_TCP || proto == PROTO_UDP) || l4 + 4 > p.ip_end {
        return None;
    }
    Some(Quote {
        ip,
        hlen,
        l4,
        proto,
        src,
        dst,
        sport: be16(f, l4)?,
        dport: be16(f, l4 + 2)?,
    })
}

/// A packet prepared for judging.
#[derive(Clone, Debug)]
pub struct Pre {
    pub parsed: Parsed,
    pub class: Class,
    /// The flow key to look up in `CONNTRACK` and `EMBRYONIC` before
    /// running the packet (a reply: its client's key).
    pub flow: Option<FlowKey>,
    /// A TCP reply, or an ICMP error to a client quoting its packet to a
    /// backend endpoint: the key of the direct connection (client ->
    /// backend endpoint) to look up in `DIRECT` before running the packet.
    pub direct: Option<FlowKey>,
    /// A TCP pure SYN to a NAT backend endpoint, not for a service: it
    /// records `DIRECT[.0]` and deletes the VIP flow `.1` before anything
    /// else happens to it.
    pub direct_syn: Option<(FlowKey, FlowKey)>,
    pub ingress: Side,
    /// The input's IP and TCP/UDP checksums are all correct.
    pub sums_ok: bool,
}

/// What the flow tables held for the packet's flow before it ran
/// (`Pre::flow`, `Pre::direct`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Before {
    /// Its `CONNTRACK` entry (a verified flow).
    pub conntrack: Option<FlowValue>,
    /// Its `EMBRYONIC` entry (an unverified flow).
    pub embryonic: Option<FlowValue>,
    /// `DIRECT` holds `Pre::direct`.
    pub direct: bool,
}

/// What the flow tables hold after the packet ran, where the rules say
/// what must have been recorded (or not): the packet's flow (`Pre::flow`),
/// and for a direct connection's SYN (`Pre::direct_syn`) its `DIRECT` key
/// and the VIP flow it deletes.
#[derive(Clone, Copy, Debug, Default)]
pub struct After {
    pub conntrack: Option<FlowValue>,
    pub embryonic: Option<FlowValue>,
    /// `DIRECT` holds `Pre::direct_syn.0`.
    pub direct_recorded: bool,
    /// `CONNTRACK` / `EMBRYONIC` still hold `Pre::direct_syn.1`.
    pub gone_conntrack: bool,
    pub gone_embryonic: bool,
}

/// Whether a flow entry counts. Nobody writes `CLOCK` in the fuzzer, so
/// "now" is 0 and an entry is live unless its idle time (from `seen_ms`,
/// wrapping) exceeds its timeout.
fn live(v: &FlowValue) -> bool {
    0u32.wrapping_sub(v.seen_ms) <= v.timeout_ms
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A SYN opening a connection (no ACK, no RST).
fn pure_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: u8,
    pub what: String,
}

/// What the judge accepted: the reason(s) the packet must be counted
/// under (one bit, unless the model cannot tell which of several the
/// kernel's FIB gives) and a class for the statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub reasons: Mask,
    pub class: &'static str,
}

/// One possible legitimate outcome.
#[derive(Clone, Debug)]
enum Exp {
    /// XDP_PASS with the input unchanged.
    Pass(Reason),
    /// XDP_DROP (the bytes do not matter).
    Drop(Reason),
    /// `action` with exactly `bytes`, except the checksum bytes at `free`,
    /// which `verify_checksums` judges (when the input's were right) and
    /// `sums` must hold.
    Bytes {
        action: u32,
        reason: Reason,
        bytes: Vec<u8>,
        free: Vec<usize>,
        sums: Vec<Sum>,
        what: String,
    },
}

/// An incrementally patched checksum: the one's-complement sum over what
/// it covers (checksum field included) must be the same (mod 0xffff) in
/// the output as in the input, right or wrong; the changed fields outside
/// the ranges are not covered by it.
#[derive(Clone, Debug)]
pub struct Sum {
    what: &'static str,
    /// Ranges of the input.
    inp: Vec<(usize, usize)>,
    /// The same ranges in the output (a removed VLAN tag shifts them).
    out: Vec<(usize, usize)>,
    /// Output offset of a UDP checksum that must not be zero (a computed
    /// zero is sent as 0xffff).
    nonzero: Option<usize>,
}

/// The one's-complement sum (RFC 1071, an odd range padded) over `ranges`
/// of `f`, reduced mod 0xffff (0 and 0xffff are the same).
fn ones_sum(f: &[u8], ranges: &[(usize, usize)]) -> Option<u32> {
    let mut sum: u64 = 0;
    for &(a, b) in ranges {
        for c in f.get(a..b)?.chunks(2) {
            sum += u64::from(c[0]) << 8 | c.get(1).copied().map_or(0, u64::from);
        }
    }
    Some((sum % 0xffff) as u32)
}

/// `frame` without its VLAN tag (802.1Q or 802.1ad), if it has one.
fn untagged(frame: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match be16(frame, 12) {
        Some(0x8100 | 0x88a8) if frame.len() >= 16 => {
            let mut v = frame[..12].to_vec();
            v.extend_from_slice(&frame[16..]);
            std::borrow::Cow::Owned(v)
        }
        _ => std::borrow::Cow::Borrowed(frame),
    }
}

/// The FIB's answer for a destination, as the lab's routes and neighbour
/// table make it.
#[derive(Clone, Copy, Debug)]
enum FibOut {
    Ok([u8; 6], Side),
    NoNeigh,
    FragNeeded,
    /// NOT_FWDED: for this host, not a unicast route, or no route at all.
    Local,
    Fail,
}

#[derive(Clone, Copy)]
enum Rw {
    Src,
    Dst,
}

/// The rewrite of an ICMP error: towards the backend, the outer
/// destination (`outer`), the quoted source and source port become
/// `addr`/`port`; towards the client, the quoted destination and
/// destination port, and the outer source if `outer`.
#[derive(Clone, Copy, Debug)]
struct IcmpRw {
    to_backend: bool,
    addr: IpAddr,
    port: u16,
    outer: bool,
}

fn flow_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    let (s, family) = addr16(src);
    let (d, _) = addr16(dst);
    FlowKey {
        src: s,
        dst: d,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto,
        family,
        _pad: [0; 2],
    }
}

impl Model {
    /// The model of `cfg` as laid out in `layout`, on the lab's interfaces.
    pub fn new(cfg: &Config, layout: &Layout, c0: u32, b0: u32) -> Self {
        let services = cfg
            .services
            .iter()
            .zip(&layout.services)
            .map(|(s, sl)| MService {
                id: sl.id,
                name: s.name.clone(),
                vip: s.vip,
                port: s.port,
                proto: s.protocol.number(),
                dsr: s.mode == Mode::Dsr,
                pass_on_none: s.on_no_backend == NoBackend::Pass,
                tiers: sl
                    .tiers
                    .iter()
                    .map(|t| {
                        t.iter()
                            .map(|b| MBackend {
                                id: b.id,
                                name: b.name.clone(),
                                addr: b.address,
                                port: b.port,
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        let neighbours = NEIGHBOURS
            .iter()
            .map(|(a, m, dev)| {
                let side = if *dev == "c0" {
                    Side::Client
                } else {
                    Side::Backend
                };
                (ip(a), *m, side)
            })
            .collect();
        Model {
            services,
            neighbours,
            c0,
            b0,
        }
    }

    pub fn ifindex(&self, s: Side) -> u32 {
        match s {
            Side::Client => self.c0,
            Side::Backend => self.b0,
        }
    }

    fn is_vip(&self, a: Option<IpAddr>) -> bool {
        a.is_some_and(|a| self.services.iter().any(|s| s.vip == a))
    }

    /// Every backend id with its service and name (for the fuzzer's health
    /// changes and messages).
    pub fn backends(&self) -> Vec<(u32, String)> {
        self.services
            .iter()
            .flat_map(|s| {
                s.tiers
                    .iter()
                    .flatten()
                    .map(move |b| (b.id, format!("{}/{}", s.name, b.name)))
            })
            .collect()
    }

    /// Classifies `frame` arriving on `ingress`.
    pub fn prepare(&self, frame: &[u8], ingress: Side) -> Pre {
        let p = parse(frame);
        let vip = self.is_vip(p.dst);
        let fixed = |reason| Class::Fixed { reason, vip };
        let mut flow = None;
        let mut direct = None;
        let mut direct_syn = None;
        let class = match p.kind {
            Kind::NotIp => fixed(Reason::PassNonIp),
            Kind::BadIp if vip => fixed(Reason::DropMalformed),
            Kind::BadIp => fixed(Reason::PassMalformed),
            Kind::Ip if p.fragment && vip => fixed(Reason::DropFragment),
            Kind::Ip if p.l4_truncated && vip => fixed(Reason::DropMalformed),
            Kind::Ip if p.fragment || p.l4_truncated => fixed(Reason::PassNotVip),
            Kind::Ip if !p.l4_ok => {
                // An ICMP error about a VIP flow (both ways only when the
                // outer destination is the quoted source).
                let icmp = icmp_quote_of(frame, &p)
                    .filter(|q| p.dst == Some(q.src))
                    .and_then(|q| Some((q, self.icmp_to(&q)?)));
                match icmp {
                    Some((q, to)) => {
                        match to {
                            IcmpTo::Vip(_) => {
                                flow = Some(flow_key(q.dst, q.src, q.dport, q.sport, q.proto));
                            }
                            IcmpTo::Client { s, .. } => {
                                let svc = &self.services[s];
                                flow = Some(flow_key(q.src, svc.vip, q.sport, svc.port, q.proto));
                                direct = Some(flow_key(q.src, q.dst, q.sport, q.dport, q.proto));
                            }
                        }
                        Class::Icmp { q, to, vip }
                    }
                    None if vip => fixed(Reason::PassVipOtherPort),
                    None => fixed(Reason::PassNotVip),
                }
            }
            Kind::Ip => {
                let (src, dst) = (
                    p.src.unwrap_or(IpAddr::from([0u8; 4])),
                    p.dst.unwrap_or(IpAddr::from([0u8; 4])),
                );
                let service = self
                    .services
                    .iter()
                    .position(|s| s.vip == dst && s.port == p.dport && s.proto == p.proto);
                if service.is_none()
                    && p.proto == PROTO_TCP
                    && pure_syn(p.tcp_flags)
                    && let Some((s, ..)) = self.nat_backend(dst, p.dport, p.proto)
                {
                    // A direct connection to a NAT backend endpoint.
                    let svc = &self.services[s];
                    direct_syn = Some((
                        flow_key(src, dst, p.sport, p.dport, p.proto),
                        flow_key(src, svc.vip, p.sport, svc.port, p.proto),
                    ));
                }
                if let Some(i) = service {
                    flow = Some(flow_key(src, dst, p.sport, p.dport, p.proto));
                    Class::Service(i)
                } else if let Some((s, t, m)) = self.nat_backend(src, p.sport, p.proto) {
                    let svc = &self.services[s];
                    flow = Some(flow_key(dst, svc.vip, p.dport, svc.port, p.proto));
                    if p.proto == PROTO_TCP {
                        direct = Some(flow_key(dst, src, p.dport, p.sport, p.proto));
                    }
                    Class::Reply { s, t, m }
                } else if vip {
                    fixed(Reason::PassVipOtherPort)
                } else {
                    fixed(Reason::PassNotVip)
                }
            }
        };
        let sums_ok = p.kind == Kind::Ip && p.l4_ok && verify_checksums(&untagged(frame)).is_ok();
        Pre {
            parsed: p,
            class,
            flow,
            direct,
            direct_syn,
            ingress,
            sums_ok,
        }
    }

    /// Where an ICMP error quoting `q` would go: to a VIP if the quoted
    /// source is a service (VIP, port, protocol), else to a client if the
    /// quoted destination is a NAT backend endpoint.
    fn icmp_to(&self, q: &Quote) -> Option<IcmpTo> {
        if let Some(i) = self
            .services
            .iter()
            .position(|s| s.vip == q.src && s.port == q.sport && s.proto == q.proto)
        {
            return Some(IcmpTo::Vip(i));
        }
        let (s, t, m) = self.nat_backend(q.dst, q.dport, q.proto)?;
        Some(IcmpTo::Client { s, t, m })
    }

    /// The NAT backend (service, tier, member) listening on `addr:port`.
    fn nat_backend(&self, addr: IpAddr, port: u16, proto: u8) -> Option<(usize, usize, usize)> {
        for (si, s) in self.services.iter().enumerate() {
            if s.dsr || s.proto != proto {
                continue;
            }
            for (ti, t) in s.tiers.iter().enumerate() {
                if let Some(mi) = t.iter().position(|b| b.addr == addr && b.port == port) {
                    return Some((si, ti, mi));
                }
            }
        }
        None
    }

    fn lb_mac(s: Side) -> [u8; 6] {
        match s {
            Side::Client => LB_C_MAC,
            Side::Backend => LB_B_MAC,
        }
    }

    /// What `bpf_fib_lookup` answers for `dst` with an L3 length of
    /// `l3_len` in the lab: possibly several answers for addresses the
    /// model does not know (then the output tells which one it was).
    ///
    /// An IPv6 source that is multicast, link-local, loopback or
    /// unspecified may also make the lookup fail: the kernel does not
    /// forward from those (seen by the fuzzer: DropFibFail).
    fn fib(&self, src: Option<IpAddr>, dst: IpAddr, l3_len: usize) -> Vec<FibOut> {
        let mut v = self.fib_dst(dst, l3_len);
        let scoped = matches!(src, Some(IpAddr::V6(a))
            if a.is_multicast() || a.is_unicast_link_local() || a.is_loopback() || a.is_unspecified());
        if scoped && !v.iter().any(|f| matches!(f, FibOut::Fail)) {
            v.push(FibOut::Fail);
        }
        v
    }

    fn fib_dst(&self, dst: IpAddr, l3_len: usize) -> Vec<FibOut> {
        let big = l3_len > MTU;
        if let Some((_, mac, side)) = self.neighbours.iter().find(|(a, ..)| *a == dst) {
            return vec![if big {
                FibOut::FragNeeded
            } else {
                FibOut::Ok(*mac, *side)
            }];
        }
        let plain_host = match dst {
            IpAddr::V4(a) => {
                let o = a.octets();
                o[..2] == [198, 18] && o[2] <= 1 && (2..=254).contains(&o[3])
            }
            IpAddr::V6(a) => {
                let s = a.segments();
                // 2001:db8::/64 and 2001:db8:1::/64, not ::0 (subnet-router
                // anycast) nor ::1 (the LB's own address).
                s[..2] == [0x2001, 0xdb8] && s[2] <= 1 && s[3..7] == [0, 0, 0, 0] && s[7] >= 2
            }
        };
        let route = if big {
            FibOut::FragNeeded
        } else {
            FibOut::NoNeigh
        };
        if plain_host {
            vec![route]
        } else {
            vec![route, FibOut::Fail, FibOut::Local]
        }
    }

    fn ttl(frame: &[u8], p: &Parsed) -> u8 {
        frame[p.l3 + if p.v6 { 7 } else { 8 }]
    }

    /// The input with one side's address and port rewritten (and the
    /// TTL decremented, and the MACs set), checksum bytes left free.
    fn rewritten(
        frame: &[u8],
        p: &Parsed,
        side: Rw,
        addr: IpAddr,
        port: u16,
        dec_ttl: bool,
        macs: Option<([u8; 6], [u8; 6])>,
    ) -> (Vec<u8>, Vec<usize>) {
        let mut b = frame.to_vec();
        let mut free = Vec::new();
        if let Some((d, s)) = macs {
            b[0..6].copy_from_slice(&d);
            b[6..12].copy_from_slice(&s);
        }
        let l3 = p.l3;
        match addr {
            IpAddr::V4(a) => {
                let at = l3 + if matches!(side, Rw::Src) { 12 } else { 16 };
                b[at..at + 4].copy_from_slice(&a.octets());
                if dec_ttl {
                    b[l3 + 8] = b[l3 + 8].wrapping_sub(1);
                }
                free.extend([l3 + 10, l3 + 11]);
            }
            IpAddr::V6(a) => {
                let at = l3 + if matches!(side, Rw::Src) { 8 } else { 24 };
                b[at..at + 16].copy_from_slice(&a.octets());
                if dec_ttl {
                    b[l3 + 7] = b[l3 + 7].wrapping_sub(1);
                }
            }
        }
        let port_at = p.l4 + if matches!(side, Rw::Src) { 0 } else { 2 };
        b[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
        let check = p.l4 + if p.proto == PROTO_TCP { 16 } else { 6 };
        // A UDP datagram without checksum keeps none.
        if !(p.proto == PROTO_UDP && frame[check] == 0 && frame[check + 1] == 0) {
            free.extend([check, check + 1]);
        }
        (b, free)
    }

    /// The outcomes of a client packet sent to backend `b` of `s`.
    fn to_backend(&self, frame: &[u8], pre: &Pre, s: &MService, b: &MBackend) -> Vec<Exp> {
        let p = &pre.parsed;
        let l3_len = frame.len() - p.l3;
        self.fib(p.src, b.addr, l3_len)
            .into_iter()
            .map(|fib| match (fib, s.dsr) {
                (FibOut::Ok(mac, side), true) => {
                    let mut bytes = frame.to_vec();
                    bytes[0..6].copy_from_slice(&mac);
                    bytes[6..12].copy_from_slice(&Self::lb_mac(side));
                    let (bytes, free) = Self::sent(p, bytes, Vec::new());
                    let (action, reason) = self.send(pre.ingress, side);
                    Exp::Bytes {
                        action,
                        reason,
                        bytes,
                        free,
                        sums: Vec::new(),
                        what: format!("DSR to {}/{} ({})", s.name, b.name, b.addr),
                    }
                }
                (FibOut::Ok(..), false) if Self::ttl(frame, p) <= 1 => {
                    Exp::Pass(Reason::PassTtlExceeded)
                }
                (FibOut::Ok(mac, side), false) => {
                    let (bytes, free) = Self::rewritten(
                        frame,
                        p,
                        Rw::Dst,
                        b.addr,
                        b.port,
                        true,
                        Some((mac, Self::lb_mac(side))),
                    );
                    let (bytes, free) = Self::sent(p, bytes, free);
                    let (action, reason) = self.send(pre.ingress, side);
                    Exp::Bytes {
                        action,
                        reason,
                        bytes,
                        free,
                        sums: Vec::new(),
                        what: format!("NAT to {}/{} ({}:{})", s.name, b.name, b.addr, b.port),
                    }
                }
                (FibOut::NoNeigh, true) => Exp::Drop(Reason::DropNoNeigh),
                (FibOut::FragNeeded, true) => Exp::Pass(Reason::PassFragNeeded),
                (FibOut::NoNeigh | FibOut::FragNeeded, false) => {
                    let reason = if matches!(fib, FibOut::NoNeigh) {
                        Reason::PassNoNeigh
                    } else {
                        Reason::PassFragNeeded
                    };
                    let (bytes, free) =
                        Self::rewritten(frame, p, Rw::Dst, b.addr, b.port, false, None);
                    Exp::Bytes {
                        action: XDP_PASS,
                        reason,
                        bytes,
                        free,
                        sums: Vec::new(),
                        what: format!(
                            "NAT to {}/{} ({}:{}) handed to the kernel",
                            s.name, b.name, b.addr, b.port
                        ),
                    }
                }
                (FibOut::Fail | FibOut::Local, _) => Exp::Drop(Reason::DropFibFail),
            })
            .collect()
    }

    /// A frame as it leaves by XDP_TX/XDP_REDIRECT after a FIB lookup
    /// (`forward::send`): a VLAN-tagged one without its tag (the FIB
    /// answered for an untagged interface), the offsets in `free` moved
    /// with it.
    fn sent(p: &Parsed, mut bytes: Vec<u8>, free: Vec<usize>) -> (Vec<u8>, Vec<usize>) {
        if p.l3 == 18 {
            bytes.drain(12..16);
            let free = free.into_iter().map(|i| i - 4).collect();
            return (bytes, free);
        }
        (bytes, free)
    }

    fn send(&self, ingress: Side, egress: Side) -> (u32, Reason) {
        if ingress == egress {
            (XDP_TX, Reason::FwdTx)
        } else {
            (XDP_REDIRECT, Reason::FwdRedirect)
        }
    }

    /// The RST answering a client's TCP packet (`rst.rs`'s documented
    /// behaviour), or the drop if its TCP header lies about its length.
    fn rst(frame: &[u8], p: &Parsed) -> Exp {
        let (l3, l4) = (p.l3, p.l4);
        let flags = frame[l4 + 13];
        let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
        let ack =
            u32::from_be_bytes([frame[l4 + 8], frame[l4 + 9], frame[l4 + 10], frame[l4 + 11]]);
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        let l4_len = p.ip_end - l4;
        if doff < 20 || l4_len < doff {
            return Exp::Drop(Reason::DropMalformed);
        }
        let mut seg = (l4_len - doff) as u32;
        if flags & 0x03 != 0 {
            seg += 1;
        }
        let (rseq, rack, rflags) = if flags & 0x10 != 0 {
            (ack, 0, 0x04)
        } else {
            (0, seq.wrapping_add(seg), 0x14)
        };
        let mut b = frame[..l4 + 20].to_vec();
        b[0..6].copy_from_slice(&frame[6..12]);
        b[6..12].copy_from_slice(&frame[0..6]);
        let mut free = vec![l4 + 16, l4 + 17];
        if p.v6 {
            b[l3 + 8..l3 + 24].copy_from_slice(&frame[l3 + 24..l3 + 40]);
            b[l3 + 24..l3 + 40].copy_from_slice(&frame[l3 + 8..l3 + 24]);
            b[l3 + 4..l3 + 6].copy_from_slice(&((l4 + 20 - l3 - 40) as u16).to_be_bytes());
            b[l3 + 7] = 64;
        } else {
            b[l3 + 12..l3 + 16].copy_from_slice(&frame[l3 + 16..l3 + 20]);
            b[l3 + 16..l3 + 20].copy_from_slice(&frame[l3 + 12..l3 + 16]);
            b[l3 + 2..l3 + 4].copy_from_slice(&((l4 + 20 - l3) as u16).to_be_bytes());
            b[l3 + 8] = 64;
            free.extend([l3 + 10, l3 + 11]);
        }
        let mut t = Vec::with_capacity(20);
        t.extend_from_slice(&frame[l4 + 2..l4 + 4]);
        t.extend_from_slice(&frame[l4..l4 + 2]);
        t.extend_from_slice(&rseq.to_be_bytes());
        t.extend_from_slice(&rack.to_be_bytes());
        t.extend_from_slice(&[0x50, rflags, 0, 0, 0, 0, 0, 0]);
        b[l4..l4 + 20].copy_from_slice(&t);
        // Built in place (not through `forward::send`): a VLAN tag stays.
        Exp::Bytes {
            action: XDP_TX,
            reason: Reason::TxReset,
            bytes: b,
            free,
            sums: Vec::new(),
            what: "RST to the client".into(),
        }
    }

    /// Everything that may legitimately happen to the packet, given what
    /// the flow tables held before it ran and the backend states.
    fn expectations(
        &self,
        frame: &[u8],
        pre: &Pre,
        before: &Before,
        state: &dyn Fn(u32) -> u32,
    ) -> Vec<Exp> {
        match &pre.class {
            Class::Fixed { reason, .. } => {
                if reason.name().starts_with("drop") {
                    vec![Exp::Drop(*reason)]
                } else {
                    vec![Exp::Pass(*reason)]
                }
            }
            Class::Service(i) => self.service(frame, pre, &self.services[*i], before, state),
            Class::Reply { s, t, m } => self.reply(frame, pre, *s, *t, *m, before),
            Class::Icmp { q, to, vip } => self.icmp(frame, pre, q, *to, *vip, before),
        }
    }

    /// An ICMP error that may be about a VIP flow (`Class::Icmp`).
    ///
    /// Rules: to a VIP, the flow (client = the quoted destination) needs a
    /// live entry of the service (`CONNTRACK` first, then `EMBRYONIC`;
    /// whatever its backend's state); NAT rewrites the outer destination,
    /// the quoted source and source port to the backend's, DSR nothing;
    /// then it is sent towards the backend. To a client: a live entry of
    /// the service on another backend, or no live entry and the direct
    /// connection in `DIRECT`, leave it alone; otherwise the quoted
    /// destination and port become the VIP's, the outer source too when
    /// it is the backend itself; then it is sent towards the client. What
    /// is left alone passes untouched, as any other ICMP.
    fn icmp(
        &self,
        frame: &[u8],
        pre: &Pre,
        q: &Quote,
        to: IcmpTo,
        vip: bool,
        before: &Before,
    ) -> Vec<Exp> {
        let p = &pre.parsed;
        let not_handled = vec![Exp::Pass(if vip {
            Reason::PassVipOtherPort
        } else {
            Reason::PassNotVip
        })];
        let entry = |sid: u32| {
            let of = |v: &FlowValue| live(v) && v.service_id == sid;
            before
                .conntrack
                .filter(of)
                .or_else(|| before.embryonic.filter(of))
                .map(|v| v.backend_id)
        };
        match to {
            IcmpTo::Vip(i) => {
                let s = &self.services[i];
                let Some(bid) = entry(s.id) else {
                    return not_handled;
                };
                // An entry names a backend of its service (nothing else
                // is right if it does not).
                let Some(b) = s.tiers.iter().flatten().find(|b| b.id == bid) else {
                    return Vec::new();
                };
                let rw = (!s.dsr).then_some(IcmpRw {
                    to_backend: true,
                    addr: b.addr,
                    port: b.port,
                    outer: true,
                });
                let what = format!("ICMP error to {} sent on to {}/{}", s.name, s.name, b.name);
                self.icmp_send(frame, pre, q, rw, b.addr, what)
            }
            IcmpTo::Client { s, t, m } => {
                let svc = &self.services[s];
                let b = &svc.tiers[t][m];
                match entry(svc.id) {
                    Some(id) if id != b.id => return not_handled,
                    None if before.direct => return not_handled,
                    _ => {}
                }
                let client = p.dst.unwrap_or(IpAddr::from([0u8; 4]));
                let rw = Some(IcmpRw {
                    to_backend: false,
                    addr: svc.vip,
                    port: svc.port,
                    outer: p.src == Some(q.dst),
                });
                let what = format!(
                    "ICMP error about {}/{} to the client {client}",
                    svc.name, b.name
                );
                self.icmp_send(frame, pre, q, rw, client, what)
            }
        }
    }

    /// The outcomes of an ICMP error (rewritten by `rw`, if any) sent
    /// towards `to`: rewritten even when it is passed to the kernel.
    fn icmp_send(
        &self,
        frame: &[u8],
        pre: &Pre,
        q: &Quote,
        rw: Option<IcmpRw>,
        to: IpAddr,
        what: String,
    ) -> Vec<Exp> {
        let p = &pre.parsed;
        let passed = |reason| {
            let (bytes, free, sums) = Self::icmp_bytes(frame, p, q, rw, false, None);
            Exp::Bytes {
                action: XDP_PASS,
                reason,
                bytes,
                free,
                sums,
                what: format!("{what}, handed to the kernel"),
            }
        };
        self.fib(p.src, to, frame.len() - p.l3)
            .into_iter()
            .map(|fib| match fib {
                FibOut::Ok(..) if Self::ttl(frame, p) <= 1 => passed(Reason::PassTtlExceeded),
                FibOut::Ok(mac, side) => {
                    let (bytes, free, sums) =
                        Self::icmp_bytes(frame, p, q, rw, true, Some((mac, Self::lb_mac(side))));
                    Exp::Bytes {
                        action: self.send(pre.ingress, side).0,
                        reason: Reason::FwdIcmp,
                        bytes,
                        free,
                        sums,
                        what: what.clone(),
                    }
                }
                FibOut::NoNeigh => passed(Reason::PassNoNeigh),
                FibOut::FragNeeded => passed(Reason::PassFragNeeded),
                FibOut::Local | FibOut::Fail => Exp::Drop(Reason::DropFibFail),
            })
            .collect()
    }

    /// The error with the rewrite `rw` applied, the TTL / hop limit
    /// decremented if `dec_ttl`, and when forwarded (`macs`) the MACs set
    /// and a VLAN tag removed. The checksum bytes of what changed are left
    /// free, with the sums they must keep: the outer IPv4 header's, the
    /// quoted IPv4 header's, the quoted TCP/UDP checksum when its 2 bytes
    /// lie inside the outer packet (a zero UDP checksum stays zero, a
    /// non-zero one stays non-zero), the ICMP checksum (ICMPv6: with the
    /// outer addresses of its pseudo-header).
    fn icmp_bytes(
        frame: &[u8],
        p: &Parsed,
        q: &Quote,
        rw: Option<IcmpRw>,
        dec_ttl: bool,
        macs: Option<([u8; 6], [u8; 6])>,
    ) -> (Vec<u8>, Vec<usize>, Vec<Sum>) {
        let put = |b: &mut [u8], at: usize, a: IpAddr| match a {
            IpAddr::V4(a) => b[at..at + 4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => b[at..at + 16].copy_from_slice(&a.octets()),
        };
        let l3 = p.l3;
        let mut b = frame.to_vec();
        let mut free = Vec::new();
        let mut sums = Vec::new();
        // `out` and `nonzero` in input offsets until the end.
        let sum = |what, inp: Vec<(usize, usize)>, nonzero| Sum {
            what,
            out: inp.clone(),
            inp,
            nonzero,
        };
        let mut outer_changed = dec_ttl;
        if let Some(rw) = rw {
            let (outer_at, quoted_at, port_at) = match (rw.to_backend, p.v6) {
                (true, false) => (l3 + 16, q.ip + 12, q.l4),
                (true, true) => (l3 + 24, q.ip + 8, q.l4),
                (false, false) => (l3 + 12, q.ip + 16, q.l4 + 2),
                (false, true) => (l3 + 8, q.ip + 24, q.l4 + 2),
            };
            if rw.outer {
                put(&mut b, outer_at, rw.addr);
                outer_changed = true;
            }
            put(&mut b, quoted_at, rw.addr);
            b[port_at..port_at + 2].copy_from_slice(&rw.port.to_be_bytes());
            if !p.v6 {
                free.extend([q.ip + 10, q.ip + 11]);
                sums.push(sum("quoted IPv4 header", vec![(q.ip, q.ip + q.hlen)], None));
            }
            let qc = q.l4 + if q.proto == PROTO_TCP { 16 } else { 6 };
            let udp = q.proto == PROTO_UDP;
            if qc + 2 <= p.ip_end && !(udp && frame[qc..qc + 2] == [0, 0]) {
                free.extend([qc, qc + 1]);
                let addrs = if p.v6 {
                    (q.ip + 8, q.ip + 40)
                } else {
                    (q.ip + 12, q.ip + 20)
                };
                sums.push(sum(
                    "quoted L4",
                    vec![addrs, (q.l4, q.l4 + 4), (qc, qc + 2)],
                    udp.then_some(qc),
                ));
            }
            free.extend([p.l4 + 2, p.l4 + 3]);
            let mut icmp = vec![(p.l4, p.ip_end)];
            if p.v6 {
                icmp.insert(0, (l3 + 8, l3 + 40));
            }
            sums.push(sum("ICMP", icmp, None));
        }
        if dec_ttl {
            let at = l3 + if p.v6 { 7 } else { 8 };
            b[at] = b[at].wrapping_sub(1);
        }
        if !p.v6 && outer_changed {
            free.extend([l3 + 10, l3 + 11]);
            sums.push(sum("outer IPv4 header", vec![(l3, p.l4)], None));
        }
        let shift = if let Some((d, s)) = macs {
            b[0..6].copy_from_slice(&d);
            b[6..12].copy_from_slice(&s);
            if p.l3 == 18 { 4 } else { 0 }
        } else {
            0
        };
        let (b, free) = if macs.is_some() {
            Self::sent(p, b, free)
        } else {
            (b, free)
        };
        for s in &mut sums {
            for r in &mut s.out {
                *r = (r.0 - shift, r.1 - shift);
            }
            s.nonzero = s.nonzero.map(|o| o - shift);
        }
        (b, free, sums)
    }

    /// A new pick for a client packet of `s`: any UP member of the first
    /// tier that has one (`None`: no UP backend at all).
    fn new_pick(
        &self,
        frame: &[u8],
        pre: &Pre,
        s: &MService,
        state: &dyn Fn(u32) -> u32,
    ) -> Option<Vec<Exp>> {
        let t = s
            .tiers
            .iter()
            .find(|t| t.iter().any(|b| state(b.id) == STATE_UP))?;
        Some(
            t.iter()
                .filter(|b| state(b.id) == STATE_UP)
                .flat_map(|b| self.to_backend(frame, pre, s, b))
                .collect(),
        )
    }

    /// A client packet of service `s`.
    ///
    /// Rules: an IPv4 header with a wrong checksum is dropped as
    /// malformed. A live `CONNTRACK` entry decides (see `on_entry`), unless
    /// the packet is a pure SYN with another ISN than the entry's (a new
    /// connection: the entry is deleted). Then a live `EMBRYONIC` entry
    /// (not for a pure SYN with another ISN): a retransmitted SYN stays on
    /// its backend only while that is UP; anything else follows the entry
    /// like `CONNTRACK`. Otherwise a new pick from the tiers.
    fn service(
        &self,
        frame: &[u8],
        pre: &Pre,
        s: &MService,
        before: &Before,
        state: &dyn Fn(u32) -> u32,
    ) -> Vec<Exp> {
        let p = &pre.parsed;
        if !p.v6 && !p.ip_sum_ok {
            return vec![Exp::Drop(Reason::DropMalformed)];
        }
        let tcp = p.proto == PROTO_TCP;
        let syn = tcp && pure_syn(p.tcp_flags);
        // TCP other than SYN or RST.
        let may_reset = tcp && p.tcp_flags & (TCP_SYN | TCP_RST) == 0;
        let new_conn = |v: &FlowValue| syn && v.client_isn != p.seq;
        let owned = |id: u32| s.tiers.iter().flatten().find(|b| b.id == id);
        // A live entry of a flow that is not a new connection: stays on its
        // backend (UP or DRAINING), is reset (DOWN_RESET, not a SYN/RST), or
        // moves to a new pick; `None`: nothing to move to, or another
        // service's entry.
        let on_entry = |v: &FlowValue| -> Option<Vec<Exp>> {
            if v.service_id != s.id {
                return None;
            }
            if let Some(b) = owned(v.backend_id) {
                match state(b.id) {
                    STATE_UP | STATE_DRAINING => return Some(self.to_backend(frame, pre, s, b)),
                    STATE_DOWN_RESET if may_reset => return Some(vec![Self::rst(frame, p)]),
                    _ => {}
                }
            }
            self.new_pick(frame, pre, s, state)
        };
        if let Some(c) = before.conntrack.filter(|c| live(c) && !new_conn(c))
            && let Some(x) = on_entry(&c)
        {
            return x;
        }
        if let Some(e) = before.embryonic.filter(|e| live(e) && !new_conn(e)) {
            if syn {
                if e.service_id == s.id
                    && let Some(b) = owned(e.backend_id)
                    && state(b.id) == STATE_UP
                {
                    return self.to_backend(frame, pre, s, b);
                }
            } else if let Some(x) = on_entry(&e) {
                return x;
            }
        }
        match self.new_pick(frame, pre, s, state) {
            Some(x) => x,
            None if s.pass_on_none => vec![Exp::Pass(Reason::PassNoBackend)],
            None => vec![Exp::Drop(Reason::DropNoBackend)],
        }
    }

    /// A packet from NAT backend `services[s].tiers[t][m]`.
    ///
    /// Rules: a live entry (`CONNTRACK` first, then `EMBRYONIC`) of the
    /// client's flow on this backend: translated (`fwd_reply`); on another
    /// backend: untouched (`pass_not_vip`). No live entry: TCP of a direct
    /// connection (in `DIRECT`) is untouched (`pass_direct`); otherwise
    /// translated statelessly (`fwd_reply_untracked`), unless the FIB says
    /// the client is not forwarded to (NOT_FWDED: a probe's answer to this
    /// host, untouched as `pass_not_vip`).
    fn reply(
        &self,
        frame: &[u8],
        pre: &Pre,
        s: usize,
        t: usize,
        m: usize,
        before: &Before,
    ) -> Vec<Exp> {
        let p = &pre.parsed;
        let svc = &self.services[s];
        let b = &svc.tiers[t][m];
        let mut b4 = *before;
        // A SYN that is also a direct connection's (a packet from one
        // backend endpoint to another): its table changes come first.
        if let Some((dk, gone)) = &pre.direct_syn {
            if pre.flow.as_ref() == Some(gone) {
                b4.conntrack = None;
                b4.embryonic = None;
            }
            if pre.direct.as_ref() == Some(dk) {
                b4.direct = true;
            }
        }
        let entry = b4
            .conntrack
            .filter(live)
            .or_else(|| b4.embryonic.filter(live));
        let tracked = match entry {
            Some(v) if v.backend_id == b.id && v.service_id == svc.id => true,
            Some(_) => return vec![Exp::Pass(Reason::PassNotVip)],
            None => false,
        };
        if !tracked && p.proto == PROTO_TCP && b4.direct {
            return vec![Exp::Pass(Reason::PassDirect)];
        }
        let fwd = if tracked {
            Reason::FwdReply
        } else {
            Reason::FwdReplyUntracked
        };
        let client = p.dst.unwrap_or(IpAddr::from([0u8; 4]));
        self.fib(Some(svc.vip), client, frame.len() - p.l3)
            .into_iter()
            .map(|fib| match fib {
                FibOut::Ok(..) if Self::ttl(frame, p) <= 1 => Exp::Pass(Reason::PassTtlExceeded),
                FibOut::Ok(mac, side) => {
                    let (bytes, free) = Self::rewritten(
                        frame,
                        p,
                        Rw::Src,
                        svc.vip,
                        svc.port,
                        true,
                        Some((mac, Self::lb_mac(side))),
                    );
                    let (bytes, free) = Self::sent(p, bytes, free);
                    Exp::Bytes {
                        action: self.send(pre.ingress, side).0,
                        reason: fwd,
                        bytes,
                        free,
                        sums: Vec::new(),
                        what: format!("reply of {}/{} to {client}", svc.name, b.name),
                    }
                }
                FibOut::NoNeigh | FibOut::FragNeeded => {
                    let (bytes, free) =
                        Self::rewritten(frame, p, Rw::Src, svc.vip, svc.port, false, None);
                    Exp::Bytes {
                        action: XDP_PASS,
                        reason: if matches!(fib, FibOut::NoNeigh) {
                            Reason::PassNoNeigh
                        } else {
                            Reason::PassFragNeeded
                        },
                        bytes,
                        free,
                        sums: Vec::new(),
                        what: format!("reply of {}/{} handed to the kernel", svc.name, b.name),
                    }
                }
                FibOut::Local if !tracked => Exp::Pass(Reason::PassNotVip),
                FibOut::Local | FibOut::Fail => Exp::Drop(Reason::DropFibFail),
            })
            .collect()
    }

    /// Checks the flow tables after the packet ran (only what no LRU
    /// eviction can make wrong): a TCP packet other than a pure SYN of a
    /// flow without entries records nothing; a direct connection's SYN is
    /// in `DIRECT` and the VIP flow on its tuple is gone from both tables.
    pub fn check_tables(&self, pre: &Pre, before: &Before, after: &After) -> Result<(), Violation> {
        let p = &pre.parsed;
        let mut problems = Vec::new();
        if matches!(pre.class, Class::Service(_))
            && p.proto == PROTO_TCP
            && !pure_syn(p.tcp_flags)
            && before.conntrack.is_none()
            && before.embryonic.is_none()
            && (after.conntrack.is_some() || after.embryonic.is_some())
        {
            problems.push(format!(
                "a TCP packet (flags {:#04x}) without a flow entry recorded one (conntrack {:?}, embryonic {:?})",
                p.tcp_flags, after.conntrack, after.embryonic
            ));
        }
        if matches!(pre.class, Class::Icmp { .. })
            && ((before.conntrack.is_none() && after.conntrack.is_some())
                || (before.embryonic.is_none() && after.embryonic.is_some()))
        {
            problems.push(format!(
                "an ICMP error recorded a flow (conntrack {:?}, embryonic {:?})",
                after.conntrack, after.embryonic
            ));
        }
        if pre.direct_syn.is_some() {
            if !after.direct_recorded {
                problems.push("a direct connection's SYN is not in DIRECT".to_string());
            }
            if after.gone_conntrack || after.gone_embryonic {
                problems.push(format!(
                    "a direct connection's SYN left the VIP flow on its tuple (conntrack {}, embryonic {})",
                    after.gone_conntrack, after.gone_embryonic
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Violation {
                invariant: 4,
                what: format!("flow tables: {}", problems.join("; ")),
            })
        }
    }

    /// Judges the program's `action` and `out`put for the input `frame`.
    pub fn judge(
        &self,
        frame: &[u8],
        pre: &Pre,
        before: &Before,
        state: &dyn Fn(u32) -> u32,
        action: u32,
        out: &[u8],
    ) -> Result<Judged, Violation> {
        if action == XDP_ABORTED || action > XDP_REDIRECT {
            return Err(Violation {
                invariant: 1,
                what: format!("action {action} (XDP_ABORTED or unknown)"),
            });
        }
        let class = match &pre.class {
            Class::Fixed { reason, vip } => match reason {
                Reason::PassNonIp => "non_ip",
                Reason::PassMalformed | Reason::DropMalformed => "malformed_ip",
                Reason::DropFragment => "vip_fragment",
                _ if *vip => "vip_not_served",
                _ => "not_vip",
            },
            Class::Service(_) => "service",
            Class::Reply { .. } => "backend_reply",
            Class::Icmp { .. } => "icmp_error",
        };
        let exps = self.expectations(frame, pre, before, state);
        let mut ok: Mask = 0;
        let mut why = Vec::new();
        for e in &exps {
            match self.matches(frame, pre, e, action, out) {
                Ok(r) => ok |= bit(r),
                Err(w) => why.push(w),
            }
        }
        if ok != 0 {
            return Ok(Judged { reasons: ok, class });
        }
        let invariant = match &pre.class {
            Class::Fixed { vip: false, .. } => 2,
            Class::Reply { .. } | Class::Icmp { .. }
                if exps
                    .iter()
                    .all(|e| matches!(e, Exp::Pass(Reason::PassNotVip | Reason::PassDirect))) =>
            {
                2
            }
            _ if action == XDP_TX || action == XDP_REDIRECT => 3,
            _ if exps.iter().any(|e| {
                matches!(
                    e,
                    Exp::Bytes {
                        action: XDP_PASS,
                        ..
                    }
                )
            }) && action == XDP_PASS =>
            {
                3
            }
            _ => 4,
        };
        Err(Violation {
            invariant,
            what: format!("{class}: {}", why.join("; or ")),
        })
    }

    /// Whether the output is the outcome `e`: its reason, or why not.
    fn matches(
        &self,
        frame: &[u8],
        pre: &Pre,
        e: &Exp,
        action: u32,
        out: &[u8],
    ) -> Result<Reason, String> {
        match e {
            Exp::Pass(r) => {
                if action != XDP_PASS {
                    return Err(format!(
                        "expected XDP_PASS untouched ({}), got action {action}{}",
                        r.name(),
                        describe(out)
                    ));
                }
                if out != frame {
                    return Err(format!(
                        "expected XDP_PASS untouched ({}), but the bytes changed: {}",
                        r.name(),
                        diff(frame, out)
                    ));
                }
                Ok(*r)
            }
            Exp::Drop(r) => {
                if action != XDP_DROP {
                    return Err(format!(
                        "expected XDP_DROP ({}), got action {action}{}",
                        r.name(),
                        describe(out)
                    ));
                }
                Ok(*r)
            }
            Exp::Bytes {
                action: want,
                reason,
                bytes,
                free,
                sums,
                what,
            } => {
                if action != *want {
                    return Err(format!(
                        "expected {what} with action {want} ({}), got action {action}{}",
                        reason.name(),
                        describe(out)
                    ));
                }
                let same = out.len() == bytes.len()
                    && out
                        .iter()
                        .zip(bytes)
                        .enumerate()
                        .all(|(i, (a, b))| a == b || free.contains(&i));
                if !same {
                    return Err(format!(
                        "expected {what} ({}), but the bytes differ: {}",
                        reason.name(),
                        diff(bytes, out)
                    ));
                }
                for s in sums {
                    let (a, b) = (ones_sum(frame, &s.inp), ones_sum(out, &s.out));
                    if a.is_none() || a != b {
                        return Err(format!(
                            "{what}: the {} checksum does not match the changes (sum mod 0xffff {a:x?} in, {b:x?} out)",
                            s.what
                        ));
                    }
                    if let Some(o) = s.nonzero
                        && out.get(o..o + 2) == Some(&[0, 0][..])
                    {
                        return Err(format!(
                            "{what}: the {} checksum became zero (UDP: 0xffff)",
                            s.what
                        ));
                    }
                }
                if pre.sums_ok
                    && let Err(e) = verify_checksums(&untagged(out))
                {
                    return Err(format!(
                        "{what}: bad {e} in the output (the input's were correct)"
                    ));
                }
                Ok(*reason)
            }
        }
    }
}

/// " (to <dst> dmac <mac>)" for messages about an unexpected output.
fn describe(out: &[u8]) -> String {
    let p = parse(out);
    match (p.dst, out.get(0..6)) {
        (Some(d), Some(m)) => format!(
            " (output to {d} port {} dmac {})",
            p.dport,
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        ),
        _ => String::new(),
    }
}

/// The first few differing offsets of two frames.
fn diff(want: &[u8], got: &[u8]) -> String {
    let mut d: Vec<String> = want
        .iter()
        .zip(got)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .take(6)
        .map(|(i, (a, b))| format!("@{i}: {a:02x}->{b:02x}"))
        .collect();
    if want.len() != got.len() {
        d.push(format!("length {} -> {}", want.len(), got.len()));
    }
    d.join(", ")
}

/// Checks a batch's reason-counter deltas against what the judge said of
/// each packet: every packet counted exactly once, each under its reason
/// (a packet with several possible reasons counts under one of them).
pub fn check_counters(judged: &[Mask], delta: &[u64]) -> Result<(), Violation> {
    let total: u64 = delta.iter().sum();
    let mut problems = Vec::new();
    if total != judged.len() as u64 {
        problems.push(format!("{total} counted for {} packets", judged.len()));
    }
    for r in Reason::ALL {
        let b = bit(r);
        let exact = judged.iter().filter(|m| **m == b).count() as u64;
        let maybe = judged.iter().filter(|m| **m != b && **m & b != 0).count() as u64;
        let got = delta.get(r as usize).copied().unwrap_or(0);
        if got < exact || got > exact + maybe {
            problems.push(if maybe == 0 {
                format!("{}: counted {got}, expected {exact}", r.name())
            } else {
                format!(
                    "{}: counted {got}, expected {exact}..={}",
                    r.name(),
                    exact + maybe
                )
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Violation {
            invariant: 4,
            what: format!("reason counters: {}", problems.join(", ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use failover_common::{STATE_DISABLED, STATE_DOWN};
    use failover_user::config;

    use super::*;
    use crate::pktlab::{CONFIG, Q_MAC, S_MAC, natted};
    use failover_common::STATE_DOWN_RESET;

    fn model() -> Model {
        let cfg = config::parse(CONFIG, "t").unwrap();
        let layout = Layout::assign(&cfg, None).unwrap();
        Model::new(&cfg, &layout, 10, 11)
    }

    fn id(m: &Model, svc: &str, b: &str) -> u32 {
        m.services
            .iter()
            .find(|s| s.name == svc)
            .and_then(|s| s.tiers.iter().flatten().find(|x| x.name == b))
            .unwrap()
            .id
    }

    /// Judges with the config's initial states overridden by `over`.
    fn judge(
        m: &Model,
        frame: &[u8],
        side: Side,
        ct: Option<FlowValue>,
        over: &[(u32, u32)],
        action: u32,
        out: &[u8],
    ) -> Result<Judged, Violation> {
        let states: HashMap<u32, u32> = over.iter().copied().collect();
        let dead = id(m, "dead", "p");
        let dead_pass = id(m, "dead-pass", "p");
        let st = move |b: u32| {
            states.get(&b).copied().unwrap_or(if b == dead {
                STATE_DOWN
            } else if b == dead_pass {
                STATE_DISABLED
            } else {
                STATE_UP
            })
        };
        let pre = m.prepare(frame, side);
        let before = Before {
            conntrack: ct,
            ..Before::default()
        };
        m.judge(frame, &pre, &before, &st, action, out)
    }

    fn one(r: Reason) -> Mask {
        bit(r)
    }

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a: Vec<u64> = (0..5)
            .map(|i| Rng::for_iteration(7, i).next_u64())
            .collect();
        let b: Vec<u64> = (0..5)
            .map(|i| Rng::for_iteration(7, i).next_u64())
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[r.below(4)] += 1;
        }
        assert!(hits.iter().all(|h| *h > 800), "{hits:?}");
    }

    #[test]
    fn strict_parser_bounds_l4_by_the_ip_length() {
        let p = from_client("198.18.0.10", L4::tcp(1, 80)).bytes();
        let ok = parse(&p);
        assert!(ok.l4_ok && ok.kind == Kind::Ip && ok.dport == 80);
        // Total length says 30 (10 bytes of TCP), the frame has the rest as
        // padding: the TCP header is not inside the packet.
        let mut cut = p.clone();
        cut[16..18].copy_from_slice(&30u16.to_be_bytes());
        let q = parse(&cut);
        assert!(q.kind == Kind::Ip && q.l4_truncated && !q.l4_ok);
    }

    #[test]
    fn seeds_are_valid_and_judged_as_expected_when_untouched() {
        let m = model();
        for s in seeds() {
            let pre = m.prepare(
                &s.frame,
                if s.from_backend {
                    Side::Backend
                } else {
                    Side::Client
                },
            );
            if pre.parsed.l4_ok {
                assert!(pre.sums_ok, "{}: checksums", s.name);
            }
        }
    }

    #[test]
    fn accepts_correct_nat_forward_and_rejects_broken_ones() {
        let m = model();
        let p = from_client("198.18.0.10", L4::tcp(40000, 80));
        let good = natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes();
        let j = judge(&m, &p.bytes(), Side::Client, None, &[], XDP_REDIRECT, &good).unwrap();
        assert_eq!(j.reasons, one(Reason::FwdRedirect));

        // Wrong destination MAC (the standby's).
        let bad = natted(&p, "198.18.1.2", 8080, S_MAC, LB_B_MAC).bytes();
        let v = judge(&m, &p.bytes(), Side::Client, None, &[], XDP_REDIRECT, &bad).unwrap_err();
        assert_eq!(v.invariant, 3, "{v:?}");

        // A corrupted L4 checksum.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 3] ^= 0x40; // the TCP checksum's high byte (urgent ptr follows)
        let v = judge(&m, &p.bytes(), Side::Client, None, &[], XDP_REDIRECT, &bad).unwrap_err();
        assert_eq!(v.invariant, 3);
        assert!(v.what.contains("checksum"), "{v:?}");

        // Sent to the primary while it is down (the standby is right).
        let p_id = id(&m, "web", "p");
        let v = judge(
            &m,
            &p.bytes(),
            Side::Client,
            None,
            &[(p_id, STATE_DOWN)],
            XDP_REDIRECT,
            &good,
        )
        .unwrap_err();
        assert_eq!(v.invariant, 3);
        let standby = natted(&p, "198.18.1.3", 8080, S_MAC, LB_B_MAC).bytes();
        let j = judge(
            &m,
            &p.bytes(),
            Side::Client,
            None,
            &[(p_id, STATE_DOWN)],
            XDP_REDIRECT,
            &standby,
        )
        .unwrap();
        assert_eq!(j.reasons, one(Reason::FwdRedirect));

        // TTL not decremented.
        let mut bad = natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC);
        bad.ttl += 1;
        let v = judge(
            &m,
            &p.bytes(),
            Side::Client,
            None,
            &[],
            XDP_REDIRECT,
            &bad.bytes(),
        )
        .unwrap_err();
        assert_eq!(v.invariant, 3);

        // XDP_TX instead of a redirect to the other side.
        let v = judge(&m, &p.bytes(), Side::Client, None, &[], XDP_TX, &good).unwrap_err();
        assert_eq!(v.invariant, 3);
    }

    #[test]
    fn draining_keeps_only_pinned_flows() {
        let m = model();
        let p = from_client("198.18.0.10", L4::tcp(40000, 80));
        let to_p = natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes();
        let p_id = id(&m, "web", "p");
        let web = m.services.iter().find(|s| s.name == "web").unwrap().id;
        // A verified flow whose SYN this packet is (same ISN).
        let pinned = FlowValue {
            backend_id: p_id,
            service_id: web,
            client_isn: p.seq,
            ..FlowValue::default()
        };
        let drain = [(p_id, STATE_DRAINING)];
        judge(
            &m,
            &p.bytes(),
            Side::Client,
            Some(pinned),
            &drain,
            XDP_REDIRECT,
            &to_p,
        )
        .unwrap();
        // A SYN with another ISN on the tuple is a new connection.
        let old = FlowValue {
            client_isn: p.seq ^ 1,
            ..pinned
        };
        let v = judge(
            &m,
            &p.bytes(),
            Side::Client,
            Some(old),
            &drain,
            XDP_REDIRECT,
            &to_p,
        )
        .unwrap_err();
        assert_eq!(v.invariant, 3, "a new connection to a draining backend");
        let v = judge(
            &m,
            &p.bytes(),
            Side::Client,
            None,
            &drain,
            XDP_REDIRECT,
            &to_p,
        )
        .unwrap_err();
        assert_eq!(v.invariant, 3, "a new flow to a draining backend");
    }

    #[test]
    fn non_vip_must_pass_untouched() {
        let m = model();
        let mut p = Pkt::new(ip("198.18.0.2"), ip("198.18.0.99"), L4::tcp(1, 80));
        p.dmac = LB_C_MAC;
        let f = p.bytes();
        let j = judge(&m, &f, Side::Client, None, &[], XDP_PASS, &f).unwrap();
        assert_eq!(j.reasons, one(Reason::PassNotVip));
        let mut changed = f.clone();
        changed[0] ^= 1;
        let v = judge(&m, &f, Side::Client, None, &[], XDP_PASS, &changed).unwrap_err();
        assert_eq!(v.invariant, 2);
        let v = judge(&m, &f, Side::Client, None, &[], XDP_DROP, &f).unwrap_err();
        assert_eq!(v.invariant, 2);
        let v = judge(&m, &f, Side::Client, None, &[], XDP_ABORTED, &f).unwrap_err();
        assert_eq!(v.invariant, 1);
        let arp = arp_request(CLIENT_MAC, [198, 18, 0, 2], [198, 18, 0, 10]);
        assert_eq!(
            judge(&m, &arp, Side::Client, None, &[], XDP_PASS, &arp)
                .unwrap()
                .reasons,
            one(Reason::PassNonIp)
        );
    }

    #[test]
    fn vip_rules_need_their_documented_verdict() {
        let m = model();
        let mut frag = from_client("198.18.0.10", L4::tcp(1, 80));
        frag.frag = 0x2000;
        let f = frag.bytes();
        assert_eq!(
            judge(&m, &f, Side::Client, None, &[], XDP_DROP, &f)
                .unwrap()
                .reasons,
            one(Reason::DropFragment)
        );
        let v = judge(&m, &f, Side::Client, None, &[], XDP_PASS, &f).unwrap_err();
        assert_eq!(v.invariant, 4);
        let dead = from_client("198.18.0.12", L4::tcp(1, 80)).bytes();
        assert_eq!(
            judge(&m, &dead, Side::Client, None, &[], XDP_DROP, &dead)
                .unwrap()
                .reasons,
            one(Reason::DropNoBackend)
        );
        let dsr_local = from_client("198.18.0.15", L4::tcp(1, 80));
        let mut e = dsr_local.clone();
        e.dmac = Q_MAC;
        e.smac = LB_C_MAC;
        assert_eq!(
            judge(
                &m,
                &dsr_local.bytes(),
                Side::Client,
                None,
                &[],
                XDP_TX,
                &e.bytes()
            )
            .unwrap()
            .reasons,
            one(Reason::FwdTx)
        );
    }

    #[test]
    fn replies_translated_unless_another_backends_or_direct() {
        let m = model();
        let mut r = Pkt::new(ip("198.18.1.2"), ip("198.18.0.2"), L4::tcp(8080, 40000));
        r.smac = P_MAC;
        r.dmac = LB_B_MAC;
        let f = r.bytes();
        let mut want = r.clone();
        want.src = ip("198.18.0.10");
        want.l4.set_ports(80, 40000);
        want.ttl -= 1;
        want.dmac = CLIENT_MAC;
        want.smac = LB_C_MAC;
        let want = want.bytes();
        // Untracked: translated statelessly.
        assert_eq!(
            judge(&m, &f, Side::Backend, None, &[], XDP_REDIRECT, &want)
                .unwrap()
                .reasons,
            one(Reason::FwdReplyUntracked)
        );
        assert!(judge(&m, &f, Side::Backend, None, &[], XDP_PASS, &f).is_err());
        let web = m.services.iter().find(|s| s.name == "web").unwrap().id;
        let ct = FlowValue {
            backend_id: id(&m, "web", "p"),
            service_id: web,
            ..FlowValue::default()
        };
        let j = judge(&m, &f, Side::Backend, Some(ct), &[], XDP_REDIRECT, &want).unwrap();
        assert_eq!(j.reasons, one(Reason::FwdReply));
        // Tracked but passed untouched: wrong.
        assert!(judge(&m, &f, Side::Backend, Some(ct), &[], XDP_PASS, &f).is_err());
        // Tracked on another backend: untouched.
        let other = FlowValue {
            backend_id: id(&m, "web", "s"),
            ..ct
        };
        let j = judge(&m, &f, Side::Backend, Some(other), &[], XDP_PASS, &f).unwrap();
        assert_eq!(j.reasons, one(Reason::PassNotVip));
        assert!(judge(&m, &f, Side::Backend, Some(other), &[], XDP_REDIRECT, &want).is_err());
        // Untracked, of a direct connection: untouched.
        let pre = m.prepare(&f, Side::Backend);
        assert!(pre.direct.is_some());
        let before = Before {
            direct: true,
            ..Before::default()
        };
        let j = m
            .judge(&f, &pre, &before, &|_| STATE_UP, XDP_PASS, &f)
            .unwrap();
        assert_eq!(j.reasons, one(Reason::PassDirect));
        // A probe's answer to the LB itself (the FIB says NOT_FWDED).
        let mut probe = r.clone();
        probe.dst = ip("198.18.1.1");
        let pf = probe.bytes();
        let j = judge(&m, &pf, Side::Backend, None, &[], XDP_PASS, &pf).unwrap();
        assert_eq!(j.reasons, one(Reason::PassNotVip));
    }

    #[test]
    fn strict_l4_and_ip_checksum_rules() {
        let m = model();
        let good = from_client("198.18.0.10", L4::tcp(1, 80)).bytes();
        // Data offset 4 (< 5): malformed for a VIP.
        let mut bad = good.clone();
        bad[14 + 20 + 12] = 0x40;
        assert!(parse(&bad).l4_truncated);
        // Data offset 15 (60 bytes) past the 20-byte segment.
        bad[14 + 20 + 12] = 0xf0;
        assert!(parse(&bad).l4_truncated);
        assert_eq!(
            judge(&m, &bad, Side::Client, None, &[], XDP_DROP, &bad)
                .unwrap()
                .reasons,
            one(Reason::DropMalformed)
        );
        // A wrong IPv4 header checksum on a service's packet.
        let mut bad = good.clone();
        bad[14 + 10] ^= 1;
        assert!(!parse(&bad).ip_sum_ok);
        assert_eq!(
            judge(&m, &bad, Side::Client, None, &[], XDP_DROP, &bad)
                .unwrap()
                .reasons,
            one(Reason::DropMalformed)
        );
        // UDP length other than the IP payload's.
        let mut u = from_client("198.18.0.10", L4::udp(1, 53, b"abcd")).bytes();
        assert!(parse(&u).l4_ok);
        u[14 + 20 + 5] += 1;
        assert!(parse(&u).l4_truncated);
    }

    #[test]
    fn reset_is_checked_byte_for_byte() {
        let m = model();
        let p = from_client(
            "198.18.0.10",
            L4::Tcp {
                sport: 43000,
                dport: 80,
                flags: 0x18,
                payload: b"hello".to_vec(),
            },
        );
        let web = m.services.iter().find(|s| s.name == "web").unwrap().id;
        let p_id = id(&m, "web", "p");
        let ct = FlowValue {
            backend_id: p_id,
            service_id: web,
            ..FlowValue::default()
        };
        let pre = m.prepare(&p.bytes(), Side::Client);
        let Exp::Bytes { bytes, .. } = Model::rst(&p.bytes(), &pre.parsed) else {
            panic!("a RST")
        };
        // Fill in the checksums as the program must.
        let mut rst = bytes.clone();
        fix_checksums(&mut rst);
        let reset = [(p_id, STATE_DOWN_RESET)];
        let j = judge(&m, &p.bytes(), Side::Client, Some(ct), &reset, XDP_TX, &rst).unwrap();
        assert_eq!(j.reasons, one(Reason::TxReset));
        // The ACK field of a RST answering an ACK must be zero.
        let mut bad = rst.clone();
        bad[14 + 20 + 8] = 1;
        fix_checksums(&mut bad);
        assert!(judge(&m, &p.bytes(), Side::Client, Some(ct), &reset, XDP_TX, &bad).is_err());
    }

    /// An ICMP error from `from` to `to` quoting the IP packet of `q`.
    #[allow(clippy::too_many_arguments)]
    fn icmp(
        smac: [u8; 6],
        dmac: [u8; 6],
        from: &str,
        to: &str,
        ttl: u8,
        ty: u8,
        code: u8,
        q: &Pkt,
    ) -> Vec<u8> {
        let qb = q.bytes();
        icmp_error(
            smac,
            dmac,
            ip(from),
            ip(to),
            ttl,
            ty,
            code,
            [0, 0, 0x05, 0x78],
            &qb[14..],
        )
    }

    fn svc_id(m: &Model, name: &str) -> u32 {
        m.services.iter().find(|s| s.name == name).unwrap().id
    }

    #[test]
    fn icmp_errors_to_a_vip_follow_the_flow_to_its_backend() {
        let m = model();
        let p_id = id(&m, "web", "p");
        let ct = FlowValue {
            backend_id: p_id,
            service_id: svc_id(&m, "web"),
            ..FlowValue::default()
        };
        // Fragmentation needed for the VIP's reply to the client, quoted
        // whole (the quoted TCP checksum inside).
        let quoted = Pkt::new(
            ip("198.18.0.10"),
            ip("198.18.0.2"),
            tcp(80, 40000, 0x18, b"data"),
        );
        let f = icmp(
            CLIENT_MAC,
            LB_C_MAC,
            "198.18.0.7",
            "198.18.0.10",
            64,
            3,
            4,
            &quoted,
        );
        let pre = m.prepare(&f, Side::Client);
        assert!(matches!(pre.class, Class::Icmp { .. }), "{:?}", pre.class);
        let mut q2 = quoted.clone();
        q2.src = ip("198.18.1.2");
        q2.l4.set_ports(8080, 40000);
        let want = icmp(LB_B_MAC, P_MAC, "198.18.0.7", "198.18.1.2", 63, 3, 4, &q2);
        let j = judge(&m, &f, Side::Client, Some(ct), &[], XDP_REDIRECT, &want).unwrap();
        assert_eq!(j.reasons, one(Reason::FwdIcmp));
        // Whatever the backend's state.
        judge(
            &m,
            &f,
            Side::Client,
            Some(ct),
            &[(p_id, STATE_DOWN)],
            XDP_REDIRECT,
            &want,
        )
        .unwrap();
        // No live entry of the service: untouched, to a VIP address.
        assert_eq!(
            judge(&m, &f, Side::Client, None, &[], XDP_PASS, &f)
                .unwrap()
                .reasons,
            one(Reason::PassVipOtherPort)
        );
        assert!(judge(&m, &f, Side::Client, None, &[], XDP_REDIRECT, &want).is_err());
        let other = FlowValue {
            service_id: svc_id(&m, "dns"),
            ..ct
        };
        assert!(judge(&m, &f, Side::Client, Some(other), &[], XDP_PASS, &f).is_ok());
        // A checksum not patched (outer IPv4 header, ICMP, quoted IPv4
        // header, quoted TCP): caught.
        for at in [14 + 10, 14 + 20 + 2, 14 + 28 + 10, 14 + 28 + 20 + 16] {
            let mut bad = want.clone();
            bad[at] ^= 0x10;
            let v = judge(&m, &f, Side::Client, Some(ct), &[], XDP_REDIRECT, &bad).unwrap_err();
            assert!(v.what.contains("checksum"), "{at}: {v:?}");
        }
        // A wrong ICMP checksum stays as wrong (patched, not recomputed).
        let (mut fb, mut wb) = (f.clone(), want.clone());
        fb[14 + 20 + 5] ^= 1;
        wb[14 + 20 + 5] ^= 1;
        judge(&m, &fb, Side::Client, Some(ct), &[], XDP_REDIRECT, &wb).unwrap();
        assert!(judge(&m, &fb, Side::Client, Some(ct), &[], XDP_REDIRECT, &want).is_err());
        // TTL 1: rewritten, then handed to the kernel.
        let f1 = icmp(
            CLIENT_MAC,
            LB_C_MAC,
            "198.18.0.7",
            "198.18.0.10",
            1,
            3,
            4,
            &quoted,
        );
        let w1 = icmp(
            CLIENT_MAC,
            LB_C_MAC,
            "198.18.0.7",
            "198.18.1.2",
            1,
            3,
            4,
            &q2,
        );
        let j = judge(&m, &f1, Side::Client, Some(ct), &[], XDP_PASS, &w1).unwrap();
        assert_eq!(j.reasons, one(Reason::PassTtlExceeded));
        // DSR: nothing rewritten but the TTL and the MACs.
        let dq = Pkt::new(
            ip("198.18.0.11"),
            ip("198.18.0.2"),
            tcp(80, 40010, 0x12, b""),
        );
        let df = icmp(
            CLIENT_MAC,
            LB_C_MAC,
            "198.18.0.7",
            "198.18.0.11",
            64,
            11,
            0,
            &dq,
        );
        let dwant = icmp(LB_B_MAC, P_MAC, "198.18.0.7", "198.18.0.11", 63, 11, 0, &dq);
        let dct = FlowValue {
            backend_id: id(&m, "web-dsr", "p"),
            service_id: svc_id(&m, "web-dsr"),
            ..FlowValue::default()
        };
        let j = judge(&m, &df, Side::Client, Some(dct), &[], XDP_REDIRECT, &dwant).unwrap();
        assert_eq!(j.reasons, one(Reason::FwdIcmp));
        // Not an error the rules translate (an echo request's type).
        let mut echo = f.clone();
        echo[14 + 20] = 8;
        assert!(matches!(
            m.prepare(&echo, Side::Client).class,
            Class::Fixed { .. }
        ));
    }

    #[test]
    fn icmp_errors_to_a_client_come_from_the_vip() {
        let m = model();
        let p_id = id(&m, "web6", "p");
        let web6 = svc_id(&m, "web6");
        // The backend itself says its path is narrower.
        let quoted = Pkt::new(
            ip("2001:db8::2"),
            ip("2001:db8:1::2"),
            tcp(40003, 8080, 0x18, b"GET /"),
        );
        let f = icmp(
            P_MAC,
            LB_B_MAC,
            "2001:db8:1::2",
            "2001:db8::2",
            64,
            2,
            0,
            &quoted,
        );
        let mut q2 = quoted.clone();
        q2.dst = ip("2001:db8::10");
        q2.l4.set_ports(40003, 80);
        let want = icmp(
            LB_C_MAC,
            CLIENT_MAC,
            "2001:db8::10",
            "2001:db8::2",
            63,
            2,
            0,
            &q2,
        );
        // Untracked (no entry, no direct connection) or tracked here.
        let j = judge(&m, &f, Side::Backend, None, &[], XDP_REDIRECT, &want).unwrap();
        assert_eq!(j.reasons, one(Reason::FwdIcmp));
        let ct = FlowValue {
            backend_id: p_id,
            service_id: web6,
            ..FlowValue::default()
        };
        judge(&m, &f, Side::Backend, Some(ct), &[], XDP_REDIRECT, &want).unwrap();
        // The ICMPv6 checksum covers the outer source.
        let mut bad = want.clone();
        bad[14 + 40 + 2] ^= 0x01;
        assert!(judge(&m, &f, Side::Backend, None, &[], XDP_REDIRECT, &bad).is_err());
        // From a router: its source stays.
        let fr = icmp(
            P_MAC,
            LB_B_MAC,
            "2001:db8:1::7",
            "2001:db8::2",
            64,
            3,
            0,
            &quoted,
        );
        let wr = icmp(
            LB_C_MAC,
            CLIENT_MAC,
            "2001:db8:1::7",
            "2001:db8::2",
            63,
            3,
            0,
            &q2,
        );
        judge(&m, &fr, Side::Backend, None, &[], XDP_REDIRECT, &wr).unwrap();
        // The flow is on another backend: untouched.
        let other = FlowValue {
            backend_id: id(&m, "web6", "s"),
            ..ct
        };
        let j = judge(&m, &f, Side::Backend, Some(other), &[], XDP_PASS, &f).unwrap();
        assert_eq!(j.reasons, one(Reason::PassNotVip));
        let v = judge(&m, &f, Side::Backend, Some(other), &[], XDP_REDIRECT, &want).unwrap_err();
        assert_eq!(v.invariant, 2);
        // A direct connection's (no entry): untouched.
        let pre = m.prepare(&f, Side::Backend);
        assert!(pre.direct.is_some());
        let direct = Before {
            direct: true,
            ..Before::default()
        };
        let j = m
            .judge(&f, &pre, &direct, &|_| STATE_UP, XDP_PASS, &f)
            .unwrap();
        assert_eq!(j.reasons, one(Reason::PassNotVip));
        // ... unless the VIP flow has a live entry here.
        let tracked = Before {
            conntrack: Some(ct),
            direct: true,
            ..Before::default()
        };
        m.judge(&f, &pre, &tracked, &|_| STATE_UP, XDP_REDIRECT, &want)
            .unwrap();
        // IPv4, a UDP quote of 8 bytes: its checksum is patched, never to 0.
        let uq = Pkt::new(
            ip("198.18.0.2"),
            ip("198.18.1.2"),
            L4::udp(40001, 5353, b"q"),
        );
        let cut = |p: &Pkt| p.bytes()[14..14 + 28].to_vec();
        let uf = icmp_error(
            P_MAC,
            LB_B_MAC,
            ip("198.18.1.7"),
            ip("198.18.0.2"),
            64,
            11,
            0,
            [0; 4],
            &cut(&uq),
        );
        let mut uq2 = uq.clone();
        uq2.dst = ip("198.18.0.10");
        uq2.l4.set_ports(40001, 53);
        let uwant = icmp_error(
            LB_C_MAC,
            CLIENT_MAC,
            ip("198.18.1.7"),
            ip("198.18.0.2"),
            63,
            11,
            0,
            [0; 4],
            &cut(&uq2),
        );
        let j = judge(&m, &uf, Side::Backend, None, &[], XDP_REDIRECT, &uwant).unwrap();
        assert_eq!(j.reasons, one(Reason::FwdIcmp));
        let mut bad = uwant.clone();
        bad[14 + 28 + 20 + 6] ^= 0x20;
        assert!(judge(&m, &uf, Side::Backend, None, &[], XDP_REDIRECT, &bad).is_err());
    }

    #[test]
    fn forwarded_tagged_frames_lose_their_tag_passed_ones_keep_it() {
        let m = model();
        let mut p = from_client("198.18.0.10", tcp(40004, 80, 0x10, b"x"));
        p.vlan = Some(100);
        let mut want = natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC);
        let tagged = want.bytes();
        want.vlan = None;
        let j = judge(
            &m,
            &p.bytes(),
            Side::Client,
            None,
            &[],
            XDP_REDIRECT,
            &want.bytes(),
        )
        .unwrap();
        assert_eq!(j.reasons, one(Reason::FwdRedirect));
        let v = judge(
            &m,
            &p.bytes(),
            Side::Client,
            None,
            &[],
            XDP_REDIRECT,
            &tagged,
        )
        .unwrap_err();
        assert_eq!(v.invariant, 3);
        // An 802.1ad tag too; checksums are still checked.
        let mut ad = p.bytes();
        ad[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        assert!(m.prepare(&ad, Side::Client).sums_ok);
        let mut bad = want.bytes();
        bad[14 + 20 + 16] ^= 1;
        assert!(judge(&m, &ad, Side::Client, None, &[], XDP_REDIRECT, &bad).is_err());
        // Handed to the kernel (no neighbour for the backend): kept.
        let mut n = from_client("198.18.0.14", tcp(40015, 80, 0x02, b""));
        n.vlan = Some(100);
        let mut nw = n.clone();
        nw.dst = ip("198.18.1.9");
        nw.l4.set_ports(40015, 8080);
        let j = judge(
            &m,
            &n.bytes(),
            Side::Client,
            None,
            &[],
            XDP_PASS,
            &nw.bytes(),
        )
        .unwrap();
        assert_eq!(j.reasons, one(Reason::PassNoNeigh));
        // The RST (built in place): kept.
        let ct = FlowValue {
            backend_id: id(&m, "web", "p"),
            service_id: svc_id(&m, "web"),
            ..FlowValue::default()
        };
        let pre = m.prepare(&p.bytes(), Side::Client);
        let Exp::Bytes { bytes, .. } = Model::rst(&p.bytes(), &pre.parsed) else {
            panic!("a RST")
        };
        let mut rst = bytes.clone();
        fix_checksums(&mut rst);
        let reset = [(ct.backend_id, STATE_DOWN_RESET)];
        judge(&m, &p.bytes(), Side::Client, Some(ct), &reset, XDP_TX, &rst).unwrap();
        let untagged_rst = untagged(&rst).into_owned();
        assert!(
            judge(
                &m,
                &p.bytes(),
                Side::Client,
                Some(ct),
                &reset,
                XDP_TX,
                &untagged_rst
            )
            .is_err()
        );
        // An ICMP error forwarded from a tagged frame: untagged too.
        let quoted = Pkt::new(
            ip("198.18.0.10"),
            ip("198.18.0.2"),
            tcp(80, 40000, 0x12, b""),
        );
        let mut f = icmp(
            CLIENT_MAC,
            LB_C_MAC,
            "198.18.0.2",
            "198.18.0.10",
            64,
            3,
            3,
            &quoted,
        );
        f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        let mut q2 = quoted.clone();
        q2.src = ip("198.18.1.2");
        q2.l4.set_ports(8080, 40000);
        let w = icmp(LB_B_MAC, P_MAC, "198.18.0.2", "198.18.1.2", 63, 3, 3, &q2);
        judge(&m, &f, Side::Client, Some(ct), &[], XDP_REDIRECT, &w).unwrap();
    }

    #[test]
    fn fib_model_knows_the_lab_subnets() {
        let m = model();
        let c4 = Some(ip("198.18.0.2"));
        let sure = |a: &str| m.fib(c4, ip(a), 100).len() == 1;
        assert!(matches!(
            m.fib(c4, ip("198.18.1.2"), 100)[..],
            [FibOut::Ok(P_MAC, Side::Backend)]
        ));
        assert!(matches!(
            m.fib(c4, ip("198.18.1.2"), MTU + 1)[..],
            [FibOut::FragNeeded]
        ));
        assert!(matches!(
            m.fib(c4, ip("198.18.1.9"), 100)[..],
            [FibOut::NoNeigh]
        ));
        let c6 = Some(ip("2001:db8::2"));
        assert!(matches!(
            m.fib(c6, ip("2001:db8:1::9"), 100)[..],
            [FibOut::NoNeigh]
        ));
        // From a link-local or multicast IPv6 source, the FIB may refuse.
        for src in ["fe80::1", "ff02::1"] {
            let v = m.fib(Some(ip(src)), ip("2001:db8:1::2"), 100);
            assert!(matches!(v[..], [FibOut::Ok(..), FibOut::Fail]), "{src}");
        }
        // Not a lab subnet, the LB's own addresses, broadcast: the model
        // does not claim to know.
        for a in [
            "2001:db8:0:1::2",
            "2001:db8::1",
            "198.18.0.1",
            "198.18.0.255",
            "198.18.2.2",
            "10.0.0.1",
        ] {
            assert!(!sure(a), "{a}");
        }
    }

    #[test]
    fn counter_check_catches_miscounts() {
        let fwd = bit(Reason::FwdRedirect);
        let pass = bit(Reason::PassNotVip);
        let either = bit(Reason::PassNoNeigh) | bit(Reason::DropFibFail);
        let mut delta = vec![0u64; Reason::ALL.len()];
        delta[Reason::FwdRedirect as usize] = 2;
        delta[Reason::PassNotVip as usize] = 1;
        delta[Reason::DropFibFail as usize] = 1;
        check_counters(&[fwd, fwd, pass, either], &delta).unwrap();
        // Counted under the wrong reason.
        let mut wrong = delta.clone();
        wrong[Reason::PassNotVip as usize] = 0;
        wrong[Reason::PassNonIp as usize] = 1;
        assert_eq!(
            check_counters(&[fwd, fwd, pass, either], &wrong)
                .unwrap_err()
                .invariant,
            4
        );
        // Counted twice / not at all.
        let mut twice = delta.clone();
        twice[Reason::FwdRedirect as usize] = 3;
        assert!(check_counters(&[fwd, fwd, pass, either], &twice).is_err());
        assert!(check_counters(&[fwd, fwd, pass, either, pass], &delta).is_err());
    }

    #[test]
    fn mutations_keep_frames_in_bounds_and_are_reproducible() {
        let seeds = seeds();
        let m = model();
        for i in 0..20_000 {
            let c = make_case(&seeds, &mut Rng::for_iteration(99, i));
            let again = make_case(&seeds, &mut Rng::for_iteration(99, i));
            assert_eq!(c.frame, again.frame);
            assert!(c.frame.len() >= 14 && c.frame.len() <= MAX_FRAME);
            // The model never panics on a mutant.
            let pre = m.prepare(&c.frame, Side::Client);
            let _ = m.judge(
                &c.frame,
                &pre,
                &Before::default(),
                &|_| STATE_UP,
                XDP_PASS,
                &c.frame,
            );
        }
    }
}
