//! Parsing: Ethernet (one 802.1Q/802.1ad tag), IPv4 (with options), IPv6
//! (with a bounded walk over extension headers), TCP and UDP. Produces the
//! offsets and the 5-tuple the rest of the packet path works on.
//!
//! Also the header layout every stage uses: field offsets, TCP flags and
//! their tests, ICMP types, and the packet an ICMP error quotes ([`quote`]).

use core::mem::{offset_of, size_of};

use failover_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, csum};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::packet::Packet;

// Ethernet and 802.1Q/802.1ad.
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Destination and source MAC addresses.
pub const ETH_DST: usize = offset_of!(EthHdr, dst_addr);
pub const ETH_SRC: usize = offset_of!(EthHdr, src_addr);
pub const ETH_TYPE: usize = offset_of!(EthHdr, ether_type);
/// An untagged frame's IP header.
pub const ETH_HLEN: usize = size_of::<EthHdr>();
/// Length of an 802.1Q/802.1ad tag: the TCI, then the inner EtherType.
pub const VLAN_HDR_LEN: usize = 4;
/// Offset of the inner EtherType in a tag.
const VLAN_INNER_TYPE: usize = 2;

// IPv4 (RFC 791) and IPv6 (RFC 8200).
pub const IPV4_HDR_LEN: usize = size_of::<Ipv4Hdr>();
pub const IPV6_HDR_LEN: usize = size_of::<Ipv6Hdr>();
/// IHL (header length in 32-bit words): the low nibble of the first byte.
const IPV4_IHL_MASK: u8 = 0x0f;
/// Every IPv4 header length in bytes (4 x IHL, at most 60) fits under this
/// mask: masking loses nothing and bounds an offset for the verifier.
const IPV4_HDR_LEN_MASK: usize = 0x3c;
/// The MF flag and the fragment offset in `frags`.
const IPV4_MF_OFFSET: u16 = 0x3fff;
/// The longest IPv4 or TCP header, in 32-bit words (60 bytes).
const MAX_HDR_WORDS: usize = 15;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// An extension header starts with its next header and its length (in
/// 8-byte units, not counting the first 8 bytes).
const IPV6_EXT_START: usize = 2;
const IPV6_EXT_UNIT: usize = 8;
/// Extension headers walked before giving up on finding the L4 header.
const MAX_EXT_HEADERS: usize = 4;

/// The IP version (IPv4 and IPv6 alike: the high nibble of the first byte).
#[inline(always)]
fn ip_version(first: u8) -> u8 {
    first >> 4
}

/// The IPv4 header length in bytes, from its first byte.
#[inline(always)]
fn ipv4_hdr_len(vihl: u8) -> usize {
    (vihl & IPV4_IHL_MASK) as usize * 4
}

// TCP (RFC 9293) and UDP (RFC 768): the ports are where both put them.
pub const L4_SPORT: usize = offset_of!(TcpHdr, source);
pub const L4_DPORT: usize = offset_of!(TcpHdr, dest);
/// Both ports.
pub const L4_PORTS_LEN: usize = 4;
const _: () = assert!(L4_SPORT == offset_of!(UdpHdr, src) && L4_DPORT == offset_of!(UdpHdr, dst));
pub const TCP_SEQ: usize = offset_of!(TcpHdr, seq);
pub const TCP_ACK_SEQ: usize = offset_of!(TcpHdr, ack_seq);
/// Data offset (header length in 32-bit words): the high nibble.
pub const TCP_DOFF: usize = offset_of!(TcpHdr, _bitfield_1);
pub const TCP_FLAGS: usize = TCP_DOFF + 1;
pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);
/// The fixed TCP header (no options), and its data offset byte.
pub const TCP_HDR_LEN: usize = size_of::<TcpHdr>();
pub const TCP_DOFF_NO_OPTIONS: u8 = ((TCP_HDR_LEN / 4) << 4) as u8;
/// The longest TCP header (data offset 15).
const TCP_MAX_HDR_LEN: usize = 60;

/// The TCP header length in bytes, from its data offset byte.
#[inline(always)]
pub fn tcp_hdr_len(doff: u8) -> usize {
    (doff >> 4) as usize * 4
}

/// TCP flags (the byte at `TCP_FLAGS`).
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A SYN opening a connection (no ACK, no RST).
#[inline(always)]
pub fn pure_syn(flags: u8) -> bool {
    flags & (SYN | ACK | RST) == SYN
}

