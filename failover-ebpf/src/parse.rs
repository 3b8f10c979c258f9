//! Parsing: Ethernet (one 802.1Q/802.1ad tag), IPv4 (with options), IPv6
//! (with a bounded walk over extension headers), TCP and UDP. Produces the
//! offsets and the 5-tuple the rest of the packet path works on.

use core::mem::{offset_of, size_of};

use failover_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::packet::Packet;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HDR_LEN: usize = 4;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up on finding the L4 header.
const MAX_EXT_HEADERS: usize = 4;

/// What parsing found out about a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not IPv4/IPv6, or the Ethernet header itself is truncated.
    NotIp,
    /// An IP header that cannot be read or is invalid; `key.dst` is valid if
    /// `dst_known`.
    BadIp,
    /// A valid IP packet.
    Ip,
}

/// A packet's layout and 5-tuple. The tuple is kept in the conntrack key
/// layout (addresses 16 bytes, IPv4 in the first four), so it is built once.
/// Every field is always initialised (the verifier rejects reads of
/// registers the compiler thought it could leave undefined).
pub struct Flow {
    pub kind: Kind,
    pub dst_known: bool,
    /// family, protocol, addresses and ports (ports valid when `l4`).
    pub key: FlowKey,
    pub l3_off: usize,
    /// Offset of the L4 header (valid when `l4` is `true`).
    pub l4_off: usize,
    /// A fragment (IPv4 MF/offset, or an IPv6 fragment header).
    pub fragment: bool,
    /// TCP or UDP with a complete header: ports are valid.
    pub l4: bool,
    /// TCP or UDP, but the header is cut short (by the end of the frame or
    /// of the IP packet).
    pub l4_truncated: bool,
}

/// Every offset the parser produces is below this (Ethernet + VLAN + IPv6 +
/// four extension headers of at most 2 KiB each is 8250), so masking with it
/// loses nothing; it gives the verifier bounds for offsets read back from
/// map memory, which it otherwise sees as unbounded.
const OFF_MASK: usize = 0x3fff;

impl Flow {
    /// Offset of the IP header.
    #[inline(always)]
    pub fn l3(&self) -> usize {
        self.l3_off & OFF_MASK
    }

    /// Offset of the L4 header.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        self.l4_off & OFF_MASK
    }

    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            kind: Kind::NotIp,
            dst_known: false,
            key: FlowKey {
                src: [0; 16],
                dst: [0; 16],
                sport: [0; 2],
                dport: [0; 2],
                proto: 0,
                family: 0,
                _pad: [0; 2],
            },
            l3_off: 0,
            l4_off: 0,
            fragment: false,
            l4: false,
            l4_truncated: false,
        }
    }
}

#[inline(always)]
fn copy4(dst: &mut [u8; 16], a: [u8; 4]) {
    dst[0] = a[0];
    dst[1] = a[1];
    dst[2] = a[2];
    dst[3] = a[3];
}

/// Fills `flow` (from [`Flow::new`]) from the packet.
#[inline(always)]
pub fn parse(pkt: &Packet, flow: &mut Flow) {
    let Some(mut ether_type) = pkt.load::<[u8; 2]>(offset_of!(EthHdr, ether_type)) else {
        return;
    };
    let mut l3_off = size_of::<EthHdr>();
    let outer = u16::from_be_bytes(ether_type);
    if outer == ETH_P_8021Q || outer == ETH_P_8021AD {
        // One tag: the inner EtherType follows the 2-byte TCI.
        let Some(inner) = pkt.load::<[u8; 2]>(l3_off + 2) else {
            return;
        };
        ether_type = inner;
        l3_off += VLAN_HDR_LEN;
    }
    flow.l3_off = l3_off;
    match u16::from_be_bytes(ether_type) {
        ETH_P_IP => parse_v4(pkt, flow),
        ETH_P_IPV6 => parse_v6(pkt, flow),
        _ => {}
    }
}

