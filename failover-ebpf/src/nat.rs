//! NAT rewrites with incremental checksum updates (RFC 1624), for both
//! directions: client->VIP becomes client->backend (destination rewritten),
//! backend->client becomes VIP->client (source rewritten).

use core::mem::offset_of;

use failover_common::{FAMILY_V4, PROTO_TCP, PROTO_UDP, csum};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    packet::Packet,
    parse::{Flow, L4_DPORT, L4_SPORT, TCP_CHECK, UDP_CHECK},
};

/// Which side of the flow is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// The TTL / hop limit of the packet, if readable.
#[inline(always)]
pub fn ttl(pkt: &Packet, flow: &Flow) -> Option<u8> {
    if flow.key.family == FAMILY_V4 {
        pkt.load::<u8>(flow.l3() + offset_of!(Ipv4Hdr, ttl))
    } else {
        pkt.load::<u8>(flow.l3() + offset_of!(Ipv6Hdr, hop_limit))
    }
}

/// A NAT rewrite: `side`'s address and port become `addr`/`port`.
pub struct Rewrite {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub side: Side,
    /// Decrement the TTL/hop limit (the caller checked it is > 1).
    pub dec_ttl: bool,
}

/// Applies `rw` and patches the IP and L4 checksums. `false` if the packet
/// is shorter than the parser promised (callers drop it). Not inlined: its
/// checksum temporaries get their own stack frame.
#[inline(never)]
pub fn rewrite(pkt: &Packet, flow: &Flow, rw: &Rewrite) -> bool {
    rewrite_inner(pkt, flow, rw.side, &rw.addr, rw.port, rw.dec_ttl).is_some()
}

#[inline(always)]
fn rewrite_inner(
    pkt: &Packet,
    flow: &Flow,
    side: Side,
    addr: &[u8; 16],
    port: [u8; 2],
    dec_ttl: bool,
) -> Option<()> {
    let (old_port, port_off) = match side {
        Side::Src => (flow.key.sport, flow.l4() + L4_SPORT),
        Side::Dst => (flow.key.dport, flow.l4() + L4_DPORT),
    };
    let l4_check_off = match flow.key.proto {
        PROTO_TCP => flow.l4() + TCP_CHECK,
        PROTO_UDP => flow.l4() + UDP_CHECK,
        _ => return None,
    };
    let l4_check = u16::from_be_bytes(pkt.load::<[u8; 2]>(l4_check_off)?);

    let new_l4_check = if flow.key.family == FAMILY_V4 {
        let addr_off = flow.l3()
            + match side {
                Side::Src => offset_of!(Ipv4Hdr, src_addr),
                Side::Dst => offset_of!(Ipv4Hdr, dst_addr),
            };
        let old: [u8; 4] = pkt.load(addr_off)?;
        let new = [addr[0], addr[1], addr[2], addr[3]];
        let ip_check_off = flow.l3() + offset_of!(Ipv4Hdr, check);
        let mut ip_check = u16::from_be_bytes(pkt.load::<[u8; 2]>(ip_check_off)?);
        ip_check = csum::replace(ip_check, &old, &new);
        if dec_ttl {
            // TTL shares a 16-bit word with the protocol.
            let ttl_off = flow.l3() + offset_of!(Ipv4Hdr, ttl);
            let word: [u8; 2] = pkt.load(ttl_off)?;
            let dec = [word[0].wrapping_sub(1), word[1]];
            ip_check = csum::replace(ip_check, &word, &dec);
            pkt.store(ttl_off, dec)?;
        }
        pkt.store(ip_check_off, ip_check.to_be_bytes())?;
        pkt.store(addr_off, new)?;
        l4_update(flow.key.proto, l4_check, &old, &new, &old_port, &port)
    } else {
        let addr_off = flow.l3()
            + match side {
                Side::Src => offset_of!(Ipv6Hdr, src_addr),
                Side::Dst => offset_of!(Ipv6Hdr, dst_addr),
            };
        let old: [u8; 16] = pkt.load(addr_off)?;
        if dec_ttl {
            let hl_off = flow.l3() + offset_of!(Ipv6Hdr, hop_limit);
            let hl: u8 = pkt.load(hl_off)?;
            pkt.store(hl_off, hl.wrapping_sub(1))?;
        }
        pkt.store(addr_off, *addr)?;
        l4_update(flow.key.proto, l4_check, &old, addr, &old_port, &port)
    };
    pkt.store(port_off, port)?;
    pkt.store(l4_check_off, new_l4_check.to_be_bytes())
}

/// The L4 checksum covers the pseudo-header (addresses) and the ports.
#[inline(always)]
fn l4_update<const N: usize>(
    proto: u8,
    check: u16,
    old: &[u8; N],
    new: &[u8; N],
    old_port: &[u8; 2],
    port: &[u8; 2],
) -> u16 {
    if proto == PROTO_UDP {
        if check == 0 {
            // IPv4 UDP without checksum stays without.
            return 0;
        }
        let c = csum::replace(csum::replace(check, old, new), old_port, port);
        if c == 0 { 0xffff } else { c }
    } else {
        csum::replace(csum::replace(check, old, new), old_port, port)
    }
}