/// A SYN-ACK (no RST).
#[inline(always)]
pub fn syn_ack(flags: u8) -> bool {
    flags & (SYN | ACK | RST) == SYN | ACK
}

/// An ACK that is neither a SYN nor a RST (data, FIN or a bare ACK).
#[inline(always)]
pub fn plain_ack(flags: u8) -> bool {
    flags & (SYN | ACK | RST) == ACK
}

/// Whether a TCP packet with these flags may be answered with a RST (not a
/// SYN opening a new connection, not a RST itself).
#[inline(always)]
pub fn resettable(flags: u8) -> bool {
    flags & (SYN | RST) == 0
}

/// A FIN or a RST: the connection is closing.
#[inline(always)]
pub fn closing(flags: u8) -> bool {
    flags & (FIN | RST) != 0
}

// ICMP (RFC 792) and ICMPv6 (RFC 4443).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// Type and code (the first two bytes), then the checksum.
const ICMP_TYPE: usize = 0;
pub const ICMP_CHECK: usize = 2;
/// An error's header (type, code, checksum, 4 bytes unused or the MTU):
/// the quoted packet follows it.
const ICMP_ERROR_HDR_LEN: usize = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;

/// Whether `proto` of this family is ICMP or ICMPv6.
#[inline(always)]
pub fn is_icmp(family: u8, proto: u8) -> bool {
    (family == FAMILY_V4 && proto == IPPROTO_ICMP)
        || (family == FAMILY_V6 && proto == IPPROTO_ICMPV6)
}

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
    let Some(mut ether_type) = pkt.load::<[u8; 2]>(ETH_TYPE) else {
        return;
    };
    let mut l3_off = size_of::<EthHdr>();
    let outer = u16::from_be_bytes(ether_type);
    if outer == ETH_P_8021Q || outer == ETH_P_8021AD {
        // One tag: the inner EtherType follows the 2-byte TCI.
        let Some(inner) = pkt.load::<[u8; 2]>(l3_off + VLAN_INNER_TYPE) else {
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
    let ihl = ipv4_hdr_len(ip.vihl);
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip_version(ip.vihl) != 4
        || ihl < IPV4_HDR_LEN
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
    flow.fragment = u16::from_be_bytes(ip.frags) & IPV4_MF_OFFSET != 0;
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
    if ip_version(first) != 6 || l3_off + IPV6_HDR_LEN + payload_len > pkt.len() {
        return;
    }
    flow.kind = Kind::Ip;
    flow.key.src = src;
    flow.key.proto = next;
    flow.l4_off = l3_off + IPV6_HDR_LEN;
    let ip_end = flow.l4_off + payload_len;
    // Bounded walk over the extension headers that may precede L4; each
    // must start inside the payload (not in trailing padding).
    for _ in 0..MAX_EXT_HEADERS {
        match flow.key.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext = match pkt.load::<[u8; IPV6_EXT_START]>(flow.l4_off) {
                    Some(ext) if flow.l4_off + IPV6_EXT_START <= ip_end => ext,
                    _ => {
                        flow.l4_truncated = true;
                        return;
                    }
                };
                flow.key.proto = ext[0];
                flow.l4_off += (ext[1] as usize + 1) * IPV6_EXT_UNIT;
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
            // checksum.
            let Some(t) = pkt.load::<[u8; TCP_HDR_LEN]>(l4_off) else {
                flow.l4_truncated = true;
                return;
            };
            let doff = tcp_hdr_len(t[TCP_DOFF]);
            if doff < TCP_HDR_LEN || doff > l4_len {
                flow.l4_truncated = true;
                return;
            }
            flow.key.sport = [t[L4_SPORT], t[L4_SPORT + 1]];
            flow.key.dport = [t[L4_DPORT], t[L4_DPORT + 1]];
            flow.seq = be32(&t, TCP_SEQ);
            flow.ack = be32(&t, TCP_ACK_SEQ);
            flow.tcp_flags = t[TCP_FLAGS];
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

/// The big-endian `u32` at `at` of a fixed TCP header.
#[inline(always)]
fn be32(t: &[u8; TCP_HDR_LEN], at: usize) -> u32 {
    u32::from_be_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]])
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
    let words = (vihl & IPV4_IHL_MASK) as usize;
    add_words(pkt, l3, words, 0).is_some_and(|sum| csum::fold(sum) == 0xffff)
}