#[inline(always)]
fn parse_v4(pkt: &Packet, flow: &mut Flow) {
    let l3_off = flow.l3_off;
    flow.kind = Kind::BadIp;
    flow.key.family = FAMILY_V4;
    if let Some(d) = pkt.load::<[u8; 4]>(l3_off + offset_of!(Ipv4Hdr, dst_addr)) {
        copy4(&mut flow.key.dst, d);
        flow.dst_known = true;
    }
    let Some(ip) = pkt.load::<Ipv4Hdr>(l3_off) else {
        return;
    };
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4
        || ihl < size_of::<Ipv4Hdr>()
        || tot_len < ihl
        || l3_off + tot_len > pkt.len()
    {
        return;
    }
    flow.kind = Kind::Ip;
    copy4(&mut flow.key.src, ip.src_addr);
    flow.key.proto = ip.proto;
    flow.l4_off = l3_off + ihl;
    // MF flag or a non-zero fragment offset.
    flow.fragment = u16::from_be_bytes(ip.frags) & 0x3fff != 0;
    if !flow.fragment {
        parse_l4(pkt, flow, l3_off + tot_len);
    }
}

#[inline(always)]
fn parse_v6(pkt: &Packet, flow: &mut Flow) {
    let l3_off = flow.l3_off;
    flow.kind = Kind::BadIp;
    flow.key.family = FAMILY_V6;
    // Field by field: copying the whole 40-byte header costs BPF stack.
    if let Some(d) = pkt.load::<[u8; 16]>(l3_off + offset_of!(Ipv6Hdr, dst_addr)) {
        flow.key.dst = d;
        flow.dst_known = true;
    } else {
        return;
    }
    let (Some(src), Some(first), Some(plen), Some(next)) = (
        pkt.load::<[u8; 16]>(l3_off + offset_of!(Ipv6Hdr, src_addr)),
        pkt.load::<u8>(l3_off),
        pkt.load::<[u8; 2]>(l3_off + offset_of!(Ipv6Hdr, payload_len)),
        pkt.load::<u8>(l3_off + offset_of!(Ipv6Hdr, next_hdr)),
    ) else {
        return;
    };
    let payload_len = u16::from_be_bytes(plen) as usize;
    if first >> 4 != 6 || l3_off + size_of::<Ipv6Hdr>() + payload_len > pkt.len() {
        return;
    }
    flow.kind = Kind::Ip;
    flow.key.src = src;
    flow.key.proto = next;
    flow.l4_off = l3_off + size_of::<Ipv6Hdr>();
    let ip_end = flow.l4_off + payload_len;
    // Bounded walk over the extension headers that may precede L4; each
    // must start inside the payload (not in trailing padding).
    for _ in 0..MAX_EXT_HEADERS {
        match flow.key.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext = match pkt.load::<[u8; 2]>(flow.l4_off) {
                    Some(ext) if flow.l4_off + 2 <= ip_end => ext,
                    _ => {
                        flow.l4_truncated = true;
                        return;
                    }
                };
                flow.key.proto = ext[0];
                flow.l4_off += (ext[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                flow.fragment = true;
                return;
            }
            _ => break,
        }
    }
    parse_l4(pkt, flow, ip_end);
}

/// Reads the ports of a TCP/UDP header at `flow.l4_off`, which must lie
/// whole inside the IP packet (ending at `ip_end`): bytes after it are
/// link-layer padding or junk, never a header to read or patch.
#[inline(always)]
fn parse_l4(pkt: &Packet, flow: &mut Flow, ip_end: usize) {
    let (ok, len) = match flow.key.proto {
        // The whole fixed TCP header must be there: we patch its checksum.
        PROTO_TCP => (
            pkt.load::<TcpHdr>(flow.l4_off).map(|t| (t.source, t.dest)),
            size_of::<TcpHdr>(),
        ),
        PROTO_UDP => (
            pkt.load::<UdpHdr>(flow.l4_off).map(|u| (u.src, u.dst)),
            size_of::<UdpHdr>(),
        ),
        _ => return,
    };
    let ok = ok.filter(|_| flow.l4_off + len <= ip_end);
    match ok {
        Some((s, d)) => {
            flow.key.sport = s;
            flow.key.dport = d;
            flow.l4 = true;
        }
        None => flow.l4_truncated = true,
    }
}
