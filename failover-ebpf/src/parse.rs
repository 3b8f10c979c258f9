//! Parsing: Ethernet (one 802.1Q/802.1ad tag), IPv4 (with options), IPv6
//! (with a bounded walk over extension headers), TCP and UDP. Produces the
//! offsets and the 5-tuple the rest of the packet path works on.

use core::mem::{offset_of, size_of};

use failover_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, csum};
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
    /// of the IP packet) or inconsistent with the IP header: a TCP data
    /// offset below 5 or past the IP packet, a UDP length other than the
    /// IP payload's, an IPv6 UDP checksum of zero (RFC 8200).
    pub l4_truncated: bool,
    /// TCP: flags, sequence and acknowledgement numbers (valid when `l4`).
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// End of the IP packet (offset).
    pub ip_end: usize,
}

/// Every offset the parser produces is below this (Ethernet + VLAN + IPv6 +
/// four extension headers of at most 2 KiB each is 8250), so masking with it
/// loses nothing; it gives the verifier bounds for offsets read back from
/// map memory, which it otherwise sees as unbounded.
pub const OFF_MASK: usize = 0x3fff;

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

    /// Whether the frame carries a VLAN tag.
    #[inline(always)]
    pub fn tagged(&self) -> bool {
        self.l3_off != size_of::<EthHdr>()
    }

    /// End of the IP packet.
    #[inline(always)]
    pub fn ip_end(&self) -> usize {
        self.ip_end & OFF_MASK
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
            tcp_flags: 0,
            seq: 0,
            ack: 0,
            ip_end: 0,
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
/// link-layer padding or junk, never a header to read or patch. A header
/// that disagrees with the IP header (see `Flow::l4_truncated`) is
/// malformed too.
#[inline(always)]
fn parse_l4(pkt: &Packet, flow: &mut Flow, ip_end: usize) {
    flow.ip_end = ip_end;
    let l4_off = flow.l4_off;
    let Some(l4_len) = ip_end.checked_sub(l4_off) else {
        flow.l4_truncated = true;
        return;
    };
    match flow.key.proto {
        PROTO_TCP => {
            // The whole fixed TCP header must be there: we patch its
            // checksum. Bytes 12 and 13: data offset, flags.
            let Some(t) = pkt.load::<[u8; 20]>(l4_off) else {
                flow.l4_truncated = true;
                return;
            };
            let doff = (t[12] >> 4) as usize * 4;
            if doff < size_of::<TcpHdr>() || doff > l4_len {
                flow.l4_truncated = true;
                return;
            }
            flow.key.sport = [t[0], t[1]];
            flow.key.dport = [t[2], t[3]];
            flow.seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            flow.ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            flow.tcp_flags = t[13];
            flow.l4 = true;
        }
        PROTO_UDP => {
            let Some(u) = pkt.load::<UdpHdr>(l4_off) else {
                flow.l4_truncated = true;
                return;
            };
            let bad_len = u16::from_be_bytes(u.len) as usize != l4_len;
            let v6_no_csum = flow.key.family == FAMILY_V6 && u.check == [0, 0];
            if l4_len < size_of::<UdpHdr>() || bad_len || v6_no_csum {
                flow.l4_truncated = true;
                return;
            }
            flow.key.sport = u.src;
            flow.key.dport = u.dst;
            flow.l4 = true;
        }
        _ => {}
    }
}

/// Whether the IPv4 header checksum is right (RFC 1812 5.2.2: a router
/// discards a packet whose header checksum is wrong). Checked for VIP
/// packets only: the rest is the kernel's business.
#[inline(always)]
pub fn ipv4_header_ok(pkt: &Packet, flow: &Flow) -> bool {
    let l3 = flow.l3();
    let Some(vihl) = pkt.load::<u8>(l3) else {
        return false;
    };
    let words = (vihl & 0x0f) as usize;
    add_words(pkt, l3, words, 0).is_some_and(|sum| csum::fold(sum) == 0xffff)
}

/// Adds `words` (at most 15) 32-bit words of the packet from `off` to the
/// one's complement sum `sum`, as 16-bit halves; `None` if they are not all
/// in the packet.
#[inline(always)]
fn add_words(pkt: &Packet, off: usize, words: usize, mut sum: u32) -> Option<u32> {
    for i in 0..15 {
        if i >= words {
            break;
        }
        let w = pkt.load::<[u8; 4]>(off + i * 4)?;
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        sum += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    Some(sum)
}

/// Whether a TCP segment without payload beyond its options (a SYN: at most
/// 60 bytes) carries a valid checksum. Longer segments answer `false`: they
/// are never taken as evidence about a backend.
#[inline(always)]
pub fn tcp_syn_checksum_ok(pkt: &Packet, flow: &Flow) -> bool {
    let l4 = flow.l4();
    let len = flow.ip_end().wrapping_sub(l4);
    if len > 60 || !len.is_multiple_of(4) {
        return false;
    }
    let k = &flow.key;
    let mut sum: u32 = u32::from(PROTO_TCP) + len as u32;
    let addr_words = if k.family == FAMILY_V4 { 2 } else { 8 };
    for i in 0..8 {
        if i >= addr_words {
            break;
        }
        sum += u32::from(u16::from_be_bytes([k.src[i * 2], k.src[i * 2 + 1]]));
        sum += u32::from(u16::from_be_bytes([k.dst[i * 2], k.dst[i * 2 + 1]]));
    }
    add_words(pkt, l4, len / 4, sum).is_some_and(|sum| csum::fold(sum) == 0xffff)
}