/// Adds `words` (at most `MAX_HDR_WORDS`) 32-bit words of the packet from `off` to the
/// one's complement sum `sum`, as 16-bit halves; `None` if they are not all
/// in the packet.
#[inline(always)]
fn add_words(pkt: &Packet, off: usize, words: usize, mut sum: u32) -> Option<u32> {
    for i in 0..MAX_HDR_WORDS {
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
/// `TCP_MAX_HDR_LEN` bytes) carries a valid checksum. Longer segments answer `false`: they
/// are never taken as evidence about a backend.
#[inline(always)]
pub fn tcp_syn_checksum_ok(pkt: &Packet, flow: &Flow) -> bool {
    let l4 = flow.l4();
    let len = flow.ip_end().wrapping_sub(l4);
    if len > TCP_MAX_HDR_LEN || !len.is_multiple_of(4) {
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

/// The start of the packet an ICMP error quotes, as [`quote`] reads it.
pub struct Quoted {
    /// Offset of the quoted IP header.
    pub ip: usize,
    /// Offset of the quoted TCP/UDP header.
    pub l4: usize,
    pub proto: u8,
    /// Addresses (IPv4 in the first four bytes, the rest zero) and ports.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl Quoted {
    /// Offset of the quoted IP header (masked: offsets read back from map
    /// memory are unbounded for the verifier).
    #[inline(always)]
    pub fn ip(&self) -> usize {
        self.ip & OFF_MASK
    }

    /// Offset of the quoted TCP/UDP header.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        self.l4 & OFF_MASK
    }
}

/// Type and code of the ICMP/ICMPv6 message `flow` carries. One two-byte
/// load: a one-byte bounds check compiles to `at >= end`, which gives the
/// verifier no range.
#[inline(always)]
pub fn icmp_type_code(pkt: &Packet, flow: &Flow) -> Option<[u8; 2]> {
    pkt.load::<[u8; 2]>(flow.l4() + ICMP_TYPE)
}

/// Reads the packet the ICMP/ICMPv6 error `flow` quotes into `q`: its IP
/// header (IPv4 with a valid version and length, or IPv6, whose extension
/// headers are not walked) and the ports of its TCP/UDP header. `false` if
/// it is cut short by the end of the frame or is neither TCP nor UDP;
/// whether the ports lie inside the error's IP packet is the caller's
/// question.
#[inline(always)]
pub fn quote(pkt: &Packet, flow: &Flow, q: &mut Quoted) -> bool {
    let ip = (flow.l4() + ICMP_ERROR_HDR_LEN) & OFF_MASK;
    q.ip = ip;
    if flow.key.family == FAMILY_V4 {
        // Two-byte loads (see `icmp_type_code`).
        let Some([vihl, _tos]) = pkt.load::<[u8; 2]>(ip) else {
            return false;
        };
        let ihl = ipv4_hdr_len(vihl);
        if ip_version(vihl) != 4 || ihl < IPV4_HDR_LEN {
            return false;
        }
        let Some([_ttl, proto]) = pkt.load::<[u8; 2]>(ip + offset_of!(Ipv4Hdr, ttl)) else {
            return false;
        };
        let Some(src) = pkt.load::<[u8; 4]>(ip + offset_of!(Ipv4Hdr, src_addr)) else {
            return false;
        };
        let Some(dst) = pkt.load::<[u8; 4]>(ip + offset_of!(Ipv4Hdr, dst_addr)) else {
            return false;
        };
        q.proto = proto;
        q.src = [0; 16];
        q.dst = [0; 16];
        q.src[..4].copy_from_slice(&src);
        q.dst[..4].copy_from_slice(&dst);
        q.l4 = (ip + (ihl & IPV4_HDR_LEN_MASK)) & OFF_MASK;
    } else {
        let Some([proto, _hop_limit]) = pkt.load::<[u8; 2]>(ip + offset_of!(Ipv6Hdr, next_hdr))
        else {
            return false;
        };
        let Some(src) = pkt.load::<[u8; 16]>(ip + offset_of!(Ipv6Hdr, src_addr)) else {
            return false;
        };
        let Some(dst) = pkt.load::<[u8; 16]>(ip + offset_of!(Ipv6Hdr, dst_addr)) else {
            return false;
        };
        q.proto = proto;
        q.src = src;
        q.dst = dst;
        q.l4 = (ip + IPV6_HDR_LEN) & OFF_MASK;
    }
    if q.proto != PROTO_TCP && q.proto != PROTO_UDP {
        return false;
    }
    let Some(ports) = pkt.load::<[u8; L4_PORTS_LEN]>(q.l4) else {
        return false;
    };
    q.sport = [ports[0], ports[1]];
    q.dport = [ports[2], ports[3]];
    true
}
